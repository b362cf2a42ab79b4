//! `/v1/rules` and `/v1/events`: event-triggered notifications (events also as CloudEvents). A rule maps an event type to a
//! template, channels, priority, category and an optional condition on the event's data; an
//! event whose rule matches becomes a one-user campaign through the same use case as
//! `POST /v1/campaigns` (`herald_usecases::events`).

use crate::cloudevents::{self, CloudEvent, Mode};
use crate::http::{parse_json, ApiError, ApiResult, BodyBytes, JsonBody, PathParams, QueryParams};
use crate::pages::{next_cursor, PageParams};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_core::filter::Filter;
use herald_core::ids::validate_key;
use herald_core::model::{
    validate_category, validate_push_when, Channel, DigestRule, Priority, PushWhen, Rule,
};
use herald_core::{Context, ErrorKind};
use herald_usecases::events::{self, EventOutcome};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// Event types are 1 to 128 letters, digits, `.`, `_`, `-` or `:` (`order.shipped`,
/// `billing:invoice_paid`).
fn validate_event_type(what: &str, event_type: &str) -> ApiResult<()> {
    let ok = !event_type.is_empty()
        && event_type.len() <= MAX_EVENT_TYPE_LEN
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} must be 1 to {MAX_EVENT_TYPE_LEN} characters of letters, digits and . _ - :"
        )))
    }
}

/// The body of `PUT /v1/rules/{event_type}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    template: String,
    channels: Vec<Channel>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    category: Option<String>,
    /// Parsed by the filter DSL; its errors come back as `condition: <DSL message>`.
    #[serde(default)]
    #[schema(schema_with = herald_core::filter::filter_schema)]
    condition: Option<Filter>,
    /// Presence-aware push for the campaigns the rule makes, as on `POST /v1/campaigns`.
    #[serde(default)]
    push_when: PushWhen,
    #[serde(default)]
    online_push_delay_s: Option<u32>,
    /// Collect each user's events for a window and send them as one notification.
    #[serde(default)]
    digest: Option<DigestRule>,
}

fn not_found(event_type: &str) -> ApiError {
    ApiError::not_found(format!("no rule for event type `{event_type}`"))
}

#[utoipa::path(put, path = "/v1/rules/{event_type}", tag = "rules", params(("event_type" = String, Path)), request_body = RuleInput, responses((status = 200, body = Rule)))]
pub async fn put(
    State(ctx): State<Context>,
    PathParams(event_type): PathParams<String>,
    JsonBody(mut input): JsonBody<RuleInput>,
) -> ApiResult<Json<Rule>> {
    validate_event_type("event type", &event_type)?;
    if input.channels.is_empty() {
        return Err(ApiError::invalid(
            "channels: at least one channel is needed",
        ));
    }
    input.channels.sort();
    input.channels.dedup();
    if let Some(category) = &input.category {
        validate_category(category)?;
    }
    validate_push_when(&input.channels, input.push_when, input.online_push_delay_s)?;
    if let Some(digest) = &input.digest {
        digest.validate()?;
    }
    validate_key("template", &input.template)?;
    let template = ctx
        .ports
        .directory
        .get_template(&input.template)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(format!("template `{}` does not exist", input.template))
        })?;
    let has = template.content.channels();
    let missing: Vec<&str> = input
        .channels
        .iter()
        .filter(|c| !has.contains(c))
        .map(|c| c.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::invalid(format!(
            "template `{}` has no content for {}",
            input.template,
            missing.join(", ")
        )));
    }

    let now = ctx.clock.now();
    let rule = Rule {
        event_type: event_type.clone(),
        template: input.template,
        channels: input.channels,
        priority: input.priority,
        category: input.category,
        condition: input.condition,
        push_when: input.push_when,
        online_push_delay_s: input.online_push_delay_s,
        digest: input.digest,
        created_at: now,
        updated_at: now,
    };
    ctx.ports.campaigns.put_rule(&rule).await?;
    // The store keeps the first `created_at` of a replaced rule.
    let stored = ctx.ports.campaigns.get_rule(&event_type).await?;
    Ok(Json(stored.unwrap_or(rule)))
}

#[utoipa::path(get, path = "/v1/rules/{event_type}", tag = "rules", params(("event_type" = String, Path)), responses((status = 200, body = Rule), (status = 404, description = "No such rule", body = herald_http::openapi::ErrorBody)))]
pub async fn get(
    State(ctx): State<Context>,
    PathParams(event_type): PathParams<String>,
) -> ApiResult<Json<Rule>> {
    ctx.ports
        .campaigns
        .get_rule(&event_type)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&event_type))
}

#[utoipa::path(get, path = "/v1/rules", tag = "rules", params(PageParams), responses((status = 200, body = crate::openapi::RulePage)))]
pub async fn list(
    State(ctx): State<Context>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit()?;
    let after = page.after()?;
    let rules = ctx
        .ports
        .campaigns
        .list_rules(after.as_deref(), limit)
        .await?;
    let next = next_cursor(
        rules.last().map(|r| r.event_type.as_str()),
        rules.len(),
        limit,
    );
    Ok(Json(json!({ "rules": rules, "next_cursor": next })))
}

#[utoipa::path(delete, path = "/v1/rules/{event_type}", tag = "rules", params(("event_type" = String, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such rule", body = herald_http::openapi::ErrorBody)))]
pub async fn delete(
    State(ctx): State<Context>,
    PathParams(event_type): PathParams<String>,
) -> ApiResult<StatusCode> {
    if ctx.ports.campaigns.delete_rule(&event_type).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&event_type))
    }
}

/// The body of `POST /v1/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(rename = "type")]
    event_type: String,
    user_id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Value,
}

/// One event to trigger, whichever way it came.
struct Incoming {
    event_type: String,
    user_id: String,
    data: Map<String, Value>,
    /// A CloudEvent's identity (`source`, `id`): its campaign is created once.
    identity: Option<(String, String)>,
}

impl Incoming {
    fn check(&self) -> ApiResult<()> {
        validate_event_type("type", &self.event_type)?;
        Ok(validate_key("user_id", &self.user_id)?)
    }
}

impl From<CloudEvent> for Incoming {
    fn from(e: CloudEvent) -> Self {
        Incoming {
            event_type: e.event_type,
            user_id: e.subject,
            data: e.data,
            identity: Some((e.source, e.id)),
        }
    }
}

/// Receives events (Herald's body, or CloudEvents in structured, batched or binary mode: see
/// [`crate::cloudevents`]): each whose rule exists and whose condition holds on its data
/// creates a campaign for its user (`herald_usecases::events`). Every event of a request is
/// checked before any is triggered, so a bad one changes nothing.
#[utoipa::path(post, path = "/v1/events", tag = "rules", request_body(content((EventInput = "application/json"), (Object = "application/cloudevents+json"), (Vec<Object> = "application/cloudevents-batch+json")), description = "Herald's event, or a CloudEvent 1.0 (structured, batched, or binary with `ce-*` headers); a CloudEvent's `source` and `id` create its campaign once"), responses((status = 202, description = "Checked and triggered", body = crate::openapi::EventOutcome), (status = 404, description = "The rule's template is gone", body = herald_http::openapi::ErrorBody)))]
pub async fn event(
    State(ctx): State<Context>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let one: Incoming = match cloudevents::mode(&headers) {
        Mode::Herald => {
            let input: EventInput = parse_json(&body)?;
            let data = match input.data {
                Value::Null => Map::new(),
                Value::Object(o) => o,
                _ => return Err(ApiError::invalid("data: must be a JSON object")),
            };
            Incoming {
                event_type: input.event_type,
                user_id: input.user_id,
                data,
                identity: None,
            }
        }
        Mode::Structured => cloudevents::structured(parse_json(&body)?)?.into(),
        Mode::Binary => cloudevents::binary(&headers, &body)?.into(),
        Mode::Batch => {
            let events = cloudevents::batch(&body)?;
            for (i, e) in events.iter().enumerate() {
                Incoming::from(e.clone())
                    .check()
                    .map_err(|e| cloudevents::prefix(i, e))?;
            }
            let mut results = Vec::with_capacity(events.len());
            for e in events {
                results.push(trigger(&ctx, e.into(), true).await?);
            }
            return Ok((StatusCode::ACCEPTED, Json(json!({ "results": results }))));
        }
    };
    one.check()?;
    Ok((StatusCode::ACCEPTED, Json(trigger(&ctx, one, false).await?)))
}

/// Triggers one checked event and says what became of it. In a batch, an event refused for
/// what it names (a rule whose template is gone) is answered in its place and the others go
/// on; a backend failure fails the request (sending it again is safe: every CloudEvent creates
/// its campaign once).
async fn trigger(ctx: &Context, e: Incoming, in_batch: bool) -> ApiResult<Value> {
    let key = e
        .identity
        .as_ref()
        .map(|(source, id)| events::event_key(source, id));
    let identity = e
        .identity
        .as_ref()
        .map(|(source, id)| json!({"source": source, "id": id}));
    let outcome = events::trigger(ctx, &e.event_type, e.user_id, e.data, key.as_ref()).await;
    let mut body = match outcome {
        Ok(EventOutcome::NotMatched(reason)) => json!({"matched": false, "reason": reason}),
        Ok(EventOutcome::Matched(campaign)) => json!({
            "matched": true,
            "campaign_id": campaign.id,
            "strategy": campaign.strategy,
            "status": campaign.status,
        }),
        Ok(EventOutcome::Digested(d)) => json!({
            "matched": true,
            "digest": {
                "id": d.digest_id,
                "count": d.count,
                "sends_at": d.window_ends_at,
                "duplicate": d.duplicate,
            },
        }),
        Ok(EventOutcome::Duplicate(first)) => json!({
            "matched": true,
            "duplicate": true,
            "campaign_id": first["id"],
            "strategy": first["strategy"],
            "status": first["status"],
        }),
        Err(err) if in_batch && matches!(err.kind, ErrorKind::Invalid | ErrorKind::NotFound) => {
            json!({"matched": false, "error": {"code": err.kind.code(), "message": err.message}})
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(identity) = identity {
        body["event"] = identity;
    }
    Ok(body)
}
