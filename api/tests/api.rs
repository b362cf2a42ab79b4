//! The admin API through HTTP, against a real server on port 0 with embedded backends in a
//! temp dir (`spawn_app`). Every bad input must get a clear 4xx with the error body and write
//! nothing.

use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::*;

impl TestApp {
    async fn user_count(&self) -> u64 {
        self.ctx
            .ports
            .directory
            .count_users(
                &herald_core::filter::Filter::match_all(),
                chrono::Utc::now(),
            )
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = spawn_app().await;
    // Twice: behind the round-robin of HERALD_TEST_ROLES=processes each node counts its own.
    app.call(Method::GET, "/v1/segments", None).await;
    app.call(Method::GET, "/v1/segments", None).await;
    let r = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("herald_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/v1/segments\""), "{text}");
}

#[tokio::test]
async fn admin_routes_refuse_a_missing_or_wrong_key_with_401() {
    let app = spawn_app().await;
    for path in [
        "/v1/users/u1",
        "/v1/segments",
        "/v1/templates",
        "/v1/users/u1/preferences",
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        error_message(&r.json().await.unwrap(), "unauthorized");
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth("not-the-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        error_message(&r.json().await.unwrap(), "unauthorized");
    }
    // A write with a bad key changes nothing.
    let r = app
        .client
        .put(format!("{}/v1/users/u1", app.base))
        .bearer_auth("nope")
        .json(&json!({"attributes": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn a_user_is_upserted_read_replaced_and_deleted() {
    let app = spawn_app().await;
    let (s, created) = app
        .call(
            Method::PUT,
            "/v1/users/u1",
            Some(json!({"email": "a@example.com", "phone": "+33123456", "attributes": {"tier": "premium", "locale": "fr"}})),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["id"], "u1");
    assert_eq!(created["attributes"]["tier"], "premium");
    let (s, got) = app.call(Method::GET, "/v1/users/u1", None).await;
    assert_eq!(s, 200);
    assert_eq!(got, created);

    let (s, replaced) = app
        .call(
            Method::PUT,
            "/v1/users/u1",
            Some(json!({"attributes": {"tier": "free"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(replaced["attributes"], json!({"tier": "free"}));
    assert!(
        replaced.get("email").is_none(),
        "PUT replaces the whole user"
    );
    assert_eq!(replaced["created_at"], created["created_at"]);

    let (s, _) = app.call(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(s, 204);
    let (s, body) = app.call(Method::GET, "/v1/users/u1", None).await;
    assert_eq!(s, 404);
    error_message(&body, "not_found");
    let (s, _) = app.call(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn malformed_json_is_400_with_the_error_body_and_writes_nothing() {
    let app = spawn_app().await;
    for body in ["{\"attributes\": ", "not json", "{} trailing", ""] {
        let (s, err) = app.raw(Method::PUT, "/v1/users/u1", body).await;
        assert_eq!(s, 400, "{body:?}: {err}");
        error_message(&err, "malformed_request");
    }
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_422_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let cases = [
        (json!({"email": 42}), "email"),
        (json!({"attributes": "premium"}), "attributes"),
        (json!({"attributes": {}, "tier": "x"}), "tier"),
        (json!({"email": "not-an-email"}), "email"),
        (
            json!({"attributes": {"timezone": "Mars/Base"}}),
            "time zone",
        ),
        (json!({"attributes": {"nested": {"a": 1}}}), "nested"),
        (json!({"id": "someone-else"}), "id"),
        (json!([1, 2]), "JSON object"),
    ];
    for (body, mentions) in cases {
        let (s, err) = app
            .call(Method::PUT, "/v1/users/u1", Some(body.clone()))
            .await;
        assert_eq!(s, 422, "{body}: {err}");
        let msg = error_message(&err, "invalid");
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn user_ids_with_unsafe_characters_are_refused() {
    let app = spawn_app().await;
    for id in ["a%20b", "a%2Fb", &"x".repeat(200)] {
        let (s, err) = app
            .call(Method::PUT, &format!("/v1/users/{id}"), Some(json!({})))
            .await;
        assert_eq!(s, 422, "{id}: {err}");
        error_message(&err, "invalid");
    }
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_the_error_body() {
    let app = spawn_app_with(|c| c.api.max_body_bytes = 1024).await;
    let big = json!({"attributes": {"blob": "x".repeat(4096)}});
    let (s, err) = app.call(Method::PUT, "/v1/users/u1", Some(big)).await;
    assert_eq!(s, 413);
    error_message(&err, "body_too_large");
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn unknown_users_are_404_everywhere() {
    let app = spawn_app().await;
    let calls = [
        (Method::GET, "/v1/users/ghost", None),
        (Method::DELETE, "/v1/users/ghost", None),
        (Method::GET, "/v1/users/ghost/preferences", None),
        (Method::PUT, "/v1/users/ghost/preferences", Some(json!({}))),
        (Method::GET, "/v1/users/ghost/devices", None),
        (
            Method::POST,
            "/v1/users/ghost/devices",
            Some(json!({"platform": "fcm", "token": "t"})),
        ),
        (Method::DELETE, "/v1/users/ghost/devices/t", None),
        (Method::POST, "/v1/users/ghost/token", None),
    ];
    for (method, path, body) in calls {
        let (s, err) = app.call(method.clone(), path, body).await;
        assert_eq!(s, 404, "{method} {path}: {err}");
        error_message(&err, "not_found");
    }
}

#[tokio::test]
async fn preferences_default_to_everything_allowed_and_round_trip() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    let (s, prefs) = app
        .call(Method::GET, "/v1/users/u1/preferences", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(prefs, json!({"channels": {}, "categories": {}}));
    let wanted = json!({
        "channels": {"push": true, "email": false},
        "categories": {"marketing": {"email": false}},
        "quiet_hours": {"start": "22:00", "end": "07:00"}
    });
    let (s, put) = app
        .call(
            Method::PUT,
            "/v1/users/u1/preferences",
            Some(wanted.clone()),
        )
        .await;
    assert_eq!(s, 200, "{put}");
    let (_, got) = app
        .call(Method::GET, "/v1/users/u1/preferences", None)
        .await;
    assert_eq!(got, wanted);
}

#[tokio::test]
async fn invalid_preferences_are_422_and_keep_the_stored_ones() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    let stored = json!({"channels": {"sms": false}, "categories": {}});
    app.call(
        Method::PUT,
        "/v1/users/u1/preferences",
        Some(stored.clone()),
    )
    .await;
    for bad in [
        json!({"channels": {"pigeon": true}}),
        json!({"channels": {"push": "yes"}}),
        json!({"quiet_hours": {"start": "25:00", "end": "07:00"}}),
        json!({"quiet_hours": {"start": "22:00"}}),
        json!({"categories": {"bad name!": {"email": false}}}),
        json!({"chanels": {}}),
    ] {
        let (s, err) = app
            .call(Method::PUT, "/v1/users/u1/preferences", Some(bad.clone()))
            .await;
        assert_eq!(s, 422, "{bad}: {err}");
        error_message(&err, "invalid");
    }
    let (_, got) = app
        .call(Method::GET, "/v1/users/u1/preferences", None)
        .await;
    assert_eq!(got, stored);
}

#[tokio::test]
async fn devices_are_registered_listed_moved_and_removed() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    app.call(Method::PUT, "/v1/users/u2", Some(json!({}))).await;
    let (s, dev) = app
        .call(
            Method::POST,
            "/v1/users/u1/devices",
            Some(json!({"platform": "fcm", "token": "tok:A-1"})),
        )
        .await;
    assert_eq!(s, 201, "{dev}");
    assert_eq!(dev["platform"], "fcm");
    app.call(
        Method::POST,
        "/v1/users/u1/devices",
        Some(json!({"platform": "apns", "token": "tok-B"})),
    )
    .await;
    let (s, list) = app.call(Method::GET, "/v1/users/u1/devices", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);

    // The same token registered by u2 moves to u2.
    app.call(
        Method::POST,
        "/v1/users/u2/devices",
        Some(json!({"platform": "fcm", "token": "tok:A-1"})),
    )
    .await;
    let (_, list) = app.call(Method::GET, "/v1/users/u1/devices", None).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);

    let (s, _) = app
        .call(Method::DELETE, "/v1/users/u1/devices/tok-B", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app
        .call(Method::DELETE, "/v1/users/u1/devices/tok-B", None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(Method::DELETE, "/v1/users/u2/devices/tok:A-1", None)
        .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn invalid_devices_are_422_and_not_stored() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    for bad in [
        json!({"platform": "blackberry", "token": "t"}),
        json!({"platform": "fcm", "token": ""}),
        json!({"platform": "fcm"}),
        json!({"platform": "fcm", "token": 5}),
    ] {
        let (s, err) = app
            .call(Method::POST, "/v1/users/u1/devices", Some(bad.clone()))
            .await;
        assert_eq!(s, 422, "{bad}: {err}");
    }
    let (_, list) = app.call(Method::GET, "/v1/users/u1/devices", None).await;
    assert_eq!(list["devices"], json!([]));
}

#[tokio::test]
async fn segments_are_stored_sized_listed_and_deleted() {
    let app = spawn_app().await;
    for (id, tier) in [("u1", "premium"), ("u2", "premium"), ("u3", "free")] {
        app.call(
            Method::PUT,
            &format!("/v1/users/{id}"),
            Some(json!({"attributes": {"tier": tier}})),
        )
        .await;
    }
    let filter = json!({"all": [{"attr": "tier", "eq": "premium"}]});
    let (s, seg) = app
        .call(
            Method::PUT,
            "/v1/segments/premium",
            Some(json!({"filter": filter})),
        )
        .await;
    assert_eq!(s, 200, "{seg}");
    let (s, got) = app.call(Method::GET, "/v1/segments/premium", None).await;
    assert_eq!(s, 200);
    assert_eq!(got["size"], 2);
    assert_eq!(got["filter"], filter);

    for name in ["a-seg", "b-seg"] {
        app.call(
            Method::PUT,
            &format!("/v1/segments/{name}"),
            Some(json!({"filter": {"attr": "x", "exists": true}})),
        )
        .await;
    }
    let (_, page1) = app.call(Method::GET, "/v1/segments?limit=2", None).await;
    let names: Vec<&str> = page1["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a-seg", "b-seg"]);
    let cursor = page1["next_cursor"].as_str().expect("more pages");
    let (_, page2) = app
        .call(
            Method::GET,
            &format!("/v1/segments?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["segments"][0]["name"], "premium");
    assert_eq!(page2["next_cursor"], Value::Null);

    let (s, err) = app.call(Method::GET, "/v1/segments?limit=0", None).await;
    assert_eq!(s, 422, "{err}");
    let (s, err) = app.call(Method::GET, "/v1/segments?cursor=%%%", None).await;
    assert!(s == 422 || s == 400, "{s} {err}");

    let (s, _) = app.call(Method::DELETE, "/v1/segments/premium", None).await;
    assert_eq!(s, 204);
    let (s, _) = app.call(Method::GET, "/v1/segments/premium", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_segment_filters_are_422_with_a_clear_message_and_change_nothing() {
    let app = spawn_app().await;
    let original = json!({"attr": "tier", "eq": "premium"});
    app.call(
        Method::PUT,
        "/v1/segments/s",
        Some(json!({"filter": original})),
    )
    .await;
    let mut deep = json!({"attr": "a", "eq": 1});
    for _ in 0..40 {
        deep = json!({"not": deep});
    }
    let cases = [
        (json!({"attr": "tier", "like": "prem%"}), "unknown operator"),
        (json!({"attr": "tier", "lt": true}), "lt"),
        (json!({"attr": "tier", "in": "premium"}), "in"),
        (json!({"attr": "tier", "exists": "yes"}), "exists"),
        (json!({"all": {"attr": "x", "eq": 1}}), "all"),
        (json!({"attr": "bad name", "eq": 1}), "bad name"),
        (deep, "nest"),
        (json!("SELECT * FROM users"), "filter"),
    ];
    for (filter, mentions) in cases {
        let (s, err) = app
            .call(
                Method::PUT,
                "/v1/segments/s",
                Some(json!({"filter": filter.clone()})),
            )
            .await;
        assert_eq!(s, 422, "{filter}: {err}");
        let msg = error_message(&err, "invalid");
        assert!(msg.contains(mentions), "{filter}: {msg}");
    }
    let (_, got) = app.call(Method::GET, "/v1/segments/s", None).await;
    assert_eq!(got["filter"], original);
}

#[tokio::test]
async fn templates_are_stored_listed_and_deleted() {
    let app = spawn_app().await;
    let t = json!({
        "in_app": {"title": "Hi {{ user.name }}", "body": "Order {{ data.order_id }} shipped"},
        "push": {"title": "Shipped", "body": "{{ data.order_id }}"},
        "email": {"subject": "Your order", "text": "Plain", "html": "<p>Rich</p>"},
        "sms": {"text": "Shipped {{ data.order_id }}"},
        "webhook": {"body": "{\"order\": \"{{ data.order_id }}\"}"}
    });
    let (s, stored) = app
        .call(Method::PUT, "/v1/templates/shipped", Some(t.clone()))
        .await;
    assert_eq!(s, 200, "{stored}");
    let (s, got) = app.call(Method::GET, "/v1/templates/shipped", None).await;
    assert_eq!(s, 200);
    for channel in ["in_app", "push", "email", "sms", "webhook"] {
        assert_eq!(got[channel], t[channel], "{channel}");
    }
    let (_, list) = app.call(Method::GET, "/v1/templates", None).await;
    assert_eq!(list["templates"][0]["id"], "shipped");
    let (s, _) = app
        .call(Method::DELETE, "/v1/templates/shipped", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app.call(Method::GET, "/v1/templates/shipped", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn broken_or_empty_templates_are_422_and_not_stored() {
    let app = spawn_app().await;
    for bad in [
        json!({}),
        json!({"push": {"title": "Hi {{ user.name", "body": "b"}}),
        json!({"sms": {"text": "{% if %}"}}),
        json!({"in_app": {"title": "t"}}),
        json!({"fax": {"text": "t"}}),
    ] {
        let (s, err) = app
            .call(Method::PUT, "/v1/templates/t1", Some(bad.clone()))
            .await;
        assert_eq!(s, 422, "{bad}: {err}");
        error_message(&err, "invalid");
    }
    let (s, _) = app.call(Method::GET, "/v1/templates/t1", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_template_keeps_its_locale_variants_and_bad_ones_are_422_changing_nothing() {
    let app = spawn_app().await;
    let good = json!({
        "in_app": {"title": "Your order shipped", "body": "Order {{ data.n }}"},
        "push": {"title": "Shipped", "body": "Order {{ data.n }}"},
        "locales": {
            "pt": {"in_app": {"title": "Seu pedido foi enviado", "body": "Pedido {{ data.n }}"}},
            "pt-BR": {"push": {"title": "Enviado!", "body": "Pedido {{ data.n }}"}}
        }
    });
    let (s, got) = app
        .call(Method::PUT, "/v1/templates/shipped", Some(good.clone()))
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["locales"], good["locales"], "{got}");
    let (_, got) = app.call(Method::GET, "/v1/templates/shipped", None).await;
    assert_eq!(
        got["locales"]["pt-BR"]["push"]["title"], "Enviado!",
        "{got}"
    );

    let base = |locales: Value| json!({"in_app": {"title": "t", "body": "b"}, "locales": locales});
    for (bad, mentions) in [
        (
            base(json!({"portuguese": {"in_app": {"title": "t", "body": "b"}}})),
            "language tag",
        ),
        (
            base(json!({"pt-": {"in_app": {"title": "t", "body": "b"}}})),
            "language tag",
        ),
        (
            base(
                json!({"pt": {"in_app": {"title": "t", "body": "b"}}, "PT": {"in_app": {"title": "t", "body": "b"}}}),
            ),
            "twice",
        ),
        (
            base(json!({"pt": {"push": {"title": "t", "body": "b"}}})),
            "lacks",
        ),
        (
            base(json!({"pt": {"in_app": {"title": "Oi {{ user.name", "body": "b"}}})),
            "locales.pt.in_app.title",
        ),
        (
            base(json!({"pt": {"in_app": {"title": "t", "body": "b"}, "locales": {"pt-BR": {}}}})),
            "variants of its own",
        ),
        (base(json!({"pt": {}})), "at least one channel"),
        (base(json!({"pt": {"fax": {"text": "t"}}})), "fax"),
    ] {
        let (s, err) = app
            .call(Method::PUT, "/v1/templates/shipped", Some(bad.clone()))
            .await;
        assert_eq!(s, 422, "{bad}: {err}");
        let msg = error_message(&err, "invalid");
        assert!(msg.contains(mentions), "{bad}: {msg}");
    }
    let (_, got) = app.call(Method::GET, "/v1/templates/shipped", None).await;
    assert_eq!(got["locales"], good["locales"], "unchanged: {got}");
}

#[tokio::test]
async fn an_ndjson_import_upserts_every_line() {
    let app = spawn_app().await;
    let mut body = String::new();
    for i in 0..5_000 {
        body.push_str(&format!(
            "{{\"id\":\"user-{i:05}\",\"email\":\"u{i}@example.com\",\"attributes\":{{\"tier\":\"free\",\"n\":{i}}}}}\n"
        ));
    }
    body.push_str("\n{\"id\":\"last-no-newline\"}");
    let r = app
        .req(Method::POST, "/v1/users/import")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"imported": 5_001}));
    assert_eq!(app.user_count().await, 5_001);
    let (_, u) = app.call(Method::GET, "/v1/users/user-04999", None).await;
    assert_eq!(u["attributes"]["n"], 4999);
}

#[tokio::test]
async fn an_import_with_one_bad_line_names_it_and_imports_nothing() {
    let app = spawn_app().await;
    let good = |i: usize| format!("{{\"id\":\"u{i}\"}}\n");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{}{}{{\"attributes\":{{}}}}\n", good(1), good(2)),
            422,
            "line 3",
        ),
        (
            format!("{}{{\"id\":\"u2\"\n{}", good(1), good(3)),
            400,
            "line 2",
        ),
        (
            format!("{}{{\"id\":\"u2\",\"email\":7}}\n", good(1)),
            422,
            "line 2",
        ),
        (format!("{}{{\"id\":\"bad id\"}}\n", good(1)), 422, "line 2"),
        ("\n\n".to_owned(), 422, "no users"),
    ];
    for (body, status, mentions) in cases {
        let r = app
            .req(Method::POST, "/v1/users/import")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let err: Value = r.json().await.unwrap();
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn an_import_over_the_size_limit_is_413_and_imports_nothing() {
    let app = spawn_app_with(|c| c.api.max_import_bytes = 10_000).await;
    let body: String = (0..1_000)
        .map(|i| format!("{{\"id\":\"u{i}\"}}\n"))
        .collect();
    let r = app
        .req(Method::POST, "/v1/users/import")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    error_message(&r.json().await.unwrap(), "body_too_large");
    assert_eq!(app.user_count().await, 0);
}

#[tokio::test]
async fn a_device_import_registers_every_line_and_names_the_unknown_users() {
    let app = spawn_app().await;
    let users: String = (0..1_500)
        .map(|i| format!("{{\"id\":\"u{i:04}\"}}\n"))
        .collect();
    let (s, body) = app.raw(Method::POST, "/v1/users/import", &users).await;
    assert_eq!(s, 200, "{body}");
    // Two devices each for 1,500 users, three lines for two users who do not exist, and a
    // token that moves from u0000 to u0001 further down the file.
    let mut lines = String::new();
    for i in 0..1_500 {
        for d in 0..2 {
            let platform = if d == 0 { "fcm" } else { "apns" };
            lines.push_str(&format!(
                "{{\"user_id\":\"u{i:04}\",\"platform\":\"{platform}\",\"token\":\"t{i}-{d}\"}}\n"
            ));
        }
        if i == 700 {
            lines.push_str("{\"user_id\":\"ghost-b\",\"platform\":\"fcm\",\"token\":\"g1\"}\n");
            lines.push_str("{\"user_id\":\"ghost-a\",\"platform\":\"fcm\",\"token\":\"g2\"}\n\n");
            lines.push_str("{\"user_id\":\"ghost-b\",\"platform\":\"fcm\",\"token\":\"g3\"}\n");
        }
    }
    lines.push_str("{\"user_id\":\"u0001\",\"platform\":\"fcm\",\"token\":\"t0-0\"}");
    let (s, body) = app.raw(Method::POST, "/v1/devices/import", &lines).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"imported": 3_001, "skipped_unknown_users": 3,
               "unknown_users": ["ghost-a", "ghost-b"]})
    );
    let devices = |u: &str| {
        let app = &app;
        let path = format!("/v1/users/{u}/devices");
        async move {
            let (s, body) = app.call(Method::GET, &path, None).await;
            assert_eq!(s, 200, "{body}");
            let mut tokens: Vec<String> = body["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}",
                        d["platform"].as_str().unwrap(),
                        d["token"].as_str().unwrap()
                    )
                })
                .collect();
            tokens.sort();
            tokens
        }
    };
    assert_eq!(devices("u0000").await, ["apns:t0-1"]);
    assert_eq!(
        devices("u0001").await,
        ["apns:t1-1", "fcm:t0-0", "fcm:t1-0"]
    );
    assert_eq!(devices("u1499").await, ["apns:t1499-1", "fcm:t1499-0"]);

    // Sending the same file again changes nothing.
    let (s, again) = app.raw(Method::POST, "/v1/devices/import", &lines).await;
    assert_eq!((s.as_u16(), again), (200, body));
    assert_eq!(devices("u0001").await.len(), 3);
}

#[tokio::test]
async fn a_device_import_with_one_bad_line_names_it_and_registers_nothing() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    let good = "{\"user_id\":\"u1\",\"platform\":\"fcm\",\"token\":\"ok\"}\n";
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{good}{{\"user_id\":\"u1\",\"platform\":\"fax\",\"token\":\"x\"}}\n"),
            422,
            "line 2",
        ),
        (
            format!("{good}{{\"user_id\":\"u1\",\"platform\":\"fcm\"}}\n"),
            422,
            "line 2",
        ),
        (
            format!("{good}{{\"user_id\":\"u1\",\"platform\":\"fcm\",\"token\":\"\"}}\n"),
            422,
            "line 2",
        ),
        (
            format!(
                "{good}{good}{{\"user_id\":\"bad id\",\"platform\":\"fcm\",\"token\":\"x\"}}\n"
            ),
            422,
            "line 3",
        ),
        (
            format!(
                "{good}{{\"user_id\":\"u1\",\"platform\":\"fcm\",\"token\":\"x\",\"extra\":1}}\n"
            ),
            422,
            "line 2",
        ),
        (format!("{good}{{\"user_id\":\"u1\"\n"), 400, "line 2"),
        ("\n".to_owned(), 422, "no devices"),
    ];
    for (body, status, mentions) in cases {
        let (s, err) = app.raw(Method::POST, "/v1/devices/import", &body).await;
        assert_eq!(s.as_u16(), status, "{body}: {err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    let (_, listed) = app.call(Method::GET, "/v1/users/u1/devices", None).await;
    assert_eq!(listed["devices"], json!([]));
}

#[tokio::test]
async fn a_minted_inbox_token_names_the_user_and_verifies_with_the_secret() {
    let app = spawn_app().await;
    app.call(Method::PUT, "/v1/users/u1", Some(json!({}))).await;
    let (s, body) = app.call(Method::POST, "/v1/users/u1/token", None).await;
    assert_eq!(s, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    let claims =
        herald_core::token::verify(TOKEN_SECRET.as_bytes(), token, chrono::Utc::now()).unwrap();
    assert_eq!(claims.sub, "u1");
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["expires_at"].clone()).unwrap();
    assert_eq!(expires.timestamp(), claims.exp);
}

#[tokio::test]
async fn unknown_endpoints_and_methods_answer_with_the_error_body() {
    let app = spawn_app().await;
    let (s, err) = app.call(Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(s, 404);
    error_message(&err, "not_found");
    let (s, err) = app
        .call(Method::PATCH, "/v1/users/u1", Some(json!({})))
        .await;
    assert_eq!(s, 405);
    error_message(&err, "method_not_allowed");
}

#[tokio::test]
async fn a_template_previews_for_a_user_in_their_locale_with_the_data_given() {
    let app = spawn_app().await;
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/users/ana",
            Some(json!({"email": "ana@example.com", "attributes": {"name": "Ana", "locale": "pt-BR"}})),
        )
        .await;
    assert_eq!(s, 200);
    let t = json!({
        "in_app": {"title": "Hi {{ user.name }}", "body": "Order {{ data.order }} shipped"},
        "email": {"subject": "Order {{ data.order }}", "text": "To {{ user.email }}"},
        "locales": {"pt": {"in_app": {"title": "Olá {{ user.name }}", "body": "Pedido {{ data.order }}"}}}
    });
    let (s, _) = app
        .call(Method::PUT, "/v1/templates/shipped", Some(t.clone()))
        .await;
    assert_eq!(s, 200);
    let (s, p) = app
        .call(
            Method::POST,
            "/v1/previews/template",
            Some(json!({"template": "shipped", "user_id": "ana", "data": {"order": "A-17"}})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["locale"], "pt-BR");
    assert_eq!(
        p["rendered"]["in_app"],
        json!({"title": "Olá Ana", "body": "Pedido A-17"})
    );
    // The variant has no email: the default's, for Ana.
    assert_eq!(p["rendered"]["email"]["subject"], "Order A-17");
    assert_eq!(p["rendered"]["email"]["text"], "To ana@example.com");

    // Content being edited, and no user: `user.*` is empty.
    let (s, p) = app
        .call(
            Method::POST,
            "/v1/previews/template",
            Some(json!({"content": {"push": {"title": "Hi {{ user.name }}!", "body": "{{ data.n }} new"}},
                        "data": {"n": 3}})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        p["rendered"]["push"],
        json!({"title": "Hi !", "body": "3 new"})
    );
    assert!(p["rendered"].get("in_app").is_none(), "{p}");
}

#[tokio::test]
async fn a_bad_preview_is_refused_naming_what_is_wrong() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), 422, "either"),
        (
            json!({"template": "x", "content": {"sms": {"text": "t"}}}),
            422,
            "either",
        ),
        (json!({"template": "nope"}), 404, "template `nope`"),
        (
            json!({"content": {"sms": {"text": "t"}}, "user_id": "nobody"}),
            404,
            "user `nobody`",
        ),
        (
            json!({"content": {"sms": {"text": "{{ oops"}}}),
            422,
            "sms.text",
        ),
        (
            json!({"content": {"sms": {"text": "t"}}, "data": [1]}),
            422,
            "data",
        ),
        (
            json!({"content": {"sms": {"text": "t"}}, "colour": "red"}),
            422,
            "colour",
        ),
    ];
    for (body, status, says) in cases {
        let (s, err) = app
            .call(Method::POST, "/v1/previews/template", Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body} → {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body} → {message}");
    }
    // A template named `preview` is a template like any other.
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/templates/preview",
            Some(json!({"sms": {"text": "t"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.call(Method::GET, "/v1/templates/preview", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_filter_is_sized_with_its_first_users_before_it_is_saved() {
    let app = spawn_app().await;
    for (id, plan) in [("u3", "pro"), ("u1", "pro"), ("u2", "free")] {
        let (s, _) = app
            .call(
                Method::PUT,
                &format!("/v1/users/{id}"),
                Some(json!({"attributes": {"plan": plan}})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, sized) = app
        .call(
            Method::POST,
            "/v1/previews/segment",
            Some(json!({"filter": {"attr": "plan", "eq": "pro"}})),
        )
        .await;
    assert_eq!(s, 200, "{sized}");
    assert_eq!(sized, json!({"size": 2, "sample": ["u1", "u3"]}));
    let (_, list) = app.call(Method::GET, "/v1/segments", None).await;
    assert_eq!(list["segments"], json!([]), "nothing is saved");
    let (s, err) = app
        .call(
            Method::POST,
            "/v1/previews/segment",
            Some(json!({"filter": {"attr": "plan", "like": "p%"}})),
        )
        .await;
    assert_eq!(s, 422, "{err}");
}

#[tokio::test]
async fn the_console_is_served_without_the_key_and_its_api_calls_need_it() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for (path, kind, has) in [
        ("/console", "text/html", "/console/console.js"),
        (
            "/console/console.js",
            "text/javascript",
            "/v1/previews/segment",
        ),
        ("/console/console.css", "text/css", "font"),
    ] {
        let resp = client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(resp.text().await.unwrap().contains(has), "{path}");
    }
    let resp = client
        .get(format!("{}/v1/campaigns", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
