//! Event-triggered notifications: an event whose rule exists and whose condition holds on the
//! event's data becomes a one-user campaign, through [`crate::campaigns::create_campaign`]
//! exactly as a `POST /v1/campaigns` to that user would. An event that carries an identity
//! (a CloudEvent's `source` and `id`) creates its campaign once: the same event received again
//! is answered with the campaign it created.

use crate::campaigns::{create_campaign, CampaignInput, Created, IdempotencyKey};
use herald_core::model::{Audience, Campaign, DigestAdded, DigestEvent};
use herald_core::strategy::RequestedStrategy;
use herald_core::{Context, Error, Result};
use serde_json::{Map, Value};

/// What became of an event.
#[derive(Debug)]
pub enum EventOutcome {
    /// No campaign: why not (no rule for the type, or the condition did not hold).
    NotMatched(String),
    Matched(Box<Campaign>),
    /// The rule digests its events: this one joined a digest, sent when its window ends.
    Digested(DigestAdded),
    /// The same event was received before and created this campaign (its answer then:
    /// `id`, `strategy`, `audience_size`, `status`).
    Duplicate(Value),
}

/// The idempotency key of the event `id` from `source` (CloudEvents: a consumer may take two
/// events with the same `source` and `id` for the same event): a fixed-length digest of both,
/// whatever their length, and the same request hash whatever the body, so a resent event is
/// a duplicate even if the producer re-rendered it.
pub fn event_key(source: &str, id: &str) -> IdempotencyKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    IdempotencyKey {
        key: format!("event:{digest}"),
        request_hash: digest,
    }
}

/// Turns an event of `event_type` for `user_id` with `data` into a campaign if its rule says
/// so. The caller has checked the event type and user id.
pub async fn trigger(
    ctx: &Context,
    event_type: &str,
    user_id: String,
    data: Map<String, Value>,
    key: Option<&IdempotencyKey>,
) -> Result<EventOutcome> {
    let Some(rule) = ctx.ports.campaigns.get_rule(event_type).await? else {
        return Ok(not_matched(format!(
            "no rule for event type `{event_type}`"
        )));
    };
    if let Some(condition) = &rule.condition {
        if !condition.matches(&data, ctx.clock.now()) {
            return Ok(not_matched("condition not met".to_owned()));
        }
    }
    if let Some(digest) = &rule.digest {
        let event = DigestEvent {
            event_type: event_type.to_owned(),
            user_id,
            key_value: digest.key_value(&data),
            data: Value::Object(data),
            event_key: key.map(|k| k.key.clone()),
            at: ctx.clock.now(),
        };
        let window = std::time::Duration::from_secs(u64::from(digest.window_s));
        let added = ctx.ports.campaigns.add_to_digest(&event, window).await?;
        // On every add, under the digest's id: a send scheduled by an add whose answer was
        // lost (the process died before it) is scheduled again by the client's retry.
        crate::digests::schedule_send(ctx, &added.digest_id, added.window_ends_at).await?;
        let label = if added.duplicate {
            "duplicate"
        } else {
            "digested"
        };
        metrics::counter!("herald_events_total", "matched" => label).increment(1);
        return Ok(EventOutcome::Digested(added));
    }
    let input = CampaignInput {
        audience: Audience::User(user_id),
        template: Some(rule.template),
        content: None,
        channels: rule.channels,
        category: rule.category,
        priority: rule.priority,
        data: Value::Object(data),
        starts_at: None,
        expires_at: None,
        strategy: RequestedStrategy::default(),
        push_when: rule.push_when,
        online_push_delay_s: rule.online_push_delay_s,
    };
    match create_campaign(ctx, input, key).await? {
        Created::New(campaign) => {
            metrics::counter!("herald_events_total", "matched" => "true").increment(1);
            Ok(EventOutcome::Matched(campaign))
        }
        Created::Replayed { body, .. } => {
            metrics::counter!("herald_events_total", "matched" => "duplicate").increment(1);
            let first: Value = serde_json::from_slice(&body).map_err(|e| {
                Error::internal("the stored answer of an event is not JSON").with_source(e)
            })?;
            Ok(EventOutcome::Duplicate(first))
        }
    }
}

fn not_matched(reason: String) -> EventOutcome {
    metrics::counter!("herald_events_total", "matched" => "false").increment(1);
    EventOutcome::NotMatched(reason)
}
