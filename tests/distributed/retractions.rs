//! Retraction end to end (`DELETE /v1/campaigns/{id}/notifications`): a campaign sent through
//! the admin API, the fan-out and the push gateway (fake FCM) is taken back; the item leaves
//! the inboxes on every inbox node and the open socket hears it, the push still waiting (a
//! presence-aware push with a delay) is cancelled, and a broadcast leaves too. Once on `herald
//! serve`, once with the roles apart on Redis (two inbox nodes), MySQL and JetStream when their
//! variables are set.

use crate::cross_node::{
    admin, completed, connect, eventually_metric, inbox_of, next_item as item, push_counts, token,
    Deployment,
};
use crate::live_client::next_frame;
use crate::roles::Api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_retracted_campaign_leaves_inboxes_and_sockets_and_its_waiting_push_is_cancelled_on_herald_serve(
) {
    let d = Deployment::embedded().await;
    let serve = d.start("serve").await;
    let api = admin(&serve);
    scenario(&d, &api, &serve.base, &serve.base).await;
}

#[tokio::test]
async fn a_retraction_reaches_every_inbox_node_and_the_push_gateway_when_roles_run_apart() {
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api_role = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let _push = d.start("push").await;
    let a = d.start("inbox").await;
    let b = d.start("inbox").await;
    let api = admin(&api_role);
    scenario(&d, &api, &a.base, &b.base).await;
}

/// `on` has a socket on node `a`; `off` has none. Both have one FCM device and the `pro` plan.
async fn scenario(d: &Deployment, api: &Api, a: &str, b: &str) {
    for user in ["on", "off"] {
        api.user_with_device(user, &format!("ok-{user}")).await;
        let (s, body) = api
            .call(
                Method::PUT,
                &format!("/v1/users/{user}"),
                Some(json!({"attributes": {"plan": "pro"}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }
    let (s, body) = api
        .call(
            Method::PUT,
            "/v1/segments/pro",
            Some(json!({"filter": {"attr": "plan", "eq": "pro"}})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let mut on = connect(a, "on", "").await;
    eventually_metric(a, "herald_live_users_followed", 1.0).await;

    // The connected user's push waits 3 s for a read; the other's goes at once.
    let (s, created) = api
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(json!({"audience": {"users": ["on", "off"]}, "content": {"title": "oops", "body": "b"},
                        "channels": ["in_app", "push"], "push_when": "offline", "online_push_delay_s": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let oops = item(&mut on).await;
    assert_eq!(oops["title"], "oops");
    completed(api, &id).await;
    let push = push_counts(api, &id, |p| p["sent"] == 1).await;
    assert_eq!(d.fcm.requests_for("ok-off"), 1, "{push}");
    assert_eq!(unread(b, "on").await, 1);

    let (s, retracted) = api
        .call(
            Method::DELETE,
            &format!("/v1/campaigns/{id}/notifications"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{retracted}");
    assert_eq!(retracted["campaign_id"], id.as_str());
    assert!(retracted["broadcast_id"].is_null());
    // The open socket hears it; every node's inbox stops showing it, for both users.
    assert_eq!(
        next_frame(&mut on).await,
        json!({"type": "retracted", "id": oops["id"]})
    );
    for node in [a, b] {
        for user in ["on", "off"] {
            let page = inbox_of(node, user, "?archived=include").await;
            assert!(
                page["items"].as_array().unwrap().is_empty(),
                "{node} {user}: {page}"
            );
            assert_eq!(
                (page["unread_count"].clone(), page["unseen_count"].clone()),
                (json!(0), json!(0))
            );
        }
    }
    // A client still showing it cannot act on it any more.
    let id_of_oops = oops["id"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{b}/v1/inbox/{id_of_oops}/read"))
        .bearer_auth(token("on"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = reqwest::Client::new()
        .post(format!("{b}/v1/inbox/bulk"))
        .bearer_auth(token("on"))
        .json(&json!({"action": "archive", "ids": [id_of_oops]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"updated": 0, "not_found": [id_of_oops]}));
    // The waiting push is cancelled, not sent, and counted so.
    let push = push_counts(api, &id, |p| p["cancelled"] == 1).await;
    assert_eq!(push["sent"], 1, "{push}");
    assert_eq!(
        d.fcm.requests_for("ok-on"),
        0,
        "the retracted push never went out"
    );
    let (s, explained) = api
        .call(
            Method::GET,
            &format!("/v1/campaigns/{id}/recipients/on"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{explained}");
    assert_eq!(
        explained["channels"]["push"]["status"], "cancelled",
        "{explained}"
    );
    // Asked again: the same answer. Unknown: 404; not started: 409, and nothing changes.
    let (s, again) = api
        .call(
            Method::DELETE,
            &format!("/v1/campaigns/{id}/notifications"),
            None,
        )
        .await;
    assert_eq!((s, again), (StatusCode::OK, retracted));
    // Announced again (a client drops what it no longer shows).
    assert_eq!(
        next_frame(&mut on).await,
        json!({"type": "retracted", "id": oops["id"]})
    );
    let (s, body) = api
        .call(
            Method::DELETE,
            "/v1/campaigns/no-such-campaign/notifications",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, scheduled) = api
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"audience": {"users": ["on"]}, "content": {"title": "later", "body": "b"},
                        "channels": ["in_app"], "starts_at": later}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{scheduled}");
    let sid = scheduled["id"].as_str().unwrap();
    let (s, body) = api
        .call(
            Method::DELETE,
            &format!("/v1/campaigns/{sid}/notifications"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(api.campaign(sid).await["status"], "scheduled");

    // A broadcast: stored once, it leaves every inbox at once.
    let (s, created) = api
        .call(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"audience": {"segment": "pro"}, "strategy": "broadcast",
                        "content": {"title": "news", "body": "b"}, "channels": ["in_app"]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    let bid = created["id"].as_str().unwrap().to_owned();
    let news = item(&mut on).await;
    assert_eq!(news["kind"], "broadcast");
    assert_eq!(inbox_of(b, "off", "").await["items"][0]["title"], "news");
    let (s, retracted) = api
        .call(
            Method::DELETE,
            &format!("/v1/campaigns/{bid}/notifications"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{retracted}");
    assert_eq!(retracted["broadcast_id"], news["id"]);
    assert_eq!(
        next_frame(&mut on).await,
        json!({"type": "retracted", "id": news["id"]})
    );
    for node in [a, b] {
        for user in ["on", "off"] {
            let page = inbox_of(node, user, "").await;
            assert!(
                page["items"].as_array().unwrap().is_empty(),
                "{node} {user}: {page}"
            );
        }
    }
    assert_eq!(api.campaign(&bid).await["status"], "cancelled");
}

async fn unread(node: &str, user: &str) -> u64 {
    inbox_of(node, user, "").await["unread_count"]
        .as_u64()
        .unwrap()
}
