//! Inbox feed states end to end: items arrive through the admin API and the fan-out (personal
//! rows) or as a broadcast merged at read time; the user acts on them through `POST
//! /v1/inbox/bulk` on one inbox node and the user's socket on the other node hears it. Once on
//! `herald serve`, once with the roles apart on Redis (two inbox nodes), MySQL and JetStream
//! when their variables are set.

use crate::cross_node::{
    admin, connect, create_completed as create, eventually_metric, inbox_of, next_item as item,
    token, Deployment,
};
use crate::live_client::next_frame;
use crate::roles::Api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn state_changes_made_on_one_device_reach_the_other_and_every_read_on_herald_serve() {
    let d = Deployment::embedded().await;
    let serve = d.start("serve").await;
    let api = admin(&serve);
    scenario(&api, &serve.base, &serve.base).await;
}

#[tokio::test]
async fn state_changes_made_through_one_inbox_node_reach_sockets_on_another() {
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api_role = d.start("api").await;
    let _fanout = d.start("fanout").await;
    let a = d.start("inbox").await;
    let b = d.start("inbox").await;
    let api = admin(&api_role);
    scenario(&api, &a.base, &b.base).await;
}

/// User `u` has a socket on node `a` (the phone) and acts through node `b` (the laptop).
async fn scenario(api: &Api, a: &str, b: &str) {
    let (s, body) = api
        .call(
            Method::PUT,
            "/v1/users/u",
            Some(json!({"attributes": {"plan": "pro"}})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let (s, body) = api
        .call(
            Method::PUT,
            "/v1/segments/pro",
            Some(json!({"filter": {"attr": "plan", "eq": "pro"}})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    let mut phone = connect(a, "u", "").await;
    eventually_metric(a, "herald_live_users_followed", 1.0).await;

    let mut ids = Vec::new();
    for title in ["one", "two", "three"] {
        let id = create(
            api,
            json!({"audience": {"users": ["u"]}, "content": {"title": title, "body": "b"},
                   "channels": ["in_app"]}),
        )
        .await;
        let item = item(&mut phone).await;
        assert_eq!(item["title"], title);
        assert_eq!(
            (item["seen"].clone(), item["archived"].clone()),
            (json!(false), json!(false))
        );
        ids.push((id, item["id"].as_str().unwrap().to_owned()));
    }
    // A broadcast stays active (served at read time): its activation reaches the socket.
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
    let news_item = item(&mut phone).await;
    assert_eq!(
        (news_item["title"].clone(), news_item["kind"].clone()),
        (json!("news"), json!("broadcast"))
    );
    let page = inbox(b, "").await;
    let titles = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(titles(&page), ["news", "three", "two", "one"]);
    assert_eq!(
        (page["unread_count"].clone(), page["unseen_count"].clone()),
        (json!(4), json!(4))
    );
    let news = page["items"][0]["id"].as_str().unwrap().to_owned();

    // Opening the feed on the laptop: everything seen; the phone hears it.
    let (s, body) = bulk(b, json!({"action": "seen", "all": true})).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"updated": 4})));
    assert_eq!(
        next_frame(&mut phone).await,
        json!({"type": "marked", "action": "seen", "all": true})
    );
    // Archiving a personal item and the broadcast together.
    let (s, body) = bulk(b, json!({"action": "archive", "ids": [ids[0].1, news]})).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"updated": 2})));
    assert_eq!(
        next_frame(&mut phone).await,
        json!({"type": "marked", "action": "archive", "ids": [ids[0].1, news]})
    );
    // Reading everything older than "three".
    let three_cursor = page["items"][1]["cursor"].as_str().unwrap().to_owned();
    let (s, body) = bulk(b, json!({"action": "read", "before": three_cursor})).await;
    assert_eq!(
        (s, body),
        (StatusCode::OK, json!({"updated": 2})),
        "archived or not"
    );
    assert_eq!(
        next_frame(&mut phone).await,
        json!({"type": "marked", "action": "read", "before": three_cursor})
    );

    // Both nodes read the same states.
    for node in [a, b] {
        let page = inbox(node, "").await;
        assert_eq!(titles(&page), ["three", "two"], "{node}");
        assert_eq!(
            (page["unread_count"].clone(), page["unseen_count"].clone()),
            (json!(1), json!(0))
        );
        assert_eq!(
            titles(&inbox(node, "?archived=only").await),
            ["news", "one"]
        );
        assert_eq!(
            titles(&inbox(node, "?status=unread&archived=include").await),
            ["news", "three"]
        );
    }
}

async fn inbox(node: &str, query: &str) -> Value {
    inbox_of(node, "u", query).await
}

async fn bulk(node: &str, body: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{node}/v1/inbox/bulk"))
        .bearer_auth(token("u"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}
