//! `/v1/rules` and `/v1/events`: event-triggered notifications. A rule maps an event type to a
//! template, channels, priority, category and an optional condition on the event's data; an
//! event whose rule matches becomes a one-user campaign through the same use case as
//! `POST /v1/campaigns` (`herald_usecases::events`).

use crate::http::{ApiError, ApiResult, JsonBody, PathParams, QueryParams};
use crate::pages::{next_cursor, PageParams};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_core::filter::Filter;
use herald_core::ids::validate_key;
use herald_core::model::{validate_category, Channel, Priority, Rule};
use herald_core::Context;
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
#[derive(Debug, Deserialize)]
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
    condition: Option<Filter>,
}

fn not_found(event_type: &str) -> ApiError {
    ApiError::not_found(format!("no rule for event type `{event_type}`"))
}

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
        created_at: now,
        updated_at: now,
    };
    ctx.ports.campaigns.put_rule(&rule).await?;
    // The store keeps the first `created_at` of a replaced rule.
    let stored = ctx.ports.campaigns.get_rule(&event_type).await?;
    Ok(Json(stored.unwrap_or(rule)))
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(rename = "type")]
    event_type: String,
    user_id: String,
    #[serde(default)]
    data: Value,
}

/// Receives an event: if a rule for its type exists and its condition holds on the event's
/// data, creates a campaign for the event's user (`herald_usecases::events`).
pub async fn event(
    State(ctx): State<Context>,
    JsonBody(input): JsonBody<EventInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    validate_event_type("type", &input.event_type)?;
    validate_key("user_id", &input.user_id)?;
    let data: Map<String, Value> = match input.data {
        Value::Null => Map::new(),
        Value::Object(o) => o,
        _ => return Err(ApiError::invalid("data: must be a JSON object")),
    };
    let body = match events::trigger(&ctx, &input.event_type, input.user_id, data).await? {
        EventOutcome::NotMatched(reason) => json!({"matched": false, "reason": reason}),
        EventOutcome::Matched(campaign) => json!({
            "matched": true,
            "campaign_id": campaign.id,
            "strategy": campaign.strategy,
            "status": campaign.status,
        }),
    };
    Ok((StatusCode::ACCEPTED, Json(body)))
}
