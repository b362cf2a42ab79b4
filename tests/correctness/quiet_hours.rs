//! A batch whose recipients are not all in the same quiet-hours window becomes several channel
//! messages; each must be delivered, once, when its window ends.

use crate::harness::*;
use herald_core::ManualClock;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Users in five time zones, all with quiet hours 22:00–07:00, at 05:59:58 UTC on a June day:
/// Paris (07:59) and Tokyo (14:59) are awake; London (06:59) wakes in 2 s, UTC (05:59) in an
/// hour, New York (01:59) in five.
const NOW: &str = "2026-06-01T05:59:58Z";
const ZONES: [(&str, &str); 5] = [
    ("paris", "Europe/Paris"),
    ("tokyo", "Asia/Tokyo"),
    ("london", "Europe/London"),
    ("utc", "UTC"),
    ("newyork", "America/New_York"),
];

#[tokio::test]
async fn a_batch_mixing_immediate_and_deferred_recipients_across_time_zones_delivers_each_push_once_when_due(
) {
    mixed_quiet_hours(Box::new(|_| {})).await;
}

/// The same with the deferred sends kept in a MySQL delay store (when `HERALD_TEST_MYSQL_URL`
/// is set, as in `.ci/run`).
#[tokio::test]
async fn deferred_sends_kept_in_a_mysql_delay_store_are_delivered_once_when_due() {
    let Some(url) = crate::mysql_support::fresh_mysql_database("herald_qh").await else {
        eprintln!("HERALD_TEST_MYSQL_URL is not set; skipping the MySQL delay store case");
        return;
    };
    mixed_quiet_hours(Box::new(move |c| {
        c.backends.delays = Some(herald_core::config::Secret::new(url))
    }))
    .await;
}

/// The same with the deferred sends kept in a Redis delay store (when `HERALD_TEST_REDIS_URL`
/// is set, as in `.ci/run`), under a key prefix of its own.
#[tokio::test]
async fn deferred_sends_kept_in_a_redis_delay_store_are_delivered_once_when_due() {
    let Some(raw) = std::env::var("HERALD_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!("HERALD_TEST_REDIS_URL is not set; skipping the Redis delay store case");
        return;
    };
    let sep = if raw.contains('?') { '&' } else { '?' };
    let url = format!(
        "{raw}{sep}prefix=herald-test-qh-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    mixed_quiet_hours(Box::new(move |c| {
        c.backends.delays = Some(herald_core::config::Secret::new(url))
    }))
    .await;
}

async fn mixed_quiet_hours(configure: Box<dyn FnOnce(&mut herald_core::config::Config) + Send>) {
    let clock = ManualClock::new(utc(NOW));
    let app = spawn(Options {
        clock: Arc::new(clock.clone()),
        configure,
        ..Options::default()
    })
    .await;
    for (user, tz) in ZONES {
        app.ok(
            Method::PUT,
            &format!("/v1/users/{user}"),
            json!({"attributes": {"timezone": tz}}),
        )
        .await;
        app.ok(
            Method::PUT,
            &format!("/v1/users/{user}/preferences"),
            json!({"quiet_hours": {"start": "22:00", "end": "07:00"}}),
        )
        .await;
        app.ok(
            Method::POST,
            &format!("/v1/users/{user}/devices"),
            json!({"platform": "fcm", "token": format!("tok-{user}")}),
        )
        .await;
    }
    let users: Vec<&str> = ZONES.iter().map(|(u, _)| *u).collect();
    let id = app
        .campaign(json!({
            "audience": {"users": users},
            "content": {"title": "Sale", "body": "Hi {{ user.id }}"},
            "channels": ["in_app", "push"],
            "priority": "normal",
        }))
        .await;
    let sent = |user: &str| app.fcm.requests_for(&format!("tok-{user}"));

    // One batch, four parts: at once (Paris, Tokyo), +2 s, +1 h, +5 h.
    eventually(
        "the awake users' pushes",
        Duration::from_secs(15),
        || async { sent("paris") == 1 && sent("tokyo") == 1 },
    )
    .await;
    let c = app.wait_completed(&id, Duration::from_secs(15)).await;
    assert_eq!(c["progress"]["deferred_quiet_hours"], 3, "{c}");
    assert_eq!(c["progress"]["notifications_written"], 5, "{c}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for user in ["london", "utc", "newyork"] {
        assert_eq!(sent(user), 0, "{user} is still in quiet hours");
    }

    clock.advance(chrono::Duration::seconds(3));
    eventually(
        "London's push at 07:00 BST",
        Duration::from_secs(15),
        || async { sent("london") == 1 },
    )
    .await;
    assert_eq!((sent("utc"), sent("newyork")), (0, 0));

    clock.set(utc("2026-06-01T07:00:01Z"));
    eventually(
        "the UTC user's push at 07:00 UTC",
        Duration::from_secs(15),
        || async { sent("utc") == 1 },
    )
    .await;
    assert_eq!(sent("newyork"), 0);

    clock.set(utc("2026-06-01T11:00:01Z"));
    eventually(
        "New York's push at 07:00 EDT",
        Duration::from_secs(15),
        || async { sent("newyork") == 1 },
    )
    .await;

    eventually(
        "every push counted sent",
        Duration::from_secs(15),
        || async { app.deliveries(&id, "push").await == (5, 5, 0) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for user in users {
        assert_eq!(sent(user), 1, "{user}: exactly one push");
    }
    assert_eq!(app.deliveries(&id, "push").await, (5, 5, 0));
}
