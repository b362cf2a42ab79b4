//! The APNs provider against a fake APNs (axum on a local port, spoken to as h2c): the ES256
//! provider token is verified with the fixture key's public half, the `apns-*` headers are
//! checked as APNs checks them, and the answer depends on the device-token prefix.

#[path = "support/dispatch.rs"]
mod dispatch;
#[path = "support/fake_server.rs"]
mod fake_server;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use dispatch::{
    assert_all_sent, assert_concurrent_within, assert_timed_out, assert_unreachable, device,
    envelope, labels, limits, numbered,
};
use fake_server::{closed_addr, InFlight};
use herald_core::config::ApnsConfig;
use herald_core::model::{Channel, Platform, Priority};
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use herald_push::providers::apns::ApnsProvider;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const TOPIC: &str = "com.example.herald";

// ---- the fake server -------------------------------------------------------------------------

/// One accepted request, as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    device: String,
    version: Version,
    headers: HeaderMap,
    body: Value,
}

struct FakeState {
    public_key: DecodingKey,
    /// Every valid provider token presented.
    jwts: Mutex<HashSet<String>>,
    /// Provider tokens answered with 403 `ExpiredProviderToken`.
    expired: Mutex<HashSet<String>>,
    /// 403 answers about the provider token.
    refusals: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    in_flight: InFlight,
}

impl FakeState {
    /// From now on, every provider token presented so far is expired.
    fn expire_seen(&self) {
        let seen = self.jwts.lock().clone();
        self.expired.lock().extend(seen);
    }
}

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: i64,
}

fn apns_error(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({"reason": reason}))).into_response()
}

/// Checks the provider token the way APNs does.
fn check_jwt(s: &FakeState, headers: &HeaderMap) -> Result<String, &'static str> {
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer "))
        .ok_or("MissingProviderToken")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.set_issuer(&[TEAM_ID]);
    let data = jsonwebtoken::decode::<ProviderClaims>(jwt, &s.public_key, &validation)
        .map_err(|_| "InvalidProviderToken")?;
    if data.header.kid.as_deref() != Some(KEY_ID)
        || data.claims.iss != TEAM_ID
        || (data.claims.iat - Utc::now().timestamp()).abs() > 60
    {
        return Err("InvalidProviderToken");
    }
    if s.expired.lock().contains(jwt) {
        return Err("ExpiredProviderToken");
    }
    Ok(jwt.to_owned())
}

/// Checks the `apns-*` headers the way APNs does; `Err` is APNs' 400 reason.
fn check_headers(headers: &HeaderMap) -> Result<(), &'static str> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match get("apns-topic") {
        None => return Err("MissingTopic"),
        Some(TOPIC) => {}
        Some(_) => return Err("BadTopic"),
    }
    if get("apns-push-type") != Some("alert") {
        return Err("InvalidPushType");
    }
    if !matches!(get("apns-priority"), Some("5" | "10")) {
        return Err("BadPriority");
    }
    if get("apns-expiration").is_none_or(|v| v.parse::<u64>().is_err()) {
        return Err("BadExpirationDate");
    }
    if get("apns-collapse-id").is_some_and(|v| v.len() > 64) {
        return Err("BadCollapseId");
    }
    if get("apns-id").is_none_or(|v| uuid::Uuid::parse_str(v).is_err() || v.len() != 36) {
        return Err("BadMessageId");
    }
    Ok(())
}

async fn device_endpoint(
    State(s): State<Arc<FakeState>>,
    Path(device): Path<String>,
    version: Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _guard = s.in_flight.enter();
    let jwt = match check_jwt(&s, &headers) {
        Ok(jwt) => jwt,
        Err(reason) => {
            s.refusals.fetch_add(1, Ordering::SeqCst);
            return apns_error(StatusCode::FORBIDDEN, reason);
        }
    };
    s.jwts.lock().insert(jwt);
    if let Err(reason) = check_headers(&headers) {
        return apns_error(StatusCode::BAD_REQUEST, reason);
    }
    s.seen.lock().push(Seen {
        device: device.clone(),
        version,
        headers: headers.clone(),
        body,
    });
    let apns_id = headers.get("apns-id").cloned();
    match device.split_once('-').map_or("", |(prefix, _)| prefix) {
        "ok" => {
            let mut r = StatusCode::OK.into_response();
            if let Some(id) = apns_id {
                r.headers_mut().insert("apns-id", id);
            }
            r
        }
        "hold" => {
            tokio::time::sleep(Duration::from_millis(60)).await;
            StatusCode::OK.into_response()
        }
        "bad" => apns_error(StatusCode::BAD_REQUEST, "BadDeviceToken"),
        "gone" => (
            StatusCode::GONE,
            Json(json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64})),
        )
            .into_response(),
        "busy" => {
            let mut r = apns_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
            r.headers_mut()
                .insert("retry-after", "30".parse().expect("header value"));
            r
        }
        "down" => apns_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        "big" => apns_error(StatusCode::BAD_REQUEST, "PayloadTooLarge"),
        "forbid" => {
            s.refusals.fetch_add(1, Ordering::SeqCst);
            apns_error(StatusCode::FORBIDDEN, "InvalidProviderToken")
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        }
        other => panic!("the fake knows no token prefix {other:?}"),
    }
}

struct Fake {
    url: String,
    state: Arc<FakeState>,
}

impl Fake {
    async fn start() -> Self {
        let state = Arc::new(FakeState {
            public_key: DecodingKey::from_ec_pem(include_bytes!("fixtures/apns_public.pem"))
                .expect("public key"),
            jwts: Mutex::new(HashSet::new()),
            expired: Mutex::new(HashSet::new()),
            refusals: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            in_flight: InFlight::default(),
        });
        let app = Router::new()
            .route("/3/device/{device}", post(device_endpoint))
            .with_state(state.clone());
        let addr = fake_server::serve(app).await;
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// A complete configuration pointed at the fake, changed by `configure`.
    fn config_with(&self, configure: impl FnOnce(&mut ApnsConfig)) -> ApnsConfig {
        let mut config = ApnsConfig {
            endpoint: self.url.clone(),
            key_file: Some(fixture("apns_key.p8")),
            key_id: Some(KEY_ID.into()),
            team_id: Some(TEAM_ID.into()),
            topic: Some(TOPIC.into()),
            limits: limits(16, 2_000),
        };
        configure(&mut config);
        config
    }

    fn provider_with(&self, configure: impl FnOnce(&mut ApnsConfig)) -> ApnsProvider {
        ApnsProvider::new(&self.config_with(configure)).expect("provider")
    }

    fn provider(&self) -> ApnsProvider {
        self.provider_with(|_| {})
    }

    fn distinct_jwts(&self) -> usize {
        self.state.jwts.lock().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().clone()
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

// ---- dispatches --------------------------------------------------------------------------------

fn dispatch_in(envelope: &Arc<Envelope>, token: &str) -> Dispatch {
    Dispatch {
        title: Some("Hello".into()),
        data: json!({"order": "A-17", "count": 3}),
        ..dispatch::to(envelope, device(Platform::Apns, token), "World")
    }
}

fn push(token: &str) -> Dispatch {
    dispatch_in(&Arc::new(envelope(Channel::Push, Priority::Normal)), token)
}

async fn send_one(provider: &ApnsProvider, token: &str) -> Outcome {
    dispatch::send_one(provider, push(token)).await
}

/// A fresh fake's answer to `token` becomes `want`.
async fn assert_outcome(token: &str, want: Outcome) {
    let fake = Fake::start().await;
    assert_eq!(send_one(&fake.provider(), token).await, want);
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

// ---- results -----------------------------------------------------------------------------------

#[tokio::test]
async fn an_accepted_notification_is_reported_sent_over_http2() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    assert_eq!(provider.name(), "apns");
    let d = push("ok-1");
    assert_eq!(
        provider.send(std::slice::from_ref(&d)).await,
        vec![Outcome::Sent]
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].device, "ok-1");
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(
        header(&seen[0], "apns-id"),
        Some(d.notification_id.hyphenated().to_string().as_str())
    );
    assert_eq!(
        seen[0].body,
        json!({
            "aps": {"alert": {"title": "Hello", "body": "World"}, "sound": "default"},
            "notification_id": d.notification_id.to_string(),
            "campaign_id": "cmp-1",
            "data": {"order": "A-17", "count": 3},
        })
    );
}

#[tokio::test]
async fn the_headers_carry_topic_priority_expiration_and_collapse_id() {
    let fake = Fake::start().await;
    let expires_at = Utc::now() + chrono::Duration::seconds(600);
    let long_campaign = "c".repeat(80);
    let urgent = Arc::new(Envelope {
        campaign_id: long_campaign.clone(),
        channel: Channel::Push,
        category: None,
        priority: Priority::Urgent,
        expires_at: Some(expires_at),
    });
    let mut quiet = dispatch_in(&Arc::new(envelope(Channel::Push, Priority::Low)), "ok-low");
    quiet.title = None;
    let outcomes = fake
        .provider()
        .send(&[dispatch_in(&urgent, "ok-urgent"), quiet])
        .await;
    assert_eq!(outcomes, vec![Outcome::Sent, Outcome::Sent]);

    let seen = fake.seen();
    let by_device = |t: &str| seen.iter().find(|s| s.device == t).expect("sent").clone();
    let urgent = by_device("ok-urgent");
    assert_eq!(header(&urgent, "apns-topic"), Some(TOPIC));
    assert_eq!(header(&urgent, "apns-push-type"), Some("alert"));
    assert_eq!(header(&urgent, "apns-priority"), Some("10"));
    assert_eq!(
        header(&urgent, "apns-expiration"),
        Some(expires_at.timestamp().to_string().as_str())
    );
    assert_eq!(
        header(&urgent, "apns-collapse-id"),
        Some(&long_campaign[..64])
    );
    assert_eq!(urgent.body["campaign_id"], long_campaign.as_str());

    let low = by_device("ok-low");
    assert_eq!(header(&low, "apns-priority"), Some("5"));
    assert_eq!(header(&low, "apns-expiration"), Some("0"));
    assert_eq!(header(&low, "apns-collapse-id"), Some("cmp-1"));
    assert_eq!(low.body["aps"]["alert"], json!({"body": "World"}));
}

#[tokio::test]
async fn a_bad_device_token_is_reported_invalid() {
    assert_outcome("bad-1", Outcome::invalid_token("apns 400 BadDeviceToken")).await;
}

#[tokio::test]
async fn an_unregistered_device_is_reported_invalid() {
    assert_outcome("gone-1", Outcome::invalid_token("apns 410 Unregistered")).await;
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_servers_retry_after() {
    let want = Outcome::retry("apns 429 TooManyRequests", Some(Duration::from_secs(30)));
    assert_outcome("busy-1", want).await;
}

#[tokio::test]
async fn an_unavailable_service_is_retried() {
    let want = Outcome::retry("apns 503 ServiceUnavailable", None);
    assert_outcome("down-1", want).await;
}

#[tokio::test]
async fn a_payload_too_large_is_a_permanent_failure() {
    assert_outcome("big-1", Outcome::failed("apns 400 PayloadTooLarge")).await;
}

#[tokio::test]
async fn a_request_past_the_timeout_is_retried() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.limits = limits(4, 300));
    assert_timed_out(&provider, push("slow-1")).await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.endpoint = format!("http://{}", closed_addr()));
    assert_unreachable(&provider, push("ok-1")).await;
}

#[tokio::test]
async fn a_malformed_device_token_is_rejected_without_a_request() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    for token in ["", "../../admin", "ok-1?x=1", "ok 1"] {
        assert!(
            matches!(
                send_one(&provider, token).await,
                Outcome::InvalidToken { .. }
            ),
            "{token:?}"
        );
    }
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn a_destination_that_is_not_a_device_fails() {
    let fake = Fake::start().await;
    let mut d = push("ok-1");
    d.destination = Destination::Phone("+15550100".into());
    assert_eq!(
        fake.provider().send(&[d]).await,
        vec![Outcome::failed("not a device")]
    );
}

#[tokio::test]
async fn outcomes_come_back_in_input_order() {
    let fake = Fake::start().await;
    let tokens = ["hold-1", "gone-1", "ok-1", "busy-1", "big-1", "hold-2"];
    let batch: Vec<Dispatch> = tokens.into_iter().map(push).collect();
    assert_eq!(
        labels(&fake.provider().send(&batch).await),
        ["sent", "invalid_token", "sent", "retry", "failed", "sent"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_never_exceed_the_concurrency_limit() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.limits = limits(3, 5_000));
    assert_all_sent(&provider.send(&numbered("hold", 15, push)).await);
    assert_concurrent_within(fake.state.in_flight.max(), 3);
}

// ---- provider tokens ---------------------------------------------------------------------------

#[tokio::test]
async fn the_provider_token_is_signed_once_and_reused() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    assert_all_sent(&provider.send(&numbered("ok", 10, push)).await);
    assert_eq!(send_one(&provider, "ok-last").await, Outcome::Sent);
    assert_eq!(fake.distinct_jwts(), 1);
}

#[tokio::test]
async fn an_expired_provider_token_is_replaced_once_and_the_sends_succeed() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    fake.state.expire_seen();

    // Refused together, they still cause one new token between them.
    assert_all_sent(&provider.send(&numbered("ok", 5, push)).await);
    assert_eq!(fake.distinct_jwts(), 2);
    assert_eq!(fake.state.refusals.load(Ordering::SeqCst), 5);

    assert_eq!(send_one(&provider, "ok-9").await, Outcome::Sent);
    assert_eq!(fake.distinct_jwts(), 2, "the new token is kept");
}

#[tokio::test]
async fn a_provider_token_refused_after_a_refresh_is_retried() {
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "forbid-1").await,
        Outcome::retry("apns 403 InvalidProviderToken", None)
    );
    assert_eq!(fake.state.refusals.load(Ordering::SeqCst), 2);
    assert_eq!(fake.distinct_jwts(), 2, "one refresh, then give up");
}

// ---- configuration -----------------------------------------------------------------------------

#[tokio::test]
async fn missing_settings_are_named_in_the_error() {
    let fake = Fake::start().await;
    type Unset = fn(&mut ApnsConfig);
    let cases: [(&str, Unset); 4] = [
        ("push.apns.key_file", |c| c.key_file = None),
        ("push.apns.key_id", |c| c.key_id = None),
        ("push.apns.team_id", |c| c.team_id = Some(String::new())),
        ("push.apns.topic", |c| c.topic = None),
    ];
    for (key, unset) in cases {
        let err = ApnsProvider::new(&fake.config_with(unset)).expect_err(key);
        assert!(err.message.contains(key), "{key}: {err}");
    }
}

#[tokio::test]
async fn a_key_file_that_is_not_a_p256_key_is_refused() {
    let fake = Fake::start().await;
    // The FCM fixture is a JSON file, not a PEM key.
    let wrong = fixture("fcm_service_account.json");
    let err = ApnsProvider::new(&fake.config_with(|c| c.key_file = Some(wrong.clone())))
        .expect_err("not a key");
    assert!(err.message.contains(&wrong.display().to_string()), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");

    let err =
        ApnsProvider::new(&fake.config_with(|c| c.key_file = Some("/nonexistent/key.p8".into())))
            .expect_err("missing");
    assert!(err.message.contains("/nonexistent/key.p8"), "{err}");
}
