//! Email over SMTP, with [lettre]'s pooled async transport.
//!
//! One message per dispatch: `From` the configured mailbox, `To` the recipient, the dispatch
//! title as `Subject`, an `X-Herald-Notification-Id` header (receivers and support staff match
//! a mail to its notification with it), and a `multipart/alternative` body with a text and an
//! HTML part when the template rendered HTML, a single `text/plain` part otherwise.
//!
//! SMTP replies map to outcomes the way RFC 5321 means them: a 5xx reply is permanent
//! (`Failed`, e.g. `smtp 550 5.1.1 mailbox unavailable`), a 4xx reply transient (`Retry`), and
//! anything that never got a reply (connection refused, timeout, TLS) is retried too.

use crate::provider::{record_request, Destination, Dispatch, Outcome, Provider};
use async_trait::async_trait;
use herald_core::config::EmailConfig;
use herald_core::{Error, Result};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const NAME: &str = "smtp";

/// The header naming the notification a mail carries.
pub const NOTIFICATION_ID_HEADER: &str = "X-Herald-Notification-Id";

/// Longest SMTP server text kept in a reason.
const MAX_REPLY_TEXT: usize = 120;

/// Sends email through one SMTP relay.
pub struct EmailProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl EmailProvider {
    /// Builds the transport from `cfg.smtp_url`, whose syntax is lettre's connection URL:
    ///
    /// - `smtp://host:port`: plain SMTP, no TLS at all (default port 25); what a local sink
    ///   such as `smtp://127.0.0.1:2525` needs. `?tls=none` says the same explicitly.
    /// - `smtp://host:587?tls=required`: STARTTLS, which must succeed (default port 587).
    /// - `smtp://host:587?tls=opportunistic`: STARTTLS when the server offers it.
    /// - `smtps://host:465`: TLS from the first byte (default port 465).
    /// - `user:password@` before the host authenticates (percent-encode special characters);
    ///   a path (`smtp://host/ehlo.example.com`) sets the name sent in `EHLO`.
    ///
    /// Connections are pooled (up to `concurrency` of them) and every SMTP command is bounded
    /// by `timeout_ms`. Errors never repeat the URL: it may hold a password.
    ///
    /// Must be called inside a Tokio runtime: the pool spawns its idle-connection reaper.
    pub fn new(cfg: &EmailConfig) -> Result<Self> {
        let url = cfg
            .smtp_url
            .as_ref()
            .ok_or_else(|| Error::invalid("push.email.smtp_url is not set"))?;
        let from: Mailbox = cfg.from.parse().map_err(|_| {
            Error::invalid("push.email.from is not a valid mailbox (`Name <address>` or `address`)")
        })?;
        let concurrency = cfg.limits.concurrency.max(1);
        let timeout = Duration::from_millis(cfg.limits.timeout_ms.max(1));
        // lettre's errors describe the scheme, the `tls` parameter or the URL grammar, never the
        // URL itself, so they are safe to pass on.
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url(url.expose()))
            .map_err(|e| {
                Error::invalid(format!("push.email.smtp_url is not a valid SMTP URL: {e}"))
            })?
            .timeout(Some(timeout))
            .pool_config(
                PoolConfig::new().max_size(u32::try_from(concurrency).unwrap_or(u32::MAX)),
            );
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::internal(
                "the email provider must be built inside a Tokio runtime",
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            permits: Arc::new(Semaphore::new(concurrency)),
            timeout,
        })
    }

    async fn send_one(&self, dispatch: &Dispatch) -> Outcome {
        let Destination::Email(address) = &dispatch.destination else {
            return Outcome::failed("smtp: destination is not an email address");
        };
        let Ok(to) = address.parse::<Mailbox>() else {
            return Outcome::failed("invalid address");
        };
        let message = match self.message(to, dispatch) {
            Ok(m) => m,
            Err(e) => return Outcome::failed(format!("smtp: cannot build message: {e}")),
        };

        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            // Only a closed semaphore fails, and nothing closes it.
            return Outcome::retry("smtp provider shut down", None);
        };
        let started = Instant::now();
        let transport = self.transport.clone();
        // The send runs in its own task and is left to finish when the timeout fires: dropping
        // it half-way would hand a pooled connection that is in the middle of a command (or of
        // the DATA section) to the next message. lettre's own per-command timeout ends it.
        let task = tokio::spawn(async move {
            let _permit = permit;
            transport.send(message).await
        });
        let outcome = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(Ok(_response))) => Outcome::Sent,
            Ok(Ok(Err(e))) => classify(&e),
            Ok(Err(_join)) => Outcome::retry("smtp send task failed", None),
            Err(_elapsed) => Outcome::retry("smtp timeout", None),
        };
        record_request(NAME, started, &outcome);
        outcome
    }

    fn message(&self, to: Mailbox, dispatch: &Dispatch) -> std::result::Result<Message, String> {
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(dispatch.title.clone().unwrap_or_default())
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
                dispatch.notification_id.to_string(),
            ));
        let built = match &dispatch.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                dispatch.body.clone(),
                html.clone(),
            )),
            None => builder.singlepart(SinglePart::plain(dispatch.body.clone())),
        };
        built.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Provider for EmailProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn send(&self, dispatches: &[Dispatch]) -> Vec<Outcome> {
        futures::future::join_all(dispatches.iter().map(|d| self.send_one(d))).await
    }
}

/// Maps a lettre error to an outcome.
fn classify(e: &lettre::transport::smtp::Error) -> Outcome {
    if let Some(code) = e.status() {
        let reason = reply_reason(&code.to_string(), e);
        // 530/534/535 answer AUTH: our credentials are wrong, not the recipient. Retrying lets
        // the sends reach the dead-letter queue, to be replayed once the config is fixed.
        let auth = matches!(code.to_string().as_str(), "530" | "534" | "535");
        if e.is_permanent() && !auth {
            return Outcome::failed(reason);
        }
        return Outcome::retry(reason, None);
    }
    let reason = if e.is_timeout() {
        "smtp timeout"
    } else if e.is_tls() {
        "smtp tls error"
    } else if e.is_client() {
        // STARTTLS required but not offered, no usable AUTH mechanism, ...: configuration.
        "smtp client error"
    } else {
        "smtp connection error"
    };
    tracing::debug!(provider = NAME, error = %e, "smtp send failed");
    Outcome::retry(reason, None)
}

/// `smtp <code> <server text>`, the text cut short and on one line.
fn reply_reason(code: &str, e: &lettre::transport::smtp::Error) -> String {
    let text = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let text: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_REPLY_TEXT)
        .collect();
    if text.is_empty() {
        format!("smtp {code}")
    } else {
        format!("smtp {code} {text}")
    }
}

/// lettre reads a `smtp://` URL without a `tls` parameter as unencrypted but rejects
/// `tls=none`, which Herald's configuration documents for a local sink: drop it.
fn lettre_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("tls=none"))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::Secret;

    fn cfg(url: &str, from: &str) -> EmailConfig {
        EmailConfig {
            smtp_url: Some(Secret::new(url)),
            from: from.into(),
            ..EmailConfig::default()
        }
    }

    #[test]
    fn tls_none_is_dropped_from_the_url() {
        assert_eq!(lettre_url("smtp://h:25?tls=none"), "smtp://h:25");
        assert_eq!(
            lettre_url("smtp://h:25?tls=none&x=1"),
            "smtp://h:25?x=1".to_string()
        );
        assert_eq!(
            lettre_url("smtp://h:587?tls=required"),
            "smtp://h:587?tls=required"
        );
        assert_eq!(lettre_url("smtps://h"), "smtps://h");
    }

    #[tokio::test]
    async fn plain_starttls_and_wrapped_urls_are_accepted() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://127.0.0.1:2525?tls=none",
            "smtp://user:pa%24s@mail.example.com:587?tls=required",
            "smtp://mail.example.com?tls=opportunistic",
            "smtps://user:pass@mail.example.com",
        ] {
            assert!(
                EmailProvider::new(&cfg(url, "Herald <herald@example.com>")).is_ok(),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_url_is_rejected_without_repeating_it() {
        for url in [
            "http://user:hunter2@host",
            "smtp://user:hunter2@host?tls=maybe",
            "::",
        ] {
            let err = EmailProvider::new(&cfg(url, "herald@example.com"))
                .err()
                .expect("rejected");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let err = EmailProvider::new(&EmailConfig::default())
            .err()
            .expect("rejected");
        assert!(err.to_string().contains("smtp_url"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_from_address_is_rejected() {
        let err = EmailProvider::new(&cfg("smtp://127.0.0.1:2525", "not an address"))
            .err()
            .expect("rejected");
        assert!(err.to_string().contains("push.email.from"), "{err}");
    }
}
