//! Configuration: compiled defaults, then a TOML file, then `HERALD_` environment variables
//! (nested keys split by `__`, e.g. `HERALD_FANOUT__BATCH_SIZE=500`). Secrets are wrapped in
//! [`Secret`], whose `Debug` never shows the value, so a logged config leaks nothing.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// A string that must never appear in logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment values that look like numbers arrive as numbers; a key is a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Secret(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::U(n) => n.to_string(),
            Any::I(n) => n.to_string(),
            Any::F(n) => n.to_string(),
            Any::B(b) => b.to_string(),
        }))
    }
}

/// Everything `herald` reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP server binds (`HERALD_LISTEN`).
    pub listen: String,
    /// Where embedded backends keep their files (`HERALD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Bearer key of the admin API (`HERALD_ADMIN_KEY`); generated and kept in the data
    /// directory on first start when not set.
    pub admin_key: Option<Secret>,
    pub backends: Backends,
    pub api: ApiConfig,
    pub inbox: InboxConfig,
    pub fanout: FanoutConfig,
    pub strategy: StrategyConfig,
    pub throttle: ThrottleConfig,
    pub push: PushConfig,
    pub analytics: AnalyticsConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./herald-data"),
            admin_key: None,
            backends: Backends::default(),
            api: ApiConfig::default(),
            inbox: InboxConfig::default(),
            fanout: FanoutConfig::default(),
            strategy: StrategyConfig::default(),
            throttle: ThrottleConfig::default(),
            push: PushConfig::default(),
            analytics: AnalyticsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Backend URL per port. Unset means the embedded default: a SQLite file `<port>.db` in the
/// data directory (directory, campaigns, inbox, broadcasts, bus, deliveries, delays), or
/// in-process for the preference cache, live hub and throttle. Schemes: `sqlite://`,
/// `mysql://`, `scylla://`, `redis://`, `kafka://`, `nats://`, `memory://`; which port takes
/// which is said per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backends {
    /// Users, preferences, devices, segments and templates: `sqlite://` or `mysql://`.
    pub directory: Option<Secret>,
    /// Campaigns, their counters, idempotency keys, rules and leases: `sqlite://` or `mysql://`.
    pub campaigns: Option<Secret>,
    /// Personal inbox rows and read watermarks: `sqlite://`, `mysql://` or `scylla://`.
    pub inbox: Option<Secret>,
    /// Broadcasts (stored once, shown to every matching user): `sqlite://` or `mysql://`.
    pub broadcasts: Option<Secret>,
    /// Who read or dismissed which broadcast (one partition per user, read on every inbox
    /// read): unset, kept beside the broadcasts; at scale, beside the inbox on ScyllaDB
    /// (`scylla://`). Nothing is copied when it moves: set it before users act on broadcasts,
    /// or the states kept so far stay behind (read broadcasts show unread again). On SQLite
    /// leave it unset (a file holds one store).
    pub broadcast_states: Option<Secret>,
    /// Preferences read by fan-out batches: in-process (`memory://`) or `redis://`, shared
    /// by every process so a write through any API node is seen at once.
    pub preference_cache: Option<Secret>,
    /// Topics and consumer groups between the roles: `sqlite://` (one machine), `kafka://` or
    /// `nats://` (JetStream).
    pub bus: Option<Secret>,
    /// Live events from fan-out to the inbox nodes' sockets: in-process or `redis://`.
    pub live: Option<Secret>,
    /// Webhook subscriptions, dead letters and processed-message marks of the push gateway.
    pub deliveries: Option<Secret>,
    /// Messages kept until they are due (retry backoff, quiet hours), then published.
    pub delays: Option<Secret>,
    /// Provider rate limits: in-process (each node applies the whole rate) unless shared
    /// through Redis (`redis://`), where every node's sends count against one rate.
    pub throttle: Option<Secret>,
    /// Seed 004's read path: the open broadcasts kept in Redis (`redis://`) in front of the
    /// broadcast store, which stays the source of truth. Unset: read from the store.
    pub broadcast_cache: Option<Secret>,
}

/// The admin API (`herald api`, or `herald serve`): request limits, imports, idempotency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Largest JSON body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Largest NDJSON body of `POST /v1/users/import` and `POST /v1/devices/import`.
    pub max_import_bytes: u64,
    /// Users (or devices) written per batched upsert during an import.
    pub import_batch_size: usize,
    /// Longest NDJSON line of an import (one user or device).
    pub max_import_line_bytes: usize,
    /// How long an import's body may take to arrive, whole (any body that pauses for 30 s is
    /// cut off before that).
    pub import_read_timeout_secs: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_hours: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_import_bytes: 4 * 1024 * 1024 * 1024,
            import_batch_size: 2000,
            max_import_line_bytes: 1024 * 1024,
            import_read_timeout_secs: 3600,
            idempotency_ttl_hours: 24,
        }
    }
}

/// The inbox (`herald inbox`, or `herald serve`): tokens and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InboxConfig {
    /// HS256 secret of inbox tokens; generated and kept like the admin key when not set.
    pub token_secret: Option<Secret>,
    /// Lifetime of tokens minted by `POST /v1/users/{id}/token`.
    pub token_ttl_secs: u64,
    /// Personal rows older than this are purged.
    pub retention_days: u32,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            token_secret: None,
            token_ttl_secs: 24 * 3600,
            retention_days: 90,
        }
    }
}

/// Fan-out (`herald fanout`, or `herald serve`): batches, workers, retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FanoutConfig {
    /// Users per fan-out batch; unset means 10000 on the embedded bus and 1000 on NATS or
    /// Kafka, whose messages are capped near 1 MB by default (a batch travels as one message
    /// of its user ids). A larger batch costs fewer statements per user: each batch is one
    /// users' read, one preferences' read, one inbox write and one progress record.
    pub batch_size: Option<u32>,
    /// Recipients per channel message (push, email, SMS, webhook): a batch larger than this
    /// publishes each channel's items in pieces of this many of its users, so the messages,
    /// the push gateway's claims and its retries stay this size whatever the batch size.
    pub message_users: u32,
    /// Batch workers per process; unset means twice the number of cores.
    pub workers: Option<usize>,
    /// How long an in-process preference cache (`memory://`) trusts an entry. A preference
    /// written through this process's API invalidates its entry at once; one written through
    /// another process (roles run apart) is seen by the next batch after at most this long.
    pub preference_ttl_secs: u64,
    /// A batch that fails this many times (a store down for long, a bug) is given up:
    /// counted in `progress.failed_batches` with its reason, so its campaign still ends.
    pub max_batch_attempts: u32,
}

/// Users per batch on the embedded bus: measured in loadtest/README.md ("The fan-out's batch
/// size"), a batch costs about 5.5 ms of CPU whatever its size, so 10,000 take the 1M fan-out
/// from about 120,000 to about 200,000 users/s on two cores.
const EMBEDDED_BATCH_SIZE: u32 = 10_000;
/// Users per batch on NATS or Kafka, whose default message caps (about 1 MB) a batch of
/// 10,000 long user ids (up to 128 bytes each) would pass.
const DISTRIBUTED_BATCH_SIZE: u32 = 1_000;

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            batch_size: None,
            message_users: 1000,
            workers: None,
            preference_ttl_secs: 10,
            max_batch_attempts: 10,
        }
    }
}

/// Audience-size thresholds of seed 004's decision matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategyConfig {
    /// Audiences above this are batched with `throttle.users_per_s`.
    pub batch_max: u64,
    /// Audiences above this use `throttle.large_users_per_s`.
    pub throttled_max: u64,
    /// Audiences above this are stored once as a broadcast.
    pub broadcast_threshold: u64,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            batch_max: 1_000,
            throttled_max: 100_000,
            broadcast_threshold: 1_000_000,
        }
    }
}

/// Fan-out pacing in users per second; 0 lifts the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Pace of `throttled` campaigns up to `strategy.throttled_max` users.
    pub users_per_s: u32,
    /// Pace of `throttled` campaigns above `strategy.throttled_max` users.
    pub large_users_per_s: u32,
    /// Pace of a broadcast's background sends (push, email, SMS, webhooks) per user.
    pub background_users_per_s: u32,
    /// Channel queue depth above which the batcher slows down.
    pub max_queue_depth: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            users_per_s: 200_000,
            large_users_per_s: 50_000,
            background_users_per_s: 20_000,
            max_queue_depth: 200,
        }
    }
}

/// The delivery log and the health status (`/v1/analytics/…`, `/v1/health/status`): how
/// long the log is kept and where a channel turns `degraded` or `failing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyticsConfig {
    /// Days the per-minute delivery log (and its failure reasons) is kept.
    pub retention_days: u32,
    /// Minutes of the delivery log (the current one included) the health status judges
    /// failure rates, dead letters, latency and send time on.
    pub health_window_minutes: u32,
    /// A consumer group this many messages behind (or more) is `degraded` (seed 000's warning
    /// level is 1,000).
    pub lag_degraded: u64,
    /// A consumer group this many messages behind is `failing`.
    pub lag_failing: u64,
    /// A channel failing this share (0–1) of the sends that reached its provider over the
    /// window is `degraded` (recipients with no device or address are not counted).
    pub failure_rate_degraded: f64,
    /// A channel failing this share (0–1) of its sends over the window is `failing`.
    pub failure_rate_failing: f64,
    /// Sends a channel needs in the window before its failure rate is judged (a single failed
    /// send of a quiet channel is not an outage).
    pub min_sends: u64,
    /// A channel whose p95 time from campaign start to provider acceptance over the window is
    /// above this many seconds is `degraded`.
    pub latency_p95_degraded_secs: f64,
    /// A channel whose sends (provider calls, with their lane's rate pacing) took longer than
    /// this many seconds per channel message on average over the window is `degraded`.
    pub provider_degraded_secs: f64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            health_window_minutes: 5,
            lag_degraded: 1_000,
            lag_failing: 100_000,
            failure_rate_degraded: 0.05,
            failure_rate_failing: 0.25,
            min_sends: 20,
            latency_p95_degraded_secs: 300.0,
            provider_degraded_secs: 2.0,
        }
    }
}

/// The push gateway (`herald push`): retries, token hygiene and one section per provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// Sends of one recipient tried at most this many times before the dead-letter queue.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with full jitter, capped at `backoff_max_ms`.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// Devices not used for this long are removed by the stale-token job.
    pub token_ttl_days: u32,
    /// How often the stale-token job runs (its first run is one interval after start).
    pub cleanup_interval_secs: u64,
    /// Channel messages each channel consumer works on at once.
    pub consumers_per_channel: usize,
    pub fcm: FcmConfig,
    pub apns: ApnsConfig,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    pub webhook: WebhookConfig,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            token_ttl_days: 90,
            cleanup_interval_secs: 3600,
            consumers_per_channel: 4,
            fcm: FcmConfig::default(),
            apns: ApnsConfig::default(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            webhook: WebhookConfig::default(),
        }
    }
}

/// Limits every provider has: requests in flight, requests per second (0 = unlimited) and the
/// timeout of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderLimits {
    /// Requests to the provider in flight at most.
    pub concurrency: usize,
    /// Sends per second at most (shared by every gateway through `backends.throttle`); 0 is
    /// unlimited.
    pub rate_per_s: u32,
    /// Timeout of one request; a request that runs out is retried.
    pub timeout_ms: u64,
}

impl ProviderLimits {
    const fn new(concurrency: usize, rate_per_s: u32, timeout_ms: u64) -> Self {
        Self {
            concurrency,
            rate_per_s,
            timeout_ms,
        }
    }
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self::new(100, 0, 10_000)
    }
}

/// Firebase Cloud Messaging, HTTP v1 API (devices of platform `fcm` and `web`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com`; tests point it at a fake server.
    pub endpoint: String,
    /// Service-account JSON (private key, client email, token_uri). Unset: FCM sends go to the
    /// dead-letter queue as "not configured", to be replayed once it is.
    pub credentials_file: Option<PathBuf>,
    /// Defaults to the `project_id` of the credentials file.
    pub project_id: Option<String>,
    /// Sends grouped per provider call: up to `batch_size` tokens or `batch_window_ms`.
    pub batch_size: usize,
    /// How long a group waits to fill before it is sent.
    pub batch_window_ms: u64,
    /// Speak HTTP/2 without TLS (h2c) to an `http://` endpoint; `https://` negotiates HTTP/2.
    pub h2c: bool,
    /// Connections (HTTP/2) or connection pools (HTTP/1.1) the sends are spread over.
    pub connections: usize,
    /// Extra CA certificates (PEM) trusted for an `https://` endpoint besides the public
    /// roots: a private FCM-compatible endpoint, or a test server.
    pub ca_file: Option<PathBuf>,
    #[serde(flatten)]
    pub limits: ProviderLimits,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://fcm.googleapis.com".into(),
            credentials_file: None,
            project_id: None,
            batch_size: 500,
            batch_window_ms: 100,
            h2c: false,
            connections: 4,
            ca_file: None,
            // FCM's default quota is 600,000 messages a minute per project.
            limits: ProviderLimits::new(1_000, 10_000, 10_000),
        }
    }
}

/// Apple Push Notification service over HTTP/2 with an ES256 provider token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com` (sandbox: `https://api.sandbox.push.apple.com`); an
    /// `http://` endpoint is spoken to as h2c.
    pub endpoint: String,
    /// The `.p8` signing key; unset means APNs is not configured.
    pub key_file: Option<PathBuf>,
    /// The key's id (10 characters, from the Apple developer account).
    pub key_id: Option<String>,
    /// The team id of the developer account.
    pub team_id: Option<String>,
    /// `apns-topic`: the app's bundle id.
    pub topic: Option<String>,
    #[serde(flatten)]
    pub limits: ProviderLimits,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://api.push.apple.com".into(),
            key_file: None,
            key_id: None,
            team_id: None,
            topic: None,
            limits: ProviderLimits::new(1_000, 0, 10_000),
        }
    }
}

/// Email over SMTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    /// `smtp://user:pass@host:587` (STARTTLS), `smtps://...:465`, or
    /// `smtp://127.0.0.1:2525?tls=none` for a local sink. Unset means email is not configured.
    pub smtp_url: Option<Secret>,
    /// The `From` address.
    pub from: String,
    #[serde(flatten)]
    pub limits: ProviderLimits,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Herald <herald@localhost>".into(),
            limits: ProviderLimits::new(16, 0, 30_000),
        }
    }
}

/// SMS over a Twilio-style HTTP API (form POST, basic auth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmsConfig {
    /// Base URL of the Twilio-style API (`https://api.twilio.com`).
    pub endpoint: String,
    /// Unset means SMS is not configured.
    pub account_sid: Option<String>,
    /// The API's auth token (the basic-auth password).
    pub auth_token: Option<Secret>,
    /// The sender number (`From`).
    pub from: Option<String>,
    #[serde(flatten)]
    pub limits: ProviderLimits,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://api.twilio.com".into(),
            account_sid: None,
            auth_token: None,
            from: None,
            limits: ProviderLimits::new(50, 100, 10_000),
        }
    }
}

/// Webhook subscribers (`PUT /v1/webhooks/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    #[serde(flatten)]
    pub limits: ProviderLimits,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            limits: ProviderLimits::new(200, 0, 10_000),
        }
    }
}

/// Logging (`tracing`): what is written and in which format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info,herald_api=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// A configuration that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then the TOML file at `path` (it must exist if given), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(path)
            .extract()
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Users per fan-out batch: `fanout.batch_size`, or the default of the bus (see there).
    pub fn fanout_batch_size(&self) -> u32 {
        self.fanout.batch_size.unwrap_or_else(|| {
            let bus = self.backends.bus.as_ref().map(Secret::expose);
            match bus {
                Some(url) if url.starts_with("nats:") || url.starts_with("kafka:") => {
                    DISTRIBUTED_BATCH_SIZE
                }
                _ => EMBEDDED_BATCH_SIZE,
            }
        })
    }

    /// The layered sources, for callers that add their own layer on top.
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            fig = fig.merge(Toml::file_exact(path));
        }
        // HERALD_CONFIG names the file itself; HERALD_TEST_* belong to the test suites.
        fig.merge(
            Env::prefixed("HERALD_")
                .split("__")
                .filter(|k| k.as_str() != "config" && !k.as_str().starts_with("test_")),
        )
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .fanout
            .batch_size
            .is_some_and(|n| n == 0 || n > 100_000)
        {
            return Err(ConfigError(
                "fanout.batch_size must be between 1 and 100000".into(),
            ));
        }
        if self.fanout.message_users == 0 || self.fanout.message_users > 100_000 {
            return Err(ConfigError(
                "fanout.message_users must be between 1 and 100000".into(),
            ));
        }
        if self.api.import_batch_size == 0 {
            return Err(ConfigError(
                "api.import_batch_size must be at least 1".into(),
            ));
        }
        if !(self.strategy.batch_max <= self.strategy.throttled_max
            && self.strategy.throttled_max <= self.strategy.broadcast_threshold)
        {
            return Err(ConfigError(
                "strategy thresholds must satisfy batch_max <= throttled_max <= broadcast_threshold"
                    .into(),
            ));
        }
        let a = &self.analytics;
        if a.retention_days == 0 || a.health_window_minutes == 0 {
            return Err(ConfigError(
                "analytics.retention_days and analytics.health_window_minutes must be at least 1"
                    .into(),
            ));
        }
        if a.lag_degraded == 0 || a.lag_failing < a.lag_degraded {
            return Err(ConfigError(
                "analytics thresholds must satisfy 1 <= lag_degraded <= lag_failing".into(),
            ));
        }
        let rate = |r: f64| r > 0.0 && r <= 1.0;
        if !(rate(a.failure_rate_degraded)
            && rate(a.failure_rate_failing)
            && a.failure_rate_degraded <= a.failure_rate_failing)
        {
            return Err(ConfigError(
                "analytics thresholds must satisfy 0 < failure_rate_degraded <= failure_rate_failing <= 1"
                    .into(),
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(a.latency_p95_degraded_secs) || !positive(a.provider_degraded_secs) {
            return Err(ConfigError(
                "analytics.latency_p95_degraded_secs and analytics.provider_degraded_secs must be above 0"
                    .into(),
            ));
        }
        if self.push.max_attempts == 0 {
            return Err(ConfigError("push.max_attempts must be at least 1".into()));
        }
        if self.push.fcm.batch_size == 0 || self.push.fcm.batch_size > 10_000 {
            return Err(ConfigError(
                "push.fcm.batch_size must be between 1 and 10000".into(),
            ));
        }
        if self.push.consumers_per_channel == 0 {
            return Err(ConfigError(
                "push.consumers_per_channel must be at least 1".into(),
            ));
        }
        if let Some(key) = &self.admin_key {
            if key.expose().len() < 16 {
                return Err(ConfigError(
                    "admin_key must be at least 16 characters".into(),
                ));
            }
        }
        if let Some(secret) = &self.inbox.token_secret {
            // Anyone who knows or guesses it reads every inbox: an HS256 key needs 256 bits.
            if secret.expose().len() < MIN_TOKEN_SECRET_BYTES {
                return Err(ConfigError(format!(
                    "inbox.token_secret must be at least {MIN_TOKEN_SECRET_BYTES} bytes \
                     (HERALD_INBOX__TOKEN_SECRET); generate one with `openssl rand -hex 32`"
                )));
            }
        }
        Ok(())
    }
}

/// The shortest inbox token secret accepted (an HS256 key of 256 bits).
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

#[cfg(test)]
// figment's Jail closures return its large error type; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_defaults_to_ten_thousand_on_the_embedded_bus_and_a_thousand_on_nats_or_kafka()
    {
        let mut cfg = Config::default();
        assert_eq!(cfg.fanout_batch_size(), 10_000);
        cfg.backends.bus = Some(Secret::new("sqlite:///var/lib/herald/bus.db"));
        assert_eq!(cfg.fanout_batch_size(), 10_000);
        for url in ["nats://nats:4222", "kafka://k1:9092,k2:9092"] {
            cfg.backends.bus = Some(Secret::new(url));
            assert_eq!(cfg.fanout_batch_size(), 1_000, "{url}");
        }
        // Set, it is the size on every bus.
        cfg.fanout.batch_size = Some(2_500);
        assert_eq!(cfg.fanout_batch_size(), 2_500);
        cfg.backends.bus = None;
        assert_eq!(cfg.fanout_batch_size(), 2_500);
        cfg.fanout.batch_size = Some(0);
        assert!(cfg.validate().is_err());
        cfg.fanout.batch_size = None;
        cfg.fanout.message_users = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                "listen = \"0.0.0.0:9000\"\n[fanout]\nbatch_size = 500\nworkers = 3\n",
            )?;
            jail.set_env("HERALD_FANOUT__BATCH_SIZE", "250");
            jail.set_env("HERALD_DATA_DIR", "/tmp/hd");
            jail.set_env("HERALD_ADMIN_KEY", "1234567890123456");
            jail.set_env("HERALD_CONFIG", "ignored-here");
            jail.set_env("HERALD_TEST_MYSQL_URL", "mysql://ignored");
            let cfg = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(cfg.listen, "0.0.0.0:9000");
            assert_eq!(cfg.fanout.batch_size, Some(250));
            assert_eq!(cfg.fanout.workers, Some(3));
            assert_eq!(cfg.data_dir, PathBuf::from("/tmp/hd"));
            // A numeric-looking key is still a string.
            assert_eq!(
                cfg.admin_key.as_ref().map(Secret::expose),
                Some("1234567890123456")
            );
            assert_eq!(cfg.inbox.retention_days, 90);
            Ok(())
        });
    }

    #[test]
    fn provider_settings_nest_under_push_in_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_PUSH__FCM__ENDPOINT", "http://127.0.0.1:9999");
            jail.set_env("HERALD_PUSH__FCM__CREDENTIALS_FILE", "/tmp/sa.json");
            jail.set_env("HERALD_PUSH__FCM__PROJECT_ID", "demo");
            jail.set_env("HERALD_PUSH__FCM__CONCURRENCY", "64");
            jail.set_env("HERALD_PUSH__SMS__AUTH_TOKEN", "12345");
            jail.set_env("HERALD_PUSH__MAX_ATTEMPTS", "3");
            let cfg = Config::load(None).expect("loads");
            assert_eq!(cfg.push.fcm.endpoint, "http://127.0.0.1:9999");
            assert_eq!(
                cfg.push.fcm.credentials_file,
                Some(PathBuf::from("/tmp/sa.json"))
            );
            assert_eq!(cfg.push.fcm.project_id.as_deref(), Some("demo"));
            assert_eq!(cfg.push.fcm.limits.concurrency, 64);
            assert_eq!(cfg.push.fcm.limits.timeout_ms, 10_000);
            assert_eq!(
                cfg.push.sms.auth_token.as_ref().map(Secret::expose),
                Some("12345")
            );
            assert_eq!(cfg.push.max_attempts, 3);
            Ok(())
        });
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        figment::Jail::expect_with(|_jail| {
            let cfg = Config::load(None).expect("loads");
            assert_eq!(cfg, Config::default());
            assert_eq!(cfg.listen, "127.0.0.1:8080");
            assert!(cfg.validate().is_ok());
            Ok(())
        });
    }

    #[test]
    fn the_example_config_in_deploy_lists_exactly_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                include_str!("../../deploy/herald.example.toml"),
            )?;
            let cfg = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            assert_eq!(cfg, Config::default());
            Ok(())
        });
    }

    #[test]
    fn the_distributed_example_puts_every_store_but_the_bus_on_mysql_and_redis() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                include_str!("../../deploy/herald.distributed.toml"),
            )?;
            let cfg = Config::load(Some(Path::new("herald.toml"))).expect("loads");
            let b = &cfg.backends;
            let scheme = |s: &Option<Secret>| {
                s.as_ref()
                    .map(|s| s.expose().split("://").next().unwrap_or("").to_owned())
            };
            for store in [
                &b.directory,
                &b.campaigns,
                &b.inbox,
                &b.broadcasts,
                &b.deliveries,
                &b.delays,
            ] {
                assert_eq!(scheme(store).as_deref(), Some("mysql"));
            }
            for shared in [
                &b.preference_cache,
                &b.live,
                &b.throttle,
                &b.broadcast_cache,
            ] {
                assert_eq!(scheme(shared).as_deref(), Some("redis"));
            }
            assert_eq!(scheme(&b.bus).as_deref(), Some("kafka"));
            Ok(())
        });
    }

    /// deploy/compose/herald.toml and deploy/kubernetes/herald.toml, with the environment
    /// deploy/compose.yaml and the Kubernetes Secret give them, load and validate: every store
    /// on MySQL, the bus on Kafka, the rest on Redis, JSON logs.
    #[test]
    fn the_compose_and_kubernetes_configs_load_with_their_environment() {
        for (name, file) in [
            ("compose", include_str!("../../deploy/compose/herald.toml")),
            (
                "kubernetes",
                include_str!("../../deploy/kubernetes/herald.toml"),
            ),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("herald.toml", file)?;
                jail.set_env("HERALD_ADMIN_KEY", "an-admin-key-0123456789abcdef");
                jail.set_env(
                    "HERALD_INBOX__TOKEN_SECRET",
                    "a-token-secret-0123456789abcdef-0123456789",
                );
                let db = "mysql://herald:pw@mariadb:3306/herald";
                for store in [
                    "DIRECTORY",
                    "CAMPAIGNS",
                    "INBOX",
                    "BROADCASTS",
                    "DELIVERIES",
                    "DELAYS",
                ] {
                    jail.set_env(format!("HERALD_BACKENDS__{store}"), db);
                }
                let cfg = Config::load(Some(Path::new("herald.toml"))).expect(name);
                cfg.validate().expect(name);
                let b = &cfg.backends;
                let scheme = |s: &Option<Secret>| {
                    s.as_ref()
                        .map(|s| s.expose().split("://").next().unwrap_or("").to_owned())
                };
                for store in [
                    &b.directory,
                    &b.campaigns,
                    &b.inbox,
                    &b.broadcasts,
                    &b.deliveries,
                    &b.delays,
                ] {
                    assert_eq!(scheme(store).as_deref(), Some("mysql"), "{name}");
                }
                for shared in [
                    &b.preference_cache,
                    &b.live,
                    &b.throttle,
                    &b.broadcast_cache,
                ] {
                    assert_eq!(scheme(shared).as_deref(), Some("redis"), "{name}");
                }
                assert_eq!(scheme(&b.bus).as_deref(), Some("kafka"), "{name}");
                assert_eq!(cfg.log.format, "json", "{name}");
                assert_eq!(cfg.listen, "0.0.0.0:8080", "{name}");
                Ok(())
            });
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        figment::Jail::expect_with(|_jail| {
            assert!(Config::load(Some(Path::new("nope.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let cfg = Config {
            admin_key: Some(Secret::new("super-secret-admin-key")),
            ..Config::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
    }
}
