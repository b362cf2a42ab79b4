//! `/metrics` of a running `herald serve` after some work passes `promtool check metrics`
//! (Prometheus' naming and help-text lint). Needs `promtool` (Debian's `prometheus` package):
//! skipped without it unless `HERALD_TEST_PROMTOOL` is set, as `.ci/run` sets it.

#[path = "support/serve.rs"]
mod serve;

use std::io::Write;
use std::process::{Command, Stdio};

/// The JSON answer of a request.
async fn json(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_passes_promtool_with_help_text_for_every_metric() {
    let promtool_there = Command::new("promtool").arg("--version").output().is_ok();
    if !promtool_there {
        assert!(
            std::env::var_os("HERALD_TEST_PROMTOOL").is_none(),
            "HERALD_TEST_PROMTOOL is set but promtool does not run"
        );
        eprintln!("skipped: no promtool (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve::serve(dir.path()).await;
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{}{path}", server.base))
            .bearer_auth(&server.key)
    };
    // Some work, so the fan-out, inbox, HTTP and bus metrics have values.
    let s = admin(reqwest::Method::PUT, "/v1/users/m1")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success());
    let c = json(
        admin(reqwest::Method::POST, "/v1/campaigns").json(&serde_json::json!({
            "audience": {"user": "m1"},
            "content": {"title": "t", "body": "b"},
            "channels": ["in_app"]})),
    )
    .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = json(admin(reqwest::Method::GET, &format!("/v1/campaigns/{id}"))).await;
        if c["status"] == "completed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let missing = admin(reqwest::Method::GET, "/v1/users/nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let page = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "herald_http_requests_total",
        "herald_fanout_notifications_written_total",
        "herald_campaigns_created_total",
    ] {
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "{name} has help text:\n{page}"
        );
    }
    // Read at the scrape: what SQLite holds in this process (page caches, statements).
    let sqlite_bytes: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("herald_storage_sqlite_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the SQLite memory gauge has a value:\n{page}"));
    assert!(
        sqlite_bytes > 0.0,
        "SQLite holds some memory: {sqlite_bytes}"
    );
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
