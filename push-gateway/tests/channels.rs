//! Email and webhook campaigns end to end: created over HTTP, fanned out, delivered by the
//! gateway to a local SMTP sink and to a webhook receiver that checks the signature.

mod common;
#[path = "support/fake_server.rs"]
mod fake_server;
#[path = "support/smtp_sink.rs"]
mod smtp_sink;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use common::{eventually, spawn_gateway};
use herald_push::providers::webhook::{verify, SIGNATURE_HEADER};
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use smtp_sink::SmtpSink;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_campaign_arrives_with_text_and_html_and_bad_mailboxes_fail() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = spawn_gateway(move |c| {
        c.push.email.smtp_url = Some(herald_core::config::Secret::new(url));
        c.push.email.from = "Herald <noreply@example.com>".into();
    })
    .await;
    for (id, email) in [("u1", "ann@example.com"), ("u2", "reject-bob@example.com")] {
        let (s, b) = app
            .call(
                Method::PUT,
                &format!("/v1/users/{id}"),
                Some(json!({"email": email, "attributes": {"name": id}})),
            )
            .await;
        assert!(s.is_success(), "{b}");
    }
    let (s, b) = app
        .call(
            Method::PUT,
            "/v1/templates/receipt",
            Some(json!({
                "email": {"subject": "Receipt for {{ user.name }}", "text": "Order {{ data.order }} paid", "html": "<p>Order <b>{{ data.order }}</b> paid</p>"},
            })),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let id = app
        .campaign(json!({
            "audience": {"users": ["u1", "u2"]},
            "template": "receipt",
            "channels": ["email"],
            "data": {"order": 42},
        }))
        .await;

    app.wait_for_deliveries(&id, "email", (1, 1)).await;
    let got = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let mail = &got[0];
    assert_eq!(mail.recipients, vec!["ann@example.com".to_owned()]);
    assert_eq!(mail.header("Subject").as_deref(), Some("Receipt for u1"));
    assert!(mail.data.contains("multipart/alternative"), "{}", mail.data);
    assert!(mail.data.contains("Order 42 paid"));
    assert!(mail.data.contains("<b>42</b>"));
    // A rejected mailbox is a permanent failure: not retried, not dead-lettered.
    assert!(app.dead_letters("").await.is_empty());
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    bad_signatures: Arc<Mutex<u32>>,
}

const SECRET: &str = "whsec-0123456789abcdef";

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let now = chrono::Utc::now().timestamp();
    if verify(SECRET.as_bytes(), signature, &body, now, 300).is_err() {
        *r.bad_signatures.lock() += 1;
        return AxumStatus::UNAUTHORIZED;
    }
    let hook = headers
        .get("herald-webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    r.got
        .lock()
        .push((hook, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    AxumStatus::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_subscribers_get_the_notifications_of_their_categories_signed() {
    let receiver = Receiver::default();
    let addr = fake_server::serve(
        axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone()),
    )
    .await;

    let app = spawn_gateway(|_| {}).await;
    let url = format!("http://{addr}/hook");
    for (id, body) in [
        (
            "orders-crm",
            json!({"url": url, "secret": SECRET, "categories": ["orders"]}),
        ),
        ("everything", json!({"url": url, "secret": SECRET})),
        (
            "marketing",
            json!({"url": url, "secret": SECRET, "categories": ["marketing"]}),
        ),
        (
            "wrong-secret",
            json!({"url": url, "secret": "whsec-not-the-receivers-secret"}),
        ),
    ] {
        let (s, b) = app
            .call(Method::PUT, &format!("/v1/webhooks/{id}"), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    app.user_with_devices("u1", &[]).await;
    let id = app
        .campaign(json!({
            "audience": {"user": "u1"},
            "content": {"title": "Shipped", "body": "{\"order\": {{ data.order }}}"},
            "channels": ["webhook"],
            "category": "orders",
            "data": {"order": 7},
        }))
        .await;

    // orders-crm and everything accept; wrong-secret is refused (a 401 fails for good).
    app.wait_for_deliveries(&id, "webhook", (2, 1)).await;
    let got = receiver.got.lock().clone();
    let mut hooks: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
    hooks.sort();
    assert_eq!(hooks, vec!["everything", "orders-crm"]);
    let body = &got[0].1;
    assert_eq!(body["campaign_id"], id.as_str());
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["category"], "orders");
    assert_eq!(
        body["body"],
        json!({"order": 7}),
        "a JSON body is sent as JSON"
    );
    assert_eq!(*receiver.bad_signatures.lock(), 1);
    eventually("no retries of the refused post", || async {
        *receiver.bad_signatures.lock() == 1
    })
    .await;
}
