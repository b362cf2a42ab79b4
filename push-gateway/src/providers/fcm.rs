//! Firebase Cloud Messaging over the HTTP v1 API: one `messages:send` request per device
//! token, authorised by a service-account access token (see [`super::oauth`]), all of a call's
//! requests in flight together up to the provider's concurrency. FCM's answers are mapped to
//! outcomes: a dead token is `InvalidToken`, quota and server trouble are `Retry`, a rejected
//! payload is `Failed`.

use super::oauth::{root_cause, ServiceAccount, TokenSource};
use crate::provider::{record_request, retry_after, Destination, Dispatch, Outcome, Provider};
use async_trait::async_trait;
use chrono::Utc;
use herald_core::config::FcmConfig;
use herald_core::model::Priority;
use herald_core::{Error, Result};
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// FCM keeps a message at most four weeks.
const MAX_TTL_SECS: i64 = 28 * 24 * 3600;

/// Data keys FCM rejects (or reserves for itself), besides those starting with `google` or
/// `gcm`.
const RESERVED_DATA_KEYS: [&str; 3] = ["from", "notification", "message_type"];

/// How requests travel: HTTP/2 (FCM itself over TLS, or h2c) on `push.fcm.connections`
/// connections taken in turn (one connection's frames are handled by one task on each side,
/// which caps what a single connection carries); plain HTTP/1.1 endpoints through reqwest.
enum Transport {
    H2 {
        pool: super::h2::H2Pool,
        uri: http::Uri,
    },
    Http1 {
        client: reqwest::Client,
        url: reqwest::Url,
    },
}

/// FCM v1 client.
pub struct FcmProvider {
    /// Carries `{endpoint}/v1/projects/{project_id}/messages:send`, parsed once (not per send).
    transport: Transport,
    tokens: Arc<TokenSource>,
    /// Requests in flight, shared by every caller of this provider.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmProvider")
            .field(
                "send_url",
                &match &self.transport {
                    Transport::H2 { uri, .. } => uri.to_string(),
                    Transport::Http1 { url, .. } => url.to_string(),
                },
            )
            .finish_non_exhaustive()
    }
}

impl FcmProvider {
    /// Builds the client from `push.fcm`; the credentials file must be set and readable.
    pub fn new(cfg: &FcmConfig) -> Result<Self> {
        let path = cfg.credentials_file.as_deref().ok_or_else(|| {
            Error::invalid("push.fcm.credentials_file is required to send through FCM")
        })?;
        let account = ServiceAccount::from_file(path)?;
        let project_id = cfg
            .project_id
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| account.project_id.clone());
        if project_id.is_empty() {
            return Err(Error::invalid(format!(
                "push.fcm.project_id is unset and {} names no project_id",
                path.display()
            )));
        }
        let timeout = Duration::from_millis(cfg.limits.timeout_ms);
        let concurrency = cfg.limits.concurrency.max(1);
        let send_url = reqwest::Url::parse(&format!(
            "{}/v1/projects/{project_id}/messages:send",
            cfg.endpoint.trim_end_matches('/')
        ))
        .map_err(|e| {
            Error::invalid(format!("push.fcm.endpoint `{}` is not a URL", cfg.endpoint))
                .with_source(e)
        })?;
        let bad_endpoint =
            |why: String| Error::invalid(format!("push.fcm.endpoint `{}`: {why}", cfg.endpoint));
        let transport = if send_url.scheme() == "https" || cfg.h2c {
            let uri: http::Uri = send_url
                .as_str()
                .parse()
                .map_err(|e: http::uri::InvalidUri| bad_endpoint(e.to_string()))?;
            let extra_roots = match &cfg.ca_file {
                Some(path) => super::h2::read_certificates(path)
                    .map_err(|why| Error::invalid(format!("push.fcm.ca_file: {why}")))?,
                None => Vec::new(),
            };
            let pool = super::h2::H2Pool::new(&uri, cfg.connections, timeout, &extra_roots)
                .map_err(bad_endpoint)?;
            Transport::H2 { pool, uri }
        } else {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .tcp_nodelay(true)
                // Over HTTP/1.1 every request in flight needs a connection of its own; keep
                // them all rather than reconnecting after each burst.
                .pool_max_idle_per_host(concurrency.max(32))
                // FCM neither redirects nor wants the client's own retries (the gateway
                // retries with backoff).
                .redirect(reqwest::redirect::Policy::none())
                .retry(reqwest::retry::never())
                .build()
                .map_err(|e| Error::internal("cannot build the FCM HTTP client").with_source(e))?;
            Transport::Http1 {
                client,
                url: send_url,
            }
        };
        Ok(Self {
            transport,
            tokens: Arc::new(TokenSource::new(&account, timeout)?),
            permits: Arc::new(Semaphore::new(concurrency)),
        })
    }

    async fn send_one(&self, dispatch: &Dispatch) -> Outcome {
        let Destination::Device { token, .. } = &dispatch.destination else {
            return Outcome::failed("not a device");
        };
        let body = message_body(dispatch, token);
        // The semaphore is never closed, so acquiring only fails if that invariant breaks.
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::retry("fcm: provider shutting down", None);
        };
        // Timed from the permit on, so the histogram shows the provider's latency rather than
        // our queue; a send retried inline after a token refresh counts once, with its end.
        let started = Instant::now();
        let outcome = self.post(&body).await;
        record_request("fcm", started, &outcome);
        outcome
    }

    /// One request: the status, `Retry-After` and body, or the outcome of a transport failure.
    async fn exchange(
        &self,
        access: &str,
        body: &bytes::Bytes,
    ) -> std::result::Result<(StatusCode, Option<Duration>, bytes::Bytes), Outcome> {
        match &self.transport {
            Transport::H2 { pool, uri } => {
                let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {access}"))
                    .map_err(|_| Outcome::retry("fcm: access token is not a header value", None))?;
                match pool.post_json(uri, &bearer, body.clone()).await {
                    Ok(r) => Ok((r.status, retry_after(r.headers.get(RETRY_AFTER)), r.body)),
                    Err(super::h2::H2Error::Timeout) => Err(Outcome::retry("fcm timeout", None)),
                    Err(e) => Err(Outcome::retry(format!("fcm {e}"), None)),
                }
            }
            Transport::Http1 { client, url } => {
                let resp = client
                    .post(url.clone())
                    .bearer_auth(access)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| transport_outcome("fcm", &e))?;
                let status = resp.status();
                let after = retry_after(resp.headers().get(RETRY_AFTER));
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| transport_outcome("fcm", &e))?;
                Ok((status, after, bytes))
            }
        }
    }

    /// Sends one message; on a 401 drops the access token and tries once more with a new one.
    async fn post(&self, body: &bytes::Bytes) -> Outcome {
        let mut refreshed = false;
        loop {
            let access = match self.tokens.token().await {
                Ok(t) => t,
                Err(e) => return Outcome::retry(format!("oauth: {e}"), None),
            };
            let (status, after, bytes) = match self.exchange(&access, body).await {
                Ok(answer) => answer,
                Err(outcome) => return outcome,
            };
            match classify(status, after, &bytes) {
                Classified::Done(outcome) => return outcome,
                Classified::Unauthorized(reason) => {
                    if refreshed {
                        return Outcome::retry(reason, after);
                    }
                    self.tokens.reject(&access);
                    refreshed = true;
                }
            }
        }
    }
}

#[async_trait]
impl Provider for FcmProvider {
    fn name(&self) -> &'static str {
        "fcm"
    }

    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome> {
        // join_all keeps input order; the semaphore bounds what is actually in flight.
        futures::future::join_all(dispatches.iter().map(|d| self.send_one(d))).await
    }
}

/// The `messages:send` body of one dispatch, serialised once from borrowed parts: at tens of
/// thousands of sends a second, building a `serde_json::Value` tree per send costs more than
/// the request itself.
fn message_body(dispatch: &Dispatch, token: &str) -> bytes::Bytes {
    let envelope = &dispatch.envelope;
    let high = matches!(envelope.priority, Priority::High | Priority::Urgent);
    let ttl = envelope.expires_at.map(|expires_at| {
        let secs = (expires_at - Utc::now())
            .num_seconds()
            .clamp(0, MAX_TTL_SECS);
        format!("{secs}s")
    });
    let body = SendBody {
        message: Message {
            token,
            notification: Notification {
                title: dispatch.title.as_deref(),
                body: &dispatch.body,
            },
            data: DataStrings(dispatch),
            // The campaign id collapses: a replacement push (a revision of the campaign's
            // content) takes the old one's place on the device.
            android: Android {
                priority: if high { "HIGH" } else { "NORMAL" },
                ttl: ttl.as_deref(),
                collapse_key: super::collapse_id(&envelope.campaign_id),
            },
            apns: Headers {
                headers: ApnsHeaders {
                    apns_priority: if high { "10" } else { "5" },
                    apns_collapse_id: super::collapse_id(&envelope.campaign_id),
                },
            },
            webpush: Headers {
                headers: WebpushHeaders {
                    urgency: if high { "high" } else { "normal" },
                },
            },
        },
    };
    // Serialising borrowed strings and maps cannot fail.
    serde_json::to_vec(&body).unwrap_or_default().into()
}

#[derive(Serialize)]
struct SendBody<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    notification: Notification<'a>,
    data: DataStrings<'a>,
    android: Android<'a>,
    apns: Headers<ApnsHeaders<'a>>,
    webpush: Headers<WebpushHeaders>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
}

#[derive(Serialize)]
struct Android<'a> {
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'a str>,
    collapse_key: &'a str,
}

#[derive(Serialize)]
struct Headers<H> {
    headers: H,
}

#[derive(Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-priority")]
    apns_priority: &'static str,
    #[serde(rename = "apns-collapse-id")]
    apns_collapse_id: &'a str,
}

#[derive(Serialize)]
struct WebpushHeaders {
    #[serde(rename = "Urgency")]
    urgency: &'static str,
}

/// FCM data is a map of strings: the campaign data flattened (non-strings JSON-encoded, keys
/// FCM rejects left out) plus the ids the app needs to report opens.
struct DataStrings<'a>(&'a Dispatch);

impl Serialize for DataStrings<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let dispatch = self.0;
        let mut map = s.serialize_map(None)?;
        if let Value::Object(fields) = &dispatch.data {
            for (key, value) in fields {
                if RESERVED_DATA_KEYS.contains(&key.as_str())
                    || key.starts_with("google")
                    || key.starts_with("gcm")
                    || FIXED_DATA_KEYS.contains(&key.as_str())
                {
                    continue;
                }
                match value {
                    Value::String(text) => map.serialize_entry(key, text)?,
                    other => map.serialize_entry(key, &other.to_string())?,
                }
            }
        }
        let envelope = &dispatch.envelope;
        let mut id = uuid::Uuid::encode_buffer();
        map.serialize_entry(
            "notification_id",
            dispatch.notification_id.hyphenated().encode_lower(&mut id),
        )?;
        map.serialize_entry("campaign_id", &envelope.campaign_id)?;
        if let Some(category) = &envelope.category {
            map.serialize_entry("category", category)?;
        }
        map.end()
    }
}

/// Keys Herald sets itself in the data map (they win over the campaign data's).
const FIXED_DATA_KEYS: [&str; 3] = ["notification_id", "campaign_id", "category"];

/// FCM's error body: `{"error": {"code", "message", "status", "details": [...]}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorStatus,
}

#[derive(Deserialize, Default)]
struct ErrorStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

/// One entry of `details`: an `FcmError` (`errorCode`) or a `BadRequest` (`fieldViolations`).
#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "@type", default)]
    kind: String,
    #[serde(rename = "errorCode", default)]
    error_code: Option<String>,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

impl ErrorStatus {
    /// The FCM error code, falling back to the canonical status (`INVALID_ARGUMENT`).
    fn code(&self) -> &str {
        self.details
            .iter()
            .filter(|d| d.kind.ends_with("google.firebase.fcm.v1.FcmError"))
            .find_map(|d| d.error_code.as_deref())
            .unwrap_or(&self.status)
    }

    /// Whether an `INVALID_ARGUMENT` is about the registration token rather than the payload.
    fn blames_token(&self) -> bool {
        self.details
            .iter()
            .flat_map(|d| &d.field_violations)
            .any(|v| v.field == "message.token")
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}

enum Classified {
    Done(Outcome),
    /// The access token was refused: refresh it and try again (once).
    Unauthorized(String),
}

/// Maps one FCM answer to an outcome.
fn classify(status: StatusCode, after: Option<Duration>, body: &[u8]) -> Classified {
    if status.is_success() {
        return Classified::Done(Outcome::Sent);
    }
    // A body that is not FCM's error JSON (a proxy's HTML page) still has a status to go by.
    let err = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let code = err.code();
    let n = status.as_u16();
    let reason = if code.is_empty() {
        format!("fcm {n}")
    } else {
        format!("fcm {n} {code}")
    };

    if n == 401 || matches!(code, "THIRD_PARTY_AUTH_ERROR" | "UNAUTHENTICATED") {
        return Classified::Unauthorized(reason);
    }
    Classified::Done(match code {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => Outcome::invalid_token(format!("fcm {code}")),
        "INVALID_ARGUMENT" if err.blames_token() => {
            Outcome::invalid_token("fcm INVALID_ARGUMENT message.token")
        }
        "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" => Outcome::retry(reason, after),
        _ if n == 429 || status.is_server_error() => Outcome::retry(reason, after),
        _ => {
            // The message says what about the payload was wrong; keep it short for logs.
            let mut reason = reason;
            if !err.message.is_empty() {
                reason.push_str(": ");
                reason.extend(err.message.chars().take(120));
            }
            Outcome::failed(reason)
        }
    })
}

/// A request that got no answer: worth trying again.
pub(crate) fn transport_outcome(provider: &str, e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        Outcome::retry(format!("{provider} timeout"), None)
    } else if e.is_connect() {
        Outcome::retry(format!("{provider} connect: {}", root_cause(e)), None)
    } else {
        Outcome::retry(format!("{provider} transport: {}", root_cause(e)), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classify_json(status: u16, body: Value) -> Outcome {
        match classify(
            StatusCode::from_u16(status).unwrap(),
            None,
            body.to_string().as_bytes(),
        ) {
            Classified::Done(o) => o,
            Classified::Unauthorized(r) => panic!("unauthorized: {r}"),
        }
    }

    #[test]
    fn invalid_argument_blames_the_token_only_when_fcm_says_so() {
        let token = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token"}});
        assert!(matches!(
            classify_json(400, token),
            Outcome::InvalidToken { .. }
        ));
        let payload = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Invalid value at 'message.android.ttl'"}});
        assert_eq!(
            classify_json(400, payload),
            Outcome::failed("fcm 400 INVALID_ARGUMENT: Invalid value at 'message.android.ttl'")
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_classified_by_status() {
        let o = match classify(StatusCode::BAD_GATEWAY, None, b"<html>") {
            Classified::Done(o) => o,
            Classified::Unauthorized(_) => unreachable!(),
        };
        assert_eq!(o, Outcome::retry("fcm 502", None));
        let o = match classify(StatusCode::FORBIDDEN, None, b"") {
            Classified::Done(o) => o,
            Classified::Unauthorized(_) => unreachable!(),
        };
        assert_eq!(o, Outcome::failed("fcm 403"));
    }

    #[test]
    fn sender_id_mismatch_is_a_dead_token() {
        let body = json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
             "errorCode": "SENDER_ID_MISMATCH"}]}});
        assert_eq!(
            classify_json(403, body),
            Outcome::invalid_token("fcm SENDER_ID_MISMATCH")
        );
    }
}
