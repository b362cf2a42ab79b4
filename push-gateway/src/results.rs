//! The delivery-report consumer: adds each report of [`topics::RESULTS`] to its campaign's
//! per-channel `sent` / `failed` counters, once per report key (a redelivered report is
//! recognised by the campaign store and ignored).

use herald_core::consume::{backoff, SharedConsumer, MAX_DELIVERIES};
use herald_core::delivery::DeliveryReport;
use herald_core::model::DeliveryCounts;
use herald_core::topics;
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The result counter: up to 100 delivery reports per step.
pub struct ResultCounter {
    ctx: Context,
    reports: Arc<SharedConsumer>,
}

impl ResultCounter {
    pub fn new(ctx: Context) -> Self {
        let reports = SharedConsumer::new(
            ctx.ports.bus.clone(),
            topics::RESULTS,
            topics::RESULT_COUNTERS,
        );
        Self { ctx, reports }
    }
}

#[async_trait::async_trait]
impl Worker for ResultCounter {
    fn name(&self) -> &'static str {
        "result-counter"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let ctx = &self.ctx;
        let reports = self.reports.poll(100, Duration::from_secs(1)).await?;
        let mut failed = Vec::new();
        for d in reports {
            match apply(ctx, d.payload()).await {
                Ok(()) => d.commit().await?,
                Err(e) => failed.push((d, e)),
            }
        }
        // Committed what was counted; the rest waits one backoff (together) and goes back,
        // or to the dead letters once it has failed too often.
        let pause = failed.iter().map(|(d, _)| backoff(d.attempt())).max();
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let mut first = None;
        for (d, e) in failed {
            if d.attempt() >= MAX_DELIVERIES {
                let bus = ctx.ports.bus.as_ref();
                d.failed(
                    bus,
                    topics::RESULTS,
                    topics::RESULT_COUNTERS,
                    &e,
                    MAX_DELIVERIES,
                )
                .await?;
            } else {
                d.release().await?;
            }
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(WorkerState::Busy),
        }
    }
}

async fn apply(ctx: &Context, payload: &[u8]) -> Result<()> {
    let report: DeliveryReport = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "undecodable delivery report dropped");
            return Ok(());
        }
    };
    if report.sent == 0 && report.failed == 0 {
        return Ok(());
    }
    let delta = DeliveryCounts {
        queued: 0,
        sent: report.sent,
        failed: report.failed,
    };
    ctx.ports
        .campaigns
        .record_deliveries(&report.campaign_id, &report.key, report.channel, &delta)
        .await?;
    Ok(())
}
