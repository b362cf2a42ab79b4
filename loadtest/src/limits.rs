//! Scenario `limits`: what Herald's figures are measured against, in the same run, on the same
//! machine (the embedded-performance issue states its goals as ratios to these):
//!
//! - the bare SQLite insert rate of inbox rows: the server's own `notifications` schema, read
//!   from its `inbox.db`, created in a scratch file beside the data directory with the server's
//!   pragmas (WAL, `synchronous=NORMAL`), filled through one prepared statement (rusqlite, no
//!   pool, no thread hop) in transactions of a fan-out batch's size, the rows the fan-out
//!   writes; the ceiling of fan-out-on-write on one SQLite file;
//! - the rate the server answers its most trivial route, `GET /healthz`, closed loop over N
//!   connections from this harness: the ceiling of any route through the same HTTP stack and
//!   the same client.
//!
//! Then, in the same run when asked, a fan-out (`--fanout-size`) and inbox reads
//! (`--inbox-rate`), and the figures of earlier reports (`--compare`): each printed as a ratio
//! to its reference next to the goal. `--server-pid` adds the server's RSS.

use crate::report::{Report, Table};
use crate::stats::per_second;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `limits`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct LimitsOpts {
    /// The server's data directory: the inbox schema is read from its `inbox.db`, and the
    /// scratch file of the SQLite reference goes beside it (same disk), removed after.
    #[arg(long, default_value = "herald-data")]
    pub data_dir: PathBuf,
    /// Inbox rows the SQLite reference inserts.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Rows per transaction of the SQLite reference (a fan-out batch is 1,000 users).
    #[arg(long, default_value_t = 1000)]
    pub rows_per_tx: u64,
    /// Seconds of the trivial-route reference.
    #[arg(long, default_value_t = 10)]
    pub http_secs: u64,
    /// Connections of the trivial-route reference.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Also fan out to this many seeded users in the same run (0: no).
    #[arg(long, default_value_t = 0)]
    pub fanout_size: u64,
    /// Also read inboxes at these rates (requests/s, comma-separated, each for
    /// `--inbox-secs`) in the same run, so the highest rate held within the latency goal shows
    /// (none: no inbox reads).
    #[arg(long, value_delimiter = ',')]
    pub inbox_rate: Vec<u32>,
    /// Seconds of those inbox reads.
    #[arg(long, default_value_t = 10)]
    pub inbox_secs: u64,
    /// Users whose inboxes are read (one token each).
    #[arg(long, default_value_t = 1000)]
    pub inbox_users: u64,
    /// Seeded users the inbox reads spread over (ids `user-i`, i below this).
    #[arg(long, default_value_t = 1_000_000)]
    pub population: u64,
    /// Reports of earlier runs (their JSON files: fanout, inbox, push) to set beside the
    /// references too.
    #[arg(long)]
    pub compare: Vec<PathBuf>,
    /// The server's process id: its RSS goes into the report.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// The goals of the embedded-performance issue.
const FANOUT_RATIO_GOAL: f64 = 0.5;
const FANOUT_ABSOLUTE_GOAL: f64 = 200_000.0;
const INBOX_RATIO_GOAL: f64 = 0.2;
const INBOX_P99_MS: f64 = 5.0;
const PUSH_ABSOLUTE_GOAL: f64 = 50_000.0;
const RSS_GOAL_MIB: f64 = 300.0;

/// The references, then the figures set beside them.
pub async fn limits(url: &str, key: &str, o: &LimitsOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("limits", url, o);
    let started = Instant::now();

    eprintln!("SQLite reference: {} inbox rows…", o.rows);
    let sqlite = {
        let (dir, rows, per_tx) = (o.data_dir.clone(), o.rows, o.rows_per_tx.max(1));
        tokio::task::spawn_blocking(move || sqlite_inserts(&dir, rows, per_tx)).await??
    };
    eprintln!("  {:.0} rows/s", sqlite.rows_per_s);
    eprintln!(
        "trivial-route reference: GET /healthz, {} connections, {} s…",
        o.connections, o.http_secs
    );
    let http = healthz(url, o.connections.max(1), Duration::from_secs(o.http_secs)).await?;
    eprintln!("  {:.0} req/s", http.per_s);

    let mut refs = Table::new(
        "References (same machine, same run)",
        &["reference", "figure", "how"],
    );
    refs.row(vec![
        "SQLite inserting inbox rows".into(),
        format!("{:.0} rows/s", sqlite.rows_per_s),
        format!(
            "{} rows, {} per transaction, one prepared statement, the server's schema and pragmas",
            sqlite.rows, sqlite.rows_per_tx
        ),
    ]);
    refs.row(vec![
        "the server's `GET /healthz`".into(),
        format!("{:.0} req/s", http.per_s),
        format!(
            "closed loop, {} connections, {:.1} s, {} errors",
            o.connections, http.secs, http.errors
        ),
    ]);
    report.tables.push(refs);

    let mut ratios = Table::new(
        "Herald against its references",
        &["what", "Herald", "reference", "ratio", "goal", "met"],
    );
    let mut compared = Vec::new();
    if o.fanout_size > 0 {
        let f = crate::fanout(
            url,
            key,
            &crate::FanoutOpts {
                sizes: vec![o.fanout_size],
                ..Default::default()
            },
        )
        .await?;
        compared.push(f);
    }
    for &rate in o.inbox_rate.iter().filter(|r| **r > 0) {
        let i = crate::inbox(
            url,
            key,
            &crate::InboxOpts {
                rate,
                duration_secs: o.inbox_secs,
                users: o.inbox_users,
                population: o.population,
                ..Default::default()
            },
        )
        .await?;
        compared.push(i);
    }
    for path in &o.compare {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the report {}", path.display()))?;
        let earlier: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a herald-loadtest report", path.display()))?;
        compared.push(earlier);
    }
    let mut figures = Vec::new();
    for r in &compared {
        for row in ratio_rows(r, sqlite.rows_per_s, http.per_s) {
            ratios.row(row.cells());
            figures.push(row.figure());
        }
    }
    let rss_mib = o
        .server_pid
        .and_then(|pid| crate::live::vm_rss_kib(&pid.to_string()))
        .map(|kib| kib as f64 / 1024.0);
    if let Some(mib) = rss_mib {
        let row = Ratio {
            what: "server RSS".into(),
            herald: mib,
            unit: "MiB",
            reference: None,
            reference_unit: "",
            goal: format!("< {RSS_GOAL_MIB:.0} MiB"),
            met: mib < RSS_GOAL_MIB,
        };
        ratios.row(row.cells());
        figures.push(row.figure());
    }
    if !ratios.rows.is_empty() {
        report.tables.push(ratios);
    }
    report.figures = json!({
        "sqlite_rows_per_s": sqlite.rows_per_s,
        "sqlite_rows": sqlite.rows,
        "sqlite_secs": sqlite.secs,
        "healthz_per_s": http.per_s,
        "healthz_errors": http.errors,
        "compared": figures,
        "server_rss_mib": rss_mib,
    });
    report.note(
        "The harness runs on the server's cores: the trivial-route reference and the inbox reads \
         share them alike, so their ratio is the server's own.",
    );
    Ok(report.finish(started))
}

/// What the SQLite reference measured.
struct SqliteFigures {
    rows: u64,
    rows_per_tx: u64,
    secs: f64,
    rows_per_s: f64,
}

/// Inserts `rows` inbox rows into a scratch copy of the server's `notifications` table.
fn sqlite_inserts(data_dir: &Path, rows: u64, per_tx: u64) -> anyhow::Result<SqliteFigures> {
    let source = data_dir.join("inbox.db");
    if !source.exists() {
        bail!(
            "no {}: point --data-dir at the data directory of the `herald serve` under test",
            source.display()
        );
    }
    let schema: Vec<String> = {
        let db = rusqlite::Connection::open_with_flags(
            &source,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt = db.prepare(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'notifications' AND sql IS NOT NULL \
             ORDER BY type DESC",
        )?;
        let sql = stmt.query_map([], |r| r.get::<_, String>(0))?;
        sql.collect::<Result<_, _>>()?
    };
    if schema.is_empty() {
        bail!("{} has no notifications table", source.display());
    }
    let scratch =
        Scratch(data_dir.with_file_name(format!("herald-limits-{}.db", std::process::id())));
    scratch.remove();
    let mut db = rusqlite::Connection::open(&scratch.0)?;
    // The server's pragmas (storage/src/sqlite/mod.rs).
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA cache_size = -8192; PRAGMA temp_store = memory;",
    )?;
    for sql in &schema {
        db.execute_batch(sql)?;
    }
    // The rows of one campaign, as the fan-out writes them: users in id order, one time.
    let created_at: i64 = 1_767_225_600_000_000;
    let started = Instant::now();
    let mut n = 0u64;
    while n < rows {
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO notifications \
                 (id, user_id, campaign_id, title, body, category, data, created_at, read_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, NULL) ON CONFLICT DO NOTHING",
            )?;
            for i in n..(n + per_tx).min(rows) {
                let user = format!("user-{i:08}");
                let body = format!("Hello {user}");
                insert.execute(rusqlite::params![
                    u128::from(i).to_be_bytes().to_vec(),
                    user,
                    "limits-campaign",
                    "Load test limits",
                    body,
                    "{\"run\":\"limits\"}",
                    created_at,
                ])?;
            }
        }
        tx.commit()?;
        n = (n + per_tx).min(rows);
    }
    let secs = started.elapsed().as_secs_f64();
    drop(db);
    Ok(SqliteFigures {
        rows,
        rows_per_tx: per_tx,
        secs,
        rows_per_s: per_second(rows, secs),
    })
}

/// A scratch SQLite file, removed with its WAL and shared-memory files when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What the trivial-route reference measured.
struct HttpFigures {
    secs: f64,
    per_s: f64,
    errors: u64,
}

/// `GET /healthz` in a closed loop over `connections` connections for `length`.
async fn healthz(url: &str, connections: usize, length: Duration) -> anyhow::Result<HttpFigures> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + length;
    let loops: Vec<_> = (0..connections)
        .map(|_| {
            let (client, done, errors) = (client.clone(), done.clone(), errors.clone());
            let target = format!("{url}/healthz");
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    match client.get(&target).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    if done == 0 {
        bail!("{url}/healthz never answered 2xx");
    }
    Ok(HttpFigures {
        secs,
        per_s: per_second(done, secs),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// One figure of Herald's beside its reference.
struct Ratio {
    what: String,
    herald: f64,
    unit: &'static str,
    /// The reference's figure, when the goal is a ratio, and its unit.
    reference: Option<f64>,
    reference_unit: &'static str,
    goal: String,
    met: bool,
}

impl Ratio {
    fn ratio(&self) -> Option<f64> {
        self.reference.filter(|r| *r > 0.0).map(|r| self.herald / r)
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.what.clone(),
            format!("{:.0} {}", self.herald, self.unit),
            self.reference
                .map_or_else(|| "—".into(), |r| format!("{r:.0} {}", self.reference_unit)),
            self.ratio()
                .map_or_else(|| "—".into(), |r| format!("{r:.2}")),
            self.goal.clone(),
            if self.met { "yes" } else { "no" }.into(),
        ]
    }

    fn figure(&self) -> Value {
        json!({
            "what": self.what,
            "herald": self.herald,
            "unit": self.unit,
            "reference": self.reference,
            "ratio": self.ratio(),
            "goal": self.goal,
            "met": self.met,
        })
    }
}

/// The figures of a report set beside the references: fan-out users/s against SQLite's
/// rows/s, inbox reads/s (when p99 ≤ 5 ms without errors) against `/healthz`'s, push sends/s
/// against the absolute goal.
fn ratio_rows(r: &Report, sqlite_per_s: f64, healthz_per_s: f64) -> Vec<Ratio> {
    match r.scenario.as_str() {
        "fanout" => r.figures["sizes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let per_s = s["users_per_s"].as_f64().unwrap_or(0.0);
                let ratio = per_s / sqlite_per_s.max(f64::MIN_POSITIVE);
                Ratio {
                    what: format!(
                        "fan-out-on-write, {} users, in-app",
                        s["audience"].as_u64().unwrap_or(0)
                    ),
                    herald: per_s,
                    unit: "users/s",
                    reference: Some(sqlite_per_s),
                    reference_unit: "rows/s",
                    goal: format!("≥ {FANOUT_RATIO_GOAL} and ≥ {FANOUT_ABSOLUTE_GOAL:.0}/s"),
                    met: ratio >= FANOUT_RATIO_GOAL && per_s >= FANOUT_ABSOLUTE_GOAL,
                }
            })
            .collect(),
        "inbox" => {
            let rate = r.params["rate"].as_f64().unwrap_or(0.0);
            let p99 = r.figures["latency_ms"]["p99_ms"]
                .as_f64()
                .unwrap_or(f64::MAX);
            let errors = r.figures["errors"].as_u64().unwrap_or(u64::MAX);
            let held = p99 <= INBOX_P99_MS && errors == 0;
            vec![Ratio {
                what: format!("inbox reads at {rate} req/s (p99 {p99:.2} ms, {errors} errors)"),
                herald: if held { rate } else { 0.0 },
                unit: "req/s",
                reference: Some(healthz_per_s),
                reference_unit: "req/s",
                goal: format!("≥ {INBOX_RATIO_GOAL} with p99 ≤ {INBOX_P99_MS} ms, no errors"),
                met: held && rate / healthz_per_s.max(f64::MIN_POSITIVE) >= INBOX_RATIO_GOAL,
            }]
        }
        "push" => {
            let per_s = r.figures["sends_per_s"].as_f64().unwrap_or(0.0);
            vec![Ratio {
                what: "push gateway, fake FCM".into(),
                herald: per_s,
                unit: "sends/s",
                reference: None,
                reference_unit: "",
                goal: format!("≥ {PUSH_ABSOLUTE_GOAL:.0}/s"),
                met: per_s >= PUSH_ABSOLUTE_GOAL,
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, params: Value, figures: Value) -> Report {
        let mut r = Report::new(scenario, "http://127.0.0.1:8080", &params);
        r.figures = figures;
        r
    }

    #[test]
    fn each_scenarios_figures_are_set_beside_their_reference() {
        let fanout = report(
            "fanout",
            json!({}),
            json!({"sizes": [{"audience": 100000, "users_per_s": 60000.0}]}),
        );
        let rows = ratio_rows(&fanout, 240_000.0, 30_000.0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ratio(), Some(0.25));
        assert!(!rows[0].met);
        let fast = report(
            "fanout",
            json!({}),
            json!({"sizes": [{"audience": 100000, "users_per_s": 220000.0}]}),
        );
        assert!(ratio_rows(&fast, 240_000.0, 30_000.0)[0].met);

        let inbox = |p99: f64, errors: u64| {
            report(
                "inbox",
                json!({"rate": 8000}),
                json!({"errors": errors, "latency_ms": {"p99_ms": p99}}),
            )
        };
        let held = ratio_rows(&inbox(3.1, 0), 240_000.0, 32_000.0);
        assert_eq!(held[0].ratio(), Some(0.25));
        assert!(held[0].met);
        // A rate not held (p99 over 5 ms, or errors) counts for nothing.
        for missed in [inbox(7.0, 0), inbox(2.0, 3)] {
            let rows = ratio_rows(&missed, 240_000.0, 32_000.0);
            assert_eq!(rows[0].ratio(), Some(0.0));
            assert!(!rows[0].met);
        }

        let push = report("push", json!({}), json!({"sends_per_s": 52000.0}));
        let rows = ratio_rows(&push, 1.0, 1.0);
        assert!(rows[0].met && rows[0].ratio().is_none());
        assert!(ratio_rows(&report("seed", json!({}), json!({})), 1.0, 1.0).is_empty());
    }
}
