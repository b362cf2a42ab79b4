//! The harness of the gateway suites: the whole pipeline in one process over embedded
//! backends — admin API on port 0, fan-out role, push gateway — with FCM pointed at the fake
//! FCM of `herald_push::fakes`. Campaigns go in through HTTP like a client's would.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, Ports, SystemClock};
use herald_push::fakes::FakeFcm;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

pub struct TestGateway {
    pub base: String,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub fcm: FakeFcm,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts everything; retries are quick (20 ms base) and give up after 3 attempts unless
/// `configure` says otherwise.
pub async fn spawn_gateway(configure: impl FnOnce(&mut Config)) -> TestGateway {
    spawn_gateway_wrapped(configure, |p| p).await
}

/// [`spawn_gateway`] with the opened ports passed through `wrap` (fault injectors).
pub async fn spawn_gateway_wrapped(
    configure: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Ports) -> Ports,
) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let fcm = FakeFcm::start().await.expect("fake FCM");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        admin_key: Some(Secret::new(ADMIN_KEY)),
        ..Config::default()
    };
    config.push.fcm.endpoint = fcm.endpoint();
    config.push.fcm.credentials_file = Some(fcm.write_credentials(dir.path()).expect("write"));
    config.push.fcm.batch_window_ms = 5;
    // HTTP/2 without TLS, as FCM itself is spoken to (over TLS).
    config.push.fcm.h2c = true;
    config.push.max_attempts = 3;
    config.push.backoff_base_ms = 20;
    config.push.backoff_max_ms = 100;
    mysql_support::configure_backends(&mut config).await;
    configure(&mut config);
    let ports = wrap(
        herald_storage::open_ports(&config)
            .await
            .expect("open embedded backends"),
    );
    let ctx = Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(SystemClock),
        secrets: Secrets {
            admin_key: Secret::new(ADMIN_KEY),
            token_secret: Secret::new("test-token-secret"),
        },
        workers: Default::default(),
    };
    let providers =
        herald_push::Providers::from_config(&ctx.config.push).expect("providers from config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_api::run(ctx.clone(), listener, shutdown.clone()));
    tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
    tokio::spawn(herald_push::run_with(
        ctx.clone(),
        providers,
        shutdown.clone(),
    ));
    TestGateway {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        ctx,
        fcm,
        shutdown,
        dir,
    }
}

impl TestGateway {
    /// A JSON request with the admin key; the status and JSON body (`Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    /// Creates a user with these device tokens (`apns:`-prefixed ones as APNs devices).
    /// The process's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn user_with_devices(&self, id: &str, tokens: &[&str]) {
        let (s, b) = self
            .call(
                Method::PUT,
                &format!("/v1/users/{id}"),
                Some(json!({"email": format!("{id}@example.com"), "phone": "+15550001111", "attributes": {}})),
            )
            .await;
        assert!(s.is_success(), "{s} {b}");
        for t in tokens {
            let (platform, token) = match t.strip_prefix("apns:") {
                Some(rest) => ("apns", rest),
                None => ("fcm", *t),
            };
            let (s, b) = self
                .call(
                    Method::POST,
                    &format!("/v1/users/{id}/devices"),
                    Some(json!({"platform": platform, "token": token})),
                )
                .await;
            assert!(s.is_success(), "{s} {b}");
        }
    }

    /// Creates a campaign; its id.
    pub async fn campaign(&self, body: Value) -> String {
        let (s, b) = self.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["id"].as_str().expect("id").to_owned()
    }

    /// The campaign's delivery counters of `channel`: (queued, sent, failed).
    pub async fn deliveries(&self, id: &str, channel: &str) -> (u64, u64, u64) {
        let (_, c) = self
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await;
        let d = &c["deliveries"][channel];
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        (n("queued"), n("sent"), n("failed"))
    }

    /// Waits until the campaign's counters of `channel` read `(sent, failed)`.
    pub async fn wait_for_deliveries(&self, id: &str, channel: &str, want: (u64, u64)) {
        let mut last = (0, 0, 0);
        for _ in 0..300 {
            last = self.deliveries(id, channel).await;
            if (last.1, last.2) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{channel} deliveries of {id}: want (sent, failed) = {want:?}, have (queued, sent, failed) = {last:?}");
    }

    /// The dead letters, newest first.
    pub async fn dead_letters(&self, query: &str) -> Vec<Value> {
        let (s, b) = self
            .call(Method::GET, &format!("/v1/dead-letters{query}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["dead_letters"].as_array().expect("array").clone()
    }

    /// Device tokens of a user.
    pub async fn tokens(&self, user: &str) -> Vec<String> {
        let (_, b) = self
            .call(Method::GET, &format!("/v1/users/{user}/devices"), None)
            .await;
        let list = b["devices"]
            .as_array()
            .or_else(|| b.as_array())
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter_map(|d| d["token"].as_str().map(String::from))
            .collect()
    }
}

/// Polls `check` until it holds (up to 15 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A campaign body sending push to these users.
pub fn push_to(users: &[&str]) -> Value {
    json!({
        "audience": {"users": users},
        "content": {"title": "Hello {{ user.id }}", "body": "Your order shipped"},
        "channels": ["push"],
        "priority": "high",
        "data": {"order_id": 42},
    })
}
