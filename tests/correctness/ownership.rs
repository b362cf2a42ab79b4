//! Two fan-out nodes (two `herald_fanout::run`s with their own connections, caches and
//! workers) on the same stores and bus: a campaign is cut once, every user gets exactly one
//! row, the counters are exact, and when the node that owns a campaign dies mid-way the other
//! takes the campaign over and finishes it.

use crate::harness::*;
use herald_core::worker::AbortOnDrop;
use herald_core::{Context, SystemClock};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const USERS: u64 = 100_000;
const BATCH: u64 = 1_000;

/// One fan-out node: its own context (connections, write gates, caches, workers) on the
/// shared data directory, its bus wrapped to count batch publications into the test's tally.
struct Node {
    shutdown: CancellationToken,
    role: Option<AbortOnDrop<()>>,
}

impl Node {
    async fn start(app: &App, published: &Publications) -> Node {
        let mut config = (*app.ctx.config).clone();
        config.fanout.workers = Some(2);
        let mut ctx: Context = open_ctx(config, Arc::new(SystemClock)).await;
        ctx.ports.bus = FaultyBus::counting(ctx.ports.bus.clone(), published.clone());
        let shutdown = CancellationToken::new();
        let role = AbortOnDrop::spawn(herald_fanout::run(ctx, shutdown.clone()));
        Node {
            shutdown,
            role: Some(role),
        }
    }

    /// Dies at once: every task dropped where it stands, nothing released or checkpointed.
    fn kill(&mut self) {
        self.role.take();
    }

    /// Stops as `herald fanout` does on SIGTERM, and waits until it has.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(role) = self.role.take() {
            role.join().await.expect("the role stops");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn setup() -> App {
    let app = spawn(Options {
        fanout: false,
        configure: Box::new(|c| {
            c.fanout.batch_size = Some(BATCH as u32);
            // About five seconds of batching, so a node can die mid-way.
            c.throttle.users_per_s = 20_000;
            c.throttle.large_users_per_s = 20_000;
        }),
        ..Options::default()
    })
    .await;
    seed_cohort(&app, "cohort-1", USERS as usize).await;
    app
}

async fn create(app: &App) -> String {
    app.campaign(json!({
        // A segment of everyone (`all` would be a broadcast).
        "audience": {"segment": "cohort-1"},
        "content": {"title": "Hello", "body": "Hi {{ user.id }}"},
        "channels": ["in_app"],
    }))
    .await
}

async fn assert_exactly_once(app: &App, id: &str, done: &serde_json::Value) {
    assert_eq!(done["audience_size"], USERS, "{done}");
    assert_eq!(done["progress"]["batches_total"], USERS / BATCH, "{done}");
    assert_eq!(done["progress"]["batches_done"], USERS / BATCH, "{done}");
    assert_eq!(done["progress"]["notifications_written"], USERS, "{done}");
    assert_eq!(
        inbox_rows(app, id).await,
        (USERS, USERS),
        "every user exactly one row"
    );
}

#[tokio::test]
async fn two_fanout_nodes_cut_a_100k_campaign_once_and_count_it_exactly() {
    let app = setup().await;
    let published = Publications::default();
    let _a = Node::start(&app, &published).await;
    let _b = Node::start(&app, &published).await;
    let id = create(&app).await;
    let done = app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_exactly_once(&app, &id, &done).await;
    let published = published.of(&id);
    assert_eq!(published.len() as u64, USERS / BATCH);
    assert!(
        published.values().all(|n| *n == 1),
        "each batch cut by one owner, once: {published:?}"
    );
}

#[tokio::test]
async fn when_the_owning_fanout_node_dies_mid_campaign_the_other_takes_it_over_and_finishes() {
    let app = setup().await;
    let published = Publications::default();
    let mut a = Node::start(&app, &published).await;
    let id = create(&app).await;
    // A owns the campaign (B is not running yet) and dies once a tenth of it is done.
    eventually("A under way", Duration::from_secs(60), || async {
        let c = app.get_campaign(&id).await;
        c["progress"]["batches_done"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    let _b = Node::start(&app, &published).await;
    a.kill();
    let at_kill = app.get_campaign(&id).await;
    assert_ne!(at_kill["status"], "completed", "killed mid-campaign");

    // B takes the campaign over once A's lease expires, resumes at A's checkpoint, and
    // redelivery brings it the batches A's workers held.
    let done = app.wait_completed(&id, Duration::from_secs(150)).await;
    assert_exactly_once(&app, &id, &done).await;
    let published = published.of(&id);
    assert_eq!(published.len() as u64, USERS / BATCH, "every batch cut");
    let (_, metrics) = app.call(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(!metrics.contains(&id), "no campaign id in a metric label");
}

#[tokio::test]
async fn a_fanout_node_stopped_gracefully_checkpoints_and_hands_its_campaign_over_at_once() {
    let app = setup().await;
    let published = Publications::default();
    let mut a = Node::start(&app, &published).await;
    let id = create(&app).await;
    eventually("A under way", Duration::from_secs(60), || async {
        published.of(&id).len() >= 10
    })
    .await;
    a.stop().await;

    // A saved where it stopped and gave the lease back: the campaign is claimable now, not
    // after the lease would have run out.
    let campaigns = &app.ctx.ports.campaigns;
    let c = campaigns.get_campaign(&id).await.unwrap().unwrap();
    assert!(!c.checkpoint.batching_done, "stopped mid-campaign");
    assert_eq!(
        c.checkpoint.next_batch,
        published.of(&id).len() as u64,
        "the checkpoint is the last batch published"
    );
    let claimable = campaigns
        .claimable_campaigns(chrono::Utc::now(), 10)
        .await
        .unwrap();
    assert!(claimable.contains(&id), "{claimable:?}");

    let _b = Node::start(&app, &published).await;
    let done = app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_exactly_once(&app, &id, &done).await;
    let published = published.of(&id);
    assert_eq!(published.len() as u64, USERS / BATCH);
    assert!(
        published.values().all(|n| *n == 1),
        "resumed exactly where A stopped: {published:?}"
    );
}
