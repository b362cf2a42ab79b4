//! The SMTP provider against a local SMTP sink.

#[path = "support/dispatch.rs"]
mod dispatch;
#[path = "support/fake_server.rs"]
mod fake_server;
#[path = "support/smtp_sink.rs"]
mod smtp_sink;

use dispatch::{
    assert_all_sent, assert_concurrent_within, assert_timed_out, assert_unreachable, envelope,
    labels, limits, send_from_two_callers, send_one,
};
use herald_core::config::{EmailConfig, Secret};
use herald_core::model::{Channel, Priority};
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use herald_push::providers::email::EmailProvider;
use smtp_sink::SmtpSink;
use std::sync::Arc;
use std::time::Instant;

fn config(url: &str, concurrency: usize, timeout_ms: u64) -> EmailConfig {
    EmailConfig {
        smtp_url: Some(Secret::new(url)),
        from: "Herald <herald@example.com>".into(),
        limits: limits(concurrency, timeout_ms),
    }
}

fn provider(url: &str) -> EmailProvider {
    EmailProvider::new(&config(url, 4, 5_000)).expect("email provider")
}

fn dispatch(to: &str, html: Option<&str>) -> Dispatch {
    let envelope = Arc::new(Envelope {
        category: Some("billing".into()),
        ..envelope(Channel::Email, Priority::Normal)
    });
    Dispatch {
        title: Some("Your invoice is ready".into()),
        html: html.map(str::to_owned),
        ..dispatch::to(
            &envelope,
            Destination::Email(to.into()),
            "Invoice 42 is ready to download.",
        )
    }
}

/// The sink refuses a text-only message to `to` with `want`, and keeps nothing.
async fn assert_refused(to: &str, want: Outcome) {
    let sink = SmtpSink::start().await;

    let outcome = send_one(&provider(&sink.url()), dispatch(to, None)).await;

    assert_eq!(outcome, want);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn a_message_with_html_arrives_as_multipart_alternative() {
    let sink = SmtpSink::start().await;
    let email = provider(&sink.url());
    let d = dispatch(
        "alice@example.com",
        Some("<p>Invoice <b>42</b> is ready.</p>"),
    );

    assert_eq!(
        email.send(std::slice::from_ref(&d)).await,
        vec![Outcome::Sent]
    );

    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "herald@example.com");
    assert_eq!(m.recipients, vec!["alice@example.com".to_string()]);
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Your invoice is ready")
    );
    assert_eq!(
        m.header("X-Herald-Notification-Id"),
        Some(d.notification_id.to_string())
    );
    assert!(m.header("From").unwrap().contains("herald@example.com"));
    assert!(m.header("To").unwrap().contains("alice@example.com"));
    let content_type = m.header("Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/alternative"),
        "{content_type}"
    );
    let body = m.body();
    let plain = body.find("text/plain").expect("a text/plain part");
    let html = body.find("text/html").expect("a text/html part");
    assert!(plain < html, "the preferred (HTML) part comes last");
    assert!(body.contains("Invoice 42 is ready to download."), "{body}");
    assert!(
        body.contains("<p>Invoice <b>42</b> is ready.</p>"),
        "{body}"
    );
}

#[tokio::test]
async fn a_text_only_message_is_a_single_plain_part() {
    let sink = SmtpSink::start().await;
    let email = provider(&sink.url());

    let outcomes = email.send(&[dispatch("bob@example.com", None)]).await;

    assert_eq!(outcomes, vec![Outcome::Sent]);
    let m = &sink.messages()[0];
    let content_type = m.header("Content-Type").unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(!m.data.contains("multipart"), "{}", m.data);
    assert!(!m.data.contains("text/html"), "{}", m.data);
    assert_eq!(m.body().trim_end(), "Invoice 42 is ready to download.");
}

#[tokio::test]
async fn non_ascii_text_is_encoded_for_a_server_without_8bitmime() {
    let sink = SmtpSink::start().await;
    let email = provider(&sink.url());
    let mut d = dispatch("dora@example.com", Some("<p>Grüße, café ☕</p>"));
    d.title = Some("Reçu n°42".into());
    d.body = "Grüße, café ☕".into();

    assert_eq!(email.send(&[d]).await, vec![Outcome::Sent]);

    let m = &sink.messages()[0];
    assert!(m.data.is_ascii(), "{}", m.data);
    let subject = m.header("Subject").unwrap();
    assert!(subject.starts_with("=?utf-8?"), "{subject}");
}

#[tokio::test]
async fn the_tls_none_url_of_the_config_docs_reaches_a_plain_sink() {
    let sink = SmtpSink::start().await;
    let email = provider(&format!("{}?tls=none", sink.url()));

    let outcomes = email.send(&[dispatch("carol@example.com", None)]).await;

    assert_eq!(outcomes, vec![Outcome::Sent]);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_rejected_mailbox_fails_without_retry() {
    let want = Outcome::failed("smtp 550 5.1.1 mailbox unavailable");
    assert_refused("reject.me@example.com", want).await;
}

#[tokio::test]
async fn a_busy_mailbox_is_retried() {
    let want = Outcome::retry("smtp 451 4.3.0 try again later", None);
    assert_refused("busy@example.com", want).await;
}

#[tokio::test]
async fn an_unparsable_address_fails_as_invalid() {
    let sink = SmtpSink::start().await;
    let email = provider(&sink.url());

    let outcomes = email.send(&[dispatch("not an address", None)]).await;

    assert_eq!(outcomes, vec![Outcome::failed("invalid address")]);
    assert_eq!(sink.sessions(), 0, "nothing was sent");
}

#[tokio::test]
async fn a_server_that_is_not_listening_is_retried() {
    let email = provider(&format!("smtp://{}", fake_server::closed_addr()));

    assert_unreachable(&email, dispatch("alice@example.com", None)).await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retried() {
    // Accepts connections but never sends its greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let email = EmailProvider::new(&config(&format!("smtp://{addr}"), 4, 300)).unwrap();

    assert_timed_out(&email, dispatch("alice@example.com", None)).await;
    held.abort();
}

#[tokio::test]
async fn outcomes_of_a_mixed_group_come_back_in_order() {
    let sink = SmtpSink::start().await;
    let email = provider(&sink.url());
    let mut wrong = dispatch("ignored@example.com", None);
    wrong.destination = Destination::Phone("+15550001111".into());
    let group = vec![
        dispatch("slow.first@example.com", Some("<p>hi</p>")),
        dispatch("reject@example.com", None),
        dispatch("busy@example.com", None),
        dispatch("nope", None),
        wrong,
        dispatch("last@example.com", None),
    ];

    let outcomes = email.send(&group).await;

    assert_eq!(
        labels(&outcomes),
        ["sent", "failed", "retry", "failed", "failed", "sent"]
    );
    assert_eq!(outcomes[3], Outcome::failed("invalid address"));
    let mut delivered: Vec<String> = sink
        .messages()
        .into_iter()
        .flat_map(|m| m.recipients)
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["last@example.com", "slow.first@example.com"]);
}

#[tokio::test]
async fn concurrency_is_limited_across_callers() {
    let sink = SmtpSink::start().await;
    let email = EmailProvider::new(&config(&sink.url(), 2, 5_000)).unwrap();
    let group: Vec<Dispatch> = (0..3)
        .map(|i| dispatch(&format!("slow{i}@example.com"), None))
        .collect();

    let started = Instant::now();
    let outcomes = send_from_two_callers(&email, &group).await;

    assert_eq!(outcomes.len(), 6);
    assert_all_sent(&outcomes);
    assert_eq!(sink.messages().len(), 6);
    // Two at a time, never more, and both permits used.
    assert_concurrent_within(sink.max_in_flight(), 2);
    // Six slow messages, two at a time: at least three rounds of the sink's delay.
    assert!(started.elapsed() >= smtp_sink::SLOW_DELAY * 3);
}
