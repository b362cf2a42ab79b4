//! The APNs provider against a fake APNs (axum on a local port, spoken to as h2c): the ES256
//! provider token is verified with the fixture key's public half, the `apns-*` headers are
//! checked as APNs checks them, and the answer depends on the device-token prefix.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use herald_core::config::{ApnsConfig, ProviderLimits};
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
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
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

/// Counts requests in flight for as long as it lives.
struct InFlight<'a>(&'a FakeState);

impl<'a> InFlight<'a> {
    fn enter(s: &'a FakeState) -> Self {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn device_endpoint(
    State(s): State<Arc<FakeState>>,
    Path(device): Path<String>,
    version: Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _guard = InFlight::enter(&s);
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(FakeState {
            public_key: DecodingKey::from_ec_pem(include_bytes!("fixtures/apns_public.pem"))
                .expect("public key"),
            jwts: Mutex::new(HashSet::new()),
            expired: Mutex::new(HashSet::new()),
            refusals: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/3/device/{device}", post(device_endpoint))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    fn config(&self) -> ApnsConfig {
        ApnsConfig {
            endpoint: self.url.clone(),
            key_file: Some(key_file()),
            key_id: Some(KEY_ID.into()),
            team_id: Some(TEAM_ID.into()),
            topic: Some(TOPIC.into()),
            limits: ProviderLimits {
                concurrency: 16,
                rate_per_s: 0,
                timeout_ms: 2_000,
            },
        }
    }

    fn provider(&self) -> ApnsProvider {
        ApnsProvider::new(&self.config()).expect("provider")
    }

    fn distinct_jwts(&self) -> usize {
        self.state.jwts.lock().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().clone()
    }
}

fn key_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apns_key.p8")
}

// ---- dispatches --------------------------------------------------------------------------------

fn envelope(priority: Priority) -> Arc<Envelope> {
    Arc::new(Envelope {
        campaign_id: "cmp-1".into(),
        channel: Channel::Push,
        category: None,
        priority,
        expires_at: None,
    })
}

fn dispatch_in(envelope: &Arc<Envelope>, token: &str) -> Dispatch {
    Dispatch {
        envelope: envelope.clone(),
        user_id: "u-1".into(),
        notification_id: uuid::Uuid::new_v4(),
        destination: Destination::Device {
            platform: Platform::Apns,
            token: token.into(),
        },
        title: Some("Hello".into()),
        body: "World".into(),
        html: None,
        data: json!({"order": "A-17", "count": 3}),
    }
}

fn dispatch(token: &str) -> Dispatch {
    dispatch_in(&envelope(Priority::Normal), token)
}

async fn send_one(provider: &ApnsProvider, token: &str) -> Outcome {
    let mut outcomes = provider.send(&[dispatch(token)]).await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
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
    let d = dispatch("ok-1");
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
    let mut quiet = dispatch_in(&envelope(Priority::Low), "ok-low");
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
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "bad-1").await,
        Outcome::invalid_token("apns 400 BadDeviceToken")
    );
}

#[tokio::test]
async fn an_unregistered_device_is_reported_invalid() {
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "gone-1").await,
        Outcome::invalid_token("apns 410 Unregistered")
    );
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_servers_retry_after() {
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "busy-1").await,
        Outcome::retry("apns 429 TooManyRequests", Some(Duration::from_secs(30)))
    );
}

#[tokio::test]
async fn an_unavailable_service_is_retried() {
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "down-1").await,
        Outcome::retry("apns 503 ServiceUnavailable", None)
    );
}

#[tokio::test]
async fn a_payload_too_large_is_a_permanent_failure() {
    let fake = Fake::start().await;
    assert_eq!(
        send_one(&fake.provider(), "big-1").await,
        Outcome::failed("apns 400 PayloadTooLarge")
    );
}

#[tokio::test]
async fn a_request_past_the_timeout_is_retried() {
    let fake = Fake::start().await;
    let provider = ApnsProvider::new(&ApnsConfig {
        limits: ProviderLimits {
            concurrency: 4,
            rate_per_s: 0,
            timeout_ms: 300,
        },
        ..fake.config()
    })
    .expect("provider");
    assert_eq!(
        send_one(&provider, "slow-1").await,
        Outcome::retry("apns timeout", None)
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let fake = Fake::start().await;
    let provider = ApnsProvider::new(&ApnsConfig {
        endpoint,
        ..fake.config()
    })
    .expect("provider");
    match send_one(&provider, "ok-1").await {
        Outcome::Retry {
            reason,
            after: None,
        } => assert!(reason.starts_with("apns "), "{reason}"),
        other => panic!("{other:?}"),
    }
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
    let mut d = dispatch("ok-1");
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
    let batch: Vec<Dispatch> = tokens.iter().map(|t| dispatch(t)).collect();
    let labels: Vec<&str> = fake
        .provider()
        .send(&batch)
        .await
        .iter()
        .map(Outcome::label)
        .collect();
    assert_eq!(
        labels,
        ["sent", "invalid_token", "sent", "retry", "failed", "sent"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_never_exceed_the_concurrency_limit() {
    let fake = Fake::start().await;
    let provider = ApnsProvider::new(&ApnsConfig {
        limits: ProviderLimits {
            concurrency: 3,
            rate_per_s: 0,
            timeout_ms: 5_000,
        },
        ..fake.config()
    })
    .expect("provider");
    let batch: Vec<Dispatch> = (0..15).map(|i| dispatch(&format!("hold-{i}"))).collect();
    let outcomes = provider.send(&batch).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Sent), "{outcomes:?}");
    let max = fake.state.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&max),
        "{max} requests were in flight at once"
    );
}

// ---- provider tokens ---------------------------------------------------------------------------

#[tokio::test]
async fn the_provider_token_is_signed_once_and_reused() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    let batch: Vec<Dispatch> = (0..10).map(|i| dispatch(&format!("ok-{i}"))).collect();
    assert!(provider
        .send(&batch)
        .await
        .iter()
        .all(|o| *o == Outcome::Sent));
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
    let batch: Vec<Dispatch> = (0..5).map(|i| dispatch(&format!("ok-{i}"))).collect();
    assert!(provider
        .send(&batch)
        .await
        .iter()
        .all(|o| *o == Outcome::Sent));
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
    let cases: [(&str, ApnsConfig); 4] = [
        (
            "push.apns.key_file",
            ApnsConfig {
                key_file: None,
                ..fake.config()
            },
        ),
        (
            "push.apns.key_id",
            ApnsConfig {
                key_id: None,
                ..fake.config()
            },
        ),
        (
            "push.apns.team_id",
            ApnsConfig {
                team_id: Some(String::new()),
                ..fake.config()
            },
        ),
        (
            "push.apns.topic",
            ApnsConfig {
                topic: None,
                ..fake.config()
            },
        ),
    ];
    for (key, cfg) in cases {
        let err = ApnsProvider::new(&cfg).expect_err(key);
        assert!(err.message.contains(key), "{key}: {err}");
    }
}

#[tokio::test]
async fn a_key_file_that_is_not_a_p256_key_is_refused() {
    let fake = Fake::start().await;
    // The FCM fixture is a JSON file, not a PEM key.
    let wrong =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fcm_service_account.json");
    let err = ApnsProvider::new(&ApnsConfig {
        key_file: Some(wrong.clone()),
        ..fake.config()
    })
    .expect_err("not a key");
    assert!(err.message.contains(&wrong.display().to_string()), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");

    let err = ApnsProvider::new(&ApnsConfig {
        key_file: Some("/nonexistent/key.p8".into()),
        ..fake.config()
    })
    .expect_err("missing");
    assert!(err.message.contains("/nonexistent/key.p8"), "{err}");
}
