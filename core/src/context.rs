//! What every role is handed: the configuration, the opened ports, the clock and the
//! resolved secrets. Built once by the binary (or a test's `spawn_app`) and cloned cheaply.

use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::ports::*;
use std::sync::Arc;

/// How long `/readyz` waits for a backend to answer: longer than a SQLite store's own wait
/// for its write lock (2 s), so that a locked file is reported by name rather than as silence.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One handle per port, whatever engine is behind it.
#[derive(Clone)]
pub struct Ports {
    pub directory: Arc<dyn Directory>,
    pub campaigns: Arc<dyn CampaignStore>,
    pub inbox: Arc<dyn InboxStore>,
    pub broadcasts: Arc<dyn BroadcastStore>,
    pub broadcast_states: Arc<dyn BroadcastStates>,
    pub preference_cache: Arc<dyn PreferenceCache>,
    pub bus: Arc<dyn Bus>,
    pub live: Arc<dyn LiveHub>,
    pub deliveries: Arc<dyn DeliveryStore>,
    pub delays: Arc<dyn DelayStore>,
    /// Provider rate limits (in-process unless shared through Redis).
    pub throttle: Arc<dyn Throttle>,
}

impl Ports {
    /// Succeeds when every backend answers within [`PING_TIMEOUT`] (what `/readyz` reports);
    /// otherwise the first failure, naming the port. The ports are asked at once, so a probe
    /// during an outage answers within the timeout instead of waiting on each port in turn
    /// (a pool waiting for a connection, a client between reconnects).
    pub async fn ping(&self) -> crate::Result<()> {
        use futures::future::BoxFuture;
        let pings: [(&str, BoxFuture<'_, crate::Result<()>>); 11] = [
            ("directory", self.directory.ping()),
            ("campaigns", self.campaigns.ping()),
            ("inbox", self.inbox.ping()),
            ("broadcasts", self.broadcasts.ping()),
            ("broadcast states", self.broadcast_states.ping()),
            ("preference cache", self.preference_cache.ping()),
            ("bus", self.bus.ping()),
            ("live hub", self.live.ping()),
            ("deliveries", self.deliveries.ping()),
            ("delays", self.delays.ping()),
            ("throttle", self.throttle.ping()),
        ];
        let checks = pings.into_iter().map(|(port, ping)| async move {
            match tokio::time::timeout(PING_TIMEOUT, ping).await {
                Ok(r) => r,
                Err(_) => Err(crate::Error::new(
                    crate::ErrorKind::Unavailable,
                    format!("the {port} backend did not answer within {PING_TIMEOUT:?}"),
                )),
            }
        });
        for r in futures::future::join_all(checks).await {
            r?;
        }
        Ok(())
    }

    /// Publishes `message` on `topic` now, or keeps it in the delay store until `due` when
    /// that is later than `now` (under the stable `delay_id`, see [`DelayedMessage::id`]).
    pub async fn publish_at(
        &self,
        topic: &str,
        message: crate::model::OutMessage,
        due: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
        delay_id: impl FnOnce() -> String,
    ) -> crate::Result<()> {
        match due {
            Some(due) if due > now => {
                self.delays
                    .schedule(&[DelayedMessage {
                        id: delay_id(),
                        topic: topic.to_owned(),
                        message,
                        due,
                    }])
                    .await
            }
            _ => self.bus.publish(topic, &[message]).await,
        }
    }
}

/// Secrets resolved at start (configured, or generated and kept in the data directory).
#[derive(Clone, Debug)]
pub struct Secrets {
    /// Bearer key of the admin API.
    pub admin_key: Secret,
    /// HS256 key of inbox tokens.
    pub token_secret: Secret,
}

/// The shared state of a Herald process.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub ports: Ports,
    pub clock: Arc<dyn Clock>,
    pub secrets: Secrets,
    /// The background loops this process runs, and their health (what `/readyz` reads).
    pub workers: crate::worker::Workers,
}
