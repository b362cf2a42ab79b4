//! The inbox store on SQLite: one row per personal notification, clustered by
//! `(user_id, created_at, id)` so a page of an inbox is one index range read, and one read
//! watermark per user who ever marked everything read (`inbox_read_marks`). Every statement
//! addresses rows by their whole key or by a range of one user's keys.

use super::SqliteFile;
use super::{Db, MAX_PARAMS};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{InboxKey, Notification};
use herald_core::ports::{InboxStore, UNREAD_WINDOW};
use herald_core::Result;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "inbox", "0001_init"),
    migration!("sqlite", "inbox", "0002_read_marks"),
];
/// Rows per multi-row INSERT (9 parameters each). Measured faster than one JSON parameter
/// unpacked with `json_each`, which re-parses each row object once per column.
const ROW_CHUNK: usize = MAX_PARAMS / 9;
/// Rows deleted per statement when purging, so a purge never holds the writer for long.
const PURGE_CHUNK: i64 = 10_000;

/// A notification as `page` reads it back from SQLite's JSON.
#[derive(serde::Deserialize)]
struct RowOut {
    id: String,
    user_id: String,
    campaign_id: Option<String>,
    title: String,
    body: String,
    category: Option<String>,
    data: serde_json::Value,
    created_at: i64,
    read_at: Option<i64>,
}

impl RowOut {
    fn into_notification(self) -> Result<Notification> {
        Ok(Notification {
            id: Uuid::parse_str(&self.id).map_err(|e| corrupt("notification id", e))?,
            user_id: self.user_id,
            campaign_id: self.campaign_id,
            title: self.title,
            body: self.body,
            category: self.category,
            data: self.data,
            created_at: from_micros(self.created_at),
            read_at: opt_from_micros(self.read_at),
        })
    }
}

/// Appends the page subquery: the user's visible rows older than `before`, newest first, as
/// ONE JSON array value, so sqlx hands over one value instead of a row (and a thread hop) per
/// notification.
fn push_page_json(
    qb: &mut QueryBuilder<'_, Sqlite>,
    user_id: &str,
    before: Option<InboxKey>,
    limit: u32,
    unread_only: bool,
) {
    qb.push(
        "(SELECT json_group_array(json_object('id', hex(id), 'user_id', user_id, \
         'campaign_id', campaign_id, 'title', title, 'body', body, 'category', category, \
         'data', json(data), 'created_at', created_at, 'read_at', ",
    );
    push_read_at(qb, user_id);
    qb.push(")) FROM (SELECT * FROM notifications WHERE user_id = ");
    qb.push_bind(user_id.to_owned())
        .push(" AND dismissed_at IS NULL");
    if let Some(before) = before {
        qb.push(" AND (created_at, id) < (")
            .push_bind(micros(before.created_at))
            .push(", ")
            .push_bind(before.id.as_bytes().to_vec())
            .push(")");
    }
    if unread_only {
        qb.push(" AND read_at IS NULL AND created_at > ");
        push_mark_or_none(qb, user_id);
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit))
        .push("))");
}

/// The user's read watermark (NULL when they never read everything): a scalar subquery,
/// evaluated once per statement.
fn push_mark(qb: &mut QueryBuilder<'_, Sqlite>, user_id: &str) {
    qb.push("(SELECT read_through FROM inbox_read_marks WHERE user_id = ")
        .push_bind(user_id.to_owned())
        .push(")");
}

/// The watermark, or a time before every row.
fn push_mark_or_none(qb: &mut QueryBuilder<'_, Sqlite>, user_id: &str) {
    qb.push("COALESCE(");
    push_mark(qb, user_id);
    qb.push(", -1)");
}

/// A row's read time: its own, else the watermark's if the watermark covers it.
fn push_read_at(qb: &mut QueryBuilder<'_, Sqlite>, user_id: &str) {
    qb.push("COALESCE(read_at, CASE WHEN created_at <= ");
    push_mark(qb, user_id);
    qb.push(" THEN ");
    push_mark(qb, user_id);
    qb.push(" END)");
}

/// The unread count: unread visible rows among the newest [`UNREAD_WINDOW`] above the
/// watermark (and at or below `upto`), one range of the primary key.
fn push_unread_count(qb: &mut QueryBuilder<'_, Sqlite>, user_id: &str, upto: Option<i64>) {
    qb.push(
        "(SELECT COUNT(*) FROM (SELECT read_at, dismissed_at FROM notifications \
         WHERE user_id = ",
    )
    .push_bind(user_id.to_owned())
    .push(" AND created_at > ");
    push_mark_or_none(qb, user_id);
    if let Some(upto) = upto {
        qb.push(" AND created_at <= ").push_bind(upto);
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(UNREAD_WINDOW))
        .push(") WHERE read_at IS NULL AND dismissed_at IS NULL)");
}

fn parse_page(json: Option<String>) -> Result<Vec<Notification>> {
    let rows: Vec<RowOut> = serde_json::from_str(json.as_deref().unwrap_or("[]"))
        .map_err(|e| corrupt("notifications", e))?;
    let mut page = rows
        .into_iter()
        .map(RowOut::into_notification)
        .collect::<Result<Vec<_>>>()?;
    // The aggregate's order follows the subquery in practice; sorting makes it a guarantee.
    page.sort_by_key(|n| std::cmp::Reverse(n.key()));
    Ok(page)
}

pub struct SqliteInbox {
    db: Db,
    pool: SqlitePool,
}

impl SqliteFile for SqliteInbox {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteInbox {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let db = Db::open(url, 8, MIGRATIONS).await?;
        Ok(Self {
            pool: db.pool.clone(),
            db,
        })
    }
}

fn row_to_notification(row: &SqliteRow) -> Result<Notification> {
    let id: Vec<u8> = row.get("id");
    let data: String = row.get("data");
    Ok(Notification {
        id: Uuid::from_slice(&id).map_err(|e| corrupt("notification id", e))?,
        user_id: row.get("user_id"),
        campaign_id: row.get("campaign_id"),
        title: row.get("title"),
        body: row.get("body"),
        category: row.get("category"),
        data: serde_json::from_str(&data).map_err(|e| corrupt("notification data", e))?,
        created_at: from_micros(row.get("created_at")),
        read_at: opt_from_micros(row.get("read_at")),
    })
}

#[async_trait]
impl InboxStore for SqliteInbox {
    async fn ping(&self) -> Result<()> {
        super::ping_writable(&self.pool).await
    }

    async fn write_batch(&self, rows: &[Notification]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (_gate, mut tx) = self.db.begin().await?;
        for chunk in rows.chunks(ROW_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO notifications \
                 (id, user_id, campaign_id, title, body, category, data, created_at, read_at) ",
            );
            qb.push_values(chunk, |mut b, n| {
                b.push_bind(n.id.as_bytes().to_vec())
                    .push_bind(&n.user_id)
                    .push_bind(&n.campaign_id)
                    .push_bind(&n.title)
                    .push_bind(&n.body)
                    .push_bind(&n.category)
                    .push_bind(n.data.to_string())
                    .push_bind(micros(n.created_at))
                    .push_bind(n.read_at.map(micros));
            });
            // A replayed batch must not reset what the user did with the rows since.
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        unread_only: bool,
    ) -> Result<Vec<Notification>> {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
        push_page_json(&mut qb, user_id, before, limit, unread_only);
        let (json,): (Option<String>,) = qb
            .build_query_as()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        parse_page(json)
    }

    async fn page_with_unread(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        unread_only: bool,
    ) -> Result<(Vec<Notification>, u64)> {
        // Both in one statement: one trip to sqlx's connection thread instead of two.
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
        push_page_json(&mut qb, user_id, before, limit, unread_only);
        qb.push(", ");
        push_unread_count(&mut qb, user_id, None);
        let (json, unread): (Option<String>, i64) = qb
            .build_query_as()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok((parse_page(json)?, unread as u64))
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, user_id, campaign_id, title, body, category, data, created_at, ",
        );
        push_read_at(&mut qb, user_id);
        qb.push(" AS read_at FROM notifications WHERE user_id = ")
            .push_bind(user_id.to_owned())
            .push(" AND dismissed_at IS NULL AND (created_at, id) > (")
            .push_bind(micros(after.created_at))
            .push(", ")
            .push_bind(after.id.as_bytes().to_vec())
            .push(") ORDER BY created_at ASC, id ASC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        rows.iter().map(row_to_notification).collect()
    }

    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, user_id, campaign_id, title, body, category, data, created_at, ",
        );
        push_read_at(&mut qb, user_id);
        qb.push(" AS read_at FROM notifications WHERE user_id = ")
            .push_bind(user_id.to_owned())
            .push(" AND created_at = ")
            .push_bind(micros(key.created_at))
            .push(" AND id = ")
            .push_bind(key.id.as_bytes().to_vec())
            .push(" AND dismissed_at IS NULL");
        let row = qb
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        row.as_ref().map(row_to_notification).transpose()
    }

    async fn locate(&self, user_id: &str, id: Uuid) -> Result<Option<InboxKey>> {
        // A scan of the user's range (no index on id): only for ids that carry no time.
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT created_at FROM notifications WHERE user_id = ? AND id = ? \
             AND dismissed_at IS NULL",
        )
        .bind(user_id)
        .bind(id.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(at.map(|at| InboxKey {
            created_at: from_micros(at),
            id,
        }))
    }

    async fn mark_read(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        let _gate = self.db.gate().await;
        let n = sqlx::query(
            "UPDATE notifications SET read_at = COALESCE(read_at, ?) \
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

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let (_gate, mut tx) = self.db.begin().await?;
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
        push_unread_count(&mut qb, user_id, Some(micros(at)));
        let (covered,): (i64,) = qb
            .build_query_as()
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        sqlx::query(
            "INSERT INTO inbox_read_marks (user_id, read_through) VALUES (?, ?) \
             ON CONFLICT (user_id) DO UPDATE \
             SET read_through = MAX(read_through, excluded.read_through)",
        )
        .bind(user_id)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(covered as u64)
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

    async fn unread_count(&self, user_id: &str) -> Result<u64> {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
        push_unread_count(&mut qb, user_id, None);
        let (n,): (i64,) = qb
            .build_query_as()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(n as u64)
    }

    async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut total = 0;
        loop {
            let _gate = self.db.gate().await;
            let n = sqlx::query(
                "DELETE FROM notifications WHERE (user_id, created_at, id) IN \
                 (SELECT user_id, created_at, id FROM notifications WHERE created_at < ? LIMIT ?)",
            )
            .bind(micros(before))
            .bind(PURGE_CHUNK)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
            total += n;
            if n < PURGE_CHUNK as u64 {
                // A watermark below the cut covers no row any more.
                sqlx::query("DELETE FROM inbox_read_marks WHERE read_through < ?")
                    .bind(micros(before))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.db_error(e))?;
                return Ok(total);
            }
        }
    }
}
