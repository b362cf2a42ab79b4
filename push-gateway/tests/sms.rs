//! The SMS provider against a fake Twilio Messages API.

#[path = "support/dispatch.rs"]
mod dispatch;
#[path = "support/fake_server.rs"]
mod fake_server;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine as _;
use dispatch::{
    assert_all_sent, assert_concurrent_within, assert_timed_out, assert_unreachable, envelope,
    failed_reason, labels, limits, send_from_two_callers, send_one,
};
use fake_server::{closed_addr, InFlight};
use herald_core::config::{Secret, SmsConfig};
use herald_core::model::{Channel, Priority};
use herald_push::provider::{Destination, Dispatch, Outcome, Provider};
use herald_push::providers::sms::SmsProvider;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const SID: &str = "AC0123456789abcdef";
const TOKEN: &str = "auth-token-of-the-test";
const FROM: &str = "+15550009999";

/// How long the fake API takes to answer a `+1555000slow…` number.
const SLOW: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct Sms {
    to: String,
    from: String,
    body: String,
}

#[derive(Default)]
struct Fake {
    accepted: Mutex<Vec<Sms>>,
    in_flight: InFlight,
}

type Shared = Arc<Fake>;

/// Answers by the `To` number: `…0400` invalid number, `…0429` rate limited, `…0503` down,
/// `…hang` never in time, `…slow` late but fine; anything else is queued.
async fn messages(
    State(fake): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(sms): Form<Sms>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if sid != SID || !authorized {
        let body = json!({"code": 20003, "message": "Authenticate", "status": 401});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let response = {
        let _guard = fake.in_flight.enter();
        answer(&sms).await
    };
    if response.status() == StatusCode::CREATED {
        fake.accepted.lock().push(sms);
    }
    response
}

async fn answer(sms: &Sms) -> Response {
    let to = sms.to.as_str();
    if to.ends_with("0400") {
        let body = json!({
            "code": 21211,
            "message": format!("The 'To' number {to} is not a valid phone number."),
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if to.ends_with("0429") {
        let body = json!({"code": 20429, "message": "Too Many Requests", "status": 429});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "3")],
            Json(body),
        )
            .into_response();
    }
    if to.ends_with("0503") {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if to.ends_with("hang") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if to.contains("slow") {
        tokio::time::sleep(SLOW).await;
    }
    let body = json!({"sid": "SM0001", "status": "queued", "to": to, "from": sms.from});
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn fake_twilio() -> (SocketAddr, Shared) {
    let fake = Shared::default();
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
        .with_state(Arc::clone(&fake));
    (fake_server::serve(app).await, fake)
}

fn config(addr: SocketAddr, token: &str, concurrency: usize, timeout_ms: u64) -> SmsConfig {
    SmsConfig {
        endpoint: format!("http://{addr}"),
        account_sid: Some(SID.into()),
        auth_token: Some(Secret::new(token)),
        from: Some(FROM.into()),
        limits: limits(concurrency, timeout_ms),
    }
}

fn provider(addr: SocketAddr) -> SmsProvider {
    SmsProvider::new(&config(addr, TOKEN, 8, 5_000)).expect("sms provider")
}

fn sms_to(to: &str) -> Dispatch {
    let body = format!("Your code is 123456 & expires soon ({to})");
    dispatch::to(
        &Arc::new(envelope(Channel::Sms, Priority::High)),
        Destination::Phone(to.into()),
        &body,
    )
}

/// The fake API's answer to a message to `to` becomes `want`.
async fn assert_outcome(to: &str, want: Outcome) {
    let (addr, _fake) = fake_twilio().await;
    assert_eq!(send_one(&provider(addr), sms_to(to)).await, want);
}

#[tokio::test]
async fn an_accepted_message_is_sent_with_basic_auth_and_form_fields() {
    let (addr, fake) = fake_twilio().await;
    let sms = provider(addr);

    let outcomes = sms.send(&[sms_to("+15550000001")]).await;

    assert_eq!(outcomes, vec![Outcome::Sent]);
    assert_eq!(
        *fake.accepted.lock(),
        vec![Sms {
            to: "+15550000001".into(),
            from: FROM.into(),
            body: "Your code is 123456 & expires soon (+15550000001)".into(),
        }]
    );
}

#[tokio::test]
async fn an_invalid_number_fails_with_the_twilio_code() {
    let want =
        Outcome::failed("sms 21211 The 'To' number +15550000400 is not a valid phone number.");
    assert_outcome("+15550000400", want).await;
}

#[tokio::test]
async fn a_rate_limited_request_is_retried_after_retry_after() {
    let want = Outcome::retry("sms 429", Some(Duration::from_secs(3)));
    assert_outcome("+15550000429", want).await;
}

#[tokio::test]
async fn an_unavailable_api_is_retried() {
    assert_outcome("+15550000503", Outcome::retry("sms 503", None)).await;
}

#[tokio::test]
async fn rejected_credentials_are_retried_and_never_reported() {
    let (addr, fake) = fake_twilio().await;
    let sms = SmsProvider::new(&config(addr, "wrong-token", 8, 5_000)).unwrap();

    let outcome = send_one(&sms, sms_to("+15550000001")).await;

    assert_eq!(outcome, Outcome::retry("sms 401 unauthorized", None));
    assert!(fake.accepted.lock().is_empty());
}

#[tokio::test]
async fn a_slow_api_times_out_and_is_retried() {
    let (addr, _fake) = fake_twilio().await;
    let sms = SmsProvider::new(&config(addr, TOKEN, 8, 300)).unwrap();

    assert_timed_out(&sms, sms_to("+1555000hang")).await;
}

#[tokio::test]
async fn an_unreachable_api_is_retried() {
    assert_unreachable(&provider(closed_addr()), sms_to("+15550000001")).await;
}

#[tokio::test]
async fn outcomes_come_back_in_order_with_wrong_destinations_failed() {
    let (addr, _fake) = fake_twilio().await;
    let sms = provider(addr);
    let mut email = sms_to("ignored");
    email.destination = Destination::Email("a@example.com".into());

    let outcomes = sms
        .send(&[
            sms_to("+1555000slow1"),
            sms_to("+15550000400"),
            email,
            sms_to("+15550000503"),
            sms_to("+15550000002"),
        ])
        .await;

    assert_eq!(
        labels(&outcomes),
        ["sent", "failed", "failed", "retry", "sent"]
    );
    let reason = failed_reason(outcomes[1].clone());
    assert!(reason.starts_with("sms 21211"), "{reason}");
}

#[tokio::test]
async fn concurrency_is_limited_across_callers() {
    let (addr, fake) = fake_twilio().await;
    let sms = SmsProvider::new(&config(addr, TOKEN, 2, 5_000)).unwrap();
    let group: Vec<Dispatch> = (0..3)
        .map(|i| sms_to(&format!("+1555000slow{i}")))
        .collect();

    let started = std::time::Instant::now();
    let outcomes = send_from_two_callers(&sms, &group).await;

    assert_eq!(outcomes.len(), 6);
    assert_all_sent(&outcomes);
    let accepted = fake.accepted.lock();
    assert_eq!(accepted.len(), 6);
    assert_concurrent_within(fake.in_flight.max(), 2);
    assert!(started.elapsed() >= SLOW * 3);
    let mut per_number: HashMap<&str, usize> = HashMap::new();
    for s in accepted.iter() {
        *per_number.entry(s.to.as_str()).or_default() += 1;
    }
    assert!(per_number.values().all(|n| *n == 2), "{per_number:?}");
}
