//! The broadcast store on MySQL 8 / MariaDB 10.11 (schema and its reasons in
//! `migrations/mysql/broadcasts/0001_init.sql`): each broadcast is one row whatever its
//! audience; a user's read and dismissal are rows of their own, written once, kept first.

use super::{open_pool, text};
use crate::migrations::{migration, Migration};
use crate::time::{micros, opt_from_micros};
use crate::{corrupt, db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{Broadcast, BroadcastStatus, BroadcastUserState, InboxAction};
use herald_core::ports::{BroadcastStates, BroadcastStore};
use herald_core::{Error, ErrorKind, Result};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "broadcasts", "0001_init"),
    migration!("mysql", "broadcasts", "0002_states"),
];

pub struct MysqlBroadcasts {
    pool: MySqlPool,
}

impl MysqlBroadcasts {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "broadcasts", 8, MIGRATIONS).await?,
        })
    }
}

fn broadcast_from_row(row: &MySqlRow) -> Result<Broadcast> {
    let mut b: Broadcast =
        serde_json::from_str(&text(row, "spec")?).map_err(|e| corrupt("broadcast", e))?;
    // The status column is the source of truth; the JSON copy is from creation time.
    b.status = text(row, "status")?
        .parse()
        .map_err(|e| corrupt("broadcast status", e))?;
    Ok(b)
}

#[async_trait]
impl BroadcastStore for MysqlBroadcasts {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn insert(&self, b: &Broadcast) -> Result<()> {
        let spec = serde_json::to_string(b).map_err(|e| corrupt("broadcast", e))?;
        sqlx::query(
            "INSERT INTO broadcasts (id, status, starts_at, expires_at, spec, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(b.id.as_bytes().as_slice())
        .bind(b.status.as_str())
        .bind(micros(b.starts_at))
        .bind(b.expires_at.map(micros))
        .bind(spec)
        .bind(micros(b.created_at))
        .execute(&self.pool)
        .await
        .map_err(|e| match db_error(e) {
            err if err.kind == ErrorKind::Conflict => {
                Error::conflict(format!("broadcast `{}` already exists", b.id))
            }
            err => err,
        })?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Broadcast>> {
        sqlx::query("SELECT status, spec FROM broadcasts WHERE id = ?")
            .bind(id.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(broadcast_from_row)
            .transpose()
    }

    async fn list_open(&self) -> Result<Vec<Broadcast>> {
        sqlx::query(
            "SELECT status, spec FROM broadcasts WHERE status IN ('scheduled', 'active') \
             ORDER BY starts_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?
        .iter()
        .map(broadcast_from_row)
        .collect()
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[BroadcastStatus],
        to: BroadcastStatus,
    ) -> Result<bool> {
        if from.is_empty() {
            return Ok(false);
        }
        let mut qb = QueryBuilder::<MySql>::new("UPDATE broadcasts SET status = ");
        qb.push_bind(to.as_str())
            .push(" WHERE id = ")
            .push_bind(id.as_bytes().to_vec())
            .push(" AND status IN (");
        let mut sep = qb.separated(", ");
        for s in from {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
        // Rows matched, not changed (sqlx sets CLIENT_FOUND_ROWS): a move to the status it
        // had already, allowed by `from`, still counts as made.
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }
}

#[async_trait]
impl BroadcastStates for MysqlBroadcasts {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn user_states(&self, user_id: &str) -> Result<Vec<BroadcastUserState>> {
        let rows = sqlx::query(
            "SELECT broadcast_id, read_at, NULL AS dismissed_at, NULL AS seen_at, \
             NULL AS archived_at FROM broadcast_reads WHERE user_id = ? \
             UNION ALL \
             SELECT broadcast_id, NULL, dismissed_at, NULL, NULL FROM broadcast_dismissals \
             WHERE user_id = ? \
             UNION ALL \
             SELECT broadcast_id, NULL, NULL, seen_at, archived_at FROM broadcast_views \
             WHERE user_id = ?",
        )
        .bind(user_id)
        .bind(user_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut states: BTreeMap<Uuid, BroadcastUserState> = BTreeMap::new();
        for row in rows {
            let id: Vec<u8> = row.try_get("broadcast_id").map_err(db_error)?;
            let id = Uuid::from_slice(&id).map_err(|e| corrupt("broadcast id", e))?;
            let time = |column: &str| -> Result<Option<DateTime<Utc>>> {
                let at: Option<i64> = row.try_get(column).map_err(db_error)?;
                Ok(opt_from_micros(at))
            };
            let state = states
                .entry(id)
                .or_insert_with(|| BroadcastUserState::new(id, user_id));
            state.read_at = state.read_at.or(time("read_at")?);
            state.dismissed_at = state.dismissed_at.or(time("dismissed_at")?);
            state.seen_at = state.seen_at.or(time("seen_at")?);
            state.archived_at = state.archived_at.or(time("archived_at")?);
        }
        Ok(states.into_values().collect())
    }

    async fn apply(
        &self,
        user_id: &str,
        id: Uuid,
        action: InboxAction,
        at: DateTime<Utc>,
    ) -> Result<()> {
        // The earliest time of each state is kept; an unarchive clears the archive time.
        let sql = match action {
            InboxAction::Read => {
                "INSERT INTO broadcast_reads (user_id, broadcast_id, read_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE read_at = LEAST(read_at, VALUES(read_at))"
            }
            InboxAction::Seen => {
                "INSERT INTO broadcast_views (user_id, broadcast_id, seen_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE \
                 seen_at = LEAST(COALESCE(seen_at, VALUES(seen_at)), VALUES(seen_at))"
            }
            InboxAction::Archive => {
                "INSERT INTO broadcast_views (user_id, broadcast_id, archived_at) \
                 VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE \
                 archived_at = LEAST(COALESCE(archived_at, VALUES(archived_at)), VALUES(archived_at))"
            }
            InboxAction::Unarchive => {
                "UPDATE broadcast_views SET archived_at = NULL \
                 WHERE user_id = ? AND broadcast_id = ? AND ? IS NOT NULL"
            }
        };
        sqlx::query(sql)
            .bind(user_id)
            .bind(id.as_bytes().as_slice())
            .bind(micros(at))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn dismiss(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO broadcast_dismissals (user_id, broadcast_id, dismissed_at) \
             VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE dismissed_at = LEAST(dismissed_at, VALUES(dismissed_at))",
        )
        .bind(user_id)
        .bind(id.as_bytes().as_slice())
        .bind(micros(at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}
