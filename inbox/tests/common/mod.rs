//! The harness of the inbox suites: the inbox role (HTTP API and live feed) on port 0 over
//! embedded backends in a temp dir, with a manual clock; fixtures go straight into the ports.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

use chrono::{DateTime, Duration, Utc};
use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::model::User;
use herald_core::ports::LiveHub;
use herald_core::{Context, ManualClock};
use herald_inbox::{LiveConfig, LiveFeed};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const TOKEN_SECRET: &str = "test-token-secret";
pub const NOW: &str = "2026-03-01T12:00:00Z";

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339 time")
        .with_timezone(&Utc)
}

/// `NOW` minus `minutes`: every fixture sits in the past of the clock.
pub fn ago(minutes: i64) -> DateTime<Utc> {
    at(NOW) - Duration::minutes(minutes)
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub clock: ManualClock,
    pub feed: LiveFeed,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The inbox role as `herald_inbox::run_with` serves it, keeping the live feed to look at.
pub async fn spawn_app_with(live: LiveConfig) -> TestApp {
    spawn_app_with_hub(live, |hub| hub).await
}

/// [`spawn_app_with`], with the live hub the backends open replaced by `wrap(hub)`.
pub async fn spawn_app_with_hub(
    live: LiveConfig,
    wrap: impl FnOnce(Arc<dyn LiveHub>) -> Arc<dyn LiveHub>,
) -> TestApp {
    spawn_app_configured(live, wrap, |_| {}).await
}

/// [`spawn_app_with_hub`], with the configuration changed by `configure` first (the data
/// directory is set; backends it leaves unset are the embedded or test-engine defaults).
pub async fn spawn_app_configured(
    live: LiveConfig,
    wrap: impl FnOnce(Arc<dyn LiveHub>) -> Arc<dyn LiveHub>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    configure(&mut config);
    mysql_support::configure_backends(&mut config).await;
    let mut ports = herald_storage::open_ports(&config)
        .await
        .expect("open embedded backends");
    ports.live = wrap(ports.live);
    let clock = ManualClock::new(at(NOW));
    let ctx = Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(clock.clone()),
        secrets: Secrets {
            admin_key: Secret::new("test-admin-key-0123456789"),
            token_secret: Secret::new(TOKEN_SECRET),
        },
        workers: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let (routes, feed) = herald_inbox::router_with_feed(ctx.clone(), live, shutdown.clone());
    let app = herald_http::finish(routes.merge(herald_http::ops_router(ctx.clone())));
    tokio::spawn(herald_http::serve(listener, app, shutdown.clone()));
    // A hub that subscribes in the background (Redis) refuses sockets until it has.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !feed.is_subscribed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live feed subscribed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        ctx,
        clock,
        feed,
        shutdown,
        _dir: dir,
    }
}

impl TestApp {
    /// A user in the directory with these attributes (a JSON object).
    pub async fn add_user(&self, id: &str, attributes: Value) {
        let Value::Object(attributes) = attributes else {
            panic!("attributes must be an object");
        };
        self.ctx
            .ports
            .directory
            .upsert_users(&[User {
                id: id.into(),
                email: None,
                phone: None,
                attributes,
                created_at: at(NOW),
                updated_at: at(NOW),
            }])
            .await
            .expect("upsert user");
    }
}
