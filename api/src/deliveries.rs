//! `/v1/webhooks` (HTTP subscribers of the webhook channel) and `/v1/dead-letters` (sends the
//! push gateway gave up on, listed and replayed by an admin).

use crate::http::{parse_json, ApiError, ApiResult, BodyBytes, JsonBody, PathParams, QueryParams};
use crate::pages::{filter_param, next_cursor, PageParams};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use herald_core::config::Secret;
use herald_core::delivery::{DeadLetter, Webhook};
use herald_core::ids::validate_key;
use herald_core::model::{Channel, OutMessage};
use herald_core::topics::{self, ChannelMessage};
use herald_core::{Context, Error};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    url: String,
    /// Left out: the subscription's secret is kept, or a new one is generated (and shown in
    /// that response only).
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    categories: Option<Vec<String>>,
}

/// A webhook subscription as shown: everything but the secrets (of the replaced ones still
/// signing, only until when). Its secret is shown only when Herald generated it (creation
/// without one) and in the answer of a rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// Categories it receives; null for every category.
    pub categories: Option<Vec<String>>,
    /// When each replaced secret, still signing beside the current one, stops.
    pub previous_secrets_expire_at: Vec<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `whsec_<base64>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    fn of(w: &Webhook) -> Self {
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            categories: w.categories.clone(),
            previous_secrets_expire_at: w.previous_secrets.iter().map(|p| p.expires_at).collect(),
            created_at: w.created_at,
            updated_at: w.updated_at,
            secret: None,
        }
    }

    /// With its current secret: the one time it is shown.
    fn with_secret(w: &Webhook) -> Self {
        WebhookView {
            secret: Some(w.secret.expose().to_owned()),
            ..Self::of(w)
        }
    }
}

/// How long a replaced secret keeps signing unless the rotation says (a day).
const DEFAULT_ROTATION_GRACE_SECS: u64 = 86_400;
/// The longest a replaced secret may keep signing (30 days).
const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// The new secret; left out, one is generated.
    #[serde(default)]
    secret: Option<String>,
    /// How long the replaced secret keeps signing beside the new one; 0 stops every
    /// replaced secret at once (a leaked secret).
    #[serde(default)]
    previous_valid_for_secs: Option<u64>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new secret, shown in this answer only; the
/// replaced one keeps signing every post beside it for `previous_valid_for_secs` (a day), so
/// receivers switch without a post they cannot verify.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path)), request_body(content = Option<RotateBody>, description = "Optional: no body rotates to a generated secret with a day's grace"), responses((status = 200, description = "Rotated: the new secret, shown in this answer only", body = WebhookView), (status = 404, description = "No such webhook", body = herald_http::openapi::ErrorBody)))]
pub async fn rotate_webhook_secret(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
    BodyBytes(bytes): BodyBytes,
) -> ApiResult<Json<WebhookView>> {
    // The body is optional: none rotates to a generated secret with the default grace.
    let body: RotateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        parse_json(&bytes)?
    };
    let grace = body
        .previous_valid_for_secs
        .unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    if grace > MAX_ROTATION_GRACE_SECS {
        return Err(ApiError::invalid(format!(
            "previous_valid_for_secs must be at most {MAX_ROTATION_GRACE_SECS} (30 days)"
        )));
    }
    let mut webhook = ctx
        .ports
        .deliveries
        .get_webhook(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook `{id}` not found")))?;
    let new = body
        .secret
        .map(Secret::new)
        .unwrap_or_else(Webhook::generate_secret);
    if new == webhook.secret {
        return Err(ApiError::invalid(
            "the new secret must differ from the current one",
        ));
    }
    let now = ctx.clock.now();
    webhook.rotate(new, now, now + chrono::Duration::seconds(grace as i64));
    webhook.validate()?;
    ctx.ports.deliveries.put_webhook(&webhook).await?;
    Ok(Json(WebhookView::with_secret(&webhook)))
}

#[utoipa::path(put, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), request_body = WebhookBody, responses((status = 200, description = "Stored; the secret is shown only when Herald generated it", body = WebhookView)))]
pub async fn put_webhook(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Json<WebhookView>> {
    validate_key("webhook id", &id)?;
    let now = ctx.clock.now();
    // A secret given replaces the current one at once (a rotation with a grace period is
    // `rotate-secret`); left out, the current one and any rotation under way are kept.
    let (secret, previous_secrets, generated) = match body.secret {
        Some(s) => (Secret::new(s), Vec::new(), false),
        None => match ctx.ports.deliveries.get_webhook(&id).await? {
            Some(existing) => (existing.secret, existing.previous_secrets, false),
            None => (Webhook::generate_secret(), Vec::new(), true),
        },
    };
    let webhook = Webhook {
        id: id.clone(),
        url: body.url.trim().to_owned(),
        secret,
        categories: body.categories,
        previous_secrets,
        created_at: now,
        updated_at: now,
    };
    webhook.validate()?;
    ctx.ports.deliveries.put_webhook(&webhook).await?;
    let stored = ctx.ports.deliveries.get_webhook(&id).await?;
    let shown = stored.as_ref().unwrap_or(&webhook);
    Ok(Json(if generated {
        // The only time a secret is shown: the subscriber needs it to verify posts.
        WebhookView {
            secret: Some(webhook.secret.expose().to_owned()),
            ..WebhookView::of(shown)
        }
    } else {
        WebhookView::of(shown)
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses((status = 200, body = WebhookView), (status = 404, description = "No such webhook", body = herald_http::openapi::ErrorBody)))]
pub async fn get_webhook(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<WebhookView>> {
    ctx.ports
        .deliveries
        .get_webhook(&id)
        .await?
        .map(|w| Json(WebhookView::of(&w)))
        .ok_or_else(|| ApiError::not_found(format!("webhook `{id}` not found")))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageParams), responses((status = 200, body = crate::openapi::WebhookPage)))]
pub async fn list_webhooks(
    State(ctx): State<Context>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit()?;
    let after = page.after()?;
    let hooks = ctx
        .ports
        .deliveries
        .list_webhooks(after.as_deref(), limit)
        .await?;
    let next = next_cursor(hooks.last().map(|w| w.id.as_str()), hooks.len(), limit);
    let items: Vec<WebhookView> = hooks.iter().map(WebhookView::of).collect();
    Ok(Json(json!({ "webhooks": items, "next_cursor": next })))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such webhook", body = herald_http::openapi::ErrorBody)))]
pub async fn delete_webhook(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    if ctx.ports.deliveries.delete_webhook(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("webhook `{id}` not found")))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    channel: Option<String>,
    /// Items per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterRecipient {
    pub user_id: String,
    pub notification_id: uuid::Uuid,
    /// The device tokens or webhook ids not yet delivered to; null for all of the user's.
    pub targets: Option<Vec<String>>,
}

/// A channel message given up after its attempts, kept to be replayed (its content stays in
/// the store).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    pub channel: Channel,
    pub campaign_id: String,
    pub reason: String,
    pub attempts: u32,
    pub sends: u64,
    pub recipients: Vec<DeadLetterRecipient>,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

impl DeadLetterView {
    fn of(l: &DeadLetter) -> Self {
        DeadLetterView {
            id: l.id.clone(),
            channel: l.channel,
            campaign_id: l.campaign_id.clone(),
            reason: l.reason.clone(),
            attempts: l.attempts,
            sends: l.sends,
            recipients: l
                .message
                .items
                .iter()
                .map(|i| DeadLetterRecipient {
                    user_id: i.user_id.clone(),
                    notification_id: i.notification_id,
                    targets: i.targets.clone(),
                })
                .collect(),
            created_at: l.created_at,
            replayed_at: l.replayed_at,
        }
    }
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "webhooks", params(DeadLetterParams), responses((status = 200, description = "Newest first", body = crate::openapi::DeadLetterPage)))]
pub async fn list_dead_letters(
    State(ctx): State<Context>,
    QueryParams(params): QueryParams<DeadLetterParams>,
) -> ApiResult<Json<Value>> {
    let (limit, before) = PageParams::id_keyset(params.limit, params.cursor)?;
    let channel: Option<Channel> = filter_param(params.channel.as_deref())?;
    if channel.is_some_and(|c| !topics::OUTBOUND.contains(&c)) {
        return Err(ApiError::invalid(
            "channel must be one of push, email, sms, webhook",
        ));
    }
    let letters = ctx
        .ports
        .deliveries
        .list_dead_letters(channel, before.as_deref(), limit)
        .await?;
    let next = next_cursor(letters.last().map(|l| l.id.as_str()), letters.len(), limit);
    let items: Vec<DeadLetterView> = letters.iter().map(DeadLetterView::of).collect();
    Ok(Json(json!({ "dead_letters": items, "next_cursor": next })))
}

/// Puts a dead letter's sends back on their channel queue as a fresh first attempt (with its
/// own delivery key, so it is not mistaken for what was already processed). A letter is
/// replayed once; if it fails again, the gateway files a new dead letter.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "webhooks", params(("id" = String, Path)), responses((status = 202, description = "Queued again", body = crate::openapi::DeadLetterReplayed), (status = 404, description = "No such dead letter", body = herald_http::openapi::ErrorBody), (status = 409, description = "Already replayed", body = herald_http::openapi::ErrorBody)))]
pub async fn replay_dead_letter(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let deliveries = &ctx.ports.deliveries;
    let letter = deliveries
        .get_dead_letter(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dead letter `{id}` not found")))?;
    let now = ctx.clock.now();
    if !deliveries.mark_replayed(&id, now).await? {
        return Err(Error::conflict(format!("dead letter `{id}` was already replayed")).into());
    }
    let message = ChannelMessage {
        attempt: 0,
        deliver_after: None,
        replay_of: Some(letter.id.clone()),
        ..letter.message.clone()
    };
    // Cut to the bus's bound as the fan-out's messages are (see `ChannelMessage::encoded`).
    let publish = async {
        let out: Vec<OutMessage> = message
            .encoded()?
            .into_iter()
            .map(|(_, payload)| OutMessage {
                key: Some(letter.campaign_id.clone()),
                payload,
            })
            .collect();
        ctx.ports
            .bus
            .publish(topics::channel_topic(letter.channel), &out)
            .await
    };
    if let Err(e) = publish.await {
        // Let the admin try again.
        deliveries.unmark_replayed(&id).await?;
        return Err(e.into());
    }
    tracing::info!(dead_letter = %id, channel = %letter.channel, sends = letter.sends, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id,
            "channel": letter.channel,
            "sends": letter.sends,
            "replayed_at": now,
        })),
    ))
}
