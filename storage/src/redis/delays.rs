//! The delay store on Redis: a sorted set of message ids scored by due time (Unix
//! microseconds, exact in a double until the year 2255) and a hash per message (`topic`,
//! `key`, `payload`, `sdue`: the due time it was scheduled for, `claim`: the token of the claim
//! holding it). Scheduling, claiming and removing are Lua scripts, so each is atomic: a claim
//! rescores the due members to the end of the lease and stamps their hashes; a removal deletes
//! only members whose hash still carries the claim's token.

use super::Conn;
use super::{connect, redis_error};
use crate::time::{from_micros, micros};
use crate::BackendUrl;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::model::OutMessage;
use herald_core::ports::{DelayClaim, DelayStore, DelayedMessage};
use herald_core::Result;
use std::time::Duration;

/// Messages per scheduling script: bounds one script's run (Redis runs scripts one at a time).
const SCHEDULE_CHUNK: usize = 500;

const SCHEDULE: &str = r#"
local n = (#ARGV - 1) / 6
for i = 0, n - 1 do
  local b = 2 + i * 6
  local id, due, topic, has_key, key, payload =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local h = ARGV[1] .. id
  redis.call('DEL', h)
  if has_key == '1' then
    redis.call('HSET', h, 'topic', topic, 'sdue', due, 'payload', payload, 'key', key)
  else
    redis.call('HSET', h, 'topic', topic, 'sdue', due, 'payload', payload)
  end
  redis.call('ZADD', KEYS[1], due, id)
end
return n
"#;

const CLAIM: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local h = ARGV[1] .. id
  local v = redis.call('HMGET', h, 'topic', 'key', 'payload', 'sdue')
  if v[1] then
    redis.call('ZADD', KEYS[1], ARGV[4], id)
    redis.call('HSET', h, 'claim', ARGV[5])
    out[#out + 1] = {id, v[1], v[2], v[3], v[4]}
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#;

const REMOVE: &str = r#"
local n = 0
for i = 3, #ARGV do
  local h = ARGV[1] .. ARGV[i]
  if redis.call('HGET', h, 'claim') == ARGV[2] then
    redis.call('DEL', h)
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"#;

pub struct RedisDelays {
    conn: Conn,
    /// The sorted set of ids by due time.
    due_key: String,
    /// Prefix of the per-message hashes (the id follows).
    message_prefix: String,
    schedule: ::redis::Script,
    claim: ::redis::Script,
    remove: ::redis::Script,
}

impl RedisDelays {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let (conn, prefix) = connect(url).await?;
        Ok(Self {
            conn,
            due_key: format!("{{{prefix}}}:delays:due"),
            message_prefix: format!("{{{prefix}}}:delays:m:"),
            schedule: ::redis::Script::new(SCHEDULE),
            claim: ::redis::Script::new(CLAIM),
            remove: ::redis::Script::new(REMOVE),
        })
    }
}

/// One claimed message as the claim script returns it.
type ClaimedRow = (String, String, Option<String>, Vec<u8>, i64);

#[async_trait]
impl DelayStore for RedisDelays {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.conn).await
    }

    async fn schedule(&self, messages: &[DelayedMessage]) -> Result<()> {
        for chunk in messages.chunks(SCHEDULE_CHUNK) {
            let mut call = self.schedule.prepare_invoke();
            call.key(&self.due_key).arg(&self.message_prefix);
            for m in chunk {
                call.arg(&m.id)
                    .arg(micros(m.due))
                    .arg(&m.topic)
                    .arg(if m.message.key.is_some() { "1" } else { "0" })
                    .arg(m.message.key.as_deref().unwrap_or(""))
                    .arg(&m.message.payload[..]);
            }
            let _: i64 = call
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: Duration,
    ) -> Result<DelayClaim> {
        let (token, until) = crate::new_claim(now, lease);
        let rows: Vec<ClaimedRow> = self
            .claim
            .key(&self.due_key)
            .arg(&self.message_prefix)
            .arg(micros(now))
            .arg(limit)
            .arg(micros(until))
            .arg(&token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        let messages = rows
            .into_iter()
            .map(|(id, topic, key, payload, sdue)| DelayedMessage {
                id,
                topic,
                message: OutMessage { key, payload },
                due: from_micros(sdue),
            })
            .collect();
        Ok(DelayClaim { token, messages })
    }

    async fn remove(&self, token: &str, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(SCHEDULE_CHUNK) {
            let mut call = self.remove.prepare_invoke();
            call.key(&self.due_key).arg(&self.message_prefix).arg(token);
            for id in chunk {
                call.arg(id);
            }
            let _: i64 = call
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let first: Vec<(String, f64)> = ::redis::cmd("ZRANGE")
            .arg(&self.due_key)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(first.first().map(|(_, score)| from_micros(*score as i64)))
    }

    async fn pending(&self) -> Result<u64> {
        ::redis::cmd("ZCARD")
            .arg(&self.due_key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)
    }
}
