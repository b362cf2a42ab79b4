//! Event-triggered notifications: an event whose rule exists and whose condition holds on the
//! event's data becomes a one-user campaign, through [`crate::campaigns::create_campaign`]
//! exactly as a `POST /v1/campaigns` to that user would.

use crate::campaigns::{create_campaign, CampaignInput, Created};
use herald_core::model::{Audience, Campaign};
use herald_core::strategy::RequestedStrategy;
use herald_core::{Context, Error, Result};
use serde_json::{Map, Value};

/// What became of an event.
#[derive(Debug)]
pub enum EventOutcome {
    /// No campaign: why not (no rule for the type, or the condition did not hold).
    NotMatched(String),
    Matched(Box<Campaign>),
}

/// Turns an event of `event_type` for `user_id` with `data` into a campaign if its rule says
/// so. The caller has checked the event type and user id.
pub async fn trigger(
    ctx: &Context,
    event_type: &str,
    user_id: String,
    data: Map<String, Value>,
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
    };
    match create_campaign(ctx, input, None).await? {
        Created::New(campaign) => {
            metrics::counter!("herald_events_total", "matched" => "true").increment(1);
            Ok(EventOutcome::Matched(campaign))
        }
        Created::Replayed { .. } => Err(Error::internal("an event without a key was replayed")),
    }
}

fn not_matched(reason: String) -> EventOutcome {
    metrics::counter!("herald_events_total", "matched" => "false").increment(1);
    EventOutcome::NotMatched(reason)
}
