//! Cases of the `BroadcastStates` port, shared by the conformance suite (`broadcasts.rs`) and
//! the CQL smoke suite (`scylla_smoke.rs`). They need no broadcast stored: states are kept by
//! broadcast id, whatever store holds the broadcasts.

use super::common::{run_id, utc};
use chrono::Duration;
use herald_core::model::{BroadcastUserState, InboxAction};
use herald_core::ports::BroadcastStates;
use std::sync::Arc;
use uuid::Uuid;

pub async fn per_user_state_is_sparse_and_keeps_first_times(s: Arc<dyn BroadcastStates>) {
    let p = run_id();
    let (alice, bob) = (format!("{p}-alice"), format!("{p}-bob"));
    let (b1, b2) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(s.user_states(&alice).await.unwrap().is_empty());
    let t1 = utc("2026-02-24T00:00:00Z");
    let t2 = t1 + Duration::hours(1);
    s.mark_read(&alice, b1, t1).await.unwrap();
    s.mark_read(&alice, b1, t2).await.unwrap();
    s.dismiss(&alice, b2, t2).await.unwrap();
    let mut states = s.user_states(&alice).await.unwrap();
    states.sort_by_key(|st| st.broadcast_id);
    assert_eq!(
        states,
        vec![
            BroadcastUserState {
                read_at: Some(t1),
                ..BroadcastUserState::new(b1, &alice)
            },
            BroadcastUserState {
                dismissed_at: Some(t2),
                ..BroadcastUserState::new(b2, &alice)
            },
        ]
    );
    assert!(s.user_states(&bob).await.unwrap().is_empty());
}

/// Two nodes marking the same broadcast at once may write in either order; the earliest
/// time is the one kept, for reads and dismissals alike, and one does not touch the other.
pub async fn the_earliest_time_is_kept_whatever_order_the_marks_arrive_in(
    s: Arc<dyn BroadcastStates>,
) {
    let user = format!("{}-carol", run_id());
    let b = Uuid::now_v7();
    let t1 = utc("2026-03-01T08:00:00.123456Z");
    let (t0, t2) = (t1 - Duration::minutes(5), t1 + Duration::minutes(5));
    s.dismiss(&user, b, t2).await.unwrap();
    s.mark_read(&user, b, t1).await.unwrap();
    s.mark_read(&user, b, t2).await.unwrap();
    s.mark_read(&user, b, t0).await.unwrap();
    s.dismiss(&user, b, t1).await.unwrap();
    s.dismiss(&user, b, t1).await.unwrap();
    assert_eq!(
        s.user_states(&user).await.unwrap(),
        vec![BroadcastUserState {
            read_at: Some(t0),
            dismissed_at: Some(t1),
            ..BroadcastUserState::new(b, &user)
        }],
        "microseconds kept exactly, earliest of each"
    );
}

/// A user who acted on many broadcasts gets every state back in one read.
pub async fn every_state_of_a_user_with_many_comes_back(s: Arc<dyn BroadcastStates>) {
    let user = format!("{}-dave", run_id());
    let at = utc("2026-03-02T00:00:00Z");
    let ids: Vec<Uuid> = (0..1500).map(|_| Uuid::now_v7()).collect();
    futures::future::try_join_all(ids.iter().map(|id| s.mark_read(&user, *id, at)))
        .await
        .unwrap();
    let mut got: Vec<Uuid> = s
        .user_states(&user)
        .await
        .unwrap()
        .into_iter()
        .map(|st| st.broadcast_id)
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
}

/// Seen and archived beside read and dismissed: the earliest seen time is kept, an unarchive
/// clears the archive time and a later archive sets it again; one state never touches
/// another, nor another user's.
pub async fn seen_and_archived_are_kept_beside_read_and_dismissed(s: Arc<dyn BroadcastStates>) {
    let p = run_id();
    let (erin, frank) = (format!("{p}-erin"), format!("{p}-frank"));
    let (b1, b2) = (Uuid::now_v7(), Uuid::now_v7());
    let t1 = utc("2026-03-03T00:00:00.000001Z");
    let (t0, t2, t3) = (
        t1 - Duration::minutes(1),
        t1 + Duration::minutes(1),
        t1 + Duration::minutes(2),
    );
    s.apply(&erin, b1, InboxAction::Seen, t1).await.unwrap();
    s.apply(&erin, b1, InboxAction::Seen, t2).await.unwrap();
    s.apply(&erin, b1, InboxAction::Seen, t0).await.unwrap();
    s.apply(&erin, b1, InboxAction::Archive, t1).await.unwrap();
    s.apply(&erin, b1, InboxAction::Archive, t2).await.unwrap();
    s.apply(&erin, b2, InboxAction::Read, t1).await.unwrap();
    s.apply(&erin, b2, InboxAction::Archive, t1).await.unwrap();
    s.apply(&erin, b2, InboxAction::Unarchive, t2)
        .await
        .unwrap();
    // Unarchiving what was never archived (or is another user's) archives nothing.
    s.apply(&frank, b1, InboxAction::Unarchive, t2)
        .await
        .unwrap();
    let mut states = s.user_states(&erin).await.unwrap();
    states.sort_by_key(|st| st.broadcast_id);
    assert_eq!(
        states,
        vec![
            BroadcastUserState {
                seen_at: Some(t0),
                archived_at: Some(t1),
                ..BroadcastUserState::new(b1, &erin)
            },
            BroadcastUserState {
                read_at: Some(t1),
                ..BroadcastUserState::new(b2, &erin)
            },
        ]
    );
    assert!(s
        .user_states(&frank)
        .await
        .unwrap()
        .iter()
        .all(|st| st.archived_at.is_none() && st.seen_at.is_none()));
    // Archived again after the unarchive.
    s.apply(&erin, b2, InboxAction::Archive, t3).await.unwrap();
    let states = s.user_states(&erin).await.unwrap();
    let b2_state = states.iter().find(|st| st.broadcast_id == b2).unwrap();
    assert_eq!(b2_state.archived_at, Some(t3));
    assert_eq!(b2_state.read_at, Some(t1));
}
