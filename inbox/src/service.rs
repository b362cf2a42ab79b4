//! The merged inbox (DESIGN.md flow 4, seed 004's "Inbox Merge Algorithm"): a user's personal
//! rows plus the live broadcasts whose filter matches the user, minus the ones the user
//! dismissed, newest first by `(created_at, id)`, keyset-paged.
//!
//! [`InboxService`] is built once per router and cloned cheaply into every request. It owns the
//! caches of [`crate::cache`] and the task that keeps the broadcast cache current from the
//! live hub. All operations answer in `herald_core::Result`; the HTTP layer maps errors.

use crate::cache::{broadcast_key, BroadcastCache, UserCache};
use crate::cursor;
use crate::subscription::{Next, Subscription};
use chrono::{DateTime, Utc};
use herald_core::model::{
    Broadcast, BroadcastUserState, InboxAction, InboxCounts, InboxFilter, InboxKey, LiveEvent,
    Notification,
};
use herald_core::worker::{Worker, WorkerState};
use herald_core::Context;
use herald_core::Result;
use herald_usecases::retractions::{Retracted, RetractionCache};
use herald_usecases::revisions::{Revised, RevisionCache};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// How old the cached list of open broadcasts may get before a read reloads it.
pub const BROADCAST_REFRESH: Duration = Duration::from_millis(500);
/// How long user attributes are cached: a change of attributes (and so of segment membership)
/// shows in inboxes within this time.
pub const USER_TTL: Duration = Duration::from_secs(5);
/// How many users' attributes are cached per process.
pub const USER_CACHE_CAPACITY: usize = 100_000;

/// Default and largest page size of `GET /v1/inbox`.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// Whether an item is a personal row or a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Personal,
    Broadcast,
}

/// One item of an inbox, as the API shows it (and as the live feed sends it).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub id: Uuid,
    /// The position of this item: `cursor=` pages on after it, `since=` resumes after it,
    /// `before=` of `POST /v1/inbox/bulk` acts on everything older.
    pub cursor: String,
    pub kind: ItemKind,
    pub title: String,
    pub body: String,
    pub category: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    /// For a broadcast, its `starts_at`.
    pub created_at: DateTime<Utc>,
    pub read: bool,
    /// Read, or seen in a feed (`read` implies `seen`).
    pub seen: bool,
    pub archived: bool,
    pub read_at: Option<DateTime<Utc>>,
    pub seen_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    #[schema(ignore)]
    pub key: InboxKey,
}

impl InboxItem {
    pub fn personal(n: &Notification) -> Self {
        let key = n.key();
        let seen_at = n.seen_at.or(n.read_at);
        Self {
            id: n.id,
            cursor: cursor::encode(&key),
            kind: ItemKind::Personal,
            title: n.title.clone(),
            body: n.body.clone(),
            category: n.category.clone(),
            data: n.data.clone(),
            created_at: n.created_at,
            read: n.read_at.is_some(),
            seen: seen_at.is_some(),
            archived: n.archived_at.is_some(),
            read_at: n.read_at,
            seen_at,
            archived_at: n.archived_at,
            key,
        }
    }

    /// A broadcast with the user's state of it (`None`: never acted on).
    pub fn broadcast(b: &Broadcast, state: Option<&BroadcastUserState>) -> Self {
        let key = broadcast_key(b);
        let read_at = state.and_then(|s| s.read_at);
        let seen_at = state.and_then(|s| s.seen_at).or(read_at);
        let archived_at = state.and_then(|s| s.archived_at);
        Self {
            id: b.id,
            cursor: cursor::encode(&key),
            kind: ItemKind::Broadcast,
            title: b.title.clone(),
            body: b.body.clone(),
            category: b.category.clone(),
            data: b.data.clone(),
            created_at: b.starts_at,
            read: read_at.is_some(),
            seen: seen_at.is_some(),
            archived: archived_at.is_some(),
            read_at,
            seen_at,
            archived_at,
            key,
        }
    }
}

/// One page of an inbox: the body of `GET /v1/inbox`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// The cursor of the last item when older items exist, else `None`.
    pub next_cursor: Option<String>,
    /// Unread personal rows plus unread visible broadcasts, not archived, over the whole
    /// inbox (whatever the filter).
    pub unread_count: u64,
    /// Unseen (neither seen nor read) items, counted as `unread_count` is.
    pub unseen_count: u64,
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only items strictly older than this key.
    pub before: Option<InboxKey>,
    pub limit: u32,
    /// What the user asks for (the retracted campaigns are added by the service).
    pub filter: InboxFilter<'static>,
}

/// Which items a bulk action covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkScope {
    /// These items (at most [`herald_core::ports::MAX_BULK`]).
    Ids(Vec<Uuid>),
    /// Every item strictly older than this key (a `cursor`).
    Before(InboxKey),
    /// Every item there is now.
    All,
}

/// What a bulk action did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BulkOutcome {
    /// Items found (by ids: changed or already in that state) or changed (by range).
    pub updated: u64,
    /// The ids the user has no item for (never had, dismissed, or someone else's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<Uuid>,
}

/// A broadcast the user sees now, with the user's state of it.
#[derive(Debug, Clone)]
pub struct VisibleBroadcast {
    pub broadcast: Arc<Broadcast>,
    pub state: Option<BroadcastUserState>,
}

impl VisibleBroadcast {
    pub fn read(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.read_at.is_some())
    }

    pub fn seen(&self) -> bool {
        self.read() || self.state.as_ref().is_some_and(|s| s.seen_at.is_some())
    }

    pub fn archived(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.archived_at.is_some())
    }

    pub fn item(&self) -> InboxItem {
        InboxItem::broadcast(&self.broadcast, self.state.as_ref())
    }

    fn counts(&self) -> InboxCounts {
        if self.archived() {
            return InboxCounts::default();
        }
        InboxCounts {
            unread: u64::from(!self.read()),
            unseen: u64::from(!self.seen()),
        }
    }

    /// Whether `action` changes this broadcast's state.
    fn changed_by(&self, action: InboxAction) -> bool {
        match action {
            InboxAction::Seen => !self.seen(),
            InboxAction::Read => !self.read(),
            InboxAction::Archive => !self.archived(),
            InboxAction::Unarchive => self.archived(),
        }
    }
}

/// The merged inbox over the ports of a [`Context`]. Cheap to clone.
#[derive(Clone)]
pub struct InboxService {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    broadcasts: Arc<BroadcastCache>,
    retractions: Arc<RetractionCache>,
    revisions: Arc<RevisionCache>,
    users: UserCache,
    /// Stops the cache watcher when the last clone of the service is dropped.
    _watcher: Option<DropGuard>,
}

/// The JSON body extractors of the HTTP layer find the context here.
impl axum::extract::FromRef<InboxService> for Context {
    fn from_ref(svc: &InboxService) -> Context {
        svc.inner.ctx.clone()
    }
}

impl InboxService {
    /// Builds the service and, inside a Tokio runtime, starts the task that follows
    /// `LiveEvent::BroadcastActivated` on the live hub (it ends with the service).
    pub fn new(ctx: Context) -> Self {
        Self::with_broadcast_refresh(ctx, BROADCAST_REFRESH)
    }

    /// Like [`InboxService::new`] with another refresh interval for the open broadcasts.
    pub fn with_broadcast_refresh(ctx: Context, refresh_every: Duration) -> Self {
        let broadcasts = Arc::new(BroadcastCache::new(
            ctx.ports.broadcasts.clone(),
            refresh_every,
        ));
        let users = UserCache::new(ctx.ports.directory.clone(), USER_TTL, USER_CACHE_CAPACITY);
        let retractions = Arc::new(RetractionCache::new(
            ctx.ports.campaigns.clone(),
            ctx.config.inbox.retention_days,
            refresh_every,
        ));
        let revisions = Arc::new(RevisionCache::new(
            ctx.ports.campaigns.clone(),
            ctx.config.inbox.retention_days,
            refresh_every,
        ));
        let watcher = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let stop = CancellationToken::new();
            // A hub that subscribes at once (the in-process one) is followed from before the
            // first read; others are subscribed to in the background. Under the worker runner
            // (a panic is caught and the watcher goes on; a subscription that keeps failing
            // shows in `/readyz`); it ends with the service.
            let subscription = Subscription::new(ctx.ports.live.clone());
            broadcasts.set_following(subscription.subscribed_at_once());
            let _enter = rt.enter();
            let task = ctx.workers.spawn(
                ActivationWatcher {
                    cache: Arc::downgrade(&broadcasts),
                    retractions: Arc::downgrade(&retractions),
                    revisions: Arc::downgrade(&revisions),
                    subscription,
                },
                stop.clone(),
            );
            rt.spawn(task.join());
            stop.drop_guard()
        });
        Self {
            inner: Arc::new(Inner {
                ctx,
                broadcasts,
                retractions,
                revisions,
                users,
                _watcher: watcher,
            }),
        }
    }

    /// Whether broadcast activations reach this service as they happen (its watcher holds a
    /// live hub subscription). A hub that subscribes in the background (Redis) is followed a
    /// moment after the service starts.
    pub fn follows_activations(&self) -> bool {
        self.inner.broadcasts.is_following()
    }

    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.ctx.clock.now()
    }

    /// One page of the user's merged inbox.
    pub async fn page(&self, user_id: &str, req: PageRequest) -> Result<InboxPage> {
        let ctx = &self.inner.ctx;
        let now = self.now();
        let fetch = req.limit.saturating_add(1);
        let (retracted, revised) = tokio::try_join!(self.retracted(now), self.revised(now))?;
        let filter = req.filter.hiding(&retracted.campaigns);
        // The page and the counts come in one round trip (one statement on SQLite), beside
        // the one broadcast-state lookup.
        let ((mut personal, personal_counts), visible) = tokio::try_join!(
            ctx.ports
                .inbox
                .page_with_counts(user_id, req.before, fetch, filter),
            self.visible_broadcasts(user_id, now),
        )?;
        self.revise_rows(user_id, &mut personal, &revised).await?;
        let counts = visible.iter().fold(personal_counts, |c, v| c + v.counts());
        let broadcasts: Vec<VisibleBroadcast> = visible
            .into_iter()
            .filter(|v| req.before.is_none_or(|b| broadcast_key(&v.broadcast) < b))
            .filter(|v| req.filter.admits(v.read(), v.seen(), v.archived()))
            .collect();
        let (items, more) = merge(&personal, &broadcasts, req.limit as usize);
        let next_cursor = more
            .then(|| items.last().map(|i| i.cursor.clone()))
            .flatten();
        metrics::counter!("herald_inbox_reads_total").increment(1);
        Ok(InboxPage {
            items,
            next_cursor,
            unread_count: counts.unread,
            unseen_count: counts.unseen,
        })
    }

    /// Unread and unseen personal rows plus live matching broadcasts neither read (seen) nor
    /// dismissed, archived ones left out.
    pub async fn counts(&self, user_id: &str) -> Result<InboxCounts> {
        let now = self.now();
        let retracted = self.retracted(now).await?;
        let (personal, visible) = tokio::try_join!(
            self.inner
                .ctx
                .ports
                .inbox
                .counts(user_id, &retracted.campaigns),
            self.visible_broadcasts(user_id, now),
        )?;
        Ok(visible.iter().fold(personal, |c, v| c + v.counts()))
    }

    /// The campaigns retracted within the retention (cached, see [`RetractionCache`]).
    pub async fn retracted(&self, now: DateTime<Utc>) -> Result<Arc<Retracted>> {
        self.inner.retractions.current(now).await
    }

    /// The campaigns whose content was changed within the retention (cached, see
    /// [`RevisionCache`]).
    pub async fn revised(&self, now: DateTime<Utc>) -> Result<Arc<Revised>> {
        self.inner.revisions.current(now).await
    }

    /// A revision heard on the live hub: in the list at once. The hub calls this before it
    /// renders the revised items, since the watcher that also announces it follows its own
    /// subscription and may hear it later.
    pub fn revision_announced(&self, revision: herald_core::model::CampaignRevision) {
        self.inner.revisions.announced(revision);
    }

    /// The revised campaigns as last loaded, without waiting for a reload.
    pub fn revised_snapshot(&self) -> Option<Arc<Revised>> {
        self.inner.revisions.snapshot()
    }

    /// Renders the user's rows of revised campaigns again with their latest content (the
    /// user's attributes read once, cached, and only when a row needs them).
    pub async fn revise_rows(
        &self,
        user_id: &str,
        rows: &mut [Notification],
        revised: &Revised,
    ) -> Result<()> {
        if !revised.touches(rows) {
            return Ok(());
        }
        let user = self.inner.users.user(user_id).await?;
        for row in rows.iter_mut() {
            if let Some(r) = row
                .campaign_id
                .as_deref()
                .and_then(|c| revised.of_campaign(c))
            {
                r.render_row(row, &user);
            }
        }
        Ok(())
    }

    /// The retracted campaigns as last loaded, without waiting for a reload.
    pub fn retracted_snapshot(&self) -> Option<Arc<Retracted>> {
        self.inner.retractions.snapshot()
    }

    /// Applies `action` to the items of `scope` (personal rows and broadcasts alike) and
    /// tells the user's other devices.
    pub async fn bulk(
        &self,
        user_id: &str,
        action: InboxAction,
        scope: BulkScope,
    ) -> Result<BulkOutcome> {
        let ctx = &self.inner.ctx;
        let now = self.now();
        let outcome = match &scope {
            BulkScope::Ids(ids) => self.bulk_ids(user_id, action, ids, now).await?,
            BulkScope::Before(before) => {
                let retracted = self.retracted(now).await?;
                let (personal, visible) = tokio::try_join!(
                    ctx.ports.inbox.apply_before(
                        user_id,
                        *before,
                        action,
                        now,
                        &retracted.campaigns
                    ),
                    self.visible_broadcasts(user_id, now),
                )?;
                let older = visible
                    .iter()
                    .filter(|v| broadcast_key(&v.broadcast) < *before);
                BulkOutcome {
                    updated: personal + self.apply_broadcasts(user_id, older, action, now).await?,
                    not_found: Vec::new(),
                }
            }
            BulkScope::All => {
                let (personal, visible) = tokio::try_join!(
                    async {
                        match action {
                            // The watermarks: one write whatever the inbox holds, covering
                            // rows that arrive later with an older time too.
                            InboxAction::Read => ctx.ports.inbox.mark_all_read(user_id, now).await,
                            InboxAction::Seen => ctx.ports.inbox.mark_all_seen(user_id, now).await,
                            InboxAction::Archive | InboxAction::Unarchive => {
                                let end = InboxKey {
                                    created_at: now,
                                    id: Uuid::max(),
                                };
                                let retracted = self.retracted(now).await?;
                                ctx.ports
                                    .inbox
                                    .apply_before(user_id, end, action, now, &retracted.campaigns)
                                    .await
                            }
                        }
                    },
                    self.visible_broadcasts(user_id, now),
                )?;
                BulkOutcome {
                    updated: personal
                        + self
                            .apply_broadcasts(user_id, visible.iter(), action, now)
                            .await?,
                    not_found: Vec::new(),
                }
            }
        };
        let (ids, before, all) = match scope {
            BulkScope::Ids(ids) => {
                let found: Vec<String> = ids
                    .iter()
                    .filter(|id| !outcome.not_found.contains(id))
                    .map(Uuid::to_string)
                    .collect();
                (found, None, false)
            }
            BulkScope::Before(key) => (Vec::new(), Some(cursor::encode(&key)), false),
            BulkScope::All => (Vec::new(), None, true),
        };
        if !ids.is_empty() || before.is_some() || all {
            self.publish(LiveEvent::Marked {
                user_id: user_id.to_owned(),
                action,
                ids,
                before,
                all,
            })
            .await;
        }
        metrics::counter!("herald_inbox_bulk_actions_total", "action" => action.as_str())
            .increment(1);
        Ok(outcome)
    }

    async fn bulk_ids(
        &self,
        user_id: &str,
        action: InboxAction,
        ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<BulkOutcome> {
        let ctx = &self.inner.ctx;
        let retracted = self.retracted(now).await?;
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids.iter().filter(|id| !retracted.hides_item(user_id, **id)) {
            if let Some(key) = self.personal_key(user_id, *id).await? {
                keys.push(key);
            }
        }
        let found = ctx.ports.inbox.apply(user_id, &keys, action, now).await?;
        let rest: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| !found.iter().any(|k| k.id == *id))
            .collect();
        let mut not_found = Vec::new();
        if !rest.is_empty() {
            let visible = self.visible_broadcasts(user_id, now).await?;
            let mut named = Vec::new();
            for id in rest {
                match visible.iter().find(|v| v.broadcast.id == id) {
                    Some(v) => named.push(v),
                    None => not_found.push(id),
                }
            }
            self.apply_broadcasts(user_id, named.into_iter(), action, now)
                .await?;
        }
        Ok(BulkOutcome {
            updated: (ids.len() - not_found.len()) as u64,
            not_found,
        })
    }

    /// Applies `action` to the broadcasts it changes; returns how many.
    async fn apply_broadcasts<'a>(
        &self,
        user_id: &str,
        broadcasts: impl Iterator<Item = &'a VisibleBroadcast>,
        action: InboxAction,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut changed = 0;
        for v in broadcasts.filter(|v| v.changed_by(action)) {
            self.inner
                .ctx
                .ports
                .broadcast_states
                .apply(user_id, v.broadcast.id, action, now)
                .await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The key of the user's personal row `id`: the id itself for every id that carries its
    /// time (one write follows, no read), else a lookup for a row written before ids did.
    /// `None` for a broadcast's id or an unknown one.
    async fn personal_key(&self, user_id: &str, id: Uuid) -> Result<Option<InboxKey>> {
        match InboxKey::of_id(id) {
            Some(key) => Ok(Some(key)),
            None => self.inner.ctx.ports.inbox.locate(user_id, id).await,
        }
    }

    /// Marks an item read. `false` if the user has no such item (never read, dismissed, or
    /// someone else's).
    pub async fn mark_read(&self, user_id: &str, id: Uuid) -> Result<bool> {
        let ctx = &self.inner.ctx;
        let now = self.now();
        if self.retracted(now).await?.hides_item(user_id, id) {
            return Ok(false);
        }
        let personal = match self.personal_key(user_id, id).await? {
            Some(key) => ctx.ports.inbox.mark_read(user_id, key, now).await?,
            None => false,
        };
        let found = if personal {
            true
        } else if let Some(v) = self.visible_broadcast(user_id, id, now).await? {
            if !v.read() {
                ctx.ports
                    .broadcast_states
                    .mark_read(user_id, id, now)
                    .await?;
            }
            true
        } else {
            false
        };
        if found {
            self.publish(LiveEvent::Read {
                user_id: user_id.to_owned(),
                id: id.to_string(),
            })
            .await;
        }
        Ok(found)
    }

    /// Hides an item from the user for good. `false` if the user has no such item.
    pub async fn dismiss(&self, user_id: &str, id: Uuid) -> Result<bool> {
        let ctx = &self.inner.ctx;
        let now = self.now();
        if self.retracted(now).await?.hides_item(user_id, id) {
            return Ok(false);
        }
        let personal = match self.personal_key(user_id, id).await? {
            Some(key) => ctx.ports.inbox.dismiss(user_id, key, now).await?,
            None => false,
        };
        let found = if personal {
            true
        } else if self.visible_broadcast(user_id, id, now).await?.is_some() {
            ctx.ports.broadcast_states.dismiss(user_id, id, now).await?;
            true
        } else {
            false
        };
        if found {
            self.publish(LiveEvent::Dismiss {
                user_id: user_id.to_owned(),
                id: id.to_string(),
            })
            .await;
        }
        Ok(found)
    }

    /// Marks every personal row and every visible broadcast read. Returns how many items
    /// changed.
    pub async fn mark_all_read(&self, user_id: &str) -> Result<u64> {
        let ctx = &self.inner.ctx;
        let now = self.now();
        let (personal, visible) = tokio::try_join!(
            ctx.ports.inbox.mark_all_read(user_id, now),
            self.visible_broadcasts(user_id, now),
        )?;
        let changed = personal
            + self
                .apply_broadcasts(user_id, visible.iter(), InboxAction::Read, now)
                .await?;
        self.publish(LiveEvent::ReadAll {
            user_id: user_id.to_owned(),
        })
        .await;
        Ok(changed)
    }

    /// Whether `broadcast` is one the user may see at `now` by time and segment (dismissals
    /// aside): what the live feed checks before sending a broadcast to a connection.
    pub async fn broadcast_matches(
        &self,
        user_id: &str,
        broadcast: &Broadcast,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        if !broadcast.is_live_at(now) {
            return Ok(false);
        }
        self.filter_matches(user_id, &broadcast.filter, now).await
    }

    /// Whether the user's attributes (cached) match `filter` at `now`.
    pub async fn filter_matches(
        &self,
        user_id: &str,
        filter: &herald_core::filter::Filter,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        if filter.is_match_all() {
            return Ok(true);
        }
        let user = self.inner.users.user(user_id).await?;
        Ok(filter.matches(&user.attributes, now))
    }

    /// The live broadcasts the user sees at `now`, newest first, with their read state:
    /// open broadcasts (cached) that are live, whose filter matches the user's attributes
    /// (cached) and that the user has not dismissed (one state lookup, skipped when no
    /// broadcast is live).
    pub async fn visible_broadcasts(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<VisibleBroadcast>> {
        let (open, retracted, revised) = tokio::try_join!(
            self.inner.broadcasts.open(),
            self.retracted(now),
            self.revised(now)
        )?;
        let live: Vec<Arc<Broadcast>> = open
            .iter()
            .filter(|b| b.is_live_at(now) && !retracted.broadcasts.contains(&b.id))
            .map(|b| revised_broadcast(&revised, b))
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let needs_attrs = live.iter().any(|b| !b.filter.is_match_all());
        let ports = &self.inner.ctx.ports;
        let (states, attrs) =
            tokio::try_join!(ports.broadcast_states.user_states(user_id), async {
                if needs_attrs {
                    self.inner.users.user(user_id).await.map(Some)
                } else {
                    Ok(None)
                }
            })?;
        let states: HashMap<Uuid, BroadcastUserState> =
            states.into_iter().map(|s| (s.broadcast_id, s)).collect();
        Ok(live
            .into_iter()
            .filter(|b| {
                b.filter.is_match_all()
                    || attrs
                        .as_ref()
                        .is_some_and(|u| b.filter.matches(&u.attributes, now))
            })
            .filter_map(|b| {
                let state = states.get(&b.id);
                if state.is_some_and(|s| s.dismissed_at.is_some()) {
                    return None;
                }
                Some(VisibleBroadcast {
                    broadcast: b,
                    state: state.cloned(),
                })
            })
            .collect())
    }

    /// The broadcast `id` if the user sees it now (live, matching, not dismissed).
    pub async fn visible_broadcast(
        &self,
        user_id: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<VisibleBroadcast>> {
        let open = self.inner.broadcasts.open().await?;
        let broadcast = match open.iter().find(|b| b.id == id) {
            Some(b) => b.clone(),
            // Not in the copy: it may have been stored since the last reload.
            None => match self.inner.ctx.ports.broadcasts.get(id).await? {
                Some(b) => Arc::new(b),
                None => return Ok(None),
            },
        };
        if !self.broadcast_matches(user_id, &broadcast, now).await? {
            return Ok(None);
        }
        let broadcast = revised_broadcast(&*self.revised(now).await?, &broadcast);
        let states = self
            .inner
            .ctx
            .ports
            .broadcast_states
            .user_states(user_id)
            .await?;
        let state = states.into_iter().find(|s| s.broadcast_id == id);
        if state.as_ref().is_some_and(|s| s.dismissed_at.is_some()) {
            return Ok(None);
        }
        Ok(Some(VisibleBroadcast { broadcast, state }))
    }

    /// Publishes a read-state change for the user's other devices; best effort.
    async fn publish(&self, event: LiveEvent) {
        if let Err(e) = self.inner.ctx.ports.live.publish(event).await {
            tracing::warn!(error = %e, "publishing an inbox live event failed");
        }
    }
}

/// `b` with the text of its campaign's latest revision, if it was changed.
fn revised_broadcast(revised: &Revised, b: &Arc<Broadcast>) -> Arc<Broadcast> {
    match revised.of_broadcast(b.id) {
        Some(r) => Arc::new(r.broadcast(b)),
        None => b.clone(),
    }
}

/// Merges personal rows (newest first, as the store returns them) and broadcasts (newest
/// first) by key, descending. Returns at most `limit` items and whether more were left.
fn merge(
    personal: &[Notification],
    broadcasts: &[VisibleBroadcast],
    limit: usize,
) -> (Vec<InboxItem>, bool) {
    let mut items = Vec::with_capacity(limit.min(personal.len() + broadcasts.len()));
    let (mut p, mut b) = (personal.iter().peekable(), broadcasts.iter().peekable());
    loop {
        let take_personal = match (p.peek(), b.peek()) {
            (None, None) => return (items, false),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(v)) => n.key() > broadcast_key(&v.broadcast),
        };
        if items.len() == limit {
            return (items, true);
        }
        let item = if take_personal {
            p.next().map(InboxItem::personal)
        } else {
            b.next().map(VisibleBroadcast::item)
        };
        items.extend(item);
    }
}

/// Follows the live hub for `LiveEvent::BroadcastActivated` and feeds the broadcast cache,
/// until the cache is gone, one event per step. A subscription made here invalidates the
/// cache, since events published before it were not seen; after a failure the runner backs
/// off before resubscribing (the periodic reload covers the gap meanwhile).
struct ActivationWatcher {
    cache: Weak<BroadcastCache>,
    retractions: Weak<RetractionCache>,
    revisions: Weak<RevisionCache>,
    subscription: Subscription,
}

#[async_trait::async_trait]
impl Worker for ActivationWatcher {
    fn name(&self) -> &'static str {
        "broadcast-activations"
    }

    async fn step(&mut self, stop: &CancellationToken) -> Result<WorkerState> {
        if self.cache.strong_count() == 0 {
            return Ok(WorkerState::Done);
        }
        match self.subscription.next(stop).await? {
            Next::Event(LiveEvent::BroadcastActivated { broadcast }) => {
                if let Some(cache) = self.cache.upgrade() {
                    cache.activated(*broadcast);
                }
                Ok(WorkerState::Busy)
            }
            Next::Event(LiveEvent::Retracted { retraction }) => {
                if let Some(cache) = self.retractions.upgrade() {
                    cache.announced(retraction);
                }
                Ok(WorkerState::Busy)
            }
            Next::Event(LiveEvent::Revised { revision }) => {
                if let Some(cache) = self.revisions.upgrade() {
                    cache.announced(*revision);
                }
                Ok(WorkerState::Busy)
            }
            Next::Event(_) => Ok(WorkerState::Busy),
            Next::Subscribed => {
                if let Some(cache) = self.cache.upgrade() {
                    cache.invalidate();
                    cache.set_following(true);
                }
                Ok(WorkerState::Busy)
            }
            Next::Ended => {
                if let Some(cache) = self.cache.upgrade() {
                    cache.set_following(false);
                }
                tracing::warn!("the live hub subscription ended; resubscribing");
                Ok(WorkerState::Idle(Duration::from_secs(1)))
            }
            Next::Stop => Ok(WorkerState::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use herald_core::filter::Filter;
    use herald_core::model::{BroadcastStatus, Priority};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap()
    }

    fn personal(minute: u32) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            user_id: "u1".into(),
            campaign_id: None,
            title: format!("p{minute}"),
            body: String::new(),
            category: None,
            data: Value::Null,
            created_at: at(minute),
            read_at: None,
            seen_at: None,
            archived_at: None,
        }
    }

    fn broadcast(minute: u32) -> VisibleBroadcast {
        VisibleBroadcast {
            broadcast: Arc::new(Broadcast {
                id: Uuid::now_v7(),
                campaign_id: None,
                title: format!("b{minute}"),
                body: String::new(),
                category: None,
                data: Value::Null,
                segment: None,
                filter: Filter::match_all(),
                channels: Vec::new(),
                priority: Priority::Normal,
                starts_at: at(minute),
                expires_at: None,
                status: BroadcastStatus::Active,
                created_at: at(minute),
            }),
            state: None,
        }
    }

    fn titles(items: &[InboxItem]) -> Vec<&str> {
        items.iter().map(|i| i.title.as_str()).collect()
    }

    #[test]
    fn merge_interleaves_by_key_and_says_whether_more_are_left() {
        let p = [personal(9), personal(5), personal(1)];
        let b = [broadcast(7), broadcast(3)];
        let (items, more) = merge(&p, &b, 10);
        assert_eq!(titles(&items), ["p9", "b7", "p5", "b3", "p1"]);
        assert!(!more);
        let (items, more) = merge(&p, &b, 5);
        assert_eq!(items.len(), 5);
        assert!(!more);
        let (items, more) = merge(&p, &b, 3);
        assert_eq!(titles(&items), ["p9", "b7", "p5"]);
        assert!(more);
        assert_eq!(items[1].kind, ItemKind::Broadcast);
        assert_eq!(cursor::decode(&items[1].cursor), Some(items[1].key));
        let (items, more) = merge(&[], &[], 3);
        assert!(items.is_empty() && !more);
    }

    #[test]
    fn equal_times_are_ordered_by_id() {
        let mut p = personal(5);
        let mut b = broadcast(5);
        p.id = Uuid::from_u128(1);
        Arc::get_mut(&mut b.broadcast).unwrap().id = Uuid::from_u128(2);
        let (items, _) = merge(&[p], &[b], 10);
        assert_eq!(titles(&items), ["b5", "p5"]);
    }
}
