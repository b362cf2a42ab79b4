//! Templates are user content: their work, nesting and output are bounded. What exceeds a
//! limit whatever the data is refused when stored; what fails for some recipients' data fails
//! for those recipients only, counted with a sample of reasons; a batch that keeps failing is
//! given up after its attempts, so its campaign still ends.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn templates_that_exceed_a_limit_whatever_the_data_are_refused_and_change_nothing() {
    let app = spawn(Options::default()).await;
    let cases = [
        (
            "{% for a in range(1000) %}{% for b in range(1000) %}{{ a }}{% endfor %}{% endfor %}",
            "template instructions",
        ),
        (r#"{{ "x" * 100000000 }}"#, "renders more than 131072 bytes"),
    ];
    for (body, why) in cases {
        let (s, b) = app
            .call(
                Method::PUT,
                "/v1/templates/bomb",
                Some(json!({"push": {"title": "t", "body": body}})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("push.body: template ") && msg.contains(why),
            "{msg}"
        );
        // Inline content in a campaign is held to the same limits.
        let (s, b) = app
            .call(
                Method::POST,
                "/v1/campaigns",
                Some(
                    json!({"audience": {"user": "u"}, "content": {"title": "t", "body": body},
                            "channels": ["in_app"]}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    }
    let (s, _) = app.call(Method::GET, "/v1/templates/bomb", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing stored");
    let (_, list) = app.call(Method::GET, "/v1/campaigns", None).await;
    assert_eq!(list["campaigns"], json!([]), "nothing created");
}

#[tokio::test]
async fn a_recipient_whose_data_breaks_the_template_is_skipped_and_counted_and_the_others_get_it() {
    let app = spawn(Options::default()).await;
    let users = [
        ("ok1", json!(2)),
        ("zero", json!(0)),
        ("ok2", json!(5)),
        ("huge", json!(1_000_000)),
    ];
    for (id, n) in &users {
        app.ok(
            Method::PUT,
            &format!("/v1/users/{id}"),
            json!({"attributes": {"n": n}}),
        )
        .await;
    }
    // Division by a user's `n`, and a repetition sized by it: fine for two users, a division
    // by zero for one, more than the output limit for the last.
    app.ok(
        Method::PUT,
        "/v1/templates/per-user",
        json!({"in_app": {"title": "Share {{ 100 // user.n }}", "body": "{{ 'ab' * user.n }}"}}),
    )
    .await;
    let ids: Vec<&str> = users.iter().map(|(u, _)| *u).collect();
    let id = app
        .campaign(
            json!({"audience": {"users": ids}, "template": "per-user", "channels": ["in_app"]}),
        )
        .await;
    let done = app.wait_completed(&id, Duration::from_secs(20)).await;
    assert_eq!(done["progress"]["notifications_written"], 2, "{done}");
    assert_eq!(done["progress"]["failed_render"], 2, "{done}");
    let failures = done["failures"].as_array().expect("a failure sample");
    let reason_of = |user: &str| -> String {
        failures
            .iter()
            .find(|f| f["user_id"] == user)
            .and_then(|f| f["reason"].as_str())
            .unwrap_or_else(|| panic!("no failure for {user}: {failures:?}"))
            .to_owned()
    };
    assert!(
        reason_of("zero").starts_with("in_app.title: template does not render"),
        "{}",
        reason_of("zero")
    );
    assert!(
        reason_of("huge").contains("renders more than 131072 bytes"),
        "{}",
        reason_of("huge")
    );
    assert_eq!(inbox_rows(&app, &id).await, (2, 2));
}

#[tokio::test]
async fn a_batch_that_keeps_failing_is_given_up_after_its_attempts_and_the_campaign_ends_with_the_counts(
) {
    let (app, inbox) = spawn_faulty_inbox(|c| {
        c.fanout.batch_size = Some(1);
        c.fanout.max_batch_attempts = 2;
    })
    .await;
    inbox.fail_on_write.store(true, Ordering::SeqCst);
    let id = app
        .campaign(json!({"audience": {"users": ["f1", "f2", "f3"]},
                         "content": {"title": "t", "body": "b"}, "channels": ["in_app"]}))
        .await;
    let done: Value = app.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(done["progress"]["failed_batches"], 3, "{done}");
    assert_eq!(done["progress"]["batches_done"], 3, "{done}");
    assert_eq!(done["progress"]["notifications_written"], 0, "{done}");
    let failures = done["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for f in failures {
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.contains("given up") && reason.contains("database unavailable"),
            "{reason}"
        );
        assert!(f.get("user_id").is_none(), "a whole batch: {f}");
    }

    // The given-up batches are kept whole: once the store takes writes again, each is
    // replayed once, and the campaign's counts come out as if nothing had failed.
    let (s, list) = app
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/failed-batches"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let batches = list["failed_batches"].as_array().unwrap().clone();
    assert_eq!(batches.len(), 3, "{list}");
    inbox.fail_on_write.store(false, Ordering::SeqCst);
    for b in &batches {
        let n = b["batch_no"].as_u64().unwrap();
        let path = format!("/v1/campaigns/{id}/failed-batches/{n}/replay");
        let (s, body) = app.call(Method::POST, &path, None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["users"], 1);
        let (s, _) = app.call(Method::POST, &path, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "replayed once");
    }
    let (s, _) = app
        .call(
            Method::POST,
            &format!("/v1/campaigns/{id}/failed-batches/99/replay"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    eventually("the replays counted", Duration::from_secs(30), || async {
        let c = app.get_campaign(&id).await;
        c["progress"]["notifications_written"] == 3 && c["progress"]["failed_batches"] == 0
    })
    .await;
    assert_eq!(inbox_rows(&app, &id).await, (3, 3));
    let done = app.get_campaign(&id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"]["batches_done"], 3, "{done}");
}
