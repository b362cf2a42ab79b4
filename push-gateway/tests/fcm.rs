//! The FCM provider against a fake FCM v1 + Google OAuth server (axum on a local port, HTTP/1.1
//! and h2c): the token exchange is verified with the fixture key's public half, and the send
//! endpoint answers by device-token prefix with FCM's real error bodies.

#[path = "support/dispatch.rs"]
mod dispatch;
#[path = "support/fake_server.rs"]
mod fake_server;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use dispatch::{
    assert_all_sent, assert_concurrent_within, assert_timed_out, assert_unreachable, device,
    envelope, failed_reason, labels, limits, numbered, retry_reason, send_from_two_callers,
};
use fake_server::{closed_addr, InFlight};
use herald_core::config::FcmConfig;
use herald_core::model::{Channel, Platform, Priority};
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use herald_push::providers::fcm::FcmProvider;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PROJECT: &str = "herald-test";
const CLIENT_EMAIL: &str = "herald-test@herald-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

// ---- the fake server -------------------------------------------------------------------------

struct FakeState {
    token_uri: String,
    public_key: DecodingKey,
    /// Requests to the token endpoint, answered or refused.
    exchange_attempts: AtomicUsize,
    /// Access tokens issued so far (`tok-1` ... `tok-N`).
    exchanges: AtomicUsize,
    /// `expires_in` of issued tokens.
    expires_in: AtomicU64,
    /// The token endpoint answers 400 `invalid_grant`.
    refuse_exchange: AtomicBool,
    /// Access tokens the send endpoint answers 401 to.
    revoked: Mutex<HashSet<String>>,
    /// Every access token gets a 401.
    refuse_all: AtomicBool,
    /// Accepted send requests: project, HTTP version, body.
    sends: Mutex<Vec<(String, Version, Value)>>,
    in_flight: InFlight,
}

#[derive(Deserialize)]
struct Assertion {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

async fn token_endpoint(
    State(s): State<Arc<FakeState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let refuse = |why: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    s.exchange_attempts.fetch_add(1, Ordering::SeqCst);
    if s.refuse_exchange.load(Ordering::SeqCst) {
        return refuse("Invalid JWT Signature.".into());
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&s.token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let claims = match jsonwebtoken::decode::<Assertion>(assertion, &s.public_key, &validation) {
        Ok(data) if data.header.kid.as_deref() == Some("test-key-1") => data.claims,
        Ok(data) => return refuse(format!("kid {:?}", data.header.kid)),
        Err(e) => return refuse(format!("assertion: {e}")),
    };
    if claims.scope != SCOPE
        || claims.iss != CLIENT_EMAIL
        || claims.aud != s.token_uri
        || claims.exp != claims.iat + 3600
    {
        return refuse("claims".into());
    }
    let n = s.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({
        "access_token": format!("tok-{n}"),
        "expires_in": s.expires_in.load(Ordering::SeqCst),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn fcm_error(status: StatusCode, grpc: &str, message: &str, details: Value) -> Response {
    let body = json!({"error": {
        "code": status.as_u16(), "message": message, "status": grpc, "details": details,
    }});
    (status, Json(body)).into_response()
}

fn fcm_code(code: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
}

/// FCM's 400 `INVALID_ARGUMENT`, with the violation of `field` in its details.
fn invalid_argument(message: &str, field: &str, description: &str) -> Response {
    fcm_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        json!([fcm_code("INVALID_ARGUMENT"), {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}],
        }]),
    )
}

async fn send_endpoint(
    State(s): State<Arc<FakeState>>,
    Path(project): Path<String>,
    version: Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let _guard = s.in_flight.enter();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let issued = s.exchanges.load(Ordering::SeqCst);
    let valid = auth
        .strip_prefix("Bearer tok-")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n >= 1 && n <= issued)
        && !s.revoked.lock().contains(&auth["Bearer ".len()..])
        && !s.refuse_all.load(Ordering::SeqCst);
    if !valid {
        return fcm_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            json!([]),
        );
    }
    let token = body["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    s.sends.lock().push((project, version, body));

    match token.split_once('-').map_or("", |(prefix, _)| prefix) {
        "ok" => (
            StatusCode::OK,
            Json(json!({"name": format!("projects/{PROJECT}/messages/1")})),
        )
            .into_response(),
        "hold" => {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Json(json!({"name": format!("projects/{PROJECT}/messages/2")})).into_response()
        }
        "unreg" => fcm_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            json!([fcm_code("UNREGISTERED")]),
        ),
        "sender" => fcm_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            json!([fcm_code("SENDER_ID_MISMATCH")]),
        ),
        "badtoken" => invalid_argument(
            // FCM's generic message: only the field violation tells it is about the token.
            "Request contains an invalid argument.",
            "message.token",
            "Invalid registration token",
        ),
        "badpayload" => invalid_argument(
            "Invalid value at 'message.data[0].value'",
            "message.data[0].value",
            "Invalid value",
        ),
        "denied" => fcm_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission denied.",
            json!([]),
        ),
        "quota" => {
            let mut r = fcm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded.",
                json!([fcm_code("QUOTA_EXCEEDED")]),
            );
            r.headers_mut()
                .insert("retry-after", "7".parse().expect("header value"));
            r
        }
        "unavail" => fcm_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            json!([fcm_code("UNAVAILABLE")]),
        ),
        "internal" => fcm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            json!([fcm_code("INTERNAL")]),
        ),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"name": "late"})).into_response()
        }
        other => panic!("the fake knows no token prefix {other:?}"),
    }
}

struct Fake {
    url: String,
    state: Arc<FakeState>,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fake {
    async fn start() -> Self {
        let (listener, url) = fake_server::bind().await;
        let token_uri = format!("{url}/token");
        let state = Arc::new(FakeState {
            token_uri: token_uri.clone(),
            public_key: DecodingKey::from_rsa_pem(include_bytes!("fixtures/fcm_public.pem"))
                .expect("public key"),
            exchange_attempts: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            expires_in: AtomicU64::new(3600),
            refuse_exchange: AtomicBool::new(false),
            revoked: Mutex::new(HashSet::new()),
            refuse_all: AtomicBool::new(false),
            sends: Mutex::new(Vec::new()),
            in_flight: InFlight::default(),
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route("/v1/projects/{project}/messages:send", post(send_endpoint))
            .with_state(state.clone());
        fake_server::spawn(listener, app);

        // The fixture's token_uri points nowhere; each test's copy points at its fake.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut account = service_account();
        account["token_uri"] = token_uri.into();
        let credentials = dir.path().join("service-account.json");
        write_json(&credentials, &account);
        Self {
            url,
            state,
            credentials,
            _dir: dir,
        }
    }

    /// A provider pointed at the fake, its configuration changed by `configure`.
    fn provider_with(&self, configure: impl FnOnce(&mut FcmConfig)) -> FcmProvider {
        let mut config = FcmConfig {
            endpoint: self.url.clone(),
            credentials_file: Some(self.credentials.clone()),
            h2c: true,
            limits: limits(16, 2_000),
            ..FcmConfig::default()
        };
        configure(&mut config);
        FcmProvider::new(&config).expect("provider")
    }

    fn provider(&self) -> FcmProvider {
        self.provider_with(|_| {})
    }

    fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Value> {
        self.state
            .sends
            .lock()
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

/// The service-account fixture.
fn service_account() -> Value {
    serde_json::from_str(include_str!("fixtures/fcm_service_account.json")).expect("fixture")
}

fn write_json(path: &std::path::Path, value: &Value) {
    std::fs::write(path, value.to_string()).expect("write");
}

// ---- dispatches --------------------------------------------------------------------------------

fn dispatch_in(envelope: &Arc<Envelope>, token: &str) -> Dispatch {
    Dispatch {
        title: Some("Hello".into()),
        ..dispatch::to(envelope, device(Platform::Fcm, token), "World")
    }
}

fn push(token: &str) -> Dispatch {
    dispatch_in(&Arc::new(envelope(Channel::Push, Priority::Normal)), token)
}

async fn send_one(provider: &FcmProvider, token: &str) -> Outcome {
    dispatch::send_one(provider, push(token)).await
}

/// A fresh fake's answer to `token` becomes `want`.
async fn assert_outcome(token: &str, want: Outcome) {
    let fake = Fake::start().await;
    assert_eq!(send_one(&fake.provider(), token).await, want);
}

/// A fresh fake's answer to `token` is a permanent failure whose reason starts with `prefix`.
async fn assert_failed_with(token: &str, prefix: &str) {
    let fake = Fake::start().await;
    let reason = failed_reason(send_one(&fake.provider(), token).await);
    assert!(reason.starts_with(prefix), "{reason}");
}

// ---- results -----------------------------------------------------------------------------------

#[tokio::test]
async fn an_accepted_message_is_reported_sent() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    assert_eq!(provider.name(), "fcm");
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    let sends = fake.state.sends.lock();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        sends[0].0, PROJECT,
        "the project comes from the credentials file"
    );
    assert_eq!(sends[0].2["message"]["token"], "ok-1");
}

#[tokio::test]
async fn a_configured_project_id_overrides_the_credentials_file() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.project_id = Some("other-project".into()));
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    assert_eq!(fake.state.sends.lock()[0].0, "other-project");
}

#[tokio::test]
async fn an_unregistered_token_is_reported_invalid() {
    assert_outcome("unreg-1", Outcome::invalid_token("fcm UNREGISTERED")).await;
}

#[tokio::test]
async fn a_sender_id_mismatch_is_reported_invalid() {
    assert_outcome("sender-1", Outcome::invalid_token("fcm SENDER_ID_MISMATCH")).await;
}

#[tokio::test]
async fn an_invalid_argument_about_the_token_is_reported_invalid() {
    let fake = Fake::start().await;
    assert!(matches!(
        send_one(&fake.provider(), "badtoken-1").await,
        Outcome::InvalidToken { .. }
    ));
}

#[tokio::test]
async fn an_invalid_argument_about_the_payload_is_a_permanent_failure() {
    assert_failed_with("badpayload-1", "fcm 400 INVALID_ARGUMENT").await;
}

#[tokio::test]
async fn another_client_error_is_a_failure_naming_status_and_code() {
    assert_failed_with("denied-1", "fcm 403 PERMISSION_DENIED").await;
}

#[tokio::test]
async fn an_exceeded_quota_is_retried_after_the_servers_retry_after() {
    let want = Outcome::retry("fcm 429 QUOTA_EXCEEDED", Some(Duration::from_secs(7)));
    assert_outcome("quota-1", want).await;
}

#[tokio::test]
async fn unavailable_and_internal_errors_are_retried() {
    let fake = Fake::start().await;
    let outcomes = fake
        .provider()
        .send(&[push("unavail-1"), push("internal-1")])
        .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::retry("fcm 503 UNAVAILABLE", None),
            Outcome::retry("fcm 500 INTERNAL", None),
        ]
    );
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
async fn a_destination_that_is_not_a_device_fails() {
    let fake = Fake::start().await;
    let mut d = push("ok-1");
    d.destination = Destination::Email("a@example.com".into());
    assert_eq!(
        fake.provider().send(&[d]).await,
        vec![Outcome::failed("not a device")]
    );
    assert!(fake.state.sends.lock().is_empty());
}

// ---- access tokens -----------------------------------------------------------------------------

#[tokio::test]
async fn one_access_token_serves_many_concurrent_sends() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    let batch = numbered("ok", 40, push);
    assert_all_sent(&provider.send(&batch).await);
    assert_all_sent(&provider.send(&batch[..5]).await);
    assert_eq!(fake.exchanges(), 1, "one exchange for all 45 sends");
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_use() {
    let fake = Fake::start().await;
    // Under the one-minute margin: never worth reusing.
    fake.state.expires_in.store(30, Ordering::SeqCst);
    let provider = fake.provider();
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    assert_eq!(send_one(&provider, "ok-2").await, Outcome::Sent);
    assert_eq!(fake.exchanges(), 2);
}

#[tokio::test]
async fn a_rejected_access_token_is_replaced_and_the_send_succeeds() {
    let fake = Fake::start().await;
    let provider = fake.provider();
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    fake.state.revoked.lock().insert("tok-1".into());
    assert_eq!(send_one(&provider, "ok-2").await, Outcome::Sent);
    assert_eq!(fake.exchanges(), 2);
    assert_eq!(send_one(&provider, "ok-3").await, Outcome::Sent);
    assert_eq!(fake.exchanges(), 2, "the new token is kept");
}

#[tokio::test]
async fn an_access_token_rejected_after_a_refresh_is_retried() {
    let fake = Fake::start().await;
    fake.state.refuse_all.store(true, Ordering::SeqCst);
    assert_eq!(
        send_one(&fake.provider(), "ok-1").await,
        Outcome::retry("fcm 401 UNAUTHENTICATED", None)
    );
    assert_eq!(fake.exchanges(), 2, "one refresh, then give up");
}

#[tokio::test]
async fn a_failed_token_exchange_is_retried_with_an_oauth_reason() {
    let fake = Fake::start().await;
    fake.state.refuse_exchange.store(true, Ordering::SeqCst);
    let reason = retry_reason(send_one(&fake.provider(), "ok-1").await);
    assert!(reason.starts_with("oauth: "), "{reason}");
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(fake.state.sends.lock().is_empty());
}

#[tokio::test]
async fn a_failed_token_exchange_is_shared_by_the_sends_waiting_for_it() {
    let fake = Fake::start().await;
    fake.state.refuse_exchange.store(true, Ordering::SeqCst);
    let provider = fake.provider();
    let outcomes = provider.send(&numbered("ok", 10, push)).await;
    assert!(
        outcomes.iter().all(|o| o.label() == "retry"),
        "{outcomes:?}"
    );
    assert_eq!(fake.state.exchange_attempts.load(Ordering::SeqCst), 1);

    // The failure is not remembered past the callers that waited for it.
    fake.state.refuse_exchange.store(false, Ordering::SeqCst);
    assert_eq!(send_one(&provider, "ok-again").await, Outcome::Sent);
    assert_eq!(fake.state.exchange_attempts.load(Ordering::SeqCst), 2);
}

// ---- transport -----------------------------------------------------------------------------------

#[tokio::test]
async fn with_h2c_requests_arrive_as_http2() {
    let fake = Fake::start().await;
    let outcomes = fake.provider().send(&[push("ok-1"), push("ok-2")]).await;
    assert_eq!(outcomes, vec![Outcome::Sent, Outcome::Sent]);
    for (_, version, _) in fake.state.sends.lock().iter() {
        assert_eq!(*version, Version::HTTP_2);
    }
}

#[tokio::test]
async fn without_h2c_requests_arrive_as_http1() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.h2c = false);
    assert_eq!(send_one(&provider, "ok-1").await, Outcome::Sent);
    assert_eq!(fake.state.sends.lock()[0].1, Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_never_exceed_the_concurrency_limit() {
    let fake = Fake::start().await;
    let provider = fake.provider_with(|c| c.limits = limits(3, 5_000));
    // Two callers share the provider, hence its semaphore.
    let outcomes = send_from_two_callers(&provider, &numbered("hold", 12, push)).await;
    assert_eq!(outcomes.len(), 24);
    assert_all_sent(&outcomes);
    assert_concurrent_within(fake.state.in_flight.max(), 3);
}

// ---- the message -------------------------------------------------------------------------------

#[tokio::test]
async fn the_body_carries_priority_ttl_and_data_as_strings() {
    let fake = Fake::start().await;
    let urgent = Arc::new(Envelope {
        campaign_id: "cmp-7".into(),
        channel: Channel::Push,
        category: Some("orders".into()),
        priority: Priority::Urgent,
        expires_at: Some(Utc::now() + chrono::Duration::seconds(600)),
    });
    let mut high = dispatch_in(&urgent, "ok-high");
    high.data = json!({
        "order": "A-17",
        "count": 3,
        "flags": {"gift": true},
        "none": null,
        "from": "reserved",
        "message_type": "reserved",
        "notification": "reserved",
        "google.c.a.e": "reserved",
        "gcm.n.e": "reserved",
    });
    let mut low = dispatch_in(&Arc::new(envelope(Channel::Push, Priority::Low)), "ok-low");
    low.title = None;

    let outcomes = fake.provider().send(&[high.clone(), low.clone()]).await;
    assert_eq!(outcomes, vec![Outcome::Sent, Outcome::Sent]);
    let bodies = fake.bodies();
    let by_token = |t: &str| {
        bodies
            .iter()
            .find(|b| b["message"]["token"] == t)
            .map(|b| b["message"].clone())
            .expect("sent")
    };

    let m = by_token("ok-high");
    assert_eq!(
        m["notification"],
        json!({"title": "Hello", "body": "World"})
    );
    assert_eq!(m["android"]["priority"], "HIGH");
    let ttl = m["android"]["ttl"].as_str().expect("ttl");
    let secs: i64 = ttl.trim_end_matches('s').parse().expect("seconds");
    assert!(ttl.ends_with('s') && (595..=600).contains(&secs), "{ttl}");
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
    assert_eq!(m["webpush"]["headers"]["Urgency"], "high");
    assert_eq!(
        m["data"],
        json!({
            "order": "A-17",
            "count": "3",
            "flags": "{\"gift\":true}",
            "none": "null",
            "notification_id": high.notification_id.to_string(),
            "campaign_id": "cmp-7",
            "category": "orders",
        })
    );

    let m = by_token("ok-low");
    assert_eq!(m["notification"], json!({"body": "World"}));
    assert_eq!(
        m["android"],
        json!({"priority": "NORMAL", "collapse_key": "cmp-1"})
    );
    assert_eq!(m["apns"]["headers"]["apns-priority"], "5");
    // The campaign id collapses: a replacement push takes the old one's place.
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "cmp-1");
    assert_eq!(m["webpush"]["headers"]["Urgency"], "normal");
    assert_eq!(
        m["data"],
        json!({"notification_id": low.notification_id.to_string(), "campaign_id": "cmp-1"})
    );
}

#[tokio::test]
async fn outcomes_come_back_in_input_order() {
    let fake = Fake::start().await;
    // The slowest answer is asked first, so answers arrive out of order.
    let tokens = [
        "hold-1",
        "unreg-1",
        "ok-1",
        "quota-1",
        "badpayload-1",
        "hold-2",
        "ok-2",
    ];
    let batch: Vec<Dispatch> = tokens.into_iter().map(push).collect();
    assert_eq!(
        labels(&fake.provider().send(&batch).await),
        [
            "sent",
            "invalid_token",
            "sent",
            "retry",
            "failed",
            "sent",
            "sent"
        ]
    );
}

// ---- configuration -----------------------------------------------------------------------------

/// The error of a provider whose credentials file is `path` (`None`: not configured).
fn credentials_error(path: Option<&std::path::Path>) -> herald_core::Error {
    FcmProvider::new(&FcmConfig {
        credentials_file: path.map(PathBuf::from),
        ..FcmConfig::default()
    })
    .expect_err("a configuration error")
}

#[tokio::test]
async fn a_missing_credentials_file_is_a_configuration_error() {
    let err = credentials_error(None);
    assert!(err.message.contains("push.fcm.credentials_file"), "{err}");

    let err = credentials_error(Some("/nonexistent/sa.json".as_ref()));
    assert!(err.message.contains("/nonexistent/sa.json"), "{err}");
}

#[tokio::test]
async fn a_malformed_credentials_file_is_named_without_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sa.json");
    let mut account = service_account();
    // A wrong type next to the key: serde would quote a string value in its message.
    account["client_email"] = json!(42);
    account["private_key_id"] = json!(["-----BEGIN PRIVATE KEY-----"]);
    write_json(&path, &account);
    let shown = credentials_error(Some(&path)).to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    let mut account = service_account();
    account["private_key"] = json!("-----BEGIN PRIVATE KEY-----\nnot a key\n");
    write_json(&path, &account);
    let err = credentials_error(Some(&path));
    assert!(!err.to_string().contains("not a key"), "{err}");
}
