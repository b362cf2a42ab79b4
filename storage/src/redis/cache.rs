//! The preference cache on Redis: one string per user, `{prefix}:prefs:<user id>`, holding the
//! user's preferences as JSON with a TTL. A batch of the fan-out reads all its users with one
//! `MGET`; misses are loaded from the directory and put back in one pipeline.
//!
//! Invalidation reaches every process at once, since they share the cache: a preference write
//! replaces the entry by a short-lived tombstone, and entries are put back only where no key
//! exists (`SET NX`). A fan-out worker that read the old preferences from the directory just
//! before the write therefore cannot put them back over the tombstone; the next reads miss and
//! load the new ones. (A put that arrives more than [`TOMBSTONE_TTL`] late can still restore an
//! old entry until it expires: the TTL bounds that.)

use super::Conn;
use super::{connect, redis_error};
use crate::{corrupt, BackendUrl};
use async_trait::async_trait;
use herald_core::model::Preferences;
use herald_core::ports::PreferenceCache;
use herald_core::Result;
use std::time::Duration;

/// How long an invalidated user's entry cannot be put back.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(10);
const TOMBSTONE: &str = "-";
/// Keys per `MGET` / per pipeline.
const CHUNK: usize = 1000;

pub struct RedisPreferenceCache {
    conn: Conn,
    prefix: String,
    ttl: Duration,
}

impl RedisPreferenceCache {
    /// A cache at `url` whose entries expire after `ttl` (at least one second).
    pub async fn open(url: &BackendUrl, ttl: Duration) -> Result<Self> {
        let (conn, prefix) = connect(url).await?;
        Ok(Self {
            conn,
            prefix,
            ttl: ttl.max(Duration::from_secs(1)),
        })
    }

    fn key(&self, user_id: &str) -> String {
        format!("{{{}}}:prefs:{user_id}", self.prefix)
    }
}

#[async_trait]
impl PreferenceCache for RedisPreferenceCache {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.conn).await
    }

    async fn get_many(&self, user_ids: &[String]) -> Result<Vec<Option<Preferences>>> {
        let mut out = Vec::with_capacity(user_ids.len());
        for part in user_ids.chunks(CHUNK) {
            let keys: Vec<String> = part.iter().map(|id| self.key(id)).collect();
            let values: Vec<Option<String>> = ::redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
            for value in values {
                out.push(match value.as_deref() {
                    None | Some(TOMBSTONE) => None,
                    Some(json) => Some(
                        serde_json::from_str(json).map_err(|e| corrupt("cached preferences", e))?,
                    ),
                });
            }
        }
        Ok(out)
    }

    async fn put_many(&self, entries: &[(String, Preferences)]) -> Result<()> {
        let ttl_ms = self.ttl.as_millis() as u64;
        for part in entries.chunks(CHUNK) {
            let mut pipe = ::redis::pipe();
            for (id, prefs) in part {
                let json = serde_json::to_string(prefs).map_err(|e| corrupt("preferences", e))?;
                pipe.cmd("SET")
                    .arg(self.key(id))
                    .arg(json)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn invalidate(&self, user_id: &str) -> Result<()> {
        ::redis::cmd("SET")
            .arg(self.key(user_id))
            .arg(TOMBSTONE)
            .arg("PX")
            .arg(TOMBSTONE_TTL.as_millis() as u64)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }
}
