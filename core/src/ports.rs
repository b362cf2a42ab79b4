//! The ports: one trait per backend role of DESIGN.md's table. Adapters live in `herald-storage`.
//!
//! The traits are written for the distributed engines (MySQL, ScyllaDB, Redis, Kafka), not for
//! SQLite:
//! - no call and no transaction spans two ports;
//! - writes are idempotent: notification ids are derived from campaign and user, upserts
//!   overwrite, and a replayed write leaves the same state as the first one;
//! - listings are keyset-paged (`after` the last key seen, never an offset);
//! - the bus is at-least-once and shaped like Kafka: consumer groups over topics, a member
//!   keeps what it polled until it commits it (or is gone), a group's lag is what it has not
//!   committed, and its position can be moved back to replay;
//! - a campaign is owned by one dispatcher at a time through a lease in the campaign store
//!   (heartbeat, expiry, fencing token), never through a bus lease: the bus carries only short
//!   messages;
//! - delays (a retry's backoff, a send deferred to the end of quiet hours, a fan-out batch
//!   retried later) are kept in the [`DelayStore`], from which due messages are published: the
//!   bus holds no timers (Kafka has none), and a delay survives the loss of a consumer.

use crate::analytics::{CampaignStats, DeliveryLogEntry, LoggedFailure, MinuteRollup};
use crate::delivery::{DeadLetter, Webhook};
use crate::filter::Filter;
use crate::model::*;
use crate::Result;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Users, segments, devices, preferences and templates.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Succeeds when the backend answers.
    async fn ping(&self) -> Result<()>;

    /// Inserts or replaces users (email, phone and attributes are replaced as a whole;
    /// `created_at` of an existing user is kept). Returns how many were written.
    async fn upsert_users(&self, users: &[User]) -> Result<u64>;
    async fn get_user(&self, id: &str) -> Result<Option<User>>;
    /// The users among `ids` that exist, in no particular order.
    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>> {
        self.get_users_keeping(ids, &AttributeKeys::All).await
    }
    /// Like [`Directory::get_users`], each user with only the attributes `keys` keeps (the
    /// others are skipped unread): what the fan-out reads for its templates.
    async fn get_users_keeping(&self, ids: &[String], keys: &AttributeKeys) -> Result<Vec<User>>;
    /// Deletes the user with their preferences and devices. `false` if there was none.
    async fn delete_user(&self, id: &str) -> Result<bool>;
    /// Users matching `filter` with id greater than `after`, by id, at most `limit`.
    async fn page_users(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<User>>;
    /// Like [`Directory::page_users`] but ids only: what the fan-out batcher pages through.
    async fn page_user_ids(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>>;
    async fn count_users(&self, filter: &Filter, now: DateTime<Utc>) -> Result<u64>;

    /// Inserts or replaces a segment (`created_at` of an existing one is kept).
    async fn put_segment(&self, segment: &Segment) -> Result<()>;
    async fn get_segment(&self, name: &str) -> Result<Option<Segment>>;
    /// Segments with name greater than `after`, by name.
    async fn list_segments(&self, after: Option<&str>, limit: u32) -> Result<Vec<Segment>>;
    async fn delete_segment(&self, name: &str) -> Result<bool>;

    /// Replaces a user's preferences. `false` if the user does not exist.
    async fn put_preferences(&self, user_id: &str, prefs: &Preferences) -> Result<bool>;
    /// Stored preferences of the users among `user_ids` that have any; the others use defaults.
    async fn get_preferences(&self, user_ids: &[String]) -> Result<HashMap<String, Preferences>>;

    /// Registers a device token for its user (moving it if another user had it; keeping
    /// `created_at` if this user had it). `false` if the user does not exist.
    async fn put_device(&self, device: &Device) -> Result<bool>;
    /// [`Directory::put_device`] for a batch, in one transaction, in order (of two devices with
    /// one token the later wins). Devices of users that do not exist are not registered;
    /// returns those user ids (sorted, each once).
    async fn put_devices(&self, devices: &[Device]) -> Result<Vec<String>>;
    async fn delete_device(&self, user_id: &str, token: &str) -> Result<bool>;
    /// Devices of all `user_ids`, in no particular order.
    async fn list_devices(&self, user_ids: &[String]) -> Result<Vec<Device>>;
    /// Removes tokens a provider reported invalid, whoever holds them. Returns how many.
    async fn delete_tokens(&self, tokens: &[String]) -> Result<u64>;
    /// Records a successful send to these tokens.
    async fn touch_tokens(&self, tokens: &[String], at: DateTime<Utc>) -> Result<()>;
    /// Removes devices not used since `before` (stale-token cleanup). Returns how many.
    async fn delete_devices_unused_since(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Inserts or replaces a template (`created_at` of an existing one is kept).
    async fn put_template(&self, template: &Template) -> Result<()>;
    async fn get_template(&self, id: &str) -> Result<Option<Template>>;
    async fn list_templates(&self, after: Option<&str>, limit: u32) -> Result<Vec<Template>>;
    async fn delete_template(&self, id: &str) -> Result<bool>;
}

/// How many failures a campaign keeps as its sample.
pub const KEPT_FAILURES: usize = 20;

/// Outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free and is now held by this request.
    Claimed,
    /// The key was already used; the record says with which request and response.
    Existing(IdempotencyRecord),
}

/// Campaigns, their progress counters and idempotency keys.
#[async_trait]
pub trait CampaignStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Stores a new campaign; `Conflict` if the id exists.
    async fn insert_campaign(&self, campaign: &Campaign) -> Result<()>;
    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>>;
    /// Newest first; `before` is the id of the last campaign of the previous page
    /// (ids are time-ordered UUIDv7 strings).
    async fn list_campaigns(
        &self,
        status: Option<CampaignStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Campaign>>;
    /// Moves the status if it is currently one of `from` (compare-and-set), stamping
    /// `started_at` / `completed_at` as the new status implies. `false` if it was not.
    async fn transition(
        &self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        at: DateTime<Utc>,
    ) -> Result<bool>;
    /// Records the campaign's retraction; the first one recorded stays and is returned (a
    /// retraction is final: asked again, it answers the same).
    async fn retract(&self, retraction: &CampaignRetraction) -> Result<CampaignRetraction>;
    /// The retractions whose rows may still be stored: `row_time` at or after `since` (the
    /// inbox retention's cutoff). Few: read whole by every inbox and push gateway node.
    async fn retractions_since(&self, since: DateTime<Utc>) -> Result<Vec<CampaignRetraction>>;
    /// Records a revision of a campaign's content: revision 1 if the campaign has none,
    /// else only over revision `revision.revision - 1` (compare-and-set); `Conflict` if
    /// another revision got there first.
    async fn revise(&self, revision: &CampaignRevision) -> Result<()>;
    /// The latest revision of a campaign's content, if it was ever changed.
    async fn revision(&self, campaign_id: &str) -> Result<Option<CampaignRevision>>;
    /// The latest revisions whose rows may still be stored: `row_time` (or, for a campaign
    /// revised before it started, `revised_at`) at or after `since`. Few: read whole by
    /// every inbox and push gateway node.
    async fn revisions_since(&self, since: DateTime<Utc>) -> Result<Vec<CampaignRevision>>;
    /// Sets the audience size and the (estimated) number of batches it will be cut into.
    async fn set_sizing(&self, id: &str, audience_size: u64, batches_total: u64) -> Result<()>;
    /// Saves the dispatcher's position after publishing batches up to `checkpoint.next_batch`;
    /// when `batching_done`, also fixes `batches_total` to `checkpoint.next_batch`. Fenced:
    /// only while `lease` is the campaign's current lease (its fence unchanged); `false`, and
    /// nothing saved, when another dispatcher has taken the campaign over since.
    async fn save_checkpoint(&self, lease: &CampaignLease, checkpoint: &Checkpoint)
        -> Result<bool>;

    /// Campaigns that need a dispatcher and have none: status `sizing`, `fanning_out` or
    /// `active`, batching not done, and no lease or an expired one (`until <= now`). Oldest
    /// first. A dispatcher then takes one with [`CampaignStore::acquire_lease`].
    async fn claimable_campaigns(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<String>>;
    /// Takes the dispatch lease of campaign `id` for `owner` until `now + ttl`, if nobody
    /// holds it (no lease, or an expired one). Every acquisition gets a higher fence, which the
    /// fenced writes check, so a dispatcher that stalled past its lease cannot overwrite its
    /// successor's work. `None` if another owner holds a live lease or the campaign is unknown.
    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Option<CampaignLease>>;
    /// Extends a lease still held (same fence) to `now + ttl`; `false` if it was taken over.
    async fn renew_lease(
        &self,
        lease: &CampaignLease,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool>;
    /// Gives a lease up: the campaign is claimable again from `retry_at` (now, or later after
    /// a failure). Does nothing if the lease was taken over already.
    async fn release_lease(&self, lease: &CampaignLease, retry_at: DateTime<Utc>) -> Result<()>;
    /// Records batch `batch_no` as done: adds one to `batches_done`, the other counters of
    /// `delta` (its `batches_total` / `batches_done` are ignored) and `channels` to the
    /// channels' delivery counters (the fan-out adds `queued` and `suppressed_online`), and
    /// keeps `failures` while the campaign's sample has room, in one
    /// atomic step, once. A batch number already recorded is ignored and
    /// `false` returned, so a redelivered batch never double counts.
    async fn record_batch(
        &self,
        id: &str,
        batch_no: u64,
        delta: &Progress,
        channels: &[(Channel, DeliveryCounts)],
        failures: &[RecipientFailure],
    ) -> Result<bool>;
    /// The sample of failures kept with a campaign (at most [`KEPT_FAILURES`]), oldest first.
    async fn campaign_failures(&self, id: &str) -> Result<Vec<RecipientFailure>>;
    /// Gives batch `batch.batch_no` up, once: records it done and failed (`failed_batches`
    /// + 1, `reason` in the failure sample) and keeps it whole for a replay, in one atomic
    /// step. `false` if the batch number was recorded already.
    async fn record_failed_batch(&self, batch: &FailedBatch) -> Result<bool>;
    /// The batches of a campaign given up, by batch number.
    async fn failed_batches(&self, id: &str) -> Result<Vec<FailedBatch>>;
    /// Sets a failed batch's `replayed_at` if unset (compare-and-set); `None` if there is no
    /// such failed batch, `Some(false)` if it was replayed already.
    async fn mark_batch_replayed(
        &self,
        id: &str,
        batch_no: u64,
        at: DateTime<Utc>,
    ) -> Result<Option<bool>>;
    /// Makes a failed batch replayable again (clears `replayed_at`), when its replay failed
    /// too.
    async fn reset_batch_replay(&self, id: &str, batch_no: u64) -> Result<()>;
    /// Records the replay of a failed batch, once: adds `delta` and `channels` like
    /// [`CampaignStore::record_batch`] and takes one off `failed_batches`. `false` if this
    /// replay was recorded already (or the batch never failed).
    async fn record_replayed_batch(
        &self,
        id: &str,
        batch_no: u64,
        delta: &Progress,
        channels: &[(Channel, DeliveryCounts)],
        failures: &[RecipientFailure],
    ) -> Result<bool>;
    /// Adds a delivery report's counts to a channel's counters once per `key`: a report
    /// already recorded is ignored and `false` returned.
    async fn record_deliveries(
        &self,
        id: &str,
        key: &str,
        channel: Channel,
        delta: &DeliveryCounts,
    ) -> Result<bool>;
    /// Adds to a channel's delivery counters.
    async fn add_deliveries(
        &self,
        id: &str,
        channel: Channel,
        delta: &DeliveryCounts,
    ) -> Result<()>;
    /// Campaigns created at or after `since`, by strategy (strategies with none left out):
    /// their count, audiences and fan-out counters as they stand.
    async fn campaign_stats(&self, since: DateTime<Utc>) -> Result<Vec<CampaignStats>>;
    /// Scheduled campaigns whose `starts_at` has come, oldest first.
    async fn due_campaigns(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Campaign>>;

    /// Claims `key` for a request with `request_hash` that creates the resource `resource_id`,
    /// or returns the record of whoever claimed it first (with their resource id). A retry
    /// after any failure finds the resource id bound to the key and creates that very resource
    /// (or finds it created), so one key makes at most one resource.
    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        resource_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<IdempotencyClaim>;
    /// Stores the response of the request that claimed `key`.
    async fn complete_idempotency_key(&self, key: &str, status: u16, body: &[u8]) -> Result<()>;
    /// Gives `key` back, only while it is still unanswered and bound to `resource_id`: for a
    /// request refused as invalid before anything was written, so the client may fix it and
    /// retry with the same key.
    async fn release_idempotency_key(&self, key: &str, resource_id: &str) -> Result<()>;
    /// Removes keys that expired before `now`. Returns how many.
    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Inserts or replaces the rule of an event type (`created_at` of an existing one kept).
    /// Adds an event to the open digest of its type, user and key value, or opens one whose
    /// window ends `window` after the event, when there is none or its window has ended.
    /// Adds of one digest are serialised (concurrent first events open one digest, not two);
    /// an event whose `event_key` the digest holds is not added again (`duplicate`). The
    /// digest keeps the first [`MAX_DIGEST_EVENTS`] events' data and counts them all.
    async fn add_to_digest(
        &self,
        event: &DigestEvent,
        window: std::time::Duration,
    ) -> Result<DigestAdded>;
    /// Closes digest `id` (a later event opens a new one) and returns it with its events. A
    /// digest closed already is returned again as it was (a flush redelivered after a crash
    /// sends the same notification, which its idempotency key makes once). `None` if there is
    /// no such digest (purged).
    async fn take_digest(&self, id: &str) -> Result<Option<TakenDigest>>;
    /// Forgets closed digests whose window ended before `before`, with their events. Returns
    /// how many digests.
    async fn purge_digests(&self, before: DateTime<Utc>) -> Result<u64>;

    async fn put_rule(&self, rule: &Rule) -> Result<()>;
    async fn get_rule(&self, event_type: &str) -> Result<Option<Rule>>;
    /// Rules with event type greater than `after`, by event type.
    async fn list_rules(&self, after: Option<&str>, limit: u32) -> Result<Vec<Rule>>;
    async fn delete_rule(&self, event_type: &str) -> Result<bool>;
}

/// Per-user personal notification rows and their read state.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Writes rows in one batched write. A row that exists (same user, `created_at` and id)
    /// is left as it is, so a replayed batch keeps the read and dismiss state the user gave
    /// it; writers give a replayed row the same `created_at` (the campaign's start).
    async fn write_batch(&self, rows: &[Notification]) -> Result<()>;
    /// The user's visible rows strictly older than `before` (newest first), at most `limit`,
    /// that pass `filter`. A row is read when it was marked read or when it is at or below
    /// the user's read watermark ([`InboxStore::mark_all_read`]); `read_at` says when. It is
    /// seen when it was marked seen or read, or is at or below the seen or read watermark
    /// ([`InboxStore::mark_all_seen`]); `seen_at` says when. Unread and unseen reads stop at
    /// their watermark.
    async fn page(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<Vec<Notification>>;
    /// [`InboxStore::page`] and [`InboxStore::counts`] together: what an inbox read needs,
    /// in one round trip where the engine can.
    async fn page_with_counts(
        &self,
        user_id: &str,
        before: Option<InboxKey>,
        limit: u32,
        filter: InboxFilter<'_>,
    ) -> Result<(Vec<Notification>, InboxCounts)> {
        let page = self.page(user_id, before, limit, filter).await?;
        Ok((page, self.counts(user_id, filter.hidden).await?))
    }
    /// The user's visible rows strictly newer than `after` (oldest first): resume replay.
    async fn after(&self, user_id: &str, after: InboxKey, limit: u32) -> Result<Vec<Notification>>;
    /// The user's visible row at `key`, its `read_at` set as in [`InboxStore::page`]
    /// (marked read, or at or below the read watermark); `None` if there is none (never
    /// written, dismissed, or purged). One read by the row's whole key.
    async fn get(&self, user_id: &str, key: InboxKey) -> Result<Option<Notification>>;
    /// The key of the user's visible row `id`, found by id alone. Only for ids that carry no
    /// time (rows written before notification ids carried theirs, see [`crate::ids`]): every
    /// other id is its own key ([`InboxKey::of_id`]). An engine that never held such rows
    /// answers `None` without a read.
    async fn locate(&self, user_id: &str, id: uuid::Uuid) -> Result<Option<InboxKey>>;
    /// Marks a row read (keeping an earlier read time): one write by the row's whole key.
    /// `false` if the user has no such visible row.
    async fn mark_read(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool> {
        let found = self.apply(user_id, &[key], InboxAction::Read, at).await?;
        Ok(!found.is_empty())
    }
    /// Applies `action` to the user's visible rows at `keys` (at most [`MAX_BULK`]): `seen`
    /// and `read` keep an earlier time (`read` marks seen too), `archive` keeps an earlier
    /// archive time, `unarchive` clears it. Returns the keys of the visible rows it found,
    /// changed or already in that state; the others are not the user's (or are dismissed).
    async fn apply(
        &self,
        user_id: &str,
        keys: &[InboxKey],
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<Vec<InboxKey>>;
    /// Applies `action` to every visible row of the user strictly older than `before`, row by
    /// row (unlike the watermarks, a row written later with an older key is not covered),
    /// leaving the rows of `hidden` campaigns alone. Returns how many rows changed state.
    async fn apply_before(
        &self,
        user_id: &str,
        before: InboxKey,
        action: InboxAction,
        at: DateTime<Utc>,
        hidden: &[String],
    ) -> Result<u64>;
    /// Marks everything up to `at` read by moving the user's read watermark to `at` (one
    /// write, whatever the inbox holds; a watermark never moves back). A row created at or
    /// before the watermark counts as read even if it is written later (a campaign that
    /// started before "read all" and reached this user after it). Returns how many unread rows
    /// it covered, counted as [`InboxStore::counts`] counts unread rows.
    async fn mark_all_read(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64>;
    /// Marks everything up to `at` seen by moving the user's seen watermark (as
    /// [`InboxStore::mark_all_read`] does for reads; a read watermark counts as a seen one).
    /// Returns how many unseen rows it covered, counted as [`InboxStore::counts`] counts.
    async fn mark_all_seen(&self, user_id: &str, at: DateTime<Utc>) -> Result<u64>;
    /// Hides a row from the user for good: one write by the row's whole key. `false` if the
    /// user has no such visible row.
    async fn dismiss(&self, user_id: &str, key: InboxKey, at: DateTime<Utc>) -> Result<bool>;
    /// The user's unread and unseen visible, unarchived rows among the newest
    /// [`UNREAD_WINDOW`] rows above the read watermark: one bounded range read on every
    /// engine, exact while the user has fewer rows than that since they last read everything
    /// (an inbox badge shows "999+" long before).
    /// Rows of the `hidden` campaigns count for nothing (see [`InboxFilter::hidden`]).
    async fn counts(&self, user_id: &str, hidden: &[String]) -> Result<InboxCounts>;
    /// Deletes rows created before `before` (retention), and read watermarks that no longer
    /// cover any row. An engine with row TTLs (ScyllaDB: `USING TTL` from the retention it is
    /// opened with) expires rows by itself and returns 0. Returns how many rows it deleted.
    async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// How many of a user's newest rows above the read watermark the unread count looks at.
pub const UNREAD_WINDOW: u32 = 1000;
/// The most items one [`InboxStore::apply`] (one `POST /v1/inbox/bulk` with ids) names.
pub const MAX_BULK: usize = 100;

/// Broadcasts, stored once (the per-user state of each is [`BroadcastStates`]).
#[async_trait]
pub trait BroadcastStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Stores a new broadcast; `Conflict` if the id exists.
    async fn insert(&self, broadcast: &Broadcast) -> Result<()>;
    async fn get(&self, id: uuid::Uuid) -> Result<Option<Broadcast>>;
    /// Broadcasts in `Scheduled` or `Active` status (the ones that may show now or later).
    async fn list_open(&self) -> Result<Vec<Broadcast>>;
    /// Compare-and-set of the status. `false` if it was not in `from`.
    async fn transition(
        &self,
        id: uuid::Uuid,
        from: &[BroadcastStatus],
        to: BroadcastStatus,
    ) -> Result<bool>;
}

/// The sparse per-user state of broadcasts: which ones a user has read or dismissed, one
/// entry per user and broadcast they acted on. A store of its own because its shape is the
/// inbox's (one partition per user, read on every inbox read, written by user actions) while
/// the broadcasts themselves are a few rows read by everyone: at 50M users it belongs beside
/// the inbox (ScyllaDB), the broadcasts beside the campaigns. Unset, it is kept by the
/// broadcast store's engine.
#[async_trait]
pub trait BroadcastStates: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
    /// Every stored state of the user (one lookup per inbox read).
    async fn user_states(&self, user_id: &str) -> Result<Vec<BroadcastUserState>>;
    /// Applies `action` for the user: `seen`, `read` and `archive` keep the earliest time of
    /// each, `unarchive` clears the archive time (a later `archive` sets it again).
    async fn apply(
        &self,
        user_id: &str,
        id: uuid::Uuid,
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Marks read for the user; the earliest read time is kept.
    async fn mark_read(&self, user_id: &str, id: uuid::Uuid, at: DateTime<Utc>) -> Result<()> {
        self.apply(user_id, id, InboxAction::Read, at).await
    }
    /// Dismisses for the user; the earliest dismissal time is kept.
    async fn dismiss(&self, user_id: &str, id: uuid::Uuid, at: DateTime<Utc>) -> Result<()>;
}

/// Fast batch lookup of preferences in front of the directory. A miss is `None`; the caller
/// loads the misses from the directory and puts them back.
#[async_trait]
pub trait PreferenceCache: Send + Sync + 'static {
    /// Whether the engine answers (in-process engines always do).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    async fn get_many(&self, user_ids: &[String]) -> Result<Vec<Option<Preferences>>>;
    async fn put_many(&self, entries: &[(String, Preferences)]) -> Result<()>;
    async fn invalidate(&self, user_id: &str) -> Result<()>;
}

/// A rate limit: at most `per_second` a second on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Rate limits shared by every process that sends through one provider account: N push
/// gateways on N nodes share one rate instead of each applying the whole of it.
///
/// A generic cell rate algorithm (GCRA): the store keeps, per limit key, the theoretical
/// arrival time of the next send. A reservation of `n` sends moves it `n` intervals on and
/// says how long the caller must wait before sending (zero within the burst); the sends are
/// the caller's from then on, whether it makes them or not (a reservation is not given back).
/// One round trip per reservation, no background refill, no clock shared between nodes
/// beyond the store's own.
#[async_trait]
pub trait Throttle: Send + Sync + 'static {
    /// Whether the engine answers (in-process engines always do).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    /// Reserves `n` sends (`1..=rate.burst`) under the limit `key` and returns how long to
    /// wait before making them.
    async fn reserve(&self, key: &str, n: u32, rate: Rate) -> Result<Duration>;
}

/// A message to publish on `topic` once `due` has come (see [`DelayStore`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DelayedMessage {
    /// Stable for the same scheduling (a delivery key and its attempt): scheduling the same id
    /// again replaces the message instead of adding a second one.
    pub id: String,
    pub topic: String,
    pub message: OutMessage,
    pub due: DateTime<Utc>,
}

/// Messages claimed from a [`DelayStore`]; `token` fences their removal.
#[derive(Debug, Clone, Default)]
pub struct DelayClaim {
    pub token: String,
    pub messages: Vec<DelayedMessage>,
}

/// Durable delays: messages kept until they are due, then published on the bus by a publisher
/// loop ([`DelayStore::claim_due`], publish, [`DelayStore::remove`]). A SQLite or MySQL
/// table indexed by due time, or a Redis sorted set scored by it.
///
/// At least once, never lost: a claim moves the claimed messages' due time to the end of the
/// claim's lease, so a publisher that dies between claiming and removing leaves them to the
/// next one, which publishes them again (consumers skip what they processed already, by
/// delivery key). Removal is fenced by the claim's token: a message scheduled again under the
/// same id after it was claimed (its consumer deferred it once more) is kept.
#[async_trait]
pub trait DelayStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
    /// Keeps messages until they are due; an id already kept is replaced (and unclaimed).
    async fn schedule(&self, messages: &[DelayedMessage]) -> Result<()>;
    /// Claims up to `limit` messages due at `now`, the earliest first, for `lease`. Each is
    /// returned with the due time it was scheduled for.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
    ) -> Result<DelayClaim>;
    /// Forgets the published messages of a claim (those not scheduled again since).
    async fn remove(&self, token: &str, ids: &[String]) -> Result<()>;
    /// The earliest due time kept, claimed or not (the publisher sleeps until then).
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>>;
    /// How many messages are kept (a gauge for operators).
    async fn pending(&self) -> Result<u64>;
}

/// Where `herald bus replay` moves a consumer group to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The oldest message the bus still keeps.
    Earliest,
    /// The first message published at or after this instant.
    Time(DateTime<Utc>),
    /// An engine position: the log sequence on SQLite, the stream sequence on JetStream, the
    /// offset in every partition on Kafka.
    Offset(u64),
}

/// Durable, partitioned topics read by consumer groups: fan-out batches, channel queues,
/// delivery results, dead letters. Shaped like Kafka (and JetStream, and the embedded SQLite
/// log), not like a per-message lease queue:
///
/// - every consumer group subscribed to a topic receives each message published after it
///   subscribed ([`Bus::subscribe`] declares the group and creates the topic; idempotent);
/// - within a group, each message goes to one member ([`Bus::consumer`]) at a time and stays
///   with it until the member commits it, gives it back, or is gone (dropped, crashed, or
///   rebalanced away), when it goes to another member: at least once, so consumers are
///   idempotent;
/// - a group's position is what it committed; [`Bus::lag`] is what it has not, and
///   [`Bus::replay`] moves it (event replay);
/// - messages with the same key keep their publish order;
/// - there are no broker-side timers: delays and retry backoff live in the [`DelayStore`].
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Creates `topic` where the engine needs it and declares that `group` consumes it: what
    /// is published from then on waits for the group's first member. Idempotent. `topic` may
    /// be a family pattern (`channel.>`) for a group that reads every topic of the family (an
    /// audit tool).
    async fn subscribe(&self, topic: &str, group: &str) -> Result<()>;
    /// Publishes messages durably: when this returns they survive a crash.
    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()>;
    /// Joins `group` on `topic` (subscribed before) as one member. Members of one process
    /// share one consumer between their tasks.
    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<dyn Consumer>>;
    /// Messages of `topic` that `group` has not committed yet (the backlog the batcher
    /// throttles on, and what `herald bus lag` prints).
    async fn lag(&self, topic: &str, group: &str) -> Result<u64>;
    /// Moves `group`'s position on `topic` to `from`: what was published from there on is
    /// delivered to the group again. Returns how many messages that is; with `dry_run` it
    /// only counts. Engines that cannot move a group while members are connected say so
    /// (`Conflict`).
    async fn replay(
        &self,
        topic: &str,
        group: &str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> Result<u64>;
}

/// One member of a consumer group on one topic (see [`Bus`]). Shared by the tasks of a
/// process: every method takes `&self`.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Up to `max` messages, waiting up to `wait` for the first one. They are this member's
    /// until it commits or releases them; the adapter keeps them (lease renewal, in-progress
    /// signals) while the member lives, however long the work takes.
    async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;
    /// The deliveries are done: the group never receives them again. Completions may come in
    /// any order; an adapter with offsets commits the contiguous prefix of done messages.
    /// Receipts no longer this member's (its partition was rebalanced away) are ignored.
    async fn commit(&self, receipts: &[String]) -> Result<()>;
    /// Gives deliveries back at once: a later poll of the group hands them out again, with
    /// `attempt` one higher. (Backoff is the caller's: it waits before releasing, or
    /// schedules a new message in the delay store and commits.)
    async fn release(&self, receipts: &[String]) -> Result<()>;
}

/// The answer of [`DeliveryStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// The caller holds the key until the end of its lease: it may send.
    Won,
    /// The message was delivered already: nothing to send.
    Processed,
    /// Another holder has it until then (it is sending, or it died and its claim runs out).
    Held { until: DateTime<Utc> },
}

/// What the push gateway keeps: webhook subscriptions, dead letters and the marks of channel
/// messages already delivered (so a redelivered message is not sent twice).
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Inserts or replaces a subscription (`created_at` of an existing one is kept).
    async fn put_webhook(&self, webhook: &Webhook) -> Result<()>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>>;
    /// Subscriptions with id greater than `after`, by id.
    async fn list_webhooks(&self, after: Option<&str>, limit: u32) -> Result<Vec<Webhook>>;
    /// Every subscription, by id (paged through [`DeliveryStore::list_webhooks`]).
    async fn all_webhooks(&self) -> Result<Vec<Webhook>> {
        const PAGE: u32 = 500;
        let mut all: Vec<Webhook> = Vec::new();
        loop {
            let after = all.last().map(|w| w.id.clone());
            let page = self.list_webhooks(after.as_deref(), PAGE).await?;
            let done = page.len() < PAGE as usize;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
    async fn delete_webhook(&self, id: &str) -> Result<bool>;

    /// Whether the channel message with this delivery key was delivered already.
    async fn is_processed(&self, key: &str) -> Result<bool>;
    /// Claims the right to send the channel message with this delivery key, for `holder`,
    /// until `now + lease`. Copies of one message (a fan-out batch redone after a crash
    /// publishes its channel messages again; a bus redelivers) can be in the hands of two
    /// consumers at once, and checking [`DeliveryStore::is_processed`] alone lets both send.
    ///
    /// - [`DeliveryClaim::Processed`] if the key is marked processed, checked after the claim
    ///   was written (so a holder that marked it before its claim ran out is always seen);
    /// - [`DeliveryClaim::Won`] if there was no claim, the claim had run out at `now`, or it
    ///   was `holder`'s own (claiming again extends it: the holder renews while it sends);
    /// - [`DeliveryClaim::Held`] with the end of the other holder's claim otherwise.
    ///
    /// One atomic write per engine; claims are forgotten with the processed marks.
    async fn claim(
        &self,
        key: &str,
        holder: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<DeliveryClaim>;
    /// Gives up `holder`'s claim on `key` (its handling failed before the key was marked
    /// processed), so the next copy or redelivery is sent at once instead of waiting for the
    /// lease to run out. A claim of another holder's is left alone. Idempotent.
    async fn release(&self, key: &str, holder: &str) -> Result<()>;
    /// Marks a delivery key done. Idempotent.
    async fn mark_processed(&self, key: &str, at: DateTime<Utc>) -> Result<()>;
    /// Forgets marks, and claims that ran out, older than `before` (a redelivery comes within
    /// minutes). Returns how many marks.
    async fn purge_processed(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Stores a dead letter; storing the same id again changes nothing.
    async fn insert_dead_letter(&self, letter: &DeadLetter) -> Result<()>;
    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>>;
    /// Newest first, optionally of one channel; `before` is the id of the last letter of the
    /// previous page.
    async fn list_dead_letters(
        &self,
        channel: Option<Channel>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>>;
    /// Sets `replayed_at` if it is unset (compare-and-set). `false` if it was set already.
    async fn mark_replayed(&self, id: &str, at: DateTime<Utc>) -> Result<bool>;
    /// Clears `replayed_at` again, when the replay could not be published.
    async fn unmark_replayed(&self, id: &str) -> Result<()>;

    /// Adds a delivery report to the per-minute rollup of its channel, and keeps its failures,
    /// once per `entry.key`: a report recorded already adds nothing and `false` is returned.
    /// Key, counters and failures are written together (all or nothing).
    async fn record_delivery_log(&self, entry: &DeliveryLogEntry) -> Result<bool>;
    /// The rollups of the minutes at or after `since` (of one channel, or all), by minute then
    /// channel; one per minute and channel that had any report.
    async fn delivery_rollups(
        &self,
        since: DateTime<Utc>,
        channel: Option<Channel>,
    ) -> Result<Vec<MinuteRollup>>;
    /// The most recent failures kept for `channel` at or after `since`, newest first.
    async fn recent_failures(
        &self,
        channel: Channel,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LoggedFailure>>;
    /// Keeps the latest outcome of each recipient per campaign and channel: a record replaces
    /// the one kept unless that one is of a later attempt (a report redelivered late changes
    /// nothing), so recording the same records again is harmless; a recipient sent to stays
    /// `sent`, and `sent` adds up over attempts.
    async fn record_recipients(&self, records: &[crate::delivery::RecipientRecord]) -> Result<()>;
    /// The records kept for a recipient of a campaign, by channel.
    async fn recipient_records(
        &self,
        campaign_id: &str,
        user_id: &str,
    ) -> Result<Vec<crate::delivery::RecipientRecord>>;
    /// The recipients of a campaign whose record on `channel` says `sent`, by user id, after
    /// `after`: whom a revision's replacement pushes go to.
    async fn sent_recipients(
        &self,
        campaign_id: &str,
        channel: Channel,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>>;
    /// Forgets the rollups, failures, report keys and recipient records older than `before`
    /// (the retention). Returns how many rollup rows.
    async fn purge_delivery_log(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// Cross-node live events for the WebSocket hubs, routed per user: a node receives the events
/// of the users it follows (those with a socket on it) and the events meant for every node
/// (broadcast activations), not the whole fan-out.
///
/// Delivery is at most once: a subscription that loses its connection ends its stream, and
/// whoever held it treats that as a gap (the WebSocket hub closes its sockets, and clients
/// resume from the inbox store with `since`). Nothing is lost silently.
#[async_trait]
pub trait LiveHub: Send + Sync + 'static {
    /// Whether the engine answers (in-process engines always do).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    /// Publishes an event: a user's events to that user's route, a broadcast activation to
    /// every node.
    async fn publish(&self, event: LiveEvent) -> Result<()>;
    /// A new subscription. It receives the events for every node published from now on, and
    /// the events of each user from when [`LiveRoutes::follow`] for the user has completed.
    async fn subscribe(&self) -> Result<LiveSubscription>;
    /// Which of `user_ids` some subscription follows now, on any node: the users with a live
    /// socket (presence-aware push). A user is followed from when their first socket's follow
    /// has completed until their last socket is gone or its node's subscription ends (on
    /// Redis, when the node's connection closes). One round trip per call where the engine
    /// can.
    async fn online(&self, user_ids: &[String]) -> Result<std::collections::HashSet<String>>;
}

/// One subscription to the live hub: its events and the routes it follows.
pub struct LiveSubscription {
    pub events: BoxStream<'static, LiveEvent>,
    pub routes: Arc<dyn LiveRoutes>,
}

/// The users a [`LiveSubscription`] follows. Requests are applied in the order they are made,
/// so a caller that makes them under its own lock (the hub's map of sockets) never has an
/// unfollow overtake a later follow.
pub trait LiveRoutes: Send + Sync + 'static {
    /// Starts following `user_id`. The returned future completes once the user's events
    /// reach the subscription (following a followed user again completes as well); an error
    /// means they may not (the subscription is gone).
    fn follow(&self, user_id: &str) -> futures::future::BoxFuture<'static, Result<()>>;
    /// Stops following `user_id` (a few events already under way may still arrive).
    fn unfollow(&self, user_id: &str);
}
