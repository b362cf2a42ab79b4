//! The bus on SQLite: a log per topic, and per consumer group the messages it has not
//! committed.
//!
//! # Design
//!
//! - [`Bus::subscribe`] records `(topic, group)` in `bus_subscriptions` (idempotent); the
//!   topic may be a family pattern (`channel.>`).
//! - [`Bus::publish`] appends the messages to `bus_log` once, and adds one small row per
//!   message to `bus_pending` for every group subscribed to the topic (or to its family) *at
//!   that moment*, all in one `BEGIN IMMEDIATE` transaction: a batch becomes visible all at
//!   once or not at all. The groups are read inside that transaction, so a group subscribed
//!   by another process is never missed. A group subscribed later does not see earlier
//!   messages unless it replays them.
//! - A member ([`Bus::consumer`]) leases pending rows with one `UPDATE ... RETURNING` that
//!   picks the ready rows (`visible_at <= now`), pushes their `visible_at` to the end of a
//!   lease and counts the attempt, then reads their payloads from the log (outside the write
//!   lock). A single statement takes SQLite's write lock for its whole run, so two members
//!   can never lease the same row. The member renews the leases of what it holds every third
//!   of [`LEASE`] while it lives; a member that dies (its process crashed) stops renewing, and
//!   its messages are handed out again once their lease runs out. One dropped gives its
//!   messages back at once.
//! - A receipt is `"<seq>:<attempt>"`. Commit deletes the pending row and release makes it
//!   ready now, both only if the row still carries that attempt: once a lease has run out and
//!   another member has the message, the first member's late commit matches nothing.
//! - [`Bus::lag`] counts the group's pending rows; [`Bus::replay`] rewrites them from the log.
//! - The log keeps a message for [`RETENTION`] after it was published, and longer while a
//!   group has not committed it; publishes purge what is older, at most once a minute.
//!
//! # Contract
//!
//! At least once: a message is redelivered, with `attempt` one higher, whenever its member
//! releases it or is gone before committing. Leases use the wall clock (`chrono::Utc::now()`)
//! because they are shared with other processes on the same file. Within a group, messages are
//! handed out in the order they became ready (publish order for first deliveries). A
//! published batch survives a crash of the process once `publish` returns; the pool runs WAL
//! with `synchronous=NORMAL`, so a power loss or OS crash may still lose the last commits.
//!
//! # Performance
//!
//! Every write is one short statement or transaction: nothing is read or computed while the
//! write lock is held except the subscription lookup of `publish`. Writers of this process
//! queue on an in-process gate before they touch SQLite: SQLite lets one writer in at a time
//! anyway, and its busy handler retries by sleeping (up to 100 ms per retry), which turns a
//! contended write lock into idle time and unfairness. The gate hands the lock over in FIFO
//! order instead. Waiting members poll with a read-only probe (readers never block in WAL
//! mode) and only take the write lock when something is ready; an idle bus is not polled by
//! each member but watched once (see [`WATCH`]), so an idle server costs almost no CPU. The payload is written once
//! whatever the number of groups, and leasing rewrites only the small pending row.

use super::SqliteFile;
use super::{open_pool, MAX_PARAMS};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::Utc;
use herald_core::model::{Delivery, OutMessage};
use herald_core::ports::{Bus, Consumer, ReplayFrom};
use herald_core::worker::AbortOnDrop;
use herald_core::{Error, Result};
use parking_lot::Mutex;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{MutexGuard, Notify};
use tokio::time::Instant;

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "bus", "0001_init"),
    migration!("sqlite", "bus", "0002_log"),
];

/// How often the header of the file's WAL index (`-shm`) is read (48 bytes, no SQL) for
/// commits of other processes; one that changed wakes every waiting member.
const WATCH: Duration = Duration::from_millis(50);
/// The longest a waiting member sleeps without a wake-up: for leases that ran out (a member
/// that died). In-process publishes and releases wake members at once.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The WAL-index header: every commit writes it (the last frame, the page count, checksums,
/// and a new salt when the log starts over), so any commit changes these bytes.
const WAL_INDEX_HEADER: usize = 48;
/// How long a polled message stays with its member without a renewal. Members renew every
/// third of it, so this is how long the messages of a crashed process wait.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long the log keeps a committed message, for replays.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Log rows deleted per purge statement.
const PURGE_CHUNK: i64 = 5_000;

/// Parameters bound per log row on publish.
const ROW_PARAMS: usize = 4;
/// Rows per multi-row INSERT: enough to amortise a statement, and each distinct row count is
/// one more prepared statement in sqlx's per-connection cache.
const PUBLISH_CHUNK_ROWS: usize = 1_000;
const _: () = assert!(PUBLISH_CHUNK_ROWS * ROW_PARAMS <= MAX_PARAMS);
/// Payload bytes per INSERT statement: SQLite copies every bound blob, so this caps the memory
/// of one statement when batches carry large payloads.
const PUBLISH_CHUNK_BYTES: usize = 8 << 20;
/// The head of a release or lease renewal (see `Shared::settle`).
const SET_VISIBLE_AT: &str = "UPDATE bus_pending SET visible_at = ";
/// Receipts per commit / release statement (3 parameters each).
const RECEIPT_CHUNK: usize = 900;

pub struct SqliteBus {
    shared: Arc<Shared>,
}

struct Shared {
    pool: SqlitePool,
    /// Serialises this process's writes (see the module doc, Performance).
    write_gate: tokio::sync::Mutex<()>,
    /// Per subscription topic: woken after a publish (or a release) so waiting members look
    /// again.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    last_purge: Mutex<Option<std::time::Instant>>,
}

impl SqliteFile for SqliteBus {
    fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }
}

impl SqliteFile for Shared {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteBus {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let pool = open_pool(url, 8, MIGRATIONS).await?;
        let mut shm = pool.connect_options().get_filename().as_os_str().to_owned();
        shm.push("-shm");
        let shared = Arc::new(Shared {
            pool,
            write_gate: tokio::sync::Mutex::new(()),
            wakers: Mutex::new(HashMap::new()),
            last_purge: Mutex::new(None),
        });
        tokio::spawn(watch(Arc::downgrade(&shared), shm.into()));
        Ok(Self { shared })
    }

    /// Deletes log rows published before `before` that no group still has pending.
    pub async fn purge_before(&self, before: chrono::DateTime<Utc>) -> Result<u64> {
        self.shared.purge_before(before).await
    }
}

/// Wakes every waiting member of this process when the WAL-index header of the bus file
/// changes (a commit, of this process or another), until the bus is dropped. The `-shm` file is
/// the memory SQLite's connections share, so a plain read sees what other processes wrote. An
/// in-memory database has no such file: nothing changes it but this process, whose writes wake
/// members themselves.
async fn watch(shared: std::sync::Weak<Shared>, shm: std::path::PathBuf) {
    let mut file: Option<std::fs::File> = None;
    let mut stamp = move || -> Option<[u8; WAL_INDEX_HEADER]> {
        use std::io::{Read, Seek};
        if file.is_none() {
            file = std::fs::File::open(&shm).ok();
        }
        let f = file.as_mut()?;
        let mut header = [0u8; WAL_INDEX_HEADER];
        match f
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| f.read_exact(&mut header))
        {
            Ok(()) => Some(header),
            Err(_) => {
                file = None;
                None
            }
        }
    };
    let mut last = stamp();
    loop {
        tokio::time::sleep(WATCH).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = stamp();
        if now != last {
            last = now;
            shared.wake_all();
        }
    }
}

/// The subscription topics a message published on `topic` reaches: the topic itself, the
/// patterns of its families (`channel.>` for `channel.push`), and `>`.
fn subscription_keys(topic: &str) -> Vec<String> {
    let mut keys = vec![topic.to_owned(), ">".to_owned()];
    let mut end = 0;
    while let Some(dot) = topic[end..].find('.') {
        end += dot;
        keys.push(format!("{}.>", &topic[..end]));
        end += 1;
    }
    keys
}

/// The SQL condition on `bus_log.topic` for a subscription topic (exact, or a family pattern)
/// and its bound value.
fn topic_condition(sub: &str) -> (&'static str, String) {
    match sub.strip_suffix('>') {
        Some("") => ("topic LIKE ?", "%".to_owned()),
        Some(prefix) if prefix.ends_with('.') => (
            "topic LIKE ? ESCAPE '\\'",
            format!(
                "{}%",
                prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            ),
        ),
        _ => ("topic = ?", sub.to_owned()),
    }
}

impl Shared {
    /// A connection to write with, and this process's turn to write (see the module doc,
    /// Performance). Always in this order: the connection first, so a writer never holds the
    /// gate while it waits for a connection (held, perhaps, by writers waiting for the gate),
    /// and the gated section is only the statement itself.
    async fn writer(&self) -> Result<(PoolConnection<Sqlite>, MutexGuard<'_, ()>)> {
        let conn = self.pool.acquire().await.map_err(|e| self.db_error(e))?;
        let gate = self.write_gate.lock().await;
        Ok((conn, gate))
    }

    fn waker(&self, sub: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .entry(sub.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake_all(&self) {
        let wakers: Vec<Arc<Notify>> = self.wakers.lock().values().cloned().collect();
        for n in wakers {
            n.notify_waiters();
        }
    }

    fn wake(&self, sub: &str) {
        // Only topics someone waits (or waited) on have a Notify; no need to create one.
        let waker = self.wakers.lock().get(sub).cloned();
        if let Some(n) = waker {
            n.notify_waiters();
        }
    }

    /// Leases up to `max` ready rows in one statement, then reads their messages. Empty when
    /// none is ready.
    async fn lease(&self, sub: &str, group: &str, max: usize) -> Result<Vec<Delivery>> {
        let (mut conn, gate) = self.writer().await?;
        let now = micros(Utc::now());
        // ORDER BY visible_at, seq follows the index (seq ends every entry), so SQLite stops
        // after `max` entries instead of sorting the whole backlog.
        let rows = sqlx::query(
            "UPDATE bus_pending SET visible_at = ?, attempts = attempts + 1 \
             WHERE sub = ? AND grp = ? AND seq IN (SELECT seq FROM bus_pending \
                           WHERE sub = ? AND grp = ? AND visible_at <= ? \
                           ORDER BY visible_at, seq LIMIT ?) \
             RETURNING seq, attempts",
        )
        .bind(now.saturating_add(duration_micros(LEASE)))
        .bind(sub)
        .bind(group)
        .bind(sub)
        .bind(group)
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.db_error(e))?;
        drop(gate);
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut leased = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get("seq");
            let attempts: i64 = row.get("attempts");
            let attempt = u32::try_from(attempts).map_err(|e| corrupt("bus attempt count", e))?;
            leased.push((seq, attempt));
        }
        // RETURNING yields rows in no defined order; hand them out oldest first.
        leased.sort_unstable();
        // The log rows cannot go meanwhile: a purge keeps every row some group has pending.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT seq, msg_key, payload, published_at FROM bus_log WHERE seq IN (",
        );
        let mut sep = qb.separated(", ");
        for (seq, _) in &leased {
            sep.push_bind(*seq);
        }
        qb.push(")");
        let rows = qb
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db_error(e))?;
        let mut messages: HashMap<i64, sqlx::sqlite::SqliteRow> =
            rows.into_iter().map(|r| (r.get("seq"), r)).collect();
        let mut out = Vec::with_capacity(leased.len());
        for (seq, attempt) in leased {
            let row = messages.remove(&seq).ok_or_else(|| {
                corrupt(
                    "bus log",
                    std::io::Error::other(format!("pending message {seq} has no log row")),
                )
            })?;
            out.push(Delivery {
                receipt: format!("{seq}:{attempt}"),
                key: row.get("msg_key"),
                payload: row.get("payload"),
                attempt,
                published_at: from_micros(row.get("published_at")),
            });
        }
        Ok(out)
    }

    /// Whether a lease would find anything, without taking the write lock.
    async fn any_ready(&self, sub: &str, group: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM bus_pending WHERE sub = ? AND grp = ? AND visible_at <= ? LIMIT 1",
        )
        .bind(sub)
        .bind(group)
        .bind(micros(Utc::now()))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?
        .is_some())
    }

    /// Runs `DELETE` (commit) or `UPDATE ... SET visible_at = ?` (release, renewal) on the rows
    /// the receipts still name. `head` is the statement up to its WHERE clause; `visible_at`,
    /// when given, is bound to the `?` it ends with.
    async fn settle(
        &self,
        sub: &str,
        group: &str,
        parsed: &[(i64, u32)],
        head: &str,
        visible_at: Option<i64>,
    ) -> Result<()> {
        // No transaction: each statement is atomic on its own, and settling receipts is
        // independent per receipt (a failure half way leaves some unsettled, which at-least-once
        // delivery covers), so holding the write lock across chunks would buy nothing.
        for chunk in parsed.chunks(RECEIPT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(head);
            if let Some(v) = visible_at {
                qb.push_bind(v);
            }
            qb.push(" WHERE sub = ")
                .push_bind(sub)
                .push(" AND grp = ")
                .push_bind(group)
                .push(" AND seq IN (");
            let mut sep = qb.separated(", ");
            for (seq, _) in chunk {
                sep.push_bind(*seq);
            }
            // The row-value test keeps only rows still carrying the receipt's attempt (a newer
            // lease changed it).
            qb.push(") AND (seq, attempts) IN (VALUES ");
            let mut sep = qb.separated(", ");
            for (seq, attempt) in chunk {
                sep.push("(")
                    .push_bind_unseparated(*seq)
                    .push_unseparated(", ")
                    .push_bind_unseparated(i64::from(*attempt))
                    .push_unseparated(")");
            }
            qb.push(")");
            let (mut conn, gate) = self.writer().await?;
            qb.build()
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(e))?;
            drop(gate);
        }
        Ok(())
    }

    async fn purge_before(&self, before: chrono::DateTime<Utc>) -> Result<u64> {
        // Rows below the lowest pending sequence are committed by every group.
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(m) FROM (SELECT (SELECT MIN(seq) FROM bus_pending p \
                                         WHERE p.sub = s.topic AND p.grp = s.grp) AS m \
                                 FROM bus_subscriptions s)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        let floor = floor.unwrap_or(i64::MAX);
        let mut total = 0u64;
        loop {
            let (mut conn, gate) = self.writer().await?;
            let n = sqlx::query(
                "DELETE FROM bus_log WHERE seq IN (SELECT seq FROM bus_log \
                 WHERE seq < ? AND published_at < ? ORDER BY seq LIMIT ?)",
            )
            .bind(floor)
            .bind(micros(before))
            .bind(PURGE_CHUNK)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
            drop(gate);
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Purges the log at most once a minute, after a publish.
    async fn maybe_purge(&self) {
        {
            let mut last = self.last_purge.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let before = Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default();
        if let Err(e) = self.purge_before(before).await {
            tracing::warn!(error = %e, "purging the bus log failed; retrying later");
        }
    }
}

/// Splits `"<seq>:<attempt>"`.
fn parse_receipt(receipt: &str) -> Result<(i64, u32)> {
    receipt
        .split_once(':')
        .and_then(|(seq, attempt)| Some((seq.parse().ok()?, attempt.parse().ok()?)))
        .filter(|(seq, attempt): &(i64, u32)| *seq > 0 && *attempt > 0)
        .ok_or_else(|| Error::invalid(format!("malformed bus receipt `{receipt}`")))
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Consecutive runs of `messages` within both the row and the payload-byte budget of one
/// INSERT (a run holds at least one message, however large).
fn publish_chunks(messages: &[OutMessage]) -> Vec<&[OutMessage]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        let size = m.payload.len() + m.key.as_ref().map_or(0, String::len);
        if i > start && (i - start == PUBLISH_CHUNK_ROWS || bytes + size > PUBLISH_CHUNK_BYTES) {
            chunks.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        chunks.push(&messages[start..]);
    }
    chunks
}

/// One member of a group on the SQLite bus: it holds what it polled under a lease it renews.
struct SqliteConsumer {
    shared: Arc<Shared>,
    sub: String,
    group: String,
    /// What this member holds: sequence → attempt (its lease).
    held: Arc<Mutex<HashMap<i64, u32>>>,
    /// Its last poll found nothing: the next one probes (a read) before it leases (a write).
    idle: std::sync::atomic::AtomicBool,
    _renewal: AbortOnDrop<()>,
}

impl SqliteConsumer {
    fn new(shared: Arc<Shared>, sub: &str, group: &str) -> Self {
        let held: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
        let renewal = AbortOnDrop::spawn(renew(
            shared.clone(),
            sub.to_owned(),
            group.to_owned(),
            held.clone(),
        ));
        Self {
            shared,
            sub: sub.to_owned(),
            group: group.to_owned(),
            held,
            idle: Default::default(),
            _renewal: renewal,
        }
    }

    fn take(&self, receipts: &[String]) -> Result<Vec<(i64, u32)>> {
        let parsed = receipts
            .iter()
            .map(|r| parse_receipt(r))
            .collect::<Result<Vec<_>>>()?;
        let mut held = self.held.lock();
        for (seq, attempt) in &parsed {
            if held.get(seq) == Some(attempt) {
                held.remove(seq);
            }
        }
        Ok(parsed)
    }
}

/// Renews the leases of what a member holds, every third of [`LEASE`], while it lives.
async fn renew(
    shared: Arc<Shared>,
    sub: String,
    group: String,
    held: Arc<Mutex<HashMap<i64, u32>>>,
) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        let rows: Vec<(i64, u32)> = held.lock().iter().map(|(s, a)| (*s, *a)).collect();
        if rows.is_empty() {
            continue;
        }
        let until = micros(Utc::now()).saturating_add(duration_micros(LEASE));
        if let Err(e) = shared
            .settle(&sub, &group, &rows, SET_VISIBLE_AT, Some(until))
            .await
        {
            tracing::warn!(error = %e, topic = %sub, group = %group, "renewing bus leases failed; retrying");
        }
    }
}

impl Drop for SqliteConsumer {
    fn drop(&mut self) {
        // A member that goes gives back what it still holds, so the group need not wait for
        // the leases to run out.
        let rows: Vec<(i64, u32)> = self.held.lock().drain().collect();
        if rows.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let (sub, group) = (self.sub.clone(), self.group.clone());
            rt.spawn(async move {
                let now = micros(Utc::now());
                let _ = shared
                    .settle(&sub, &group, &rows, SET_VISIBLE_AT, Some(now))
                    .await;
                shared.wake(&sub);
            });
        }
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let (sub, group) = (self.sub.as_str(), self.group.as_str());
        // `wait` may be huge (Duration::MAX meaning "forever"): cap the deadline at a year.
        let deadline = Instant::now() + wait.min(Duration::from_secs(365 * 24 * 3600));
        let waker = shared.waker(sub);
        // The first try goes straight to the lease: on a busy queue something is ready and a
        // probe would only add a round trip. After an empty poll, it probes first.
        let mut probe_first = self.idle.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            // Register for wake-ups *before* looking, so a publish that commits between the
            // look and the sleep still wakes us.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if !probe_first || shared.any_ready(sub, group).await? {
                let got = shared.lease(sub, group, max).await?;
                if !got.is_empty() {
                    let mut held = self.held.lock();
                    for d in &got {
                        let (seq, attempt) = parse_receipt(&d.receipt)?;
                        held.insert(seq, attempt);
                    }
                    self.idle.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Ok(got);
                }
            }
            probe_first = true;

            let now = Instant::now();
            if now >= deadline {
                self.idle.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(Vec::new());
            }
            // Never busy-spin: sleep until woken, the next poll or the deadline.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until((now + IDLE_POLL).min(deadline)) => {}
            }
        }
    }

    async fn commit(&self, receipts: &[String]) -> Result<()> {
        let parsed = self.take(receipts)?;
        self.shared
            .settle(
                &self.sub,
                &self.group,
                &parsed,
                "DELETE FROM bus_pending",
                None,
            )
            .await
    }

    async fn release(&self, receipts: &[String]) -> Result<()> {
        let parsed = self.take(receipts)?;
        let now = micros(Utc::now());
        self.shared
            .settle(&self.sub, &self.group, &parsed, SET_VISIBLE_AT, Some(now))
            .await?;
        self.shared.wake(&self.sub);
        Ok(())
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn ping(&self) -> Result<()> {
        super::ping_writable(&self.shared.pool).await
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<()> {
        let (mut conn, _gate) = self.shared.writer().await?;
        sqlx::query(
            "INSERT INTO bus_subscriptions (topic, grp) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(group)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let keys = subscription_keys(topic);
        let (mut conn, gate) = shared.writer().await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.db_error(e))?;
        // Read under the write lock: no subscribe can commit between this read and our
        // inserts, whichever process makes it.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT topic, grp FROM bus_subscriptions WHERE topic IN (",
        );
        let mut sep = qb.separated(", ");
        for k in &keys {
            sep.push_bind(k.as_str());
        }
        qb.push(") ORDER BY topic, grp");
        let subs: Vec<(String, String)> = qb
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let now = micros(Utc::now());
        for chunk in publish_chunks(messages) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bus_log (topic, published_at, msg_key, payload) ",
            );
            // A multi-row VALUES inserts in list order, and AUTOINCREMENT under the write lock
            // hands out consecutive sequence numbers: the chunk is last - n + 1 ..= last.
            qb.push_values(chunk, |mut b, m| {
                b.push_bind(topic)
                    .push_bind(now)
                    .push_bind(m.key.as_deref())
                    .push_bind(m.payload.as_slice());
            });
            let last = qb
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?
                .last_insert_rowid();
            let first = last - chunk.len() as i64 + 1;
            for (sub, group) in &subs {
                sqlx::query(
                    "INSERT INTO bus_pending (sub, grp, seq, visible_at, attempts) \
                     SELECT ?, ?, seq, ?, 0 FROM bus_log WHERE seq BETWEEN ? AND ?",
                )
                .bind(sub)
                .bind(group)
                .bind(now)
                .bind(first)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
            }
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        drop(gate);
        for (sub, _) in &subs {
            shared.wake(sub);
        }
        shared.maybe_purge().await;
        Ok(())
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<dyn Consumer>> {
        Ok(Arc::new(SqliteConsumer::new(
            self.shared.clone(),
            topic,
            group,
        )))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bus_pending WHERE sub = ? AND grp = ?")
                .bind(topic)
                .bind(group)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(|e| self.db_error(e))?;
        Ok(n.max(0) as u64)
    }

    async fn replay(
        &self,
        topic: &str,
        group: &str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> Result<u64> {
        let (condition, value) = topic_condition(topic);
        let (position, bound): (&str, i64) = match from {
            ReplayFrom::Earliest => ("seq >= ?", 0),
            ReplayFrom::Offset(o) => ("seq >= ?", i64::try_from(o).unwrap_or(i64::MAX)),
            ReplayFrom::Time(t) => ("published_at >= ?", micros(t)),
        };
        let selection = format!("FROM bus_log WHERE {condition} AND {position}");
        if dry_run {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) {selection}"))
                .bind(&value)
                .bind(bound)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(|e| self.db_error(e))?;
            return Ok(n.max(0) as u64);
        }
        let (mut conn, gate) = self.shared.writer().await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.db_error(e))?;
        let subscribed = sqlx::query("SELECT 1 FROM bus_subscriptions WHERE topic = ? AND grp = ?")
            .bind(topic)
            .bind(group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?
            .is_some();
        if !subscribed {
            return Err(Error::not_found(format!(
                "group `{group}` is not subscribed to `{topic}`"
            )));
        }
        // The group's position becomes `from`: what it had pending before is skipped, what
        // the log holds from there on is pending again (leases held now are kept).
        let first: Option<i64> = sqlx::query_scalar(&format!("SELECT MIN(seq) {selection}"))
            .bind(&value)
            .bind(bound)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let first = first.unwrap_or(i64::MAX);
        sqlx::query("DELETE FROM bus_pending WHERE sub = ? AND grp = ? AND seq < ?")
            .bind(topic)
            .bind(group)
            .bind(first)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let now = micros(Utc::now());
        sqlx::query(&format!(
            "INSERT OR IGNORE INTO bus_pending (sub, grp, seq, visible_at, attempts) \
             SELECT ?, ?, seq, ?, 0 {selection}"
        ))
        .bind(topic)
        .bind(group)
        .bind(now)
        .bind(&value)
        .bind(bound)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bus_pending WHERE sub = ? AND grp = ?")
                .bind(topic)
                .bind(group)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        drop(gate);
        self.shared.wake(topic);
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: usize) -> OutMessage {
        OutMessage {
            key: None,
            payload: vec![0; len],
        }
    }

    #[test]
    fn receipts_parse_or_are_invalid() {
        assert_eq!(parse_receipt("42:3").unwrap(), (42, 3));
        for bad in [
            "", "42", "42:", ":3", "x:1", "1:x", "0:1", "1:0", "-1:1", "1:2:3",
        ] {
            let err = parse_receipt(bad).unwrap_err();
            assert_eq!(err.kind, herald_core::ErrorKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn a_topic_reaches_its_own_subscriptions_and_those_of_its_families() {
        assert_eq!(
            subscription_keys("channel.push"),
            vec!["channel.push", ">", "channel.>"]
        );
        assert_eq!(
            subscription_keys("deadletter.channel.push"),
            vec![
                "deadletter.channel.push",
                ">",
                "deadletter.>",
                "deadletter.channel.>"
            ]
        );
        assert_eq!(subscription_keys("plain"), vec!["plain", ">"]);
    }

    #[test]
    fn family_patterns_match_by_prefix_with_like_wildcards_escaped() {
        assert_eq!(
            topic_condition("channel.push"),
            ("topic = ?", "channel.push".into())
        );
        assert_eq!(topic_condition(">").1, "%");
        assert_eq!(topic_condition("a_b.>").1, "a\\_b.%");
    }

    #[test]
    fn publish_chunks_respect_rows_and_bytes() {
        let many: Vec<_> = (0..2_500).map(|_| msg(1)).collect();
        let sizes: Vec<_> = publish_chunks(&many).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1_000, 1_000, 500]);

        let big: Vec<_> = (0..5).map(|_| msg(3 << 20)).collect();
        let sizes: Vec<_> = publish_chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);

        let huge = vec![msg(PUBLISH_CHUNK_BYTES * 2), msg(1)];
        let sizes: Vec<_> = publish_chunks(&huge).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
        assert!(publish_chunks(&[]).is_empty());
    }
}
