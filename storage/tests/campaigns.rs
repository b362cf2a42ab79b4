//! Conformance suite of the `CampaignStore` port, run against every engine.

mod common;

use chrono::{Duration, Utc};
use common::{run_id, utc};
use herald_core::model::*;
use herald_core::ports::{CampaignStore, IdempotencyClaim};
use herald_core::ErrorKind;
use std::sync::Arc;

/// A campaign whose id sorts by creation: `{p}-{n}` with a zero-padded n.
fn campaign(id: &str, status: CampaignStatus) -> Campaign {
    Campaign {
        id: id.to_owned(),
        audience: Audience::Segment("premium".into()),
        content: CampaignContent::Inline(TitleBody {
            title: "Sale".into(),
            body: "Today only".into(),
        }),
        channels: vec![Channel::InApp, Channel::Push],
        category: Some("marketing".into()),
        priority: Priority::High,
        data: serde_json::json!({"code": "SALE"}),
        starts_at: None,
        expires_at: Some(utc("2026-02-01T00:00:00Z")),
        strategy: Strategy::Batch,
        push_when: PushWhen::Always,
        online_push_delay_s: None,
        status,
        audience_size: 0,
        progress: Progress::default(),
        deliveries: Default::default(),
        created_at: utc("2026-01-01T00:00:00Z"),
        started_at: None,
        completed_at: None,
        checkpoint: Checkpoint::default(),
    }
}

pub mod cases {
    use super::*;

    pub async fn a_campaign_reads_back_as_written_and_ids_are_unique(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::Sizing);
        s.insert_campaign(&c).await.unwrap();
        assert_eq!(s.get_campaign(&c.id).await.unwrap(), Some(c.clone()));
        let err = s.insert_campaign(&c).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(s
            .get_campaign(&format!("{p}-none"))
            .await
            .unwrap()
            .is_none());
    }

    pub async fn transitions_are_compare_and_set_and_stamp_times(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::Sizing);
        s.insert_campaign(&c).await.unwrap();
        let t1 = utc("2026-01-01T00:01:00Z");
        let t2 = utc("2026-01-01T00:02:00Z");
        assert!(!s
            .transition(
                &c.id,
                &[CampaignStatus::Scheduled],
                CampaignStatus::FanningOut,
                t1
            )
            .await
            .unwrap());
        assert!(s
            .transition(
                &c.id,
                &[CampaignStatus::Sizing],
                CampaignStatus::FanningOut,
                t1
            )
            .await
            .unwrap());
        assert!(s
            .transition(
                &c.id,
                &[CampaignStatus::FanningOut],
                CampaignStatus::Completed,
                t2
            )
            .await
            .unwrap());
        // A cancel racing the completion loses.
        assert!(!s
            .transition(
                &c.id,
                &[CampaignStatus::Sizing, CampaignStatus::FanningOut],
                CampaignStatus::Cancelled,
                t2
            )
            .await
            .unwrap());
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.status, CampaignStatus::Completed);
        assert_eq!(got.started_at, Some(t1));
        assert_eq!(got.completed_at, Some(t2));
    }

    pub async fn a_batch_is_counted_once_however_often_it_is_recorded(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        s.set_sizing(&c.id, 2_500, 3).await.unwrap();
        let delta = Progress {
            notifications_written: 990,
            skipped_opted_out: 7,
            deferred_quiet_hours: 3,
            failed_render: 2,
            ..Default::default()
        };
        let queued = [
            (
                Channel::Push,
                DeliveryCounts {
                    queued: 990,
                    suppressed_online: 5,
                    ..Default::default()
                },
            ),
            (Channel::Email, DeliveryCounts::default()),
        ];
        let failure = |b: u64, u: &str| RecipientFailure {
            batch_no: b,
            user_id: Some(u.to_owned()),
            reason: format!("push.body: template does not render for {u}"),
        };
        let f0 = [failure(0, "a"), failure(0, "b")];
        assert!(s
            .record_batch(&c.id, 0, &delta, &queued, &f0)
            .await
            .unwrap());
        assert!(
            !s.record_batch(&c.id, 0, &delta, &queued, &f0)
                .await
                .unwrap(),
            "replay ignored"
        );
        assert!(s
            .record_batch(&c.id, 1, &delta, &queued, &[failure(1, "c")])
            .await
            .unwrap());
        assert_eq!(
            s.campaign_failures(&c.id).await.unwrap(),
            [failure(0, "a"), failure(0, "b"), failure(1, "c")],
            "the sample, once, in order"
        );
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.audience_size, 2_500);
        assert_eq!(
            got.progress,
            Progress {
                batches_total: 3,
                batches_done: 2,
                notifications_written: 1_980,
                skipped_opted_out: 14,
                deferred_quiet_hours: 6,
                failed_render: 4,
                failed_batches: 0,
            }
        );
        assert_eq!(
            got.deliveries[&Channel::Push].queued,
            1_980,
            "queued counted once"
        );
        assert_eq!(
            got.deliveries[&Channel::Push].suppressed_online,
            10,
            "suppressed counted once"
        );
        assert!(!got.all_batches_done());
    }

    pub async fn checkpoints_survive_and_fix_the_batch_total_when_done(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        s.set_sizing(&c.id, 3_000, 3).await.unwrap();
        let mid = Checkpoint {
            next_batch: 2,
            after_user: Some("user-02000".into()),
            batching_done: false,
        };
        let lease = s
            .acquire_lease(
                &c.id,
                "owner-a",
                Utc::now(),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap()
            .expect("a free lease");
        assert!(s.save_checkpoint(&lease, &mid).await.unwrap());
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.checkpoint, mid);
        assert_eq!(
            got.progress.batches_total, 3,
            "estimate kept while batching"
        );
        // The audience shrank meanwhile: two batches in the end.
        let done = Checkpoint {
            batching_done: true,
            ..mid
        };
        assert!(s.save_checkpoint(&lease, &done).await.unwrap());
        for b in 0..2 {
            s.record_batch(&c.id, b, &Progress::default(), &[], &[])
                .await
                .unwrap();
        }
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.progress.batches_total, 2);
        assert!(got.all_batches_done());
    }

    pub async fn a_campaign_keeps_a_bounded_sample_of_failures(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        for b in 0..5u64 {
            let failures: Vec<RecipientFailure> = (0..8)
                .map(|i| RecipientFailure {
                    batch_no: b,
                    user_id: Some(format!("u{b}-{i}")),
                    reason: "x".into(),
                })
                .collect();
            let delta = Progress {
                failed_render: 8,
                ..Default::default()
            };
            s.record_batch(&c.id, b, &delta, &[], &failures)
                .await
                .unwrap();
        }
        let kept = s.campaign_failures(&c.id).await.unwrap();
        assert_eq!(kept.len(), herald_core::ports::KEPT_FAILURES);
        assert_eq!(kept[0].user_id.as_deref(), Some("u0-0"));
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.progress.failed_render, 40, "every failure counted");
        assert!(s.campaign_failures("no-such").await.unwrap().is_empty());
    }

    pub async fn rules_are_upserted_listed_and_deleted(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let t0 = utc("2026-01-01T00:00:00Z");
        let t1 = utc("2026-01-02T00:00:00Z");
        let rule = |event_type: String, at| Rule {
            event_type,
            template: "order-shipped".into(),
            channels: vec![Channel::InApp, Channel::Push],
            priority: Priority::High,
            category: Some("orders".into()),
            condition: Some(
                herald_core::filter::Filter::parse(
                    &serde_json::json!({"attr": "amount", "gt": 1000}),
                )
                .unwrap(),
            ),
            push_when: PushWhen::Offline,
            online_push_delay_s: Some(30),
            digest: Some(DigestRule {
                key: Some("post".into()),
                window_s: 600,
            }),
            created_at: at,
            updated_at: at,
        };
        s.put_rule(&rule(format!("{p}.a"), t0)).await.unwrap();
        s.put_rule(&rule(format!("{p}.b"), t0)).await.unwrap();
        s.put_rule(&rule(format!("{p}.a"), t1)).await.unwrap();
        let a = s.get_rule(&format!("{p}.a")).await.unwrap().unwrap();
        assert_eq!(a.created_at, t0);
        assert_eq!(a.updated_at, t1);
        assert_eq!(a.condition, rule(String::new(), t0).condition);
        let listed: Vec<String> = s
            .list_rules(Some(&p), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event_type)
            .filter(|e| e.starts_with(&p))
            .collect();
        assert_eq!(listed, vec![format!("{p}.a"), format!("{p}.b")]);
        assert!(s.delete_rule(&format!("{p}.a")).await.unwrap());
        assert!(!s.delete_rule(&format!("{p}.a")).await.unwrap());
        assert!(s.get_rule(&format!("{p}.a")).await.unwrap().is_none());
    }

    pub async fn a_delivery_report_is_counted_once_however_often_it_is_recorded(
        s: Arc<dyn CampaignStore>,
    ) {
        let c = campaign(&format!("{}-1", run_id()), CampaignStatus::Completed);
        s.insert_campaign(&c).await.unwrap();
        let report = DeliveryCounts {
            queued: 0,
            sent: 7,
            failed: 3,
            suppressed_online: 1,
            cancelled: 0,
        };
        assert!(s
            .record_deliveries(&c.id, "c/0/push/0", Channel::Push, &report)
            .await
            .unwrap());
        assert!(
            !s.record_deliveries(&c.id, "c/0/push/0", Channel::Push, &report)
                .await
                .unwrap(),
            "a redelivered report is ignored"
        );
        assert!(s
            .record_deliveries(&c.id, "c/0/push/1", Channel::Push, &report)
            .await
            .unwrap());
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(
            got.deliveries[&Channel::Push],
            DeliveryCounts {
                queued: 0,
                sent: 14,
                failed: 6,
                suppressed_online: 2,
                cancelled: 0,
            }
        );
    }

    pub async fn delivery_counters_add_up_per_channel(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        let queued = DeliveryCounts {
            queued: 10,
            ..Default::default()
        };
        let sent = DeliveryCounts {
            sent: 8,
            failed: 2,
            ..Default::default()
        };
        let cancelled = DeliveryCounts {
            cancelled: 3,
            ..Default::default()
        };
        s.add_deliveries(&c.id, Channel::Push, &queued)
            .await
            .unwrap();
        s.add_deliveries(&c.id, Channel::Push, &sent).await.unwrap();
        s.add_deliveries(&c.id, Channel::Push, &cancelled)
            .await
            .unwrap();
        s.add_deliveries(&c.id, Channel::Email, &queued)
            .await
            .unwrap();
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(
            got.deliveries[&Channel::Push],
            DeliveryCounts {
                queued: 10,
                sent: 8,
                failed: 2,
                suppressed_online: 0,
                cancelled: 3,
            }
        );
        assert_eq!(got.deliveries[&Channel::Email].queued, 10);
        assert!(!got.deliveries.contains_key(&Channel::Sms));
    }

    pub async fn listing_pages_newest_first_and_filters_by_status(s: Arc<dyn CampaignStore>) {
        // Ids of real campaigns are UUIDv7, time-ordered; here a shared prefix and a counter.
        let p = format!("zz{}", run_id());
        for i in 0..5 {
            let status = if i % 2 == 0 {
                CampaignStatus::Completed
            } else {
                CampaignStatus::Cancelled
            };
            s.insert_campaign(&campaign(&format!("{p}-{i}"), status))
                .await
                .unwrap();
        }
        // Other tests' campaigns sort below "zz…", ours come first from the top.
        let before = format!("{p}-9");
        let page = s.list_campaigns(None, Some(&before), 2).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, vec![format!("{p}-4"), format!("{p}-3")]);
        let next = s.list_campaigns(None, Some(ids[1]), 2).await.unwrap();
        assert_eq!(next[0].id, format!("{p}-2"));
        let done = s
            .list_campaigns(Some(CampaignStatus::Completed), Some(&before), 10)
            .await
            .unwrap();
        let ours: Vec<String> = done
            .into_iter()
            .map(|c| c.id)
            .filter(|id| id.starts_with(&p))
            .collect();
        assert_eq!(
            ours,
            vec![format!("{p}-4"), format!("{p}-2"), format!("{p}-0")]
        );
    }

    pub async fn scheduled_campaigns_become_due_at_their_start(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let start = utc("2026-06-01T12:00:00Z");
        let mut c = campaign(&format!("{p}-1"), CampaignStatus::Scheduled);
        c.starts_at = Some(start);
        s.insert_campaign(&c).await.unwrap();
        let ours = |v: Vec<Campaign>| v.into_iter().any(|x| x.id == c.id);
        assert!(!ours(
            s.due_campaigns(start - Duration::seconds(1), 1000)
                .await
                .unwrap()
        ));
        assert!(ours(s.due_campaigns(start, 1000).await.unwrap()));
        s.transition(
            &c.id,
            &[CampaignStatus::Scheduled],
            CampaignStatus::Sizing,
            start,
        )
        .await
        .unwrap();
        assert!(!ours(s.due_campaigns(start, 1000).await.unwrap()));
    }

    pub async fn an_idempotency_key_is_claimed_once_and_replays_its_response(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let key = format!("{p}-key");
        let expires = Utc::now() + Duration::hours(24);
        assert_eq!(
            s.claim_idempotency_key(&key, "hash-a", "campaign-1", expires)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        // In flight: the second claimer sees no response yet, and the first one's resource.
        match s
            .claim_idempotency_key(&key, "hash-a", "campaign-2", expires)
            .await
            .unwrap()
        {
            IdempotencyClaim::Existing(r) => {
                assert_eq!(r.request_hash, "hash-a");
                assert_eq!(r.resource_id, "campaign-1");
                assert_eq!(r.response, None);
            }
            other => panic!("expected existing, got {other:?}"),
        }
        s.complete_idempotency_key(&key, 202, b"{\"id\":\"x\"}")
            .await
            .unwrap();
        match s
            .claim_idempotency_key(&key, "hash-b", "campaign-3", expires)
            .await
            .unwrap()
        {
            IdempotencyClaim::Existing(r) => {
                assert_eq!(r.request_hash, "hash-a");
                assert_eq!(r.resource_id, "campaign-1");
                assert_eq!(r.response, Some((202, b"{\"id\":\"x\"}".to_vec())));
            }
            other => panic!("expected existing, got {other:?}"),
        }
    }

    pub async fn an_invalid_requests_or_expired_idempotency_key_can_be_claimed_again(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let key = format!("{p}-key");
        let later = Utc::now() + Duration::hours(24);
        s.claim_idempotency_key(&key, "h", "r1", later)
            .await
            .unwrap();
        // Only the claim bound to that resource, and only while unanswered, is given back.
        s.release_idempotency_key(&key, "someone-else")
            .await
            .unwrap();
        assert!(matches!(
            s.claim_idempotency_key(&key, "h", "r2", later)
                .await
                .unwrap(),
            IdempotencyClaim::Existing(_)
        ));
        s.release_idempotency_key(&key, "r1").await.unwrap();
        assert_eq!(
            s.claim_idempotency_key(&key, "h2", "r3", later)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        s.complete_idempotency_key(&key, 202, b"{}").await.unwrap();
        s.release_idempotency_key(&key, "r3").await.unwrap();
        assert!(
            matches!(
                s.claim_idempotency_key(&key, "h2", "r4", later).await.unwrap(),
                IdempotencyClaim::Existing(r) if r.response.is_some()
            ),
            "an answered key is never released"
        );

        let old_key = format!("{p}-old");
        let past = Utc::now() - Duration::seconds(1);
        s.claim_idempotency_key(&old_key, "h", "r", past)
            .await
            .unwrap();
        s.complete_idempotency_key(&old_key, 202, b"{}")
            .await
            .unwrap();
        assert_eq!(
            s.claim_idempotency_key(&old_key, "h3", "r", later)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed,
            "an expired key is free"
        );

        let purged_key = format!("{p}-purged");
        s.claim_idempotency_key(&purged_key, "h", "r", past)
            .await
            .unwrap();
        assert!(s.purge_idempotency_keys(Utc::now()).await.unwrap() >= 1);
        assert_eq!(
            s.claim_idempotency_key(&purged_key, "h", "r", later)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
    }

    pub async fn a_campaign_lease_has_one_owner_is_renewed_and_taken_over_when_it_expires(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let ttl = std::time::Duration::from_secs(10);
        let c = campaign(&format!("{p}-lease"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        let t0 = Utc::now();
        let a = s
            .acquire_lease(&c.id, "a", t0, ttl)
            .await
            .unwrap()
            .expect("free");
        assert_eq!(a.owner, "a");
        assert!(
            s.acquire_lease(&c.id, "b", t0 + Duration::seconds(5), ttl)
                .await
                .unwrap()
                .is_none(),
            "held by a"
        );
        // Renewed at +5 s, it holds at +12 s; expired at +16 s, b takes it with a higher fence.
        assert!(s
            .renew_lease(&a, t0 + Duration::seconds(5), ttl)
            .await
            .unwrap());
        assert!(s
            .acquire_lease(&c.id, "b", t0 + Duration::seconds(12), ttl)
            .await
            .unwrap()
            .is_none());
        let b = s
            .acquire_lease(&c.id, "b", t0 + Duration::seconds(16), ttl)
            .await
            .unwrap()
            .expect("expired: taken over");
        assert!(b.fence > a.fence);
        // a is fenced out: no renewal, no checkpoint, no release of b's lease.
        assert!(!s
            .renew_lease(&a, t0 + Duration::seconds(16), ttl)
            .await
            .unwrap());
        let cp = Checkpoint {
            next_batch: 7,
            after_user: Some("u7".into()),
            batching_done: false,
        };
        assert!(!s.save_checkpoint(&a, &cp).await.unwrap());
        assert_eq!(
            s.get_campaign(&c.id).await.unwrap().unwrap().checkpoint,
            Checkpoint::default()
        );
        s.release_lease(&a, t0).await.unwrap();
        assert!(s
            .acquire_lease(&c.id, "c", t0 + Duration::seconds(17), ttl)
            .await
            .unwrap()
            .is_none());
        assert!(s.save_checkpoint(&b, &cp).await.unwrap());
        // Released by its owner, it is free from the given time on.
        let retry_at = t0 + Duration::seconds(20);
        s.release_lease(&b, retry_at).await.unwrap();
        assert!(s
            .acquire_lease(&c.id, "c", t0 + Duration::seconds(19), ttl)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .acquire_lease(&c.id, "c", retry_at, ttl)
            .await
            .unwrap()
            .is_some());
        assert!(s
            .acquire_lease("no-such-campaign", "c", retry_at, ttl)
            .await
            .unwrap()
            .is_none());
    }

    pub async fn claimable_campaigns_are_the_dispatchable_ones_without_a_live_lease(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let ttl = std::time::Duration::from_secs(10);
        let sizing = campaign(&format!("{p}-a-sizing"), CampaignStatus::Sizing);
        let fanning = campaign(&format!("{p}-b-fanning"), CampaignStatus::FanningOut);
        let active = campaign(&format!("{p}-c-active"), CampaignStatus::Active);
        let scheduled = campaign(&format!("{p}-d-scheduled"), CampaignStatus::Scheduled);
        let done = campaign(&format!("{p}-e-done"), CampaignStatus::Completed);
        let batched = campaign(&format!("{p}-f-batched"), CampaignStatus::FanningOut);
        for c in [&sizing, &fanning, &active, &scheduled, &done, &batched] {
            s.insert_campaign(c).await.unwrap();
        }
        let t0 = Utc::now();
        let lease = s
            .acquire_lease(&batched.id, "x", t0, ttl)
            .await
            .unwrap()
            .unwrap();
        let all_done = Checkpoint {
            batching_done: true,
            ..Checkpoint::default()
        };
        assert!(s.save_checkpoint(&lease, &all_done).await.unwrap());
        s.release_lease(&lease, t0).await.unwrap();
        let ours = |ids: Vec<String>| -> Vec<String> {
            ids.into_iter().filter(|id| id.starts_with(&p)).collect()
        };
        assert_eq!(
            ours(s.claimable_campaigns(t0, 1000).await.unwrap()),
            [sizing.id.clone(), fanning.id.clone(), active.id.clone()]
        );
        s.acquire_lease(&fanning.id, "y", t0, ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ours(s.claimable_campaigns(t0, 1000).await.unwrap()),
            [sizing.id.clone(), active.id.clone()],
            "leased: not claimable"
        );
        assert_eq!(
            ours(
                s.claimable_campaigns(t0 + Duration::seconds(11), 1000)
                    .await
                    .unwrap()
            ),
            [sizing.id.clone(), fanning.id.clone(), active.id.clone()],
            "its lease expired: claimable again"
        );
    }

    /// Futures dropped at any `.await` (clients that went away, timeouts) must leave no
    /// transaction or lock behind: the store takes writes at once afterwards.
    pub async fn writes_dropped_at_any_await_leave_the_store_writable(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let expires = Utc::now() + Duration::hours(1);
        // One after the other, each cut short a little later (0 to 3 ms, in 5 µs steps):
        // before, during or after the BEGIN, the statements or the COMMIT.
        for i in 0..600u64 {
            let key = format!("{p}-dropped-{i}");
            let _ = tokio::time::timeout(
                std::time::Duration::from_micros(i * 5),
                s.claim_idempotency_key(&key, "h", "r", expires),
            )
            .await;
        }
        let c = campaign(&format!("{p}-after"), CampaignStatus::Sizing);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            s.insert_campaign(&c).await.unwrap();
            let key = format!("{p}-after-key");
            assert_eq!(
                s.claim_idempotency_key(&key, "h", "r", expires)
                    .await
                    .unwrap(),
                IdempotencyClaim::Claimed
            );
            s.complete_idempotency_key(&key, 202, b"{}").await.unwrap();
        })
        .await
        .expect("the store takes writes after dropped ones");
    }

    pub async fn a_failed_batch_is_kept_whole_replayed_once_and_counted_back(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        let at = utc("2026-05-01T10:00:00Z");
        let failed = FailedBatch {
            campaign_id: c.id.clone(),
            batch_no: 4,
            user_ids: vec!["a".into(), "b".into()],
            reason: "batch 4 (2 users) given up: disk full".into(),
            failed_at: at,
            replayed_at: None,
        };
        assert!(s.record_failed_batch(&failed).await.unwrap());
        assert!(!s.record_failed_batch(&failed).await.unwrap(), "once");
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.progress.batches_done, 1);
        assert_eq!(got.progress.failed_batches, 1);
        assert_eq!(s.failed_batches(&c.id).await.unwrap(), vec![failed.clone()]);
        assert_eq!(
            s.campaign_failures(&c.id).await.unwrap()[0].reason,
            failed.reason
        );

        assert_eq!(s.mark_batch_replayed(&c.id, 9, at).await.unwrap(), None);
        assert_eq!(
            s.mark_batch_replayed(&c.id, 4, at).await.unwrap(),
            Some(true)
        );
        assert_eq!(
            s.mark_batch_replayed(&c.id, 4, at).await.unwrap(),
            Some(false)
        );
        s.reset_batch_replay(&c.id, 4).await.unwrap();
        assert_eq!(
            s.mark_batch_replayed(&c.id, 4, at).await.unwrap(),
            Some(true)
        );
        assert_eq!(
            s.failed_batches(&c.id).await.unwrap()[0].replayed_at,
            Some(at)
        );

        let delta = Progress {
            notifications_written: 2,
            ..Default::default()
        };
        let queued = [(
            Channel::Push,
            DeliveryCounts {
                queued: 2,
                ..Default::default()
            },
        )];
        assert!(s
            .record_replayed_batch(&c.id, 4, &delta, &queued, &[])
            .await
            .unwrap());
        assert!(
            !s.record_replayed_batch(&c.id, 4, &delta, &queued, &[])
                .await
                .unwrap(),
            "a redelivered replay counts once"
        );
        assert!(!s
            .record_replayed_batch(&c.id, 5, &delta, &queued, &[])
            .await
            .unwrap());
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.progress.batches_done, 1, "the batch is counted once");
        assert_eq!(got.progress.failed_batches, 0);
        assert_eq!(got.progress.notifications_written, 2);
        assert_eq!(got.deliveries[&Channel::Push].queued, 2);
    }
    /// Fan-out workers and push gateways on many nodes record batches and delivery reports of
    /// one campaign at the same time, each possibly twice (a redelivery): every batch and
    /// report counts once, none is lost to a lock conflict, the failure sample stays bounded.
    pub async fn campaign_stats_add_up_the_window_by_strategy(s: Arc<dyn CampaignStore>) {
        let p = run_id();
        let at = |t: &str| utc(t);
        let mut older = campaign(&format!("{p}-0"), CampaignStatus::Completed);
        older.created_at = at("2025-12-31T23:59:59Z");
        let mut a = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        a.created_at = at("2026-01-01T00:00:00Z");
        let mut b = campaign(&format!("{p}-2"), CampaignStatus::FanningOut);
        b.created_at = at("2026-01-01T05:00:00Z");
        let mut direct = campaign(&format!("{p}-3"), CampaignStatus::Completed);
        direct.strategy = Strategy::Direct;
        direct.created_at = at("2026-01-02T00:00:00Z");
        for c in [&older, &a, &b, &direct] {
            s.insert_campaign(c).await.unwrap();
        }
        for (c, size) in [(&older, 50), (&a, 10), (&b, 30), (&direct, 1)] {
            s.set_sizing(&c.id, size, 1).await.unwrap();
        }
        let delta = |written, opted_out, deferred| Progress {
            batches_done: 1,
            notifications_written: written,
            skipped_opted_out: opted_out,
            deferred_quiet_hours: deferred,
            ..Progress::default()
        };
        // Spread over batches (and, on MySQL, counter shards).
        s.record_batch(&a.id, 0, &delta(4, 1, 0), &[], &[])
            .await
            .unwrap();
        s.record_batch(&a.id, 1, &delta(3, 1, 1), &[], &[])
            .await
            .unwrap();
        s.record_batch(&b.id, 0, &delta(25, 5, 0), &[], &[])
            .await
            .unwrap();
        s.record_batch(&direct.id, 0, &delta(1, 0, 0), &[], &[])
            .await
            .unwrap();
        s.record_batch(&older.id, 0, &delta(50, 0, 0), &[], &[])
            .await
            .unwrap();

        let stats = s.campaign_stats(at("2026-01-01T00:00:00Z")).await.unwrap();
        assert_eq!(
            stats,
            vec![
                herald_core::analytics::CampaignStats {
                    strategy: Strategy::Batch,
                    campaigns: 2,
                    audience: 40,
                    notifications_written: 32,
                    skipped_opted_out: 7,
                    deferred_quiet_hours: 1,
                },
                herald_core::analytics::CampaignStats {
                    strategy: Strategy::Direct,
                    campaigns: 1,
                    audience: 1,
                    notifications_written: 1,
                    skipped_opted_out: 0,
                    deferred_quiet_hours: 0,
                },
            ]
        );
        assert!(s
            .campaign_stats(at("2026-01-03T00:00:00Z"))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn concurrent_writers_count_every_batch_and_report_exactly_once(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let c = campaign(&format!("{p}-1"), CampaignStatus::FanningOut);
        s.insert_campaign(&c).await.unwrap();
        let writers = (0..8u64).map(|w| {
            let (s, id) = (s.clone(), c.id.clone());
            tokio::spawn(async move {
                for i in 0..40u64 {
                    // Writers overlap: each batch is recorded by two of them.
                    let batch_no = (w / 2) * 40 + i;
                    let delta = Progress {
                        notifications_written: 10,
                        failed_render: 1,
                        ..Default::default()
                    };
                    let failure = RecipientFailure {
                        batch_no,
                        user_id: Some(format!("u{batch_no}")),
                        reason: "does not render".into(),
                    };
                    let queued = DeliveryCounts {
                        queued: 10,
                        ..Default::default()
                    };
                    s.record_batch(
                        &id,
                        batch_no,
                        &delta,
                        &[(Channel::Push, queued)],
                        &[failure],
                    )
                    .await
                    .unwrap();
                    let sent = DeliveryCounts {
                        sent: 9,
                        failed: 1,
                        ..Default::default()
                    };
                    let key = format!("{id}/{batch_no}/push/0/0");
                    s.record_deliveries(&id, &key, Channel::Push, &sent)
                        .await
                        .unwrap();
                }
            })
        });
        for w in futures::future::join_all(writers).await {
            w.expect("writer");
        }
        let got = s.get_campaign(&c.id).await.unwrap().unwrap();
        assert_eq!(got.progress.batches_done, 160);
        assert_eq!(got.progress.notifications_written, 1_600);
        assert_eq!(got.progress.failed_render, 160);
        assert_eq!(
            got.deliveries[&Channel::Push],
            DeliveryCounts {
                queued: 1_600,
                sent: 1_440,
                failed: 160,
                suppressed_online: 0,
                cancelled: 0,
            }
        );
        let sample = s.campaign_failures(&c.id).await.unwrap();
        assert_eq!(sample.len(), herald_core::ports::KEPT_FAILURES);
    }

    fn digest_event(
        p: &str,
        user: &str,
        key: &str,
        n: u32,
        at: chrono::DateTime<Utc>,
    ) -> DigestEvent {
        DigestEvent {
            event_type: format!("{p}.comment"),
            user_id: user.to_owned(),
            key_value: key.to_owned(),
            data: serde_json::json!({"n": n, "text": format!("comment {n}")}),
            event_key: None,
            at,
        }
    }

    pub async fn events_join_one_digest_per_user_and_key_until_it_is_taken(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let t0 = Utc::now();
        let window = std::time::Duration::from_secs(600);
        let mut ids = Vec::new();
        for n in 1..=3 {
            let added = s
                .add_to_digest(&digest_event(&p, "u1", "post-1", n, t0), window)
                .await
                .unwrap();
            assert_eq!(added.count, u64::from(n));
            assert!(!added.duplicate);
            assert_eq!(
                added.window_ends_at.timestamp_micros(),
                (t0 + Duration::seconds(600)).timestamp_micros(),
                "the window runs from the first event"
            );
            ids.push(added.digest_id);
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "one digest: {ids:?}");
        let other_key = s
            .add_to_digest(&digest_event(&p, "u1", "post-2", 9, t0), window)
            .await
            .unwrap();
        let other_user = s
            .add_to_digest(&digest_event(&p, "u2", "post-1", 9, t0), window)
            .await
            .unwrap();
        assert_ne!(other_key.digest_id, ids[0]);
        assert_ne!(other_user.digest_id, ids[0]);
        assert_ne!(other_key.digest_id, other_user.digest_id);

        let taken = s.take_digest(&ids[0]).await.unwrap().unwrap();
        assert_eq!(taken.user_id, "u1");
        assert_eq!(taken.key_value, "post-1");
        assert_eq!(taken.event_type, format!("{p}.comment"));
        assert_eq!(taken.count, 3);
        assert_eq!(
            taken.events,
            (1..=3)
                .map(|n| serde_json::json!({"n": n, "text": format!("comment {n}")}))
                .collect::<Vec<_>>(),
            "oldest first"
        );
        // Taken again (a redelivered send): the same digest, as it was.
        assert_eq!(s.take_digest(&ids[0]).await.unwrap().unwrap(), taken);
        // A later event opens a new digest.
        let later = s
            .add_to_digest(&digest_event(&p, "u1", "post-1", 4, t0), window)
            .await
            .unwrap();
        assert_ne!(later.digest_id, ids[0]);
        assert_eq!(later.count, 1);
        assert_eq!(s.take_digest(&ids[0]).await.unwrap().unwrap().count, 3);
        assert!(s.take_digest(&format!("{p}-none")).await.unwrap().is_none());
    }

    pub async fn an_event_after_the_window_opens_a_new_digest_and_a_keyed_one_joins_once(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let t0 = Utc::now();
        let window = std::time::Duration::from_secs(60);
        let first = s
            .add_to_digest(&digest_event(&p, "u1", "", 1, t0), window)
            .await
            .unwrap();
        let late = s
            .add_to_digest(
                &digest_event(&p, "u1", "", 2, t0 + Duration::seconds(61)),
                window,
            )
            .await
            .unwrap();
        assert_ne!(first.digest_id, late.digest_id, "its window had ended");
        assert_eq!(late.count, 1);
        // The same event (its identity) twice: counted once.
        let mut keyed = digest_event(&p, "u1", "", 3, t0 + Duration::seconds(62));
        keyed.event_key = Some(format!("{p}-event-1"));
        let once = s.add_to_digest(&keyed, window).await.unwrap();
        let again = s.add_to_digest(&keyed, window).await.unwrap();
        assert_eq!((once.count, once.duplicate), (2, false));
        assert_eq!((again.count, again.duplicate), (2, true));
        assert_eq!(again.digest_id, late.digest_id);
        assert_eq!(
            s.take_digest(&late.digest_id)
                .await
                .unwrap()
                .unwrap()
                .events
                .len(),
            2
        );
    }

    pub async fn concurrent_first_events_open_one_digest_and_every_event_counts(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let t0 = Utc::now();
        let adds = (0..24u32).map(|n| {
            let (s, p) = (s.clone(), p.clone());
            tokio::spawn(async move {
                s.add_to_digest(
                    &digest_event(&p, "u1", "k", n, t0),
                    std::time::Duration::from_secs(600),
                )
                .await
                .unwrap()
            })
        });
        let added: Vec<DigestAdded> = futures::future::join_all(adds)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let id = &added[0].digest_id;
        assert!(added.iter().all(|a| a.digest_id == *id), "{added:?}");
        let taken = s.take_digest(id).await.unwrap().unwrap();
        assert_eq!(taken.count, 24);
        assert_eq!(taken.events.len(), 24);
    }

    pub async fn a_digest_keeps_its_first_events_counts_them_all_and_is_purged_once_sent(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let t0 = Utc::now();
        let window = std::time::Duration::from_secs(1);
        let mut id = String::new();
        for n in 0..(MAX_DIGEST_EVENTS as u32 + 5) {
            id = s
                .add_to_digest(&digest_event(&p, "u1", "", n, t0), window)
                .await
                .unwrap()
                .digest_id;
        }
        let open = s
            .add_to_digest(&digest_event(&p, "u2", "", 0, t0), window)
            .await
            .unwrap();
        let taken = s.take_digest(&id).await.unwrap().unwrap();
        assert_eq!(taken.count, MAX_DIGEST_EVENTS as u64 + 5);
        assert_eq!(taken.events.len(), MAX_DIGEST_EVENTS);
        assert_eq!(taken.events[0]["n"], 0, "the first ones");
        // Sent digests past the cutoff go; open ones stay, whatever their age. (The cutoff is
        // just past this test's 1 s windows: other cases' digests, in the same database, have
        // longer windows.)
        assert!(s.purge_digests(t0 + Duration::seconds(2)).await.unwrap() >= 1);
        assert!(s.take_digest(&id).await.unwrap().is_none());
        assert_eq!(
            s.take_digest(&open.digest_id).await.unwrap().unwrap().count,
            1
        );
    }
}

pub mod retraction_cases {
    use super::*;

    pub async fn a_retraction_is_recorded_once_and_listed_while_its_rows_may_be_kept(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let first = CampaignRetraction {
            campaign_id: format!("{p}-a"),
            row_time: utc("2026-03-01T00:00:00.123Z"),
            broadcast_id: None,
            retracted_at: utc("2026-03-02T00:00:00.000001Z"),
        };
        assert_eq!(s.retract(&first).await.unwrap(), first);
        // Asked again later: the first retraction stays and is the answer.
        let again = CampaignRetraction {
            retracted_at: utc("2026-03-05T00:00:00Z"),
            ..first.clone()
        };
        assert_eq!(s.retract(&again).await.unwrap(), first);
        let broadcast = CampaignRetraction {
            campaign_id: format!("{p}-b"),
            row_time: utc("2026-03-10T00:00:00Z"),
            broadcast_id: Some(uuid::Uuid::from_u128(7)),
            retracted_at: utc("2026-03-10T01:00:00Z"),
        };
        s.retract(&broadcast).await.unwrap();
        let ours = |list: Vec<CampaignRetraction>| -> Vec<CampaignRetraction> {
            list.into_iter()
                .filter(|r| r.campaign_id.starts_with(&p))
                .collect()
        };
        assert_eq!(
            ours(
                s.retractions_since(utc("2026-02-01T00:00:00Z"))
                    .await
                    .unwrap()
            ),
            [first.clone(), broadcast.clone()]
        );
        // Rows older than the cutoff are gone with retention: their retraction no longer
        // needs hiding anything.
        assert_eq!(
            ours(
                s.retractions_since(utc("2026-03-05T00:00:00Z"))
                    .await
                    .unwrap()
            ),
            [broadcast]
        );
    }
}

pub mod revision_cases {
    use super::*;

    fn revision(id: &str, n: u32, row_time: Option<&str>, revised_at: &str) -> CampaignRevision {
        CampaignRevision {
            campaign_id: id.to_owned(),
            revision: n,
            row_time: row_time.map(utc),
            broadcast_id: (n == 2).then(|| uuid::Uuid::from_u128(9)),
            content: TemplateContent {
                in_app: Some(TitleBody {
                    title: format!("v{n} {{{{ user.name }}}}"),
                    body: "b".into(),
                }),
                ..Default::default()
            },
            data: serde_json::json!({"n": n, "text": "é"}),
            revised_at: utc(revised_at),
        }
    }

    pub async fn revisions_are_compare_and_set_and_listed_while_their_rows_may_be_kept(
        s: Arc<dyn CampaignStore>,
    ) {
        let p = run_id();
        let a = format!("{p}-a");
        assert!(s.revision(&a).await.unwrap().is_none());
        let first = revision(
            &a,
            1,
            Some("2026-03-01T00:00:00.123Z"),
            "2026-03-02T00:00:00Z",
        );
        s.revise(&first).await.unwrap();
        assert_eq!(s.revision(&a).await.unwrap(), Some(first.clone()));
        // A second "first" (a request that read before the first was written) loses.
        let racer = revision(
            &a,
            1,
            Some("2026-03-01T00:00:00.123Z"),
            "2026-03-02T00:00:01Z",
        );
        let e = s.revise(&racer).await.unwrap_err();
        assert_eq!(e.kind, herald_core::ErrorKind::Conflict, "{e}");
        // The next one replaces it; one skipping a revision does not.
        let second = revision(
            &a,
            2,
            Some("2026-03-01T00:00:00.123Z"),
            "2026-03-03T00:00:00Z",
        );
        s.revise(&second).await.unwrap();
        let skipping = revision(
            &a,
            4,
            Some("2026-03-01T00:00:00.123Z"),
            "2026-03-04T00:00:00Z",
        );
        assert_eq!(
            s.revise(&skipping).await.unwrap_err().kind,
            herald_core::ErrorKind::Conflict
        );
        assert_eq!(s.revision(&a).await.unwrap(), Some(second.clone()));
        // Revised before it started: listed by the revision's time.
        let b = format!("{p}-b");
        let unstarted = revision(&b, 1, None, "2026-03-10T00:00:00Z");
        s.revise(&unstarted).await.unwrap();
        let ours = |list: Vec<CampaignRevision>| -> Vec<CampaignRevision> {
            list.into_iter()
                .filter(|r| r.campaign_id.starts_with(&p))
                .collect()
        };
        assert_eq!(
            ours(
                s.revisions_since(utc("2026-02-01T00:00:00Z"))
                    .await
                    .unwrap()
            ),
            [second, unstarted.clone()]
        );
        // Rows older than the cutoff are gone with retention, and so is the need to show
        // them revised.
        assert_eq!(
            ours(
                s.revisions_since(utc("2026-03-05T00:00:00Z"))
                    .await
                    .unwrap()
            ),
            [unstarted]
        );
    }
}

macro_rules! campaign_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            campaign_conformance!(@cases $make;
                a_campaign_reads_back_as_written_and_ids_are_unique,
                writes_dropped_at_any_await_leave_the_store_writable,
                a_campaign_keeps_a_bounded_sample_of_failures,
                a_failed_batch_is_kept_whole_replayed_once_and_counted_back,
                a_campaign_lease_has_one_owner_is_renewed_and_taken_over_when_it_expires,
                claimable_campaigns_are_the_dispatchable_ones_without_a_live_lease,
                transitions_are_compare_and_set_and_stamp_times,
                a_batch_is_counted_once_however_often_it_is_recorded,
                concurrent_writers_count_every_batch_and_report_exactly_once,
                campaign_stats_add_up_the_window_by_strategy,
                checkpoints_survive_and_fix_the_batch_total_when_done,
                rules_are_upserted_listed_and_deleted,
                delivery_counters_add_up_per_channel,
                a_delivery_report_is_counted_once_however_often_it_is_recorded,
                listing_pages_newest_first_and_filters_by_status,
                scheduled_campaigns_become_due_at_their_start,
                an_idempotency_key_is_claimed_once_and_replays_its_response,
                an_invalid_requests_or_expired_idempotency_key_can_be_claimed_again,
                events_join_one_digest_per_user_and_key_until_it_is_taken,
                an_event_after_the_window_opens_a_new_digest_and_a_keyed_one_joins_once,
                concurrent_first_events_open_one_digest_and_every_event_counts,
                a_digest_keeps_its_first_events_counts_them_all_and_is_purged_once_sent,
            );
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_retraction_is_recorded_once_and_listed_while_its_rows_may_be_kept() {
                if let Some(s) = $make.await {
                    retraction_cases::a_retraction_is_recorded_once_and_listed_while_its_rows_may_be_kept(s).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn revisions_are_compare_and_set_and_listed_while_their_rows_may_be_kept() {
                if let Some(s) = $make.await {
                    revision_cases::revisions_are_compare_and_set_and_listed_while_their_rows_may_be_kept(s).await;
                }
            }
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

campaign_conformance!(sqlite, common::sqlite_campaigns());
campaign_conformance!(mysql, common::mysql_campaigns());
