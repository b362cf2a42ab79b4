//! `/v1/webhooks` and `/v1/dead-letters` over HTTP.

mod common;

use common::{error_message, spawn_app};
use herald_core::config::Secret;
use herald_core::delivery::DeadLetter;
use herald_core::model::{Channel, Priority};
use herald_core::topics::{self, ChannelItem, ChannelMessage};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_webhook_is_subscribed_shown_without_its_secret_listed_and_removed() {
    let app = spawn_app().await;
    let (s, b) = app
        .call(
            Method::PUT,
            "/v1/webhooks/crm",
            Some(json!({"url": "https://crm.example.com/herald", "secret": "whsec-0123456789abcdef", "categories": ["orders"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["id"], "crm");
    assert_eq!(b["categories"], json!(["orders"]));
    assert!(b.get("secret").is_none(), "the secret is never shown: {b}");

    let (s, b) = app.call(Method::GET, "/v1/webhooks/crm", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["url"], "https://crm.example.com/herald");
    assert!(b.get("secret").is_none());
    let stored = app
        .ctx
        .ports
        .deliveries
        .get_webhook("crm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.secret, Secret::new("whsec-0123456789abcdef"));

    let (s, b) = app.call(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["webhooks"].as_array().unwrap().len(), 1);
    assert!(b["next_cursor"].is_null());

    let (s, _) = app.call(Method::DELETE, "/v1/webhooks/crm", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = app.call(Method::GET, "/v1/webhooks/crm", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_message(&b, "not_found");
}

impl common::TestApp {
    /// The subscription as stored (secret included).
    async fn stored_webhook(&self, id: &str) -> herald_core::delivery::Webhook {
        let hook = self.ctx.ports.deliveries.get_webhook(id).await.unwrap();
        hook.unwrap_or_else(|| panic!("webhook {id} stored"))
    }
}

#[tokio::test]
async fn a_webhook_without_a_secret_gets_a_standard_one_shown_once_and_kept() {
    let app = spawn_app().await;
    let (s, b) = app
        .call(
            Method::PUT,
            "/v1/webhooks/erp",
            Some(json!({"url": "https://erp.example.com/herald"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let secret = b["secret"]
        .as_str()
        .expect("the generated secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let stored = app.stored_webhook("erp").await;
    assert_eq!(stored.secret, Secret::new(secret.clone()));
    assert_eq!(stored.standard_key().len(), 32);
    // Shown once: not on reads, and an update that leaves the secret out keeps it.
    let (_, b) = app.call(Method::GET, "/v1/webhooks/erp", None).await;
    assert!(b.get("secret").is_none(), "{b}");
    let (s, b) = app
        .call(
            Method::PUT,
            "/v1/webhooks/erp",
            Some(json!({"url": "https://erp.example.com/v2", "categories": ["billing"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.get("secret").is_none(), "{b}");
    let stored = app.stored_webhook("erp").await;
    assert_eq!(stored.secret, Secret::new(secret));
    assert_eq!(stored.url, "https://erp.example.com/v2");
}

#[tokio::test]
async fn a_rotated_secret_is_shown_once_and_the_old_one_signs_until_its_grace_ends() {
    let app = spawn_app().await;
    let (s, b) = app
        .call(
            Method::PUT,
            "/v1/webhooks/crm",
            Some(json!({"url": "https://crm.example.com/h", "secret": "whsec-0123456789abcdef"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["previous_secrets_expire_at"], json!([]));

    // No body: a generated secret, the old one kept a day.
    let (s, b) = app
        .call(Method::POST, "/v1/webhooks/crm/rotate-secret", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_"), "{b}");
    assert_eq!(b["previous_secrets_expire_at"].as_array().unwrap().len(), 1);
    let stored = app.stored_webhook("crm").await;
    assert_eq!(stored.secret, Secret::new(new.clone()));
    let now = chrono::Utc::now();
    let signing: Vec<&str> = stored
        .signing_secrets(now)
        .into_iter()
        .map(|s| s.expose())
        .collect();
    assert_eq!(signing, [new.as_str(), "whsec-0123456789abcdef"]);
    let expires = stored.previous_secrets[0].expires_at;
    assert!(
        (expires - now - chrono::Duration::days(1))
            .num_seconds()
            .abs()
            < 60
    );
    // Never shown again.
    let (_, shown) = app.call(Method::GET, "/v1/webhooks/crm", None).await;
    assert!(shown.get("secret").is_none(), "{shown}");
    // An update without a secret keeps the rotation under way.
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/webhooks/crm",
            Some(json!({"url": "https://crm.example.com/h2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.stored_webhook("crm").await.previous_secrets.len(), 1);

    // A chosen secret with no grace (a leaked secret): every old one stops signing at once.
    let (s, b) = app
        .call(
            Method::POST,
            "/v1/webhooks/crm/rotate-secret",
            Some(json!({"secret": "another-secret-0123456789", "previous_valid_for_secs": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["secret"], "another-secret-0123456789");
    let stored = app.stored_webhook("crm").await;
    assert_eq!(
        stored
            .signing_secrets(chrono::Utc::now())
            .into_iter()
            .map(|s| s.expose())
            .collect::<Vec<_>>(),
        ["another-secret-0123456789"],
        "{stored:?}"
    );

    // Refused, changing nothing.
    for (body, status, mentions) in [
        (
            json!({"previous_valid_for_secs": 2_592_001}),
            422,
            "at most",
        ),
        (
            json!({"secret": "another-secret-0123456789"}),
            422,
            "differ",
        ),
        (json!({"secret": "short"}), 422, "secret"),
        (json!({"grace": 5}), 422, "grace"),
    ] {
        let (s, b) = app
            .call(
                Method::POST,
                "/v1/webhooks/crm/rotate-secret",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s.as_u16(), status, "{body}: {b}");
        assert!(
            error_message(&b, "invalid").contains(mentions),
            "{body}: {b}"
        );
    }
    assert_eq!(
        app.stored_webhook("crm").await.secret,
        Secret::new("another-secret-0123456789")
    );
    // A replaced secret is dropped by a PUT that names the secret.
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/webhooks/crm",
            Some(json!({"url": "https://crm.example.com/h", "secret": "fresh-secret-0123456789"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(app.stored_webhook("crm").await.previous_secrets.is_empty());
    let (s, b) = app
        .call(Method::POST, "/v1/webhooks/nope/rotate-secret", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}

#[tokio::test]
async fn a_bad_webhook_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let cases = [
        json!({"url": "ftp://x.example.com", "secret": "whsec-0123456789abcdef"}),
        json!({"url": "https://x.example.com", "secret": "short"}),
        json!({"url": "https://x.example.com", "secret": "whsec-0123456789abcdef", "categories": []}),
        json!({"url": "https://x.example.com", "secret": "whsec-0123456789abcdef", "colour": "red"}),
        json!({"url": "https://x.example.com", "secret": "whsec_not*base64*at*all!"}),
        json!({"url": 5, "secret": "whsec-0123456789abcdef"}),
    ];
    for body in cases {
        let (s, b) = app
            .call(Method::PUT, "/v1/webhooks/w1", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {b}");
        error_message(&b, "invalid");
    }
    let (s, b) = app.raw(Method::PUT, "/v1/webhooks/w1", "{not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_message(&b, "malformed_request");
    assert!(app
        .ctx
        .ports
        .deliveries
        .get_webhook("w1")
        .await
        .unwrap()
        .is_none());
}

fn letter(id: &str) -> DeadLetter {
    DeadLetter {
        id: id.into(),
        channel: Channel::Sms,
        campaign_id: "c1".into(),
        reason: "sms 503".into(),
        attempts: 5,
        sends: 1,
        message: ChannelMessage {
            campaign_id: "c1".into(),
            batch_no: 2,
            channel: Channel::Sms,
            part: 0,
            piece: 0,
            span: None,
            category: None,
            priority: Priority::Normal,
            deliver_after: None,
            expires_at: None,
            attempt: 4,
            replay_of: None,
            unless_read: None,
            revision: 0,
            replaces: None,
            items: vec![ChannelItem {
                user_id: "u1".into(),
                notification_id: herald_core::ids::notification_id(
                    "c1",
                    "u1",
                    chrono::DateTime::UNIX_EPOCH,
                ),
                email: None,
                phone: Some("+15550001111".into()),
                title: None,
                body: "Your code is 1234".into(),
                html: None,
                data: json!({}),
                targets: None,
            }],
        },
        created_at: chrono::Utc::now(),
        replayed_at: None,
    }
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_replayed_once_onto_its_channel_queue() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    app.ctx
        .ports
        .deliveries
        .insert_dead_letter(&letter(&id))
        .await
        .unwrap();

    let (s, b) = app
        .call(Method::GET, "/v1/dead-letters?channel=sms", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let listed = &b["dead_letters"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["reason"], "sms 503");
    assert_eq!(listed["recipients"][0]["user_id"], "u1");
    let (_, b) = app
        .call(Method::GET, "/v1/dead-letters?channel=push", None)
        .await;
    assert_eq!(b["dead_letters"], json!([]));

    let (s, b) = app
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["sends"], 1);
    let (s, b) = app
        .call(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    error_message(&b, "conflict");

    let member = app
        .ctx
        .ports
        .bus
        .consumer(topics::channel_topic(Channel::Sms), topics::GATEWAY)
        .await
        .unwrap();
    // The first poll of a new member may wait for its group to form (Kafka).
    let mut got = Vec::new();
    for _ in 0..30 {
        got.extend(member.poll(10, Duration::from_secs(1)).await.unwrap());
        if !got.is_empty() {
            got.extend(member.poll(10, Duration::from_secs(1)).await.unwrap());
            break;
        }
    }
    assert_eq!(got.len(), 1, "published once");
    let msg: ChannelMessage = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(msg.attempt, 0, "a replay starts over");
    assert_eq!(msg.replay_of.as_deref(), Some(id.as_str()));
    assert_eq!(msg.items[0].phone.as_deref(), Some("+15550001111"));
    assert_ne!(msg.delivery_key(), letter(&id).message.delivery_key());
}

#[tokio::test]
async fn dead_letter_queries_are_checked() {
    let app = spawn_app().await;
    let (s, b) = app.call(Method::GET, "/v1/dead-letters", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, json!({"dead_letters": [], "next_cursor": null}));
    for q in [
        "?channel=pigeon",
        "?channel=in_app",
        "?limit=0",
        "?cursor=%%%",
    ] {
        let (s, b) = app
            .call(Method::GET, &format!("/v1/dead-letters{q}"), None)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {b}");
    }
    let (s, _) = app
        .call(Method::POST, "/v1/dead-letters/nope/replay", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
