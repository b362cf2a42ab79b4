//! A fake FCM for tests and the load-test harness (cargo feature `fakes`): the HTTP v1 send
//! endpoint and the OAuth2 token endpoint on one loopback listener, speaking HTTP/1.1 and
//! h2c. It answers by the token's prefix, so a test chooses each device's fate by naming it:
//!
//! | token prefix  | answer                                                     |
//! |---------------|------------------------------------------------------------|
//! | `unreg-`      | 404 `UNREGISTERED`                                         |
//! | `badtoken-`   | 400 `INVALID_ARGUMENT` on `message.token`                  |
//! | `unavail-`    | 503 `UNAVAILABLE`, `Retry-After: 1`                        |
//! | `quota-`      | 429 `QUOTA_EXCEEDED`, `Retry-After: 2`                     |
//! | `flaky<N>-`   | 503 for the first N sends to that token, then 200          |
//! | `slow<MS>-`   | 200 after MS milliseconds                                  |
//! | anything else | 200 `{"name": "projects/<p>/messages/<n>"}`                |
//!
//! A test can also put the whole service into a storm ([`FakeFcm::set_storm`]): every send
//! answered 503 `UNAVAILABLE`, 429 `QUOTA_EXCEEDED`, or held without an answer (a timeout on
//! the client's side), until the storm is lifted.
//!
//! The token endpoint checks the RS256 assertion against the public half of the throwaway key
//! pair in this folder (test-only keys: they protect nothing) and hands out `fake-access-N`;
//! the send endpoint refuses any other bearer with 401.

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Throwaway RSA key of the fake service account (test-only).
pub const TEST_PRIVATE_KEY: &str = include_str!("fcm_test_key.pem");
const TEST_PUBLIC_KEY: &str = include_str!("fcm_test_key.pub.pem");
pub const PROJECT_ID: &str = "herald-fake";
const CLIENT_EMAIL: &str = "herald@herald-fake.iam.gserviceaccount.com";

/// What a storm does to every send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storm {
    /// 503 `UNAVAILABLE` with `Retry-After: 1`.
    Unavailable,
    /// 429 `QUOTA_EXCEEDED` with `Retry-After: 1`.
    Quota,
    /// No answer for 30 s (the client times out first).
    Hang,
}

#[derive(Default)]
struct Fcm {
    storm: Mutex<Option<Storm>>,
    sent: AtomicU64,
    rejected: AtomicU64,
    exchanges: AtomicU64,
    access_token: Mutex<Option<String>>,
    /// Sends per token, when recording (tests); off under load.
    per_token: Option<Mutex<HashMap<String, u32>>>,
    /// The last message sent to each token, when recording.
    last_message: Option<Mutex<HashMap<String, serde_json::Value>>>,
}

/// A running fake FCM; stops when dropped.
pub struct FakeFcm {
    addr: SocketAddr,
    state: Arc<Fcm>,
    stop: CancellationToken,
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeFcm {
    /// Starts on 127.0.0.1 at an OS-chosen port, counting sends per token.
    pub async fn start() -> std::io::Result<FakeFcm> {
        Self::start_on("127.0.0.1:0", true).await
    }

    /// Starts on `addr`; `record` keeps per-token counts (a map lookup per send).
    pub async fn start_on(addr: &str, record: bool) -> std::io::Result<FakeFcm> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Fcm {
            per_token: record.then(Default::default),
            last_message: record.then(Default::default),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/projects/{project}/messages:send", post(send))
            .route("/token", post(token))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until)
                .await;
        });
        Ok(FakeFcm { addr, state, stop })
    }

    /// The value of `push.fcm.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a service-account file whose `token_uri` is this fake, for
    /// `push.fcm.credentials_file`.
    pub fn write_credentials(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("fake-fcm-service-account.json");
        std::fs::write(&path, credentials(&self.endpoint()).to_string())?;
        Ok(path)
    }

    /// Sends answered 200.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::Relaxed)
    }

    /// Sends answered with an error.
    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::Relaxed)
    }

    /// OAuth token exchanges.
    pub fn token_exchanges(&self) -> u64 {
        self.state.exchanges.load(Ordering::Relaxed)
    }

    /// Puts every send into `storm`, or (with `None`) back to answering by token.
    pub fn set_storm(&self, storm: Option<Storm>) {
        *self.state.storm.lock() = storm;
    }

    /// The `message` of the last request for `token` (`None` when not recording).
    pub fn last_message(&self, token: &str) -> Option<serde_json::Value> {
        self.state
            .last_message
            .as_ref()
            .and_then(|m| m.lock().get(token).cloned())
    }

    /// Requests for `token` so far (0 when not recording).
    pub fn requests_for(&self, token: &str) -> u32 {
        self.state
            .per_token
            .as_ref()
            .and_then(|m| m.lock().get(token).copied())
            .unwrap_or(0)
    }
}

/// The service-account file of a fake FCM at `endpoint` (`http://host:port`).
pub fn credentials(endpoint: &str) -> serde_json::Value {
    json!({
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": "fake-key-1",
        "private_key": TEST_PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "token_uri": format!("{endpoint}/token"),
    })
}

#[derive(serde::Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
}

async fn token(State(s): State<Arc<Fcm>>, Form(form): Form<TokenForm>) -> Response {
    if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let key = match jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()) {
        Ok(k) => k,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // The audience is this fake's own token URI, whatever port it got.
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<Claims>(&form.assertion, &key, &validation) {
        Ok(t) => t.claims,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response()
        }
    };
    if claims.iss != CLIENT_EMAIL || !claims.scope.contains("firebase.messaging") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_scope"})),
        )
            .into_response();
    }
    let n = s.exchanges.fetch_add(1, Ordering::Relaxed) + 1;
    let access = format!("fake-access-{n}");
    *s.access_token.lock() = Some(access.clone());
    Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

#[derive(serde::Deserialize)]
struct SendBody {
    message: SendMessage,
}

#[derive(serde::Deserialize)]
struct SendMessage {
    token: String,
}

fn fcm_error(status: StatusCode, code: &str, extra: Option<(&str, &str)>) -> Response {
    let mut details = vec![json!({
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": code,
    })];
    let grpc_status = match code {
        "UNREGISTERED" => "NOT_FOUND",
        "QUOTA_EXCEEDED" => "RESOURCE_EXHAUSTED",
        other => other,
    };
    if code == "INVALID_ARGUMENT" {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
        }));
    }
    let body = Json(json!({"error": {
        "code": status.as_u16(),
        "message": format!("fake FCM: {code}"),
        "status": grpc_status,
        "details": details,
    }}));
    match extra {
        Some((name, value)) => (status, [(name, value.to_owned())], body).into_response(),
        None => (status, body).into_response(),
    }
}

async fn send(
    State(s): State<Arc<Fcm>>,
    UrlPath(project): UrlPath<String>,
    request: axum::extract::Request,
) -> Response {
    // Headers are read in place and the body taken as bytes: under load the fake must cost
    // as little as it can, since it shares the machine with the gateway it measures.
    let (parts, body) = request.into_parts();
    let authorised = {
        let expected = s.access_token.lock();
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        expected.is_some() && bearer == expected.as_deref()
    };
    if !authorised {
        s.rejected.fetch_add(1, Ordering::Relaxed);
        return fcm_error(StatusCode::UNAUTHORIZED, "THIRD_PARTY_AUTH_ERROR", None);
    }
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        s.rejected.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let Ok(SendBody { message }) = serde_json::from_slice::<SendBody>(&body) else {
        s.rejected.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "bad body").into_response();
    };
    let token = message.token;
    let storm = *s.storm.lock();
    match storm {
        Some(Storm::Unavailable) => {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            return fcm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                Some(("retry-after", "1")),
            );
        }
        Some(Storm::Quota) => {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            return fcm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "QUOTA_EXCEEDED",
                Some(("retry-after", "1")),
            );
        }
        Some(Storm::Hang) => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            s.rejected.fetch_add(1, Ordering::Relaxed);
            return fcm_error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", None);
        }
        None => {}
    }
    if let Some(last) = &s.last_message {
        if let Ok(mut whole) = serde_json::from_slice::<serde_json::Value>(&body) {
            last.lock().insert(token.clone(), whole["message"].take());
        }
    }
    let nth = match &s.per_token {
        Some(m) => {
            let mut m = m.lock();
            let n = m.entry(token.clone()).or_default();
            *n += 1;
            *n
        }
        None => 1,
    };
    if let Some(ms) = numbered(&token, "slow") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.into())).await;
    }
    let answer = if token.starts_with("unreg-") {
        Some(fcm_error(StatusCode::NOT_FOUND, "UNREGISTERED", None))
    } else if token.starts_with("badtoken-") {
        Some(fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None))
    } else if token.starts_with("unavail-") {
        Some(fcm_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            Some(("retry-after", "1")),
        ))
    } else if token.starts_with("quota-") {
        Some(fcm_error(
            StatusCode::TOO_MANY_REQUESTS,
            "QUOTA_EXCEEDED",
            Some(("retry-after", "2")),
        ))
    } else if let Some(failures) = flaky(&token) {
        (nth <= failures).then(|| fcm_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", None))
    } else {
        None
    };
    match answer {
        Some(r) => {
            s.rejected.fetch_add(1, Ordering::Relaxed);
            r
        }
        None => {
            let n = s.sent.fetch_add(1, Ordering::Relaxed) + 1;
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"name\":\"projects/{project}/messages/{n}\"}}"),
            )
                .into_response()
        }
    }
}

/// `flaky3-…` → Some(3).
fn flaky(token: &str) -> Option<u32> {
    numbered(token, "flaky")
}

/// `numbered("slow300-x", "slow")` → Some(300).
fn numbered(token: &str, prefix: &str) -> Option<u32> {
    let rest = token.strip_prefix(prefix)?;
    let (n, _) = rest.split_once('-')?;
    n.parse().ok()
}
