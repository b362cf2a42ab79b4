//! The push gateway's store on SQLite: webhook subscriptions, dead letters (JSON rows keyed by
//! a time-ordered id), processed-message marks and delivery claims.

use super::Db;
use super::SqliteFile;
use crate::delivery_log::{self, count};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::analytics::{DeliveryLogCounts, DeliveryLogEntry, LoggedFailure, MinuteRollup};
use herald_core::delivery::{DeadLetter, RecipientRecord, Webhook};
use herald_core::model::Channel;
use herald_core::ports::{DeliveryClaim, DeliveryStore};
use herald_core::Result;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "deliveries", "0001_init"),
    migration!("sqlite", "deliveries", "0002_claims"),
    migration!("sqlite", "deliveries", "0003_delivery_log"),
    migration!("sqlite", "deliveries", "0004_recipients"),
];
/// Recipient records per multi-row upsert (9 parameters each).
const RECIPIENT_CHUNK: usize = super::MAX_PARAMS / 9;

pub struct SqliteDeliveries {
    db: Db,
}

impl SqliteFile for SqliteDeliveries {
    fn pool(&self) -> &SqlitePool {
        &self.db.pool
    }
}

impl SqliteDeliveries {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            db: Db::open(url, 4, MIGRATIONS).await?,
        })
    }
}

fn webhook_from(spec: &str) -> Result<Webhook> {
    serde_json::from_str(spec).map_err(|e| corrupt("webhook", e))
}

fn letter_from(spec: &str, replayed_at: Option<i64>) -> Result<DeadLetter> {
    let mut letter: DeadLetter =
        serde_json::from_str(spec).map_err(|e| corrupt("dead letter", e))?;
    // The column is the source of truth; the JSON copy is from when it was stored.
    letter.replayed_at = crate::time::opt_from_micros(replayed_at);
    Ok(letter)
}

#[async_trait]
impl DeliveryStore for SqliteDeliveries {
    async fn ping(&self) -> Result<()> {
        self.db.ping_writable().await
    }

    async fn put_webhook(&self, w: &Webhook) -> Result<()> {
        let (_gate, mut tx) = self.db.begin().await?;
        let existing: Option<(String,)> = sqlx::query_as("SELECT spec FROM webhooks WHERE id = ?")
            .bind(&w.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let mut w = w.clone();
        if let Some((spec,)) = existing {
            w.created_at = webhook_from(&spec)?.created_at;
        }
        let spec = serde_json::to_string(&w).map_err(|e| corrupt("webhook", e))?;
        sqlx::query(
            "INSERT INTO webhooks (id, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(&w.id)
        .bind(spec)
        .bind(micros(w.created_at))
        .bind(micros(w.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT spec FROM webhooks WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        row.map(|(spec,)| webhook_from(&spec)).transpose()
    }

    async fn list_webhooks(&self, after: Option<&str>, limit: u32) -> Result<Vec<Webhook>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT spec FROM webhooks WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.db.pool)
                .await
                .map_err(|e| self.db_error(e))?;
        rows.iter().map(|(spec,)| webhook_from(spec)).collect()
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let _gate = self.db.gate().await;
        let n = sqlx::query("DELETE FROM webhooks WHERE id = ?")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        Ok(n > 0)
    }

    async fn is_processed(&self, key: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM processed_messages WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
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
        // One write transaction: the claim and the processed check see the same state.
        let (_gate, mut tx) = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO delivery_claims (key, holder, held_until) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, \
             held_until = excluded.held_until \
             WHERE delivery_claims.held_until <= ? OR delivery_claims.holder = excluded.holder",
        )
        .bind(key)
        .bind(holder)
        .bind(micros(until))
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        let row = sqlx::query(
            "SELECT holder, held_until, \
             EXISTS (SELECT 1 FROM processed_messages WHERE key = ?1) AS done \
             FROM delivery_claims WHERE key = ?1",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        let done: bool = row.get("done");
        let held_by: String = row.get("holder");
        Ok(if done {
            DeliveryClaim::Processed
        } else if held_by == holder {
            DeliveryClaim::Won
        } else {
            DeliveryClaim::Held {
                until: from_micros(row.get("held_until")),
            }
        })
    }

    async fn release(&self, key: &str, holder: &str) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query("DELETE FROM delivery_claims WHERE key = ? AND holder = ?")
            .bind(key)
            .bind(holder)
            .execute(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn mark_processed(&self, key: &str, at: DateTime<Utc>) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query(
            "INSERT INTO processed_messages (key, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(micros(at))
        .execute(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn purge_processed(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = micros(before);
        self.db
            .delete_in_chunks("delivery_claims", &["key"], "held_until", before)
            .await?;
        self.db
            .delete_in_chunks("processed_messages", &["key"], "at", before)
            .await
    }

    async fn insert_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let spec = serde_json::to_string(letter).map_err(|e| corrupt("dead letter", e))?;
        let _gate = self.db.gate().await;
        sqlx::query(
            "INSERT INTO dead_letters (id, channel, spec, replayed_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&letter.id)
        .bind(letter.channel.as_str())
        .bind(spec)
        .bind(letter.replayed_at.map(micros))
        .execute(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        let row = sqlx::query("SELECT spec, replayed_at FROM dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        row.map(|r| letter_from(r.get("spec"), r.get("replayed_at")))
            .transpose()
    }

    async fn list_dead_letters(
        &self,
        channel: Option<Channel>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new("SELECT spec, replayed_at FROM dead_letters WHERE 1=1");
        if let Some(channel) = channel {
            qb.push(" AND channel = ").push_bind(channel.as_str());
        }
        if let Some(before) = before {
            qb.push(" AND id < ").push_bind(before.to_owned());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb
            .build()
            .fetch_all(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|r| letter_from(r.get("spec"), r.get("replayed_at")))
            .collect()
    }

    async fn mark_replayed(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let _gate = self.db.gate().await;
        let n = sqlx::query(
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ? AND replayed_at IS NULL",
        )
        .bind(micros(at))
        .bind(id)
        .execute(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected();
        Ok(n > 0)
    }

    async fn unmark_replayed(&self, id: &str) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query("UPDATE dead_letters SET replayed_at = NULL WHERE id = ?")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn record_delivery_log(&self, e: &DeliveryLogEntry) -> Result<bool> {
        let minute = micros(herald_core::analytics::minute_of(e.at));
        let channel = e.channel.as_str();
        let failures = e
            .failures
            .iter()
            .map(delivery_log::failure_to_json)
            .collect::<Result<Vec<_>>>()?;
        let (_gate, mut tx) = self.db.begin().await?;
        let new = sqlx::query(
            "INSERT INTO delivery_log_keys (key, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&e.key)
        .bind(micros(e.at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected()
            > 0;
        if !new {
            return Ok(false);
        }
        let c = &e.counts;
        let ms_sum = e.latency.map_or(0, |(_, ms)| ms);
        sqlx::query(
            "INSERT INTO delivery_rollups (minute, channel, reports, sent, failed, invalid_tokens, \
             dead_lettered, unreachable, retried, latency_ms_sum, provider_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (minute, channel) DO UPDATE SET reports = reports + excluded.reports, \
             sent = sent + excluded.sent, failed = failed + excluded.failed, \
             invalid_tokens = invalid_tokens + excluded.invalid_tokens, \
             dead_lettered = dead_lettered + excluded.dead_lettered, \
             unreachable = unreachable + excluded.unreachable, \
             retried = retried + excluded.retried, \
             latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, \
             provider_ms = provider_ms + excluded.provider_ms",
        )
        .bind(minute)
        .bind(channel)
        .bind(c.reports as i64)
        .bind(c.sent as i64)
        .bind(c.failed as i64)
        .bind(c.invalid_tokens as i64)
        .bind(c.dead_lettered as i64)
        .bind(c.unreachable as i64)
        .bind(c.retried as i64)
        .bind(ms_sum as i64)
        .bind(c.provider_ms as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        if let Some((bucket, _)) = e.latency.filter(|_| c.sent > 0) {
            sqlx::query(
                "INSERT INTO delivery_latency (minute, channel, bucket, sends) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (minute, channel, bucket) DO UPDATE SET sends = sends + excluded.sends",
            )
            .bind(minute)
            .bind(channel)
            .bind(bucket as i64)
            .bind(c.sent as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        }
        for (f, spec) in e.failures.iter().zip(failures) {
            sqlx::query(
                "INSERT INTO delivery_failures (channel, at, id, spec) VALUES (?, ?, ?, ?)",
            )
            .bind(f.channel.as_str())
            .bind(micros(f.at))
            .bind(herald_core::ids::new_id().to_string())
            .bind(spec)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(true)
    }

    async fn delivery_rollups(
        &self,
        since: DateTime<Utc>,
        channel: Option<Channel>,
    ) -> Result<Vec<MinuteRollup>> {
        let since = micros(herald_core::analytics::minute_of(since));
        let channel = channel.map(Channel::as_str);
        let rows = sqlx::query(
            "SELECT minute, channel, reports, sent, failed, invalid_tokens, dead_lettered, \
             unreachable, retried, latency_ms_sum, provider_ms FROM delivery_rollups \
             WHERE minute >= ?1 AND (?2 IS NULL OR channel = ?2) ORDER BY minute, channel",
        )
        .bind(since)
        .bind(channel)
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        let rows = rows
            .iter()
            .map(|r| {
                let counts = DeliveryLogCounts {
                    reports: count(r.get("reports")),
                    sent: count(r.get("sent")),
                    failed: count(r.get("failed")),
                    invalid_tokens: count(r.get("invalid_tokens")),
                    dead_lettered: count(r.get("dead_lettered")),
                    unreachable: count(r.get("unreachable")),
                    retried: count(r.get("retried")),
                    provider_ms: count(r.get("provider_ms")),
                };
                let ms: i64 = r.get("latency_ms_sum");
                (r.get("minute"), r.get("channel"), counts, count(ms))
            })
            .collect();
        let latency = sqlx::query(
            "SELECT minute, channel, bucket, sends FROM delivery_latency \
             WHERE minute >= ?1 AND (?2 IS NULL OR channel = ?2)",
        )
        .bind(since)
        .bind(channel)
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?
        .iter()
        .map(|r| {
            let sends: i64 = r.get("sends");
            (
                r.get("minute"),
                r.get("channel"),
                r.get("bucket"),
                count(sends),
            )
        })
        .collect();
        Ok(delivery_log::merge(rows, latency))
    }

    async fn recent_failures(
        &self,
        channel: Channel,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LoggedFailure>> {
        let rows = sqlx::query(delivery_log::RECENT_FAILURES)
            .bind(channel.as_str())
            .bind(micros(since))
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|r| delivery_log::failure_from_json(r.get("spec")))
            .collect()
    }

    async fn record_recipients(&self, records: &[RecipientRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (_gate, mut tx) = self.db.begin().await?;
        for chunk in records.chunks(RECIPIENT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO recipient_outcomes (campaign_id, user_id, channel, status, sent, \
                 reason, dead_letter_id, attempt, at) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(&r.campaign_id)
                    .push_bind(&r.user_id)
                    .push_bind(r.channel.as_str())
                    .push_bind(r.status.as_str())
                    .push_bind(i64::from(r.sent))
                    .push_bind(&r.reason)
                    .push_bind(&r.dead_letter_id)
                    .push_bind(i64::from(r.attempt))
                    .push_bind(micros(r.at));
            });
            // A later attempt's record wins, except that a recipient sent to stays sent (a
            // retry holds only the devices that failed); the sends of attempts add up.
            qb.push(
                " ON CONFLICT (campaign_id, user_id, channel) DO UPDATE SET \
                 status = CASE WHEN recipient_outcomes.status = 'sent' THEN 'sent' \
                 ELSE excluded.status END, \
                 sent = CASE WHEN excluded.attempt > recipient_outcomes.attempt \
                 THEN recipient_outcomes.sent + excluded.sent \
                 ELSE MAX(recipient_outcomes.sent, excluded.sent) END, \
                 reason = excluded.reason, \
                 dead_letter_id = COALESCE(excluded.dead_letter_id, recipient_outcomes.dead_letter_id), \
                 attempt = excluded.attempt, at = excluded.at \
                 WHERE excluded.attempt >= recipient_outcomes.attempt",
            );
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn recipient_records(
        &self,
        campaign_id: &str,
        user_id: &str,
    ) -> Result<Vec<RecipientRecord>> {
        let rows = sqlx::query(
            "SELECT channel, status, sent, reason, dead_letter_id, attempt, at \
             FROM recipient_outcomes WHERE campaign_id = ? AND user_id = ? ORDER BY channel",
        )
        .bind(campaign_id)
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|row| {
                Ok(RecipientRecord {
                    campaign_id: campaign_id.to_owned(),
                    user_id: user_id.to_owned(),
                    channel: crate::parse_enum("channel", row.get("channel"))?,
                    status: crate::parse_enum("recipient status", row.get("status"))?,
                    sent: row.get::<i64, _>("sent") as u32,
                    reason: row.get("reason"),
                    dead_letter_id: row.get("dead_letter_id"),
                    attempt: row.get::<i64, _>("attempt") as u32,
                    at: from_micros(row.get("at")),
                })
            })
            .collect()
    }

    async fn sent_recipients(
        &self,
        campaign_id: &str,
        channel: Channel,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        // Along the primary key (campaign, user, channel).
        let rows = sqlx::query(
            "SELECT user_id FROM recipient_outcomes WHERE campaign_id = ? AND user_id > ? \
             AND channel = ? AND status = 'sent' ORDER BY user_id LIMIT ?",
        )
        .bind(campaign_id)
        .bind(after.unwrap_or(""))
        .bind(channel.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.db.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(rows.iter().map(|r| r.get::<String, _>("user_id")).collect())
    }

    async fn purge_delivery_log(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = micros(before);
        let mut rollups = 0;
        for (table, key, column) in [
            ("delivery_rollups", &["minute", "channel"][..], "minute"),
            (
                "delivery_latency",
                &["minute", "channel", "bucket"],
                "minute",
            ),
            ("delivery_failures", &["channel", "at", "id"], "at"),
            ("delivery_log_keys", &["key"], "at"),
            (
                "recipient_outcomes",
                &["campaign_id", "user_id", "channel"],
                "at",
            ),
        ] {
            let n = self.db.delete_in_chunks(table, key, column, before).await?;
            if table == "delivery_rollups" {
                rollups = n;
            }
        }
        Ok(rollups)
    }
}
