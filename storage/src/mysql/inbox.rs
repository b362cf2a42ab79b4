//! The inbox store on MySQL 8 / MariaDB 10.11 (schema and its reasons in
//! `migrations/mysql/inbox/0001_init.sql`): one row per personal notification, clustered by
//! `(user_id, created_at, id)` in a table partitioned by user, so a page of an inbox is one
//! index range read in one partition.
//!
//! "Mark all read" moves a per-user read watermark (`inbox_read_marks`); a row at or below it
//! reads as read ("mark all seen" does the same with the seen watermark beside it). Statements read the watermark through an uncorrelated scalar subquery on its
//! primary key, which MariaDB evaluates once while optimizing, so `created_at > (watermark)` is
//! a range of the primary key (`EXPLAIN`: `range` on `PRIMARY`) and a read stays one round
//! trip.
//!
//! Keyset conditions are spelled out (`created_at < ? OR (created_at = ? AND id < ?)`) rather
//! than as row comparisons, which older optimizers do not turn into index ranges. Writes keep
//! an existing row with a no-op `ON DUPLICATE KEY UPDATE`, never `INSERT IGNORE` (which would
//! turn strict mode's errors into warnings and truncate).

use super::{
    chunks_by_size, open_pool, opt_text, retry_transient, text, MAX_PARAMS, MAX_STATEMENT_BYTES,
};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{
    ArchivedFilter, InboxAction, InboxCounts, InboxFilter, InboxKey, Notification, StatusFilter,
};
use herald_core::ports::{InboxStore, MAX_BULK, UNREAD_WINDOW};
use herald_core::Result;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "inbox", "0001_init"),
    migration!("mysql", "inbox", "0002_read_marks"),
    migration!("mysql", "inbox", "0003_states"),
];

/// Rows per multi-row INSERT at most (9 parameters each).
const ROW_CHUNK: usize = MAX_PARAMS / 9;
/// Rows deleted per statement when purging, so a purge never holds locks on millions of rows.
const PURGE_CHUNK: i64 = 5000;

/// A time before every row: the watermark of a user who never read everything.
const NO_MARK: i64 = -1;

/// One of the user's watermarks in a statement: known already, or read by a scalar subquery
/// on the marks' primary key.
#[derive(Clone, Copy)]
enum Mark<'a> {
    Known(i64),
    /// The read watermark of the user.
    Read(&'a str),
    /// The seen watermark of the user (its own column only; a row under the read watermark
    /// is seen through that one).
    Seen(&'a str),
}

impl<'a> Mark<'a> {
    fn push(self, qb: &mut QueryBuilder<'a, MySql>) {
        let (user_id, column) = match self {
            Mark::Known(at) => {
                qb.push_bind(at);
                return;
            }
            Mark::Read(user_id) => (user_id, "read_through"),
            Mark::Seen(user_id) => (user_id, "seen_through"),
        };
        qb.push(format!(
            "COALESCE((SELECT {column} FROM inbox_read_marks WHERE user_id = "
        ))
        .push_bind(user_id)
        .push(format!("), {NO_MARK})"));
    }

    /// `CASE WHEN created_at <= mark THEN mark END`: the mark's time if it covers the row.
    fn push_covering(self, qb: &mut QueryBuilder<'a, MySql>) {
        qb.push("CASE WHEN created_at <= ");
        self.push(qb);
        qb.push(" THEN ");
        self.push(qb);
        qb.push(" END");
    }
}

pub struct MysqlInbox {
    pool: MySqlPool,
}

impl MysqlInbox {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "inbox", 16, MIGRATIONS).await?,
        })
    }
}

fn notification_from_row(row: &MySqlRow) -> Result<Notification> {
    let id: Vec<u8> = row.try_get("id").map_err(db_error)?;
    Ok(Notification {
        id: Uuid::from_slice(&id).map_err(|e| corrupt("notification id", e))?,
        user_id: text(row, "user_id")?,
        campaign_id: opt_text(row, "campaign_id")?,
        title: text(row, "title")?,
        body: text(row, "body")?,
        category: opt_text(row, "category")?,
        data: serde_json::from_str(&text(row, "data")?)
            .map_err(|e| corrupt("notification data", e))?,
        created_at: from_micros(row.try_get("created_at").map_err(db_error)?),
        read_at: opt_from_micros(row.try_get("read_at").map_err(db_error)?),
        seen_at: opt_from_micros(row.try_get("seen_at").map_err(db_error)?),
        archived_at: opt_from_micros(row.try_get("archived_at").map_err(db_error)?),
    })
}

/// ` AND (created_at, id) <op> (key)`, spelled out for the optimizer.
fn push_key_bound(qb: &mut QueryBuilder<'_, MySql>, op: &str, key: InboxKey) {
    let at = micros(key.created_at);
    qb.push(format!(" AND (created_at {op} "))
        .push_bind(at)
        .push(" OR (created_at = ")
        .push_bind(at)
        .push(format!(" AND id {op} "))
        .push_bind(key.id.as_bytes().to_vec())
        .push("))");
}

/// `SELECT <columns> FROM notifications WHERE user_id = ? AND dismissed_at IS NULL`, the read
/// and seen times of each row being its own or a covering watermark's.
/// With `with_counts`, the counts go beside the columns as `counts` ("unread,unseen"): an
/// uncorrelated scalar subquery, evaluated once per statement (not a derived table of the
/// page: MariaDB materialises one holding TEXT columns as an on-disk temporary table, once
/// per read).
fn select_rows<'a>(user_id: &'a str, with_counts: Option<&[String]>) -> QueryBuilder<'a, MySql> {
    let (read, seen) = (Mark::Read(user_id), Mark::Seen(user_id));
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT id, user_id, campaign_id, title, body, category, data, created_at, \
         COALESCE(read_at, ",
    );
    read.push_covering(&mut qb);
    // The earliest of its own seen and read times and the covering watermarks' times.
    const NEVER: &str = "9223372036854775807";
    qb.push(format!(
        ") AS read_at, NULLIF(LEAST(COALESCE(seen_at, {NEVER}), COALESCE(read_at, {NEVER}), \
         COALESCE("
    ));
    read.push_covering(&mut qb);
    qb.push(format!(", {NEVER}), COALESCE("));
    seen.push_covering(&mut qb);
    qb.push(format!(", {NEVER})), {NEVER}) AS seen_at, archived_at"));
    if let Some(hidden) = with_counts {
        qb.push(", ");
        push_counts(&mut qb, user_id, read, None, hidden);
        qb.push(" AS counts");
    }
    qb.push(" FROM notifications WHERE user_id = ")
        .push_bind(user_id)
        .push(" AND dismissed_at IS NULL");
    qb
}

/// The counts above the read watermark `read` (and at or below `upto`) as one value
/// "unread,unseen": unread and unseen visible, unarchived rows among the newest
/// [`UNREAD_WINDOW`], one primary-key range (a derived table of integer columns).
fn push_counts<'a>(
    qb: &mut QueryBuilder<'a, MySql>,
    user_id: &'a str,
    read: Mark<'a>,
    upto: Option<i64>,
    hidden: &[String],
) {
    qb.push(
        "(SELECT CONCAT(COUNT(CASE WHEN read_at IS NULL AND dismissed_at IS NULL \
         AND archived_at IS NULL",
    );
    push_not_hidden(qb, hidden);
    qb.push(
        " THEN 1 END), ',', COUNT(CASE WHEN read_at IS NULL \
         AND seen_at IS NULL AND dismissed_at IS NULL AND archived_at IS NULL",
    );
    push_not_hidden(qb, hidden);
    qb.push(" AND created_at > ");
    Mark::Seen(user_id).push(qb);
    qb.push(
        " THEN 1 END)) FROM (SELECT created_at, campaign_id, read_at, seen_at, dismissed_at, \
         archived_at FROM notifications WHERE user_id = ",
    )
    .push_bind(user_id)
    .push(" AND created_at > ");
    read.push(qb);
    if let Some(upto) = upto {
        qb.push(" AND created_at <= ").push_bind(upto);
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(UNREAD_WINDOW))
        .push(") AS recent)");
}

/// ` AND` the row is not of a `hidden` campaign (nothing when there is none).
fn push_not_hidden(qb: &mut QueryBuilder<'_, MySql>, hidden: &[String]) {
    if hidden.is_empty() {
        return;
    }
    qb.push(" AND (campaign_id IS NULL OR campaign_id NOT IN (");
    let mut list = qb.separated(", ");
    for c in hidden {
        list.push_bind(c.clone());
    }
    qb.push("))");
}

fn parse_counts(counts: &str) -> Result<InboxCounts> {
    let bad = || {
        corrupt(
            "inbox counts",
            herald_core::Error::internal(counts.to_owned()),
        )
    };
    let (unread, unseen) = counts.split_once(',').ok_or_else(bad)?;
    Ok(InboxCounts {
        unread: unread.parse().map_err(|_| bad())?,
        unseen: unseen.parse().map_err(|_| bad())?,
    })
}

/// ` AND` the row is unread: not marked read, above the read watermark.
fn push_unread<'a>(qb: &mut QueryBuilder<'a, MySql>, user_id: &'a str) {
    qb.push(" AND read_at IS NULL AND created_at > ");
    Mark::Read(user_id).push(qb);
}

/// ` AND` the row is unseen: neither marked seen nor read, above both watermarks.
fn push_unseen<'a>(qb: &mut QueryBuilder<'a, MySql>, user_id: &'a str) {
    push_unread(qb, user_id);
    qb.push(" AND seen_at IS NULL AND created_at > ");
    Mark::Seen(user_id).push(qb);
}

/// ` AND` the row is one `action` changes.
fn push_changes<'a>(qb: &mut QueryBuilder<'a, MySql>, user_id: &'a str, action: InboxAction) {
    match action {
        InboxAction::Seen => push_unseen(qb, user_id),
        InboxAction::Read => push_unread(qb, user_id),
        InboxAction::Archive => {
            qb.push(" AND archived_at IS NULL");
        }
        InboxAction::Unarchive => {
            qb.push(" AND archived_at IS NOT NULL");
        }
    }
}

/// The `SET` of an action.
fn push_set(qb: &mut QueryBuilder<'_, MySql>, action: InboxAction, at: i64) {
    match action {
        InboxAction::Seen => qb
            .push("seen_at = COALESCE(seen_at, ")
            .push_bind(at)
            .push(")"),
        InboxAction::Read => qb
            .push("read_at = COALESCE(read_at, ")
            .push_bind(at)
            .push("), seen_at = COALESCE(seen_at, ")
            .push_bind(at)
            .push(")"),
        InboxAction::Archive => qb
            .push("archived_at = COALESCE(archived_at, ")
            .push_bind(at)
            .push(")"),
        InboxAction::Unarchive => qb.push("archived_at = NULL"),
    };
}

/// ` AND` the row is one of `keys` (by whole key).
fn push_keys(qb: &mut QueryBuilder<'_, MySql>, keys: &[InboxKey]) {
    qb.push(" AND (");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push("(created_at = ")
            .push_bind(micros(k.created_at))
            .push(" AND id = ")
            .push_bind(k.id.as_bytes().to_vec())
            .push(")");
    }
    qb.push(")");
}

impl MysqlInbox {
    /// Moves one of the user's watermarks to `at` with `upsert` (binds: user, time) in one
    /// transaction with the counts of what it covers (the window up to `at`, before the move).
    /// The row lock of the watermarks orders concurrent moves of one user.
    async fn move_mark(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        upsert: &'static str,
    ) -> Result<InboxCounts> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let mark: Option<i64> = sqlx::query_scalar(
                "SELECT read_through FROM inbox_read_marks WHERE user_id = ? FOR UPDATE",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mut qb = QueryBuilder::<MySql>::new("SELECT ");
            push_counts(
                &mut qb,
                user_id,
                Mark::Known(mark.unwrap_or(NO_MARK)),
                Some(micros(at)),
                &[],
            );
            let counts: String = qb.build_query_scalar().fetch_one(&mut *tx).await?;
            sqlx::query(upsert)
                .bind(user_id)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(counts)
        })
        .await
        .and_then(|counts| parse_counts(&counts))
    }

    async fn read_counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts> {
        let mut qb = QueryBuilder::<MySql>::new("SELECT ");
        push_counts(&mut qb, user_id, Mark::Read(user_id), None, hidden);
        let counts: String = qb
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        parse_counts(&counts)
    }
}

/// The keyset bound, the filter, the order and the limit of a page.
fn push_page_bounds<'a>(
    qb: &mut QueryBuilder<'a, MySql>,
    user_id: &'a str,
    before: Option<InboxKey>,
    limit: u32,
    filter: InboxFilter<'_>,
) {
    if let Some(before) = before {
        push_key_bound(qb, "<", before);
    }
    match filter.status {
        StatusFilter::All => {}
        StatusFilter::Unread => push_unread(qb, user_id),
        StatusFilter::Unseen => push_unseen(qb, user_id),
    }
    match filter.archived {
        ArchivedFilter::Exclude => qb.push(" AND archived_at IS NULL"),
        ArchivedFilter::Include => &mut *qb,
        ArchivedFilter::Only => qb.push(" AND archived_at IS NOT NULL"),
    };
    push_not_hidden(qb, filter.hidden);
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
}

#[async_trait]
impl InboxStore for MysqlInbox {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn write_batch(&self, rows: &[Notification]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let data: Vec<String> = rows.iter().map(|n| n.data.to_string()).collect();
        let indexed: Vec<(&Notification, &String)> = rows.iter().zip(&data).collect();
        let parts = chunks_by_size(&indexed, ROW_CHUNK, MAX_STATEMENT_BYTES, |(n, data)| {
            n.user_id.len() + n.title.len() + n.body.len() + data.len() + 96
        });
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            for part in &parts {
                let mut qb = QueryBuilder::<MySql>::new(
                    "INSERT INTO notifications \
                     (id, user_id, campaign_id, title, body, category, data, created_at, read_at) ",
                );
                qb.push_values(part.iter(), |mut b, (n, data)| {
                    b.push_bind(n.id.as_bytes().as_slice())
                        .push_bind(&n.user_id)
                        .push_bind(&n.campaign_id)
                        .push_bind(&n.title)
                        .push_bind(&n.body)
                        .push_bind(&n.category)
                        .push_bind(data.as_str())
                        .push_bind(micros(n.created_at))
                        .push_bind(n.read_at.map(micros));
                });
                // A replayed batch must not reset what the user did with the rows since.
                qb.push(" ON DUPLICATE KEY UPDATE id = id");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<Vec<Notification>> {
        let mut qb = select_rows(user_id, None);
        push_page_bounds(&mut qb, user_id, before, limit, filter);
        qb.build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    async fn page_with_counts(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<(Vec<Notification>, InboxCounts)> {
        // One round trip: the page with the counts beside its columns. An empty page brings
        // no row, and so no counts: then they are asked on their own.
        let mut qb = select_rows(user_id, Some(filter.hidden));
        push_page_bounds(&mut qb, user_id, before, limit, filter);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db_error)?;
        let counts = match rows.first() {
            Some(row) => parse_counts(&text(row, "counts")?)?,
            None => self.read_counts(user_id, filter.hidden).await?,
        };
        let page = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((page, counts))
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let mut qb = select_rows(user_id, None);
        push_key_bound(&mut qb, ">", after);
        qb.push(" ORDER BY created_at ASC, id ASC LIMIT ")
            .push_bind(i64::from(limit));
        qb.build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        let mut qb = select_rows(user_id, None);
        qb.push(" AND created_at = ")
            .push_bind(micros(key.created_at))
            .push(" AND id = ")
            .push_bind(key.id.as_bytes().to_vec());
        qb.build()
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(notification_from_row)
            .transpose()
    }

    async fn locate(&self, user_id: &str, id: Uuid) -> Result<Option<InboxKey>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT created_at FROM notifications WHERE user_id = ? AND id = ? \
             AND dismissed_at IS NULL",
        )
        .bind(user_id)
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
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
        // Which rows are there, then one UPDATE of those: every SET keeps an earlier time (or
        // clears one), so the two need no transaction; a row dismissed in between stays so.
        let mut qb =
            QueryBuilder::<MySql>::new("SELECT created_at, id FROM notifications WHERE user_id = ");
        qb.push_bind(user_id).push(" AND dismissed_at IS NULL");
        push_keys(&mut qb, keys);
        let rows: Vec<(i64, Vec<u8>)> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let found = rows
            .into_iter()
            .map(|(created_at, id)| {
                Ok(InboxKey {
                    created_at: from_micros(created_at),
                    id: Uuid::from_slice(&id).map_err(|e| corrupt("notification id", e))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !found.is_empty() {
            let mut qb = QueryBuilder::<MySql>::new("UPDATE notifications SET ");
            push_set(&mut qb, action, micros(at));
            qb.push(" WHERE user_id = ")
                .push_bind(user_id)
                .push(" AND dismissed_at IS NULL");
            push_keys(&mut qb, &found);
            // A row in that state already keeps its time (also one read by the watermark).
            push_changes(&mut qb, user_id, action);
            qb.build().execute(&self.pool).await.map_err(db_error)?;
        }
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
        // Rows matched are rows changed: the WHERE holds only rows the action changes.
        let mut qb = QueryBuilder::<MySql>::new("UPDATE notifications SET ");
        push_set(&mut qb, action, micros(at));
        qb.push(" WHERE user_id = ")
            .push_bind(user_id)
            .push(" AND dismissed_at IS NULL");
        push_key_bound(&mut qb, "<", before);
        push_changes(&mut qb, user_id, action);
        push_not_hidden(&mut qb, hidden);
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n)
    }

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let covered = self
            .move_mark(
                user_id,
                at,
                "INSERT INTO inbox_read_marks (user_id, read_through) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE read_through = GREATEST(read_through, VALUES(read_through))",
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
                 VALUES (?, -1, ?) ON DUPLICATE KEY UPDATE \
                 seen_through = GREATEST(COALESCE(seen_through, -1), VALUES(seen_through))",
            )
            .await?;
        Ok(covered.unseen)
    }

    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE notifications SET dismissed_at = ? \
             WHERE user_id = ? AND created_at = ? AND id = ? AND dismissed_at IS NULL",
        )
        .bind(micros(at))
        .bind(user_id)
        .bind(micros(key.created_at))
        .bind(key.id.as_bytes().as_slice())
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts> {
        self.read_counts(user_id, hidden).await
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let purged = super::delete_in_chunks(
            &self.pool,
            "DELETE FROM notifications WHERE created_at < ? LIMIT ?",
            micros(before),
            PURGE_CHUNK,
        )
        .await?;
        // A watermark below the cut covers no row any more.
        super::delete_in_chunks(
            &self.pool,
            "DELETE FROM inbox_read_marks \
             WHERE GREATEST(read_through, COALESCE(seen_through, -1)) < ? LIMIT ?",
            micros(before),
            PURGE_CHUNK,
        )
        .await?;
        Ok(purged)
    }
}
