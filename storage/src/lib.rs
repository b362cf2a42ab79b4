//! Herald's backend adapters: one implementation of each `herald_core::ports` trait per engine,
//! chosen at start from a URL (`sqlite://`, `mysql://`, `redis://`, `kafka://`, `nats://`,
//! `scylla://`, `memory://`), and the
//! Redis read path put in front of the broadcast store.
//!
//! This crate owns SQL and CQL, connection pools, schemas (applied from `migrations/`) and the mapping
//! of engine errors onto `herald_core::Error`. It must not know about HTTP, roles or fan-out
//! policy: adapters store and fetch, the roles decide. Engines are cargo features; a URL whose
//! engine was compiled out fails at start with a message naming the feature.

use herald_core::config::{Config, Secret};
use herald_core::ports::*;
use herald_core::{Error, Ports, Result};
use std::path::Path;
use std::sync::Arc;

#[cfg(any(feature = "sqlite", feature = "mysql"))]
mod delivery_log;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "scylla")]
pub mod scylla;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

pub use url::BackendUrl;

/// The URL configured for a port, or the embedded default under the data directory.
fn url_for(configured: &Option<Secret>, data_dir: &Path, embedded: &str) -> Result<BackendUrl> {
    match configured {
        Some(url) => BackendUrl::parse(url.expose()),
        None => Ok(BackendUrl::embedded(data_dir, embedded)),
    }
}

/// Waits up to `timeout` for the bus members this process is still leaving their groups with
/// (Kafka closes them off the runtime, see `kafka::wait_for_closes`); true if all are done.
/// Called on the way out, after the runtime has stopped.
pub fn wait_for_bus_closes(timeout: std::time::Duration) -> bool {
    #[cfg(feature = "kafka")]
    return kafka::wait_for_closes(timeout);
    #[cfg(not(feature = "kafka"))]
    {
        let _ = timeout;
        true
    }
}

/// Opens every port from the configuration and applies the schemas (idempotent), as
/// `herald serve` and `herald migrate` do on start.
pub async fn open_ports(config: &Config) -> Result<Ports> {
    let dir = &config.data_dir;
    let b = &config.backends;
    let embedded = [
        &b.directory,
        &b.campaigns,
        &b.inbox,
        &b.broadcasts,
        &b.bus,
        &b.deliveries,
        &b.delays,
    ];
    if embedded.iter().any(|url| url.is_none()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::invalid(format!("cannot create data dir {}", dir.display())).with_source(e)
        })?;
    }
    let bus = open_bus(&url_for(&b.bus, dir, "bus")?).await?;
    // Standard subscriptions first, so nothing published before a consumer starts is lost.
    herald_core::topics::declare(bus.as_ref()).await?;
    let broadcasts_url = url_for(&b.broadcasts, dir, "broadcasts")?;
    let (broadcasts, states_beside) = open_broadcasts(&broadcasts_url).await?;
    let broadcast_states = match &b.broadcast_states {
        Some(url) if url.expose() != broadcasts_url.raw => {
            open_broadcast_states(&BackendUrl::parse(url.expose())?).await?
        }
        _ => states_beside,
    };
    Ok(Ports {
        directory: open_directory(&url_for(&b.directory, dir, "directory")?).await?,
        campaigns: open_campaigns(&url_for(&b.campaigns, dir, "campaigns")?).await?,
        inbox: open_inbox(
            &url_for(&b.inbox, dir, "inbox")?,
            inbox_retention(config.inbox.retention_days),
        )
        .await?,
        broadcasts: with_broadcast_cache(b.broadcast_cache.as_ref(), broadcasts).await?,
        broadcast_states,
        preference_cache: open_preference_cache(
            b.preference_cache.as_ref(),
            std::time::Duration::from_secs(config.fanout.preference_ttl_secs),
        )
        .await?,
        bus,
        live: open_live_hub(b.live.as_ref()).await?,
        deliveries: open_deliveries(&url_for(&b.deliveries, dir, "deliveries")?).await?,
        delays: open_delays(&url_for(&b.delays, dir, "delays")?).await?,
        throttle: open_throttle(b.throttle.as_ref()).await?,
    })
}

#[cfg_attr(
    all(feature = "sqlite", feature = "mysql", feature = "redis"),
    allow(dead_code)
)]
fn compiled_out(engine: &str, feature: &str) -> Error {
    Error::invalid(format!(
        "this herald was built without the `{feature}` cargo feature, so `{engine}://` backends \
         are not available; rebuild with `--features {feature}`"
    ))
}

fn unsupported(port: &str, url: &BackendUrl, supported: &str) -> Error {
    Error::invalid(format!(
        "the {port} cannot be stored on `{}://` backends; supported here: {supported}",
        url.scheme
    ))
}

pub async fn open_directory(url: &BackendUrl) -> Result<Arc<dyn Directory>> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteDirectory::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(Arc::new(mysql::MysqlDirectory::open(url).await?));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        _ => Err(unsupported("directory", url, "sqlite, mysql")),
    }
}

pub async fn open_campaigns(url: &BackendUrl) -> Result<Arc<dyn CampaignStore>> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteCampaigns::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(Arc::new(mysql::MysqlCampaigns::open(url).await?));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        _ => Err(unsupported("campaign store", url, "sqlite, mysql")),
    }
}

/// `inbox.retention_days` as a duration (for engines that expire rows themselves).
pub fn inbox_retention(days: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(days) * 86_400)
}

/// The inbox store at `url`; rows are kept `retention` (`inbox.retention_days`): an engine with
/// row TTLs writes them with it, the others are purged by the fan-out's retention job.
pub async fn open_inbox(
    url: &BackendUrl,
    retention: std::time::Duration,
) -> Result<Arc<dyn InboxStore>> {
    // Only the engines with row TTLs use it.
    #[cfg(not(feature = "scylla"))]
    let _ = retention;
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteInbox::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(Arc::new(mysql::MysqlInbox::open(url).await?));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        "scylla" | "cassandra" => {
            #[cfg(feature = "scylla")]
            return Ok(Arc::new(scylla::ScyllaInbox::open(url, retention).await?));
            #[cfg(not(feature = "scylla"))]
            return Err(compiled_out("scylla", "scylla"));
        }
        _ => Err(unsupported("inbox store", url, "sqlite, mysql, scylla")),
    }
}

/// The broadcast store at `url`, and the per-user broadcast states kept beside it (one store
/// of the engine serving both ports).
pub async fn open_broadcasts(
    url: &BackendUrl,
) -> Result<(Arc<dyn BroadcastStore>, Arc<dyn BroadcastStates>)> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(both_broadcast_ports(
                sqlite::SqliteBroadcasts::open(url).await?,
            ));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(both_broadcast_ports(
                mysql::MysqlBroadcasts::open(url).await?,
            ));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        _ => Err(unsupported("broadcast store", url, "sqlite, mysql")),
    }
}

/// One store serving the broadcasts and their per-user states.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn both_broadcast_ports<S: BroadcastStore + BroadcastStates>(
    store: S,
) -> (Arc<dyn BroadcastStore>, Arc<dyn BroadcastStates>) {
    let store = Arc::new(store);
    (store.clone(), store)
}

/// Per-user broadcast states on their own engine (`backends.broadcast_states`).
pub async fn open_broadcast_states(url: &BackendUrl) -> Result<Arc<dyn BroadcastStates>> {
    match url.scheme.as_str() {
        "sqlite" | "mysql" => Ok(open_broadcasts(url).await?.1),
        "scylla" | "cassandra" => {
            #[cfg(feature = "scylla")]
            return Ok(Arc::new(scylla::ScyllaBroadcastStates::open(url).await?));
            #[cfg(not(feature = "scylla"))]
            return Err(compiled_out("scylla", "scylla"));
        }
        _ => Err(unsupported(
            "broadcast state store",
            url,
            "sqlite, mysql, scylla",
        )),
    }
}

pub async fn open_bus(url: &BackendUrl) -> Result<Arc<dyn Bus>> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteBus::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "kafka" => {
            #[cfg(feature = "kafka")]
            return Ok(Arc::new(kafka::KafkaBus::open(url).await?));
            #[cfg(not(feature = "kafka"))]
            return Err(compiled_out("kafka", "kafka"));
        }
        "nats" => {
            #[cfg(feature = "nats")]
            return Ok(Arc::new(nats::NatsBus::open(url).await?));
            #[cfg(not(feature = "nats"))]
            return Err(compiled_out("nats", "nats"));
        }
        _ => Err(unsupported("bus", url, "sqlite, kafka, nats")),
    }
}

/// The configured bus alone, with the standard subscriptions declared (`herald bus ...`).
pub async fn open_configured_bus(config: &Config) -> Result<Arc<dyn Bus>> {
    let bus = open_bus(&url_for(&config.backends.bus, &config.data_dir, "bus")?).await?;
    herald_core::topics::declare(bus.as_ref()).await?;
    Ok(bus)
}

pub async fn open_deliveries(url: &BackendUrl) -> Result<Arc<dyn DeliveryStore>> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteDeliveries::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(Arc::new(mysql::MysqlDeliveries::open(url).await?));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        _ => Err(unsupported("delivery store", url, "sqlite, mysql")),
    }
}

pub async fn open_delays(url: &BackendUrl) -> Result<Arc<dyn DelayStore>> {
    match url.scheme.as_str() {
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(sqlite::SqliteDelays::open(url).await?));
            #[cfg(not(feature = "sqlite"))]
            return Err(compiled_out("sqlite", "sqlite"));
        }
        "mysql" => {
            #[cfg(feature = "mysql")]
            return Ok(Arc::new(mysql::MysqlDelays::open(url).await?));
            #[cfg(not(feature = "mysql"))]
            return Err(compiled_out("mysql", "mysql"));
        }
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(redis::RedisDelays::open(url).await?));
            #[cfg(not(feature = "redis"))]
            return Err(compiled_out("redis", "redis"));
        }
        _ => Err(unsupported("delay store", url, "sqlite, mysql, redis")),
    }
}

/// The preference cache at `url` (in-process when unset); entries expire after `ttl`.
pub async fn open_preference_cache(
    url: Option<&Secret>,
    ttl: std::time::Duration,
) -> Result<Arc<dyn PreferenceCache>> {
    // Swept every TTL: a large fan-out's expired entries do not stay resident.
    let memory = || {
        let cache = Arc::new(memory::MemoryPreferenceCache::new(1_000_000, ttl));
        memory::MemoryPreferenceCache::sweep_every_ttl(&cache);
        cache
    };
    let url = match url {
        None => return Ok(memory()),
        Some(u) => BackendUrl::parse(u.expose())?,
    };
    match url.scheme.as_str() {
        "memory" => Ok(memory()),
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(
                redis::RedisPreferenceCache::open(&url, ttl).await?,
            ));
            #[cfg(not(feature = "redis"))]
            return Err(compiled_out("redis", "redis"));
        }
        _ => Err(unsupported("preference cache", &url, "memory, redis")),
    }
}

/// The live hub at `url` (in-process when unset).
pub async fn open_live_hub(url: Option<&Secret>) -> Result<Arc<dyn LiveHub>> {
    let url = match url {
        None => return Ok(Arc::new(memory::MemoryLiveHub::default())),
        Some(u) => BackendUrl::parse(u.expose())?,
    };
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(memory::MemoryLiveHub::default())),
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(redis::RedisLiveHub::open(&url).await?));
            #[cfg(not(feature = "redis"))]
            return Err(compiled_out("redis", "redis"));
        }
        _ => Err(unsupported("live hub", &url, "memory, redis")),
    }
}

/// `store` behind the broadcast cache at `url`, or as it is when unset.
pub async fn with_broadcast_cache(
    url: Option<&Secret>,
    store: Arc<dyn BroadcastStore>,
) -> Result<Arc<dyn BroadcastStore>> {
    let url = match url {
        None => return Ok(store),
        Some(u) => BackendUrl::parse(u.expose())?,
    };
    match url.scheme.as_str() {
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(
                redis::RedisBroadcastCache::open(&url, store).await?,
            ));
            #[cfg(not(feature = "redis"))]
            return Err(compiled_out("redis", "redis"));
        }
        _ => Err(unsupported("broadcast cache", &url, "redis")),
    }
}

/// The throttle at `url` (in-process when unset).
pub async fn open_throttle(url: Option<&Secret>) -> Result<Arc<dyn Throttle>> {
    let url = match url {
        None => return Ok(Arc::new(memory::MemoryThrottle::default())),
        Some(u) => BackendUrl::parse(u.expose())?,
    };
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(memory::MemoryThrottle::default())),
        "redis" => {
            #[cfg(feature = "redis")]
            return Ok(Arc::new(redis::RedisThrottle::open(&url).await?));
            #[cfg(not(feature = "redis"))]
            return Err(compiled_out("redis", "redis"));
        }
        _ => Err(unsupported("throttle", &url, "memory, redis")),
    }
}

mod migrations;
mod time;

/// The pools' `after_release` check: a connection goes back to its pool only outside a
/// transaction. A future dropped at an `.await` (a client that went away, a timeout, a
/// shutdown) can leave its connection inside one: a `BEGIN` whose answer was never awaited,
/// a rollback still queued. Such a connection would hold SQLite's write lock (or a MySQL
/// transaction's row locks) for whoever takes it next, and make their `BEGIN` fail with
/// "non-zero transaction depth". The ping waits for every command already sent to the
/// connection (so a pending `BEGIN` or `ROLLBACK` has run); a connection still in a
/// transaction then is closed, which ends the transaction on the server, and the pool opens
/// a fresh one.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) async fn release_outside_transaction<C: sqlx::Connection>(
    conn: &mut C,
) -> std::result::Result<bool, sqlx::Error> {
    conn.ping().await?;
    Ok(outside_transaction(conn))
}

/// Whether `conn` is outside a transaction (as far as the commands it has run say); one inside
/// is to be closed, and this warns and counts it.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn outside_transaction<C: sqlx::Connection>(conn: &C) -> bool {
    if conn.is_in_transaction() {
        tracing::warn!("a connection came back inside a transaction; closing it");
        metrics::counter!("herald_storage_connections_closed_in_transaction_total").increment(1);
        return false;
    }
    true
}

/// Maps an engine error onto a core error: unique violations are conflicts, everything else
/// means the backend is unavailable (the cause stays in the source, out of API responses).
#[allow(dead_code)]
pub(crate) fn db_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            Error::conflict("already exists").with_source(e)
        }
        sqlx::Error::RowNotFound => Error::not_found("not found").with_source(e),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::internal("stored data could not be decoded").with_source(e)
        }
        _ => Error::unavailable("database unavailable", e),
    }
}

/// FNV-1a of `s`: a stable, well-spread hash for picking a counter shard or a channel shard
/// (the same on every node and every release, unlike `std`'s randomly keyed hasher).
#[allow(dead_code)]
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A delay store claim's token and the end of its lease.
#[allow(dead_code)]
pub(crate) fn new_claim(
    now: chrono::DateTime<chrono::Utc>,
    lease: std::time::Duration,
) -> (String, chrono::DateTime<chrono::Utc>) {
    (
        herald_core::ids::new_id().to_string(),
        lease_end(now, lease),
    )
}

/// `now + lease`, the latest representable time if that overflows.
#[allow(dead_code)]
pub(crate) fn lease_end(
    now: chrono::DateTime<chrono::Utc>,
    lease: std::time::Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// A stored JSON column that does not parse is a bug or corruption, not a client error.
#[allow(dead_code)]
pub(crate) fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::internal(format!("stored {what} could not be decoded")).with_source(e)
}

/// A stored enum word (a channel, a status, a strategy) back, by its serde name.
#[allow(dead_code)]
pub(crate) fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| corrupt(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn opening_the_ports_can_run_inside_a_spawned_task() {
        let config = Config::default();
        let fut = open_ports(&config);
        assert_send(&fut);
        let url = BackendUrl::embedded(Path::new("/nonexistent"), "x");
        assert_send(&open_directory(&url));
        assert_send(&open_bus(&url));
    }

    #[tokio::test]
    async fn a_scheme_a_port_cannot_use_is_refused_with_the_supported_ones() {
        let url = BackendUrl::parse("scylla://127.0.0.1:9042/herald").unwrap();
        let err = open_directory(&url).await.err().expect("refused");
        assert!(
            err.message.contains("supported here: sqlite, mysql"),
            "{}",
            err.message
        );
        assert!(compiled_out("kafka", "kafka")
            .message
            .contains("--features kafka"));
    }
}
