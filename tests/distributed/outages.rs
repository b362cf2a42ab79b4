//! Faults under a running deployment on the distributed engines, while two fan-out processes
//! cut a campaign and a push gateway sends it: MariaDB, Redis and the JetStream broker each
//! stopped for [`OUTAGE`], and one fan-out process killed. The roles must wait and recover by
//! themselves: `/readyz` goes red while an engine is down and green again after, the campaign
//! completes (taken over by the surviving fan-out process), every user has exactly one inbox
//! row, and every device gets its push exactly once.
//!
//! The stopped engine is a private server of the test's own (a MariaDB instance on a fresh
//! data directory, a Redis with an append-only file, a `nats-server` with its store on disk),
//! stopped with SIGTERM and started again on the same port and data, so the other cases
//! beside it keep the shared services. Run when `HERALD_TEST_MYSQL_URL`,
//! `HERALD_TEST_REDIS_URL` and `HERALD_TEST_NATS_URL` are all set (as `.ci/run` sets them);
//! skipped otherwise.

use crate::roles::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the engine stays down.
const OUTAGE: Duration = Duration::from_secs(30);
const USERS: usize = 3_000;
/// Every 30th user has a device.
const DEVICES: usize = USERS / 30;

/// Which engine a case stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Mariadb,
    Redis,
    Nats,
}

/// A private server: the same command started again after a stop, on the same port and data.
struct Server {
    engine: Engine,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    async fn start(engine: Engine, dir: &Path) -> Server {
        let dir = dir.join(format!("{engine:?}").to_lowercase());
        std::fs::create_dir_all(&dir).unwrap();
        if engine == Engine::Mariadb {
            let out = Command::new("mariadb-install-db")
                .args(["--no-defaults", "--user=root", "--skip-test-db"])
                .arg("--auth-root-authentication-method=normal")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .output()
                .expect("mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut s = Server {
            engine,
            port: free_port(),
            dir,
            child: None,
        };
        s.up().await;
        if engine == Engine::Mariadb {
            let out = Command::new("mariadb")
                .args(["-uroot", "-h127.0.0.1", &format!("-P{}", s.port)])
                .args(["-e", "CREATE DATABASE herald CHARACTER SET utf8mb4"])
                .output()
                .expect("mariadb client");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        s
    }

    fn command(&self) -> Command {
        let d = &self.dir;
        let port = self.port.to_string();
        match self.engine {
            Engine::Mariadb => {
                let mut c = Command::new("/usr/sbin/mariadbd");
                c.args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
                    .arg(format!("--port={port}"))
                    .arg(format!("--datadir={}", d.join("data").display()))
                    .arg(format!("--socket={}", d.join("sock").display()));
                c
            }
            Engine::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "yes", "--dir"])
                    .arg(d);
                c
            }
            Engine::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(d);
                c
            }
        }
    }

    /// The URL the roles are given.
    fn url(&self) -> String {
        match self.engine {
            Engine::Mariadb => format!("mysql://root@127.0.0.1:{}/herald", self.port),
            Engine::Redis => format!("redis://127.0.0.1:{}", self.port),
            Engine::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    async fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        self.child = Some(
            self.command()
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {:?}: {e}", self.engine)),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen",
                self.engine
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (a clean shutdown: the data survives), then waits for the exit.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn readyz(role: &Role) -> StatusCode {
    match reqwest::Client::new()
        .get(format!("{}/readyz", role.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status(),
        // No answer at all is not "red": a probe must be answered, within its timeout.
        Err(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// Waits until every role's `/readyz` answers `want`.
async fn wait_readyz(roles: &[&Role], want: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    for r in roles {
        loop {
            let got = readyz(r).await;
            if got == want {
                break;
            }
            assert!(
                started.elapsed() < within,
                "{} answered /readyz {got}, not {want}, after {within:?}; its log:\n{}",
                r.base,
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    started.elapsed()
}

/// What happens to the deployment a few batches into the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The engine is stopped for [`OUTAGE`], then started again.
    Stop(Engine),
    /// One of the two fan-out processes is killed (SIGKILL) and stays dead.
    KillFanout,
}

async fn fault_mid_campaign(fault: Fault) {
    let engine = match fault {
        Fault::Stop(engine) => Some(engine),
        Fault::KillFanout => None,
    };
    let (Ok(mysql), Ok(redis), Ok(nats)) = (
        std::env::var("HERALD_TEST_MYSQL_URL"),
        std::env::var("HERALD_TEST_REDIS_URL"),
        std::env::var("HERALD_TEST_NATS_URL"),
    ) else {
        eprintln!(
            "skipped: set HERALD_TEST_MYSQL_URL, HERALD_TEST_REDIS_URL and HERALD_TEST_NATS_URL"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut server = match engine {
        Some(engine) => Some(Server::start(engine, data).await),
        None => None,
    };
    let private = |e: Engine| server.as_ref().filter(|s| s.engine == e).map(Server::url);
    let prefix = format!("outage{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let with_prefix = |url: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}prefix={prefix}")
    };
    let mysql = match private(Engine::Mariadb) {
        Some(url) => url,
        None => {
            let _ = mysql;
            crate::mysql_support::fresh_mysql_database("herald_outage")
                .await
                .unwrap()
        }
    };
    let redis = with_prefix(&private(Engine::Redis).unwrap_or(redis));
    let bus = with_prefix(&private(Engine::Nats).unwrap_or(nats));
    let mut env: Vec<(String, String)> = Vec::new();
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
    for port in ["LIVE", "PREFERENCE_CACHE", "THROTTLE", "BROADCAST_CACHE"] {
        env.push((format!("HERALD_BACKENDS__{port}"), redis.clone()));
    }
    env.push(("HERALD_BACKENDS__BUS".into(), bus));
    // Slow enough that the campaign is still running when the engine comes back.
    env.push(("HERALD_THROTTLE__USERS_PER_S".into(), "150".into()));
    env.push(("HERALD_FANOUT__BATCH_SIZE".into(), "100".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let fcm = herald_push::fakes::FakeFcm::start().await.unwrap();
    fcm.write_credentials(data).unwrap();
    let start = |role: &str| Role::start(role, data, &fcm.endpoint(), &env);
    let api = start("api");
    let mut fanout_a = start("fanout");
    let fanout_b = start("fanout");
    let push = start("push");
    for r in [&api, &fanout_a, &fanout_b, &push] {
        r.wait_ready().await;
    }
    // The roles that live through the fault.
    let roles = [&api, &fanout_b, &push];
    wait_readyz(&roles, StatusCode::OK, Duration::from_secs(30)).await;
    let client = Api {
        base: api.base.clone(),
        client: reqwest::Client::new(),
    };

    let mut ndjson = String::new();
    for i in 0..USERS {
        ndjson.push_str(&format!(
            "{{\"id\": \"o{i:05}\", \"attributes\": {{\"cohort\": \"o\"}}}}\n"
        ));
    }
    let resp = client
        .client
        .post(format!("{}/v1/users/import", api.base))
        .bearer_auth(crate::ADMIN_KEY)
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for i in 0..DEVICES {
        let (s, b) = client
            .call(
                Method::POST,
                &format!("/v1/users/o{:05}/devices", i * 30),
                Some(json!({"platform": "fcm", "token": format!("tok-{i}")})),
            )
            .await;
        assert!(s.is_success(), "{b}");
    }
    let (s, b) = client
        .call(
            Method::PUT,
            "/v1/segments/o",
            Some(json!({"filter": {"attr": "cohort", "eq": "o"}})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (s, created) = client
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"audience": {"segment": "o"}, "content": {"title": "t", "body": "b"},
                        "channels": ["in_app", "push"]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // A few batches in, the engine stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.campaign(&id).await["progress"]["batches_done"]
        .as_u64()
        .unwrap_or(0)
        < 5
    {
        assert!(Instant::now() < deadline, "the campaign did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_fault = Instant::now();
    let report = match server.as_mut() {
        Some(server) => {
            server.down();
            // Each backend has 3 s to answer a probe (herald_core::context::PING_TIMEOUT), and
            // the roles are asked one after the other.
            let went_red = wait_readyz(
                &roles,
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(20),
            )
            .await;
            tokio::time::sleep(OUTAGE.saturating_sub(went_red)).await;
            server.up().await;
            let back = wait_readyz(&roles, StatusCode::OK, Duration::from_secs(90)).await;
            format!(
                "{:?} down {OUTAGE:?}: every role red within {went_red:?}, green {back:?} \
                 after the restart",
                server.engine
            )
        }
        None => {
            // The survivor takes the campaign over once the dead node's lease runs out.
            fanout_a.kill9();
            "a fan-out process killed".to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let done = loop {
        let c = client.campaign(&id).await;
        if c["status"] == "completed" {
            break c;
        }
        assert!(Instant::now() < deadline, "not completed: {c}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(done["progress"]["notifications_written"], USERS, "{done}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = client.campaign(&id).await["deliveries"]["push"].clone();
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        if n("queued") == USERS as u64 && n("sent") + n("failed") == USERS as u64 {
            assert_eq!(n("sent"), DEVICES as u64, "{d}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pushes not settled: {d}, fake FCM sent {}",
            fcm.sent()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..DEVICES {
        assert_eq!(fcm.requests_for(&format!("tok-{i}")), 1, "tok-{i}");
    }
    assert_eq!(inbox_rows(&mysql, &id).await, (USERS as i64, USERS as i64));
    eprintln!(
        "{report}: campaign completed {:?} after the fault",
        at_fault.elapsed()
    );
}

/// (rows, distinct users) of the campaign in the MySQL inbox.
async fn inbox_rows(url: &str, campaign: &str) -> (i64, i64) {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = url
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let row: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM notifications WHERE campaign_id = ?",
    )
    .bind(campaign)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    row
}

#[tokio::test]
async fn mariadb_stopped_mid_campaign_loses_and_doubles_nothing() {
    fault_mid_campaign(Fault::Stop(Engine::Mariadb)).await;
}

#[tokio::test]
async fn redis_stopped_mid_campaign_loses_and_doubles_nothing() {
    fault_mid_campaign(Fault::Stop(Engine::Redis)).await;
}

#[tokio::test]
async fn the_broker_stopped_mid_campaign_loses_and_doubles_nothing() {
    fault_mid_campaign(Fault::Stop(Engine::Nats)).await;
}

#[tokio::test]
async fn a_fanout_process_killed_mid_campaign_is_taken_over_losing_and_doubling_nothing() {
    fault_mid_campaign(Fault::KillFanout).await;
}
