//! Conformance suite of the `InboxStore` port, run against every engine: SQLite always, MySQL
//! with `HERALD_TEST_MYSQL_URL`, ScyllaDB/Cassandra with `HERALD_TEST_SCYLLA_URL` (a real
//! cluster: the cases check clustering order, key ranges, paging past dismissed rows and TTLs).

mod common;

use chrono::{DateTime, Datelike, Duration, Utc};
use common::{run_id, utc};
use herald_core::ids::notification_id;
use herald_core::model::{
    ArchivedFilter, InboxAction, InboxCounts, InboxFilter, InboxKey, Notification, StatusFilter,
};
use herald_core::ports::{InboxStore, MAX_BULK, UNREAD_WINDOW};
use herald_storage::BackendUrl;
use std::sync::Arc;

fn row(campaign: &str, user: &str, at: DateTime<Utc>) -> Notification {
    Notification {
        id: notification_id(campaign, user, at),
        user_id: user.to_owned(),
        campaign_id: Some(campaign.to_owned()),
        title: format!("title {campaign}"),
        body: "body".into(),
        category: Some("orders".into()),
        data: serde_json::json!({"campaign": campaign, "n": 1}),
        created_at: at,
        read_at: None,
        seen_at: None,
        archived_at: None,
    }
}

/// `n` rows for `user`, one a minute from `start`, oldest first.
fn rows(p: &str, user: &str, n: usize, start: DateTime<Utc>) -> Vec<Notification> {
    (0..n)
        .map(|i| {
            row(
                &format!("{p}-c{i:03}"),
                user,
                start + Duration::minutes(i as i64),
            )
        })
        .collect()
}

/// The user's visible row `key`, as a page reads it back.
async fn find(s: &Arc<dyn InboxStore>, user: &str, key: InboxKey) -> Option<Notification> {
    let after = InboxKey {
        created_at: key.created_at,
        id: uuid::Uuid::nil(),
    };
    let paged = s
        .after(user, after, 1_000)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.key() == key);
    // Read by its key, the row is the one the pages show.
    assert_eq!(
        s.get(user, key).await.unwrap(),
        paged,
        "get agrees with after"
    );
    paged
}

pub mod cases {
    use super::*;

    pub async fn rows_read_back_newest_first_with_all_fields(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 5, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        let page = s
            .page(&user, None, 10, InboxFilter::default())
            .await
            .unwrap();
        let mut expected = written.clone();
        expected.reverse();
        assert_eq!(page, expected);
        assert_eq!(
            find(&s, &user, written[2].key()).await,
            Some(written[2].clone())
        );
        assert_eq!(InboxKey::of_id(written[2].id), Some(written[2].key()));
    }

    pub async fn keyset_pages_cover_every_row_once_even_with_equal_timestamps(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let at = utc("2026-01-01T00:00:00Z");
        // Ten rows in the same microsecond: the id breaks the tie.
        let mut written: Vec<Notification> = (0..10)
            .map(|i| row(&format!("{p}-c{i}"), &user, at))
            .collect();
        written.extend(rows(&p, &user, 7, at + Duration::seconds(1)));
        s.write_batch(&written).await.unwrap();
        let mut seen = Vec::new();
        let mut before: Option<InboxKey> = None;
        loop {
            let page = s
                .page(&user, before, 3, InboxFilter::default())
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            before = page.last().map(Notification::key);
            seen.extend(page);
        }
        let keys: Vec<InboxKey> = seen.iter().map(Notification::key).collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(keys, sorted, "newest first, no repeats");
        assert_eq!(keys.len(), written.len(), "no row skipped");
    }

    pub async fn rewriting_a_batch_keeps_the_read_and_dismiss_state(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 3, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        let now = utc("2026-01-02T00:00:00Z");
        assert!(s.mark_read(&user, written[0].key(), now).await.unwrap());
        assert!(s.dismiss(&user, written[1].key(), now).await.unwrap());
        // The same batch again, as after a crash before the ack.
        s.write_batch(&written).await.unwrap();
        let page = s
            .page(&user, None, 10, InboxFilter::default())
            .await
            .unwrap();
        assert_eq!(
            page.len(),
            2,
            "no duplicates, the dismissed row stays hidden"
        );
        let first = page.iter().find(|n| n.id == written[0].id).unwrap();
        assert_eq!(first.read_at, Some(now));
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 1);
    }

    pub async fn read_state_and_unread_count_follow_mark_read_and_read_all(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 4, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 4);
        let t1 = utc("2026-01-03T00:00:00Z");
        assert!(s.mark_read(&user, written[3].key(), t1).await.unwrap());
        // Reading again keeps the first read time.
        assert!(s
            .mark_read(&user, written[3].key(), t1 + Duration::hours(1))
            .await
            .unwrap());
        assert_eq!(
            find(&s, &user, written[3].key()).await.unwrap().read_at,
            Some(t1)
        );
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 3);
        let unread = s.page(&user, None, 10, InboxFilter::UNREAD).await.unwrap();
        assert_eq!(unread.len(), 3);
        assert!(unread.iter().all(|n| n.read_at.is_none()));
        assert_eq!(s.mark_all_read(&user, t1).await.unwrap(), 3);
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 0);
        assert!(s
            .page(&user, None, 10, InboxFilter::UNREAD)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn a_row_is_read_by_its_key_with_its_read_state(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 3, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        assert_eq!(
            s.get(&user, written[0].key()).await.unwrap().as_ref(),
            Some(&written[0]),
            "every field, unread"
        );
        let t1 = utc("2026-01-03T00:00:00Z");
        assert!(s.mark_read(&user, written[2].key(), t1).await.unwrap());
        assert_eq!(
            s.get(&user, written[2].key())
                .await
                .unwrap()
                .unwrap()
                .read_at,
            Some(t1)
        );
        // The watermark reads a row it covers, not one above it.
        let mark = written[0].created_at + Duration::seconds(1);
        s.mark_all_read(&user, mark).await.unwrap();
        assert_eq!(
            s.get(&user, written[0].key())
                .await
                .unwrap()
                .unwrap()
                .read_at,
            Some(mark)
        );
        assert_eq!(
            s.get(&user, written[1].key())
                .await
                .unwrap()
                .unwrap()
                .read_at,
            None
        );
        // Dismissed, another user's, or never written: nothing.
        assert!(s.dismiss(&user, written[1].key(), t1).await.unwrap());
        assert!(s.get(&user, written[1].key()).await.unwrap().is_none());
        assert!(s
            .get(&format!("{p}-other"), written[0].key())
            .await
            .unwrap()
            .is_none());
        let never = row(&format!("{p}-never"), &user, utc("2026-01-01T00:00:00Z"));
        assert!(s.get(&user, never.key()).await.unwrap().is_none());
    }

    pub async fn users_cannot_touch_each_others_rows(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let (alice, bob) = (format!("{p}-alice"), format!("{p}-bob"));
        let a = rows(&p, &alice, 2, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&a).await.unwrap();
        let now = Utc::now();
        assert!(!s.mark_read(&bob, a[0].key(), now).await.unwrap());
        assert!(!s.dismiss(&bob, a[0].key(), now).await.unwrap());
        assert!(find(&s, &bob, a[0].key()).await.is_none());
        assert!(s.locate(&bob, a[0].id).await.unwrap().is_none());
        assert!(s
            .page(&bob, None, 10, InboxFilter::default())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(s.mark_all_read(&bob, now).await.unwrap(), 0);
        assert_eq!(s.counts(&alice, &[]).await.unwrap().unread, 2);
    }

    pub async fn dismissed_rows_disappear_from_pages_counts_and_replays(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 3, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        let now = Utc::now();
        assert!(s.dismiss(&user, written[1].key(), now).await.unwrap());
        assert!(!s.dismiss(&user, written[1].key(), now).await.unwrap());
        assert!(!s.mark_read(&user, written[1].key(), now).await.unwrap());
        assert!(find(&s, &user, written[1].key()).await.is_none());
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 2);
        let replay = s.after(&user, written[0].key(), 10).await.unwrap();
        assert_eq!(replay, vec![written[2].clone()]);
    }

    pub async fn a_page_with_its_unread_count_agrees_with_the_two_separate_reads(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 30, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        let now = utc("2026-01-02T00:00:00Z");
        s.mark_read(&user, written[29].key(), now).await.unwrap();
        s.dismiss(&user, written[28].key(), now).await.unwrap();
        s.apply(&user, &[written[27].key()], InboxAction::Seen, now)
            .await
            .unwrap();
        let only = |archived| InboxFilter {
            status: StatusFilter::All,
            archived,
            hidden: &[],
        };
        for (before, filter) in [
            (None, InboxFilter::default()),
            (Some(written[20].key()), InboxFilter::default()),
            (None, InboxFilter::UNREAD),
            (
                None,
                InboxFilter {
                    status: StatusFilter::Unseen,
                    archived: ArchivedFilter::Include,
                    hidden: &[],
                },
            ),
            (None, only(ArchivedFilter::Only)),
        ] {
            let (page, counts) = s.page_with_counts(&user, before, 10, filter).await.unwrap();
            assert_eq!(page, s.page(&user, before, 10, filter).await.unwrap());
            assert_eq!(
                counts,
                InboxCounts {
                    unread: 28,
                    unseen: 27
                },
                "30 rows, one read, one seen, one dismissed"
            );
        }
        let (empty, none) = s
            .page_with_counts(&format!("{p}-nobody"), None, 10, InboxFilter::default())
            .await
            .unwrap();
        assert!(empty.is_empty());
        assert_eq!(none, InboxCounts::default());
    }

    pub async fn read_all_moves_a_watermark_that_covers_rows_written_after_it(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let start = utc("2026-01-01T00:00:00Z");
        let written = rows(&p, &user, 4, start);
        s.write_batch(&written).await.unwrap();
        assert!(s.mark_read(&user, written[0].key(), start).await.unwrap());
        let mark = start + Duration::minutes(2);
        assert_eq!(
            s.mark_all_read(&user, mark).await.unwrap(),
            2,
            "rows 1 and 2"
        );
        assert_eq!(
            s.counts(&user, &[]).await.unwrap().unread,
            1,
            "row 3 is after the mark"
        );
        let page = s
            .page(&user, None, 10, InboxFilter::default())
            .await
            .unwrap();
        let read: Vec<_> = page.iter().map(|n| n.read_at).collect();
        assert_eq!(read, [None, Some(mark), Some(mark), Some(start)]);
        // A row of a campaign that started before "read all" and reached the user after it
        // counts as read; one created after the mark does not.
        let late = row(&format!("{p}-late"), &user, start + Duration::seconds(30));
        let newer = row(&format!("{p}-newer"), &user, mark + Duration::seconds(1));
        s.write_batch(&[late.clone(), newer.clone()]).await.unwrap();
        assert_eq!(
            find(&s, &user, late.key()).await.unwrap().read_at,
            Some(mark)
        );
        assert_eq!(find(&s, &user, newer.key()).await.unwrap().read_at, None);
        let unread = s.page(&user, None, 10, InboxFilter::UNREAD).await.unwrap();
        let keys: Vec<_> = unread.iter().map(Notification::key).collect();
        assert_eq!(keys, [written[3].key(), newer.key()]);
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 2);
        // The watermark never moves back.
        assert_eq!(s.mark_all_read(&user, start).await.unwrap(), 0);
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 2);
        let (_, counts) = s
            .page_with_counts(&user, None, 1, InboxFilter::default())
            .await
            .unwrap();
        assert_eq!(counts.unread, 2);
        assert_eq!(
            s.after(&user, written[0].key(), 10).await.unwrap()[0].read_at,
            Some(mark),
            "a resume replay reads the watermark too"
        );
    }

    pub async fn the_unread_count_looks_at_a_bounded_window_above_the_watermark(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let start = utc("2026-01-01T00:00:00Z");
        let n = UNREAD_WINDOW as usize + 50;
        let written: Vec<Notification> = (0..n)
            .map(|i| {
                row(
                    &format!("{p}-c{i:05}"),
                    &user,
                    start + Duration::seconds(i as i64),
                )
            })
            .collect();
        s.write_batch(&written).await.unwrap();
        assert_eq!(
            s.counts(&user, &[]).await.unwrap().unread,
            u64::from(UNREAD_WINDOW)
        );
        // Reading the newest ten one by one: the window still holds the newest rows.
        for r in &written[n - 10..] {
            assert!(s.mark_read(&user, r.key(), start).await.unwrap());
        }
        assert_eq!(
            s.counts(&user, &[]).await.unwrap().unread,
            u64::from(UNREAD_WINDOW) - 10
        );
        // After "read all" the window starts at the watermark again.
        let mark = start + Duration::seconds(n as i64);
        s.mark_all_read(&user, mark).await.unwrap();
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 0);
        let fresh = rows(&format!("{p}f"), &user, 3, mark + Duration::minutes(1));
        s.write_batch(&fresh).await.unwrap();
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 3);
    }

    pub async fn a_row_whose_id_carries_no_time_is_found_by_id(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        // As written before ids carried their time (a name-based v5 id).
        let mut legacy = row(&format!("{p}-c"), &user, utc("2026-01-01T00:00:00Z"));
        legacy.created_at = utc("2026-01-01T00:00:00.123456Z");
        legacy.id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, p.as_bytes());
        s.write_batch(std::slice::from_ref(&legacy)).await.unwrap();
        assert_eq!(InboxKey::of_id(legacy.id), None);
        let key = s.locate(&user, legacy.id).await.unwrap();
        assert_eq!(key, Some(legacy.key()));
        assert!(s.mark_read(&user, legacy.key(), Utc::now()).await.unwrap());
        assert!(s.dismiss(&user, legacy.key(), Utc::now()).await.unwrap());
        assert_eq!(s.locate(&user, legacy.id).await.unwrap(), None);
    }

    pub async fn after_replays_newer_rows_oldest_first(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let written = rows(&p, &user, 6, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&written).await.unwrap();
        let replay = s.after(&user, written[2].key(), 2).await.unwrap();
        assert_eq!(replay, written[3..5].to_vec());
        let rest = s.after(&user, written[4].key(), 10).await.unwrap();
        assert_eq!(rest, written[5..].to_vec());
        assert!(s
            .after(&user, written[5].key(), 10)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn a_large_batch_is_written_whole(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let at = utc("2026-01-01T00:00:00Z");
        let batch: Vec<Notification> = (0..5_000)
            .map(|i| row(&format!("{p}-c"), &format!("{p}-u{i}"), at))
            .collect();
        s.write_batch(&batch).await.unwrap();
        for i in [0, 2_499, 4_999] {
            let user = format!("{p}-u{i}");
            assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 1, "{user}");
        }
    }

    pub async fn purging_removes_only_rows_older_than_the_cutoff(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let old = rows(&p, &user, 3, utc("2000-01-01T00:00:00Z"));
        let new = rows(&format!("{p}n"), &user, 2, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&old).await.unwrap();
        s.write_batch(&new).await.unwrap();
        assert!(s.purge_before(utc("2001-01-01T00:00:00Z")).await.unwrap() >= 3);
        let left = s
            .page(&user, None, 10, InboxFilter::default())
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|n| n.created_at.year() >= 2026));
    }
}

/// The feed states (seen, read, archived), by key, by range and by watermark.
pub mod state_cases {
    use super::*;

    fn filter(status: StatusFilter, archived: ArchivedFilter) -> InboxFilter<'static> {
        InboxFilter {
            status,
            archived,
            hidden: &[],
        }
    }

    async fn titles(s: &Arc<dyn InboxStore>, user: &str, f: InboxFilter<'_>) -> Vec<String> {
        s.page(user, None, 100, f)
            .await
            .unwrap()
            .into_iter()
            .map(|n| {
                n.campaign_id
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn counts(unread: u64, unseen: u64) -> InboxCounts {
        InboxCounts { unread, unseen }
    }

    pub async fn seen_read_and_archived_rows_filter_pages_and_counts(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        let w = rows(&p, &user, 6, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&w).await.unwrap();
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(6, 6));
        let t1 = utc("2026-01-02T00:00:00Z");
        let t2 = utc("2026-01-03T00:00:00Z");
        // Up to MAX_BULK keys at once: the user's own, someone else's, and made-up ones.
        let mut keys = vec![w[5].key()];
        keys.extend((keys.len()..MAX_BULK).map(|i| InboxKey {
            created_at: w[0].created_at,
            id: uuid::Uuid::from_u128(i as u128),
        }));
        assert_eq!(
            s.apply(&user, &keys, InboxAction::Seen, t1).await.unwrap(),
            [w[5].key()]
        );
        assert_eq!(
            s.apply(&user, &[w[4].key()], InboxAction::Read, t1)
                .await
                .unwrap(),
            [w[4].key()]
        );
        let archived = s
            .apply(&user, &[w[3].key(), w[2].key()], InboxAction::Archive, t1)
            .await
            .unwrap();
        assert_eq!(archived.len(), 2);
        // Again later: the first times stay, and a row in that state already is found.
        for action in [InboxAction::Seen, InboxAction::Read, InboxAction::Archive] {
            let found = s.apply(&user, &[w[4].key()], action, t2).await.unwrap();
            assert_eq!(found, [w[4].key()], "{action:?}");
        }
        let r4 = find(&s, &user, w[4].key()).await.unwrap();
        assert_eq!(
            (r4.read_at, r4.seen_at, r4.archived_at),
            (Some(t1), Some(t1), Some(t2))
        );
        let r5 = find(&s, &user, w[5].key()).await.unwrap();
        assert_eq!(
            (r5.read_at, r5.seen_at, r5.archived_at),
            (None, Some(t1), None)
        );
        // Archived rows leave the default view and the counts.
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(3, 2));
        use ArchivedFilter::{Exclude, Include, Only};
        use StatusFilter::{All, Unread, Unseen};
        assert_eq!(
            titles(&s, &user, filter(All, Exclude)).await,
            ["c005", "c001", "c000"]
        );
        assert_eq!(
            titles(&s, &user, filter(Unread, Exclude)).await,
            ["c005", "c001", "c000"]
        );
        assert_eq!(
            titles(&s, &user, filter(Unseen, Exclude)).await,
            ["c001", "c000"]
        );
        assert_eq!(
            titles(&s, &user, filter(All, Only)).await,
            ["c004", "c003", "c002"]
        );
        assert_eq!(
            titles(&s, &user, filter(Unread, Only)).await,
            ["c003", "c002"]
        );
        assert_eq!(titles(&s, &user, filter(All, Include)).await.len(), 6);
        // Unarchived: back in the view and the counts, the other states kept.
        let back = s
            .apply(&user, &[w[4].key(), w[3].key()], InboxAction::Unarchive, t2)
            .await
            .unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(find(&s, &user, w[4].key()).await.unwrap().archived_at, None);
        assert_eq!(titles(&s, &user, filter(All, Only)).await, ["c002"]);
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(4, 3));
        // A dismissed row is not found; another user finds nothing of this one's.
        assert!(s.dismiss(&user, w[0].key(), t2).await.unwrap());
        assert!(s
            .apply(&user, &[w[0].key()], InboxAction::Read, t2)
            .await
            .unwrap()
            .is_empty());
        let other = format!("{p}-other");
        assert!(s
            .apply(&other, &[w[1].key()], InboxAction::Archive, t2)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(3, 2));
        // The single-row read of the port is a read action.
        assert!(s.mark_read(&user, w[1].key(), t2).await.unwrap());
        assert_eq!(find(&s, &user, w[1].key()).await.unwrap().seen_at, Some(t2));
    }

    pub async fn a_range_action_changes_every_older_row_and_counts_the_changes(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let w = rows(&p, &user, 10, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&w).await.unwrap();
        let t = utc("2026-01-02T00:00:00Z");
        assert!(s.dismiss(&user, w[0].key(), t).await.unwrap());
        s.apply(&user, &[w[1].key()], InboxAction::Seen, t)
            .await
            .unwrap();
        // Strictly older than the key: rows 2..5 (0 dismissed, 1 seen already).
        let seen = s
            .apply_before(&user, w[6].key(), InboxAction::Seen, t, &[])
            .await;
        assert_eq!(seen.unwrap(), 4);
        assert_eq!(
            s.apply_before(&user, w[6].key(), InboxAction::Seen, t, &[])
                .await
                .unwrap(),
            0,
            "nothing left to change"
        );
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(9, 4));
        assert_eq!(
            s.apply_before(&user, w[4].key(), InboxAction::Read, t, &[])
                .await
                .unwrap(),
            3
        );
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(6, 4));
        assert_eq!(
            s.apply_before(&user, w[8].key(), InboxAction::Archive, t, &[])
                .await
                .unwrap(),
            7
        );
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(2, 2));
        let only = filter(StatusFilter::All, ArchivedFilter::Only);
        assert_eq!(titles(&s, &user, only).await.len(), 7);
        assert_eq!(
            s.apply_before(&user, w[3].key(), InboxAction::Unarchive, t, &[])
                .await
                .unwrap(),
            2
        );
        assert_eq!(titles(&s, &user, only).await.len(), 5);
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(2, 2));
        assert_eq!(find(&s, &user, w[0].key()).await, None, "still dismissed");
        // Before the oldest row: nothing.
        assert_eq!(
            s.apply_before(&user, w[0].key(), InboxAction::Archive, t, &[])
                .await
                .unwrap(),
            0
        );
    }

    pub async fn rows_of_hidden_campaigns_leave_pages_and_counts(s: Arc<dyn InboxStore>) {
        let p = run_id();
        let user = format!("{p}-u");
        // Rows c000..c004; c001 and c003 belong to retracted campaigns.
        let w = rows(&p, &user, 5, utc("2026-01-01T00:00:00Z"));
        s.write_batch(&w).await.unwrap();
        let hidden = vec![
            w[1].campaign_id.clone().unwrap(),
            w[3].campaign_id.clone().unwrap(),
            format!("{p}-never-sent-here"),
        ];
        let all = filter(StatusFilter::All, ArchivedFilter::Include);
        assert_eq!(
            titles(&s, &user, all.hiding(&hidden)).await,
            ["c004", "c002", "c000"]
        );
        assert_eq!(
            titles(&s, &user, all).await.len(),
            5,
            "hidden by the reader only"
        );
        assert_eq!(s.counts(&user, &hidden).await.unwrap(), counts(3, 3));
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(5, 5));
        let (page, c) = s
            .page_with_counts(&user, None, 2, InboxFilter::UNREAD.hiding(&hidden))
            .await
            .unwrap();
        let keys: Vec<_> = page.iter().map(Notification::key).collect();
        assert_eq!(keys, [w[4].key(), w[2].key()]);
        assert_eq!(c, counts(3, 3));
        // Paging on past a hidden row.
        let rest = s
            .page(
                &user,
                Some(w[2].key()),
                5,
                InboxFilter::default().hiding(&hidden),
            )
            .await
            .unwrap();
        assert_eq!(
            rest.iter().map(Notification::key).collect::<Vec<_>>(),
            [w[0].key()]
        );
    }

    pub async fn seen_all_moves_a_seen_watermark_that_a_read_watermark_also_moves(
        s: Arc<dyn InboxStore>,
    ) {
        let p = run_id();
        let user = format!("{p}-u");
        let start = utc("2026-01-01T00:00:00Z");
        let w = rows(&p, &user, 4, start);
        s.write_batch(&w).await.unwrap();
        // Everything up to row 1 seen: two rows covered.
        let mark = start + Duration::seconds(90);
        assert_eq!(s.mark_all_seen(&user, mark).await.unwrap(), 2);
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(4, 2));
        // A row written later with an older time is covered too, as by "read all".
        let late = row(&format!("{p}-late"), &user, start + Duration::seconds(30));
        s.write_batch(std::slice::from_ref(&late)).await.unwrap();
        let late_row = find(&s, &user, late.key()).await.unwrap();
        assert_eq!((late_row.seen_at, late_row.read_at), (Some(mark), None));
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(5, 2));
        let unseen = s
            .page(
                &user,
                None,
                10,
                filter(StatusFilter::Unseen, ArchivedFilter::Exclude),
            )
            .await
            .unwrap();
        let keys: Vec<_> = unseen.iter().map(Notification::key).collect();
        assert_eq!(keys, [w[3].key(), w[2].key()]);
        // Never back; a read watermark above it makes rows seen as well.
        assert_eq!(s.mark_all_seen(&user, start).await.unwrap(), 0);
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(5, 2));
        let read_mark = start + Duration::seconds(150);
        assert_eq!(s.mark_all_read(&user, read_mark).await.unwrap(), 4);
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(1, 1));
        let r2 = find(&s, &user, w[2].key()).await.unwrap();
        assert_eq!((r2.read_at, r2.seen_at), (Some(read_mark), Some(read_mark)));
        // Marked again by key later: read already (by the watermark), it keeps that time.
        let later = start + Duration::hours(2);
        for action in [InboxAction::Read, InboxAction::Seen] {
            let found = s.apply(&user, &[w[2].key()], action, later).await.unwrap();
            assert_eq!(found, [w[2].key()]);
        }
        let r2 = find(&s, &user, w[2].key()).await.unwrap();
        assert_eq!((r2.read_at, r2.seen_at), (Some(read_mark), Some(read_mark)));
        let r0 = find(&s, &user, w[0].key()).await.unwrap();
        assert_eq!(
            r0.seen_at,
            Some(mark),
            "the earlier seen watermark says when it was seen"
        );
        // Seen all again, above everything: the last row too.
        assert_eq!(
            s.mark_all_seen(&user, start + Duration::hours(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(s.counts(&user, &[]).await.unwrap(), counts(1, 0));
    }
}

/// ScyllaDB / Cassandra only (rows carry TTLs there instead of being purged).
mod ttl_cases {
    use super::*;

    pub async fn rows_and_their_read_state_expire_when_their_retention_ends(url: BackendUrl) {
        let s = herald_storage::open_inbox(&url, std::time::Duration::from_secs(4))
            .await
            .expect("open the inbox store");
        let p = run_id();
        let user = format!("{p}-u");
        let now = Utc::now();
        let fresh = rows(&p, &user, 2, now);
        // Older than the retention already: not written at all.
        let stale = rows(&format!("{p}s"), &user, 1, now - Duration::days(1));
        s.write_batch(&fresh).await.unwrap();
        s.write_batch(&stale).await.unwrap();
        assert_eq!(
            s.page(&user, None, 10, InboxFilter::default())
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(s.mark_read(&user, fresh[0].key(), now).await.unwrap());
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 1);
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        // Gone with every cell: no row, no read state left behind as a row of its own.
        assert!(s
            .page(&user, None, 10, InboxFilter::default())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(s.counts(&user, &[]).await.unwrap().unread, 0);
        assert!(!s
            .mark_read(&user, fresh[0].key(), Utc::now())
            .await
            .unwrap());
        assert!(!s.dismiss(&user, fresh[1].key(), Utc::now()).await.unwrap());
        assert_eq!(s.purge_before(Utc::now()).await.unwrap(), 0);
    }
}

macro_rules! inbox_conformance {
    ($engine:ident, $make:expr, [$($extra:ident),* $(,)?]) => {
        mod $engine {
            use super::*;
            inbox_conformance!(@cases $make;
                rows_read_back_newest_first_with_all_fields,
                keyset_pages_cover_every_row_once_even_with_equal_timestamps,
                rewriting_a_batch_keeps_the_read_and_dismiss_state,
                read_state_and_unread_count_follow_mark_read_and_read_all,
                users_cannot_touch_each_others_rows,
                dismissed_rows_disappear_from_pages_counts_and_replays,
                a_row_is_read_by_its_key_with_its_read_state,
                a_page_with_its_unread_count_agrees_with_the_two_separate_reads,
                after_replays_newer_rows_oldest_first,
                read_all_moves_a_watermark_that_covers_rows_written_after_it,
                the_unread_count_looks_at_a_bounded_window_above_the_watermark,
                a_large_batch_is_written_whole,
                $($extra,)*
            );
            inbox_conformance!(@states $make;
                seen_read_and_archived_rows_filter_pages_and_counts,
                a_range_action_changes_every_older_row_and_counts_the_changes,
                seen_all_moves_a_seen_watermark_that_a_read_watermark_also_moves,
                rows_of_hidden_campaigns_leave_pages_and_counts,
            );
        }
    };
    (@states $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(s) = $make.await {
                    state_cases::$case(s).await;
                }
            }
        )*
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

// The engines that purge rows, and may hold rows written before ids carried their time.
inbox_conformance!(
    sqlite,
    common::sqlite_inbox(),
    [
        a_row_whose_id_carries_no_time_is_found_by_id,
        purging_removes_only_rows_older_than_the_cutoff
    ]
);
inbox_conformance!(
    mysql,
    common::mysql_inbox(),
    [
        a_row_whose_id_carries_no_time_is_found_by_id,
        purging_removes_only_rows_older_than_the_cutoff
    ]
);
// A real ScyllaDB or Cassandra cluster (`HERALD_TEST_SCYLLA_URL`); kassandra, the only CQL
// server that runs here, ignores clustering order, ranges and TTLs, so it runs the smoke
// suite (`tests/scylla_smoke.rs`) instead.
inbox_conformance!(scylla, common::scylla_inbox(), []);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_rows_and_their_read_state_expire_when_their_retention_ends() {
    if let Some(url) = common::env_url("HERALD_TEST_SCYLLA_URL") {
        ttl_cases::rows_and_their_read_state_expire_when_their_retention_ends(url).await;
    }
}

/// Readiness probes and the fan-out's batch writes at once on a current-thread runtime (the
/// correctness harness runs whole roles on one): neither may wait on the other. The probe once
/// held SQLite's write lock outside the file's writer gate while the inbox's synchronous writer
/// busy-waited for it on the only thread, which stopped the probe, and every other task and
/// timer, for SQLite's 30 s busy timeout.
#[tokio::test(flavor = "current_thread")]
async fn sqlite_readiness_probes_and_batch_writes_at_once_never_stall_each_other() {
    let s = common::sqlite_inbox().await.unwrap();
    let p = run_id();
    let start = herald_core::ids::row_time(Utc::now());
    let writes = async {
        for i in 0..100 {
            let batch = rows(&p, &format!("{p}-u{i}"), 5, start);
            s.write_batch(&batch).await.unwrap();
            // Let a probe get as far as holding the lock, waiting on its connection's thread.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let probes = async {
        for _ in 0..100 {
            s.ping()
                .await
                .expect("the probe got the write lock in time");
        }
    };
    let both = async { tokio::join!(writes, probes) };
    tokio::time::timeout(std::time::Duration::from_secs(20), both)
        .await
        .expect("100 batch writes and 100 probes within 20 s");
}
