//! The exactly-once acceptance test, with a real process: `herald serve` runs a 100,000-user
//! campaign, is killed with SIGKILL mid-way through the fan-out, and is started again on the
//! same data directory. The campaign must complete, every targeted user must have exactly one
//! notification, and the progress counters must count every batch once.
//!
//! Nothing here depends on tight timing: the fan-out is paced (20,000 users/s, so about five
//! seconds for the whole audience), the kill happens once at least 10 of the 100 batches are
//! recorded, and the restarted process gets minutes to redeliver what the dead one held (its
//! leases must expire first: 15 s for the dispatcher, 20 s for batches).

use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/listen.rs"]
mod listen;

const ADMIN_KEY: &str = "crash-test-admin-key-0123456789";
const USERS: u64 = 100_000;
const BATCH_SIZE: u64 = 1_000;
const BATCHES: u64 = USERS / BATCH_SIZE;
/// Kill once at least this many batches are recorded.
const KILL_AFTER_BATCHES: u64 = 10;

/// A running `herald serve`: killed (SIGKILL) and reaped on drop, its stderr printed when the
/// test is failing.
struct Herald {
    name: &'static str,
    child: Child,
    log: PathBuf,
    base: String,
    reaped: bool,
}

impl Herald {
    /// Starts `herald serve` on `data_dir` and a port the kernel picks (the one it prints on
    /// stdout), its stderr going to `log_dir/<name>.log`. A port picked here and handed over
    /// could be taken by another test's process in between.
    fn start(name: &'static str, data_dir: &Path, log_dir: &Path) -> Herald {
        let log = log_dir.join(format!("{name}.stderr.log"));
        let stderr = File::create(&log).expect("create the stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve");
        // Whatever HERALD_* the calling shell has (backend URLs, a config file...) must not
        // leak in: this test is about the embedded SQLite backends in its own directory.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HERALD_DATA_DIR", data_dir)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_ADMIN_KEY", ADMIN_KEY)
            .env("HERALD_FANOUT__BATCH_SIZE", BATCH_SIZE.to_string())
            .env("HERALD_THROTTLE__USERS_PER_S", "20000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut herald = Herald {
            name,
            child: cmd.spawn().expect("spawn herald serve"),
            log,
            base: String::new(),
            reaped: false,
        };
        // On a failure the Herald is dropped: killed, reaped and its log printed.
        herald.base = listen::announced_base(&mut herald.child, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("`herald serve` ({name}) did not say where it listens"));
        herald
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap it.
    fn kill9(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Panics (printing the log through `Drop`) if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.reaped = true;
            panic!("`herald serve` ({}) exited early: {status}", self.name);
        }
    }

    /// Waits until `/healthz` answers 200.
    async fn wait_healthy(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.assert_running();
            let ok = http
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`herald serve` ({}) not healthy after 120 s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"));
            eprintln!(
                "----- stderr of `herald serve` ({}) -----\n{log}----- end of {} -----",
                self.name, self.name
            );
        }
    }
}

async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

async fn get_campaign(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let (status, body) = admin(
        http,
        base,
        reqwest::Method::GET,
        &format!("/v1/campaigns/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "GET /v1/campaigns/{id}: {body}");
    body
}

fn progress(campaign: &Value, field: &str) -> u64 {
    campaign["progress"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("progress.{field} missing in {campaign}"))
}

/// Rows of the campaign in `inbox.db`: (rows, distinct users). Opened directly, not through
/// the API, so nothing can hide a duplicate.
async fn inbox_rows(data_dir: &Path, campaign_id: &str) -> (i64, i64) {
    let mut conn = SqliteConnectOptions::new()
        .filename(data_dir.join("inbox.db"))
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("open inbox.db");
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM notifications WHERE campaign_id = ?",
    )
    .bind(campaign_id)
    .fetch_one(&mut conn)
    .await
    .expect("count the campaign's notifications");
    conn.close().await.expect("close inbox.db");
    counts
}

/// Batches of the campaign recorded in `campaigns.db` (`campaign_batches`).
async fn recorded_batches(data_dir: &Path, campaign_id: &str) -> i64 {
    let mut conn = SqliteConnectOptions::new()
        .filename(data_dir.join("campaigns.db"))
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("open campaigns.db");
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM campaign_batches WHERE campaign_id = ?")
            .bind(campaign_id)
            .fetch_one(&mut conn)
            .await
            .expect("count the campaign's batches");
    conn.close().await.expect("close campaigns.db");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_killed_mid_fanout_completes_after_restart_with_exactly_one_notification_per_user(
) {
    let started = Instant::now();
    let data = tempfile::tempdir().expect("temp data dir");
    let logs = tempfile::tempdir().expect("temp log dir");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client");

    // --- first run: users, segment, campaign --------------------------------------------------
    let mut first = Herald::start("first run", data.path(), logs.path());
    first.wait_healthy(&http).await;
    let base = first.base.clone();

    let mut ndjson = String::with_capacity(USERS as usize * 64);
    for i in 0..USERS {
        ndjson.push_str(&format!(
            "{{\"id\":\"crash-{i:06}\",\"attributes\":{{\"cohort\":\"crash-test\"}}}}\n"
        ));
    }
    let resp = http
        .post(format!("{base}/v1/users/import"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .expect("POST /v1/users/import");
    let status = resp.status();
    let body: Value = resp.json().await.expect("import response");
    assert_eq!(status, 200, "import: {body}");
    assert_eq!(body["imported"], USERS, "import: {body}");

    let (status, body) = admin(
        &http,
        &base,
        reqwest::Method::PUT,
        "/v1/segments/crash-cohort",
        Some(json!({"filter": {"attr": "cohort", "eq": "crash-test"}})),
    )
    .await;
    assert!(status.is_success(), "segment: {status} {body}");

    let (status, created) = admin(
        &http,
        &base,
        reqwest::Method::POST,
        "/v1/campaigns",
        Some(json!({
            "audience": {"segment": "crash-cohort"},
            "content": {"title": "Hello {{ user.id }}", "body": "Exactly once, please."},
            "channels": ["in_app"],
        })),
    )
    .await;
    assert_eq!(status, 202, "campaign: {created}");
    assert_eq!(created["strategy"], "throttled", "campaign: {created}");
    assert_eq!(created["audience_size"], USERS, "campaign: {created}");
    let id = created["id"].as_str().expect("campaign id").to_owned();
    eprintln!(
        "[{:>5.1?}] campaign {id} created (100,000 users imported)",
        started.elapsed()
    );

    // --- kill -9 mid-way --------------------------------------------------------------------
    let deadline = Instant::now() + Duration::from_secs(180);
    let before_kill = loop {
        first.assert_running();
        let c = get_campaign(&http, &base, &id).await;
        assert_ne!(
            c["status"], "completed",
            "the campaign completed before the kill; nothing was tested: {c}"
        );
        if progress(&c, "batches_done") >= KILL_AFTER_BATCHES {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {KILL_AFTER_BATCHES} batches done after 180 s: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill9();
    let done_before = progress(&before_kill, "batches_done");
    eprintln!(
        "[{:>5.1?}] killed with SIGKILL at batches_done = {done_before}, status {}",
        started.elapsed(),
        before_kill["status"]
    );
    assert_eq!(before_kill["status"], "fanning_out", "{before_kill}");
    assert!(done_before < BATCHES, "not mid-way: {before_kill}");
    // What the dead process left on disk: part of the audience, not all of it.
    let (rows_at_kill, _) = inbox_rows(data.path(), &id).await;
    let batches_at_kill = recorded_batches(data.path(), &id).await;
    eprintln!(
        "  on disk at the kill: {rows_at_kill} notifications, {batches_at_kill} batches recorded"
    );
    assert!(
        rows_at_kill > 0 && (rows_at_kill as u64) < USERS,
        "the kill should land mid-way, but inbox.db holds {rows_at_kill} of {USERS} rows"
    );
    assert!(
        (batches_at_kill as u64) < BATCHES,
        "the kill should land mid-way, but {batches_at_kill} batches are recorded"
    );

    // --- restart on the same data directory -------------------------------------------------
    let mut second = Herald::start("after restart", data.path(), logs.path());
    second.wait_healthy(&http).await;
    let base = second.base.clone();
    eprintln!("[{:>5.1?}] restarted", started.elapsed());

    let deadline = Instant::now() + Duration::from_secs(180);
    let done = loop {
        second.assert_running();
        let c = get_campaign(&http, &base, &id).await;
        if c["status"] == "completed" {
            break c;
        }
        if Instant::now() >= deadline {
            let (rows, users) = inbox_rows(data.path(), &id).await;
            let batches = recorded_batches(data.path(), &id).await;
            panic!(
                "the campaign did not complete within 180 s of the restart: {c}\n\
                 inbox.db: {rows} rows for {users} users; campaign_batches: {batches}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("[{:>5.1?}] campaign completed", started.elapsed());

    // --- exactly once -----------------------------------------------------------------------
    let (rows, users) = inbox_rows(data.path(), &id).await;
    let batches = recorded_batches(data.path(), &id).await;
    eprintln!(
        "  final: {rows} notifications for {users} users, {batches} batches recorded, progress {}",
        done["progress"]
    );
    assert_eq!(
        (rows, users),
        (USERS as i64, USERS as i64),
        "inbox.db must hold exactly one notification per targeted user (rows, distinct users)"
    );
    assert_eq!(batches, BATCHES as i64, "campaign_batches rows");
    assert_eq!(done["audience_size"], USERS, "{done}");
    assert_eq!(
        progress(&done, "notifications_written"),
        USERS,
        "notifications_written counted once per batch: {done}"
    );
    assert_eq!(
        progress(&done, "batches_done"),
        BATCHES,
        "batches_done: {done}"
    );
    assert_eq!(
        progress(&done, "batches_total"),
        BATCHES,
        "batches_total: {done}"
    );
    assert_eq!(progress(&done, "skipped_opted_out"), 0, "{done}");
    assert!(done["completed_at"].is_string(), "completed_at: {done}");

    // The restarted process must still be healthy after all this.
    second.assert_running();
    drop(second);
    drop(first);
    eprintln!("[{:>5.1?}] done", started.elapsed());
}
