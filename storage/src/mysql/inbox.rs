//! The inbox store on MySQL 8 / MariaDB 10.11 (schema and its reasons in
//! `migrations/mysql/inbox/0001_init.sql`): one row per personal notification, clustered by
//! `(user_id, created_at, id)` in a table partitioned by user, so a page of an inbox is one
//! index range read in one partition.
//!
//! "Mark all read" moves a per-user read watermark (`inbox_read_marks`); a row at or below it
//! reads as read. Statements read the watermark through an uncorrelated scalar subquery on its
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
use herald_core::model::{InboxKey, Notification};
use herald_core::ports::{InboxStore, UNREAD_WINDOW};
use herald_core::Result;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "inbox", "0001_init"),
    migration!("mysql", "inbox", "0002_read_marks"),
];

/// Rows per multi-row INSERT at most (9 parameters each).
const ROW_CHUNK: usize = MAX_PARAMS / 9;
/// Rows deleted per statement when purging, so a purge never holds locks on millions of rows.
const PURGE_CHUNK: i64 = 5000;

/// A time before every row: the watermark of a user who never read everything.
const NO_MARK: i64 = -1;

/// The user's read watermark in a statement: known already, or read by a scalar subquery.
#[derive(Clone, Copy)]
enum Mark<'a> {
    Known(i64),
    Of(&'a str),
}

impl<'a> Mark<'a> {
    fn push(self, qb: &mut QueryBuilder<'a, MySql>) {
        match self {
            Mark::Known(at) => {
                qb.push_bind(at);
            }
            Mark::Of(user_id) => {
                qb.push("COALESCE((SELECT read_through FROM inbox_read_marks WHERE user_id = ")
                    .push_bind(user_id)
                    .push(format!("), {NO_MARK})"));
            }
        }
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
/// time of each row being its own or the watermark's.
/// With `with_unread`, the unread count goes beside the columns as `unread`: an uncorrelated
/// scalar subquery, evaluated once per statement (not a derived table of the page: MariaDB
/// materialises one holding TEXT columns as an on-disk temporary table, once per read).
fn select_rows<'a>(user_id: &'a str, with_unread: bool) -> QueryBuilder<'a, MySql> {
    let mark = Mark::Of(user_id);
    let mut qb = QueryBuilder::<MySql>::new(
        "SELECT id, user_id, campaign_id, title, body, category, data, created_at, \
         COALESCE(read_at, CASE WHEN created_at <= ",
    );
    mark.push(&mut qb);
    qb.push(" THEN ");
    mark.push(&mut qb);
    qb.push(" END) AS read_at");
    if with_unread {
        qb.push(", ");
        push_unread_count(&mut qb, user_id, mark, None);
        qb.push(" AS unread");
    }
    qb.push(" FROM notifications WHERE user_id = ")
        .push_bind(user_id)
        .push(" AND dismissed_at IS NULL");
    qb
}

/// The unread count above `mark` (and at or below `upto`): unread visible rows among the
/// newest [`UNREAD_WINDOW`], one primary-key range (a derived table of two integer columns).
fn push_unread_count<'a>(
    qb: &mut QueryBuilder<'a, MySql>,
    user_id: &'a str,
    mark: Mark<'a>,
    upto: Option<i64>,
) {
    qb.push(
        "(SELECT COUNT(*) FROM (SELECT read_at, dismissed_at FROM notifications \
         WHERE user_id = ",
    )
    .push_bind(user_id)
    .push(" AND created_at > ");
    mark.push(qb);
    if let Some(upto) = upto {
        qb.push(" AND created_at <= ").push_bind(upto);
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(UNREAD_WINDOW))
        .push(") AS recent WHERE read_at IS NULL AND dismissed_at IS NULL)");
}

impl MysqlInbox {
    async fn count_unread(&self, user_id: &str) -> Result<u64> {
        let mut qb = QueryBuilder::<MySql>::new("SELECT ");
        push_unread_count(&mut qb, user_id, Mark::Of(user_id), None);
        let n: i64 = qb
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(n as u64)
    }
}

/// The keyset bound, the unread filter, the order and the limit of a page.
fn push_page_bounds<'a>(
    qb: &mut QueryBuilder<'a, MySql>,
    user_id: &'a str,
    before: Option<InboxKey>,
    limit: u32,
    unread_only: bool,
) {
    if let Some(before) = before {
        push_key_bound(qb, "<", before);
    }
    if unread_only {
        qb.push(" AND read_at IS NULL AND created_at > ");
        Mark::Of(user_id).push(qb);
    }
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
        unread_only: bool,
    ) -> Result<Vec<Notification>> {
        let mut qb = select_rows(user_id, false);
        push_page_bounds(&mut qb, user_id, before, limit, unread_only);
        qb.build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    async fn page_with_unread(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        unread_only: bool,
    ) -> Result<(Vec<Notification>, u64)> {
        // One round trip: the page with the count beside its columns. An empty page brings no
        // row, and so no count: then it is asked on its own.
        let mut qb = select_rows(user_id, true);
        push_page_bounds(&mut qb, user_id, before, limit, unread_only);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db_error)?;
        let unread = match rows.first() {
            Some(row) => row.try_get::<i64, _>("unread").map_err(db_error)? as u64,
            None => self.count_unread(user_id).await?,
        };
        let page = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((page, unread))
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let mut qb = select_rows(user_id, false);
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
        let mut qb = select_rows(user_id, false);
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

    async fn mark_read(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        // Rows matched, not changed (sqlx sets CLIENT_FOUND_ROWS): a row read already counts.
        let n = sqlx::query(
            "UPDATE notifications SET read_at = COALESCE(read_at, ?) \
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

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            // The row lock of the watermark orders concurrent "read all"s of one user.
            let mark: Option<i64> = sqlx::query_scalar(
                "SELECT read_through FROM inbox_read_marks WHERE user_id = ? FOR UPDATE",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mark = mark.unwrap_or(NO_MARK);
            let mut qb = QueryBuilder::<MySql>::new("SELECT ");
            push_unread_count(&mut qb, user_id, Mark::Known(mark), Some(micros(at)));
            let covered: i64 = qb.build_query_scalar().fetch_one(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO inbox_read_marks (user_id, read_through) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE read_through = GREATEST(read_through, VALUES(read_through))",
            )
            .bind(user_id)
            .bind(micros(at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(covered as u64)
        })
        .await
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

    async fn unread_count(&self, user_id: &str) -> Result<u64> {
        self.count_unread(user_id).await
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
            "DELETE FROM inbox_read_marks WHERE read_through < ? LIMIT ?",
            micros(before),
            PURGE_CHUNK,
        )
        .await?;
        Ok(purged)
    }
}
