//! SQLite adapters: the embedded default of every store and of the bus. Each port gets its own
//! database file (so their writers never wait on each other), in WAL mode with
//! `synchronous=NORMAL`, prepared statements cached per connection by sqlx, and batched writes
//! in one `BEGIN IMMEDIATE` transaction (immediate, so two writers queue on the busy timeout
//! instead of failing on a read-to-write upgrade). The hot reads run on reader connections
//! outside sqlx ([`readers`]), the fan-out's inbox batches on a writer connection ([`writer`]);
//! statements built at run time use one builder for both paths ([`statement`]).

mod broadcasts;
mod bus;
mod campaigns;
mod delays;
mod deliveries;
mod directory;
mod inbox;
mod memory;
mod readers;
mod statement;
mod writer;

pub use broadcasts::SqliteBroadcasts;
pub use bus::SqliteBus;
pub use campaigns::SqliteCampaigns;
pub use delays::SqliteDelays;
pub use deliveries::SqliteDeliveries;
pub use directory::{SqliteDirectory, MAX_ATTR_INDEXES};
pub use inbox::SqliteInbox;

use crate::{db_error, migrations::Migration, BackendUrl};
use herald_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// How long a writer waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's limit on bound parameters per statement is 32766; stay well below it.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// One database file: its pool, and this process's queue of writers.
///
/// SQLite admits one writer at a time; a second one spins in the busy handler, which sleeps
/// with backoff (up to 100 ms a try) and so turns contention into idle time. Writers of this
/// process therefore queue on an async FIFO gate first and reach SQLite one after the other;
/// writers of other processes still meet the busy timeout. Nothing waits for the gate while
/// holding a pooled connection, so the gate and the pool cannot deadlock. The gate belongs to
/// the file, not to the store: two stores of one process opened on one file (two contexts on
/// one data directory) queue on the same gate ([`gate_of`]).
#[derive(Clone)]
pub(crate) struct Db {
    pub pool: SqlitePool,
    gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

pub(crate) type Gate = tokio::sync::OwnedMutexGuard<()>;

impl Db {
    pub async fn open(
        url: &BackendUrl,
        max_connections: u32,
        migrations: &[Migration],
    ) -> Result<Db> {
        let pool = open_pool(url, max_connections, migrations).await?;
        let gate = gate_of(&pool);
        Ok(Db { pool, gate })
    }

    /// This process's turn to write; hold it for the whole write.
    pub async fn gate(&self) -> Gate {
        self.gate.clone().lock_owned().await
    }

    /// A write transaction (`BEGIN IMMEDIATE`), with the turn that must outlive it.
    pub async fn begin(&self) -> Result<(Gate, sqlx::Transaction<'static, sqlx::Sqlite>)> {
        let gate = self.gate().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| file_error(&self.pool, e))?;
        Ok((gate, tx))
    }
}

/// The writer gate of the pool's file, shared by every [`Db`] of this process open on that
/// file (the registry keeps it only while one is). A file without a path of its own (an
/// in-memory database) gets a gate of its own.
fn gate_of(pool: &SqlitePool) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::sync::{Arc, LazyLock, Weak};
    type Registry = parking_lot::Mutex<HashMap<std::path::PathBuf, Weak<tokio::sync::Mutex<()>>>>;
    static GATES: LazyLock<Registry> = LazyLock::new(Default::default);
    let Ok(path) = std::fs::canonicalize(pool.connect_options().get_filename()) else {
        return Arc::default();
    };
    let mut gates = GATES.lock();
    if let Some(gate) = gates.get(&path).and_then(Weak::upgrade) {
        return gate;
    }
    gates.retain(|_, gate| gate.strong_count() > 0);
    let gate = Arc::default();
    gates.insert(path, Arc::downgrade(&gate));
    gate
}

/// Rows deleted per statement by [`Db::delete_in_chunks`].
pub(crate) const PURGE_CHUNK: i64 = 5_000;

impl Db {
    /// Deletes the rows of `table` whose `column` is below `before`, [`PURGE_CHUNK`] rows a
    /// statement, each statement in its own turn to write: a purge of millions of rows (a
    /// large campaign's outcomes, a day of processed marks) holds the file's other writers,
    /// and its readiness probe, for one chunk at a time rather than for the whole purge.
    /// `key` is the table's primary key (the tables are `WITHOUT ROWID`); `column` must be
    /// indexed. Returns the rows deleted.
    pub async fn delete_in_chunks(
        &self,
        table: &str,
        key: &[&str],
        column: &str,
        before: i64,
    ) -> Result<u64> {
        let columns = key.join(", ");
        // A key of several columns is compared as a row value.
        let left = if key.len() == 1 {
            columns.clone()
        } else {
            format!("({columns})")
        };
        let sql = format!(
            "DELETE FROM {table} WHERE {left} IN \
             (SELECT {columns} FROM {table} WHERE {column} < ? LIMIT ?)"
        );
        let mut total = 0;
        loop {
            let _turn = self.gate().await;
            let n = sqlx::query(&sql)
                .bind(before)
                .bind(PURGE_CHUNK)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db_error(e))?
                .rows_affected();
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

/// A store kept in one SQLite file: its driver errors name that file where the file itself is
/// at fault (see [`file_error`]).
pub(crate) trait SqliteFile {
    fn pool(&self) -> &SqlitePool;

    fn db_error(&self, e: sqlx::Error) -> Error {
        file_error(self.pool(), e)
    }
}

impl SqliteFile for Db {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A driver error as Herald's. When the file itself is at fault (see [`file_fault`]) the
/// message names the file; other errors map as [`db_error`] does.
pub(crate) fn file_error(pool: &SqlitePool, e: sqlx::Error) -> Error {
    note_error(&e);
    let code = match &e {
        sqlx::Error::Database(d) => d.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    match code.and_then(file_fault) {
        Some(what) => fault_error(pool.connect_options().get_filename(), what, e),
        None => db_error(e),
    }
}

/// What is wrong with the file itself, by SQLite result code (corrupt, not a database, an I/O
/// error, read-only, on a full disk, not openable); `None` when the file is not at fault.
pub(crate) fn file_fault(code: i32) -> Option<&'static str> {
    // Primary result codes (the low byte of the extended code SQLite reports).
    Some(match code & 0xff {
        11 | 26 => "is corrupt: restore it from a backup",
        10 => "failed a disk operation",
        8 => "is read-only",
        13 => "is on a full disk",
        14 => "cannot be opened",
        _ => return None,
    })
}

/// The error of a file at fault: the message names the file (its name only: clients see it;
/// the log has the full path), so an operator knows which of the stores to look at.
pub(crate) fn fault_error(
    path: &std::path::Path,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    tracing::error!(file = %path.display(), error = %e, "SQLite database {what}");
    Error::unavailable(format!("SQLite database {name} {what} ({e})"), e)
}

pub(crate) async fn open_pool(
    url: &BackendUrl,
    max_connections: u32,
    migrations: &[Migration],
) -> Result<SqlitePool> {
    memory::setup();
    let opts = SqliteConnectOptions::from_str(&url.raw)
        .map_err(|e| Error::invalid(format!("bad SQLite URL {url}")).with_source(e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        // 8 MiB of page cache per connection: several pools of several connections each
        // share the machine, and the OS page cache holds the hot pages anyway.
        .pragma("cache_size", "-8192")
        .pragma("temp_store", "memory");
    let pool_options = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _meta| Box::pin(count_if_read_only(conn)))
        .before_acquire(|conn, _meta| Box::pin(usable(conn)))
        .after_release(|conn, _meta| Box::pin(released_outside_transaction(conn)));
    // Roles started side by side on one data directory open (and create) the same files at the
    // same moment. Turning a new file to WAL needs its exclusive lock, and SQLite answers
    // SQLITE_BUSY at once, without its busy handler, to the connection that would otherwise
    // deadlock with another one doing the same: that open is tried again, as the busy handler
    // would have, for as long as a lock is waited for anywhere else.
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    let pool = loop {
        match pool_options.clone().connect_with(opts.clone()).await {
            Ok(pool) => break pool,
            Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(%url, error = %e, "SQLite file busy while opening; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(Error::unavailable(
                    format!("cannot open SQLite database {url}"),
                    e,
                ))
            }
        }
    };
    migrate(&pool, migrations).await?;
    Ok(pool)
}

/// SQLITE_BUSY, whatever its extended code.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff) == Some(5))
}

/// The pools' `after_release` check: a connection that is inside a transaction is closed (see
/// [`crate::release_outside_transaction`] for how that happens). Only a connection that looks
/// inside one is pinged first: a transaction dropped without commit has its `ROLLBACK` queued,
/// and the ping waits for it. A command that a dropped future sent may still be queued behind a
/// depth of 0; sqlx's own release then pings the connection's thread (every queued command has
/// run once it answers) and [`usable`] checks again at the next acquire. Pinging every
/// connection here would be a second round trip on every release of every statement.
async fn released_outside_transaction(
    conn: &mut sqlx::SqliteConnection,
) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        conn.ping().await?;
    }
    Ok(crate::outside_transaction(conn))
}

/// Connections opened read-only by this process (see [`writable`]) and not yet found and
/// closed by [`usable`]. A connection closed otherwise (idle, too old) is never taken off,
/// which only keeps the check of every acquire on.
static READ_ONLY_OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The pools' `after_connect` step: a connection opened read-only is counted, so that
/// [`usable`] looks for it. Asking SQLite for the flag is a round trip to the connection's
/// thread; once per connection here instead of on every acquire.
async fn count_if_read_only(
    conn: &mut sqlx::SqliteConnection,
) -> std::result::Result<(), sqlx::Error> {
    if read_only(conn).await? {
        READ_ONLY_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

async fn read_only(conn: &mut sqlx::SqliteConnection) -> std::result::Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is a live connection, locked for the duration of the call, and the
    // schema name is a NUL-terminated string.
    let flag = unsafe {
        libsqlite3_sys::sqlite3_db_readonly(handle.as_raw_handle().as_ptr(), c"main".as_ptr())
    };
    Ok(flag == 1)
}

/// The pools' `before_acquire` check: a connection inside a transaction (after sqlx's release
/// ping, see [`released_outside_transaction`]) or that cannot write is closed. The write check
/// costs round trips to the connection's thread, so it runs only while this process has
/// opened a read-only connection or seen a "readonly" error lately; otherwise taking a
/// connection costs nothing beyond the pool.
async fn usable(conn: &mut sqlx::SqliteConnection) -> std::result::Result<bool, sqlx::Error> {
    if !crate::outside_transaction(conn) {
        return Ok(false);
    }
    if READ_ONLY_OPENED.load(std::sync::atomic::Ordering::Relaxed) == 0 && !readonly_seen_lately() {
        return Ok(true);
    }
    writable(conn).await
}

/// Whether a connection can write; one that cannot is to be closed.
///
/// SQLite falls back to read-only when it cannot open a file for writing (made read-only or
/// immutable for a while), and the connection stays so for its whole life: either the whole
/// connection (`sqlite3_db_readonly`, a flag set when it opens) or only its WAL file,
/// when the database file's descriptor was reused from a connection closed earlier in this
/// process (SQLite keeps such descriptors so as not to drop other connections' locks) while the
/// WAL could not be opened for writing. No flag tells the second case, so for a while after any
/// "readonly" error (see [`note_error`]) each acquired connection is probed with
/// `BEGIN IMMEDIATE` without waiting for the lock (a read-only WAL answers at once; a busy lock
/// says nothing and keeps the connection). Without this, a fault that has passed would keep
/// failing writes ("attempt to write a readonly database") on the connections opened while it
/// held.
async fn writable(conn: &mut sqlx::SqliteConnection) -> std::result::Result<bool, sqlx::Error> {
    let cannot = if read_only(conn).await? {
        let _ = READ_ONLY_OPENED.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        true
    } else {
        readonly_seen_lately() && !probe_write(conn).await?
    };
    if cannot {
        tracing::warn!("a pooled SQLite connection cannot write; closing it");
        metrics::counter!("herald_storage_read_only_connections_closed_total").increment(1);
        return Ok(false);
    }
    Ok(true)
}

/// When a "readonly" error was last seen by any SQLite store of this process (Unix seconds).
static READONLY_SEEN_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// How long after such an error acquired connections are probed.
const READONLY_PROBE_WINDOW_SECS: i64 = 120;

fn readonly_seen_lately() -> bool {
    let seen = READONLY_SEEN_AT.load(std::sync::atomic::Ordering::Relaxed);
    seen > 0 && chrono::Utc::now().timestamp() - seen < READONLY_PROBE_WINDOW_SECS
}

/// Remembers a "readonly" error (SQLITE_READONLY and its extended codes), which opens the
/// probe window of [`writable`].
pub(crate) fn note_error(e: &sqlx::Error) {
    if let sqlx::Error::Database(d) = e {
        if let Some(code) = d.code().and_then(|c| c.parse::<i32>().ok()) {
            note_code(code);
        }
    }
}

/// [`note_error`] by SQLite result code.
pub(crate) fn note_code(code: i32) {
    if code & 0xff == 8 {
        READONLY_SEEN_AT.store(
            chrono::Utc::now().timestamp(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Whether `conn` can start a write transaction; `true` when the lock is merely busy.
async fn probe_write(conn: &mut sqlx::SqliteConnection) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Executor;
    conn.execute("PRAGMA busy_timeout = 0").await?;
    let verdict = match conn.execute("BEGIN IMMEDIATE").await {
        Ok(_) => {
            conn.execute("ROLLBACK").await?;
            true
        }
        Err(sqlx::Error::Database(d)) => {
            let code = d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
            // 5 and 6: SQLITE_BUSY / SQLITE_LOCKED, another writer holds the lock.
            code == 5 || code == 6
        }
        Err(e) => return Err(e),
    };
    conn.execute(format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis()).as_str())
        .await?;
    Ok(verdict)
}

/// How long the readiness probe waits for SQLite's write lock.
const PING_WRITE_WAIT: Duration = Duration::from_secs(2);

/// The readiness probe of a SQLite store: the file must answer and take its write lock
/// (`BEGIN IMMEDIATE`, rolled back: nothing is written) within [`PING_WRITE_WAIT`]. A file
/// that is locked for writing (a transaction left open somewhere), read-only or broken makes
/// `/readyz` red, naming the file. A store with a writer gate probes through
/// [`Db::ping_writable`].
pub(crate) async fn ping_writable(pool: &SqlitePool) -> Result<()> {
    probe_writable(pool, None).await
}

impl Db {
    /// [`ping_writable`] in this process's turn to write, as every writer of the file takes
    /// it. Outside the turn, the probe could hold SQLite's write lock while the inbox's
    /// rusqlite writer waited for it synchronously (SQLite's busy wait, up to
    /// [`BUSY_TIMEOUT`]): on a current-thread runtime that wait stopped the very task that
    /// would release the lock, and every request and timer of the process with it, for the
    /// whole 30 s (a `/readyz` answered after 30 s, red, in a CI run).
    pub async fn ping_writable(&self) -> Result<()> {
        probe_writable(&self.pool, Some(self)).await
    }
}

async fn probe_writable(pool: &SqlitePool, db: Option<&Db>) -> Result<()> {
    let file = pool.connect_options().get_filename().display().to_string();
    let (pool, db) = (pool.clone(), db.cloned());
    // The probe runs to its end in a task of its own, and only the wait for it is bounded: a
    // probe dropped at its bound just after SQLite granted `BEGIN IMMEDIATE` would give the
    // turn back while its connection still held the write lock (released later, by the
    // pool), and a writer taking the turn would meet that lock.
    let probe = tokio::spawn(async move {
        // Waiting for the turn counts toward the probe's bound: a turn never given back is a
        // file locked for writing all the same.
        let _turn = match &db {
            Some(db) => Some(db.gate().await),
            None => None,
        };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.rollback().await
    });
    match tokio::time::timeout(PING_WRITE_WAIT, probe).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Err(panicked)) => Err(Error::unavailable(
            format!("SQLite database {file}: the write probe failed"),
            panicked,
        )),
        Ok(Ok(Err(e))) => {
            note_error(&e);
            Err(Error::unavailable(
                format!("SQLite database {file} takes no writes: {e}"),
                e,
            ))
        }
        Err(_) => Err(Error::unavailable(
            format!(
                "SQLite database {file} has been locked for writing for over {} s",
                PING_WRITE_WAIT.as_secs()
            ),
            std::io::Error::other("write lock wait timed out"),
        )),
    }
}

/// Applies the migrations not yet recorded in `herald_migrations`, in order.
async fn migrate(pool: &SqlitePool, migrations: &[Migration]) -> Result<()> {
    // Inside `BEGIN IMMEDIATE`, like each migration: a plain statement would start as a reader
    // and could not turn writer once another process had written meanwhile (SQLITE_BUSY_SNAPSHOT
    // is not waited out).
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| file_error(pool, e))?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS herald_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| file_error(pool, e))?;
    tx.commit().await.map_err(|e| file_error(pool, e))?;
    for m in migrations {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| file_error(pool, e))?;
        let done: Option<(String,)> =
            sqlx::query_as("SELECT version FROM herald_migrations WHERE version = ?")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| file_error(pool, e))?;
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
            .map_err(|e| file_error(pool, e))?;
        tx.commit().await.map_err(|e| file_error(pool, e))?;
        tracing::info!(version = m.version, "applied SQLite migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_stores_on_one_file_queue_on_one_gate_and_another_file_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| {
            BackendUrl::parse(&format!("sqlite://{}", dir.path().join(name).display())).unwrap()
        };
        let first = Db::open(&url("one.db"), 1, &[]).await.unwrap();
        let second = Db::open(&url("one.db"), 1, &[]).await.unwrap();
        let other = Db::open(&url("other.db"), 1, &[]).await.unwrap();
        let turn = first.gate().await;
        let wait = Duration::from_millis(200);
        assert!(
            tokio::time::timeout(wait, second.gate()).await.is_err(),
            "a second store on the same file wrote during the first one's turn"
        );
        assert!(
            tokio::time::timeout(wait, other.gate()).await.is_ok(),
            "another file waited for this one's turn"
        );
        drop(turn);
        assert!(tokio::time::timeout(wait, second.gate()).await.is_ok());
    }
}
