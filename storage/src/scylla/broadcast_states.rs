//! Per-user broadcast state on ScyllaDB / Cassandra (`migrations/cql/broadcast_states/` says
//! why the table is shaped as it is): one partition per user, every mark a blind insert of its
//! own clustering row, the earliest time of each (broadcast, kind) taken on read.

use super::{cql_migration, db_error, prepare};
use crate::migrations::Migration;
use crate::time::{from_micros, micros};
use crate::BackendUrl;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use herald_core::model::{BroadcastUserState, InboxAction};
use herald_core::ports::BroadcastStates;
use herald_core::{Error, Result};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[cql_migration!("broadcast_states", "0001_init")];

/// The statements, exactly as prepared.
pub mod cql {
    /// One mark: `kind` is [`READ`] or [`DISMISSED`].
    pub const INSERT: &str =
        "INSERT INTO broadcast_states_by_user (user_id, broadcast_id, kind, at) VALUES (?, ?, ?, ?)";
    /// Every mark of one user (one partition, paged).
    pub const USER: &str =
        "SELECT broadcast_id, kind, at FROM broadcast_states_by_user WHERE user_id = ?";
    pub const READ: &str = "read";
    pub const DISMISSED: &str = "dismissed";
    pub const SEEN: &str = "seen";
    pub const ARCHIVED: &str = "archived";
    /// An unarchive: the latest of `archived` and `unarchived` says the archive state.
    pub const UNARCHIVED: &str = "unarchived";
}

/// Rows fetched per page of a user's marks.
const PAGE_SIZE: i32 = 1000;

pub struct ScyllaBroadcastStates {
    session: Arc<Session>,
    insert: PreparedStatement,
    user: PreparedStatement,
}

impl ScyllaBroadcastStates {
    /// Connects, applies the schema, prepares the statements.
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let session = super::connect(url, "broadcast_states", MIGRATIONS).await?;
        let insert = prepare(&session, cql::INSERT).await?;
        let mut user = prepare(&session, cql::USER).await?;
        user.set_page_size(PAGE_SIZE);
        Ok(Self {
            session,
            insert,
            user,
        })
    }

    async fn mark(&self, user_id: &str, id: Uuid, kind: &str, at: DateTime<Utc>) -> Result<()> {
        self.session
            .execute_unpaged(&self.insert, (user_id, id, kind, micros(at)))
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Folds a user's marks into one state per broadcast, keeping the earliest time of read,
/// seen and dismissed, and as the archive time the earliest `archived` after the latest
/// `unarchived` (rows come in clustering order, but nothing here depends on it).
pub(crate) fn fold(
    user_id: &str,
    marks: impl IntoIterator<Item = (Uuid, String, i64)>,
) -> Result<Vec<BroadcastUserState>> {
    // Per broadcast: its state, every archive time and the latest unarchive.
    type Folding = (BroadcastUserState, Vec<i64>, Option<i64>);
    let mut states: BTreeMap<Uuid, Folding> = BTreeMap::new();
    for (id, kind, at) in marks {
        let (state, archived, unarchived) = states
            .entry(id)
            .or_insert_with(|| (BroadcastUserState::new(id, user_id), Vec::new(), None));
        let slot = match kind.as_str() {
            cql::READ => &mut state.read_at,
            cql::DISMISSED => &mut state.dismissed_at,
            cql::SEEN => &mut state.seen_at,
            cql::ARCHIVED => {
                archived.push(at);
                continue;
            }
            cql::UNARCHIVED => {
                if unarchived.is_none_or(|t| at > t) {
                    *unarchived = Some(at);
                }
                continue;
            }
            other => {
                return Err(crate::corrupt(
                    "broadcast state",
                    Error::internal(format!("unknown kind `{other}`")),
                ))
            }
        };
        let at = from_micros(at);
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }
    Ok(states
        .into_values()
        .map(|(mut state, archived, unarchived)| {
            state.archived_at = archived
                .into_iter()
                .filter(|a| unarchived.is_none_or(|u| *a > u))
                .min()
                .map(from_micros);
            state
        })
        .collect())
}

#[async_trait]
impl BroadcastStates for ScyllaBroadcastStates {
    async fn ping(&self) -> Result<()> {
        // One partition read (of a user no one is): the replicas of one token answer.
        self.user_states("herald-ping").await.map(|_| ())
    }

    async fn user_states(&self, user_id: &str) -> Result<Vec<BroadcastUserState>> {
        let marks: Vec<(Uuid, String, i64)> = self
            .session
            .execute_iter(self.user.clone(), (user_id,))
            .await
            .map_err(db_error)?
            .rows_stream::<(Uuid, String, i64)>()
            .map_err(db_error)?
            .try_collect()
            .await
            .map_err(db_error)?;
        fold(user_id, marks)
    }

    async fn apply(
        &self,
        user_id: &str,
        id: Uuid,
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let kind = match action {
            InboxAction::Seen => cql::SEEN,
            InboxAction::Read => cql::READ,
            InboxAction::Archive => cql::ARCHIVED,
            InboxAction::Unarchive => cql::UNARCHIVED,
        };
        self.mark(user_id, id, kind, at).await
    }

    async fn dismiss(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        self.mark(user_id, id, cql::DISMISSED, at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_are_exactly_these_with_their_bind_markers() {
        assert_eq!(
            cql::INSERT,
            "INSERT INTO broadcast_states_by_user (user_id, broadcast_id, kind, at) \
             VALUES (?, ?, ?, ?)"
        );
        assert_eq!(
            cql::USER,
            "SELECT broadcast_id, kind, at FROM broadcast_states_by_user WHERE user_id = ?"
        );
        assert_eq!(cql::INSERT.matches('?').count(), 4);
        assert_eq!(cql::USER.matches('?').count(), 1);
        for s in [cql::INSERT, cql::USER] {
            assert!(!s.contains("ALLOW FILTERING") && !s.contains(" IF "), "{s}");
        }
    }

    #[test]
    fn marks_fold_into_one_state_per_broadcast_with_the_earliest_times() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = |s: i64| s * 1_000_000;
        let states = fold(
            "u",
            [
                (a, "read".to_owned(), t(30)),
                (a, "read".to_owned(), t(10)),
                (b, "dismissed".to_owned(), t(20)),
                (a, "read".to_owned(), t(40)),
                (b, "read".to_owned(), t(5)),
            ],
        )
        .unwrap();
        assert_eq!(
            states,
            vec![
                BroadcastUserState {
                    read_at: Some(from_micros(t(10))),
                    ..BroadcastUserState::new(a, "u")
                },
                BroadcastUserState {
                    read_at: Some(from_micros(t(5))),
                    dismissed_at: Some(from_micros(t(20))),
                    ..BroadcastUserState::new(b, "u")
                },
            ]
        );
        assert!(fold("u", [(a, "opened".to_owned(), 0)]).is_err());
    }

    #[test]
    fn the_latest_of_archive_and_unarchive_says_whether_a_broadcast_is_archived() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let m = |id, kind: &str, at: i64| (id, kind.to_owned(), at);
        let states = fold(
            "u",
            [
                m(a, "archived", 10),
                m(a, "unarchived", 20),
                m(b, "archived", 10),
                m(b, "unarchived", 20),
                m(b, "archived", 30),
                m(c, "seen", 7),
                m(c, "seen", 5),
                m(c, "archived", 9),
                m(c, "archived", 12),
            ],
        )
        .unwrap();
        assert_eq!(states[0].archived_at, None);
        assert_eq!(states[1].archived_at, Some(from_micros(30)));
        assert_eq!(states[2].archived_at, Some(from_micros(9)));
        assert_eq!(states[2].seen_at, Some(from_micros(5)));
    }
}
