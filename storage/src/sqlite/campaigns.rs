//! The campaign store on SQLite: campaigns, counters, recorded batches, idempotency keys.

use super::SqliteFile;
use super::{Db, PURGE_CHUNK};
use crate::migrations::{migration, Migration};
use crate::time::{from_micros, micros, opt_from_micros};
use crate::{corrupt, parse_enum, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::analytics::CampaignStats;
use herald_core::model::*;
use herald_core::ports::{CampaignStore, IdempotencyClaim, KEPT_FAILURES};
use herald_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

const MIGRATIONS: &[Migration] = &[
    migration!("sqlite", "campaigns", "0001_init"),
    migration!("sqlite", "campaigns", "0002_checkpoints_and_rules"),
    migration!("sqlite", "campaigns", "0003_delivery_reports"),
    migration!("sqlite", "campaigns", "0004_leases"),
    migration!("sqlite", "campaigns", "0005_failures"),
    migration!("sqlite", "campaigns", "0006_failed_batches"),
    migration!("sqlite", "campaigns", "0007_created_index"),
    migration!("sqlite", "campaigns", "0008_suppressed_online"),
    migration!("sqlite", "campaigns", "0009_digests"),
    migration!("sqlite", "campaigns", "0010_retractions"),
    migration!("sqlite", "campaigns", "0011_revisions"),
];

/// Statuses in which a campaign may need a dispatcher (see `claimable_campaigns`).
const DISPATCHABLE: &str = "('sizing', 'fanning_out', 'active')";

fn ttl_micros(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

/// Marks batch `batch_no` of campaign `id` recorded inside `tx`; `false` if it was already
/// (a redelivered batch, whatever its outcome, is counted once).
async fn first_record(
    store: &SqliteCampaigns,
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    id: &str,
    batch_no: u64,
) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO campaign_batches (campaign_id, batch_no) VALUES (?, ?) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(batch_no as i64)
    .execute(&mut **tx)
    .await
    .map_err(|e| store.db_error(e))?
    .rows_affected();
    Ok(n > 0)
}

/// Adds a batch's counters inside `tx`: `batches` to `batches_done`, the other counters of
/// `d`, the channels' counters, and `failures` while the sample has room.
async fn add_batch(
    store: &SqliteCampaigns,
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    id: &str,
    batches: i64,
    d: &Progress,
    channels: &[(Channel, DeliveryCounts)],
    failures: &[RecipientFailure],
) -> Result<()> {
    sqlx::query(
        "UPDATE campaigns SET batches_done = batches_done + ?, \
             notifications_written = notifications_written + ?, \
             skipped_opted_out = skipped_opted_out + ?, \
             deferred_quiet_hours = deferred_quiet_hours + ?, \
             failed_render = failed_render + ?, failed_batches = failed_batches + ? WHERE id = ?",
    )
    .bind(batches)
    .bind(d.notifications_written as i64)
    .bind(d.skipped_opted_out as i64)
    .bind(d.deferred_quiet_hours as i64)
    .bind(d.failed_render as i64)
    .bind(d.failed_batches as i64)
    .bind(id)
    .execute(&mut **tx)
    .await
    .map_err(|e| store.db_error(e))?;
    if !failures.is_empty() {
        let kept: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM campaign_failures WHERE campaign_id = ?")
                .bind(id)
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| store.db_error(e))?;
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
            .execute(&mut **tx)
            .await
            .map_err(|e| store.db_error(e))?;
        }
    }
    for (channel, counts) in channels
        .iter()
        .filter(|(_, c)| *c != DeliveryCounts::default())
    {
        add_counts(id, *channel, counts)
            .execute(&mut **tx)
            .await
            .map_err(|e| store.db_error(e))?;
    }
    Ok(())
}

/// Adds `d` to a campaign's counters of `channel` (creating the row on first use).
fn add_counts<'q>(
    id: &'q str,
    channel: Channel,
    d: &DeliveryCounts,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    sqlx::query(
        "INSERT INTO campaign_deliveries \
         (campaign_id, channel, queued, sent, failed, suppressed_online, cancelled) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (campaign_id, channel) DO UPDATE SET \
         queued = queued + excluded.queued, sent = sent + excluded.sent, \
         failed = failed + excluded.failed, \
         suppressed_online = suppressed_online + excluded.suppressed_online, \
         cancelled = cancelled + excluded.cancelled",
    )
    .bind(id)
    .bind(channel.as_str())
    .bind(d.queued as i64)
    .bind(d.sent as i64)
    .bind(d.failed as i64)
    .bind(d.suppressed_online as i64)
    .bind(d.cancelled as i64)
}

pub struct SqliteCampaigns {
    db: Db,
    pool: SqlitePool,
}

impl SqliteFile for SqliteCampaigns {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteCampaigns {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let db = Db::open(url, 8, MIGRATIONS).await?;
        Ok(Self {
            pool: db.pool.clone(),
            db,
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

const COLUMNS: &str = "id, status, strategy, spec, starts_at, expires_at, audience_size, \
    batches_total, batches_done, notifications_written, skipped_opted_out, deferred_quiet_hours, \
    created_at, started_at, completed_at, next_batch, after_user, batching_done, failed_render, \
    failed_batches";

fn campaign_from_row(row: &SqliteRow) -> Result<Campaign> {
    let spec: String = row.get("spec");
    let spec: Spec = serde_json::from_str(&spec).map_err(|e| corrupt("campaign", e))?;
    let n = |c: &str| row.get::<i64, _>(c) as u64;
    Ok(Campaign {
        id: row.get("id"),
        audience: spec.audience,
        content: spec.content,
        channels: spec.channels,
        category: spec.category,
        priority: spec.priority,
        data: spec.data,
        push_when: spec.push_when,
        online_push_delay_s: spec.online_push_delay_s,
        starts_at: opt_from_micros(row.get("starts_at")),
        expires_at: opt_from_micros(row.get("expires_at")),
        strategy: parse_enum("campaign strategy", row.get("strategy"))?,
        status: parse_enum("campaign status", row.get("status"))?,
        audience_size: n("audience_size"),
        progress: Progress {
            batches_total: n("batches_total"),
            batches_done: n("batches_done"),
            notifications_written: n("notifications_written"),
            skipped_opted_out: n("skipped_opted_out"),
            deferred_quiet_hours: n("deferred_quiet_hours"),
            failed_render: n("failed_render"),
            failed_batches: n("failed_batches"),
        },
        deliveries: Default::default(),
        created_at: from_micros(row.get("created_at")),
        started_at: opt_from_micros(row.get("started_at")),
        completed_at: opt_from_micros(row.get("completed_at")),
        checkpoint: Checkpoint {
            next_batch: n("next_batch"),
            after_user: row.get("after_user"),
            batching_done: row.get::<i64, _>("batching_done") != 0,
        },
    })
}

impl SqliteCampaigns {
    /// Fills in the per-channel delivery counters of `campaigns` with one query.
    async fn with_deliveries(&self, mut campaigns: Vec<Campaign>) -> Result<Vec<Campaign>> {
        if campaigns.is_empty() {
            return Ok(campaigns);
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT campaign_id, channel, queued, sent, failed, suppressed_online, cancelled \
             FROM campaign_deliveries \
             WHERE campaign_id IN (",
        );
        let mut sep = qb.separated(", ");
        for c in &campaigns {
            sep.push_bind(&c.id);
        }
        qb.push(")");
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        for row in rows {
            let id: String = row.get("campaign_id");
            let channel: Channel = parse_enum("channel", row.get("channel"))?;
            let counts = DeliveryCounts {
                queued: row.get::<i64, _>("queued") as u64,
                sent: row.get::<i64, _>("sent") as u64,
                failed: row.get::<i64, _>("failed") as u64,
                suppressed_online: row.get::<i64, _>("suppressed_online") as u64,
                cancelled: row.get::<i64, _>("cancelled") as u64,
            };
            if let Some(c) = campaigns.iter_mut().find(|c| c.id == id) {
                c.deliveries.insert(channel, counts);
            }
        }
        Ok(campaigns)
    }
}

#[async_trait]
impl CampaignStore for SqliteCampaigns {
    async fn ping(&self) -> Result<()> {
        self.db.ping_writable().await
    }

    async fn insert_campaign(&self, c: &Campaign) -> Result<()> {
        let _gate = self.db.gate().await;
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
        sqlx::query(&format!(
            "INSERT INTO campaigns ({COLUMNS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&c.id)
        .bind(c.status.as_str())
        .bind(c.strategy.as_str())
        .bind(spec)
        .bind(c.starts_at.map(micros))
        .bind(c.expires_at.map(micros))
        .bind(c.audience_size as i64)
        .bind(c.progress.batches_total as i64)
        .bind(c.progress.batches_done as i64)
        .bind(c.progress.notifications_written as i64)
        .bind(c.progress.skipped_opted_out as i64)
        .bind(c.progress.deferred_quiet_hours as i64)
        .bind(micros(c.created_at))
        .bind(c.started_at.map(micros))
        .bind(c.completed_at.map(micros))
        .bind(c.checkpoint.next_batch as i64)
        .bind(&c.checkpoint.after_user)
        .bind(i64::from(c.checkpoint.batching_done))
        .bind(c.progress.failed_render as i64)
        .bind(c.progress.failed_batches as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| match self.db_error(e) {
            err if err.kind == herald_core::ErrorKind::Conflict => {
                Error::conflict(format!("campaign `{}` already exists", c.id))
            }
            err => err,
        })?;
        Ok(())
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        match row {
            None => Ok(None),
            Some(row) => Ok(self
                .with_deliveries(vec![campaign_from_row(&row)?])
                .await?
                .pop()),
        }
    }

    async fn list_campaigns(
        &self,
        status: Option<CampaignStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Campaign>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM campaigns WHERE 1 = 1"));
        if let Some(status) = status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = before {
            qb.push(" AND id < ").push_bind(before.to_owned());
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        let campaigns = rows
            .iter()
            .map(campaign_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.with_deliveries(campaigns).await
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
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE campaigns SET status = ");
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
        let _gate = self.db.gate().await;
        let n = qb
            .build()
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        Ok(n > 0)
    }

    async fn retract(&self, r: &CampaignRetraction) -> Result<CampaignRetraction> {
        let _gate = self.db.gate().await;
        // The first retraction stays: inserted if none, then read back whichever it is.
        sqlx::query(
            "INSERT INTO campaign_retractions (campaign_id, row_time, broadcast_id, retracted_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (campaign_id) DO NOTHING",
        )
        .bind(&r.campaign_id)
        .bind(micros(r.row_time))
        .bind(r.broadcast_id.map(|b| b.as_bytes().to_vec()))
        .bind(micros(r.retracted_at))
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        let rows = sqlx::query(
            "SELECT campaign_id, row_time, broadcast_id, retracted_at FROM campaign_retractions \
             WHERE campaign_id = ?",
        )
        .bind(&r.campaign_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
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
        .map_err(|e| self.db_error(e))?;
        rows.iter().map(retraction_from_row).collect()
    }

    async fn revise(&self, r: &CampaignRevision) -> Result<()> {
        let content =
            serde_json::to_string(&r.content).map_err(|e| corrupt("campaign revision", e))?;
        let data = serde_json::to_string(&r.data).map_err(|e| corrupt("campaign revision", e))?;
        let listed_at = micros(r.row_time.unwrap_or(r.revised_at));
        let row_time = r.row_time.map(micros);
        let broadcast_id = r.broadcast_id.map(|b| b.as_bytes().to_vec());
        let _gate = self.db.gate().await;
        // The first revision is inserted; a later one replaces the one before it only.
        let written = if r.revision <= 1 {
            sqlx::query(
                "INSERT INTO campaign_revisions (campaign_id, revision, row_time, broadcast_id, \
                 content, data, revised_at, listed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (campaign_id) DO NOTHING",
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
            .map_err(|e| self.db_error(e))?
            .rows_affected()
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
            .map_err(|e| self.db_error(e))?
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
        .map_err(|e| self.db_error(e))?;
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
        .map_err(|e| self.db_error(e))?;
        rows.iter().map(revision_from_row).collect()
    }

    async fn set_sizing(&self, id: &str, audience_size: u64, batches_total: u64) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query("UPDATE campaigns SET audience_size = ?, batches_total = ? WHERE id = ?")
            .bind(audience_size as i64)
            .bind(batches_total as i64)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn save_checkpoint(
        &self,
        lease: &CampaignLease,
        checkpoint: &Checkpoint,
    ) -> Result<bool> {
        let _gate = self.db.gate().await;
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE campaigns SET next_batch = ");
        qb.push_bind(checkpoint.next_batch as i64)
            .push(", after_user = ")
            .push_bind(checkpoint.after_user.clone())
            .push(", batching_done = ")
            .push_bind(i64::from(checkpoint.batching_done));
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
            .map_err(|e| self.db_error(e))?
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
        .map_err(|e| self.db_error(e))?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<Option<CampaignLease>> {
        let until = micros(now).saturating_add(ttl_micros(ttl));
        let _gate = self.db.gate().await;
        let row = sqlx::query(
            "UPDATE campaigns SET lease_owner = ?, lease_until = ?, lease_fence = lease_fence + 1 \
             WHERE id = ? AND (lease_until IS NULL OR lease_until <= ?) RETURNING lease_fence",
        )
        .bind(owner)
        .bind(until)
        .bind(id)
        .bind(micros(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(row.map(|r| CampaignLease {
            campaign_id: id.to_owned(),
            owner: owner.to_owned(),
            fence: r.get::<i64, _>("lease_fence") as u64,
            until: from_micros(until),
        }))
    }

    async fn renew_lease(
        &self,
        lease: &CampaignLease,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let _gate = self.db.gate().await;
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
        .map_err(|e| self.db_error(e))?
        .rows_affected();
        Ok(n > 0)
    }

    async fn release_lease(&self, lease: &CampaignLease, retry_at: DateTime<Utc>) -> Result<()> {
        let _gate = self.db.gate().await;
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
        .map_err(|e| self.db_error(e))?;
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
        let (_gate, mut tx) = self.db.begin().await?;
        if !first_record(self, &mut tx, id, batch_no).await? {
            return Ok(false);
        }
        add_batch(self, &mut tx, id, 1, d, channels, failures).await?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(true)
    }

    async fn record_failed_batch(&self, b: &FailedBatch) -> Result<bool> {
        let (_gate, mut tx) = self.db.begin().await?;
        if !first_record(self, &mut tx, &b.campaign_id, b.batch_no).await? {
            return Ok(false);
        }
        let delta = Progress {
            failed_batches: 1,
            ..Progress::default()
        };
        let failure = RecipientFailure {
            batch_no: b.batch_no,
            user_id: None,
            reason: b.reason.clone(),
        };
        add_batch(self, &mut tx, &b.campaign_id, 1, &delta, &[], &[failure]).await?;
        let users = serde_json::to_string(&b.user_ids).map_err(|e| corrupt("failed batch", e))?;
        sqlx::query(
            "INSERT INTO campaign_failed_batches \
             (campaign_id, batch_no, user_ids, reason, failed_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&b.campaign_id)
        .bind(b.batch_no as i64)
        .bind(users)
        .bind(&b.reason)
        .bind(micros(b.failed_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(true)
    }

    async fn failed_batches(&self, id: &str) -> Result<Vec<FailedBatch>> {
        let rows = sqlx::query(
            "SELECT batch_no, user_ids, reason, failed_at, replayed_at \
             FROM campaign_failed_batches WHERE campaign_id = ? ORDER BY batch_no",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|r| {
                let users: String = r.get("user_ids");
                Ok(FailedBatch {
                    campaign_id: id.to_owned(),
                    batch_no: r.get::<i64, _>("batch_no") as u64,
                    user_ids: serde_json::from_str(&users)
                        .map_err(|e| corrupt("failed batch", e))?,
                    reason: r.get("reason"),
                    failed_at: from_micros(r.get("failed_at")),
                    replayed_at: opt_from_micros(r.get("replayed_at")),
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
        let (_gate, mut tx) = self.db.begin().await?;
        let exists: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT replayed_at FROM campaign_failed_batches WHERE campaign_id = ? AND batch_no = ?",
        )
        .bind(id)
        .bind(batch_no as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?;
        let outcome = match exists {
            None => None,
            Some(Some(_)) => Some(false),
            Some(None) => {
                sqlx::query(
                    "UPDATE campaign_failed_batches SET replayed_at = ? \
                     WHERE campaign_id = ? AND batch_no = ?",
                )
                .bind(micros(at))
                .bind(id)
                .bind(batch_no as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
                Some(true)
            }
        };
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(outcome)
    }

    async fn reset_batch_replay(&self, id: &str, batch_no: u64) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query(
            "UPDATE campaign_failed_batches SET replayed_at = NULL \
             WHERE campaign_id = ? AND batch_no = ? AND replay_done = 0",
        )
        .bind(id)
        .bind(batch_no as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
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
        let (_gate, mut tx) = self.db.begin().await?;
        let fresh = sqlx::query(
            "UPDATE campaign_failed_batches SET replay_done = 1 \
             WHERE campaign_id = ? AND batch_no = ? AND replay_done = 0",
        )
        .bind(id)
        .bind(batch_no as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected()
            > 0;
        if !fresh {
            return Ok(false);
        }
        add_batch(self, &mut tx, id, 0, d, channels, failures).await?;
        sqlx::query("UPDATE campaigns SET failed_batches = failed_batches - 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(true)
    }

    async fn campaign_failures(&self, id: &str) -> Result<Vec<RecipientFailure>> {
        let rows = sqlx::query(
            "SELECT batch_no, user_id, reason FROM campaign_failures WHERE campaign_id = ? \
             ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(rows
            .iter()
            .map(|r| RecipientFailure {
                batch_no: r.get::<i64, _>("batch_no") as u64,
                user_id: r.get("user_id"),
                reason: r.get("reason"),
            })
            .collect())
    }

    async fn record_deliveries(
        &self,
        id: &str,
        key: &str,
        channel: Channel,
        d: &DeliveryCounts,
    ) -> Result<bool> {
        let (_gate, mut tx) = self.db.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO campaign_delivery_reports (campaign_id, key) VALUES (?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected()
            > 0;
        if !fresh {
            return Ok(false);
        }
        add_counts(id, channel, d)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(true)
    }

    async fn add_deliveries(&self, id: &str, channel: Channel, d: &DeliveryCounts) -> Result<()> {
        let _gate = self.db.gate().await;
        add_counts(id, channel, d)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn campaign_stats(&self, since: DateTime<Utc>) -> Result<Vec<CampaignStats>> {
        let rows = sqlx::query(
            "SELECT strategy, COUNT(*) AS campaigns, SUM(audience_size) AS audience, \
             SUM(notifications_written) AS written, SUM(skipped_opted_out) AS opted_out, \
             SUM(deferred_quiet_hours) AS deferred FROM campaigns WHERE created_at >= ? \
             GROUP BY strategy ORDER BY strategy",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        let n = |r: &SqliteRow, c: &str| u64::try_from(r.get::<i64, _>(c)).unwrap_or(0);
        rows.iter()
            .map(|r| {
                Ok(CampaignStats {
                    strategy: parse_enum("campaign strategy", r.get("strategy"))?,
                    campaigns: n(r, "campaigns"),
                    audience: n(r, "audience"),
                    notifications_written: n(r, "written"),
                    skipped_opted_out: n(r, "opted_out"),
                    deferred_quiet_hours: n(r, "deferred"),
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
        .map_err(|e| self.db_error(e))?;
        rows.iter().map(campaign_from_row).collect()
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        request_hash: &str,
        resource_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<IdempotencyClaim> {
        let (_gate, mut tx) = self.db.begin().await?;
        // An expired key is free again.
        sqlx::query("DELETE FROM idempotency_keys WHERE key = ? AND expires_at <= ?")
            .bind(key)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, resource_id, expires_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(request_hash)
        .bind(resource_id)
        .bind(micros(expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db_error(e))?
        .rows_affected()
            > 0;
        let outcome = if claimed {
            IdempotencyClaim::Claimed
        } else {
            let row = sqlx::query(
                "SELECT key, request_hash, resource_id, status, body, expires_at \
                 FROM idempotency_keys WHERE key = ?",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
            let status: Option<i64> = row.get("status");
            let body: Option<Vec<u8>> = row.get("body");
            IdempotencyClaim::Existing(IdempotencyRecord {
                key: row.get("key"),
                request_hash: row.get("request_hash"),
                resource_id: row.get("resource_id"),
                response: status.map(|s| (s as u16, body.unwrap_or_default())),
                expires_at: from_micros(row.get("expires_at")),
            })
        };
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(outcome)
    }

    async fn complete_idempotency_key(&self, key: &str, status: u16, body: &[u8]) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query("UPDATE idempotency_keys SET status = ?, body = ? WHERE key = ?")
            .bind(i64::from(status))
            .bind(body)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn release_idempotency_key(&self, key: &str, resource_id: &str) -> Result<()> {
        let _gate = self.db.gate().await;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE key = ? AND resource_id = ? AND status IS NULL",
        )
        .bind(key)
        .bind(resource_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64> {
        // Expired at or before `now`: below the next microsecond.
        self.db
            .delete_in_chunks("idempotency_keys", &["key"], "expires_at", micros(now) + 1)
            .await
    }

    async fn add_to_digest(
        &self,
        event: &DigestEvent,
        window: std::time::Duration,
    ) -> Result<DigestAdded> {
        let (_gate, mut tx) = self.db.begin().await?;
        let at = micros(event.at);
        let err = |e| self.db_error(e);
        let head: Option<(String, i64)> = sqlx::query_as(
            "SELECT digest_id, window_end FROM digest_heads \
             WHERE event_type = ? AND user_id = ? AND key_value = ?",
        )
        .bind(&event.event_type)
        .bind(&event.user_id)
        .bind(&event.key_value)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let (id, window_end) = match head {
            Some((id, end)) if end > at => (id, end),
            // None open, or its window has ended (it is being sent): a new one.
            _ => {
                let id = herald_core::ids::new_id().simple().to_string();
                let end = at.saturating_add(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
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
                .await
                .map_err(err)?;
                sqlx::query(
                    "INSERT INTO digest_heads (event_type, user_id, key_value, digest_id, window_end) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_type, user_id, key_value) \
                     DO UPDATE SET digest_id = excluded.digest_id, window_end = excluded.window_end",
                )
                .bind(&event.event_type)
                .bind(&event.user_id)
                .bind(&event.key_value)
                .bind(&id)
                .bind(end)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                (id, end)
            }
        };
        let duplicate = match &event.event_key {
            Some(key) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM digest_events WHERE digest_id = ? AND event_key = ?",
                )
                .bind(&id)
                .bind(key)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?
                    > 0
            }
            None => false,
        };
        if !duplicate {
            sqlx::query("UPDATE digests SET count = count + 1 WHERE id = ?")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let count: i64 = sqlx::query_scalar("SELECT count FROM digests WHERE id = ?")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        if !duplicate && count as usize <= MAX_DIGEST_EVENTS {
            sqlx::query(
                "INSERT INTO digest_events (digest_id, seq, event_key, data) VALUES (?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(count)
            .bind(&event.event_key)
            .bind(event.data.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(DigestAdded {
            digest_id: id,
            count: count as u64,
            window_ends_at: from_micros(window_end),
            duplicate,
        })
    }

    async fn take_digest(&self, id: &str) -> Result<Option<TakenDigest>> {
        let (_gate, mut tx) = self.db.begin().await?;
        let err = |e| self.db_error(e);
        let Some(row) = sqlx::query(
            "SELECT event_type, user_id, key_value, window_end, count, closed_at \
             FROM digests WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        else {
            return Ok(None);
        };
        let (event_type, user_id, key_value): (String, String, String) = (
            row.get("event_type"),
            row.get("user_id"),
            row.get("key_value"),
        );
        if row.get::<Option<i64>, _>("closed_at").is_none() {
            sqlx::query("UPDATE digests SET closed_at = ? WHERE id = ?")
                .bind(micros(Utc::now()))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(
                "DELETE FROM digest_heads WHERE event_type = ? AND user_id = ? \
                 AND key_value = ? AND digest_id = ?",
            )
            .bind(&event_type)
            .bind(&user_id)
            .bind(&key_value)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        let data: Vec<String> =
            sqlx::query_scalar("SELECT data FROM digest_events WHERE digest_id = ? ORDER BY seq")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
        tx.commit().await.map_err(err)?;
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
            count: row.get::<i64, _>("count") as u64,
            window_ends_at: from_micros(row.get("window_end")),
        }))
    }

    async fn purge_digests(&self, before: DateTime<Utc>) -> Result<u64> {
        let err = |e| self.db_error(e);
        // A chunk of closed digests at a time, with their events, each chunk in its own
        // transaction and turn to write (see `Db::delete_in_chunks`). Both statements pick
        // the same chunk: the same ordered query inside one transaction.
        const CHUNK: &str = "SELECT id FROM digests WHERE closed_at IS NOT NULL \
                             AND window_end < ? ORDER BY window_end, id LIMIT ?";
        let mut total = 0;
        loop {
            let (_gate, mut tx) = self.db.begin().await?;
            sqlx::query(&format!(
                "DELETE FROM digest_events WHERE digest_id IN ({CHUNK})"
            ))
            .bind(micros(before))
            .bind(PURGE_CHUNK)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            let n = sqlx::query(&format!("DELETE FROM digests WHERE id IN ({CHUNK})"))
                .bind(micros(before))
                .bind(PURGE_CHUNK)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
            tx.commit().await.map_err(err)?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn put_rule(&self, rule: &Rule) -> Result<()> {
        let spec = serde_json::to_string(rule).map_err(|e| corrupt("rule", e))?;
        let _gate = self.db.gate().await;
        sqlx::query(
            "INSERT INTO rules (event_type, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (event_type) DO UPDATE SET spec = excluded.spec, \
             updated_at = excluded.updated_at",
        )
        .bind(&rule.event_type)
        .bind(spec)
        .bind(micros(rule.created_at))
        .bind(micros(rule.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    async fn get_rule(&self, event_type: &str) -> Result<Option<Rule>> {
        let row = sqlx::query("SELECT spec, created_at FROM rules WHERE event_type = ?")
            .bind(event_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        row.as_ref().map(rule_from_row).transpose()
    }

    async fn list_rules(&self, after: Option<&str>, limit: u32) -> Result<Vec<Rule>> {
        let rows = sqlx::query(
            "SELECT spec, created_at FROM rules WHERE event_type > ? ORDER BY event_type LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter().map(rule_from_row).collect()
    }

    async fn delete_rule(&self, event_type: &str) -> Result<bool> {
        let _gate = self.db.gate().await;
        let n = sqlx::query("DELETE FROM rules WHERE event_type = ?")
            .bind(event_type)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        Ok(n > 0)
    }
}

fn rule_from_row(row: &SqliteRow) -> Result<Rule> {
    let spec: String = row.get("spec");
    let mut rule: Rule = serde_json::from_str(&spec).map_err(|e| corrupt("rule", e))?;
    // The first creation time survives replacements.
    rule.created_at = from_micros(row.get("created_at"));
    Ok(rule)
}

fn revision_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CampaignRevision> {
    let broadcast_id: Option<Vec<u8>> = row.get("broadcast_id");
    let row_time: Option<i64> = row.get("row_time");
    let revision: i64 = row.get("revision");
    Ok(CampaignRevision {
        campaign_id: row.get::<String, _>("campaign_id"),
        revision: revision as u32,
        row_time: row_time.map(from_micros),
        broadcast_id: broadcast_id
            .map(|b| uuid::Uuid::from_slice(&b).map_err(|e| corrupt("broadcast id", e)))
            .transpose()?,
        content: serde_json::from_str(&row.get::<String, _>("content"))
            .map_err(|e| corrupt("campaign revision", e))?,
        data: serde_json::from_str(&row.get::<String, _>("data"))
            .map_err(|e| corrupt("campaign revision", e))?,
        revised_at: from_micros(row.get("revised_at")),
    })
}

fn retraction_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CampaignRetraction> {
    let broadcast_id: Option<Vec<u8>> = row.get("broadcast_id");
    Ok(CampaignRetraction {
        campaign_id: row.get("campaign_id"),
        row_time: from_micros(row.get("row_time")),
        broadcast_id: broadcast_id
            .map(|b| uuid::Uuid::from_slice(&b).map_err(|e| corrupt("broadcast id", e)))
            .transpose()?,
        retracted_at: from_micros(row.get("retracted_at")),
    })
}
