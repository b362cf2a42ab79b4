//! The scheduler: releases scheduled campaigns when their `starts_at` comes, also after a
//! restart (the campaigns wait in the store, not in memory), moves broadcasts through their
//! lifecycle ([`crate::lifecycle::tick`]), purges inbox rows past retention (hourly) and
//! expired idempotency keys. Several processes may run it: the status compare-and-set picks one
//! winner, and a duplicate purge is harmless. It publishes nothing before its compare-and-set:
//! a released campaign is claimable in the store, and the bus only carries a wake-up hint.

use crate::lifecycle::{self, RetentionSchedule};
use herald_core::model::CampaignStatus;
use herald_core::topics;
use herald_core::worker::{AbortOnDrop, Worker, WorkerState};
use herald_core::{Context, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(500);
/// Expired idempotency keys are purged once per this many ticks (an hour).
const KEY_PURGE_TICKS: u64 = 7200;

/// The scheduler as a worker: one tick per step.
pub struct Scheduler {
    ctx: Context,
    ticks: u64,
    retention: RetentionSchedule,
    /// The retention purge runs beside the ticks, so a long one never delays a broadcast's
    /// activation; it ends with the scheduler.
    purge: Option<AbortOnDrop<()>>,
}

impl Scheduler {
    pub fn new(ctx: Context) -> Self {
        let retention = RetentionSchedule::new(ctx.clock.now());
        Self {
            ctx,
            ticks: 0,
            retention,
            purge: None,
        }
    }
}

#[async_trait::async_trait]
impl Worker for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let ctx = &self.ctx;
        // Every duty runs each tick even when another fails; the first failure is reported.
        let mut first_error = None;
        if let Err(e) = release_due(ctx).await {
            first_error.get_or_insert(e);
        }
        if let Err(e) = lifecycle::tick(ctx).await {
            first_error.get_or_insert(e);
        }
        let idle = self.purge.as_ref().is_none_or(|p| p.is_finished());
        if idle && self.retention.due(ctx.clock.now()) {
            let ctx = ctx.clone();
            self.purge = Some(AbortOnDrop::spawn(async move {
                if let Err(e) = lifecycle::purge_inbox(&ctx).await {
                    tracing::warn!(error = %e, "inbox retention purge failed");
                }
            }));
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(KEY_PURGE_TICKS) {
            if let Err(e) = ctx
                .ports
                .campaigns
                .purge_idempotency_keys(ctx.clock.now())
                .await
            {
                first_error.get_or_insert(e);
            }
            // Sent digests are kept a day past their window (a redelivered send finds them).
            if let Err(e) = ctx
                .ports
                .campaigns
                .purge_digests(ctx.clock.now() - chrono::Duration::days(1))
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(WorkerState::Idle(TICK)),
        }
    }
}

/// Releases every due scheduled campaign: a compare-and-set from `scheduled` to `sizing`
/// makes it claimable by one dispatcher (whichever scheduler wins the set; the others do
/// nothing), then a hint wakes a dispatcher.
pub async fn release_due(ctx: &Context) -> Result<usize> {
    let now = ctx.clock.now();
    let due = ctx.ports.campaigns.due_campaigns(now, 100).await?;
    let mut released = 0;
    for c in &due {
        let won = ctx
            .ports
            .campaigns
            .transition(
                &c.id,
                &[CampaignStatus::Scheduled],
                CampaignStatus::Sizing,
                now,
            )
            .await?;
        if won {
            released += 1;
            topics::hint_dispatch(ctx.ports.bus.as_ref(), &c.id).await;
            tracing::info!(campaign = %c.id, "scheduled campaign released");
        }
    }
    Ok(released)
}
