//! Seed 004's read path for broadcasts: the open (scheduled or active) broadcasts kept in
//! Redis in front of the broadcast store, which stays the source of truth.
//!
//! Keys (one hash tag, so they share a slot on a cluster): `{prefix}:broadcasts:active`, a
//! sorted set of open broadcast ids scored by `starts_at` (Unix microseconds);
//! `{prefix}:broadcast:<id>`, a hash with the broadcast as JSON (`spec`) and its `status`;
//! `{prefix}:broadcasts:built`, set while the set is known to match the store. Listing the
//! open broadcasts costs one `ZRANGEBYSCORE` and one pipeline of hash reads.
//!
//! Writes go to the store first, then to Redis; once the store has a write, a failure to
//! mirror it in Redis is not the caller's error (the write happened): Redis is marked for a
//! rebuild instead. The set is rebuilt from the store when `built` is missing (a new or
//! flushed Redis, or its [`BUILT_TTL`] ran out) or a member's hash is missing, so a process
//! that died between its store write and its Redis write leaves Redis behind for at most
//! `BUILT_TTL`. Every writer bumps `{prefix}:broadcasts:gen` with its Redis write, and a
//! rebuild replaces the set only if the generation it read before reading the store is still
//! the current one (one script), so a rebuild never undoes a write that reached Redis while
//! it was reading the store. Per-user reads and dismissals are another port
//! ([`herald_core::ports::BroadcastStates`]), not cached here.

use super::Conn;
use super::{connect, redis_error};
use crate::time::micros;
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use herald_core::model::{Broadcast, BroadcastStatus};
use herald_core::ports::BroadcastStore;
use herald_core::Result;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long the set is trusted without a rebuild from the store.
pub const BUILT_TTL: Duration = Duration::from_secs(30);
/// Hashes outlive any rebuild interval; a rebuild refreshes them.
const HASH_TTL: Duration = Duration::from_secs(3600);

/// Replaces the open set if the generation is still `ARGV[1]`: KEYS = active set, built
/// marker, generation; ARGV = generation, built TTL (ms), hash TTL (ms), hash key prefix, then
/// (id, score, spec, status) per open broadcast. Returns whether it replaced the set.
const REBUILD: &str = r#"
local gen = redis.call('GET', KEYS[3]) or ''
if gen ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 4 do
  local h = ARGV[4] .. ARGV[i]
  redis.call('HSET', h, 'spec', ARGV[i + 2], 'status', ARGV[i + 3])
  redis.call('PEXPIRE', h, ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
redis.call('SET', KEYS[2], 1, 'PX', ARGV[2])
return 1
"#;

pub struct RedisBroadcastCache {
    store: Arc<dyn BroadcastStore>,
    conn: Conn,
    prefix: String,
    rebuild_script: ::redis::Script,
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
            rebuild_script: ::redis::Script::new(REBUILD),
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

    fn gen_key(&self) -> String {
        format!("{{{}}}:broadcasts:gen", self.prefix)
    }

    fn hash_prefix(&self) -> String {
        format!("{{{}}}:broadcast:", self.prefix)
    }

    fn hash_key(&self, id: Uuid) -> String {
        format!("{}{id}", self.hash_prefix())
    }

    /// Runs a writer's Redis mirror of a store write that succeeded: bumps the generation
    /// with it; on failure, asks for a rebuild (best effort) and logs, without failing.
    async fn mirror(&self, mut pipe: ::redis::Pipeline) {
        pipe.cmd("INCR").arg(self.gen_key()).ignore();
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "could not mirror a broadcast write in Redis; it will be rebuilt from the store");
            metrics::counter!("herald_broadcast_cache_mirror_failures_total").increment(1);
            let _ = ::redis::cmd("DEL")
                .arg(self.built_key())
                .query_async::<()>(&mut conn)
                .await;
        }
    }

    /// Adds the writes that take broadcast `id` out of the open set to `pipe`.
    fn remove(&self, pipe: &mut ::redis::Pipeline, id: Uuid) {
        pipe.cmd("ZREM")
            .arg(self.active_key())
            .arg(id.to_string())
            .ignore();
        pipe.cmd("DEL").arg(self.hash_key(id)).ignore();
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

    /// Replaces the set by the store's open broadcasts, unless a writer changed Redis while
    /// the store was read (then the next read rebuilds again). Returns the store's list.
    async fn rebuild(&self) -> Result<Vec<Broadcast>> {
        let mut conn = self.conn.clone();
        let gen: Option<String> = ::redis::cmd("GET")
            .arg(self.gen_key())
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let open = self.store.list_open().await?;
        let mut call = self.rebuild_script.prepare_invoke();
        call.key(self.active_key())
            .key(self.built_key())
            .key(self.gen_key())
            .arg(gen.unwrap_or_default())
            .arg(BUILT_TTL.as_millis() as u64)
            .arg(HASH_TTL.as_millis() as u64)
            .arg(self.hash_prefix());
        for b in &open {
            let spec = serde_json::to_string(b).map_err(|e| corrupt("broadcast", e))?;
            call.arg(b.id.to_string())
                .arg(micros(b.starts_at))
                .arg(spec)
                .arg(b.status.as_str());
        }
        let replaced: i64 = call.invoke_async(&mut conn).await.map_err(redis_error)?;
        if replaced == 1 {
            metrics::counter!("herald_broadcast_cache_rebuilds_total").increment(1);
        }
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
        super::ping(&self.conn).await
    }

    async fn insert(&self, b: &Broadcast) -> Result<()> {
        self.store.insert(b).await?;
        if is_open(b.status) {
            let mut pipe = ::redis::pipe();
            self.put(&mut pipe, b)?;
            self.mirror(pipe).await;
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
        // The whole broadcast again (its hash may be gone), as the store has it now: a
        // transition that closed it meanwhile must not be undone by putting it back.
        match self.store.get(id).await {
            Ok(Some(b)) if is_open(b.status) => self.put(&mut pipe, &b)?,
            Ok(_) => self.remove(&mut pipe, id),
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read a transitioned broadcast; it will be rebuilt from the store");
                pipe.cmd("DEL").arg(self.built_key()).ignore();
            }
        }
        self.mirror(pipe).await;
        Ok(true)
    }
}
