//! Smoke test: a complete Herald in-process on 127.0.0.1:0 over embedded SQLite in a temp dir
//! — admin API, inbox with its live feed and the ops routes on one listener as `herald serve`
//! composes them, plus the fan-out role and the push gateway sending to a fake FCM — and every
//! scenario of the library run against it at tiny sizes, each report checked and saved.

use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, SystemClock};
use herald_loadtest::{
    BroadcastOpts, FanoutOpts, InboxOpts, LimitsOpts, LiveOpts, PushOpts, Report, SeedOpts,
};
use herald_push::fakes::FakeFcm;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ADMIN_KEY: &str = "smoke-admin-key-0123456789";
const USERS: u64 = 300;

/// A running Herald; stops when dropped.
struct Herald {
    url: String,
    fcm: FakeFcm,
    shutdown: CancellationToken,
    /// Its data directory (`limits` reads the inbox schema there).
    dir: tempfile::TempDir,
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What `herald serve` starts, with the throttle lifted and FCM pointed at a fake.
async fn start_herald() -> Herald {
    let dir = tempfile::tempdir().expect("temp dir");
    // The fake first: the push provider reads its credentials file when it is built.
    let fcm = FakeFcm::start().await.expect("fake FCM");
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        admin_key: Some(Secret::new(ADMIN_KEY)),
        ..Config::default()
    };
    config.throttle.users_per_s = 0;
    config.throttle.large_users_per_s = 0;
    config.throttle.max_queue_depth = 0;
    config.push.fcm.endpoint = fcm.endpoint();
    config.push.fcm.credentials_file =
        Some(fcm.write_credentials(dir.path()).expect("fake credentials"));
    config.push.fcm.batch_window_ms = 5;
    let ports = herald_storage::open_ports(&config)
        .await
        .expect("open embedded backends");
    let ctx = Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(SystemClock),
        secrets: Secrets {
            admin_key: Secret::new(ADMIN_KEY),
            token_secret: Secret::new("smoke-token-secret"),
        },
        workers: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
    let providers = herald_push::Providers::from_config(&ctx.config.push).expect("push providers");
    tokio::spawn(herald_push::run_with(
        ctx.clone(),
        providers,
        shutdown.clone(),
    ));
    let (inbox, _live) = herald_inbox::router_with_feed(
        ctx.clone(),
        herald_inbox::LiveConfig::default(),
        shutdown.clone(),
    );
    let router = herald_http::finish(
        herald_api::admin_router(ctx.clone())
            .merge(inbox)
            .merge(herald_http::ops_router(ctx.clone())),
    );
    tokio::spawn(herald_http::serve(listener, router, shutdown.clone()));
    Herald {
        url: format!("http://{addr}"),
        fcm,
        shutdown,
        dir,
    }
}

fn number(report: &Report, pointer: &str) -> f64 {
    report
        .figures
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {}", report.figures))
}

/// Checks what every report has, and that it saves (with charts where there are some);
/// returns the JSON file.
fn check_and_save(report: &Report, scenario: &str, dir: &std::path::Path) -> std::path::PathBuf {
    assert_eq!(report.scenario, scenario);
    assert!(report.duration_secs > 0.0, "{scenario}: no duration");
    assert!(report.machine.cores >= 1);
    assert!(!report.commit.is_empty());
    assert!(report.params.is_object(), "{scenario}: {}", report.params);
    assert!(!report.tables.is_empty(), "{scenario}: no table");
    let md = report.to_markdown();
    assert!(md.contains(&format!("## {scenario} — ")), "{md}");
    assert!(md.contains("|---"), "{md}");
    let saved = herald_loadtest::save(report, dir, true).expect("save the report");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved.json).expect("read the JSON"))
            .expect("the JSON report parses");
    assert_eq!(json["scenario"], scenario);
    // Every figure is saved (floats may differ in the last digit once parsed back).
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&json["figures"]), keys(&report.figures));
    assert_eq!(json["machine"]["cores"], report.machine.cores);
    assert_eq!(json["commit"], report.commit.as_str());
    let stem = report.file_stem();
    let name = saved.json.file_name().expect("file name").to_string_lossy();
    assert!(name.starts_with(&stem) && name.ends_with(".json"), "{name}");
    assert!(saved.markdown.exists());
    let charted = matches!(scenario, "inbox" | "live" | "fanout");
    assert_eq!(saved.plots.len(), usize::from(charted), "{scenario}");
    for chart in &saved.plots {
        let svg = std::fs::read_to_string(chart).expect("read the chart");
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
    }
    saved.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_at_tiny_sizes_against_a_whole_herald() {
    let herald = start_herald().await;
    let url = herald.url.as_str();
    // HERALD_LOADTEST_SMOKE_KEEP=<dir> keeps the reports and charts there, to look at them.
    let kept = std::env::var_os("HERALD_LOADTEST_SMOKE_KEEP").map(std::path::PathBuf::from);
    if let Some(parent) = &kept {
        std::fs::create_dir_all(parent).expect("create the kept report dir");
    }
    let reports = tempfile::Builder::new()
        .prefix("smoke-")
        .disable_cleanup(kept.is_some())
        .tempdir_in(kept.unwrap_or_else(std::env::temp_dir))
        .expect("report dir");
    let dir = reports.path();
    let began = Instant::now();

    let seed = herald_loadtest::seed(
        url,
        ADMIN_KEY,
        &SeedOpts {
            users: USERS,
            per_request: 200,
            ..SeedOpts::default()
        },
    )
    .await
    .expect("seed");
    assert_eq!(number(&seed, "/imported"), USERS as f64);
    assert_eq!(seed.figures["requests"].as_array().map(Vec::len), Some(2));
    assert!(number(&seed, "/users_per_s") > 0.0);
    check_and_save(&seed, "seed", dir);

    let fanout = herald_loadtest::fanout(
        url,
        ADMIN_KEY,
        &FanoutOpts {
            sizes: vec![1, 10, 200],
            timeout_secs: 30,
            ..FanoutOpts::default()
        },
    )
    .await
    .expect("fanout");
    let sizes = fanout.figures["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 3);
    for (row, size) in sizes.iter().zip([1u64, 10, 200]) {
        assert_eq!(row["audience"], size, "{row}");
        assert_eq!(row["notifications_written"], size, "{row}");
        assert!(row["secs"].as_f64().is_some_and(|s| s >= 0.0), "{row}");
        assert_eq!(
            row["target_secs"].as_f64(),
            Some(herald_loadtest::seed_004_target(size))
        );
    }
    let fanout_json = check_and_save(&fanout, "fanout", dir);

    let inbox = herald_loadtest::inbox(
        url,
        ADMIN_KEY,
        &InboxOpts {
            rate: 50,
            duration_secs: 1,
            users: 10,
            population: USERS,
            ..InboxOpts::default()
        },
    )
    .await
    .expect("inbox");
    assert_eq!(number(&inbox, "/errors"), 0.0, "{}", inbox.figures);
    assert_eq!(number(&inbox, "/completed"), 50.0);
    assert!(number(&inbox, "/latency_ms/count") > 0.0);
    assert!(number(&inbox, "/latency_ms/p50_ms") > 0.0);
    assert!(number(&inbox, "/latency_ms/p99_ms") >= number(&inbox, "/latency_ms/p50_ms"));
    assert!(!inbox.figures["latency_spectrum"]
        .as_array()
        .expect("spectrum")
        .is_empty());
    let inbox_json = check_and_save(&inbox, "inbox", dir);

    let broadcast = herald_loadtest::broadcast(
        url,
        ADMIN_KEY,
        &BroadcastOpts {
            sample: 3,
            population: USERS,
            ..BroadcastOpts::default()
        },
    )
    .await
    .expect("broadcast");
    assert_eq!(number(&broadcast, "/visible"), 3.0);
    assert_eq!(number(&broadcast, "/audience_size"), USERS as f64);
    assert!(number(&broadcast, "/visible_ms") > 0.0);
    check_and_save(&broadcast, "broadcast", dir);

    let live = herald_loadtest::live(
        url,
        ADMIN_KEY,
        &LiveOpts {
            connections: 20,
            source_addrs: 2,
            broadcasts: 1,
            wait_secs: 15,
            ..LiveOpts::default()
        },
    )
    .await
    .expect("live");
    assert_eq!(number(&live, "/established"), 20.0, "{}", live.figures);
    assert_eq!(number(&live, "/broadcasts/0/received"), 20.0);
    assert_eq!(number(&live, "/broadcasts/0/latency_ms/count"), 20.0);
    assert_eq!(number(&live, "/duplicates"), 0.0);
    assert_eq!(number(&live, "/closed_clean"), 20.0);
    check_and_save(&live, "live", dir);

    // The same over two client processes and two inbox URLs (one node twice here).
    let spread = herald_loadtest::live(
        url,
        ADMIN_KEY,
        &LiveOpts {
            connections: 20,
            source_addrs: 2,
            broadcasts: 2,
            wait_secs: 15,
            inbox_urls: vec![url.to_owned(), url.to_owned()],
            workers: 2,
            worker_exe: Some(env!("CARGO_BIN_EXE_herald-loadtest").into()),
            ..LiveOpts::default()
        },
    )
    .await
    .expect("live over workers");
    assert_eq!(number(&spread, "/established"), 20.0, "{}", spread.figures);
    assert_eq!(number(&spread, "/client_processes"), 2.0);
    assert_eq!(number(&spread, "/inbox_nodes"), 2.0);
    for b in 0..2 {
        assert_eq!(number(&spread, &format!("/broadcasts/{b}/received")), 20.0);
        assert!(number(&spread, &format!("/broadcasts/{b}/latency_ms/max_ms")) < 15_000.0);
    }
    assert_eq!(number(&spread, "/duplicates"), 0.0);
    assert_eq!(number(&spread, "/closed_clean"), 20.0);

    let push = herald_loadtest::push_with_fcm(
        url,
        ADMIN_KEY,
        &PushOpts {
            devices: 50,
            timeout_secs: 30,
            ..PushOpts::default()
        },
        &herald.fcm,
    )
    .await
    .expect("push");
    assert_eq!(number(&push, "/sent"), 50.0, "{}", push.figures);
    assert_eq!(number(&push, "/failed"), 0.0);
    assert_eq!(number(&push, "/fake_accepted"), 50.0);
    assert!(number(&push, "/sends_per_s") > 0.0);
    let push_json = check_and_save(&push, "push", dir);

    // The references, a fan-out in the same run, and the reports above beside them.
    let limits = herald_loadtest::limits(
        url,
        ADMIN_KEY,
        &LimitsOpts {
            data_dir: herald.dir.path().to_owned(),
            rows: 3000,
            rows_per_tx: 1000,
            http_secs: 1,
            connections: 4,
            fanout_size: 10,
            inbox_rate: vec![20, 40],
            inbox_secs: 1,
            inbox_users: 10,
            population: USERS,
            compare: vec![fanout_json, inbox_json, push_json],
            server_pid: Some(std::process::id()),
        },
    )
    .await
    .expect("limits");
    assert!(
        number(&limits, "/sqlite_rows_per_s") > 0.0,
        "{}",
        limits.figures
    );
    assert_eq!(number(&limits, "/sqlite_rows"), 3000.0);
    assert!(number(&limits, "/healthz_per_s") > 0.0);
    assert_eq!(number(&limits, "/healthz_errors"), 0.0);
    assert!(number(&limits, "/server_rss_mib") > 0.0);
    let compared = limits.figures["compared"].as_array().expect("compared");
    // The in-run fan-out, the in-run inbox reads at each rate, the three sizes of the earlier
    // fan-out, the earlier inbox reads, the push run, the server's RSS.
    assert_eq!(compared.len(), 1 + 2 + 3 + 1 + 1 + 1, "{compared:?}");
    for (i, rate) in [(1, "20"), (2, "40")] {
        let what = compared[i]["what"].as_str().unwrap();
        assert!(
            what.starts_with("inbox reads at ") && what.contains(rate),
            "{what}"
        );
    }
    assert!(
        compared[0]["what"].as_str().unwrap().contains("10 users"),
        "{}",
        compared[0]
    );
    assert!(
        compared[0]["ratio"].as_f64().unwrap() > 0.0,
        "{}",
        compared[0]
    );
    // The scratch file is gone; the server's inbox is untouched.
    let beside: Vec<_> = std::fs::read_dir(herald.dir.path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("herald-limits-{}.db", std::process::id()))
        })
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    check_and_save(&limits, "limits", dir);

    // Seven runs, each a JSON and a markdown file, plus three charts (the in-run fan-out of
    // `limits` is in its own report).
    let files = std::fs::read_dir(dir).expect("list the reports").count();
    assert_eq!(files, 7 * 2 + 3);
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "the smoke run took {:?}",
        began.elapsed()
    );
}
