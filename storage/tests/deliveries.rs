//! Conformance suite of the `DeliveryStore` port: webhook subscriptions, dead letters,
//! processed-message marks and delivery claims.

mod common;

use chrono::Duration;
use common::{run_id, utc};
use herald_core::analytics::{latency_bucket, DeliveryLogCounts, DeliveryLogEntry, LoggedFailure};
use herald_core::config::Secret;
use herald_core::delivery::{DeadLetter, RecipientRecord, RecipientStatus, Webhook};
use herald_core::model::*;
use herald_core::ports::{DeliveryClaim, DeliveryStore};
use herald_core::topics::{ChannelItem, ChannelMessage};
use std::sync::Arc;

fn webhook(id: &str, categories: Option<Vec<&str>>) -> Webhook {
    Webhook {
        id: id.into(),
        url: "https://hooks.example.com/herald".into(),
        secret: Secret::new("whsec-0123456789abcdef"),
        categories: categories.map(|c| c.into_iter().map(String::from).collect()),
        previous_secrets: Vec::new(),
        created_at: utc("2026-03-01T10:00:00Z"),
        updated_at: utc("2026-03-01T10:00:00Z"),
    }
}

fn letter(channel: Channel, campaign: &str) -> DeadLetter {
    DeadLetter {
        id: uuid::Uuid::now_v7().to_string(),
        channel,
        campaign_id: campaign.into(),
        reason: "fcm UNAVAILABLE".into(),
        attempts: 5,
        sends: 1,
        message: ChannelMessage {
            campaign_id: campaign.into(),
            batch_no: 3,
            channel,
            part: 0,
            piece: 0,
            span: None,
            category: Some("orders".into()),
            priority: Priority::High,
            deliver_after: None,
            expires_at: None,
            attempt: 4,
            replay_of: None,
            unless_read: None,
            revision: 0,
            replaces: None,
            items: vec![ChannelItem {
                user_id: "u1".into(),
                notification_id: uuid::Uuid::now_v7(),
                email: None,
                phone: None,
                title: Some("Your order shipped".into()),
                body: "Arrives tomorrow".into(),
                html: None,
                data: serde_json::json!({"order": 42}),
                targets: Some(vec!["tok-1".into()]),
            }],
        },
        created_at: utc("2026-03-01T10:00:00Z"),
        replayed_at: None,
    }
}

pub mod cases {
    use super::*;

    pub async fn webhooks_are_upserted_listed_by_id_and_deleted(s: Arc<dyn DeliveryStore>) {
        let p = run_id();
        let a = webhook(&format!("{p}-a"), None);
        let mut b = webhook(&format!("{p}-b"), Some(vec!["orders"]));
        s.put_webhook(&a).await.unwrap();
        s.put_webhook(&b).await.unwrap();
        assert_eq!(s.get_webhook(&a.id).await.unwrap(), Some(a.clone()));

        // Replacing keeps created_at.
        b.url = "https://other.example.com/in".into();
        b.created_at = utc("2030-01-01T00:00:00Z");
        b.updated_at = utc("2026-03-02T10:00:00Z");
        s.put_webhook(&b).await.unwrap();
        let got = s.get_webhook(&b.id).await.unwrap().unwrap();
        assert_eq!(got.url, b.url);
        assert_eq!(got.created_at, utc("2026-03-01T10:00:00Z"));
        assert_eq!(got.updated_at, b.updated_at);

        let first = s.list_webhooks(Some(&format!("{p}-")), 1).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, a.id);
        let next = s.list_webhooks(Some(&a.id), 10).await.unwrap();
        assert!(next.iter().any(|w| w.id == b.id));
        assert!(!next.iter().any(|w| w.id == a.id));

        assert!(s.delete_webhook(&a.id).await.unwrap());
        assert!(!s.delete_webhook(&a.id).await.unwrap());
        assert!(s.get_webhook(&a.id).await.unwrap().is_none());
    }

    /// Times here and in the claim cases lie in the future: a purge is global, and a gateway
    /// purging by the real clock beside this suite (same database) leaves them alone.
    pub async fn a_processed_mark_and_a_claim_are_remembered_until_purged(
        s: Arc<dyn DeliveryStore>,
    ) {
        let key = format!("{}/0/push/0", run_id());
        let at = utc("2031-03-01T10:00:00Z");
        assert!(!s.is_processed(&key).await.unwrap());
        s.mark_processed(&key, at).await.unwrap();
        s.mark_processed(&key, at).await.unwrap(); // idempotent
        assert!(s.is_processed(&key).await.unwrap());
        assert_eq!(
            s.purge_processed(at).await.unwrap(),
            0,
            "not older than itself"
        );
        // A claim running until 20 s after the mark.
        let claimed = format!("{key}/claimed");
        let lease = std::time::Duration::from_secs(30);
        let claimed_at = at - Duration::seconds(10);
        assert_eq!(
            s.claim(&claimed, "a", claimed_at, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        assert!(s.purge_processed(at + Duration::seconds(1)).await.unwrap() >= 1);
        assert!(!s.is_processed(&key).await.unwrap());
        assert!(
            matches!(
                s.claim(&claimed, "b", claimed_at, lease).await.unwrap(),
                DeliveryClaim::Held { .. }
            ),
            "a claim that has not run out is kept"
        );
        s.purge_processed(at + Duration::seconds(21)).await.unwrap();
        assert_eq!(
            s.claim(&claimed, "b", claimed_at, lease).await.unwrap(),
            DeliveryClaim::Won,
            "a claim that ran out is gone (else b would wait for a at this time)"
        );
    }

    pub async fn a_claim_is_one_holders_until_it_runs_out_and_its_holder_extends_it(
        s: Arc<dyn DeliveryStore>,
    ) {
        let key = format!("{}/0/push/0/0", run_id());
        let lease = std::time::Duration::from_secs(30);
        let t0 = utc("2031-04-01T10:00:00Z");
        assert_eq!(
            s.claim(&key, "a", t0, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        let held = DeliveryClaim::Held {
            until: t0 + Duration::seconds(30),
        };
        assert_eq!(s.claim(&key, "b", t0, lease).await.unwrap(), held);
        assert_eq!(
            s.claim(&key, "b", t0 + Duration::seconds(29), lease)
                .await
                .unwrap(),
            held,
            "another holder waits for the end of the lease"
        );
        // The holder renews: its claim now ends 30 s after the renewal.
        let t1 = t0 + Duration::seconds(20);
        assert_eq!(
            s.claim(&key, "a", t1, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        assert_eq!(
            s.claim(&key, "b", t0 + Duration::seconds(40), lease)
                .await
                .unwrap(),
            DeliveryClaim::Held {
                until: t1 + Duration::seconds(30)
            },
            "the renewal moved the end"
        );
        // Run out: the next holder takes it, and the first one has lost it.
        let t2 = t1 + Duration::seconds(30);
        assert_eq!(
            s.claim(&key, "b", t2, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        assert_eq!(
            s.claim(&key, "a", t2, lease).await.unwrap(),
            DeliveryClaim::Held {
                until: t2 + Duration::seconds(30)
            }
        );
        // Other keys are free.
        let other = format!("{key}/other");
        assert_eq!(
            s.claim(&other, "a", t2, lease).await.unwrap(),
            DeliveryClaim::Won
        );
    }

    pub async fn a_processed_key_is_never_claimed_again(s: Arc<dyn DeliveryStore>) {
        let key = format!("{}/0/push/0/0", run_id());
        let lease = std::time::Duration::from_secs(30);
        let t0 = utc("2031-04-02T10:00:00Z");
        assert_eq!(
            s.claim(&key, "a", t0, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        s.mark_processed(&key, t0 + Duration::seconds(1))
            .await
            .unwrap();
        for (holder, at) in [("a", t0), ("b", t0), ("b", t0 + Duration::hours(1))] {
            assert_eq!(
                s.claim(&key, holder, at, lease).await.unwrap(),
                DeliveryClaim::Processed,
                "{holder} at {at}"
            );
        }
        // Processed without a claim (marked by a gateway of before claims) counts the same.
        let marked = format!("{key}/marked");
        s.mark_processed(&marked, t0).await.unwrap();
        assert_eq!(
            s.claim(&marked, "a", t0, lease).await.unwrap(),
            DeliveryClaim::Processed
        );
    }

    pub async fn a_released_claim_is_free_at_once_and_only_its_holder_releases_it(
        s: Arc<dyn DeliveryStore>,
    ) {
        let key = format!("{}/0/push/0/0", run_id());
        let lease = std::time::Duration::from_secs(30);
        let t0 = utc("2031-04-04T10:00:00Z");
        assert_eq!(
            s.claim(&key, "a", t0, lease).await.unwrap(),
            DeliveryClaim::Won
        );
        // Another holder's release changes nothing: a still holds it.
        s.release(&key, "b").await.unwrap();
        assert_eq!(
            s.claim(&key, "b", t0, lease).await.unwrap(),
            DeliveryClaim::Held {
                until: t0 + Duration::seconds(30)
            }
        );
        // a gives it up: b takes it at once, long before the lease would have run out.
        s.release(&key, "a").await.unwrap();
        s.release(&key, "a").await.unwrap(); // idempotent
        assert_eq!(
            s.claim(&key, "b", t0 + Duration::seconds(1), lease)
                .await
                .unwrap(),
            DeliveryClaim::Won
        );
        // a's late release does not free b's claim; releasing an unknown key is no error.
        s.release(&key, "a").await.unwrap();
        assert!(matches!(
            s.claim(&key, "c", t0 + Duration::seconds(2), lease)
                .await
                .unwrap(),
            DeliveryClaim::Held { .. }
        ));
        s.release(&format!("{key}/unknown"), "a").await.unwrap();
        // A released key that was processed stays processed.
        s.mark_processed(&key, t0 + Duration::seconds(3))
            .await
            .unwrap();
        s.release(&key, "b").await.unwrap();
        assert_eq!(
            s.claim(&key, "c", t0 + Duration::seconds(4), lease)
                .await
                .unwrap(),
            DeliveryClaim::Processed
        );
    }

    pub async fn holders_racing_for_one_key_leave_exactly_one_winner(s: Arc<dyn DeliveryStore>) {
        let lease = std::time::Duration::from_secs(30);
        let t0 = utc("2031-04-03T10:00:00Z");
        for round in 0..20 {
            let key = format!("{}/{round}/push/0/0", run_id());
            let claims = (0..8).map(|h| {
                let (s, key) = (s.clone(), key.clone());
                tokio::spawn(async move { s.claim(&key, &format!("h{h}"), t0, lease).await })
            });
            let got: Vec<DeliveryClaim> = futures::future::join_all(claims)
                .await
                .into_iter()
                .map(|r| r.unwrap().unwrap())
                .collect();
            let won = got.iter().filter(|c| **c == DeliveryClaim::Won).count();
            assert_eq!(won, 1, "round {round}: {got:?}");
        }
    }

    pub async fn dead_letters_read_back_newest_first_by_channel(s: Arc<dyn DeliveryStore>) {
        let c = run_id();
        let push1 = letter(Channel::Push, &c);
        let email = letter(Channel::Email, &c);
        let push2 = letter(Channel::Push, &c);
        for l in [&push1, &email, &push2] {
            s.insert_dead_letter(l).await.unwrap();
        }
        s.insert_dead_letter(&push1).await.unwrap(); // same id: no change, no error
        assert_eq!(
            s.get_dead_letter(&push1.id).await.unwrap(),
            Some(push1.clone())
        );
        assert!(s.get_dead_letter("nope").await.unwrap().is_none());

        let all = s.list_dead_letters(None, None, 1000).await.unwrap();
        let mine: Vec<&str> = all
            .iter()
            .filter(|l| l.campaign_id == c)
            .map(|l| l.id.as_str())
            .collect();
        assert_eq!(mine, vec![&push2.id, &email.id, &push1.id]);

        let pushes = s
            .list_dead_letters(Some(Channel::Push), None, 1)
            .await
            .unwrap();
        assert_eq!(pushes.len(), 1);
        let rest = s
            .list_dead_letters(Some(Channel::Push), Some(&pushes[0].id), 1000)
            .await
            .unwrap();
        assert!(rest.iter().all(|l| l.channel == Channel::Push));
        assert!(rest.iter().all(|l| l.id < pushes[0].id));
    }

    /// Ids come from URLs: any string names a letter or nothing, whatever its characters.
    pub async fn a_dead_letter_id_of_any_characters_is_simply_not_found(s: Arc<dyn DeliveryStore>) {
        for id in ["é", "\u{1F600}", "a\u{0}b", "", &"x".repeat(300)] {
            assert!(s.get_dead_letter(id).await.unwrap().is_none(), "{id:?}");
            assert!(
                !s.mark_replayed(id, chrono::Utc::now()).await.unwrap(),
                "{id:?}"
            );
            s.unmark_replayed(id).await.unwrap();
        }
    }

    pub async fn a_dead_letter_is_marked_replayed_once(s: Arc<dyn DeliveryStore>) {
        let l = letter(Channel::Sms, &run_id());
        s.insert_dead_letter(&l).await.unwrap();
        let at = utc("2026-03-02T10:00:00Z");
        assert!(s.mark_replayed(&l.id, at).await.unwrap());
        assert!(!s.mark_replayed(&l.id, at).await.unwrap());
        assert_eq!(
            s.get_dead_letter(&l.id).await.unwrap().unwrap().replayed_at,
            Some(at)
        );
        s.unmark_replayed(&l.id).await.unwrap();
        assert!(s
            .get_dead_letter(&l.id)
            .await
            .unwrap()
            .unwrap()
            .replayed_at
            .is_none());
        assert!(s.mark_replayed(&l.id, at).await.unwrap());
        assert!(!s.mark_replayed("unknown", at).await.unwrap());
    }
    pub async fn every_webhook_is_read_across_pages(s: Arc<dyn DeliveryStore>) {
        for i in 0..1_001 {
            s.put_webhook(&webhook(&format!("hook-{i:04}"), None))
                .await
                .unwrap();
        }
        let all = s.all_webhooks().await.unwrap();
        assert_eq!(all.len(), 1_001);
        assert!(
            all.windows(2).all(|w| w[0].id < w[1].id),
            "by id, each once"
        );
        assert_eq!(all[1_000].id, "hook-1000");
    }

    fn log_entry(
        key: &str,
        channel: Channel,
        at: &str,
        sent: u64,
        failed: u64,
        latency_secs: f64,
    ) -> DeliveryLogEntry {
        let failures = (0..failed.min(3))
            .map(|i| LoggedFailure {
                at: utc(at),
                channel,
                campaign_id: "c1".into(),
                user_id: format!("u{i}"),
                target: format!("unreg-{key}-{i}"),
                reason: "UNREGISTERED".into(),
            })
            .collect();
        let ms = (latency_secs * 1000.0) as u64;
        DeliveryLogEntry {
            key: key.into(),
            channel,
            at: utc(at),
            counts: DeliveryLogCounts {
                reports: 1,
                sent,
                failed,
                invalid_tokens: failed,
                dead_lettered: 0,
                // Stored as given (the classes need not add up here).
                unreachable: if channel == Channel::Email { failed } else { 0 },
                retried: 1,
                provider_ms: 120,
            },
            latency: (sent > 0).then(|| (latency_bucket(latency_secs), ms * sent)),
            failures,
        }
    }

    pub async fn the_delivery_log_adds_each_report_once_to_its_minute_and_channel(
        s: Arc<dyn DeliveryStore>,
    ) {
        let entries = [
            log_entry("r1", Channel::Push, "2026-03-01T10:00:05Z", 8, 2, 0.3),
            log_entry("r2", Channel::Push, "2026-03-01T10:00:59Z", 10, 0, 4.0),
            log_entry("r3", Channel::Push, "2026-03-01T10:01:00Z", 1, 0, 0.3),
            log_entry("r4", Channel::Email, "2026-03-01T10:00:30Z", 0, 1, 0.0),
        ];
        for e in &entries {
            assert!(s.record_delivery_log(e).await.unwrap(), "{}", e.key);
        }
        // A redelivered report adds nothing, even stamped with another time.
        let mut again = entries[0].clone();
        again.at = utc("2026-03-01T10:05:00Z");
        assert!(!s.record_delivery_log(&again).await.unwrap());

        let all = s
            .delivery_rollups(utc("2026-03-01T10:00:00Z"), None)
            .await
            .unwrap();
        // By minute, then channel (in the order of `Channel`).
        let keys: Vec<(String, Channel)> = all
            .iter()
            .map(|r| (r.minute.to_rfc3339(), r.channel))
            .collect();
        let minute = |m: &str| format!("2026-03-01T10:0{m}:00+00:00");
        assert_eq!(
            keys,
            [
                (minute("0"), Channel::Push),
                (minute("0"), Channel::Email),
                (minute("1"), Channel::Push),
            ]
        );
        let push = &all[0];
        assert_eq!(push.counts.reports, 2);
        assert_eq!(push.counts.sent, 18);
        assert_eq!(push.counts.failed, 2);
        assert_eq!(push.counts.invalid_tokens, 2);
        assert_eq!(push.counts.retried, 2);
        assert_eq!(push.counts.provider_ms, 240);
        assert_eq!(push.counts.provider_mean_secs(), Some(0.12));
        assert_eq!(push.latency[latency_bucket(0.3)], 8);
        assert_eq!(push.latency[latency_bucket(4.0)], 10);
        assert_eq!(push.latency.iter().sum::<u64>(), 18);
        assert_eq!(push.latency_ms_sum, 8 * 300 + 10 * 4000);
        assert_eq!(push.latency_quantile(0.95), Some(5.0));
        let email = all.iter().find(|r| r.channel == Channel::Email).unwrap();
        assert_eq!((email.counts.sent, email.counts.failed), (0, 1));
        assert_eq!(email.counts.unreachable, 1);
        assert_eq!(push.counts.unreachable, 0);
        assert_eq!(email.latency.iter().sum::<u64>(), 0);

        // From a later minute on, and one channel.
        let later = s
            .delivery_rollups(utc("2026-03-01T10:00:30Z"), Some(Channel::Push))
            .await
            .unwrap();
        assert_eq!(later.len(), 2, "the minute `since` falls in is included");
        let only = s
            .delivery_rollups(utc("2026-03-01T10:01:00Z"), Some(Channel::Push))
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].counts.sent, 1);
        assert!(s
            .delivery_rollups(utc("2026-03-01T10:00:00Z"), Some(Channel::Sms))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn the_delivery_log_keeps_failures_newest_first_and_forgets_past_the_retention(
        s: Arc<dyn DeliveryStore>,
    ) {
        s.record_delivery_log(&log_entry(
            "old",
            Channel::Push,
            "2026-02-01T00:00:00Z",
            1,
            2,
            1.0,
        ))
        .await
        .unwrap();
        s.record_delivery_log(&log_entry(
            "new",
            Channel::Push,
            "2026-03-01T00:00:00Z",
            1,
            3,
            1.0,
        ))
        .await
        .unwrap();
        s.record_delivery_log(&log_entry(
            "mail",
            Channel::Email,
            "2026-03-01T00:00:00Z",
            0,
            1,
            0.0,
        ))
        .await
        .unwrap();
        let failures = s
            .recent_failures(Channel::Push, utc("2026-01-01T00:00:00Z"), 100)
            .await
            .unwrap();
        assert_eq!(failures.len(), 5);
        assert!(failures[..3]
            .iter()
            .all(|f| f.target.starts_with("unreg-new-")));
        assert!(failures[3..]
            .iter()
            .all(|f| f.target.starts_with("unreg-old-")));
        assert_eq!(failures[0].reason, "UNREGISTERED");
        assert_eq!(
            s.recent_failures(Channel::Push, utc("2026-01-01T00:00:00Z"), 2)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            s.recent_failures(Channel::Push, utc("2026-02-15T00:00:00Z"), 100)
                .await
                .unwrap()
                .len(),
            3
        );

        let purged = s
            .purge_delivery_log(utc("2026-02-15T00:00:00Z"))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        let left = s
            .delivery_rollups(utc("2026-01-01T00:00:00Z"), None)
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|r| r.minute == utc("2026-03-01T00:00:00Z")));
        assert_eq!(
            s.recent_failures(Channel::Push, utc("2026-01-01T00:00:00Z"), 100)
                .await
                .unwrap()
                .len(),
            3
        );
        // The purged report's key is forgotten too: recorded again, it counts (its
        // redelivery would come within minutes, not past the retention).
        assert!(s
            .record_delivery_log(&log_entry(
                "old",
                Channel::Push,
                "2026-02-01T00:00:00Z",
                1,
                0,
                1.0
            ))
            .await
            .unwrap());
        // The kept one's is not.
        assert!(!s
            .record_delivery_log(&log_entry(
                "new",
                Channel::Push,
                "2026-03-01T00:00:00Z",
                1,
                3,
                1.0
            ))
            .await
            .unwrap());
    }

    fn record(
        campaign: &str,
        user: &str,
        channel: Channel,
        status: RecipientStatus,
        attempt: u32,
        at: &str,
    ) -> RecipientRecord {
        RecipientRecord {
            campaign_id: campaign.to_owned(),
            user_id: user.to_owned(),
            channel,
            status,
            sent: u32::from(status == RecipientStatus::Sent),
            reason: (status != RecipientStatus::Sent).then(|| format!("{status:?} at {attempt}")),
            dead_letter_id: (status == RecipientStatus::DeadLettered).then(|| "dl-1".to_owned()),
            attempt,
            at: utc(at),
        }
    }

    pub async fn a_recipients_latest_attempt_is_kept_per_campaign_and_channel(
        s: Arc<dyn DeliveryStore>,
    ) {
        let p = run_id();
        let c = format!("{p}-c");
        let retrying = record(
            &c,
            "ola",
            Channel::Push,
            RecipientStatus::Retrying,
            0,
            "2026-03-01T00:00:00Z",
        );
        let sent = record(
            &c,
            "ola",
            Channel::Push,
            RecipientStatus::Sent,
            1,
            "2026-03-01T00:00:05Z",
        );
        let email = record(
            &c,
            "ola",
            Channel::Email,
            RecipientStatus::DeadLettered,
            0,
            "2026-03-01T00:00:01Z",
        );
        let other = record(
            &c,
            "bob",
            Channel::Push,
            RecipientStatus::Failed,
            0,
            "2026-03-01T00:00:01Z",
        );
        s.record_recipients(&[retrying.clone(), email.clone(), other.clone()])
            .await
            .unwrap();
        s.record_recipients(std::slice::from_ref(&sent))
            .await
            .unwrap();
        // The earlier attempt's report, redelivered late, changes nothing; nor does a repeat.
        s.record_recipients(&[retrying, sent.clone()])
            .await
            .unwrap();
        let mut got = s.recipient_records(&c, "ola").await.unwrap();
        got.sort_by_key(|r| r.channel);
        let mut want = vec![sent.clone(), email];
        want.sort_by_key(|r| r.channel);
        assert_eq!(got, want);
        assert_eq!(s.recipient_records(&c, "bob").await.unwrap(), vec![other]);
        // A retry holding only the device that failed, dead-lettered: the recipient stays
        // sent, with the dead letter and the reason; then a replay sends it.
        let dead = record(
            &c,
            "ola",
            Channel::Push,
            RecipientStatus::DeadLettered,
            2,
            "2026-03-01T00:00:09Z",
        );
        s.record_recipients(std::slice::from_ref(&dead))
            .await
            .unwrap();
        let got = s.recipient_records(&c, "ola").await.unwrap();
        let push = got.iter().find(|r| r.channel == Channel::Push).unwrap();
        assert_eq!(push.status, RecipientStatus::Sent, "{push:?}");
        assert_eq!((push.sent, push.attempt), (1, 2));
        assert_eq!(push.dead_letter_id.as_deref(), Some("dl-1"));
        let replayed = record(
            &c,
            "ola",
            Channel::Push,
            RecipientStatus::Sent,
            1_000_000,
            "2026-03-01T00:01:00Z",
        );
        s.record_recipients(std::slice::from_ref(&replayed))
            .await
            .unwrap();
        let got = s.recipient_records(&c, "ola").await.unwrap();
        let push = got.iter().find(|r| r.channel == Channel::Push).unwrap();
        let want = RecipientRecord {
            sent: 2,
            dead_letter_id: Some("dl-1".into()),
            ..replayed
        };
        assert_eq!(push, &want);
        assert!(s.recipient_records(&c, "nobody").await.unwrap().is_empty());
        assert!(s
            .recipient_records(&format!("{p}-other"), "ola")
            .await
            .unwrap()
            .is_empty());
        // Many at once, and purged with the delivery log: more than one purge statement's
        // worth (a chunk is 5,000 rows in the SQL adapters).
        let old: Vec<RecipientRecord> = (0..12_000)
            .map(|i| {
                record(
                    &format!("{p}-old"),
                    &format!("u{i}"),
                    Channel::Push,
                    RecipientStatus::Sent,
                    0,
                    "2020-01-01T00:00:00Z",
                )
            })
            .collect();
        s.record_recipients(&old).await.unwrap();
        assert_eq!(
            s.recipient_records(&format!("{p}-old"), "u11999")
                .await
                .unwrap()
                .len(),
            1
        );
        s.purge_delivery_log(utc("2020-06-01T00:00:00Z"))
            .await
            .unwrap();
        for user in ["u0", "u5000", "u11999"] {
            assert!(
                s.recipient_records(&format!("{p}-old"), user)
                    .await
                    .unwrap()
                    .is_empty(),
                "{user}'s outcome outlived the purge"
            );
        }
        assert_eq!(s.recipient_records(&c, "ola").await.unwrap().len(), 2);
    }

    pub async fn the_recipients_sent_to_are_listed_by_user_in_pages(s: Arc<dyn DeliveryStore>) {
        let p = run_id();
        let c = format!("{p}-c");
        let at = "2026-03-01T00:00:00Z";
        let mut records: Vec<RecipientRecord> = (0..7)
            .map(|i| {
                record(
                    &c,
                    &format!("u{i}"),
                    Channel::Push,
                    RecipientStatus::Sent,
                    0,
                    at,
                )
            })
            .collect();
        // Not sent on push (failed, cancelled, another channel, another campaign): not listed.
        records.push(record(
            &c,
            "f1",
            Channel::Push,
            RecipientStatus::Failed,
            0,
            at,
        ));
        records.push(record(
            &c,
            "x1",
            Channel::Push,
            RecipientStatus::Cancelled,
            0,
            at,
        ));
        records.push(record(
            &c,
            "e1",
            Channel::Email,
            RecipientStatus::Sent,
            0,
            at,
        ));
        records.push(record(
            &format!("{p}-d"),
            "u9",
            Channel::Push,
            RecipientStatus::Sent,
            0,
            at,
        ));
        s.record_recipients(&records).await.unwrap();
        let first = s.sent_recipients(&c, Channel::Push, None, 3).await.unwrap();
        assert_eq!(first, ["u0", "u1", "u2"]);
        let second = s
            .sent_recipients(&c, Channel::Push, Some("u2"), 3)
            .await
            .unwrap();
        assert_eq!(second, ["u3", "u4", "u5"]);
        let last = s
            .sent_recipients(&c, Channel::Push, Some("u5"), 3)
            .await
            .unwrap();
        assert_eq!(last, ["u6"]);
        assert_eq!(
            s.sent_recipients(&c, Channel::Email, None, 10)
                .await
                .unwrap(),
            ["e1"]
        );
        assert!(s
            .sent_recipients(&format!("{p}-none"), Channel::Push, None, 10)
            .await
            .unwrap()
            .is_empty());
    }
}

macro_rules! delivery_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            delivery_conformance!(@cases $make;
                webhooks_are_upserted_listed_by_id_and_deleted,
                a_processed_mark_and_a_claim_are_remembered_until_purged,
                a_claim_is_one_holders_until_it_runs_out_and_its_holder_extends_it,
                a_processed_key_is_never_claimed_again,
                a_released_claim_is_free_at_once_and_only_its_holder_releases_it,
                holders_racing_for_one_key_leave_exactly_one_winner,
                dead_letters_read_back_newest_first_by_channel,
                a_dead_letter_is_marked_replayed_once,
                a_dead_letter_id_of_any_characters_is_simply_not_found,
                the_delivery_log_adds_each_report_once_to_its_minute_and_channel,
                every_webhook_is_read_across_pages,
                the_delivery_log_keeps_failures_newest_first_and_forgets_past_the_retention,
                a_recipients_latest_attempt_is_kept_per_campaign_and_channel,
                the_recipients_sent_to_are_listed_by_user_in_pages,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(s) = $make.await {
                    cases::$case(s).await;
                }
            }
        )*
    };
}

delivery_conformance!(sqlite, common::sqlite_deliveries());
delivery_conformance!(mysql, common::mysql_deliveries());
