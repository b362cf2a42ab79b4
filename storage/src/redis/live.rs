//! The live hub on Redis pub/sub: events cross nodes on [`SHARDS`] channels,
//! `{prefix}:live:<shard>`, a user's events always on the shard their id hashes to (events of
//! one user stay in order; a node could subscribe to the shards of its users only).
//!
//! Pub/sub is at most once: a subscriber that is disconnected misses what is published
//! meanwhile. Its stream then ends, which the port's consumers treat as a lost subscription:
//! they subscribe again (the runner backs off while Redis is away), and the WebSocket hub closes
//! its sockets so clients resume from the inbox store with `since`. Nothing is lost silently.
//! Publishing goes through the connection manager, which reconnects on its own.
//!
//! On a Redis Cluster this is classic pub/sub, which the cluster relays to every node; the
//! subscription is held on the URL's (seed) host. Sharded pub/sub (`SSUBSCRIBE` per user
//! shard, so a message travels only within its shard's nodes) is the step beyond.

use super::Conn;
use super::{redis_error, split_url};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use herald_core::model::LiveEvent;
use herald_core::ports::LiveHub;
use herald_core::{Error, Result};

/// Channels events are spread over.
pub const SHARDS: u32 = 16;

pub struct RedisLiveHub {
    client: ::redis::Client,
    conn: Conn,
    prefix: String,
}

impl RedisLiveHub {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        // Subscriptions are made on the URL's host itself, also on a cluster: a classic
        // `PUBLISH` on any node of a cluster reaches subscribers on every node.
        let target = split_url(url)?;
        let client = ::redis::Client::open(target.base.as_str())
            .map_err(|e| Error::invalid(format!("bad Redis URL {url}")).with_source(e))?;
        let (conn, prefix) = super::connect(url).await?;
        Ok(Self {
            client,
            conn,
            prefix,
        })
    }

    fn channel(&self, shard: u32) -> String {
        format!("{{{}}}:live:{shard}", self.prefix)
    }
}

/// The user an event is about (a batch of notifications: its first item's user).
fn user_of(event: &LiveEvent) -> &str {
    match event {
        LiveEvent::Notifications { items } => items.first().map_or("", |n| n.user_id.as_str()),
        LiveEvent::BroadcastActivated { .. } => "",
        LiveEvent::Read { user_id, .. }
        | LiveEvent::Dismiss { user_id, .. }
        | LiveEvent::ReadAll { user_id } => user_id,
    }
}

/// FNV-1a of the user id, onto a shard.
fn shard_of(user_id: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(SHARDS)) as u32
}

#[async_trait]
impl LiveHub for RedisLiveHub {
    async fn publish(&self, event: LiveEvent) -> Result<()> {
        let payload = serde_json::to_vec(&event).map_err(|e| corrupt("live event", e))?;
        let channel = self.channel(shard_of(user_of(&event)));
        ::redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, LiveEvent>> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| Error::unavailable("cannot subscribe to Redis", e))?;
        let channels: Vec<String> = (0..SHARDS).map(|s| self.channel(s)).collect();
        // Subscribed when this returns: events published from now on are received.
        pubsub.subscribe(channels).await.map_err(redis_error)?;
        let events = pubsub.into_on_message().filter_map(|msg| async move {
            let payload: Vec<u8> = msg.get_payload().ok()?;
            match serde_json::from_slice::<LiveEvent>(&payload) {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a live event that does not parse");
                    None
                }
            }
        });
        Ok(events.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_events_always_go_to_one_shard_and_users_spread_over_all() {
        assert_eq!(shard_of("ola"), shard_of("ola"));
        let used: std::collections::BTreeSet<u32> =
            (0..1000).map(|i| shard_of(&format!("user-{i}"))).collect();
        assert_eq!(used.len() as u32, SHARDS);
        let read = LiveEvent::Read {
            user_id: "ola".into(),
            id: "n1".into(),
        };
        assert_eq!(user_of(&read), "ola");
    }
}
