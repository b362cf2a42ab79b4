//! Digests end to end: events of a digest rule go in through the admin API, the process that
//! would send the digest is killed (SIGKILL) inside the window and started again, and the user
//! gets exactly one notification per digest (inbox row and push), whose template saw the
//! events. Once on `herald serve` (embedded engines), once with the roles apart on Redis, and
//! MySQL and JetStream when their variables are set.

use crate::cross_node::{admin, token, Deployment};
use crate::live_client::WAIT;
use crate::roles::{Api, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// The digest window: long enough for the kill and the restart to fall inside it.
const WINDOW_S: u64 = 4;

#[tokio::test]
async fn a_digest_is_sent_once_after_a_restart_inside_its_window_on_herald_serve() {
    let d = Deployment::embedded().await;
    let mut serve = d.start("serve").await;
    let api = admin(&serve);
    setup(&api).await;
    post_events(&api).await;
    serve.kill9();
    let serve = d.start("serve").await;
    check_sent_once(&d, &admin(&serve), &serve.base).await;
}

#[tokio::test]
async fn a_digest_is_sent_once_after_its_fanout_process_restarts_when_roles_run_apart() {
    let Some(d) = Deployment::new(&[]).await else {
        return;
    };
    let api_role = d.start("api").await;
    let mut fanout = d.start("fanout").await;
    let _push = d.start("push").await;
    let inbox = d.start("inbox").await;
    let api = admin(&api_role);
    setup(&api).await;
    post_events(&api).await;
    fanout.kill9();
    let _fanout: Role = d.start("fanout").await;
    check_sent_once(&d, &api, &inbox.base).await;
}

/// A user with a device, a template that lists the events, a rule that digests comments per
/// post.
async fn setup(api: &Api) {
    let ok = |(s, body): (StatusCode, Value)| assert!(s.is_success(), "{s}: {body}");
    api.user_with_device("ola", "ok-ola").await;
    let text = json!({"title": "{{ count }} new on {{ data.post }}",
                      "body": "{% for e in events %}{{ e.text }};{% endfor %}"});
    ok(api
        .call(
            Method::PUT,
            "/v1/templates/comments",
            Some(json!({"in_app": text, "push": text})),
        )
        .await);
    ok(api
        .call(
            Method::PUT,
            "/v1/rules/comment.added",
            Some(
                json!({"template": "comments", "channels": ["in_app", "push"],
                        "digest": {"key": "post", "window_s": WINDOW_S}}),
            ),
        )
        .await);
}

/// Three comments on p1 and one on p2, all inside one window.
async fn post_events(api: &Api) {
    for (post, text) in [("p1", "a"), ("p1", "b"), ("p2", "x"), ("p1", "c")] {
        let (s, res) = api
            .call(
                Method::POST,
                "/v1/events",
                Some(json!({"type": "comment.added", "user_id": "ola",
                            "data": {"post": post, "text": text}})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{res}");
        assert!(res["digest"]["id"].is_string(), "{res}");
    }
}

async fn check_sent_once(d: &Deployment, api: &Api, inbox: &str) {
    let deadline = tokio::time::Instant::now() + WAIT + Duration::from_secs(WINDOW_S);
    let mut items = Vec::new();
    while items.len() < 2 || d.fcm.requests_for("ok-ola") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "digests not sent: {items:?}, {} pushes",
            d.fcm.requests_for("ok-ola")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        items = inbox_items(inbox).await;
    }
    let mut got: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i["title"].as_str().unwrap().to_owned(),
                i["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("1 new on p2".to_owned(), "x;".to_owned()),
            ("3 new on p1".to_owned(), "a;b;c;".to_owned())
        ]
    );
    // Nothing more comes: one notification per digest, however the restart fell.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(inbox_items(inbox).await.len(), 2);
    assert_eq!(d.fcm.requests_for("ok-ola"), 2);
    let (s, list) = api.call(Method::GET, "/v1/campaigns?limit=10", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["campaigns"].as_array().unwrap().len(), 2, "{list}");
}

async fn inbox_items(base: &str) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/inbox"))
        .bearer_auth(token("ola"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let page: Value = resp.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}
