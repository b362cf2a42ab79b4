//! Reader connections of one SQLite file: the hot reads (an inbox page) run on connections of
//! their own, with statements prepared once per connection and values bound by reference.
//!
//! sqlx runs each SQLite connection on a thread of its own and reaches it over channels: a
//! pooled `SELECT` costs a round trip to take the connection (its ping), one for the statement
//! and one to give it back, each a pair of thread wake-ups; at 16,000 inbox reads a second
//! those wake-ups were the largest cost in a profile. Here a read runs where it is asked for:
//! when a reader connection is free, on the calling task's thread, like the rendering of the
//! response around it (a page from cached pages is tens of microseconds; a read that has to
//! go to the disk holds that thread for as long); when every reader is busy, the read waits
//! for one (asynchronously) and runs on a blocking thread, so a burst queues instead of
//! taking more of the runtime's threads. The price: while the readers of a store all run
//! slow reads at once they hold up to that many runtime threads, so only reads bounded by
//! one user's key range run so (`one`, `all`); a scan (`locate`) or a batch (`batch`) always
//! runs on a blocking thread. Measured on 2 cores: a budget of one inline read at a time
//! (the rest on blocking threads, or in `block_in_place`) lost the inbox's read goal
//! (loadtest/README.md). Writes stay on sqlx (the pool's write checks, the writer gate, the
//! fault handling of `super`) or on the file's writer connection ([`super::writer`]): a reader
//! connection is opened `query_only` and cannot write.
//!
//! A read has no `.await` inside: once it runs it runs to its end, resets its statement (which
//! ends its read transaction, so nothing holds back a checkpoint) and puts the connection
//! back, even when the future that asked for it is dropped meanwhile. A connection whose
//! statement failed on the file (corrupt, I/O, ...) is closed instead of kept.

use super::statement::Sql;
use super::{fault_error, file_fault, note_code, BUSY_TIMEOUT};
use crate::corrupt;
use herald_core::{Error, Result};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Statements kept prepared per connection: the variants of a store's reads (filters, a
/// cursor or none) stay well under this.
const STATEMENT_CACHE: usize = 64;
/// Page cache per reader connection; the OS page cache holds the file's hot pages anyway.
const CACHE_KIB: i64 = 4096;

/// The reader connections of one file.
#[derive(Clone)]
pub(crate) struct Readers {
    shared: Arc<Shared>,
    /// One per reader connection: a read that finds none free waits here (asynchronously,
    /// cancellably) rather than tying up a thread.
    permits: Arc<Semaphore>,
}

struct Shared {
    file: File,
    idle: Mutex<Vec<Connection>>,
}

/// The file a pool opened, to be opened again outside sqlx (by [`Readers`] and by
/// [`super::writer::Writer`]).
pub(crate) struct File {
    /// The name SQLite opens (a path, or sqlx's URI of a shared in-memory database).
    filename: String,
    /// The file, as errors name it.
    path: PathBuf,
    flags: OpenFlags,
}

impl File {
    pub fn of(pool: &sqlx::SqlitePool) -> File {
        let options = pool.connect_options();
        let path = options.get_filename().to_path_buf();
        let filename = path.to_string_lossy().into_owned();
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // sqlx names `sqlite::memory:` so, shared between its connections: join it.
        flags |= if filename.starts_with("file:sqlx-in-memory-") {
            OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE
        } else {
            OpenFlags::SQLITE_OPEN_PRIVATE_CACHE
        };
        File {
            filename,
            path,
            flags,
        }
    }

    /// A connection with the pools' settings (and `query_only` for a reader).
    pub fn open(&self, query_only: bool) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(Path::new(&self.filename), self.flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.pragma_update(None, "temp_store", "memory")?;
        // As the pools: in WAL mode a commit is durable once the log is synced at a checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        if query_only {
            // A reader never writes; SQLite holds it to that.
            conn.pragma_update(None, "query_only", true)?;
        }
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// An error of a connection to this file as Herald's, as [`super::file_error`] maps the
    /// pool's.
    pub fn error(&self, e: rusqlite::Error) -> Error {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            note_code(f.extended_code);
        }
        if let Some(what) = at_fault(&e) {
            return fault_error(&self.path, what, e);
        }
        match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => corrupt("row", e),
            e => Error::unavailable("database unavailable", e),
        }
    }
}

impl Readers {
    /// Readers of the file `pool` opened (which has created it and migrated its schema), at
    /// most `max` at once. Connections are opened when first needed.
    pub fn new(pool: &sqlx::SqlitePool, max: usize) -> Readers {
        Readers {
            shared: Arc::new(Shared {
                file: File::of(pool),
                idle: Mutex::new(Vec::new()),
            }),
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Runs `read` on a reader connection: at once on this thread when one is free, else on a
    /// blocking thread once one is.
    pub async fn read<T, F>(&self, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        // A free reader: read here, on the task's own thread (see the module's doc).
        if let Ok(_permit) = self.permits.try_acquire() {
            return self.shared.run(read).map_err(|e| self.error(e));
        }
        self.read_apart(read).await
    }

    /// Runs `read` on a reader connection on a blocking thread: for reads too long to hold
    /// the calling task's thread (a batch of a thousand users, a scan).
    pub async fn read_apart<T, F>(&self, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the readers' semaphore is never closed");
        let shared = self.shared.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            shared.run(read)
        })
        .await
        .map_err(|e| Error::internal("a SQLite read did not finish").with_source(e))?;
        outcome.map_err(|e| self.error(e))
    }

    /// The first row of `sql`, mapped by `map` (`None` when there is none).
    pub async fn one<T, F>(&self, sql: Sql, map: F) -> Result<Option<T>>
    where
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.read(move |conn| first(conn, &sql, map)).await
    }

    /// [`Self::one`] on a blocking thread, for a statement that may scan (see
    /// [`Self::read_apart`]).
    pub async fn scan_one<T, F>(&self, sql: Sql, map: F) -> Result<Option<T>>
    where
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.read_apart(move |conn| first(conn, &sql, map)).await
    }

    /// Every row of `sql`, mapped by `map`.
    pub async fn all<T, F>(&self, sql: Sql, map: F) -> Result<Vec<T>>
    where
        F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.read(move |conn| collect(conn, &sql, map)).await
    }

    /// Every row of `sql`, mapped by `map`, on a blocking thread (see [`Self::read_apart`]).
    pub async fn batch<T, F>(&self, sql: Sql, map: F) -> Result<Vec<T>>
    where
        F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.read_apart(move |conn| collect(conn, &sql, map)).await
    }

    fn error(&self, e: rusqlite::Error) -> Error {
        self.shared.file.error(e)
    }
}

fn first<T>(
    conn: &Connection,
    sql: &Sql,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&sql.text)?
        .query_row(rusqlite::params_from_iter(&sql.binds), map)
        .optional()
}

fn collect<T>(
    conn: &Connection,
    sql: &Sql,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = conn.prepare_cached(&sql.text)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(&sql.binds), map)?
        .collect();
    rows
}

/// What is wrong with the file, if `e` says the file is at fault.
pub(crate) fn at_fault(e: &rusqlite::Error) -> Option<&'static str> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => file_fault(f.extended_code),
        _ => None,
    }
}

impl Shared {
    /// Runs `read` on an idle connection (or a new one), which is kept unless the file failed.
    fn run<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = match self.idle.lock().pop() {
            Some(conn) => conn,
            None => self.file.open(true)?,
        };
        let out = read(&conn);
        // A read that opened a transaction and could not end it would hold its snapshot
        // (and every checkpoint) for as long as the connection lived: such a one is closed.
        if !matches!(&out, Err(e) if at_fault(e).is_some()) && conn.is_autocommit() {
            self.idle.lock().push(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendUrl;
    use std::time::Duration;

    async fn file_pool(dir: &Path) -> sqlx::SqlitePool {
        let url = BackendUrl::parse(&format!("sqlite://{}", dir.join("r.db").display())).unwrap();
        let pool = super::super::open_pool(&url, 2, &[]).await.unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    fn count() -> Sql {
        Sql::new("SELECT COUNT(*) FROM t")
    }

    /// A read that holds its reader for `ms` (inside its read transaction).
    fn slow(ms: u64) -> impl FnOnce(&Connection) -> rusqlite::Result<i64> + Send + 'static {
        move |conn| {
            let mut s = conn.prepare("SELECT COUNT(*) FROM t")?;
            let n = s.query_row([], |r| r.get(0))?;
            let mut rows = s.query([])?;
            std::thread::sleep(Duration::from_millis(ms));
            rows.next()?;
            Ok(n)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_reader_connections_open_than_allowed_however_many_reads_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = file_pool(tmp.path()).await;
        let readers = Readers::new(&pool, 1);
        // Two workers: two reads at once would each take a connection of their own.
        let reads: Vec<_> = (0..16)
            .map(|_| {
                let readers = readers.clone();
                tokio::spawn(async move { readers.read(slow(10)).await })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap(), 0);
        }
        assert_eq!(readers.shared.idle.lock().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_read_finishes_and_gives_its_connection_back_holding_no_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = file_pool(tmp.path()).await;
        let readers = Readers::new(&pool, 1);
        // The first read takes the only reader; the second waits for it, then runs on a
        // blocking thread, where it is dropped midway.
        let first = tokio::spawn({
            let readers = readers.clone();
            async move { readers.read(slow(100)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = readers.read(slow(200));
        assert!(tokio::time::timeout(Duration::from_millis(180), second)
            .await
            .is_err());
        assert_eq!(first.await.unwrap().unwrap(), 0);
        // The next read waits for the connection, which comes back once the second is done.
        let n = readers.one(count(), |r| r.get::<_, i64>(0)).await.unwrap();
        assert_eq!(n, Some(0));
        assert_eq!(readers.shared.idle.lock().len(), 1);
        // No reader holds a snapshot: a write and a full checkpoint go through.
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .unwrap();
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(busy, 0, "a reader still holds the log");
        let n = readers.one(count(), |r| r.get::<_, i64>(0)).await.unwrap();
        assert_eq!(n, Some(1), "the readers see the pool's commit");
    }

    #[tokio::test]
    async fn readers_of_an_in_memory_database_read_what_the_pool_wrote() {
        let url = BackendUrl::parse("sqlite::memory:").unwrap();
        let pool = super::super::open_pool(&url, 2, &[]).await.unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (7)")
            .execute(&pool)
            .await
            .unwrap();
        let readers = Readers::new(&pool, 1);
        let v = readers
            .one(Sql::new("SELECT v FROM t"), |r| r.get::<_, i64>(0))
            .await
            .unwrap();
        assert_eq!(v, Some(7));
    }
}
