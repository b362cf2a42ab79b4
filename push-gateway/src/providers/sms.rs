//! SMS over a Twilio-style HTTP API: one form POST per message to
//! `{endpoint}/2010-04-01/Accounts/{account_sid}/Messages.json` with the fields `To`, `From` and
//! `Body`, authenticated with HTTP basic auth `account_sid:auth_token`.
//!
//! Replies map to outcomes as Twilio documents them: 200/201 is accepted; 429 and 5xx are
//! retried after `Retry-After`; 401/403 (bad or revoked credentials) are retried too, so the
//! sends end in the dead-letter queue and can be replayed once the credentials are fixed; a 400
//! carries a Twilio error code (`21211` invalid `To` number, `21610` unsubscribed recipient, ...)
//! and fails for good, like any other 4xx.

use crate::provider::{record_request, retry_after, Destination, Dispatch, Outcome, Provider};
use async_trait::async_trait;
use herald_core::config::{Secret, SmsConfig};
use herald_core::{Error, Result};
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const NAME: &str = "sms";

/// Longest provider error message kept in a reason.
const MAX_MESSAGE: usize = 120;

/// Sends text messages through a Twilio-compatible API.
pub struct SmsProvider {
    client: reqwest::Client,
    /// `{endpoint}/2010-04-01/Accounts/{account_sid}/Messages.json`.
    url: String,
    account_sid: String,
    auth_token: Secret,
    from: String,
    permits: Arc<Semaphore>,
}

/// The error body of a Twilio API reply.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: Option<i64>,
    message: Option<String>,
}

impl SmsProvider {
    /// Needs `push.sms.account_sid`, `push.sms.auth_token` and `push.sms.from`.
    pub fn new(cfg: &SmsConfig) -> Result<Self> {
        let missing = |key: &str| Error::invalid(format!("{key} must be set to send SMS"));
        let account_sid = cfg
            .account_sid
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| missing("push.sms.account_sid"))?;
        let auth_token = cfg
            .auth_token
            .clone()
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| missing("push.sms.auth_token"))?;
        let from = cfg
            .from
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| missing("push.sms.from"))?;
        // The SID lands in the URL path: keep it to what Twilio issues (`AC` + hex).
        if !account_sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid(
                "push.sms.account_sid must be letters and digits only",
            ));
        }
        let endpoint = cfg.endpoint.trim_end_matches('/');
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(Error::invalid(
                "push.sms.endpoint must be an http:// or https:// URL",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.limits.timeout_ms.max(1)))
            .user_agent("Herald/1")
            .build()
            .map_err(|e| Error::internal(format!("sms http client: {e}")))?;
        Ok(Self {
            client,
            url: format!("{endpoint}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            account_sid,
            auth_token,
            from,
            permits: Arc::new(Semaphore::new(cfg.limits.concurrency.max(1))),
        })
    }

    async fn send_one(&self, dispatch: &Dispatch) -> Outcome {
        let Destination::Phone(to) = &dispatch.destination else {
            return Outcome::failed("sms: destination is not a phone number");
        };
        let Ok(_permit) = self.permits.acquire().await else {
            // Only a closed semaphore fails, and nothing closes it.
            return Outcome::retry("sms provider shut down", None);
        };
        let started = Instant::now();
        let outcome = self.post(to, &dispatch.body).await;
        record_request(NAME, started, &outcome);
        outcome
    }

    async fn post(&self, to: &str, body: &str) -> Outcome {
        let sent = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&[("To", to), ("From", self.from.as_str()), ("Body", body)])
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return transport_error(e),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        let after = retry_after(response.headers().get(RETRY_AFTER));
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Outcome::retry(format!("sms {}", status.as_u16()), after);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Outcome::retry(format!("sms {} unauthorized", status.as_u16()), after);
        }
        // A body that fails to arrive within the timeout leaves just the status.
        let error = response.json::<ApiError>().await.ok();
        Outcome::failed(failure_reason(status, error))
    }
}

#[async_trait]
impl Provider for SmsProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome> {
        futures::future::join_all(dispatches.iter().map(|d| self.send_one(d))).await
    }
}

/// `sms <code> <message>` from Twilio's error body, `sms <status>` without one.
fn failure_reason(status: StatusCode, error: Option<ApiError>) -> String {
    let Some(ApiError { code, message }) = error else {
        return format!("sms {}", status.as_u16());
    };
    let message: String = message
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_MESSAGE)
        .collect();
    match (code, message.is_empty()) {
        (Some(code), false) => format!("sms {code} {message}"),
        (Some(code), true) => format!("sms {code}"),
        (None, false) => format!("sms {} {message}", status.as_u16()),
        (None, true) => format!("sms {}", status.as_u16()),
    }
}

/// A request that got no reply is retried. reqwest's messages carry the URL (with the account
/// SID), so the reason is only the kind of failure.
fn transport_error(e: reqwest::Error) -> Outcome {
    let reason = if e.is_timeout() {
        "sms timeout"
    } else if e.is_connect() {
        "sms connection error"
    } else {
        "sms transport error"
    };
    tracing::debug!(provider = NAME, error = %e.without_url(), "sms request failed");
    Outcome::retry(reason, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> SmsConfig {
        SmsConfig {
            account_sid: Some("AC123".into()),
            auth_token: Some(Secret::new("token")),
            from: Some("+15550000000".into()),
            ..SmsConfig::default()
        }
    }

    #[test]
    fn each_missing_key_is_named() {
        let mut cfg = configured();
        cfg.account_sid = None;
        let err = SmsProvider::new(&cfg).err().expect("rejected");
        assert!(err.to_string().contains("push.sms.account_sid"), "{err}");

        let mut cfg = configured();
        cfg.auth_token = None;
        let err = SmsProvider::new(&cfg).err().expect("rejected");
        assert!(err.to_string().contains("push.sms.auth_token"), "{err}");

        let mut cfg = configured();
        cfg.from = None;
        let err = SmsProvider::new(&cfg).err().expect("rejected");
        assert!(err.to_string().contains("push.sms.from"), "{err}");

        assert!(SmsProvider::new(&configured()).is_ok());
    }

    #[test]
    fn the_messages_url_follows_twilio() {
        let mut cfg = configured();
        cfg.endpoint = "http://127.0.0.1:9/".into();
        let sms = SmsProvider::new(&cfg).unwrap();
        assert_eq!(
            sms.url,
            "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Messages.json"
        );
    }

    #[test]
    fn failure_reasons_carry_the_twilio_code() {
        let e = ApiError {
            code: Some(21211),
            message: Some("The 'To' number  is not\na valid phone number.".into()),
        };
        assert_eq!(
            failure_reason(StatusCode::BAD_REQUEST, Some(e)),
            "sms 21211 The 'To' number is not a valid phone number."
        );
        assert_eq!(failure_reason(StatusCode::NOT_FOUND, None), "sms 404");
    }
}
