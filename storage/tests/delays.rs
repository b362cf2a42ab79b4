//! Conformance suite of the `DelayStore` port: messages kept until due, claimed under a lease,
//! removed under the claim's token.
//!
//! Always on SQLite, on MySQL/MariaDB when `HERALD_TEST_MYSQL_URL` is set, on Redis when
//! `HERALD_TEST_REDIS_URL` is set. A claim takes every due message of the store, so each case
//! has a store of its own: a fresh SQLite file, a fresh MySQL database, a fresh Redis key prefix.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::utc;
use herald_core::model::OutMessage;
use herald_core::ports::{DelayStore, DelayedMessage};
use std::sync::Arc;
use std::time::Duration as StdDuration;

const LEASE: StdDuration = StdDuration::from_secs(30);

fn at(s: &str) -> DateTime<Utc> {
    utc(s)
}

fn delayed(id: &str, topic: &str, due: &str) -> DelayedMessage {
    DelayedMessage {
        id: id.to_owned(),
        topic: topic.to_owned(),
        message: OutMessage {
            key: Some(format!("key-of-{id}")),
            payload: format!("payload of {id}").into_bytes(),
        },
        due: at(due),
    }
}

fn ids(messages: &[DelayedMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.id.as_str()).collect()
}

pub mod cases {
    use super::*;

    pub async fn messages_are_claimed_once_due_earliest_first_as_they_were_scheduled(
        d: Arc<dyn DelayStore>,
    ) {
        let b = delayed("b", "channel.push", "2026-05-01T10:02:00Z");
        let a = delayed("a", "channel.email", "2026-05-01T10:01:00Z");
        let c = delayed("c", "channel.push", "2026-05-01T10:03:00Z");
        d.schedule(&[b.clone(), a.clone(), c.clone()])
            .await
            .unwrap();
        assert_eq!(d.pending().await.unwrap(), 3);
        assert_eq!(d.next_due().await.unwrap(), Some(a.due));

        let early = d
            .claim_due(at("2026-05-01T10:00:59Z"), 10, LEASE)
            .await
            .unwrap();
        assert!(early.messages.is_empty(), "nothing is due yet");

        let claim = d
            .claim_due(at("2026-05-01T10:02:30Z"), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(
            claim.messages,
            vec![a, b],
            "due ones, earliest first, whole"
        );
        d.remove(&claim.token, &["a".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(d.pending().await.unwrap(), 1);
        assert_eq!(d.next_due().await.unwrap(), Some(c.due));
    }

    pub async fn a_claim_takes_at_most_its_limit(d: Arc<dyn DelayStore>) {
        let all: Vec<DelayedMessage> = (0..25)
            .map(|i| {
                delayed(
                    &format!("m{i:02}"),
                    "fanout.batches",
                    "2026-05-01T10:00:00Z",
                )
            })
            .collect();
        d.schedule(&all).await.unwrap();
        let now = at("2026-05-01T11:00:00Z");
        let first = d.claim_due(now, 10, LEASE).await.unwrap();
        let second = d.claim_due(now, 10, LEASE).await.unwrap();
        let third = d.claim_due(now, 10, LEASE).await.unwrap();
        assert_eq!(
            (
                first.messages.len(),
                second.messages.len(),
                third.messages.len()
            ),
            (10, 10, 5)
        );
        let mut seen: Vec<&str> = ids(&first.messages);
        seen.extend(ids(&second.messages));
        seen.extend(ids(&third.messages));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 25, "no message in two claims");
    }

    pub async fn a_claim_not_removed_within_its_lease_is_claimed_again(d: Arc<dyn DelayStore>) {
        d.schedule(&[delayed("x", "channel.sms", "2026-05-01T10:00:00Z")])
            .await
            .unwrap();
        let now = at("2026-05-01T10:00:10Z");
        let first = d.claim_due(now, 10, LEASE).await.unwrap();
        assert_eq!(ids(&first.messages), ["x"]);
        let within = d
            .claim_due(now + Duration::seconds(29), 10, LEASE)
            .await
            .unwrap();
        assert!(within.messages.is_empty(), "held by the first claim");
        // The first publisher died: after the lease another one takes the message over, with
        // the due time it was scheduled for.
        let after = d
            .claim_due(now + Duration::seconds(31), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(ids(&after.messages), ["x"]);
        assert_eq!(after.messages[0].due, at("2026-05-01T10:00:00Z"));
        // The stale claim's removal no longer applies; the new one's does.
        d.remove(&first.token, &["x".into()]).await.unwrap();
        assert_eq!(d.pending().await.unwrap(), 1);
        d.remove(&after.token, &["x".into()]).await.unwrap();
        assert_eq!(d.pending().await.unwrap(), 0);
        assert_eq!(d.next_due().await.unwrap(), None);
    }

    pub async fn scheduling_an_id_again_replaces_it_even_while_it_is_claimed(
        d: Arc<dyn DelayStore>,
    ) {
        d.schedule(&[delayed("k", "channel.push", "2026-05-01T10:00:00Z")])
            .await
            .unwrap();
        // Scheduled twice (a redelivered message deferred again): still one message.
        let mut later = delayed("k", "channel.push", "2026-05-01T10:05:00Z");
        later.message.payload = b"second".to_vec();
        d.schedule(std::slice::from_ref(&later)).await.unwrap();
        assert_eq!(d.pending().await.unwrap(), 1);
        assert!(d
            .claim_due(at("2026-05-01T10:01:00Z"), 10, LEASE)
            .await
            .unwrap()
            .messages
            .is_empty());
        let claim = d
            .claim_due(at("2026-05-01T10:05:00Z"), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(claim.messages, vec![later.clone()]);
        // Published, then deferred once more under the same id before the publisher removed
        // it: the removal must not take the new scheduling with it.
        let again = delayed("k", "channel.push", "2026-05-01T10:10:00Z");
        d.schedule(std::slice::from_ref(&again)).await.unwrap();
        d.remove(&claim.token, &["k".into()]).await.unwrap();
        assert_eq!(d.pending().await.unwrap(), 1, "the new scheduling is kept");
        let next = d
            .claim_due(at("2026-05-01T10:10:00Z"), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(next.messages, vec![again]);
    }

    pub async fn concurrent_claims_never_hand_out_a_message_twice(d: Arc<dyn DelayStore>) {
        let all: Vec<DelayedMessage> = (0..200)
            .map(|i| delayed(&format!("c{i:03}"), "channel.email", "2026-05-01T10:00:00Z"))
            .collect();
        d.schedule(&all).await.unwrap();
        let now = at("2026-05-01T10:00:01Z");
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let claim = d.claim_due(now, 15, LEASE).await.unwrap();
                        if claim.messages.is_empty() {
                            return got;
                        }
                        let ids: Vec<String> =
                            claim.messages.iter().map(|m| m.id.clone()).collect();
                        d.remove(&claim.token, &ids).await.unwrap();
                        got.extend(ids);
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        for p in publishers {
            seen.extend(p.await.unwrap());
        }
        let total = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!((total, seen.len()), (200, 200), "each message claimed once");
        assert_eq!(d.pending().await.unwrap(), 0);
    }

    pub async fn payloads_and_keys_read_back_byte_for_byte(d: Arc<dyn DelayStore>) {
        let mut m = delayed("bin", "channel.webhook", "2026-05-01T10:00:00Z");
        m.message.payload = (0..=255u8).collect();
        m.message.key = None;
        d.schedule(std::slice::from_ref(&m)).await.unwrap();
        let claim = d
            .claim_due(at("2026-05-01T10:00:00Z"), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(claim.messages, vec![m]);
    }
}

macro_rules! delay_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            delay_conformance!(@cases $make;
                messages_are_claimed_once_due_earliest_first_as_they_were_scheduled,
                a_claim_takes_at_most_its_limit,
                a_claim_not_removed_within_its_lease_is_claimed_again,
                scheduling_an_id_again_replaces_it_even_while_it_is_claimed,
                concurrent_claims_never_hand_out_a_message_twice,
                payloads_and_keys_read_back_byte_for_byte,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(s) = $make.await {
                    cases::$case(s).await;
                }
            }
        )*
    };
}

delay_conformance!(sqlite, common::sqlite_delays());
delay_conformance!(mysql, common::mysql_delays());
delay_conformance!(redis, common::redis_delays());
