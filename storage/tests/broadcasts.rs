//! Conformance suite of the `BroadcastStore` port and of the in-process caches.

mod common;

use chrono::Duration;
use common::{run_id, utc};
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::ports::{BroadcastStore, LiveHub, PreferenceCache};
use herald_core::ErrorKind;
use std::sync::Arc;
use uuid::Uuid;

fn broadcast(status: BroadcastStatus) -> Broadcast {
    Broadcast {
        id: Uuid::now_v7(),
        campaign_id: Some(run_id()),
        title: "Dark mode is here".into(),
        body: "Try it in settings".into(),
        category: Some("product".into()),
        data: serde_json::json!({"feature": "dark_mode"}),
        segment: Some("premium".into()),
        filter: Filter::parse(&serde_json::json!({"attr": "tier", "eq": "premium"})).unwrap(),
        channels: vec![Channel::InApp, Channel::Push],
        priority: Priority::Normal,
        starts_at: utc("2026-02-23T10:00:00Z"),
        expires_at: Some(utc("2026-02-26T10:00:00Z")),
        status,
        created_at: utc("2026-02-23T09:00:00Z"),
    }
}

pub mod cases {
    use super::*;

    pub async fn a_broadcast_is_stored_once_and_reads_back(s: Arc<dyn BroadcastStore>) {
        let b = broadcast(BroadcastStatus::Scheduled);
        s.insert(&b).await.unwrap();
        assert_eq!(s.get(b.id).await.unwrap(), Some(b.clone()));
        assert_eq!(s.insert(&b).await.unwrap_err().kind, ErrorKind::Conflict);
        assert!(s.get(Uuid::now_v7()).await.unwrap().is_none());
    }

    pub async fn open_broadcasts_are_the_scheduled_and_active_ones(s: Arc<dyn BroadcastStore>) {
        let scheduled = broadcast(BroadcastStatus::Scheduled);
        let active = broadcast(BroadcastStatus::Active);
        let done = broadcast(BroadcastStatus::Completed);
        for b in [&scheduled, &active, &done] {
            s.insert(b).await.unwrap();
        }
        let open: Vec<Uuid> = s
            .list_open()
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert!(open.contains(&scheduled.id));
        assert!(open.contains(&active.id));
        assert!(!open.contains(&done.id));
    }

    pub async fn status_moves_by_compare_and_set(s: Arc<dyn BroadcastStore>) {
        let b = broadcast(BroadcastStatus::Scheduled);
        s.insert(&b).await.unwrap();
        assert!(s
            .transition(b.id, &[BroadcastStatus::Scheduled], BroadcastStatus::Active)
            .await
            .unwrap());
        assert!(!s
            .transition(b.id, &[BroadcastStatus::Scheduled], BroadcastStatus::Active)
            .await
            .unwrap());
        assert!(s
            .transition(
                b.id,
                &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
                BroadcastStatus::Cancelled
            )
            .await
            .unwrap());
        assert_eq!(
            s.get(b.id).await.unwrap().unwrap().status,
            BroadcastStatus::Cancelled
        );
        assert!(!s.list_open().await.unwrap().iter().any(|x| x.id == b.id));
    }

    pub async fn per_user_state_is_sparse_and_keeps_first_times(s: Arc<dyn BroadcastStore>) {
        let p = run_id();
        let (alice, bob) = (format!("{p}-alice"), format!("{p}-bob"));
        let (b1, b2) = (
            broadcast(BroadcastStatus::Active),
            broadcast(BroadcastStatus::Active),
        );
        s.insert(&b1).await.unwrap();
        s.insert(&b2).await.unwrap();
        assert!(s.user_states(&alice).await.unwrap().is_empty());
        let t1 = utc("2026-02-24T00:00:00Z");
        let t2 = t1 + Duration::hours(1);
        s.mark_read(&alice, b1.id, t1).await.unwrap();
        s.mark_read(&alice, b1.id, t2).await.unwrap();
        s.dismiss(&alice, b2.id, t2).await.unwrap();
        let mut states = s.user_states(&alice).await.unwrap();
        states.sort_by_key(|st| st.broadcast_id);
        assert_eq!(
            states,
            vec![
                BroadcastUserState {
                    broadcast_id: b1.id,
                    user_id: alice.clone(),
                    read_at: Some(t1),
                    dismissed_at: None,
                },
                BroadcastUserState {
                    broadcast_id: b2.id,
                    user_id: alice.clone(),
                    read_at: None,
                    dismissed_at: Some(t2),
                },
            ]
        );
        assert!(s.user_states(&bob).await.unwrap().is_empty());
    }
}

macro_rules! broadcast_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            broadcast_conformance!(@cases $make;
                a_broadcast_is_stored_once_and_reads_back,
                open_broadcasts_are_the_scheduled_and_active_ones,
                status_moves_by_compare_and_set,
                per_user_state_is_sparse_and_keeps_first_times,
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

broadcast_conformance!(sqlite, common::sqlite_broadcasts());
broadcast_conformance!(mysql, common::mysql_broadcasts());

/// The in-process preference cache and live hub (Redis adapters of later issues reuse these).
pub mod cache_cases {
    use super::*;
    use futures::StreamExt;

    pub async fn cached_preferences_are_returned_until_invalidated(c: Arc<dyn PreferenceCache>) {
        let p = run_id();
        let (a, b) = (format!("{p}-a"), format!("{p}-b"));
        let prefs = Preferences {
            channels: [(Channel::Sms, false)].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(
            c.get_many(&[a.clone(), b.clone()]).await.unwrap(),
            vec![None, None]
        );
        c.put_many(&[
            (a.clone(), prefs.clone()),
            (b.clone(), Preferences::default()),
        ])
        .await
        .unwrap();
        assert_eq!(
            c.get_many(&[a.clone(), b.clone()]).await.unwrap(),
            vec![Some(prefs), Some(Preferences::default())]
        );
        c.invalidate(&a).await.unwrap();
        assert_eq!(
            c.get_many(std::slice::from_ref(&a)).await.unwrap(),
            vec![None]
        );
    }

    pub async fn every_subscriber_receives_events_published_after_it_subscribed(
        h: Arc<dyn LiveHub>,
    ) {
        let p = run_id();
        let early = LiveEvent::ReadAll {
            user_id: format!("{p}-early"),
        };
        h.publish(early).await.unwrap();
        let mut s1 = h.subscribe().await.unwrap();
        let mut s2 = h.subscribe().await.unwrap();
        let ev = LiveEvent::Read {
            user_id: format!("{p}-u"),
            id: "n1".into(),
        };
        h.publish(ev.clone()).await.unwrap();
        let within = std::time::Duration::from_secs(5);
        for s in [&mut s1, &mut s2] {
            // Other tests may publish on a shared hub; skip anything that is not ours.
            loop {
                let got = tokio::time::timeout(within, s.next())
                    .await
                    .expect("event arrives")
                    .expect("stream open");
                if got == ev {
                    break;
                }
                assert!(
                    !matches!(&got, LiveEvent::ReadAll { user_id } if user_id.starts_with(&p)),
                    "an event from before subscribing was delivered"
                );
            }
        }
    }
}

mod memory {
    use super::*;
    use herald_storage::memory::{MemoryLiveHub, MemoryPreferenceCache};

    #[tokio::test]
    async fn cached_preferences_are_returned_until_invalidated() {
        cache_cases::cached_preferences_are_returned_until_invalidated(Arc::new(
            MemoryPreferenceCache::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn every_subscriber_receives_events_published_after_it_subscribed() {
        cache_cases::every_subscriber_receives_events_published_after_it_subscribed(Arc::new(
            MemoryLiveHub::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_too_far_behind_sees_its_stream_end_instead_of_a_gap() {
        use futures::StreamExt;
        let hub = MemoryLiveHub::with_capacity(4);
        let mut slow = hub.subscribe().await.unwrap();
        for i in 0..10 {
            hub.publish(LiveEvent::ReadAll {
                user_id: format!("u{i}"),
            })
            .await
            .unwrap();
        }
        // It lost events: rather than skipping them silently, the stream ends.
        let within = std::time::Duration::from_secs(5);
        let got = tokio::time::timeout(within, slow.next())
            .await
            .expect("answers");
        assert_eq!(got, None);
        // A new subscription works.
        let mut fresh = hub.subscribe().await.unwrap();
        let ev = LiveEvent::ReadAll {
            user_id: "after".into(),
        };
        hub.publish(ev.clone()).await.unwrap();
        let got = tokio::time::timeout(within, fresh.next())
            .await
            .expect("answers");
        assert_eq!(got, Some(ev));
    }

    #[tokio::test]
    async fn a_full_preference_cache_starts_over_instead_of_growing() {
        let c = MemoryPreferenceCache::new(2, std::time::Duration::from_secs(60));
        let entries: Vec<(String, Preferences)> = (0..3)
            .map(|i| (format!("u{i}"), Preferences::default()))
            .collect();
        c.put_many(&entries[..2]).await.unwrap();
        c.put_many(&entries[2..]).await.unwrap();
        let got = c
            .get_many(&["u0".into(), "u1".into(), "u2".into()])
            .await
            .unwrap();
        assert_eq!(got.iter().filter(|p| p.is_some()).count(), 1);
        assert!(got[2].is_some());
    }

    #[tokio::test]
    async fn an_in_process_preference_entry_expires_so_a_write_elsewhere_is_seen() {
        let c = MemoryPreferenceCache::new(10, std::time::Duration::from_millis(50));
        c.put_many(&[("u1".into(), Preferences::default())])
            .await
            .unwrap();
        assert!(c.get_many(&["u1".into()]).await.unwrap()[0].is_some());
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        assert_eq!(
            c.get_many(&["u1".into()]).await.unwrap(),
            vec![None],
            "expired: the next batch reads the directory"
        );
    }
}
