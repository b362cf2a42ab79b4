//! The changes made to sent campaigns (retractions, content revisions), as every inbox and
//! push gateway node reads them: a few rows, read whole from the campaign store when older than
//! half a second, and added to at once when the live hub announces one. A change applies at
//! read time (a retracted campaign's rows are hidden, a revised one's rendered again), so a
//! change to a campaign of 50M recipients is one write, not a second fan-out.

use chrono::{DateTime, Utc};
use herald_core::ports::CampaignStore;
use herald_core::Result;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How old a cached list of changes may get before a read reloads it.
pub const CHANGES_REFRESH: Duration = Duration::from_millis(500);

/// How far past the inbox retention a change is still read: rows are deleted by the hourly
/// purge (or expire by TTL), so rows a little older than the retention may still be there.
const RETENTION_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);
/// How long a change announced on the live hub is kept beside the reloaded list: longer than
/// a reload may take, so a reload that read the store before the change was written does not
/// drop it.
const ANNOUNCED_KEPT: Duration = Duration::from_secs(30);

/// A list of changes as its readers need it.
#[async_trait::async_trait]
pub trait Changes: Default + Clone + Send + Sync + 'static {
    /// One stored change.
    type Change: Clone + Send + Sync + 'static;
    /// The changes whose rows may still be stored (rows at or after `since`).
    async fn load(store: &dyn CampaignStore, since: DateTime<Utc>) -> Result<Vec<Self::Change>>;
    /// The list of `changes`, reusing what `previous` prepared for the same ones.
    fn rebuilt(previous: Option<&Self>, changes: Vec<Self::Change>) -> Self;
    /// Adds (or, for a later one of the same campaign, replaces) one change.
    fn add(&mut self, change: Self::Change);
}

/// A list of changes reloaded from the campaign store when older than the refresh interval
/// and added to at once on a live event. A reload that fails serves the last list (logged);
/// only a first load can fail a read.
pub struct ChangeCache<L: Changes> {
    store: Arc<dyn CampaignStore>,
    retention: chrono::TimeDelta,
    refresh: Duration,
    state: Mutex<Option<(Instant, Arc<L>)>>,
    /// Changes announced on the live hub lately, merged into every reload.
    announced: Mutex<Vec<(Instant, L::Change)>>,
    /// Serialises reloads, so a burst of reads after expiry reloads once.
    reload: tokio::sync::Mutex<()>,
}

impl<L: Changes> ChangeCache<L> {
    /// Rows older than `retention_days` are gone, and so is any need to change them.
    pub fn new(store: Arc<dyn CampaignStore>, retention_days: u32, refresh: Duration) -> Self {
        Self {
            store,
            retention: chrono::TimeDelta::days(i64::from(retention_days)),
            refresh,
            state: Mutex::new(None),
            announced: Mutex::new(Vec::new()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Arc<L>> {
        let state = self.state.lock();
        state
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.refresh)
            .map(|(_, r)| r.clone())
    }

    /// The list as last loaded, without a reload (`None` before the first load): for code
    /// that cannot wait, such as the live hub's routing.
    pub fn snapshot(&self) -> Option<Arc<L>> {
        self.state.lock().as_ref().map(|(_, r)| r.clone())
    }

    /// The current list, reloaded first if it is older than the refresh interval.
    pub async fn current(&self, now: DateTime<Utc>) -> Result<Arc<L>> {
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let _one = self.reload.lock().await;
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let since = now - self.retention - RETENTION_MARGIN;
        let list = match L::load(self.store.as_ref(), since).await {
            Ok(list) => list,
            Err(e) => match self.snapshot() {
                Some(stale) => {
                    tracing::warn!(error = %e, "reloading the campaign changes failed; serving the last list");
                    return Ok(stale);
                }
                None => return Err(e),
            },
        };
        let previous = self.snapshot();
        let mut r = L::rebuilt(previous.as_deref(), list);
        {
            let mut announced = self.announced.lock();
            announced.retain(|(at, _)| at.elapsed() < ANNOUNCED_KEPT);
            for (_, x) in announced.iter() {
                r.add(x.clone());
            }
        }
        let r = Arc::new(r);
        *self.state.lock() = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    /// A change announced on the live hub: in the list at once, before the next reload, and
    /// kept through the reloads of the next few seconds.
    pub fn announced(&self, x: L::Change) {
        self.announced.lock().push((Instant::now(), x.clone()));
        let mut state = self.state.lock();
        if let Some((at, r)) = state.as_ref() {
            let mut next = (**r).clone();
            next.add(x);
            *state = Some((*at, Arc::new(next)));
        }
        // With no list yet, the first load merges it.
    }
}
