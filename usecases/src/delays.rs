//! The delay publisher: the loop that moves due messages from the delay store to the bus
//! (retries after their backoff, sends deferred to the end of quiet hours, fan-out batches
//! retried later). Every role that schedules delays runs one; several may run against one
//! store, each claim holding its messages for [`CLAIM_LEASE`].

use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claim holds its messages: a publisher that dies mid-way leaves them to another
/// after this long.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Messages claimed per step.
const CLAIM_LIMIT: u32 = 500;
/// The longest pause between two looks at the store: messages scheduled meanwhile by another
/// process wait at most this long past their due time.
const MAX_IDLE: Duration = Duration::from_millis(200);

/// How often the gauge of kept messages (`herald_delay_pending`) is refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

/// How long to wait before the next look, or `None` when a message is due now.
fn pause_until(
    next_due: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    match next_due {
        Some(due) if due <= now => None,
        Some(due) => Some(
            (due - now)
                .to_std()
                .unwrap_or(MAX_IDLE)
                .clamp(Duration::from_millis(5), MAX_IDLE),
        ),
        None => Some(MAX_IDLE),
    }
}

/// Publishes due messages of the delay store on the bus, then removes them.
pub struct DelayPublisher {
    ctx: Context,
    gauge_at: Option<std::time::Instant>,
}

impl DelayPublisher {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            gauge_at: None,
        }
    }
}

#[async_trait::async_trait]
impl Worker for DelayPublisher {
    fn name(&self) -> &'static str {
        "delay-publisher"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let ports = &self.ctx.ports;
        if self.gauge_at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY) {
            self.gauge_at = Some(std::time::Instant::now());
            metrics::gauge!("herald_delay_pending").set(ports.delays.pending().await? as f64);
        }
        let now = self.ctx.clock.now();
        // A read first: claiming is a write, and an idle server would otherwise take the
        // store's write lock several times a second for nothing.
        let next_due = ports.delays.next_due().await?;
        if let Some(pause) = pause_until(next_due, now) {
            return Ok(WorkerState::Idle(pause));
        }
        let claim = ports
            .delays
            .claim_due(now, CLAIM_LIMIT, CLAIM_LEASE)
            .await?;
        if claim.messages.is_empty() {
            // Due but claimed by another publisher meanwhile: look again after a while.
            return Ok(WorkerState::Idle(MAX_IDLE));
        }
        // One publish per topic, in due order within it.
        let mut by_topic: BTreeMap<&str, Vec<herald_core::model::OutMessage>> = BTreeMap::new();
        for m in &claim.messages {
            by_topic
                .entry(m.topic.as_str())
                .or_default()
                .push(m.message.clone());
            let late = (now - m.due).to_std().unwrap_or_default();
            metrics::histogram!("herald_delay_lateness_seconds").record(late.as_secs_f64());
        }
        for (topic, messages) in by_topic {
            ports.bus.publish(topic, &messages).await?;
        }
        let ids: Vec<String> = claim.messages.iter().map(|m| m.id.clone()).collect();
        ports.delays.remove(&claim.token, &ids).await?;
        metrics::counter!("herald_delay_published_total").increment(ids.len() as u64);
        Ok(WorkerState::Busy)
    }
}
