//! The writer connection of one SQLite file, outside sqlx: for the batch writes of the
//! fan-out (a thousand inbox rows per transaction), which sqlx would send as multi-row
//! statements of owned copies of every value across its connection thread. Here one prepared
//! single-row `INSERT` runs once per row with the values borrowed, as the bare-SQLite reference
//! of `herald-loadtest limits` does.
//!
//! The caller holds the file's writer gate ([`super::Db::gate`]) for the whole write, as for
//! the pool's writes: one writer of this process at a time either way. The write runs to its
//! end without an `.await` (on the multi-threaded runtime, `block_in_place` hands the
//! runtime's other tasks to another thread meanwhile), so a dropped future cannot leave the
//! transaction open. A write that fails rolls back; the connection is closed instead of kept
//! when the file was at fault (full disk, read-only, I/O, corrupt) or the transaction could not
//! be ended. So a connection SQLite opened read-only (the file could not be written when it was
//! opened) fails its first write and is closed; the next write opens another.

use super::readers::{at_fault, File};
use herald_core::Result;
use parking_lot::Mutex;
use rusqlite::{Connection, Transaction, TransactionBehavior};

pub(crate) struct Writer {
    file: File,
    conn: Mutex<Option<Connection>>,
}

impl Writer {
    pub fn new(pool: &sqlx::SqlitePool) -> Writer {
        Writer {
            file: File::of(pool),
            conn: Mutex::new(None),
        }
    }

    /// Runs `write` in one `BEGIN IMMEDIATE` transaction, committed if it returns `Ok`.
    /// Hold the file's gate around it.
    pub fn write<T>(
        &self,
        write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let run = || self.run(write);
        let out = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        };
        out.map_err(|e| self.file.error(e))
    }

    fn run<T>(
        &self,
        write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut slot = self.conn.lock();
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.file.open(false)?,
        };
        let out = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = write(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        // A failed transaction was rolled back when it was dropped (or by SQLite itself).
        let keep = conn.is_autocommit() && !matches!(&out, Err(e) if at_fault(e).is_some());
        if keep {
            *slot = Some(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendUrl;

    async fn writer() -> (tempfile::TempDir, sqlx::SqlitePool, Writer) {
        let tmp = tempfile::tempdir().unwrap();
        let url =
            BackendUrl::parse(&format!("sqlite://{}", tmp.path().join("w.db").display())).unwrap();
        let pool = super::super::open_pool(&url, 2, &[]).await.unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        let writer = Writer::new(&pool);
        (tmp, pool, writer)
    }

    async fn rows(pool: &sqlx::SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_midway_leaves_nothing_and_the_next_one_commits() {
        let (_tmp, pool, writer) = writer().await;
        let err = writer
            .write(|tx| {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            })
            .expect_err("the second row conflicts");
        assert_eq!(err.kind, herald_core::ErrorKind::Unavailable);
        assert_eq!(
            rows(&pool).await,
            0,
            "the first row was rolled back with the second"
        );
        writer
            .write(|tx| tx.execute("INSERT INTO t VALUES (1)", []))
            .unwrap();
        assert_eq!(rows(&pool).await, 1);
        // The pool writes on: the writer left no transaction open.
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(rows(&pool).await, 2);
    }

    #[tokio::test]
    async fn a_write_on_a_single_threaded_runtime_runs_in_place() {
        let (_tmp, pool, writer) = writer().await;
        writer
            .write(|tx| tx.execute("INSERT INTO t VALUES (1)", []))
            .unwrap();
        assert_eq!(rows(&pool).await, 1);
    }
}
