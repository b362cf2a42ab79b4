//! `GET /v1/campaigns/{id}/recipients/{user_id}` after a real run through the roles (admin
//! API, fan-out, push gateway with the fake FCM, result counter): each user's verdict says what
//! happened to them and why, from the stores.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn each_recipient_is_explained_audience_switches_inbox_and_push_outcome() {
    let app = spawn(Options::default()).await;
    for (user, tier) in [
        ("sent", "gold"),
        ("dead", "gold"),
        ("optout", "gold"),
        ("nodevice", "gold"),
        ("outsider", "free"),
    ] {
        app.ok(
            Method::PUT,
            &format!("/v1/users/{user}"),
            json!({"attributes": {"tier": tier}}),
        )
        .await;
    }
    for (user, token) in [
        ("sent", "ok-sent"),
        ("dead", "unreg-dead"),
        ("optout", "ok-optout"),
    ] {
        app.ok(
            Method::POST,
            &format!("/v1/users/{user}/devices"),
            json!({"platform": "fcm", "token": token}),
        )
        .await;
    }
    app.ok(
        Method::PUT,
        "/v1/users/optout/preferences",
        json!({"channels": {"push": false}}),
    )
    .await;
    app.ok(
        Method::PUT,
        "/v1/segments/gold",
        json!({"filter": {"attr": "tier", "eq": "gold"}}),
    )
    .await;
    let id = app
        .campaign(
            json!({"audience": {"segment": "gold"}, "content": {"title": "t", "body": "b"},
                         "channels": ["in_app", "push"]}),
        )
        .await;
    app.wait_completed(&id, Duration::from_secs(30)).await;

    let explain = |user: &'static str| {
        let (app, id) = (&app, id.clone());
        async move {
            let (s, body) = app
                .call(
                    Method::GET,
                    &format!("/v1/campaigns/{id}/recipients/{user}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
            body
        }
    };
    // The gateway's outcomes reach the store through the result counter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut dead: Value;
    loop {
        dead = explain("dead").await;
        if dead["channels"]["push"]["status"] == "failed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dead["channels"]["push"]["reason"].is_string(), "{dead}");

    let sent = explain("sent").await;
    assert_eq!(sent["audience"]["included"], true, "{sent}");
    assert_eq!(sent["user_found"], true);
    assert_eq!(sent["campaign_status"], "completed");
    assert_eq!(sent["channels"]["push"]["status"], "sent", "{sent}");
    assert_eq!(sent["channels"]["push"]["sent"], 1, "{sent}");
    assert_eq!(sent["inbox"]["shown"], true, "{sent}");
    assert_eq!(sent["inbox"]["read_at"], Value::Null);

    let optout = explain("optout").await;
    assert_eq!(
        optout["channels"]["push"]["status"], "opted_out",
        "{optout}"
    );
    assert_eq!(
        optout["channels"]["push"]["reason"],
        "the user's push switch is off"
    );
    assert_eq!(
        optout["inbox"]["shown"], true,
        "in_app is still on: {optout}"
    );

    let nodevice = explain("nodevice").await;
    assert_eq!(
        nodevice["channels"]["push"]["status"], "failed",
        "{nodevice}"
    );
    assert_eq!(
        nodevice["channels"]["push"]["reason"],
        "no registered device"
    );

    let outsider = explain("outsider").await;
    assert_eq!(outsider["audience"]["included"], false, "{outsider}");
    let why = outsider["audience"]["reason"].as_str().unwrap();
    assert!(
        why.contains("segment `gold`") && why.contains(r#"tier is "free""#),
        "{why}"
    );
    assert_eq!(outsider["channels"]["push"]["status"], "not_in_audience");
    assert_eq!(outsider["inbox"]["shown"], false);

    // Read in the inbox: the verdict says when.
    let item = sent["inbox"]["id"].as_str().unwrap().parse().unwrap();
    let key = herald_core::model::InboxKey::of_id(item).unwrap();
    let at = chrono::Utc::now();
    assert!(app
        .ctx
        .ports
        .inbox
        .mark_read("sent", key, at)
        .await
        .unwrap());
    let read = explain("sent").await;
    assert!(read["inbox"]["read_at"].is_string(), "{read}");

    // An unknown campaign is 404; a user id that cannot be one is 422.
    let (s, _) = app
        .call(Method::GET, "/v1/campaigns/nope/recipients/sent", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/recipients/a%20b"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}
