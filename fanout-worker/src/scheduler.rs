//! The scheduler: releases scheduled campaigns when their `starts_at` comes, also after a
//! restart (the campaigns wait in the store, not in memory), moves broadcasts through their
//! lifecycle ([`crate::lifecycle::tick`]), purges inbox rows past retention (hourly) and
//! expired idempotency keys. Several processes may run it: the status compare-and-set picks one
//! winner, and a duplicate dispatch request or purge is harmless.

use crate::lifecycle::{self, RetentionSchedule};
use herald_core::model::CampaignStatus;
use herald_core::model::OutMessage;
use herald_core::topics::{self, DispatchRequest};
use herald_core::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(500);

pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let mut ticks = 0u64;
    let mut retention = RetentionSchedule::new(ctx.clock.now());
    // The purge runs beside the loop, so a long one never delays a broadcast's activation.
    let mut purge: Option<tokio::task::JoinHandle<()>> = None;
    while crate::pause(&shutdown, TICK).await {
        if let Err(e) = release_due(&ctx).await {
            tracing::warn!(error = %e, "scheduler tick failed");
        }
        if let Err(e) = lifecycle::tick(&ctx).await {
            tracing::warn!(error = %e, "broadcast lifecycle tick failed");
        }
        if purge.as_ref().is_none_or(|p| p.is_finished()) && retention.due(ctx.clock.now()) {
            let ctx = ctx.clone();
            purge = Some(tokio::spawn(async move {
                if let Err(e) = lifecycle::purge_inbox(&ctx).await {
                    tracing::warn!(error = %e, "inbox retention purge failed");
                }
            }));
        }
        ticks += 1;
        if ticks.is_multiple_of(60) {
            if let Err(e) = redispatch_stuck(&ctx).await {
                tracing::warn!(error = %e, "re-dispatching stuck campaigns failed");
            }
        }
        if ticks.is_multiple_of(7200) {
            if let Err(e) = ctx
                .ports
                .campaigns
                .purge_idempotency_keys(ctx.clock.now())
                .await
            {
                tracing::warn!(error = %e, "purging idempotency keys failed");
            }
        }
    }
    if let Some(p) = purge {
        p.abort();
    }
}

/// How long a campaign may sit in `sizing` before its dispatch request is presumed lost.
pub const STUCK_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// Publishes a dispatch request again for campaigns still in `sizing` long after creation:
/// the API stores a campaign and then publishes its request, so a crash in between would
/// otherwise strand it. A duplicate request is harmless (dispatch is idempotent).
pub async fn redispatch_stuck(ctx: &Context) -> herald_core::Result<usize> {
    let now = ctx.clock.now();
    let sizing = ctx
        .ports
        .campaigns
        .list_campaigns(Some(CampaignStatus::Sizing), None, 100)
        .await?;
    let stuck: Vec<_> = sizing
        .iter()
        .filter(|c| c.created_at.max(c.starts_at.unwrap_or(c.created_at)) + STUCK_AFTER <= now)
        .collect();
    for c in &stuck {
        publish_dispatch(ctx, &c.id).await?;
        tracing::warn!(campaign = %c.id, "campaign stuck in sizing: dispatch request re-published");
    }
    Ok(stuck.len())
}

async fn publish_dispatch(ctx: &Context, campaign_id: &str) -> herald_core::Result<()> {
    let body = serde_json::to_vec(&DispatchRequest {
        campaign_id: campaign_id.to_owned(),
    })
    .map_err(|e| herald_core::Error::internal("dispatch request").with_source(e))?;
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

/// Publishes a dispatch request for every due scheduled campaign, then marks it sizing.
/// Publishing first means a crash in between re-publishes on the next tick rather than
/// losing the campaign.
pub async fn release_due(ctx: &Context) -> herald_core::Result<usize> {
    let now = ctx.clock.now();
    let due = ctx.ports.campaigns.due_campaigns(now, 100).await?;
    for c in &due {
        publish_dispatch(ctx, &c.id).await?;
        ctx.ports
            .campaigns
            .transition(
                &c.id,
                &[CampaignStatus::Scheduled],
                CampaignStatus::Sizing,
                now,
            )
            .await?;
        tracing::info!(campaign = %c.id, "scheduled campaign released");
    }
    Ok(due.len())
}
