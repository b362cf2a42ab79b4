//! Seed 004's read path for broadcasts: the open (scheduled or active) broadcasts kept in
//! Redis in front of the broadcast store, which stays the source of truth.
//!
//! Keys (one hash tag, so they share a slot on a cluster): `{prefix}:broadcasts:active`, a
//! sorted set of open broadcast ids scored by `starts_at` (Unix microseconds);
//! `{prefix}:broadcast:<id>`, a hash with the broadcast as JSON (`spec`) and its `status`;
//! `{prefix}:broadcasts:built`, set while the set is known to match the store. Listing the
//! open broadcasts costs one `ZRANGEBYSCORE` and one pipeline of hash reads.
//!
//! Writes go to the store first, then to Redis. The set is rebuilt from the store (one
//! `MULTI`) when `built` is missing (a new or flushed Redis, or its [`BUILT_TTL`] ran out)
//! or a member's hash is missing, so a process that died between its store write and its
//! Redis write leaves Redis behind for at most `BUILT_TTL`. Per-user reads and dismissals
//! are read from the store (one primary-key range per user).

use super::Conn;
use super::{connect, redis_error};
use crate::time::micros;
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::{Broadcast, BroadcastStatus, BroadcastUserState};
use herald_core::ports::BroadcastStore;
use herald_core::Result;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long the set is trusted without a rebuild from the store.
pub const BUILT_TTL: Duration = Duration::from_secs(30);
/// Hashes outlive any rebuild interval; a rebuild refreshes them.
const HASH_TTL: Duration = Duration::from_secs(3600);

pub struct RedisBroadcastCache {
    store: Arc<dyn BroadcastStore>,
    conn: Conn,
    prefix: String,
}

fn is_open(status: BroadcastStatus) -> bool {
    matches!(status, BroadcastStatus::Scheduled | BroadcastStatus::Active)
}

impl RedisBroadcastCache {
    /// Puts Redis at `url` in front of `store`, rebuilding the set from it.
    pub async fn open(url: &BackendUrl, store: Arc<dyn BroadcastStore>) -> Result<Self> {
        let (conn, prefix) = connect(url).await?;
        let cache = Self {
            store,
            conn,
            prefix,
        };
        cache.rebuild().await?;
        Ok(cache)
    }

    fn active_key(&self) -> String {
        format!("{{{}}}:broadcasts:active", self.prefix)
    }

    fn built_key(&self) -> String {
        format!("{{{}}}:broadcasts:built", self.prefix)
    }

    fn hash_key(&self, id: Uuid) -> String {
        format!("{{{}}}:broadcast:{id}", self.prefix)
    }

    /// Adds the writes that make `b` open in Redis to `pipe`.
    fn put(&self, pipe: &mut ::redis::Pipeline, b: &Broadcast) -> Result<()> {
        let spec = serde_json::to_string(b).map_err(|e| corrupt("broadcast", e))?;
        let key = self.hash_key(b.id);
        pipe.cmd("HSET")
            .arg(&key)
            .arg("spec")
            .arg(spec)
            .arg("status")
            .arg(b.status.as_str())
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(HASH_TTL.as_millis() as u64)
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.active_key())
            .arg(micros(b.starts_at))
            .arg(b.id.to_string())
            .ignore();
        Ok(())
    }

    /// Replaces the set by the store's open broadcasts, in one transaction.
    async fn rebuild(&self) -> Result<Vec<Broadcast>> {
        let open = self.store.list_open().await?;
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.active_key()).ignore();
        for b in &open {
            self.put(&mut pipe, b)?;
        }
        pipe.cmd("SET")
            .arg(self.built_key())
            .arg(1)
            .arg("PX")
            .arg(BUILT_TTL.as_millis() as u64)
            .ignore();
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        metrics::counter!("herald_broadcast_cache_rebuilds_total").increment(1);
        Ok(open)
    }

    /// The open broadcasts as Redis has them; `None` when Redis must be rebuilt first.
    async fn cached_open(&self) -> Result<Option<Vec<Broadcast>>> {
        let mut conn = self.conn.clone();
        let (built, ids): (Option<String>, Vec<String>) = ::redis::pipe()
            .cmd("GET")
            .arg(self.built_key())
            .cmd("ZRANGEBYSCORE")
            .arg(self.active_key())
            .arg("-inf")
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if built.is_none() {
            return Ok(None);
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HGET")
                .arg(format!("{{{}}}:broadcast:{id}", self.prefix))
                .arg("spec");
        }
        let specs: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(redis_error)?
        };
        let mut open = Vec::with_capacity(specs.len());
        for spec in specs {
            let Some(spec) = spec else {
                return Ok(None);
            };
            open.push(serde_json::from_str(&spec).map_err(|e| corrupt("cached broadcast", e))?);
        }
        Ok(Some(open))
    }
}

#[async_trait]
impl BroadcastStore for RedisBroadcastCache {
    async fn ping(&self) -> Result<()> {
        self.store.ping().await?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn insert(&self, b: &Broadcast) -> Result<()> {
        self.store.insert(b).await?;
        if is_open(b.status) {
            let mut pipe = ::redis::pipe();
            self.put(&mut pipe, b)?;
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Broadcast>> {
        self.store.get(id).await
    }

    async fn list_open(&self) -> Result<Vec<Broadcast>> {
        if let Some(open) = self.cached_open().await? {
            return Ok(open);
        }
        self.rebuild().await
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[BroadcastStatus],
        to: BroadcastStatus,
    ) -> Result<bool> {
        if !self.store.transition(id, from, to).await? {
            return Ok(false);
        }
        let mut pipe = ::redis::pipe();
        if is_open(to) {
            // The whole broadcast again (its hash may be gone): one read of the store.
            if let Some(b) = self.store.get(id).await? {
                self.put(&mut pipe, &b)?;
            }
        } else {
            pipe.cmd("ZREM")
                .arg(self.active_key())
                .arg(id.to_string())
                .ignore();
            pipe.cmd("DEL").arg(self.hash_key(id)).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(true)
    }

    async fn user_states(&self, user_id: &str) -> Result<Vec<BroadcastUserState>> {
        self.store.user_states(user_id).await
    }

    async fn mark_read(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        self.store.mark_read(user_id, id, at).await
    }

    async fn dismiss(&self, user_id: &str, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        self.store.dismiss(user_id, id, at).await
    }
}
