//! The campaign store on MySQL 8 / MariaDB 10.11 (schema and its reasons in
//! `migrations/mysql/campaigns/0001_init.sql`): campaigns, their progress counters, recorded
//! batches and delivery reports, failures, dispatch leases, idempotency keys and rules.
//!
//! Progress counters are spread over [`COUNTER_SHARDS`] rows per campaign (and per channel),
//! so fan-out workers and push gateways on many nodes add to them without queueing on one
//! row lock; a read sums the shards. Each recording is one transaction that takes its locks in
//! one order (recorded-batch or report row, counter shard, the campaign row only when the
//! failure sample grows, channel shards by channel), and runs again when InnoDB picks it as a
//! deadlock victim: the dedupe row makes a rerun add nothing twice.
//!
//! "Was it new" is asked of a plain `INSERT` (a duplicate key error means no), never of
//! `INSERT IGNORE` (which turns strict mode's errors into warnings) nor of the affected-row
//! count of `ON DUPLICATE KEY UPDATE` (sqlx sets CLIENT_FOUND_ROWS, under which an unchanged
//! duplicate reports one row, like an insert). `UPDATE` counts are rows matched, which is what
//! the compare-and-set methods need.

use super::{insert_once, open_pool, opt_text, retry_transient, text};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, db_error, parse_enum, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::analytics::CampaignStats;
use herald_core::model::*;
use herald_core::ports::{CampaignStore, IdempotencyClaim, KEPT_FAILURES};
use herald_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

const MIGRATIONS: &[Migration] = &[
    migration!("mysql", "campaigns", "0001_init"),
    migration!("mysql", "campaigns", "0002_created_index"),
    migration!("mysql", "campaigns", "0003_suppressed_online"),
    migration!("mysql", "campaigns", "0004_digests"),
    migration!("mysql", "campaigns", "0005_retractions"),
    migration!("mysql", "campaigns", "0006_revisions"),
];

/// Counter rows per campaign (and per campaign and channel).
pub const COUNTER_SHARDS: u64 = 16;

/// Statuses in which a campaign may need a dispatcher (see `claimable_campaigns`).
const DISPATCHABLE: &str = "('sizing', 'fanning_out', 'active')";

const COLUMNS: &str = "id, status, strategy, spec, starts_at, expires_at, audience_size, \
    batches_total, created_at, started_at, completed_at, next_batch, after_user, batching_done";

/// Campaign ids per `IN (...)` list when loading counters.
const IN_CHUNK: usize = 500;

pub struct MysqlCampaigns {
    pool: MySqlPool,
    /// Spreads `add_deliveries` calls, which carry no key, over the shards.
    next_shard: AtomicU64,
}

impl MysqlCampaigns {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "campaigns", 16, MIGRATIONS).await?,
            next_shard: AtomicU64::new(0),
        })
    }
}

/// The parts of a campaign that never change after creation, stored as one JSON column.
#[derive(Serialize, Deserialize)]
struct Spec {
    audience: Audience,
    content: CampaignContent,
    channels: Vec<Channel>,
    category: Option<String>,
    priority: Priority,
    data: serde_json::Value,
    #[serde(default, skip_serializing_if = "PushWhen::is_always")]
    push_when: PushWhen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    online_push_delay_s: Option<u32>,
}

fn ttl_micros(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

fn int(row: &MySqlRow, column: &str) -> Result<i64> {
    row.try_get::<i64, _>(column).map_err(db_error)
}

fn opt_int(row: &MySqlRow, column: &str) -> Result<Option<i64>> {
    row.try_get::<Option<i64>, _>(column).map_err(db_error)
}

/// A counter read back: negative only if the shards were edited by hand.
fn count(v: i64) -> u64 {
    v.max(0) as u64
}

/// The shard a report key's counters go to: FNV-1a of the key, so a key always lands on the
/// same shard and different keys spread.
fn key_shard(key: &str) -> i64 {
    (crate::fnv1a(key) % COUNTER_SHARDS) as i64
}

fn batch_shard(batch_no: u64) -> i64 {
    (batch_no % COUNTER_SHARDS) as i64
}

fn campaign_from_row(row: &MySqlRow) -> Result<Campaign> {
    let spec: Spec =
        serde_json::from_str(&text(row, "spec")?).map_err(|e| corrupt("campaign", e))?;
    Ok(Campaign {
        id: text(row, "id")?,
        audience: spec.audience,
        content: spec.content,
        channels: spec.channels,
        category: spec.category,
        priority: spec.priority,
        data: spec.data,
        push_when: spec.push_when,
        online_push_delay_s: spec.online_push_delay_s,
        starts_at: opt_from_micros(opt_int(row, "starts_at")?),
        expires_at: opt_from_micros(opt_int(row, "expires_at")?),
        strategy: parse_enum("campaign strategy", &text(row, "strategy")?)?,
        status: parse_enum("campaign status", &text(row, "status")?)?,
        audience_size: count(int(row, "audience_size")?),
        progress: Progress {
            batches_total: count(int(row, "batches_total")?),
            ..Progress::default()
        },
        deliveries: Default::default(),
        created_at: from_micros(int(row, "created_at")?),
        started_at: opt_from_micros(opt_int(row, "started_at")?),
        completed_at: opt_from_micros(opt_int(row, "completed_at")?),
        checkpoint: Checkpoint {
            next_batch: count(int(row, "next_batch")?),
            after_user: opt_text(row, "after_user")?,
            batching_done: row.try_get::<i8, _>("batching_done").map_err(db_error)? != 0,
        },
    })
}

/// Marks batch `batch_no` of campaign `id` recorded inside the transaction; `false` if it
/// was already (a redelivered batch, whatever its outcome, is counted once).
async fn first_record(
    conn: &mut MySqlConnection,
    id: &str,
    batch_no: u64,
) -> std::result::Result<bool, sqlx::Error> {
    insert_once(
        conn,
        sqlx::query("INSERT INTO campaign_batches (campaign_id, batch_no) VALUES (?, ?)")
            .bind(id)
            .bind(batch_no as i64),
    )
    .await
}

/// Adds `d` (all but `batches_total`) and `batches` done to counter shard `shard`.
async fn add_progress(
    conn: &mut MySqlConnection,
    id: &str,
    shard: i64,
    batches: i64,
    d: &Progress,
    failed_batches: i64,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaign_counters (campaign_id, shard, batches_done, notifications_written, \
         skipped_opted_out, deferred_quiet_hours, failed_render, failed_batches) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
         batches_done = batches_done + VALUES(batches_done), \
         notifications_written = notifications_written + VALUES(notifications_written), \
         skipped_opted_out = skipped_opted_out + VALUES(skipped_opted_out), \
         deferred_quiet_hours = deferred_quiet_hours + VALUES(deferred_quiet_hours), \
         failed_render = failed_render + VALUES(failed_render), \
         failed_batches = failed_batches + VALUES(failed_batches)",
    )
    .bind(id)
    .bind(shard)
    .bind(batches)
    .bind(d.notifications_written as i64)
    .bind(d.skipped_opted_out as i64)
    .bind(d.deferred_quiet_hours as i64)
    .bind(d.failed_render as i64)
    .bind(failed_batches)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `d` to the counters of `channel` in shard `shard`.
async fn add_channel_counts(
    conn: &mut MySqlConnection,
    id: &str,
    channel: Channel,
    shard: i64,
    d: &DeliveryCounts,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaign_channel_counters \
         (campaign_id, channel, shard, queued, sent, failed, suppressed_online, cancelled) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE queued = queued + VALUES(queued), \
         sent = sent + VALUES(sent), failed = failed + VALUES(failed), \
         suppressed_online = suppressed_online + VALUES(suppressed_online), \
         cancelled = cancelled + VALUES(cancelled)",
    )
    .bind(id)
    .bind(channel.as_str())
    .bind(shard)
    .bind(d.queued as i64)
    .bind(d.sent as i64)
    .bind(d.failed as i64)
    .bind(d.suppressed_online as i64)
    .bind(d.cancelled as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps `failures` while the campaign's sample has room. The campaign row is locked first,
/// so two writers never read the same count and the sample never outgrows its bound; this is
/// the only time a recording touches that row, and failures are rare.
async fn keep_failures(
    conn: &mut MySqlConnection,
    id: &str,
    failures: &[RecipientFailure],
) -> std::result::Result<(), sqlx::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT id FROM campaigns WHERE id = ? FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM campaign_failures WHERE campaign_id = ?")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let room = KEPT_FAILURES.saturating_sub(kept as usize);
    for (i, f) in failures.iter().take(room).enumerate() {
        sqlx::query(
            "INSERT INTO campaign_failures (campaign_id, seq, batch_no, user_id, reason) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(kept + i as i64)
        .bind(f.batch_no as i64)
        .bind(&f.user_id)
        .bind(&f.reason)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A batch's (or a replay's) additions: progress, failures, then the channels' counters, in
/// channel order (one lock order for every writer).
#[allow(clippy::too_many_arguments)]
async fn add_batch(
    conn: &mut MySqlConnection,
    id: &str,
    batch_no: u64,
    batches: i64,
    d: &Progress,
    failed_batches: i64,
    channels: &[(Channel, DeliveryCounts)],
    failures: &[RecipientFailure],
) -> std::result::Result<(), sqlx::Error> {
    let shard = batch_shard(batch_no);
    add_progress(conn, id, shard, batches, d, failed_batches).await?;
    keep_failures(conn, id, failures).await?;
    let mut channels: Vec<(Channel, DeliveryCounts)> = channels
        .iter()
        .filter(|(_, c)| *c != DeliveryCounts::default())
        .copied()
        .collect();
    channels.sort_by_key(|(c, _)| c.as_str());
    for (channel, counts) in channels {
        add_channel_counts(conn, id, channel, shard, &counts).await?;
    }
    Ok(())
}

impl MysqlCampaigns {
    /// Fills in the summed counters and per-channel counts of `campaigns`.
    async fn with_counters(&self, mut campaigns: Vec<Campaign>) -> Result<Vec<Campaign>> {
        if campaigns.is_empty() {
            return Ok(campaigns);
        }
        let index: HashMap<String, usize> = campaigns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        let ids: Vec<String> = campaigns.iter().map(|c| c.id.clone()).collect();
        for part in ids.chunks(IN_CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT campaign_id, CAST(SUM(batches_done) AS SIGNED) AS batches_done, \
                 CAST(SUM(notifications_written) AS SIGNED) AS notifications_written, \
                 CAST(SUM(skipped_opted_out) AS SIGNED) AS skipped_opted_out, \
                 CAST(SUM(deferred_quiet_hours) AS SIGNED) AS deferred_quiet_hours, \
                 CAST(SUM(failed_render) AS SIGNED) AS failed_render, \
                 CAST(SUM(failed_batches) AS SIGNED) AS failed_batches \
                 FROM campaign_counters WHERE campaign_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in part {
                sep.push_bind(id);
            }
            qb.push(") GROUP BY campaign_id");
            for row in qb.build().fetch_all(&self.pool).await.map_err(db_error)? {
                let Some(&i) = index.get(&text(&row, "campaign_id")?) else {
                    continue;
                };
                let p = &mut campaigns[i].progress;
                p.batches_done = count(int(&row, "batches_done")?);
                p.notifications_written = count(int(&row, "notifications_written")?);
                p.skipped_opted_out = count(int(&row, "skipped_opted_out")?);
                p.deferred_quiet_hours = count(int(&row, "deferred_quiet_hours")?);
                p.failed_render = count(int(&row, "failed_render")?);
                p.failed_batches = count(int(&row, "failed_batches")?);
            }
            let mut qb = QueryBuilder::<MySql>::new(
                "SELECT campaign_id, channel, CAST(SUM(queued) AS SIGNED) AS queued, \
                 CAST(SUM(sent) AS SIGNED) AS sent, CAST(SUM(failed) AS SIGNED) AS failed, \
                 CAST(SUM(suppressed_online) AS SIGNED) AS suppressed_online, \
                 CAST(SUM(cancelled) AS SIGNED) AS cancelled \
                 FROM campaign_channel_counters WHERE campaign_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in part {
                sep.push_bind(id);
            }
            qb.push(") GROUP BY campaign_id, channel");
            for row in qb.build().fetch_all(&self.pool).await.map_err(db_error)? {
                let Some(&i) = index.get(&text(&row, "campaign_id")?) else {
                    continue;
                };
                let channel: Channel = parse_enum("channel", &text(&row, "channel")?)?;
                campaigns[i].deliveries.insert(
                    channel,
                    DeliveryCounts {
                        queued: count(int(&row, "queued")?),
                        sent: count(int(&row, "sent")?),
                        failed: count(int(&row, "failed")?),
                        suppressed_online: count(int(&row, "suppressed_online")?),
                        cancelled: count(int(&row, "cancelled")?),
                    },
                );
            }
        }
        Ok(campaigns)
    }

    async fn load(&self, rows: Vec<MySqlRow>) -> Result<Vec<Campaign>> {
        let campaigns = rows
            .iter()
            .map(campaign_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.with_counters(campaigns).await
    }
}

#[async_trait]
impl CampaignStore for MysqlCampaigns {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn insert_campaign(&self, c: &Campaign) -> Result<()> {
        let spec = Spec {
            audience: c.audience.clone(),
            content: c.content.clone(),
            channels: c.channels.clone(),
            category: c.category.clone(),
            priority: c.priority,
            data: c.data.clone(),
            push_when: c.push_when,
            online_push_delay_s: c.online_push_delay_s,
        };
        let spec = serde_json::to_string(&spec).map_err(|e| corrupt("campaign", e))?;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let inserted = retry_transient(|| async {
            let rerun = attempts.fetch_add(1, Ordering::Relaxed) > 0;
            let mut tx = self.pool.begin().await?;
            let fresh = insert_once(
                &mut tx,
                sqlx::query(&format!(
                    "INSERT INTO campaigns ({COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ))
                .bind(&c.id)
                .bind(c.status.as_str())
                .bind(c.strategy.as_str())
                .bind(&spec)
                .bind(c.starts_at.map(micros))
                .bind(c.expires_at.map(micros))
                .bind(c.audience_size as i64)
                .bind(c.progress.batches_total as i64)
                .bind(micros(c.created_at))
                .bind(c.started_at.map(micros))
                .bind(c.completed_at.map(micros))
                .bind(c.checkpoint.next_batch as i64)
                .bind(&c.checkpoint.after_user)
                .bind(i8::from(c.checkpoint.batching_done)),
            )
            .await?;
            if !fresh {
                // A rerun after a lost answer to our own COMMIT finds our campaign: the same
                // spec and creation time is ours, not a conflict.
                if rerun {
                    let row = sqlx::query("SELECT spec, created_at FROM campaigns WHERE id = ?")
                        .bind(&c.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(row) = row {
                        let stored: String = row.try_get_unchecked("spec")?;
                        let created: i64 = row.try_get("created_at")?;
                        if stored == spec && created == micros(c.created_at) {
                            return Ok(true);
                        }
                    }
                }
                return Ok(false);
            }
            let p = &c.progress;
            add_progress(
                &mut tx,
                &c.id,
                0,
                p.batches_done as i64,
                p,
                p.failed_batches as i64,
            )
            .await?;
            for (channel, counts) in &c.deliveries {
                add_channel_counts(&mut tx, &c.id, *channel, 0, counts).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if !inserted {
            return Err(Error::conflict(format!(
                "campaign `{}` already exists",
                c.id
            )));
        }
        Ok(())
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(self.load(row.into_iter().collect()).await?.pop())
    }

    async fn list_campaigns(
        &self,
        status: Option<CampaignStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Campaign>> {
        let mut qb =
            QueryBuilder::<MySql>::new(format!("SELECT {COLUMNS} FROM campaigns WHERE 1 = 1"));
        if let Some(status) = status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = before {
            qb.push(" AND id < ").push_bind(before.to_owned());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db_error)?;
        self.load(rows).await
    }

    async fn transition(
        &self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        if from.is_empty() {
            return Ok(false);
        }
        let mut qb = QueryBuilder::<MySql>::new("UPDATE campaigns SET status = ");
        qb.push_bind(to.as_str());
        match to {
            CampaignStatus::FanningOut | CampaignStatus::Active => {
                qb.push(", started_at = COALESCE(started_at, ")
                    .push_bind(micros(at))
                    .push(")");
            }
            s if s.is_final() => {
                qb.push(", completed_at = COALESCE(completed_at, ")
                    .push_bind(micros(at))
                    .push(")");
            }
            _ => {}
        }
        qb.push(" WHERE id = ").push_bind(id.to_owned());
        qb.push(" AND status IN (");
        let mut sep = qb.separated(", ");
        for s in from {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn retract(&self, r: &CampaignRetraction) -> Result<CampaignRetraction> {
        // The first retraction stays: inserted if none, then read back whichever it is.
        sqlx::query(
            "INSERT INTO campaign_retractions (campaign_id, row_time, broadcast_id, retracted_at) \
             VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE campaign_id = campaign_id",
        )
        .bind(&r.campaign_id)
        .bind(micros(r.row_time))
        .bind(r.broadcast_id.map(|b| b.as_bytes().to_vec()))
        .bind(micros(r.retracted_at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        let rows = sqlx::query(
            "SELECT campaign_id, row_time, broadcast_id, retracted_at FROM campaign_retractions \
             WHERE campaign_id = ?",
        )
        .bind(&r.campaign_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let stored = rows
            .iter()
            .map(retraction_from_row)
            .collect::<Result<Vec<_>>>()?;
        stored
            .into_iter()
            .next()
            .ok_or_else(|| herald_core::Error::internal("a retraction just written is not there"))
    }

    async fn retractions_since(&self, since: DateTime<Utc>) -> Result<Vec<CampaignRetraction>> {
        let rows = sqlx::query(
            "SELECT campaign_id, row_time, broadcast_id, retracted_at FROM campaign_retractions \
             WHERE row_time >= ? ORDER BY row_time",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(retraction_from_row).collect()
    }

    async fn revise(&self, r: &CampaignRevision) -> Result<()> {
        let content =
            serde_json::to_string(&r.content).map_err(|e| corrupt("campaign revision", e))?;
        let data = serde_json::to_string(&r.data).map_err(|e| corrupt("campaign revision", e))?;
        let listed_at = micros(r.row_time.unwrap_or(r.revised_at));
        let row_time = r.row_time.map(micros);
        let broadcast_id = r.broadcast_id.map(|b| b.as_bytes().to_vec());
        // The first revision is inserted; a later one replaces the one before it only.
        let written = if r.revision <= 1 {
            sqlx::query(
                "INSERT INTO campaign_revisions (campaign_id, revision, row_time, broadcast_id, \
                 content, data, revised_at, listed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.campaign_id)
            .bind(i64::from(r.revision))
            .bind(row_time)
            .bind(broadcast_id)
            .bind(content)
            .bind(data)
            .bind(micros(r.revised_at))
            .bind(listed_at)
            .execute(&self.pool)
            .await
            .map_or_else(
                // Someone's first revision is there already.
                |e| match db_error(e) {
                    e if e.kind == herald_core::ErrorKind::Conflict => Ok(0),
                    e => Err(e),
                },
                |done| Ok(done.rows_affected()),
            )?
        } else {
            sqlx::query(
                "UPDATE campaign_revisions SET revision = ?, row_time = ?, broadcast_id = ?, \
                 content = ?, data = ?, revised_at = ?, listed_at = ? \
                 WHERE campaign_id = ? AND revision = ?",
            )
            .bind(i64::from(r.revision))
            .bind(row_time)
            .bind(broadcast_id)
            .bind(content)
            .bind(data)
            .bind(micros(r.revised_at))
            .bind(listed_at)
            .bind(&r.campaign_id)
            .bind(i64::from(r.revision - 1))
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected()
        };
        if written == 0 {
            return Err(herald_core::Error::conflict(format!(
                "campaign `{}` was changed meanwhile: read it again and retry",
                r.campaign_id
            )));
        }
        Ok(())
    }

    async fn revision(&self, campaign_id: &str) -> Result<Option<CampaignRevision>> {
        let rows = sqlx::query(
            "SELECT campaign_id, revision, row_time, broadcast_id, content, data, revised_at \
             FROM campaign_revisions WHERE campaign_id = ?",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(revision_from_row).next().transpose()
    }

    async fn revisions_since(&self, since: DateTime<Utc>) -> Result<Vec<CampaignRevision>> {
        let rows = sqlx::query(
            "SELECT campaign_id, revision, row_time, broadcast_id, content, data, revised_at \
             FROM campaign_revisions WHERE listed_at >= ? ORDER BY listed_at",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(revision_from_row).collect()
    }

    async fn set_sizing(&self, id: &str, audience_size: u64, batches_total: u64) -> Result<()> {
        sqlx::query("UPDATE campaigns SET audience_size = ?, batches_total = ? WHERE id = ?")
            .bind(audience_size as i64)
            .bind(batches_total as i64)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn save_checkpoint(
        &self,
        lease: &CampaignLease,
        checkpoint: &Checkpoint,
    ) -> Result<bool> {
        let mut qb = QueryBuilder::<MySql>::new("UPDATE campaigns SET next_batch = ");
        qb.push_bind(checkpoint.next_batch as i64)
            .push(", after_user = ")
            .push_bind(checkpoint.after_user.clone())
            .push(", batching_done = ")
            .push_bind(i8::from(checkpoint.batching_done));
        if checkpoint.batching_done {
            qb.push(", batches_total = ")
                .push_bind(checkpoint.next_batch as i64);
        }
        qb.push(" WHERE id = ")
            .push_bind(lease.campaign_id.clone())
            .push(" AND lease_fence = ")
            .push_bind(lease.fence as i64);
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn claimable_campaigns(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<String>> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM campaigns WHERE status IN {DISPATCHABLE} AND batching_done = 0 \
             AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id LIMIT ?"
        ))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(|r| text(r, "id")).collect()
    }

    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<Option<CampaignLease>> {
        let until = micros(now).saturating_add(ttl_micros(ttl));
        let fence = retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            // The last clause recognises this very acquisition when it is rerun after a lost
            // answer to its COMMIT (same owner, same end): it is taken again, fence raised.
            let taken = sqlx::query(
                "UPDATE campaigns SET lease_owner = ?, lease_until = ?, \
                 lease_fence = lease_fence + 1 \
                 WHERE id = ? AND (lease_until IS NULL OR lease_until <= ? \
                 OR (lease_owner = ? AND lease_until = ?))",
            )
            .bind(owner)
            .bind(until)
            .bind(id)
            .bind(micros(now))
            .bind(owner)
            .bind(until)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !taken {
                return Ok(None);
            }
            // The row stays locked by this transaction: the fence read is the one just set.
            let fence: i64 = sqlx::query_scalar("SELECT lease_fence FROM campaigns WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(fence))
        })
        .await?;
        Ok(fence.map(|fence| CampaignLease {
            campaign_id: id.to_owned(),
            owner: owner.to_owned(),
            fence: fence as u64,
            until: from_micros(until),
        }))
    }

    async fn renew_lease(
        &self,
        lease: &CampaignLease,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE campaigns SET lease_until = ? WHERE id = ? AND lease_fence = ? \
             AND lease_owner = ?",
        )
        .bind(micros(now).saturating_add(ttl_micros(ttl)))
        .bind(&lease.campaign_id)
        .bind(lease.fence as i64)
        .bind(&lease.owner)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn release_lease(&self, lease: &CampaignLease, retry_at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE campaigns SET lease_owner = NULL, lease_until = ? WHERE id = ? \
             AND lease_fence = ? AND lease_owner = ?",
        )
        .bind(micros(retry_at))
        .bind(&lease.campaign_id)
        .bind(lease.fence as i64)
        .bind(&lease.owner)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn record_batch(
        &self,
        id: &str,
        batch_no: u64,
        d: &Progress,
        channels: &[(Channel, DeliveryCounts)],
        failures: &[RecipientFailure],
    ) -> Result<bool> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            if !first_record(&mut tx, id, batch_no).await? {
                return Ok(false);
            }
            let failed = d.failed_batches as i64;
            add_batch(&mut tx, id, batch_no, 1, d, failed, channels, failures).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn record_failed_batch(&self, b: &FailedBatch) -> Result<bool> {
        let users = serde_json::to_string(&b.user_ids).map_err(|e| corrupt("failed batch", e))?;
        let failure = RecipientFailure {
            batch_no: b.batch_no,
            user_id: None,
            reason: b.reason.clone(),
        };
        let failure = std::slice::from_ref(&failure);
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            if !first_record(&mut tx, &b.campaign_id, b.batch_no).await? {
                return Ok(false);
            }
            let none = Progress::default();
            add_batch(
                &mut tx,
                &b.campaign_id,
                b.batch_no,
                1,
                &none,
                1,
                &[],
                failure,
            )
            .await?;
            sqlx::query(
                "INSERT INTO campaign_failed_batches \
                 (campaign_id, batch_no, user_ids, reason, failed_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&b.campaign_id)
            .bind(b.batch_no as i64)
            .bind(&users)
            .bind(&b.reason)
            .bind(micros(b.failed_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn failed_batches(&self, id: &str) -> Result<Vec<FailedBatch>> {
        let rows = sqlx::query(
            "SELECT batch_no, user_ids, reason, failed_at, replayed_at \
             FROM campaign_failed_batches WHERE campaign_id = ? ORDER BY batch_no",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(FailedBatch {
                    campaign_id: id.to_owned(),
                    batch_no: count(int(r, "batch_no")?),
                    user_ids: serde_json::from_str(&text(r, "user_ids")?)
                        .map_err(|e| corrupt("failed batch", e))?,
                    reason: text(r, "reason")?,
                    failed_at: from_micros(int(r, "failed_at")?),
                    replayed_at: opt_from_micros(opt_int(r, "replayed_at")?),
                })
            })
            .collect()
    }

    async fn mark_batch_replayed(
        &self,
        id: &str,
        batch_no: u64,
        at: DateTime<Utc>,
    ) -> Result<Option<bool>> {
        let set = sqlx::query(
            "UPDATE campaign_failed_batches SET replayed_at = ? \
             WHERE campaign_id = ? AND batch_no = ? AND replayed_at IS NULL",
        )
        .bind(micros(at))
        .bind(id)
        .bind(batch_no as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected()
            > 0;
        if set {
            return Ok(Some(true));
        }
        let exists = sqlx::query(
            "SELECT 1 FROM campaign_failed_batches WHERE campaign_id = ? AND batch_no = ?",
        )
        .bind(id)
        .bind(batch_no as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .is_some();
        Ok(exists.then_some(false))
    }

    async fn reset_batch_replay(&self, id: &str, batch_no: u64) -> Result<()> {
        sqlx::query(
            "UPDATE campaign_failed_batches SET replayed_at = NULL \
             WHERE campaign_id = ? AND batch_no = ? AND replay_done = 0",
        )
        .bind(id)
        .bind(batch_no as i64)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn record_replayed_batch(
        &self,
        id: &str,
        batch_no: u64,
        d: &Progress,
        channels: &[(Channel, DeliveryCounts)],
        failures: &[RecipientFailure],
    ) -> Result<bool> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let fresh = sqlx::query(
                "UPDATE campaign_failed_batches SET replay_done = 1 \
                 WHERE campaign_id = ? AND batch_no = ? AND replay_done = 0",
            )
            .bind(id)
            .bind(batch_no as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                return Ok(false);
            }
            // The batch stops counting as failed: one off `failed_batches`, in the same shard
            // row as any other addition for this batch.
            let failed = d.failed_batches as i64 - 1;
            add_batch(&mut tx, id, batch_no, 0, d, failed, channels, failures).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn campaign_failures(&self, id: &str) -> Result<Vec<RecipientFailure>> {
        let rows = sqlx::query(
            "SELECT batch_no, user_id, reason FROM campaign_failures WHERE campaign_id = ? \
             ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(RecipientFailure {
                    batch_no: count(int(r, "batch_no")?),
                    user_id: opt_text(r, "user_id")?,
                    reason: text(r, "reason")?,
                })
            })
            .collect()
    }

    async fn record_deliveries(
        &self,
        id: &str,
        key: &str,
        channel: Channel,
        d: &DeliveryCounts,
    ) -> Result<bool> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let fresh = insert_once(
                &mut tx,
                sqlx::query(
                    "INSERT INTO campaign_delivery_reports (campaign_id, report_key) VALUES (?, ?)",
                )
                .bind(id)
                .bind(key),
            )
            .await?;
            if !fresh {
                return Ok(false);
            }
            add_channel_counts(&mut tx, id, channel, key_shard(key), d).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn add_deliveries(&self, id: &str, channel: Channel, d: &DeliveryCounts) -> Result<()> {
        let shard = (self.next_shard.fetch_add(1, Ordering::Relaxed) % COUNTER_SHARDS) as i64;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        add_channel_counts(&mut conn, id, channel, shard, d)
            .await
            .map_err(db_error)
    }

    async fn campaign_stats(&self, since: DateTime<Utc>) -> Result<Vec<CampaignStats>> {
        // Each campaign's counter shards added up first, then the campaigns by strategy.
        let rows = sqlx::query(
            "SELECT strategy, CAST(COUNT(*) AS SIGNED) AS campaigns, \
             CAST(SUM(audience_size) AS SIGNED) AS audience, CAST(SUM(w) AS SIGNED) AS written, \
             CAST(SUM(o) AS SIGNED) AS opted_out, CAST(SUM(q) AS SIGNED) AS deferred \
             FROM (SELECT c.id, c.strategy, c.audience_size, \
                   COALESCE(SUM(k.notifications_written), 0) AS w, \
                   COALESCE(SUM(k.skipped_opted_out), 0) AS o, \
                   COALESCE(SUM(k.deferred_quiet_hours), 0) AS q \
                   FROM campaigns c LEFT JOIN campaign_counters k ON k.campaign_id = c.id \
                   WHERE c.created_at >= ? GROUP BY c.id, c.strategy, c.audience_size) t \
             GROUP BY strategy ORDER BY strategy",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(CampaignStats {
                    strategy: parse_enum("campaign strategy", &text(r, "strategy")?)?,
                    campaigns: count(int(r, "campaigns")?),
                    audience: count(int(r, "audience")?),
                    notifications_written: count(int(r, "written")?),
                    skipped_opted_out: count(int(r, "opted_out")?),
                    deferred_quiet_hours: count(int(r, "deferred")?),
                })
            })
            .collect()
    }

    async fn due_campaigns(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Campaign>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM campaigns WHERE status = 'scheduled' AND starts_at <= ? \
             ORDER BY starts_at LIMIT ?"
        ))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        self.load(rows).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        resource_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<IdempotencyClaim> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            // An expired key is free again.
            sqlx::query("DELETE FROM idempotency_keys WHERE idem_key = ? AND expires_at <= ?")
                .bind(key)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await?;
            let claimed = insert_once(
                &mut tx,
                sqlx::query(
                    "INSERT INTO idempotency_keys (idem_key, request_hash, resource_id, expires_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(key)
                .bind(request_hash)
                .bind(resource_id)
                .bind(micros(expires_at)),
            )
            .await?;
            let outcome = if claimed {
                IdempotencyClaim::Claimed
            } else {
                let row = sqlx::query(
                    "SELECT idem_key, request_hash, resource_id, status, body, expires_at \
                     FROM idempotency_keys WHERE idem_key = ?",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                let status: Option<i32> = row.try_get("status")?;
                let body: Option<Vec<u8>> = row.try_get("body")?;
                IdempotencyClaim::Existing(IdempotencyRecord {
                    key: row.try_get_unchecked("idem_key")?,
                    request_hash: row.try_get_unchecked("request_hash")?,
                    resource_id: row.try_get_unchecked("resource_id")?,
                    response: status.map(|s| (s as u16, body.unwrap_or_default())),
                    expires_at: from_micros(row.try_get("expires_at")?),
                })
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn complete_idempotency_key(&self, key: &str, status: u16, body: &[u8]) -> Result<()> {
        sqlx::query("UPDATE idempotency_keys SET status = ?, body = ? WHERE idem_key = ?")
            .bind(i32::from(status))
            .bind(body)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn release_idempotency_key(&self, key: &str, resource_id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE idem_key = ? AND resource_id = ? \
             AND status IS NULL",
        )
        .bind(key)
        .bind(resource_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64> {
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?")
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n)
    }

    async fn add_to_digest(
        &self,
        event: &DigestEvent,
        window: std::time::Duration,
    ) -> Result<DigestAdded> {
        let at = micros(event.at);
        let data = event.data.to_string();
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            // The head row's lock serialises the adds of one digest; two first events that
            // both find none collide on its insert (one deadlocks and runs again, finding it).
            let head = sqlx::query(
                "SELECT digest_id, window_end FROM digest_heads \
                 WHERE event_type = ? AND user_id = ? AND key_value = ? FOR UPDATE",
            )
            .bind(&event.event_type)
            .bind(&event.user_id)
            .bind(&event.key_value)
            .fetch_optional(&mut *tx)
            .await?;
            let open = match head {
                Some(row) => {
                    let end: i64 = row.try_get("window_end")?;
                    (end > at).then(|| {
                        row.try_get_unchecked::<String, _>("digest_id")
                            .map(|id| (id, end))
                    })
                }
                None => None,
            };
            let (id, window_end) = match open {
                Some(found) => found?,
                // None open, or its window has ended (it is being sent): a new one.
                None => {
                    let id = herald_core::ids::new_id().simple().to_string();
                    let end =
                        at.saturating_add(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
                    sqlx::query(
                        "INSERT INTO digests (id, event_type, user_id, key_value, window_end) \
                         VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(&id)
                    .bind(&event.event_type)
                    .bind(&event.user_id)
                    .bind(&event.key_value)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO digest_heads \
                         (event_type, user_id, key_value, digest_id, window_end) \
                         VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                         digest_id = VALUES(digest_id), window_end = VALUES(window_end)",
                    )
                    .bind(&event.event_type)
                    .bind(&event.user_id)
                    .bind(&event.key_value)
                    .bind(&id)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
                    (id, end)
                }
            };
            let duplicate =
                match &event.event_key {
                    Some(key) => sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM digest_events WHERE digest_id = ? AND event_key = ?",
                    )
                    .bind(&id)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?
                        > 0,
                    None => false,
                };
            if !duplicate {
                sqlx::query("UPDATE digests SET count = count + 1 WHERE id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            let count: i64 = sqlx::query_scalar("SELECT count FROM digests WHERE id = ?")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
            if !duplicate && count as usize <= MAX_DIGEST_EVENTS {
                sqlx::query(
                    "INSERT INTO digest_events (digest_id, seq, event_key, data) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(&id)
                .bind(count)
                .bind(&event.event_key)
                .bind(&data)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(DigestAdded {
                digest_id: id,
                count: count as u64,
                window_ends_at: from_micros(window_end),
                duplicate,
            })
        })
        .await
    }

    async fn take_digest(&self, id: &str) -> Result<Option<TakenDigest>> {
        let taken = retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            let Some(row) = sqlx::query(
                "SELECT event_type, user_id, key_value, window_end, count, closed_at \
                 FROM digests WHERE id = ? FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(None);
            };
            let event_type: String = row.try_get_unchecked("event_type")?;
            let user_id: String = row.try_get_unchecked("user_id")?;
            let key_value: String = row.try_get_unchecked("key_value")?;
            if row.try_get::<Option<i64>, _>("closed_at")?.is_none() {
                sqlx::query("UPDATE digests SET closed_at = ? WHERE id = ?")
                    .bind(micros(Utc::now()))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "DELETE FROM digest_heads WHERE event_type = ? AND user_id = ? \
                     AND key_value = ? AND digest_id = ?",
                )
                .bind(&event_type)
                .bind(&user_id)
                .bind(&key_value)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            let data: Vec<String> =
                sqlx::query("SELECT data FROM digest_events WHERE digest_id = ? ORDER BY seq")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get_unchecked::<String, _>("data"))
                    .collect::<std::result::Result<_, _>>()?;
            tx.commit().await?;
            Ok(Some((
                event_type,
                user_id,
                key_value,
                data,
                row.try_get::<i64, _>("count")?,
                row.try_get::<i64, _>("window_end")?,
            )))
        })
        .await?;
        let Some((event_type, user_id, key_value, data, count, window_end)) = taken else {
            return Ok(None);
        };
        let events = data
            .iter()
            .map(|d| serde_json::from_str(d).map_err(|e| corrupt("digest event", e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(TakenDigest {
            id: id.to_owned(),
            event_type,
            user_id,
            key_value,
            events,
            count: count as u64,
            window_ends_at: from_micros(window_end),
        }))
    }

    async fn purge_digests(&self, before: DateTime<Utc>) -> Result<u64> {
        retry_transient(|| async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "DELETE e FROM digest_events e JOIN digests d ON d.id = e.digest_id \
                 WHERE d.closed_at IS NOT NULL AND d.window_end < ?",
            )
            .bind(micros(before))
            .execute(&mut *tx)
            .await?;
            let n =
                sqlx::query("DELETE FROM digests WHERE closed_at IS NOT NULL AND window_end < ?")
                    .bind(micros(before))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    async fn put_rule(&self, rule: &Rule) -> Result<()> {
        let spec = serde_json::to_string(rule).map_err(|e| corrupt("rule", e))?;
        sqlx::query(
            "INSERT INTO rules (event_type, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE spec = VALUES(spec), updated_at = VALUES(updated_at)",
        )
        .bind(&rule.event_type)
        .bind(spec)
        .bind(micros(rule.created_at))
        .bind(micros(rule.updated_at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_rule(&self, event_type: &str) -> Result<Option<Rule>> {
        sqlx::query("SELECT spec, created_at FROM rules WHERE event_type = ?")
            .bind(event_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(rule_from_row)
            .transpose()
    }

    async fn list_rules(&self, after: Option<&str>, limit: u32) -> Result<Vec<Rule>> {
        sqlx::query(
            "SELECT spec, created_at FROM rules WHERE event_type > ? ORDER BY event_type LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?
        .iter()
        .map(rule_from_row)
        .collect()
    }

    async fn delete_rule(&self, event_type: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM rules WHERE event_type = ?")
            .bind(event_type)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }
}

fn rule_from_row(row: &MySqlRow) -> Result<Rule> {
    let mut rule: Rule =
        serde_json::from_str(&text(row, "spec")?).map_err(|e| corrupt("rule", e))?;
    // The first creation time survives replacements.
    rule.created_at = from_micros(int(row, "created_at")?);
    Ok(rule)
}

fn revision_from_row(row: &sqlx::mysql::MySqlRow) -> Result<CampaignRevision> {
    let broadcast_id: Option<Vec<u8>> = row.try_get("broadcast_id").map_err(db_error)?;
    let row_time: Option<i64> = row.try_get("row_time").map_err(db_error)?;
    let revision: i64 = row.try_get("revision").map_err(db_error)?;
    Ok(CampaignRevision {
        campaign_id: text(row, "campaign_id")?,
        revision: revision as u32,
        row_time: row_time.map(from_micros),
        broadcast_id: broadcast_id
            .map(|b| uuid::Uuid::from_slice(&b).map_err(|e| corrupt("broadcast id", e)))
            .transpose()?,
        content: serde_json::from_str(&text(row, "content")?)
            .map_err(|e| corrupt("campaign revision", e))?,
        data: serde_json::from_str(&text(row, "data")?)
            .map_err(|e| corrupt("campaign revision", e))?,
        revised_at: from_micros(row.try_get("revised_at").map_err(db_error)?),
    })
}

fn retraction_from_row(row: &sqlx::mysql::MySqlRow) -> Result<CampaignRetraction> {
    let broadcast_id: Option<Vec<u8>> = row.try_get("broadcast_id").map_err(db_error)?;
    Ok(CampaignRetraction {
        campaign_id: text(row, "campaign_id")?,
        row_time: from_micros(row.try_get("row_time").map_err(db_error)?),
        broadcast_id: broadcast_id
            .map(|b| uuid::Uuid::from_slice(&b).map_err(|e| corrupt("broadcast id", e)))
            .transpose()?,
        retracted_at: from_micros(row.try_get("retracted_at").map_err(db_error)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_keys_always_land_on_the_same_shard_and_spread_over_all_of_them() {
        assert_eq!(key_shard("c1/3/email/0/0"), key_shard("c1/3/email/0/0"));
        let used: std::collections::BTreeSet<i64> = (0..1000)
            .map(|i| key_shard(&format!("c1/{i}/push/0/0")))
            .collect();
        assert_eq!(used.len() as u64, COUNTER_SHARDS);
        assert!(used.iter().all(|s| (0..COUNTER_SHARDS as i64).contains(s)));
    }
}
