//! What the push gateway keeps and reports: webhook subscriptions, dead letters and the
//! per-message delivery reports published on [`crate::topics::RESULTS`].

use crate::config::Secret;
use crate::model::{validate_category, Channel};
use crate::topics::ChannelMessage;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An HTTP endpoint subscribed to notifications (SNS-style): every notification of the webhook
/// channel whose category matches is POSTed to `url`, signed with `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// HMAC-SHA256 key of the signature header; never shown back by the API.
    pub secret: Secret,
    /// Categories delivered; `None` means every category (and uncategorised notifications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    /// Whether a notification of `category` goes to this subscriber.
    pub fn wants(&self, category: Option<&str>) -> bool {
        match (&self.categories, category) {
            (None, _) => true,
            (Some(list), Some(c)) => list.iter().any(|x| x == c),
            (Some(_), None) => false,
        }
    }

    /// Checks what a client sent: an absolute http(s) URL, a secret of 16 to 256 characters,
    /// valid category names.
    pub fn validate(&self) -> Result<()> {
        crate::ids::validate_key("webhook id", &self.id)?;
        let url = self.url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| Error::invalid("url must be an absolute http:// or https:// URL"))?;
        if rest.is_empty() || rest.starts_with('/') || url.len() > 2048 || url.contains(' ') {
            return Err(Error::invalid(
                "url must name a host and be at most 2048 characters without spaces",
            ));
        }
        let n = self.secret.expose().chars().count();
        if !(16..=256).contains(&n) {
            return Err(Error::invalid("secret must be 16 to 256 characters"));
        }
        if let Some(categories) = &self.categories {
            if categories.is_empty() {
                return Err(Error::invalid(
                    "categories must list at least one category, or be left out for all",
                ));
            }
            for c in categories {
                validate_category(c)?;
            }
        }
        Ok(())
    }
}

/// Sends that exhausted their attempts (or whose provider is not configured), kept for an
/// admin to list and replay. `message` holds exactly the recipients (and, for push, the device
/// tokens) that were not delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Time-ordered (UUIDv7) id.
    pub id: String,
    pub channel: Channel,
    pub campaign_id: String,
    /// The last error.
    pub reason: String,
    pub attempts: u32,
    /// How many sends (device tokens, addresses, subscriber posts) it holds.
    pub sends: u64,
    pub message: ChannelMessage,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Outcome of one channel message, published on [`crate::topics::RESULTS`]: the delivery log
/// the campaign counters and any other consumer read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// [`ChannelMessage::delivery_key`] of the message: counters apply once per key.
    pub key: String,
    pub campaign_id: String,
    pub channel: Channel,
    pub attempt: u32,
    /// Sends accepted by the provider.
    pub sent: u64,
    /// Sends that failed for good: invalid token or address, rejected, or dead-lettered.
    pub failed: u64,
    /// Sends scheduled for another attempt (reported again by the retry's own report).
    pub retried: u64,
    /// Device tokens the provider reported invalid, now deleted.
    pub invalid_tokens: u64,
    /// Sends put on the dead-letter queue.
    pub dead_lettered: u64,
    /// Per-send failures (at most the first 100), for the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SendFailure>,
    pub at: DateTime<Utc>,
}

/// One failed send in a [`DeliveryReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendFailure {
    pub user_id: String,
    pub notification_id: uuid::Uuid,
    /// Device token, address or webhook id.
    pub target: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str, secret: &str, categories: Option<Vec<&str>>) -> Webhook {
        Webhook {
            id: "crm".into(),
            url: url.into(),
            secret: Secret::new(secret),
            categories: categories.map(|c| c.into_iter().map(String::from).collect()),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_webhook_needs_an_http_url_a_long_secret_and_valid_categories() {
        assert!(hook("https://example.com/hook", "0123456789abcdef", None)
            .validate()
            .is_ok());
        assert!(hook("ftp://example.com", "0123456789abcdef", None)
            .validate()
            .is_err());
        assert!(hook("https://", "0123456789abcdef", None)
            .validate()
            .is_err());
        assert!(hook("https://example.com", "short", None)
            .validate()
            .is_err());
        assert!(
            hook("https://example.com", "0123456789abcdef", Some(vec![]))
                .validate()
                .is_err()
        );
        assert!(
            hook("https://example.com", "0123456789abcdef", Some(vec!["a b"]))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_webhook_without_categories_wants_everything_and_one_with_them_only_those() {
        let all = hook("https://x.io", "0123456789abcdef", None);
        assert!(all.wants(None) && all.wants(Some("marketing")));
        let some = hook("https://x.io", "0123456789abcdef", Some(vec!["orders"]));
        assert!(some.wants(Some("orders")));
        assert!(!some.wants(Some("marketing")));
        assert!(!some.wants(None));
    }
}
