//! Cases of the `BroadcastStates` port, shared by the conformance suite (`broadcasts.rs`) and
//! the CQL smoke suite (`scylla_smoke.rs`). They need no broadcast stored: states are kept by
//! broadcast id, whatever store holds the broadcasts.

use super::common::{run_id, utc};
use chrono::Duration;
use herald_core::model::BroadcastUserState;
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
                broadcast_id: b1,
                user_id: alice.clone(),
                read_at: Some(t1),
                dismissed_at: None,
            },
            BroadcastUserState {
                broadcast_id: b2,
                user_id: alice.clone(),
                read_at: None,
                dismissed_at: Some(t2),
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
            broadcast_id: b,
            user_id: user.clone(),
            read_at: Some(t0),
            dismissed_at: Some(t1),
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
