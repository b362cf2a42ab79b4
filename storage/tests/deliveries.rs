//! Conformance suite of the `DeliveryStore` port: webhook subscriptions, dead letters and
//! processed-message marks.

mod common;

use chrono::Duration;
use common::{run_id, utc};
use herald_core::config::Secret;
use herald_core::delivery::{DeadLetter, Webhook};
use herald_core::model::*;
use herald_core::ports::DeliveryStore;
use herald_core::topics::{ChannelItem, ChannelMessage};
use std::sync::Arc;

fn webhook(id: &str, categories: Option<Vec<&str>>) -> Webhook {
    Webhook {
        id: id.into(),
        url: "https://hooks.example.com/herald".into(),
        secret: Secret::new("whsec-0123456789abcdef"),
        categories: categories.map(|c| c.into_iter().map(String::from).collect()),
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
            category: Some("orders".into()),
            priority: Priority::High,
            deliver_after: None,
            expires_at: None,
            attempt: 4,
            replay_of: None,
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

    pub async fn a_processed_mark_is_remembered_until_purged(s: Arc<dyn DeliveryStore>) {
        let key = format!("{}/0/push/0", run_id());
        let at = utc("2026-03-01T10:00:00Z");
        assert!(!s.is_processed(&key).await.unwrap());
        s.mark_processed(&key, at).await.unwrap();
        s.mark_processed(&key, at).await.unwrap(); // idempotent
        assert!(s.is_processed(&key).await.unwrap());
        assert_eq!(
            s.purge_processed(at).await.unwrap(),
            0,
            "not older than itself"
        );
        assert!(s.purge_processed(at + Duration::seconds(1)).await.unwrap() >= 1);
        assert!(!s.is_processed(&key).await.unwrap());
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
}

macro_rules! delivery_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            delivery_conformance!(@cases $make;
                webhooks_are_upserted_listed_by_id_and_deleted,
                a_processed_mark_is_remembered_until_purged,
                dead_letters_read_back_newest_first_by_channel,
                a_dead_letter_is_marked_replayed_once,
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
