//! The broadcast lifecycle and inbox retention driven step by step against the embedded
//! backends in a temp dir: `lifecycle::tick` is called by hand as the scheduler would, time
//! moves only through the `ManualClock`, and live events are read off a
//! `ctx.ports.live.subscribe()` stream without waiting. Nothing here sleeps.

mod common;
use common::*;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::ports::BroadcastStore;
use herald_core::topics;
use herald_core::{Clock, Context, ManualClock};
use herald_fanout::dispatcher::{self, Outcome};
use herald_fanout::lifecycle::{self, Summary};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Harness

const NOW: &str = "2026-01-10T12:00:00Z";

async fn harness() -> Harness {
    harness_at(NOW, |_| {}).await
}

fn campaign(
    id: &str,
    status: CampaignStatus,
    starts_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    channels: &[Channel],
) -> Campaign {
    Campaign {
        id: id.into(),
        audience: Audience::All(true),
        content: CampaignContent::Inline(TitleBody {
            title: "Dark mode".into(),
            body: "Try it in settings.".into(),
        }),
        channels: channels.to_vec(),
        category: None,
        priority: Priority::Normal,
        data: json!({}),
        starts_at,
        expires_at,
        strategy: Strategy::Broadcast,
        push_when: PushWhen::Always,
        online_push_delay_s: None,
        status,
        audience_size: 0,
        progress: Progress::default(),
        deliveries: BTreeMap::new(),
        created_at: at(NOW),
        started_at: None,
        completed_at: None,
        checkpoint: Checkpoint::default(),
    }
}

/// Stores a campaign in `campaign_status` and its broadcast in `status`, as if the dispatcher
/// had stored it (or stopped half way, for the campaign's status).
async fn seed(
    ctx: &Context,
    id: &str,
    campaign_status: CampaignStatus,
    status: BroadcastStatus,
    starts_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Broadcast {
    let c = campaign(
        id,
        campaign_status,
        Some(starts_at),
        expires_at,
        &[Channel::InApp],
    );
    ctx.ports
        .campaigns
        .insert_campaign(&c)
        .await
        .expect("insert campaign");
    let b = Broadcast {
        id: herald_core::ids::broadcast_id(id),
        campaign_id: Some(id.into()),
        title: "Dark mode".into(),
        body: "Try it in settings.".into(),
        category: None,
        data: json!({}),
        segment: None,
        filter: Filter::match_all(),
        channels: vec![Channel::InApp],
        priority: Priority::Normal,
        starts_at,
        expires_at,
        status,
        created_at: at(NOW),
    };
    ctx.ports.broadcasts.insert(&b).await.expect("insert");
    b
}

async fn tick(ctx: &Context) -> Summary {
    let s = lifecycle::tick(ctx).await.expect("lifecycle tick");
    assert_eq!(s.errors, 0, "{s:?}");
    s
}

async fn broadcast_status(ctx: &Context, id: uuid::Uuid) -> BroadcastStatus {
    ctx.ports
        .broadcasts
        .get(id)
        .await
        .expect("get broadcast")
        .expect("broadcast exists")
        .status
}

async fn campaign_of(ctx: &Context, id: &str) -> Campaign {
    ctx.ports
        .campaigns
        .get_campaign(id)
        .await
        .expect("get campaign")
        .expect("campaign exists")
}

type Events = futures::stream::BoxStream<'static, LiveEvent>;

async fn subscribe(ctx: &Context) -> Events {
    ctx.ports.live.subscribe().await.expect("subscribe").events
}

/// Every event published so far: what the stream yields until it has been quiet for a
/// moment (events on a remote hub, Redis under `HERALD_TEST_BACKENDS=distributed`, arrive a
/// little after they were published; the in-process hub has them at once).
async fn drain(events: &mut Events) -> Vec<LiveEvent> {
    const QUIET: std::time::Duration = std::time::Duration::from_millis(150);
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(QUIET, events.next()).await {
        out.push(e);
    }
    out
}

/// The broadcasts of the `BroadcastActivated` events among `events`.
fn activated(events: &[LiveEvent]) -> Vec<Broadcast> {
    events
        .iter()
        .filter_map(|e| match e {
            LiveEvent::BroadcastActivated { broadcast } => Some((**broadcast).clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Activation

#[tokio::test]
async fn a_scheduled_broadcast_activates_exactly_when_the_clock_reaches_starts_at() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(10);
    let b = seed(
        &h.ctx,
        "c-sched",
        CampaignStatus::Scheduled,
        BroadcastStatus::Scheduled,
        starts,
        Some(starts + Duration::days(3)),
    )
    .await;
    let mut events = subscribe(&h.ctx).await;

    // Not before.
    assert_eq!(tick(&h.ctx).await, Summary::default());
    h.clock.set(starts - Duration::microseconds(1));
    assert_eq!(tick(&h.ctx).await, Summary::default());
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Scheduled
    );
    assert_eq!(
        campaign_of(&h.ctx, "c-sched").await.status,
        CampaignStatus::Scheduled
    );
    assert!(drain(&mut events).await.is_empty());

    // At starts_at: active, one event carrying the broadcast as active, campaign active.
    h.clock.set(starts);
    let s = tick(&h.ctx).await;
    assert_eq!(s.activated, 1, "{s:?}");
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Active
    );
    let c = campaign_of(&h.ctx, "c-sched").await;
    assert_eq!(c.status, CampaignStatus::Active);
    assert_eq!(c.started_at, Some(starts));
    let got = activated(&drain(&mut events).await);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].id, b.id);
    assert_eq!(got[0].status, BroadcastStatus::Active);
    assert_eq!(got[0].title, "Dark mode");

    // Later ticks change nothing and publish nothing.
    h.clock.advance(Duration::seconds(1));
    assert_eq!(tick(&h.ctx).await, Summary::default());
    assert!(drain(&mut events).await.is_empty());
}

#[tokio::test]
async fn a_broadcast_stored_by_the_dispatcher_before_its_start_activates_on_time() {
    let h = harness().await;
    let starts = at(NOW) + Duration::hours(1);
    // A sizing campaign dispatched early (the dispatcher stores its broadcast scheduled).
    let c = campaign(
        "c-early",
        CampaignStatus::Sizing,
        Some(starts),
        None,
        &[Channel::InApp],
    );
    h.ctx.ports.campaigns.insert_campaign(&c).await.unwrap();
    let outcome = dispatcher::dispatch(&h.ctx, "c-early", &CancellationToken::new())
        .await
        .expect("dispatch");
    assert!(matches!(outcome, Outcome::Done));
    let id = herald_core::ids::broadcast_id("c-early");
    assert_eq!(
        broadcast_status(&h.ctx, id).await,
        BroadcastStatus::Scheduled
    );
    let mut events = subscribe(&h.ctx).await;

    h.clock.set(starts - Duration::milliseconds(500));
    assert_eq!(tick(&h.ctx).await.activated, 0);
    h.clock.set(starts + Duration::milliseconds(200)); // the next 500 ms tick
    assert_eq!(tick(&h.ctx).await.activated, 1);
    assert_eq!(broadcast_status(&h.ctx, id).await, BroadcastStatus::Active);
    assert_eq!(
        campaign_of(&h.ctx, "c-early").await.status,
        CampaignStatus::Active
    );
    assert_eq!(activated(&drain(&mut events).await).len(), 1);
}

#[tokio::test]
async fn activation_and_expiry_happen_after_a_restart() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(5);
    let expires = starts + Duration::hours(2);
    let b = seed(
        &h.ctx,
        "c-restart",
        CampaignStatus::Sizing,
        BroadcastStatus::Scheduled,
        starts,
        Some(expires),
    )
    .await;
    assert_eq!(tick(&h.ctx).await, Summary::default());
    drop(h.ctx); // the process stops before starts_at

    // A new process on the same data dir, after starts_at.
    h.clock.set(starts + Duration::seconds(30));
    let ctx = open_ctx(h.dir.path(), &h.clock, |_| {}).await;
    let mut events = subscribe(&ctx).await;
    assert_eq!(tick(&ctx).await.activated, 1);
    assert_eq!(broadcast_status(&ctx, b.id).await, BroadcastStatus::Active);
    assert_eq!(
        campaign_of(&ctx, "c-restart").await.status,
        CampaignStatus::Active
    );
    assert_eq!(activated(&drain(&mut events).await).len(), 1);
    drop(events);
    drop(ctx);

    // Another one, after expires_at.
    h.clock.set(expires + Duration::seconds(1));
    let ctx = open_ctx(h.dir.path(), &h.clock, |_| {}).await;
    let mut events = subscribe(&ctx).await;
    assert_eq!(tick(&ctx).await.completed, 1);
    assert_eq!(
        broadcast_status(&ctx, b.id).await,
        BroadcastStatus::Completed
    );
    let c = campaign_of(&ctx, "c-restart").await;
    assert_eq!(c.status, CampaignStatus::Completed);
    assert_eq!(c.completed_at, Some(expires + Duration::seconds(1)));
    assert!(drain(&mut events).await.is_empty());
    assert!(ctx.ports.broadcasts.list_open().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Expiry

#[tokio::test]
async fn expiry_completes_the_broadcast_and_its_campaign() {
    let h = harness().await;
    let expires = at(NOW) + Duration::days(3);
    let b = seed(
        &h.ctx,
        "c-exp",
        CampaignStatus::Active,
        BroadcastStatus::Active,
        at(NOW) - Duration::minutes(1),
        Some(expires),
    )
    .await;

    h.clock.set(expires - Duration::microseconds(1));
    assert_eq!(tick(&h.ctx).await, Summary::default());
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Active
    );

    h.clock.set(expires);
    let s = tick(&h.ctx).await;
    assert_eq!(s.completed, 1, "{s:?}");
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Completed
    );
    let c = campaign_of(&h.ctx, "c-exp").await;
    assert_eq!(c.status, CampaignStatus::Completed);
    assert_eq!(c.completed_at, Some(expires));

    // Closed for good: not listed, nothing more to do.
    assert!(h.ctx.ports.broadcasts.list_open().await.unwrap().is_empty());
    h.clock.advance(Duration::days(1));
    assert_eq!(tick(&h.ctx).await, Summary::default());
}

#[tokio::test]
async fn a_broadcast_that_expires_before_it_is_activated_completes_without_an_event() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(1);
    let expires = starts + Duration::minutes(1);
    let b = seed(
        &h.ctx,
        "c-missed",
        CampaignStatus::Active,
        BroadcastStatus::Scheduled,
        starts,
        Some(expires),
    )
    .await;
    let mut events = subscribe(&h.ctx).await;
    // Nobody ticked during the whole window (every process was down).
    h.clock.set(expires + Duration::minutes(5));
    let s = tick(&h.ctx).await;
    assert_eq!((s.activated, s.completed), (0, 1), "{s:?}");
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Completed
    );
    assert_eq!(
        campaign_of(&h.ctx, "c-missed").await.status,
        CampaignStatus::Completed
    );
    assert!(drain(&mut events).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Cancellation

#[tokio::test]
async fn a_cancelled_broadcast_is_never_reactivated_or_completed() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(10);
    let expires = starts + Duration::hours(1);
    let b = seed(
        &h.ctx,
        "c-cancel",
        CampaignStatus::Active,
        BroadcastStatus::Scheduled,
        starts,
        Some(expires),
    )
    .await;
    // What `POST /v1/campaigns/{id}/cancel` does: the campaign, then the broadcast.
    assert!(h
        .ctx
        .ports
        .campaigns
        .transition(
            "c-cancel",
            &[CampaignStatus::Active],
            CampaignStatus::Cancelled,
            at(NOW)
        )
        .await
        .unwrap());
    assert!(h
        .ctx
        .ports
        .broadcasts
        .transition(
            b.id,
            &[BroadcastStatus::Scheduled, BroadcastStatus::Active],
            BroadcastStatus::Cancelled
        )
        .await
        .unwrap());
    let mut events = subscribe(&h.ctx).await;

    for t in [
        starts,
        starts + Duration::minutes(30),
        expires,
        expires + Duration::days(1),
    ] {
        h.clock.set(t);
        assert_eq!(tick(&h.ctx).await, Summary::default());
        assert_eq!(
            broadcast_status(&h.ctx, b.id).await,
            BroadcastStatus::Cancelled
        );
        assert_eq!(
            campaign_of(&h.ctx, "c-cancel").await.status,
            CampaignStatus::Cancelled
        );
    }
    assert!(drain(&mut events).await.is_empty());
}

#[tokio::test]
async fn a_cancel_that_stopped_before_the_broadcast_is_finished_instead_of_activating() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(10);
    let b = seed(
        &h.ctx,
        "c-half",
        CampaignStatus::Cancelled,
        BroadcastStatus::Scheduled,
        starts,
        None,
    )
    .await;
    let mut events = subscribe(&h.ctx).await;
    h.clock.set(starts);
    let s = tick(&h.ctx).await;
    assert_eq!((s.activated, s.withdrawn), (0, 1), "{s:?}");
    assert_eq!(
        broadcast_status(&h.ctx, b.id).await,
        BroadcastStatus::Cancelled
    );
    assert_eq!(
        campaign_of(&h.ctx, "c-half").await.status,
        CampaignStatus::Cancelled
    );
    assert!(drain(&mut events).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Concurrency

type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = herald_core::Result<T>> + Send + 'a>>;

/// Forwards to the real broadcast store, but `list_open` returns only once every ticker of the
/// barrier has listed: all of them see the same scheduled broadcasts and race on their
/// compare-and-sets, whatever the scheduling.
struct RacingStore {
    inner: Arc<dyn BroadcastStore>,
    barrier: Arc<tokio::sync::Barrier>,
}

/// `ctx` with its broadcast store behind `barrier`.
fn racing(ctx: &Context, barrier: &Arc<tokio::sync::Barrier>) -> Context {
    let mut out = ctx.clone();
    out.ports.broadcasts = Arc::new(RacingStore {
        inner: ctx.ports.broadcasts.clone(),
        barrier: barrier.clone(),
    });
    out
}

// `BroadcastStore` is an `async_trait`; this is what the macro would expand `async fn`s to.
impl BroadcastStore for RacingStore {
    fn ping<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.ping()
    }

    fn insert<'life0, 'life1, 'async_trait>(
        &'life0 self,
        broadcast: &'life1 Broadcast,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.insert(broadcast)
    }

    fn get<'life0, 'async_trait>(
        &'life0 self,
        id: uuid::Uuid,
    ) -> StoreFuture<'async_trait, Option<Broadcast>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.get(id)
    }

    fn list_open<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, Vec<Broadcast>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let open = self.inner.list_open().await?;
            self.barrier.wait().await;
            Ok(open)
        })
    }

    fn transition<'life0, 'life1, 'async_trait>(
        &'life0 self,
        id: uuid::Uuid,
        from: &'life1 [BroadcastStatus],
        to: BroadcastStatus,
    ) -> StoreFuture<'async_trait, bool>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.transition(id, from, to)
    }
}

/// One tick of each context, on two threads at once, both working from the same listing.
async fn both(a: &Context, b: &Context) -> (Summary, Summary) {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (a, b) = (racing(a, &barrier), racing(b, &barrier));
    let (a, b) = tokio::join!(
        tokio::spawn(async move { tick(&a).await }),
        tokio::spawn(async move { tick(&b).await })
    );
    (a.expect("tick task"), b.expect("tick task"))
}

#[tokio::test]
async fn two_concurrent_ticks_of_one_process_activate_once_and_publish_once() {
    let h = harness().await;
    let starts = at(NOW) + Duration::minutes(1);
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = seed(
            &h.ctx,
            &format!("c-join-{i}"),
            CampaignStatus::Scheduled,
            BroadcastStatus::Scheduled,
            starts,
            None,
        )
        .await;
        ids.push(b.id);
    }
    let mut events = subscribe(&h.ctx).await;
    h.clock.set(starts);
    // The same context twice, interleaved on one thread; both list all five as scheduled.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let ctx = racing(&h.ctx, &barrier);
    let (a, b) = tokio::join!(tick(&ctx), tick(&ctx));
    assert_eq!(a.activated + b.activated, 5, "{a:?} {b:?}");
    let mut got: Vec<_> = activated(&drain(&mut events).await)
        .into_iter()
        .map(|b| b.id)
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "one event per broadcast");
    for i in 0..5 {
        assert_eq!(
            campaign_of(&h.ctx, &format!("c-join-{i}")).await.status,
            CampaignStatus::Active
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_data_dir_activate_once_and_publish_once() {
    let h = harness().await;
    // A second process on the same data dir; both share one live hub here (as Redis pub/sub
    // would in production) so that every event either publishes is seen once on it.
    let mut other = open_ctx(h.dir.path(), &h.clock, |_| {}).await;
    other.ports.live = h.ctx.ports.live.clone();
    let starts = at(NOW) + Duration::minutes(1);
    let expires = starts + Duration::hours(1);
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = seed(
            &h.ctx,
            &format!("c-two-{i}"),
            CampaignStatus::Sizing,
            BroadcastStatus::Scheduled,
            starts,
            Some(expires),
        )
        .await;
        ids.push(b.id);
    }
    let mut events = subscribe(&h.ctx).await;

    h.clock.set(starts);
    let (a, b) = both(&h.ctx, &other).await;
    assert_eq!(a.activated + b.activated, 5, "{a:?} {b:?}");
    assert_eq!(activated(&drain(&mut events).await).len(), 5);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(broadcast_status(&other, *id).await, BroadcastStatus::Active);
        assert_eq!(
            campaign_of(&other, &format!("c-two-{i}")).await.status,
            CampaignStatus::Active
        );
    }

    h.clock.set(expires);
    let (a, b) = both(&h.ctx, &other).await;
    assert_eq!(a.completed + b.completed, 5, "{a:?} {b:?}");
    assert!(drain(&mut events).await.is_empty());
    for i in 0..5 {
        assert_eq!(
            campaign_of(&h.ctx, &format!("c-two-{i}")).await.status,
            CampaignStatus::Completed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// O(1) rows

#[tokio::test]
async fn a_broadcast_to_everyone_writes_one_row_whatever_the_audience() {
    let h = harness().await;
    const USERS: usize = 50_000;
    let created = at("2025-01-01T00:00:00Z");
    let users: Vec<User> = (0..USERS)
        .map(|i| User {
            id: format!("u{i:06}"),
            email: Some(format!("u{i}@example.com")),
            phone: None,
            attributes: serde_json::Map::new(),
            created_at: created,
            updated_at: created,
        })
        .collect();
    for chunk in users.chunks(5_000) {
        h.ctx.ports.directory.upsert_users(chunk).await.unwrap();
    }
    assert_eq!(
        h.ctx
            .ports
            .directory
            .count_users(&Filter::match_all(), at(NOW))
            .await
            .unwrap(),
        USERS as u64
    );
    let mut c = campaign(
        "c-all",
        CampaignStatus::Sizing,
        None,
        Some(at(NOW) + Duration::days(3)),
        &[Channel::InApp],
    );
    c.audience_size = USERS as u64;
    h.ctx.ports.campaigns.insert_campaign(&c).await.unwrap();
    let mut events = subscribe(&h.ctx).await;

    let outcome = dispatcher::dispatch(&h.ctx, "c-all", &CancellationToken::new())
        .await
        .expect("dispatch");
    assert!(matches!(outcome, Outcome::Done));

    // One broadcast row, active at once, announced once.
    let open = h.ctx.ports.broadcasts.list_open().await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, herald_core::ids::broadcast_id("c-all"));
    assert_eq!(open[0].status, BroadcastStatus::Active);
    assert!(open[0].is_live_at(h.clock.now()));
    assert_eq!(activated(&drain(&mut events).await).len(), 1);
    assert_eq!(
        campaign_of(&h.ctx, "c-all").await.status,
        CampaignStatus::Active
    );

    // No inbox row for anyone, no batch on the bus.
    for i in [0, 1, 777, 12_345, 25_000, 49_998, USERS - 1] {
        let user = format!("u{i:06}");
        let rows = h
            .ctx
            .ports
            .inbox
            .page(&user, None, 100, herald_core::model::InboxFilter::default())
            .await
            .unwrap();
        assert!(rows.is_empty(), "{user} has rows: {rows:?}");
        assert_eq!(
            h.ctx.ports.inbox.counts(&user, &[]).await.unwrap().unread,
            0
        );
    }
    assert_eq!(
        h.ctx
            .ports
            .bus
            .lag(topics::BATCHES, topics::BATCH_WORKERS)
            .await
            .unwrap(),
        0
    );

    // The lifecycle has nothing to write either, and expiry closes the one row.
    assert_eq!(tick(&h.ctx).await, Summary::default());
    h.clock.set(at(NOW) + Duration::days(3));
    assert_eq!(tick(&h.ctx).await.completed, 1);
    assert!(h.ctx.ports.broadcasts.list_open().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Retention

fn row(user: &str, n: u128, created_at: DateTime<Utc>) -> Notification {
    Notification {
        id: uuid::Uuid::from_u128(n),
        user_id: user.into(),
        campaign_id: Some("c-old".into()),
        title: format!("row {n}"),
        body: "b".into(),
        category: None,
        data: json!({}),
        created_at,
        read_at: None,
        seen_at: None,
        archived_at: None,
    }
}

#[tokio::test]
async fn retention_purges_rows_older_than_retention_days_and_keeps_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(at(NOW));
    let ctx = open_ctx(dir.path(), &clock, |c| c.inbox.retention_days = 30).await;
    let cutoff = at(NOW) - Duration::days(30);
    let old = [
        row("alice", 1, cutoff - Duration::days(60)),
        row("alice", 2, cutoff - Duration::microseconds(1)),
        row("bob", 3, cutoff - Duration::days(1)),
    ];
    let kept = [
        row("alice", 4, cutoff),
        row("alice", 5, at(NOW) - Duration::days(1)),
        row("bob", 6, at(NOW)),
    ];
    ctx.ports.inbox.write_batch(&old).await.unwrap();
    ctx.ports.inbox.write_batch(&kept).await.unwrap();

    assert_eq!(lifecycle::purge_inbox(&ctx).await.unwrap(), 3);
    let ids =
        |rows: Vec<Notification>| rows.into_iter().map(|r| r.id.as_u128()).collect::<Vec<_>>();
    let alice = ids(ctx
        .ports
        .inbox
        .page(
            "alice",
            None,
            100,
            herald_core::model::InboxFilter::default(),
        )
        .await
        .unwrap());
    let bob = ids(ctx
        .ports
        .inbox
        .page("bob", None, 100, herald_core::model::InboxFilter::default())
        .await
        .unwrap());
    assert_eq!(alice, vec![5, 4]);
    assert_eq!(bob, vec![6]);

    // Nothing more now; a day later the row at the old cutoff goes too.
    assert_eq!(lifecycle::purge_inbox(&ctx).await.unwrap(), 0);
    clock.advance(Duration::days(1));
    assert_eq!(lifecycle::purge_inbox(&ctx).await.unwrap(), 1);
    let alice = ids(ctx
        .ports
        .inbox
        .page(
            "alice",
            None,
            100,
            herald_core::model::InboxFilter::default(),
        )
        .await
        .unwrap());
    assert_eq!(alice, vec![5]);
}
