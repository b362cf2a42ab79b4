//! Conformance suite of the [`Bus`] port, written once for every backend.
//!
//! `cases` holds one function per rule of the contract; `bus_conformance!` turns them into
//! `#[tokio::test]`s for one engine, given an expression that opens a fresh bus and one that
//! builds a [`Reopen`] (a bus opened again on the same storage, for durability). Every case
//! uses its own random topic and group names, so a shared broker can run them all at once.
//! Leases are short and time is real, but no case asserts an upper bound tighter than
//! [`PATIENCE`]: the suite must stay green on a loaded machine.

use futures::future::LocalBoxFuture;
use herald_core::model::{Delivery, OutMessage};
use herald_core::ports::Bus;
use herald_core::Result;
use herald_storage::BackendUrl;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Opens a bus on the same storage each time it is called (what a restarted process does).
/// Not `Send`: the cases await it in place, and the SQLite open future is not `Send`.
pub type Reopen = Arc<dyn Fn() -> LocalBoxFuture<'static, Arc<dyn Bus>>>;

/// Generates the suite for one engine: `bus_conformance!(kafka, fresh_kafka_bus(),
/// kafka_reopen())` where the first expression is a future of `Arc<dyn Bus>` on fresh (or
/// shared) storage and the second a [`Reopen`].
macro_rules! bus_conformance {
    ($engine:ident, $make:expr, $reopen:expr) => {
        mod $engine {
            #[allow(unused_imports)]
            use super::*;

            bus_conformance!(@cases $make;
                ping_succeeds,
                every_subscribed_group_receives_every_message,
                a_group_subscribed_later_does_not_get_earlier_messages,
                a_message_published_without_subscribers_reaches_no_later_group,
                subscribing_twice_delivers_once,
                a_leased_message_is_not_handed_to_a_second_consumer_while_the_lease_holds,
                concurrent_consumers_share_the_messages_without_duplicates,
                an_unacked_message_is_redelivered_after_its_lease_with_the_attempt_incremented,
                acked_messages_never_come_back,
                a_nacked_message_comes_back_after_the_delay_and_not_before,
                a_message_nacked_without_delay_comes_back_at_once,
                depth_counts_the_unacked_backlog_per_group_and_drops_on_ack,
                receive_waits_up_to_wait_when_nothing_arrives,
                receive_returns_early_when_a_message_is_published_meanwhile,
                receive_returns_at_most_max,
                a_published_batch_becomes_visible_all_at_once,
                a_stale_receipt_does_not_settle_the_newer_lease,
                payloads_and_keys_round_trip_byte_for_byte,
                malformed_receipts_are_rejected,
                settling_no_receipts_is_a_no_op,
            );

            #[tokio::test]
            async fn messages_survive_reopening_the_bus() {
                cases::messages_survive_reopening_the_bus($reopen).await
            }
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                cases::$case($make.await).await
            }
        )*
    };
}

pub mod cases {
    use super::*;
    use herald_core::ErrorKind;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::time::Instant;

    /// Upper bound on anything expected to happen "soon": generous, only a hang fails it.
    pub const PATIENCE: Duration = Duration::from_secs(10);
    /// A lease that cannot run out during a case.
    pub const LONG: Duration = Duration::from_secs(60);
    /// A lease meant to run out during a case.
    pub const SHORT: Duration = Duration::from_millis(300);
    /// How long to look before concluding that nothing (more) is delivered.
    pub const QUIET: Duration = Duration::from_millis(250);
    /// Slack for comparing the bus's clock with this process's monotonic clock.
    pub const SLACK: Duration = Duration::from_millis(30);

    /// A unique topic or group name, so cases never see each other's messages.
    pub fn name(what: &str) -> String {
        format!("{what}-{}", uuid::Uuid::new_v4().simple())
    }

    pub fn msg(key: Option<&str>, payload: &[u8]) -> OutMessage {
        OutMessage {
            key: key.map(str::to_owned),
            payload: payload.to_vec(),
        }
    }

    /// Messages with payloads `prefix-0`, `prefix-1`, ... and no key.
    pub fn numbered(prefix: &str, n: usize) -> Vec<OutMessage> {
        (0..n)
            .map(|i| msg(None, format!("{prefix}-{i}").as_bytes()))
            .collect()
    }

    pub fn payloads(ds: &[Delivery]) -> Vec<Vec<u8>> {
        let mut p: Vec<_> = ds.iter().map(|d| d.payload.clone()).collect();
        p.sort();
        p
    }

    pub fn expected(ms: &[OutMessage]) -> Vec<Vec<u8>> {
        let mut p: Vec<_> = ms.iter().map(|m| m.payload.clone()).collect();
        p.sort();
        p
    }

    pub fn receipts(ds: &[Delivery]) -> Vec<String> {
        ds.iter().map(|d| d.receipt.clone()).collect()
    }

    /// Receives until `n` deliveries arrived (leased for `lease`) or [`PATIENCE`] ran out.
    pub async fn collect(
        bus: &dyn Bus,
        topic: &str,
        group: &str,
        n: usize,
        lease: Duration,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let batch = bus
                .receive(topic, group, n - got.len(), lease, left)
                .await
                .expect("receive");
            got.extend(batch);
        }
        got
    }

    /// Asserts that nothing is delivered to the group for [`QUIET`].
    pub async fn assert_nothing(bus: &dyn Bus, topic: &str, group: &str) {
        let got = bus
            .receive(topic, group, 100, LONG, QUIET)
            .await
            .expect("receive");
        assert!(
            got.is_empty(),
            "nothing more expected for {group}, got {:?}",
            payloads(&got)
        );
    }

    /// Waits until the group's depth is `expected` (a distributed bus may lag), or fails.
    pub async fn assert_depth(bus: &dyn Bus, topic: &str, group: &str, expected: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let depth = bus.depth(topic, group).await.expect("depth");
            if depth == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "depth of {group} stayed {depth}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ping_succeeds(bus: Arc<dyn Bus>) {
        bus.ping().await.expect("ping");
    }

    pub async fn every_subscribed_group_receives_every_message(bus: Arc<dyn Bus>) {
        let (t, g1, g2) = (name("t"), name("g1"), name("g2"));
        bus.subscribe(&t, &g1).await.unwrap();
        bus.subscribe(&t, &g2).await.unwrap();
        let ms = vec![
            msg(Some("k0"), b"zero"),
            msg(Some("k1"), b"one"),
            msg(None, b"two"),
        ];
        bus.publish(&t, &ms).await.unwrap();
        for g in [&g1, &g2] {
            let got = collect(&*bus, &t, g, 3, LONG).await;
            assert_eq!(payloads(&got), expected(&ms), "group {g}");
            assert!(got.iter().all(|d| d.attempt == 1));
            assert_nothing(&*bus, &t, g).await;
        }
    }

    pub async fn a_group_subscribed_later_does_not_get_earlier_messages(bus: Arc<dyn Bus>) {
        let (t, early, late) = (name("t"), name("early"), name("late"));
        bus.subscribe(&t, &early).await.unwrap();
        bus.publish(&t, &[msg(None, b"before")]).await.unwrap();
        bus.subscribe(&t, &late).await.unwrap();
        bus.publish(&t, &[msg(None, b"after")]).await.unwrap();

        let got = collect(&*bus, &t, &late, 1, LONG).await;
        assert_eq!(payloads(&got), vec![b"after".to_vec()]);
        assert_nothing(&*bus, &t, &late).await;
        let got = collect(&*bus, &t, &early, 2, LONG).await;
        assert_eq!(payloads(&got), vec![b"after".to_vec(), b"before".to_vec()]);
    }

    pub async fn a_message_published_without_subscribers_reaches_no_later_group(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.publish(&t, &[msg(None, b"lost")]).await.unwrap();
        bus.subscribe(&t, &g).await.unwrap();
        assert_nothing(&*bus, &t, &g).await;
        assert_eq!(bus.depth(&t, &g).await.unwrap(), 0);
    }

    pub async fn subscribing_twice_delivers_once(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(None, b"once")]).await.unwrap();
        let got = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(payloads(&got), vec![b"once".to_vec()]);
        assert_nothing(&*bus, &t, &g).await;
        assert_depth(&*bus, &t, &g, 1).await;
    }

    pub async fn a_leased_message_is_not_handed_to_a_second_consumer_while_the_lease_holds(
        bus: Arc<dyn Bus>,
    ) {
        let (t, g, other) = (name("t"), name("g"), name("other"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.subscribe(&t, &other).await.unwrap();
        bus.publish(&t, &[msg(None, b"mine")]).await.unwrap();
        let first = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(first.len(), 1);
        // A second consumer of the same group finds nothing...
        assert_nothing(&*bus, &t, &g).await;
        // ...while the lease is the group's own business: another group still gets it.
        let theirs = collect(&*bus, &t, &other, 1, LONG).await;
        assert_eq!(payloads(&theirs), vec![b"mine".to_vec()]);
    }

    pub async fn concurrent_consumers_share_the_messages_without_duplicates(bus: Arc<dyn Bus>) {
        const N: usize = 200;
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let ms = numbered("m", N);
        bus.publish(&t, &ms).await.unwrap();

        let mut consumers = Vec::new();
        for _ in 0..4 {
            let (bus, t, g) = (bus.clone(), t.clone(), g.clone());
            consumers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = bus.receive(&t, &g, 7, LONG, QUIET).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    bus.ack(&t, &g, &receipts(&got)).await.unwrap();
                    mine.extend(got);
                }
            }));
        }
        let mut all = Vec::new();
        for c in consumers {
            all.extend(c.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().map(|d| d.payload.clone()).collect();
        assert_eq!(all.len(), unique.len(), "a message was leased twice");
        assert_eq!(payloads(&all), expected(&ms));
        assert_depth(&*bus, &t, &g, 0).await;
    }

    pub async fn an_unacked_message_is_redelivered_after_its_lease_with_the_attempt_incremented(
        bus: Arc<dyn Bus>,
    ) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(Some("k"), b"again")]).await.unwrap();

        let start = Instant::now();
        let first = collect(&*bus, &t, &g, 1, SHORT).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempt, 1);
        let second = collect(&*bus, &t, &g, 1, LONG).await;
        assert!(
            start.elapsed() + SLACK >= SHORT,
            "redelivered after {:?}, before the lease of {SHORT:?} ran out",
            start.elapsed()
        );
        assert_eq!(second.len(), 1, "not redelivered");
        assert_eq!(second[0].payload, b"again");
        assert_eq!(second[0].key.as_deref(), Some("k"));
        assert_eq!(second[0].attempt, 2);
        assert_eq!(second[0].published_at, first[0].published_at);
        assert_ne!(second[0].receipt, first[0].receipt);
    }

    pub async fn acked_messages_never_come_back(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(None, b"acked"), msg(None, b"dropped")])
            .await
            .unwrap();
        let got = collect(&*bus, &t, &g, 2, SHORT).await;
        assert_eq!(got.len(), 2);
        let acked: Vec<_> = got.iter().filter(|d| d.payload == b"acked").collect();
        bus.ack(&t, &g, &[acked[0].receipt.clone()]).await.unwrap();

        // Only the unacked one comes back once the leases run out.
        let again = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(payloads(&again), vec![b"dropped".to_vec()]);
        assert_eq!(again[0].attempt, 2);
        assert_nothing(&*bus, &t, &g).await;
        bus.ack(&t, &g, &receipts(&again)).await.unwrap();
        // Longer than a lease: had either ack been lost, the message would be back.
        tokio::time::sleep(SHORT).await;
        assert_nothing(&*bus, &t, &g).await;
        assert_depth(&*bus, &t, &g, 0).await;
    }

    pub async fn a_nacked_message_comes_back_after_the_delay_and_not_before(bus: Arc<dyn Bus>) {
        let delay = Duration::from_millis(600);
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(None, b"later")]).await.unwrap();
        let first = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(first.len(), 1);

        let start = Instant::now();
        bus.nack(&t, &g, &receipts(&first), delay).await.unwrap();
        let early = bus.receive(&t, &g, 10, LONG, Duration::ZERO).await.unwrap();
        // Only meaningful if this machine was fast enough to look before the delay ended.
        if start.elapsed() < delay {
            assert!(early.is_empty(), "came back before the nack delay");
        }
        let again = if early.is_empty() {
            collect(&*bus, &t, &g, 1, LONG).await
        } else {
            early
        };
        assert!(
            start.elapsed() + SLACK >= delay,
            "came back after {:?}, before the nack delay of {delay:?}",
            start.elapsed()
        );
        assert_eq!(payloads(&again), vec![b"later".to_vec()]);
        assert_eq!(again[0].attempt, 2);
    }

    pub async fn a_message_nacked_without_delay_comes_back_at_once(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(None, b"retry")]).await.unwrap();
        let first = collect(&*bus, &t, &g, 1, LONG).await;
        bus.nack(&t, &g, &receipts(&first), Duration::ZERO)
            .await
            .unwrap();
        // The lease was LONG: only the nack can make it come back within PATIENCE.
        let again = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(payloads(&again), vec![b"retry".to_vec()]);
        assert_eq!(again[0].attempt, 2);
    }

    pub async fn depth_counts_the_unacked_backlog_per_group_and_drops_on_ack(bus: Arc<dyn Bus>) {
        let (t, g1, g2) = (name("t"), name("g1"), name("g2"));
        bus.subscribe(&t, &g1).await.unwrap();
        bus.subscribe(&t, &g2).await.unwrap();
        assert_eq!(bus.depth(&t, &g1).await.unwrap(), 0);
        bus.publish(&t, &numbered("d", 5)).await.unwrap();
        assert_depth(&*bus, &t, &g1, 5).await;
        assert_depth(&*bus, &t, &g2, 5).await;

        // Leased but unacked messages are still backlog.
        let got = collect(&*bus, &t, &g1, 2, LONG).await;
        assert_eq!(got.len(), 2);
        assert_depth(&*bus, &t, &g1, 5).await;
        bus.ack(&t, &g1, &receipts(&got)).await.unwrap();
        assert_depth(&*bus, &t, &g1, 3).await;
        assert_depth(&*bus, &t, &g2, 5).await;
    }

    pub async fn receive_waits_up_to_wait_when_nothing_arrives(bus: Arc<dyn Bus>) {
        let wait = Duration::from_millis(400);
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let start = Instant::now();
        let got = bus.receive(&t, &g, 10, LONG, wait).await.unwrap();
        let took = start.elapsed();
        assert!(got.is_empty());
        assert!(
            took + SLACK >= wait,
            "gave up after {took:?}, before {wait:?}"
        );
        assert!(took < wait + PATIENCE, "waited {took:?}");
    }

    pub async fn receive_returns_early_when_a_message_is_published_meanwhile(bus: Arc<dyn Bus>) {
        let wait = Duration::from_secs(30);
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let publisher = {
            let (bus, t) = (bus.clone(), t.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bus.publish(&t, &[msg(None, b"news")]).await.unwrap();
            })
        };
        let start = Instant::now();
        let got = bus.receive(&t, &g, 10, LONG, wait).await.unwrap();
        let took = start.elapsed();
        publisher.await.unwrap();
        assert_eq!(payloads(&got), vec![b"news".to_vec()]);
        assert!(took < PATIENCE, "took {took:?} of a {wait:?} wait");
    }

    pub async fn receive_returns_at_most_max(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let ms = numbered("x", 10);
        bus.publish(&t, &ms).await.unwrap();
        let mut all = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while all.len() < ms.len() && Instant::now() < deadline {
            let got = bus.receive(&t, &g, 3, LONG, PATIENCE).await.unwrap();
            assert!(got.len() <= 3, "asked for 3, got {}", got.len());
            all.extend(got);
        }
        assert!(bus
            .receive(&t, &g, 0, LONG, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(payloads(&all), expected(&ms));
    }

    pub async fn a_published_batch_becomes_visible_all_at_once(bus: Arc<dyn Bus>) {
        // Large enough to span several INSERT statements on SQLite.
        const N: u64 = 2_500;
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let observer = {
            let (bus, t, g, stop) = (bus.clone(), t.clone(), g.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(bus.depth(&t, &g).await.unwrap());
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        // Let the observer look at least once before the publish.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ms = numbered("b", N as usize);
        bus.publish(&t, &ms).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, Ordering::Relaxed);
        let seen = observer.await.unwrap();
        assert!(!seen.is_empty());
        let partial: Vec<_> = seen.iter().filter(|d| **d != 0 && **d != N).collect();
        assert!(partial.is_empty(), "saw a partial batch: {partial:?}");
        assert_depth(&*bus, &t, &g, N).await;
    }

    pub async fn a_stale_receipt_does_not_settle_the_newer_lease(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[msg(None, b"contested")]).await.unwrap();
        let stale = collect(&*bus, &t, &g, 1, SHORT).await;
        assert_eq!(stale.len(), 1);
        // The lease runs out; a second consumer leases the message again.
        let fresh = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].attempt, 2);

        // The first consumer wakes up late. Whether its ack and nack are refused or ignored
        // is up to the backend; they must not touch the newer lease.
        let _ = bus.ack(&t, &g, &receipts(&stale)).await;
        let _ = bus.nack(&t, &g, &receipts(&stale), Duration::ZERO).await;
        assert_depth(&*bus, &t, &g, 1).await;
        assert_nothing(&*bus, &t, &g).await;

        bus.ack(&t, &g, &receipts(&fresh)).await.unwrap();
        assert_depth(&*bus, &t, &g, 0).await;
    }

    pub async fn payloads_and_keys_round_trip_byte_for_byte(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let every_byte: Vec<u8> = (0..=255).collect();
        let not_utf8 = vec![0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80, 0xed, 0xa0, 0x80];
        let big: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let ms = vec![
            msg(None, &every_byte),
            msg(Some(""), &not_utf8),
            msg(Some("ключ 🔑 'quoted' \"double\" ; --"), b""),
            msg(Some("nul\0inside"), &big),
        ];
        let before = chrono::Utc::now();
        bus.publish(&t, &ms).await.unwrap();
        let after = chrono::Utc::now();

        let got = collect(&*bus, &t, &g, ms.len(), LONG).await;
        let one_second = chrono::Duration::seconds(1);
        for d in &got {
            assert!(
                d.published_at >= before - one_second && d.published_at <= after + one_second,
                "published_at {} outside [{before}, {after}]",
                d.published_at
            );
        }
        let mut got: Vec<_> = got
            .iter()
            .map(|d| (d.key.clone(), d.payload.clone()))
            .collect();
        let mut want: Vec<_> = ms
            .iter()
            .map(|m| (m.key.clone(), m.payload.clone()))
            .collect();
        got.sort();
        want.sort();
        // Not assert_eq!: a 64 KiB diff helps nobody.
        assert!(got == want, "keys or payloads changed on the way");
    }

    pub async fn malformed_receipts_are_rejected(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let bad = vec!["definitely not a receipt".to_owned()];
        let err = bus.ack(&t, &g, &bad).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
        let err = bus.nack(&t, &g, &bad, Duration::ZERO).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    }

    pub async fn settling_no_receipts_is_a_no_op(bus: Arc<dyn Bus>) {
        let (t, g) = (name("t"), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        bus.publish(&t, &[]).await.unwrap();
        bus.ack(&t, &g, &[]).await.unwrap();
        bus.nack(&t, &g, &[], Duration::ZERO).await.unwrap();
        assert_eq!(bus.depth(&t, &g).await.unwrap(), 0);
    }

    pub async fn messages_survive_reopening_the_bus(reopen: Reopen) {
        let (t, g) = (name("t"), name("g"));
        {
            let bus = reopen().await;
            bus.subscribe(&t, &g).await.unwrap();
            bus.publish(&t, &numbered("p", 3)).await.unwrap();
            let got = collect(&*bus, &t, &g, 2, SHORT).await;
            assert_eq!(got.len(), 2);
            // One acked, one leased and abandoned, one never delivered.
            bus.ack(&t, &g, &[got[0].receipt.clone()]).await.unwrap();
            let acked = got[0].payload.clone();
            drop(bus);

            let bus = reopen().await;
            assert_depth(&*bus, &t, &g, 2).await;
            let got = collect(&*bus, &t, &g, 2, LONG).await;
            assert_eq!(got.len(), 2);
            assert!(
                got.iter().all(|d| d.payload != acked),
                "an acked message came back"
            );
            bus.ack(&t, &g, &receipts(&got)).await.unwrap();
        }
        // The subscription is durable too.
        let bus = reopen().await;
        bus.publish(&t, &[msg(None, b"still subscribed")])
            .await
            .unwrap();
        let got = collect(&*bus, &t, &g, 1, LONG).await;
        assert_eq!(payloads(&got), vec![b"still subscribed".to_vec()]);
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

/// A bus that keeps its temporary directory alive as long as it is used.
struct TempBus {
    inner: Arc<dyn Bus>,
    _dir: Arc<TempDir>,
}

#[async_trait::async_trait]
impl Bus for TempBus {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn subscribe(&self, topic: &str, group: &str) -> Result<()> {
        self.inner.subscribe(topic, group).await
    }
    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        self.inner.publish(topic, messages).await
    }
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        self.inner.receive(topic, group, max, lease, wait).await
    }
    async fn ack(&self, topic: &str, group: &str, receipts: &[String]) -> Result<()> {
        self.inner.ack(topic, group, receipts).await
    }
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        receipts: &[String],
        delay: Duration,
    ) -> Result<()> {
        self.inner.nack(topic, group, receipts, delay).await
    }
    async fn depth(&self, topic: &str, group: &str) -> Result<u64> {
        self.inner.depth(topic, group).await
    }
}

/// Opens `bus.db` in a new temporary directory, again on every call.
fn sqlite_reopen() -> Reopen {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let url = BackendUrl::parse(&format!("sqlite://{}/bus.db", dir.path().display()))
        .expect("sqlite url");
    Arc::new(move || {
        let (dir, url) = (dir.clone(), url.clone());
        Box::pin(async move {
            let inner = herald_storage::open_bus(&url).await.expect("open bus");
            Arc::new(TempBus { inner, _dir: dir }) as Arc<dyn Bus>
        })
    })
}

async fn sqlite_bus() -> Arc<dyn Bus> {
    sqlite_reopen()().await
}

bus_conformance!(sqlite, sqlite_bus(), sqlite_reopen());

/// Rough throughput of the SQLite bus (`cargo test -p herald-storage --test bus -- --ignored
/// --nocapture`). Prints timings, asserts only correctness: timings depend on the machine.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_throughput() {
    use std::time::Instant;
    for (label, n, size, batch, consumers, max) in [
        ("small", 10_000usize, 100usize, 100usize, 4usize, 100usize),
        ("small, 16 consumers x 10", 10_000, 100, 100, 16, 10),
        ("small, one by one", 2_000, 100, 1, 4, 1),
        ("40 KB", 2_000, 40 * 1024, 50, 4, 10),
    ] {
        let bus = sqlite_bus().await;
        let (t, g) = (cases::name("t"), cases::name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        let ms: Vec<_> = (0..n)
            .map(|i| {
                let mut payload = format!("{i:08}").into_bytes();
                payload.resize(size, b'.');
                cases::msg(Some(&format!("k{}", i % 16)), &payload)
            })
            .collect();

        let start = Instant::now();
        for chunk in ms.chunks(batch) {
            bus.publish(&t, chunk).await.unwrap();
        }
        let published = start.elapsed();

        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..consumers {
            let (bus, t, g) = (bus.clone(), t.clone(), g.clone());
            tasks.push(tokio::spawn(async move {
                let mut count = 0;
                loop {
                    let got = bus
                        .receive(&t, &g, max, Duration::from_secs(60), Duration::ZERO)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return count;
                    }
                    count += got.len();
                    bus.ack(&t, &g, &cases::receipts(&got)).await.unwrap();
                }
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let consumed = start.elapsed();
        assert_eq!(total, n);
        assert_eq!(bus.depth(&t, &g).await.unwrap(), 0);
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "{label}: {n} x {size} B; publish in batches of {batch}: {published:?} ({:.0}/s); \
             {consumers} consumers receiving {max} + ack: {consumed:?} ({:.0}/s); \
             end to end {:.0}/s",
            rate(published),
            rate(consumed),
            rate(published + consumed),
        );
    }
}
