//! The report of one run: which scenario, when, on what machine and commit, with which
//! parameters, and what it measured — as JSON (machine-readable, one file per run) and as
//! markdown (for the terminal and for pasting into the README's figures).
//!
//! A scenario builds its report with [`Report::new`] before it starts, adds tables, figures
//! and notes as it goes, and calls [`Report::finish`]; [`save`] writes
//! `<dir>/<scenario>-<YYYYMMDD-HHMMSS>.json` and `.md` (and, when asked, the SVG charts of
//! [`crate::plot`] beside them).

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The figures of one scenario run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// When the run started, RFC 3339 in UTC.
    pub started_at: String,
    pub duration_secs: f64,
    pub machine: Machine,
    pub commit: String,
    pub target_url: String,
    /// The scenario's options.
    pub params: Value,
    /// What was measured, as numbers (plots are drawn from these).
    pub figures: Value,
    pub tables: Vec<Table>,
    pub notes: Vec<String>,
}

/// The machine the load generator ran on (in these runs, also the server's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
}

/// A titled table of preformatted cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A GitHub markdown table; columns whose cells all read as numbers are right-aligned.
    pub fn to_markdown(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        if width == 0 {
            return String::new();
        }
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let line = |cells: Vec<String>| {
            let cells: Vec<String> = cells.iter().map(|c| escape(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line((0..width).map(|i| cell(&self.headers, i)).collect());
        let separators: Vec<&str> = (0..width)
            .map(|i| {
                let numeric = self.rows.iter().any(|r| looks_numeric(&cell(r, i)))
                    && self
                        .rows
                        .iter()
                        .all(|r| looks_numeric(&cell(r, i)) || is_placeholder(&cell(r, i)));
                if numeric {
                    "---:"
                } else {
                    "---"
                }
            })
            .collect();
        out.push_str(&format!("|{}|\n", separators.join("|")));
        for row in &self.rows {
            out.push_str(&line((0..width).map(|i| cell(row, i)).collect()));
        }
        out
    }
}

/// A figure with its unit reads as a number: "12", "-3.5", "1,000,000", "1.37 s", "12.1 KiB".
fn looks_numeric(cell: &str) -> bool {
    let s = cell.trim();
    let s = s
        .strip_prefix(['-', '+', '≈', '~'])
        .unwrap_or(s)
        .trim_start();
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Cells that stand for "no value" and may sit in a numeric column.
fn is_placeholder(cell: &str) -> bool {
    matches!(cell.trim(), "" | "–" | "—" | "-" | "?" | "n/a")
}

/// A pipe or a newline in a cell would break the table.
fn escape(cell: &str) -> String {
    cell.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// A report of `scenario` against `target_url` starting now, with `params` (the scenario's
    /// options, serialised) and this machine and commit.
    pub fn new(scenario: &str, target_url: &str, params: &impl Serialize) -> Self {
        Self {
            scenario: scenario.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            duration_secs: 0.0,
            machine: Machine::detect(),
            commit: commit(),
            target_url: target_url.to_owned(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
            figures: Value::Object(Default::default()),
            tables: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sets the duration from the `started` of the run.
    pub fn finish(mut self, started: Instant) -> Self {
        self.duration_secs = started.elapsed().as_secs_f64();
        self
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// `<scenario>-<YYYYMMDD-HHMMSS>` from the start time (UTC).
    pub fn file_stem(&self) -> String {
        let when = chrono::DateTime::parse_from_rfc3339(&self.started_at)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y%m%d-%H%M%S")
                    .to_string()
            })
            .unwrap_or_else(|_| "undated".into());
        format!("{}-{when}", self.scenario)
    }

    /// The header (scenario, date, machine, commit, parameters), each table, and the notes.
    pub fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!("## {} — {}\n\n", self.scenario, self.started_at);
        out.push_str(&format!(
            "- machine: {} ({}, {} cores, {:.1} GiB; {}, kernel {})\n",
            m.hostname, m.cpu_model, m.cores, m.memory_gib, m.os, m.kernel
        ));
        out.push_str(&format!("- commit: `{}`\n", self.commit));
        out.push_str(&format!(
            "- target: {} (run took {:.2} s)\n",
            self.target_url, self.duration_secs
        ));
        out.push_str(&format!("- params: {}\n", compact(&self.params)));
        for table in &self.tables {
            out.push('\n');
            if !table.title.is_empty() {
                out.push_str(&format!("### {}\n\n", table.title));
            }
            out.push_str(&table.to_markdown());
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }
}

/// Parameters on one line: `users` 1000 · `prefix` user · `sizes` 1, 100.
fn compact(params: &Value) -> String {
    let show = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    match params {
        Value::Object(map) if map.is_empty() => "none".into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("`{k}` {}", show(v)))
            .collect::<Vec<_>>()
            .join(" · "),
        other => show(other),
    }
}

impl Machine {
    /// Reads this machine's facts from `/proc` (Linux); what cannot be read says "unknown".
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Self {
            hostname: read("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "unknown".into()),
            os: read("/etc/os-release")
                .and_then(|s| os_pretty_name(&s))
                .unwrap_or_else(|| std::env::consts::OS.to_owned()),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            cpu_model: read("/proc/cpuinfo")
                .and_then(|s| cpu_model(&s))
                .unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
            memory_gib: read("/proc/meminfo")
                .and_then(|s| memory_gib(&s))
                .unwrap_or(0.0),
        }
    }
}

/// `model name` of the first processor in `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `MemTotal` of `/proc/meminfo` (kB) in GiB.
fn memory_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // Two decimals are plenty to tell machines apart, and keep the JSON readable.
    Some((kib / (1024.0 * 1024.0) * 100.0).round() / 100.0)
}

/// `PRETTY_NAME` of `/etc/os-release`.
fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

/// The commit under test: `HERALD_COMMIT`, else `git rev-parse --short HEAD` from the current
/// directory, else "unknown".
pub fn commit() -> String {
    resolve_commit(std::env::var("HERALD_COMMIT").ok(), git_short_head)
}

fn resolve_commit(from_env: Option<String>, git: impl FnOnce() -> Option<String>) -> String {
    from_env
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git)
        .unwrap_or_else(|| "unknown".into())
}

fn git_short_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let head = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !head.is_empty()).then_some(head)
}

/// The files one run wrote.
#[derive(Debug, Clone)]
pub struct Saved {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Writes the report as `<dir>/<stem>.json` and `<dir>/<stem>.md` (creating `dir`), and with
/// `plot` its charts as `<dir>/<stem>-<chart>.svg`, linked from the markdown file. A second
/// run in the same second gets `-2`, `-3`, … rather than overwriting the first.
pub fn save(report: &Report, dir: &Path, plot: bool) -> anyhow::Result<Saved> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = free_stem(dir, &report.file_stem());
    let plots = if plot {
        crate::plot::write_plots(report, dir, &stem)?
    } else {
        Vec::new()
    };
    let json = dir.join(format!("{stem}.json"));
    let markdown = dir.join(format!("{stem}.md"));
    let text = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    let mut md = report.to_markdown();
    if !plots.is_empty() {
        md.push('\n');
        for p in &plots {
            let name = p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            md.push_str(&format!("![{name}]({name})\n"));
        }
    }
    std::fs::write(&markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    Ok(Saved {
        json,
        markdown,
        plots,
    })
}

fn free_stem(dir: &Path, stem: &str) -> String {
    let taken = |s: &str| dir.join(format!("{s}.json")).exists();
    if !taken(stem) {
        return stem.to_owned();
    }
    (2..)
        .map(|n| format!("{stem}-{n}"))
        .find(|s| !taken(s))
        .unwrap_or_else(|| stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Report {
        let mut r = Report {
            scenario: "inbox".into(),
            started_at: "2026-11-22T09:05:03Z".into(),
            duration_secs: 11.5,
            machine: Machine {
                hostname: "bench-1".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0-18-amd64".into(),
                cpu_model: "AMD EPYC 7B13".into(),
                cores: 2,
                memory_gib: 23.4,
            },
            commit: "abc1234".into(),
            target_url: "http://127.0.0.1:8080".into(),
            params: json!({"rate": 2000, "prefix": "user", "sizes": [1, 100]}),
            figures: json!({"latency_ms": {"p99_ms": 3.2}, "errors": 0}),
            tables: Vec::new(),
            notes: vec!["open loop".into()],
        };
        let mut t = Table::new("Inbox reads", &["rate", "strategy", "p99", "note"]);
        t.row(vec![
            "2,000".into(),
            "direct".into(),
            "3.22 ms".into(),
            "a|b".into(),
        ]);
        t.row(vec!["4000".into(), "batch".into(), "–".into(), "".into()]);
        r.tables.push(t);
        r
    }

    #[test]
    fn a_table_renders_header_separator_and_rows_with_numbers_right_aligned() {
        let md = sample().tables[0].to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| rate | strategy | p99 | note |");
        assert_eq!(lines[1], "|---:|---|---:|---|");
        assert_eq!(lines[2], "| 2,000 | direct | 3.22 ms | a\\|b |");
        assert_eq!(lines[3], "| 4000 | batch | – |  |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn a_column_of_placeholders_only_is_left_aligned() {
        let mut t = Table::new("", &["a", "b"]);
        t.row(vec!["–".into(), "1".into()]);
        assert_eq!(t.to_markdown().lines().nth(1), Some("|---|---:|"));
    }

    #[test]
    fn short_rows_are_padded_to_the_widest_row() {
        let mut t = Table::new("", &["a"]);
        t.row(vec!["x".into(), "2".into()]);
        let md = t.to_markdown();
        assert_eq!(md.lines().next(), Some("| a |  |"));
        assert_eq!(md.lines().nth(1), Some("|---|---:|"));
    }

    #[test]
    fn the_markdown_has_the_scenario_machine_commit_params_and_tables() {
        let md = sample().to_markdown();
        assert!(md.starts_with("## inbox — 2026-11-22T09:05:03Z\n"), "{md}");
        assert!(
            md.contains("bench-1 (AMD EPYC 7B13, 2 cores, 23.4 GiB"),
            "{md}"
        );
        assert!(md.contains("kernel 6.1.0-18-amd64"), "{md}");
        assert!(md.contains("- commit: `abc1234`"), "{md}");
        assert!(
            md.contains("- params: `rate` 2000 · `prefix` user · `sizes` 1, 100"),
            "{md}"
        );
        assert!(md.contains("### Inbox reads\n\n| rate |"), "{md}");
        assert!(md.contains("- open loop\n"), "{md}");
    }

    #[test]
    fn the_json_round_trips_with_machine_cores_commit_params_and_figures() {
        let r = sample();
        let text = serde_json::to_string(&r).expect("serialise");
        let v: Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["machine"]["hostname"], "bench-1");
        assert_eq!(v["commit"], "abc1234");
        assert_eq!(v["params"]["rate"], 2000);
        assert_eq!(v["figures"]["latency_ms"]["p99_ms"], 3.2);
        assert_eq!(v["tables"][0]["rows"][0][2], "3.22 ms");
        let back: Report = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(back, r);
    }

    #[test]
    fn file_names_are_the_scenario_and_the_start_time_in_utc() {
        let mut r = sample();
        assert_eq!(r.file_stem(), "inbox-20261122-090503");
        r.started_at = "2026-11-22T10:05:03+01:00".into();
        assert_eq!(r.file_stem(), "inbox-20261122-090503");
    }

    #[test]
    fn saving_writes_json_and_markdown_and_never_overwrites_an_earlier_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reports = dir.path().join("nested/reports");
        let r = sample();
        let first = save(&r, &reports, false).expect("save");
        assert_eq!(first.json, reports.join("inbox-20261122-090503.json"));
        assert_eq!(first.markdown, reports.join("inbox-20261122-090503.md"));
        assert!(first.plots.is_empty());
        let json: Report =
            serde_json::from_str(&std::fs::read_to_string(&first.json).expect("read json"))
                .expect("parse json");
        assert_eq!(json, r);
        let md = std::fs::read_to_string(&first.markdown).expect("read md");
        assert_eq!(md, r.to_markdown());
        let second = save(&r, &reports, false).expect("save again");
        assert_eq!(second.json, reports.join("inbox-20261122-090503-2.json"));
    }

    #[test]
    fn a_new_report_knows_its_machine_and_start() {
        let r = Report::new("seed", "http://127.0.0.1:1", &json!({"users": 3}));
        assert!(chrono::DateTime::parse_from_rfc3339(&r.started_at).is_ok());
        assert!(r.machine.cores >= 1);
        assert!(!r.commit.is_empty());
        assert_eq!(r.params["users"], 3);
    }

    #[test]
    fn proc_files_are_parsed_for_cpu_memory_and_os() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        let gib = memory_gib(meminfo).expect("MemTotal");
        assert_eq!(gib, 23.44);
        assert_eq!(memory_gib("nothing"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn the_commit_comes_from_the_environment_then_git_then_unknown() {
        assert_eq!(
            resolve_commit(Some("deadbee\n".into()), || Some("git".into())),
            "deadbee"
        );
        assert_eq!(
            resolve_commit(Some("  ".into()), || Some("a1b2c3d".into())),
            "a1b2c3d"
        );
        assert_eq!(resolve_commit(None, || None), "unknown");
    }
}
