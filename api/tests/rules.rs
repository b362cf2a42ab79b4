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
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "push_when": "offline"}),
            "push and in_app",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app", "push"], "push_when": "offline", "online_push_delay_s": 0}),
            "online_push_delay_s",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "digest": {"window_s": 0}}),
            "digest.window_s",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "digest": {"window_s": 604_801}}),
            "digest.window_s",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "digest": {"window_s": 60, "key": "bad key!"}}),
            "digest.key",
        ),
        (
            "order.shipped".into(),
            json!({"template": "order-shipped", "channels": ["in_app"], "digest": {"window_s": 60, "every": 2}}),
            "every",
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
                "condition": {"attr": "amount", "gt": 1000},
                "push_when": "offline",
                "online_push_delay_s": 45
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
    assert_eq!(c["push_when"], "offline", "the rule's presence-aware push");
    assert_eq!(c["online_push_delay_s"], 45);
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

/// The order-shipped rule (amount over 1000) over the order-shipped template.
async fn with_rule(app: &TestApp) {
    with_template(app).await;
    let (s, body) = app
        .call(
            Method::PUT,
            "/v1/rules/order.shipped",
            Some(json!({"template": "order-shipped", "channels": ["in_app"],
                        "condition": {"attr": "amount", "gt": 1000}})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
}

impl TestApp {
    /// A `POST /v1/events` with this content type, extra headers and raw body.
    async fn post_event(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> (u16, Value) {
        let mut req = self
            .req(Method::POST, "/v1/events")
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }
}

fn cloud_event(source: &str, id: &str, subject: &str, amount: u32) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": "order.shipped",
           "subject": subject, "time": "2026-11-30T10:00:00Z", "shopregion": "eu",
           "datacontenttype": "application/json",
           "data": {"order_id": id, "amount": amount}})
}

#[tokio::test]
async fn a_cloudevent_creates_its_campaign_once_per_source_and_id() {
    let app = spawn_app().await;
    with_rule(&app).await;
    let structured = "application/cloudevents+json";
    let (s, first) = app
        .post_event(
            structured,
            &[],
            cloud_event("/shop", "A-17", "alice", 1500).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{first}");
    assert_eq!(first["matched"], true, "{first}");
    assert_eq!(first["event"], json!({"source": "/shop", "id": "A-17"}));
    let id = first["campaign_id"].as_str().unwrap().to_owned();
    let (_, c) = app
        .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await;
    assert_eq!(c["audience"], json!({"user": "alice"}));
    assert_eq!(c["data"], json!({"order_id": "A-17", "amount": 1500}));

    // Delivered again (even re-rendered), structured or binary: the same campaign, once.
    let (s, again) = app
        .post_event(
            structured,
            &[],
            cloud_event("/shop", "A-17", "alice", 1600).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(
        (again["duplicate"].clone(), again["campaign_id"].clone()),
        (json!(true), json!(id))
    );
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "A-17"),
        ("ce-source", "/shop"),
        ("ce-type", "order.shipped"),
        ("ce-subject", "alice"),
    ];
    let (s, again) = app
        .post_event("application/json", &binary, r#"{"amount": 1500}"#.into())
        .await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["campaign_id"], json!(id), "{again}");
    assert_eq!(app.campaign_count().await, 1);

    // Another source with the same id is another event; binary mode carries its data.
    let mut other = binary;
    other[2] = ("ce-source", "/billing");
    let (s, res) = app
        .post_event(
            "application/json",
            &other,
            r#"{"order_id": "B-1", "amount": 2000}"#.into(),
        )
        .await;
    assert_eq!(s, 202, "{res}");
    assert_eq!(res["matched"], true, "{res}");
    assert!(res.get("duplicate").is_none());
    let (_, c) = app
        .call(
            Method::GET,
            &format!("/v1/campaigns/{}", res["campaign_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(c["data"], json!({"order_id": "B-1", "amount": 2000}));
    assert_eq!(app.campaign_count().await, 2);
}

#[tokio::test]
async fn a_cloudevents_batch_answers_each_event_in_order() {
    let app = spawn_app().await;
    with_rule(&app).await;
    let batch = json!([
        cloud_event("/shop", "1", "alice", 1500),
        cloud_event("/shop", "2", "bob", 10),
        cloud_event("/shop", "1", "alice", 1500),
        {"specversion": "1.0", "id": "3", "source": "/shop", "type": "order.lost", "subject": "carol"},
    ]);
    let (s, res) = app
        .post_event("application/cloudevents-batch+json", &[], batch.to_string())
        .await;
    assert_eq!(s, 202, "{res}");
    let r = res["results"].as_array().unwrap();
    assert_eq!(r.len(), 4, "{res}");
    assert_eq!(r[0]["matched"], true);
    assert_eq!(
        r[1],
        json!({"matched": false, "reason": "condition not met",
                            "event": {"source": "/shop", "id": "2"}})
    );
    assert_eq!(
        r[2]["duplicate"], true,
        "the same event twice in a batch: {res}"
    );
    assert_eq!(r[2]["campaign_id"], r[0]["campaign_id"]);
    assert_eq!(r[3]["matched"], false);
    assert_eq!(app.campaign_count().await, 1);

    // The whole batch sent again (a producer's retry): nothing new.
    let (s, again) = app
        .post_event("application/cloudevents-batch+json", &[], batch.to_string())
        .await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["results"][0]["campaign_id"], r[0]["campaign_id"]);
    assert_eq!(app.campaign_count().await, 1);
}

#[tokio::test]
async fn a_bad_cloudevent_is_refused_naming_what_is_wrong_and_creates_nothing() {
    let app = spawn_app().await;
    with_rule(&app).await;
    let good = cloud_event("/shop", "9", "alice", 1500);
    let mut no_subject = good.clone();
    no_subject.as_object_mut().unwrap().remove("subject");
    let mut bad_user = good.clone();
    bad_user["subject"] = json!("not a user id");
    let mut old_spec = good.clone();
    old_spec["specversion"] = json!("0.3");
    let batch = |bad: &Value| json!([good, bad]).to_string();
    let structured = "application/cloudevents+json";
    /// Content type, headers, body, status, what the message names.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (structured, vec![], no_subject.to_string(), 422, "subject"),
        (structured, vec![], bad_user.to_string(), 422, "user_id"),
        (structured, vec![], old_spec.to_string(), 422, "specversion"),
        (structured, vec![], "{not json".into(), 400, ""),
        (
            "application/cloudevents-batch+json",
            vec![],
            batch(&no_subject),
            422,
            "event 1: subject",
        ),
        (
            "application/cloudevents-batch+json",
            vec![],
            batch(&bad_user),
            422,
            "event 1: user_id",
        ),
        (
            "application/cloudevents-batch+json",
            vec![],
            "[]".into(),
            422,
            "1 to 1000",
        ),
        (
            "text/plain",
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "9"),
                ("ce-source", "/shop"),
                ("ce-type", "order.shipped"),
                ("ce-subject", "alice"),
            ],
            "amount=1500".into(),
            422,
            "JSON",
        ),
        (
            "application/json",
            vec![
                ("ce-specversion", "1.0"),
                ("ce-source", "/shop"),
                ("ce-type", "order.shipped"),
                ("ce-subject", "alice"),
            ],
            "{}".into(),
            422,
            "ce-id",
        ),
    ];
    for (ct, headers, body, status, says) in cases {
        let (s, err) = app.post_event(ct, &headers, body.clone()).await;
        assert_eq!(s, status, "{ct} {body}: {err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{ct} {body}: {msg}");
    }
    assert_eq!(app.campaign_count().await, 0);
}

#[tokio::test]
async fn events_of_a_digest_rule_join_one_digest_per_user_and_key() {
    let app = spawn_app().await;
    with_template(&app).await;
    let (s, rule) = app
        .call(
            Method::PUT,
            "/v1/rules/order.shipped",
            Some(json!({"template": "order-shipped", "channels": ["in_app"],
                        "digest": {"key": "order_id", "window_s": 300}})),
        )
        .await;
    assert_eq!(s, 200, "{rule}");
    assert_eq!(rule["digest"], json!({"key": "order_id", "window_s": 300}));
    let event = |user: &str, order: &str| json!({"type": "order.shipped", "user_id": user, "data": {"order_id": order, "amount": 1}});
    let before = chrono::Utc::now();
    let mut ids = Vec::new();
    for (n, (user, order)) in [
        ("alice", "A-1"),
        ("alice", "A-1"),
        ("alice", "A-2"),
        ("bob", "A-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, res) = app
            .call(Method::POST, "/v1/events", Some(event(user, order)))
            .await;
        assert_eq!(s, 202, "{res}");
        assert_eq!(res["matched"], true, "{res}");
        assert!(res["campaign_id"].is_null(), "no campaign yet: {res}");
        let d = &res["digest"];
        assert_eq!(d["count"], if n == 1 { 2 } else { 1 }, "{res}");
        assert_eq!(d["duplicate"], false);
        let sends_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(d["sends_at"].clone()).unwrap();
        assert!(sends_at >= before + chrono::Duration::seconds(300), "{res}");
        ids.push(d["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "same user and order: one digest");
    assert_ne!(ids[0], ids[2]);
    assert_ne!(ids[0], ids[3]);
    assert_eq!(app.campaign_count().await, 0, "sent when the window ends");
}
