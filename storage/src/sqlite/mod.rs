//! SQLite adapters: the embedded default of every store and of the bus. Each port gets its own
//! database file (so their writers never wait on each other), in WAL mode with
//! `synchronous=NORMAL`, prepared statements cached per connection by sqlx, and batched writes
//! in one `BEGIN IMMEDIATE` transaction (immediate, so two writers queue on the busy timeout
//! instead of failing on a read-to-write upgrade).

mod broadcasts;
mod bus;
mod campaigns;
mod directory;
mod inbox;

pub use broadcasts::SqliteBroadcasts;
pub use bus::SqliteBus;
pub use campaigns::SqliteCampaigns;
pub use directory::SqliteDirectory;
pub use inbox::SqliteInbox;

use crate::{db_error, migrations::Migration, BackendUrl};
use herald_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::str::FromStr;
use std::time::Duration;

/// SQLite's limit on bound parameters per statement is 32766; stay well below it.
pub(crate) const MAX_PARAMS: usize = 30_000;

pub(crate) async fn open_pool(
    url: &BackendUrl,
    max_connections: u32,
    migrations: &[Migration],
) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(&url.raw)
        .map_err(|e| Error::invalid(format!("bad SQLite URL {url}")).with_source(e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .pragma("cache_size", "-65536")
        .pragma("temp_store", "memory");
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await
        .map_err(|e| Error::unavailable(format!("cannot open SQLite database {url}"), e))?;
    migrate(&pool, migrations).await?;
    Ok(pool)
}

/// Applies the migrations not yet recorded in `herald_migrations`, in order.
async fn migrate(pool: &SqlitePool, migrations: &[Migration]) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS herald_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(db_error)?;
    for m in migrations {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
        let done: Option<(String,)> =
            sqlx::query_as("SELECT version FROM herald_migrations WHERE version = ?")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if done.is_some() {
            continue;
        }
        for statement in m.statements() {
            // Plain `&str` statements: `raw_sql` futures are not provably `Send`.
            sqlx::Executor::execute(&mut *tx, statement.as_str())
                .await
                .map_err(|e| {
                    Error::internal(format!("migration {} failed", m.version)).with_source(e)
                })?;
        }
        sqlx::query("INSERT INTO herald_migrations (version, applied_at) VALUES (?, ?)")
            .bind(m.version)
            .bind(chrono::Utc::now().timestamp_micros())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(version = m.version, "applied SQLite migration");
    }
    Ok(())
}
