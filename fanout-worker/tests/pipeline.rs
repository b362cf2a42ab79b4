//! The fan-out pipeline driven step by step against the embedded backends in a temp dir:
//! `dispatcher::dispatch` cuts a campaign into batches on the bus, the test drains
//! `fanout.batches` and hands each batch to `worker::process_batch`, then reads the inbox
//! rows, the channel queues and the campaign's counters. Time only moves through the
//! `ManualClock`; nothing here sleeps.
//!
//! Crashes and cancels that must happen *inside* a dispatch are injected by a bus wrapper
//! (`ScriptedBus`) that fails or cancels at a chosen batch number.

mod common;
use common::*;

use chrono::{DateTime, Duration, Utc};
use herald_core::config::Config;
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::ports::{Bus, CampaignStore, Consumer, ReplayFrom};
use herald_core::topics::{self, ChannelItem, ChannelMessage, DispatchRequest, FanoutBatch};
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Clock, Context, Error, ManualClock};
use herald_fanout::dispatcher::{self, Outcome};
use herald_fanout::{scheduler, worker};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Harness

/// A morning when nobody in the test zones (Paris, New York, Tokyo, UTC) is in quiet hours.
const MORNING: &str = "2026-01-10T12:00:00Z";

async fn harness_with(now: &str, configure: impl FnOnce(&mut Config)) -> Harness {
    harness_at(now, configure).await
}

async fn harness(now: &str) -> Harness {
    harness_with(now, |_| {}).await
}

fn user(id: &str, attributes: Value, email: Option<&str>, phone: Option<&str>) -> User {
    let Value::Object(attributes) = attributes else {
        panic!("attributes must be an object");
    };
    User {
        id: id.into(),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        attributes,
        created_at: at("2025-01-01T00:00:00Z"),
        updated_at: at("2025-01-01T00:00:00Z"),
    }
}

async fn add_users(ctx: &Context, users: &[User]) {
    ctx.ports
        .directory
        .upsert_users(users)
        .await
        .expect("upsert users");
}

async fn set_prefs(ctx: &Context, user_id: &str, prefs: Value) {
    let prefs: Preferences = serde_json::from_value(prefs).expect("preferences");
    assert!(
        ctx.ports
            .directory
            .put_preferences(user_id, &prefs)
            .await
            .expect("put preferences"),
        "user {user_id} exists"
    );
}

async fn add_segment(ctx: &Context, name: &str, filter: Value) {
    ctx.ports
        .directory
        .put_segment(&Segment {
            name: name.into(),
            filter: Filter::parse(&filter).expect("filter"),
            created_at: ctx.clock.now(),
            updated_at: ctx.clock.now(),
        })
        .await
        .expect("put segment");
}

/// A sizing campaign with inline content, normal priority, no category, batch strategy.
fn campaign(ctx: &Context, id: &str, audience: Audience, channels: &[Channel]) -> Campaign {
    Campaign {
        id: id.into(),
        audience,
        content: CampaignContent::Inline(TitleBody {
            title: "Hello {{ user.id }}".into(),
            body: "Body".into(),
        }),
        channels: channels.to_vec(),
        category: None,
        priority: Priority::Normal,
        data: json!({}),
        starts_at: None,
        expires_at: None,
        strategy: Strategy::Batch,
        push_when: PushWhen::Always,
        online_push_delay_s: None,
        status: CampaignStatus::Sizing,
        audience_size: 0,
        progress: Progress::default(),
        deliveries: BTreeMap::new(),
        created_at: ctx.clock.now(),
        started_at: None,
        completed_at: None,
        checkpoint: Checkpoint::default(),
    }
}

fn users_audience(ids: &[&str]) -> Audience {
    Audience::Users(ids.iter().map(|s| s.to_string()).collect())
}

async fn insert(ctx: &Context, c: &Campaign) {
    ctx.ports
        .campaigns
        .insert_campaign(c)
        .await
        .expect("insert campaign");
}

async fn get(ctx: &Context, id: &str) -> Campaign {
    ctx.ports
        .campaigns
        .get_campaign(id)
        .await
        .expect("get campaign")
        .expect("campaign exists")
}

/// Sets a campaign's checkpoint as a dispatcher that died would have left it.
async fn force_checkpoint(ctx: &Context, id: &str, cp: &Checkpoint) {
    let lease = ctx
        .ports
        .campaigns
        .acquire_lease(
            id,
            "test",
            chrono::Utc::now(),
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap()
        .expect("no dispatcher holds the campaign");
    assert!(ctx
        .ports
        .campaigns
        .save_checkpoint(&lease, cp)
        .await
        .unwrap());
    ctx.ports
        .campaigns
        .release_lease(&lease, chrono::Utc::now())
        .await
        .unwrap();
}

async fn dispatch(ctx: &Context, id: &str) {
    let outcome = dispatcher::dispatch(ctx, id, &CancellationToken::new())
        .await
        .expect("dispatch");
    assert!(matches!(outcome, Outcome::Done), "dispatch interrupted");
}

/// Every batch waiting on `fanout.batches`, acked, in bus order.
async fn take_batches(ctx: &Context) -> Vec<FanoutBatch> {
    drain(ctx, topics::BATCHES, topics::BATCH_WORKERS)
        .await
        .iter()
        .map(|d| serde_json::from_slice(&d.payload).expect("batch payload"))
        .collect()
}

/// Every message waiting on `topic` for `group`, committed, in bus order. On a broker (the
/// harness's `HERALD_TEST_BUS_URL`) a new member first waits for its group to form, then for
/// a quiet second; the embedded bus answers at once.
async fn drain(ctx: &Context, topic: &str, group: &str) -> Vec<Delivery> {
    use std::time::Duration as Wait;
    let (forming, quiet) = match &ctx.config.backends.bus {
        Some(_) => (Wait::from_secs(10), Wait::from_secs(1)),
        None => (Wait::ZERO, Wait::ZERO),
    };
    let member = ctx.ports.bus.consumer(topic, group).await.expect("join");
    let mut out = Vec::new();
    loop {
        let wait = if out.is_empty() { forming } else { quiet };
        let got = member.poll(100, wait).await.expect("poll");
        if got.is_empty() {
            return out;
        }
        let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
        member.commit(&receipts).await.expect("commit");
        out.extend(got);
    }
}

async fn process(ctx: &Context, batches: &[FanoutBatch]) {
    for b in batches {
        worker::process_batch(ctx, b).await.expect("process batch");
    }
}

/// Dispatches the campaign and processes every batch it published.
async fn run_campaign(ctx: &Context, id: &str) -> Vec<FanoutBatch> {
    dispatch(ctx, id).await;
    let batches = take_batches(ctx).await;
    process(ctx, &batches).await;
    batches
}

/// Every message waiting on a channel queue for the gateway, acked, in bus order.
async fn take_channel(ctx: &Context, channel: Channel) -> Vec<ChannelMessage> {
    let topic = topics::channel_topic(channel);
    let mut out = Vec::new();
    for d in drain(ctx, topic, topics::GATEWAY).await {
        let m: ChannelMessage =
            serde_json::from_slice(&d.payload).expect("channel message payload");
        assert!(
            m.deliver_after.is_none_or(|a| a <= ctx.clock.now()),
            "a deferred message went to the bus before it was due: {m:?}"
        );
        out.push(m);
    }
    // Messages deferred to the end of quiet hours wait in the delay store, due then.
    let far = ctx.clock.now() + chrono::Duration::days(3650);
    let claim = ctx
        .ports
        .delays
        .claim_due(far, 100_000, std::time::Duration::from_secs(60))
        .await
        .expect("claim delayed messages");
    let (mine, others): (Vec<_>, Vec<_>) =
        claim.messages.into_iter().partition(|m| m.topic == topic);
    for m in &mine {
        let msg: ChannelMessage =
            serde_json::from_slice(&m.message.payload).expect("channel message payload");
        assert_eq!(
            msg.deliver_after,
            Some(m.due),
            "kept until its deliver_after"
        );
        out.push(msg);
    }
    let ids: Vec<String> = mine.iter().map(|m| m.id.clone()).collect();
    ctx.ports.delays.remove(&claim.token, &ids).await.unwrap();
    // Other topics' messages are put back as they were.
    ctx.ports.delays.schedule(&others).await.unwrap();
    out
}

/// The items of `messages` by user, each with its message's `deliver_after`; a user must
/// appear once.
fn items_by_user(
    messages: &[ChannelMessage],
) -> BTreeMap<String, (Option<DateTime<Utc>>, ChannelItem)> {
    let mut out = BTreeMap::new();
    for m in messages {
        for item in &m.items {
            let old = out.insert(item.user_id.clone(), (m.deliver_after, item.clone()));
            assert!(
                old.is_none(),
                "{} appears twice: {messages:?}",
                item.user_id
            );
        }
    }
    out
}

/// The user's inbox rows of campaign `campaign_id`.
async fn rows(ctx: &Context, user_id: &str, campaign_id: &str) -> Vec<Notification> {
    ctx.ports
        .inbox
        .page(
            user_id,
            None,
            1000,
            herald_core::model::InboxFilter::default(),
        )
        .await
        .expect("inbox page")
        .into_iter()
        .filter(|n| n.campaign_id.as_deref() == Some(campaign_id))
        .collect()
}

fn queued(c: &Campaign, channel: Channel) -> u64 {
    c.deliveries.get(&channel).map_or(0, |d| d.queued)
}

fn ids(users: &[&str]) -> Vec<String> {
    users.iter().map(|s| s.to_string()).collect()
}

fn user_ids<T>(map: &BTreeMap<String, T>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// A bus that crashes or cancels at a chosen batch

type BusFuture<'a, T> = Pin<Box<dyn Future<Output = herald_core::Result<T>> + Send + 'a>>;

/// Forwards to the real bus, except on `fanout.batches`: publishing batch `crash_at` fails
/// (the dispatcher dies before it is on the bus), and once batch `cancel_after` is published
/// the campaign is cancelled (an operator's cancel landing between two batches).
struct ScriptedBus {
    inner: Arc<dyn Bus>,
    campaigns: Arc<dyn CampaignStore>,
    clock: ManualClock,
    crash_at: Option<u64>,
    cancel_after: Option<u64>,
    cancelled: AtomicBool,
}

impl ScriptedBus {
    /// `ctx` with its bus wrapped.
    fn wrap(
        ctx: &Context,
        clock: &ManualClock,
        crash_at: Option<u64>,
        cancel_after: Option<u64>,
    ) -> Context {
        let mut out = ctx.clone();
        out.ports.bus = Arc::new(ScriptedBus {
            inner: ctx.ports.bus.clone(),
            campaigns: ctx.ports.campaigns.clone(),
            clock: clock.clone(),
            crash_at,
            cancel_after,
            cancelled: AtomicBool::new(false),
        });
        out
    }
}

// `Bus` is an `async_trait`; this is what the macro would expand `async fn`s to.
impl Bus for ScriptedBus {
    fn ping<'life0, 'async_trait>(&'life0 self) -> BusFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.ping()
    }

    fn subscribe<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        group: &'life2 str,
    ) -> BusFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.subscribe(topic, group)
    }

    fn publish<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        messages: &'life2 [OutMessage],
    ) -> BusFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if topic != topics::BATCHES {
                return self.inner.publish(topic, messages).await;
            }
            for m in messages {
                let batch: FanoutBatch = serde_json::from_slice(&m.payload).expect("batch");
                if Some(batch.batch_no) == self.crash_at {
                    return Err(Error::internal("simulated dispatcher crash"));
                }
                self.inner.publish(topic, std::slice::from_ref(m)).await?;
                if Some(batch.batch_no) == self.cancel_after
                    && !self.cancelled.swap(true, Ordering::SeqCst)
                {
                    let cancelled = self
                        .campaigns
                        .transition(
                            &batch.campaign_id,
                            &[CampaignStatus::FanningOut],
                            CampaignStatus::Cancelled,
                            self.clock.now(),
                        )
                        .await?;
                    assert!(cancelled, "the campaign was fanning out");
                }
            }
            Ok(())
        })
    }

    fn consumer<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        group: &'life2 str,
    ) -> BusFuture<'async_trait, Arc<dyn Consumer>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.consumer(topic, group)
    }

    fn lag<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        group: &'life2 str,
    ) -> BusFuture<'async_trait, u64>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.lag(topic, group)
    }

    fn replay<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        topic: &'life1 str,
        group: &'life2 str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> BusFuture<'async_trait, u64>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.replay(topic, group, from, dry_run)
    }
}

/// Ten users `u00`..`u09` in segment `everyone`.
async fn ten_users(ctx: &Context) -> Vec<String> {
    let users: Vec<User> = (0..10)
        .map(|i| user(&format!("u{i:02}"), json!({}), None, None))
        .collect();
    add_users(ctx, &users).await;
    add_segment(ctx, "everyone", json!({"all": []})).await;
    users.into_iter().map(|u| u.id).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Opt-outs by channel and by category

#[tokio::test]
async fn a_user_with_push_switched_off_gets_the_inbox_row_but_no_push_item() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(
        ctx,
        &[
            user("alice", json!({}), None, None),
            user("bob", json!({}), None, None),
        ],
    )
    .await;
    set_prefs(ctx, "bob", json!({"channels": {"push": false}})).await;
    let c = campaign(
        ctx,
        "c-news",
        users_audience(&["alice", "bob"]),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    assert_eq!(rows(ctx, "alice", &c.id).await.len(), 1);
    assert_eq!(rows(ctx, "bob", &c.id).await.len(), 1);
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["alice"]);
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.notifications_written, 2);
    assert_eq!(done.progress.skipped_opted_out, 0);
    assert_eq!(queued(&done, Channel::Push), 1);
}

#[tokio::test]
async fn a_campaign_of_several_batches_reads_preferences_past_the_cache_and_a_small_one_fills_it() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(2)).await;
    let ctx = &h.ctx;
    let ids: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let users: Vec<User> = ids
        .iter()
        .map(|id| user(id, json!({}), None, None))
        .collect();
    add_users(ctx, &users).await;
    set_prefs(ctx, "bob", json!({"channels": {"push": false}})).await;
    let channels = [Channel::InApp, Channel::Push];

    // Three users in batches of two: each is reached once, the cache is left alone.
    let mut big = campaign(
        ctx,
        "c-big",
        users_audience(&["alice", "bob", "carol"]),
        &channels,
    );
    big.audience_size = 3;
    insert(ctx, &big).await;
    run_campaign(ctx, &big.id).await;
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(
        user_ids(&push),
        ["alice", "carol"],
        "bob's opt-out still applies"
    );
    let cached = ctx.ports.preference_cache.get_many(&ids).await.unwrap();
    assert!(cached.iter().all(Option::is_none), "{cached:?}");

    // A campaign of one batch goes through the cache and fills it. (Not with bob: a
    // preference write leaves a tombstone in a shared cache, which keeps a put from racing it.)
    let mut small = campaign(ctx, "c-small", users_audience(&["alice"]), &channels);
    small.audience_size = 1;
    insert(ctx, &small).await;
    run_campaign(ctx, &small.id).await;
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["alice"]);
    let cached = ctx.ports.preference_cache.get_many(&ids).await.unwrap();
    assert!(cached[1].is_none() && cached[2].is_none(), "{cached:?}");
    let alice = cached[0].as_ref().expect("alice's preferences were cached");
    assert!(alice.allows(Channel::Push, None));
}

#[tokio::test]
async fn a_category_opt_out_applies_only_to_campaigns_of_that_category() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(ctx, &[user("carol", json!({}), None, None)]).await;
    set_prefs(
        ctx,
        "carol",
        json!({"categories": {"marketing": {"push": false}}}),
    )
    .await;
    let channels = [Channel::InApp, Channel::Push];
    let mut marketing = campaign(ctx, "c-marketing", users_audience(&["carol"]), &channels);
    marketing.category = Some("marketing".into());
    let mut security = campaign(ctx, "c-security", users_audience(&["carol"]), &channels);
    security.category = Some("security".into());
    let uncategorised = campaign(ctx, "c-plain", users_audience(&["carol"]), &channels);
    for c in [&marketing, &security, &uncategorised] {
        insert(ctx, c).await;
        run_campaign(ctx, &c.id).await;
    }

    let push = take_channel(ctx, Channel::Push).await;
    let with_push: BTreeSet<&str> = push.iter().map(|m| m.campaign_id.as_str()).collect();
    assert_eq!(with_push, BTreeSet::from(["c-plain", "c-security"]));
    for c in [&marketing, &security, &uncategorised] {
        assert_eq!(rows(ctx, "carol", &c.id).await.len(), 1, "{}", c.id);
    }
    assert_eq!(queued(&get(ctx, "c-marketing").await, Channel::Push), 0);
    assert_eq!(queued(&get(ctx, "c-security").await, Channel::Push), 1);
    assert_eq!(queued(&get(ctx, "c-plain").await, Channel::Push), 1);
}

#[tokio::test]
async fn a_category_switch_turned_on_overrides_a_channel_switch_turned_off() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(ctx, &[user("dave", json!({}), None, None)]).await;
    set_prefs(
        ctx,
        "dave",
        json!({"channels": {"push": false}, "categories": {"marketing": {"push": true}}}),
    )
    .await;
    let channels = [Channel::InApp, Channel::Push];
    let mut marketing = campaign(ctx, "c-marketing", users_audience(&["dave"]), &channels);
    marketing.category = Some("marketing".into());
    let mut news = campaign(ctx, "c-news", users_audience(&["dave"]), &channels);
    news.category = Some("news".into());
    for c in [&marketing, &news] {
        insert(ctx, c).await;
        run_campaign(ctx, &c.id).await;
    }

    let push = take_channel(ctx, Channel::Push).await;
    assert_eq!(push.len(), 1, "{push:?}");
    assert_eq!(push[0].campaign_id, "c-marketing");
    assert_eq!(push[0].category.as_deref(), Some("marketing"));
    assert_eq!(user_ids(&items_by_user(&push)), ["dave"]);
    assert_eq!(rows(ctx, "dave", "c-marketing").await.len(), 1);
    assert_eq!(rows(ctx, "dave", "c-news").await.len(), 1);
}

#[tokio::test]
async fn a_user_with_every_channel_off_is_counted_as_opted_out_and_gets_no_row() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(
        ctx,
        &[
            user("alice", json!({}), None, None),
            user("erin", json!({}), None, None),
            user("frank", json!({}), None, None),
        ],
    )
    .await;
    set_prefs(
        ctx,
        "erin",
        json!({"channels": {"in_app": false, "push": false}}),
    )
    .await;
    // Everything off for marketing only.
    set_prefs(
        ctx,
        "frank",
        json!({"categories": {"marketing": {"in_app": false, "push": false}}}),
    )
    .await;
    let mut c = campaign(
        ctx,
        "c-marketing",
        users_audience(&["alice", "erin", "frank"]),
        &[Channel::InApp, Channel::Push],
    );
    c.category = Some("marketing".into());
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    assert_eq!(rows(ctx, "alice", &c.id).await.len(), 1);
    assert!(rows(ctx, "erin", &c.id).await.is_empty());
    assert!(rows(ctx, "frank", &c.id).await.is_empty());
    assert_eq!(
        user_ids(&items_by_user(&take_channel(ctx, Channel::Push).await)),
        ["alice"]
    );
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.skipped_opted_out, 2);
    assert_eq!(done.progress.notifications_written, 1);
    assert_eq!(queued(&done, Channel::Push), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Quiet hours in each user's time zone

/// Users in Paris, New York and Tokyo, and one without a time zone, all with quiet hours
/// 22:00–07:00.
async fn night_owls(ctx: &Context) {
    add_users(
        ctx,
        &[
            user("paris", json!({"timezone": "Europe/Paris"}), None, None),
            user("ny", json!({"timezone": "America/New_York"}), None, None),
            user("tokyo", json!({"timezone": "Asia/Tokyo"}), None, None),
            user("nozone", json!({}), None, None),
        ],
    )
    .await;
    for id in ["paris", "ny", "tokyo", "nozone"] {
        set_prefs(
            ctx,
            id,
            json!({"quiet_hours": {"start": "22:00", "end": "07:00"}}),
        )
        .await;
    }
}

#[tokio::test]
async fn quiet_hours_defer_push_until_the_local_night_ends_in_each_users_time_zone() {
    // 21:30 UTC: 22:30 in Paris, 16:30 in New York, 06:30 on the 11th in Tokyo.
    let h = harness("2026-01-10T21:30:00Z").await;
    let ctx = &h.ctx;
    night_owls(ctx).await;
    let c = campaign(
        ctx,
        "c-night",
        users_audience(&["paris", "ny", "tokyo"]),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    // The inbox row is not an interruption: everyone has it now.
    for id in ["paris", "ny", "tokyo"] {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["ny", "paris", "tokyo"]);
    // 07:00 in Paris on the 11th.
    assert_eq!(push["paris"].0, Some(at("2026-01-11T06:00:00Z")));
    assert_eq!(push["ny"].0, None);
    // 07:00 in Tokyo on the 11th is 22:00 UTC on the 10th.
    assert_eq!(push["tokyo"].0, Some(at("2026-01-10T22:00:00Z")));
    let done = get(ctx, &c.id).await;
    assert_eq!(done.progress.deferred_quiet_hours, 2);
    assert_eq!(done.progress.notifications_written, 3);
    assert_eq!(queued(&done, Channel::Push), 3);
    assert_eq!(done.status, CampaignStatus::Completed);
}

// ---------------------------------------------------------------------------------------------
// Presence-aware push (`push_when: offline`)

fn suppressed(c: &Campaign) -> u64 {
    c.deliveries
        .get(&Channel::Push)
        .map_or(0, |d| d.suppressed_online)
}

#[tokio::test]
async fn push_when_offline_skips_users_with_a_live_socket_and_counts_them_suppressed() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(
        ctx,
        &[
            user("alice", json!({}), None, None),
            user("bob", json!({}), None, None),
            user("carol", json!({}), None, None),
        ],
    )
    .await;
    // Carol has in-app switched off: her open inbox will not show this campaign.
    set_prefs(ctx, "carol", json!({"channels": {"in_app": false}})).await;
    // Alice and Carol have the inbox open: an inbox node follows them on the live hub.
    let node = ctx.ports.live.subscribe().await.unwrap();
    node.routes.follow("alice").await.unwrap();
    node.routes.follow("carol").await.unwrap();
    let mut c = campaign(
        ctx,
        "c-presence",
        users_audience(&["alice", "bob", "carol"]),
        &[Channel::InApp, Channel::Push],
    );
    c.push_when = PushWhen::Offline;
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    assert_eq!(rows(ctx, "alice", &c.id).await.len(), 1, "her inbox row");
    assert_eq!(rows(ctx, "bob", &c.id).await.len(), 1);
    assert!(rows(ctx, "carol", &c.id).await.is_empty());
    let push = take_channel(ctx, Channel::Push).await;
    assert_eq!(
        user_ids(&items_by_user(&push)),
        ["bob", "carol"],
        "Carol's open inbox does not show it: pushed"
    );
    assert!(push.iter().all(|m| m.unless_read.is_none()));
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(queued(&done, Channel::Push), 2);
    assert_eq!(suppressed(&done), 1);

    // The same campaign without the option pushes to her too.
    let plain = campaign(
        ctx,
        "c-always",
        users_audience(&["alice", "bob"]),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &plain).await;
    run_campaign(ctx, &plain.id).await;
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["alice", "bob"]);
    assert_eq!(suppressed(&get(ctx, &plain.id).await), 0);
    drop(node);
}

#[tokio::test]
async fn a_batch_delivered_again_keeps_the_first_deliverys_presence_decisions() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    add_users(
        ctx,
        &[
            user("alice", json!({}), None, None),
            user("bob", json!({}), None, None),
            user("carol", json!({}), None, None),
        ],
    )
    .await;
    let node = ctx.ports.live.subscribe().await.unwrap();
    node.routes.follow("alice").await.unwrap();
    node.routes.follow("carol").await.unwrap();
    let mut c = campaign(
        ctx,
        "c-again",
        users_audience(&["alice", "bob", "carol"]),
        &[Channel::InApp, Channel::Push],
    );
    c.push_when = PushWhen::Offline;
    c.online_push_delay_s = Some(60);
    insert(ctx, &c).await;
    let batches = run_campaign(ctx, &c.id).await;
    // Alice closes her inbox (Carol keeps hers open); the batch comes again (its worker died
    // before the ack). Deciding again would put Alice in the send-now message, whose first
    // copy the gateway keeps, and replace the held-back message with Carol's alone.
    node.routes.unfollow("alice");
    let again = FanoutBatch {
        failed_attempts: 1,
        ..batches[0].clone()
    };
    worker::process_batch(ctx, &again).await.unwrap();

    let push = take_channel(ctx, Channel::Push).await;
    let now: Vec<&ChannelMessage> = push.iter().filter(|m| m.unless_read.is_none()).collect();
    let held: Vec<&ChannelMessage> = push.iter().filter(|m| m.unless_read.is_some()).collect();
    // One identity for the send-now message of both deliveries: the gateway sends one of them.
    assert_eq!(now.len(), 2);
    assert_eq!(now[0].delivery_key(), now[1].delivery_key());
    // The held-back push of the first delivery is still there, Alice's included.
    assert_eq!(held.len(), 1, "{push:?}");
    let mut users: Vec<&str> = held[0].items.iter().map(|i| i.user_id.as_str()).collect();
    users.sort();
    assert_eq!(users, ["alice", "carol"]);
    drop(node);
}

#[tokio::test]
async fn with_an_online_delay_a_connected_users_push_waits_unless_read_and_after_quiet_hours() {
    // 21:30 UTC: Paris is in quiet hours until 06:00 UTC, Tokyo until 22:00 UTC, New York
    // is not; all three have the inbox open, "nozone" (quiet hours in UTC: none now) not.
    let h = harness("2026-01-10T21:30:00Z").await;
    let ctx = &h.ctx;
    night_owls(ctx).await;
    let node = ctx.ports.live.subscribe().await.unwrap();
    for u in ["paris", "ny", "tokyo"] {
        node.routes.follow(u).await.unwrap();
    }
    let mut c = campaign(
        ctx,
        "c-delay",
        users_audience(&["paris", "ny", "tokyo", "nozone"]),
        &[Channel::InApp, Channel::Push],
    );
    c.push_when = PushWhen::Offline;
    c.online_push_delay_s = Some(3600);
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    let push = take_channel(ctx, Channel::Push).await;
    let by_user = items_by_user(&push);
    assert_eq!(user_ids(&by_user), ["nozone", "ny", "paris", "tokyo"]);
    let check = |u: &str| {
        push.iter()
            .find(|m| m.items.iter().any(|i| i.user_id == u))
            .unwrap()
            .unless_read
    };
    // Offline and outside quiet hours: at once, unconditionally.
    assert_eq!(by_user["nozone"].0, None);
    assert_eq!(check("nozone"), None);
    // Online: an hour later, or when quiet hours end if that is later; only if unread.
    assert_eq!(by_user["ny"].0, Some(at("2026-01-10T22:30:00Z")));
    assert_eq!(by_user["tokyo"].0, Some(at("2026-01-10T22:30:00Z")));
    assert_eq!(by_user["paris"].0, Some(at("2026-01-11T06:00:00Z")));
    for u in ["ny", "tokyo", "paris"] {
        assert_eq!(check(u), Some(topics::ReadCheck::Inbox), "{u}");
    }
    let done = get(ctx, &c.id).await;
    assert_eq!(queued(&done, Channel::Push), 4);
    assert_eq!(suppressed(&done), 0, "counted when the gateway decides");
    drop(node);
}

#[tokio::test]
async fn high_and_urgent_campaigns_are_never_deferred_by_quiet_hours() {
    let h = harness("2026-01-10T21:30:00Z").await;
    let ctx = &h.ctx;
    night_owls(ctx).await;
    for (id, priority) in [("c-high", Priority::High), ("c-urgent", Priority::Urgent)] {
        let mut c = campaign(
            ctx,
            id,
            users_audience(&["paris", "ny", "tokyo"]),
            &[Channel::InApp, Channel::Push],
        );
        c.priority = priority;
        insert(ctx, &c).await;
        run_campaign(ctx, id).await;

        let messages = take_channel(ctx, Channel::Push).await;
        assert!(messages.iter().all(|m| m.priority == priority));
        let push = items_by_user(&messages);
        assert_eq!(user_ids(&push), ["ny", "paris", "tokyo"], "{id}");
        assert!(
            push.values().all(|(after, _)| after.is_none()),
            "{id}: {push:?}"
        );
        let done = get(ctx, id).await;
        assert_eq!(done.progress.deferred_quiet_hours, 0, "{id}");
        assert_eq!(done.progress.notifications_written, 3, "{id}");
    }
}

#[tokio::test]
async fn a_user_without_a_timezone_attribute_keeps_quiet_hours_in_utc() {
    let h = harness("2026-01-10T21:30:00Z").await;
    let ctx = &h.ctx;
    night_owls(ctx).await;
    let channels = [Channel::InApp, Channel::Push];
    // 21:30 UTC is before 22:00 UTC: not quiet yet (though it is in Paris).
    let early = campaign(ctx, "c-early", users_audience(&["nozone"]), &channels);
    insert(ctx, &early).await;
    run_campaign(ctx, &early.id).await;
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(push["nozone"].0, None);
    assert_eq!(get(ctx, &early.id).await.progress.deferred_quiet_hours, 0);

    // 23:00 UTC is quiet until 07:00 UTC (New York, at 18:00, is not quiet).
    h.clock.set(at("2026-01-10T23:00:00Z"));
    let late = campaign(ctx, "c-late", users_audience(&["nozone", "ny"]), &channels);
    insert(ctx, &late).await;
    run_campaign(ctx, &late.id).await;
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(push["nozone"].0, Some(at("2026-01-11T07:00:00Z")));
    assert_eq!(push["ny"].0, None);
    assert_eq!(rows(ctx, "nozone", &late.id).await.len(), 1);
    assert_eq!(get(ctx, &late.id).await.progress.deferred_quiet_hours, 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Templates rendered per user, addresses per channel

async fn welcome_template(ctx: &Context) {
    ctx.ports
        .directory
        .put_template(&Template {
            id: "welcome".into(),
            content: TemplateContent {
                in_app: Some(TitleBody {
                    title: "Welcome, {{ user.tier }} member".into(),
                    body: "Your code: {{ data.code }}".into(),
                }),
                push: Some(TitleBody {
                    title: "{{ user.tier }} perks".into(),
                    body: "Code {{ data.code }} for {{ user.id }}".into(),
                }),
                email: Some(EmailContent {
                    subject: "Hello {{ user.email }}".into(),
                    text: "{{ user.tier }} code {{ data.code }}".into(),
                    html: Some("<b>{{ data.code }}</b>".into()),
                }),
                sms: Some(SmsContent {
                    text: "{{ data.code }} ({{ user.tier }})".into(),
                }),
                webhook: None,
                locales: Default::default(),
            },
            created_at: ctx.clock.now(),
            updated_at: ctx.clock.now(),
        })
        .await
        .expect("put template");
}

/// gold: email and phone; silver: email only; bronze: phone only; plain: no tier, nothing.
async fn members(ctx: &Context) {
    add_users(
        ctx,
        &[
            user(
                "gold",
                json!({"tier": "gold"}),
                Some("gold@example.com"),
                Some("+33100000001"),
            ),
            user(
                "silver",
                json!({"tier": "silver"}),
                Some("silver@example.com"),
                None,
            ),
            user(
                "bronze",
                json!({"tier": "bronze"}),
                None,
                Some("+33100000003"),
            ),
            user("plain", json!({}), None, None),
        ],
    )
    .await;
}

fn welcome_campaign(ctx: &Context) -> Campaign {
    let mut c = campaign(
        ctx,
        "c-welcome",
        users_audience(&["gold", "silver", "bronze", "plain"]),
        &[Channel::InApp, Channel::Push, Channel::Email, Channel::Sms],
    );
    c.content = CampaignContent::Template("welcome".into());
    c.data = json!({"code": "XYZ-42"});
    c
}

#[tokio::test]
async fn a_batch_reads_the_attributes_its_template_names_and_every_one_for_a_template_that_reads_the_whole_user(
) {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    let attrs = json!({"name": "Ana", "tier": "gold", "locale": "pt", "score": 3});
    add_users(ctx, &[user("ana", attrs, None, None)]).await;
    let inline = |id: &str, title: &str, body: &str| {
        let mut c = campaign(ctx, id, users_audience(&["ana"]), &[Channel::InApp]);
        c.content = CampaignContent::Inline(TitleBody {
            title: title.into(),
            body: body.into(),
        });
        c
    };
    for (c, title, body) in [
        (
            inline(
                "c-named",
                "{{ user.name }} ({{ user.tier }})",
                "{{ user.score }}{{ user.missing }}",
            ),
            "Ana (gold)",
            "3",
        ),
        (
            inline(
                "c-whole",
                "{{ user|length }}",
                "{% for k, v in user|items %}{{ k }}={{ v }};{% endfor %}",
            ),
            "5",
            "id=ana;locale=pt;name=Ana;score=3;tier=gold;",
        ),
    ] {
        insert(ctx, &c).await;
        run_campaign(ctx, &c.id).await;
        let got = rows(ctx, "ana", &c.id).await;
        assert_eq!(
            (got[0].title.as_str(), got[0].body.as_str()),
            (title, body),
            "{}",
            c.id
        );
    }
}

#[tokio::test]
async fn templates_render_per_user_from_attributes_contact_fields_and_campaign_data() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    welcome_template(ctx).await;
    members(ctx).await;
    let c = welcome_campaign(ctx);
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    let gold = rows(ctx, "gold", &c.id).await;
    assert_eq!(gold.len(), 1);
    assert_eq!(gold[0].title, "Welcome, gold member");
    assert_eq!(gold[0].body, "Your code: XYZ-42");
    assert_eq!(gold[0].data, json!({"code": "XYZ-42"}));
    // A missing attribute renders empty instead of failing the batch.
    assert_eq!(rows(ctx, "plain", &c.id).await[0].title, "Welcome,  member");

    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(push["silver"].1.title.as_deref(), Some("silver perks"));
    assert_eq!(push["silver"].1.body, "Code XYZ-42 for silver");
    assert_eq!(push["bronze"].1.title.as_deref(), Some("bronze perks"));

    let email = items_by_user(&take_channel(ctx, Channel::Email).await);
    let g = &email["gold"].1;
    assert_eq!(g.email.as_deref(), Some("gold@example.com"));
    assert_eq!(g.title.as_deref(), Some("Hello gold@example.com"));
    assert_eq!(g.body, "gold code XYZ-42");
    assert_eq!(g.html.as_deref(), Some("<b>XYZ-42</b>"));
    assert_eq!(
        email["silver"].1.title.as_deref(),
        Some("Hello silver@example.com")
    );

    let sms = items_by_user(&take_channel(ctx, Channel::Sms).await);
    assert_eq!(sms["bronze"].1.body, "XYZ-42 (bronze)");
    assert_eq!(sms["bronze"].1.phone.as_deref(), Some("+33100000003"));
}

#[tokio::test]
async fn email_items_need_an_email_and_sms_items_a_phone() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    welcome_template(ctx).await;
    members(ctx).await;
    let c = welcome_campaign(ctx);
    insert(ctx, &c).await;

    run_campaign(ctx, &c.id).await;

    // Everyone gets what needs no address.
    for id in ["gold", "silver", "bronze", "plain"] {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["bronze", "gold", "plain", "silver"]);
    let email = items_by_user(&take_channel(ctx, Channel::Email).await);
    assert_eq!(user_ids(&email), ["gold", "silver"]);
    assert!(email.values().all(|(_, i)| i.phone.is_none()));
    let sms = items_by_user(&take_channel(ctx, Channel::Sms).await);
    assert_eq!(user_ids(&sms), ["bronze", "gold"]);
    assert!(sms.values().all(|(_, i)| i.email.is_none()));

    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.notifications_written, 4);
    assert_eq!(done.progress.skipped_opted_out, 0);
    assert_eq!(queued(&done, Channel::Push), 4);
    assert_eq!(queued(&done, Channel::Email), 2);
    assert_eq!(queued(&done, Channel::Sms), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. Exactly-once effect

/// A batch of more users than `fanout.message_users` publishes each channel's items in
/// pieces cut by the users' positions in the batch (not by the items: a user without a push
/// leaves a gap), each a message of its own; processed again, even by a process whose
/// setting differs, it publishes the same pieces under the same keys, so the gateway
/// recognises every one.
#[tokio::test]
async fn a_batch_larger_than_a_message_publishes_its_pushes_in_pieces_by_position_and_again_alike()
{
    let h = harness_with(MORNING, |c| {
        c.fanout.batch_size = Some(10);
        c.fanout.message_users = 4;
    })
    .await;
    let ctx = &h.ctx;
    let users = ten_users(ctx).await;
    set_prefs(ctx, "u05", json!({"channels": {"push": false}})).await;
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let c = campaign(
        ctx,
        "c-pieces",
        users_audience(&refs),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;
    let batches = run_campaign(ctx, &c.id).await;
    assert_eq!(batches.len(), 1);

    let pieces = |messages: &[ChannelMessage]| -> Vec<(u32, String, Vec<String>)> {
        messages
            .iter()
            .map(|m| {
                let users = m.items.iter().map(|i| i.user_id.clone()).collect();
                (m.piece, m.delivery_key(), users)
            })
            .collect()
    };
    let first = pieces(&take_channel(ctx, Channel::Push).await);
    let want: Vec<(u32, Vec<String>)> = vec![
        (0, ids(&["u00", "u01", "u02", "u03"])),
        (1, ids(&["u04", "u06", "u07"])),
        (2, ids(&["u08", "u09"])),
    ];
    let got: Vec<(u32, Vec<String>)> = first.iter().map(|(p, _, u)| (*p, u.clone())).collect();
    assert_eq!(got, want);
    let keys: BTreeSet<&String> = first.iter().map(|(_, k, _)| k).collect();
    assert_eq!(keys.len(), 3, "a key per piece: {first:?}");
    assert_eq!(
        first[0].1, "c-pieces/0/push/0/0",
        "piece 0 keeps the unpieced key"
    );

    // A redelivery of the batch (its ack was lost).
    process(ctx, &batches).await;
    assert_eq!(pieces(&take_channel(ctx, Channel::Push).await), first);
    // The batch carries its piece size: a process configured otherwise since cuts it alike.
    assert_eq!(batches[0].message_users, 4);
    let mut changed = ctx.clone();
    let mut config = (*ctx.config).clone();
    config.fanout.message_users = 3;
    changed.config = Arc::new(config);
    process(&changed, &batches).await;
    assert_eq!(pieces(&take_channel(ctx, Channel::Push).await), first);
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(queued(&done, Channel::Push), 9);
    assert_eq!(done.progress.notifications_written, 10);
}

#[tokio::test]
async fn processing_the_same_batch_twice_leaves_one_row_per_user_and_counts_once() {
    let h = harness(MORNING).await;
    let ctx = &h.ctx;
    let c = campaign(
        ctx,
        "c-twice",
        users_audience(&["a", "b", "c"]),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;
    dispatch(ctx, &c.id).await;
    let batches = take_batches(ctx).await;
    assert_eq!(batches.len(), 1);

    process(ctx, &batches).await;
    let first: Vec<Notification> = rows(ctx, "a", &c.id).await;
    // A redelivery (lease ran out before the ack).
    process(ctx, &batches).await;

    for id in ["a", "b", "c"] {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    assert_eq!(rows(ctx, "a", &c.id).await, first);
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.notifications_written, 3);
    assert_eq!(done.progress.batches_done, 1);
    assert_eq!(done.progress.batches_total, 1);
    assert_eq!(queued(&done, Channel::Push), 3);
}

#[tokio::test]
async fn a_redelivered_dispatch_after_a_crash_resumes_from_the_checkpoint_and_completes_once() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(2)).await;
    let ctx = &h.ctx;
    let users = ten_users(ctx).await;
    let c = campaign(
        ctx,
        "c-crash",
        Audience::Segment("everyone".into()),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;

    // The first dispatcher publishes batches 0, 1 and 2, dies publishing batch 3, and had
    // last checkpointed after batch 1.
    let crashing = ScriptedBus::wrap(ctx, &h.clock, Some(3), None);
    let crashed = dispatcher::dispatch(&crashing, &c.id, &CancellationToken::new()).await;
    assert!(crashed.is_err(), "the scripted crash surfaces");
    force_checkpoint(
        ctx,
        &c.id,
        &Checkpoint {
            next_batch: 2,
            after_user: Some("u03".into()),
            batching_done: false,
        },
    )
    .await;
    let before_crash = take_batches(ctx).await;
    let numbers: Vec<u64> = before_crash.iter().map(|b| b.batch_no).collect();
    assert_eq!(numbers, [0, 1, 2]);
    // A worker finished batch 0 before the crash; 1 and 2 are still on the bus.
    process(ctx, &before_crash[..1]).await;
    assert_eq!(get(ctx, &c.id).await.status, CampaignStatus::FanningOut);

    // The dispatch request is redelivered (twice) to a healthy dispatcher.
    dispatch(ctx, &c.id).await;
    dispatch(ctx, &c.id).await;
    let resumed = take_batches(ctx).await;
    let numbers: Vec<u64> = resumed.iter().map(|b| b.batch_no).collect();
    assert_eq!(numbers, [2, 3, 4], "resumes at the checkpoint, once");
    assert_eq!(
        resumed[0], before_crash[2],
        "batch 2 is cut the same way again"
    );

    process(ctx, &before_crash[1..]).await;
    process(ctx, &resumed).await;

    let mut covered = Vec::new();
    for b in before_crash.iter().chain(&resumed) {
        covered.extend(b.user_ids.iter().cloned());
    }
    covered.sort();
    covered.dedup();
    assert_eq!(covered, users);
    for id in &users {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert!(done.completed_at.is_some());
    assert!(done.checkpoint.batching_done);
    assert_eq!(done.progress.batches_total, 5);
    assert_eq!(done.progress.batches_done, 5);
    assert_eq!(done.progress.notifications_written, 10);
    assert_eq!(queued(&done, Channel::Push), 10);

    // A late redelivery of the dispatch request changes nothing.
    dispatch(ctx, &c.id).await;
    assert!(take_batches(ctx).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 5. Cancel

#[tokio::test]
async fn after_a_cancel_mid_way_dispatch_publishes_nothing_more_and_remaining_batches_write_nothing(
) {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(2)).await;
    let ctx = &h.ctx;
    ten_users(ctx).await;
    let c = campaign(
        ctx,
        "c-cancel",
        Audience::Segment("everyone".into()),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;
    // Mid-way: batches 0..=2 published (the dispatcher then died), checkpoint after batch 2.
    let crashing = ScriptedBus::wrap(ctx, &h.clock, Some(3), None);
    assert!(
        dispatcher::dispatch(&crashing, &c.id, &CancellationToken::new())
            .await
            .is_err()
    );
    force_checkpoint(
        ctx,
        &c.id,
        &Checkpoint {
            next_batch: 3,
            after_user: Some("u05".into()),
            batching_done: false,
        },
    )
    .await;
    let published = take_batches(ctx).await;
    assert_eq!(published.len(), 3);
    process(ctx, &published[..1]).await;
    assert_eq!(take_channel(ctx, Channel::Push).await.len(), 1);

    h.clock.advance(Duration::seconds(5));
    assert!(ctx
        .ports
        .campaigns
        .transition(
            &c.id,
            &[CampaignStatus::FanningOut],
            CampaignStatus::Cancelled,
            ctx.clock.now(),
        )
        .await
        .unwrap());

    // A redelivered dispatch request cuts nothing more.
    dispatch(ctx, &c.id).await;
    assert!(take_batches(ctx).await.is_empty());
    // The batches already on the bus do nothing.
    process(ctx, &published[1..]).await;

    for id in ["u00", "u01"] {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    for i in 2..10 {
        let id = format!("u{i:02}");
        assert!(rows(ctx, &id, &c.id).await.is_empty(), "{id}");
    }
    assert!(take_channel(ctx, Channel::Push).await.is_empty());
    let cancelled = get(ctx, &c.id).await;
    assert_eq!(cancelled.status, CampaignStatus::Cancelled);
    assert_eq!(cancelled.completed_at, Some(ctx.clock.now()));
    assert_eq!(cancelled.progress.notifications_written, 2);
    assert_eq!(cancelled.progress.batches_done, 1);
    assert_eq!(queued(&cancelled, Channel::Push), 2);
}

#[tokio::test]
async fn a_cancel_between_two_batches_stops_the_dispatcher_before_the_next_one() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(1)).await;
    let ctx = &h.ctx;
    ten_users(ctx).await;
    let c = campaign(
        ctx,
        "c-cancel-live",
        Audience::Segment("everyone".into()),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;
    // The operator's cancel commits right after batch 0 is on the bus.
    let cancelling = ScriptedBus::wrap(ctx, &h.clock, None, Some(0));

    dispatch(&cancelling, &c.id).await;

    let published: Vec<u64> = take_batches(ctx).await.iter().map(|b| b.batch_no).collect();
    assert_eq!(published, [0], "no batch is cut after the cancel");
    assert_eq!(get(ctx, &c.id).await.status, CampaignStatus::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// 6. Scheduling

async fn take_dispatch_requests(ctx: &Context) -> Vec<DispatchRequest> {
    drain(ctx, topics::DISPATCH, topics::DISPATCHERS)
        .await
        .iter()
        .map(|d| serde_json::from_slice(&d.payload).expect("dispatch request"))
        .collect()
}

fn scheduled(ctx: &Context, id: &str, starts_at: DateTime<Utc>) -> Campaign {
    let mut c = campaign(
        ctx,
        id,
        users_audience(&["a", "b"]),
        &[Channel::InApp, Channel::Push],
    );
    c.status = CampaignStatus::Scheduled;
    c.starts_at = Some(starts_at);
    c
}

#[tokio::test]
async fn a_scheduled_campaign_is_released_only_once_the_clock_passes_starts_at() {
    let h = harness("2026-01-10T08:00:00Z").await;
    let ctx = &h.ctx;
    let starts_at = at("2026-01-10T09:00:00Z");
    let c = scheduled(ctx, "c-later", starts_at);
    insert(ctx, &c).await;

    assert_eq!(scheduler::release_due(ctx).await.unwrap(), 0);
    h.clock.set(starts_at - Duration::seconds(1));
    assert_eq!(scheduler::release_due(ctx).await.unwrap(), 0);
    assert_eq!(get(ctx, &c.id).await.status, CampaignStatus::Scheduled);
    assert!(take_dispatch_requests(ctx).await.is_empty());
    // A dispatch request arriving early does nothing either.
    dispatch(ctx, &c.id).await;
    assert!(take_batches(ctx).await.is_empty());
    assert_eq!(get(ctx, &c.id).await.status, CampaignStatus::Scheduled);

    h.clock.set(starts_at + Duration::seconds(1));
    assert_eq!(scheduler::release_due(ctx).await.unwrap(), 1);
    assert_eq!(get(ctx, &c.id).await.status, CampaignStatus::Sizing);
    let requests = take_dispatch_requests(ctx).await;
    assert_eq!(
        requests,
        [DispatchRequest {
            campaign_id: c.id.clone()
        }]
    );
    // Released once.
    assert_eq!(scheduler::release_due(ctx).await.unwrap(), 0);
    assert!(take_dispatch_requests(ctx).await.is_empty());

    run_campaign(ctx, &requests[0].campaign_id).await;
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.started_at, Some(starts_at + Duration::seconds(1)));
    assert_eq!(done.progress.notifications_written, 2);
}

#[tokio::test]
async fn a_scheduled_campaign_is_released_after_a_restart_on_the_same_data_dir() {
    let h = harness("2026-01-10T08:00:00Z").await;
    let starts_at = at("2026-01-10T09:00:00Z");
    let c = scheduled(&h.ctx, "c-restart", starts_at);
    insert(&h.ctx, &c).await;
    assert_eq!(scheduler::release_due(&h.ctx).await.unwrap(), 0);
    let Harness { ctx, clock, dir } = h;
    drop(ctx); // the process stops

    clock.set(starts_at + Duration::minutes(5));
    let ctx = open_ctx(dir.path(), &clock, |_| {}).await;
    assert_eq!(get(&ctx, &c.id).await.status, CampaignStatus::Scheduled);
    assert_eq!(scheduler::release_due(&ctx).await.unwrap(), 1);
    assert_eq!(get(&ctx, &c.id).await.status, CampaignStatus::Sizing);
    assert_eq!(
        take_dispatch_requests(&ctx).await,
        [DispatchRequest {
            campaign_id: c.id.clone()
        }]
    );
    run_campaign(&ctx, &c.id).await;
    assert_eq!(get(&ctx, &c.id).await.status, CampaignStatus::Completed);
    assert_eq!(rows(&ctx, "a", &c.id).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Expiry

#[tokio::test]
async fn batches_processed_after_expiry_write_nothing_but_still_complete_the_campaign() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(2)).await;
    let ctx = &h.ctx;
    let expires_at = at(MORNING) + Duration::hours(1);
    let mut c = campaign(
        ctx,
        "c-expiring",
        users_audience(&["a", "b", "c", "d"]),
        &[Channel::InApp, Channel::Push],
    );
    c.expires_at = Some(expires_at);
    insert(ctx, &c).await;
    dispatch(ctx, &c.id).await;
    let batches = take_batches(ctx).await;
    assert_eq!(batches.len(), 2);

    // The first batch runs in time and carries the expiry to the gateway.
    process(ctx, &batches[..1]).await;
    let push = take_channel(ctx, Channel::Push).await;
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].expires_at, Some(expires_at));

    // The second only after the campaign expired.
    h.clock.set(expires_at + Duration::minutes(1));
    process(ctx, &batches[1..]).await;

    assert_eq!(rows(ctx, "a", &c.id).await.len(), 1);
    assert_eq!(rows(ctx, "b", &c.id).await.len(), 1);
    assert!(rows(ctx, "c", &c.id).await.is_empty());
    assert!(rows(ctx, "d", &c.id).await.is_empty());
    assert!(take_channel(ctx, Channel::Push).await.is_empty());
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.batches_done, 2);
    assert_eq!(done.progress.batches_total, 2);
    assert_eq!(done.progress.notifications_written, 2);
    assert_eq!(queued(&done, Channel::Push), 2);
}

// ---------------------------------------------------------------------------------------------
// 8. Paging by key

#[tokio::test]
async fn a_segment_of_2345_users_is_cut_into_batches_of_1000_1000_and_345_in_id_order() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(1000)).await;
    let ctx = &h.ctx;
    // Ids like u1, u10, u100: their key order is not their numeric order. Users 0..2345
    // are "pro" (the segment), 600 more are "free", and the directory receives them in a
    // scrambled order.
    let mut members = Vec::new();
    let mut all: Vec<User> = (0..2_945)
        .map(|i| {
            let id = format!("u{i}");
            let plan = if i < 2_345 { "pro" } else { "free" };
            if plan == "pro" {
                members.push(id.clone());
            }
            user(&id, json!({ "plan": plan }), None, None)
        })
        .collect();
    all.reverse();
    all.rotate_left(777);
    add_users(ctx, &all).await;
    add_segment(ctx, "pros", json!({"attr": "plan", "eq": "pro"})).await;
    let mut c = campaign(
        ctx,
        "c-pros",
        Audience::Segment("pros".into()),
        &[Channel::InApp],
    );
    c.strategy = Strategy::Throttled;
    c.audience_size = 2_345;
    insert(ctx, &c).await;

    dispatch(ctx, &c.id).await;
    let batches = take_batches(ctx).await;

    let sizes: Vec<usize> = batches.iter().map(|b| b.user_ids.len()).collect();
    assert_eq!(sizes, [1000, 1000, 345]);
    let numbers: Vec<u64> = batches.iter().map(|b| b.batch_no).collect();
    assert_eq!(numbers, [0, 1, 2]);
    let cut: Vec<String> = batches.iter().flat_map(|b| b.user_ids.clone()).collect();
    members.sort();
    assert_eq!(cut.len(), 2_345);
    assert_eq!(cut, members, "each member once, in id order across batches");
    let cp = get(ctx, &c.id).await.checkpoint;
    assert!(cp.batching_done);
    assert_eq!(cp.next_batch, 3);
    assert_eq!(cp.after_user.as_deref(), members.last().map(String::as_str));

    process(ctx, &batches).await;
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.batches_total, 3);
    assert_eq!(done.progress.notifications_written, 2_345);
    assert!(
        rows(ctx, "u2345", &c.id).await.is_empty(),
        "outside the segment"
    );
}

#[tokio::test]
async fn an_inline_user_list_with_duplicates_is_deduplicated() {
    let h = harness_with(MORNING, |c| c.fanout.batch_size = Some(2)).await;
    let ctx = &h.ctx;
    let c = campaign(
        ctx,
        "c-dupes",
        users_audience(&["b", "a", "c", "b", "a", "a"]),
        &[Channel::InApp, Channel::Push],
    );
    insert(ctx, &c).await;

    let batches = run_campaign(ctx, &c.id).await;

    let cut: Vec<Vec<String>> = batches.iter().map(|b| b.user_ids.clone()).collect();
    assert_eq!(cut, [ids(&["a", "b"]), ids(&["c"])]);
    for id in ["a", "b", "c"] {
        assert_eq!(rows(ctx, id, &c.id).await.len(), 1, "{id}");
    }
    let push = items_by_user(&take_channel(ctx, Channel::Push).await);
    assert_eq!(user_ids(&push), ["a", "b", "c"]);
    let done = get(ctx, &c.id).await;
    assert_eq!(done.status, CampaignStatus::Completed);
    assert_eq!(done.progress.notifications_written, 3);
    assert_eq!(queued(&done, Channel::Push), 3);
}

#[tokio::test]
async fn a_campaign_whose_dispatch_hint_was_lost_is_found_and_cut_by_a_dispatcher() {
    let h = harness("2026-03-01T12:00:00Z").await;
    // Stored, no hint on the bus: as if the API crashed between insert and hint.
    let c = campaign(
        &h.ctx,
        "stuck",
        Audience::User("u-stuck".into()),
        &[Channel::InApp],
    );
    h.ctx.ports.campaigns.insert_campaign(&c).await.unwrap();
    assert!(take_dispatch_requests(&h.ctx).await.is_empty());
    let claimable = h
        .ctx
        .ports
        .campaigns
        .claimable_campaigns(chrono::Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(claimable, vec![c.id.clone()]);
    // One step of a dispatcher takes it from the store and cuts it.
    let mut dispatcher = dispatcher::Dispatcher::new(h.ctx.clone());
    let state = dispatcher.step(&CancellationToken::new()).await.unwrap();
    assert_eq!(state, WorkerState::Busy);
    let batches = take_batches(&h.ctx).await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].user_ids, ["u-stuck"]);
    let c = get(&h.ctx, &c.id).await;
    assert!(c.checkpoint.batching_done);
    assert!(h
        .ctx
        .ports
        .campaigns
        .claimable_campaigns(chrono::Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
}
