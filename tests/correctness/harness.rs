//! The harness of the correctness suite: the real roles (admin API on port 0, fan-out, push
//! gateway with the fake FCM and optionally an SMTP sink) over the embedded backends of one
//! data directory, with optional fault injectors around the ports. Campaigns go in through
//! HTTP as a client's would; every check reads what a user or an operator would see (HTTP
//! answers, provider fakes, the stores).

use chrono::{DateTime, Utc};
use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::model::*;
use herald_core::ports::{Bus, Consumer, InboxStore, ReplayFrom};
use herald_core::topics::{self, FanoutBatch};
use herald_core::worker::AbortOnDrop;
use herald_core::{Clock, Context, Error, Ports, Result, SystemClock};
use herald_push::fakes::FakeFcm;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "correctness-admin-key-0123456789";
pub const TOKEN_SECRET: &str = "correctness-token-secret-0123456789abcdef";

/// What runs in the process under test.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// Run the fan-out role (the two-node test starts its own fan-out nodes).
    pub fanout: bool,
    /// Run the push gateway (a test that stops the channel consumers starts it later with
    /// [`App::start_push`]).
    pub push: bool,
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub wrap: Box<dyn FnOnce(Ports) -> Ports + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            fanout: true,
            push: true,
            configure: Box::new(|_| {}),
            wrap: Box::new(|p| p),
        }
    }
}

pub struct App {
    pub base: String,
    pub client: reqwest::Client,
    pub ctx: Context,
    pub fcm: FakeFcm,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    _roles: Vec<AbortOnDrop<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The configuration every process of a test shares: the data directory and the providers.
pub fn base_config(dir: &Path, fcm: &FakeFcm) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        admin_key: Some(Secret::new(ADMIN_KEY)),
        ..Config::default()
    };
    config.inbox.token_secret = Some(Secret::new(TOKEN_SECRET));
    config.push.fcm.endpoint = fcm.endpoint();
    config.push.fcm.credentials_file = Some(fcm.write_credentials(dir).expect("credentials"));
    config.push.fcm.batch_window_ms = 5;
    config.push.fcm.h2c = true;
    config.push.backoff_base_ms = 20;
    config.push.backoff_max_ms = 100;
    config
}

/// A context over the embedded backends of `config.data_dir`: what one process opens.
pub async fn open_ctx(config: Config, clock: Arc<dyn Clock>) -> Context {
    let ports = herald_storage::open_ports(&config)
        .await
        .expect("open embedded backends");
    Context {
        config: Arc::new(config),
        ports,
        clock,
        secrets: Secrets {
            admin_key: Secret::new(ADMIN_KEY),
            token_secret: Secret::new(TOKEN_SECRET),
        },
        workers: Default::default(),
    }
}

pub async fn spawn(opts: Options) -> App {
    // `HERALD_TEST_LOG=herald=debug` (an env filter) prints the roles' logs beside the test's
    // output: what a case that failed in CI was doing.
    if let Ok(filter) = std::env::var("HERALD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let fcm = FakeFcm::start().await.expect("fake FCM");
    let mut config = base_config(dir.path(), &fcm);
    crate::mysql_support::configure_backends(&mut config).await;
    (opts.configure)(&mut config);
    let mut ctx = open_ctx(config, opts.clock).await;
    ctx.ports = (opts.wrap)(ctx.ports);
    let providers = herald_push::Providers::from_config(&ctx.config.push).expect("providers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let mut roles = vec![AbortOnDrop::spawn({
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        async move {
            herald_api::run(ctx, listener, shutdown)
                .await
                .expect("admin API");
        }
    })];
    if opts.fanout {
        roles.push(AbortOnDrop::spawn(herald_fanout::run(
            ctx.clone(),
            shutdown.clone(),
        )));
    }
    if opts.push {
        roles.push(AbortOnDrop::spawn(herald_push::run_with(
            ctx.clone(),
            providers,
            shutdown.clone(),
        )));
    }
    App {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        ctx,
        fcm,
        shutdown,
        dir,
        _roles: roles,
    }
}

/// Spawns with the inbox store wrapped in a [`PanickyInbox`], handed back to the test.
pub async fn spawn_faulty_inbox(
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> (App, Arc<PanickyInbox>) {
    let slot = Arc::new(Mutex::new(None::<Arc<PanickyInbox>>));
    let keep = slot.clone();
    let app = spawn(Options {
        configure: Box::new(configure),
        wrap: Box::new(move |mut ports| {
            let faulty = PanickyInbox::wrap(ports.inbox.clone());
            *keep.lock() = Some(faulty.clone());
            ports.inbox = faulty;
            ports
        }),
        ..Options::default()
    })
    .await;
    let faulty = slot.lock().clone().expect("wrapped");
    (app, faulty)
}

impl App {
    /// Starts the push gateway of a process spawned without it; it runs until `stop`.
    pub fn start_push(&self, stop: CancellationToken) -> AbortOnDrop<()> {
        let providers =
            herald_push::Providers::from_config(&self.ctx.config.push).expect("providers");
        AbortOnDrop::spawn(herald_push::run_with(self.ctx.clone(), providers, stop))
    }

    /// A request with the admin key; the status and JSON body (`Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, body, &[]).await.0
    }

    /// Like [`App::call`] with extra headers; also the response headers.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> ((StatusCode, Value), reqwest::header::HeaderMap) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        ((status, value), headers)
    }

    pub async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let (s, b) = self.call(method, path, Some(body)).await;
        assert!(s.is_success(), "{path}: {s} {b}");
        b
    }

    /// Creates a campaign; its id.
    pub async fn campaign(&self, body: Value) -> String {
        let (s, b) = self.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["id"].as_str().expect("id").to_owned()
    }

    pub async fn get_campaign(&self, id: &str) -> Value {
        let (s, b) = self
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    }

    /// Waits (up to `within`) until the campaign is completed; its final state.
    pub async fn wait_completed(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.get_campaign(id).await;
            if c["status"] == "completed" {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "campaign {id} not completed in {within:?}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `(queued, sent, failed)` delivery counters of a campaign's channel.
    pub async fn deliveries(&self, id: &str, channel: &str) -> (u64, u64, u64) {
        let c = self.get_campaign(id).await;
        let d = &c["deliveries"][channel];
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        (n("queued"), n("sent"), n("failed"))
    }
}

/// Seeds `n` users (`<cohort>00000`...) with the attribute `cohort` and a segment of the same
/// name selecting them.
pub async fn seed_cohort(app: &App, cohort: &str, n: usize) {
    let now = chrono::Utc::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let users: Vec<herald_core::model::User> = chunk
            .iter()
            .map(|i| herald_core::model::User {
                id: format!("{cohort}{i:06}"),
                email: None,
                phone: None,
                attributes: [("cohort".to_owned(), Value::from(cohort))]
                    .into_iter()
                    .collect(),
                created_at: now,
                updated_at: now,
            })
            .collect();
        app.ctx.ports.directory.upsert_users(&users).await.unwrap();
    }
    app.ok(
        Method::PUT,
        &format!("/v1/segments/{cohort}"),
        serde_json::json!({"filter": {"attr": "cohort", "eq": cohort}}),
    )
    .await;
}

/// Polls `check` until it holds, up to `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

const INBOX_COUNT: &str = "SELECT COUNT(*) AS n, COUNT(DISTINCT user_id) AS users \
                           FROM notifications WHERE campaign_id = ?";

/// `(rows, distinct users)` of a campaign in the inbox store, counted by SQL beside the
/// adapter: in the SQLite file under the data directory, or in the MySQL database the app's
/// inbox is configured on.
pub async fn inbox_rows(app: &App, campaign_id: &str) -> (u64, u64) {
    use sqlx::{ConnectOptions, Row};
    let (n, users): (i64, i64) = match &app.ctx.config.backends.inbox {
        Some(url) if url.expose().starts_with("mysql://") => {
            let mut conn = url
                .expose()
                .parse::<sqlx::mysql::MySqlConnectOptions>()
                .expect("MySQL inbox URL")
                .connect()
                .await
                .expect("connect to the MySQL inbox");
            let row = sqlx::query(INBOX_COUNT)
                .bind(campaign_id)
                .fetch_one(&mut conn)
                .await
                .expect("count rows");
            (row.get("n"), row.get("users"))
        }
        _ => return sqlite_inbox_rows(app.dir.path(), campaign_id).await,
    };
    (n as u64, users as u64)
}

/// [`inbox_rows`] in the SQLite inbox of data directory `dir` (another process's).
pub async fn sqlite_inbox_rows(dir: &Path, campaign_id: &str) -> (u64, u64) {
    use sqlx::{ConnectOptions, Row};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("inbox.db"))
        .read_only(true)
        .connect()
        .await
        .expect("open inbox.db");
    let row = sqlx::query(INBOX_COUNT)
        .bind(campaign_id)
        .fetch_one(&mut conn)
        .await
        .expect("count rows");
    (
        row.get::<i64, _>("n") as u64,
        row.get::<i64, _>("users") as u64,
    )
}

// ---------------------------------------------------------------------------------------------
// Fault injectors: the real adapter underneath, a fault on demand on top.

/// How often each (campaign, batch number) was published, over every bus that shares it.
#[derive(Clone, Default)]
pub struct Publications(Arc<Mutex<HashMap<(String, u64), u32>>>);

impl Publications {
    /// How often each batch number of `campaign` was published.
    pub fn of(&self, campaign: &str) -> HashMap<u64, u32> {
        self.0
            .lock()
            .iter()
            .filter(|((c, _), _)| c == campaign)
            .map(|((_, b), n)| (*b, *n))
            .collect()
    }
}

/// The real bus, which can refuse dispatch hints on demand and counts how often each fan-out
/// batch number was published.
pub struct FaultyBus {
    inner: Arc<dyn Bus>,
    pub fail_dispatch: AtomicBool,
    published: Publications,
}

impl FaultyBus {
    pub fn wrap(inner: Arc<dyn Bus>) -> Arc<FaultyBus> {
        Self::counting(inner, Publications::default())
    }

    /// Wraps a node's own bus connection, counting into the test's shared `published`.
    pub fn counting(inner: Arc<dyn Bus>, published: Publications) -> Arc<FaultyBus> {
        Arc::new(FaultyBus {
            inner,
            fail_dispatch: AtomicBool::new(false),
            published,
        })
    }
}

#[async_trait::async_trait]
impl Bus for FaultyBus {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn subscribe(&self, topic: &str, group: &str) -> Result<()> {
        self.inner.subscribe(topic, group).await
    }
    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        if topic == topics::DISPATCH && self.fail_dispatch.load(Ordering::SeqCst) {
            return Err(Error::unavailable(
                "the bus is down (injected)",
                std::io::Error::other("injected"),
            ));
        }
        self.inner.publish(topic, messages).await?;
        if topic == topics::BATCHES {
            let mut published = self.published.0.lock();
            for m in messages {
                let b: FanoutBatch = serde_json::from_slice(&m.payload).expect("a batch");
                *published.entry((b.campaign_id, b.batch_no)).or_default() += 1;
            }
        }
        Ok(())
    }
    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<dyn Consumer>> {
        self.inner.consumer(topic, group).await
    }
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        self.inner.lag(topic, group).await
    }
    async fn replay(
        &self,
        topic: &str,
        group: &str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> Result<u64> {
        self.inner.replay(topic, group, from, dry_run).await
    }
}

/// The real inbox store, whose batched write panics (a handler bug) or fails (a store that
/// cannot take writes) on demand.
pub struct PanickyInbox {
    inner: Arc<dyn InboxStore>,
    pub panic_on_write: AtomicBool,
    pub fail_on_write: AtomicBool,
}

impl PanickyInbox {
    pub fn wrap(inner: Arc<dyn InboxStore>) -> Arc<PanickyInbox> {
        Arc::new(PanickyInbox {
            inner,
            panic_on_write: AtomicBool::new(false),
            fail_on_write: AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl InboxStore for PanickyInbox {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn write_batch(&self, rows: &[Notification]) -> Result<()> {
        if self.panic_on_write.load(Ordering::SeqCst) {
            panic!("injected panic in the inbox write");
        }
        if self.fail_on_write.load(Ordering::SeqCst) {
            return Err(Error::unavailable(
                "database unavailable",
                std::io::Error::other("injected: disk I/O error"),
            ));
        }
        self.inner.write_batch(rows).await
    }
    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<Vec<Notification>> {
        self.inner.page(user_id, before, limit, filter).await
    }
    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        self.inner.after(user_id, after, limit).await
    }
    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        self.inner.get(user_id, key).await
    }
    async fn locate(&self, user_id: &str, id: uuid::Uuid) -> Result<Option<InboxKey>> {
        self.inner.locate(user_id, id).await
    }
    async fn apply(
        &self,
        user_id: &str,
        keys: &[InboxKey],
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<Vec<InboxKey>> {
        self.inner.apply(user_id, keys, action, at).await
    }
    async fn apply_before(
        &self,
        user_id: &str,
        before: InboxKey,
        action: InboxAction,
        at: DateTime<Utc>,
        hidden: &[String],
    ) -> Result<u64> {
        self.inner
            .apply_before(user_id, before, action, at, hidden)
            .await
    }
    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        self.inner.mark_all_read(user_id, at).await
    }
    async fn mark_all_seen(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        self.inner.mark_all_seen(user_id, at).await
    }
    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        self.inner.dismiss(user_id, key, at).await
    }
    async fn counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts> {
        self.inner.counts(user_id, hidden).await
    }
    async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64> {
        self.inner.purge_before(before).await
    }
}
