//! The test harness of the API suites (zero-to-production's `spawn_app`): a real server on
//! port 0 over embedded backends in a temp dir, an HTTP client with the admin key, and
//! optionally the fan-out role running beside it. Each test file adds its own helpers in an
//! `impl TestApp` block.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const TOKEN_SECRET: &str = "test-token-secret";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
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
    let ports = herald_storage::open_ports(&config)
        .await
        .expect("open embedded backends");
    let ctx = Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(SystemClock),
        secrets: Secrets {
            admin_key: Secret::new(ADMIN_KEY),
            token_secret: Secret::new(TOKEN_SECRET),
        },
        workers: Default::default(),
    };
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
        _dir: dir,
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
