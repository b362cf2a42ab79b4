//! The dispatcher: takes a campaign off the dispatch queue and cuts its audience into batches.
//!
//! It pages through the audience by key (user id, never OFFSET), publishes one bus message per
//! batch at the strategy's pace, and checkpoints its position in the campaign store, so a
//! dispatcher that dies is replaced (lease expiry) by one that resumes from the checkpoint.
//! Batches republished after the checkpoint are recognised downstream by their number.
//! Broadcasts are stored once instead.

use crate::pacing::Pacer;
use crate::DISPATCH_LEASE;
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::topics::{self, DispatchRequest, FanoutBatch};
use herald_core::{strategy, Context, Error, ErrorKind, Result};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Batches published between two checkpoints.
const CHECKPOINT_EVERY: u64 = 16;

pub async fn run(ctx: Context, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = ctx.ports.bus.receive(
                topics::DISPATCH,
                topics::DISPATCHERS,
                1,
                DISPATCH_LEASE,
                Duration::from_secs(1),
            ) => r,
        };
        let deliveries = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "dispatch queue unavailable");
                if !crate::pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        for d in deliveries {
            let receipt = [d.receipt.clone()];
            // Keep the lease while this campaign is being cut, however long that takes.
            let keep = ctx.clone();
            let keep_receipt = receipt.clone();
            let keeper = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(DISPATCH_LEASE / 3).await;
                    let _ = keep
                        .ports
                        .bus
                        .extend(
                            topics::DISPATCH,
                            topics::DISPATCHERS,
                            &keep_receipt,
                            DISPATCH_LEASE,
                        )
                        .await;
                }
            });
            let outcome = match serde_json::from_slice::<DispatchRequest>(&d.payload) {
                Ok(req) => dispatch(&ctx, &req.campaign_id, &shutdown).await,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable dispatch request dropped");
                    Ok(Outcome::Done)
                }
            };
            keeper.abort();
            match outcome {
                Ok(Outcome::Done) => {
                    let _ = ctx
                        .ports
                        .bus
                        .ack(topics::DISPATCH, topics::DISPATCHERS, &receipt)
                        .await;
                }
                // Shutting down mid-campaign: hand it to the next dispatcher at once.
                Ok(Outcome::Interrupted) => {
                    let _ = ctx
                        .ports
                        .bus
                        .nack(
                            topics::DISPATCH,
                            topics::DISPATCHERS,
                            &receipt,
                            Duration::ZERO,
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch failed; retrying shortly");
                    let _ = ctx
                        .ports
                        .bus
                        .nack(
                            topics::DISPATCH,
                            topics::DISPATCHERS,
                            &receipt,
                            Duration::from_secs(2),
                        )
                        .await;
                }
            }
        }
    }
}

pub enum Outcome {
    Done,
    Interrupted,
}

/// Cuts one campaign into batches (or stores its broadcast). Safe to call again at any point.
pub async fn dispatch(
    ctx: &Context,
    campaign_id: &str,
    shutdown: &CancellationToken,
) -> Result<Outcome> {
    let Some(campaign) = ctx.ports.campaigns.get_campaign(campaign_id).await? else {
        tracing::warn!(
            campaign = campaign_id,
            "dispatch request for an unknown campaign"
        );
        return Ok(Outcome::Done);
    };
    let now = ctx.clock.now();
    match campaign.status {
        s if s.is_final() || s == CampaignStatus::Active => return Ok(Outcome::Done),
        CampaignStatus::Scheduled if campaign.starts_at.is_some_and(|s| s > now) => {
            return Ok(Outcome::Done); // the scheduler sends it again when due
        }
        _ => {}
    }
    if campaign.strategy == Strategy::Broadcast {
        store_broadcast(ctx, &campaign).await?;
        // In-app is served from the broadcast store; push, email, SMS and webhooks still go
        // per user, in the background, through the same batches (DESIGN.md flow 3).
        if !campaign
            .channels
            .iter()
            .any(|c| topics::OUTBOUND.contains(c))
        {
            return Ok(Outcome::Done);
        }
        let campaign = ctx
            .ports
            .campaigns
            .get_campaign(&campaign.id)
            .await?
            .ok_or_else(|| Error::not_found("campaign vanished"))?;
        return cut_batches(ctx, &campaign, shutdown).await;
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
    cut_batches(ctx, &campaign, shutdown).await
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
    shutdown: &CancellationToken,
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
                return Ok(Outcome::Done);
            }
            Err(e) => return Err(e),
        };
        let batch_size = ctx.config.fanout.batch_size;
        let pace = strategy::pace(
            campaign.strategy,
            campaign.audience_size,
            &ctx.config.strategy,
            &ctx.config.throttle,
        );
        let pacer = Pacer::new(
            &campaign.id,
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
            if shutdown.is_cancelled() {
                ctx.ports
                    .campaigns
                    .save_checkpoint(&campaign.id, &cp)
                    .await?;
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
                ctx.ports
                    .campaigns
                    .save_checkpoint(&campaign.id, &cp)
                    .await?;
                pacer.finish();
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
            if cp.next_batch.is_multiple_of(CHECKPOINT_EVERY) {
                ctx.ports
                    .campaigns
                    .save_checkpoint(&campaign.id, &cp)
                    .await?;
            }
        }
        cp.batching_done = true;
        ctx.ports
            .campaigns
            .save_checkpoint(&campaign.id, &cp)
            .await?;
        pacer.finish();
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
    let content = crate::worker::compiled_content(ctx, campaign).await?;
    // A broadcast is the same for everyone: placeholders see the campaign data only.
    let render_ctx = herald_core::template::context_without_user(&campaign.data);
    let c = content.content();
    let (title, body, title_field, body_field) = if let Some(tb) = &c.in_app {
        (&tb.title, &tb.body, "in_app.title", "in_app.body")
    } else if let Some(tb) = &c.push {
        (&tb.title, &tb.body, "push.title", "push.body")
    } else if let Some(e) = &c.email {
        (&e.subject, &e.text, "email.subject", "email.text")
    } else {
        return Err(Error::invalid(
            "a broadcast needs in_app, push or email content",
        ));
    };
    let starts_at = campaign.starts_at.unwrap_or(now);
    let broadcast = Broadcast {
        id: herald_core::ids::broadcast_id(&campaign.id),
        campaign_id: Some(campaign.id.clone()),
        title: content.render(title_field, title, &render_ctx)?,
        body: content.render(body_field, body, &render_ctx)?,
        category: campaign.category.clone(),
        data: campaign.data.clone(),
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
