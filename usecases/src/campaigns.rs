//! Creating a campaign: validate the request against the directory (nothing is written when
//! it is refused), size the audience, choose the strategy, store the campaign, and hint a
//! dispatcher. Dispatchers find it in the campaign store by themselves; the hint only wakes
//! one early, so a bus that cannot take the hint loses nothing.
//!
//! With an idempotency key, creation is idempotent by construction: the key is claimed with the
//! id of the campaign it creates, bound before anything else is written. A retry after any
//! failure (the client gave up, the process died, the bus was down) finds that id and creates
//! that very campaign, or finds it created and answers what the first request answered. The key
//! is given back only when the request was refused as invalid, before anything was written.

use chrono::{DateTime, Duration, Utc};
use herald_core::filter::Filter;
use herald_core::ids::validate_key;
use herald_core::model::*;
use herald_core::ports::IdempotencyClaim;
use herald_core::strategy::{self, RequestedStrategy};
use herald_core::{topics, Context, Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Largest inline `users` audience.
pub const MAX_INLINE_USERS: usize = 10_000;

/// The body of `POST /v1/campaigns`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
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
    /// Presence-aware push: `offline` sends the push only to recipients with no live inbox
    /// socket (needs the `push` and `in_app` channels).
    #[serde(default)]
    pub push_when: PushWhen,
    /// With `push_when: offline`: recipients with a live socket get the push after this many
    /// seconds (1 to 86400) if they have not read or dismissed the item by then, instead of
    /// not at all.
    #[serde(default)]
    pub online_push_delay_s: Option<u32>,
}

/// Checks a campaign request against the directory and sizes its audience. Nothing is written.
pub(crate) async fn validate_and_size(
    ctx: &Context,
    input: &mut CampaignInput,
    now: DateTime<Utc>,
) -> Result<u64> {
    // Channels: at least one, each once, in a stable order.
    if input.channels.is_empty() {
        return Err(Error::invalid("channels: at least one channel is needed"));
    }
    input.channels.sort();
    input.channels.dedup();
    if let Some(category) = &input.category {
        validate_category(category)?;
    }
    validate_push_when(&input.channels, input.push_when, input.online_push_delay_s)?;
    input.data = match std::mem::take(&mut input.data) {
        Value::Null => Value::Object(Map::new()),
        Value::Object(o) => Value::Object(o),
        _ => return Err(Error::invalid("data: must be a JSON object")),
    };
    if let (Some(s), Some(e)) = (input.starts_at, input.expires_at) {
        if e <= s {
            return Err(Error::invalid("expires_at must be after starts_at"));
        }
    }
    if input.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::invalid("expires_at is in the past"));
    }

    // Content: a stored template with text for every channel, or inline text.
    resolve_content(
        ctx,
        input.template.as_deref(),
        input.content.as_ref(),
        &input.channels,
    )
    .await?;

    if input.strategy == RequestedStrategy::Broadcast
        && !matches!(input.audience, Audience::Segment(_) | Audience::All(_))
    {
        return Err(Error::invalid(
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
                return Err(Error::invalid(format!(
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
                .ok_or_else(|| Error::invalid(format!("segment `{name}` does not exist")))?;
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
            return Err(Error::invalid(
                "audience.all must be true (or choose users or a segment)",
            ))
        }
    };
    Ok(size)
}

/// The content a campaign (or a change of its content) names: a stored template with text for
/// every one of `channels`, or inline text within its limits; compiled and checked, so what
/// is returned renders.
pub(crate) async fn resolve_content(
    ctx: &Context,
    template: Option<&str>,
    content: Option<&TitleBody>,
    channels: &[Channel],
) -> Result<TemplateContent> {
    match (template, content) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "give either `template` or `content`, not both",
        )),
        (None, None) => Err(Error::invalid(
            "give `template` (an id) or `content` ({\"title\", \"body\"})",
        )),
        (Some(id), None) => {
            let template = ctx
                .ports
                .directory
                .get_template(id)
                .await?
                .ok_or_else(|| Error::invalid(format!("template `{id}` does not exist")))?;
            let has = template.content.channels();
            if let Some(missing) = channels.iter().find(|c| !has.contains(c)) {
                return Err(Error::invalid(format!(
                    "template `{id}` has no {missing} content"
                )));
            }
            template.content.validate()?;
            Ok(template.content)
        }
        (None, Some(content)) => {
            herald_core::template::check("content.title", &content.title)?;
            herald_core::template::check("content.body", &content.body)?;
            if content.title.len() > 1024 || content.body.len() > 16 * 1024 {
                return Err(Error::invalid(
                    "content: title at most 1 KiB, body at most 16 KiB",
                ));
            }
            let compiled = herald_core::template::Compiled::inline(&content.title, &content.body)?;
            compiled.check_limits()?;
            Ok(compiled.content().clone())
        }
    }
}

/// What the client is answered when a campaign is created: its id, strategy, audience size
/// and status at creation. Stored with the idempotency key, so a replay answers the same.
pub fn summary(c: &Campaign) -> Value {
    json!({
        "id": c.id,
        "strategy": c.strategy,
        "audience_size": c.audience_size,
        "status": c.status,
    })
}

/// An `Idempotency-Key` with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

impl IdempotencyKey {
    /// The key of a request whose body is `body` (hashed canonically: key order and
    /// whitespace do not matter).
    pub fn new(key: impl Into<String>, body: &Value) -> Result<Self> {
        let key = key.into();
        if key.is_empty() || key.len() > 255 || key.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(Error::invalid(
                "Idempotency-Key must be 1 to 255 visible characters",
            ));
        }
        Ok(Self {
            key,
            request_hash: request_hash(body),
        })
    }
}

/// The outcome of [`create_campaign`].
#[derive(Debug)]
pub enum Created {
    /// Created by this call.
    New(Box<Campaign>),
    /// The key's first request created it (or is creating it); this is its answer: the
    /// status code and body it was answered with.
    Replayed { status: u16, body: Vec<u8> },
}

/// Creates a campaign from a request, once per idempotency key (see the module doc).
pub async fn create_campaign(
    ctx: &Context,
    mut input: CampaignInput,
    key: Option<&IdempotencyKey>,
) -> Result<Created> {
    let now = ctx.clock.now();
    let campaigns = &ctx.ports.campaigns;
    // The campaign's id: fresh, or the one bound to the key by an earlier attempt.
    let (id, fresh_claim) = match key {
        None => (herald_core::ids::new_id().to_string(), false),
        Some(k) => {
            let fresh = herald_core::ids::new_id().to_string();
            let ttl = Duration::hours(i64::from(ctx.config.api.idempotency_ttl_hours.max(1)));
            match campaigns
                .claim_idempotency_key(&k.key, &k.request_hash, &fresh, now + ttl)
                .await?
            {
                IdempotencyClaim::Claimed => (fresh, true),
                IdempotencyClaim::Existing(r) if r.request_hash != k.request_hash => {
                    return Err(Error::conflict(
                        "this Idempotency-Key was used with a different request body",
                    ))
                }
                IdempotencyClaim::Existing(r) => match r.response {
                    Some((status, body)) => return Ok(Created::Replayed { status, body }),
                    // An earlier attempt stopped before answering: it may have created the
                    // campaign, or not yet; either way this one goes on with its id.
                    None => match campaigns.get_campaign(&r.resource_id).await? {
                        Some(c) => return replay_created(ctx, k, &c).await,
                        None => (r.resource_id, false),
                    },
                },
            }
        }
    };
    let size = match validate_and_size(ctx, &mut input, now).await {
        Ok(size) => size,
        Err(e) => {
            // Refused before anything was written: the client may fix the body and retry
            // with the same key. A failure of a backend keeps the key bound to its id.
            if let (Some(k), true) = (key, fresh_claim) {
                if matches!(e.kind, ErrorKind::Invalid | ErrorKind::NotFound) {
                    campaigns.release_idempotency_key(&k.key, &id).await?;
                }
            }
            return Err(e);
        }
    };
    let campaign = build(ctx, id, input, size, now);
    match campaigns.insert_campaign(&campaign).await {
        Ok(()) => {}
        // A concurrent attempt with the same key inserted it first.
        Err(e) if e.kind == ErrorKind::Conflict && key.is_some() => {
            let existing = campaigns
                .get_campaign(&campaign.id)
                .await?
                .ok_or_else(|| Error::internal("a conflicting campaign vanished"))?;
            return replay_created(ctx, key.expect("checked"), &existing).await;
        }
        Err(e) => return Err(e),
    }
    metrics::counter!("herald_campaigns_created_total", "strategy" => campaign.strategy.as_str())
        .increment(1);
    if campaign.status != CampaignStatus::Scheduled {
        topics::hint_dispatch(ctx.ports.bus.as_ref(), &campaign.id).await;
    }
    if let Some(k) = key {
        let body = summary(&campaign).to_string();
        campaigns
            .complete_idempotency_key(&k.key, CREATED_STATUS, body.as_bytes())
            .await?;
    }
    Ok(Created::New(Box::new(campaign)))
}

/// The status a created campaign is answered with (202 Accepted: it is dispatched later).
pub const CREATED_STATUS: u16 = 202;

/// The answer for a campaign an earlier attempt with the same key created: its summary,
/// stored with the key so later replays answer the same without a lookup.
async fn replay_created(ctx: &Context, k: &IdempotencyKey, c: &Campaign) -> Result<Created> {
    let body = summary(c).to_string().into_bytes();
    ctx.ports
        .campaigns
        .complete_idempotency_key(&k.key, CREATED_STATUS, &body)
        .await?;
    Ok(Created::Replayed {
        status: CREATED_STATUS,
        body,
    })
}

/// The campaign a validated request describes.
fn build(
    ctx: &Context,
    id: String,
    input: CampaignInput,
    size: u64,
    now: DateTime<Utc>,
) -> Campaign {
    let strategy = strategy::choose(size, &input.audience, input.strategy, &ctx.config.strategy);
    let scheduled = input.starts_at.is_some_and(|s| s > now);
    let batch = u64::from(ctx.config.fanout_batch_size());
    Campaign {
        id,
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
        push_when: input.push_when,
        online_push_delay_s: input.online_push_delay_s,
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
    }
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
