//! The delivery-report consumer: adds each report of [`topics::RESULTS`] to its campaign's
//! per-channel `sent` / `failed` counters, once per report key (a redelivered report is
//! recognised by the campaign store and ignored).

use herald_core::delivery::DeliveryReport;
use herald_core::model::DeliveryCounts;
use herald_core::topics;
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);

/// The result counter: up to 100 delivery reports per step.
pub struct ResultCounter {
    ctx: Context,
}

impl ResultCounter {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

#[async_trait::async_trait]
impl Worker for ResultCounter {
    fn name(&self) -> &'static str {
        "result-counter"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let ctx = &self.ctx;
        let bus = &ctx.ports.bus;
        let deliveries = bus
            .receive(
                topics::RESULTS,
                topics::RESULT_COUNTERS,
                100,
                LEASE,
                Duration::from_secs(1),
            )
            .await?;
        let mut failed = None;
        for d in deliveries {
            let receipt = [d.receipt];
            match apply(ctx, &d.payload).await {
                Ok(()) => {
                    bus.ack(topics::RESULTS, topics::RESULT_COUNTERS, &receipt)
                        .await?
                }
                Err(e) => {
                    bus.nack(
                        topics::RESULTS,
                        topics::RESULT_COUNTERS,
                        &receipt,
                        Duration::from_secs(5),
                    )
                    .await?;
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
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
