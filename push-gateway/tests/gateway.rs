//! The push gateway end to end: campaigns created over HTTP, fanned out, and delivered by the
//! gateway to the fake FCM, with every result class acted on.

mod common;

use common::{eventually, push_to, spawn_gateway, spawn_gateway_wrapped, TestGateway};
use herald_core::delivery::{DeadLetter, Webhook};
use herald_core::model::{Channel, Device, Platform, Priority};
use herald_core::ports::{Bus, DeliveryClaim, DeliveryStore};
use herald_core::topics::{self, ChannelItem, ChannelMessage};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_every_recipient_gets_the_push_and_the_campaign_counts_it() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-phone-1", "ok-tablet-1"])
        .await;
    app.user_with_devices("u2", &["ok-phone-2"]).await;
    let id = app.campaign(push_to(&["u1", "u2"])).await;

    app.wait_for_deliveries(&id, "push", (3, 0)).await;
    assert_eq!(app.fcm.sent(), 3);
    for t in ["ok-phone-1", "ok-tablet-1", "ok-phone-2"] {
        assert_eq!(app.fcm.requests_for(t), 1, "{t}");
    }
    // One OAuth exchange serves every send.
    assert_eq!(app.fcm.token_exchanges(), 1);
    assert!(app.dead_letters("").await.is_empty());

    // The numbers reach /metrics: per-channel results and provider latency.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"herald_push_deliveries_total{channel="push",result="sent"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("herald_push_request_seconds"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_token_is_deleted_and_counted_failed_while_the_others_are_sent() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-1", "unreg-1", "badtoken-1"])
        .await;
    let id = app.campaign(push_to(&["u1"])).await;

    app.wait_for_deliveries(&id, "push", (1, 2)).await;
    assert_eq!(app.tokens("u1").await, vec!["ok-1".to_owned()]);
    // Not retried: one request each.
    assert_eq!(app.fcm.requests_for("unreg-1"), 1);
    assert_eq!(app.fcm.requests_for("badtoken-1"), 1);
    assert!(app.dead_letters("").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_it_goes_through() {
    let app = spawn_gateway(|c| c.push.max_attempts = 3).await;
    app.user_with_devices("u1", &["flaky2-a", "ok-b"]).await;
    let id = app.campaign(push_to(&["u1"])).await;

    app.wait_for_deliveries(&id, "push", (2, 0)).await;
    assert_eq!(
        app.fcm.requests_for("flaky2-a"),
        3,
        "two failures, then success"
    );
    // The retries resend only what failed.
    assert_eq!(app.fcm.requests_for("ok-b"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_listing_more_devices_than_one_bus_message_holds_goes_as_several_and_each_device_is_sent_once(
) {
    const USERS: usize = 150;
    const DEVICES: usize = 6;
    let app = spawn_gateway(|c| {
        c.push.max_attempts = 3;
        c.push.backoff_base_ms = 100;
    })
    .await;
    // Every device fails once. The retry lists each item's 6 tokens of 1,600 characters:
    // about 1.5 MB as one message, over the 1 MiB JetStream and Kafka take, while the
    // message it retries (no targets listed) is small.
    let mut users = Vec::new();
    for u in 0..USERS {
        let tokens: Vec<String> = (0..DEVICES)
            .map(|d| format!("flaky1-u{u:03}-d{d}-{}", "t".repeat(1_600)))
            .collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let id = format!("wide{u:03}");
        app.user_with_devices(&id, &refs).await;
        users.push((id, tokens));
    }
    let ids: Vec<&str> = users.iter().map(|(id, _)| id.as_str()).collect();
    let id = app.campaign(push_to(&ids)).await;

    app.wait_for_deliveries(&id, "push", ((USERS * DEVICES) as u64, 0))
        .await;
    for (user, tokens) in &users {
        for t in tokens {
            assert_eq!(
                app.fcm.requests_for(t),
                2,
                "{user}: a failure, then the retry"
            );
        }
    }
    assert!(app.dead_letters("").await.is_empty());
}

/// Asks for a replay of the dead letter `letter_id`: the status and body.
async fn replay(app: &TestGateway, letter_id: &str) -> (StatusCode, Value) {
    let path = format!("/v1/dead-letters/{letter_id}/replay");
    app.call(Method::POST, &path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_out_of_attempts_are_dead_lettered_and_a_replay_delivers_them() {
    let app = spawn_gateway(|c| c.push.max_attempts = 2).await;
    app.user_with_devices("u1", &["flaky3-x", "ok-y"]).await;
    let id = app.campaign(push_to(&["u1"])).await;

    app.wait_for_deliveries(&id, "push", (1, 1)).await;
    assert_eq!(app.fcm.requests_for("flaky3-x"), 2);
    let letters = app.dead_letters("?channel=push").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["campaign_id"], id.as_str());
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["sends"], 1);
    assert_eq!(letter["recipients"][0]["targets"], json!(["flaky3-x"]));
    assert!(
        letter["reason"].as_str().unwrap().contains("UNAVAILABLE"),
        "{letter}"
    );
    assert!(letter["replayed_at"].is_null());
    assert!(app.dead_letters("?channel=email").await.is_empty());

    let letter_id = letter["id"].as_str().unwrap().to_owned();
    let (s, b) = replay(&app, &letter_id).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (again, _) = replay(&app, &letter_id).await;
    assert_eq!(again, StatusCode::CONFLICT, "a letter is replayed once");

    // The replay fails once more (third request), is retried, and the fourth goes through.
    app.wait_for_deliveries(&id, "push", (2, 1)).await;
    assert_eq!(app.fcm.requests_for("flaky3-x"), 4);
    assert_eq!(
        app.fcm.requests_for("ok-y"),
        1,
        "the replay sends only the dead letter"
    );
    let letters = app.dead_letters("").await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0]["replayed_at"].is_string());

    let (s, _) = replay(&app, "nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(Method::GET, "/v1/dead-letters?channel=in_app", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_not_configured_dead_letters_its_sends_at_once() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-android", "apns:iphone-token"])
        .await;
    app.user_with_devices("u2", &[]).await;
    let id = app.campaign(push_to(&["u1", "u2"])).await;

    // The FCM device is sent; the APNs device is dead-lettered; u2 has no device at all.
    app.wait_for_deliveries(&id, "push", (1, 2)).await;
    let letters = app.dead_letters("").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "apns is not configured");
    assert_eq!(letters[0]["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_provider_holds_the_retry_back() {
    let app = spawn_gateway(|c| c.push.max_attempts = 2).await;
    app.user_with_devices("u1", &["quota-1"]).await;
    let id = app.campaign(push_to(&["u1"])).await;

    eventually("the first attempt", || async {
        app.fcm.requests_for("quota-1") == 1
    })
    .await;
    // The fake asks for 2 s; backoff alone would be under 100 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.fcm.requests_for("quota-1"), 1);
    app.wait_for_deliveries(&id, "push", (0, 1)).await;
    assert_eq!(app.fcm.requests_for("quota-1"), 2);
    assert_eq!(app.dead_letters("").await.len(), 1);
}

/// A channel message straight onto the push queue, as the fan-out would publish it.
fn message(
    campaign: &str,
    user: &str,
    deliver_after: Option<chrono::DateTime<chrono::Utc>>,
) -> ChannelMessage {
    ChannelMessage {
        campaign_id: campaign.into(),
        batch_no: 0,
        channel: Channel::Push,
        part: 0,
        piece: 0,
        span: None,
        category: None,
        priority: Priority::Normal,
        deliver_after,
        expires_at: None,
        attempt: 0,
        replay_of: None,
        unless_read: None,
        revision: 0,
        replaces: None,
        items: vec![ChannelItem {
            user_id: user.into(),
            notification_id: herald_core::ids::notification_id(
                campaign,
                user,
                chrono::DateTime::UNIX_EPOCH,
            ),
            email: None,
            phone: None,
            title: Some("t".into()),
            body: "b".into(),
            html: None,
            data: json!({}),
            targets: None,
        }],
    }
}

async fn publish(bus: &dyn Bus, msg: &ChannelMessage) {
    bus.publish(
        topics::channel_topic(Channel::Push),
        &[herald_core::model::OutMessage {
            key: None,
            payload: serde_json::to_vec(msg).unwrap(),
        }],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_not_sent_twice() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-once"]).await;
    let msg = message("c-redelivered", "u1", None);
    publish(app.ctx.ports.bus.as_ref(), &msg).await;
    eventually("the first copy", || async {
        app.fcm.requests_for("ok-once") == 1
    })
    .await;
    eventually_marked(&app, &msg, "the delivery key marked").await;
    // The same message again, as a crashed consumer's redelivery would bring it.
    publish(app.ctx.ports.bus.as_ref(), &msg).await;
    eventually("the copy consumed", || async {
        app.ctx
            .ports
            .bus
            .lag(topics::channel_topic(Channel::Push), topics::GATEWAY)
            .await
            .unwrap()
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.fcm.requests_for("ok-once"), 1);
}

/// Waits until the message's delivery key is marked processed.
async fn eventually_marked(app: &TestGateway, msg: &ChannelMessage, what: &str) {
    let key = msg.delivery_key();
    eventually(what, || async {
        app.ctx.ports.deliveries.is_processed(&key).await.unwrap()
    })
    .await;
}

async fn lag(app: &TestGateway) -> u64 {
    app.ctx
        .ports
        .bus
        .lag(topics::channel_topic(Channel::Push), topics::GATEWAY)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_one_message_in_flight_at_once_are_sent_once() {
    // A fan-out batch redone after its worker died publishes its channel messages again; with
    // the gateway down meanwhile, both copies wait side by side and the consumers take them at
    // once. The provider answers slowly, so the first copy is still sending when the second
    // is looked at.
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["slow500-twin"]).await;
    let msg = message("c-twins", "u1", None);
    let copy = herald_core::model::OutMessage {
        key: Some(msg.campaign_id.clone()),
        payload: serde_json::to_vec(&msg).unwrap(),
    };
    app.ctx
        .ports
        .bus
        .publish(
            topics::channel_topic(Channel::Push),
            &[copy.clone(), copy.clone(), copy],
        )
        .await
        .unwrap();
    eventually("the copies consumed", || async { lag(&app).await == 0 }).await;
    eventually_marked(&app, &msg, "the delivery key marked").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.fcm.requests_for("slow500-twin"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_claimed_by_a_consumer_that_died_is_sent_once_its_claim_runs_out() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u0", &["warm-up"]).await;
    app.user_with_devices("u1", &["after-claim"]).await;
    // The consumers are up (on Kafka the group forms in seconds) before the clock starts.
    publish(app.ctx.ports.bus.as_ref(), &message("c-warm", "u0", None)).await;
    eventually("the warm-up sent", || async {
        app.fcm.requests_for("warm-up") == 1
    })
    .await;
    let msg = message("c-orphan", "u1", None);
    // A consumer claimed the key and died before sending anything: its claim holds for 3 s.
    let claimed = app
        .ctx
        .ports
        .deliveries
        .claim(
            &msg.delivery_key(),
            "dead-consumer",
            chrono::Utc::now(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(claimed, herald_core::ports::DeliveryClaim::Won);
    publish(app.ctx.ports.bus.as_ref(), &msg).await;
    eventually("the copy waiting in the delay store", || async {
        app.ctx.ports.delays.pending().await.unwrap() == 1
    })
    .await;
    assert_eq!(
        app.fcm.requests_for("after-claim"),
        0,
        "not sent while the claim holds"
    );
    eventually("sent once the claim ran out", || async {
        app.fcm.requests_for("after-claim") == 1
    })
    .await;
    eventually("the delay store empty", || async {
        app.ctx.ports.delays.pending().await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.fcm.requests_for("after-claim"), 1);
}

/// A delivery store whose `mark_processed` fails its first `failures` calls: unavailable (a
/// store that went away between the sends and the mark) or with a bug.
struct FailingMarks {
    inner: Arc<dyn DeliveryStore>,
    failures: AtomicU32,
    unavailable: bool,
}

#[async_trait::async_trait]
impl DeliveryStore for FailingMarks {
    async fn ping(&self) -> herald_core::Result<()> {
        self.inner.ping().await
    }
    async fn put_webhook(&self, webhook: &Webhook) -> herald_core::Result<()> {
        self.inner.put_webhook(webhook).await
    }
    async fn get_webhook(&self, id: &str) -> herald_core::Result<Option<Webhook>> {
        self.inner.get_webhook(id).await
    }
    async fn list_webhooks(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> herald_core::Result<Vec<Webhook>> {
        self.inner.list_webhooks(after, limit).await
    }
    async fn delete_webhook(&self, id: &str) -> herald_core::Result<bool> {
        self.inner.delete_webhook(id).await
    }
    async fn is_processed(&self, key: &str) -> herald_core::Result<bool> {
        self.inner.is_processed(key).await
    }
    async fn claim(
        &self,
        key: &str,
        holder: &str,
        now: chrono::DateTime<chrono::Utc>,
        lease: Duration,
    ) -> herald_core::Result<DeliveryClaim> {
        self.inner.claim(key, holder, now, lease).await
    }
    async fn release(&self, key: &str, holder: &str) -> herald_core::Result<()> {
        self.inner.release(key, holder).await
    }
    async fn mark_processed(
        &self,
        key: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> herald_core::Result<()> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(if self.unavailable {
                herald_core::Error::unavailable(
                    "deliveries store",
                    std::io::Error::other("store away"),
                )
            } else {
                herald_core::Error::internal("a broken processed mark")
            });
        }
        self.inner.mark_processed(key, at).await
    }
    async fn purge_processed(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> herald_core::Result<u64> {
        self.inner.purge_processed(before).await
    }
    async fn insert_dead_letter(&self, letter: &DeadLetter) -> herald_core::Result<()> {
        self.inner.insert_dead_letter(letter).await
    }
    async fn record_recipients(
        &self,
        records: &[herald_core::delivery::RecipientRecord],
    ) -> herald_core::Result<()> {
        self.inner.record_recipients(records).await
    }
    async fn recipient_records(
        &self,
        campaign_id: &str,
        user_id: &str,
    ) -> herald_core::Result<Vec<herald_core::delivery::RecipientRecord>> {
        self.inner.recipient_records(campaign_id, user_id).await
    }
    async fn sent_recipients(
        &self,
        campaign_id: &str,
        channel: Channel,
        after: Option<&str>,
        limit: u32,
    ) -> herald_core::Result<Vec<String>> {
        self.inner
            .sent_recipients(campaign_id, channel, after, limit)
            .await
    }
    async fn get_dead_letter(&self, id: &str) -> herald_core::Result<Option<DeadLetter>> {
        self.inner.get_dead_letter(id).await
    }
    async fn list_dead_letters(
        &self,
        channel: Option<Channel>,
        before: Option<&str>,
        limit: u32,
    ) -> herald_core::Result<Vec<DeadLetter>> {
        self.inner.list_dead_letters(channel, before, limit).await
    }
    async fn mark_replayed(
        &self,
        id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> herald_core::Result<bool> {
        self.inner.mark_replayed(id, at).await
    }
    async fn unmark_replayed(&self, id: &str) -> herald_core::Result<()> {
        self.inner.unmark_replayed(id).await
    }
    async fn record_delivery_log(
        &self,
        entry: &herald_core::analytics::DeliveryLogEntry,
    ) -> herald_core::Result<bool> {
        self.inner.record_delivery_log(entry).await
    }
    async fn delivery_rollups(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        channel: Option<Channel>,
    ) -> herald_core::Result<Vec<herald_core::analytics::MinuteRollup>> {
        self.inner.delivery_rollups(since, channel).await
    }
    async fn recent_failures(
        &self,
        channel: Channel,
        since: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> herald_core::Result<Vec<herald_core::analytics::LoggedFailure>> {
        self.inner.recent_failures(channel, since, limit).await
    }
    async fn purge_delivery_log(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> herald_core::Result<u64> {
        self.inner.purge_delivery_log(before).await
    }
}

/// A gateway whose processed marks fail `failures` times (see [`FailingMarks`]).
async fn spawn_with_failing_marks(failures: u32, unavailable: bool) -> TestGateway {
    spawn_gateway_wrapped(
        |_| {},
        |mut ports| {
            ports.deliveries = Arc::new(FailingMarks {
                inner: ports.deliveries,
                failures: failures.into(),
                unavailable,
            });
            ports
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handling_that_fails_after_claiming_gives_the_claim_back_for_the_retry() {
    let app = spawn_with_failing_marks(1, false).await;
    app.user_with_devices("u1", &["mark-fails"]).await;
    let msg = message("c-mark-fails", "u1", None);
    publish(app.ctx.ports.bus.as_ref(), &msg).await;
    // Sent, then the mark failed for good (not an outage to wait out): the message goes back
    // to the bus and is handled again (a repeated send is the at-least-once promise). The
    // retry finds the key free rather than held for the 30 s lease by the failed handling
    // (`eventually` gives up after 15 s), so it is not parked in the delay store.
    eventually_marked(&app, &msg, "the delivery key marked by the retry").await;
    assert_eq!(app.fcm.requests_for("mark-fails"), 2);
    assert_eq!(app.ctx.ports.delays.pending().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_away_between_the_sends_and_the_mark_is_waited_out_and_nothing_is_sent_twice() {
    let app = spawn_with_failing_marks(4, true).await;
    app.user_with_devices("u1", &["store-away"]).await;
    let msg = message("c-store-away", "u1", None);
    publish(app.ctx.ports.bus.as_ref(), &msg).await;
    // The sends are made; the mark fails four times as the store is away, and is written
    // once it is back, by the same handling: the message is not handed back to the bus.
    eventually_marked(&app, &msg, "the delivery key marked after the outage").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.fcm.requests_for("store-away"), 1);
    assert_eq!(app.ctx.ports.delays.pending().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_for_quiet_hours_goes_out_when_they_end() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-later"]).await;
    let after = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    publish(
        app.ctx.ports.bus.as_ref(),
        &message("c-quiet", "u1", Some(after)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.fcm.requests_for("ok-later"), 0, "held back");
    eventually("sent after the quiet hours", || async {
        app.fcm.requests_for("ok-later") == 1
    })
    .await;
    assert!(chrono::Utc::now() >= after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_token_job_removes_devices_unused_for_the_ttl() {
    let app = spawn_gateway(|c| c.push.token_ttl_days = 90).await;
    app.user_with_devices("u1", &[]).await;
    let now = chrono::Utc::now();
    let dir = &app.ctx.ports.directory;
    for (token, days) in [("fresh", 1), ("old", 91)] {
        let used = now - chrono::Duration::days(days);
        assert!(dir
            .put_device(&Device {
                user_id: "u1".into(),
                platform: Platform::Fcm,
                token: token.into(),
                created_at: used,
                last_used_at: used,
            })
            .await
            .unwrap());
    }
    let swept = herald_push::cleanup::run_once(&app.ctx).await.unwrap();
    assert_eq!(swept.stale_devices, 1);
    assert_eq!(app.tokens("u1").await, vec!["fresh".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateway_sweeps_stale_tokens_on_its_interval() {
    let app = spawn_gateway(|c| c.push.cleanup_interval_secs = 1).await;
    app.user_with_devices("u1", &["ok-new"]).await;
    let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
    app.ctx
        .ports
        .directory
        .put_device(&Device {
            user_id: "u1".into(),
            platform: Platform::Fcm,
            token: "ok-forgotten".into(),
            created_at: long_ago,
            last_used_at: long_ago,
        })
        .await
        .unwrap();
    eventually("the forgotten device removed", || async {
        app.tokens("u1").await == vec!["ok-new".to_owned()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_send_refreshes_the_last_use_of_an_old_device() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &[]).await;
    let long_ago = chrono::Utc::now() - chrono::Duration::days(60);
    app.ctx
        .ports
        .directory
        .put_device(&Device {
            user_id: "u1".into(),
            platform: Platform::Web,
            token: "ok-browser".into(),
            created_at: long_ago,
            last_used_at: long_ago,
        })
        .await
        .unwrap();
    let id = app.campaign(push_to(&["u1"])).await;
    app.wait_for_deliveries(&id, "push", (1, 0)).await;
    let devices = app
        .ctx
        .ports
        .directory
        .list_devices(&["u1".to_owned()])
        .await
        .unwrap();
    assert!(devices[0].last_used_at > chrono::Utc::now() - chrono::Duration::minutes(1));
}

/// The inbox row the fan-out wrote for `msg`'s item of `user` (same id and time).
fn row_of(msg: &ChannelMessage, user: &str) -> herald_core::model::Notification {
    let item = msg.items.iter().find(|i| i.user_id == user).unwrap();
    let key = herald_core::model::InboxKey::of_id(item.notification_id).unwrap();
    herald_core::model::Notification {
        id: item.notification_id,
        user_id: user.into(),
        campaign_id: Some(msg.campaign_id.clone()),
        title: "t".into(),
        body: "b".into(),
        category: None,
        data: json!({}),
        created_at: key.created_at,
        read_at: None,
        seen_at: None,
        archived_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unless_read_push_goes_only_to_recipients_who_have_not_read_or_dismissed_it() {
    let app = spawn_gateway(|_| {}).await;
    let ports = &app.ctx.ports;
    for u in ["reader", "dismisser", "idle"] {
        app.user_with_devices(u, &[&format!("ok-{u}")]).await;
    }
    // Personal rows: one read, one dismissed, one untouched since the fan-out wrote them.
    let mut msg = message("c-unless", "reader", None);
    msg.items
        .extend(message("c-unless", "dismisser", None).items);
    msg.items.extend(message("c-unless", "idle", None).items);
    msg.unless_read = Some(topics::ReadCheck::Inbox);
    let rows: Vec<_> = ["reader", "dismisser", "idle"]
        .iter()
        .map(|u| row_of(&msg, u))
        .collect();
    ports.inbox.write_batch(&rows).await.unwrap();
    let now = chrono::Utc::now();
    assert!(ports
        .inbox
        .mark_read("reader", rows[0].key(), now)
        .await
        .unwrap());
    assert!(ports
        .inbox
        .dismiss("dismisser", rows[1].key(), now)
        .await
        .unwrap());
    // A broadcast's pushes look at the users' broadcast state instead.
    let mut bmsg = message("c-unless-b", "reader", None);
    bmsg.items.extend(message("c-unless-b", "idle", None).items);
    bmsg.unless_read = Some(topics::ReadCheck::Broadcast);
    ports
        .broadcast_states
        .mark_read("reader", herald_core::ids::broadcast_id("c-unless-b"), now)
        .await
        .unwrap();

    publish(ports.bus.as_ref(), &msg).await;
    publish(ports.bus.as_ref(), &bmsg).await;
    eventually_marked(&app, &msg, "the personal message handled").await;
    eventually_marked(&app, &bmsg, "the broadcast message handled").await;
    assert_eq!(app.fcm.requests_for("ok-idle"), 2, "one push of each");
    assert_eq!(app.fcm.requests_for("ok-reader"), 0);
    assert_eq!(app.fcm.requests_for("ok-dismisser"), 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"herald_push_deliveries_total{channel="push",result="suppressed_online"} 3"#
        ),
        "{metrics}"
    );
}

/// A revision of `campaign`'s content whose pushes say `New {{ user.id }}`.
fn revision(campaign: &str, n: u32) -> herald_core::model::CampaignRevision {
    use herald_core::model::{TemplateContent, TitleBody};
    herald_core::model::CampaignRevision {
        campaign_id: campaign.into(),
        revision: n,
        row_time: Some(herald_core::ids::row_time(chrono::Utc::now())),
        broadcast_id: None,
        content: TemplateContent {
            push: Some(TitleBody {
                title: format!("New{n} {{{{ user.id }}}}"),
                body: "{{ data.when }}".into(),
            }),
            ..Default::default()
        },
        data: json!({"when": "Friday"}),
        revised_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_rendered_before_its_campaigns_content_changed_is_sent_with_the_new_content() {
    let app = spawn_gateway(|_| {}).await;
    app.user_with_devices("u1", &["ok-rev"]).await;
    let ports = &app.ctx.ports;
    ports.campaigns.revise(&revision("c-rev", 1)).await.unwrap();
    let msg = message("c-rev", "u1", None);
    publish(ports.bus.as_ref(), &msg).await;
    eventually_marked(&app, &msg, "the message handled").await;
    let sent = app.fcm.last_message("ok-rev").expect("sent");
    assert_eq!(sent["notification"]["title"], "New1 u1", "{sent}");
    assert_eq!(sent["notification"]["body"], "Friday", "{sent}");
    assert_eq!(sent["data"]["when"], "Friday", "{sent}");
    assert_eq!(sent["android"]["collapse_key"], "c-rev", "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_sends_once_to_every_recipient_sent_to_page_by_page() {
    use herald_core::delivery::{RecipientRecord, RecipientStatus};
    let app = spawn_gateway(|_| {}).await;
    let ports = &app.ctx.ports;
    // One more recipient than a page holds, and one whose push failed (not replaced).
    let n = herald_usecases::revisions::REPLACE_PAGE as usize + 1;
    let users: Vec<String> = (0..n).map(|i| format!("r{i:04}")).collect();
    let now = chrono::Utc::now();
    let directory_users: Vec<herald_core::model::User> = users
        .iter()
        .chain(std::iter::once(&"failed".to_owned()))
        .map(|u| herald_core::model::User::nameless(u))
        .collect();
    ports
        .directory
        .upsert_users(&directory_users)
        .await
        .unwrap();
    let devices: Vec<Device> = directory_users
        .iter()
        .map(|u| Device {
            user_id: u.id.clone(),
            platform: Platform::Fcm,
            token: format!("ok-{}", u.id),
            created_at: now,
            last_used_at: now,
        })
        .collect();
    ports.directory.put_devices(&devices).await.unwrap();
    let record = |user: &str, status| RecipientRecord {
        campaign_id: "c-replace".into(),
        user_id: user.into(),
        channel: Channel::Push,
        status,
        sent: 1,
        reason: None,
        dead_letter_id: None,
        attempt: 0,
        at: now,
    };
    let mut records: Vec<RecipientRecord> = users
        .iter()
        .map(|u| record(u, RecipientStatus::Sent))
        .collect();
    records.push(record("failed", RecipientStatus::Failed));
    ports.deliveries.record_recipients(&records).await.unwrap();
    // Superseded by revision 2 before it ran: revision 1's chain sends nothing.
    ports
        .campaigns
        .revise(&revision("c-replace", 1))
        .await
        .unwrap();
    ports
        .campaigns
        .revise(&revision("c-replace", 2))
        .await
        .unwrap();
    let step = |rev: u32| ChannelMessage {
        revision: rev,
        replaces: Some(topics::Replacement {
            page: 0,
            after_user: None,
        }),
        items: Vec::new(),
        ..message("c-replace", "nobody", None)
    };
    let stale = step(1);
    publish(ports.bus.as_ref(), &stale).await;
    eventually_marked(&app, &stale, "the superseded step handled").await;
    let first = step(2);
    publish(ports.bus.as_ref(), &first).await;
    // The next page is queued by the first, under its own key.
    let second = ChannelMessage {
        replaces: Some(topics::Replacement {
            page: 1,
            after_user: Some(users[n - 2].clone()),
        }),
        ..first.clone()
    };
    eventually_marked(&app, &first, "the first page sent").await;
    eventually_marked(&app, &second, "the second page sent").await;
    for u in &users {
        assert_eq!(app.fcm.requests_for(&format!("ok-{u}")), 1, "{u}");
    }
    assert_eq!(app.fcm.requests_for("ok-failed"), 0);
    let last = app
        .fcm
        .last_message(&format!("ok-{}", users[n - 1]))
        .unwrap();
    assert_eq!(
        last["notification"]["title"],
        format!("New2 {}", users[n - 1])
    );
    // The same step again (a redelivery) sends nothing more.
    publish(ports.bus.as_ref(), &first).await;
    eventually("the copy consumed", || async { lag(&app).await == 0 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.fcm.requests_for(&format!("ok-{}", users[0])), 1);
    // Replacements are not deliveries: no recipient record changes.
    let kept = ports
        .deliveries
        .recipient_records("c-replace", &users[0])
        .await
        .unwrap();
    assert_eq!(kept[0].sent, 1, "{kept:?}");
}
