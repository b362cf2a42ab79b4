//! Faults injected into a running Herald: the provider in a storm, the disk full mid fan-out
//! and mid import, roles killed (SIGKILL) or stopped (SIGTERM) mid-work. After each, nothing
//! is lost and nothing doubled: the campaign completes, every user has exactly one row, and
//! every send is counted sent or failed (dead letters count as failed).
//!
//! The disk cases mount a small tmpfs, which needs root: they run when `HERALD_TEST_FAULTS=1`
//! (as `.ci/run` sets it, where a mount that fails fails the run) and are skipped otherwise.

use crate::harness::*;
use crate::roles::*;
use herald_push::fakes::Storm;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn a_provider_storm_of_503s_429s_and_timeouts_ends_with_every_push_sent_once_or_failed() {
    let app = spawn(Options {
        configure: Box::new(|c| {
            // Enough attempts, backing off to at most 3 s, to outlast a minute of storm.
            c.push.max_attempts = 40;
            c.push.backoff_base_ms = 100;
            c.push.backoff_max_ms = 3_000;
            c.push.fcm.limits.timeout_ms = 300;
        }),
        ..Options::default()
    })
    .await;
    let users: Vec<String> = (0..60).map(|i| format!("s{i:02}")).collect();
    for u in &users {
        app.ok(
            Method::PUT,
            &format!("/v1/users/{u}"),
            json!({"attributes": {}}),
        )
        .await;
        app.ok(
            Method::POST,
            &format!("/v1/users/{u}/devices"),
            json!({"platform": "fcm", "token": format!("tok-{u}")}),
        )
        .await;
    }
    // A minute of storm, from before the campaign: 20 s of 503s, 20 s of 429s, then 20 s of
    // requests that never get an answer.
    app.fcm.set_storm(Some(Storm::Unavailable));
    let id = app
        .campaign(
            json!({"audience": {"users": users}, "content": {"title": "t", "body": "b"},
                         "channels": ["push"], "priority": "high"}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    app.fcm.set_storm(Some(Storm::Quota));
    tokio::time::sleep(Duration::from_secs(20)).await;
    app.fcm.set_storm(Some(Storm::Hang));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(app.fcm.sent(), 0, "nothing got through the storm");
    app.fcm.set_storm(None);

    eventually("every push settled", Duration::from_secs(60), || async {
        let (queued, sent, failed) = app.deliveries(&id, "push").await;
        queued == 60 && sent + failed == 60
    })
    .await;
    let (_, sent, failed) = app.deliveries(&id, "push").await;
    let dead: u64 = {
        let (_, letters) = app
            .call(
                Method::GET,
                "/v1/dead-letters?channel=push&limit=1000",
                None,
            )
            .await;
        letters["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sends"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        failed, dead,
        "what failed is in the dead-letter queue, to replay"
    );
    // With attempts enough to outlast the storm, nothing needed the dead-letter queue.
    assert_eq!((sent, failed), (60, 0));
    assert_eq!(sent, app.fcm.sent(), "counted as the provider saw it");
    for u in &users {
        assert!(
            app.fcm.requests_for(&format!("tok-{u}")) <= 1,
            "{u}: at most one delivery"
        );
    }
    let ready = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "a provider storm is no fault of Herald's"
    );
}

// ---------------------------------------------------------------------------------------------
// Processes: the real binary, roles run apart on one data directory (tests/support/roles.rs).

// Two worker threads: `Role::stop` waits for the process on the test's thread, and the fake
// FCM must keep answering meanwhile. On one thread it could not, so a send in flight at the
// stop stayed unanswered past the gateway's shutdown grace and was sent again after the
// restart (501 requests for 500 devices): the fake's doing, not the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_killed_then_stopped_and_push_stopped_mid_work_lose_and_double_nothing() {
    let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    fcm.write_credentials(data).unwrap();
    let mut api = Role::start("api", data, &fcm.endpoint(), &[]);
    api.wait_ready().await;
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    // 20,000 users, 500 of them with a device.
    let mut ndjson = String::new();
    for i in 0..20_000 {
        ndjson.push_str(&format!(
            "{{\"id\": \"k{i:05}\", \"attributes\": {{\"cohort\": \"k\"}}}}\n"
        ));
    }
    let resp = client
        .client
        .post(format!("{}/v1/users/import", api.base))
        .bearer_auth(ADMIN_KEY)
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for i in 0..500 {
        let (s, b) = client
            .call(
                Method::POST,
                &format!("/v1/users/k{:05}/devices", i * 40),
                Some(json!({"platform": "fcm", "token": format!("tok-{i}")})),
            )
            .await;
        assert!(s.is_success(), "{b}");
    }
    client
        .call(
            Method::PUT,
            "/v1/segments/k",
            Some(json!({"filter": {"attr": "cohort", "eq": "k"}})),
        )
        .await;

    let slow = [
        ("HERALD_THROTTLE__USERS_PER_S", "4000"),
        ("HERALD_FANOUT__BATCH_SIZE", "500"),
    ];
    let mut fanout = Role::start("fanout", data, &fcm.endpoint(), &slow);
    let mut push = Role::start("push", data, &fcm.endpoint(), &[]);
    fanout.wait_ready().await;
    push.wait_ready().await;
    let (s, created) = client
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"audience": {"segment": "k"}, "content": {"title": "t", "body": "b"},
                        "channels": ["in_app", "push"], "priority": "high"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // A quarter in: the fan-out process dies (SIGKILL) and the push gateway is stopped (SIGTERM).
    eventually("a quarter fanned out", Duration::from_secs(60), || async {
        client.campaign(&id).await["progress"]["batches_done"]
            .as_u64()
            .unwrap_or(0)
            >= 10
    })
    .await;
    fanout.kill9();
    push.stop();
    let at_fault = client.campaign(&id).await;
    assert_ne!(
        at_fault["status"], "completed",
        "faulted mid-campaign: {at_fault}"
    );

    // Both come back; the new fan-out process takes the campaign over once the dead one's
    // lease runs out, and the gateway delivers what waited on the bus.
    let mut fanout = Role::start("fanout", data, &fcm.endpoint(), &slow);
    let push = Role::start("push", data, &fcm.endpoint(), &[]);
    fanout.wait_ready().await;
    push.wait_ready().await;
    // Half-way, the new fan-out process is stopped (SIGTERM: it checkpoints, hands the
    // campaign back and exits cleanly) and a third one finishes the campaign.
    eventually("half fanned out", Duration::from_secs(90), || async {
        client.campaign(&id).await["progress"]["batches_done"]
            .as_u64()
            .unwrap_or(0)
            >= 20
    })
    .await;
    fanout.stop();
    let fanout = Role::start("fanout", data, &fcm.endpoint(), &slow);
    fanout.wait_ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let done = loop {
        let c = client.campaign(&id).await;
        if c["status"] == "completed" {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "not completed: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["progress"]["notifications_written"], 20_000, "{done}");
    assert_eq!(done["progress"]["batches_done"], 40, "{done}");
    assert_eq!(
        sqlite_inbox_rows(data, &id).await,
        (20_000, 20_000),
        "one row per user"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = client.campaign(&id).await["deliveries"]["push"].clone();
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        // Every recipient is queued; the 19,500 without a device count failed ("no
        // registered device"), the 500 devices sent.
        if n("queued") == 20_000 && n("sent") + n("failed") == 20_000 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = std::fs::read_dir(data)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| {
                    format!(
                        "{}:\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "pushes not settled: {d}, fake FCM sent {}\n{}",
                fcm.sent(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = client.campaign(&id).await["deliveries"]["push"].clone();
    assert_eq!(d["sent"], 500, "{d}");
    assert_eq!(d["failed"], 19_500, "{d}");
    assert_eq!(fcm.sent(), 500, "each device exactly once");
    for i in 0..500 {
        assert_eq!(fcm.requests_for(&format!("tok-{i}")), 1, "tok-{i}");
    }
    drop((fanout, push));
    api.stop();
}

// ---------------------------------------------------------------------------------------------
// The disk: full mid fan-out, full mid import.

use crate::small_disk::SmallDisk;

/// A Herald whose data directory is on a small tmpfs; `None` when the disk cases are skipped.
async fn on_small_disk(throttle: u32) -> Option<(App, SmallDisk)> {
    let disk = SmallDisk::mount("24m", env!("CARGO_TARGET_TMPDIR"))?;
    let data = disk.dir.clone();
    let app = spawn(Options {
        configure: Box::new(move |c| {
            c.data_dir = data;
            c.fanout.batch_size = Some(500);
            c.throttle.users_per_s = throttle;
            c.throttle.large_users_per_s = throttle;
        }),
        ..Options::default()
    })
    .await;
    Some((app, disk))
}

/// A 20,000-user in-app campaign that meets a fault a little way in: `/readyz` must turn red
/// while the fault holds, and once `heal` has run the campaign must complete with exactly one
/// row per user and `/readyz` turn green again.
async fn fault_mid_fanout(app: &App, inbox_dir: &Path, fault: impl FnOnce(), heal: impl FnOnce()) {
    seed_cohort(app, "d", 20_000).await;
    let id = app
        .campaign(
            json!({"audience": {"segment": "d"}, "content": {"title": "t", "body": "b"},
                         "channels": ["in_app"]}),
        )
        .await;
    eventually("under way", Duration::from_secs(30), || async {
        let c = app.get_campaign(&id).await;
        c["progress"]["batches_done"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    fault();
    let ready = || async {
        let resp = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
        resp.status()
    };
    eventually(
        "readyz red while the fault holds",
        Duration::from_secs(60),
        || async { ready().await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    heal();
    // What `/readyz` says while the campaign finishes, in the output of a failed run.
    let base = app.base.clone();
    let _report = herald_core::worker::AbortOnDrop::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
                eprintln!(
                    "after the fault: /readyz {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
        }
    });
    let done = app.wait_completed(&id, Duration::from_secs(180)).await;
    assert_eq!(done["progress"]["notifications_written"], 20_000, "{done}");
    assert_eq!(done["progress"]["failed_batches"], 0, "{done}");
    assert_eq!(sqlite_inbox_rows(inbox_dir, &id).await, (20_000, 20_000));
    eventually("readyz green again", Duration::from_secs(60), || async {
        ready().await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_disk_that_fills_mid_fanout_turns_readyz_red_and_the_campaign_completes_once_there_is_room(
) {
    let Some((app, disk)) = on_small_disk(5_000).await else {
        return;
    };
    let filler = std::cell::RefCell::new(None);
    fault_mid_fanout(
        &app,
        &disk.dir,
        || *filler.borrow_mut() = Some(disk.fill(0)),
        || std::fs::remove_file(filler.borrow_mut().take().unwrap()).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn an_import_that_fills_the_disk_says_what_it_wrote_and_the_same_file_imports_once_there_is_room(
) {
    let Some((app, disk)) = on_small_disk(0).await else {
        return;
    };
    let mut ndjson = String::new();
    for i in 0..40_000 {
        ndjson.push_str(&format!(
            "{{\"id\": \"i{i:05}\", \"attributes\": {{\"bio\": \"{}\"}}}}\n",
            "x".repeat(300)
        ));
    }
    let filler = disk.fill(2 * 1024 * 1024);
    let import = || async {
        app.client
            .post(format!("{}/v1/users/import", app.base))
            .bearer_auth(ADMIN_KEY)
            .body(ndjson.clone())
            .send()
            .await
            .unwrap()
    };
    let resp = import().await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("the import stopped after writing the first")
            && msg.contains("of 40000 users"),
        "{msg}"
    );
    std::fs::remove_file(filler).unwrap();
    let resp = import().await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["imported"], 40_000);
    let all = herald_core::filter::Filter::match_all();
    assert_eq!(
        app.ctx
            .ports
            .directory
            .count_users(&all, chrono::Utc::now())
            .await
            .unwrap(),
        40_000
    );
}

/// A store that stops taking writes mid-run, injected at the inbox port: every write fails as
/// `attempt to write a readonly database` would (the real file made read-only is the next case).
#[tokio::test]
async fn an_inbox_store_that_refuses_writes_mid_fanout_turns_readyz_red_and_the_campaign_completes_once_it_takes_them(
) {
    let (app, inbox) = spawn_faulty_inbox(|c| {
        c.fanout.batch_size = Some(500);
        c.throttle.users_per_s = 5_000;
        c.throttle.large_users_per_s = 5_000;
        c.fanout.max_batch_attempts = 1_000;
    })
    .await;
    let refuse = |on: bool| {
        inbox
            .fail_on_write
            .store(on, std::sync::atomic::Ordering::SeqCst)
    };
    fault_mid_fanout(&app, app.dir.path(), || refuse(true), || refuse(false)).await;
}

/// Files made immutable (`chattr +i`): writes to them fail even for root, as they do on a
/// file made read-only under a running process. (A file system cannot be remounted read-only
/// while SQLite holds files open for writing: the kernel answers EBUSY.) The `-shm` file is
/// left alone: SQLite maps it into memory, and a page fault on an immutable mapping is a
/// SIGBUS, not an error. Cleared on drop, so a failed test leaves nothing undeletable.
struct ReadOnlyFiles(Vec<PathBuf>);

impl ReadOnlyFiles {
    fn set(paths: &[PathBuf]) -> ReadOnlyFiles {
        let status = Command::new("chattr")
            .arg("+i")
            .args(paths)
            .status()
            .expect("run chattr");
        assert!(
            status.success(),
            "chattr +i failed (needs root and a file system with attributes, such as ext4)"
        );
        ReadOnlyFiles(paths.to_vec())
    }
}

impl Drop for ReadOnlyFiles {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

#[tokio::test]
async fn an_inbox_file_made_read_only_mid_fanout_turns_readyz_red_and_the_campaign_completes_once_it_is_writable(
) {
    if std::env::var("HERALD_TEST_FAULTS").as_deref() != Ok("1") {
        eprintln!("skipped: set HERALD_TEST_FAULTS=1 (as root) to run the read-only file case");
        return;
    }
    let app = spawn(Options {
        configure: Box::new(|c| {
            c.fanout.batch_size = Some(500);
            c.throttle.users_per_s = 5_000;
            c.throttle.large_users_per_s = 5_000;
            c.fanout.max_batch_attempts = 1_000;
        }),
        ..Options::default()
    })
    .await;
    let dir = app.dir.path().to_path_buf();
    let files = [dir.join("inbox.db"), dir.join("inbox.db-wal")];
    let read_only = std::cell::RefCell::new(None);
    fault_mid_fanout(
        &app,
        &dir,
        || *read_only.borrow_mut() = Some(ReadOnlyFiles::set(&files)),
        || drop(read_only.borrow_mut().take()),
    )
    .await;
}

#[tokio::test]
async fn a_store_whose_write_lock_is_held_elsewhere_turns_readyz_red_naming_its_file() {
    use sqlx::{ConnectOptions, Connection};
    let app = spawn(Options::default()).await;
    let ready = || async {
        let resp = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    assert_eq!(ready().await.0, StatusCode::OK);
    // Another process holds the campaign store's write lock (a transaction left open).
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(app.dir.path().join("campaigns.db"))
        .connect()
        .await
        .unwrap();
    let tx = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let (status, body) = ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("campaigns.db") && body.contains("locked for writing"),
        "{body}"
    );
    drop(tx);
    eventually(
        "ready once the lock is gone",
        Duration::from_secs(10),
        || async { ready().await.0 == StatusCode::OK },
    )
    .await;
}

#[tokio::test]
async fn the_api_killed_mid_keyed_creates_and_the_push_gateway_killed_mid_delivery_lose_nothing() {
    let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    fcm.write_credentials(data).unwrap();
    let api = Role::start("api", data, &fcm.endpoint(), &[]);
    api.wait_ready().await;
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    for i in 0..300 {
        let u = format!("p{i:03}");
        client
            .call(
                Method::PUT,
                &format!("/v1/users/{u}"),
                Some(json!({"attributes": {}})),
            )
            .await;
        client
            .call(
                Method::POST,
                &format!("/v1/users/{u}/devices"),
                Some(json!({"platform": "fcm", "token": format!("tok-{u}")})),
            )
            .await;
    }
    let users: Vec<String> = (0..300).map(|i| format!("p{i:03}")).collect();
    let body = json!({"audience": {"users": users}, "content": {"title": "t", "body": "b"},
                      "channels": ["in_app", "push"], "priority": "high"});

    // Keyed creates fired at the API, which is killed while they are in flight.
    let keys: Vec<String> = (0..30).map(|i| format!("kill-{i}")).collect();
    let mut api = api;
    let in_flight = {
        let (base, keys, body) = (api.base.clone(), keys.clone(), body.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            for k in keys {
                let _ = c
                    .post(format!("{base}/v1/campaigns"))
                    .bearer_auth(ADMIN_KEY)
                    .header("idempotency-key", k)
                    .json(&body)
                    .send()
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    api.kill9();
    let _ = in_flight.await;

    // The API comes back; every key is retried: one campaign per key, whatever got through.
    let api = Role::start("api", data, &fcm.endpoint(), &[]);
    api.wait_ready().await;
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    let mut ids = std::collections::BTreeSet::new();
    for k in &keys {
        let resp = client
            .client
            .post(format!("{}/v1/campaigns", api.base))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", k.as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{k}");
        let b: serde_json::Value = resp.json().await.unwrap();
        ids.insert(b["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), keys.len(), "one campaign per key");
    let (_, list) = client
        .call(Method::GET, "/v1/campaigns?limit=1000", None)
        .await;
    assert_eq!(list["campaigns"].as_array().unwrap().len(), keys.len());

    // Fan-out and push run; the gateway is killed (SIGKILL) in the middle of the sends.
    let fanout = Role::start("fanout", data, &fcm.endpoint(), &[]);
    let mut push = Role::start("push", data, &fcm.endpoint(), &[]);
    fanout.wait_ready().await;
    push.wait_ready().await;
    let total = 300 * keys.len() as u64;
    eventually("sends under way", Duration::from_secs(60), || async {
        fcm.sent() >= total / 4
    })
    .await;
    push.kill9();
    let push = Role::start("push", data, &fcm.endpoint(), &[]);
    push.wait_ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let c = client.campaign(id).await;
            let d = &c["deliveries"]["push"];
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            if c["status"] == "completed" && n("queued") == 300 && n("sent") + n("failed") == 300 {
                assert_eq!(n("sent"), 300, "{c}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not settled: {c}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sqlite_inbox_rows(data, id).await, (300, 300));
    }
    // At least once: every device got every campaign; a crash between a send and its mark may
    // repeat a send (receivers dedupe on the notification id), and nothing else does.
    assert!(fcm.sent() >= total, "{} of {total}", fcm.sent());
    for u in &users {
        assert!(
            fcm.requests_for(&format!("tok-{u}")) >= keys.len() as u32,
            "{u}"
        );
    }
    drop((fanout, push, api));
}

// ---------------------------------------------------------------------------------------------
// The inbox node: killed under a live client, then stopped with one connected. The live hub
// is in-process on the embedded engines (a live event reaches the sockets of the process that
// wrote it), so the node is `herald serve` (fan-out and inbox together) beside an `api` role.

/// A live client as an app would write one: it keeps the cursor of the newest item it has and,
/// whenever its socket drops, reconnects to wherever the inbox now runs with `since=` that
/// cursor. Every notification frame it gets is recorded (id and cursor), duplicates included.
async fn live_client(
    base: tokio::sync::watch::Receiver<String>,
    token: String,
    seen: std::sync::Arc<parking_lot::Mutex<Vec<(String, String)>>>,
    closes: std::sync::Arc<parking_lot::Mutex<Vec<u16>>>,
) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let since = seen.lock().last().map(|(_, c)| c.clone());
        let ws = base.borrow().replace("http://", "ws://");
        let url = match since {
            Some(c) => format!("{ws}/v1/inbox/live?since={c}"),
            None => format!("{ws}/v1/inbox/live"),
        };
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut socket = match tokio_tungstenite::connect_async(req).await {
            Ok((socket, _)) => socket,
            Err(e) => {
                eprintln!("live client: connecting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Text(text)) => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "notification" {
                        let item = &v["item"];
                        seen.lock().push((
                            item["id"].as_str().unwrap().to_owned(),
                            item["cursor"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
                Ok(Message::Close(frame)) => {
                    closes
                        .lock()
                        .push(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_inbox_node_killed_under_a_live_client_loses_nothing_and_stopped_closes_with_1001() {
    let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    fcm.write_credentials(data).unwrap();
    let api = Role::start("api", data, &fcm.endpoint(), &[]);
    let mut inbox = Role::start("serve", data, &fcm.endpoint(), &[]);
    for r in [&api, &inbox] {
        r.wait_ready().await;
    }
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    let (s, b) = client
        .call(
            Method::PUT,
            "/v1/users/watcher",
            Some(json!({"attributes": {}})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let now = chrono::Utc::now();
    let token = herald_core::token::mint(
        SECRET.as_bytes(),
        "watcher",
        now,
        now + chrono::Duration::hours(1),
    );
    let (base_tx, base_rx) = tokio::sync::watch::channel(inbox.base.clone());
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let closes = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let _client_task = herald_core::worker::AbortOnDrop::spawn(live_client(
        base_rx,
        token,
        seen.clone(),
        closes.clone(),
    ));

    // One campaign to the watcher at a time, each completed and received live before the next
    // (so rows are written in creation order); after the 8th the node is killed, six more are
    // created while it is down, and it comes back on a new port.
    let create = |n: u32| {
        let client = &client;
        async move {
            let (s, b) = client
                .call(
                    Method::POST,
                    "/v1/campaigns",
                    Some(json!({"audience": {"user": "watcher"},
                                "content": {"title": format!("n{n}"), "body": "b"},
                                "channels": ["in_app"]})),
                )
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{b}");
            b["id"].as_str().unwrap().to_owned()
        }
    };
    let mut created = Vec::new();
    for n in (1..=8).chain(15..=20) {
        created.push(create(n).await);
        for id in &created {
            eventually(
                "the campaign completes",
                Duration::from_secs(30),
                || async { client.campaign(id).await["status"] == "completed" },
            )
            .await;
        }
        eventually(
            "the client has it live",
            Duration::from_secs(30),
            || async { seen.lock().len() >= created.len() },
        )
        .await;
        if n == 8 {
            inbox.kill9();
            for m in 9..=14 {
                created.push(create(m).await);
            }
            inbox = Role::start("serve", data, &fcm.endpoint(), &[]);
            inbox.wait_ready().await;
            base_tx.send(inbox.base.clone()).unwrap();
        }
    }
    eventually(
        "the client has all 20 after resuming",
        Duration::from_secs(30),
        || async { seen.lock().len() >= 20 },
    )
    .await;
    // A moment for any duplicate to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = seen.lock().iter().map(|(id, _)| id.clone()).collect();
    let distinct: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 20, "each notification once: {got:?}");
    assert_eq!(distinct.len(), 20);
    // They are the watcher's inbox, every campaign once.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/inbox?limit=100", inbox.base))
        .bearer_auth(herald_core::token::mint(
            SECRET.as_bytes(),
            "watcher",
            now,
            now + chrono::Duration::hours(1),
        ))
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = resp.json().await.unwrap();
    let listed: std::collections::BTreeSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 20, "{list}");
    assert_eq!(
        listed,
        distinct.iter().map(|s| s.as_str()).collect(),
        "what came live is what the inbox holds"
    );

    // SIGTERM with the client connected: it is told 1001 "going away" and the node exits 0.
    inbox.stop();
    eventually("the client saw 1001", Duration::from_secs(10), || async {
        closes.lock().contains(&1001)
    })
    .await;
    drop(api);
}

// ---------------------------------------------------------------------------------------------
// Retries waiting out their backoff: kept in the delay store, so a gateway killed meanwhile
// loses none of them.

/// Messages of `topic` waiting in the delay store of the data directory.
async fn delayed_rows(data: &Path, topic: &str) -> u64 {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data.join("delays.db"))
        .read_only(true)
        .connect()
        .await
        .expect("open delays.db");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delayed_messages WHERE topic = ?")
        .bind(topic)
        .fetch_one(&mut conn)
        .await
        .expect("count delayed messages");
    n as u64
}

#[tokio::test]
async fn retries_waiting_in_the_delay_store_outlive_a_push_gateway_killed_meanwhile() {
    let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    fcm.write_credentials(data).unwrap();
    let api = Role::start("api", data, &fcm.endpoint(), &[]);
    api.wait_ready().await;
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };
    let users: Vec<String> = (0..50).map(|i| format!("r{i:02}")).collect();
    for u in &users {
        client
            .call(Method::PUT, &format!("/v1/users/{u}"), Some(json!({})))
            .await;
        let (s, b) = client
            .call(
                Method::POST,
                &format!("/v1/users/{u}/devices"),
                Some(json!({"platform": "fcm", "token": format!("tok-{u}")})),
            )
            .await;
        assert!(s.is_success(), "{b}");
    }
    // Every first attempt meets a 503; the retries back off for seconds.
    fcm.set_storm(Some(Storm::Unavailable));
    let slow_retries = [
        ("HERALD_PUSH__BACKOFF_BASE_MS", "4000"),
        ("HERALD_PUSH__BACKOFF_MAX_MS", "6000"),
    ];
    let fanout = Role::start("fanout", data, &fcm.endpoint(), &[]);
    let mut push = Role::start("push", data, &fcm.endpoint(), &slow_retries);
    fanout.wait_ready().await;
    push.wait_ready().await;
    let (s, created) = client
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"audience": {"users": users}, "content": {"title": "t", "body": "b"},
                        "channels": ["push"], "priority": "high"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    eventually(
        "the retries wait in the delay store",
        Duration::from_secs(30),
        || async { delayed_rows(data, "channel.push").await > 0 },
    )
    .await;
    // The gateway dies while they wait; the provider recovers; a new gateway starts.
    push.kill9();
    fcm.set_storm(None);
    let push = Role::start("push", data, &fcm.endpoint(), &slow_retries);
    push.wait_ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = client.campaign(&id).await;
        let d = &c["deliveries"]["push"];
        if d["sent"].as_u64() == Some(50) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all sent: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fcm.sent(), 50, "each device once");
    assert_eq!(
        delayed_rows(data, "channel.push").await,
        0,
        "nothing left waiting"
    );
    drop((api, fanout, push));
}
