//! Housekeeping of the gateway, every `push.cleanup_interval_secs`: removes device tokens
//! unused for `push.token_ttl_days` (a token that has not taken a send for months belongs to an
//! uninstalled app more often than not), forgets processed-message marks older than a week and
//! the delivery log older than `analytics.retention_days`. Safe to run on every gateway
//! instance at once: all are idempotent deletes.

use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Marks are needed only until a redelivered copy could come; a week is ample.
const MARK_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// What one run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub stale_devices: u64,
    pub processed_marks: u64,
    /// Delivery-log rollup rows (minute × channel) past the retention.
    pub log_rollups: u64,
}

/// One pass of the job.
pub async fn run_once(ctx: &Context) -> Result<Swept> {
    let now = ctx.clock.now();
    let ttl = chrono::Duration::days(i64::from(ctx.config.push.token_ttl_days));
    let stale_devices = ctx
        .ports
        .directory
        .delete_devices_unused_since(now - ttl)
        .await?;
    let processed_marks = ctx
        .ports
        .deliveries
        .purge_processed(now - MARK_RETENTION)
        .await?;
    let retention = chrono::Duration::days(i64::from(ctx.config.analytics.retention_days));
    let log_rollups = ctx
        .ports
        .deliveries
        .purge_delivery_log(now - retention)
        .await?;
    metrics::counter!("herald_push_stale_tokens_removed_total").increment(stale_devices);
    if stale_devices > 0 {
        tracing::info!(stale_devices, "removed device tokens unused for too long");
    }
    Ok(Swept {
        stale_devices,
        processed_marks,
        log_rollups,
    })
}

/// The job as a worker: one sweep every `push.cleanup_interval_secs`, the first one interval
/// after start (a fleet restarting together need not sweep at once).
pub struct Cleanup {
    ctx: Context,
    started: bool,
}

impl Cleanup {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            started: false,
        }
    }
}

#[async_trait::async_trait]
impl Worker for Cleanup {
    fn name(&self) -> &'static str {
        "token-cleanup"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let every = Duration::from_secs(self.ctx.config.push.cleanup_interval_secs.max(1));
        if std::mem::replace(&mut self.started, true) {
            run_once(&self.ctx).await?;
        }
        Ok(WorkerState::Idle(every))
    }
}
