//! The delay store on SQLite: one table indexed by due time (see
//! `migrations/sqlite/delays/0001_init.sql`). A claim is one `UPDATE ... RETURNING` that moves
//! the due rows' time to the end of the lease and stamps them with the claim's token; removal
//! deletes only rows still stamped with it.

use super::{Db, SqliteFile, MAX_PARAMS};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros};
use crate::BackendUrl;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::OutMessage;
use herald_core::ports::{DelayClaim, DelayStore, DelayedMessage};
use herald_core::Result;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[migration!("sqlite", "delays", "0001_init")];

pub struct SqliteDelays {
    db: Db,
}

impl SqliteFile for SqliteDelays {
    fn pool(&self) -> &SqlitePool {
        &self.db.pool
    }
}

impl SqliteDelays {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            db: Db::open(url, 4, MIGRATIONS).await?,
        })
    }
}

#[async_trait]
impl DelayStore for SqliteDelays {
    async fn ping(&self) -> Result<()> {
        self.db.ping_writable().await
    }

    async fn schedule(&self, messages: &[DelayedMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let (_gate, mut tx) = self.db.begin().await?;
        for chunk in messages.chunks(MAX_PARAMS / 6) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO delayed_messages (id, due, scheduled_due, topic, msg_key, payload) ",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(&m.id)
                    .push_bind(micros(m.due))
                    .push_bind(micros(m.due))
                    .push_bind(&m.topic)
                    .push_bind(&m.message.key)
                    .push_bind(&m.message.payload);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET due = excluded.due, \
                 scheduled_due = excluded.scheduled_due, claim = NULL, topic = excluded.topic, \
                 msg_key = excluded.msg_key, payload = excluded.payload",
            );
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
    ) -> Result<DelayClaim> {
        let (token, until) = crate::new_claim(now, lease);
        let (_gate, mut tx) = self.db.begin().await?;
        let rows = sqlx::query(
            "UPDATE delayed_messages SET due = ?, claim = ? WHERE id IN \
             (SELECT id FROM delayed_messages WHERE due <= ? ORDER BY due, id LIMIT ?) \
             RETURNING id, scheduled_due, topic, msg_key, payload",
        )
        .bind(micros(until))
        .bind(&token)
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        let mut messages: Vec<DelayedMessage> = rows
            .iter()
            .map(|r| DelayedMessage {
                id: r.get("id"),
                topic: r.get("topic"),
                message: OutMessage {
                    key: r.get("msg_key"),
                    payload: r.get("payload"),
                },
                due: from_micros(r.get("scheduled_due")),
            })
            .collect();
        // RETURNING gives rows in no particular order.
        messages.sort_by(|a, b| a.due.cmp(&b.due).then_with(|| a.id.cmp(&b.id)));
        Ok(DelayClaim { token, messages })
    }

    async fn remove(&self, token: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(ids).map_err(|e| crate::corrupt("id list", e))?;
        let _gate = self.db.gate().await;
        sqlx::query(
            "DELETE FROM delayed_messages WHERE claim = ? \
             AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(token)
        .bind(list)
        .execute(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MIN(due) FROM delayed_messages")
            .fetch_one(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(v.map(from_micros))
    }

    async fn pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delayed_messages")
            .fetch_one(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(n as u64)
    }
}
