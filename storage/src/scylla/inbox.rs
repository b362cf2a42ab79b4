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
use herald_core::model::{
    InboxAction, InboxCounts, InboxFilter, InboxKey, Notification, StatusFilter,
};
use herald_core::ports::InboxStore;
use herald_core::{Error, Result};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    cql_migration!("inbox", "0001_init"),
    cql_migration!("inbox", "0002_states"),
];

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
            "id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at, \
             seen_at, archived_at"
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
    pub const ROW: &str = "SELECT title, read_at, dismissed_at, seen_at, archived_at \
        FROM notifications_by_user WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const MARK_READ: &str = "UPDATE notifications_by_user USING TTL ? SET read_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    /// Read and seen at once (a row read before it was seen).
    pub const MARK_READ_SEEN: &str = "UPDATE notifications_by_user USING TTL ? \
        SET read_at = ?, seen_at = ? WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const MARK_SEEN: &str = "UPDATE notifications_by_user USING TTL ? SET seen_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const ARCHIVE: &str = "UPDATE notifications_by_user USING TTL ? SET archived_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    /// Deletes the archive cell (nothing to expire: a deletion).
    pub const UNARCHIVE: &str = "DELETE archived_at FROM notifications_by_user \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    pub const DISMISS: &str = "UPDATE notifications_by_user USING TTL ? SET dismissed_at = ? \
        WHERE user_id = ? AND created_at = ? AND id = ?";
    /// The count window: the newest rows above the read watermark (the limit is the port's
    /// constant `UNREAD_WINDOW`).
    pub const WINDOW: &str = "SELECT created_at, campaign_id, title, read_at, dismissed_at, \
        seen_at, archived_at FROM notifications_by_user WHERE user_id = ? AND created_at > ? \
        LIMIT 1000";
    /// The count window of a "read all" or "seen all": above the read watermark, up to the
    /// new one.
    pub const WINDOW_UPTO: &str = "SELECT created_at, campaign_id, title, read_at, \
        dismissed_at, seen_at, archived_at FROM notifications_by_user WHERE user_id = ? \
        AND created_at > ? AND created_at <= ? LIMIT 1000";
    pub const GET_MARK: &str =
        "SELECT read_through, seen_through FROM inbox_read_marks WHERE user_id = ?";
    /// The watermark, written with itself as the write time: the latest watermark wins in
    /// whatever order the writes arrive, so it never moves back, without a read or an LWT.
    pub const SET_MARK: &str = "UPDATE inbox_read_marks USING TIMESTAMP ? AND TTL ? \
        SET read_through = ? WHERE user_id = ?";
    /// The seen watermark, written as the read one is.
    pub const SET_SEEN_MARK: &str = "UPDATE inbox_read_marks USING TIMESTAMP ? AND TTL ? \
        SET seen_through = ? WHERE user_id = ?";
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
    mark_read_seen: PreparedStatement,
    mark_seen: PreparedStatement,
    archive: PreparedStatement,
    unarchive: PreparedStatement,
    dismiss: PreparedStatement,
    window: PreparedStatement,
    window_upto: PreparedStatement,
    get_mark: PreparedStatement,
    set_mark: PreparedStatement,
    set_seen_mark: PreparedStatement,
}

pub struct ScyllaInbox {
    session: Arc<Session>,
    st: Statements,
    retention: Duration,
}

/// `(id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at,
/// seen_at, archived_at)`.
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
    Option<i64>,
    Option<i64>,
);

/// A user's watermarks: read, and seen (its own column; a row under either is seen).
#[derive(Clone, Copy)]
struct Marks {
    read: i64,
    seen: i64,
}

impl Marks {
    /// Everything at or below this is seen.
    fn seen_through(&self) -> i64 {
        self.read.max(self.seen)
    }
}

/// The state cells of one row, as every state decision needs them.
#[derive(Clone, Copy, Default)]
struct Cells {
    created_at: i64,
    read_at: Option<i64>,
    seen_at: Option<i64>,
    archived_at: Option<i64>,
}

impl Cells {
    fn read(&self, marks: Marks) -> bool {
        self.read_at.is_some() || self.created_at <= marks.read
    }

    fn seen(&self, marks: Marks) -> bool {
        self.seen_at.is_some() || self.read(marks) || self.created_at <= marks.seen_through()
    }

    /// Whether `action` changes this row.
    fn changed_by(&self, action: InboxAction, marks: Marks) -> bool {
        match action {
            InboxAction::Seen => !self.seen(marks),
            InboxAction::Read => !self.read(marks),
            InboxAction::Archive => self.archived_at.is_none(),
            InboxAction::Unarchive => self.archived_at.is_some(),
        }
    }
}

/// Where a scan starts and which way it goes.
#[derive(Clone, Copy)]
enum Scan {
    /// Newest first, strictly older than the key (from the newest row with `None`).
    Older(Option<InboxKey>),
    /// Oldest first, strictly newer than the key.
    Newer(InboxKey),
}

/// `(title, read_at, dismissed_at, seen_at, archived_at)` of one row: a row whose title is
/// missing is not a row (only a state cell of one that expired or never was).
type State = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// `(created_at, campaign_id, title, read_at, dismissed_at, seen_at, archived_at)` of a
/// count window.
type WindowRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

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
            mark_read_seen: prepare(s, cql::MARK_READ_SEEN).await?,
            mark_seen: prepare(s, cql::MARK_SEEN).await?,
            archive: prepare(s, cql::ARCHIVE).await?,
            unarchive: prepare(s, cql::UNARCHIVE).await?,
            dismiss: prepare(s, cql::DISMISS).await?,
            window: prepare(s, cql::WINDOW).await?,
            window_upto: prepare(s, cql::WINDOW_UPTO).await?,
            get_mark: prepare(s, cql::GET_MARK).await?,
            set_mark: prepare(s, cql::SET_MARK).await?,
            set_seen_mark: prepare(s, cql::SET_SEEN_MARK).await?,
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

    async fn marks(&self, user_id: &str) -> Result<Marks> {
        let marks: Vec<(Option<i64>, Option<i64>)> =
            self.rows(&self.st.get_mark, (user_id,)).await?;
        let (read, seen) = marks.first().copied().unwrap_or((None, None));
        Ok(Marks {
            read: read.unwrap_or(NO_MARK),
            seen: seen.unwrap_or(NO_MARK),
        })
    }

    /// The row's state cells, if it is a visible row (not dismissed).
    async fn state(&self, user_id: &str, key: InboxKey) -> Result<Option<Cells>> {
        let created_at = micros(key.created_at);
        let rows: Vec<State> = self
            .rows(&self.st.row, (user_id, created_at, key.id))
            .await?;
        Ok(rows.into_iter().next().and_then(
            |(title, read_at, dismissed_at, seen_at, archived_at)| {
                (title.is_some() && dismissed_at.is_none()).then_some(Cells {
                    created_at,
                    read_at,
                    seen_at,
                    archived_at,
                })
            },
        ))
    }

    /// Sets one state cell of a row (`DISMISS` and the like) to `at`, with the TTL the row
    /// has left; `false` if it has just run out.
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

    /// Writes what `action` changes in a row whose cells are `cells` (nothing if it changes
    /// nothing): one statement by the whole key.
    async fn write_action(
        &self,
        user_id: &str,
        key: InboxKey,
        cells: Cells,
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let created_at = micros(key.created_at);
        let st = match action {
            InboxAction::Seen if cells.seen_at.is_none() && cells.read_at.is_none() => {
                &self.st.mark_seen
            }
            InboxAction::Read if cells.read_at.is_none() => {
                if cells.seen_at.is_none() {
                    let Some(ttl) = self.ttl_of(created_at, Utc::now()) else {
                        return Ok(false);
                    };
                    let at = micros(at);
                    self.session
                        .execute_unpaged(
                            &self.st.mark_read_seen,
                            (ttl, at, at, user_id, created_at, key.id),
                        )
                        .await
                        .map_err(db_error)?;
                    return Ok(true);
                }
                &self.st.mark_read
            }
            InboxAction::Archive if cells.archived_at.is_none() => &self.st.archive,
            InboxAction::Unarchive if cells.archived_at.is_some() => {
                self.session
                    .execute_unpaged(&self.st.unarchive, (user_id, created_at, key.id))
                    .await
                    .map_err(db_error)?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.write_state(st, user_id, key, at).await
    }

    /// Up to `limit` visible rows from `from` on that pass `filter`, reading `limit` (at
    /// least [`MIN_FETCH`]) at a time until enough pass or the partition ends. Unread and
    /// unseen reads (newest first only) stop at their watermark.
    async fn scan(
        &self,
        user_id: &str,
        mut from: Scan,
        limit: u32,
        filter: InboxFilter<'_>,
        marks: Marks,
    ) -> Result<Vec<Notification>> {
        let mut out = Vec::new();
        let fetch = limit.max(MIN_FETCH);
        let stop_at = match filter.status {
            StatusFilter::All => None,
            StatusFilter::Unread => Some(marks.read),
            StatusFilter::Unseen => Some(marks.seen_through()),
        };
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
                if matches!(from, Scan::Older(_)) && stop_at.is_some_and(|m| row.6 <= m) {
                    // Newest first: everything from here on is under the watermark.
                    return Ok(out);
                }
                if filter.hides(row.1.as_deref()) {
                    continue;
                }
                let Some(n) = visible(user_id, row, marks)? else {
                    continue;
                };
                let read = n.read_at.is_some();
                if !filter.admits(read, n.seen_at.is_some(), n.archived_at.is_some()) {
                    continue;
                }
                out.push(n);
                if out.len() as u32 == limit {
                    return Ok(out);
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// The counts of the window above the read watermark.
    async fn count(&self, user_id: &str, marks: Marks, hidden: &[String]) -> Result<InboxCounts> {
        let window: Vec<WindowRow> = self.rows(&self.st.window, (user_id, marks.read)).await?;
        Ok(counts_in(&window, marks, hidden))
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

/// The unread and unseen visible, unarchived rows of a window above the read watermark, rows
/// of `hidden` campaigns left out.
fn counts_in(window: &[WindowRow], marks: Marks, hidden: &[String]) -> InboxCounts {
    let mut counts = InboxCounts::default();
    for (created_at, campaign_id, title, read_at, dismissed_at, seen_at, archived_at) in window {
        if title.is_none() || read_at.is_some() || dismissed_at.is_some() || archived_at.is_some() {
            continue;
        }
        if campaign_id.as_ref().is_some_and(|c| hidden.contains(c)) {
            continue;
        }
        counts.unread += 1;
        if seen_at.is_none() && *created_at > marks.seen_through() {
            counts.unseen += 1;
        }
    }
    counts
}

/// A stored row as a notification, its read and seen times being its own or a covering
/// watermark's; `None` for what is not a visible row (dismissed, or a bare state cell).
fn visible(user_id: &str, row: Row, marks: Marks) -> Result<Option<Notification>> {
    let (
        id,
        campaign_id,
        title,
        body,
        category,
        data,
        created_at,
        read_at,
        dismissed_at,
        seen_at,
        archived_at,
    ) = row;
    let (Some(title), None) = (title, dismissed_at) else {
        return Ok(None);
    };
    let data = match data {
        Some(d) => serde_json::from_str(&d)
            .map_err(|e| Error::internal("corrupt notification data").with_source(e))?,
        None => serde_json::Value::Null,
    };
    let covered = |mark: i64| (created_at <= mark).then_some(mark);
    let read_at = read_at.or(covered(marks.read));
    // The earliest of its own seen time, its read time and the covering seen watermark.
    let seen_at = [seen_at, read_at, covered(marks.seen)]
        .into_iter()
        .flatten()
        .min();
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
        seen_at: seen_at.map(from_micros),
        archived_at: archived_at.map(from_micros),
    }))
}

/// The cells of a scanned row.
fn cells_of(row: &Row) -> Cells {
    Cells {
        created_at: row.6,
        read_at: row.7,
        seen_at: row.9,
        archived_at: row.10,
    }
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
        self.marks("herald-ping").await.map(|_| ())
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
        filter: InboxFilter<'_>,
    ) -> Result<Vec<Notification>> {
        let marks = self.marks(user_id).await?;
        self.scan(user_id, Scan::Older(before), limit, filter, marks)
            .await
    }

    async fn page_with_counts(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<(Vec<Notification>, InboxCounts)> {
        // One watermark read for both, then the page and the count window side by side.
        let marks = self.marks(user_id).await?;
        tokio::try_join!(
            self.scan(user_id, Scan::Older(before), limit, filter, marks),
            self.count(user_id, marks, filter.hidden),
        )
    }

    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>> {
        let marks = self.marks(user_id).await?;
        let every = InboxFilter {
            archived: herald_core::model::ArchivedFilter::Include,
            ..InboxFilter::default()
        };
        self.scan(user_id, Scan::Newer(after), limit, every, marks)
            .await
    }

    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>> {
        let (marks, rows) = tokio::try_join!(
            self.marks(user_id),
            self.rows::<Row>(&self.st.get, (user_id, micros(key.created_at), key.id)),
        )?;
        match rows.into_iter().next() {
            Some(row) => visible(user_id, row, marks),
            None => Ok(None),
        }
    }

    async fn locate(&self, _user_id: &str, _id: Uuid) -> Result<Option<InboxKey>> {
        // Every row on this engine was written with an id that carries its time.
        Ok(None)
    }

    async fn apply(
        &self,
        user_id: &str,
        keys: &[InboxKey],
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<Vec<InboxKey>> {
        // One point read per row answers "is there such a visible row" and what it holds;
        // then at most one write by the whole key, with the TTL the row has left.
        let marks = self.marks(user_id).await?;
        let found: Vec<Option<InboxKey>> = futures::stream::iter(keys.iter().copied())
            .map(|key| async move {
                let Some(cells) = self.state(user_id, key).await? else {
                    return Ok::<_, Error>(None);
                };
                if cells.changed_by(action, marks) {
                    self.write_action(user_id, key, cells, action, at).await?;
                }
                Ok(Some(key))
            })
            .buffered(WRITES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn apply_before(
        &self,
        user_id: &str,
        before: InboxKey,
        action: InboxAction,
        at: DateTime<Utc>,
        hidden: &[String],
    ) -> Result<u64> {
        // The partition from `before` down, a page at a time; each row the action changes is
        // one write by its whole key.
        let marks = self.marks(user_id).await?;
        let fetch = 1000;
        let mut from = Some(before);
        let mut changed = 0u64;
        loop {
            let rows = self.older(user_id, from, fetch).await?;
            let exhausted = (rows.len() as u32) < fetch;
            from = rows.last().map(key_of).or(from);
            let writes: Vec<(InboxKey, Cells)> = rows
                .iter()
                .filter(|r| r.2.is_some() && r.8.is_none())
                .filter(|r| !r.1.as_ref().is_some_and(|c| hidden.contains(c)))
                .map(|r| (key_of(r), cells_of(r)))
                .filter(|(_, c)| c.changed_by(action, marks))
                .collect();
            let n: Vec<bool> = futures::stream::iter(writes)
                .map(|(key, cells)| self.write_action(user_id, key, cells, action, at))
                .buffer_unordered(WRITES_IN_FLIGHT)
                .try_collect()
                .await?;
            changed += n.into_iter().filter(|w| *w).count() as u64;
            if exhausted {
                return Ok(changed);
            }
        }
    }

    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let old = self.marks(user_id).await?;
        let at = micros(at);
        let covered = if at > old.read {
            let window: Vec<WindowRow> = self
                .rows(&self.st.window_upto, (user_id, old.read, at))
                .await?;
            counts_in(&window, old, &[]).unread
        } else {
            0
        };
        self.set_mark(&self.st.set_mark, user_id, at).await?;
        Ok(covered)
    }

    async fn mark_all_seen(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64> {
        let old = self.marks(user_id).await?;
        let at = micros(at);
        let covered = if at > old.seen_through() {
            let window: Vec<WindowRow> = self
                .rows(&self.st.window_upto, (user_id, old.read, at))
                .await?;
            counts_in(&window, old, &[]).unseen
        } else {
            0
        };
        self.set_mark(&self.st.set_seen_mark, user_id, at).await?;
        Ok(covered)
    }

    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        if self.state(user_id, key).await?.is_none() {
            return Ok(false);
        }
        self.write_state(&self.st.dismiss, user_id, key, at).await
    }

    async fn counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts> {
        let marks = self.marks(user_id).await?;
        self.count(user_id, marks, hidden).await
    }

    async fn purge_before(&self, _before: DateTime<Utc>) -> Result<u64> {
        // Rows and watermarks expire by their TTL.
        Ok(0)
    }
}

impl ScyllaInbox {
    /// Writes a watermark (`SET_MARK`, `SET_SEEN_MARK`) with itself as the write time, kept
    /// as long as a row it covers can be: a retention period.
    async fn set_mark(&self, st: &PreparedStatement, user_id: &str, at: i64) -> Result<()> {
        let ttl = self.retention.as_secs().clamp(1, MAX_TTL as u64) as i32;
        self.session
            .execute_unpaged(st, (at, ttl, at, user_id))
            .await
            .map_err(db_error)?;
        Ok(())
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
            ("MARK_READ_SEEN", cql::MARK_READ_SEEN, 6),
            ("MARK_SEEN", cql::MARK_SEEN, 5),
            ("ARCHIVE", cql::ARCHIVE, 5),
            ("UNARCHIVE", cql::UNARCHIVE, 3),
            ("DISMISS", cql::DISMISS, 5),
            ("WINDOW", cql::WINDOW, 2),
            ("WINDOW_UPTO", cql::WINDOW_UPTO, 3),
            ("GET_MARK", cql::GET_MARK, 1),
            ("SET_MARK", cql::SET_MARK, 4),
            ("SET_SEEN_MARK", cql::SET_SEEN_MARK, 4),
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
            "id, campaign_id, title, body, category, data, created_at, read_at, dismissed_at, \
             seen_at, archived_at";
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
        assert_eq!(
            cql::SET_SEEN_MARK,
            "UPDATE inbox_read_marks USING TIMESTAMP ? AND TTL ? SET seen_through = ? \
             WHERE user_id = ?"
        );
        assert_eq!(
            cql::UNARCHIVE,
            "DELETE archived_at FROM notifications_by_user \
             WHERE user_id = ? AND created_at = ? AND id = ?"
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
                "seen_at",
                "archived_at",
                "campaign_id",
                "read_through",
                "seen_through",
            ] {
                assert!(!filter.contains(col), "{col} restricted in {s}");
            }
        }
        for s in [
            cql::INSERT,
            cql::MARK_READ,
            cql::MARK_READ_SEEN,
            cql::MARK_SEEN,
            cql::ARCHIVE,
            cql::DISMISS,
            cql::SET_MARK,
            cql::SET_SEEN_MARK,
        ] {
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

    /// The state logic this engine does in the adapter (the SQL engines do it in their
    /// statements), checked without a cluster.
    #[test]
    fn seen_and_counts_follow_the_cells_and_both_watermarks() {
        use super::{counts_in, visible, Cells, Marks};
        use herald_core::model::InboxAction;
        let marks = Marks {
            read: 100,
            seen: 200,
        };
        let row = |created_at: i64, read_at, seen_at, archived_at| {
            (
                uuid::Uuid::from_u128(created_at as u128),
                None,
                Some("t".to_owned()),
                None,
                None,
                None,
                created_at,
                read_at,
                None,
                seen_at,
                archived_at,
            )
        };
        // Under both marks: read at the read mark, seen at the earlier of the two.
        let n = visible("u", row(50, None, None, None), marks)
            .unwrap()
            .unwrap();
        assert_eq!(n.read_at.map(|t| t.timestamp_micros()), Some(100));
        assert_eq!(n.seen_at.map(|t| t.timestamp_micros()), Some(100));
        // Under the seen mark only; read by itself later; unseen above both.
        let n = visible("u", row(150, None, None, None), marks)
            .unwrap()
            .unwrap();
        assert_eq!(
            (n.read_at, n.seen_at.map(|t| t.timestamp_micros())),
            (None, Some(200))
        );
        let n = visible("u", row(300, Some(400), None, None), marks)
            .unwrap()
            .unwrap();
        assert_eq!(n.seen_at.map(|t| t.timestamp_micros()), Some(400));
        let n = visible("u", row(300, None, None, Some(5)), marks)
            .unwrap()
            .unwrap();
        assert_eq!(
            (n.seen_at, n.archived_at.map(|t| t.timestamp_micros())),
            (None, Some(5))
        );
        // The window holds rows above the read mark: unread 4 (one archived, one read, one
        // dismissed and one not a row left out), unseen 2 (one under the seen mark, one seen).
        let c = |id: &str| Some(id.to_owned());
        let window = [
            (150, c("a"), c("t"), None, None, None, None),
            (250, c("a"), c("t"), None, None, None, None),
            (260, c("a"), c("t"), None, None, Some(1), None),
            (270, c("a"), c("t"), None, None, None, Some(1)),
            (280, c("a"), c("t"), Some(1), None, None, None),
            (290, c("a"), c("t"), None, Some(1), None, None),
            (300, c("a"), None, None, None, None, None),
            (310, c("a"), c("t"), None, None, None, None),
            (320, c("retracted"), c("t"), None, None, None, None),
        ];
        let counts = counts_in(&window, marks, &["retracted".to_owned()]);
        assert_eq!((counts.unread, counts.unseen), (4, 2));
        let counts = counts_in(&window, marks, &[]);
        assert_eq!((counts.unread, counts.unseen), (5, 3));
        let cells = |created_at, read_at, seen_at, archived_at| Cells {
            created_at,
            read_at,
            seen_at,
            archived_at,
        };
        assert!(!cells(150, None, None, None).changed_by(InboxAction::Seen, marks));
        assert!(cells(150, None, None, None).changed_by(InboxAction::Read, marks));
        assert!(cells(250, None, None, None).changed_by(InboxAction::Seen, marks));
        assert!(!cells(250, None, None, None).changed_by(InboxAction::Unarchive, marks));
        assert!(cells(250, None, None, Some(1)).changed_by(InboxAction::Unarchive, marks));
    }

    #[test]
    fn the_second_schema_file_only_adds_the_state_columns() {
        let statements: Vec<String> = super::MIGRATIONS[1].statements().collect();
        assert_eq!(
            statements,
            [
                "ALTER TABLE notifications_by_user ADD seen_at bigint",
                "ALTER TABLE notifications_by_user ADD archived_at bigint",
                "ALTER TABLE inbox_read_marks ADD seen_through bigint",
            ]
        );
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
