//! The test harness of the API suites (zero-to-production's `spawn_app`): a real server on
//! port 0 over embedded backends in a temp dir, an HTTP client with the admin key, and
//! optionally the fan-out role running beside it. Each test file adds its own helpers in an
//! `impl TestApp` block.
//!
//! With `HERALD_TEST_ROLES=processes` the same suites run against a deployment instead (the
//! distributed acceptance run of `.ci/run`): the real `herald` binary as two `herald api`
//! processes behind a round-robin that sends every request to the next node (the client keeps
//! no connection), and two `herald fanout` processes where a test wants the fan-out, all on
//! the test's configuration written to a `herald.toml` (engines from `HERALD_TEST_BACKENDS`
//! and `HERALD_TEST_BUS_URL`, as in-process) after one `herald migrate`. `ctx` is then this
//! process's own view of the same stores, for the checks that read them.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

#[path = "../../../tests/support/roles.rs"]
mod roles;

use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const TOKEN_SECRET: &str = "api-suite-token-secret-0123456789abcdef";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub shutdown: CancellationToken,
    /// The role processes (`HERALD_TEST_ROLES=processes`), killed on drop before the
    /// directory goes.
    _processes: Vec<roles::Role>,
    _dir: tempfile::TempDir,
}

/// Whether the roles run as processes of the real binary (`HERALD_TEST_ROLES=processes`).
fn as_processes() -> bool {
    match std::env::var("HERALD_TEST_ROLES").ok().as_deref() {
        None | Some("") | Some("in-process") => false,
        Some("processes") => true,
        Some(other) => panic!("HERALD_TEST_ROLES={other}: expected `in-process` or `processes`"),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn(|_| {}, false).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn(configure, false).await
}

/// The API plus the fan-out role (`herald_fanout::run`), stopped when the app is dropped.
pub async fn spawn_app_with_fanout(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn(configure, true).await
}

async fn spawn(configure: impl FnOnce(&mut Config), fanout: bool) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        admin_key: Some(Secret::new(ADMIN_KEY)),
        ..Config::default()
    };
    mysql_support::configure_backends(&mut config).await;
    configure(&mut config);
    if as_processes() {
        return spawn_processes(dir, config, fanout).await;
    }
    let ctx = context(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_api::run(ctx.clone(), listener, shutdown.clone()));
    if fanout {
        tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
    }
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        ctx,
        shutdown,
        _processes: Vec::new(),
        _dir: dir,
    }
}

/// The stores of `config`, opened in this process.
async fn context(config: Config) -> Context {
    let ports = herald_storage::open_ports(&config)
        .await
        .expect("open the backends");
    Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(SystemClock),
        secrets: Secrets {
            admin_key: Secret::new(ADMIN_KEY),
            token_secret: Secret::new(TOKEN_SECRET),
        },
        workers: Default::default(),
    }
}

/// The deployment of `HERALD_TEST_ROLES=processes` (see the module doc).
async fn spawn_processes(dir: tempfile::TempDir, config: Config, fanout: bool) -> TestApp {
    let data = dir.path();
    let file = data.join("herald.toml");
    std::fs::write(
        &file,
        toml::to_string(&config).expect("the configuration as TOML"),
    )
    .expect("write herald.toml");
    let conf = file.to_string_lossy().into_owned();
    let env = [
        ("HERALD_CONFIG", conf.as_str()),
        ("HERALD_INBOX__TOKEN_SECRET", TOKEN_SECRET),
    ];
    // The schemas once, as an operator would before starting the roles.
    let migrate = std::process::Command::new(roles::herald_bin())
        .arg("migrate")
        .env("HERALD_CONFIG", &file)
        .env("HERALD_DATA_DIR", data)
        .env("HERALD_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run herald migrate");
    assert!(
        migrate.status.success(),
        "herald migrate: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    // No provider is configured here: the API suite starts no push gateway.
    let no_fcm = "http://127.0.0.1:9";
    let mut processes = vec![
        roles::Role::start("api", data, no_fcm, &env),
        roles::Role::start("api", data, no_fcm, &env),
    ];
    if fanout {
        processes.push(roles::Role::start("fanout", data, no_fcm, &env));
        processes.push(roles::Role::start("fanout", data, no_fcm, &env));
    }
    for p in &processes {
        p.wait_ready().await;
    }
    let nodes: Vec<String> = processes[..2]
        .iter()
        .map(|p| p.base.trim_start_matches("http://").to_owned())
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(round_robin(listener, nodes, shutdown.clone()));
    TestApp {
        base: format!("http://{addr}"),
        // A new connection per request, so consecutive requests reach different nodes.
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client"),
        ctx: context(config).await,
        shutdown,
        _processes: processes,
        _dir: dir,
    }
}

/// A TCP round-robin: each connection goes to the next node.
async fn round_robin(
    listener: tokio::net::TcpListener,
    nodes: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let mut inbound = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let node = nodes[next % nodes.len()].clone();
        next += 1;
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&node).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

impl TestApp {
    /// A request with the admin key.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
    }

    /// A JSON request with the admin key; the response status and JSON body (`Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.req(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("response body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    /// A raw body, sent byte for byte as JSON; the status and the (error) body.
    pub async fn raw(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let resp = self
            .req(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("JSON error body"))
    }
}

/// Asserts the API error body shape and returns its message.
pub fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(!msg.is_empty());
    msg
}
