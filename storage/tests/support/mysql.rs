//! A fresh MySQL database per case, on the server of `HERALD_TEST_MYSQL_URL` (shared by the
//! storage conformance suites and the end-to-end suites).
#![allow(dead_code)]

/// A new, empty MySQL database on the server of `HERALD_TEST_MYSQL_URL` (named `prefix` and a
/// random suffix), as a URL; `None` when the variable is not set.
pub async fn fresh_mysql_database(prefix: &str) -> Option<String> {
    use sqlx::{ConnectOptions, Connection};
    let raw = std::env::var("HERALD_TEST_MYSQL_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let db = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = raw
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .expect("HERALD_TEST_MYSQL_URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("HERALD_TEST_MYSQL_URL is set but MySQL is unusable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await
        .expect("create a database");
    conn.close().await.ok();
    let (server, _) = raw
        .rsplit_once('/')
        .expect("HERALD_TEST_MYSQL_URL names a database");
    Some(format!("{server}/{db}"))
}

/// Puts the stores of an end-to-end test on the engines `HERALD_TEST_BACKENDS` names, so the
/// same suites run on the embedded and on the distributed adapters:
/// - unset or `embedded`: SQLite files under the test's data directory, as `herald serve`;
/// - `distributed`: every store Herald has a MySQL adapter for (directory, campaigns, inbox,
///   broadcasts, deliveries, delays) in one database on the server of `HERALD_TEST_MYSQL_URL`,
///   and the preference cache, the live hub, the throttle and the broadcast cache on the Redis
///   of `HERALD_TEST_REDIS_URL` (under a key prefix of the test's own);
/// - and, whatever the stores, `HERALD_TEST_BUS_URL` (`kafka://...`, `nats://...`) puts the bus
///   on that broker, under a topic prefix of the test's own.
///
/// The database and the key prefix are named after the data directory, so processes of one
/// test that share a data directory (a restart, a second node) share them too, as they would
/// share the SQLite files. Stores a test configured itself are left as they are.
/// FNV-1a of a string.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub async fn configure_backends(config: &mut herald_core::config::Config) {
    use herald_core::config::Secret;
    use sqlx::{ConnectOptions, Connection};
    // HERALD_TEST_BUS_URL (kafka://, nats://) puts the bus there, with whatever stores: each
    // test gets its own name prefix on the shared broker.
    if let Some(bus) = std::env::var("HERALD_TEST_BUS_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        if config.backends.bus.is_none() {
            let sep = if bus.contains('?') { '&' } else { '?' };
            let prefix = format!("t{:016x}", fnv1a(&config.data_dir.to_string_lossy()));
            config.backends.bus = Some(Secret::new(format!("{bus}{sep}prefix={prefix}")));
        }
    }
    match std::env::var("HERALD_TEST_BACKENDS").ok().as_deref() {
        None | Some("") | Some("embedded") => return,
        Some("distributed") => {}
        Some(other) => panic!("HERALD_TEST_BACKENDS={other}: expected `embedded` or `distributed`"),
    }
    let raw = std::env::var("HERALD_TEST_MYSQL_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("HERALD_TEST_BACKENDS=distributed needs HERALD_TEST_MYSQL_URL");
    let redis = std::env::var("HERALD_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("HERALD_TEST_BACKENDS=distributed needs HERALD_TEST_REDIS_URL");
    // Stable for the data directory, distinct between tests.
    let h = fnv1a(&config.data_dir.to_string_lossy());
    let db = format!("herald_e2e_{h:016x}");
    let mut conn = raw
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .expect("HERALD_TEST_MYSQL_URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("HERALD_TEST_MYSQL_URL is set but MySQL is unusable: {e}"));
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4"
    ))
    .execute(&mut conn)
    .await
    .expect("create a database");
    conn.close().await.ok();
    let (server, _) = raw
        .rsplit_once('/')
        .expect("HERALD_TEST_MYSQL_URL names a database");
    let url = format!("{server}/{db}");
    let b = &mut config.backends;
    for store in [
        &mut b.directory,
        &mut b.campaigns,
        &mut b.inbox,
        &mut b.broadcasts,
        &mut b.deliveries,
        &mut b.delays,
    ] {
        if store.is_none() {
            *store = Some(Secret::new(url.clone()));
        }
    }
    let sep = if redis.contains('?') { '&' } else { '?' };
    let redis = format!("{redis}{sep}prefix=herald-test-{h:016x}");
    for shared in [
        &mut b.preference_cache,
        &mut b.live,
        &mut b.throttle,
        &mut b.broadcast_cache,
    ] {
        if shared.is_none() {
            *shared = Some(Secret::new(redis.clone()));
        }
    }
}
