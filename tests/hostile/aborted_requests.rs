//! Clients that go away mid-request: the handler future is dropped at whatever `.await` it had
//! reached, and nothing may stay held (a transaction, a write gate, an idempotency key).

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Sends a whole keyed `POST /v1/campaigns`, then resets the connection (SO_LINGER 0) without
/// reading the answer.
async fn post_and_reset(addr: &str, key: &str) {
    let body = json!({
        "audience": {"users": ["r1", "r2"]},
        "content": {"title": "Reset", "body": "me"},
        "channels": ["in_app"],
    })
    .to_string();
    let request = format!(
        "POST /v1/campaigns HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    // Linger 0 makes the close a reset; the socket is closed at once, so nothing blocks.
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).expect("linger 0");
    drop(s); // RST
}

#[tokio::test]
async fn keyed_creates_whose_connections_are_reset_leave_the_store_writable_and_each_key_one_campaign(
) {
    let app = spawn(Options::default()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let keys: Vec<String> = (0..60).map(|i| format!("reset-{i}")).collect();
    futures::future::join_all(keys.iter().map(|k| post_and_reset(&addr, k))).await;

    // The store takes writes at once, the process is ready, and the dispatcher works.
    let id = tokio::time::timeout(
        Duration::from_secs(10),
        app.campaign(json!({
            "audience": {"user": "after"},
            "content": {"title": "After", "body": "the resets"},
            "channels": ["in_app"],
        })),
    )
    .await
    .expect("a create after the resets answers");
    app.wait_completed(&id, Duration::from_secs(20)).await;
    let ready = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Every key is usable: its retry creates or replays exactly one campaign.
    let mut ids = std::collections::BTreeSet::new();
    for k in &keys {
        let ((s, b), _) = app
            .call_with(
                Method::POST,
                "/v1/campaigns",
                Some(json!({
                    "audience": {"users": ["r1", "r2"]},
                    "content": {"title": "Reset", "body": "me"},
                    "channels": ["in_app"],
                })),
                &[("idempotency-key", k)],
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{k}: {b}");
        ids.insert(b["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), keys.len(), "one campaign per key");
    let (_, list) = app
        .call(Method::GET, "/v1/campaigns?limit=1000", None)
        .await;
    assert_eq!(
        list["campaigns"].as_array().unwrap().len(),
        keys.len() + 1,
        "no key made a second campaign"
    );
    for id in &ids {
        app.wait_completed(id, Duration::from_secs(30)).await;
    }
}
