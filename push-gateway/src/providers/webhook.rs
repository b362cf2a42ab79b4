//! Webhook subscribers (SNS-style): every notification of the webhook channel is POSTed as JSON
//! to each subscribed URL, signed with the subscription's secret.
//!
//! # What a receiver gets
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! User-Agent: Herald-Webhooks/1
//! Herald-Webhook-Id: <subscription id>
//! Herald-Notification-Id: <notification uuid>
//! Herald-Timestamp: <unix seconds>
//! Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! webhook-id: <notification uuid>
//! webhook-timestamp: <unix seconds>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<timestamp>.<body>")>
//!
//! {"id": "<notification uuid>", "webhook_id": "...", "campaign_id": "...", "user_id": "...",
//!  "category": "billing" | null, "priority": "normal", "title": "..." | null,
//!  "body": <the rendered body: its JSON value when it is JSON, else a string>,
//!  "data": {...}, "sent_at": "2024-05-01T12:00:00.000Z"}
//! ```
//!
//! Delivery is at least once: a receiver dedupes on `Herald-Notification-Id` (= `webhook-id`;
//! the same notification is posted again after a timeout even if the first post got through).
//! The `webhook-*` headers are [Standard Webhooks](https://www.standardwebhooks.com/): any of
//! its libraries verifies a post given the subscription's secret (`whsec_<base64 key>`, the
//! form Herald generates; a secret of another form is used as the key bytes as it is). The
//! `Herald-Signature` header is kept for receivers written against it, checked with [`verify`].
//! While a rotated secret is still valid (`POST /v1/webhooks/{id}/rotate-secret`), each header
//! carries one signature per secret (`t=…,v1=<new>,v1=<old>`; `v1,<new> v1,<old>`), so a
//! receiver verifies with the old secret or the new one, whichever it holds.
//! Either way a receiver checks the signature over the exact body bytes, and rejects stale
//! timestamps so that a captured request cannot be replayed later.
//!
//! # Outcomes
//!
//! 2xx is delivered. 408, 429 and 5xx are retried (after `Retry-After` when given), as are
//! timeouts and connection errors. 410 means the receiver is gone for good; any other 4xx, and
//! any 3xx (redirects are not followed: a signed request must not be replayed to another host),
//! fails the send.

use crate::provider::{record_request, retry_after, Destination, Dispatch, Outcome, Provider};
use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use herald_core::config::WebhookConfig;
use herald_core::delivery::Webhook;
use herald_core::model::Priority;
use herald_core::{Error, Result};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const NAME: &str = "webhook";

/// The `User-Agent` of every post.
pub const USER_AGENT: &str = "Herald-Webhooks/1";
/// The subscription id.
pub const WEBHOOK_ID_HEADER: &str = "Herald-Webhook-Id";
/// The notification id: what receivers dedupe on.
pub const NOTIFICATION_ID_HEADER: &str = "Herald-Notification-Id";
/// The signing time, in unix seconds (also the `t=` of the signature).
pub const TIMESTAMP_HEADER: &str = "Herald-Timestamp";
/// `t=<unix secs>,v1=<hex HMAC-SHA256>`; see [`sign`] and [`verify`].
pub const SIGNATURE_HEADER: &str = "Herald-Signature";

/// Standard Webhooks: the message id (the notification id, the same on every retry).
pub const STANDARD_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: the signing time in unix seconds.
pub const STANDARD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 signature>`; see [`sign_standard`].
pub const STANDARD_SIGNATURE_HEADER: &str = "webhook-signature";

/// The `webhook-signature` value (Standard Webhooks) for `body` of message `msg_id` sent at
/// `timestamp`: `v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>`, `key` being
/// [`Webhook::standard_key`].
///
/// ```
/// use herald_push::providers::webhook::sign_standard;
/// use base64::Engine;
/// // The example of the Standard Webhooks specification.
/// let key = base64::engine::general_purpose::STANDARD
///     .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .unwrap();
/// assert_eq!(
///     sign_standard(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
/// );
/// ```
pub fn sign_standard(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<int>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance: an old request replayed, or a
    /// clock far off.
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` signature matches the body under this secret.
    #[error("signature mismatch")]
    Mismatch,
}

/// The `Herald-Signature` header value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a `Herald-Signature` header against the exact body bytes received: the reference for
/// receivers.
///
/// `now` is the receiver's clock in unix seconds; a timestamp more than `tolerance_secs` away
/// from it is [`SignatureError::Stale`] (300 is a sensible tolerance). Several `v1=` entries are
/// accepted, any one matching suffices, so that a sender can sign with an old and a new secret
/// while a secret is rotated; entries of other schemes are ignored. A receiver that holds
/// several secrets during a rotation calls `verify` once per secret. The comparison is
/// constant-time.
///
/// ```
/// use herald_push::providers::webhook::{sign, verify, SignatureError};
///
/// let body = br#"{"id":"..."}"#;
/// let header = sign(b"whsec-0123456789abcdef", 1_700_000_000, body);
/// assert_eq!(verify(b"whsec-0123456789abcdef", &header, body, 1_700_000_030, 300), Ok(()));
/// assert_eq!(
///     verify(b"another-secret-entirely", &header, body, 1_700_000_030, 300),
///     Err(SignatureError::Mismatch)
/// );
/// ```
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> std::result::Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed)?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed);
                }
            }
            "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            // A later scheme (`v2=`) next to `v1=` must not break older receivers.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // Checked before the signature so that a replayed request is reported as such.
    if now.abs_diff(timestamp) > tolerance_secs.max(0).unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    if signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// HMAC-SHA256 keyed with `secret`, fed `"<timestamp>.<body>"`.
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The JSON body of one post.
#[derive(Serialize)]
struct Payload<'a> {
    id: uuid::Uuid,
    webhook_id: &'a str,
    campaign_id: &'a str,
    user_id: &'a str,
    category: Option<&'a str>,
    priority: Priority,
    title: Option<&'a str>,
    body: serde_json::Value,
    data: &'a serde_json::Value,
    sent_at: String,
}

/// Posts notifications to webhook subscribers.
pub struct WebhookProvider {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl WebhookProvider {
    pub fn new(cfg: &WebhookConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.limits.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| Error::internal(format!("webhook http client: {e}")))?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(cfg.limits.concurrency.max(1))),
        })
    }

    async fn send_one(&self, dispatch: &Dispatch) -> Outcome {
        let Destination::Webhook(hook) = &dispatch.destination else {
            return Outcome::failed("webhook: destination is not a webhook subscription");
        };
        let Ok(_permit) = self.permits.acquire().await else {
            // Only a closed semaphore fails, and nothing closes it.
            return Outcome::retry("webhook provider shut down", None);
        };
        let started = Instant::now();
        let outcome = self.post(hook, dispatch).await;
        record_request(NAME, started, &outcome);
        outcome
    }

    async fn post(&self, hook: &Webhook, dispatch: &Dispatch) -> Outcome {
        // Signed at the last moment, after waiting for a permit, so the timestamp is fresh.
        let now = Utc::now();
        let timestamp = now.timestamp();
        let body = match payload(hook, dispatch, now) {
            Ok(b) => b,
            Err(e) => return Outcome::failed(format!("webhook payload: {e}")),
        };
        // Every secret in use signs: the current one, and during a rotation the replaced ones,
        // so a receiver verifies with whichever it holds.
        let secrets = hook.signing_secrets(now);
        let msg_id = dispatch.notification_id.to_string();
        let mut signature = format!("t={timestamp}");
        let mut standard = Vec::with_capacity(secrets.len());
        for secret in &secrets {
            let tag = mac(secret.expose().as_bytes(), timestamp, &body)
                .finalize()
                .into_bytes();
            signature.push_str(",v1=");
            signature.push_str(&hex::encode(tag));
            standard.push(sign_standard(
                &herald_core::delivery::standard_key(secret),
                &msg_id,
                timestamp,
                &body,
            ));
        }
        let standard = standard.join(" ");
        let sent = self
            .client
            .post(hook.url.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(WEBHOOK_ID_HEADER, hook.id.as_str())
            .header(NOTIFICATION_ID_HEADER, msg_id.as_str())
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header(STANDARD_ID_HEADER, msg_id.as_str())
            .header(STANDARD_TIMESTAMP_HEADER, timestamp.to_string())
            .header(STANDARD_SIGNATURE_HEADER, standard)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => status_outcome(
                response.status(),
                retry_after(response.headers().get(RETRY_AFTER)),
            ),
            Err(e) => transport_error(e),
        }
    }
}

#[async_trait]
impl Provider for WebhookProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome> {
        futures::future::join_all(dispatches.iter().map(|d| self.send_one(d))).await
    }
}

/// The body bytes: serialized once, and exactly these are signed and sent.
fn payload(
    hook: &Webhook,
    dispatch: &Dispatch,
    now: chrono::DateTime<Utc>,
) -> serde_json::Result<Vec<u8>> {
    let envelope = &dispatch.envelope;
    // Templates of the webhook channel render JSON; anything else is passed on as text.
    let body = serde_json::from_str(&dispatch.body)
        .unwrap_or_else(|_| serde_json::Value::String(dispatch.body.clone()));
    serde_json::to_vec(&Payload {
        id: dispatch.notification_id,
        webhook_id: &hook.id,
        campaign_id: &envelope.campaign_id,
        user_id: &dispatch.user_id,
        category: envelope.category.as_deref(),
        priority: envelope.priority,
        title: dispatch.title.as_deref(),
        body,
        data: &dispatch.data,
        sent_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

fn status_outcome(status: StatusCode, after: Option<Duration>) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        Outcome::Sent
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::retry(format!("webhook {code}"), after)
    } else if status == StatusCode::GONE {
        Outcome::failed("webhook 410 gone")
    } else if status.is_redirection() {
        Outcome::failed(format!("webhook {code} redirect not followed"))
    } else {
        Outcome::failed(format!("webhook {code}"))
    }
}

/// reqwest's messages carry the URL, which may hold a token of the receiver's, so the reason is
/// only the kind of failure.
fn transport_error(e: reqwest::Error) -> Outcome {
    if e.is_builder() {
        // The URL itself is unusable (validated on subscribe, so rare): retrying won't help.
        return Outcome::failed("webhook invalid url");
    }
    let reason = if e.is_timeout() {
        "webhook timeout"
    } else if e.is_connect() {
        "webhook connection error"
    } else {
        "webhook transport error"
    };
    tracing::debug!(provider = NAME, error = %e.without_url(), "webhook post failed");
    Outcome::retry(reason, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let after = Some(Duration::from_secs(5));
        assert_eq!(status_outcome(StatusCode::NO_CONTENT, None), Outcome::Sent);
        assert_eq!(
            status_outcome(StatusCode::REQUEST_TIMEOUT, after),
            Outcome::retry("webhook 408", after)
        );
        assert_eq!(
            status_outcome(StatusCode::TOO_MANY_REQUESTS, after),
            Outcome::retry("webhook 429", after)
        );
        assert_eq!(
            status_outcome(StatusCode::BAD_GATEWAY, None),
            Outcome::retry("webhook 502", None)
        );
        assert_eq!(
            status_outcome(StatusCode::GONE, after),
            Outcome::failed("webhook 410 gone")
        );
        assert_eq!(
            status_outcome(StatusCode::MOVED_PERMANENTLY, None),
            Outcome::failed("webhook 301 redirect not followed")
        );
        assert_eq!(
            status_outcome(StatusCode::UNPROCESSABLE_ENTITY, None),
            Outcome::failed("webhook 422")
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference vector: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
