//! Batch workers: one fan-out batch in, for its users: one preference lookup for the whole
//! batch, opt-outs per channel and category, quiet hours in each user's time zone, content
//! rendered per channel, one batched write of the inbox rows, one channel message per channel
//! (per quiet-hours end time), one live event, then the batch's counters (once) and the ack.

use herald_core::consume::{dead_letter, SharedConsumer};
use herald_core::delivery::{RecipientRecord, RecipientStatus};
use herald_core::ids::notification_id;
use herald_core::model::*;
use herald_core::template::{self, Compiled};
use herald_core::topics::{self, ChannelItem, ChannelMessage, FanoutBatch, ReadCheck};
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a worker trusts its cached copy of a campaign (a cancel is seen within this).
const CAMPAIGN_TTL: Duration = Duration::from_millis(500);

/// Campaigns with their compiled content, shared by a process's workers.
#[derive(Clone, Default)]
pub struct CampaignCache(Arc<Mutex<HashMap<String, Cached>>>);

#[derive(Clone)]
struct Cached {
    /// With the data of its latest revision, if its content was changed.
    campaign: Arc<Campaign>,
    content: Arc<Compiled>,
    /// The revision `content` is (0: the content it was created with).
    revision: u32,
    fetched: Instant,
}

impl CampaignCache {
    async fn get(&self, ctx: &Context, id: &str) -> Result<Option<Cached>> {
        if let Some(hit) = self.0.lock().get(id) {
            if hit.fetched.elapsed() < CAMPAIGN_TTL {
                return Ok(Some(hit.clone()));
            }
        }
        let campaigns = &ctx.ports.campaigns;
        let (campaign, revised) =
            tokio::try_join!(campaigns.get_campaign(id), campaigns.revision(id))?;
        let Some(mut campaign) = campaign else {
            return Ok(None);
        };
        let revision = revised.as_ref().map_or(0, |r| r.revision);
        // Reuse the compiled content while its revision stays the same.
        let known = self
            .0
            .lock()
            .get(id)
            .filter(|old| old.revision == revision)
            .map(|old| old.content.clone());
        let content = match (known, revised) {
            (Some(content), revised) => {
                if let Some(r) = revised {
                    campaign.data = r.data;
                }
                content
            }
            // Batches rendered from here on carry the change (a change made while the
            // campaign fans out reaches the rest of its audience this way).
            (None, Some(r)) => {
                campaign.data = r.data;
                Arc::new(Compiled::new(r.content)?)
            }
            (None, None) => Arc::new(compiled_content(ctx, &campaign).await?),
        };
        let fresh = Cached {
            campaign: Arc::new(campaign),
            content,
            revision,
            fetched: Instant::now(),
        };
        let mut map = self.0.lock();
        if map.len() > 1024 {
            map.retain(|_, c| c.fetched.elapsed() < Duration::from_secs(60));
        }
        map.insert(id.to_owned(), fresh.clone());
        Ok(Some(fresh))
    }
}

/// The campaign's content, compiled: its template's, or its inline title and body.
pub async fn compiled_content(ctx: &Context, campaign: &Campaign) -> Result<Compiled> {
    match &campaign.content {
        CampaignContent::Inline(tb) => Compiled::inline(&tb.title, &tb.body),
        CampaignContent::Template(id) => {
            let t = ctx
                .ports
                .directory
                .get_template(id)
                .await?
                .ok_or_else(|| Error::not_found(format!("template `{id}` was deleted")))?;
            Compiled::new(t.content)
        }
    }
}

/// A batch worker: one batch off [`topics::BATCHES`] per step.
pub struct BatchWorker {
    ctx: Context,
    cache: CampaignCache,
    batches: Arc<SharedConsumer>,
}

impl BatchWorker {
    /// A worker reading `batches` (one member shared by the process's batch workers).
    pub fn new(ctx: Context, cache: CampaignCache, batches: Arc<SharedConsumer>) -> Self {
        Self {
            ctx,
            cache,
            batches,
        }
    }

    /// The member of [`topics::BATCH_WORKERS`] the batch workers of a process share.
    pub fn consumer(ctx: &Context) -> Arc<SharedConsumer> {
        SharedConsumer::new(
            ctx.ports.bus.clone(),
            topics::BATCHES,
            topics::BATCH_WORKERS,
        )
    }
}

#[async_trait::async_trait]
impl Worker for BatchWorker {
    fn name(&self) -> &'static str {
        "batch-worker"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let ctx = &self.ctx;
        let deliveries = self.batches.poll(1, Duration::from_secs(1)).await?;
        let max = ctx.config.fanout.max_batch_attempts.max(1);
        for d in deliveries {
            let Ok(batch) = serde_json::from_slice::<FanoutBatch>(d.payload()) else {
                tracing::error!("undecodable batch dead-lettered");
                let bus = self.batches.bus();
                dead_letter(
                    bus.as_ref(),
                    topics::BATCHES,
                    topics::BATCH_WORKERS,
                    d.delivery(),
                    "undecodable batch",
                )
                .await?;
                d.commit().await?;
                continue;
            };
            // Attempts so far: the failed ones before this message, and this message's
            // deliveries (more than one when an attempt ended without an answer).
            let attempt = batch.failed_attempts + d.attempt();
            let outcome = if attempt > max {
                // Its earlier attempts ended without an answer (a panic, a crash): give it up
                // rather than let it take a worker down again and again.
                let reason = format!("{max} attempts ended without finishing (a crash or a panic)");
                give_up_batch(ctx, &batch, &reason).await
            } else {
                // Presence is asked on a batch's first delivery only (see `hold_back_online`).
                process_with_cache(ctx, &self.cache, &batch, attempt <= 1).await
            };
            match outcome {
                Ok(()) => d.commit().await?,
                Err(e) => {
                    metrics::counter!("herald_fanout_batch_failures_total").increment(1);
                    if attempt >= max {
                        // Out of attempts: counted as failed so the campaign still ends.
                        give_up_batch(ctx, &batch, &e.to_string()).await?;
                    } else {
                        // Retried after a backoff, through the delay store (the bus keeps no
                        // timers): the same batch, carrying the count of failed attempts.
                        let backoff = Duration::from_millis(500 * u64::from(attempt.min(20)));
                        retry_later(ctx, &batch, attempt, backoff).await?;
                    }
                    d.commit().await?;
                    // The runner counts it: a worker whose batches keep failing is reported.
                    return Err(e);
                }
            }
        }
        Ok(WorkerState::Busy)
    }
}

/// Schedules `batch` again after `backoff`, as attempt `failed + 1`. The delay id is the
/// batch and its attempt: a redelivered failure schedules the same retry, not a second one.
async fn retry_later(
    ctx: &Context,
    batch: &FanoutBatch,
    failed: u32,
    backoff: Duration,
) -> Result<()> {
    let next = FanoutBatch {
        failed_attempts: failed,
        ..batch.clone()
    };
    let payload =
        serde_json::to_vec(&next).map_err(|e| Error::internal("batch encoding").with_source(e))?;
    let now = ctx.clock.now();
    let due = now + chrono::Duration::from_std(backoff).unwrap_or_default();
    let replay = if batch.replay { "/replay" } else { "" };
    ctx.ports
        .publish_at(
            topics::BATCHES,
            OutMessage {
                key: Some(batch.campaign_id.clone()),
                payload,
            },
            Some(due),
            now,
            || {
                format!(
                    "{}/{}/{}/{failed}{replay}",
                    topics::BATCHES,
                    batch.campaign_id,
                    batch.batch_no
                )
            },
        )
        .await
}

/// Processes one batch outside the worker loop (tests, tools).
pub async fn process_batch(ctx: &Context, batch: &FanoutBatch) -> Result<()> {
    process_with_cache(
        ctx,
        &CampaignCache::default(),
        batch,
        batch.failed_attempts == 0,
    )
    .await
}

async fn process_with_cache(
    ctx: &Context,
    cache: &CampaignCache,
    batch: &FanoutBatch,
    first_delivery: bool,
) -> Result<()> {
    let started = Instant::now();
    let cached = match cache.get(ctx, &batch.campaign_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(campaign = %batch.campaign_id, "batch of an unknown campaign dropped");
            return Ok(());
        }
        // The campaign's template was deleted: no batch of it can ever render.
        Err(e) if e.kind == ErrorKind::NotFound => {
            tracing::warn!(campaign = %batch.campaign_id, error = %e, "campaign failed");
            ctx.ports
                .campaigns
                .transition(
                    &batch.campaign_id,
                    &[CampaignStatus::FanningOut, CampaignStatus::Active],
                    CampaignStatus::Failed,
                    ctx.clock.now(),
                )
                .await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let campaign = &cached.campaign;
    let now = ctx.clock.now();
    if matches!(
        campaign.status,
        CampaignStatus::Cancelled | CampaignStatus::Failed
    ) {
        return Ok(()); // cancelled: the remaining batches do nothing
    }
    let expired = campaign.expires_at.is_some_and(|e| e <= now);
    let (delta, queued, failures) = if expired {
        (Progress::default(), Vec::new(), Vec::new())
    } else {
        deliver(ctx, &cached, batch, now, first_delivery).await?
    };
    let mut stage = Stages::start();
    let campaigns = &ctx.ports.campaigns;
    let fresh = if batch.replay {
        campaigns
            .record_replayed_batch(&campaign.id, batch.batch_no, &delta, &queued, &failures)
            .await?
    } else {
        campaigns
            .record_batch(&campaign.id, batch.batch_no, &delta, &queued, &failures)
            .await?
    };
    stage.done("record_batch");
    if fresh {
        metrics::counter!("herald_fanout_users_total").increment(batch.user_ids.len() as u64);
        metrics::counter!("herald_fanout_notifications_written_total")
            .increment(delta.notifications_written);
        metrics::histogram!("herald_fanout_batch_seconds").record(started.elapsed().as_secs_f64());
    }
    complete_if_done(ctx, &campaign.id).await?;
    stage.done("complete_check");
    Ok(())
}

/// Gives a batch up after its last attempt: counted done and failed (its users got nothing),
/// with the reason in the campaign's failure sample, and kept whole so that an operator can
/// replay it once the cause is fixed (`POST /v1/campaigns/{id}/failed-batches/{n}/replay`).
/// The campaign still ends.
pub async fn give_up_batch(ctx: &Context, batch: &FanoutBatch, reason: &str) -> Result<()> {
    let failed = FailedBatch {
        campaign_id: batch.campaign_id.clone(),
        batch_no: batch.batch_no,
        user_ids: batch.user_ids.clone(),
        reason: format!(
            "batch {} ({} users) given up: {reason}",
            batch.batch_no,
            batch.user_ids.len()
        ),
        failed_at: ctx.clock.now(),
        replayed_at: None,
    };
    tracing::error!(campaign = %batch.campaign_id, batch = batch.batch_no, %reason, "batch given up after its last attempt");
    metrics::counter!("herald_fanout_batches_given_up_total").increment(1);
    if batch.replay {
        // The replay failed too: the batch stays failed, and replayable again.
        return ctx
            .ports
            .campaigns
            .reset_batch_replay(&batch.campaign_id, batch.batch_no)
            .await;
    }
    ctx.ports.campaigns.record_failed_batch(&failed).await?;
    complete_if_done(ctx, &batch.campaign_id).await
}

/// Marks the campaign completed once every batch is published and processed.
pub async fn complete_if_done(ctx: &Context, campaign_id: &str) -> Result<()> {
    if let Some(c) = ctx.ports.campaigns.get_campaign(campaign_id).await? {
        if c.status == CampaignStatus::FanningOut && c.all_batches_done() {
            let done = ctx
                .ports
                .campaigns
                .transition(
                    campaign_id,
                    &[CampaignStatus::FanningOut],
                    CampaignStatus::Completed,
                    ctx.clock.now(),
                )
                .await?;
            if done {
                tracing::info!(campaign = campaign_id, "campaign completed");
            }
        }
    }
    Ok(())
}

/// What rendering a batch produced.
struct Rendered {
    progress: Progress,
    rows: Vec<Notification>,
    /// One channel message per channel and quiet-hours end (the part; 0 for "at once").
    outbound: BTreeMap<(Channel, i64), Part>,
    failures: Vec<RecipientFailure>,
}

type Part = (Option<chrono::DateTime<chrono::Utc>>, Vec<ChannelItem>);

/// The work on one batch's users. Every write here is idempotent, so a redelivered batch
/// repeats it harmlessly; its counters are added by the caller once.
async fn deliver(
    ctx: &Context,
    cached: &Cached,
    batch: &FanoutBatch,
    now: chrono::DateTime<chrono::Utc>,
    first_delivery: bool,
) -> Result<(
    Progress,
    Vec<(Channel, DeliveryCounts)>,
    Vec<RecipientFailure>,
)> {
    let campaign = &cached.campaign;
    let revision = cached.revision;
    let ids = &batch.user_ids;
    let mut stage = Stages::start();
    // Only the attributes the content renders and the ones the fan-out itself reads: the
    // locale picks the content's variant, when it has variants; the time zone places quiet
    // hours, when they can hold a send back.
    let mut own: Vec<&str> = Vec::with_capacity(2);
    if cached.content.has_locales() {
        own.push("locale");
    }
    if quiet_hours_apply(campaign) {
        own.push("timezone");
    }
    let keys = cached.content.user_keys().clone().with(&own);
    let users = Users::new(ctx.ports.directory.get_users_keeping(ids, &keys).await?);
    stage.done("load_users");
    let cache = through_cache(campaign, batch, ctx.config.fanout_batch_size());
    let prefs = load_preferences(ctx, ids, cache).await?;
    stage.done("load_preferences");

    // Rendering is CPU work bounded per field (see herald_core::template): it runs on a
    // blocking thread, so a heavy template never stalls the runtime's workers.
    let (c, content, batch_no, ids) = (
        campaign.clone(),
        cached.content.clone(),
        batch.batch_no,
        ids.clone(),
    );
    let Rendered {
        mut progress,
        rows,
        outbound,
        failures,
    } = tokio::task::spawn_blocking(move || {
        render_batch(&c, &content, batch_no, &ids, users, prefs, now)
    })
    .await
    .map_err(|e| Error::internal("rendering a batch panicked").with_source(e))?;
    stage.done("render");

    ctx.ports.inbox.write_batch(&rows).await?;
    progress.notifications_written = rows.len() as u64;
    stage.done("write_inbox");

    let mut outbound = outbound;
    let mut counts: BTreeMap<Channel, DeliveryCounts> = BTreeMap::new();
    if campaign.push_when == PushWhen::Offline && first_delivery {
        // Only a user who has the item in the inbox can be looking at it: a broadcast's is
        // everyone's, a personal row only where in-app was allowed.
        let with_item: Option<std::collections::HashSet<&str>> = (campaign.strategy
            != Strategy::Broadcast)
            .then(|| rows.iter().map(|r| r.user_id.as_str()).collect());
        let suppressed =
            hold_back_online(ctx, campaign, &mut outbound, with_item.as_ref(), now).await;
        if !suppressed.is_empty() {
            let n = suppressed.len() as u64;
            counts.entry(Channel::Push).or_default().suppressed_online += n;
            metrics::counter!("herald_fanout_push_suppressed_online_total").increment(n);
            // Their record, for the campaign's explanation of each recipient.
            let records: Vec<RecipientRecord> = suppressed
                .into_iter()
                .map(|user_id| RecipientRecord {
                    campaign_id: campaign.id.clone(),
                    user_id,
                    channel: Channel::Push,
                    status: RecipientStatus::SuppressedOnline,
                    sent: 0,
                    reason: Some("had a live inbox socket when the batch was published".into()),
                    dead_letter_id: None,
                    attempt: 0,
                    at: now,
                })
                .collect();
            ctx.ports.deliveries.record_recipients(&records).await?;
        }
        stage.done("presence");
    }
    let read_check = if campaign.strategy == Strategy::Broadcast {
        ReadCheck::Broadcast
    } else {
        ReadCheck::Inbox
    };
    let mut pieces = Pieces::new(&batch.user_ids, batch.message_users);
    for ((channel, part), (deliver_after, items)) in outbound {
        counts.entry(channel).or_default().queued += items.len() as u64;
        for (piece, items) in pieces.split(items) {
            let msg = ChannelMessage {
                campaign_id: campaign.id.clone(),
                batch_no: batch.batch_no,
                channel,
                part,
                piece,
                span: None,
                category: campaign.category.clone(),
                priority: campaign.priority,
                deliver_after,
                expires_at: campaign.expires_at,
                attempt: 0,
                replay_of: None,
                unless_read: (part < 0).then_some(read_check),
                revision,
                replaces: None,
                items,
            };
            // A piece too large for one broker message (large bodies) goes as several.
            let messages = msg.encoded()?;
            // Recipients in quiet hours: the message waits in the delay store until they end.
            let topic = topics::channel_topic(channel);
            for (msg, payload) in messages {
                ctx.ports
                    .publish_at(
                        topic,
                        OutMessage {
                            key: Some(campaign.id.clone()),
                            payload,
                        },
                        deliver_after,
                        now,
                        || format!("{topic}/{}", msg.delivery_key()),
                    )
                    .await?;
            }
        }
    }
    stage.done("publish_channels");
    if !rows.is_empty() {
        // Live delivery is best effort: the rows are stored and clients resume from them.
        if let Err(e) = ctx
            .ports
            .live
            .publish(LiveEvent::Notifications { items: rows })
            .await
        {
            tracing::debug!(error = %e, "live event not published");
        }
    }
    stage.done("publish_live");
    Ok((progress, counts.into_iter().collect(), failures))
}

/// Cuts a batch's items on one channel into its pieces (see [`ChannelMessage::piece`]): by
/// each user's position in the batch, so a batch processed again puts every user in the
/// piece, and so the message under the delivery key, it was in the first time.
struct Pieces<'a> {
    ids: &'a [String],
    users_per_piece: usize,
    /// Each user's piece, built the first time a batch of several pieces needs it.
    piece_of: Option<HashMap<&'a str, u32>>,
}

impl<'a> Pieces<'a> {
    /// `message_users` as the batch carries it: 0 makes the whole batch one piece.
    fn new(ids: &'a [String], message_users: u32) -> Self {
        Self {
            ids,
            users_per_piece: match message_users {
                0 => usize::MAX,
                n => n as usize,
            },
            piece_of: None,
        }
    }

    /// The items by piece, in piece order; a batch of one piece is one message, piece 0.
    fn split(&mut self, items: Vec<ChannelItem>) -> Vec<(u32, Vec<ChannelItem>)> {
        if self.ids.len() <= self.users_per_piece {
            return vec![(0, items)];
        }
        let (ids, per) = (self.ids, self.users_per_piece);
        let piece_of = self.piece_of.get_or_insert_with(|| {
            ids.iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), (i / per) as u32))
                .collect()
        });
        let mut out: BTreeMap<u32, Vec<ChannelItem>> = BTreeMap::new();
        for item in items {
            // Every item is of one of the batch's users.
            let piece = piece_of.get(item.user_id.as_str()).copied().unwrap_or(0);
            out.entry(piece).or_default().push(item);
        }
        out.into_iter().collect()
    }
}

/// Presence-aware push (`push_when: offline`): takes the pushes of recipients with a live
/// inbox socket and the item in their inbox (`with_item`: the users with a row, or `None` for
/// a broadcast, which everyone has) out of `outbound`. Without `online_push_delay_s` they are not sent (the
/// returned users, `suppressed_online`); with it they move to an unless-read part of their
/// own, due after the delay (or the end of their quiet hours, if later), which the push
/// gateway sends only to those who have not read or dismissed the item by then.
///
/// If presence cannot be read, everyone counts as offline: a push too many rather than one
/// lost. The same goes for a batch delivered again (a worker died before its ack, or an attempt
/// failed): presence may have changed since, and deciding again would change which recipients
/// the channel message of part 0 holds, whose copy from the first delivery the gateway takes
/// as the one (same delivery key), so a recipient moved into it would get nothing. Not asked
/// again, the first delivery's decisions stand (its held-back messages are already kept), and
/// at worst a held-back recipient is also pushed at once.
async fn hold_back_online(
    ctx: &Context,
    campaign: &Campaign,
    outbound: &mut BTreeMap<(Channel, i64), Part>,
    with_item: Option<&std::collections::HashSet<&str>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let has_item = |user: &str| with_item.is_none_or(|users| users.contains(user));
    let parts: Vec<(Channel, i64)> = outbound
        .keys()
        .filter(|(ch, part)| *ch == Channel::Push && *part >= 0)
        .copied()
        .collect();
    let users: Vec<String> = parts
        .iter()
        .flat_map(|key| outbound[key].1.iter().map(|i| i.user_id.clone()))
        .filter(|u| has_item(u))
        .collect();
    if users.is_empty() {
        return Vec::new();
    }
    let online = match ctx.ports.live.online(&users).await {
        Ok(online) => online,
        Err(e) => {
            tracing::warn!(campaign = %campaign.id, error = %e, "presence unknown; pushing to everyone");
            metrics::counter!("herald_fanout_presence_failures_total").increment(1);
            return Vec::new();
        }
    };
    if online.is_empty() {
        return Vec::new();
    }
    let delay = campaign
        .online_push_delay_s
        .map(|s| chrono::Duration::seconds(i64::from(s)));
    let mut suppressed = Vec::new();
    for key in parts {
        let Some((after, items)) = outbound.remove(&key) else {
            continue;
        };
        let (held, kept): (Vec<ChannelItem>, Vec<ChannelItem>) = items
            .into_iter()
            .partition(|item| online.contains(&item.user_id) && has_item(&item.user_id));
        if !kept.is_empty() {
            outbound.insert(key, (after, kept));
        }
        if held.is_empty() {
            continue;
        }
        match delay {
            None => suppressed.extend(held.into_iter().map(|i| i.user_id)),
            Some(delay) => {
                let due = after.map_or(now + delay, |quiet_end| quiet_end.max(now + delay));
                let entry = outbound
                    .entry((Channel::Push, topics::unless_read_part(key.1)))
                    .or_default();
                entry.0 = entry.0.max(Some(due));
                entry.1.extend(held);
            }
        }
    }
    suppressed
}

/// A batch's users as the directory gave them, sorted by id and found by binary search: no
/// copy of each id as a map key, no hashing (a thousand of each per batch, then freed).
struct Users(Vec<Arc<User>>);

impl Users {
    fn new(users: Vec<User>) -> Users {
        let mut users: Vec<Arc<User>> = users.into_iter().map(Arc::new).collect();
        // The directory reads them in id order already (as a range of its key); sorting a
        // sorted run is one pass.
        users.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Users(users)
    }

    fn get(&self, id: &str) -> Option<&Arc<User>> {
        let users = &self.0;
        users
            .binary_search_by(|u| u.id.as_str().cmp(id))
            .ok()
            .map(|i| &users[i])
    }
}

/// Decides and renders every user's notification of a batch: preferences, quiet hours,
/// content. A user whose content does not render (a template limit, or an error their data
/// causes) is skipped whole and counted in `failed_render`, the first reasons kept; the others
/// go on.
fn render_batch(
    campaign: &Campaign,
    content: &Compiled,
    batch_no: u64,
    ids: &[String],
    users: Users,
    prefs: Vec<Preferences>,
    now: chrono::DateTime<chrono::Utc>,
) -> Rendered {
    let category = campaign.category.as_deref();
    // Rows of one campaign share one timestamp, so a replayed batch rewrites the same keys;
    // in whole milliseconds, the precision the rows' ids carry.
    let created_at = herald_core::ids::row_time(campaign.started_at.unwrap_or(campaign.created_at));
    let data = template::data_value(&campaign.data);
    let broadcast = campaign.strategy == Strategy::Broadcast;
    let quiet = quiet_hours_apply(campaign);
    // Fields that read no `user` render once for the batch.
    let mut memo = template::Memo::default();
    let mut out = Rendered {
        progress: Progress::default(),
        rows: Vec::new(),
        outbound: BTreeMap::new(),
        failures: Vec::new(),
    };
    for (id, prefs) in ids.iter().zip(prefs.iter()) {
        // Users named by id need not be in the directory: they get what needs no address.
        let unknown;
        let user = match users.get(id) {
            Some(user) => user,
            None => {
                unknown = Arc::new(User::nameless(id));
                &unknown
            }
        };
        let allowed: Vec<Channel> = campaign
            .channels
            .iter()
            .copied()
            // A broadcast's in-app item is the stored broadcast, merged at read time.
            .filter(|ch| !(broadcast && *ch == Channel::InApp))
            .filter(|ch| prefs.allows(*ch, category))
            .collect();
        if allowed.is_empty() {
            out.progress.skipped_opted_out += 1;
            continue;
        }
        // Quiet hours hold back what interrupts (push, email, SMS) for low and normal
        // priority; the inbox row and webhooks are not interruptions.
        let quiet_until = if !quiet {
            None
        } else {
            prefs
                .quiet_hours
                .and_then(|q| q.ends_after(now, user.timezone().unwrap_or(chrono_tz::UTC)))
        };
        // The template's variant for the user's `locale` attribute, if it has one.
        let content = content.for_user(user);
        let render_ctx = template::context(user, &data);
        let nid = notification_id(&campaign.id, id, created_at);
        // Everything of this user first, so a render error skips the user whole.
        let rendered: Result<Vec<Rendition>> = allowed
            .iter()
            .map(|&ch| {
                let at = created_at;
                render_for(ch, campaign, content, user, nid, at, &render_ctx, &mut memo)
            })
            .collect();
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                out.progress.failed_render += 1;
                if out.failures.len() < herald_core::ports::KEPT_FAILURES {
                    out.failures.push(RecipientFailure {
                        batch_no,
                        user_id: Some(id.clone()),
                        reason: e.message,
                    });
                }
                continue;
            }
        };
        let mut deferred = false;
        for r in rendered {
            match r {
                Rendition::Row(row) => out.rows.push(row),
                Rendition::Item(ch, item) => {
                    let after = match ch {
                        Channel::Webhook => None,
                        _ => quiet_until,
                    };
                    deferred |= after.is_some();
                    let part = after.map_or(0, |t| t.timestamp());
                    let entry = out.outbound.entry((ch, part)).or_default();
                    entry.0 = entry.0.max(after);
                    entry.1.push(item);
                }
                Rendition::NoAddress => {}
            }
        }
        if deferred {
            out.progress.deferred_quiet_hours += 1;
        }
    }
    out
}

/// Whether quiet hours can hold any of the campaign's sends back: they hold back what
/// interrupts (push, email, SMS) at low and normal priority, never the inbox row or a
/// webhook. When they cannot, the users' time zones are not read.
fn quiet_hours_apply(campaign: &Campaign) -> bool {
    !campaign.priority.bypasses_quiet_hours()
        && campaign.channels.iter().any(|ch| match ch {
            Channel::Push | Channel::Email | Channel::Sms => true,
            Channel::InApp | Channel::Webhook => false,
        })
}

/// One user's content on one channel.
enum Rendition {
    Row(Notification),
    Item(Channel, ChannelItem),
    /// The user has no address for the channel (no email, no phone).
    NoAddress,
}

#[allow(clippy::too_many_arguments)]
fn render_for<'c>(
    ch: Channel,
    campaign: &Campaign,
    content: &'c Compiled,
    user: &User,
    nid: uuid::Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    render_ctx: &minijinja::Value,
    memo: &mut template::Memo<'c>,
) -> Result<Rendition> {
    if ch == Channel::InApp {
        let (title, body) = template::render_in_app(content, render_ctx, memo)?;
        return Ok(Rendition::Row(Notification {
            id: nid,
            user_id: user.id.clone(),
            campaign_id: Some(campaign.id.clone()),
            title,
            body,
            category: campaign.category.clone(),
            data: campaign.data.clone(),
            created_at,
            read_at: None,
            seen_at: None,
            archived_at: None,
        }));
    }
    Ok(
        match template::render_item(ch, content, user, nid, &campaign.data, render_ctx, memo)? {
            Some(item) => Rendition::Item(ch, item),
            None => Rendition::NoAddress,
        },
    )
}

/// Per-stage timing of a batch, exported as `herald_fanout_stage_seconds{stage}`.
struct Stages(Instant);

impl Stages {
    fn start() -> Self {
        Self(Instant::now())
    }

    fn done(&mut self, stage: &'static str) {
        let now = Instant::now();
        metrics::histogram!("herald_fanout_stage_seconds", "stage" => stage)
            .record((now - self.0).as_secs_f64());
        self.0 = now;
    }
}

/// Whether a batch's preferences go through the preference cache. The cache is for users who
/// get notification after notification (triggered events, small campaigns): a campaign of more
/// than one batch reaches each of its users once, and filling the cache with them would only
/// take memory (a million users' entries are about 120 MB, until they expire) and push out the
/// entries the cache is for; its batches read the directory alone.
fn through_cache(campaign: &Campaign, batch: &FanoutBatch, batch_size: u32) -> bool {
    batch.batch_no == 0 && campaign.audience_size <= u64::from(batch_size)
}

/// Preferences of every user of the batch, in order. Past the cache (see [`through_cache`]):
/// one directory read. Through it: one cache lookup for the whole batch,
/// one directory read for the misses, which then go into the cache.
async fn load_preferences(
    ctx: &Context,
    ids: &[String],
    use_cache: bool,
) -> Result<Vec<Preferences>> {
    if !use_cache {
        let mut loaded = ctx.ports.directory.get_preferences(ids).await?;
        return Ok(ids
            .iter()
            .map(|id| loaded.remove(id).unwrap_or_default())
            .collect());
    }
    let cached = ctx.ports.preference_cache.get_many(ids).await?;
    let misses: Vec<String> = ids
        .iter()
        .zip(cached.iter())
        .filter(|(_, p)| p.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let mut loaded = if misses.is_empty() {
        HashMap::new()
    } else {
        ctx.ports.directory.get_preferences(&misses).await?
    };
    if !misses.is_empty() {
        let fill: Vec<(String, Preferences)> = misses
            .iter()
            .map(|id| (id.clone(), loaded.get(id).cloned().unwrap_or_default()))
            .collect();
        ctx.ports.preference_cache.put_many(&fill).await?;
    }
    Ok(ids
        .iter()
        .zip(cached)
        .map(|(id, hit)| hit.or_else(|| loaded.remove(id)).unwrap_or_default())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finds_each_of_its_users_whatever_order_the_directory_read_them_in() {
        let ids = ["u-10", "u-2", "a", "u-1", "z", "é"];
        let users = Users::new(ids.iter().rev().map(|id| User::nameless(id)).collect());
        for id in ids {
            assert_eq!(users.get(id).map(|u| u.id.as_str()), Some(id));
        }
        for absent in ["", "u-3", "u-", "zz", "u-10 "] {
            assert!(users.get(absent).is_none(), "{absent:?}");
        }
        assert!(Users::new(Vec::new()).get("a").is_none());
    }
}
