//! The delivery-report consumer: adds each report of [`topics::RESULTS`] to its campaign's
//! per-channel `sent` / `failed` counters, once per report key (a redelivered report is
//! recognised by the campaign store and ignored).

use crate::consumer::pause;
use herald_core::delivery::DeliveryReport;
use herald_core::model::DeliveryCounts;
use herald_core::topics;
use herald_core::{Context, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);

pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let bus = ctx.ports.bus.clone();
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = bus.receive(topics::RESULTS, topics::RESULT_COUNTERS, 100, LEASE, Duration::from_secs(1)) => r,
        };
        let deliveries = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "delivery results queue unavailable");
                if !pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        for d in deliveries {
            let receipt = [d.receipt];
            let settled = match apply(&ctx, &d.payload).await {
                Ok(()) => {
                    bus.ack(topics::RESULTS, topics::RESULT_COUNTERS, &receipt)
                        .await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record delivery report; retrying");
                    bus.nack(
                        topics::RESULTS,
                        topics::RESULT_COUNTERS,
                        &receipt,
                        Duration::from_secs(5),
                    )
                    .await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "cannot settle delivery report");
            }
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
