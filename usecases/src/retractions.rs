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
#[derive(Debug, Default)]
pub struct Retracted {
    /// Campaign ids whose personal rows are hidden (every retracted campaign).
    pub campaigns: Vec<String>,
    /// Broadcasts hidden.
    pub broadcasts: HashSet<Uuid>,
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
        if let Some(b) = x.broadcast_id {
            self.broadcasts.insert(b);
        }
        if !self.campaigns.contains(&x.campaign_id) {
            self.campaigns.push(x.campaign_id);
        }
    }

    pub fn contains(&self, campaign_id: &str) -> bool {
        self.campaigns.iter().any(|c| c == campaign_id)
    }
}

/// The retracted campaigns, reloaded from the campaign store when older than the refresh
/// interval (one read of a few rows) and added to at once on a `Retracted` live event.
pub struct RetractionCache {
    store: Arc<dyn CampaignStore>,
    retention: chrono::TimeDelta,
    refresh: Duration,
    state: Mutex<Option<(Instant, Arc<Retracted>)>>,
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

    /// The current list, reloaded first if it is older than the refresh interval.
    pub async fn current(&self, now: DateTime<Utc>) -> Result<Arc<Retracted>> {
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let _one = self.reload.lock().await;
        if let Some(r) = self.fresh() {
            return Ok(r);
        }
        let list = self.store.retractions_since(now - self.retention).await?;
        let r = Arc::new(Retracted::of(list));
        *self.state.lock() = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    /// A retraction announced on the live hub: hidden at once, before the next reload.
    pub fn retracted(&self, x: CampaignRetraction) {
        let mut state = self.state.lock();
        if let Some((at, r)) = state.as_ref() {
            let mut next = Retracted {
                campaigns: r.campaigns.clone(),
                broadcasts: r.broadcasts.clone(),
            };
            next.add(x);
            *state = Some((*at, Arc::new(next)));
        }
        // With no list yet, the first read loads it from the store, where it is already.
    }
}
