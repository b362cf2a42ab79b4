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
    /// Secrets a rotation replaced, still signing every post (beside `secret`) until they
    /// expire, so a receiver can move to the new secret meanwhile. Never shown by the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A secret replaced by [`Webhook::rotate`], valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: Secret,
    pub expires_at: DateTime<Utc>,
}

/// How many replaced secrets sign at once at most (the oldest goes first).
pub const MAX_PREVIOUS_SECRETS: usize = 2;

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
        let secret = self.secret.expose();
        let n = secret.chars().count();
        if !(16..=256).contains(&n) {
            return Err(Error::invalid("secret must be 16 to 256 characters"));
        }
        if let Some(encoded) = secret.strip_prefix(STANDARD_SECRET_PREFIX) {
            let key = decode_standard_key(encoded).ok_or_else(|| {
                Error::invalid("a `whsec_` secret must be followed by base64 of 24 to 64 bytes")
            })?;
            if !(24..=64).contains(&key.len()) {
                return Err(Error::invalid(
                    "a `whsec_` secret must be followed by base64 of 24 to 64 bytes",
                ));
            }
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

/// The prefix of a Standard Webhooks secret (`whsec_<base64 of the key>`).
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

fn decode_standard_key(encoded: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let trimmed = encoded.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .ok()
}

impl Webhook {
    /// The HMAC key of the Standard Webhooks signature (`webhook-signature`): the decoded
    /// bytes of a `whsec_<base64>` secret, or the secret's own bytes for one of another form
    /// (what the `Herald-Signature` header is always keyed with).
    pub fn standard_key(&self) -> Vec<u8> {
        standard_key(&self.secret)
    }

    /// The secrets that sign a post made at `now`: the current one first, then those a
    /// rotation replaced that have not expired.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&Secret> {
        std::iter::once(&self.secret)
            .chain(
                self.previous_secrets
                    .iter()
                    .filter(|p| p.expires_at > now)
                    .map(|p| &p.secret),
            )
            .collect()
    }

    /// Makes `new` the secret; the current one keeps signing beside it until `keep_until`.
    /// Expired replaced secrets are dropped, and at most [`MAX_PREVIOUS_SECRETS`] are kept
    /// (the newest). A `keep_until` not after `now` is an emergency rotation (a leaked
    /// secret): every replaced secret stops signing at once.
    pub fn rotate(&mut self, new: Secret, now: DateTime<Utc>, keep_until: DateTime<Utc>) {
        let old = std::mem::replace(&mut self.secret, new);
        self.previous_secrets
            .retain(|p| p.expires_at > now && keep_until > now);
        if keep_until > now {
            self.previous_secrets.insert(
                0,
                PreviousSecret {
                    secret: old,
                    expires_at: keep_until,
                },
            );
        }
        self.previous_secrets.truncate(MAX_PREVIOUS_SECRETS);
        self.updated_at = now;
    }

    /// A new secret in the Standard Webhooks form: `whsec_` and the base64 of 32 random bytes.
    pub fn generate_secret() -> Secret {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        Secret::new(format!(
            "{STANDARD_SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ))
    }
}

/// The HMAC key of the Standard Webhooks signature for `secret` (see [`Webhook::standard_key`]).
pub fn standard_key(secret: &Secret) -> Vec<u8> {
    let secret = secret.expose();
    secret
        .strip_prefix(STANDARD_SECRET_PREFIX)
        .and_then(decode_standard_key)
        .unwrap_or_else(|| secret.as_bytes().to_vec())
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
    /// When the providers had answered (or, for a message that expired, when it was seen).
    pub at: DateTime<Utc>,
    /// Wall time of the message's sends in milliseconds: the provider calls (they run at
    /// once), with the rate-limit pacing and concurrency waits of their lanes.
    #[serde(default)]
    pub provider_ms: u64,
    /// Of `failed`: recipients with nothing to send to (no device, no address) or whose
    /// message expired before delivery; not the provider's doing.
    #[serde(default)]
    pub unreachable: u64,
    /// When the message was due, if not at once: the end of quiet hours, a retry's backoff,
    /// or the time a dead letter was replayed. Latency is measured from here, not from the
    /// campaign start, for such a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// Pushes not sent because their recipient read or dismissed the item before the message
    /// was due ([`crate::topics::ChannelMessage::unless_read`]).
    #[serde(default)]
    pub suppressed_online: u64,
    /// Sends not made because the campaign was retracted before the message was handled.
    #[serde(default)]
    pub cancelled: u64,
    /// What became of each recipient of the message (one per item).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<RecipientOutcome>,
    /// The report of pushes that replaced pushes already sent (a revision of the campaign's
    /// content): logged with the channel's traffic, but neither a campaign counter nor a
    /// recipient's record changes (the recipient was sent to already).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replacement: bool,
}

/// What became of one recipient on one channel message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// The provider took at least one send (a device, the address, a subscriber).
    Sent,
    /// Every send failed for good (invalid token or address, rejected, nothing to send to,
    /// expired).
    Failed,
    /// Some sends failed for a while and are tried again.
    Retrying,
    /// Out of attempts, or its provider is not configured: in the dead-letter queue.
    DeadLettered,
    /// Not sent: the recipient read or dismissed the item first (presence-aware push).
    SuppressedOnline,
    /// Not sent: the campaign was retracted first.
    Cancelled,
}

impl RecipientStatus {
    /// Its name, as serialised and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Sent => "sent",
            RecipientStatus::Failed => "failed",
            RecipientStatus::Retrying => "retrying",
            RecipientStatus::DeadLettered => "dead_lettered",
            RecipientStatus::SuppressedOnline => "suppressed_online",
            RecipientStatus::Cancelled => "cancelled",
        }
    }
}

/// One recipient in a [`DeliveryReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientOutcome {
    pub user_id: String,
    pub status: RecipientStatus,
    /// Sends the provider took (devices for push).
    #[serde(default)]
    pub sent: u32,
    /// The first failure's reason, if any send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_id: Option<String>,
}

/// Added to the attempt of a replayed dead letter's report: a replay comes after every attempt
/// of the message it replays.
pub const REPLAY_RANK: u32 = 1_000_000;

/// The latest outcome of a recipient on a campaign's channel, as the delivery store keeps it
/// (for `GET /v1/campaigns/{id}/recipients/{user_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    pub campaign_id: String,
    pub user_id: String,
    pub channel: Channel,
    pub status: RecipientStatus,
    pub sent: u32,
    pub reason: Option<String>,
    pub dead_letter_id: Option<String>,
    /// The order of the report it comes from: the channel message's attempt, and for a
    /// replayed dead letter [`REPLAY_RANK`] more. A record of a later one replaces an earlier
    /// one, except that a recipient sent to stays sent (a retry carries only the failed
    /// devices); `sent` adds up over attempts.
    pub attempt: u32,
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
            previous_secrets: Vec::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_rotated_secret_signs_beside_the_new_one_until_it_expires() {
        let mut h = hook("https://example.com", "first-secret-0123456789", None);
        let t0 = Utc::now();
        let hour = chrono::Duration::hours(1);
        h.rotate(Secret::new("second-secret-0123456789"), t0, t0 + hour);
        fn exposed(h: &Webhook, at: DateTime<Utc>) -> Vec<String> {
            h.signing_secrets(at)
                .into_iter()
                .map(|s| s.expose().to_owned())
                .collect()
        }
        assert_eq!(
            exposed(&h, t0),
            ["second-secret-0123456789", "first-secret-0123456789"]
        );
        assert_eq!(exposed(&h, t0 + hour), ["second-secret-0123456789"]);
        // Two more rotations within the hour: the newest two replaced ones are kept.
        h.rotate(Secret::new("third-secret-0123456789"), t0, t0 + hour);
        h.rotate(Secret::new("fourth-secret-0123456789"), t0, t0 + hour * 2);
        assert_eq!(
            exposed(&h, t0),
            [
                "fourth-secret-0123456789",
                "third-secret-0123456789",
                "second-secret-0123456789"
            ]
        );
        assert_eq!(
            exposed(&h, t0 + hour),
            ["fourth-secret-0123456789", "third-secret-0123456789"]
        );
        // A rotation without a grace period stops every replaced secret at once.
        h.rotate(Secret::new("fifth-secret-0123456789"), t0, t0);
        assert_eq!(h.previous_secrets, vec![]);
        assert_eq!(exposed(&h, t0), ["fifth-secret-0123456789"]);
        // Stored with the subscription, read back the same.
        h.rotate(Secret::new("sixth-secret-0123456789"), t0, t0 + hour);
        let back: Webhook = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn a_whsec_secret_is_keyed_by_its_decoded_bytes_and_must_decode() {
        // The Standard Webhooks example secret.
        let std = hook(
            "https://example.com",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            None,
        );
        assert!(std.validate().is_ok());
        assert_eq!(std.standard_key().len(), 24);
        assert_eq!(&std.standard_key()[..3], &[0x31, 0xf2, 0x90]);
        let raw = hook("https://example.com", "0123456789abcdef-raw", None);
        assert_eq!(raw.standard_key(), b"0123456789abcdef-raw".to_vec());
        for bad in ["whsec_not*base64*at*all!!", "whsec_c2hvcnQga2V5IGJ5dGVz"] {
            let e = hook("https://example.com", bad, None)
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("whsec_"), "{bad}: {e}");
        }
        let generated = Webhook::generate_secret();
        assert!(generated.expose().starts_with("whsec_"));
        let g = hook("https://example.com", generated.expose(), None);
        assert!(g.validate().is_ok());
        assert_eq!(g.standard_key().len(), 32);
        assert_ne!(Webhook::generate_secret(), generated);
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
