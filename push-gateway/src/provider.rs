//! The provider interface: what a channel consumer hands a provider client (a group of
//! [`Dispatch`]es, one per device token, address or subscriber) and what it gets back (one
//! [`Outcome`] per dispatch). Providers speak their real APIs; the consumer decides what an
//! outcome means for retries, dead letters, tokens and counters.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::delivery::Webhook;
use herald_core::model::{Channel, Platform, Priority};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What all the dispatches of one channel message share.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub campaign_id: String,
    pub channel: Channel,
    pub category: Option<String>,
    pub priority: Priority,
    /// Not worth delivering after this (APNs `apns-expiration`, FCM `ttl`).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Where one send goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Device { platform: Platform, token: String },
    Email(String),
    Phone(String),
    Webhook(Arc<Webhook>),
}

impl Destination {
    /// The device token, address, number or webhook id: what retries and dead letters name.
    pub fn target(&self) -> &str {
        match self {
            Destination::Device { token, .. } => token,
            Destination::Email(a) | Destination::Phone(a) => a,
            Destination::Webhook(w) => &w.id,
        }
    }
}

/// One send to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub envelope: Arc<Envelope>,
    pub user_id: String,
    pub notification_id: uuid::Uuid,
    pub destination: Destination,
    /// Push title, email subject.
    pub title: Option<String>,
    /// Push body, email text part, SMS text, webhook body (JSON text from the template).
    pub body: String,
    /// Email HTML part.
    pub html: Option<String>,
    /// The campaign's data.
    pub data: serde_json::Value,
}

/// What became of one dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider.
    Sent,
    /// The device token is dead (FCM `UNREGISTERED`, APNs `BadDeviceToken` / 410
    /// `Unregistered`): the token is deleted and the send counted failed.
    InvalidToken { reason: String },
    /// A transient failure (timeout, connection error, 5xx, `UNAVAILABLE`, 429): try again,
    /// not before `after` when the provider said when (`Retry-After`).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// A permanent failure (rejected payload or address): counted failed, not retried.
    Failed { reason: String },
    /// The provider is not configured: the send goes to the dead-letter queue, to be replayed
    /// once it is.
    NotConfigured { reason: String },
}

impl Outcome {
    pub fn retry(reason: impl Into<String>, after: Option<Duration>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            after,
        }
    }
    pub fn failed(reason: impl Into<String>) -> Self {
        Outcome::Failed {
            reason: reason.into(),
        }
    }
    pub fn invalid_token(reason: impl Into<String>) -> Self {
        Outcome::InvalidToken {
            reason: reason.into(),
        }
    }

    /// The label of this outcome in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::InvalidToken { .. } => "invalid_token",
            Outcome::Retry { .. } => "retry",
            Outcome::Failed { .. } => "failed",
            Outcome::NotConfigured { .. } => "not_configured",
        }
    }
}

/// A client of one provider's API.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's name in metrics and logs: `fcm`, `apns`, `smtp`, `sms`, `webhook`.
    fn name(&self) -> &'static str;

    /// Sends every dispatch, concurrently up to the provider's `concurrency` (a semaphore
    /// shared by all callers), each request bounded by the provider's timeout. Returns one
    /// outcome per dispatch, in order. Never fails as a whole: a transport error is a
    /// `Retry` of the sends it hit.
    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome>;
}

/// Records one provider request: `herald_push_request_seconds{provider, outcome}`.
pub fn record_request(provider: &'static str, started: Instant, outcome: &Outcome) {
    metrics::histogram!(
        "herald_push_request_seconds",
        "provider" => provider,
        "outcome" => outcome.label()
    )
    .record(started.elapsed().as_secs_f64());
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP date.
pub fn retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let v = value?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("120"))),
            Some(Duration::from_secs(120))
        );
        let later = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = retry_after(Some(&HeaderValue::from_str(&later).unwrap())).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(retry_after(Some(&HeaderValue::from_static("soon"))), None);
        assert_eq!(retry_after(None), None);
    }
}
