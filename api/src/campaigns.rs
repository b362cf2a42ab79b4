//! `/v1/campaigns`: create (sized, strategy chosen, idempotent), read with progress, list,
//! cancel. The fan-out itself runs in `herald-fanout`; creating a campaign stores it and puts a
//! dispatch request on the bus.

use crate::http::{ApiError, ApiResult, PathParams, QueryParams};
use crate::pages::PageParams;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use herald_core::filter::Filter;
use herald_core::ids::validate_key;
use herald_core::model::*;
use herald_core::ports::IdempotencyClaim;
use herald_core::strategy::{self, RequestedStrategy};
use herald_core::topics::{self, DispatchRequest};
use herald_core::{Context, Error};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Largest inline `users` audience.
pub const MAX_INLINE_USERS: usize = 10_000;

/// The body of `POST /v1/campaigns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignInput {
    pub audience: Audience,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub content: Option<TitleBody>,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub strategy: RequestedStrategy,
}

/// Checks a campaign request against the directory and sizes its audience. Nothing is written.
async fn validate_and_size(
    ctx: &Context,
    input: &mut CampaignInput,
    now: DateTime<Utc>,
) -> ApiResult<u64> {
    // Channels: at least one, each once, in a stable order.
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
    input.data = match std::mem::take(&mut input.data) {
        Value::Null => Value::Object(Map::new()),
        Value::Object(o) => Value::Object(o),
        _ => return Err(ApiError::invalid("data: must be a JSON object")),
    };
    if let (Some(s), Some(e)) = (input.starts_at, input.expires_at) {
        if e <= s {
            return Err(ApiError::invalid("expires_at must be after starts_at"));
        }
    }
    if input.expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::invalid("expires_at is in the past"));
    }

    // Content: a stored template with text for every channel, or inline text.
    match (&input.template, &input.content) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either `template` or `content`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "a campaign needs `template` (an id) or `content` ({\"title\", \"body\"})",
            ))
        }
        (Some(id), None) => {
            let template = ctx
                .ports
                .directory
                .get_template(id)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("template `{id}` does not exist")))?;
            let has = template.content.channels();
            if let Some(missing) = input.channels.iter().find(|c| !has.contains(c)) {
                return Err(ApiError::invalid(format!(
                    "template `{id}` has no {missing} content"
                )));
            }
            template.content.validate()?;
        }
        (None, Some(content)) => {
            herald_core::template::check("content.title", &content.title)?;
            herald_core::template::check("content.body", &content.body)?;
            if content.title.len() > 1024 || content.body.len() > 16 * 1024 {
                return Err(ApiError::invalid(
                    "content: title at most 1 KiB, body at most 16 KiB",
                ));
            }
        }
    }

    if input.strategy == RequestedStrategy::Broadcast
        && !matches!(input.audience, Audience::Segment(_) | Audience::All(_))
    {
        return Err(ApiError::invalid(
            "strategy `broadcast` is for a segment or `all`; name users for a targeted campaign",
        ));
    }

    // Audience: valid, and its size.
    let size = match &mut input.audience {
        Audience::User(id) => {
            validate_key("audience.user", id)?;
            1
        }
        Audience::Users(ids) => {
            if ids.is_empty() || ids.len() > MAX_INLINE_USERS {
                return Err(ApiError::invalid(format!(
                    "audience.users: between 1 and {MAX_INLINE_USERS} user ids"
                )));
            }
            for id in ids.iter() {
                validate_key("audience.users", id)?;
            }
            ids.sort();
            ids.dedup();
            ids.len() as u64
        }
        Audience::Segment(name) => {
            let segment = ctx
                .ports
                .directory
                .get_segment(name)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("segment `{name}` does not exist")))?;
            ctx.ports
                .directory
                .count_users(&segment.filter, now)
                .await?
        }
        Audience::All(true) => {
            ctx.ports
                .directory
                .count_users(&Filter::match_all(), now)
                .await?
        }
        Audience::All(false) => {
            return Err(ApiError::invalid(
                "audience.all must be true (or choose users or a segment)",
            ))
        }
    };
    Ok(size)
}

/// Creates a campaign from a validated request: the shared path of `POST /v1/campaigns` and
/// event rules.
pub async fn create_campaign(ctx: &Context, mut input: CampaignInput) -> ApiResult<Campaign> {
    let now = ctx.clock.now();
    let size = validate_and_size(ctx, &mut input, now).await?;
    let strategy = strategy::choose(size, &input.audience, input.strategy, &ctx.config.strategy);
    let scheduled = input.starts_at.is_some_and(|s| s > now);
    let batch = u64::from(ctx.config.fanout.batch_size);
    let campaign = Campaign {
        id: herald_core::ids::new_id().to_string(),
        audience: input.audience,
        content: match (input.template, input.content) {
            (Some(t), _) => CampaignContent::Template(t),
            (None, Some(c)) => CampaignContent::Inline(c),
            (None, None) => unreachable!("validated"),
        },
        channels: input.channels,
        category: input.category,
        priority: input.priority,
        data: input.data,
        starts_at: input.starts_at,
        expires_at: input.expires_at,
        strategy,
        status: if scheduled {
            CampaignStatus::Scheduled
        } else {
            CampaignStatus::Sizing
        },
        audience_size: size,
        progress: Progress {
            batches_total: if strategy == Strategy::Broadcast {
                0
            } else {
                size.div_ceil(batch)
            },
            ..Progress::default()
        },
        deliveries: Default::default(),
        created_at: now,
        started_at: None,
        completed_at: None,
        checkpoint: Checkpoint::default(),
    };
    ctx.ports.campaigns.insert_campaign(&campaign).await?;
    if !scheduled {
        dispatch(ctx, &campaign.id).await?;
    }
    metrics::counter!("herald_campaigns_created_total", "strategy" => strategy.as_str())
        .increment(1);
    Ok(campaign)
}

/// Puts a dispatch request for `campaign_id` on the bus.
pub async fn dispatch(ctx: &Context, campaign_id: &str) -> Result<(), Error> {
    let body = serde_json::to_vec(&DispatchRequest {
        campaign_id: campaign_id.to_owned(),
    })
    .map_err(|e| Error::internal("dispatch request").with_source(e))?;
    ctx.ports
        .bus
        .publish(
            topics::DISPATCH,
            &[OutMessage {
                key: Some(campaign_id.to_owned()),
                payload: body,
            }],
        )
        .await
}

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

/// The canonical hash of a request body: key order and whitespace do not matter.
fn request_hash(body: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), canonical(&o[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    hex_digest(canonical(body).to_string().as_bytes())
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn create(State(ctx): State<Context>, headers: HeaderMap, body: Bytes) -> Response {
    match create_inner(&ctx, &headers, &body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(ctx: &Context, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let raw: Value = crate::http::parse_json(body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key must be 1 to 255 visible characters")
                })?;
            Some(k.to_owned())
        }
    };
    let Some(key) = key else {
        return respond(ctx, raw).await;
    };
    let hash = request_hash(&raw);
    let ttl = Duration::hours(i64::from(ctx.config.api.idempotency_ttl_hours.max(1)));
    match ctx
        .ports
        .campaigns
        .claim_idempotency_key(&key, &hash, ctx.clock.now() + ttl)
        .await?
    {
        IdempotencyClaim::Existing(record) if record.request_hash != hash => Err(ApiError::Core(
            Error::conflict("this Idempotency-Key was used with a different request body"),
        )),
        IdempotencyClaim::Existing(record) => match record.response {
            Some((status, body)) => Ok((
                StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
                [
                    ("content-type", "application/json"),
                    ("idempotent-replayed", "true"),
                ],
                body,
            )
                .into_response()),
            None => Err(ApiError::Core(Error::conflict(
                "a request with this Idempotency-Key is still being processed",
            ))),
        },
        IdempotencyClaim::Claimed => match respond(ctx, raw).await {
            Ok(resp) => {
                // Keep what the client saw, to answer replays byte for byte.
                let (parts, body) = resp.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .map_err(|e| Error::internal("response body").with_source(e))?;
                ctx.ports
                    .campaigns
                    .complete_idempotency_key(&key, parts.status.as_u16(), &bytes)
                    .await?;
                Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
            }
            Err(e) => {
                // A rejected request does not hold the key: the client may fix and retry.
                ctx.ports.campaigns.release_idempotency_key(&key).await?;
                Err(e)
            }
        },
    }
}

async fn respond(ctx: &Context, raw: Value) -> ApiResult<Response> {
    let input: CampaignInput = crate::http::parse_json(raw.to_string().as_bytes())?;
    let c = create_campaign(ctx, input).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": c.id,
            "strategy": c.strategy,
            "audience_size": c.audience_size,
            "status": c.status,
        })),
    )
        .into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("campaign `{id}` not found"))
}

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
    Ok(Json(campaign_json(&c)))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    // Not `#[serde(flatten)] PageParams`: flattened query values arrive as strings only.
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(ctx): State<Context>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Value>> {
    let (limit, before) = PageParams::keyset(params.limit, params.cursor)?;
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
