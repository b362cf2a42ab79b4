//! Background loops under one runner: a handler that panics is restarted (its batch is
//! redelivered, not held forever), `/readyz` and the metrics say a worker keeps failing while
//! it does, and everything recovers by itself once the fault is gone.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn a_batch_worker_that_panics_is_restarted_reported_not_ready_and_its_batches_still_land_once(
) {
    let (app, inbox) = spawn_faulty_inbox(|c| {
        c.fanout.batch_size = Some(1);
        c.fanout.workers = Some(1);
    })
    .await;
    let ready = || async {
        let resp = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    };
    assert_eq!(ready().await.0, StatusCode::OK);

    inbox.panic_on_write.store(true, Ordering::SeqCst);
    let users: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let id = app
        .campaign(json!({
            "audience": {"users": users},
            "content": {"title": "Hi", "body": "there"},
            "channels": ["in_app"],
        }))
        .await;
    // Every batch panics its worker; the runner restarts it on the next batch, and after a
    // few failed steps in a row the process is not ready, naming the worker.
    eventually("readyz red", Duration::from_secs(20), || async {
        let (status, body) = ready().await;
        status == StatusCode::SERVICE_UNAVAILABLE && body.contains("batch-worker")
    })
    .await;
    let (_, metrics) = app.call(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(r#"herald_worker_panics_total{worker="batch-worker"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"herald_worker_failing{worker="batch-worker"} 1"#));

    // The fault goes away: the worker recovers, the process is ready again, and the batches
    // that panicked come back once their leases end: every user gets the row, once.
    inbox.panic_on_write.store(false, Ordering::SeqCst);
    // What /readyz says goes in the failure message (a case that failed in CI said no more than
    // that it timed out).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready().await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz not green 30 s after the fault went: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let done = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_eq!(done["progress"]["notifications_written"], 8, "{done}");
    assert_eq!(inbox_rows(&app, &id).await, (8, 8));
}
