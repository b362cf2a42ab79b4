//! Live events between inbox nodes: each node follows the users with a socket on it, so a
//! notification written by the fan-out process reaches its user's devices on either node, a
//! read on one node reaches the user's device on the other, a broadcast activation reaches
//! every node, and a node never receives the events of users connected elsewhere.

use crate::live_client::{self, assert_quiet, metric, next_frame, Ws, WAIT};
use crate::roles::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) fn token(user: &str) -> String {
    live_client::token(SECRET, user)
}

/// A live socket of `user` on the node at `base` (`query`: `""` or `"?since=<cursor>"`).
pub(crate) async fn connect(base: &str, user: &str, query: &str) -> Ws {
    live_client::connect(SECRET, base, user, query).await
}

pub(crate) async fn eventually_metric(base: &str, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(base, name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} on {base}: {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `url` with `prefix=<prefix>` added to its query.
fn prefixed(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

/// The engines every role of the test shares: Redis for the live hub (and the preference
/// cache, throttle and broadcast cache), MySQL for the stores and JetStream for the bus when
/// their variables are set.
async fn engines(redis: &str) -> Vec<(String, String)> {
    // A prefix per test, not per process: `cargo test` runs the cases of this binary side by
    // side in one process, and cases sharing a bus group would take each other's batches.
    let prefix = format!("xnode{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let redis = prefixed(redis, &prefix);
    let mut env: Vec<(String, String)> =
        ["LIVE", "PREFERENCE_CACHE", "THROTTLE", "BROADCAST_CACHE"]
            .iter()
            .map(|port| (format!("HERALD_BACKENDS__{port}"), redis.clone()))
            .collect();
    if let Some(mysql) = crate::mysql_support::fresh_mysql_database("herald_xnode").await {
        for port in [
            "DIRECTORY",
            "CAMPAIGNS",
            "INBOX",
            "BROADCASTS",
            "DELIVERIES",
            "DELAYS",
        ] {
            env.push((format!("HERALD_BACKENDS__{port}"), mysql.clone()));
        }
    }
    if let Ok(nats) = std::env::var("HERALD_TEST_NATS_URL") {
        env.push(("HERALD_BACKENDS__BUS".into(), prefixed(&nats, &prefix)));
    }
    env
}

/// What the processes of one test share: the engines, a data directory and a fake FCM.
pub(crate) struct Deployment {
    env: Vec<(String, String)>,
    pub(crate) fcm: herald_push::fakes::FakeFcm,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// The engines of [`engines`] plus `extra` settings; `None` (the test is skipped) without
    /// `HERALD_TEST_REDIS_URL`.
    pub(crate) async fn new(extra: &[(&str, &str)]) -> Option<Deployment> {
        let Ok(redis) = std::env::var("HERALD_TEST_REDIS_URL") else {
            eprintln!("skipped: set HERALD_TEST_REDIS_URL");
            return None;
        };
        let mut env = engines(&redis).await;
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Some(Self::with_env(env).await)
    }

    /// A deployment on the embedded engines of its data directory (for `herald serve`).
    pub(crate) async fn embedded() -> Deployment {
        Self::with_env(Vec::new()).await
    }

    async fn with_env(env: Vec<(String, String)>) -> Deployment {
        let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        fcm.write_credentials(dir.path()).unwrap();
        Deployment { env, fcm, dir }
    }

    /// `herald <role>` on this deployment, once it answers.
    pub(crate) async fn start(&self, role: &str) -> Role {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = Role::start(role, self.dir.path(), &self.fcm.endpoint(), &env);
        r.wait_ready().await;
        r
    }
}

/// An admin client of the `api` process.
pub(crate) fn admin(api: &Role) -> Api {
    Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn live_events_cross_inbox_nodes_per_user_and_activations_reach_every_node() {
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let a = d.start("inbox").await;
    let b = d.start("inbox").await;
    let admin = admin(&api);
    for user in ["alice", "bob"] {
        let (s, body) = admin
            .call(
                Method::PUT,
                &format!("/v1/users/{user}"),
                Some(json!({"attributes": {}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }
    let campaign = |audience: Value, title: &str| {
        let admin = &admin;
        let body = json!({"audience": audience, "content": {"title": title, "body": "b"},
                          "channels": ["in_app"]});
        async move {
            let (s, body) = admin.call(Method::POST, "/v1/campaigns", Some(body)).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        }
    };

    // Alice has a device on each node, Bob one on node B.
    let mut alice_a = connect(&a.base, "alice", "").await;
    let mut alice_b = connect(&b.base, "alice", "").await;
    let mut bob_b = connect(&b.base, "bob", "").await;
    eventually_metric(&a.base, "herald_live_users_followed", 1.0).await;
    eventually_metric(&b.base, "herald_live_users_followed", 2.0).await;

    // Written by the fan-out process, it reaches both of Alice's devices.
    campaign(json!({"user": "alice"}), "for alice").await;
    let mut id = String::new();
    for ws in [&mut alice_a, &mut alice_b] {
        let f = next_frame(ws).await;
        assert_eq!(f["type"], "notification", "{f}");
        assert_eq!(f["item"]["title"], "for alice", "{f}");
        id = f["item"]["id"].as_str().unwrap().to_owned();
    }

    // Read through node A: the device on node B hears of it.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/inbox/{id}/read", a.base))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for ws in [&mut alice_a, &mut alice_b] {
        assert_eq!(next_frame(ws).await, json!({"type": "read", "id": id}));
    }

    // Bob's notifications go to node B only: node A's subscription receives none of them.
    let received_a = metric(&a.base, "herald_live_events_received_total").await;
    for n in 0..5 {
        campaign(json!({"user": "bob"}), &format!("for bob {n}")).await;
    }
    let mut titles: Vec<String> = Vec::new();
    for _ in 0..5 {
        let f = next_frame(&mut bob_b).await;
        titles.push(f["item"]["title"].as_str().unwrap().to_owned());
    }
    titles.sort();
    assert_eq!(
        titles,
        (0..5).map(|n| format!("for bob {n}")).collect::<Vec<_>>()
    );
    assert_quiet(&mut alice_a).await;
    assert_quiet(&mut alice_b).await;
    assert_eq!(
        metric(&a.base, "herald_live_events_received_total").await,
        received_a,
        "node A received events of a user connected to node B only"
    );

    // A broadcast is activated once and reaches every socket on every node, once.
    campaign(json!({"all": true}), "to everyone").await;
    for ws in [&mut alice_a, &mut alice_b, &mut bob_b] {
        let f = next_frame(ws).await;
        assert_eq!(f["item"]["kind"], "broadcast", "{f}");
        assert_eq!(f["item"]["title"], "to everyone", "{f}");
        assert_quiet(ws).await;
    }

    // When Alice's device on node A goes, node A stops following her; Bob's node is unmoved.
    alice_a.close(None).await.unwrap();
    eventually_metric(&a.base, "herald_live_users_followed", 0.0).await;
    assert_eq!(metric(&b.base, "herald_live_users_followed").await, 2.0);
}

/// Creates a campaign through the admin API and waits for it to complete; returns its id.
pub(crate) async fn create_completed(api: &Api, body: serde_json::Value) -> String {
    let (s, created) = api
        .call(reqwest::Method::POST, "/v1/campaigns", Some(body))
        .await;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    completed(api, &id).await;
    id
}

/// The next inbox item on a socket.
pub(crate) async fn next_item(ws: &mut crate::live_client::Ws) -> serde_json::Value {
    let f = crate::live_client::next_frame(ws).await;
    assert_eq!(f["type"], "notification", "{f}");
    f["item"].clone()
}

/// `GET /v1/inbox{query}` of `user` on `node`.
pub(crate) async fn inbox_of(node: &str, user: &str, query: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(format!("{node}/v1/inbox{query}"))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    resp.json().await.unwrap()
}

/// The campaign's push counters, once `done` holds for them.
pub(crate) async fn push_counts(
    api: &Api,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + crate::live_client::WAIT;
    loop {
        let c = api.campaign(id).await;
        let push = c["deliveries"]["push"].clone();
        if done(&push) {
            return push;
        }
        assert!(tokio::time::Instant::now() < deadline, "push counters: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a campaign until it completes; returns it.
pub(crate) async fn completed(admin: &Api, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = admin.campaign(id).await;
        if c["status"] == "completed" {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "not completed: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_preference_written_through_the_api_reaches_the_next_batch_of_every_fanout_node() {
    // Small batches, so both fan-out nodes take some of each campaign.
    let Some(d) = Deployment::new(&[("HERALD_FANOUT__BATCH_SIZE", "10")]).await else {
        return;
    };
    let api = d.start("api").await;
    let fanouts = [d.start("fanout").await, d.start("fanout").await];
    let inbox = d.start("inbox").await;
    let admin = admin(&api);
    let users: Vec<String> = (0..300).map(|i| format!("p{i:03}")).collect();
    let ndjson: String = users
        .iter()
        .map(|u| format!("{{\"id\": \"{u}\", \"attributes\": {{}}}}\n"))
        .collect();
    let resp = admin
        .client
        .post(format!("{}/v1/users/import", api.base))
        .bearer_auth(crate::ADMIN_KEY)
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let campaign = |title: &str| {
        let admin = &admin;
        let body = json!({"audience": {"users": users}, "content": {"title": title, "body": "b"},
                          "channels": ["in_app"]});
        async move {
            let (s, body) = admin.call(Method::POST, "/v1/campaigns", Some(body)).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{body}");
            body["id"].as_str().unwrap().to_owned()
        }
    };

    // The first campaign reads (and caches) everyone's preferences on both nodes.
    let first = campaign("first").await;
    completed(&admin, &first).await;
    // Every tenth user turns the inbox off, through the API process.
    let opted: Vec<&String> = users.iter().step_by(10).collect();
    for u in &opted {
        let (s, body) = admin
            .call(
                Method::PUT,
                &format!("/v1/users/{u}/preferences"),
                Some(json!({"channels": {"in_app": false}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }
    let before: Vec<f64> = futures::future::join_all(
        fanouts
            .iter()
            .map(|f| metric(&f.base, "herald_fanout_users_total")),
    )
    .await;
    let second = campaign("second").await;
    let c = completed(&admin, &second).await;
    assert_eq!(c["progress"]["skipped_opted_out"], opted.len(), "{c}");
    assert_eq!(
        c["progress"]["notifications_written"],
        users.len() - opted.len(),
        "{c}"
    );
    // Both nodes cut the second campaign: the change reached each of them.
    for (f, before) in fanouts.iter().zip(before) {
        let after = metric(&f.base, "herald_fanout_users_total").await;
        assert!(after > before, "fan-out node {} took no batch", f.base);
    }
    // The inboxes say the same: the opted-out users have the first campaign only.
    for (i, u) in users.iter().enumerate() {
        let page: Value = reqwest::Client::new()
            .get(format!("{}/v1/inbox?limit=10", inbox.base))
            .bearer_auth(token(u))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let titles: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap())
            .collect();
        let want: &[&str] = if i % 10 == 0 {
            &["first"]
        } else {
            &["second", "first"]
        };
        assert_eq!(titles, want, "{u}");
    }
}

#[tokio::test]
async fn a_client_of_a_killed_inbox_node_resumes_on_the_other_with_no_gap_and_no_duplicate() {
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let mut a = d.start("inbox").await;
    let b = d.start("inbox").await;
    let admin = admin(&api);
    let (s, body) = admin
        .call(
            Method::PUT,
            "/v1/users/carol",
            Some(json!({"attributes": {}})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let send = |n: u32| {
        let admin = &admin;
        let body = json!({"audience": {"user": "carol"},
                          "content": {"title": format!("n{n}"), "body": "b"},
                          "channels": ["in_app"]});
        async move {
            let (s, body) = admin.call(Method::POST, "/v1/campaigns", Some(body)).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{body}");
            completed(admin, body["id"].as_str().unwrap()).await;
        }
    };

    let mut ws = connect(&a.base, "carol", "").await;
    eventually_metric(&a.base, "herald_live_users_followed", 1.0).await;
    let mut cursor = String::new();
    for n in 1..=3 {
        send(n).await;
        let f = next_frame(&mut ws).await;
        assert_eq!(f["item"]["title"], format!("n{n}"), "{f}");
        cursor = f["item"]["cursor"].as_str().unwrap().to_owned();
    }
    // Node A dies; two more are written while Carol has no socket anywhere.
    a.kill9();
    for n in 4..=5 {
        send(n).await;
    }
    // She reconnects to node B from the last item she has: the two are replayed, then the
    // next comes live, each once.
    let mut ws = connect(&b.base, "carol", &format!("?since={cursor}")).await;
    let mut titles = Vec::new();
    for _ in 0..2 {
        titles.push(next_frame(&mut ws).await["item"]["title"].clone());
    }
    assert_eq!(titles, [json!("n4"), json!("n5")]);
    send(6).await;
    assert_eq!(next_frame(&mut ws).await["item"]["title"], "n6");
    assert_quiet(&mut ws).await;
}

#[tokio::test]
async fn two_push_nodes_share_one_provider_rate_instead_of_doubling_it() {
    const DEVICES: u64 = 300;
    const RATE: u64 = 100;
    let rate = RATE.to_string();
    // 100 sends a second for FCM, in groups of 10 (so the burst is 10 sends), and a campaign
    // cut into batches of 10 users so both push nodes take some.
    let Some(d) = Deployment::new(&[
        ("HERALD_PUSH__FCM__RATE_PER_S", &rate),
        ("HERALD_PUSH__FCM__BATCH_SIZE", "10"),
        ("HERALD_FANOUT__BATCH_SIZE", "10"),
    ])
    .await
    else {
        return;
    };
    let api = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let pushes = [d.start("push").await, d.start("push").await];
    let admin = admin(&api);
    let users: Vec<String> = (0..DEVICES).map(|i| format!("d{i:03}")).collect();
    for u in &users {
        admin.user_with_device(u, &format!("tok-{u}")).await;
    }
    let started = tokio::time::Instant::now();
    let (s, body) = admin
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"audience": {"users": users},
                        "content": {"title": "t", "body": "b"}, "channels": ["push"]})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let deadline = started + Duration::from_secs(60);
    while d.fcm.sent() < DEVICES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {DEVICES} sent",
            d.fcm.sent()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // At one shared rate the sends take (300 - burst) / 100 s ≈ 2.9 s at least; two nodes
    // that each applied the whole rate would be done in about half that.
    let floor = Duration::from_millis((DEVICES - 10) * 1000 / RATE * 8 / 10);
    assert!(
        elapsed >= floor,
        "{DEVICES} sends at {RATE}/s shared took {elapsed:?} (< {floor:?})"
    );
    for p in &pushes {
        let sent = metric(&p.base, "herald_push_deliveries_total").await;
        assert!(sent > 0.0, "push node {} sent nothing", p.base);
    }
    assert_eq!(d.fcm.sent(), DEVICES, "each device once");
}

#[tokio::test]
async fn pushes_too_large_for_one_bus_message_go_as_several_and_every_device_gets_one_send() {
    const USERS: u64 = 200;
    // The batch's 200 recipients of a 12 KB body are about 2.4 MB as one channel message: over
    // the 1 MiB that JetStream and Kafka take by default.
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let _push = d.start("push").await;
    let admin = admin(&api);
    let users: Vec<String> = (0..USERS).map(|i| format!("big{i:03}")).collect();
    for u in &users {
        admin.user_with_device(u, &format!("tok-{u}")).await;
    }
    let body = "x".repeat(12_000);
    let (s, created) = admin
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"audience": {"users": users},
                        "content": {"title": "t", "body": body}, "channels": ["push"]})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // The campaign's state without its 12 KB body, should it not get there.
    let deadline = tokio::time::Instant::now() + WAIT;
    let push = loop {
        let c = admin.campaign(&id).await;
        let push = c["deliveries"]["push"].clone();
        if push["sent"].as_u64().unwrap_or(0) + push["failed"].as_u64().unwrap_or(0) >= USERS {
            break push;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {} {}",
            c["status"],
            c["progress"],
            c["deliveries"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(push["sent"], USERS, "{push}");
    // Nothing more arrives: no piece was sent twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(d.fcm.sent(), USERS);
    for u in &users {
        assert_eq!(d.fcm.requests_for(&format!("tok-{u}")), 1, "{u}");
    }
    let last = d.fcm.last_message("tok-big000").expect("sent");
    assert_eq!(
        last["notification"]["body"].as_str().map(str::len),
        Some(12_000)
    );
}
