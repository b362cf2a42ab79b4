//! `herald-loadtest`: the command line over the `herald_loadtest` library. It drives a running
//! Herald through its public HTTP API only, targets loopback or explicitly allowed hosts, and
//! keeps request counts bounded.
//!
//! Each run prints its report as markdown on stdout (progress goes to stderr) and writes it to
//! `<report-dir>/<scenario>-<YYYYMMDD-HHMMSS>.json` and `.md`; `--plot` adds SVG charts beside
//! them. Scenarios: `seed`, `fanout`, `inbox`, `broadcast`, `live`, `push` and `limits` (see the
//! library's modules and `--help`).

use anyhow::Context;

/// mimalloc, as in `herald`: the harness (and the fake FCM it runs) allocates per request, and
/// glibc's allocator would make the harness, not the server, the bottleneck.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use herald_loadtest::{
    BroadcastOpts, FanoutOpts, InboxOpts, LimitsOpts, LiveOpts, PushOpts, Report, SeedOpts,
};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Load scenarios against a running Herald"
)]
struct Cli {
    /// Base URL of the Herald under test.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin key (defaults to the contents of ./herald-data/admin.key).
    #[arg(long, global = true, env = "HERALD_ADMIN_KEY")]
    admin_key: Option<String>,
    /// Where the JSON and markdown report of each run goes (created if missing).
    #[arg(long, global = true, default_value = "loadtest-reports")]
    report_dir: PathBuf,
    /// Also draw SVG charts next to the report: latency distributions (inbox, live) and
    /// fan-out time per audience size against seed 004's targets (fanout).
    #[arg(long, global = true)]
    plot: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Bulk-import N synthetic users (tiers, locales, time zones, activity) through
    /// `POST /v1/users/import`, and report users per second.
    Seed(SeedOpts),
    /// Seed 004's sweep: one campaign per audience size (segments `n < size` over users made
    /// by `seed`), time to completion and users/s next to seed 004's target for that size.
    Fanout(FanoutOpts),
    /// Open-loop inbox reads (`GET /v1/inbox`) at a fixed rate over many users' tokens.
    /// Latency runs from each request's scheduled start, so a slow server cannot hide behind
    /// fewer requests (no coordinated omission).
    Inbox(InboxOpts),
    /// A broadcast to `all`: time from the create request until it shows in every sampled
    /// inbox, and the personal rows it wrote.
    Broadcast(BroadcastOpts),
    /// N WebSockets on `GET /v1/inbox/live`: time to open them, the server's RSS per socket
    /// (with --server-pid), then broadcasts to `all` and their latency to every socket.
    Live(LiveOpts),
    /// One client process of `live --workers`: reads its plan on stdin, reports on stdout.
    #[command(hide = true)]
    LiveWorker,
    /// Device sends per second through the push gateway: registers one FCM device for each of
    /// the first N seeded users, sends them one push campaign, and times the sends at a fake
    /// FCM run by the harness (start the server with FCM pointed at it: see --write-credentials).
    Push {
        #[command(flatten)]
        opts: PushOpts,
        /// Only write the fake's service-account file here (for
        /// HERALD_PUSH__FCM__CREDENTIALS_FILE) and exit.
        #[arg(long)]
        write_credentials: Option<PathBuf>,
    },
    /// The references the other scenarios are measured against, in the same run: bare SQLite
    /// inserting inbox rows into the server's schema, and the server's `GET /healthz` rate;
    /// then a fan-out and inbox reads (when sized) and earlier reports (--compare), each as a
    /// ratio to its reference beside the performance goals.
    Limits(LimitsOpts),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.scenario, Scenario::LiveWorker) {
        return herald_loadtest::live_worker().await;
    }
    herald_loadtest::check_target(&cli.url)?;
    // Writing the fake FCM's credentials comes before the server (and its key) exists.
    if let Scenario::Push {
        write_credentials: Some(path),
        opts,
    } = &cli.scenario
    {
        println!(
            "{}",
            herald_loadtest::write_fcm_credentials(&opts.fcm_listen, path)?
        );
        return Ok(());
    }
    let key = match cli.admin_key.clone() {
        Some(k) => k,
        None => std::fs::read_to_string("herald-data/admin.key")
            .context("no --admin-key and no ./herald-data/admin.key")?
            .trim()
            .to_owned(),
    };
    let url = cli.url.as_str();
    let report: Report = match &cli.scenario {
        Scenario::Seed(o) => herald_loadtest::seed(url, &key, o).await?,
        Scenario::Fanout(o) => herald_loadtest::fanout(url, &key, o).await?,
        Scenario::Inbox(o) => herald_loadtest::inbox(url, &key, o).await?,
        Scenario::Broadcast(o) => herald_loadtest::broadcast(url, &key, o).await?,
        Scenario::Live(o) => herald_loadtest::live(url, &key, o).await?,
        Scenario::Push { opts, .. } => herald_loadtest::push(url, &key, opts).await?,
        Scenario::Limits(o) => herald_loadtest::limits(url, &key, o).await?,
        Scenario::LiveWorker => unreachable!("handled before the target is checked"),
    };
    print!("{}", report.to_markdown());
    let saved = herald_loadtest::save(&report, &cli.report_dir, cli.plot)?;
    eprintln!(
        "report written to {} and {}",
        saved.json.display(),
        saved.markdown.display()
    );
    for chart in &saved.plots {
        eprintln!("chart written to {}", chart.display());
    }
    if cli.plot && saved.plots.is_empty() {
        eprintln!(
            "--plot: no chart for `{}` (charts are drawn for inbox, live and fanout)",
            report.scenario
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_come_after_the_scenario_too() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "fanout",
            "--sizes",
            "1,10",
            "--plot",
            "--report-dir",
            "/tmp/r",
        ])
        .expect("parse");
        assert!(cli.plot);
        assert_eq!(cli.report_dir, PathBuf::from("/tmp/r"));
        match cli.scenario {
            Scenario::Fanout(o) => assert_eq!(o.sizes, [1, 10]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn push_keeps_its_credentials_step() {
        let cli = Cli::try_parse_from([
            "herald-loadtest",
            "push",
            "--write-credentials",
            "fcm.json",
            "--fcm-listen",
            "127.0.0.1:9500",
        ])
        .expect("parse");
        match cli.scenario {
            Scenario::Push {
                opts,
                write_credentials,
            } => {
                assert_eq!(write_credentials, Some(PathBuf::from("fcm.json")));
                assert_eq!(opts.fcm_listen, "127.0.0.1:9500");
                assert_eq!(opts.devices, 100_000);
            }
            other => panic!("{other:?}"),
        }
    }
}
