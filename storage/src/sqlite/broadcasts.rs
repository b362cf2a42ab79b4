//! The broadcast store on SQLite: each broadcast is one row whatever its audience; per-user
//! state exists only for users who read or dismissed it.

use super::open_pool;
use super::readers::Readers;
use super::statement::Sql;
use super::SqliteFile;
use crate::migrations::{migration, Migration};
use crate::time::{micros, opt_from_micros};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{Broadcast, BroadcastStatus, BroadcastUserState, InboxAction};
use herald_core::ports::{BroadcastStates, BroadcastStore};
use herald_core::{Error, ErrorKind, Result};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "broadcasts", "0001_init"),
    migration!("sqlite", "broadcasts", "0002_states"),
];

pub struct SqliteBroadcasts {
    pool: SqlitePool,
    /// The per-user state read of every inbox page while a broadcast is live runs here.
    readers: Readers,
}

impl SqliteFile for SqliteBroadcasts {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteBroadcasts {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let pool = open_pool(url, 4, MIGRATIONS).await?;
        Ok(Self {
            readers: Readers::new(&pool, 2),
            pool,
        })
    }
}

fn broadcast_from_row(row: &SqliteRow) -> Result<Broadcast> {
    let spec: String = row.get("spec");
    let mut b: Broadcast = serde_json::from_str(&spec).map_err(|e| corrupt("broadcast", e))?;
    // The status column is the source of truth; the JSON copy is from creation time.
    let status: String = row.get("status");
    b.status = status.parse().map_err(|e| corrupt("broadcast status", e))?;
    Ok(b)
}

#[async_trait]
impl BroadcastStore for SqliteBroadcasts {
    async fn ping(&self) -> Result<()> {
        super::ping_writable(&self.pool).await
    }

    async fn insert(&self, b: &Broadcast) -> Result<()> {
        let spec = serde_json::to_string(b).map_err(|e| corrupt("broadcast", e))?;
        sqlx::query(
            "INSERT INTO broadcasts (id, status, starts_at, expires_at, spec, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(b.id.as_bytes().to_vec())
        .bind(b.status.as_str())
        .bind(micros(b.starts_at))
        .bind(b.expires_at.map(micros))
        .bind(spec)
        .bind(micros(b.created_at))
        .execute(&self.pool)
        .await
        .map_err(|e| match self.db_error(e) {
            err if err.kind == ErrorKind::Conflict => {
                Error::conflict(format!("broadcast `{}` already exists", b.id))
            }
            err => err,
        })?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Broadcast>> {
        let row = sqlx::query("SELECT status, spec FROM broadcasts WHERE id = ?")
            .bind(id.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        row.as_ref().map(broadcast_from_row).transpose()
    }

    async fn list_open(&self) -> Result<Vec<Broadcast>> {
        let rows = sqlx::query(
            "SELECT status, spec FROM broadcasts WHERE status IN ('scheduled', 'active') \
             ORDER BY starts_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter().map(broadcast_from_row).collect()
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
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE broadcasts SET status = ");
        qb.push_bind(to.as_str())
            .push(" WHERE id = ")
            .push_bind(id.as_bytes().to_vec())
            .push(" AND status IN (");
        let mut sep = qb.separated(", ");
        for s in from {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        Ok(n > 0)
    }
}

#[async_trait]
impl BroadcastStates for SqliteBroadcasts {
    async fn ping(&self) -> Result<()> {
        super::ping_writable(&self.pool).await
    }

    async fn user_states(&self, user_id: &str) -> Result<Vec<BroadcastUserState>> {
        let mut sql = Sql::new(
            "SELECT broadcast_id, read_at, dismissed_at, seen_at, archived_at \
             FROM broadcast_user_state WHERE user_id = ",
        );
        sql.bind(user_id);
        type Raw = (Vec<u8>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let rows: Vec<Raw> = self
            .readers
            .all(sql, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .await?;
        rows.into_iter()
            .map(|(id, read_at, dismissed_at, seen_at, archived_at)| {
                Ok(BroadcastUserState {
                    broadcast_id: Uuid::from_slice(&id).map_err(|e| corrupt("broadcast id", e))?,
                    user_id: user_id.to_owned(),
                    read_at: opt_from_micros(read_at),
                    dismissed_at: opt_from_micros(dismissed_at),
                    seen_at: opt_from_micros(seen_at),
                    archived_at: opt_from_micros(archived_at),
                })
            })
            .collect()
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
            InboxAction::Seen => {
                "INSERT INTO broadcast_user_state (user_id, broadcast_id, seen_at) VALUES (?, ?, ?) \
                 ON CONFLICT (user_id, broadcast_id) DO UPDATE SET \
                 seen_at = MIN(COALESCE(seen_at, excluded.seen_at), excluded.seen_at)"
            }
            InboxAction::Read => {
                "INSERT INTO broadcast_user_state (user_id, broadcast_id, read_at) VALUES (?, ?, ?) \
                 ON CONFLICT (user_id, broadcast_id) DO UPDATE SET \
                 read_at = MIN(COALESCE(read_at, excluded.read_at), excluded.read_at)"
            }
            InboxAction::Archive => {
                "INSERT INTO broadcast_user_state (user_id, broadcast_id, archived_at) \
                 VALUES (?, ?, ?) ON CONFLICT (user_id, broadcast_id) DO UPDATE SET \
                 archived_at = MIN(COALESCE(archived_at, excluded.archived_at), excluded.archived_at)"
            }
            InboxAction::Unarchive => {
                "UPDATE broadcast_user_state SET archived_at = NULL \
                 WHERE user_id = ? AND broadcast_id = ? AND ? IS NOT NULL"
            }
        };
        sqlx::query(sql)
            .bind(user_id)
            .bind(id.as_bytes().to_vec())
            .bind(micros(at))
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn dismiss(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO broadcast_user_state (user_id, broadcast_id, dismissed_at) \
             VALUES (?, ?, ?) ON CONFLICT (user_id, broadcast_id) DO UPDATE SET \
             dismissed_at = CASE WHEN broadcast_user_state.dismissed_at IS NULL \
             OR excluded.dismissed_at < broadcast_user_state.dismissed_at THEN excluded.dismissed_at \
             ELSE broadcast_user_state.dismissed_at END",
        )
        .bind(user_id)
        .bind(id.as_bytes().to_vec())
        .bind(micros(at))
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }
}
