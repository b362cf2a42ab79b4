//! Shared helpers of the conformance suites: engine factories and unique names.
//!
//! SQLite stores get a fresh file under cargo's per-target temp dir. Distributed engines are
//! used when their `HERALD_TEST_*_URL` variable is set, and skipped (the case returns at once)
//! when it is not; `.ci/run` sets them all, so there a missing service fails the run.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use herald_core::ports::*;
use herald_storage::BackendUrl;
use std::path::PathBuf;
use std::sync::Arc;

#[path = "../support/mysql.rs"]
mod mysql_support;

/// How long the inbox stores keep rows in the suites: the longest a CQL TTL can be, so the
/// cases' fixed dates are within it on every engine.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(7_300 * 86_400);

/// A random prefix that keeps one case's rows apart from every other case's.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid RFC 3339")
        .with_timezone(&Utc)
}

/// A URL to a new SQLite file that no other test uses.
pub fn fresh_sqlite_url(name: &str) -> BackendUrl {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("herald-conformance");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}-{}.db", run_id()));
    BackendUrl::parse(&format!("sqlite://{}", file.display())).expect("url")
}

/// The URL of a distributed engine under test, if configured.
pub fn env_url(var: &str) -> Option<BackendUrl> {
    let raw = std::env::var(var).ok().filter(|v| !v.is_empty())?;
    Some(BackendUrl::parse(&raw).unwrap_or_else(|e| panic!("{var}: {e}")))
}

pub async fn sqlite_directory() -> Option<Arc<dyn Directory>> {
    Some(
        herald_storage::open_directory(&fresh_sqlite_url("directory"))
            .await
            .expect("open SQLite directory"),
    )
}

pub async fn mysql_directory() -> Option<Arc<dyn Directory>> {
    let url = env_url("HERALD_TEST_MYSQL_URL")?;
    Some(
        herald_storage::open_directory(&url)
            .await
            .unwrap_or_else(|e| panic!("HERALD_TEST_MYSQL_URL is set but MySQL is unusable: {e}")),
    )
}

pub async fn sqlite_campaigns() -> Option<Arc<dyn CampaignStore>> {
    Some(
        herald_storage::open_campaigns(&fresh_sqlite_url("campaigns"))
            .await
            .expect("open SQLite campaign store"),
    )
}

pub async fn sqlite_inbox() -> Option<Arc<dyn InboxStore>> {
    Some(
        herald_storage::open_inbox(&fresh_sqlite_url("inbox"), RETENTION)
            .await
            .expect("open SQLite inbox store"),
    )
}

pub async fn sqlite_broadcasts() -> Option<Arc<dyn BroadcastStore>> {
    Some(
        herald_storage::open_broadcasts(&fresh_sqlite_url("broadcasts"))
            .await
            .expect("open SQLite broadcast store")
            .0,
    )
}

pub async fn sqlite_broadcast_states() -> Option<Arc<dyn BroadcastStates>> {
    Some(
        herald_storage::open_broadcast_states(&fresh_sqlite_url("broadcasts"))
            .await
            .expect("open SQLite broadcast states"),
    )
}

pub async fn sqlite_deliveries() -> Option<Arc<dyn DeliveryStore>> {
    Some(
        herald_storage::open_deliveries(&fresh_sqlite_url("deliveries"))
            .await
            .expect("open SQLite delivery store"),
    )
}

pub async fn sqlite_delays() -> Option<Arc<dyn DelayStore>> {
    Some(
        herald_storage::open_delays(&fresh_sqlite_url("delays"))
            .await
            .expect("open SQLite delay store"),
    )
}

/// A new, empty MySQL database of its own (cases that list or purge a whole store cannot
/// share one), when `HERALD_TEST_MYSQL_URL` is set.
pub async fn fresh_mysql_url(prefix: &str) -> Option<BackendUrl> {
    let raw = mysql_support::fresh_mysql_database(prefix).await?;
    Some(BackendUrl::parse(&raw).expect("MySQL URL"))
}

pub async fn mysql_delays() -> Option<Arc<dyn DelayStore>> {
    let url = fresh_mysql_url("herald_delays").await?;
    Some(
        herald_storage::open_delays(&url)
            .await
            .expect("open MySQL delay store"),
    )
}

pub async fn mysql_campaigns() -> Option<Arc<dyn CampaignStore>> {
    let url = fresh_mysql_url("herald_campaigns").await?;
    Some(
        herald_storage::open_campaigns(&url)
            .await
            .expect("open MySQL campaign store"),
    )
}

/// The inbox on the ScyllaDB/Cassandra cluster of `HERALD_TEST_SCYLLA_URL` (its keyspace is
/// created if needed; cases keep apart by user ids).
pub async fn scylla_inbox() -> Option<Arc<dyn InboxStore>> {
    let url = env_url("HERALD_TEST_SCYLLA_URL")?;
    Some(
        herald_storage::open_inbox(&url, RETENTION)
            .await
            .expect("open the ScyllaDB inbox store"),
    )
}

pub async fn mysql_inbox() -> Option<Arc<dyn InboxStore>> {
    let url = fresh_mysql_url("herald_inbox").await?;
    Some(
        herald_storage::open_inbox(&url, RETENTION)
            .await
            .expect("open MySQL inbox store"),
    )
}

pub async fn mysql_broadcasts() -> Option<Arc<dyn BroadcastStore>> {
    let url = fresh_mysql_url("herald_broadcasts").await?;
    Some(
        herald_storage::open_broadcasts(&url)
            .await
            .expect("open MySQL broadcast store")
            .0,
    )
}

pub async fn mysql_broadcast_states() -> Option<Arc<dyn BroadcastStates>> {
    let url = fresh_mysql_url("herald_broadcasts").await?;
    Some(
        herald_storage::open_broadcast_states(&url)
            .await
            .expect("open MySQL broadcast states"),
    )
}

/// Per-user broadcast states on the cluster of `HERALD_TEST_SCYLLA_URL`.
pub async fn scylla_broadcast_states() -> Option<Arc<dyn BroadcastStates>> {
    let url = env_url("HERALD_TEST_SCYLLA_URL")?;
    Some(
        herald_storage::open_broadcast_states(&url)
            .await
            .expect("open the ScyllaDB broadcast states"),
    )
}

pub async fn mysql_deliveries() -> Option<Arc<dyn DeliveryStore>> {
    let url = fresh_mysql_url("herald_deliveries").await?;
    Some(
        herald_storage::open_deliveries(&url)
            .await
            .expect("open MySQL delivery store"),
    )
}

/// The URL of `HERALD_TEST_REDIS_URL` with a key prefix no other case uses, if set.
pub fn redis_test_url() -> Option<herald_core::config::Secret> {
    let raw = std::env::var("HERALD_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let sep = if raw.contains('?') { '&' } else { '?' };
    Some(herald_core::config::Secret::new(format!(
        "{raw}{sep}prefix=herald-test-{}",
        run_id()
    )))
}

/// A delay store under a key prefix of its own on the server of `HERALD_TEST_REDIS_URL`.
pub async fn redis_delays() -> Option<Arc<dyn DelayStore>> {
    let url = BackendUrl::parse(redis_test_url()?.expose()).unwrap();
    Some(
        herald_storage::open_delays(&url)
            .await
            .unwrap_or_else(|e| panic!("HERALD_TEST_REDIS_URL is set but Redis is unusable: {e}")),
    )
}
