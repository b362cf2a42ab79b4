//! Consuming the bus: one group member per (topic, group) shared by a process's workers, a
//! guard that gives a message back however its handling ends, and the dead-letter path of a
//! message that keeps failing.
//!
//! The bus keeps no timers (see [`crate::ports::Bus`]), so what a failed message does next
//! is decided here, by its consumer:
//! - a failure that may pass (a store down) waits a backoff in the worker and gives the
//!   message back ([`Held::retry_after`]): the next poll hands it out again, attempt + 1;
//! - past `max_attempts` deliveries the message goes to its dead-letter topic
//!   ([`crate::topics::dead_letter_topic`]) with the reason, and is committed: a poison
//!   message costs N attempts, never a wedged partition;
//! - a handler that panics or a step dropped at an `.await` drops its [`Held`], which gives
//!   the message back (a crash of the process leaves it to the engine: lease expiry on
//!   SQLite, ack wait on JetStream, the rebalance on Kafka).

use crate::model::Delivery;
use crate::ports::{Bus, Consumer};
use crate::{topics, Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Deliveries of a message whose handling keeps failing before it goes to the dead letters.
/// With [`backoff`] between them that is about a quarter of an hour: a store outage of a few
/// minutes dead-letters nothing, a poison message stops being retried.
pub const MAX_DELIVERIES: u32 = 20;

/// The pause before a failed message is given back: 1 s after the first delivery, doubling
/// up to a minute.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// One member of `group` on `topic`, joined on first use and shared by every worker of this
/// process that reads the topic (on Kafka a member is a client with its own connections and
/// threads: one per process and topic, not one per task).
pub struct SharedConsumer {
    bus: Arc<dyn Bus>,
    topic: String,
    group: String,
    member: tokio::sync::OnceCell<Arc<dyn Consumer>>,
    /// The `topic` and `group` labels of `herald_bus_committed_total` (standard names only).
    labels: Arc<(&'static str, String)>,
}

impl SharedConsumer {
    pub fn new(bus: Arc<dyn Bus>, topic: &str, group: &str) -> Arc<Self> {
        Arc::new(Self {
            bus,
            topic: topic.to_owned(),
            group: group.to_owned(),
            member: tokio::sync::OnceCell::new(),
            labels: Arc::new((topics::known(topic), group.to_owned())),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The member, joining the group on first call (a failed join is tried again next call).
    pub async fn member(&self) -> Result<Arc<dyn Consumer>> {
        self.member
            .get_or_try_init(|| self.bus.consumer(&self.topic, &self.group))
            .await
            .cloned()
    }

    /// Polls up to `max` messages (waiting up to `wait` for the first), each in a [`Held`]
    /// guard.
    pub async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Held>> {
        let member = self.member().await?;
        let got = member.poll(max, wait).await?;
        Ok(got
            .into_iter()
            .map(|delivery| Held {
                member: member.clone(),
                delivery,
                settled: false,
                labels: self.labels.clone(),
            })
            .collect())
    }
}

/// A polled message not settled yet. Dropping it unsettled gives it back to the group.
pub struct Held {
    member: Arc<dyn Consumer>,
    delivery: Delivery,
    settled: bool,
    labels: Arc<(&'static str, String)>,
}

impl Held {
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub fn payload(&self) -> &[u8] {
        &self.delivery.payload
    }

    pub fn attempt(&self) -> u32 {
        self.delivery.attempt
    }

    /// Done: never delivered to this group again.
    pub async fn commit(mut self) -> Result<()> {
        self.settled = true;
        self.member
            .commit(std::slice::from_ref(&self.delivery.receipt))
            .await?;
        let (topic, group) = &*self.labels;
        metrics::counter!("herald_bus_committed_total", "topic" => *topic, "group" => group.clone())
            .increment(1);
        Ok(())
    }

    /// Gives the message back now.
    pub async fn release(mut self) -> Result<()> {
        self.settled = true;
        self.member
            .release(std::slice::from_ref(&self.delivery.receipt))
            .await
    }

    /// The handling failed with `error`: at `max_attempts` deliveries the message goes to the
    /// dead letters of `topic` (and is committed); before, it is given back after
    /// [`backoff`].
    pub async fn failed(
        self,
        bus: &dyn Bus,
        topic: &str,
        group: &str,
        error: &Error,
        max_attempts: u32,
    ) -> Result<()> {
        if self.attempt() >= max_attempts.max(1) {
            let reason = format!("{} attempts failed; last: {error}", self.attempt());
            dead_letter(bus, topic, group, &self.delivery, &reason).await?;
            tracing::error!(topic, group, attempts = self.attempt(), error = %error, "message dead-lettered");
            metrics::counter!("herald_bus_dead_letters_total", "topic" => topics::known(topic))
                .increment(1);
            return self.commit().await;
        }
        tokio::time::sleep(backoff(self.attempt())).await;
        self.release().await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // A handler panicked or the step was dropped at an `.await`: give the message back so
        // a live worker takes it instead of it waiting for this member to go away.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let member = self.member.clone();
            let receipt = std::mem::take(&mut self.delivery.receipt);
            rt.spawn(async move {
                if let Err(e) = member.release(&[receipt]).await {
                    tracing::warn!(error = %e, "giving back an unsettled message failed; it returns when this member goes");
                }
            });
        }
    }
}

/// A message that failed too often, as kept on its dead-letter topic: enough to read why and
/// to publish the original again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterMessage {
    pub topic: String,
    pub group: String,
    pub attempts: u32,
    pub reason: String,
    pub key: Option<String>,
    /// The original payload: its JSON when it is JSON (Herald's messages are), else its bytes
    /// as a lossy UTF-8 string.
    pub payload: serde_json::Value,
    pub published_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// Publishes `delivery` to the dead-letter topic of `topic`.
pub async fn dead_letter(
    bus: &dyn Bus,
    topic: &str,
    group: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<()> {
    let payload = serde_json::from_slice(&delivery.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&delivery.payload).into_owned())
    });
    let letter = DeadLetterMessage {
        topic: topic.to_owned(),
        group: group.to_owned(),
        attempts: delivery.attempt,
        reason: reason.chars().take(1_000).collect(),
        key: delivery.key.clone(),
        payload,
        published_at: delivery.published_at,
        dead_at: Utc::now(),
    };
    let body = serde_json::to_vec(&letter)
        .map_err(|e| Error::internal("dead letter encoding").with_source(e))?;
    bus.publish(
        &topics::dead_letter_topic(topic),
        &[crate::model::OutMessage {
            key: delivery.key.clone(),
            payload: body,
        }],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_a_second_up_to_a_minute() {
        let pauses: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0).as_secs(), 1);
        let total: u64 = (1..MAX_DELIVERIES).map(|a| backoff(a).as_secs()).sum();
        assert!(
            (600..1800).contains(&total),
            "{total} s before a dead letter"
        );
    }
}
