//! Conformance suite of the `BroadcastStore` and `BroadcastStates` ports and of the in-process
//! caches.

mod common;

use common::{run_id, utc};
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::ports::{BroadcastStore, LiveHub, LiveSubscription, PreferenceCache};
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
}

#[path = "support/broadcast_state_cases.rs"]
pub mod state_cases;

macro_rules! broadcast_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            broadcast_conformance!(@cases $make;
                a_broadcast_is_stored_once_and_reads_back,
                open_broadcasts_are_the_scheduled_and_active_ones,
                status_moves_by_compare_and_set,
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

macro_rules! state_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            state_conformance!(@cases $make;
                per_user_state_is_sparse_and_keeps_first_times,
                the_earliest_time_is_kept_whatever_order_the_marks_arrive_in,
                every_state_of_a_user_with_many_comes_back,
                seen_and_archived_are_kept_beside_read_and_dismissed,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(s) = $make.await {
                    state_cases::$case(s).await;
                }
            }
        )*
    };
}

mod states {
    use super::*;
    state_conformance!(sqlite, common::sqlite_broadcast_states());
    state_conformance!(mysql, common::mysql_broadcast_states());
    // Only on a real cluster; `tests/scylla_smoke.rs` runs these cases against kassandra.
    state_conformance!(scylla, common::scylla_broadcast_states());
}

broadcast_conformance!(sqlite, common::sqlite_broadcasts());
broadcast_conformance!(mysql, common::mysql_broadcasts());
broadcast_conformance!(redis_in_front, redis_cache::cached());

/// Seed 004's read path: Redis in front of the broadcast store (MySQL when
/// `HERALD_TEST_MYSQL_URL` is set, SQLite otherwise), when `HERALD_TEST_REDIS_URL` is set.
mod redis_cache {
    use super::*;
    use herald_core::config::Secret;

    pub fn url() -> Option<Secret> {
        common::redis_test_url()
    }

    /// A broadcast store with Redis in front, and the store alone.
    type Pair = (Arc<dyn BroadcastStore>, Arc<dyn BroadcastStore>);

    /// A store of its own with Redis in front, and the store alone.
    pub async fn in_front(url: Option<Secret>) -> Option<Pair> {
        let url = url?;
        let store = match common::mysql_broadcasts().await {
            Some(s) => s,
            None => common::sqlite_broadcasts().await.unwrap(),
        };
        let cached = herald_storage::with_broadcast_cache(Some(&url), store.clone())
            .await
            .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
        Some((cached, store))
    }

    pub async fn cached() -> Option<Arc<dyn BroadcastStore>> {
        in_front(url()).await.map(|(cached, _)| cached)
    }

    /// Keys of the cache under `url`'s prefix, deleted as a flushed or new Redis would have.
    async fn forget(url: &Secret) {
        let (base, prefix) = url.expose().rsplit_once("prefix=").unwrap();
        let keys = [
            format!("{{{prefix}}}:broadcasts:active"),
            format!("{{{prefix}}}:broadcasts:built"),
        ];
        let mut del = ::redis::cmd("DEL");
        del.arg(&keys);
        let base = base.trim_end_matches(['?', '&']);
        if let Some(seed) = base.strip_suffix("?cluster=true") {
            let client = ::redis::cluster::ClusterClient::new(vec![seed]).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            let _: () = del.query_async(&mut conn).await.unwrap();
        } else {
            let client = ::redis::Client::open(base).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = del.query_async(&mut conn).await.unwrap();
        }
    }

    fn ids(list: &[Broadcast]) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = list.iter().map(|b| b.id).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn the_open_broadcasts_are_rebuilt_from_the_store_when_redis_lost_them() {
        let url = url();
        let Some((cached, _)) = in_front(url.clone()).await else {
            return;
        };
        let (a, b) = (
            broadcast(BroadcastStatus::Active),
            broadcast(BroadcastStatus::Scheduled),
        );
        cached.insert(&a).await.unwrap();
        cached.insert(&b).await.unwrap();
        forget(url.as_ref().unwrap()).await;
        assert_eq!(ids(&cached.list_open().await.unwrap()), ids(&[a, b]));
    }

    #[tokio::test]
    async fn what_one_node_writes_another_node_lists_and_ended_ones_leave() {
        let url = url();
        let Some((one, store)) = in_front(url.clone()).await else {
            return;
        };
        let other = herald_storage::with_broadcast_cache(url.as_ref(), store)
            .await
            .unwrap();
        let (a, b) = (
            broadcast(BroadcastStatus::Active),
            broadcast(BroadcastStatus::Scheduled),
        );
        one.insert(&a).await.unwrap();
        one.insert(&b).await.unwrap();
        assert_eq!(
            ids(&other.list_open().await.unwrap()),
            ids(&[a.clone(), b.clone()])
        );
        assert!(one
            .transition(
                b.id,
                &[BroadcastStatus::Scheduled],
                BroadcastStatus::Cancelled
            )
            .await
            .unwrap());
        assert_eq!(ids(&other.list_open().await.unwrap()), ids(&[a]));
    }

    /// A store whose `list_open` lets another node write a broadcast (store, then Redis) after
    /// it has read the list and before it returns it: the rebuild that asked holds a list
    /// without that broadcast.
    struct RacingStore {
        inner: Arc<dyn BroadcastStore>,
        other: tokio::sync::OnceCell<Arc<dyn BroadcastStore>>,
        late: Broadcast,
        raced: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl BroadcastStore for RacingStore {
        async fn ping(&self) -> herald_core::Result<()> {
            self.inner.ping().await
        }
        async fn insert(&self, b: &Broadcast) -> herald_core::Result<()> {
            self.inner.insert(b).await
        }
        async fn get(&self, id: Uuid) -> herald_core::Result<Option<Broadcast>> {
            self.inner.get(id).await
        }
        async fn list_open(&self) -> herald_core::Result<Vec<Broadcast>> {
            let list = self.inner.list_open().await?;
            if let Some(other) = self.other.get() {
                if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    other.insert(&self.late).await?;
                }
            }
            Ok(list)
        }
        async fn transition(
            &self,
            id: Uuid,
            from: &[BroadcastStatus],
            to: BroadcastStatus,
        ) -> herald_core::Result<bool> {
            self.inner.transition(id, from, to).await
        }
    }

    /// A rebuild never undoes a write that reached Redis while it was reading the store.
    #[tokio::test]
    async fn a_rebuild_does_not_undo_a_write_made_while_it_read_the_store() {
        let url = url();
        let Some((_, store)) = in_front(url.clone()).await else {
            return;
        };
        let late = broadcast(BroadcastStatus::Active);
        let racing = Arc::new(RacingStore {
            inner: store.clone(),
            other: tokio::sync::OnceCell::new(),
            late: late.clone(),
            raced: std::sync::atomic::AtomicBool::new(true),
        });
        let cached = herald_storage::with_broadcast_cache(url.as_ref(), racing.clone())
            .await
            .unwrap();
        let other = herald_storage::with_broadcast_cache(url.as_ref(), store)
            .await
            .unwrap();
        racing.other.set(other.clone()).ok().unwrap();
        racing
            .raced
            .store(false, std::sync::atomic::Ordering::SeqCst);
        forget(url.as_ref().unwrap()).await;
        // This rebuild read the list before `late` was written; it must not replace the set.
        let during = cached.list_open().await.unwrap();
        assert!(during.iter().all(|b| b.id != late.id));
        assert_eq!(ids(&other.list_open().await.unwrap()), ids(&[late]));
    }

    /// A node that died between its store write and its Redis write leaves Redis behind, until
    /// the next rebuild (at most `BUILT_TTL` later, or at once on a node's start).
    #[tokio::test]
    async fn a_write_that_reached_only_the_store_shows_after_a_rebuild() {
        let url = url();
        let Some((cached, store)) = in_front(url.clone()).await else {
            return;
        };
        let a = broadcast(BroadcastStatus::Active);
        store.insert(&a).await.unwrap();
        assert!(
            cached.list_open().await.unwrap().is_empty(),
            "served from Redis"
        );
        let restarted = herald_storage::with_broadcast_cache(url.as_ref(), store)
            .await
            .unwrap();
        assert_eq!(ids(&restarted.list_open().await.unwrap()), ids(&[a]));
    }
}

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
        let user = format!("{p}-u");
        let early = LiveEvent::ReadAll {
            user_id: user.clone(),
        };
        h.publish(early).await.unwrap();
        let mut s1 = h.subscribe().await.unwrap();
        let mut s2 = h.subscribe().await.unwrap();
        for s in [&s1, &s2] {
            s.routes.follow(&user).await.unwrap();
        }
        let ev = LiveEvent::Read {
            user_id: user.clone(),
            id: "n1".into(),
        };
        h.publish(ev.clone()).await.unwrap();
        for s in [&mut s1, &mut s2] {
            assert_eq!(
                next_of(&p, s).await,
                ev,
                "the early event was not delivered"
            );
        }
        // A state change of several items travels whole, as the other devices need it.
        let marked = LiveEvent::Marked {
            user_id: user.clone(),
            action: herald_core::model::InboxAction::Archive,
            ids: vec!["n1".into(), "n2".into()],
            before: None,
            all: false,
        };
        h.publish(marked.clone()).await.unwrap();
        for s in [&mut s1, &mut s2] {
            assert_eq!(next_of(&p, s).await, marked);
        }
        // A campaign's change of content goes to every node, whoever it follows.
        let revised = LiveEvent::Revised {
            revision: Box::new(herald_core::model::CampaignRevision {
                campaign_id: format!("{p}-c"),
                revision: 2,
                row_time: Some(chrono::Utc::now()),
                broadcast_id: None,
                content: herald_core::model::TemplateContent {
                    in_app: Some(herald_core::model::TitleBody {
                        title: "Hi {{ user.name }}".into(),
                        body: "b".into(),
                    }),
                    ..Default::default()
                },
                data: serde_json::json!({"k": 1}),
                revised_at: chrono::Utc::now(),
            }),
        };
        h.publish(revised.clone()).await.unwrap();
        for s in [&mut s1, &mut s2] {
            assert_eq!(next_of(&p, s).await, revised);
        }
    }

    /// The next event of this test (prefix `p`): other tests may publish activations on a
    /// shared hub.
    async fn next_of(p: &str, s: &mut LiveSubscription) -> LiveEvent {
        let within = std::time::Duration::from_secs(5);
        loop {
            let got = tokio::time::timeout(within, s.events.next())
                .await
                .expect("event arrives")
                .expect("stream open");
            let ours = match &got {
                LiveEvent::BroadcastActivated { broadcast } => broadcast.title.starts_with(p),
                LiveEvent::Retracted { retraction } => retraction.campaign_id.starts_with(p),
                LiveEvent::Revised { revision } => revision.campaign_id.starts_with(p),
                LiveEvent::Notifications { items } => {
                    items.iter().all(|n| n.user_id.starts_with(p))
                }
                LiveEvent::Read { user_id, .. }
                | LiveEvent::Dismiss { user_id, .. }
                | LiveEvent::ReadAll { user_id }
                | LiveEvent::Marked { user_id, .. } => user_id.starts_with(p),
            };
            if ours {
                return got;
            }
        }
    }

    fn activation(p: &str, n: u128) -> LiveEvent {
        let mut b = broadcast(BroadcastStatus::Active);
        b.id = Uuid::from_u128(n);
        b.title = format!("{p}-act{n}");
        LiveEvent::BroadcastActivated {
            broadcast: Box::new(b),
        }
    }

    fn note(user: &str) -> herald_core::model::Notification {
        herald_core::model::Notification {
            id: uuid::Uuid::now_v7(),
            user_id: user.to_owned(),
            campaign_id: None,
            title: "t".into(),
            body: "b".into(),
            category: None,
            data: serde_json::Value::Null,
            created_at: chrono::Utc::now(),
            read_at: None,
            seen_at: None,
            archived_at: None,
        }
    }

    /// Presence: a user is online while some subscription follows them, on whichever
    /// subscription (node), and offline once the last one unfollows or ends.
    pub async fn a_user_is_online_while_some_subscription_follows_them(h: Arc<dyn LiveHub>) {
        let p = run_id();
        let users: Vec<String> = (0..5).map(|i| format!("{p}-u{i}")).collect();
        let online = |h: Arc<dyn LiveHub>, users: Vec<String>| async move {
            let mut got: Vec<String> = h.online(&users).await.unwrap().into_iter().collect();
            got.sort();
            got
        };
        assert!(online(h.clone(), users.clone()).await.is_empty());
        assert!(h.online(&[]).await.unwrap().is_empty());
        let s1 = h.subscribe().await.unwrap();
        let s2 = h.subscribe().await.unwrap();
        s1.routes.follow(&users[0]).await.unwrap();
        s1.routes.follow(&users[1]).await.unwrap();
        s2.routes.follow(&users[1]).await.unwrap();
        s2.routes.follow(&users[2]).await.unwrap();
        assert_eq!(
            online(h.clone(), users.clone()).await,
            users[..3].to_vec(),
            "followed on either subscription"
        );
        // Still followed by s2 after s1 lets go.
        s1.routes.unfollow(&users[1]);
        s1.routes.unfollow(&users[0]);
        // Unfollows are applied in order before the next follow completes.
        s1.routes.follow(&users[3]).await.unwrap();
        assert_eq!(online(h.clone(), users.clone()).await, users[1..4].to_vec());
        // A subscription that ends follows nobody (Redis: its connection closes).
        drop(s2);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = online(h.clone(), users.clone()).await;
            if now == vec![users[3].clone()] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still online after their subscription ended: {now:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Many users in one call.
        let many: Vec<String> = (0..1500).map(|i| format!("{p}-m{i}")).collect();
        s1.routes.follow(&many[1234]).await.unwrap();
        assert_eq!(
            h.online(&many)
                .await
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![many[1234].clone()]
        );
        drop(s1);
    }

    pub async fn a_subscription_receives_only_the_users_it_follows_and_every_activation(
        h: Arc<dyn LiveHub>,
    ) {
        let p = run_id();
        let (u1, u2, u3) = (format!("{p}-u1"), format!("{p}-u2"), format!("{p}-u3"));
        let mut s1 = h.subscribe().await.unwrap();
        let mut s2 = h.subscribe().await.unwrap();
        s1.routes.follow(&u1).await.unwrap();
        s2.routes.follow(&u2).await.unwrap();
        // Following twice is harmless.
        s2.routes.follow(&u2).await.unwrap();
        let batch = vec![note(&u1), note(&u2), note(&u3), note(&u1)];
        h.publish(LiveEvent::Notifications {
            items: batch.clone(),
        })
        .await
        .unwrap();
        h.publish(LiveEvent::Dismiss {
            user_id: u3.clone(),
            id: "x".into(),
        })
        .await
        .unwrap();
        let act = activation(&p, 1);
        h.publish(act.clone()).await.unwrap();
        let LiveEvent::Notifications { items } = next_of(&p, &mut s1).await else {
            panic!("notifications first")
        };
        assert_eq!(
            items,
            vec![batch[0].clone(), batch[3].clone()],
            "u1's, in order"
        );
        assert_eq!(next_of(&p, &mut s1).await, act, "u3's dismiss not here");
        let LiveEvent::Notifications { items } = next_of(&p, &mut s2).await else {
            panic!("notifications first")
        };
        assert_eq!(items, vec![batch[1].clone()]);
        assert_eq!(next_of(&p, &mut s2).await, act);
        // After an unfollow the user's events stop (the marker after them arrives first).
        s1.routes.unfollow(&u1);
        // A follow made after it is applied after it: the order of requests holds.
        s1.routes.follow(&u2).await.unwrap();
        h.publish(LiveEvent::ReadAll {
            user_id: u1.clone(),
        })
        .await
        .unwrap();
        h.publish(LiveEvent::ReadAll {
            user_id: u2.clone(),
        })
        .await
        .unwrap();
        assert_eq!(
            next_of(&p, &mut s1).await,
            LiveEvent::ReadAll {
                user_id: u2.clone()
            }
        );
        assert_eq!(
            next_of(&p, &mut s2).await,
            LiveEvent::ReadAll {
                user_id: u2.clone()
            }
        );
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
    async fn a_subscription_receives_only_the_users_it_follows_and_every_activation() {
        cache_cases::a_subscription_receives_only_the_users_it_follows_and_every_activation(
            Arc::new(MemoryLiveHub::default()),
        )
        .await;
    }

    #[tokio::test]
    async fn a_user_is_online_while_some_subscription_follows_them() {
        cache_cases::a_user_is_online_while_some_subscription_follows_them(Arc::new(
            MemoryLiveHub::default(),
        ))
        .await;
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_too_far_behind_sees_its_stream_end_instead_of_a_gap() {
        use futures::StreamExt;
        let hub = MemoryLiveHub::with_capacity(4);
        let mut slow = hub.subscribe().await.unwrap().events;
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
        let fresh = hub.subscribe().await.unwrap();
        fresh.routes.follow("after").await.unwrap();
        let mut fresh = fresh.events;
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

    #[tokio::test]
    async fn a_sweep_drops_expired_preference_entries_and_keeps_fresh_ones() {
        let ttl = std::time::Duration::from_millis(100);
        let c = MemoryPreferenceCache::new(10, ttl);
        c.put_many(&[("old".into(), Preferences::default())])
            .await
            .unwrap();
        tokio::time::sleep(ttl + std::time::Duration::from_millis(20)).await;
        c.put_many(&[("new".into(), Preferences::default())])
            .await
            .unwrap();
        c.sweep();
        assert_eq!(c.len(), 1, "the expired entry is gone, the fresh one kept");
        assert!(c.get_many(&["new".into()]).await.unwrap()[0].is_some());
        tokio::time::sleep(ttl + std::time::Duration::from_millis(20)).await;
        c.sweep();
        assert!(
            c.is_empty(),
            "every entry expired: the map is dropped whole"
        );
    }

    #[tokio::test]
    async fn an_in_process_preference_cache_sweeps_itself_until_it_is_dropped() {
        let c = std::sync::Arc::new(MemoryPreferenceCache::new(
            10,
            std::time::Duration::from_millis(50),
        ));
        MemoryPreferenceCache::sweep_every_ttl(&c);
        c.put_many(&[("u1".into(), Preferences::default())])
            .await
            .unwrap();
        assert_eq!(c.len(), 1);
        // Swept at least every second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !c.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the expired entry was never swept"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let weak = std::sync::Arc::downgrade(&c);
        drop(c);
        assert!(
            weak.upgrade().is_none(),
            "the sweeper holds no strong reference"
        );
    }
}

/// The Redis preference cache and live hub, each under a key prefix of its own on the server
/// of `HERALD_TEST_REDIS_URL`.
mod redis {
    use super::*;

    fn url() -> Option<herald_core::config::Secret> {
        common::redis_test_url()
    }

    #[tokio::test]
    async fn cached_preferences_are_returned_until_invalidated() {
        let Some(url) = url() else { return };
        let cache =
            herald_storage::open_preference_cache(Some(&url), std::time::Duration::from_secs(60))
                .await
                .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
        cache_cases::cached_preferences_are_returned_until_invalidated(cache).await;
    }

    #[tokio::test]
    async fn every_subscriber_receives_events_published_after_it_subscribed() {
        let Some(url) = url() else { return };
        let hub = herald_storage::open_live_hub(Some(&url))
            .await
            .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
        cache_cases::every_subscriber_receives_events_published_after_it_subscribed(hub).await;
    }

    #[tokio::test]
    async fn a_subscription_receives_only_the_users_it_follows_and_every_activation() {
        let Some(url) = url() else { return };
        let hub = herald_storage::open_live_hub(Some(&url))
            .await
            .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
        cache_cases::a_subscription_receives_only_the_users_it_follows_and_every_activation(hub)
            .await;
    }

    #[tokio::test]
    async fn a_user_is_online_while_some_subscription_follows_them() {
        let Some(url) = url() else { return };
        let hub = herald_storage::open_live_hub(Some(&url))
            .await
            .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
        cache_cases::a_user_is_online_while_some_subscription_follows_them(hub).await;
    }

    /// Two processes share one cache: a preference written through one is never hidden by
    /// an older copy the other loaded before the write and puts back after it.
    #[tokio::test]
    async fn an_invalidated_entry_cannot_be_put_back_by_a_slower_reader() {
        let Some(url) = url() else { return };
        let ttl = std::time::Duration::from_secs(60);
        let a = herald_storage::open_preference_cache(Some(&url), ttl)
            .await
            .unwrap();
        let b = herald_storage::open_preference_cache(Some(&url), ttl)
            .await
            .unwrap();
        let user = format!("{}-u", run_id());
        let old = Preferences::default();
        // `b` loaded the old preferences from the directory; then `a`'s API wrote new ones.
        a.invalidate(&user).await.unwrap();
        b.put_many(&[(user.clone(), old)]).await.unwrap();
        assert_eq!(
            a.get_many(std::slice::from_ref(&user)).await.unwrap(),
            vec![None],
            "the stale copy is not served"
        );
    }
}

/// The Redis live hub across a Redis restart, on a `redis-server` of the test's own (run when
/// `HERALD_TEST_REDIS_URL` says Redis is installed here).
mod redis_restart {
    use super::*;
    use futures::StreamExt;
    use std::process::{Child, Command, Stdio};

    struct Server(Child);

    impl Server {
        fn start(port: u16) -> Server {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            Server(child)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn open_when_up(url: &herald_core::config::Secret) -> Arc<dyn LiveHub> {
        for _ in 0..100 {
            if let Ok(hub) = herald_storage::open_live_hub(Some(url)).await {
                return hub;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the test's redis-server did not come up");
    }

    /// Pub/sub keeps nothing for a subscriber that is away: when Redis goes, the stream ends
    /// (the consumer's signal to resubscribe and have its sockets resume with `since`), and a
    /// new subscription after the restart receives again.
    #[tokio::test]
    async fn a_subscription_ends_when_redis_goes_away_and_a_new_one_works_after_the_restart() {
        if std::env::var("HERALD_TEST_REDIS_URL").is_err() {
            return;
        }
        let port = free_port();
        let url = herald_core::config::Secret::new(format!("redis://127.0.0.1:{port}"));
        let server = Server::start(port);
        let hub = open_when_up(&url).await;
        let mut events = hub.subscribe().await.unwrap().events;
        drop(server);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("the stream ends when the server goes");
        assert_eq!(end, None);

        let _server = Server::start(port);
        let subscription = loop {
            match hub.subscribe().await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        subscription.routes.follow("ola").await.unwrap();
        let mut events = subscription.events;
        let ev = LiveEvent::ReadAll {
            user_id: "ola".into(),
        };
        // The publishing connection reconnects on its own; its first try may fail while it
        // does.
        let mut published = false;
        for _ in 0..100 {
            if hub.publish(ev.clone()).await.is_ok() {
                published = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(published, "publishing works again after the restart");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("event after the restart");
        assert_eq!(got, Some(ev));
    }
}
