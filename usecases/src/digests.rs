//! Digests of event rules (`digest: {key, window_s}` on a rule): events join a digest in the
//! campaign store ([`crate::events::trigger`]), and when its window ends the digest is sent as
//! one campaign to its user, whose template sees the events (`{{ events }}`, `{{ count }}`).
//!
//! Exactly once across restarts: every add schedules the send in the delay store under the
//! digest's id (one message however many adds), the delay publisher puts it on
//! [`topics::DIGESTS`] when due, and the sender takes the digest (closing it: later events
//! open a new one) and creates its campaign under the idempotency key `digest:<id>`. A send
//! redelivered after a crash takes the same closed digest again and finds its campaign made.

use crate::campaigns::{create_campaign, CampaignInput, Created, IdempotencyKey};
use chrono::{DateTime, Utc};
use herald_core::consume::{SharedConsumer, MAX_DELIVERIES};
use herald_core::model::{Audience, OutMessage};
use herald_core::strategy::RequestedStrategy;
use herald_core::topics::{self, DigestDue};
use herald_core::worker::{Worker, WorkerState};
use herald_core::{Context, Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most a digest's events take in its campaign's data; older events beyond it are left
/// out (the count keeps them).
pub const MAX_DIGEST_DATA_BYTES: usize = 256 * 1024;

/// Schedules the send of digest `id` for `at` (at once if that has passed): one message in
/// the delay store under the digest's id, however often it is scheduled.
pub async fn schedule_send(ctx: &Context, id: &str, at: DateTime<Utc>) -> Result<()> {
    let payload = serde_json::to_vec(&DigestDue {
        digest_id: id.to_owned(),
    })
    .map_err(|e| Error::internal("digest message").with_source(e))?;
    ctx.ports
        .publish_at(
            topics::DIGESTS,
            OutMessage {
                key: Some(id.to_owned()),
                payload,
            },
            Some(at),
            ctx.clock.now(),
            || format!("{}/{id}", topics::DIGESTS),
        )
        .await
}

/// Sends digest `id`: its campaign's id, or `None` when there is nothing to send (the digest
/// was purged, or its rule or template is gone: said in the log and counted).
pub async fn send(ctx: &Context, id: &str) -> Result<Option<String>> {
    let Some(digest) = ctx.ports.campaigns.take_digest(id).await? else {
        tracing::warn!(digest = id, "a due digest is gone; nothing sent");
        return Ok(None);
    };
    let Some(rule) = ctx.ports.campaigns.get_rule(&digest.event_type).await? else {
        tracing::warn!(digest = id, event_type = %digest.event_type, "the digest's rule was deleted; nothing sent");
        metrics::counter!("herald_digests_dropped_total").increment(1);
        return Ok(None);
    };
    // The newest events that fit, in their order.
    let mut events: Vec<Value> = Vec::new();
    let mut bytes = 0;
    for e in digest.events.iter().rev() {
        bytes += e.to_string().len();
        if bytes > MAX_DIGEST_DATA_BYTES && !events.is_empty() {
            break;
        }
        events.push(e.clone());
    }
    events.reverse();
    let mut data = json!({"events": events, "count": digest.count});
    if let Some(key) = rule.digest.as_ref().and_then(|d| d.key.clone()) {
        data[key] = Value::String(digest.key_value.clone());
    }
    let input = CampaignInput {
        audience: Audience::User(digest.user_id.clone()),
        template: Some(rule.template.clone()),
        content: None,
        channels: rule.channels.clone(),
        category: rule.category.clone(),
        priority: rule.priority,
        data,
        starts_at: None,
        expires_at: None,
        strategy: RequestedStrategy::default(),
        push_when: rule.push_when,
        online_push_delay_s: rule.online_push_delay_s,
    };
    let key = IdempotencyKey {
        key: format!("digest:{id}"),
        request_hash: id.to_owned(),
    };
    match create_campaign(ctx, input, Some(&key)).await {
        Ok(Created::New(c)) => {
            metrics::counter!("herald_digests_sent_total").increment(1);
            tracing::info!(digest = id, campaign = %c.id, events = digest.count, "digest sent");
            Ok(Some(c.id))
        }
        Ok(Created::Replayed { body, .. }) => {
            // Sent by an earlier delivery of this message.
            let first: Value = serde_json::from_slice(&body).unwrap_or_default();
            Ok(first["id"].as_str().map(str::to_owned))
        }
        // The rule's template was deleted or no longer fits its channels: retrying cannot help.
        Err(e) if matches!(e.kind, ErrorKind::Invalid | ErrorKind::NotFound) => {
            tracing::warn!(digest = id, error = %e, "the digest cannot be sent; dropped");
            metrics::counter!("herald_digests_dropped_total").increment(1);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Sends due digests: a member of [`topics::DIGEST_SENDERS`] on [`topics::DIGESTS`], run by
/// the fan-out role.
pub struct DigestSender {
    ctx: Context,
    due: Arc<SharedConsumer>,
}

impl DigestSender {
    pub fn new(ctx: Context) -> Self {
        let due = SharedConsumer::new(
            ctx.ports.bus.clone(),
            topics::DIGESTS,
            topics::DIGEST_SENDERS,
        );
        Self { ctx, due }
    }
}

#[async_trait::async_trait]
impl Worker for DigestSender {
    fn name(&self) -> &'static str {
        "digest-sender"
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        for held in self.due.poll(16, Duration::from_secs(1)).await? {
            let Ok(due) = serde_json::from_slice::<DigestDue>(held.payload()) else {
                tracing::error!("undecodable digest message dropped");
                held.commit().await?;
                continue;
            };
            match send(&self.ctx, &due.digest_id).await {
                Ok(_) => held.commit().await?,
                Err(e) => {
                    tracing::warn!(digest = %due.digest_id, error = %e, "sending a digest failed; it is retried");
                    let bus = self.due.bus().clone();
                    held.failed(
                        bus.as_ref(),
                        topics::DIGESTS,
                        topics::DIGEST_SENDERS,
                        &e,
                        MAX_DELIVERIES,
                    )
                    .await?;
                    return Err(e);
                }
            }
        }
        Ok(WorkerState::Busy)
    }
}
