//! MySQL 8 / MariaDB 10.11 adapters (the `mysql://` scheme): the directory, the campaign,
//! inbox, broadcast, delivery and delay stores.
//!
//! This module owns what every MySQL port shares: opening a pool from a [`BackendUrl`] (utf8mb4,
//! strict SQL mode, bounded connection count, timeouts), retrying a transaction that failed
//! for a transient reason (a deadlock, a lock wait timeout, a lost connection), and the
//! migration runner.
//!
//! URL: `mysql://user:password@host:3306/database[?max_connections=N][&ssl-mode=...]`.
//! `max_connections` (Herald's own parameter, taken out before the rest goes to sqlx) sizes
//! the pool of each store opened on the URL; without it each store has its own default.
//!
//! Migrations are safe when several processes (or tests) open the same database at once: the
//! runner holds the server-wide advisory lock `GET_LOCK('herald_migrations')` on a connection of
//! its own, applies the missing versions, and records each with `INSERT IGNORE` in
//! `herald_migrations`, keyed by port *and* version since every port may share one database.
//! MySQL commits each DDL statement on its own (there is no transactional DDL), so the
//! statements of a version are run one by one and must each be idempotent (`CREATE TABLE IF NOT
//! EXISTS` with the indexes inside): a run cut short is completed by the next one.

mod broadcasts;
mod campaigns;
mod delays;
mod deliveries;
mod directory;
mod inbox;

pub use broadcasts::MysqlBroadcasts;
pub use campaigns::MysqlCampaigns;
pub use delays::MysqlDelays;
pub use deliveries::MysqlDeliveries;
pub use directory::MysqlDirectory;
pub use inbox::MysqlInbox;

use crate::time::from_micros;
use crate::{db_error, migrations::Migration, BackendUrl};
use chrono::{DateTime, Utc};
use herald_core::{Error, Result};
use sqlx::mysql::MySqlRow;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::Row;
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// MySQL's limit on placeholders per prepared statement is 65,535; stay below it.
pub(crate) const MAX_PARAMS: usize = 60_000;

/// Bytes of bound values per multi-row statement: well under `max_allowed_packet` (16 MiB by
/// default on MariaDB, 64 MiB on MySQL 8), so a batch of users with large attributes is cut
/// into several statements instead of failing.
pub(crate) const MAX_STATEMENT_BYTES: usize = 4 * 1024 * 1024;

/// The advisory lock serialising migration runs on one server.
const MIGRATION_LOCK: &str = "herald_migrations";
/// How long a process waits for another one's migration run before giving up.
const MIGRATION_LOCK_WAIT_SECS: i64 = 60;

/// How many times a transaction is attempted when it fails for a transient reason.
const TRANSIENT_ATTEMPTS: u32 = 4;

/// Opens a pool on `url` and applies `port`'s migrations not yet recorded.
pub(crate) async fn open_pool(
    url: &BackendUrl,
    port: &str,
    max_connections: u32,
    migrations: &[Migration],
) -> Result<MySqlPool> {
    let (raw, configured) = split_pool_size(&url.raw)
        .map_err(|reason| Error::invalid(format!("bad MySQL URL {url}: {reason}")))?;
    let opts = MySqlConnectOptions::from_str(&raw)
        .map_err(|e| Error::invalid(format!("bad MySQL URL {url}")).with_source(e))?
        .charset("utf8mb4");
    let pool = MySqlPoolOptions::new()
        .max_connections(configured.unwrap_or(max_connections))
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(10 * 60))
        // Below the server's wait_timeout (8 hours by default) and short enough to follow a
        // failover or a proxy's connection rebalancing.
        .max_lifetime(Duration::from_secs(30 * 60))
        .after_release(|conn, _meta| Box::pin(crate::release_outside_transaction(conn)))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // Strict mode everywhere: an oversized or invalid value is an error, never a
                // silent truncation (sqlx keeps the server's modes and appends its own).
                conn.execute(
                    "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|e| Error::unavailable(format!("cannot open MySQL database {url}"), e))?;
    migrate(&pool, port, migrations).await?;
    Ok(pool)
}

/// Takes Herald's `max_connections=N` out of a MySQL URL's query: the URL sqlx gets, and N.
fn split_pool_size(raw: &str) -> std::result::Result<(String, Option<u32>), String> {
    let Some((base, query)) = raw.split_once('?') else {
        return Ok((raw.to_owned(), None));
    };
    let mut size = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("max_connections", v)) => match v.parse::<u32>() {
                Ok(n) if (1..=10_000).contains(&n) => size = Some(n),
                _ => return Err(format!("max_connections must be 1 to 10000, not `{v}`")),
            },
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, size))
}

/// Applies `port`'s migrations not yet recorded in `herald_migrations`, in order, under the
/// migration lock.
async fn migrate(pool: &MySqlPool, port: &str, migrations: &[Migration]) -> Result<()> {
    // GET_LOCK belongs to a session: take a connection out of the pool for good, so the lock
    // can never be left behind on a pooled connection. Closing it releases the lock whatever
    // happened.
    let mut conn = pool.acquire().await.map_err(db_error)?.detach();
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(MIGRATION_LOCK)
        .bind(MIGRATION_LOCK_WAIT_SECS)
        .fetch_one(&mut conn)
        .await
        .map_err(db_error)?;
    if locked != Some(1) {
        return Err(Error::internal(format!(
            "timed out after {MIGRATION_LOCK_WAIT_SECS}s waiting for another herald to finish \
             migrating the MySQL {port} schema"
        )));
    }
    let applied = apply(&mut conn, port, migrations).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await;
    if let Err(e) = released {
        tracing::debug!(error = %e, "RELEASE_LOCK failed; closing the connection releases it");
    }
    let _ = conn.close().await;
    applied
}

async fn apply(conn: &mut MySqlConnection, port: &str, migrations: &[Migration]) -> Result<()> {
    // Plain `&str` statements (the text protocol): `raw_sql` futures are not provably `Send`.
    sqlx::Executor::execute(
        &mut *conn,
        "CREATE TABLE IF NOT EXISTS herald_migrations (
             port       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
             version    VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
             applied_at BIGINT NOT NULL,
             PRIMARY KEY (port, version)
         ) ENGINE = InnoDB",
    )
    .await
    .map_err(db_error)?;
    for m in migrations {
        let done = sqlx::query("SELECT 1 FROM herald_migrations WHERE port = ? AND version = ?")
            .bind(port)
            .bind(m.version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
        if done.is_some() {
            continue;
        }
        for statement in m.statements() {
            match sqlx::Executor::execute(&mut *conn, statement.as_str()).await {
                Ok(_) => {}
                // A drop that finds nothing to drop, or an index or column added that is
                // there, was applied by an earlier, interrupted run of this version (MySQL 8
                // has no `DROP INDEX IF EXISTS`, `CREATE INDEX IF NOT EXISTS` nor `ADD COLUMN
                // IF NOT EXISTS`).
                Err(e)
                    if is_already_dropped(&e) || is_already_indexed(&e) || is_already_added(&e) => {
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "MySQL {port} migration {} failed",
                        m.version
                    ))
                    .with_source(e))
                }
            }
        }
        sqlx::query(
            "INSERT IGNORE INTO herald_migrations (port, version, applied_at) VALUES (?, ?, ?)",
        )
        .bind(port)
        .bind(m.version)
        .bind(chrono::Utc::now().timestamp_micros())
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        tracing::info!(port, version = m.version, "applied MySQL migration");
    }
    Ok(())
}

/// Whether a failed transaction may simply be run again: InnoDB rolled it back to break a
/// deadlock (1213) or gave up waiting for a lock (1205), the server is shutting down (1053)
/// or closed the connection as idle (4031, MySQL 8), or the connection was lost under it (an
/// I/O error: a failover, a restart, a proxy dropping the connection; the client-side "gone
/// away" / "lost connection" conditions surface as these). The pool tests a connection before
/// handing it out again, so the rerun gets a live one.
/// ER_CANT_DROP_FIELD_OR_KEY: the column or index to drop is not there.
fn is_already_dropped(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == 1091),
        _ => false,
    }
}

/// ER_DUP_FIELDNAME: a column of that name is there already.
fn is_already_added(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == 1060),
        _ => false,
    }
}

/// ER_DUP_KEYNAME: an index of that name is there already.
fn is_already_indexed(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == 1061),
        _ => false,
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| matches!(m.number(), 1053 | 1205 | 1213 | 4031)),
        sqlx::Error::Io(_) => true,
        _ => false,
    }
}

/// Runs `attempt` (one whole transaction) again when it fails for a transient reason (see
/// [`is_transient`]), a few times with a short backoff. Only for idempotent writes. A lost
/// connection may have lost the answer to a `COMMIT` that took effect: the rerun then finds
/// its own work done, and a write whose result says "was it new" must recognise its own
/// earlier attempt (the campaign insert and the lease acquisition do; a dedupe row found on a
/// rerun is reported as a replay, which is what it is to the caller's counters).
pub(crate) async fn retry_transient<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if tries < TRANSIENT_ATTEMPTS && is_transient(&e) => {
                tracing::debug!(tries, error = %e, "transient MySQL failure; running the transaction again");
                metrics::counter!("herald_storage_mysql_retries_total").increment(1);
                tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                tries += 1;
            }
            other => return other.map_err(db_error),
        }
    }
}

/// Cuts `items` into runs of at most `max_rows` items and about `max_bytes` bytes (a single
/// larger item still gets a run of its own).
pub(crate) fn chunks_by_size<T>(
    items: &[T],
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if i > start && (i - start == max_rows || bytes + s > max_bytes) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += s;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Runs `delete` (a `DELETE ... WHERE <time column> < ? LIMIT ?`) with `before` and `chunk`
/// until it deletes fewer than `chunk` rows, so a purge never holds locks on millions of rows
/// (or grows the undo log) at once. Returns how many rows went.
pub(crate) async fn delete_in_chunks(
    pool: &MySqlPool,
    delete: &str,
    before: i64,
    chunk: i64,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(before)
            .bind(chunk)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        total += n;
        if n < chunk as u64 {
            return Ok(total);
        }
    }
}

/// Runs a plain INSERT; `false` if the row existed (a duplicate key), the error otherwise.
pub(crate) async fn insert_once(
    conn: &mut sqlx::MySqlConnection,
    query: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
) -> std::result::Result<bool, sqlx::Error> {
    match query.execute(conn).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The readiness probe of a MySQL store.
pub(crate) async fn ping(pool: &MySqlPool) -> Result<()> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// A text column. Decoded without sqlx's type check: columns in a binary collation
/// (`utf8mb4_bin`, `ascii_bin`) carry the BINARY flag, which sqlx takes for VARBINARY.
pub(crate) fn text(row: &MySqlRow, column: &str) -> Result<String> {
    row.try_get_unchecked::<String, _>(column).map_err(db_error)
}

pub(crate) fn opt_text(row: &MySqlRow, column: &str) -> Result<Option<String>> {
    row.try_get_unchecked::<Option<String>, _>(column)
        .map_err(db_error)
}

pub(crate) fn time(row: &MySqlRow, column: &str) -> Result<DateTime<Utc>> {
    Ok(from_micros(
        row.try_get::<i64, _>(column).map_err(db_error)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_size_is_taken_out_of_the_url_and_other_parameters_stay() {
        assert_eq!(
            split_pool_size("mysql://u:p@db/herald").unwrap(),
            ("mysql://u:p@db/herald".to_owned(), None)
        );
        assert_eq!(
            split_pool_size("mysql://u:p@db/herald?max_connections=64&ssl-mode=required").unwrap(),
            (
                "mysql://u:p@db/herald?ssl-mode=required".to_owned(),
                Some(64)
            )
        );
        assert_eq!(
            split_pool_size("mysql://db/herald?max_connections=8").unwrap(),
            ("mysql://db/herald".to_owned(), Some(8))
        );
        assert!(split_pool_size("mysql://db/herald?max_connections=0").is_err());
        assert!(split_pool_size("mysql://db/herald?max_connections=lots").is_err());
    }
}
