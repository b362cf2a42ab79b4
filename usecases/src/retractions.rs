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
//! at once by the live hub's `Retracted` event (see [`crate::changes`]).
//!
//! [`InboxFilter::hidden`]: herald_core::model::InboxFilter

use crate::changes::{ChangeCache, Changes};
use chrono::{DateTime, Utc};
use herald_core::ids::{broadcast_id, row_time};
use herald_core::model::{
    BroadcastStatus, CampaignRetraction, CampaignStatus, LiveEvent, Strategy,
};
use herald_core::ports::CampaignStore;
use herald_core::{Context, Error, Result};
use std::collections::HashSet;
use uuid::Uuid;

pub use crate::changes::CHANGES_REFRESH as RETRACTIONS_REFRESH;

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

/// The retracted campaigns, as every inbox and push gateway node reads them.
pub type RetractionCache = ChangeCache<Retracted>;

#[async_trait::async_trait]
impl Changes for Retracted {
    type Change = CampaignRetraction;

    async fn load(store: &dyn CampaignStore, since: DateTime<Utc>) -> Result<Vec<Self::Change>> {
        store.retractions_since(since).await
    }

    fn rebuilt(_previous: Option<&Self>, list: Vec<Self::Change>) -> Self {
        Self::of(list)
    }

    fn add(&mut self, change: Self::Change) {
        Retracted::add(self, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        cache.announced(retraction("announced", now));
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
