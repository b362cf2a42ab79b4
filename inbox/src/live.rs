//! The WebSocket live feed (DESIGN.md flow 5, API.md `GET /v1/inbox/live`).
//!
//! A client connects with its inbox token (`Authorization: Bearer` or `?token=`) and gets
//! JSON text frames:
//! `{"type": "notification", "item": <inbox item>}` (a new personal notification, or a
//! broadcast that became active and matches the user), `{"type": "read" | "dismiss", "id"}`
//! and `{"type": "read_all"}` (read state changed on one of the user's devices), plus
//! WebSocket pings. Anything the client sends counts as a sign of life and is otherwise
//! ignored.
//!
//! Refusals happen before the upgrade, with the API error body: a missing or bad token is
//! 401, a `since` that is not an item cursor is 422, a request that is not a WebSocket
//! upgrade is 400, and a node at [`LiveConfig::max_connections`] (or shutting down, or not
//! yet subscribed to the live hub) is 503.
//!
//! **Resume.** `?since=<cursor>` (the `cursor` of the newest item the client has) replays the
//! items after it, oldest first, then goes live, with none missing and none twice:
//! 1. the connection is registered in the hub first and its user followed on the live hub
//!    (the connection waits until the follow is confirmed), so every event from then on is
//!    queued for it (up to [`LiveConfig::send_queue`] frames);
//! 2. the replay reads the personal rows after `since` from the inbox store in pages
//!    ([`REPLAY_PAGE`] rows, `InboxStore::after`), merged by key with the live matching
//!    broadcasts after `since` that the user has not dismissed (the inbox's broadcasts plus
//!    the ones the hub saw activated lately), and sends them;
//! 3. then the queued live frames are sent, skipping the notifications already replayed
//!    (by item id: a row written before its event was published can be both in the store
//!    and in the queue), and the connection goes on live.
//!
//! An item whose row is written during the replay is either read by the replay or queued
//! live (or both, and sent once). Duplicates are matched by id, not by key: a late row may
//! sort before the last replayed key and still not have been replayed. Replayed ids are
//! remembered for [`DEDUPE_WINDOW`], and the last [`RECENT_IDS`] live notification ids are
//! remembered too, so an event published twice (the bus is at-least-once) is sent once.
//!
//! **Robustness.** The server pings every [`LiveConfig::ping_secs`]; a connection from which
//! nothing (pong or message) was heard for [`LiveConfig::idle_timeout_secs`] is closed
//! (1000, "idle timeout"). Each connection has a bounded send queue: when the hub finds it
//! full, or a single send stays blocked for the idle timeout, the client is too slow and is
//! closed with 1013 and the reason "too slow; resume with since" (counted in
//! `herald_live_slow_consumers_closed_total`), so memory never grows with a slow client. On
//! shutdown every socket is closed with 1001 "going away"; when the hub's subscription is
//! lost, with 1012 "live feed interrupted; resume with since". Metrics: the gauges
//! `herald_live_connections` and `herald_live_users_followed` (users with a socket here whose
//! follow the live hub has confirmed: their events reach this node), the counters `herald_live_frames_sent_total` and
//! `herald_live_events_received_total` (events the node's subscription received).

use crate::auth::InboxUser;
use crate::cursor;
use crate::hub::{self, Conn, Frame, Hub, Kill, Slot};
use crate::service::{InboxItem, InboxService};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use herald_core::model::InboxKey;
use herald_core::{Error, ErrorKind};
use herald_http::{ApiError, ApiResult, QueryParams};
use serde::Deserialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// Rows read per page of a resume replay.
pub const REPLAY_PAGE: u32 = 500;
/// How long the ids of replayed items are kept to drop their live duplicates.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(60);
/// How many of the last live notification ids a connection remembers to drop duplicates.
pub const RECENT_IDS: usize = 16;
/// How long a close frame may take to go out (and the client's reply to come back).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message a client may send (clients send nothing but pongs and keep-alives).
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// Read buffer of a connection: clients send little, and 100,000 sockets must stay small.
const READ_BUFFER: usize = 4 * 1024;

/// Whether a read failed because the client's message or frame was over the size limit.
fn over_limit(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long")
        || text.contains("Frame too long")
        || text.contains("Space limit")
}

/// Close codes and reasons of the live feed.
pub mod close {
    /// Idle for the idle timeout.
    pub const IDLE: (u16, &str) = (1000, "idle timeout");
    /// The server is shutting down.
    pub const GOING_AWAY: (u16, &str) = (1001, "going away");
    /// Something failed on the server (reading the replay).
    pub const ERROR: (u16, &str) = (1011, "internal error; resume with since");
    /// The live hub's subscription was lost and events may have been missed.
    pub const HUB_LOST: (u16, &str) = (1012, "live feed interrupted; resume with since");
    /// The client did not keep up with its frames.
    pub const TOO_SLOW: (u16, &str) = (1013, "too slow; resume with since");
    /// The client sent a message over [`super::MAX_CLIENT_MESSAGE`] bytes.
    pub const TOO_BIG: (u16, &str) = (1009, "message too big (16384 bytes at most)");
}

/// Settings of the live feed, per inbox router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Open sockets allowed on this node; past it, upgrades are refused with 503.
    pub max_connections: usize,
    /// Frames queued per connection before the client counts as too slow and is closed.
    pub send_queue: usize,
    /// Seconds between server pings.
    pub ping_secs: u64,
    /// Seconds without hearing from the client (pong or message) before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_connections: 200_000,
            send_queue: 256,
            ping_secs: 25,
            idle_timeout_secs: 75,
        }
    }
}

/// The live feed of one inbox router: its hub, settings and shutdown signal. Cheap to clone.
#[derive(Clone)]
pub struct LiveFeed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    svc: InboxService,
    hub: Arc<Hub>,
    cfg: LiveConfig,
    shutdown: CancellationToken,
    /// Stops the hub's subscription when the last clone of the feed is dropped.
    _hub_task: DropGuard,
}

impl LiveFeed {
    /// Builds the feed and (inside a Tokio runtime) starts its hub's subscription. Sockets
    /// are closed with 1001 when `shutdown` is cancelled.
    pub fn new(svc: InboxService, cfg: LiveConfig, shutdown: CancellationToken) -> Self {
        let hub = Arc::new(Hub::new(svc.clone(), cfg.max_connections));
        let stop = shutdown.child_token();
        if tokio::runtime::Handle::try_current().is_ok() {
            hub::start(hub.clone(), stop.clone());
        }
        Self {
            inner: Arc::new(FeedInner {
                svc,
                hub,
                cfg,
                shutdown,
                _hub_task: stop.drop_guard(),
            }),
        }
    }

    /// Whether the feed's hub holds a live hub subscription: until it does (a hub that
    /// subscribes in the background, or one reconnecting), sockets are refused with 503.
    pub fn is_subscribed(&self) -> bool {
        self.inner.hub.is_subscribed()
    }

    /// Sockets open (or being opened) on this feed.
    pub fn connections(&self) -> usize {
        self.inner.hub.connections()
    }

    /// Sockets that are live: registered, with their user's follow confirmed by the live hub
    /// (every event published for the user from then on reaches them).
    pub fn live_connections(&self) -> usize {
        self.inner.hub.live_connections()
    }

    /// Waits until every socket has closed, at most `timeout`. Returns whether they did.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    since: Option<String>,
}

/// `GET /v1/inbox/live?since=<cursor>`: checks everything it can before the upgrade.
#[utoipa::path(get, path = "/v1/inbox/live", tag = "inbox",
    description = "A WebSocket of JSON frames: new notifications, activated broadcasts and read-state changes. With `since`, what came after that item first (no gap, no duplicate). Browsers pass the token as `?token=`.",
    params(("since" = Option<String>, Query, description = "Resume after this item's `cursor`"),
           ("token" = Option<String>, Query, description = "The inbox token, where a header cannot be set")),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = 400, description = "Not a WebSocket upgrade request", body = herald_http::openapi::ErrorBody)))]
pub(crate) async fn upgrade(State(feed): State<LiveFeed>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    match accept(&feed, &mut parts).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn accept(feed: &LiveFeed, parts: &mut axum::http::request::Parts) -> ApiResult<Response> {
    let f = &feed.inner;
    let InboxUser(user) = InboxUser::from_request_parts(parts, &f.svc).await?;
    let QueryParams(q) = QueryParams::<LiveQuery>::from_request_parts(parts, &()).await?;
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(c) => Some(cursor::decode(c).ok_or_else(|| {
            ApiError::invalid("since is not valid: pass the `cursor` of the newest item you have")
        })?),
    };
    let ws = WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::Malformed(format!("not a WebSocket upgrade: {e}")))?;
    let unavailable = |msg: &str| ApiError::Core(Error::new(ErrorKind::Unavailable, msg));
    if f.shutdown.is_cancelled() {
        return Err(unavailable("the server is shutting down"));
    }
    if !f.hub.is_subscribed() {
        return Err(unavailable(
            "the live feed is reconnecting to its hub; retry shortly",
        ));
    }
    let slot = f.hub.reserve().ok_or_else(|| {
        unavailable("this node has as many live connections as it takes; retry shortly")
    })?;
    let feed = feed.clone();
    let user: Arc<str> = user.into();
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| connection(socket, feed, user, since, slot)))
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Shutdown,
    TooSlow,
    HubLost,
    Idle,
    Failed,
    /// The client sent a message over the size limit.
    TooBig,
    /// The client sent a close frame: the reply (queued by the protocol) is flushed.
    ClientClosed,
    /// The socket broke: nothing more to send.
    Gone,
}

impl End {
    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            End::Shutdown => Some(close::GOING_AWAY),
            End::TooSlow => Some(close::TOO_SLOW),
            End::HubLost => Some(close::HUB_LOST),
            End::Idle => Some(close::IDLE),
            End::Failed => Some(close::ERROR),
            End::TooBig => Some(close::TOO_BIG),
            End::ClientClosed | End::Gone => None,
        }
    }
}

impl From<Option<Kill>> for End {
    fn from(kill: Option<Kill>) -> Self {
        match kill {
            Some(Kill::TooSlow) => End::TooSlow,
            Some(Kill::HubLost) | None => End::HubLost,
        }
    }
}

/// What a connection watches while it sends.
struct Watch {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    conn: Arc<Conn>,
    /// A send blocked this long means the client is not reading.
    send_timeout: Duration,
}

/// Remembers which notifications a connection was sent, to send none twice.
#[derive(Default)]
struct Sent {
    replayed: Option<(HashSet<Uuid>, Instant)>,
    recent: VecDeque<Uuid>,
}

impl Sent {
    /// Whether the item was sent already; otherwise remembers it as sent.
    fn seen(&mut self, id: Uuid) -> bool {
        if let Some((ids, until)) = &self.replayed {
            if Instant::now() > *until {
                self.replayed = None;
            } else if ids.contains(&id) {
                return true;
            }
        }
        if self.recent.contains(&id) {
            return true;
        }
        if self.recent.len() == RECENT_IDS {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        false
    }
}

async fn connection(
    mut socket: WebSocket,
    feed: LiveFeed,
    user: Arc<str>,
    since: Option<InboxKey>,
    slot: Slot,
) {
    let f = &feed.inner;
    let (tx, mut rx) = mpsc::channel::<Frame>(f.cfg.send_queue.max(1));
    // Registered, and the user's route followed, before the replay reads anything: from here
    // on, every event is queued.
    let (registration, followed) = f.hub.register(user.clone(), tx);
    if let Err(e) = followed.await {
        tracing::warn!(error = %e, "following a user on the live hub failed; closing the socket");
        drop(registration);
        finish(socket, End::HubLost).await;
        drop(slot);
        return;
    }
    f.hub.confirmed(&user);
    let idle = Duration::from_secs(f.cfg.idle_timeout_secs.max(1));
    let watch = Watch {
        hub: f.hub.clone(),
        shutdown: f.shutdown.clone(),
        conn: registration.conn.clone(),
        send_timeout: idle,
    };
    let mut sent = Sent::default();
    if let Some(since) = since {
        match replay(&mut socket, &feed, &user, since, &watch).await {
            Ok(ids) => sent.replayed = Some((ids, Instant::now() + DEDUPE_WINDOW)),
            Err(end) => {
                drop(registration);
                finish(socket, end).await;
                drop(slot);
                return;
            }
        }
    }
    let ping_every = Duration::from_secs(f.cfg.ping_secs.max(1));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let end = loop {
        let step = tokio::select! {
            biased;
            _ = watch.shutdown.cancelled() => Err(End::Shutdown),
            _ = watch.conn.kill.cancelled() => Err(End::from(watch.conn.why())),
            frame = rx.recv() => match frame {
                Some(frame) => {
                    if frame.item.is_some_and(|id| sent.seen(id)) {
                        Ok(())
                    } else {
                        send(&mut socket, Message::Text(frame.text), &watch)
                            .await
                            .map(|()| f.hub.frame_sent())
                    }
                }
                // The hub holds the sender while the connection is registered.
                None => Err(End::Failed),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                // The protocol refused a frame or message over the limit; the socket is
                // still open to say why.
                Some(Err(e)) if over_limit(&e) => Err(End::TooBig),
                Some(Err(_)) | None => Err(End::Gone),
                Some(Ok(_)) => {
                    heard = Instant::now();
                    Ok(())
                }
            },
            _ = ping.tick() => send(&mut socket, Message::Ping(Bytes::new()), &watch).await,
            _ = sleep_until(heard + idle) => Err(End::Idle),
        };
        if let Err(end) = step {
            break end;
        }
    };
    drop(registration);
    finish(socket, end).await;
    // The place is given back once the socket is closed, so `LiveFeed::drained` waits for
    // the close frames.
    drop(slot);
}

/// Sends one message unless the connection is told to close meanwhile.
async fn send(socket: &mut WebSocket, msg: Message, watch: &Watch) -> Result<(), End> {
    tokio::select! {
        biased;
        _ = watch.shutdown.cancelled() => Err(End::Shutdown),
        _ = watch.conn.kill.cancelled() => Err(End::from(watch.conn.why())),
        r = tokio::time::timeout(watch.send_timeout, socket.send(msg)) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                watch.hub.too_slow(&watch.conn);
                Err(End::TooSlow)
            }
        },
    }
}

/// Sends the close frame for `end` (if any) and waits briefly for the client's reply, so
/// the close frame is not lost to a reset; then drops the socket.
async fn finish(mut socket: WebSocket, end: End) {
    if end == End::TooSlow {
        tracing::debug!("closing a live connection that did not keep up");
    }
    let Some((code, reason)) = end.close_frame() else {
        if end == End::ClientClosed {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut socket)).await;
        }
        return;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Until the client's close (or the end of the stream): whatever it still sends is
        // read, so closing does not reset the connection before the close frame is read.
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Sends the items after `since`, oldest first: personal rows page by page, merged with the
/// matching broadcasts. Returns the ids sent.
async fn replay(
    socket: &mut WebSocket,
    feed: &LiveFeed,
    user: &str,
    since: InboxKey,
    watch: &Watch,
) -> Result<HashSet<Uuid>, End> {
    let f = &feed.inner;
    let broadcasts = replay_broadcasts(feed, user, since).await.map_err(|e| {
        tracing::warn!(error = %e, "reading broadcasts for a live replay failed");
        End::Failed
    })?;
    let mut broadcasts = broadcasts.into_iter().peekable();
    let mut sent = HashSet::new();
    let mut send_item = |item: &InboxItem| {
        sent.insert(item.id);
        Frame::notification(item).text
    };
    let now = f.svc.context().clock.now();
    let (retracted, revised) =
        tokio::try_join!(f.svc.retracted(now), f.svc.revised(now)).map_err(|e| {
            tracing::warn!(error = %e, "reading the campaign changes for a live replay failed");
            End::Failed
        })?;
    let mut after = since;
    loop {
        let mut page = f
            .svc
            .context()
            .ports
            .inbox
            .after(user, after, REPLAY_PAGE)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading the inbox for a live replay failed");
                End::Failed
            })?;
        f.svc
            .revise_rows(user, &mut page, &revised)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "rendering revised rows for a live replay failed");
                End::Failed
            })?;
        for row in &page {
            if row
                .campaign_id
                .as_deref()
                .is_some_and(|c| retracted.contains(c))
            {
                continue;
            }
            let item = InboxItem::personal(row);
            while let Some(b) = broadcasts.next_if(|b| b.key < item.key) {
                let text = send_item(&b);
                send(socket, Message::Text(text), watch).await?;
                f.hub.frame_sent();
            }
            let text = send_item(&item);
            send(socket, Message::Text(text), watch).await?;
            f.hub.frame_sent();
        }
        match page.last() {
            Some(last) if page.len() == REPLAY_PAGE as usize => after = last.key(),
            _ => break,
        }
    }
    for b in broadcasts {
        let text = send_item(&b);
        send(socket, Message::Text(text), watch).await?;
        f.hub.frame_sent();
    }
    Ok(sent)
}

/// The broadcasts a resume replays: live, matching the user, not dismissed, after `since`,
/// oldest first. They are the inbox's visible broadcasts plus the ones the hub saw activated
/// lately (which the inbox's cache may not show yet).
async fn replay_broadcasts(
    feed: &LiveFeed,
    user: &str,
    since: InboxKey,
) -> herald_core::Result<Vec<InboxItem>> {
    let f = &feed.inner;
    let now = f.svc.context().clock.now();
    let mut items: HashMap<Uuid, InboxItem> = f
        .svc
        .visible_broadcasts(user, now)
        .await?
        .into_iter()
        .map(|v| (v.broadcast.id, v.item()))
        .collect();
    let mut extra = Vec::new();
    for b in f.hub.recent_activations() {
        if items.contains_key(&b.id) || crate::cache::broadcast_key(&b) <= since {
            continue;
        }
        let at = hub::activation_time(now, &b);
        if f.svc.broadcast_matches(user, &b, at).await? {
            extra.push(b);
        }
    }
    if !extra.is_empty() {
        let states = f
            .svc
            .context()
            .ports
            .broadcast_states
            .user_states(user)
            .await?;
        for b in extra {
            let state = states.iter().find(|s| s.broadcast_id == b.id);
            if state.is_some_and(|s| s.dismissed_at.is_some()) {
                continue;
            }
            items.insert(b.id, InboxItem::broadcast(&b, state));
        }
    }
    let mut items: Vec<InboxItem> = items.into_values().filter(|i| i.key > since).collect();
    items.sort_unstable_by_key(|i| i.key);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_drops_replayed_ids_and_recent_duplicates() {
        let replayed = Uuid::now_v7();
        let mut sent = Sent {
            replayed: Some((
                HashSet::from([replayed]),
                Instant::now() + Duration::from_secs(60),
            )),
            ..Sent::default()
        };
        assert!(sent.seen(replayed));
        let fresh = Uuid::now_v7();
        assert!(!sent.seen(fresh));
        assert!(sent.seen(fresh), "a second publish of the same item");
        for _ in 0..RECENT_IDS {
            assert!(!sent.seen(Uuid::now_v7()));
        }
        assert!(!sent.seen(fresh), "only the last few are remembered");
        assert!(sent.recent.len() <= RECENT_IDS);

        let mut expired = Sent {
            replayed: Some((HashSet::from([replayed]), Instant::now())),
            ..Sent::default()
        };
        std::thread::sleep(Duration::from_millis(2));
        assert!(!expired.seen(replayed));
        assert!(expired.replayed.is_none());
    }

    #[test]
    fn frames_have_the_api_shape() {
        use crate::hub::Wire;
        let read: serde_json::Value =
            serde_json::from_str(&Wire::Read { id: "x" }.encode()).unwrap();
        assert_eq!(read, serde_json::json!({"type": "read", "id": "x"}));
        let all: serde_json::Value = serde_json::from_str(&Wire::ReadAll.encode()).unwrap();
        assert_eq!(all, serde_json::json!({"type": "read_all"}));
    }
}
