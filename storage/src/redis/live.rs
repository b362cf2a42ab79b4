//! The live hub on Redis pub/sub, routed per user: a user's events travel on a channel of
//! that user's, and a node subscribes to the channels of the users with a socket on it (plus
//! one channel every node follows, for broadcast activations). A node receives only what its
//! sockets need, and a user's events stay in order on their one channel.
//!
//! On one server: `PUBLISH` / `SUBSCRIBE` on `{prefix}:live:u:<user>` and `{prefix}:live:all`.
//! On a Redis Cluster: sharded pub/sub, `SPUBLISH` / `SSUBSCRIBE` on `{prefix}:live:u:{<user>}`
//! (the user's slot) and `{prefix}:live:all`, so a message travels only among the nodes of its
//! slot instead of over the whole cluster bus.
//!
//! Follow and unfollow requests go, in the order they are made, to one task per subscription
//! that owns the subscribing connection; a follow completes when Redis has confirmed it, so
//! every later `PUBLISH` for the user reaches the subscription.
//!
//! Pub/sub is at most once: a subscriber that is disconnected misses what is published
//! meanwhile. Its stream then ends, which the port's consumers treat as a lost subscription:
//! they subscribe again (the runner backs off while Redis is away), and the WebSocket hub closes
//! its sockets so clients resume from the inbox store with `since`. Nothing is lost silently.
//! (The cluster client resubscribes by itself after a node's connection drops; a confirmation
//! nobody asked for is therefore taken as a gap and ends the stream too.) Publishing
//! reconnects on its own.

use super::Conn;
use super::{redis_error, split_url};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use herald_core::model::LiveEvent;
use herald_core::ports::{LiveHub, LiveRoutes, LiveSubscription};
use herald_core::{Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Messages of one event under way at once on a cluster.
const PUBLISH_IN_FLIGHT: usize = 256;

enum Subscriber {
    /// Classic pub/sub on one server.
    Single(::redis::Client),
    /// Sharded pub/sub on a cluster found from this seed URL.
    Cluster(String),
}

pub struct RedisLiveHub {
    subscriber: Subscriber,
    conn: Conn,
    names: Names,
}

/// Channel names.
#[derive(Clone)]
struct Names {
    prefix: String,
    cluster: bool,
}

impl Names {
    fn user(&self, user_id: &str) -> String {
        if self.cluster {
            // The user id in braces: the channel's slot is the user's.
            format!("{}:live:u:{{{user_id}}}", self.prefix)
        } else {
            format!("{}:live:u:{user_id}", self.prefix)
        }
    }

    fn all(&self) -> String {
        format!("{}:live:all", self.prefix)
    }
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
            names: Names {
                prefix,
                cluster: target.cluster,
            },
            subscriber,
            conn,
        })
    }

    /// A subscription on one server: the `all` channel now, users' channels on request.
    async fn subscribe_single(&self, client: &::redis::Client) -> Result<LiveSubscription> {
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| Error::unavailable("cannot subscribe to Redis", e))?;
        let (mut sink, stream) = pubsub.split();
        // Subscribed when this returns: events for every node published from now on arrive.
        sink.subscribe(self.names.all())
            .await
            .map_err(redis_error)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        tokio::spawn(async move {
            // Ends when the subscription's routes are dropped (and with them the sender).
            while let Some(command) = rx.recv().await {
                match command {
                    Command::Follow(channel, done) => {
                        let _ = done.send(sink.subscribe(channel).await.map_err(redis_error));
                    }
                    Command::Unfollow(channel) => {
                        if let Err(e) = sink.unsubscribe(channel).await {
                            tracing::debug!(error = %e, "unsubscribing a live channel failed");
                        }
                    }
                }
            }
        });
        // The stream keeps a sender, so the task and its sink live as long as it does.
        let keep = tx.clone();
        let events = stream.filter_map(move |msg| {
            let _keep = &keep;
            let event = msg
                .get_payload::<Vec<u8>>()
                .ok()
                .and_then(|payload| parse(&payload));
            async move { event }
        });
        Ok(LiveSubscription {
            events: events.boxed(),
            routes: Arc::new(RedisRoutes {
                tx,
                names: self.names.clone(),
            }),
        })
    }

    /// A sharded subscription on the cluster: the `all` channel now, users' channels on
    /// request.
    async fn subscribe_sharded(&self, seed: &str) -> Result<LiveSubscription> {
        use ::redis::{PushInfo, PushKind};
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = ::redis::cluster::ClusterClientBuilder::new(vec![seed])
            .use_protocol(::redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .build()
            .map_err(|e| Error::invalid("bad Redis cluster URL").with_source(e))?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| Error::unavailable("cannot subscribe to the Redis Cluster", e))?;
        let asked = Arc::new(Asked::default());
        asked.subscribes.fetch_add(1, Ordering::SeqCst);
        conn.ssubscribe(self.names.all())
            .await
            .map_err(redis_error)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        let task_asked = asked.clone();
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                match command {
                    Command::Follow(channel, done) => {
                        task_asked.subscribes.fetch_add(1, Ordering::SeqCst);
                        let _ = done.send(conn.ssubscribe(channel).await.map_err(redis_error));
                    }
                    Command::Unfollow(channel) => {
                        task_asked.unsubscribes.fetch_add(1, Ordering::SeqCst);
                        if let Err(e) = conn.sunsubscribe(channel).await {
                            tracing::debug!(error = %e, "unsubscribing a live channel failed");
                        }
                    }
                }
            }
        });
        // The stream keeps a sender, so the task and its connection live as long as it does.
        let state = (push_rx, asked, (0u64, 0u64), tx.clone());
        let events = futures::stream::unfold(
            state,
            |(mut push_rx, asked, mut confirmed, keep)| async move {
                loop {
                    let push = push_rx.recv().await?;
                    match push.kind {
                        PushKind::SMessage => {
                            let Some(::redis::Value::BulkString(payload)) = push.data.get(1) else {
                                continue;
                            };
                            if let Some(event) = parse(payload) {
                                return Some((event, (push_rx, asked, confirmed, keep)));
                            }
                        }
                        PushKind::SSubscribe => {
                            confirmed.0 += 1;
                            if confirmed.0 > asked.subscribes.load(Ordering::SeqCst) {
                                tracing::warn!(
                                "a sharded live channel was resubscribed; ending the subscription"
                            );
                                return None;
                            }
                        }
                        // Ours, or a slot of ours moved to another node (resharding, a failover):
                        // Redis unsubscribes us from its channels, and the client does not
                        // subscribe again until a reconnect, so a user would go quiet.
                        PushKind::SUnsubscribe => {
                            confirmed.1 += 1;
                            if confirmed.1 > asked.unsubscribes.load(Ordering::SeqCst) {
                                tracing::warn!("a sharded live channel was unsubscribed by the cluster; ending the subscription");
                                return None;
                            }
                        }
                        PushKind::Disconnection => return None,
                        _ => {}
                    }
                }
            },
        );
        Ok(LiveSubscription {
            events: events.boxed(),
            routes: Arc::new(RedisRoutes {
                tx,
                names: self.names.clone(),
            }),
        })
    }
}

/// What a subscription's task was asked to send, to tell confirmations asked for from ones
/// the cluster client made on its own after a reconnect.
#[derive(Default)]
struct Asked {
    subscribes: AtomicU64,
    unsubscribes: AtomicU64,
}

enum Command {
    Follow(String, oneshot::Sender<Result<()>>),
    Unfollow(String),
}

/// The routes of one Redis subscription: requests to its task, in order.
struct RedisRoutes {
    tx: mpsc::UnboundedSender<Command>,
    names: Names,
}

impl LiveRoutes for RedisRoutes {
    fn follow(&self, user_id: &str) -> BoxFuture<'static, Result<()>> {
        let (done, confirmed) = oneshot::channel();
        let sent = self
            .tx
            .send(Command::Follow(self.names.user(user_id), done))
            .is_ok();
        Box::pin(async move {
            match (sent, confirmed.await) {
                (true, Ok(result)) => result,
                _ => Err(Error::unavailable(
                    "the live subscription ended",
                    std::io::Error::other("its connection is gone"),
                )),
            }
        })
    }

    fn unfollow(&self, user_id: &str) {
        let _ = self.tx.send(Command::Unfollow(self.names.user(user_id)));
    }
}

fn parse(payload: &[u8]) -> Option<LiveEvent> {
    match serde_json::from_slice::<LiveEvent>(payload) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a live event that does not parse");
            None
        }
    }
}

/// An event as the messages to publish, each with the user whose channel it goes on (`None`:
/// the channel every node follows). A batch of notifications is cut per user, so each user's
/// notifications travel on that user's channel, in order with the user's reads and
/// dismissals.
fn per_user(event: LiveEvent) -> Vec<(Option<String>, LiveEvent)> {
    match event {
        LiveEvent::Notifications { items } => {
            let mut users: BTreeMap<String, Vec<_>> = BTreeMap::new();
            for n in items {
                users.entry(n.user_id.clone()).or_default().push(n);
            }
            users
                .into_iter()
                .map(|(user, items)| (Some(user), LiveEvent::Notifications { items }))
                .collect()
        }
        LiveEvent::BroadcastActivated { .. }
        | LiveEvent::Retracted { .. }
        | LiveEvent::Revised { .. } => vec![(None, event)],
        LiveEvent::Read { ref user_id, .. }
        | LiveEvent::Dismiss { ref user_id, .. }
        | LiveEvent::ReadAll { ref user_id }
        | LiveEvent::Marked { ref user_id, .. } => vec![(Some(user_id.clone()), event)],
    }
}

#[async_trait]
impl LiveHub for RedisLiveHub {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.conn).await
    }

    async fn publish(&self, event: LiveEvent) -> Result<()> {
        let mut messages = Vec::new();
        for (user, event) in per_user(event) {
            let payload = serde_json::to_vec(&event).map_err(|e| corrupt("live event", e))?;
            let channel = match user {
                Some(user) => self.names.user(&user),
                None => self.names.all(),
            };
            messages.push((channel, payload));
        }
        match self.subscriber {
            // One round trip for every channel the event was cut into.
            Subscriber::Single(_) => {
                let mut pipe = ::redis::pipe();
                for (channel, payload) in messages {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut self.conn.clone())
                    .await
                    .map_err(redis_error)
            }
            // A cluster pipeline must stay in one slot and users' channels are spread over
            // all of them: one command each, all under way at once on the multiplexed
            // connection.
            Subscriber::Cluster(_) => futures::stream::iter(messages)
                .map(|(channel, payload)| {
                    let mut conn = self.conn.clone();
                    async move {
                        ::redis::cmd("SPUBLISH")
                            .arg(channel)
                            .arg(payload)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                })
                .buffer_unordered(PUBLISH_IN_FLIGHT)
                .map(|r| r.map_err(redis_error))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect(),
        }
    }

    async fn subscribe(&self) -> Result<LiveSubscription> {
        match &self.subscriber {
            Subscriber::Single(client) => self.subscribe_single(client).await,
            Subscriber::Cluster(seed) => self.subscribe_sharded(seed).await,
        }
    }

    /// Presence is the routing itself: a user is online while some node subscribes to the
    /// user's channel, which Redis counts (`PUBSUB NUMSUB`; on a cluster `PUBSUB
    /// SHARDNUMSUB`, which the client sends to every node and sums). A node that dies takes
    /// its subscriptions with its connection, so nothing has to expire.
    async fn online(&self, user_ids: &[String]) -> Result<HashSet<String>> {
        let sub = match self.subscriber {
            Subscriber::Single(_) => "NUMSUB",
            Subscriber::Cluster(_) => "SHARDNUMSUB",
        };
        let mut online = HashSet::new();
        for chunk in user_ids.chunks(PRESENCE_CHUNK) {
            let channels: HashMap<String, &String> =
                chunk.iter().map(|u| (self.names.user(u), u)).collect();
            let mut cmd = ::redis::cmd("PUBSUB");
            cmd.arg(sub);
            for channel in channels.keys() {
                cmd.arg(channel);
            }
            let reply: ::redis::Value = cmd
                .query_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
            for (channel, n) in subscriber_counts(reply)? {
                if n > 0 {
                    if let Some(user) = channels.get(&channel) {
                        online.insert((*user).clone());
                    }
                }
            }
        }
        Ok(online)
    }
}

/// Channels per `PUBSUB NUMSUB`.
const PRESENCE_CHUNK: usize = 512;

/// The `(channel, subscribers)` pairs of a `PUBSUB NUMSUB` reply: a flat array of pairs from
/// one server, a map once a cluster client has summed its nodes' replies.
fn subscriber_counts(reply: ::redis::Value) -> Result<Vec<(String, i64)>> {
    use ::redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => {
            return Err(corrupt(
                "PUBSUB NUMSUB reply",
                std::io::Error::other(format!("{other:?}")),
            ))
        }
    };
    pairs
        .iter()
        .map(|(k, v)| match (text(k), int(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(corrupt(
                "PUBSUB NUMSUB reply",
                std::io::Error::other(format!("{k:?} {v:?}")),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_notifications_is_cut_so_each_user_travels_on_their_own_channel() {
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
            seen_at: None,
            archived_at: None,
        };
        let users: Vec<String> = (0..100).map(|i| format!("user-{}", i % 50)).collect();
        let items = users.iter().map(|u| n(u)).collect();
        let parts = per_user(LiveEvent::Notifications { items });
        assert_eq!(parts.len(), 50);
        for (user, event) in &parts {
            let LiveEvent::Notifications { items } = event else {
                panic!("{event:?}")
            };
            assert_eq!(items.len(), 2);
            assert!(items.iter().all(|i| Some(&i.user_id) == user.as_ref()));
        }
        let read = LiveEvent::Read {
            user_id: "ola".into(),
            id: "n1".into(),
        };
        assert_eq!(per_user(read)[0].0.as_deref(), Some("ola"));
    }

    #[test]
    fn a_users_channel_on_a_cluster_hashes_by_the_user_alone() {
        let names = Names {
            prefix: "herald".into(),
            cluster: true,
        };
        assert_eq!(names.user("ola"), "herald:live:u:{ola}");
        assert_eq!(names.all(), "herald:live:all");
    }
}
