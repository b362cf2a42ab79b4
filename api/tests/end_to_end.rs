//! The product end to end, through every role: campaigns created on the admin API reach the
//! users' inboxes, their live sockets and their devices (push gateway → fake FCM), once each;
//! reads, dismissals and preferences made on one node are seen on the others. In-process this
//! is `herald serve`; with `HERALD_TEST_ROLES=processes` it is the distributed acceptance run's
//! deployment (two of each role, round-robins in front of the API and inbox nodes), where a
//! socket and the request that affects it are on different processes.

mod common;

#[path = "../../tests/support/live_client.rs"]
mod live_client;

use common::*;
use live_client::{assert_quiet, metric, next_frame, Ws, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn token(user: &str) -> String {
    live_client::token(TOKEN_SECRET, user)
}

impl TestApp {
    async fn user_with_devices(&self, user: &str, tokens: &[&str]) {
        let (s, body) = self
            .call(
                Method::PUT,
                &format!("/v1/users/{user}"),
                Some(json!({"attributes": {}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
        for t in tokens {
            let (s, body) = self
                .call(
                    Method::POST,
                    &format!("/v1/users/{user}/devices"),
                    Some(json!({"platform": "fcm", "token": t})),
                )
                .await;
            assert!(s.is_success(), "{body}");
        }
    }

    async fn campaign(&self, body: Value) -> String {
        let (s, created) = self.call(Method::POST, "/v1/campaigns", Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    /// Polls the campaign until `done` holds; returns it.
    async fn campaign_until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (s, c) = self
                .call(Method::GET, &format!("/v1/campaigns/{id}"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{c}");
            if done(&c) {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "campaign {id}: not {what} within {WAIT:?}: {c:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request of `user`'s to the inbox API (through the inbox round-robin as processes).
    async fn inbox_call(&self, user: &str, method: Method, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.inbox))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("inbox request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn inbox_page(&self, user: &str) -> Value {
        let (s, page) = self.inbox_call(user, Method::GET, "/v1/inbox").await;
        assert_eq!(s, StatusCode::OK, "{page}");
        page
    }

    fn fcm(&self) -> &herald_push::fakes::FakeFcm {
        self.fcm.as_ref().expect("spawn_deployment runs a fake FCM")
    }
}

/// A live socket of `user` on `node` (an inbox node's own base URL).
async fn connect(node: &str, user: &str) -> Ws {
    live_client::connect(TOKEN_SECRET, node, user, "").await
}

/// Sockets of `(node, user)`, returned once every node's live hub follows its users (a
/// socket is upgraded before its user's follow is confirmed, and an event published in
/// between would not be sent live).
async fn connect_all(plan: &[(&str, &str)]) -> Vec<Ws> {
    let mut sockets = Vec::new();
    let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (node, user) in plan {
        sockets.push(connect(node, user).await);
        users.entry(node).or_default().insert(user);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    for (node, users) in users {
        // At least: in-process the gauge is the test binary's, which other cases share.
        while metric(node, "herald_live_users_followed").await < users.len() as f64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{node} does not follow {users:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    sockets
}

/// The titles of an inbox page's items, newest first.
fn titles(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_campaign_reaches_each_users_inbox_live_sockets_and_devices_once() {
    let app = spawn_deployment(|_| {}).await;
    app.user_with_devices("alice", &["tok-alice-1", "tok-alice-2"])
        .await;
    app.user_with_devices("bob", &["tok-bob-1"]).await;
    // Alice has a socket on the first and the last inbox node, Bob one on the last.
    let (first, last) = (&app.inbox_nodes[0], app.inbox_nodes.last().unwrap());
    let mut ws = connect_all(&[(first, "alice"), (last, "alice"), (last, "bob")]).await;

    let id = app
        .campaign(json!({"audience": {"users": ["alice", "bob"]},
                          "content": {"title": "Your order shipped", "body": "b"},
                          "channels": ["in_app", "push"]}))
        .await;

    let mut ids = Vec::new();
    for socket in ws.iter_mut() {
        let f = next_frame(socket).await;
        assert_eq!(f["type"], "notification", "{f}");
        assert_eq!(f["item"]["title"], "Your order shipped", "{f}");
        ids.push(f["item"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "both of Alice's devices get her one row");
    let c = app
        .campaign_until(&id, "sent", |c| {
            c["status"] == "completed" && c["deliveries"]["push"]["sent"] == 3
        })
        .await;
    // One message per user, one send per device.
    assert_eq!(c["deliveries"]["push"]["queued"], 2, "{c:#}");
    assert_eq!(c["progress"]["notifications_written"], 2, "{c:#}");
    assert_eq!(c["deliveries"]["push"]["failed"], 0, "{c:#}");
    for t in ["tok-alice-1", "tok-alice-2", "tok-bob-1"] {
        assert_eq!(app.fcm().requests_for(t), 1, "{t}");
    }
    assert_eq!(app.fcm().sent(), 3);
    for socket in ws.iter_mut() {
        assert_quiet(socket).await;
    }

    // The inbox API on any node shows the row, unread; a read on one node reaches both of
    // Alice's sockets, and the count on every node.
    for _ in 0..2 {
        let page = app.inbox_page("alice").await;
        assert_eq!(titles(&page), ["Your order shipped"], "{page}");
        assert_eq!(page["unread_count"], 1, "{page}");
    }
    let (s, body) = app
        .inbox_call("alice", Method::POST, &format!("/v1/inbox/{}/read", ids[0]))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    for socket in ws[..2].iter_mut() {
        assert_eq!(
            next_frame(socket).await,
            json!({"type": "read", "id": ids[0]})
        );
    }
    for _ in 0..2 {
        let (s, n) = app
            .inbox_call("alice", Method::GET, "/v1/inbox/unread_count")
            .await;
        assert_eq!(
            (s, n),
            (
                StatusCode::OK,
                json!({"unread_count": 0, "unseen_count": 0})
            )
        );
    }
    // Bob's socket heard nothing of Alice's read; his row is still unread.
    assert_quiet(&mut ws[2]).await;
    assert_eq!(app.inbox_page("bob").await["unread_count"], 1);

    // A dismissal through one node is gone on every node.
    let bob_row = app.inbox_page("bob").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, body) = app
        .inbox_call("bob", Method::POST, &format!("/v1/inbox/{bob_row}/dismiss"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    for _ in 0..2 {
        let page = app.inbox_page("bob").await;
        assert!(titles(&page).is_empty(), "{page}");
        assert_eq!(page["unread_count"], 0, "{page}");
    }
    for mut socket in ws {
        socket.close(None).await.unwrap();
    }
}

/// Users and their devices imported in bulk (NDJSON) are who a segment campaign's pushes go
/// to: every imported device gets one send, the device of a user who does not exist none.
/// The batch's pushes travel in pieces of 64 users (`fanout.message_users`), each claimed and
/// sent by the gateway on its own.
#[tokio::test]
async fn devices_imported_in_bulk_each_get_one_push_of_a_segment_campaign_sent_in_pieces() {
    let app = spawn_deployment(|c| {
        c.fanout.batch_size = Some(1000);
        c.fanout.message_users = 64;
    })
    .await;
    let users: String = (0..300)
        .map(|i| format!("{{\"id\":\"bulk-{i:03}\",\"attributes\":{{\"cohort\":\"bulk\"}}}}\n"))
        .collect();
    let (s, body) = app.raw(Method::POST, "/v1/users/import", &users).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let mut devices = String::new();
    for i in 0..300 {
        devices.push_str(&format!(
            "{{\"user_id\":\"bulk-{i:03}\",\"platform\":\"fcm\",\"token\":\"bulk-tok-{i}\"}}\n"
        ));
        if i % 3 == 0 {
            devices.push_str(&format!(
                "{{\"user_id\":\"bulk-{i:03}\",\"platform\":\"fcm\",\"token\":\"bulk-tok-{i}-b\"}}\n"
            ));
        }
    }
    devices
        .push_str("{\"user_id\":\"bulk-nobody\",\"platform\":\"fcm\",\"token\":\"bulk-tok-x\"}\n");
    let (s, body) = app.raw(Method::POST, "/v1/devices/import", &devices).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 400, "{body}");
    assert_eq!(body["unknown_users"], json!(["bulk-nobody"]), "{body}");
    let (s, body) = app
        .call(
            Method::PUT,
            "/v1/segments/bulk-cohort",
            Some(json!({"filter": {"attr": "cohort", "eq": "bulk"}})),
        )
        .await;
    assert!(s.is_success(), "{body}");

    let id = app
        .campaign(json!({"audience": {"segment": "bulk-cohort"},
                          "content": {"title": "Imported", "body": "b"},
                          "channels": ["push"]}))
        .await;
    let c = app
        .campaign_until(&id, "sent", |c| {
            c["status"] == "completed" && c["deliveries"]["push"]["sent"] == 400
        })
        .await;
    assert_eq!(c["deliveries"]["push"]["failed"], 0, "{c:#}");
    for i in 0..300 {
        assert_eq!(app.fcm().requests_for(&format!("bulk-tok-{i}")), 1, "{i}");
        if i % 3 == 0 {
            assert_eq!(app.fcm().requests_for(&format!("bulk-tok-{i}-b")), 1, "{i}");
        }
    }
    assert_eq!(app.fcm().requests_for("bulk-tok-x"), 0);
    assert_eq!(app.fcm().sent(), 400);
}

#[tokio::test]
async fn each_user_reads_the_template_variant_of_their_locale_with_its_fallbacks() {
    let app = spawn_deployment(|_| {}).await;
    let (s, body) = app
        .call(
            Method::PUT,
            "/v1/templates/loc-shipped",
            Some(json!({
                "in_app": {"title": "Shipped", "body": "Order {{ data.n }} for {{ user.id }}"},
                "push": {"title": "Shipped", "body": "Order {{ data.n }}"},
                "locales": {
                    "pt": {"in_app": {"title": "Enviado", "body": "Pedido {{ data.n }} para {{ user.id }}"}},
                    "pt-BR": {"push": {"title": "Enviado!", "body": "Pedido {{ data.n }}"}},
                    "fr": {"in_app": {"title": "Expédié", "body": "Commande {{ data.n }}"}}
                }
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let people = [
        ("loc-ana", Some("pt-BR")),
        ("loc-rui", Some("pt")),
        ("loc-eva", Some("PT_pt")),
        ("loc-zoe", Some("fr-CA")),
        ("loc-ken", Some("ja")),
        ("loc-bob", None),
    ];
    for (user, locale) in people {
        let attributes = match locale {
            Some(l) => json!({"locale": l}),
            None => json!({}),
        };
        let (s, body) = app
            .call(
                Method::PUT,
                &format!("/v1/users/{user}"),
                Some(json!({"attributes": attributes})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }
    let users: Vec<&str> = people.iter().map(|(u, _)| *u).collect();
    let id = app
        .campaign(
            json!({"audience": {"users": users}, "template": "loc-shipped",
                          "data": {"n": 42}, "channels": ["in_app"]}),
        )
        .await;
    app.campaign_until(&id, "completed", |c| c["status"] == "completed")
        .await;
    for (user, title, body) in [
        ("loc-ana", "Enviado", "Pedido 42 para loc-ana"),
        ("loc-rui", "Enviado", "Pedido 42 para loc-rui"),
        ("loc-eva", "Enviado", "Pedido 42 para loc-eva"),
        ("loc-zoe", "Expédié", "Commande 42"),
        ("loc-ken", "Shipped", "Order 42 for loc-ken"),
        ("loc-bob", "Shipped", "Order 42 for loc-bob"),
    ] {
        let page = app.inbox_page(user).await;
        let item = &page["items"][0];
        assert_eq!(item["title"], title, "{user}: {page}");
        assert_eq!(item["body"], body, "{user}: {page}");
    }
}

#[tokio::test]
async fn a_push_opt_out_made_through_the_api_reaches_the_next_campaign_on_every_node() {
    let app = spawn_deployment(|c| c.fanout.batch_size = Some(1)).await;
    let users: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    for u in &users {
        app.user_with_devices(u, &[&format!("tok-{u}")]).await;
    }
    let send = |title: &str| {
        json!({"audience": {"users": users}, "content": {"title": title, "body": "b"},
               "channels": ["in_app", "push"]})
    };
    // The first campaign fills every fan-out node's preference cache with "push allowed".
    let first = app.campaign(send("first")).await;
    app.campaign_until(&first, "sent", |c| c["deliveries"]["push"]["sent"] == 6)
        .await;

    // Half the users opt out of push; batches of one user spread the next campaign over
    // both fan-out nodes, each of which must see the change.
    for u in &users[..3] {
        let (s, body) = app
            .call(
                Method::PUT,
                &format!("/v1/users/{u}/preferences"),
                Some(json!({"channels": {"push": false}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let second = app.campaign(send("second")).await;
    let c = app
        .campaign_until(&second, "sent", |c| {
            c["status"] == "completed" && c["deliveries"]["push"]["sent"] == 3
        })
        .await;
    assert_eq!(c["progress"]["notifications_written"], 6, "{c:#}");
    assert_eq!(c["deliveries"]["push"]["queued"], 3, "{c:#}");
    for (i, u) in users.iter().enumerate() {
        let want = if i < 3 { 1 } else { 2 };
        assert_eq!(app.fcm().requests_for(&format!("tok-{u}")), want, "{u}");
        // The inbox row is not a push: everyone has both.
        assert_eq!(titles(&app.inbox_page(u).await), ["second", "first"], "{u}");
    }
}

#[tokio::test]
async fn a_broadcast_reaches_every_connected_user_on_every_node_once_and_each_inbox() {
    let app = spawn_deployment(|_| {}).await;
    for u in ["carol", "dave", "erin"] {
        app.user_with_devices(u, &[]).await;
    }
    let (first, last) = (&app.inbox_nodes[0], app.inbox_nodes.last().unwrap());
    let mut ws = connect_all(&[(first, "carol"), (last, "dave"), (last, "carol")]).await;

    let id = app
        .campaign(json!({"audience": {"all": true},
                          "content": {"title": "Maintenance tonight", "body": "b"},
                          "channels": ["in_app"]}))
        .await;
    for socket in ws.iter_mut() {
        let f = next_frame(socket).await;
        assert_eq!(f["type"], "notification", "{f}");
        assert_eq!(f["item"]["kind"], "broadcast", "{f}");
        assert_eq!(f["item"]["title"], "Maintenance tonight", "{f}");
        assert_quiet(socket).await;
    }
    // A broadcast stays active (served to inboxes) until it expires or is cancelled.
    let c = app
        .campaign_until(&id, "active", |c| c["status"] == "active")
        .await;
    assert_eq!(
        c["progress"]["notifications_written"], 0,
        "no row per user: {c:#}"
    );
    // Erin was offline: the broadcast waits in her inbox, on any node.
    for _ in 0..2 {
        let page = app.inbox_page("erin").await;
        assert_eq!(titles(&page), ["Maintenance tonight"], "{page}");
        assert_eq!(page["unread_count"], 1, "{page}");
    }
    // Read by Carol on one node: her sockets on both nodes hear of it, Dave's does not.
    let bid = app.inbox_page("carol").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, body) = app
        .inbox_call("carol", Method::POST, &format!("/v1/inbox/{bid}/read"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        next_frame(&mut ws[0]).await,
        json!({"type": "read", "id": bid})
    );
    assert_eq!(
        next_frame(&mut ws[2]).await,
        json!({"type": "read", "id": bid})
    );
    assert_quiet(&mut ws[1]).await;
    assert_eq!(app.inbox_page("carol").await["unread_count"], 0);
    assert_eq!(app.inbox_page("dave").await["unread_count"], 1);
}

/// A campaign's content changed after it was sent (`PATCH /v1/campaigns/{id}/content`): each
/// inbox shows the new text rendered for its user, an open socket hears `updated`, and each
/// device's push is replaced by one with the same collapse key (the campaign id), not
/// counted as a second delivery. Bad changes answer a 4xx and change nothing.
#[tokio::test]
async fn a_changed_campaign_shows_its_new_text_everywhere_and_replaces_its_pushes() {
    let app = spawn_deployment(|_| {}).await;
    for (user, name) in [("alice", "Alice"), ("bob", "Bob")] {
        app.user_with_devices(user, &[&format!("tok-{user}")]).await;
        let (s, body) = app
            .call(
                Method::PUT,
                &format!("/v1/users/{user}"),
                Some(json!({"attributes": {"name": name}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }
    let mut ws = connect_all(&[(&app.inbox_nodes[0], "alice")]).await;
    let id = app
        .campaign(json!({"audience": {"users": ["alice", "bob"]},
                          "content": {"title": "Sale for {{ user.name }}", "body": "Monday"},
                          "channels": ["in_app", "push"]}))
        .await;
    let first = next_frame(&mut ws[0]).await;
    assert_eq!(first["item"]["title"], "Sale for Alice", "{first}");
    app.campaign_until(&id, "sent", |c| {
        c["status"] == "completed" && c["deliveries"]["push"]["sent"] == 2
    })
    .await;
    let pushed = app.fcm().last_message("tok-alice").expect("a push");
    assert_eq!(pushed["android"]["collapse_key"], id.as_str(), "{pushed}");
    assert_eq!(
        pushed["apns"]["headers"]["apns-collapse-id"],
        id.as_str(),
        "{pushed}"
    );

    let path = format!("/v1/campaigns/{id}/content");
    let change = json!({"content": {"title": "Sale moved, {{ user.name }}", "body": "{{ data.when }}"},
                        "data": {"when": "Friday"}});
    let (s, revised) = app.call(Method::PATCH, &path, Some(change)).await;
    assert_eq!(s, StatusCode::OK, "{revised}");
    assert_eq!(revised["revision"], 1, "{revised}");
    assert_eq!(revised["replacing_pushes"], true, "{revised}");

    // The open socket hears the item as it is now; every inbox shows it on every node.
    let updated = next_frame(&mut ws[0]).await;
    assert_eq!(updated["type"], "updated", "{updated}");
    assert_eq!(updated["item"]["id"], first["item"]["id"], "{updated}");
    assert_eq!(updated["item"]["title"], "Sale moved, Alice", "{updated}");
    assert_eq!(updated["item"]["body"], "Friday", "{updated}");
    for (user, title) in [("alice", "Sale moved, Alice"), ("bob", "Sale moved, Bob")] {
        for _ in 0..2 {
            let page = app.inbox_page(user).await;
            assert_eq!(titles(&page), [title], "{page}");
            assert_eq!(
                page["items"][0]["data"],
                json!({"when": "Friday"}),
                "{page}"
            );
            assert_eq!(page["unread_count"], 1, "{page}");
        }
    }
    // Each device's push is replaced (a few seconds after the change), once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.fcm().requests_for("tok-alice") < 2 || app.fcm().requests_for("tok-bob") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes not replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replaced = app.fcm().last_message("tok-bob").unwrap();
    assert_eq!(
        replaced["notification"]["title"], "Sale moved, Bob",
        "{replaced}"
    );
    assert_eq!(replaced["android"]["collapse_key"], id.as_str());
    assert_eq!(
        replaced["data"]["notification_id"],
        app.inbox_page("bob").await["items"][0]["id"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.fcm().requests_for("tok-alice"), 2);
    let c = app.campaign_until(&id, "counted", |_| true).await;
    assert_eq!(
        c["deliveries"]["push"]["sent"], 2,
        "replacements are not deliveries: {c:#}"
    );

    // Bad changes: a 4xx, and the inbox still shows revision 1.
    for (body, status) in [
        (
            json!({"content": {"title": "x", "body": "y"}, "template": "t"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"content": {"title": "{{ oops", "body": "y"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"content": {"title": "x", "body": "y"}, "data": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"content": {"title": "x", "body": "y"}, "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"template": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (s, err) = app.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    let (s, err) = app
        .call(
            Method::PATCH,
            "/v1/campaigns/nope/content",
            Some(json!({"content": {"title": "x", "body": "y"}})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(titles(&app.inbox_page("bob").await), ["Sale moved, Bob"]);
    assert_quiet(&mut ws[0]).await;

    // Changed again: revision 2. Retracted: nothing left to change.
    let (s, again) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"content": {"title": "Sale is off", "body": "b"}})),
        )
        .await;
    assert_eq!(
        (s, again["revision"].clone()),
        (StatusCode::OK, json!(2)),
        "{again}"
    );
    let again = next_frame(&mut ws[0]).await;
    assert_eq!(again["item"]["title"], "Sale is off", "{again}");
    assert_eq!(
        again["item"]["data"],
        json!({"when": "Friday"}),
        "data kept: {again}"
    );
    let (s, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/campaigns/{id}/notifications"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, err) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"content": {"title": "x", "body": "y"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
}

/// A broadcast's change shows in every inbox; a campaign changed before it starts is sent
/// with the new content; a cancelled campaign cannot be changed.
#[tokio::test]
async fn a_changed_broadcast_and_a_campaign_changed_before_its_start_show_the_new_text() {
    let app = spawn_deployment(|_| {}).await;
    for u in ["carol", "dave"] {
        app.user_with_devices(u, &[]).await;
    }
    let mut ws = connect_all(&[(&app.inbox_nodes[0], "carol")]).await;
    let id = app
        .campaign(json!({"audience": {"all": true},
                          "content": {"title": "Maintenance tonight", "body": "b"},
                          "channels": ["in_app"]}))
        .await;
    let first = next_frame(&mut ws[0]).await;
    assert_eq!(first["item"]["kind"], "broadcast", "{first}");
    app.campaign_until(&id, "active", |c| c["status"] == "active")
        .await;
    let (s, revised) = app
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}/content"),
            Some(json!({"content": {"title": "Maintenance at {{ data.at }}", "body": "b"}, "data": {"at": "2am"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{revised}");
    assert_eq!(revised["broadcast_id"], first["item"]["id"], "{revised}");
    assert_eq!(revised["replacing_pushes"], false, "{revised}");
    let updated = next_frame(&mut ws[0]).await;
    assert_eq!(updated["type"], "updated", "{updated}");
    assert_eq!(updated["item"]["title"], "Maintenance at 2am", "{updated}");
    for u in ["carol", "dave"] {
        assert_eq!(titles(&app.inbox_page(u).await), ["Maintenance at 2am"]);
    }

    // Changed before they start: the rows are written, and the broadcast stored and
    // announced, with the new text.
    let starts_at = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let later = app
        .campaign(
            json!({"audience": {"users": ["dave"]}, "starts_at": starts_at,
                          "content": {"title": "Draft", "body": "b"}, "channels": ["in_app"]}),
        )
        .await;
    let later_broadcast = app
        .campaign(json!({"audience": {"all": true}, "starts_at": starts_at,
                          "content": {"title": "Draft notice", "body": "b"}, "channels": ["in_app"]}))
        .await;
    for (id, title) in [(&later, "Final"), (&later_broadcast, "Final notice")] {
        let (s, revised) = app
            .call(
                Method::PATCH,
                &format!("/v1/campaigns/{id}/content"),
                Some(json!({"content": {"title": title, "body": "b"}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{revised}");
        assert_eq!(revised["replacing_pushes"], false, "{revised}");
    }
    let announced = next_frame(&mut ws[0]).await;
    assert_eq!(announced["type"], "notification", "{announced}");
    assert_eq!(announced["item"]["title"], "Final notice", "{announced}");
    app.campaign_until(&later, "completed", |c| c["status"] == "completed")
        .await;
    assert_eq!(
        titles(&app.inbox_page("dave").await),
        ["Final", "Final notice", "Maintenance at 2am"]
    );

    // Cancelled: a conflict, nothing changed.
    let (s, body) = app
        .call(Method::POST, &format!("/v1/campaigns/{id}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, err) = app
        .call(
            Method::PATCH,
            &format!("/v1/campaigns/{id}/content"),
            Some(json!({"content": {"title": "x", "body": "y"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
}
