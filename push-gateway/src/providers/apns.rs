//! Apple Push Notification service over HTTP/2: one `POST /3/device/{token}` per device,
//! authorised by an ES256 provider token signed with the team's `.p8` key, all of a call's
//! requests multiplexed on one connection up to the provider's concurrency. APNs answers are
//! mapped to outcomes: a dead token is `InvalidToken`, throttling and server trouble are
//! `Retry`, a rejected payload is `Failed`.

use super::fcm::transport_outcome;
use crate::provider::{record_request, retry_after, Destination, Dispatch, Outcome, Provider};
use async_trait::async_trait;
use herald_core::config::ApnsConfig;
use herald_core::model::Priority;
use herald_core::{Error, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::RETRY_AFTER;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// How long a provider token is reused. APNs accepts a token for an hour and answers
/// `TooManyProviderTokenUpdates` to a team that signs new ones more often than every 20
/// minutes, so it is renewed well inside that window.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// APNs client.
pub struct ApnsProvider {
    http: reqwest::Client,
    /// `{endpoint}/3/device/`.
    device_url: String,
    topic: String,
    signer: Arc<ProviderTokens>,
    /// Requests in flight, shared by every caller of this provider.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("device_url", &self.device_url)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ApnsProvider {
    /// Builds the client from `push.apns`: `key_file`, `key_id`, `team_id` and `topic` must
    /// all be set, and the key file must hold a P-256 key in PKCS#8 PEM.
    pub fn new(cfg: &ApnsConfig) -> Result<Self> {
        fn required<'a>(value: &'a Option<String>, key: &str) -> Result<&'a str> {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::invalid(format!("{key} is required to send through APNs")))
        }
        let path = cfg
            .key_file
            .as_deref()
            .ok_or_else(|| Error::invalid("push.apns.key_file is required to send through APNs"))?;
        let key_id = required(&cfg.key_id, "push.apns.key_id")?;
        let team_id = required(&cfg.team_id, "push.apns.team_id")?;
        let topic = required(&cfg.topic, "push.apns.topic")?;

        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid(format!(
                "APNs key file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            Error::invalid(format!(
                "APNs key file {} is not a PKCS#8 PEM P-256 key: {e}",
                path.display()
            ))
        })?;

        let concurrency = cfg.limits.concurrency.max(1);
        // APNs speaks only HTTP/2, so no ALPN fallback to 1.1 is wanted; for an http://
        // endpoint (a local fake) this is h2c.
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_millis(cfg.limits.timeout_ms))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(concurrency.max(32))
            .http2_adaptive_window(true)
            .build()
            .map_err(|e| Error::internal("cannot build the APNs HTTP client").with_source(e))?;
        Ok(Self {
            http,
            device_url: format!("{}/3/device/", cfg.endpoint.trim_end_matches('/')),
            topic: topic.to_owned(),
            signer: Arc::new(ProviderTokens {
                key,
                key_id: key_id.to_owned(),
                team_id: team_id.to_owned(),
                current: parking_lot::Mutex::new(None),
            }),
            permits: Arc::new(Semaphore::new(concurrency)),
        })
    }

    async fn send_one(&self, dispatch: &Dispatch) -> Outcome {
        let Destination::Device { token, .. } = &dispatch.destination else {
            return Outcome::failed("not a device");
        };
        // The token goes into the URL path: one that could change the path can never be valid.
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Outcome::invalid_token("apns malformed device token");
        }
        let request = ApnsRequest::new(dispatch);
        let url = format!("{}{token}", self.device_url);
        // The semaphore is never closed, so acquiring only fails if that invariant breaks.
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::retry("apns: provider shutting down", None);
        };
        // Timed from the permit on, so the histogram shows the provider's latency rather than
        // our queue; a send retried inline after a token refresh counts once, with its end.
        let started = Instant::now();
        let outcome = self.post(&url, &request).await;
        record_request("apns", started, &outcome);
        outcome
    }

    /// Sends one notification; when APNs calls the provider token expired or invalid, signs a
    /// new one and tries once more.
    async fn post(&self, url: &str, request: &ApnsRequest) -> Outcome {
        let mut refreshed = false;
        loop {
            let jwt = match self.signer.token() {
                Ok(t) => t,
                Err(e) => return Outcome::retry(format!("apns provider token: {e}"), None),
            };
            let mut req = self
                .http
                .post(url)
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", request.priority)
                .header("apns-expiration", request.expiration.to_string())
                .header("apns-id", &request.apns_id)
                .json(&request.body);
            if !request.collapse_id.is_empty() {
                req = req.header("apns-collapse-id", &request.collapse_id);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return transport_outcome("apns", &e),
            };
            let status = resp.status().as_u16();
            let after = retry_after(resp.headers().get(RETRY_AFTER));
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return transport_outcome("apns", &e),
            };
            let reason = serde_json::from_slice::<ApnsError>(&bytes)
                .map(|e| e.reason)
                .unwrap_or_default();
            match classify(status, &reason, after) {
                Some(outcome) => return outcome,
                None if refreshed => {
                    return Outcome::retry(format!("apns 403 {reason}"), after);
                }
                None => {
                    self.signer.reject(&jwt);
                    refreshed = true;
                }
            }
        }
    }
}

#[async_trait]
impl Provider for ApnsProvider {
    fn name(&self) -> &'static str {
        "apns"
    }

    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome> {
        // join_all keeps input order; the semaphore bounds what is actually in flight.
        futures::future::join_all(dispatches.iter().map(|d| self.send_one(d))).await
    }
}

/// What is sent for one dispatch, built once and reused if the request is retried.
struct ApnsRequest {
    priority: &'static str,
    expiration: i64,
    collapse_id: String,
    apns_id: String,
    body: Value,
}

impl ApnsRequest {
    fn new(dispatch: &Dispatch) -> Self {
        let envelope = &dispatch.envelope;
        let high = matches!(envelope.priority, Priority::High | Priority::Urgent);
        let mut alert = Map::new();
        if let Some(title) = &dispatch.title {
            alert.insert("title".into(), title.clone().into());
        }
        alert.insert("body".into(), dispatch.body.clone().into());
        Self {
            priority: if high { "10" } else { "5" },
            // 0: deliver once or not at all; APNs does not store the notification.
            expiration: envelope.expires_at.map_or(0, |t| t.timestamp().max(0)),
            collapse_id: super::collapse_id(&envelope.campaign_id).to_owned(),
            apns_id: dispatch.notification_id.hyphenated().to_string(),
            body: json!({
                "aps": {"alert": alert, "sound": "default"},
                "notification_id": dispatch.notification_id.to_string(),
                "campaign_id": envelope.campaign_id,
                "data": dispatch.data,
            }),
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
/// APNs' error body: `{"reason": "BadDeviceToken"}` (410 adds a `timestamp`).
#[derive(Deserialize, Default)]
struct ApnsError {
    #[serde(default)]
    reason: String,
}

/// Maps one APNs answer to an outcome; `None` means the provider token was refused and a new
/// one should be tried.
fn classify(status: u16, reason: &str, after: Option<Duration>) -> Option<Outcome> {
    let described = if reason.is_empty() {
        format!("apns {status}")
    } else {
        format!("apns {status} {reason}")
    };
    Some(match status {
        200..=299 => Outcome::Sent,
        410 => Outcome::invalid_token(described),
        400 if matches!(reason, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            Outcome::invalid_token(described)
        }
        403 if matches!(reason, "ExpiredProviderToken" | "InvalidProviderToken") => return None,
        429 | 500..=599 => Outcome::retry(described, after),
        _ => Outcome::failed(described),
    })
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The ES256 provider token, signed once and reused for [`TOKEN_REUSE`].
struct ProviderTokens {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    /// The current token and when it was signed. Signing is quick and synchronous, so a
    /// plain lock held while signing makes concurrent callers share one new token.
    current: parking_lot::Mutex<Option<(String, Instant)>>,
}

impl ProviderTokens {
    fn token(&self) -> Result<String, String> {
        let mut current = self.current.lock();
        if let Some((token, signed)) = current.as_ref() {
            if signed.elapsed() < TOKEN_REUSE {
                return Ok(token.clone());
            }
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "system clock is before 1970".to_owned())?
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ProviderClaims {
            iss: &self.team_id,
            iat,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign: {e}"))?;
        *current = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Drops the current token if it is still `rejected`, so that many requests refused
    /// together cause one new token, not one each (APNs throttles token updates).
    fn reject(&self, rejected: &str) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|(t, _)| t == rejected) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(classify(200, "", None), Some(Outcome::Sent));
        assert_eq!(
            classify(400, "DeviceTokenNotForTopic", None),
            Some(Outcome::invalid_token("apns 400 DeviceTokenNotForTopic"))
        );
        assert_eq!(
            classify(403, "BadCertificate", None),
            Some(Outcome::failed("apns 403 BadCertificate"))
        );
        assert_eq!(classify(403, "ExpiredProviderToken", None), None);
        assert_eq!(
            classify(502, "", None),
            Some(Outcome::retry("apns 502", None))
        );
    }
}
