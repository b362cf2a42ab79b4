//! Event-triggered notifications through HTTP: rules (`/v1/rules`) and events (`/v1/events`),
//! against a real server on port 0 with embedded backends in a temp dir (`spawn_app`, copied
//! from `api.rs`). Bad rules are 422 and store nothing; an event whose rule matches becomes a
//! one-user campaign, any other event creates nothing.

use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::*;

impl TestApp {
    async fn campaign_count(&self) -> usize {
        let (s, list) = self.call(Method::GET, "/v1/campaigns", None).await;
        assert_eq!(s, 200, "{list}");
        list["campaigns"].as_array().expect("campaigns").len()
    }

    async fn rule_count(&self) -> usize {
        let (s, list) = self.call(Method::GET, "/v1/rules", None).await;
        assert_eq!(s, 200, "{list}");
        list["rules"].as_array().expect("rules").len()
    }
}

/// A template with in_app and push content only.
fn order_template() -> Value {
    json!({
        "in_app": {"title": "Order {{ data.order_id }} shipped", "body": "Hi {{ user.id }}"},
        "push": {"title": "Shipped", "body": "{{ data.order_id }}"}
    })
}

async fn with_template(app: &TestApp) {
    let (s, body) = app
        .call(
            Method::PUT,
            "/v1/templates/order-shipped",
            Some(order_template()),
        )
        .await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn a_rule_is_stored_read_listed_replaced_and_deleted() {
    let app = spawn_app().await;
    with_template(&app).await;
    let rule = json!({
        "template": "order-shipped",
        "channels": ["push", "in_app", "push"],
        "priority": "high",
        "category": "orders",
        "condition": {"attr": "amount", "gt": 1000}
    });
    let (s, stored) = app
        .call(Method::PUT, "/v1/rules/order.shipped", Some(rule))
        .await;
    assert_eq!(s, 200, "{stored}");
    assert_eq!(stored["event_type"], "order.shipped");
    assert_eq!(stored["template"], "order-shipped");
    assert_eq!(stored["channels"], json!(["in_app", "push"]), "deduped");
    assert_eq!(stored["priority"], "high");
    assert_eq!(stored["category"], "orders");
    assert_eq!(stored["condition"], json!({"attr": "amount", "gt": 1000}));
    assert!(stored["created_at"].is_string());

    let (s, got) = app.call(Method::GET, "/v1/rules/order.shipped", None).await;
    assert_eq!(s, 200);
    assert_eq!(got, stored);

    // A second rule, and the list in event-type order with paging.
    let (s, other) = app
        .call(
            Method::PUT,
            "/v1/rules/billing:invoice_paid",
            Some(json!({"template": "order-shipped", "channels": ["in_app"]})),
        )
        .await;
    assert_eq!(s, 200, "{other}");
    assert_eq!(other["priority"], "normal");
    assert!(other.get("condition").is_none() || other["condition"].is_null());
    let (s, list) = app.call(Method::GET, "/v1/rules", None).await;
    assert_eq!(s, 200);
    let types: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["billing:invoice_paid", "order.shipped"]);
    assert!(list["next_cursor"].is_null());
    let (_, page1) = app.call(Method::GET, "/v1/rules?limit=1", None).await;
    assert_eq!(page1["rules"][0]["event_type"], "billing:invoice_paid");
    let cursor = page1["next_cursor"].as_str().expect("a cursor").to_owned();
    let (_, page2) = app
        .call(
            Method::GET,
            &format!("/v1/rules?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["rules"][0]["event_type"], "order.shipped");

    // Replacing keeps created_at.
    let (s, replaced) = app
        .call(
            Method::PUT,
            "/v1/rules/order.shipped",
            Some(json!({"template": "order-shipped", "channels": ["in_app"]})),
        )
        .await;
    assert_eq!(s, 200, "{replaced}");
    assert_eq!(replaced["channels"], json!(["in_app"]));
    assert_eq!(replaced["priority"], "normal");
    assert_eq!(replaced["created_at"], stored["created_at"]);

    let (s, _) = app
        .call(Method::DELETE, "/v1/rules/order.shipped", None)
        .await;
    assert_eq!(s, 204);
    let (s, err) = app.call(Method::GET, "/v1/rules/order.shipped", None).await;
    assert_eq!(s, 404);
    error_message(&err, "not_found");
    let (s, err) = app
        .call(Method::DELETE, "/v1/rules/order.shipped", None)
        .await;
    assert_eq!(s, 404);
    error_message(&err, "not_found");
    assert_eq!(app.rule_count().await, 1);
}

#[tokio::test]
async fn unknown_rules_are_404() {
    let app = spawn_app().await;
    let (s, err) = app.call(Method::GET, "/v1/rules/nope", None).await;
    assert_eq!(s, 404);
    assert!(error_message(&err, "not_found").contains("nope"));
    let (s, _) = app.call(Method::DELETE, "/v1/rules/nope", None).await;
    assert_eq!(s, 404);
    let (s, list) = app.call(Method::GET, "/v1/rules", None).await;
    assert_eq!(s, 200);
    assert_eq!(list, json!({"rules": [], "next_cursor": null}));
}

#[tokio::test]
async fn invalid_rules_are_422_naming_the_problem_and_store_nothing() {
    let app = spawn_app().await;
    with_template(&app).await;
    let ok = json!({"template": "order-shipped", "channels": ["in_app"]});
    let long = "e".repeat(129);
    let cases: Vec<(String, Value, &str)> = vec![
        (
            "order.shipped".into(),
            json!({"template": "missing", "channels": ["in_app"]}),
            "template `missing` does not exist",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app", "email", "sms"]}),
            "template `order-shipped` has no content for email, sms",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": []}),
            "channels",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["fax"]}),
            "channels",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "condition": {"attr": "amount", "like": 5}}),
            "condition: unknown operator `like`",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "condition": {"attr": "amount", "lt": true}}),
            "condition",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "category": "no spaces"}),
            "category",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "priority": "meh"}),
            "priority",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "audience": {"all": true}}),
            "unknown field `audience`",
        ),
        (
            "order.shipped".into(),
            json!({"channels": ["in_app"]}),
            "template",
        ),
        ("order%20shipped".into(), ok.clone(), "event type"),
        ("order@shipped".into(), ok.clone(), "event type"),
        (long, ok.clone(), "event type"),
    ];
    for (event_type, body, mentions) in cases {
        let (s, err) = app
            .call(
                Method::PUT,
                &format!("/v1/rules/{event_type}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 422, "{event_type} {body}: {err}");
        let msg = error_message(&err, "invalid");
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    assert_eq!(app.rule_count().await, 0);
    assert!(app
        .ctx
        .ports
        .campaigns
        .list_rules(None, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_event_matching_its_rule_creates_a_campaign_for_the_user() {
    let app = spawn_app().await;
    with_template(&app).await;
    let (s, body) = app
        .call(
            Method::PUT,
            "/v1/rules/order.shipped",
            Some(json!({
                "template": "order-shipped",
                "channels": ["push", "in_app"],
                "priority": "urgent",
                "category": "orders",
                "condition": {"attr": "amount", "gt": 1000}
            })),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let data = json!({"order_id": "A-17", "amount": 1500});
    let (s, res) = app
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "order.shipped", "user_id": "alice", "data": data})),
        )
        .await;
    assert_eq!(s, 202, "{res}");
    assert_eq!(res["matched"], true);
    assert_eq!(res["strategy"], "direct");
    assert!(res["status"].is_string());
    let id = res["campaign_id"].as_str().expect("campaign id");

    let (s, c) = app
        .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["audience"], json!({"user": "alice"}));
    assert_eq!(c["audience_size"], 1);
    assert_eq!(c["template"], "order-shipped");
    assert_eq!(c["channels"], json!(["in_app", "push"]));
    assert_eq!(c["priority"], "urgent");
    assert_eq!(c["category"], "orders");
    assert_eq!(c["strategy"], "direct");
    assert_eq!(c["data"], data);
    assert_eq!(app.campaign_count().await, 1);
}

#[tokio::test]
async fn an_event_without_a_condition_or_data_matches_with_empty_data() {
    let app = spawn_app().await;
    with_template(&app).await;
    app.call(
        Method::PUT,
        "/v1/rules/user.signed_up",
        Some(json!({"template": "order-shipped", "channels": ["in_app"]})),
    )
    .await;
    let (s, res) = app
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "user.signed_up", "user_id": "bob"})),
        )
        .await;
    assert_eq!(s, 202, "{res}");
    assert_eq!(res["matched"], true);
    let id = res["campaign_id"].as_str().unwrap();
    let (_, c) = app
        .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await;
    assert_eq!(c["data"], json!({}));
    assert_eq!(c["priority"], "normal");
    assert!(c["category"].is_null());
}

#[tokio::test]
async fn an_event_not_meeting_the_condition_creates_nothing() {
    let app = spawn_app().await;
    with_template(&app).await;
    app.call(
        Method::PUT,
        "/v1/rules/order.shipped",
        Some(json!({
            "template": "order-shipped",
            "channels": ["in_app"],
            "condition": {"attr": "amount", "gt": 1000}
        })),
    )
    .await;
    for data in [json!({"amount": 500}), json!({"amount": "1500"}), json!({})] {
        let (s, res) = app
            .call(
                Method::POST,
                "/v1/events",
                Some(json!({"type": "order.shipped", "user_id": "alice", "data": data})),
            )
            .await;
        assert_eq!(s, 202, "{res}");
        assert_eq!(
            res,
            json!({"matched": false, "reason": "condition not met"}),
            "{data}"
        );
    }
    assert_eq!(app.campaign_count().await, 0);
    let (s, res) = app
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "order.shipped", "user_id": "alice", "data": {"amount": 1500}})),
        )
        .await;
    assert_eq!(s, 202, "{res}");
    assert_eq!(res["matched"], true);
    assert_eq!(app.campaign_count().await, 1);
}

#[tokio::test]
async fn an_event_of_an_unknown_type_is_not_matched() {
    let app = spawn_app().await;
    let (s, res) = app
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "order.lost", "user_id": "alice", "data": {"x": 1}})),
        )
        .await;
    assert_eq!(s, 202, "{res}");
    assert_eq!(
        res,
        json!({"matched": false, "reason": "no rule for event type `order.lost`"})
    );
    assert_eq!(app.campaign_count().await, 0);
}

#[tokio::test]
async fn invalid_events_are_422_and_create_nothing() {
    let app = spawn_app().await;
    with_template(&app).await;
    app.call(
        Method::PUT,
        "/v1/rules/order.shipped",
        Some(json!({"template": "order-shipped", "channels": ["in_app"]})),
    )
    .await;
    let cases = [
        (json!({"type": "", "user_id": "alice"}), "type"),
        (json!({"type": "order shipped", "user_id": "alice"}), "type"),
        (json!({"user_id": "alice"}), "type"),
        (json!({"type": "order.shipped"}), "user_id"),
        (json!({"type": "order.shipped", "user_id": ""}), "user_id"),
        (
            json!({"type": "order.shipped", "user_id": "a/b"}),
            "user_id",
        ),
        (
            json!({"type": "order.shipped", "user_id": "alice", "data": [1]}),
            "data",
        ),
        (
            json!({"type": "order.shipped", "user_id": "alice", "data": "x"}),
            "data",
        ),
        (
            json!({"type": "order.shipped", "user_id": "alice", "extra": 1}),
            "unknown field `extra`",
        ),
    ];
    for (body, mentions) in cases {
        let (s, err) = app
            .call(Method::POST, "/v1/events", Some(body.clone()))
            .await;
        assert_eq!(s, 422, "{body}: {err}");
        let msg = error_message(&err, "invalid");
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    let resp = app
        .req(Method::POST, "/v1/events")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(app.campaign_count().await, 0);
}

#[tokio::test]
async fn rules_and_events_need_the_admin_key() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/v1/rules"),
        (Method::PUT, "/v1/rules/a"),
        (Method::GET, "/v1/rules/a"),
        (Method::DELETE, "/v1/rules/a"),
        (Method::POST, "/v1/events"),
    ] {
        let resp = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
}

#[tokio::test]
async fn an_event_whose_rule_lost_its_template_is_422_and_creates_nothing() {
    let app = spawn_app().await;
    with_template(&app).await;
    app.call(
        Method::PUT,
        "/v1/rules/order.shipped",
        Some(json!({"template": "order-shipped", "channels": ["in_app"]})),
    )
    .await;
    let (s, _) = app
        .call(Method::DELETE, "/v1/templates/order-shipped", None)
        .await;
    assert_eq!(s, 204);
    let (s, err) = app
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "order.shipped", "user_id": "alice"})),
        )
        .await;
    assert_eq!(s, 422, "{err}");
    assert!(error_message(&err, "invalid").contains("order-shipped"));
    assert_eq!(app.campaign_count().await, 0);
}
