//! The webhook provider against a receiver that checks signatures the way receivers are told to
//! (with `verify`), and the receiver-side helpers themselves.

#[path = "support/dispatch.rs"]
mod dispatch;
#[path = "support/fake_server.rs"]
mod fake_server;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use dispatch::{assert_timed_out, assert_unreachable, envelope, labels, limits, send_one};
use fake_server::closed_addr;
use herald_core::config::{Secret, WebhookConfig};
use herald_core::delivery::Webhook;
use herald_core::model::{Channel, Priority};
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use herald_push::providers::webhook::{
    sign, sign_standard, verify, SignatureError, WebhookProvider,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "whsec-test-0123456789abcdef";
const TOLERANCE: i64 = 300;

/// One post the receiver accepted.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Receiver {
    /// The subscription's secret the receiver verifies with.
    secret: String,
    accepted: Vec<Received>,
    /// Posts refused for a bad signature.
    unauthorized: usize,
    /// Posts seen, whatever became of them.
    hits: Vec<String>,
}

type Shared = Arc<Mutex<Receiver>>;

/// Verifies the signature like a receiver does, then answers by path: `ok`, `down` (503 with
/// `Retry-After: 7`), `gone` (410), `bad` (400), `moved` (302 to `ok`), `hang` (too late).
async fn receive(
    State(receiver): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.lock().hits.push(path.clone());
    let signature = headers
        .get("herald-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let secret = receiver.lock().secret.clone();
    if verify(
        secret.as_bytes(),
        signature,
        &body,
        Utc::now().timestamp(),
        TOLERANCE,
    )
    .is_err()
    {
        receiver.lock().unauthorized += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match path.as_str() {
        "down" => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "7")],
            )
                .into_response()
        }
        "gone" => return StatusCode::GONE.into_response(),
        "bad" => return StatusCode::BAD_REQUEST.into_response(),
        "moved" => return (StatusCode::FOUND, [(header::LOCATION, "/hooks/ok")]).into_response(),
        "hang" => tokio::time::sleep(Duration::from_secs(5)).await,
        _ => {}
    }
    receiver.lock().accepted.push(Received {
        path,
        headers,
        body,
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn receiver() -> (SocketAddr, Shared) {
    receiver_with_secret(SECRET).await
}

async fn receiver_with_secret(secret: &str) -> (SocketAddr, Shared) {
    let shared = Shared::default();
    shared.lock().secret = secret.to_owned();
    let app = Router::new()
        .route("/hooks/{path}", post(receive))
        .with_state(Arc::clone(&shared));
    (fake_server::serve(app).await, shared)
}

fn provider(timeout_ms: u64) -> WebhookProvider {
    WebhookProvider::new(&WebhookConfig {
        limits: limits(8, timeout_ms),
    })
    .expect("webhook provider")
}

fn subscription(id: &str, url: String, secret: &str) -> Arc<Webhook> {
    let at = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    Arc::new(Webhook {
        id: id.into(),
        url,
        secret: Secret::new(secret),
        categories: None,
        previous_secrets: Vec::new(),
        created_at: at,
        updated_at: at,
    })
}

fn dispatch(hook: Arc<Webhook>, body: &str) -> Dispatch {
    let envelope = Arc::new(Envelope {
        campaign_id: "cmp-7".into(),
        category: Some("billing".into()),
        ..envelope(Channel::Webhook, Priority::High)
    });
    Dispatch {
        user_id: "u-42".into(),
        title: Some("Invoice ready".into()),
        data: json!({"invoice": 42, "amount": "12.50"}),
        ..dispatch::to(&envelope, Destination::Webhook(hook), body)
    }
}

fn to(addr: SocketAddr, path: &str) -> Dispatch {
    let hook = subscription("wh-1", format!("http://{addr}/hooks/{path}"), SECRET);
    dispatch(hook, r#"{"text":"hello"}"#)
}

/// A fresh receiver's answer at `path` becomes `want`.
async fn assert_outcome(path: &str, want: Outcome) {
    let (addr, _receiver) = receiver().await;
    assert_eq!(send_one(&provider(5_000), to(addr, path)).await, want);
}

#[tokio::test]
async fn a_delivery_is_accepted_with_its_fields_and_a_valid_signature() {
    let (addr, receiver) = receiver().await;
    let d = to(addr, "ok");

    let before = Utc::now().timestamp();
    let outcomes = provider(5_000).send(std::slice::from_ref(&d)).await;

    assert_eq!(outcomes, vec![Outcome::Sent]);
    let got = receiver.lock().accepted.clone();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "ok");
    let h = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(h("user-agent"), "Herald-Webhooks/1");
    assert_eq!(h("herald-webhook-id"), "wh-1");
    assert_eq!(h("herald-notification-id"), d.notification_id.to_string());
    let timestamp: i64 = h("herald-timestamp").parse().unwrap();
    assert!((before..=Utc::now().timestamp()).contains(&timestamp));
    // The signature is over the exact bytes received and carries the timestamp header's value.
    assert_eq!(
        h("herald-signature"),
        sign(SECRET.as_bytes(), timestamp, &r.body)
    );

    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let sent_at = body["sent_at"].as_str().unwrap();
    let sent_at = DateTime::parse_from_rfc3339(sent_at).unwrap();
    assert_eq!(sent_at.timestamp(), timestamp);
    assert_eq!(
        body,
        json!({
            "id": d.notification_id.to_string(),
            "webhook_id": "wh-1",
            "campaign_id": "cmp-7",
            "user_id": "u-42",
            "category": "billing",
            "priority": "high",
            "title": "Invoice ready",
            "body": {"text": "hello"},
            "data": {"invoice": 42, "amount": "12.50"},
            "sent_at": body["sent_at"],
        })
    );
}

/// Verifies a captured post with the reference Standard Webhooks library (PyPI
/// `standardwebhooks`): `Ok(true)` verified, `Ok(false)` refused, `Err` when the library is not
/// installed (a failure where `HERALD_TEST_STANDARDWEBHOOKS` is set, as `.ci/run` does).
fn verify_with_reference_library(secret: &str, r: &Received, body: &[u8]) -> Result<bool, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys\n\
             from standardwebhooks import Webhook, WebhookVerificationError\n\
             try:\n    Webhook(sys.argv[1]).verify(open(sys.argv[2], 'rb').read(), json.loads(sys.argv[3]))\n\
             except WebhookVerificationError as e:\n    print('refused:', e); sys.exit(3)\n",
        )
        .arg(secret)
        .arg(&file)
        .arg(Value::Object(headers).to_string())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[tokio::test]
async fn a_delivery_verifies_with_the_standard_webhooks_reference_library() {
    let secret = Webhook::generate_secret();
    let (addr, receiver) = receiver_with_secret(secret.expose()).await;
    let hook = subscription("wh-std", format!("http://{addr}/hooks/ok"), secret.expose());
    let d = dispatch(hook.clone(), r#"{"text":"hello"}"#);
    assert_eq!(
        provider(5_000).send(std::slice::from_ref(&d)).await,
        vec![Outcome::Sent]
    );
    let r = receiver.lock().accepted[0].clone();
    let h = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    // The message id is the notification id (what a receiver dedupes on, the same on retries).
    assert_eq!(h("webhook-id"), d.notification_id.to_string());
    assert_eq!(h("webhook-timestamp"), h("herald-timestamp"));
    let timestamp: i64 = h("webhook-timestamp").parse().unwrap();
    assert_eq!(
        h("webhook-signature"),
        sign_standard(&hook.standard_key(), &h("webhook-id"), timestamp, &r.body)
    );
    match verify_with_reference_library(secret.expose(), &r, &r.body) {
        Ok(verified) => {
            assert!(verified, "the reference library refused Herald's post");
            let mut tampered = r.body.to_vec();
            tampered[2] ^= 1;
            assert_eq!(
                verify_with_reference_library(secret.expose(), &r, &tampered),
                Ok(false),
                "the reference library accepted a tampered body"
            );
            let other = Webhook::generate_secret();
            assert_eq!(
                verify_with_reference_library(other.expose(), &r, &r.body),
                Ok(false),
                "the reference library accepted another secret"
            );
        }
        Err(e) if std::env::var_os("HERALD_TEST_STANDARDWEBHOOKS").is_none() => {
            eprintln!("skipped (pip install standardwebhooks): {e}");
        }
        Err(e) => panic!("the standardwebhooks library could not run: {e}"),
    }
}

/// During a rotation every post is signed with the new secret and the replaced one (not with
/// one whose grace has ended), in both header forms, so a receiver holding either verifies it.
#[tokio::test]
async fn during_a_rotation_a_post_verifies_with_the_old_secret_and_with_the_new_one() {
    let (old, new, expired) = (
        Webhook::generate_secret(),
        Webhook::generate_secret(),
        Webhook::generate_secret(),
    );
    // The receiver still holds the old secret.
    let (addr, receiver) = receiver_with_secret(old.expose()).await;
    let now = Utc::now();
    let mut hook = (*subscription(
        "wh-rot",
        format!("http://{addr}/hooks/ok"),
        expired.expose(),
    ))
    .clone();
    hook.rotate(old.clone(), now, now + chrono::Duration::seconds(1));
    hook.rotate(new.clone(), now, now + chrono::Duration::hours(1));
    // The first replaced secret's grace ends before the post is made.
    hook.previous_secrets[1].expires_at = now - chrono::Duration::seconds(1);
    let hook = Arc::new(hook);
    let d = dispatch(hook.clone(), r#"{"text":"rotating"}"#);
    assert_eq!(
        provider(5_000).send(std::slice::from_ref(&d)).await,
        vec![Outcome::Sent],
        "the receiver holding the old secret verified the post"
    );
    let r = receiver.lock().accepted[0].clone();
    let h = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    let timestamp: i64 = h("webhook-timestamp").parse().unwrap();
    let std_sig = |s: &Secret| {
        sign_standard(
            &herald_core::delivery::standard_key(s),
            &h("webhook-id"),
            timestamp,
            &r.body,
        )
    };
    assert_eq!(
        h("webhook-signature"),
        format!("{} {}", std_sig(&new), std_sig(&old)),
        "new first, then old; none for the expired one"
    );
    let herald = h("herald-signature");
    assert_eq!(herald.matches("v1=").count(), 2, "{herald}");
    for (secret, ok) in [(&new, true), (&old, true), (&expired, false)] {
        assert_eq!(
            verify(
                secret.expose().as_bytes(),
                &herald,
                &r.body,
                timestamp,
                TOLERANCE
            )
            .is_ok(),
            ok,
            "Herald-Signature with {}",
            if ok {
                "a signing secret"
            } else {
                "the expired one"
            }
        );
        match verify_with_reference_library(secret.expose(), &r, &r.body) {
            Ok(verified) => assert_eq!(verified, ok, "webhook-signature"),
            Err(e) if std::env::var_os("HERALD_TEST_STANDARDWEBHOOKS").is_none() => {
                eprintln!("skipped (pip install standardwebhooks): {e}");
            }
            Err(e) => panic!("the standardwebhooks library could not run: {e}"),
        }
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_sent_as_a_string_and_absent_fields_as_null() {
    let (addr, receiver) = receiver().await;
    let mut d = dispatch(
        subscription("wh-2", format!("http://{addr}/hooks/ok"), SECRET),
        "Your invoice is ready",
    );
    d.title = None;
    let mut envelope = (*d.envelope).clone();
    envelope.category = None;
    d.envelope = Arc::new(envelope);

    assert_eq!(provider(5_000).send(&[d]).await, vec![Outcome::Sent]);

    let r = receiver.lock().accepted[0].clone();
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["body"], json!("Your invoice is ready"));
    assert_eq!(body["title"], Value::Null);
    assert_eq!(body["category"], Value::Null);
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_is_refused_by_the_receiver() {
    let (addr, receiver) = receiver().await;
    let hook = subscription(
        "wh-1",
        format!("http://{addr}/hooks/ok"),
        "not-the-receivers-secret",
    );

    let outcomes = provider(5_000).send(&[dispatch(hook, "{}")]).await;

    assert_eq!(outcomes, vec![Outcome::failed("webhook 401")]);
    let r = receiver.lock();
    assert_eq!(r.unauthorized, 1);
    assert!(r.accepted.is_empty());
}

#[tokio::test]
async fn an_unavailable_receiver_is_retried_after_retry_after() {
    let want = Outcome::retry("webhook 503", Some(Duration::from_secs(7)));
    assert_outcome("down", want).await;
}

#[tokio::test]
async fn a_gone_receiver_fails() {
    assert_outcome("gone", Outcome::failed("webhook 410 gone")).await;
}

#[tokio::test]
async fn a_bad_request_fails_without_retry() {
    assert_outcome("bad", Outcome::failed("webhook 400")).await;
}

#[tokio::test]
async fn a_redirect_fails_and_is_not_followed() {
    let (addr, receiver) = receiver().await;

    let outcome = send_one(&provider(5_000), to(addr, "moved")).await;

    assert_eq!(
        outcome,
        Outcome::failed("webhook 302 redirect not followed")
    );
    let r = receiver.lock();
    assert_eq!(r.hits, ["moved"]);
    assert!(r.accepted.is_empty());
}

#[tokio::test]
async fn a_receiver_that_answers_too_late_is_retried() {
    let (addr, _receiver) = receiver().await;

    assert_timed_out(&provider(300), to(addr, "hang")).await;
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried() {
    assert_unreachable(&provider(5_000), to(closed_addr(), "ok")).await;
}

#[tokio::test]
async fn outcomes_of_a_mixed_group_come_back_in_order() {
    let (addr, receiver) = receiver().await;
    let mut phone = to(addr, "ok");
    phone.destination = Destination::Phone("+15550000001".into());

    let outcomes = provider(5_000)
        .send(&[
            to(addr, "down"),
            to(addr, "ok"),
            phone,
            to(addr, "gone"),
            to(addr, "ok"),
        ])
        .await;

    assert_eq!(
        labels(&outcomes),
        ["retry", "sent", "failed", "failed", "sent"]
    );
    assert_eq!(outcomes[3], Outcome::failed("webhook 410 gone"));
    assert_eq!(receiver.lock().accepted.len(), 2);
}

// Receiver-side helpers.

const T: i64 = 1_700_000_000;
const BODY: &[u8] = br#"{"id":"n-1","body":{"text":"hello"}}"#;

/// What a receiver holding `SECRET` makes of `header` over `body` at `now`.
fn check(header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    verify(SECRET.as_bytes(), header, body, now, TOLERANCE)
}

#[test]
fn a_signature_verifies_against_the_same_body_and_secret() {
    let header = sign(SECRET.as_bytes(), T, BODY);
    assert_eq!(check(&header, BODY, T + 10), Ok(()));
}

#[test]
fn a_tampered_body_is_a_mismatch() {
    let header = sign(SECRET.as_bytes(), T, BODY);
    let tampered = br#"{"id":"n-1","body":{"text":"hell0"}}"#;
    assert_eq!(check(&header, tampered, T), Err(SignatureError::Mismatch));
}

#[test]
fn a_wrong_secret_is_a_mismatch() {
    let header = sign(b"some-other-secret-value", T, BODY);
    assert_eq!(check(&header, BODY, T), Err(SignatureError::Mismatch));
}

#[test]
fn a_changed_timestamp_is_a_mismatch() {
    let header = sign(SECRET.as_bytes(), T, BODY).replace("t=1700000000", "t=1700000001");
    assert_eq!(check(&header, BODY, T), Err(SignatureError::Mismatch));
}

#[test]
fn a_timestamp_outside_the_tolerance_is_stale() {
    let header = sign(SECRET.as_bytes(), T, BODY);
    // Replayed later.
    assert_eq!(
        check(&header, BODY, T + TOLERANCE + 1),
        Err(SignatureError::Stale)
    );
    // From the future.
    assert_eq!(
        check(&header, BODY, T - TOLERANCE - 1),
        Err(SignatureError::Stale)
    );
    // At the edge it still passes.
    assert_eq!(check(&header, BODY, T + TOLERANCE), Ok(()));
}

#[test]
fn malformed_headers_are_refused() {
    let good = sign(SECRET.as_bytes(), T, BODY);
    let v1 = good.split_once(",v1=").unwrap().1;
    for header in [
        String::new(),
        "garbage".into(),
        format!("v1={v1}"),
        format!("t={T}"),
        format!("t=soon,v1={v1}"),
        format!("t={T},v1=not-hex"),
        format!("t={T},t={T},v1={v1}"),
        format!("t={T};v1={v1}"),
    ] {
        assert_eq!(
            check(&header, BODY, T),
            Err(SignatureError::Malformed),
            "{header:?}"
        );
    }
}

#[test]
fn any_of_several_signatures_verifies_during_a_secret_rotation() {
    let old = b"old-secret-0123456789";
    let new = b"new-secret-9876543210";
    let with_new = sign(new, T, BODY);
    let new_v1 = with_new.split_once(",v1=").unwrap().1;
    // Signed with both secrets while receivers move from the old one to the new one.
    let header = format!("{},v1={new_v1}", sign(old, T, BODY));
    assert_eq!(verify(old, &header, BODY, T, TOLERANCE), Ok(()));
    assert_eq!(verify(new, &header, BODY, T, TOLERANCE), Ok(()));
    assert_eq!(check(&header, BODY, T), Err(SignatureError::Mismatch));
    // Unknown schemes next to v1 are ignored.
    let header = format!("{with_new},v2=abcdef");
    assert_eq!(verify(new, &header, BODY, T, TOLERANCE), Ok(()));
}
