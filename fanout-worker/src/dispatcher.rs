//! The dispatcher: owns a campaign through a lease in the campaign store and cuts its
//! audience into batches.
//!
//! Ownership lives in the campaign store, not on the bus: a dispatcher takes a claimable
//! campaign's lease (one owner at a time, a fencing token raised per acquisition), keeps it
//! with a heartbeat while it works, and gives it back when done. It pages through the audience
//! by key (user id, never OFFSET), publishes one bus message per batch at the strategy's pace,
//! and checkpoints its position with fenced writes, so a dispatcher that dies is replaced
//! (lease expiry) by one that resumes from the checkpoint, and one that stalled past its lease
//! stops at its next checkpoint. Batches republished after the checkpoint are recognised
//! downstream by their number. Broadcasts are stored once instead.

use crate::pacing::Pacer;
use crate::DISPATCH_LEASE;
use chrono::Utc;
use herald_core::consume::SharedConsumer;
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::topics::{self, FanoutBatch};
use herald_core::worker::{AbortOnDrop, Worker, WorkerState};
use herald_core::{strategy, Context, Error, ErrorKind, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Batches published between two checkpoints.
const CHECKPOINT_EVERY: u64 = 16;
/// How long an idle dispatcher waits for a dispatch hint before it looks for claimable
/// campaigns again (the hint only shortens the wait; the store is the source of truth).
const HINT_WAIT: Duration = Duration::from_secs(1);

/// A dispatcher: takes campaigns that need one from the campaign store under a lease (wall
/// clock: the lease is shared with other processes), cuts them, and gives the lease back.
/// Dispatch hints on the bus ([`topics::DISPATCH`]) only wake it early.
pub struct Dispatcher {
    ctx: Context,
    owner: String,
    hints: Arc<SharedConsumer>,
}

impl Dispatcher {
    pub fn new(ctx: Context) -> Self {
        let hints = Self::hints(&ctx);
        Self::with_hints(ctx, hints)
    }

    /// The member of [`topics::DISPATCHERS`] the dispatchers of a process share.
    pub fn hints(ctx: &Context) -> Arc<SharedConsumer> {
        SharedConsumer::new(ctx.ports.bus.clone(), topics::DISPATCH, topics::DISPATCHERS)
    }

    pub fn with_hints(ctx: Context, hints: Arc<SharedConsumer>) -> Self {
        Self {
            ctx,
            owner: format!("dispatcher-{}", uuid::Uuid::new_v4()),
            hints,
        }
    }
}

#[async_trait::async_trait]
impl Worker for Dispatcher {
    fn name(&self) -> &'static str {
        "dispatcher"
    }

    async fn step(&mut self, shutdown: &CancellationToken) -> Result<WorkerState> {
        let ctx = &self.ctx;
        for id in ctx
            .ports
            .campaigns
            .claimable_campaigns(Utc::now(), 8)
            .await?
        {
            let Some(lease) = ctx
                .ports
                .campaigns
                .acquire_lease(&id, &self.owner, Utc::now(), DISPATCH_LEASE)
                .await?
            else {
                continue; // another dispatcher was quicker
            };
            run_owned(ctx, lease, shutdown).await?;
            return Ok(WorkerState::Busy);
        }
        // Nothing to take: wait for a hint (or the timeout), then look again.
        for hint in self.hints.poll(64, HINT_WAIT).await? {
            hint.commit().await?;
        }
        Ok(WorkerState::Busy)
    }
}

pub enum Outcome {
    Done,
    /// Stopped before the end (shutdown, or the lease was lost): the next owner resumes.
    Interrupted,
    /// Another dispatcher holds the campaign.
    Busy,
}

/// Dispatches campaign `id` now, if no other dispatcher holds it (tools and tests; the
/// dispatcher workers find their campaigns themselves).
pub async fn dispatch(ctx: &Context, id: &str, shutdown: &CancellationToken) -> Result<Outcome> {
    let owner = format!("direct-{}", uuid::Uuid::new_v4());
    match ctx
        .ports
        .campaigns
        .acquire_lease(id, &owner, Utc::now(), DISPATCH_LEASE)
        .await?
    {
        Some(lease) => run_owned(ctx, lease, shutdown).await,
        None => Ok(Outcome::Busy),
    }
}

/// Cuts the leased campaign while a heartbeat keeps the lease, then gives the lease back.
async fn run_owned(
    ctx: &Context,
    lease: CampaignLease,
    shutdown: &CancellationToken,
) -> Result<Outcome> {
    // Cancelled at shutdown, or by the heartbeat when the lease is lost.
    let stop = shutdown.child_token();
    let _heartbeat = AbortOnDrop::spawn(heartbeat(ctx.clone(), lease.clone(), stop.clone()));
    let outcome = dispatch_owned(ctx, &lease, &stop).await;
    let campaigns = &ctx.ports.campaigns;
    let mut retry_at = Utc::now();
    if matches!(outcome, Ok(Outcome::Done)) {
        // A campaign left claimable after a finished dispatch would be taken again at once:
        // hold it back instead (a bug guard; every Done path ends batching or the campaign).
        if let Some(c) = campaigns.get_campaign(&lease.campaign_id).await? {
            let dispatchable = matches!(
                c.status,
                CampaignStatus::Sizing | CampaignStatus::FanningOut | CampaignStatus::Active
            );
            if dispatchable && !c.checkpoint.batching_done {
                tracing::warn!(campaign = %c.id, status = %c.status.as_str(), "dispatch ended without finishing batching; retrying later");
                retry_at += chrono::Duration::seconds(30);
            }
        }
    }
    campaigns.release_lease(&lease, retry_at).await?;
    outcome
}

/// Renews `lease` every third of its time; cancels `lost` when another owner has it (or the
/// store cannot be reached for longer than the lease).
async fn heartbeat(ctx: Context, lease: CampaignLease, lost: CancellationToken) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(DISPATCH_LEASE / 3).await;
        match ctx
            .ports
            .campaigns
            .renew_lease(&lease, Utc::now(), DISPATCH_LEASE)
            .await
        {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::warn!(campaign = %lease.campaign_id, "campaign lease taken over; stopping");
                lost.cancel();
                return;
            }
            Err(e) if last_ok.elapsed() >= DISPATCH_LEASE => {
                tracing::warn!(campaign = %lease.campaign_id, error = %e, "campaign lease not renewed in time; stopping");
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing a campaign lease failed; retrying"),
        }
    }
}

/// Cuts one leased campaign into batches (or stores its broadcast). Safe to call again at
/// any point.
async fn dispatch_owned(
    ctx: &Context,
    lease: &CampaignLease,
    stop: &CancellationToken,
) -> Result<Outcome> {
    let campaign_id = lease.campaign_id.as_str();
    let Some(campaign) = ctx.ports.campaigns.get_campaign(campaign_id).await? else {
        tracing::warn!(campaign = campaign_id, "dispatch of an unknown campaign");
        return Ok(Outcome::Done);
    };
    let now = ctx.clock.now();
    match campaign.status {
        s if s.is_final() => return Ok(Outcome::Done),
        CampaignStatus::Scheduled if campaign.starts_at.is_some_and(|s| s > now) => {
            return Ok(Outcome::Done); // the scheduler releases it when due
        }
        _ => {}
    }
    if campaign.strategy == Strategy::Broadcast {
        if campaign.status != CampaignStatus::Active {
            store_broadcast(ctx, &campaign).await?;
        }
        // In-app is served from the broadcast store; push, email, SMS and webhooks still go
        // per user, in the background, through the same batches (DESIGN.md flow 3).
        if !campaign
            .channels
            .iter()
            .any(|c| topics::OUTBOUND.contains(c))
        {
            let done = Checkpoint {
                batching_done: true,
                ..campaign.checkpoint.clone()
            };
            ctx.ports.campaigns.save_checkpoint(lease, &done).await?;
            return Ok(Outcome::Done);
        }
        let campaign = ctx
            .ports
            .campaigns
            .get_campaign(&campaign.id)
            .await?
            .ok_or_else(|| Error::not_found("campaign vanished"))?;
        return cut_batches(ctx, &campaign, lease, stop).await;
    }
    ctx.ports
        .campaigns
        .transition(
            &campaign.id,
            &[CampaignStatus::Scheduled, CampaignStatus::Sizing],
            CampaignStatus::FanningOut,
            now,
        )
        .await?;
    cut_batches(ctx, &campaign, lease, stop).await
}

/// The audience of a campaign as something to page through.
enum Source {
    List(Vec<String>),
    Filter(Filter),
}

async fn source(ctx: &Context, audience: &Audience) -> Result<Source> {
    Ok(match audience {
        Audience::User(id) => Source::List(vec![id.clone()]),
        Audience::Users(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            ids.dedup();
            Source::List(ids)
        }
        Audience::Segment(name) => Source::Filter(
            ctx.ports
                .directory
                .get_segment(name)
                .await?
                .ok_or_else(|| Error::not_found(format!("segment `{name}` was deleted")))?
                .filter,
        ),
        Audience::All(_) => Source::Filter(Filter::match_all()),
    })
}

async fn cut_batches(
    ctx: &Context,
    campaign: &Campaign,
    lease: &CampaignLease,
    stop: &CancellationToken,
) -> Result<Outcome> {
    let mut cp = campaign.checkpoint.clone();
    if !cp.batching_done {
        let source = match source(ctx, &campaign.audience).await {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::NotFound => {
                tracing::warn!(campaign = %campaign.id, error = %e, "campaign failed");
                ctx.ports
                    .campaigns
                    .transition(
                        &campaign.id,
                        &[CampaignStatus::FanningOut],
                        CampaignStatus::Failed,
                        ctx.clock.now(),
                    )
                    .await?;
                // A broadcast stays visible; only its background sends end here.
                cp.batching_done = true;
                ctx.ports.campaigns.save_checkpoint(lease, &cp).await?;
                return Ok(Outcome::Done);
            }
            Err(e) => return Err(e),
        };
        let batch_size = ctx.config.fanout_batch_size();
        let pace = strategy::pace(
            campaign.strategy,
            campaign.audience_size,
            &ctx.config.strategy,
            &ctx.config.throttle,
        );
        let pacer = Pacer::new(
            campaign.strategy,
            pace,
            batch_size,
            ctx.config.throttle.max_queue_depth,
            &campaign.channels,
        );
        // Relative times in the filter resolve once, so every page sees the same audience.
        let as_of = campaign.started_at.unwrap_or_else(|| ctx.clock.now());
        let started = Instant::now();
        let first_batch = cp.next_batch;
        loop {
            if stop.is_cancelled() {
                // Shutting down (or taken over): the checkpoint lets the next owner resume.
                ctx.ports.campaigns.save_checkpoint(lease, &cp).await?;
                return Ok(Outcome::Interrupted);
            }
            // Cancel stops the remaining batches at once: the status is read before every
            // batch (one indexed read per thousand users).
            let status = ctx
                .ports
                .campaigns
                .get_campaign(&campaign.id)
                .await?
                .map(|c| c.status);
            if !matches!(
                status,
                Some(CampaignStatus::FanningOut | CampaignStatus::Active)
            ) {
                tracing::info!(campaign = %campaign.id, ?status, "batching stopped");
                ctx.ports.campaigns.save_checkpoint(lease, &cp).await?;
                return Ok(Outcome::Done);
            }
            let ids = match &source {
                Source::List(all) => {
                    let start = match &cp.after_user {
                        None => 0,
                        Some(after) => all.partition_point(|id| id <= after),
                    };
                    all[start..]
                        .iter()
                        .take(batch_size as usize)
                        .cloned()
                        .collect::<Vec<_>>()
                }
                Source::Filter(filter) => {
                    ctx.ports
                        .directory
                        .page_user_ids(filter, cp.after_user.as_deref(), batch_size, as_of)
                        .await?
                }
            };
            let Some(last) = ids.last().cloned() else {
                break;
            };
            pacer.ready(ctx.ports.bus.as_ref(), ids.len() as u32).await;
            let batch = FanoutBatch {
                campaign_id: campaign.id.clone(),
                batch_no: cp.next_batch,
                user_ids: ids,
                replay: false,
                failed_attempts: 0,
                message_users: ctx.config.fanout.message_users,
            };
            let payload = serde_json::to_vec(&batch)
                .map_err(|e| Error::internal("batch encoding").with_source(e))?;
            ctx.ports
                .bus
                .publish(
                    topics::BATCHES,
                    &[OutMessage {
                        key: Some(campaign.id.clone()),
                        payload,
                    }],
                )
                .await?;
            metrics::counter!("herald_fanout_batches_published_total").increment(1);
            cp.next_batch += 1;
            cp.after_user = Some(last);
            if cp.next_batch.is_multiple_of(CHECKPOINT_EVERY)
                && !ctx.ports.campaigns.save_checkpoint(lease, &cp).await?
            {
                // Fenced out: another dispatcher owns the campaign now and resumes from the
                // last checkpoint; batches cut twice meanwhile carry the same numbers and
                // are counted once downstream.
                tracing::warn!(campaign = %campaign.id, "campaign taken over; stopping");
                return Ok(Outcome::Interrupted);
            }
        }
        cp.batching_done = true;
        if !ctx.ports.campaigns.save_checkpoint(lease, &cp).await? {
            tracing::warn!(campaign = %campaign.id, "campaign taken over at its end");
            return Ok(Outcome::Interrupted);
        }
        drop(pacer);
        tracing::info!(
            campaign = %campaign.id,
            batches = cp.next_batch - first_batch,
            secs = started.elapsed().as_secs_f64(),
            "audience cut into batches"
        );
    }
    // The last batch may have finished before batching was marked done.
    crate::worker::complete_if_done(ctx, &campaign.id).await?;
    Ok(Outcome::Done)
}

/// Stores a broadcast campaign once (fan-out-on-read); the inbox merges it at read time.
async fn store_broadcast(ctx: &Context, campaign: &Campaign) -> Result<()> {
    let now = ctx.clock.now();
    let (filter, segment) = match &campaign.audience {
        Audience::Segment(name) => (
            ctx.ports
                .directory
                .get_segment(name)
                .await?
                .map(|s| s.filter)
                .unwrap_or_default(),
            Some(name.clone()),
        ),
        _ => (Filter::match_all(), None),
    };
    // Its content as last changed (`PATCH /v1/campaigns/{id}/content` before it started),
    // else as created.
    let (content, data) = match ctx.ports.campaigns.revision(&campaign.id).await? {
        Some(r) => (herald_core::template::Compiled::new(r.content)?, r.data),
        None => (
            crate::worker::compiled_content(ctx, campaign).await?,
            campaign.data.clone(),
        ),
    };
    // A broadcast is the same for everyone: placeholders see the campaign data only.
    let (title, body) = herald_core::template::broadcast_text(&content, &data)?;
    let starts_at = campaign.starts_at.unwrap_or(now);
    let broadcast = Broadcast {
        id: herald_core::ids::broadcast_id(&campaign.id),
        campaign_id: Some(campaign.id.clone()),
        title,
        body,
        category: campaign.category.clone(),
        data,
        segment,
        filter,
        channels: campaign.channels.clone(),
        priority: campaign.priority,
        starts_at,
        expires_at: campaign.expires_at,
        status: if starts_at <= now {
            BroadcastStatus::Active
        } else {
            BroadcastStatus::Scheduled
        },
        created_at: now,
    };
    match ctx.ports.broadcasts.insert(&broadcast).await {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::Conflict => {} // stored by an earlier attempt
        Err(e) => return Err(e),
    }
    ctx.ports
        .campaigns
        .transition(
            &campaign.id,
            &[CampaignStatus::Scheduled, CampaignStatus::Sizing],
            CampaignStatus::Active,
            now,
        )
        .await?;
    if broadcast.status == BroadcastStatus::Active {
        let _ = ctx
            .ports
            .live
            .publish(LiveEvent::BroadcastActivated {
                broadcast: Box::new(broadcast),
            })
            .await;
    }
    tracing::info!(campaign = %campaign.id, "broadcast stored once");
    Ok(())
}
