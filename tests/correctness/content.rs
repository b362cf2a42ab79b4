//! What users' data may do to what Herald sends: an attribute or event value reaches an HTML
//! email escaped, and no metric grows a label per campaign.

use crate::harness::*;
use crate::smtp_sink::SmtpSink;
use herald_core::config::Secret;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_script_in_a_user_attribute_reaches_the_html_email_escaped_and_the_text_part_as_written()
{
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = spawn(Options {
        configure: Box::new(move |c| {
            c.push.email.smtp_url = Some(Secret::new(url));
        }),
        ..Options::default()
    })
    .await;
    app.ok(
        Method::PUT,
        "/v1/users/mallory",
        json!({"email": "mallory@example.com",
               "attributes": {"name": "<script>alert(1)</script>"}}),
    )
    .await;
    app.ok(
        Method::PUT,
        "/v1/templates/welcome",
        json!({"email": {
            "subject": "Welcome {{ user.name }}",
            "text": "Hi {{ user.name }}, order {{ data.order }}",
            "html": "<p>Hi {{ user.name }}, order {{ data.order }}</p>",
        }}),
    )
    .await;
    let id = app
        .campaign(json!({
            "audience": {"user": "mallory"},
            "template": "welcome",
            "channels": ["email"],
            "priority": "high",
            "data": {"order": "<img src=x onerror=alert(2)>"},
        }))
        .await;
    let got = sink.wait_for(1, Duration::from_secs(15)).await;
    let body = got[0].body().to_owned();
    let html = &body[body.find("text/html").expect("an HTML part")..];
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(html.contains("&lt;img"), "{html}");
    let text = &body[..body.find("text/html").unwrap()];
    assert!(text.contains("Hi <script>alert(1)</script>"), "{text}");
    eventually(
        "the email counted sent",
        Duration::from_secs(15),
        || async { app.deliveries(&id, "email").await == (1, 1, 0) },
    )
    .await;

    let (_, metrics) = app.call(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(!metrics.contains(&id), "no campaign id in a metric label");
    assert!(
        metrics.contains(r#"herald_fanout_campaigns_cutting{strategy="direct"} 0"#),
        "{metrics}"
    );
}
