//! Retracting a sent campaign (`DELETE /v1/campaigns/{id}/notifications`): its items leave
//! every recipient's inbox, personal rows and broadcast alike, open sockets are told, and its
//! sends not yet made are cancelled.
//!
//! A retraction is one row ([`CampaignRetraction`]), not a write per recipient: at 50M
//! recipients a rewrite of every row would be a second fan-out, and the audience of a segment
//! may have changed since. Every inbox read leaves out the rows of the campaigns retracted
//! within the retention (the store skips them in pages and counts: [`InboxFilter::hidden`]);
//! the rows themselves go with retention. The push gateway checks the same list before
//! sending. Both read it through a [`RetractionCache`], reloaded every half second and fed
//! at once by the live hub's `Retracted` event.
//!
//! [`InboxFilter::hidden`]: herald_core::model::InboxFilter

use chrono::{DateTime, Utc};
use herald_core::ids::{broadcast_id, row_time};
use herald_core::model::{
    BroadcastStatus, CampaignRetraction, CampaignStatus, LiveEvent, Strategy,
};
use herald_core::ports::CampaignStore;
use herald_core::{Context, Error, Result};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How old the cached list of retractions may get before a read reloads it.
pub const RETRACTIONS_REFRESH: Duration = Duration::from_millis(500);

/// Retracts campaign `id`: records the retraction (the first one stays: asked again, the
/// same answer), stops what is still going out (a campaign still fanning out is cancelled,
/// its broadcast leaves every inbox) and tells every node. `NotFound` for an unknown
/// campaign; `Conflict` for one that has not started (nothing was sent: cancel it instead).
pub async fn retract(ctx: &Context, id: &str) -> Result<CampaignRetraction> {
    let campaigns = &ctx.ports.campaigns;
    let campaign = campaigns
        .get_campaign(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("campaign `{id}` not found")))?;
    let Some(started_at) = campaign.started_at else {
        return Err(Error::conflict(format!(
            "campaign `{id}` has not started ({}): nothing was sent; cancel it instead",
            campaign.status.as_str()
        )));
    };
    let now = ctx.clock.now();
    let broadcast = campaign.strategy == Strategy::Broadcast;
    let retraction = campaigns
        .retract(&CampaignRetraction {
            campaign_id: campaign.id.clone(),
            // The time every row of the campaign carries (see the fan-out's rows).
            row_time: row_time(started_at),
            broadcast_id: broadcast.then(|| broadcast_id(&campaign.id)),
            retracted_at: now,
        })
        .await?;
    // Nothing more goes out: the fan-out stops at its next batch; an open broadcast leaves
    // every inbox (and the caches of the inbox nodes within their refresh).
    let open = [
        CampaignStatus::Sizing,
        CampaignStatus::FanningOut,
        CampaignStatus::Active,
    ];
    campaigns
        .transition(id, &open, CampaignStatus::Cancelled, now)
        .await?;
    if let Some(b) = retraction.broadcast_id {
        ctx.ports
            .broadcasts
            .transition(
                b,
                &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
                BroadcastStatus::Cancelled,
            )
            .await?;
    }
    // Best effort: a node that misses it reloads the list within its refresh.
    if let Err(e) = ctx
        .ports
        .live
        .publish(LiveEvent::Retracted {
            retraction: retraction.clone(),
        })
        .await
    {
        tracing::warn!(error = %e, campaign = id, "publishing a retraction failed");
    }
    metrics::counter!("herald_campaigns_retracted_total").increment(1);
    Ok(retraction)
}

/// The campaigns retracted within the inbox retention, as the readers need them.
#[derive(Debug, Default, Clone)]
pub struct Retracted {
    /// Campaign ids whose personal rows are hidden (every retracted campaign).
    pub campaigns: Vec<String>,
    /// Broadcasts hidden.
    pub broadcasts: HashSet<Uuid>,
    /// The personal campaigns with the time their rows carry: a user's item id of each is
    /// known without a read (`notification_id(campaign, user, row_time)`).
    personal: Vec<(String, DateTime<Utc>)>,
}

impl Retracted {
    fn of(list: Vec<CampaignRetraction>) -> Self {
        let mut r = Retracted::default();
        for x in list {
            r.add(x);
        }
        r
    }

    fn add(&mut self, x: CampaignRetraction) {
        if self.campaigns.contains(&x.campaign_id) {
            return;
        }
        match x.broadcast_id {
            Some(b) => {
                self.broadcasts.insert(b);
            }
            None => self.personal.push((x.campaign_id.clone(), x.row_time)),
        }
        self.campaigns.push(x.campaign_id);
    }

    pub fn contains(&self, campaign_id: &str) -> bool {
        self.campaigns.iter().any(|c| c == campaign_id)
    }

    /// Whether `id` is the user's item of a retracted campaign (personal or broadcast).
    pub fn hides_item(&self, user_id: &str, id: Uuid) -> bool {
        self.broadcasts.contains(&id)
            || self
                .personal
                .iter()
                .any(|(c, at)| herald_core::ids::notification_id(c, user_id, *at) == id)
    }
}

/// How far past the inbox retention a retraction is still read: rows are deleted by the
/// hourly purge (or expire by TTL), so rows a little older than the retention may still be
/// there and must stay hidden.
const RETENTION_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);
/// How long a retraction announced on the live hub is kept beside the reloaded list: longer
/// than a reload may take, so a reload that read the store before the retraction was written
/// does not drop it.
const ANNOUNCED_KEPT: Duration = Duration::from_secs(30);

/// The retracted campaigns, reloaded from the campaign store when older than the refresh
/// interval (one read of a few rows) and added to at once on a `Retracted` live event. A
/// reload that fails serves the last list (logged); only a first load can fail a read.
pub struct RetractionCache {
    store: Arc<dyn CampaignStore>,
    retention: chrono::TimeDelta,
    refresh: Duration,
    state: Mutex<Option<(Instant, Arc<Retracted>)>>,
    /// Retractions announced on the live hub lately, merged into every reload.
    announced: Mutex<Vec<(Instant, CampaignRetraction)>>,
    /// Serialises reloads, so a burst of reads after expiry reloads once.
    reload: tokio::sync::Mutex<()>,
}

impl RetractionCache {
    /// Rows older than `retention_days` are gone, and so is any need to hide them.
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

    fn fresh(&self) -> Option<Arc<Retracted>> {
        let state = self.state.lock();
        state
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.refresh)
            .map(|(_, r)| r.clone())
    }

    /// The list as last loaded, without a reload (`None` before the first load): for code
    /// that cannot wait, such as the live hub's routing.
    pub fn snapshot(&self) -> Option<Arc<Retracted>> {
        self.state.lock().as_ref().map(|(_, r)| r.clone())
    }

    /// The current list, reloaded first if it is older than the refresh interval.
    pub async fn current(&self, now: DateTime<Utc>) -> Result<Arc<Retracted>> {
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let _one = self.reload.lock().await;
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let list = match self
            .store
            .retractions_since(now - self.retention - RETENTION_MARGIN)
            .await
        {
            Ok(list) => list,
            Err(e) => match self.snapshot() {
                Some(stale) => {
                    tracing::warn!(error = %e, "reloading the retracted campaigns failed; serving the last list");
                    return Ok(stale);
                }
                None => return Err(e),
            },
        };
        let mut r = Retracted::of(list);
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

    /// A retraction announced on the live hub: hidden at once, before the next reload, and
    /// kept through the reloads of the next few seconds.
    pub fn retracted(&self, x: CampaignRetraction) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retraction(id: &str, at: DateTime<Utc>) -> CampaignRetraction {
        CampaignRetraction {
            campaign_id: id.into(),
            row_time: at,
            broadcast_id: None,
            retracted_at: at,
        }
    }

    #[tokio::test]
    async fn the_cache_reloads_keeps_announced_retractions_and_reads_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let url = herald_storage::BackendUrl::parse(&format!(
            "sqlite://{}",
            dir.path().join("c.db").display()
        ))
        .unwrap();
        let store = herald_storage::open_campaigns(&url).await.unwrap();
        let now = row_time(Utc::now());
        // Inside the retention, just past it (rows may wait for the hourly purge), long gone.
        store.retract(&retraction("fresh", now)).await.unwrap();
        let edge = now - chrono::TimeDelta::days(30) - chrono::TimeDelta::hours(2);
        store.retract(&retraction("edge", edge)).await.unwrap();
        let old = now - chrono::TimeDelta::days(40);
        store.retract(&retraction("old", old)).await.unwrap();
        let cache = RetractionCache::new(store.clone(), 30, Duration::from_millis(50));
        assert!(cache.snapshot().is_none());
        let r = cache.current(now).await.unwrap();
        assert!(r.contains("fresh") && r.contains("edge") && !r.contains("old"));
        let fresh_item = herald_core::ids::notification_id("fresh", "u1", now);
        assert!(r.hides_item("u1", fresh_item));
        assert!(!r.hides_item("u2", fresh_item), "another user's id");
        assert!(!r.hides_item("u1", herald_core::ids::notification_id("kept", "u1", now)));
        // Announced before the store has it (a reload that read the store earlier must not
        // drop it): kept through the next reloads.
        cache.retracted(retraction("announced", now));
        assert!(cache.snapshot().unwrap().contains("announced"));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = cache.current(now).await.unwrap();
        assert!(r.contains("announced") && r.contains("fresh"));
        // Written since: the next reload finds it.
        store.retract(&retraction("later", now)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.current(now).await.unwrap().contains("later"));
    }
}
