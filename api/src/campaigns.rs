//! `/v1/campaigns`: create (the use case of `herald_usecases::campaigns`: sized, strategy
//! chosen, idempotent), read with progress, list, cancel. The fan-out itself runs in
//! `herald-fanout`.

use crate::http::{ApiError, ApiResult, BodyBytes, JsonBody, PathParams, QueryParams};
use crate::pages::PageParams;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::model::*;
use herald_core::{Context, Error};
use herald_usecases::campaigns::{
    create_campaign, summary, CampaignInput, Created, IdempotencyKey,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A campaign as the API shows it.
pub fn campaign_json(c: &Campaign) -> Value {
    let (template, content) = match &c.content {
        CampaignContent::Template(t) => (Some(t.clone()), None),
        CampaignContent::Inline(tb) => (None, Some(tb.clone())),
    };
    let deliveries: Map<String, Value> = c
        .deliveries
        .iter()
        .map(|(ch, d)| (ch.as_str().to_owned(), json!(d)))
        .collect();
    json!({
        "id": c.id,
        "status": c.status,
        "strategy": c.strategy,
        "audience": c.audience,
        "audience_size": c.audience_size,
        "template": template,
        "content": content,
        "channels": c.channels,
        "category": c.category,
        "priority": c.priority,
        "push_when": c.push_when,
        "online_push_delay_s": c.online_push_delay_s,
        "data": c.data,
        "starts_at": c.starts_at,
        "expires_at": c.expires_at,
        "progress": c.progress,
        "deliveries": deliveries,
        "created_at": c.created_at,
        "started_at": c.started_at,
        "completed_at": c.completed_at,
    })
}

/// Other query parameters are ignored, as they were before `dry_run` existed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Answer what the campaign would do (audience, strategy, rows, sends per channel and
    /// provider, time) without creating or sending anything.
    #[serde(default)]
    dry_run: bool,
}

#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", params(CreateParams, ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible characters: the same key and body answer the first answer again (`Idempotent-Replayed: true`); the same key with another body is 409")), request_body = herald_usecases::campaigns::CampaignInput, responses((status = 202, description = "Accepted: the campaign is created and queued", body = crate::openapi::CampaignCreated), (status = 200, description = "`dry_run=true`: what the campaign would do; nothing is created", body = herald_usecases::dry_run::DryRun), (status = 409, description = "The Idempotency-Key was used with another body", body = herald_http::openapi::ErrorBody)))]
pub async fn create(
    State(ctx): State<Context>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<CreateParams>,
    BodyBytes(body): BodyBytes,
) -> Response {
    let answer = if params.dry_run {
        dry_run(&ctx, &body).await
    } else {
        create_inner(&ctx, &headers, &body).await
    };
    match answer {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// A dry run writes nothing, so an `Idempotency-Key` has nothing to guard and is ignored.
async fn dry_run(ctx: &Context, body: &[u8]) -> ApiResult<Response> {
    let input: CampaignInput = crate::http::parse_json(body)?;
    let forecast = herald_usecases::dry_run::dry_run(ctx, input).await?;
    Ok((StatusCode::OK, Json(forecast)).into_response())
}

async fn create_inner(ctx: &Context, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let raw: Value = crate::http::parse_json(body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                ApiError::invalid("Idempotency-Key must be 1 to 255 visible characters")
            })?;
            Some(IdempotencyKey::new(k, &raw)?)
        }
    };
    let input: CampaignInput = crate::http::parse_json(raw.to_string().as_bytes())?;
    match create_campaign(ctx, input, key.as_ref()).await? {
        Created::New(c) => Ok((StatusCode::ACCEPTED, Json(summary(&c))).into_response()),
        Created::Replayed { status, body } => Ok((
            StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
            [
                ("content-type", "application/json"),
                ("idempotent-replayed", "true"),
            ],
            body,
        )
            .into_response()),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("campaign `{id}` not found"))
}

/// What the campaign did for one user: audience, switches, quiet hours, inbox item, and each
/// channel's recorded outcome (`herald_usecases::explain`).
#[utoipa::path(get, path = "/v1/campaigns/{id}/recipients/{user_id}", tag = "campaigns", params(("id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = herald_usecases::explain::Explanation), (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody)))]
pub async fn recipient(
    State(ctx): State<Context>,
    PathParams((id, user_id)): PathParams<(String, String)>,
) -> ApiResult<Json<herald_usecases::explain::Explanation>> {
    herald_core::ids::validate_key("user_id", &user_id)?;
    Ok(Json(
        herald_usecases::explain::explain(&ctx, &id, &user_id).await?,
    ))
}

#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path)), responses((status = 200, body = crate::openapi::CampaignView), (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody)))]
pub async fn get(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let c = ctx
        .ports
        .campaigns
        .get_campaign(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut body = campaign_json(&c);
    // The sample of recipients (or batches) the fan-out could not serve, and why.
    body["failures"] = json!(ctx.ports.campaigns.campaign_failures(&id).await?);
    Ok(Json(body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    status: Option<String>,
    // Not `#[serde(flatten)] PageParams`: flattened query values arrive as strings only.
    /// Items per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", params(ListParams), responses((status = 200, description = "Newest first", body = crate::openapi::CampaignPage)))]
pub async fn list(
    State(ctx): State<Context>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Value>> {
    let (limit, before) = PageParams::id_keyset(params.limit, params.cursor)?;
    let status: Option<CampaignStatus> = crate::pages::filter_param(params.status.as_deref())?;
    let campaigns = ctx
        .ports
        .campaigns
        .list_campaigns(status, before.as_deref(), limit)
        .await?;
    let next = crate::pages::next_cursor(
        campaigns.last().map(|c| c.id.as_str()),
        campaigns.len(),
        limit,
    );
    let items: Vec<Value> = campaigns.iter().map(campaign_json).collect();
    Ok(Json(json!({ "campaigns": items, "next_cursor": next })))
}

/// The body of `DELETE /v1/campaigns/{id}/notifications`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RetractionView {
    pub campaign_id: String,
    /// When it was retracted (the first time: asking again answers the same).
    pub retracted_at: chrono::DateTime<chrono::Utc>,
    /// The campaign's broadcast, when it was sent as one.
    pub broadcast_id: Option<uuid::Uuid>,
}

/// `DELETE /v1/campaigns/{id}/notifications`: takes a sent campaign back from every recipient.
#[utoipa::path(delete, path = "/v1/campaigns/{id}/notifications", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, description = "Retracted: the campaign's items leave every inbox (personal and broadcast) and open sockets get a `retracted` frame; its sends not yet made are cancelled (counted `cancelled`), a fan-out still running stops. Asked again, the same answer", body = RetractionView),
              (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody),
              (status = 409, description = "The campaign has not started: nothing was sent (cancel it instead)", body = herald_http::openapi::ErrorBody)))]
pub async fn retract(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<RetractionView>> {
    let r = herald_usecases::retractions::retract(&ctx, &id).await?;
    Ok(Json(RetractionView {
        campaign_id: r.campaign_id,
        retracted_at: r.retracted_at,
        broadcast_id: r.broadcast_id,
    }))
}

/// The body of `PATCH /v1/campaigns/{id}/content`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RevisionView {
    pub campaign_id: String,
    /// 1 for the first change, one more for each change after it.
    pub revision: u32,
    pub revised_at: chrono::DateTime<chrono::Utc>,
    /// The campaign's broadcast, when it is sent as one.
    pub broadcast_id: Option<uuid::Uuid>,
    /// Whether pushes already sent are being replaced (the campaign has the push channel and
    /// has started): they go out a few seconds after the change, page by page.
    pub replacing_pushes: bool,
}

/// `PATCH /v1/campaigns/{id}/content`: changes what every recipient of a campaign sees.
#[utoipa::path(patch, path = "/v1/campaigns/{id}/content", tag = "campaigns", params(("id" = String, Path)),
    request_body = herald_usecases::revisions::ContentPatch,
    responses((status = 200, description = "Changed: every inbox shows the new text (personal rows and the broadcast) and open sockets get an `updated` frame; sends not yet made go out with it; pushes already sent are replaced (same collapse key: the campaign id)", body = RevisionView),
              (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody),
              (status = 409, description = "The campaign is cancelled, failed or retracted, or another change got there first", body = herald_http::openapi::ErrorBody),
              (status = 422, description = "No content, both `template` and `content`, a template without text for one of the campaign's channels, or text that does not compile or exceeds a limit", body = herald_http::openapi::ErrorBody)))]
pub async fn revise(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
    JsonBody(patch): JsonBody<herald_usecases::revisions::ContentPatch>,
) -> ApiResult<Json<RevisionView>> {
    let done = herald_usecases::revisions::revise(&ctx, &id, patch).await?;
    let r = done.revision;
    Ok(Json(RevisionView {
        replacing_pushes: done.replacing_pushes,
        campaign_id: r.campaign_id,
        revision: r.revision,
        revised_at: r.revised_at,
        broadcast_id: r.broadcast_id,
    }))
}

#[utoipa::path(post, path = "/v1/campaigns/{id}/cancel", tag = "campaigns", params(("id" = String, Path)), responses((status = 200, description = "Cancelled: remaining batches are not sent, a broadcast leaves every inbox", body = crate::openapi::CampaignView), (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody), (status = 409, description = "Already completed, failed or cancelled", body = herald_http::openapi::ErrorBody)))]
pub async fn cancel(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let open = [
        CampaignStatus::Scheduled,
        CampaignStatus::Sizing,
        CampaignStatus::FanningOut,
        CampaignStatus::Active,
    ];
    let now = ctx.clock.now();
    if !ctx
        .ports
        .campaigns
        .transition(&id, &open, CampaignStatus::Cancelled, now)
        .await?
    {
        return match ctx.ports.campaigns.get_campaign(&id).await? {
            None => Err(not_found(&id)),
            Some(c) => Err(ApiError::Core(Error::conflict(format!(
                "campaign `{id}` is already {}",
                c.status.as_str()
            )))),
        };
    }
    let c = ctx
        .ports
        .campaigns
        .get_campaign(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if c.strategy == Strategy::Broadcast {
        // The broadcast leaves every inbox with its campaign.
        ctx.ports
            .broadcasts
            .transition(
                herald_core::ids::broadcast_id(&c.id),
                &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
                BroadcastStatus::Cancelled,
            )
            .await?;
    }
    metrics::counter!("herald_campaigns_cancelled_total").increment(1);
    Ok(Json(campaign_json(&c)))
}

/// `GET /v1/campaigns/{id}/failed-batches`: the batches given up after their attempts.
#[utoipa::path(get, path = "/v1/campaigns/{id}/failed-batches", tag = "campaigns", params(("id" = String, Path)), responses((status = 200, body = crate::openapi::FailedBatches), (status = 404, description = "No such campaign", body = herald_http::openapi::ErrorBody)))]
pub async fn failed_batches(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    if ctx.ports.campaigns.get_campaign(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let batches = ctx.ports.campaigns.failed_batches(&id).await?;
    Ok(Json(json!({ "failed_batches": batches })))
}

/// `POST /v1/campaigns/{id}/failed-batches/{batch_no}/replay`: puts a given-up batch back on
/// the fan-out queue, once; its counters are added when it is processed.
#[utoipa::path(post, path = "/v1/campaigns/{id}/failed-batches/{batch_no}/replay", tag = "campaigns", params(("id" = String, Path), ("batch_no" = u64, Path)), responses((status = 202, description = "Queued again", body = crate::openapi::BatchReplayed), (status = 404, description = "No such campaign or failed batch", body = herald_http::openapi::ErrorBody), (status = 409, description = "Already replayed", body = herald_http::openapi::ErrorBody)))]
pub async fn replay_failed_batch(
    State(ctx): State<Context>,
    PathParams((id, batch_no)): PathParams<(String, u64)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let campaigns = &ctx.ports.campaigns;
    let missing = || ApiError::not_found(format!("campaign `{id}` has no failed batch {batch_no}"));
    let batch = campaigns
        .failed_batches(&id)
        .await?
        .into_iter()
        .find(|b| b.batch_no == batch_no)
        .ok_or_else(missing)?;
    let now = ctx.clock.now();
    match campaigns.mark_batch_replayed(&id, batch_no, now).await? {
        None => return Err(missing()),
        Some(false) => {
            return Err(ApiError::Core(Error::conflict(format!(
                "failed batch {batch_no} of campaign `{id}` was replayed already"
            ))))
        }
        Some(true) => {}
    }
    let message = herald_core::topics::FanoutBatch {
        campaign_id: id.clone(),
        batch_no,
        user_ids: batch.user_ids.clone(),
        replay: true,
        failed_attempts: 0,
        message_users: ctx.config.fanout.message_users,
    };
    let payload = serde_json::to_vec(&message)
        .map_err(|e| Error::internal("batch encoding").with_source(e))?;
    let out = OutMessage {
        key: Some(id.clone()),
        payload,
    };
    if let Err(e) = ctx
        .ports
        .bus
        .publish(herald_core::topics::BATCHES, &[out])
        .await
    {
        // Not queued: replayable again.
        campaigns.reset_batch_replay(&id, batch_no).await?;
        return Err(e.into());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "campaign_id": id,
            "batch_no": batch_no,
            "users": batch.user_ids.len(),
            "replayed_at": now,
        })),
    ))
}
