//! The two in-process caches behind an inbox read, so a steady-state read costs one indexed
//! range query on the inbox store plus one broadcast-state lookup:
//!
//! - [`BroadcastCache`]: the open broadcasts (`BroadcastStore::list_open`), reloaded when the
//!   copy is older than its refresh interval (500 ms in production) or as soon as a
//!   `LiveEvent::BroadcastActivated` is seen; the activated broadcast itself is added to the
//!   copy at once, so it shows without waiting for the reload. Cancellations and expiries show
//!   within the refresh interval (expiry is also checked against the clock on every read).
//! - [`UserCache`]: user attributes (`Directory::get_user`) for segment matching, kept for a
//!   few seconds (attribute changes show in inboxes within that TTL) and bounded in size.
//!   Users not in the directory are cached too, with empty attributes.
//!
//! Both are per process: every inbox node keeps its own, and nothing is shared between nodes
//! but the stores themselves.

use herald_core::model::{Broadcast, InboxKey, User};
use herald_core::ports::{BroadcastStore, Directory};
use herald_core::Result;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sort key of a broadcast in an inbox: its start, then its id.
pub fn broadcast_key(b: &Broadcast) -> InboxKey {
    InboxKey {
        created_at: b.starts_at,
        id: b.id,
    }
}

/// The open broadcasts, newest key first.
pub type OpenBroadcasts = Arc<Vec<Arc<Broadcast>>>;

struct Snapshot {
    list: OpenBroadcasts,
    loaded_at: Option<Instant>,
}

/// The open broadcasts of the broadcast store, cached in process.
pub struct BroadcastCache {
    store: Arc<dyn BroadcastStore>,
    refresh_every: Duration,
    snapshot: RwLock<Snapshot>,
    /// Set when the copy must be reloaded before the next read trusts it as fresh.
    stale: AtomicBool,
    /// One reload at a time; readers that find one under way keep using the current copy.
    reload: tokio::sync::Mutex<()>,
    /// Whether activations are followed on the live hub (a subscription is held).
    following: AtomicBool,
}

impl BroadcastCache {
    pub fn new(store: Arc<dyn BroadcastStore>, refresh_every: Duration) -> Self {
        Self {
            store,
            refresh_every,
            snapshot: RwLock::new(Snapshot {
                list: Arc::new(Vec::new()),
                loaded_at: None,
            }),
            stale: AtomicBool::new(false),
            reload: tokio::sync::Mutex::new(()),
            following: AtomicBool::new(false),
        }
    }

    /// Whether activations reach this copy as they happen (the watcher holds a subscription);
    /// without it, a new broadcast shows at the next periodic reload.
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }

    pub(crate) fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::SeqCst);
    }

    /// The open broadcasts, newest key first; reloads them first if the copy is due.
    ///
    /// When a reload is already under way, the current copy is returned (it is at most one
    /// refresh interval old); only the very first read waits for the first load. A failed
    /// reload keeps serving the previous copy and is retried by the next read.
    pub async fn open(&self) -> Result<OpenBroadcasts> {
        let loaded = {
            let snap = self.snapshot.read();
            if self.is_fresh(&snap) {
                return Ok(snap.list.clone());
            }
            snap.loaded_at.is_some()
        };
        let _guard = if loaded {
            match self.reload.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(self.snapshot.read().list.clone()),
            }
        } else {
            self.reload.lock().await
        };
        // Someone may have reloaded while this reader waited for the lock.
        {
            let snap = self.snapshot.read();
            if self.is_fresh(&snap) {
                return Ok(snap.list.clone());
            }
        }
        // Cleared before loading: an activation seen during the load marks it again.
        self.stale.store(false, Ordering::SeqCst);
        metrics::counter!("herald_inbox_broadcast_cache_reloads_total").increment(1);
        match self.store.list_open().await {
            Ok(list) => {
                let mut list: Vec<Arc<Broadcast>> = list.into_iter().map(Arc::new).collect();
                sort_newest_first(&mut list);
                let list = Arc::new(list);
                *self.snapshot.write() = Snapshot {
                    list: list.clone(),
                    loaded_at: Some(Instant::now()),
                };
                Ok(list)
            }
            Err(e) if loaded => {
                tracing::warn!(error = %e, "reloading open broadcasts failed; serving the last copy");
                self.stale.store(true, Ordering::SeqCst);
                Ok(self.snapshot.read().list.clone())
            }
            Err(e) => Err(e),
        }
    }

    fn is_fresh(&self, snap: &Snapshot) -> bool {
        snap.loaded_at
            .is_some_and(|at| at.elapsed() < self.refresh_every)
            && !self.stale.load(Ordering::SeqCst)
    }

    /// A broadcast was activated somewhere: show it now and reload on the next read.
    pub fn activated(&self, broadcast: Broadcast) {
        {
            let mut snap = self.snapshot.write();
            let mut list: Vec<Arc<Broadcast>> = snap
                .list
                .iter()
                .filter(|b| b.id != broadcast.id)
                .cloned()
                .collect();
            list.push(Arc::new(broadcast));
            sort_newest_first(&mut list);
            snap.list = Arc::new(list);
        }
        self.invalidate();
    }

    /// Makes the next read reload the open broadcasts.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }
}

fn sort_newest_first(list: &mut [Arc<Broadcast>]) {
    list.sort_unstable_by_key(|b| std::cmp::Reverse(broadcast_key(b)));
}

/// Users (attributes, addresses) from the directory, cached for `ttl`, at most `capacity`
/// users.
pub struct UserCache {
    directory: Arc<dyn Directory>,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Arc<User>)>>,
}

impl UserCache {
    pub fn new(directory: Arc<dyn Directory>, ttl: Duration, capacity: usize) -> Self {
        Self {
            directory,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The user; one with no attributes for a user the directory does not know.
    pub async fn user(&self, user_id: &str) -> Result<Arc<User>> {
        if let Some((at, user)) = self.entries.lock().get(user_id) {
            if at.elapsed() < self.ttl {
                return Ok(user.clone());
            }
        }
        let user = Arc::new(
            self.directory
                .get_user(user_id)
                .await?
                .unwrap_or_else(|| herald_core::model::User::nameless(user_id)),
        );
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(user_id) {
            // Drop what expired; if that frees too little, start over rather than pay for
            // LRU bookkeeping on every hit (a miss costs one keyed directory read).
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity - self.capacity / 4 {
                entries.clear();
            }
        }
        entries.insert(user_id.to_owned(), (Instant::now(), user.clone()));
        Ok(user)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use herald_core::config::Config;
    use herald_core::filter::Filter;
    use herald_core::model::{BroadcastStatus, Priority, User};

    async fn ports(dir: &tempfile::TempDir) -> herald_core::Ports {
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        herald_storage::open_ports(&config).await.unwrap()
    }

    fn broadcast(minute: u32) -> Broadcast {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap();
        Broadcast {
            id: uuid::Uuid::now_v7(),
            campaign_id: None,
            title: format!("b{minute}"),
            body: String::new(),
            category: None,
            data: serde_json::Value::Null,
            segment: None,
            filter: Filter::match_all(),
            channels: Vec::new(),
            priority: Priority::Normal,
            starts_at: at,
            expires_at: None,
            status: BroadcastStatus::Active,
            created_at: at,
        }
    }

    fn titles(list: &OpenBroadcasts) -> Vec<&str> {
        list.iter().map(|b| b.title.as_str()).collect()
    }

    #[tokio::test]
    async fn the_copy_is_reused_until_invalidated_and_activations_show_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ports = ports(&dir).await;
        let cache = BroadcastCache::new(ports.broadcasts.clone(), Duration::from_secs(3600));
        ports.broadcasts.insert(&broadcast(1)).await.unwrap();
        assert_eq!(titles(&cache.open().await.unwrap()), ["b1"]);

        // Stored behind the cache's back: not seen until the copy is due.
        ports.broadcasts.insert(&broadcast(3)).await.unwrap();
        assert_eq!(titles(&cache.open().await.unwrap()), ["b1"]);

        // An activation event carries the broadcast: it shows without a reload...
        let b2 = broadcast(2);
        cache.activated(b2.clone());
        let snap = cache.snapshot.read().list.clone();
        assert_eq!(titles(&snap), ["b2", "b1"]);
        // ...and the next read reloads, picking up what the store has.
        ports.broadcasts.insert(&b2).await.unwrap();
        assert_eq!(titles(&cache.open().await.unwrap()), ["b3", "b2", "b1"]);

        // A cancelled broadcast leaves the open list on the next reload.
        ports
            .broadcasts
            .transition(
                b2.id,
                &[BroadcastStatus::Active],
                BroadcastStatus::Cancelled,
            )
            .await
            .unwrap();
        cache.invalidate();
        assert_eq!(titles(&cache.open().await.unwrap()), ["b3", "b1"]);
    }

    #[tokio::test]
    async fn a_copy_older_than_the_interval_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ports = ports(&dir).await;
        let cache = BroadcastCache::new(ports.broadcasts.clone(), Duration::ZERO);
        assert!(cache.open().await.unwrap().is_empty());
        ports.broadcasts.insert(&broadcast(1)).await.unwrap();
        assert_eq!(titles(&cache.open().await.unwrap()), ["b1"]);
    }

    #[tokio::test]
    async fn user_attributes_are_cached_for_the_ttl_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ports = ports(&dir).await;
        let now = Utc::now();
        let user = |tier: &str| User {
            id: "u1".into(),
            email: None,
            phone: None,
            attributes: serde_json::json!({ "tier": tier })
                .as_object()
                .unwrap()
                .clone(),
            created_at: now,
            updated_at: now,
        };
        ports.directory.upsert_users(&[user("free")]).await.unwrap();
        let cache = UserCache::new(ports.directory.clone(), Duration::from_secs(3600), 3);
        assert_eq!(cache.user("u1").await.unwrap().attributes["tier"], "free");
        ports
            .directory
            .upsert_users(&[user("premium")])
            .await
            .unwrap();
        // Within the TTL the cached attributes stand.
        assert_eq!(cache.user("u1").await.unwrap().attributes["tier"], "free");
        assert!(cache.user("nobody").await.unwrap().attributes.is_empty());
        for i in 0..10 {
            cache.user(&format!("x{i}")).await.unwrap();
            assert!(cache.len() <= 3);
        }

        let expiring = UserCache::new(ports.directory.clone(), Duration::ZERO, 10);
        assert_eq!(
            expiring.user("u1").await.unwrap().attributes["tier"],
            "premium"
        );
    }
}
