//! The delivery-report consumer: adds each report of [`topics::RESULTS`] to its campaign's
//! per-channel `sent` / `failed` counters and to the delivery log (the per-minute rollups the
//! analytics and health endpoints read), each once per report key (a redelivered report is
//! recognised by the campaign store and by the delivery log, and adds nothing).

use chrono::{DateTime, Utc};
use herald_core::analytics::{
    latency_bucket, DeliveryLogCounts, DeliveryLogEntry, LoggedFailure, FAILURES_PER_REPORT,
};
use herald_core::consume::{backoff, SharedConsumer, MAX_DELIVERIES};
use herald_core::delivery::{DeliveryReport, RecipientRecord, REPLAY_RANK};
use herald_core::model::DeliveryCounts;
use herald_core::topics;
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The result counter: up to 100 delivery reports per step.
pub struct ResultCounter {
    ctx: Context,
    reports: Arc<SharedConsumer>,
    /// When each campaign seen lately started (what a send's latency is measured from); it
    /// never changes once set, so it is read once per campaign, not per report.
    started: HashMap<String, DateTime<Utc>>,
}

/// Campaign start times kept at most; the map is emptied when it is full.
const STARTED_KEPT: usize = 10_000;

impl ResultCounter {
    pub fn new(ctx: Context) -> Self {
        let reports = SharedConsumer::new(
            ctx.ports.bus.clone(),
            topics::RESULTS,
            topics::RESULT_COUNTERS,
        );
        Self {
            ctx,
            reports,
            started: HashMap::new(),
        }
    }

    /// When campaign `id` started (or was created, if it has not started); `None` if it is
    /// gone.
    async fn started_at(&mut self, id: &str) -> Result<Option<DateTime<Utc>>> {
        if let Some(t) = self.started.get(id) {
            return Ok(Some(*t));
        }
        let Some(c) = self.ctx.ports.campaigns.get_campaign(id).await? else {
            return Ok(None);
        };
        let Some(t) = c.started_at else {
            // Not started yet (a report cannot come before the start; be safe): not kept.
            return Ok(Some(c.created_at));
        };
        if self.started.len() >= STARTED_KEPT {
            self.started.clear();
        }
        self.started.insert(id.to_owned(), t);
        Ok(Some(t))
    }

    async fn apply(&mut self, payload: &[u8]) -> Result<()> {
        let report: DeliveryReport = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "undecodable delivery report dropped");
                return Ok(());
            }
        };
        if report.replacement {
            return self.log(&report).await;
        }
        // Each recipient's latest outcome (a later attempt's record wins, so a redelivered
        // report changes nothing).
        // A replayed dead letter's report comes after every attempt of the original.
        let rank = report
            .attempt
            .saturating_add(if report.key.contains("/replay/") {
                REPLAY_RANK
            } else {
                0
            });
        let records: Vec<RecipientRecord> = report
            .recipients
            .iter()
            .map(|r| RecipientRecord {
                campaign_id: report.campaign_id.clone(),
                user_id: r.user_id.clone(),
                channel: report.channel,
                status: r.status,
                sent: r.sent,
                reason: r.reason.clone(),
                dead_letter_id: r.dead_letter_id.clone(),
                attempt: rank,
                at: report.at,
            })
            .collect();
        self.ctx
            .ports
            .deliveries
            .record_recipients(&records)
            .await?;
        if report.sent > 0
            || report.failed > 0
            || report.suppressed_online > 0
            || report.cancelled > 0
        {
            let delta = DeliveryCounts {
                queued: 0,
                sent: report.sent,
                failed: report.failed,
                suppressed_online: report.suppressed_online,
                cancelled: report.cancelled,
            };
            self.ctx
                .ports
                .campaigns
                .record_deliveries(&report.campaign_id, &report.key, report.channel, &delta)
                .await?;
        }
        self.log(&report).await
    }

    /// Adds a report to the delivery log (the per-minute rollups and the failures kept).
    async fn log(&mut self, report: &DeliveryReport) -> Result<()> {
        if report.sent == 0 && report.failed == 0 && report.retried == 0 {
            return Ok(());
        }
        // From the campaign start, or from when the message was due if it waited (quiet
        // hours, a retry's backoff, a replay), so a deferral is not counted as slowness.
        let started = self.started_at(&report.campaign_id).await?;
        let start = match (started, report.due_at) {
            (Some(s), Some(due)) => Some(s.max(due)),
            (s, due) => s.or(due),
        };
        let latency = match start {
            Some(start) if report.sent > 0 => {
                let ms = (report.at - start).num_milliseconds().max(0) as u64;
                Some((latency_bucket(ms as f64 / 1000.0), ms * report.sent))
            }
            _ => None,
        };
        let entry = DeliveryLogEntry {
            key: report.key.clone(),
            channel: report.channel,
            at: report.at,
            counts: DeliveryLogCounts {
                reports: 1,
                sent: report.sent,
                failed: report.failed,
                invalid_tokens: report.invalid_tokens,
                dead_lettered: report.dead_lettered,
                unreachable: report.unreachable,
                retried: report.retried,
                provider_ms: report.provider_ms,
            },
            latency,
            failures: report
                .failures
                .iter()
                .take(FAILURES_PER_REPORT)
                .map(|f| LoggedFailure {
                    at: report.at,
                    channel: report.channel,
                    campaign_id: report.campaign_id.clone(),
                    user_id: f.user_id.clone(),
                    target: f.target.clone(),
                    reason: f.reason.clone(),
                })
                .collect(),
        };
        self.ctx
            .ports
            .deliveries
            .record_delivery_log(&entry)
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Worker for ResultCounter {
    fn name(&self) -> &'static str {
        "result-counter"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let reports = self.reports.poll(100, Duration::from_secs(1)).await?;
        let mut failed = Vec::new();
        for d in reports {
            match self.apply(d.payload()).await {
                Ok(()) => d.commit().await?,
                Err(e) => failed.push((d, e)),
            }
        }
        // Committed what was counted; the rest waits one backoff (together) and goes back,
        // or to the dead letters once it has failed too often.
        let ctx = &self.ctx;
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
