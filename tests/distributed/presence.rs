//! Presence-aware push end to end (`push_when: "offline"`): campaigns go in through the admin
//! API, the fan-out asks the live hub who has a socket open, and the push gateway sends to the
//! fake FCM. Once on the embedded engines (`herald serve`, one process, the in-process hub),
//! once with the roles apart on Redis (two inbox nodes, so presence must cross processes),
//! MySQL and JetStream when their variables are set.

use crate::cross_node::{
    admin, connect, create_completed as create, eventually_metric, next_item as item, push_counts,
    token, Deployment,
};

use crate::roles::Api;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn presence_aware_push_skips_connected_users_and_pushes_offline_ones_on_herald_serve() {
    let d = Deployment::embedded().await;
    let serve = d.start("serve").await;
    let api = admin(&serve);
    scenario(&d, &api, &serve.base, &serve.base).await;
}

#[tokio::test]
async fn presence_aware_push_sees_sockets_on_every_inbox_node_when_roles_run_apart() {
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

/// Users `on` and `idle` have the inbox open on node `a`, `reader` on node `b`; `off` has no
/// socket. Every one of them has one FCM device.
async fn scenario(d: &Deployment, api: &Api, a: &str, b: &str) {
    for user in ["on", "off", "reader", "idle"] {
        api.user_with_device(user, &format!("ok-{user}")).await;
    }
    let mut on = connect(a, "on", "").await;
    let mut idle = connect(a, "idle", "").await;
    let mut reader = connect(b, "reader", "").await;
    if a == b {
        eventually_metric(a, "herald_live_users_followed", 3.0).await;
    } else {
        eventually_metric(a, "herald_live_users_followed", 2.0).await;
        eventually_metric(b, "herald_live_users_followed", 1.0).await;
    }

    // Without a delay: the connected user gets the item live and no push; the other the push.
    let first = create(
        api,
        json!({"audience": {"users": ["on", "off"]}, "content": {"title": "t1", "body": "b"},
               "channels": ["in_app", "push"], "push_when": "offline"}),
    )
    .await;
    assert_eq!(item(&mut on).await["title"], "t1");
    let push = push_counts(api, &first, |p| {
        p["sent"] == 1 && p["suppressed_online"] == 1
    })
    .await;
    assert_eq!(push["queued"], 1, "{push}");
    assert_eq!(d.fcm.requests_for("ok-off"), 1);
    assert_eq!(d.fcm.requests_for("ok-on"), 0, "no push for the open inbox");

    // With a delay: the push of a connected user waits, and goes out only if the item is still
    // unread then. `reader` reads it on node b; `idle` leaves it.
    let second = create(
        api,
        json!({"audience": {"users": ["reader", "idle"]}, "content": {"title": "t2", "body": "b"},
               "channels": ["in_app", "push"], "push_when": "offline", "online_push_delay_s": 3}),
    )
    .await;
    let read = item(&mut reader).await;
    assert_eq!(item(&mut idle).await["title"], "t2");
    let resp = reqwest::Client::new()
        .post(format!(
            "{b}/v1/inbox/{}/read",
            read["id"].as_str().unwrap()
        ))
        .bearer_auth(token("reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        d.fcm.requests_for("ok-idle"),
        0,
        "held back while the delay runs"
    );
    let push = push_counts(api, &second, |p| {
        p["sent"] == 1 && p["suppressed_online"] == 1
    })
    .await;
    assert_eq!(push["queued"], 2, "{push}");
    assert_eq!(d.fcm.requests_for("ok-idle"), 1, "unread after the delay");
    assert_eq!(d.fcm.requests_for("ok-reader"), 0, "read within the delay");
    // Nothing else went out meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.fcm.sent(), 2);

    // Each recipient's explanation says what presence did.
    for (campaign, user, want) in [
        (&first, "on", "suppressed_online"),
        (&first, "off", "sent"),
        (&second, "reader", "suppressed_online"),
        (&second, "idle", "sent"),
    ] {
        let (s, e) = api
            .call(
                Method::GET,
                &format!("/v1/campaigns/{campaign}/recipients/{user}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{e}");
        assert_eq!(e["channels"]["push"]["status"], want, "{user}: {e}");
    }
}
