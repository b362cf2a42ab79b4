//! The inbox store on SQLite: one row per personal notification, clustered by
//! `(user_id, created_at, id)` so a page of an inbox is one index range read, and one read
//! watermark per user who ever marked everything read (`inbox_read_marks`). Every statement
//! addresses rows by their whole key or by a range of one user's keys.

use super::readers::Readers;
use super::statement::Sql;
use super::writer::Writer;
use super::Db;
use super::SqliteFile;
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{
    ArchivedFilter, InboxAction, InboxCounts, InboxFilter, InboxKey, Notification, StatusFilter,
};
use herald_core::ports::{InboxStore, MAX_BULK, UNREAD_WINDOW};
use herald_core::Result;
use sqlx::SqlitePool;
use std::fmt::Write as _;
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "inbox", "0001_init"),
    migration!("sqlite", "inbox", "0002_read_marks"),
    migration!("sqlite", "inbox", "0003_states"),
];
/// Reader connections (at most this many reads at once).
const READERS: usize = 4;

/// A page: the user's visible rows older than `before` that pass `filter`, newest first, as
/// [`push_columns`] gives them ([`row_to_notification`] decodes them).
fn push_page(
    sql: &mut Sql,
    user_id: &str,
    before: Option<InboxKey>,
    limit: u32,
    filter: InboxFilter<'_>,
) {
    push_columns(sql, user_id);
    sql.push(" FROM notifications WHERE user_id = ");
    sql.bind(user_id).push(" AND dismissed_at IS NULL");
    if let Some(before) = before {
        sql.push(" AND (created_at, id) < (")
            .bind(micros(before.created_at))
            .push(", ")
            .bind(before.id.as_bytes().to_vec())
            .push(")");
    }
    match filter.status {
        StatusFilter::All => {}
        StatusFilter::Unread => push_unread(sql, user_id),
        StatusFilter::Unseen => push_unseen(sql, user_id),
    }
    push_archived(sql, filter.archived);
    push_not_hidden(sql, filter.hidden);
    sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .bind(i64::from(limit));
}

/// ` AND` the row is not of a `hidden` campaign (nothing when there is none).
fn push_not_hidden(sql: &mut Sql, hidden: &[String]) {
    if hidden.is_empty() {
        return;
    }
    sql.push(" AND (campaign_id IS NULL OR campaign_id NOT IN (");
    for (i, c) in hidden.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(c.as_str());
    }
    sql.push("))");
}

/// ` AND` the archive state `filter` asks for.
fn push_archived(sql: &mut Sql, filter: ArchivedFilter) {
    match filter {
        ArchivedFilter::Exclude => sql.push(" AND archived_at IS NULL"),
        ArchivedFilter::Include => sql,
        ArchivedFilter::Only => sql.push(" AND archived_at IS NOT NULL"),
    };
}

/// ` AND` the row is unread: not marked read, above the read watermark.
fn push_unread(sql: &mut Sql, user_id: &str) {
    sql.push(" AND read_at IS NULL AND created_at > ");
    push_mark_or_none(sql, user_id, "read_through");
}

/// ` AND` the row is unseen: neither marked seen nor read, above both watermarks.
fn push_unseen(sql: &mut Sql, user_id: &str) {
    push_unread(sql, user_id);
    sql.push(" AND seen_at IS NULL AND created_at > ");
    push_mark_or_none(sql, user_id, "seen_through");
}

/// One of the user's watermarks (`read_through`, `seen_through`; NULL when they never
/// marked everything so): a scalar subquery, evaluated once per statement.
fn push_mark(sql: &mut Sql, user_id: &str, column: &'static str) {
    sql.push("(SELECT ")
        .push(column)
        .push(" FROM inbox_read_marks WHERE user_id = ")
        .bind(user_id)
        .push(")");
}

/// The watermark, or a time before every row.
fn push_mark_or_none(sql: &mut Sql, user_id: &str, column: &'static str) {
    sql.push("COALESCE(");
    push_mark(sql, user_id, column);
    sql.push(", -1)");
}

/// A row's read time: its own, else the watermark's if the watermark covers it.
fn push_read_at(sql: &mut Sql, user_id: &str) {
    sql.push("COALESCE(read_at, ");
    push_covered_by(sql, user_id, "read_through");
    sql.push(")");
}

/// A row's seen time: the earliest of its own seen and read times and the times of the
/// watermarks that cover it (NULL if none).
fn push_seen_at(sql: &mut Sql, user_id: &str) {
    const NEVER: &str = "9223372036854775807";
    sql.push(&format!(
        "NULLIF(MIN(COALESCE(seen_at, {NEVER}), COALESCE(read_at, {NEVER}), COALESCE("
    ));
    push_covered_by(sql, user_id, "read_through");
    sql.push(&format!(", {NEVER}), COALESCE("));
    push_covered_by(sql, user_id, "seen_through");
    sql.push(&format!(", {NEVER})), {NEVER})"));
}

/// The watermark's time if it covers the row, else NULL.
fn push_covered_by(sql: &mut Sql, user_id: &str, column: &'static str) {
    sql.push("CASE WHEN created_at <= ");
    push_mark(sql, user_id, column);
    sql.push(" THEN ");
    push_mark(sql, user_id, column);
    sql.push(" END");
}

/// The two counts (unread, unseen) over the window `push_window` reads, rows of `hidden`
/// campaigns left out.
fn push_counts(sql: &mut Sql, user_id: &str, hidden: &[String]) {
    sql.push("COUNT(CASE WHEN read_at IS NULL AND dismissed_at IS NULL AND archived_at IS NULL");
    push_not_hidden(sql, hidden);
    sql.push(
        " THEN 1 END), COUNT(CASE WHEN read_at IS NULL AND seen_at IS NULL \
         AND dismissed_at IS NULL AND archived_at IS NULL",
    );
    push_not_hidden(sql, hidden);
    sql.push(" AND created_at > ");
    push_mark_or_none(sql, user_id, "seen_through");
    sql.push(" THEN 1 END)");
}

/// ` FROM` the count window: the newest [`UNREAD_WINDOW`] rows above the read watermark (and
/// at or below `upto`), one range of the primary key.
fn push_window(sql: &mut Sql, user_id: &str, upto: Option<i64>) {
    sql.push(
        " FROM (SELECT created_at, campaign_id, read_at, seen_at, archived_at, dismissed_at \
         FROM notifications WHERE user_id = ",
    )
    .bind(user_id)
    .push(" AND created_at > ");
    push_mark_or_none(sql, user_id, "read_through");
    if let Some(upto) = upto {
        sql.push(" AND created_at <= ").bind(upto);
    }
    sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .bind(i64::from(UNREAD_WINDOW))
        .push(")");
}

/// `SELECT` the columns of a notification with its read and seen times (its own, or its
/// watermarks' when they cover it).
fn push_columns(sql: &mut Sql, user_id: &str) {
    sql.push("SELECT id, user_id, campaign_id, title, body, category, data, created_at, ");
    push_read_at(sql, user_id);
    sql.push(" AS read_at, ");
    push_seen_at(sql, user_id);
    sql.push(" AS seen_at, archived_at");
}

/// The `SET` of an action (`?` bound to its time where it has one).
fn push_set(sql: &mut Sql, action: InboxAction, at: i64) {
    match action {
        InboxAction::Seen => sql.push("seen_at = COALESCE(seen_at, ").bind(at).push(")"),
        InboxAction::Read => sql
            .push("read_at = COALESCE(read_at, ")
            .bind(at)
            .push("), seen_at = COALESCE(seen_at, ")
            .bind(at)
            .push(")"),
        InboxAction::Archive => sql
            .push("archived_at = COALESCE(archived_at, ")
            .bind(at)
            .push(")"),
        InboxAction::Unarchive => sql.push("archived_at = NULL"),
    };
}

/// ` AND` the row is one the action changes.
fn push_changes(sql: &mut Sql, user_id: &str, action: InboxAction) {
    match action {
        InboxAction::Seen => push_unseen(sql, user_id),
        InboxAction::Read => push_unread(sql, user_id),
        InboxAction::Archive => {
            sql.push(" AND archived_at IS NULL");
        }
        InboxAction::Unarchive => {
            sql.push(" AND archived_at IS NOT NULL");
        }
    }
}

/// ` AND` the row is one of `keys` (by whole key; at most [`MAX_BULK`] of them).
fn push_keys(sql: &mut Sql, keys: &[InboxKey]) {
    sql.push(" AND (");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(created_at = ")
            .bind(micros(k.created_at))
            .push(" AND id = ")
            .bind(k.id.as_bytes().to_vec())
            .push(")");
    }
    sql.push(")");
}

pub struct SqliteInbox {
    db: Db,
    pool: SqlitePool,
    /// The reads (pages, counts, single rows) run here; the fan-out's batch writes on the
    /// writer, the users' actions on the pool.
    readers: Readers,
    writer: Writer,
}

impl SqliteFile for SqliteInbox {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteInbox {
    /// Moves one of the user's watermarks to `at` with `upsert` (binds: user, time) in one
    /// transaction with the count of what it covers: the counts of the window up to `at`,
    /// read before the move.
    async fn move_mark(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        upsert: &'static str,
    ) -> Result<InboxCounts> {
        let (_gate, mut tx) = self.db.begin().await?;
        let mut sql = Sql::new("SELECT ");
        push_counts(&mut sql, user_id, &[]);
        push_window(&mut sql, user_id, Some(micros(at)));
        let (unread, unseen): (i64, i64) = sql
            .query_as()
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        sqlx::query(upsert)
            .bind(user_id)
            .bind(micros(at))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(InboxCounts {
            unread: unread as u64,
            unseen: unseen as u64,
        })
    }

    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let db = Db::open(url, 8, MIGRATIONS).await?;
        Ok(Self {
            readers: Readers::new(&db.pool, READERS),
            writer: Writer::new(&db.pool),
            pool: db.pool.clone(),
            db,
        })
    }

    /// The one row of an aggregate statement (counts, and the page beside them).
    async fn aggregate<T, F>(&self, sql: Sql, map: F) -> Result<T>
    where
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.readers
            .one(sql, map)
            .await?
            .ok_or_else(|| herald_core::Error::internal("an aggregate returned no row"))
    }
}

/// A row of [`push_columns`], decoded.
fn row_to_notification(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Notification>> {
    let id: Vec<u8> = row.get(0)?;
    let data: String = row.get(6)?;
    let (user_id, campaign_id, title, body, category) = (
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    );
    let (created_at, read_at, seen_at, archived_at) =
        (row.get(7)?, row.get(8)?, row.get(9)?, row.get(10)?);
    Ok((|| {
        Ok(Notification {
            id: Uuid::from_slice(&id).map_err(|e| corrupt("notification id", e))?,
            user_id,
            campaign_id,
            title,
            body,
            category,
            data: serde_json::from_str(&data).map_err(|e| corrupt("notification data", e))?,
            created_at: from_micros(created_at),
            read_at: opt_from_micros(read_at),
            seen_at: opt_from_micros(seen_at),
            archived_at: opt_from_micros(archived_at),
        })
    })())
}

#[async_trait]
impl InboxStore for SqliteInbox {
    async fn ping(&self) -> Result<()> {
        self.db.ping_writable().await
    }

    async fn write_batch(&self, rows: &[Notification]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let _gate = self.db.gate().await;
        self.writer.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO notifications \
                 (id, user_id, campaign_id, title, body, category, data, created_at, read_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )?;
            // A replayed batch must not reset what the user did with the rows since (the
            // conflict clause); each row's data is written into one reused buffer.
            let mut data = String::new();
            for n in rows {
                data.clear();
                // Writing into a String cannot fail.
                let _ = write!(data, "{}", n.data);
                insert.execute(rusqlite::params![
                    n.id.as_bytes().as_slice(),
                    n.user_id,
                    n.campaign_id,
                    n.title,
                    n.body,
                    n.category,
                    data,
                    micros(n.created_at),
                    n.read_at.map(micros),
                ])?;
            }
            Ok(())
        })
    }

    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<Vec<Notification>> {
        let mut sql = Sql::default();
        push_page(&mut sql, user_id, before, limit, filter);
        self.readers
            .all(sql, row_to_notification)
            .await?
            .into_iter()
            .collect()
    }

    async fn page_with_counts(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<(Vec<Notification>, InboxCounts)> {
        // Both in one read transaction (one snapshot), one hand-off to a reader. The rows are
        // read as columns: the page built as one JSON value in SQLite and parsed back here
        // cost more than the rows themselves (an inbox read's profile, loadtest/README.md).
        let mut page = Sql::default();
        push_page(&mut page, user_id, before, limit, filter);
        let mut counts = Sql::new("SELECT ");
        push_counts(&mut counts, user_id, filter.hidden);
        push_window(&mut counts, user_id, None);
        let (rows, (unread, unseen)) = self
            .readers
            .read(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let rows: Vec<Result<Notification>> = tx
                    .prepare_cached(&page.text)?
                    .query_map(rusqlite::params_from_iter(&page.binds), row_to_notification)?
                    .collect::<rusqlite::Result<_>>()?;
                let counts: (i64, i64) = tx
                    .prepare_cached(&counts.text)?
                    .query_row(rusqlite::params_from_iter(&counts.binds), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                tx.commit()?;
                Ok((rows, counts))
            })
            .await?;
        let counts = InboxCounts {
            unread: unread as u64,
            unseen: unseen as u64,
        };
        Ok((rows.into_iter().collect::<Result<_>>()?, counts))
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let mut sql = Sql::default();
        push_columns(&mut sql, user_id);
        sql.push(" FROM notifications WHERE user_id = ")
            .bind(user_id)
            .push(" AND dismissed_at IS NULL AND (created_at, id) > (")
            .bind(micros(after.created_at))
            .push(", ")
            .bind(after.id.as_bytes().to_vec())
            .push(") ORDER BY created_at ASC, id ASC LIMIT ")
            .bind(i64::from(limit));
        self.readers
            .all(sql, row_to_notification)
            .await?
            .into_iter()
            .collect()
    }

    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        let mut sql = Sql::default();
        push_columns(&mut sql, user_id);
        sql.push(" FROM notifications WHERE user_id = ")
            .bind(user_id)
            .push(" AND created_at = ")
            .bind(micros(key.created_at))
            .push(" AND id = ")
            .bind(key.id.as_bytes().to_vec())
            .push(" AND dismissed_at IS NULL");
        self.readers
            .one(sql, row_to_notification)
            .await?
            .transpose()
    }

    async fn locate(&self, user_id: &str, id: Uuid) -> Result<Option<InboxKey>> {
        // A scan of the user's range (no index on id): only for ids that carry no time.
        let mut sql = Sql::new("SELECT created_at FROM notifications WHERE user_id = ");
        sql.bind(user_id)
            .push(" AND id = ")
            .bind(id.as_bytes().to_vec())
            .push(" AND dismissed_at IS NULL");
        let at: Option<i64> = self.readers.scan_one(sql, |r| r.get(0)).await?;
        Ok(at.map(|at| InboxKey {
            created_at: from_micros(at),
            id,
        }))
    }

    async fn apply(
        &self,
        user_id: &str,
        keys: &[InboxKey],
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<Vec<InboxKey>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(keys.len() <= MAX_BULK);
        let (_gate, mut tx) = self.db.begin().await?;
        let mut sql = Sql::new("SELECT created_at, id FROM notifications WHERE user_id = ");
        sql.bind(user_id).push(" AND dismissed_at IS NULL");
        push_keys(&mut sql, keys);
        let found: Vec<(i64, Vec<u8>)> = sql
            .query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let found = found
            .into_iter()
            .map(|(created_at, id)| {
                Ok(InboxKey {
                    created_at: from_micros(created_at),
                    id: Uuid::from_slice(&id).map_err(|e| corrupt("notification id", e))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !found.is_empty() {
            let mut sql = Sql::new("UPDATE notifications SET ");
            push_set(&mut sql, action, micros(at));
            sql.push(" WHERE user_id = ")
                .bind(user_id)
                .push(" AND dismissed_at IS NULL");
            push_keys(&mut sql, &found);
            // A row in that state already keeps its time (also one read by the watermark).
            push_changes(&mut sql, user_id, action);
            sql.query()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(found)
    }

    async fn apply_before(
        &self,
        user_id: &str,
        before: InboxKey,
        action: InboxAction,
        at: DateTime<Utc>,
        hidden: &[String],
    ) -> Result<u64> {
        let _gate = self.db.gate().await;
        let mut sql = Sql::new("UPDATE notifications SET ");
        push_set(&mut sql, action, micros(at));
        sql.push(" WHERE user_id = ")
            .bind(user_id)
            .push(" AND (created_at, id) < (")
            .bind(micros(before.created_at))
            .push(", ")
            .bind(before.id.as_bytes().to_vec())
            .push(") AND dismissed_at IS NULL");
        push_changes(&mut sql, user_id, action);
        push_not_hidden(&mut sql, hidden);
        let n = sql
            .query()
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        Ok(n)
    }

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let covered = self
            .move_mark(
                user_id,
                at,
                "INSERT INTO inbox_read_marks (user_id, read_through) VALUES (?, ?) \
                 ON CONFLICT (user_id) DO UPDATE \
                 SET read_through = MAX(read_through, excluded.read_through)",
            )
            .await?;
        Ok(covered.unread)
    }

    async fn mark_all_seen(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        // A user who never read everything gets a read watermark before every row.
        let covered = self
            .move_mark(
                user_id,
                at,
                "INSERT INTO inbox_read_marks (user_id, read_through, seen_through) \
                 VALUES (?, -1, ?) ON CONFLICT (user_id) DO UPDATE \
                 SET seen_through = MAX(COALESCE(seen_through, -1), excluded.seen_through)",
            )
            .await?;
        Ok(covered.unseen)
    }

    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        let _gate = self.db.gate().await;
        let n = sqlx::query(
            "UPDATE notifications SET dismissed_at = ? \
             WHERE user_id = ? AND created_at = ? AND id = ? AND dismissed_at IS NULL",
        )
        .bind(micros(at))
        .bind(user_id)
        .bind(micros(key.created_at))
        .bind(key.id.as_bytes().to_vec())
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected();
        Ok(n > 0)
    }

    async fn counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts> {
        let mut sql = Sql::new("SELECT ");
        push_counts(&mut sql, user_id, hidden);
        push_window(&mut sql, user_id, None);
        let (unread, unseen): (i64, i64) =
            self.aggregate(sql, |r| Ok((r.get(0)?, r.get(1)?))).await?;
        Ok(InboxCounts {
            unread: unread as u64,
            unseen: unseen as u64,
        })
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let total = self
            .db
            .delete_in_chunks(
                "notifications",
                &["user_id", "created_at", "id"],
                "created_at",
                micros(before),
            )
            .await?;
        // A watermark below the cut covers no row any more.
        let _gate = self.db.gate().await;
        sqlx::query(
            "DELETE FROM inbox_read_marks \
             WHERE read_through < ? AND COALESCE(seen_through, -1) < ?",
        )
        .bind(micros(before))
        .bind(micros(before))
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(total)
    }
}
