//! The live hub of one inbox process: ONE subscription to the cross-node `LiveHub` port,
//! routing each event to the WebSocket connections it concerns (see [`crate::live`] for the
//! connections themselves). The subscription follows exactly the users with a connection
//! here: the first connection of a user follows the user's route (and waits until it is
//! followed before it replays or goes live), the last one to go unfollows it, so this node
//! receives only the events its sockets need plus broadcast activations.
//!
//! Connections are indexed by user id in a sharded map (`SHARDS` maps, each behind its own
//! lock, picked by a hash of the user id), so routing an event for one user touches one
//! shard, and registering or dropping a connection never contends with routing to another
//! shard. Routing never waits: a frame goes into the connection's bounded queue with
//! `try_send`, and a connection whose queue is full is marked too slow and closed by its own
//! task ([`Conn::close`]). Each frame is serialised once and shared by every connection that
//! gets it (`Utf8Bytes` is a reference-counted buffer).
//!
//! - `Notifications` → each item to its user's connections;
//! - `BroadcastActivated` → every connection whose user the broadcast's filter matches (a
//!   match-all broadcast goes to all of them at once; a filtered one is matched per user on
//!   the cached user attributes in a background task, so the routing loop keeps up);
//! - `Read` / `Dismiss` / `ReadAll` / `Marked` → that user's connections.
//!
//! The hub also remembers the broadcasts it saw activated in the last
//! [`RECENT_ACTIVATIONS_KEPT`]: a resuming connection replays them too, which closes the gap
//! between an activation and the inbox's broadcast cache catching up with it.
//!
//! When the subscription ends (a distributed hub lost its connection), events may have been
//! missed, so every connection is closed with 1012 and told to resume with `since`; new
//! connections are refused with 503 until the hub is subscribed again.

use crate::service::{InboxItem, InboxService};
use crate::subscription::{Next, Subscription};
use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;
use herald_core::ids::notification_id;
use herald_core::model::{
    Broadcast, CampaignRetraction, CampaignRevision, InboxAction, InboxKey, LiveEvent,
};
use herald_core::ports::LiveRoutes;
use herald_core::worker::{Worker, WorkerState};
use herald_core::Result;
use metrics::{Counter, Gauge};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Number of independently locked parts of the connection map.
const SHARDS: usize = 64;
/// How long an activated broadcast is remembered for resuming connections.
pub const RECENT_ACTIVATIONS_KEPT: Duration = Duration::from_secs(30);
/// At most this many recent activations are remembered.
const RECENT_ACTIVATIONS_MAX: usize = 1024;
/// How far ahead of this node's clock an activated broadcast may start and still be sent.
const ACTIVATION_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// How many users a filtered broadcast is matched for at once.
const MATCH_CONCURRENCY: usize = 32;

/// A server frame as it goes on the wire (API.md, `GET /v1/inbox/live`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Wire<'a> {
    Notification {
        item: &'a InboxItem,
    },
    Read {
        id: &'a str,
    },
    Dismiss {
        id: &'a str,
    },
    ReadAll,
    /// The item was retracted by its sender: gone from every page and count.
    Retracted {
        id: &'a str,
    },
    /// The item's content was changed by its sender: the item as it is now.
    Updated {
        item: &'a InboxItem,
    },
    /// Items changed state on another device: `ids`, or everything older than `before`,
    /// or (`all`) everything.
    Marked {
        action: InboxAction,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        ids: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
}

impl Wire<'_> {
    pub(crate) fn encode(&self) -> Utf8Bytes {
        let text = serde_json::to_string(self).expect("a live frame serialises");
        Utf8Bytes::from(text)
    }
}

/// One serialised frame, shared by every connection it goes to.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub text: Utf8Bytes,
    /// The item of a `notification` frame, for de-duplication.
    pub item: Option<Uuid>,
}

impl Frame {
    pub(crate) fn notification(item: &InboxItem) -> Self {
        Frame {
            text: Wire::Notification { item }.encode(),
            item: Some(item.id),
        }
    }

    fn other(wire: Wire<'_>) -> Self {
        Frame {
            text: wire.encode(),
            item: None,
        }
    }
}

/// Why the hub wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// Its send queue was full.
    TooSlow,
    /// The hub's subscription ended: events may have been missed.
    HubLost,
}

/// A registered connection, as the hub sees it.
pub(crate) struct Conn {
    id: u64,
    user: Arc<str>,
    tx: mpsc::Sender<Frame>,
    /// Cancelled when the hub wants the connection closed; `why` says why.
    pub kill: CancellationToken,
    why: OnceLock<Kill>,
}

impl Conn {
    /// Asks the connection's task to close it. The first reason given wins.
    pub(crate) fn close(&self, why: Kill) {
        if self.why.set(why).is_ok() {
            self.kill.cancel();
        }
    }

    pub(crate) fn why(&self) -> Option<Kill> {
        self.why.get().copied()
    }
}

struct HubMetrics {
    connections: Gauge,
    frames_sent: Counter,
    slow_closed: Counter,
    /// Users this node follows on the live hub (those with a socket here).
    users_followed: Gauge,
    /// Events this node's subscription received: with routing per user, those of its users
    /// and the broadcast activations, not every node's.
    events_received: Counter,
}

/// The connections of one user on this node, and whether the live hub has confirmed that it
/// follows the user (from then on the user's events reach this node).
#[derive(Default)]
struct UserConns {
    conns: Vec<Arc<Conn>>,
    confirmed: bool,
}

type Shard = RwLock<HashMap<Arc<str>, UserConns>>;

/// The connections of this process and the routing of live events to them.
pub(crate) struct Hub {
    svc: InboxService,
    shards: Box<[Shard]>,
    hasher: RandomState,
    max_connections: usize,
    /// Connections reserved or open (reserved before the upgrade, released when it ends).
    connections: AtomicUsize,
    next_id: AtomicU64,
    /// Whether the hub's subscription is live (connections are refused while it is not).
    subscribed: AtomicBool,
    /// The routes of the live subscription: which users it follows.
    routes: RwLock<Option<Arc<dyn LiveRoutes>>>,
    recent: Mutex<VecDeque<(Instant, Arc<Broadcast>)>>,
    metrics: HubMetrics,
}

impl Hub {
    pub(crate) fn new(svc: InboxService, max_connections: usize) -> Self {
        // Install the process's recorder before taking metric handles (a handle taken
        // before would count into nothing).
        herald_http::metrics_handle();
        Self {
            svc,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_connections,
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            subscribed: AtomicBool::new(false),
            routes: RwLock::new(None),
            recent: Mutex::new(VecDeque::new()),
            metrics: HubMetrics {
                connections: metrics::gauge!("herald_live_connections"),
                frames_sent: metrics::counter!("herald_live_frames_sent_total"),
                slow_closed: metrics::counter!("herald_live_slow_consumers_closed_total"),
                users_followed: metrics::gauge!("herald_live_users_followed"),
                events_received: metrics::counter!("herald_live_events_received_total"),
            },
        }
    }

    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Registered connections whose user's follow is confirmed.
    pub(crate) fn live_connections(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .values()
                    .filter(|u| u.confirmed)
                    .map(|u| u.conns.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Open (or reserved) connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn frame_sent(&self) {
        self.metrics.frames_sent.increment(1);
    }

    fn shard(&self, user: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    /// Takes one of the `max_connections` places, or `None` when all are taken.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_connections).then_some(n + 1)
            });
        taken.ok().map(|_| {
            self.metrics.connections.increment(1.0);
            Slot { hub: self.clone() }
        })
    }

    /// Registers a connection of `user` whose frames go to `tx`, and follows the user's route
    /// on the live subscription. Once the returned future has completed, the connection gets
    /// every event published for its user; an error means it may not (the subscription is
    /// gone). Dropping the registration unregisters it (its place, a [`Slot`], is held apart,
    /// until the socket is closed).
    pub(crate) fn register(
        self: &Arc<Self>,
        user: Arc<str>,
        tx: mpsc::Sender<Frame>,
    ) -> (Registration, BoxFuture<'static, Result<()>>) {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            tx,
            kill: CancellationToken::new(),
            why: OnceLock::new(),
        });
        let followed = {
            let mut shard = self.shard(&user).write();
            shard
                .entry(user.clone())
                .or_default()
                .conns
                .push(conn.clone());
            // Under the shard's lock, so a follow and the unfollow of the user's last
            // connection reach the subscription in the order of the map's changes. Every
            // connection asks (and waits), so none goes on before the user is followed.
            match self.routes.read().as_ref() {
                Some(routes) => routes.follow(&user),
                None => Box::pin(futures::future::ready(Err(
                    herald_core::Error::unavailable(
                        "the live hub is not subscribed",
                        std::io::Error::other("no live subscription"),
                    ),
                ))),
            }
        };
        (
            Registration {
                conn,
                hub: self.clone(),
            },
            followed,
        )
    }

    /// Closes a connection that did not keep up, and counts it.
    pub(crate) fn too_slow(&self, conn: &Conn) {
        if conn.why().is_none() {
            tracing::debug!(user = %conn.user, "live connection too slow; closing it");
            self.metrics.slow_closed.increment(1);
        }
        conn.close(Kill::TooSlow);
    }

    fn unregister(&self, conn: &Conn) {
        let mut shard = self.shard(&conn.user).write();
        if let Some(entry) = shard.get_mut(&conn.user) {
            entry.conns.retain(|c| c.id != conn.id);
            if entry.conns.is_empty() {
                if entry.confirmed {
                    self.metrics.users_followed.decrement(1.0);
                }
                shard.remove(&conn.user);
                if let Some(routes) = self.routes.read().as_ref() {
                    routes.unfollow(&conn.user);
                }
            }
        }
    }

    /// Notes that the live hub confirmed following `user` (a connection's follow completed):
    /// counted once per user in `herald_live_users_followed` while the user has connections.
    pub(crate) fn confirmed(&self, user: &str) {
        let mut shard = self.shard(user).write();
        if let Some(entry) = shard.get_mut(user) {
            if !entry.confirmed {
                entry.confirmed = true;
                self.metrics.users_followed.increment(1.0);
            }
        }
    }

    /// Takes the routes of a new subscription (`None`: the subscription was lost).
    fn set_routes(&self, routes: Option<Arc<dyn LiveRoutes>>) {
        *self.routes.write() = routes;
    }

    /// The broadcasts activated in the last [`RECENT_ACTIVATIONS_KEPT`].
    pub(crate) fn recent_activations(&self) -> Vec<Arc<Broadcast>> {
        let mut recent = self.recent.lock();
        prune(&mut recent);
        recent.iter().map(|(_, b)| b.clone()).collect()
    }

    /// Queues a frame for a connection without waiting; a full queue closes the connection.
    fn deliver(&self, conn: &Conn, frame: Frame) {
        if conn.kill.is_cancelled() {
            return;
        }
        match conn.tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.too_slow(conn),
            // The connection is ending; it unregisters itself.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn deliver_to_user(&self, user: &str, frame: impl FnOnce() -> Frame) {
        let shard = self.shard(user).read();
        let Some(UserConns { conns, .. }) = shard.get(user) else {
            return;
        };
        // Serialised only when someone is connected, and then once.
        let frame = frame();
        for conn in conns {
            self.deliver(conn, frame.clone());
        }
    }

    /// Routes one event to the connections it concerns.
    pub(crate) fn route(self: &Arc<Self>, event: LiveEvent) {
        match event {
            LiveEvent::Notifications { items } => {
                // A batch rendered just before its campaign's content changed: rendered again
                // (off the routing loop) for the users connected here.
                if self
                    .svc
                    .revised_snapshot()
                    .is_some_and(|r| r.touches(&items))
                {
                    return self.notify_revised(items);
                }
                // A batch fanned out while its campaign was being retracted publishes rows
                // nobody must see.
                let retracted = self.svc.retracted_snapshot();
                for n in &items {
                    if let (Some(r), Some(c)) = (&retracted, n.campaign_id.as_deref()) {
                        if r.contains(c) {
                            continue;
                        }
                    }
                    self.deliver_to_user(&n.user_id, || {
                        Frame::notification(&InboxItem::personal(n))
                    });
                }
            }
            LiveEvent::Read { user_id, id } => {
                self.deliver_to_user(&user_id, || Frame::other(Wire::Read { id: &id }));
            }
            LiveEvent::Dismiss { user_id, id } => {
                self.deliver_to_user(&user_id, || Frame::other(Wire::Dismiss { id: &id }));
            }
            LiveEvent::ReadAll { user_id } => {
                self.deliver_to_user(&user_id, || Frame::other(Wire::ReadAll));
            }
            LiveEvent::Marked {
                user_id,
                action,
                ids,
                before,
                all,
            } => {
                self.deliver_to_user(&user_id, || {
                    Frame::other(Wire::Marked {
                        action,
                        ids: &ids,
                        before: before.as_deref(),
                        all,
                    })
                });
            }
            LiveEvent::BroadcastActivated { broadcast } => {
                self.broadcast_activated(Arc::new(*broadcast));
            }
            LiveEvent::Retracted { retraction } => self.retracted(retraction),
            LiveEvent::Revised { revision } => self.revised(*revision),
        }
    }

    /// New rows of a revised campaign, each rendered with the latest content for its user
    /// if the user is connected here.
    fn notify_revised(self: &Arc<Self>, items: Vec<herald_core::model::Notification>) {
        let connected: Vec<_> = items
            .into_iter()
            .filter(|n| {
                self.shard(&n.user_id)
                    .read()
                    .contains_key(n.user_id.as_str())
            })
            .collect();
        if connected.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let now = hub.svc.context().clock.now();
            let (revised, retracted) = match tokio::try_join!(
                hub.svc.revised(now),
                hub.svc.retracted(now)
            ) {
                Ok(lists) => lists,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the campaign changes for live rows failed");
                    return;
                }
            };
            for mut n in connected {
                if n.campaign_id
                    .as_deref()
                    .is_some_and(|c| retracted.contains(c))
                {
                    continue;
                }
                let user = n.user_id.clone();
                if let Err(e) = hub
                    .svc
                    .revise_rows(&user, std::slice::from_mut(&mut n), &revised)
                    .await
                {
                    tracing::warn!(error = %e, "rendering a revised live row failed");
                }
                hub.deliver_to_user(&user, || Frame::notification(&InboxItem::personal(&n)));
            }
        });
    }

    /// Tells each connected user who has the revised campaign's item what it says now: for
    /// a personal row, the users whose inbox holds it (one read by key, then rendered for the
    /// user); for a broadcast, the users who see it. Off the routing loop, a bounded number of
    /// users at a time.
    fn revised(self: &Arc<Self>, revision: CampaignRevision) {
        let Some(row_time) = revision.row_time else {
            // Not started when it changed: nobody has an item of it yet.
            return;
        };
        // Rendered from this revision, not from a list loaded just before it was written.
        self.svc.revision_announced(revision.clone());
        let users = self.connected_users();
        if users.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let svc = &hub.svc;
            let now = svc.context().clock.now();
            let lists = tokio::try_join!(svc.revised(now), svc.retracted(now));
            let (revised, retracted) = match lists {
                Ok(lists) => lists,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the campaign changes failed");
                    return;
                }
            };
            if retracted.contains(&revision.campaign_id) {
                return;
            }
            let (hub, revision, revised) = (&hub, &revision, &revised);
            hub.tell_each(users, "revised", |user| async move {
                let item = match revision.broadcast_id {
                    Some(id) => hub
                        .svc
                        .visible_broadcast(&user, id, now)
                        .await?
                        .map(|v| v.item()),
                    None => {
                        let key = InboxKey {
                            created_at: row_time,
                            id: notification_id(&revision.campaign_id, &user, row_time),
                        };
                        match hub.svc.context().ports.inbox.get(&user, key).await? {
                            Some(mut n) => {
                                hub.svc
                                    .revise_rows(&user, std::slice::from_mut(&mut n), revised)
                                    .await?;
                                Some(InboxItem::personal(&n))
                            }
                            None => None,
                        }
                    }
                };
                Ok(item.map(|item| Frame::other(Wire::Updated { item: &item })))
            })
            .await;
        });
    }

    /// Tells each connected user who has the retracted campaign's item that it is gone: for
    /// a personal row, the users whose inbox holds it (one read by the key the campaign and
    /// the user give); for a broadcast, the users its segment matches. Off the routing loop,
    /// a bounded number of users at a time.
    fn retracted(self: &Arc<Self>, retraction: CampaignRetraction) {
        if let Some(b) = retraction.broadcast_id {
            self.recent.lock().retain(|(_, r)| r.id != b);
        }
        let users = self.connected_users();
        if users.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let ctx = hub.svc.context();
            let broadcast = match retraction.broadcast_id {
                Some(id) => match ctx.ports.broadcasts.get(id).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a retracted broadcast failed");
                        return;
                    }
                },
                None => None,
            };
            let now = ctx.clock.now();
            let (hub, retraction, broadcast) = (&hub, &retraction, &broadcast);
            hub.tell_each(users, "retracted", |user| async move {
                let has = match broadcast {
                    Some(b) => hub
                        .svc
                        .filter_matches(&user, &b.filter, now)
                        .await?
                        .then_some(b.id),
                    None => {
                        let id =
                            notification_id(&retraction.campaign_id, &user, retraction.row_time);
                        let key = InboxKey {
                            created_at: retraction.row_time,
                            id,
                        };
                        let ctx = hub.svc.context();
                        ctx.ports.inbox.get(&user, key).await?.map(|_| id)
                    }
                };
                Ok(has.map(|id| {
                    Frame::other(Wire::Retracted {
                        id: &id.to_string(),
                    })
                }))
            })
            .await;
        });
    }

    /// Sends each of `users` (connected here) the frame `frame_for` makes for them, if any: a
    /// bounded number of users at a time. A user whose check fails is logged and skipped.
    async fn tell_each<F, Fut>(
        &self,
        users: Vec<(Arc<str>, Vec<Arc<Conn>>)>,
        change: &'static str,
        frame_for: F,
    ) where
        F: Fn(Arc<str>) -> Fut,
        Fut: std::future::Future<Output = herald_core::Result<Option<Frame>>>,
    {
        futures::stream::iter(users)
            .for_each_concurrent(MATCH_CONCURRENCY, |(user, conns)| {
                let frame = frame_for(user.clone());
                async move {
                    match frame.await {
                        Ok(Some(frame)) => {
                            for conn in &conns {
                                self.deliver(conn, frame.clone());
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            error = %e, user = %user, change,
                            "checking a live connection's changed item failed"
                        ),
                    }
                }
            })
            .await;
    }

    fn broadcast_activated(self: &Arc<Self>, broadcast: Arc<Broadcast>) {
        {
            let mut recent = self.recent.lock();
            recent.retain(|(_, b)| b.id != broadcast.id);
            recent.push_back((Instant::now(), broadcast.clone()));
            prune(&mut recent);
        }
        let now = activation_time(self.svc.context().clock.now(), &broadcast);
        if !broadcast.is_live_at(now) {
            return;
        }
        // A new broadcast is unread for everyone.
        let frame = Frame::notification(&InboxItem::broadcast(&broadcast, None));
        if broadcast.filter.is_match_all() {
            for shard in self.shards.iter() {
                for conn in shard.read().values().flat_map(|u| &u.conns) {
                    self.deliver(conn, frame.clone());
                }
            }
            return;
        }
        // Matching needs each user's attributes (cached, else one directory read): done
        // off the routing loop, a bounded number of users at a time.
        let users = self.connected_users();
        if users.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            futures::stream::iter(users)
                .for_each_concurrent(MATCH_CONCURRENCY, |(user, conns)| {
                    let hub = &hub;
                    let broadcast = &broadcast;
                    let frame = &frame;
                    async move {
                        match hub.svc.broadcast_matches(&user, broadcast, now).await {
                            Ok(true) => {
                                for conn in &conns {
                                    hub.deliver(conn, frame.clone());
                                }
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(
                                error = %e, user = %user,
                                "matching a broadcast for a live connection failed"
                            ),
                        }
                    }
                })
                .await;
        });
    }

    /// Every user with a connection here, with their connections (a copy, for work done off
    /// the routing loop).
    fn connected_users(&self) -> Vec<(Arc<str>, Vec<Arc<Conn>>)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .map(|(u, c)| (u.clone(), c.conns.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Closes every connection (the subscription was lost: they may have missed events).
    fn close_all(&self, why: Kill) {
        for shard in self.shards.iter() {
            for conn in shard.read().values().flat_map(|u| &u.conns) {
                conn.close(why);
            }
        }
    }
}

/// The time at which to judge an activated broadcast: the activation is authoritative about
/// the start, so a clock up to [`ACTIVATION_SKEW`] behind the activating node's does not hold
/// the broadcast back. Status and expiry still count.
pub(crate) fn activation_time(now: DateTime<Utc>, broadcast: &Broadcast) -> DateTime<Utc> {
    if broadcast.starts_at <= now + ACTIVATION_SKEW {
        now.max(broadcast.starts_at)
    } else {
        now
    }
}

fn prune(recent: &mut VecDeque<(Instant, Arc<Broadcast>)>) {
    while recent.len() > RECENT_ACTIVATIONS_MAX
        || recent
            .front()
            .is_some_and(|(at, _)| at.elapsed() > RECENT_ACTIVATIONS_KEPT)
    {
        recent.pop_front();
    }
}

/// One of the hub's `max_connections` places; given back when dropped.
pub(crate) struct Slot {
    hub: Arc<Hub>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::SeqCst);
        self.hub.metrics.connections.decrement(1.0);
    }
}

/// A connection registered in the hub; unregistered when dropped.
pub(crate) struct Registration {
    pub conn: Arc<Conn>,
    hub: Arc<Hub>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

/// Starts the hub's subscription. A hub port that subscribes at once (the in-process one) is
/// subscribed before this returns, so connections can be taken at once; others are
/// subscribed in the background. The task ends when `stop` is cancelled.
pub(crate) fn start(hub: Arc<Hub>, stop: CancellationToken) {
    let ctx = hub.svc.context().clone();
    let subscription = Subscription::new(ctx.ports.live.clone());
    if subscription.subscribed_at_once() {
        hub.set_routes(subscription.routes());
        hub.subscribed.store(true, Ordering::SeqCst);
    }
    // Under the worker runner: a panic while routing one event is caught and counted, the
    // follower goes on, and a subscription that keeps failing turns `/readyz` red. The task
    // ends with `stop` (the live feed's lifetime), not with this call.
    let task = ctx.workers.spawn(Follower { hub, subscription }, stop);
    tokio::spawn(task.join());
}

/// Follows the live hub for this process: one event routed per step.
struct Follower {
    hub: Arc<Hub>,
    subscription: Subscription,
}

#[async_trait::async_trait]
impl Worker for Follower {
    fn name(&self) -> &'static str {
        "live-hub"
    }

    async fn step(&mut self, stop: &CancellationToken) -> Result<WorkerState> {
        let next = self.subscription.next(stop).await.inspect_err(|_| {
            self.hub.subscribed.store(false, Ordering::SeqCst);
        })?;
        match next {
            Next::Event(event) => {
                self.hub.metrics.events_received.increment(1);
                self.hub.route(event);
                Ok(WorkerState::Busy)
            }
            Next::Subscribed => {
                // The new subscription follows nobody yet, and every connection of the old
                // one was closed: new connections follow their users on it.
                self.hub.set_routes(self.subscription.routes());
                self.hub.subscribed.store(true, Ordering::SeqCst);
                Ok(WorkerState::Busy)
            }
            Next::Ended => {
                tracing::warn!("the live hub subscription ended; closing live connections");
                self.hub.subscribed.store(false, Ordering::SeqCst);
                self.hub.set_routes(None);
                self.hub.close_all(Kill::HubLost);
                Ok(WorkerState::Idle(Duration::from_secs(1)))
            }
            Next::Stop => Ok(WorkerState::Done),
        }
    }
}
