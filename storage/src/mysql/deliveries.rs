//! The push gateway's store on MySQL 8 / MariaDB 10.11: webhook subscriptions, dead letters,
//! processed-message marks and delivery claims (schema and its reasons in
//! `migrations/mysql/deliveries/`).
//!
//! Every write is one statement, and nothing reads before it writes: a webhook upsert keeps
//! the stored `created_at` column, which is the source of truth on read (the JSON copy is
//! whatever the last writer sent). A row kept as it is uses `ON DUPLICATE KEY UPDATE` with a
//! no-op, never `INSERT IGNORE`, which would turn strict mode's errors into warnings.

use super::{open_pool, text};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::delivery::{DeadLetter, Webhook};
use herald_core::model::Channel;
use herald_core::ports::{DeliveryClaim, DeliveryStore};
use herald_core::Result;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "deliveries", "0001_init"),
    migration!("mysql", "deliveries", "0002_claims"),
];

/// Marks removed per statement by the purge, so one run never holds locks on millions of rows.
const PURGE_BATCH: i64 = 5000;

pub struct MysqlDeliveries {
    pool: MySqlPool,
}

impl MysqlDeliveries {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "deliveries", 8, MIGRATIONS).await?,
        })
    }
}

fn webhook_from(row: &MySqlRow) -> Result<Webhook> {
    let mut w: Webhook =
        serde_json::from_str(&text(row, "spec")?).map_err(|e| corrupt("webhook", e))?;
    w.created_at = from_micros(row.try_get("created_at").map_err(db_error)?);
    Ok(w)
}

fn letter_from(row: &MySqlRow) -> Result<DeadLetter> {
    let mut letter: DeadLetter =
        serde_json::from_str(&text(row, "spec")?).map_err(|e| corrupt("dead letter", e))?;
    // The column is the source of truth; the JSON copy is from when it was stored.
    letter.replayed_at = opt_from_micros(row.try_get("replayed_at").map_err(db_error)?);
    Ok(letter)
}

#[async_trait]
impl DeliveryStore for MysqlDeliveries {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn put_webhook(&self, w: &Webhook) -> Result<()> {
        let spec = serde_json::to_string(w).map_err(|e| corrupt("webhook", e))?;
        sqlx::query(
            "INSERT INTO webhooks (id, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE spec = VALUES(spec), updated_at = VALUES(updated_at)",
        )
        .bind(&w.id)
        .bind(spec)
        .bind(micros(w.created_at))
        .bind(micros(w.updated_at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>> {
        sqlx::query("SELECT spec, created_at FROM webhooks WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(webhook_from)
            .transpose()
    }

    async fn list_webhooks(&self, after: Option<&str>, limit: u32) -> Result<Vec<Webhook>> {
        sqlx::query("SELECT spec, created_at FROM webhooks WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(webhook_from)
            .collect()
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM webhooks WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn is_processed(&self, key: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM processed_messages WHERE msg_key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    async fn claim(
        &self,
        key: &str,
        holder: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<DeliveryClaim> {
        let until = crate::lease_end(now, lease);
        // One upsert takes the claim when it is free, run out or already ours. Both columns
        // test the same condition, and `holder` is assigned first: evaluated left to right
        // (MySQL, MariaDB's default) the second test sees our holder exactly when the first
        // took the claim; evaluated on the old values (MariaDB's SIMULTANEOUS_ASSIGNMENT) it
        // is the first test again. Either way both columns change together or not at all.
        sqlx::query(
            "INSERT INTO delivery_claims (msg_key, holder, held_until) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE \
             holder = IF(held_until <= ? OR holder = VALUES(holder), VALUES(holder), holder), \
             held_until = IF(held_until <= ? OR holder = VALUES(holder), \
                             VALUES(held_until), held_until)",
        )
        .bind(key)
        .bind(holder)
        .bind(micros(until))
        .bind(micros(now))
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        // Read after the write: a holder that marked the key processed while its claim held
        // is seen here, whoever holds the claim now.
        let row = sqlx::query(
            "SELECT c.holder, c.held_until, \
             EXISTS (SELECT 1 FROM processed_messages p WHERE p.msg_key = c.msg_key) AS done \
             FROM delivery_claims c WHERE c.msg_key = ?",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let done: i64 = row.try_get_unchecked("done").map_err(db_error)?;
        let held_by = text(&row, "holder")?;
        Ok(if done != 0 {
            DeliveryClaim::Processed
        } else if held_by == holder {
            DeliveryClaim::Won
        } else {
            DeliveryClaim::Held {
                until: super::time(&row, "held_until")?,
            }
        })
    }

    async fn release(&self, key: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM delivery_claims WHERE msg_key = ? AND holder = ?")
            .bind(key)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn mark_processed(&self, key: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO processed_messages (msg_key, at) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE at = at",
        )
        .bind(key)
        .bind(micros(at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn purge_processed(&self, before: DateTime<Utc>) -> Result<u64> {
        super::delete_in_chunks(
            &self.pool,
            "DELETE FROM delivery_claims WHERE held_until < ? LIMIT ?",
            micros(before),
            PURGE_BATCH,
        )
        .await?;
        super::delete_in_chunks(
            &self.pool,
            "DELETE FROM processed_messages WHERE at < ? LIMIT ?",
            micros(before),
            PURGE_BATCH,
        )
        .await
    }

    async fn insert_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let spec = serde_json::to_string(letter).map_err(|e| corrupt("dead letter", e))?;
        sqlx::query(
            "INSERT INTO dead_letters (id, channel, spec, replayed_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE id = id",
        )
        .bind(&letter.id)
        .bind(letter.channel.as_str())
        .bind(spec)
        .bind(letter.replayed_at.map(micros))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        sqlx::query("SELECT spec, replayed_at FROM dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(letter_from)
            .transpose()
    }

    async fn list_dead_letters(
        &self,
        channel: Option<Channel>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let mut qb =
            QueryBuilder::<MySql>::new("SELECT spec, replayed_at FROM dead_letters WHERE 1=1");
        if let Some(channel) = channel {
            qb.push(" AND channel = ").push_bind(channel.as_str());
        }
        if let Some(before) = before {
            qb.push(" AND id < ").push_bind(before.to_owned());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        qb.build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(letter_from)
            .collect()
    }

    async fn mark_replayed(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ? AND replayed_at IS NULL",
        )
        .bind(micros(at))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn unmark_replayed(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE dead_letters SET replayed_at = NULL WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
