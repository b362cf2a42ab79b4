//! The WebSocket live feed (`GET /v1/inbox/live`) with real WebSocket clients
//! (tokio-tungstenite) against a server on port 0 with embedded backends in a temp dir.
//! Personal rows are written and announced as the fan-out does (`InboxStore::write_batch`,
//! then `LiveEvent::Notifications` on the live hub); broadcasts are stored and announced with
//! `LiveEvent::BroadcastActivated`. Waits are bounded by deadlines; the only fixed waits are
//! the short quiet periods that check nothing more arrives.

mod common;
use common::*;

use chrono::{DateTime, Duration, Utc};
use futures::{SinkExt, StreamExt};
use herald_core::filter::Filter;
use herald_core::ids::{broadcast_id, notification_id, row_time};
use herald_core::model::*;
use herald_core::{Clock, Context};
use herald_inbox::LiveConfig;
use serde_json::{json, Value};
use std::time::Duration as StdDuration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a frame that should come may take.
const FRAME_WAIT: StdDuration = StdDuration::from_secs(10);
/// How long to watch for a frame that should not come.
const QUIET: StdDuration = StdDuration::from_millis(300);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Test settings: fast enough, with room for the bursts the tests make.
fn test_config() -> LiveConfig {
    LiveConfig {
        max_connections: 1000,
        send_queue: 1024,
        ping_secs: 25,
        idle_timeout_secs: 75,
    }
}

async fn spawn_app(live: LiveConfig) -> TestApp {
    spawn_app_with(live).await
}

fn token(app: &TestApp, user: &str) -> String {
    let now = app.clock.now();
    herald_core::token::mint(TOKEN_SECRET.as_bytes(), user, now, now + Duration::days(1))
}

fn notification(user: &str, title: &str, created_at: DateTime<Utc>) -> Notification {
    let campaign = format!("c-{title}");
    let created_at = row_time(created_at);
    Notification {
        id: notification_id(&campaign, user, created_at),
        user_id: user.into(),
        campaign_id: Some(campaign),
        title: title.into(),
        body: format!("body of {title}"),
        category: Some("news".into()),
        data: json!({"title": title}),
        created_at,
        read_at: None,
        seen_at: None,
        archived_at: None,
    }
}

/// Writes rows and then announces them, as a batch worker does.
async fn deliver(ctx: &Context, rows: Vec<Notification>) {
    ctx.ports
        .inbox
        .write_batch(&rows)
        .await
        .expect("write rows");
    ctx.ports
        .live
        .publish(LiveEvent::Notifications { items: rows })
        .await
        .expect("publish");
}

impl TestApp {
    fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/inbox/live{query}", self.addr)
    }

    /// Connects with the token in the `Authorization` header.
    async fn connect(&self, user: &str, query: &str) -> Ws {
        self.try_connect(Some(&token(self, user)), query)
            .await
            .unwrap_or_else(|e| panic!("connecting {user}{query}: {}", describe(&e)))
    }

    async fn try_connect(&self, bearer: Option<&str>, query: &str) -> Result<Ws, WsError> {
        let mut req = self.url(query).into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }

    async fn http(&self, user: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(token(self, user))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    async fn bulk(&self, user: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("http://{}/v1/inbox/bulk", self.addr))
            .bearer_auth(token(self, user))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn inbox(&self, user: &str) -> Value {
        let (status, body) = self
            .http(user, reqwest::Method::GET, "/v1/inbox?limit=100")
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn broadcast(&self, title: &str, starts_at: DateTime<Utc>, filter: Value) -> Broadcast {
        let campaign = format!("bc-{title}");
        let filter = Filter::parse(&filter).expect("filter");
        let b = Broadcast {
            id: broadcast_id(&campaign),
            campaign_id: Some(campaign),
            title: title.into(),
            body: format!("body of {title}"),
            category: Some("announcements".into()),
            data: json!({"title": title}),
            segment: (!filter.is_match_all()).then(|| "some-segment".to_owned()),
            filter,
            channels: vec![Channel::InApp],
            priority: Priority::Normal,
            starts_at,
            expires_at: None,
            status: BroadcastStatus::Active,
            created_at: starts_at,
        };
        self.ctx
            .ports
            .broadcasts
            .insert(&b)
            .await
            .expect("insert broadcast");
        b
    }

    async fn activate(&self, b: &Broadcast) {
        self.ctx
            .ports
            .live
            .publish(LiveEvent::BroadcastActivated {
                broadcast: Box::new(b.clone()),
            })
            .await
            .expect("publish activation");
    }

    /// Waits until the feed has `n` sockets open, each live (its user followed on the live
    /// hub, so events published from now on reach it).
    async fn wait_connections(&self, n: usize) {
        let deadline = Instant::now() + FRAME_WAIT;
        while self.feed.connections() != n || self.feed.live_connections() != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} live connections, have {}",
                self.feed.connections()
            );
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn describe(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!(
            "HTTP {} {}",
            resp.status(),
            resp.body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// The status and JSON body of a refused upgrade.
fn refused(result: Result<Ws, WsError>) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().expect("an error body");
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).expect("a JSON error body"),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// The next JSON frame (pings and pongs skipped).
async fn next_frame(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a good frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("a JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Checks that no frame comes for a short while.
async fn assert_quiet(ws: &mut Ws) {
    let deadline = Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns its close frame's code and reason, if one came.
async fn until_closed(ws: &mut Ws, within: StdDuration) -> Option<(CloseCode, String)> {
    let deadline = Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server closes the socket in time");
        match msg {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (f.code, f.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn titles(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            f["item"]["title"]
                .as_str()
                .expect("an item title")
                .to_owned()
        })
        .collect()
}

/// A live hub that records what the inbox node's subscriptions follow and receive, and can
/// hold each follow back for a while before passing it on.
struct RecordingHub {
    inner: std::sync::Arc<dyn herald_core::ports::LiveHub>,
    follow_delay: StdDuration,
    log: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    /// The users of the notifications the subscriptions received.
    received: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

struct RecordingRoutes {
    inner: std::sync::Arc<dyn herald_core::ports::LiveRoutes>,
    follow_delay: StdDuration,
    log: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

impl herald_core::ports::LiveRoutes for RecordingRoutes {
    fn follow(
        &self,
        user_id: &str,
    ) -> futures::future::BoxFuture<'static, herald_core::Result<()>> {
        self.log.lock().push(format!("+{user_id}"));
        let (inner, delay, user) = (self.inner.clone(), self.follow_delay, user_id.to_owned());
        let log = self.log.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.follow(&user).await?;
            // Followed: from here on the user's events reach the node.
            log.lock().push(format!("={user}"));
            Ok(())
        })
    }

    fn unfollow(&self, user_id: &str) {
        self.log.lock().push(format!("-{user_id}"));
        self.inner.unfollow(user_id);
    }
}

#[async_trait::async_trait]
impl herald_core::ports::LiveHub for RecordingHub {
    async fn publish(&self, event: LiveEvent) -> herald_core::Result<()> {
        self.inner.publish(event).await
    }

    async fn subscribe(&self) -> herald_core::Result<herald_core::ports::LiveSubscription> {
        let s = self.inner.subscribe().await?;
        let received = self.received.clone();
        Ok(herald_core::ports::LiveSubscription {
            events: s
                .events
                .inspect(move |e| {
                    if let LiveEvent::Notifications { items } = e {
                        received
                            .lock()
                            .extend(items.iter().map(|n| n.user_id.clone()));
                    }
                })
                .boxed(),
            routes: std::sync::Arc::new(RecordingRoutes {
                inner: s.routes,
                follow_delay: self.follow_delay,
                log: self.log.clone(),
            }),
        })
    }

    async fn online(
        &self,
        user_ids: &[String],
    ) -> herald_core::Result<std::collections::HashSet<String>> {
        self.inner.online(user_ids).await
    }
}

type Log = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

async fn spawn_recording(follow_delay: StdDuration) -> (TestApp, Log, Log) {
    let log = Log::default();
    let received = Log::default();
    let (l, r) = (log.clone(), received.clone());
    let app = spawn_app_with_hub(test_config(), move |inner| {
        std::sync::Arc::new(RecordingHub {
            inner,
            follow_delay,
            log: l,
            received: r,
        })
    })
    .await;
    (app, log, received)
}

// ---------------------------------------------------------------------------------------------
// Routing per user

#[tokio::test]
async fn a_node_follows_a_user_while_one_of_their_sockets_is_open_and_receives_only_their_events() {
    let (app, log, received) = spawn_recording(StdDuration::ZERO).await;
    let mut a1 = app.connect("u1", "").await;
    let mut a2 = app.connect("u1", "").await;
    let mut b = app.connect("u2", "").await;
    app.wait_connections(3).await;
    // Each socket goes live once its user is followed; events before that are not its.
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let confirmed = log.lock().iter().filter(|l| l.starts_with('=')).count();
        if confirmed == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "follows: {:?}", log.lock());
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    deliver(
        &app.ctx,
        vec![
            notification("u1", "for-u1", ago(3)),
            notification("u3", "for-u3", ago(2)),
            notification("u2", "for-u2", ago(1)),
        ],
    )
    .await;
    assert_eq!(titles(&[next_frame(&mut a1).await]), ["for-u1"]);
    assert_eq!(titles(&[next_frame(&mut a2).await]), ["for-u1"]);
    assert_eq!(titles(&[next_frame(&mut b).await]), ["for-u2"]);
    // Nobody here has a socket of u3: the node never received u3's notification.
    let mut got = received.lock().clone();
    got.sort();
    assert_eq!(got, ["u1", "u2"]);

    a1.close(None).await.unwrap();
    app.wait_connections(2).await;
    assert!(
        !log.lock().contains(&"-u1".to_owned()),
        "u1 still has a socket: {:?}",
        log.lock()
    );
    a2.close(None).await.unwrap();
    app.wait_connections(1).await;
    let deadline = Instant::now() + FRAME_WAIT;
    while !log.lock().contains(&"-u1".to_owned()) {
        assert!(Instant::now() < deadline, "u1 unfollowed: {:?}", log.lock());
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    // Once unfollowed, u1's events no longer reach the node; u2's still do.
    received.lock().clear();
    deliver(
        &app.ctx,
        vec![
            notification("u1", "later-u1", ago(0)),
            notification("u2", "later-u2", ago(0)),
        ],
    )
    .await;
    assert_eq!(titles(&[next_frame(&mut b).await]), ["later-u2"]);
    assert_eq!(received.lock().clone(), ["u2"]);
    assert!(!log.lock().contains(&"-u2".to_owned()));
}

#[tokio::test]
async fn a_socket_replays_only_once_its_user_is_followed_so_a_row_written_meanwhile_is_not_lost() {
    // Following takes half a second here (a slow Redis): a row written and announced in that
    // time is missed by the subscription, so the replay must read the store after it.
    let (app, _log, _received) = spawn_recording(StdDuration::from_millis(500)).await;
    let old = notification("u1", "old", ago(10));
    deliver(&app.ctx, vec![old.clone()]).await;
    let since = app.inbox("u1").await["items"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = app.connect("u1", &format!("?since={since}")).await;
    deliver(&app.ctx, vec![notification("u1", "meanwhile", ago(5))]).await;
    assert_eq!(titles(&[next_frame(&mut ws).await]), ["meanwhile"]);
    assert_quiet(&mut ws).await;
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn a_personal_item_reaches_its_users_sockets_as_the_inbox_shows_it() {
    let app = spawn_app(test_config()).await;
    let mut u1 = app.connect("u1", "").await;
    // The token may come in the query too (browsers cannot set headers).
    let mut u2 = app
        .try_connect(None, &format!("?token={}", token(&app, "u2")))
        .await
        .expect("query token");

    // One fan-out batch: one row per user.
    deliver(
        &app.ctx,
        vec![
            notification("u1", "hello-u1", ago(1)),
            notification("u2", "hello-u2", ago(1)),
        ],
    )
    .await;

    let frame = next_frame(&mut u1).await;
    assert_eq!(frame["type"], "notification");
    let shown = app.inbox("u1").await;
    assert_eq!(
        frame["item"], shown["items"][0],
        "the frame carries the item as the inbox API shows it"
    );
    assert_eq!(frame["item"]["kind"], "personal");
    assert_eq!(frame["item"]["title"], "hello-u1");
    assert_eq!(frame["item"]["read"], false);
    assert!(frame["item"]["cursor"].is_string());

    let frame = next_frame(&mut u2).await;
    assert_eq!(frame["item"]["title"], "hello-u2");
    // Nobody gets someone else's item.
    assert_quiet(&mut u1).await;
    assert_quiet(&mut u2).await;
}

#[tokio::test]
async fn a_broadcast_reaches_the_sockets_of_matching_users_only() {
    let app = spawn_app(test_config()).await;
    app.add_user("gold", json!({"tier": "premium"})).await;
    app.add_user("tin", json!({"tier": "free"})).await;
    let mut gold = app.connect("gold", "").await;
    let mut tin = app.connect("tin", "").await;
    let mut anon = app.connect("not-in-directory", "").await;

    // For the premium segment only.
    let b = app
        .broadcast(
            "premium-news",
            ago(1),
            json!({"all": [{"attr": "tier", "eq": "premium"}]}),
        )
        .await;
    app.activate(&b).await;
    let frame = next_frame(&mut gold).await;
    assert_eq!(frame["type"], "notification");
    assert_eq!(frame["item"]["id"], b.id.to_string());
    assert_eq!(frame["item"]["kind"], "broadcast");
    assert_eq!(frame["item"]["title"], "premium-news");
    assert_eq!(frame["item"]["read"], false);
    assert_eq!(
        frame["item"],
        app.inbox("gold").await["items"][0],
        "as the inbox shows it"
    );
    assert_quiet(&mut tin).await;
    assert_quiet(&mut anon).await;

    // For everyone.
    let all = app.broadcast("for-all", ago(1), json!({"all": []})).await;
    app.activate(&all).await;
    for ws in [&mut gold, &mut tin, &mut anon] {
        let frame = next_frame(ws).await;
        assert_eq!(frame["item"]["title"], "for-all");
        assert_eq!(frame["item"]["kind"], "broadcast");
    }
}

#[tokio::test]
async fn two_devices_of_a_user_stay_in_sync() {
    let app = spawn_app(test_config()).await;
    let mut phone = app.connect("u1", "").await;
    let mut laptop = app.connect("u1", "").await;
    let mut other = app.connect("u2", "").await;
    deliver(
        &app.ctx,
        vec![
            notification("u1", "first", ago(2)),
            notification("u1x", "not-u1", ago(2)),
        ],
    )
    .await;
    deliver(&app.ctx, vec![notification("u1", "second", ago(1))]).await;
    let mut ids = Vec::new();
    for ws in [&mut phone, &mut laptop] {
        let a = next_frame(ws).await;
        let b = next_frame(ws).await;
        assert_eq!(titles(&[a.clone(), b.clone()]), ["first", "second"]);
        ids = vec![
            a["item"]["id"].as_str().unwrap().to_owned(),
            b["item"]["id"].as_str().unwrap().to_owned(),
        ];
    }

    // Read on one device: both see it (the one that acted too, which is harmless).
    let (status, body) = app
        .http(
            "u1",
            reqwest::Method::POST,
            &format!("/v1/inbox/{}/read", ids[0]),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(next_frame(ws).await, json!({"type": "read", "id": ids[0]}));
    }
    let (status, _) = app
        .http(
            "u1",
            reqwest::Method::POST,
            &format!("/v1/inbox/{}/dismiss", ids[1]),
        )
        .await;
    assert_eq!(status, 204);
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(
            next_frame(ws).await,
            json!({"type": "dismiss", "id": ids[1]})
        );
    }
    let (status, _) = app
        .http("u1", reqwest::Method::POST, "/v1/inbox/read_all")
        .await;
    assert_eq!(status, 200);
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(next_frame(ws).await, json!({"type": "read_all"}));
    }
    // Another user's sockets hear nothing of it.
    assert_quiet(&mut other).await;

    // A device that goes away leaves the other one working.
    drop(laptop);
    app.wait_connections(2).await;
    deliver(&app.ctx, vec![notification("u1", "third", ago(0))]).await;
    assert_eq!(next_frame(&mut phone).await["item"]["title"], "third");
}

#[tokio::test]
async fn bulk_state_changes_reach_every_device_of_the_user_as_marked_frames() {
    let app = spawn_app(test_config()).await;
    let mut phone = app.connect("u1", "").await;
    let mut laptop = app.connect("u1", "").await;
    let mut other = app.connect("u2", "").await;
    let rows = vec![
        notification("u1", "first", ago(3)),
        notification("u1", "second", ago(2)),
        notification("u1", "third", ago(1)),
    ];
    let ids: Vec<String> = rows.iter().map(|n| n.id.to_string()).collect();
    deliver(&app.ctx, rows).await;
    let mut cursors = Vec::new();
    for ws in [&mut phone, &mut laptop] {
        cursors.clear();
        for _ in 0..3 {
            let frame = next_frame(ws).await;
            assert_eq!(frame["item"]["seen"], false);
            assert_eq!(frame["item"]["archived"], false);
            cursors.push(frame["item"]["cursor"].as_str().unwrap().to_owned());
        }
    }

    let (status, body) = app
        .bulk("u1", json!({"action": "archive", "ids": [ids[0], ids[1]]}))
        .await;
    assert_eq!((status, body), (200, json!({"updated": 2})));
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(
            next_frame(ws).await,
            json!({"type": "marked", "action": "archive", "ids": [ids[0], ids[1]]})
        );
    }
    let (status, _) = app
        .bulk("u1", json!({"action": "seen", "before": cursors[2]}))
        .await;
    assert_eq!(status, 200);
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(
            next_frame(ws).await,
            json!({"type": "marked", "action": "seen", "before": cursors[2]})
        );
    }
    let (status, body) = app.bulk("u1", json!({"action": "read", "all": true})).await;
    assert_eq!((status, body["updated"].clone()), (200, json!(1)));
    for ws in [&mut phone, &mut laptop] {
        assert_eq!(
            next_frame(ws).await,
            json!({"type": "marked", "action": "read", "all": true})
        );
    }
    // Refused or naming nothing of the user's: nothing sent.
    let (status, _) = app.bulk("u1", json!({"action": "hide", "all": true})).await;
    assert_eq!(status, 422);
    let (status, body) = app
        .bulk("u2", json!({"action": "archive", "ids": [ids[2]]}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"updated": 0, "not_found": [ids[2]]}))
    );
    assert_quiet(&mut phone).await;
    assert_quiet(&mut other).await;
}

// ---------------------------------------------------------------------------------------------
// Resume

#[tokio::test]
async fn resuming_with_since_replays_then_goes_live_with_no_gap_and_no_duplicate() {
    let app = spawn_app(test_config()).await;
    // 1,200 old rows (several replay pages) with broadcasts among them.
    let base = ago(600);
    let mut rows = Vec::new();
    for i in 0..1200i64 {
        rows.push(notification(
            "u1",
            &format!("old-{i:04}"),
            base + Duration::seconds(i),
        ));
    }
    app.ctx.ports.inbox.write_batch(&rows).await.unwrap();
    // Before `since`: not replayed.
    app.broadcast(
        "b-before",
        base + Duration::milliseconds(99_500),
        json!({"all": []}),
    )
    .await;
    app.broadcast(
        "b-inside",
        base + Duration::milliseconds(700_500),
        json!({"all": []}),
    )
    .await;
    let dismissed = app
        .broadcast(
            "b-dismissed",
            base + Duration::milliseconds(800_500),
            json!({"all": []}),
        )
        .await;
    let (status, _) = app
        .http(
            "u1",
            reqwest::Method::POST,
            &format!("/v1/inbox/{}/dismiss", dismissed.id),
        )
        .await;
    assert_eq!(status, 204);
    // Someone else's rows are not replayed.
    deliver(&app.ctx, vec![notification("u2", "not-mine", ago(300))]).await;

    // The client has everything up to old-0199.
    let have = &rows[199];
    let since = herald_inbox::cursor::encode(&have.key());
    let mut expected: Vec<String> = (200..1200).map(|i| format!("old-{i:04}")).collect();
    expected.insert(700 - 200 + 1, "b-inside".to_owned());

    // A writer adds (and announces) newer rows before, during and after the replay.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let writer_ctx = app.ctx.clone();
    const WRITTEN: i64 = 150;
    let writer = tokio::spawn(async move {
        let mut started = Some(started_tx);
        for n in 0..WRITTEN {
            let row = notification("u1", &format!("new-{n:03}"), ago(30) + Duration::seconds(n));
            deliver(&writer_ctx, vec![row]).await;
            if n == 5 {
                let _ = started.take().unwrap().send(());
            }
            tokio::task::yield_now().await;
        }
    });
    started_rx.await.unwrap();
    let mut ws = app.connect("u1", &format!("?since={since}")).await;
    writer.await.unwrap();
    expected.extend((0..WRITTEN).map(|n| format!("new-{n:03}")));

    let mut got = Vec::new();
    while got.len() < expected.len() {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["type"], "notification", "{frame}");
        got.push(frame);
    }
    assert_eq!(titles(&got), expected, "every item once, oldest first");
    assert_quiet(&mut ws).await;
    // Resuming from the last item received gives nothing more, and live goes on.
    let last = got.last().unwrap()["item"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut again = app.connect("u1", &format!("?since={last}")).await;
    assert_quiet(&mut again).await;
    deliver(&app.ctx, vec![notification("u1", "later", ago(0))]).await;
    assert_eq!(next_frame(&mut again).await["item"]["title"], "later");
    assert_eq!(next_frame(&mut ws).await["item"]["title"], "later");
}

#[tokio::test]
async fn a_late_row_that_sorts_before_the_replayed_ones_still_comes_live() {
    let app = spawn_app(test_config()).await;
    let rows: Vec<Notification> = (0..5)
        .map(|i| notification("u1", &format!("r{i}"), ago(50 - 10 * i)))
        .collect();
    app.ctx.ports.inbox.write_batch(&rows).await.unwrap();
    let since = herald_inbox::cursor::encode(&rows[0].key());
    let mut ws = app.connect("u1", &format!("?since={since}")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_frame(&mut ws).await);
    }
    assert_eq!(titles(&got), ["r1", "r2", "r3", "r4"]);
    // A row of a campaign that started earlier (between r1 and r2) lands now: it was not
    // replayed, so it comes live even though it sorts before the last replayed item.
    deliver(&app.ctx, vec![notification("u1", "late", ago(35))]).await;
    assert_eq!(next_frame(&mut ws).await["item"]["title"], "late");
    // The same event published twice (the bus is at-least-once) is sent once.
    deliver(&app.ctx, vec![notification("u1", "late", ago(35))]).await;
    deliver(&app.ctx, vec![notification("u1", "after", ago(0))]).await;
    assert_eq!(next_frame(&mut ws).await["item"]["title"], "after");
}

#[tokio::test]
async fn a_bad_since_is_refused_before_the_upgrade() {
    let app = spawn_app(test_config()).await;
    let (status, body) = refused(
        app.try_connect(Some(&token(&app, "u1")), "?since=not-a-cursor")
            .await,
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid");
    assert_eq!(app.feed.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// Robustness

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_too_slow() {
    let app = spawn_app(LiveConfig {
        send_queue: 4,
        ..test_config()
    })
    .await;
    let slow_before = app.metric("herald_live_slow_consumers_closed_total").await;
    let mut slow = app.connect("slow", "").await;
    let mut fine = app.connect("fine", "").await;
    app.wait_connections(2).await;

    // Far more than the queue and the socket buffers hold: 400 frames of 64 KiB.
    let big = "x".repeat(64 * 1024);
    for i in 0..400 {
        let mut row = notification("slow", &format!("big-{i}"), ago(10));
        row.body = big.clone();
        // Announced only: the hub does not read the store.
        app.ctx
            .ports
            .live
            .publish(LiveEvent::Notifications { items: vec![row] })
            .await
            .unwrap();
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
        if app.feed.connections() == 1 {
            break;
        }
    }
    // The server gives up on the slow client without waiting for it...
    app.wait_connections(1).await;
    assert!(app.metric("herald_live_slow_consumers_closed_total").await >= slow_before + 1.0);
    // ...and when the client finally reads, what was sent ends with the close (when the
    // close frame fit in the socket's buffers) or with the end of the stream.
    if let Some((code, reason)) = until_closed(&mut slow, StdDuration::from_secs(30)).await {
        assert_eq!(code, CloseCode::Again, "{reason}");
        assert_eq!(reason, "too slow; resume with since");
    }
    // Other connections are not affected.
    deliver(&app.ctx, vec![notification("fine", "still-here", ago(0))]).await;
    assert_eq!(next_frame(&mut fine).await["item"]["title"], "still-here");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_and_a_live_one_is_pinged() {
    let app = spawn_app(LiveConfig {
        ping_secs: 1,
        idle_timeout_secs: 2,
        ..test_config()
    })
    .await;
    // Never polled: it neither reads the pings nor answers them.
    let _silent = app.connect("silent", "").await;
    let mut alive = app.connect("alive", "").await;
    let pings = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = Instant::now() + StdDuration::from_secs(4);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, alive.next()).await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
        }
        (pings, alive)
    });
    app.wait_connections(2).await;
    let started = Instant::now();
    app.wait_connections(1).await;
    assert!(started.elapsed() < StdDuration::from_secs(5));
    let (pings, mut alive) = pings.await.unwrap();
    assert!(pings >= 2, "pinged every second: {pings}");
    // The client that answered pings is still connected.
    assert_eq!(app.feed.connections(), 1);
    deliver(&app.ctx, vec![notification("alive", "hi", ago(0))]).await;
    assert_eq!(next_frame(&mut alive).await["item"]["title"], "hi");
}

#[tokio::test]
async fn a_missing_or_forged_token_is_refused_before_the_upgrade() {
    let app = spawn_app(test_config()).await;
    let (status, body) = refused(app.try_connect(None, "").await);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let now = app.clock.now();
    let forged =
        herald_core::token::mint(b"not-the-server-secret", "u1", now, now + Duration::days(1));
    let (status, body) = refused(app.try_connect(Some(&forged), "").await);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = refused(app.try_connect(None, &format!("?token={forged}")).await);
    assert_eq!(status, 401);
    let (status, _) = refused(app.try_connect(Some("garbage"), "").await);
    assert_eq!(status, 401);
    assert_eq!(app.feed.connections(), 0);

    // Not a WebSocket request at all: an error body, no upgrade.
    let (status, body) = app.http("u1", reqwest::Method::GET, "/v1/inbox/live").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["code"].is_string());
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_with_503() {
    let app = spawn_app(LiveConfig {
        max_connections: 2,
        ..test_config()
    })
    .await;
    let mut first = app.connect("u1", "").await;
    let _second = app.connect("u2", "").await;
    let (status, body) = refused(app.try_connect(Some(&token(&app, "u3")), "").await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(app.feed.connections(), 2);

    // A place freed is a place taken again.
    first.close(None).await.unwrap();
    app.wait_connections(1).await;
    let _third = app.connect("u3", "").await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let app = spawn_app(test_config()).await;
    let mut a = app.connect("u1", "").await;
    let mut b = app.connect("u2", "").await;
    app.wait_connections(2).await;
    app.shutdown.cancel();
    for ws in [&mut a, &mut b] {
        let (code, reason) = until_closed(ws, FRAME_WAIT).await.expect("a close frame");
        assert_eq!(code, CloseCode::Away);
        assert_eq!(reason, "going away");
    }
    app.wait_connections(0).await;
    assert!(app.feed.drained(StdDuration::from_secs(1)).await);
}

#[tokio::test]
async fn a_client_may_send_and_close_on_its_own() {
    let app = spawn_app(test_config()).await;
    let mut ws = app.connect("u1", "").await;
    ws.send(Message::text("hello")).await.unwrap();
    ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], [1, 2, 3]);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    // The server answers the close: the handshake completes and the stream ends.
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(None) | Ok(Some(Err(WsError::ConnectionClosed))) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected the close handshake to complete, got {other:?}"),
        }
    }
    app.wait_connections(0).await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_answered_with_close_code_1009() {
    let app = spawn_app(test_config()).await;
    let mut ws = app.connect("u1", "").await;
    let big = "x".repeat(herald_inbox::live::MAX_CLIENT_MESSAGE + 1);
    ws.send(Message::text(big)).await.unwrap();
    let (code, reason) = until_closed(&mut ws, FRAME_WAIT)
        .await
        .expect("a close frame saying why");
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains("16384"), "{reason}");
    app.wait_connections(0).await;
}
