//! The live hub on Redis pub/sub: events cross nodes on [`SHARDS`] channels, a user's events
//! always on the shard their id hashes to (events of one user stay in order; a node could
//! subscribe to the shards of its users only).
//!
//! On one server: `PUBLISH` / `SUBSCRIBE` on `{prefix}:live:<shard>`. On a Redis Cluster:
//! sharded pub/sub, `SPUBLISH` / `SSUBSCRIBE` on `<prefix>:live:{<prefix>-<shard>}`, each shard's
//! channel in a slot of its own, so a message travels only among the nodes of its shard
//! instead of over the whole cluster bus.
//!
//! Pub/sub is at most once: a subscriber that is disconnected misses what is published
//! meanwhile. Its stream then ends, which the port's consumers treat as a lost subscription:
//! they subscribe again (the runner backs off while Redis is away), and the WebSocket hub closes
//! its sockets so clients resume from the inbox store with `since`. Nothing is lost silently.
//! (The cluster client resubscribes by itself after a node's connection drops; a second
//! confirmation of a channel is therefore taken as a gap and ends the stream too.) Publishing
//! reconnects on its own.

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

enum Subscriber {
    /// Classic pub/sub on one server.
    Single(::redis::Client),
    /// Sharded pub/sub on a cluster found from this seed URL.
    Cluster(String),
}

pub struct RedisLiveHub {
    subscriber: Subscriber,
    conn: Conn,
    prefix: String,
}

impl RedisLiveHub {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let target = split_url(url)?;
        let subscriber = if target.cluster {
            Subscriber::Cluster(target.base.clone())
        } else {
            Subscriber::Single(
                ::redis::Client::open(target.base.as_str())
                    .map_err(|e| Error::invalid(format!("bad Redis URL {url}")).with_source(e))?,
            )
        };
        let (conn, prefix) = super::connect(url).await?;
        Ok(Self {
            subscriber,
            conn,
            prefix,
        })
    }

    fn channel(&self, shard: u32) -> String {
        match self.subscriber {
            Subscriber::Single(_) => format!("{{{}}}:live:{shard}", self.prefix),
            Subscriber::Cluster(_) => format!("{p}:live:{{{p}-{shard}}}", p = self.prefix),
        }
    }

    /// A sharded subscription to every shard's channel on the cluster.
    async fn subscribe_sharded(&self, seed: &str) -> Result<BoxStream<'static, LiveEvent>> {
        use ::redis::{PushInfo, PushKind};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let client = ::redis::cluster::ClusterClientBuilder::new(vec![seed])
            .use_protocol(::redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
            .map_err(|e| Error::invalid("bad Redis cluster URL").with_source(e))?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| Error::unavailable("cannot subscribe to the Redis Cluster", e))?;
        // One command per channel: the channels are in different slots.
        for shard in 0..SHARDS {
            conn.ssubscribe(self.channel(shard))
                .await
                .map_err(redis_error)?;
        }
        let state = (rx, conn, 0u32);
        let events = futures::stream::unfold(state, |(mut rx, conn, mut confirmed)| async move {
            loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        let payload = match push.data.get(1) {
                            Some(::redis::Value::BulkString(b)) => b.clone(),
                            _ => continue,
                        };
                        match serde_json::from_slice::<LiveEvent>(&payload) {
                            Ok(event) => return Some((event, (rx, conn, confirmed))),
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping a live event that does not parse");
                            }
                        }
                    }
                    PushKind::SSubscribe => {
                        confirmed += 1;
                        if confirmed > SHARDS {
                            tracing::warn!(
                                "a sharded live channel was resubscribed; ending the subscription"
                            );
                            return None;
                        }
                    }
                    // A slot of ours moved to another node (resharding, a failover): Redis
                    // unsubscribes us from its channels, and the client does not subscribe
                    // again until a reconnect, so that shard would go quiet.
                    PushKind::SUnsubscribe => {
                        tracing::warn!("a sharded live channel was unsubscribed by the cluster; ending the subscription");
                        return None;
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            }
        });
        Ok(events.boxed())
    }
}

/// The user an event is about (a batch of notifications is cut per shard before publishing,
/// see [`per_shard`]: its first item's user stands for all).
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
    (crate::fnv1a(user_id) % u64::from(SHARDS)) as u32
}

/// An event as the events to publish, one per shard: a batch of notifications for users of
/// several shards is cut so that each user's notifications travel on that user's shard, in
/// order with the user's reads and dismissals.
fn per_shard(event: LiveEvent) -> Vec<(u32, LiveEvent)> {
    match event {
        LiveEvent::Notifications { items } => {
            let mut shards: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
            for n in items {
                shards.entry(shard_of(&n.user_id)).or_default().push(n);
            }
            shards
                .into_iter()
                .map(|(shard, items)| (shard, LiveEvent::Notifications { items }))
                .collect()
        }
        other => vec![(shard_of(user_of(&other)), other)],
    }
}

#[async_trait]
impl LiveHub for RedisLiveHub {
    async fn publish(&self, event: LiveEvent) -> Result<()> {
        let command = match self.subscriber {
            Subscriber::Single(_) => "PUBLISH",
            Subscriber::Cluster(_) => "SPUBLISH",
        };
        // One round trip for every shard the event was cut into.
        let mut pipe = ::redis::pipe();
        for (shard, event) in per_shard(event) {
            let payload = serde_json::to_vec(&event).map_err(|e| corrupt("live event", e))?;
            pipe.cmd(command)
                .arg(self.channel(shard))
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }

    async fn subscribe(&self) -> Result<BoxStream<'static, LiveEvent>> {
        let client = match &self.subscriber {
            Subscriber::Single(client) => client,
            Subscriber::Cluster(seed) => return self.subscribe_sharded(seed).await,
        };
        let mut pubsub = client
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

    #[test]
    fn a_batch_of_notifications_is_cut_so_each_user_travels_on_their_own_shard() {
        let n = |user: &str| herald_core::model::Notification {
            id: uuid::Uuid::now_v7(),
            user_id: user.to_owned(),
            campaign_id: None,
            title: "t".into(),
            body: "b".into(),
            category: None,
            data: serde_json::Value::Null,
            created_at: chrono::Utc::now(),
            read_at: None,
        };
        let users: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
        let items = users.iter().map(|u| n(u)).collect();
        let parts = per_shard(LiveEvent::Notifications { items });
        let mut seen = 0;
        for (shard, event) in &parts {
            let LiveEvent::Notifications { items } = event else {
                panic!("{event:?}")
            };
            assert!(items.iter().all(|i| shard_of(&i.user_id) == *shard));
            seen += items.len();
        }
        assert_eq!(seen, 100);
        assert!(parts.len() > 1);
    }
}
