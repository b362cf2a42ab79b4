//! In-process adapters: the preference cache, the live hub and the throttle of a single-node
//! Herald. Redis takes their place when several nodes run side by side.

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use herald_core::model::{LiveEvent, Preferences};
use herald_core::ports::{LiveHub, LiveRoutes, LiveSubscription, PreferenceCache, Rate, Throttle};
use herald_core::Result;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// A bounded in-process preference cache. When full it is cleared whole: cheaper than LRU
/// bookkeeping on the hot path, and a miss only costs one batched directory read.
///
/// Its invalidation reaches only its own process, so every entry also expires after `ttl`:
/// with roles run apart, a preference written through another process's API is seen within
/// that time. Expired entries are also dropped ([`Self::sweep`], run every `ttl` by
/// [`Self::sweep_every_ttl`]): the batches of one-batch campaigns fill it (a campaign of more
/// batches reads the directory alone), and a burst of them to a million different users would
/// leave about 120 MB of entries that nothing reads once they have expired.
#[derive(Debug)]
pub struct MemoryPreferenceCache {
    entries: Mutex<Entries>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, (Arc<Preferences>, Instant)>,
    /// When the newest entry went in: once it has expired too, a sweep drops the map whole.
    newest: Option<Instant>,
}

impl Default for MemoryPreferenceCache {
    fn default() -> Self {
        Self::new(1_000_000, Duration::from_secs(10))
    }
}

impl MemoryPreferenceCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// How many entries the cache holds, expired ones included.
    pub fn len(&self) -> usize {
        self.entries.lock().map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an entry put in at `at` is still to be trusted at `now`.
    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.duration_since(at) < self.ttl
    }

    /// Drops the expired entries and gives their memory back. When the newest entry has
    /// expired too, the map is taken out whole and freed outside the lock (a million entries
    /// take milliseconds to free); otherwise the expired ones are removed in place.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.newest.is_some_and(|at| self.fresh(at, now)) {
            let before = entries.map.len();
            entries.map.retain(|_, (_, at)| self.fresh(*at, now));
            if entries.map.len() < before {
                entries.map.shrink_to_fit();
            }
        } else {
            entries.newest = None;
            let expired = std::mem::take(&mut entries.map);
            drop(entries);
            drop(expired);
        }
    }

    /// Sweeps `cache` every `ttl` (at least every second) until it is dropped. Needs a Tokio
    /// runtime.
    pub fn sweep_every_ttl(cache: &Arc<Self>) {
        let period = cache.ttl.max(Duration::from_secs(1));
        let weak = Arc::downgrade(cache);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                // Freeing a million entries takes milliseconds: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || cache.sweep()).await;
            }
        });
    }
}

#[async_trait]
impl PreferenceCache for MemoryPreferenceCache {
    async fn get_many(&self, user_ids: &[String]) -> Result<Vec<Option<Preferences>>> {
        let entries = self.entries.lock();
        let now = Instant::now();
        Ok(user_ids
            .iter()
            .map(|id| match entries.map.get(id) {
                Some((p, at)) if self.fresh(*at, now) => Some(Preferences::clone(p)),
                _ => None,
            })
            .collect())
    }

    async fn put_many(&self, new: &[(String, Preferences)]) -> Result<()> {
        // Most users never set preferences: they all share one allocation of the defaults.
        let default = Arc::new(Preferences::default());
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.map.len() + new.len() > self.capacity {
            entries.map.clear();
        }
        entries.newest = Some(now);
        for (id, prefs) in new.iter().take(self.capacity) {
            let value = if *prefs == *default {
                default.clone()
            } else {
                Arc::new(prefs.clone())
            };
            entries.map.insert(id.clone(), (value, now));
        }
        Ok(())
    }

    async fn invalidate(&self, user_id: &str) -> Result<()> {
        self.entries.lock().map.remove(user_id);
        Ok(())
    }
}

/// The in-process live hub: a broadcast channel. A subscriber that falls more than
/// `capacity` events behind would miss events; instead its stream ends, which its consumer
/// treats as a lost subscription: it resubscribes, and the live feed closes its sockets so the
/// clients resume from the inbox store with `since` (nothing is silently lost).
///
/// Events travel shared: a fan-out batch's event holds a thousand rows, and each subscription
/// copies out only the rows of the users it follows (the channel would otherwise clone the
/// whole event for every subscriber, which a 1M fan-out's profile showed at 5 % of its CPU,
/// for a subscription that followed nobody).
pub struct MemoryLiveHub {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    /// How many subscriptions follow each user (presence).
    followers: Followers,
}

/// Per user, the number of subscriptions following them.
type Followers = Arc<Mutex<HashMap<String, usize>>>;

impl Default for MemoryLiveHub {
    fn default() -> Self {
        Self::with_capacity(4096)
    }
}

impl MemoryLiveHub {
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            followers: Followers::default(),
        }
    }
}

#[async_trait]
impl LiveHub for MemoryLiveHub {
    async fn publish(&self, event: LiveEvent) -> Result<()> {
        // No subscriber is not an error: nobody is connected.
        let _ = self.tx.send(Arc::new(event));
        Ok(())
    }

    async fn subscribe(&self) -> Result<LiveSubscription> {
        let routes = Arc::new(MemoryRoutes {
            users: RwLock::default(),
            followers: self.followers.clone(),
        });
        let followed = routes.clone();
        let stream = BroadcastStream::new(self.tx.subscribe())
            .take_while(|item| {
                if let Err(BroadcastStreamRecvError::Lagged(n)) = item {
                    tracing::warn!(skipped = n, "live hub subscriber lagged; ending its stream");
                }
                futures::future::ready(item.is_ok())
            })
            .filter_map(move |item| {
                futures::future::ready(item.ok().and_then(|e| followed.keep(&e)))
            });
        Ok(LiveSubscription {
            events: stream.boxed(),
            routes,
        })
    }

    async fn online(&self, user_ids: &[String]) -> Result<HashSet<String>> {
        let followers = self.followers.lock();
        Ok(user_ids
            .iter()
            .filter(|u| followers.contains_key(u.as_str()))
            .cloned()
            .collect())
    }
}

/// The users one in-process subscription follows: events are filtered as they are read.
struct MemoryRoutes {
    users: RwLock<HashSet<String>>,
    followers: Followers,
}

impl MemoryRoutes {
    fn unfollowed(followers: &mut HashMap<String, usize>, user_id: &str) {
        if let Some(n) = followers.get_mut(user_id) {
            *n -= 1;
            if *n == 0 {
                followers.remove(user_id);
            }
        }
    }
}

impl Drop for MemoryRoutes {
    /// A subscription that ends follows nobody any more.
    fn drop(&mut self) {
        let mut followers = self.followers.lock();
        for user in self.users.get_mut().drain() {
            Self::unfollowed(&mut followers, &user);
        }
    }
}

impl MemoryRoutes {
    /// The part of `event` for this subscription, if any.
    fn keep(&self, event: &LiveEvent) -> Option<LiveEvent> {
        let users = self.users.read();
        match event {
            LiveEvent::Notifications { items } => {
                let items: Vec<_> = items
                    .iter()
                    .filter(|n| users.contains(&n.user_id))
                    .cloned()
                    .collect();
                (!items.is_empty()).then_some(LiveEvent::Notifications { items })
            }
            LiveEvent::BroadcastActivated { .. }
            | LiveEvent::Retracted { .. }
            | LiveEvent::Revised { .. } => Some(event.clone()),
            LiveEvent::Read { user_id, .. }
            | LiveEvent::Dismiss { user_id, .. }
            | LiveEvent::ReadAll { user_id }
            | LiveEvent::Marked { user_id, .. } => users.contains(user_id).then(|| event.clone()),
        }
    }
}

impl LiveRoutes for MemoryRoutes {
    fn follow(&self, user_id: &str) -> BoxFuture<'static, Result<()>> {
        // The set and the count change under one lock order (users, then followers), so
        // they never disagree.
        let mut users = self.users.write();
        if users.insert(user_id.to_owned()) {
            *self.followers.lock().entry(user_id.to_owned()).or_default() += 1;
        }
        Box::pin(futures::future::ready(Ok(())))
    }

    fn unfollow(&self, user_id: &str) {
        let mut users = self.users.write();
        if users.remove(user_id) {
            Self::unfollowed(&mut self.followers.lock(), user_id);
        }
    }
}

/// The in-process throttle: the GCRA of [`Throttle`] over a map of limit keys, so each
/// process applies the whole rate on its own.
#[derive(Debug, Default)]
pub struct MemoryThrottle {
    /// Per key, the theoretical arrival time of the next send.
    next: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Throttle for MemoryThrottle {
    async fn reserve(&self, key: &str, n: u32, rate: Rate) -> Result<Duration> {
        Ok(gcra(&mut self.next.lock(), key, n, rate, Instant::now()))
    }
}

/// One GCRA reservation at `now` (shared with the tests of the algorithm).
pub(crate) fn gcra(
    next: &mut HashMap<String, Instant>,
    key: &str,
    n: u32,
    rate: Rate,
    now: Instant,
) -> Duration {
    let interval = Duration::from_secs(1) / rate.per_second.max(1);
    let tat = next.get(key).copied().filter(|t| *t > now).unwrap_or(now);
    let new_tat = tat + interval * n;
    next.insert(key.to_owned(), new_tat);
    // Conforming once the burst's worth of intervals before `new_tat` has come.
    let allowed_at = new_tat
        .checked_sub(interval * rate.burst.max(1))
        .unwrap_or(now);
    allowed_at.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_and_the_rest_is_spaced_at_the_rate() {
        let rate = Rate {
            per_second: 100,
            burst: 10,
        };
        let mut next = HashMap::new();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(gcra(&mut next, "fcm", 1, rate, now), Duration::ZERO);
        }
        assert_eq!(
            gcra(&mut next, "fcm", 1, rate, now),
            Duration::from_millis(10)
        );
        assert_eq!(
            gcra(&mut next, "fcm", 5, rate, now),
            Duration::from_millis(60)
        );
        assert_eq!(
            gcra(&mut next, "apns", 10, rate, now),
            Duration::ZERO,
            "keys apart"
        );
        // A second later the debt of 0.06 s is paid and 0.94 s of credit has built up, of
        // which only the burst counts.
        let later = now + Duration::from_secs(1);
        assert_eq!(gcra(&mut next, "fcm", 10, rate, later), Duration::ZERO);
        assert_eq!(
            gcra(&mut next, "fcm", 1, rate, later),
            Duration::from_millis(10)
        );
    }
}
