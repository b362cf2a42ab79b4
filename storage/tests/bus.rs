//! Conformance suite of the [`Bus`] port, written once for every engine: SQLite always, Kafka
//! when `HERALD_TEST_KAFKA_URL` is set, NATS JetStream when `HERALD_TEST_NATS_URL` is set
//! (`.ci/run` sets both, so there a missing engine fails).
//!
//! `cases` holds one function per rule of the contract; `bus_conformance!` turns them into
//! `#[tokio::test]`s for one engine, given an expression that opens a bus (`None`: engine not
//! configured, the case returns). Every case uses its own random topic and group names, so a
//! shared broker can run them all at once. Time is real, but no case asserts an upper bound
//! tighter than [`cases::PATIENCE`]: the suite must stay green on a loaded machine (a Kafka
//! group takes seconds to form).

mod common;

use herald_core::model::{Delivery, OutMessage};
use herald_core::ports::{Bus, Consumer, ReplayFrom};
use std::sync::Arc;
use std::time::Duration;

macro_rules! bus_conformance {
    ($engine:ident, $make:expr, exact_offsets: $exact:expr) => {
        mod $engine {
            #[allow(unused_imports)]
            use super::*;

            bus_conformance!(@cases $make;
                ping_succeeds,
                every_subscribed_group_receives_every_message,
                committed_messages_never_come_back,
                a_released_message_comes_back_at_once_with_the_attempt_counted,
                messages_a_killed_consumer_did_not_commit_go_to_the_next_member,
                no_message_is_lost_when_a_second_member_joins_and_the_group_rebalances,
                the_tasks_of_a_process_share_one_member_without_duplicates,
                messages_of_one_key_arrive_in_publish_order,
                poll_waits_up_to_wait_when_nothing_arrives,
                poll_returns_early_when_a_message_is_published_meanwhile,
                poll_returns_at_most_max,
                payloads_and_keys_round_trip_byte_for_byte,
                a_family_subscription_reads_every_topic_of_the_family,
                a_poison_message_goes_to_the_dead_letters_after_n_attempts,
                a_member_that_leaves_while_the_group_forms_does_not_stall_the_next,
            );

            #[tokio::test]
            async fn lag_counts_what_the_group_has_not_committed() {
                if !$exact {
                    // Said in the suite's engine list: this engine's test server reports a
                    // wrong high watermark, so lag is checked on the other engines only.
                    return;
                }
                let Some(bus) = $make.await else { return };
                cases::lag_counts_what_the_group_has_not_committed(bus).await
            }

            #[tokio::test]
            async fn replay_from_earliest_delivers_everything_again_and_a_dry_run_moves_nothing() {
                let Some(bus) = $make.await else { return };
                cases::replay_from_earliest_delivers_everything_again_and_a_dry_run_moves_nothing(bus, $exact).await
            }

            #[tokio::test]
            async fn replay_from_a_time_delivers_what_was_published_since() {
                let Some(bus) = $make.await else { return };
                cases::replay_from_a_time_delivers_what_was_published_since(bus, $exact).await
            }
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(bus) = $make.await else { return };
                cases::$case(bus).await
            }
        )*
    };
}

pub mod cases {
    use super::*;
    use herald_core::consume::{DeadLetterMessage, SharedConsumer};
    use herald_core::topics;
    use std::collections::{BTreeMap, HashSet};
    use tokio::time::Instant;

    /// Upper bound on anything expected to happen "soon": generous, only a hang fails it.
    pub const PATIENCE: Duration = Duration::from_secs(30);
    /// How long to look before concluding that nothing (more) is delivered.
    pub const QUIET: Duration = Duration::from_millis(1500);

    /// A unique topic or group name, so cases never see each other's messages.
    pub fn name(what: &str) -> String {
        format!("{what}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
    }

    /// A unique topic in a family of its own (`fam<id>.<leaf>`).
    pub fn topic() -> String {
        format!("{}.t", name("fam"))
    }

    pub fn msg(key: Option<&str>, payload: &[u8]) -> OutMessage {
        OutMessage {
            key: key.map(str::to_owned),
            payload: payload.to_vec(),
        }
    }

    pub fn numbered(prefix: &str, n: usize) -> Vec<OutMessage> {
        (0..n)
            .map(|i| msg(None, format!("{prefix}{i}").as_bytes()))
            .collect()
    }

    pub fn texts(ds: &[Delivery]) -> Vec<String> {
        ds.iter()
            .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
            .collect()
    }

    pub fn receipts(ds: &[Delivery]) -> Vec<String> {
        ds.iter().map(|d| d.receipt.clone()).collect()
    }

    /// Polls until `n` messages came or [`PATIENCE`] ran out.
    pub async fn collect(member: &dyn Consumer, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + PATIENCE;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(
                member
                    .poll(n - out.len(), Duration::from_millis(500))
                    .await
                    .unwrap(),
            );
        }
        out
    }

    /// Polls and commits until `n` messages came; returns them.
    pub async fn drain(member: &dyn Consumer, n: usize) -> Vec<Delivery> {
        let got = collect(member, n).await;
        member.commit(&receipts(&got)).await.unwrap();
        got
    }

    pub async fn assert_quiet(member: &dyn Consumer) {
        let got = member.poll(10, QUIET).await.unwrap();
        assert!(got.is_empty(), "unexpected: {:?}", texts(&got));
    }

    async fn fresh(bus: &dyn Bus) -> (String, String) {
        let (t, g) = (topic(), name("g"));
        bus.subscribe(&t, &g).await.unwrap();
        (t, g)
    }

    pub async fn ping_succeeds(bus: Arc<dyn Bus>) {
        bus.ping().await.unwrap();
    }

    pub async fn every_subscribed_group_receives_every_message(bus: Arc<dyn Bus>) {
        let (t, g1) = fresh(&*bus).await;
        let g2 = name("g");
        bus.subscribe(&t, &g2).await.unwrap();
        bus.subscribe(&t, &g2).await.unwrap(); // idempotent
        bus.publish(&t, &numbered("m", 5)).await.unwrap();
        for g in [&g1, &g2] {
            let member = bus.consumer(&t, g).await.unwrap();
            let mut got = texts(&drain(&*member, 5).await);
            got.sort();
            assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"], "group {g}");
            assert_quiet(&*member).await;
        }
    }

    pub async fn committed_messages_never_come_back(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &numbered("m", 3)).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        drain(&*member, 3).await;
        drop(member);
        let member = bus.consumer(&t, &g).await.unwrap();
        assert_quiet(&*member).await;
    }

    pub async fn a_released_message_comes_back_at_once_with_the_attempt_counted(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &[msg(None, b"again")]).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        let first = collect(&*member, 1).await;
        assert_eq!(first[0].attempt, 1);
        member.release(&receipts(&first)).await.unwrap();
        let second = collect(&*member, 1).await;
        assert_eq!(texts(&second), ["again"]);
        assert_eq!(second[0].attempt, 2);
        member.commit(&receipts(&second)).await.unwrap();
        assert_quiet(&*member).await;
    }

    pub async fn messages_a_killed_consumer_did_not_commit_go_to_the_next_member(
        bus: Arc<dyn Bus>,
    ) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(
            &t,
            &[
                msg(Some("k"), b"a"),
                msg(Some("k"), b"b"),
                msg(Some("k"), b"c"),
            ],
        )
        .await
        .unwrap();
        // A consumer task takes the three, commits the first and is killed mid-work.
        let (took, rx) = tokio::sync::oneshot::channel();
        let task = {
            let (bus, t, g) = (bus.clone(), t.clone(), g.clone());
            tokio::spawn(async move {
                let member = bus.consumer(&t, &g).await.unwrap();
                let got = collect(&*member, 3).await;
                member.commit(&receipts(&got[..1])).await.unwrap();
                took.send(texts(&got)).unwrap();
                std::future::pending::<()>().await;
                drop(member);
            })
        };
        assert_eq!(rx.await.unwrap(), ["a", "b", "c"]);
        task.abort();
        let _ = task.await;

        let next = bus.consumer(&t, &g).await.unwrap();
        let got = drain(&*next, 2).await;
        assert_eq!(texts(&got), ["b", "c"], "the uncommitted two, in order");
        assert_quiet(&*next).await;
    }

    pub async fn no_message_is_lost_when_a_second_member_joins_and_the_group_rebalances(
        bus: Arc<dyn Bus>,
    ) {
        let (t, g) = fresh(&*bus).await;
        let all: Vec<OutMessage> = (0..40)
            .map(|i| msg(Some(&format!("k{}", i % 8)), format!("m{i:02}").as_bytes()))
            .collect();
        bus.publish(&t, &all).await.unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(HashSet::<String>::new()));
        let run = |member: Arc<dyn Consumer>, seen: Arc<parking_lot::Mutex<HashSet<String>>>| async move {
            let deadline = Instant::now() + PATIENCE * 2;
            while seen.lock().len() < 40 && Instant::now() < deadline {
                let got = member.poll(3, Duration::from_millis(300)).await.unwrap();
                seen.lock().extend(texts(&got));
                member.commit(&receipts(&got)).await.unwrap();
            }
            member
        };
        let a = bus.consumer(&t, &g).await.unwrap();
        // A works alone for a while, then B joins: the group rebalances under A's feet.
        let first = collect(&*a, 5).await;
        seen.lock().extend(texts(&first));
        a.commit(&receipts(&first)).await.unwrap();
        let b = bus.consumer(&t, &g).await.unwrap();
        let (a, b) = tokio::join!(run(a, seen.clone()), run(b, seen.clone()));
        let seen = seen.lock().clone();
        let missing: Vec<_> = all
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .filter(|m| !seen.contains(m))
            .collect();
        assert!(missing.is_empty(), "lost across the rebalance: {missing:?}");
        drop((a, b));
    }

    pub async fn the_tasks_of_a_process_share_one_member_without_duplicates(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &numbered("m", 60)).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let member = member.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let deadline = Instant::now() + PATIENCE;
                loop {
                    let got = member.poll(4, Duration::from_millis(800)).await.unwrap();
                    if got.is_empty() && (!mine.is_empty() || Instant::now() > deadline) {
                        return mine;
                    }
                    member.commit(&receipts(&got)).await.unwrap();
                    mine.extend(texts(&got));
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        let mut expected: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        expected.sort();
        assert_eq!(all, expected, "each message once");
    }

    pub async fn messages_of_one_key_arrive_in_publish_order(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        for round in 0..3 {
            let batch: Vec<OutMessage> = (0..10)
                .map(|i| {
                    let key = format!("k{}", i % 3);
                    msg(Some(&key), format!("{key}:{round:02}{i:02}").as_bytes())
                })
                .collect();
            bus.publish(&t, &batch).await.unwrap();
        }
        let member = bus.consumer(&t, &g).await.unwrap();
        let got = drain(&*member, 30).await;
        let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &got {
            let text = String::from_utf8_lossy(&d.payload).into_owned();
            assert_eq!(d.key.as_deref(), text.split(':').next());
            per_key
                .entry(d.key.clone().unwrap())
                .or_default()
                .push(text);
        }
        assert_eq!(per_key.len(), 3);
        for (key, seq) in per_key {
            let mut sorted = seq.clone();
            sorted.sort();
            assert_eq!(seq, sorted, "key {key} out of order");
        }
    }

    pub async fn lag_counts_what_the_group_has_not_committed(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        let other = name("g");
        bus.subscribe(&t, &other).await.unwrap();
        bus.publish(&t, &numbered("m", 5)).await.unwrap();
        assert_eq!(bus.lag(&t, &g).await.unwrap(), 5);
        let member = bus.consumer(&t, &g).await.unwrap();
        let got = collect(&*member, 5).await;
        assert_eq!(bus.lag(&t, &g).await.unwrap(), 5, "polled is not committed");
        let mut sorted = got.clone();
        sorted.sort_by_key(|d| d.payload.clone());
        member.commit(&receipts(&got)).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        while bus.lag(&t, &g).await.unwrap() != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(bus.lag(&t, &g).await.unwrap(), 0);
        assert_eq!(
            bus.lag(&t, &other).await.unwrap(),
            5,
            "groups are independent"
        );
    }

    pub async fn poll_waits_up_to_wait_when_nothing_arrives(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        let member = bus.consumer(&t, &g).await.unwrap();
        let start = Instant::now();
        assert!(member
            .poll(5, Duration::from_millis(700))
            .await
            .unwrap()
            .is_empty());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(650),
            "returned after {waited:?}"
        );
        assert!(waited < PATIENCE, "hung for {waited:?}");
    }

    pub async fn poll_returns_early_when_a_message_is_published_meanwhile(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        let member = bus.consumer(&t, &g).await.unwrap();
        // Join first (Kafka forms the group on the first polls).
        assert!(member.poll(1, QUIET).await.unwrap().is_empty());
        let publisher = {
            let (bus, t) = (bus.clone(), t.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                bus.publish(&t, &[msg(None, b"hello")]).await.unwrap();
            })
        };
        let start = Instant::now();
        let mut got = Vec::new();
        while got.is_empty() && start.elapsed() < PATIENCE {
            got = member.poll(1, PATIENCE).await.unwrap();
        }
        assert_eq!(texts(&got), ["hello"]);
        assert!(start.elapsed() < PATIENCE);
        publisher.await.unwrap();
    }

    pub async fn poll_returns_at_most_max(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &numbered("m", 7)).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        let mut total = 0;
        let deadline = Instant::now() + PATIENCE;
        while total < 7 && Instant::now() < deadline {
            let got = member.poll(3, Duration::from_millis(500)).await.unwrap();
            assert!(got.len() <= 3, "{} > max", got.len());
            total += got.len();
            member.commit(&receipts(&got)).await.unwrap();
        }
        assert_eq!(total, 7);
    }

    pub async fn payloads_and_keys_round_trip_byte_for_byte(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        let binary: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let big = vec![b'x'; 200_000];
        let sent = vec![
            msg(Some("clé 🔑"), &binary),
            msg(None, &big),
            msg(Some("k"), b"{\"json\": true}"),
        ];
        bus.publish(&t, &sent).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        let got = drain(&*member, 3).await;
        let mut got: Vec<(Option<String>, Vec<u8>)> =
            got.into_iter().map(|d| (d.key, d.payload)).collect();
        let mut want: Vec<(Option<String>, Vec<u8>)> =
            sent.into_iter().map(|m| (m.key, m.payload)).collect();
        got.sort();
        want.sort();
        assert!(got == want, "payloads or keys changed on the way");
    }

    pub async fn replay_from_earliest_delivers_everything_again_and_a_dry_run_moves_nothing(
        bus: Arc<dyn Bus>,
        exact: bool,
    ) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &numbered("m", 4)).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        drain(&*member, 4).await;
        // Kafka moves a group only while it has no member: the consumers stop first.
        drop(member);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counted = bus
            .replay(&t, &g, ReplayFrom::Earliest, true)
            .await
            .unwrap();
        if exact {
            assert_eq!(counted, 4);
            assert_eq!(bus.lag(&t, &g).await.unwrap(), 0, "a dry run moves nothing");
        }
        let moved = replay_when_idle(&*bus, &t, &g, ReplayFrom::Earliest).await;
        if exact {
            assert_eq!(moved, 4);
        }
        let member = bus.consumer(&t, &g).await.unwrap();
        let mut got = texts(&drain(&*member, 4).await);
        got.sort();
        assert_eq!(got, ["m0", "m1", "m2", "m3"]);
        assert_quiet(&*member).await;
    }

    /// Replays, retrying while the engine still counts a member that just left (Kafka).
    async fn replay_when_idle(bus: &dyn Bus, t: &str, g: &str, from: ReplayFrom) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match bus.replay(t, g, from.clone(), false).await {
                Ok(n) => return n,
                Err(e)
                    if e.kind == herald_core::ErrorKind::Conflict && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => panic!("replay: {e}"),
            }
        }
    }

    pub async fn replay_from_a_time_delivers_what_was_published_since(
        bus: Arc<dyn Bus>,
        exact: bool,
    ) {
        let (t, g) = fresh(&*bus).await;
        bus.publish(&t, &numbered("old", 3)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let since = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        bus.publish(&t, &numbered("new", 2)).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        drain(&*member, 5).await;
        drop(member);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counted = bus
            .replay(&t, &g, ReplayFrom::Time(since), true)
            .await
            .unwrap();
        let moved = replay_when_idle(&*bus, &t, &g, ReplayFrom::Time(since)).await;
        let member = bus.consumer(&t, &g).await.unwrap();
        if exact {
            assert_eq!((counted, moved), (2, 2));
            let mut got = texts(&drain(&*member, 2).await);
            got.sort();
            assert_eq!(got, ["new0", "new1"]);
            assert_quiet(&*member).await;
        } else {
            // At least what was published since (see the engine list).
            let mut got = Vec::new();
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline
                && !(got.contains(&"new0".to_owned()) && got.contains(&"new1".to_owned()))
            {
                let more = member.poll(10, QUIET).await.unwrap();
                member.commit(&receipts(&more)).await.unwrap();
                got.extend(texts(&more));
            }
            assert!(
                got.contains(&"new0".to_owned()) && got.contains(&"new1".to_owned()),
                "{got:?}"
            );
        }
    }

    pub async fn a_family_subscription_reads_every_topic_of_the_family(bus: Arc<dyn Bus>) {
        let family = name("fam");
        let (a, b) = (format!("{family}.a"), format!("{family}.b"));
        let workers = name("g");
        bus.subscribe(&a, &workers).await.unwrap();
        bus.subscribe(&b, &workers).await.unwrap();
        let audit = name("audit");
        let pattern = format!("{family}.>");
        bus.subscribe(&pattern, &audit).await.unwrap();
        let auditor = bus.consumer(&pattern, &audit).await.unwrap();
        bus.publish(&a, &[msg(None, b"to a")]).await.unwrap();
        bus.publish(&b, &[msg(None, b"to b")]).await.unwrap();
        let mut got = texts(&drain(&*auditor, 2).await);
        got.sort();
        assert_eq!(got, ["to a", "to b"]);
        // The topics' own group is unaffected.
        let only_a = bus.consumer(&a, &workers).await.unwrap();
        assert_eq!(texts(&drain(&*only_a, 1).await), ["to a"]);
        assert_quiet(&*only_a).await;
    }

    pub async fn a_member_that_leaves_while_the_group_forms_does_not_stall_the_next(
        bus: Arc<dyn Bus>,
    ) {
        let (t, g) = fresh(&*bus).await;
        let early = bus.consumer(&t, &g).await.unwrap();
        assert!(early
            .poll(1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
        drop(early);
        bus.publish(&t, &[msg(None, b"after")]).await.unwrap();
        let next = bus.consumer(&t, &g).await.unwrap();
        let start = Instant::now();
        let got = drain(&*next, 1).await;
        assert_eq!(
            texts(&got),
            ["after"],
            "nothing within {:?}",
            start.elapsed()
        );
    }

    pub async fn a_poison_message_goes_to_the_dead_letters_after_n_attempts(bus: Arc<dyn Bus>) {
        let (t, g) = fresh(&*bus).await;
        let dead = topics::dead_letter_topic(&t);
        let watchers = name("dead");
        bus.subscribe(&dead, &watchers).await.unwrap();
        bus.publish(
            &t,
            &[msg(Some("p"), b"{\"poison\":1}"), msg(None, b"\"fine\"")],
        )
        .await
        .unwrap();
        let shared = SharedConsumer::new(bus.clone(), &t, &g);
        let max = 3;
        let (mut fine, mut attempts) = (0, Vec::new());
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline && (fine == 0 || attempts.last() != Some(&max)) {
            for held in shared.poll(2, Duration::from_millis(500)).await.unwrap() {
                if held.payload() == b"\"fine\"" {
                    fine += 1;
                    held.commit().await.unwrap();
                } else {
                    attempts.push(held.attempt());
                    let e = herald_core::Error::invalid("cannot handle this");
                    held.failed(&*bus, &t, &g, &e, max).await.unwrap();
                }
            }
        }
        assert_eq!(fine, 1);
        assert_eq!(attempts, [1, 2, 3], "three attempts, then the dead letters");
        let letters = bus.consumer(&dead, &watchers).await.unwrap();
        let got = drain(&*letters, 1).await;
        assert_eq!(got.len(), 1);
        let letter: DeadLetterMessage = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(
            (letter.topic.as_str(), letter.group.as_str()),
            (t.as_str(), g.as_str())
        );
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.payload, serde_json::json!({"poison": 1}));
        assert!(
            letter.reason.contains("cannot handle this"),
            "{}",
            letter.reason
        );
        // The poison message is done with: it does not come back.
        let member = shared.member().await.unwrap();
        assert_quiet(&*member).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Engines

/// One SQLite file per bus, under the target's temporary directory.
async fn sqlite_bus() -> Option<Arc<dyn Bus>> {
    Some(
        herald_storage::open_bus(&common::fresh_sqlite_url("bus"))
            .await
            .expect("open SQLite bus"),
    )
}

async fn env_bus(var: &str) -> Option<Arc<dyn Bus>> {
    let url = common::env_url(var)?;
    Some(
        herald_storage::open_bus(&url)
            .await
            .unwrap_or_else(|e| panic!("{var} is set but the bus is unusable: {e}")),
    )
}

bus_conformance!(sqlite, sqlite_bus(), exact_offsets: true);
// tansu (the Kafka-protocol broker these machines run) reports a wrong high watermark after
// batched produces, so lag and replay counts are not checked against it, and a replay may
// deliver a few messages before its start (at least once still holds); set
// HERALD_TEST_KAFKA_EXACT=1 on a real cluster to check them exactly.
bus_conformance!(
    kafka,
    env_bus("HERALD_TEST_KAFKA_URL"),
    exact_offsets: std::env::var("HERALD_TEST_KAFKA_EXACT").is_ok_and(|v| v == "1")
);
bus_conformance!(nats, env_bus("HERALD_TEST_NATS_URL"), exact_offsets: true);

/// Durability across processes: what one bus published and did not commit, a bus opened again
/// on the same storage delivers.
mod reopen {
    use super::*;

    async fn survives(url: herald_storage::BackendUrl) {
        let (t, g) = (cases::topic(), cases::name("g"));
        {
            let bus = herald_storage::open_bus(&url).await.unwrap();
            bus.subscribe(&t, &g).await.unwrap();
            bus.publish(&t, &cases::numbered("m", 3)).await.unwrap();
            let member = bus.consumer(&t, &g).await.unwrap();
            cases::drain(&*member, 1).await;
        }
        let bus = herald_storage::open_bus(&url).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        let got = cases::drain(&*member, 2).await;
        assert_eq!(got.len(), 2, "the two uncommitted messages");
        cases::assert_quiet(&*member).await;
    }

    #[tokio::test]
    async fn sqlite_messages_survive_reopening_the_file() {
        survives(common::fresh_sqlite_url("bus")).await
    }

    #[tokio::test]
    async fn kafka_messages_survive_a_new_client() {
        if let Some(url) = common::env_url("HERALD_TEST_KAFKA_URL") {
            survives(url).await
        }
    }

    #[tokio::test]
    async fn nats_messages_survive_a_new_client() {
        if let Some(url) = common::env_url("HERALD_TEST_NATS_URL") {
            survives(url).await
        }
    }
}

/// A process stopping with a Kafka member still held by one of its tasks stops at once: the
/// member leaves its group on a thread of its own. (Closing a consumer blocks and librdkafka
/// bounds none of it: run where the last handle dropped, inside the runtime's shutdown, one
/// once held a test process 53 minutes.) The group is not left stuck by the member that went
/// away in the middle of joining: the next member gets what is published.
#[test]
fn a_runtime_stopping_with_a_kafka_member_held_does_not_wait_for_it_to_leave_its_group() {
    let Some(url) = common::env_url("HERALD_TEST_KAFKA_URL") else {
        return;
    };
    let (t, g) = (cases::topic(), cases::name("g"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = herald_storage::open_bus(&url).await.unwrap();
        bus.subscribe(&t, &g).await.unwrap();
        let member = bus.consumer(&t, &g).await.unwrap();
        // A role's task, polling when the process stops.
        tokio::spawn(async move {
            loop {
                let _ = member.poll(10, Duration::from_millis(200)).await;
            }
        });
        tokio::task::yield_now().await;
    });
    drop(rt);
    // Joining alone takes round trips to the broker (and the broker's initial rebalance
    // delay, 3 s on Kafka and tansu), so the member dropped a moment ago is still leaving.
    assert!(
        !herald_storage::wait_for_bus_closes(Duration::ZERO),
        "the runtime waited for the member to leave its group"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = herald_storage::open_bus(&url).await.unwrap();
        bus.publish(&t, &cases::numbered("after", 3)).await.unwrap();
        let next = bus.consumer(&t, &g).await.unwrap();
        let mut got = cases::texts(&cases::drain(&*next, 3).await);
        got.sort();
        assert_eq!(got, ["after0", "after1", "after2"]);
    });
}

/// The SQLite log keeps committed messages for replays, and purges them after retention.
#[tokio::test]
async fn the_sqlite_log_purges_committed_messages_only() {
    let url = common::fresh_sqlite_url("bus");
    let bus = herald_storage::sqlite::SqliteBus::open(&url).await.unwrap();
    let (t, g) = (cases::topic(), cases::name("g"));
    bus.subscribe(&t, &g).await.unwrap();
    bus.publish(&t, &cases::numbered("m", 4)).await.unwrap();
    let member = bus.consumer(&t, &g).await.unwrap();
    let got = cases::collect(&*member, 4).await;
    member.commit(&cases::receipts(&got[..2])).await.unwrap();
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        bus.purge_before(future).await.unwrap(),
        2,
        "the two committed"
    );
    assert_eq!(
        bus.replay(&t, &g, ReplayFrom::Earliest, true)
            .await
            .unwrap(),
        2,
        "only the uncommitted are left to replay"
    );
}

/// A member waiting on the SQLite bus hears what another process (here a second bus opened on
/// the same file, which shares no in-process wake-up with the first) publishes, from the watch
/// of the file, well before its fallback look a second later. (A bound on time, but the one
/// that tells a wake-up from the fallback: the watch looks every 50 ms.)
#[tokio::test]
async fn a_waiting_sqlite_member_is_woken_by_another_process_publishing() {
    let url = common::fresh_sqlite_url("bus");
    let here = herald_storage::sqlite::SqliteBus::open(&url).await.unwrap();
    let there = herald_storage::sqlite::SqliteBus::open(&url).await.unwrap();
    let (t, g) = (cases::topic(), cases::name("g"));
    here.subscribe(&t, &g).await.unwrap();
    let member = here.consumer(&t, &g).await.unwrap();
    assert!(
        member
            .poll(1, std::time::Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty(),
        "nothing yet"
    );
    let waiting = tokio::spawn({
        let member = member.clone();
        async move {
            let got = member.poll(1, std::time::Duration::from_secs(5)).await;
            (got, std::time::Instant::now())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    there.publish(&t, &cases::numbered("m", 1)).await.unwrap();
    let published = std::time::Instant::now();
    let (got, at) = waiting.await.unwrap();
    assert_eq!(got.unwrap().len(), 1, "the other process's message");
    let after = at.duration_since(published);
    assert!(
        after < std::time::Duration::from_millis(700),
        "woken by the watch, not the fallback look after 1 s: {after:?}"
    );
}

/// `ping` (what `/readyz` asks of the bus) on Kafka asks the cluster for one topic, so a
/// deployment whose topics do not exist yet is ready too; with no broker answering it fails
/// as `Unavailable` within its bound instead of hanging.
#[tokio::test]
async fn a_kafka_ping_answers_for_a_deployment_without_topics_and_fails_with_no_broker() {
    if let Ok(raw) = std::env::var("HERALD_TEST_KAFKA_URL") {
        let sep = if raw.contains('?') { '&' } else { '?' };
        let url = format!("{raw}{sep}prefix={}", cases::name("ping"));
        let bus = herald_storage::open_bus(&herald_storage::BackendUrl::parse(&url).unwrap())
            .await
            .expect("a bus on a prefix without topics opens");
        bus.ping().await.expect("and answers its ping");
    }
    let started = std::time::Instant::now();
    let url = herald_storage::BackendUrl::parse("kafka://127.0.0.1:1").unwrap();
    let err = match herald_storage::open_bus(&url).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert_eq!(err.kind, herald_core::ErrorKind::Unavailable, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
