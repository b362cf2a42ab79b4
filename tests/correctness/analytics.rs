//! Delivery analytics and the health status, end to end: campaigns through the API, fan-out,
//! the push gateway and the fake FCM (which fails the tokens named `unreg-…`), the reports
//! counted into the delivery log, and what `/v1/analytics/…` and `/v1/health/status` answer.

use crate::harness::*;
use herald_core::topics;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Users `{p}0…` with one device each; the first `bad` have tokens the fake FCM calls
/// unregistered.
async fn users_with_devices(app: &App, p: &str, n: usize, bad: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let user = format!("{p}{i}");
        app.ok(Method::PUT, &format!("/v1/users/{user}"), json!({}))
            .await;
        let token = if i < bad {
            format!("unreg-{user}")
        } else {
            format!("tok-{user}")
        };
        app.ok(
            Method::POST,
            &format!("/v1/users/{user}/devices"),
            json!({"platform": "fcm", "token": token}),
        )
        .await;
        ids.push(user);
    }
    ids
}

async fn get(app: &App, path: &str) -> Value {
    let (s, b) = app.call(Method::GET, path, None).await;
    assert_eq!(s, StatusCode::OK, "{path}: {b}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_count_what_was_sent_and_failed_also_after_every_report_is_redelivered() {
    let app = spawn(Options {
        push: false,
        configure: Box::new(|c| c.analytics.min_sends = 5),
        ..Options::default()
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let push = app.start_push(stop.clone());
    let users = users_with_devices(&app, "a", 10, 3).await;
    let id = app
        .campaign(json!({
            "audience": {"users": users},
            "content": {"title": "Sale", "body": "Today only"},
            "channels": ["in_app", "push"],
        }))
        .await;
    let c = app.wait_completed(&id, Duration::from_secs(30)).await;
    let strategy = c["strategy"].as_str().unwrap().to_owned();
    eventually(
        "the delivery reports counted",
        Duration::from_secs(30),
        || async { app.deliveries(&id, "push").await == (10, 7, 3) },
    )
    .await;
    // The delivery log is written after the campaign counters (same report, next write).
    eventually(
        "the delivery log written",
        Duration::from_secs(30),
        || async {
            let (s, b) = app
                .call(Method::GET, "/v1/analytics/summary?hours=1", None)
                .await;
            s == StatusCode::OK && b["deliveries"]["sent"] == 7 && b["deliveries"]["failed"] == 3
        },
    )
    .await;

    let check = |summary: Value, channel: Value| {
        let d = &summary["deliveries"];
        assert_eq!(d["sent"], 7, "{summary}");
        assert_eq!(d["failed"], 3, "{summary}");
        assert_eq!(d["failed_by_reason"]["invalid_token"], 3, "{summary}");
        assert_eq!(d["failed_by_reason"]["rejected"], 0, "{summary}");
        assert_eq!(d["failure_rate"], 0.3, "{summary}");
        assert_eq!(d["delivery_rate"], 0.7, "{summary}");
        assert!(
            d["latency"]["p95_secs"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
        assert!(
            d["latency"]["avg_secs"].as_f64().unwrap() >= 0.0,
            "{summary}"
        );
        assert_eq!(
            summary["channels"]["push"], *d,
            "only push sends: {summary}"
        );
        let campaigns = &summary["campaigns"];
        assert_eq!(campaigns["created"], 1, "{summary}");
        assert_eq!(campaigns["audience_total"], 10, "{summary}");
        assert_eq!(campaigns["notifications_written"], 10, "{summary}");
        assert_eq!(
            campaigns["by_strategy"][&strategy],
            json!({"campaigns": 1, "audience": 10, "notifications_written": 10}),
            "{summary}"
        );

        assert_eq!(channel["channel"], "push");
        assert_eq!(channel["sent"], 7, "{channel}");
        assert_eq!(channel["failed"], 3, "{channel}");
        assert_eq!(channel["delivery_rate"], 0.7, "{channel}");
        let failures = channel["recent_failures"].as_array().unwrap();
        assert_eq!(failures.len(), 3, "{channel}");
        for f in failures {
            assert!(f["target"].as_str().unwrap().starts_with("unreg-a"), "{f}");
            assert!(!f["reason"].as_str().unwrap().is_empty(), "{f}");
            assert_eq!(f["campaign_id"], id.as_str());
        }
        let series = channel["series"].as_array().unwrap();
        assert!(
            (1..=2).contains(&series.len()),
            "an hour's window spans 1 or 2 clock hours"
        );
        let sent: u64 = series.iter().map(|h| h["sent"].as_u64().unwrap()).sum();
        let failed: u64 = series.iter().map(|h| h["failed"].as_u64().unwrap()).sum();
        assert_eq!((sent, failed), (7, 3), "{channel}");
    };
    let summary = get(&app, "/v1/analytics/summary?hours=1").await;
    let channel = get(&app, "/v1/analytics/channels/push?hours=1").await;
    check(summary.clone(), channel.clone());

    // Every report delivered again to the counters: the push role stopped (Kafka moves a
    // group only while none of its members is connected), the group moved back to the start,
    // the role started again. The log is unchanged.
    stop.cancel();
    drop(push);
    let bus = &app.ctx.ports.bus;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let replayed = loop {
        let moved = bus
            .replay(
                topics::RESULTS,
                topics::RESULT_COUNTERS,
                herald_core::ports::ReplayFrom::Earliest,
                false,
            )
            .await;
        match moved {
            Ok(n) => break n,
            Err(e) if e.kind == herald_core::ErrorKind::Conflict => {
                assert!(tokio::time::Instant::now() < deadline, "replay: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("replay: {e}"),
        }
    };
    assert!(replayed >= 1, "the push report is replayed ({replayed})");
    let stop = tokio_util::sync::CancellationToken::new();
    let _push = app.start_push(stop.clone());
    eventually(
        "the replayed reports handled",
        Duration::from_secs(60),
        || async {
            bus.lag(topics::RESULTS, topics::RESULT_COUNTERS)
                .await
                .unwrap()
                == 0
        },
    )
    .await;
    let again = get(&app, "/v1/analytics/summary?hours=1").await;
    assert_eq!(again["deliveries"], summary["deliveries"]);
    assert_eq!(again["campaigns"], summary["campaigns"]);
    let channel_again = get(&app, "/v1/analytics/channels/push?hours=1").await;
    assert_eq!(channel_again["sent"], 7);
    assert_eq!(channel_again["recent_failures"], channel["recent_failures"]);
    assert_eq!(app.deliveries(&id, "push").await, (10, 7, 3));

    // 30 % of the last minutes' push sends failed: above `failure_rate_failing` (25 %).
    let (status, _, alerts, h) = push_health(&app).await;
    assert_eq!(status, "failing", "{h}");
    assert_eq!(h["channels"]["push"]["failure_rate"], 0.3, "{h}");
    assert_eq!(alerts.len(), 1, "{h}");
    let message = alerts[0]["message"].as_str().unwrap();
    assert!(
        message.contains("push failed 30.0 % of 10 sends"),
        "{message}"
    );
    assert!(
        alerts[0]["recommendation"]
            .as_str()
            .unwrap()
            .contains("/v1/analytics/channels/push"),
        "{h}"
    );
    assert_eq!(h["channels"]["email"]["status"], "ok", "{h}");

    // A channel nothing went to answers zeros; the default window is a day.
    let email = get(&app, "/v1/analytics/channels/email").await;
    assert_eq!(email["window"]["hours"], 24);
    assert_eq!(email["sent"], 0);
    assert!(email["delivery_rate"].is_null());
    assert_eq!(email["series"].as_array().unwrap().len(), 25);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_analytics_questions_are_answered_with_a_clear_4xx() {
    let app = spawn(Options::default()).await;
    for (path, status, code, mentions) in [
        ("/v1/analytics/summary?hours=0", 422, "invalid", "hours"),
        ("/v1/analytics/summary?hours=-3", 422, "invalid", "hours"),
        ("/v1/analytics/summary?hours=721", 422, "invalid", "720"),
        ("/v1/analytics/summary?hours=abc", 422, "invalid", "hours"),
        ("/v1/analytics/summary?hour=5", 422, "invalid", "hour"),
        (
            "/v1/analytics/channels/fax?hours=1",
            404,
            "not_found",
            "fax",
        ),
        (
            "/v1/analytics/channels/push?hours=0",
            422,
            "invalid",
            "hours",
        ),
    ] {
        let (s, b) = app.call(Method::GET, path, None).await;
        assert_eq!(s.as_u16(), status, "{path}: {b}");
        assert_eq!(b["error"]["code"], code, "{path}: {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(mentions),
            "{path}: {b}"
        );
    }
    // Behind the admin key.
    let resp = app
        .client
        .get(format!("{}/v1/health/status", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The push channel's status and the alerts that name it.
async fn push_health(app: &App) -> (String, u64, Vec<Value>, Value) {
    let h = get(app, "/v1/health/status").await;
    let push = &h["channels"]["push"];
    let alerts: Vec<Value> = h["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["channel"] == "push")
        .cloned()
        .collect();
    (
        push["status"].as_str().unwrap().to_owned(),
        push["lag"].as_u64().unwrap(),
        alerts,
        h,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_channel_consumer_turns_the_health_degraded_then_failing_and_it_recovers() {
    let app = spawn(Options {
        push: false,
        configure: Box::new(|c| {
            c.analytics.lag_degraded = 2;
            c.analytics.lag_failing = 6;
        }),
        ..Options::default()
    })
    .await;
    let (status, lag, alerts, h) = push_health(&app).await;
    assert_eq!((status.as_str(), lag), ("ok", 0), "{h}");
    assert!(alerts.is_empty(), "{h}");
    assert_eq!(h["status"], "ok", "{h}");

    let users = users_with_devices(&app, "h", 10, 0).await;
    // One push message per campaign, none consumed. Each campaign completes (its message
    // published) before the next starts: tansu, the Kafka-protocol broker of the test runs,
    // counts its high watermark short by the messages that share a produce request, and
    // messages published within the producer's linger share one (a CI run under load once
    // counted fewer than 6 of 10 messages).
    let send = |user: String| {
        let app = &app;
        async move {
            let id = app
                .campaign(json!({
                    "audience": {"users": [user]},
                    "content": {"title": "Ping", "body": "Hello"},
                    "channels": ["push"],
                }))
                .await;
            app.wait_completed(&id, Duration::from_secs(20)).await;
        }
    };
    for u in &users[..4] {
        send(u.clone()).await;
    }
    // (At least: tansu, the Kafka-protocol broker of the test runs, can count one message
    // short after batched produces.)
    eventually("push lag 2+", Duration::from_secs(30), || async {
        push_health(&app).await.1 >= 2
    })
    .await;
    let (status, lag, alerts, h) = push_health(&app).await;
    assert!((2..=4).contains(&lag), "{h}");
    assert_eq!(status, "degraded", "{h}");
    assert!(h["status"] != "ok", "{h}");
    assert_eq!(alerts.len(), 1, "{h}");
    assert_eq!(alerts[0]["severity"], "degraded");
    let message = alerts[0]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("push lag {lag}")), "{h}");
    let advice = alerts[0]["recommendation"].as_str().unwrap();
    assert!(advice.contains("push node"), "{advice}");
    assert!(
        h["recommendations"]
            .as_array()
            .unwrap()
            .contains(&json!(advice)),
        "{h}"
    );
    let group = h["consumer_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["topic"] == topics::channel_topic(herald_core::model::Channel::Push))
        .cloned()
        .unwrap();
    assert_eq!(group["lag"], lag, "{group}");
    assert_eq!(group["status"], "degraded", "{group}");

    for u in &users[4..] {
        send(u.clone()).await;
    }
    eventually("push lag 6+", Duration::from_secs(30), || async {
        push_health(&app).await.1 >= 6
    })
    .await;
    let (status, lag, alerts, h) = push_health(&app).await;
    assert_eq!(status, "failing", "{h}");
    assert_eq!(h["status"], "failing", "the worst of all: {h}");
    assert_eq!(alerts[0]["severity"], "failing", "{h}");
    assert_eq!(alerts[0]["group"], topics::GATEWAY, "{h}");
    // The trend compares with a sample this process took at least 2 s before: rising if
    // that was before the second wave, not moving if the lag was this already (a slow bus).
    let message = alerts[0]["message"].as_str().unwrap();
    let base = format!("push lag {lag}");
    assert!(
        [
            base.clone(),
            format!("{base} and rising"),
            format!("{base}, not moving")
        ]
        .contains(&message.to_owned()),
        "{h}"
    );

    // The consumer comes back: the lag drains and the status recovers.
    let stop = tokio_util::sync::CancellationToken::new();
    let _push = app.start_push(stop.clone());
    eventually("the push lag drained", Duration::from_secs(30), || async {
        push_health(&app).await.1 == 0
    })
    .await;
    eventually("every push sent", Duration::from_secs(30), || async {
        app.fcm.sent() == 10
    })
    .await;
    eventually("the reports counted", Duration::from_secs(30), || async {
        push_health(&app).await.3["channels"]["push"]["sent"] == 10
    })
    .await;
    // Every other group (results, batches) drains too.
    eventually("all healthy", Duration::from_secs(30), || async {
        push_health(&app).await.3["status"] == "ok"
    })
    .await;
    let (status, _, alerts, h) = push_health(&app).await;
    assert_eq!(status, "ok", "{h}");
    assert!(alerts.is_empty(), "{h}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_and_dead_letters_turn_their_channel_degraded_with_what_to_do() {
    let app = spawn(Options {
        configure: Box::new(|c| {
            c.push.max_attempts = 1;
            c.analytics.provider_degraded_secs = 0.2;
        }),
        ..Options::default()
    })
    .await;
    for (user, token) in [("slowpoke", "slow400-slowpoke"), ("down", "unavail-down")] {
        app.ok(Method::PUT, &format!("/v1/users/{user}"), json!({}))
            .await;
        app.ok(
            Method::POST,
            &format!("/v1/users/{user}/devices"),
            json!({"platform": "fcm", "token": token}),
        )
        .await;
    }
    // A third user has no device: counted failed as unreachable, not against the provider.
    app.ok(Method::PUT, "/v1/users/nodevice", json!({})).await;
    let id = app
        .campaign(json!({
            "audience": {"users": ["slowpoke", "down", "nodevice"]},
            "content": {"title": "Hi", "body": "Hello"},
            "channels": ["push"],
        }))
        .await;
    eventually("the report counted", Duration::from_secs(30), || async {
        app.deliveries(&id, "push").await == (3, 1, 2)
    })
    .await;
    eventually(
        "the delivery log written",
        Duration::from_secs(30),
        || async { push_health(&app).await.3["channels"]["push"]["dead_lettered"] == 1 },
    )
    .await;
    let (status, _, alerts, h) = push_health(&app).await;
    assert_eq!(status, "degraded", "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["channels"]["push"]["provider_mean_secs"]
            .as_f64()
            .unwrap()
            >= 0.4,
        "{h}"
    );
    assert_eq!(
        h["channels"]["push"]["failure_rate"], 0.5,
        "1 of the 2 attempted: {h}"
    );
    let messages: Vec<&str> = alerts
        .iter()
        .map(|a| a["message"].as_str().unwrap())
        .collect();
    assert_eq!(alerts.len(), 2, "{h}");
    assert!(
        messages.contains(&"1 push sends dead-lettered in the last 5 min"),
        "{h}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("push sends take")),
        "{h}"
    );
    // Two attempted sends are too few to judge a failure rate (analytics.min_sends).
    assert!(!messages.iter().any(|m| m.contains("failed")), "{h}");
    assert!(
        h["recommendations"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("/v1/dead-letters?channel=push")),
        "{h}"
    );
    let channel = get(&app, "/v1/analytics/channels/push?hours=1").await;
    assert_eq!(channel["failed_by_reason"]["dead_lettered"], 1, "{channel}");
    assert_eq!(channel["failed_by_reason"]["unreachable"], 1, "{channel}");
    assert_eq!(channel["failed_by_reason"]["rejected"], 0, "{channel}");
    let failed: Vec<&str> = channel["recent_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["user_id"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&"down") && failed.contains(&"nodevice"),
        "{channel}"
    );
}
