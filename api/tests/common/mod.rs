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
//!
//! [`spawn_deployment`] is the whole product: in-process, `herald serve`'s roles (one port for
//! the admin API, the inbox API with its live feed and the operations endpoints; the fan-out;
//! the push gateway against a fake FCM); as processes, two `herald api`, two `herald fanout`,
//! two `herald inbox` behind a round-robin of their own and two `herald push`.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

#[path = "../../../tests/support/roles.rs"]
mod role;

use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, SystemClock};
use herald_push::fakes::FakeFcm;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const TOKEN_SECRET: &str = "api-suite-token-secret-0123456789abcdef";

pub struct TestApp {
    /// The admin API.
    pub base: String,
    /// The inbox API and its live feed (the admin API's port in-process, as `herald serve`
    /// serves both on one; a round-robin over the inbox nodes as processes). Only
    /// [`spawn_deployment`] serves it.
    pub inbox: String,
    /// Each inbox node's own base URL, for sockets placed on a given node (the one port of
    /// `herald serve` in-process).
    pub inbox_nodes: Vec<String>,
    /// The fake FCM the push gateway sends to ([`spawn_deployment`]).
    pub fcm: Option<FakeFcm>,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub shutdown: CancellationToken,
    /// The role processes (`HERALD_TEST_ROLES=processes`), killed on drop before the
    /// directory goes.
    _processes: Vec<role::Role>,
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

/// Which roles run beside the admin API.
#[derive(Clone, Copy, PartialEq)]
enum Roles {
    Api,
    ApiAndFanout,
    /// Every role: fan-out, inbox and push gateway (with a fake FCM).
    All,
}

pub async fn spawn_app() -> TestApp {
    spawn(|_| {}, Roles::Api).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn(configure, Roles::Api).await
}

/// The API plus the fan-out role (`herald_fanout::run`), stopped when the app is dropped.
pub async fn spawn_app_with_fanout(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn(configure, Roles::ApiAndFanout).await
}

/// Every role (see the module doc), stopped when the app is dropped.
pub async fn spawn_deployment(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn(configure, Roles::All).await
}

async fn spawn(configure: impl FnOnce(&mut Config), roles: Roles) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        admin_key: Some(Secret::new(ADMIN_KEY)),
        ..Config::default()
    };
    let fcm = if roles == Roles::All {
        let fcm = FakeFcm::start().await.expect("fake FCM");
        config.inbox.token_secret = Some(Secret::new(TOKEN_SECRET));
        config.push.fcm.endpoint = fcm.endpoint();
        config.push.fcm.credentials_file =
            Some(fcm.write_credentials(dir.path()).expect("credentials"));
        config.push.fcm.batch_window_ms = 5;
        config.push.fcm.h2c = true;
        config.push.backoff_base_ms = 20;
        config.push.backoff_max_ms = 200;
        Some(fcm)
    } else {
        None
    };
    mysql_support::configure_backends(&mut config).await;
    configure(&mut config);
    if as_processes() {
        return spawn_processes(dir, config, roles, fcm).await;
    }
    let ctx = context(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    if roles == Roles::All {
        // `herald serve`: one port for the admin API, the inbox API and the operations.
        let providers = herald_push::Providers::from_config(&ctx.config.push).expect("providers");
        tokio::spawn(herald_push::run_with(
            ctx.clone(),
            providers,
            shutdown.clone(),
        ));
        let (inbox, _feed) = herald_inbox::router_with_feed(
            ctx.clone(),
            herald_inbox::LiveConfig::default(),
            shutdown.clone(),
        );
        let router = herald_http::finish(
            herald_api::admin_router(ctx.clone())
                .merge(inbox)
                .merge(herald_http::ops_router(ctx.clone())),
        );
        tokio::spawn(herald_http::serve(listener, router, shutdown.clone()));
    } else {
        tokio::spawn(herald_api::run(ctx.clone(), listener, shutdown.clone()));
    }
    if roles != Roles::Api {
        tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
    }
    TestApp {
        base: format!("http://{addr}"),
        inbox: format!("http://{addr}"),
        inbox_nodes: vec![format!("http://{addr}")],
        fcm,
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
async fn spawn_processes(
    dir: tempfile::TempDir,
    config: Config,
    roles: Roles,
    fcm: Option<FakeFcm>,
) -> TestApp {
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
    let migrate = std::process::Command::new(role::herald_bin())
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
    // Without a push gateway no provider is used: FCM points nowhere.
    let fcm_endpoint = fcm
        .as_ref()
        .map_or_else(|| "http://127.0.0.1:9".to_owned(), FakeFcm::endpoint);
    let start = |role: &str| role::Role::start(role, data, &fcm_endpoint, &env);
    let mut processes = vec![start("api"), start("api")];
    if roles != Roles::Api {
        processes.push(start("fanout"));
        processes.push(start("fanout"));
    }
    if roles == Roles::All {
        processes.extend([start("inbox"), start("inbox"), start("push"), start("push")]);
    }
    for p in &processes {
        p.wait_ready().await;
    }
    let shutdown = CancellationToken::new();
    let base = balance(&processes[..2], &shutdown).await;
    let (inbox, inbox_nodes) = if roles == Roles::All {
        let nodes = &processes[4..6];
        (
            balance(nodes, &shutdown).await,
            nodes.iter().map(|p| p.base.clone()).collect(),
        )
    } else {
        (String::new(), Vec::new())
    };
    TestApp {
        base,
        inbox,
        inbox_nodes,
        fcm,
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

/// A round-robin in front of `nodes`; its base URL.
async fn balance(nodes: &[role::Role], shutdown: &CancellationToken) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|p| p.base.trim_start_matches("http://").to_owned())
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(round_robin(listener, nodes, shutdown.clone()));
    format!("http://{addr}")
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
