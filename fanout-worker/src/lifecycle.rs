//! The broadcast lifecycle (DESIGN.md flow 3) and inbox retention.
//!
//! A broadcast is stored once by the dispatcher; from then on its state lives in the broadcast
//! store, and [`tick`] (called by the scheduler every 500 ms) moves it along by the clock:
//! `scheduled → active` when `starts_at` comes, `scheduled | active → completed` when
//! `expires_at` comes, with its campaign following. Because the state is in the store, a
//! restarted process picks up where the last one left off.
//!
//! Several processes may tick at once. Every change is a compare-and-set, and only the process
//! whose compare-and-set won counts it and publishes the live event. A cancelled broadcast is
//! never touched: it is not open, and every transition here starts from an open status.
//!
//! Within one broadcast, the campaign moves before the broadcast: the broadcast's own status is
//! what makes a later tick look at it again, so a crash between the two steps is repaired by
//! the next tick (the campaign step is then a harmless no-op).

use chrono::{DateTime, Duration, Utc};
use herald_core::model::{Broadcast, BroadcastStatus, CampaignStatus, LiveEvent};
use herald_core::{Context, Result};

/// What one [`tick`] did (only the changes this process won).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Broadcasts moved `scheduled → active` (one live event published for each).
    pub activated: u64,
    /// Broadcasts moved to `completed` because they expired.
    pub completed: u64,
    /// Scheduled broadcasts withdrawn because their campaign had been cancelled or had failed
    /// (a cancel that stopped between the campaign and the broadcast).
    pub withdrawn: u64,
    /// Broadcasts whose step failed; they are retried on the next tick.
    pub errors: u64,
}

/// Activates due broadcasts and completes expired ones, at `ctx.clock.now()`.
///
/// Fails only when the open broadcasts cannot be listed; a failure on one broadcast is logged,
/// counted in [`Summary::errors`] and retried on the next tick.
pub async fn tick(ctx: &Context) -> Result<Summary> {
    let now = ctx.clock.now();
    let open = ctx.ports.broadcasts.list_open().await?;
    let mut summary = Summary::default();
    for b in open {
        let step = if b.expires_at.is_some_and(|e| e <= now) {
            expire(ctx, &b, now, &mut summary).await
        } else if b.status == BroadcastStatus::Scheduled && b.starts_at <= now {
            activate(ctx, b, now, &mut summary).await
        } else {
            Ok(())
        };
        if let Err(e) = step {
            summary.errors += 1;
            tracing::warn!(error = %e, "broadcast lifecycle step failed; retrying next tick");
        }
    }
    Ok(summary)
}

async fn expire(
    ctx: &Context,
    b: &Broadcast,
    now: DateTime<Utc>,
    summary: &mut Summary,
) -> Result<()> {
    if let Some(campaign_id) = &b.campaign_id {
        // `Scheduled`/`Sizing` too: a campaign whose broadcast was stored but never marked
        // active (crash in the dispatcher) is over as well.
        ctx.ports
            .campaigns
            .transition(
                campaign_id,
                &[
                    CampaignStatus::Scheduled,
                    CampaignStatus::Sizing,
                    CampaignStatus::Active,
                ],
                CampaignStatus::Completed,
                now,
            )
            .await?;
    }
    let won = ctx
        .ports
        .broadcasts
        .transition(
            b.id,
            &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
            BroadcastStatus::Completed,
        )
        .await?;
    if won {
        summary.completed += 1;
        metrics::counter!("herald_broadcasts_completed_total").increment(1);
        tracing::info!(
            broadcast = %b.id,
            campaign = b.campaign_id.as_deref().unwrap_or("-"),
            "broadcast expired and completed"
        );
    }
    Ok(())
}

async fn activate(
    ctx: &Context,
    mut b: Broadcast,
    now: DateTime<Utc>,
    summary: &mut Summary,
) -> Result<()> {
    if let Some(campaign_id) = &b.campaign_id {
        let status = ctx
            .ports
            .campaigns
            .get_campaign(campaign_id)
            .await?
            .map(|c| c.status);
        match status {
            Some(CampaignStatus::Cancelled | CampaignStatus::Failed) => {
                // The API cancels the campaign, then the broadcast; finish a cancel that
                // stopped in between instead of showing the broadcast to everyone.
                let won = ctx
                    .ports
                    .broadcasts
                    .transition(
                        b.id,
                        &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
                        BroadcastStatus::Cancelled,
                    )
                    .await?;
                if won {
                    summary.withdrawn += 1;
                    tracing::info!(
                        broadcast = %b.id,
                        campaign = %campaign_id,
                        "broadcast of a cancelled campaign withdrawn"
                    );
                }
                return Ok(());
            }
            Some(CampaignStatus::Scheduled | CampaignStatus::Sizing) => {
                ctx.ports
                    .campaigns
                    .transition(
                        campaign_id,
                        &[CampaignStatus::Scheduled, CampaignStatus::Sizing],
                        CampaignStatus::Active,
                        now,
                    )
                    .await?;
            }
            _ => {}
        }
    }
    let won = ctx
        .ports
        .broadcasts
        .transition(b.id, &[BroadcastStatus::Scheduled], BroadcastStatus::Active)
        .await?;
    if !won {
        return Ok(()); // another process activated it, or it was cancelled meanwhile
    }
    summary.activated += 1;
    metrics::counter!("herald_broadcasts_activated_total").increment(1);
    tracing::info!(
        broadcast = %b.id,
        campaign = b.campaign_id.as_deref().unwrap_or("-"),
        late_ms = (now - b.starts_at).num_milliseconds(),
        "broadcast activated"
    );
    b.status = BroadcastStatus::Active;
    // Best effort: a client that misses it still sees the broadcast on its next inbox read.
    if let Err(e) = ctx
        .ports
        .live
        .publish(LiveEvent::BroadcastActivated {
            broadcast: Box::new(b),
        })
        .await
    {
        tracing::warn!(error = %e, "publishing a broadcast activation failed");
    }
    Ok(())
}

/// Deletes personal inbox rows older than `inbox.retention_days` before `ctx.clock.now()`.
/// Returns how many were deleted.
pub async fn purge_inbox(ctx: &Context) -> Result<u64> {
    let days = ctx.config.inbox.retention_days;
    let before = ctx.clock.now() - Duration::days(i64::from(days));
    let started = std::time::Instant::now();
    let purged = ctx.ports.inbox.purge_before(before).await?;
    metrics::counter!("herald_inbox_rows_purged_total").increment(purged);
    tracing::info!(
        purged,
        retention_days = days,
        before = %before,
        secs = started.elapsed().as_secs_f64(),
        "inbox retention purge"
    );
    Ok(purged)
}

/// When the retention purge is due: first [`RetentionSchedule::FIRST_DELAY`] after start, then
/// at most once per [`RetentionSchedule::EVERY`], by the context's clock.
#[derive(Debug, Clone)]
pub struct RetentionSchedule {
    next: DateTime<Utc>,
}

impl RetentionSchedule {
    /// The first purge waits this long after start, off the startup path.
    pub const FIRST_DELAY: Duration = Duration::seconds(10);
    /// The least time between two purges.
    pub const EVERY: Duration = Duration::hours(1);

    pub fn new(started: DateTime<Utc>) -> Self {
        Self {
            next: started + Self::FIRST_DELAY,
        }
    }

    /// Whether a purge should start at `now`; when it returns `true` the next one is an hour
    /// away. A clock that went back moves the next purge back with it, so a wall-clock
    /// correction delays the purge by at most an hour.
    pub fn due(&mut self, now: DateTime<Utc>) -> bool {
        if now >= self.next {
            self.next = now + Self::EVERY;
            true
        } else {
            if self.next - now > Self::EVERY {
                self.next = now + Self::EVERY;
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retention_runs_shortly_after_start_then_hourly() {
        let start = at("2026-01-10T12:00:00Z");
        let mut s = RetentionSchedule::new(start);
        assert!(!s.due(start));
        assert!(!s.due(start + Duration::seconds(9)));
        assert!(s.due(start + Duration::seconds(10)));
        assert!(!s.due(start + Duration::seconds(11)));
        assert!(!s.due(start + Duration::minutes(60)));
        assert!(s.due(start + Duration::seconds(10) + Duration::hours(1)));
        assert!(!s.due(start + Duration::hours(2)));
    }

    #[test]
    fn a_clock_going_back_delays_retention_by_at_most_an_hour() {
        let start = at("2026-01-10T12:00:00Z");
        let mut s = RetentionSchedule::new(start);
        assert!(s.due(start + Duration::minutes(1)));
        let back = start - Duration::days(1);
        assert!(!s.due(back));
        assert!(!s.due(back + Duration::minutes(59)));
        assert!(s.due(back + Duration::hours(1)));
    }
}
