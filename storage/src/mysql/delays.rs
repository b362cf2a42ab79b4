//! The delay store on MySQL 8 / MariaDB 10.11 (schema and its reasons in
//! `migrations/mysql/delays/0001_init.sql`). A claim is one transaction: the due rows are read
//! `FOR UPDATE SKIP LOCKED` (rows another publisher is claiming are passed over, not waited
//! for), then moved to the end of the lease and stamped with the claim's token. Removal deletes
//! only rows still stamped with it.

use super::{chunks_by_size, open_pool, retry_transient, MAX_PARAMS, MAX_STATEMENT_BYTES};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros};
use crate::{db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::OutMessage;
use herald_core::ports::{DelayClaim, DelayStore, DelayedMessage};
use herald_core::Result;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[migration!("mysql", "delays", "0001_init")];

/// Ids per `IN (...)` list.
const IN_CHUNK: usize = 1000;

pub struct MysqlDelays {
    pool: MySqlPool,
}

impl MysqlDelays {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "delays", 8, MIGRATIONS).await?,
        })
    }
}

#[async_trait]
impl DelayStore for MysqlDelays {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn schedule(&self, messages: &[DelayedMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let parts = chunks_by_size(messages, MAX_PARAMS / 6, MAX_STATEMENT_BYTES, |m| {
            m.id.len() + m.topic.len() + m.message.payload.len() + 64
        });
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            for part in &parts {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "INSERT INTO delayed_messages \
                     (id, due, scheduled_due, topic, msg_key, payload) ",
                );
                q.push_values(part.iter(), |mut b, m| {
                    b.push_bind(&m.id)
                        .push_bind(micros(m.due))
                        .push_bind(micros(m.due))
                        .push_bind(&m.topic)
                        .push_bind(&m.message.key)
                        .push_bind(&m.message.payload);
                });
                q.push(
                    " ON DUPLICATE KEY UPDATE due = VALUES(due), \
                     scheduled_due = VALUES(scheduled_due), claim = NULL, topic = VALUES(topic), \
                     msg_key = VALUES(msg_key), payload = VALUES(payload)",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
    ) -> Result<DelayClaim> {
        let (token, until) = crate::new_claim(now, lease);
        let messages = retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "SELECT id, scheduled_due, topic, msg_key, payload FROM delayed_messages \
                 WHERE due <= ? ORDER BY due, id LIMIT ? FOR UPDATE SKIP LOCKED",
            )
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            // Binary-collated text columns carry the BINARY flag, which sqlx takes for
            // VARBINARY: decoded unchecked, as the directory does.
            let messages = rows
                .iter()
                .map(|r| {
                    Ok(DelayedMessage {
                        id: r.try_get_unchecked("id")?,
                        topic: r.try_get_unchecked("topic")?,
                        message: OutMessage {
                            key: r.try_get_unchecked("msg_key")?,
                            payload: r.try_get("payload")?,
                        },
                        due: from_micros(r.try_get("scheduled_due")?),
                    })
                })
                .collect::<std::result::Result<Vec<DelayedMessage>, sqlx::Error>>()?;
            for part in messages.chunks(IN_CHUNK) {
                let mut q: QueryBuilder<MySql> =
                    QueryBuilder::new("UPDATE delayed_messages SET due = ");
                q.push_bind(micros(until))
                    .push(", claim = ")
                    .push_bind(&token)
                    .push(" WHERE id IN (");
                let mut ids = q.separated(", ");
                for m in part {
                    ids.push_bind(&m.id);
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(messages)
        })
        .await?;
        Ok(DelayClaim { token, messages })
    }

    async fn remove(&self, token: &str, ids: &[String]) -> Result<()> {
        for part in ids.chunks(IN_CHUNK) {
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("DELETE FROM delayed_messages WHERE claim = ");
            q.push_bind(token).push(" AND id IN (");
            let mut list = q.separated(", ");
            for id in part {
                list.push_bind(id);
            }
            q.push(")");
            q.build().execute(&self.pool).await.map_err(db_error)?;
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MIN(due) FROM delayed_messages")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(v.map(from_micros))
    }

    async fn pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delayed_messages")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(n as u64)
    }
}
