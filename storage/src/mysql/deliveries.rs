//! The push gateway's store on MySQL 8 / MariaDB 10.11: webhook subscriptions, dead letters,
//! processed-message marks and delivery claims (schema and its reasons in
//! `migrations/mysql/deliveries/`).
//!
//! Every write is one statement, and nothing reads before it writes: a webhook upsert keeps
//! the stored `created_at` column, which is the source of truth on read (the JSON copy is
//! whatever the last writer sent). A row kept as it is uses `ON DUPLICATE KEY UPDATE` with a
//! no-op, never `INSERT IGNORE`, which would turn strict mode's errors into warnings.

use super::{insert_once, open_pool, retry_transient, text};
use crate::delivery_log::{self, count};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::analytics::{DeliveryLogCounts, DeliveryLogEntry, LoggedFailure, MinuteRollup};
use herald_core::delivery::{DeadLetter, RecipientRecord, Webhook};
use herald_core::model::Channel;
use herald_core::ports::{DeliveryClaim, DeliveryStore};
use herald_core::Result;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "deliveries", "0001_init"),
    migration!("mysql", "deliveries", "0002_claims"),
    migration!("mysql", "deliveries", "0003_delivery_log"),
    migration!("mysql", "deliveries", "0004_recipients"),
];
/// Recipient records per multi-row upsert.
const RECIPIENT_CHUNK: usize = 1000;

/// Rows each delivery-log rollup (and histogram bucket) is spread over, so push gateway nodes
/// reporting into the same minute do not queue on one row lock (reads add them up).
const LOG_SHARDS: u64 = 8;

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
        if !storable_letter_id(id) {
            return Ok(None);
        }
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
        if !storable_letter_id(id) {
            return Ok(false);
        }
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
        if !storable_letter_id(id) {
            return Ok(());
        }
        sqlx::query("UPDATE dead_letters SET replayed_at = NULL WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn record_delivery_log(&self, e: &DeliveryLogEntry) -> Result<bool> {
        let minute = micros(herald_core::analytics::minute_of(e.at));
        let channel = e.channel.as_str();
        let shard = (crate::fnv1a(&e.key) % LOG_SHARDS) as i64;
        let failures = e
            .failures
            .iter()
            .map(|f| Ok((f, delivery_log::failure_to_json(f)?)))
            .collect::<Result<Vec<_>>>()?;
        let c = e.counts;
        let ms_sum = e.latency.map_or(0, |(_, ms)| ms) as i64;
        // The key row first: its lock orders concurrent recordings of one report, and a
        // rerun after a deadlock finds it (or not) exactly as the first attempt left it.
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let fresh = insert_once(
                &mut tx,
                sqlx::query("INSERT INTO delivery_log_keys (msg_key, at) VALUES (?, ?)")
                    .bind(&e.key)
                    .bind(micros(e.at)),
            )
            .await?;
            if !fresh {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO delivery_rollups (minute, channel, shard, reports, sent, failed, \
                 invalid_tokens, dead_lettered, unreachable, retried, latency_ms_sum, provider_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 reports = reports + VALUES(reports), sent = sent + VALUES(sent), \
                 failed = failed + VALUES(failed), \
                 invalid_tokens = invalid_tokens + VALUES(invalid_tokens), \
                 dead_lettered = dead_lettered + VALUES(dead_lettered), \
                 unreachable = unreachable + VALUES(unreachable), \
                 retried = retried + VALUES(retried), \
                 latency_ms_sum = latency_ms_sum + VALUES(latency_ms_sum), \
                 provider_ms = provider_ms + VALUES(provider_ms)",
            )
            .bind(minute)
            .bind(channel)
            .bind(shard)
            .bind(c.reports as i64)
            .bind(c.sent as i64)
            .bind(c.failed as i64)
            .bind(c.invalid_tokens as i64)
            .bind(c.dead_lettered as i64)
            .bind(c.unreachable as i64)
            .bind(c.retried as i64)
            .bind(ms_sum)
            .bind(c.provider_ms as i64)
            .execute(&mut *tx)
            .await?;
            if let Some((bucket, _)) = e.latency.filter(|_| c.sent > 0) {
                sqlx::query(
                    "INSERT INTO delivery_latency (minute, channel, bucket, shard, sends) \
                     VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE sends = sends + VALUES(sends)",
                )
                .bind(minute)
                .bind(channel)
                .bind(bucket as i64)
                .bind(shard)
                .bind(c.sent as i64)
                .execute(&mut *tx)
                .await?;
            }
            for (f, spec) in &failures {
                sqlx::query(
                    "INSERT INTO delivery_failures (channel, at, id, spec) VALUES (?, ?, ?, ?)",
                )
                .bind(f.channel.as_str())
                .bind(micros(f.at))
                .bind(herald_core::ids::new_id().to_string())
                .bind(spec)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn delivery_rollups(
        &self,
        since: DateTime<Utc>,
        channel: Option<Channel>,
    ) -> Result<Vec<MinuteRollup>> {
        let since = micros(herald_core::analytics::minute_of(since));
        let channel = channel.map(Channel::as_str);
        let rows = sqlx::query(
            "SELECT minute, channel, CAST(SUM(reports) AS SIGNED) AS reports, \
             CAST(SUM(sent) AS SIGNED) AS sent, CAST(SUM(failed) AS SIGNED) AS failed, \
             CAST(SUM(invalid_tokens) AS SIGNED) AS invalid_tokens, \
             CAST(SUM(dead_lettered) AS SIGNED) AS dead_lettered, \
             CAST(SUM(unreachable) AS SIGNED) AS unreachable, \
             CAST(SUM(retried) AS SIGNED) AS retried, \
             CAST(SUM(latency_ms_sum) AS SIGNED) AS latency_ms_sum, \
             CAST(SUM(provider_ms) AS SIGNED) AS provider_ms \
             FROM delivery_rollups WHERE minute >= ? AND (? IS NULL OR channel = ?) \
             GROUP BY minute, channel ORDER BY minute, channel",
        )
        .bind(since)
        .bind(channel)
        .bind(channel)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let get = |r: &MySqlRow, c: &str| -> Result<i64> { r.try_get(c).map_err(db_error) };
        let rows = rows
            .iter()
            .map(|r| {
                let counts = DeliveryLogCounts {
                    reports: count(get(r, "reports")?),
                    sent: count(get(r, "sent")?),
                    failed: count(get(r, "failed")?),
                    invalid_tokens: count(get(r, "invalid_tokens")?),
                    dead_lettered: count(get(r, "dead_lettered")?),
                    unreachable: count(get(r, "unreachable")?),
                    retried: count(get(r, "retried")?),
                    provider_ms: count(get(r, "provider_ms")?),
                };
                Ok((
                    get(r, "minute")?,
                    text(r, "channel")?,
                    counts,
                    count(get(r, "latency_ms_sum")?),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let latency = sqlx::query(
            "SELECT minute, channel, CAST(bucket AS SIGNED) AS bucket, \
             CAST(SUM(sends) AS SIGNED) AS sends FROM delivery_latency \
             WHERE minute >= ? AND (? IS NULL OR channel = ?) GROUP BY minute, channel, bucket",
        )
        .bind(since)
        .bind(channel)
        .bind(channel)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| {
            Ok((
                get(r, "minute")?,
                text(r, "channel")?,
                get(r, "bucket")?,
                count(get(r, "sends")?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
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
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|r| delivery_log::failure_from_json(&text(r, "spec")?))
            .collect()
    }

    async fn record_recipients(&self, records: &[RecipientRecord]) -> Result<()> {
        // One lock order for every writer: by key.
        let mut records: Vec<&RecipientRecord> = records.iter().collect();
        records.sort_by(|a, b| {
            (&a.campaign_id, &a.user_id, a.channel.as_str()).cmp(&(
                &b.campaign_id,
                &b.user_id,
                b.channel.as_str(),
            ))
        });
        for chunk in records.chunks(RECIPIENT_CHUNK) {
            retry_transient(|| async {
                let mut qb = QueryBuilder::<MySql>::new(
                    "INSERT INTO recipient_outcomes (campaign_id, user_id, channel, status, \
                     sent, reason, dead_letter_id, attempt, at) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.campaign_id)
                        .push_bind(&r.user_id)
                        .push_bind(r.channel.as_str())
                        .push_bind(r.status.as_str())
                        .push_bind(r.sent)
                        .push_bind(&r.reason)
                        .push_bind(&r.dead_letter_id)
                        .push_bind(r.attempt)
                        .push_bind(micros(r.at));
                });
                // A later attempt's record wins, except that a recipient sent to stays sent (a
                // retry holds only the devices that failed); the sends of attempts add up.
                // MySQL applies the assignments in order, so `attempt` goes last and the
                // others compare against the stored one.
                qb.push(
                    " ON DUPLICATE KEY UPDATE \
                     status = IF(VALUES(attempt) >= attempt, \
                       IF(status = 'sent', 'sent', VALUES(status)), status), \
                     sent = IF(VALUES(attempt) > attempt, sent + VALUES(sent), \
                       IF(VALUES(attempt) = attempt, GREATEST(sent, VALUES(sent)), sent)), \
                     reason = IF(VALUES(attempt) >= attempt, VALUES(reason), reason), \
                     dead_letter_id = IF(VALUES(attempt) >= attempt, \
                       COALESCE(VALUES(dead_letter_id), dead_letter_id), dead_letter_id), \
                     at = IF(VALUES(attempt) >= attempt, VALUES(at), at), \
                     attempt = GREATEST(attempt, VALUES(attempt))",
                );
                qb.build().execute(&self.pool).await?;
                Ok(())
            })
            .await?;
        }
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let word = |c: &str| -> Result<String> { text(row, c) };
                Ok(RecipientRecord {
                    campaign_id: campaign_id.to_owned(),
                    user_id: user_id.to_owned(),
                    channel: crate::parse_enum("channel", &word("channel")?)?,
                    status: crate::parse_enum("recipient status", &word("status")?)?,
                    sent: row.try_get::<i32, _>("sent").map_err(db_error)? as u32,
                    reason: row.try_get_unchecked("reason").map_err(db_error)?,
                    dead_letter_id: row.try_get_unchecked("dead_letter_id").map_err(db_error)?,
                    attempt: row.try_get::<i32, _>("attempt").map_err(db_error)? as u32,
                    at: from_micros(row.try_get("at").map_err(db_error)?),
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(|r| text(r, "user_id")).collect()
    }

    async fn purge_delivery_log(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = micros(before);
        let rollups = super::delete_in_chunks(
            &self.pool,
            "DELETE FROM delivery_rollups WHERE minute < ? LIMIT ?",
            before,
            PURGE_BATCH,
        )
        .await?;
        for delete in [
            "DELETE FROM delivery_latency WHERE minute < ? LIMIT ?",
            "DELETE FROM delivery_failures WHERE at < ? LIMIT ?",
            "DELETE FROM delivery_log_keys WHERE at < ? LIMIT ?",
            "DELETE FROM recipient_outcomes WHERE at < ? LIMIT ?",
        ] {
            super::delete_in_chunks(&self.pool, delete, before, PURGE_BATCH).await?;
        }
        Ok(rollups)
    }
}

/// Dead-letter ids live in an ASCII column: an id with other characters names no letter, and
/// comparing it there would be an error of its own ("illegal mix of collations"), not a miss.
fn storable_letter_id(id: &str) -> bool {
    id.is_ascii()
}
