//! The inbox store on ScyllaDB / Cassandra (`migrations/cql/inbox/` says why the tables are
//! shaped as they are). Every read is one partition, from one end, by key; every write is a
//! prepared statement by the whole key. Rows are written with the TTL that makes them expire
//! `inbox.retention_days` after their `created_at`, so there is nothing to purge.

use super::{cql_migration, db_error, prepare};
use crate::migrations::Migration;
use crate::time::{from_micros, micros};
use crate::BackendUrl;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use herald_core::model::{InboxKey, Notification};
use herald_core::ports::InboxStore;
use herald_core::{Error, Result};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[cql_migration!("inbox", "0001_init")];

/// Partitions written at once by one `write_batch`: enough to keep every node of a small
/// cluster busy, few enough that a 1,000-user batch does not queue thousands of requests on
/// one connection.
const WRITES_IN_FLIGHT: usize = 64;

/// The longest TTL CQL takes (20 years).
const MAX_TTL: i64 = 630_720_000;

/// Rows asked for per read when a page skips rows (dismissed ones): at least this many.
const MIN_FETCH: u32 = 32;

/// The statements, exactly as prepared (checked by the tests below and, on a real cluster, by
/// the server when they are prepared at open).
pub mod cql {
    /// The columns a page reads, in the order `Row` decodes them.
    macro_rules! row_columns {
        () => {
            "id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at"
        };
    }

    /// One row of a fan-out batch: the content columns only, so writing it again (a replayed
    /// batch) leaves the read and dismiss state as the user set them.
    pub const INSERT: &str = "INSERT INTO notifications_by_user \
        (user_id, created_at, id, campaign_id, title, body, category, data) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    /// The newest rows.
    pub const NEWEST: &str = concat!(
        "SELECT ",
        row_columns!(),
        " FROM notifications_by_user WHERE user_id = ? LIMIT ?"
    );
    /// The rows strictly older than a key, newest first.
    pub const OLDER: &str = concat!(
        "SELECT ",
        row_columns!(),
        " FROM notifications_by_user WHERE user_id = ? AND (created_at, id) < (?, ?) LIMIT ?"
    );
    /// The rows strictly newer than a key, oldest first (a live feed's resume).
    pub const NEWER: &str = concat!(
        "SELECT ",
        row_columns!(),
        " FROM notifications_by_user WHERE user_id = ? AND (created_at, id) > (?, ?) \
         ORDER BY created_at ASC, id ASC LIMIT ?"
    );
    /// One row's columns by its whole key.
    pub const GET: &str = concat!(
        "SELECT ",
        row_columns!(),
        " FROM notifications_by_user WHERE user_id = ? AND created_at = ? AND id = ?"
    );
    /// One row's state by its whole key.
    pub const ROW: &str = "SELECT title, read_at, dismissed_at FROM notifications_by_user \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const MARK_READ: &str = "UPDATE notifications_by_user USING TTL ? SET read_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const DISMISS: &str = "UPDATE notifications_by_user USING TTL ? SET dismissed_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    /// The unread window: the newest rows above the watermark (the limit is the port's
    /// constant `UNREAD_WINDOW`).
    pub const WINDOW: &str = "SELECT title, read_at, dismissed_at FROM notifications_by_user \
        WHERE user_id = ? AND created_at > ? LIMIT 1000";
    /// The unread window of a "read all": above the old watermark, up to the new one.
    pub const WINDOW_UPTO: &str = "SELECT title, read_at, dismissed_at FROM notifications_by_user \
        WHERE user_id = ? AND created_at > ? AND created_at <= ? LIMIT 1000";
    pub const GET_MARK: &str = "SELECT read_through FROM inbox_read_marks WHERE user_id = ?";
    /// The watermark, written with itself as the write time: the latest watermark wins in
    /// whatever order the writes arrive, so it never moves back, without a read or an LWT.
    pub const SET_MARK: &str = "UPDATE inbox_read_marks USING TIMESTAMP ? AND TTL ? \
        SET read_through = ? WHERE user_id = ?";
}

/// A time before every row: the watermark of a user who never read everything.
const NO_MARK: i64 = -1;

struct Statements {
    insert: PreparedStatement,
    newest: PreparedStatement,
    older: PreparedStatement,
    newer: PreparedStatement,
    get: PreparedStatement,
    row: PreparedStatement,
    mark_read: PreparedStatement,
    dismiss: PreparedStatement,
    window: PreparedStatement,
    window_upto: PreparedStatement,
    get_mark: PreparedStatement,
    set_mark: PreparedStatement,
}

pub struct ScyllaInbox {
    session: Arc<Session>,
    st: Statements,
    retention: Duration,
}

/// `(id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at)`.
type Row = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// Where a scan starts and which way it goes.
#[derive(Clone, Copy)]
enum Scan {
    /// Newest first, strictly older than the key (from the newest row with `None`).
    Older(Option<InboxKey>),
    /// Oldest first, strictly newer than the key.
    Newer(InboxKey),
}

/// `(title, read_at, dismissed_at)` of one row: a row whose title is missing is not a row
/// (only a state cell of one that expired or never was).
type State = (Option<String>, Option<i64>, Option<i64>);

impl ScyllaInbox {
    /// Connects and prepares; rows are kept `retention` after their `created_at`.
    pub async fn open(url: &BackendUrl, retention: Duration) -> Result<Self> {
        let session = super::connect(url, "inbox", MIGRATIONS).await?;
        let s = session.as_ref();
        let st = Statements {
            insert: prepare(s, cql::INSERT).await?,
            newest: prepare(s, cql::NEWEST).await?,
            older: prepare(s, cql::OLDER).await?,
            newer: prepare(s, cql::NEWER).await?,
            get: prepare(s, cql::GET).await?,
            row: prepare(s, cql::ROW).await?,
            mark_read: prepare(s, cql::MARK_READ).await?,
            dismiss: prepare(s, cql::DISMISS).await?,
            window: prepare(s, cql::WINDOW).await?,
            window_upto: prepare(s, cql::WINDOW_UPTO).await?,
            get_mark: prepare(s, cql::GET_MARK).await?,
            set_mark: prepare(s, cql::SET_MARK).await?,
        };
        Ok(Self {
            session,
            st,
            retention,
        })
    }

    /// The session [`ScyllaInbox::open`] works on, keyspace and schema applied, without the
    /// statements prepared: for the smoke suite, whose test server cannot prepare all of them.
    pub async fn schema_session(url: &BackendUrl) -> Result<Arc<Session>> {
        super::connect(url, "inbox", MIGRATIONS).await
    }

    /// The seconds a cell written now for a row created at `created_at` (micros) has left,
    /// or `None` if the row is past its retention.
    fn ttl_of(&self, created_at: i64, now: DateTime<Utc>) -> Option<i32> {
        let expires = created_at.saturating_add(self.retention.as_micros() as i64);
        let left = (expires - micros(now)) / 1_000_000;
        (left > 0).then(|| left.min(MAX_TTL) as i32)
    }

    async fn rows<T>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(db_error)?
            .into_rows_result()
            .map_err(db_error)?;
        let rows = result
            .rows::<T>()
            .map_err(db_error)?
            .collect::<std::result::Result<Vec<T>, _>>()
            .map_err(db_error)?;
        Ok(rows)
    }

    async fn mark(&self, user_id: &str) -> Result<i64> {
        let marks: Vec<(Option<i64>,)> = self.rows(&self.st.get_mark, (user_id,)).await?;
        Ok(marks.first().and_then(|(m,)| *m).unwrap_or(NO_MARK))
    }

    /// The row's state, if it is a row.
    async fn state(&self, user_id: &str, key: InboxKey) -> Result<Option<State>> {
        let rows: Vec<State> = self
            .rows(&self.st.row, (user_id, micros(key.created_at), key.id))
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .filter(|(title, _, _)| title.is_some()))
    }

    /// Sets one state cell of a row (`MARK_READ`, `DISMISS`) to `at`, with the TTL the row has
    /// left; `false` if it has just run out.
    async fn write_state(
        &self,
        st: &PreparedStatement,
        user_id: &str,
        key: InboxKey,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let created_at = micros(key.created_at);
        let Some(ttl) = self.ttl_of(created_at, Utc::now()) else {
            return Ok(false);
        };
        self.session
            .execute_unpaged(st, (ttl, micros(at), user_id, created_at, key.id))
            .await
            .map_err(db_error)?;
        Ok(true)
    }

    /// Up to `limit` visible rows from `from` on, reading `limit` (at least [`MIN_FETCH`]) at a
    /// time until enough are visible or the partition ends. `unread_only` (newest first only)
    /// skips rows read one by one and stops at the watermark.
    async fn scan(
        &self,
        user_id: &str,
        mut from: Scan,
        limit: u32,
        unread_only: bool,
        mark: i64,
    ) -> Result<Vec<Notification>> {
        let mut out = Vec::new();
        let fetch = limit.max(MIN_FETCH);
        while (out.len() as u32) < limit {
            let rows = match from {
                Scan::Older(before) => self.older(user_id, before, fetch).await?,
                Scan::Newer(after) => {
                    let values = (user_id, micros(after.created_at), after.id, fetch as i32);
                    self.rows(&self.st.newer, values).await?
                }
            };
            let exhausted = (rows.len() as u32) < fetch;
            if let Some(last) = rows.last() {
                from = match from {
                    Scan::Older(_) => Scan::Older(Some(key_of(last))),
                    Scan::Newer(_) => Scan::Newer(key_of(last)),
                };
            }
            for row in rows {
                if unread_only {
                    if row.6 <= mark {
                        // Newest first: everything from here on is under the watermark.
                        return Ok(out);
                    }
                    if row.7.is_some() {
                        continue;
                    }
                }
                if let Some(n) = visible(user_id, row, mark)? {
                    out.push(n);
                    if out.len() as u32 == limit {
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// The unread rows of the window above `mark`.
    async fn count_unread(&self, user_id: &str, mark: i64) -> Result<u64> {
        let window: Vec<State> = self.rows(&self.st.window, (user_id, mark)).await?;
        Ok(unread_in(&window))
    }

    /// One read of up to `n` rows older than `before` (newest when `None`).
    async fn older(&self, user_id: &str, before: Option<InboxKey>, n: u32) -> Result<Vec<Row>> {
        let n = n as i32;
        match before {
            None => self.rows(&self.st.newest, (user_id, n)).await,
            Some(k) => {
                self.rows(&self.st.older, (user_id, micros(k.created_at), k.id, n))
                    .await
            }
        }
    }
}

fn unread_in(window: &[State]) -> u64 {
    window
        .iter()
        .filter(|(title, read_at, dismissed_at)| {
            title.is_some() && read_at.is_none() && dismissed_at.is_none()
        })
        .count() as u64
}

/// A stored row as a notification, its read time being its own or the watermark's; `None`
/// for what is not a visible row (dismissed, or a bare state cell).
fn visible(user_id: &str, row: Row, mark: i64) -> Result<Option<Notification>> {
    let (id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at) = row;
    let (Some(title), None) = (title, dismissed_at) else {
        return Ok(None);
    };
    let data = match data {
        Some(d) => serde_json::from_str(&d)
            .map_err(|e| Error::internal("corrupt notification data").with_source(e))?,
        None => serde_json::Value::Null,
    };
    let read_at = read_at.or((created_at <= mark).then_some(mark));
    Ok(Some(Notification {
        id,
        user_id: user_id.to_owned(),
        campaign_id,
        title,
        body: body.unwrap_or_default(),
        category,
        data,
        created_at: from_micros(created_at),
        read_at: read_at.map(from_micros),
    }))
}

/// The INSERT's values of one row (with its data as JSON and its TTL).
type InsertValues = (
    String,
    i64,
    Uuid,
    Option<String>,
    String,
    String,
    Option<String>,
    String,
    i32,
);

fn insert_values(n: &Notification, ttl: i32) -> InsertValues {
    (
        n.user_id.clone(),
        micros(n.created_at),
        n.id,
        n.campaign_id.clone(),
        n.title.clone(),
        n.body.clone(),
        n.category.clone(),
        n.data.to_string(),
        ttl,
    )
}

fn key_of(row: &Row) -> InboxKey {
    InboxKey {
        created_at: from_micros(row.6),
        id: row.0,
    }
}

#[async_trait]
impl InboxStore for ScyllaInbox {
    async fn ping(&self) -> Result<()> {
        self.mark("herald-ping").await.map(|_| ())
    }

    async fn write_batch(&self, rows: &[Notification]) -> Result<()> {
        let now = Utc::now();
        // Grouped by partition: one statement per user, or an unlogged batch (one partition,
        // so one replica set and one mutation) for a user with several rows.
        let mut by_user: BTreeMap<&str, Vec<InsertValues>> = BTreeMap::new();
        for n in rows {
            let Some(ttl) = self.ttl_of(micros(n.created_at), now) else {
                continue; // past retention already: it would expire as it is written
            };
            by_user
                .entry(n.user_id.as_str())
                .or_default()
                .push(insert_values(n, ttl));
        }
        // Owned values, so the futures borrow nothing but `self`.
        let groups: Vec<Vec<InsertValues>> = by_user.into_values().collect();
        futures::stream::iter(groups)
            .map(|mut group| async move {
                if group.len() == 1 {
                    let one = group.pop().expect("one row");
                    self.session
                        .execute_unpaged(&self.st.insert, one)
                        .await
                        .map_err(db_error)?;
                } else {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    batch.set_is_idempotent(true);
                    for _ in &group {
                        batch.append_statement(self.st.insert.clone());
                    }
                    self.session.batch(&batch, group).await.map_err(db_error)?;
                }
                Ok::<(), Error>(())
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        unread_only: bool,
    ) -> Result<Vec<Notification>> {
        let mark = self.mark(user_id).await?;
        self.scan(user_id, Scan::Older(before), limit, unread_only, mark)
            .await
    }

    async fn page_with_unread(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        unread_only: bool,
    ) -> Result<(Vec<Notification>, u64)> {
        // One watermark read for both, then the page and the unread window side by side.
        let mark = self.mark(user_id).await?;
        tokio::try_join!(
            self.scan(user_id, Scan::Older(before), limit, unread_only, mark),
            self.count_unread(user_id, mark),
        )
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let mark = self.mark(user_id).await?;
        self.scan(user_id, Scan::Newer(after), limit, false, mark)
            .await
    }

    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        let (mark, rows) = tokio::try_join!(
            self.mark(user_id),
            self.rows::<Row>(&self.st.get, (user_id, micros(key.created_at), key.id)),
        )?;
        match rows.into_iter().next() {
            Some(row) => visible(user_id, row, mark),
            None => Ok(None),
        }
    }

    async fn locate(&self, _user_id: &str, _id: Uuid) -> Result<Option<InboxKey>> {
        // Every row on this engine was written with an id that carries its time.
        Ok(None)
    }

    async fn mark_read(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        // One point read answers "is there such a visible row" (a 404 otherwise) and keeps an
        // earlier read time; the write is one cell with the TTL the row has left.
        let Some((_, read_at, dismissed_at)) = self.state(user_id, key).await? else {
            return Ok(false);
        };
        if dismissed_at.is_some() {
            return Ok(false);
        }
        if read_at.is_some() {
            return Ok(true);
        }
        self.write_state(&self.st.mark_read, user_id, key, at).await
    }

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let old = self.mark(user_id).await?;
        let at = micros(at);
        let covered = if at > old {
            let window: Vec<State> = self.rows(&self.st.window_upto, (user_id, old, at)).await?;
            unread_in(&window)
        } else {
            0
        };
        // Kept as long as a row it covers can be: a retention period.
        let ttl = self.retention.as_secs().clamp(1, MAX_TTL as u64) as i32;
        self.session
            .execute_unpaged(&self.st.set_mark, (at, ttl, at, user_id))
            .await
            .map_err(db_error)?;
        Ok(covered)
    }

    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        let Some((_, _, dismissed_at)) = self.state(user_id, key).await? else {
            return Ok(false);
        };
        if dismissed_at.is_some() {
            return Ok(false);
        }
        self.write_state(&self.st.dismiss, user_id, key, at).await
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64> {
        let mark = self.mark(user_id).await?;
        self.count_unread(user_id, mark).await
    }

    async fn purge_before(&self, _before: DateTime<Utc>) -> Result<u64> {
        // Rows and watermarks expire by their TTL.
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::cql;
    use herald_core::ports::UNREAD_WINDOW;

    fn markers(s: &str) -> usize {
        s.matches('?').count()
    }

    #[test]
    fn every_statement_has_the_bind_markers_its_values_fill() {
        for (name, s, n) in [
            ("INSERT", cql::INSERT, 9),
            ("NEWEST", cql::NEWEST, 2),
            ("OLDER", cql::OLDER, 4),
            ("NEWER", cql::NEWER, 4),
            ("GET", cql::GET, 3),
            ("ROW", cql::ROW, 3),
            ("MARK_READ", cql::MARK_READ, 5),
            ("DISMISS", cql::DISMISS, 5),
            ("WINDOW", cql::WINDOW, 2),
            ("WINDOW_UPTO", cql::WINDOW_UPTO, 3),
            ("GET_MARK", cql::GET_MARK, 1),
            ("SET_MARK", cql::SET_MARK, 4),
        ] {
            assert_eq!(markers(s), n, "{name}: {s}");
        }
    }

    #[test]
    fn the_statements_are_exactly_these() {
        assert_eq!(
            cql::INSERT,
            "INSERT INTO notifications_by_user (user_id, created_at, id, campaign_id, title, \
             body, category, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        );
        let cols =
            "id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at";
        assert_eq!(
            cql::NEWEST,
            format!("SELECT {cols} FROM notifications_by_user WHERE user_id = ? LIMIT ?")
        );
        assert_eq!(
            cql::OLDER,
            format!(
                "SELECT {cols} FROM notifications_by_user WHERE user_id = ? \
                 AND (created_at, id) < (?, ?) LIMIT ?"
            )
        );
        assert_eq!(
            cql::NEWER,
            format!(
                "SELECT {cols} FROM notifications_by_user WHERE user_id = ? \
                 AND (created_at, id) > (?, ?) ORDER BY created_at ASC, id ASC LIMIT ?"
            )
        );
        assert_eq!(
            cql::SET_MARK,
            "UPDATE inbox_read_marks USING TIMESTAMP ? AND TTL ? SET read_through = ? \
             WHERE user_id = ?"
        );
    }

    #[test]
    fn reads_are_by_partition_and_clustering_key_only() {
        for s in [
            cql::NEWEST,
            cql::OLDER,
            cql::NEWER,
            cql::GET,
            cql::ROW,
            cql::WINDOW,
            cql::WINDOW_UPTO,
            cql::GET_MARK,
        ] {
            assert!(s.contains("WHERE user_id = ?"), "{s}");
            let upper = s.to_ascii_uppercase();
            assert!(!upper.contains("ALLOW FILTERING"), "{s}");
            assert!(!upper.contains(" IF "), "no LWT: {s}");
            // Only the key columns are restricted.
            let filter = &s[s.find("WHERE").unwrap()..];
            for col in [
                "title",
                "body",
                "read_at",
                "dismissed_at",
                "campaign_id",
                "read_through",
            ] {
                assert!(!filter.contains(col), "{col} restricted in {s}");
            }
        }
        for s in [cql::INSERT, cql::MARK_READ, cql::DISMISS, cql::SET_MARK] {
            let upper = s.to_ascii_uppercase();
            assert!(!upper.contains(" IF "), "no LWT: {s}");
            assert!(upper.contains("TTL ?"), "every write carries its TTL: {s}");
        }
    }

    #[test]
    fn the_unread_window_reads_the_ports_window() {
        let limit = format!("LIMIT {UNREAD_WINDOW}");
        assert!(cql::WINDOW.ends_with(&limit), "{}", cql::WINDOW);
        assert!(cql::WINDOW_UPTO.ends_with(&limit), "{}", cql::WINDOW_UPTO);
    }

    #[test]
    fn the_schema_file_has_the_tables_the_statements_use() {
        let schema = super::MIGRATIONS[0].sql;
        assert!(schema.contains("PRIMARY KEY ((user_id), created_at, id)"));
        assert!(schema.contains("CLUSTERING ORDER BY (created_at DESC, id DESC)"));
        assert!(schema.contains("CREATE TABLE IF NOT EXISTS inbox_read_marks"));
        let statements: Vec<String> = super::MIGRATIONS[0].statements().collect();
        assert_eq!(statements.len(), 2, "{statements:#?}");
        for s in &statements {
            let upper = s.to_ascii_uppercase();
            assert!(upper.starts_with("CREATE TABLE IF NOT EXISTS"), "{s}");
            assert!(!upper.contains("INDEX"), "no secondary index: {s}");
        }
    }
}
