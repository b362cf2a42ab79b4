//! `GET /v1/campaigns/{id}/recipients/{user_id}`: what a campaign did for one user, from what
//! the stores keep: whether the user is in the audience (for a segment, the clause that fails
//! on the user's attributes as they are now), the switches that opt them out, the end of their
//! quiet hours, their inbox item and its read state (for a broadcast, whether it matches them
//! now and what they did with it), and each outbound channel's outcome as the push gateway
//! recorded it (sent, failed and why, retrying, the dead letter, suppressed while they were
//! looking at the inbox). Reads only.

use chrono::{DateTime, Utc};
use herald_core::delivery::{RecipientRecord, RecipientStatus};
use herald_core::ids::{broadcast_id, notification_id, row_time};
use herald_core::model::*;
use herald_core::{Context, Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Explanation {
    pub campaign_id: String,
    pub user_id: String,
    pub campaign_status: CampaignStatus,
    pub strategy: Strategy,
    /// Whether the user is in the directory now.
    pub user_found: bool,
    pub audience: AudienceVerdict,
    /// The in-app item (with `in_app` among the channels): the user's row, or the broadcast.
    pub inbox: Option<InboxVerdict>,
    /// Each outbound channel of the campaign.
    pub channels: BTreeMap<Channel, ChannelVerdict>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AudienceVerdict {
    pub included: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct InboxVerdict {
    /// The item's id in the user's inbox.
    pub id: String,
    /// Whether the user's inbox shows it now.
    pub shown: bool,
    pub read_at: Option<DateTime<Utc>>,
    /// Broadcasts only (a dismissed personal row is gone).
    pub dismissed_at: Option<DateTime<Utc>>,
    /// Broadcasts only: whether its segment matches the user's attributes now.
    pub matches_now: Option<bool>,
    pub reason: String,
}

/// What a channel did for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelStatus {
    NotInAudience,
    OptedOut,
    /// No email, phone or device to send to.
    NoAddress,
    /// Held back until the end of the user's quiet hours.
    Deferred,
    /// The campaign has not reached the user yet.
    Pending,
    Sent,
    Failed,
    Retrying,
    DeadLettered,
    SuppressedOnline,
    /// Not sent: the campaign was retracted before the send was made.
    Cancelled,
    /// No outcome is recorded (not sent yet, or past the delivery log's retention).
    Unknown,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelVerdict {
    pub status: ChannelStatus,
    pub reason: Option<String>,
    /// `deferred`: when the user's quiet hours end.
    pub deferred_until: Option<DateTime<Utc>>,
    /// Sends the provider took (devices for push).
    pub sent: Option<u32>,
    pub dead_letter_id: Option<String>,
    /// When the outcome was recorded.
    pub at: Option<DateTime<Utc>>,
}

impl ChannelVerdict {
    fn of(status: ChannelStatus, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: Some(reason.into()),
            deferred_until: None,
            sent: None,
            dead_letter_id: None,
            at: None,
        }
    }
}

/// What campaign `campaign_id` did for `user_id`; `NotFound` without such a campaign.
pub async fn explain(ctx: &Context, campaign_id: &str, user_id: &str) -> Result<Explanation> {
    let ports = &ctx.ports;
    let campaign = ports
        .campaigns
        .get_campaign(campaign_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("campaign `{campaign_id}` not found")))?;
    let now = ctx.clock.now();
    let user = ports.directory.get_user(user_id).await?;
    let attributes = user
        .as_ref()
        .map(|u| u.attributes.clone())
        .unwrap_or_default();
    let prefs = ports
        .directory
        .get_preferences(&[user_id.to_owned()])
        .await?
        .remove(user_id)
        .unwrap_or_default();
    let broadcast = campaign.strategy == Strategy::Broadcast;

    let (segment_filter, audience) = match &campaign.audience {
        Audience::User(u) => (
            None,
            verdict(
                u == user_id,
                "the campaign's user",
                format!("the campaign is for `{u}`"),
            ),
        ),
        Audience::Users(list) => (
            None,
            verdict(
                list.iter().any(|u| u == user_id),
                "listed in the campaign's users",
                "not in the campaign's users",
            ),
        ),
        Audience::All(_) => (
            Some(herald_core::filter::Filter::match_all()),
            verdict(true, "everyone", ""),
        ),
        Audience::Segment(name) => match ports.directory.get_segment(name).await? {
            None => (
                None,
                verdict(false, "", format!("segment `{name}` no longer exists")),
            ),
            Some(_) if user.is_none() && !broadcast => (
                None,
                verdict(
                    false,
                    "",
                    "not in the directory (segments select directory users)",
                ),
            ),
            Some(segment) => {
                let v = match segment.filter.why_not(&attributes, now) {
                    None => verdict(
                        true,
                        format!("matches segment `{name}` (on the user's attributes now)"),
                        "",
                    ),
                    Some(why) => verdict(
                        false,
                        "",
                        format!("segment `{name}` (on the user's attributes now): {why}"),
                    ),
                };
                (Some(segment.filter), v)
            }
        },
    };

    let inbox = if campaign.channels.contains(&Channel::InApp) {
        Some(if broadcast {
            broadcast_item(ctx, &campaign, user_id, &attributes, segment_filter, now).await?
        } else {
            personal_item(ctx, &campaign, user_id, audience.included, &prefs).await?
        })
    } else {
        None
    };

    let records: BTreeMap<Channel, RecipientRecord> = ports
        .deliveries
        .recipient_records(campaign_id, user_id)
        .await?
        .into_iter()
        .map(|r| (r.channel, r))
        .collect();
    let mut channels = BTreeMap::new();
    for &ch in campaign.channels.iter().filter(|c| **c != Channel::InApp) {
        let v = if !audience.included {
            ChannelVerdict::of(ChannelStatus::NotInAudience, audience.reason.clone())
        } else if !prefs.allows(ch, campaign.category.as_deref()) {
            ChannelVerdict::of(ChannelStatus::OptedOut, switch_off(&prefs, ch, &campaign))
        } else if let Some(r) = records.get(&ch) {
            recorded(r)
        } else {
            unrecorded(ctx, &campaign, ch, user.as_ref(), &prefs, now).await?
        };
        channels.insert(ch, v);
    }

    Ok(Explanation {
        campaign_id: campaign.id.clone(),
        user_id: user_id.to_owned(),
        campaign_status: campaign.status,
        strategy: campaign.strategy,
        user_found: user.is_some(),
        audience,
        inbox,
        channels,
    })
}

fn verdict(included: bool, yes: impl Into<String>, no: impl Into<String>) -> AudienceVerdict {
    AudienceVerdict {
        included,
        reason: if included { yes.into() } else { no.into() },
    }
}

/// Which switch turns `ch` off for the campaign's category.
fn switch_off(prefs: &Preferences, ch: Channel, campaign: &Campaign) -> String {
    match campaign
        .category
        .as_deref()
        .and_then(|c| prefs.categories.get(c).map(|per| (c, per)))
        .and_then(|(c, per)| per.get(&ch).map(|_| c))
    {
        Some(category) => format!("the user's switch for {ch} in category `{category}` is off"),
        None => format!("the user's {ch} switch is off"),
    }
}

fn recorded(r: &RecipientRecord) -> ChannelVerdict {
    let status = match r.status {
        RecipientStatus::Sent => ChannelStatus::Sent,
        RecipientStatus::Failed => ChannelStatus::Failed,
        RecipientStatus::Retrying => ChannelStatus::Retrying,
        RecipientStatus::DeadLettered => ChannelStatus::DeadLettered,
        RecipientStatus::SuppressedOnline => ChannelStatus::SuppressedOnline,
        RecipientStatus::Cancelled => ChannelStatus::Cancelled,
    };
    ChannelVerdict {
        status,
        reason: r.reason.clone(),
        deferred_until: None,
        sent: Some(r.sent),
        dead_letter_id: r.dead_letter_id.clone(),
        at: Some(r.at),
    }
}

/// A channel with no recorded outcome: why not, from the user's data and the campaign's state.
async fn unrecorded(
    ctx: &Context,
    campaign: &Campaign,
    ch: Channel,
    user: Option<&User>,
    prefs: &Preferences,
    now: DateTime<Utc>,
) -> Result<ChannelVerdict> {
    let no_address = match ch {
        Channel::Email => user
            .is_none_or(|u| u.email.is_none())
            .then_some("the user has no email"),
        Channel::Sms => user
            .is_none_or(|u| u.phone.is_none())
            .then_some("the user has no phone"),
        Channel::Push => {
            let devices = ctx
                .ports
                .directory
                .list_devices(std::slice::from_ref(
                    &user.map_or(String::new(), |u| u.id.clone()),
                ))
                .await?;
            devices
                .is_empty()
                .then_some("the user has no registered device")
        }
        _ => None,
    };
    if let Some(why) = no_address {
        return Ok(ChannelVerdict::of(ChannelStatus::NoAddress, why));
    }
    // Quiet hours as the fan-out judged them when the campaign started.
    let judged_at = campaign.started_at.unwrap_or(now);
    let quiet_until = if campaign.priority.bypasses_quiet_hours() || ch == Channel::Webhook {
        None
    } else {
        prefs.quiet_hours.and_then(|q| {
            q.ends_after(
                judged_at,
                user.and_then(|u| u.timezone()).unwrap_or(chrono_tz::UTC),
            )
        })
    };
    if let Some(until) = quiet_until.filter(|t| *t > now) {
        return Ok(ChannelVerdict {
            deferred_until: Some(until),
            ..ChannelVerdict::of(
                ChannelStatus::Deferred,
                "held back by the user's quiet hours",
            )
        });
    }
    let pending = matches!(
        campaign.status,
        CampaignStatus::Scheduled
            | CampaignStatus::Sizing
            | CampaignStatus::FanningOut
            | CampaignStatus::Active
    );
    Ok(if pending {
        ChannelVerdict::of(
            ChannelStatus::Pending,
            "the campaign has not reached the user yet",
        )
    } else if campaign.status == CampaignStatus::Cancelled {
        ChannelVerdict::of(
            ChannelStatus::Unknown,
            "the campaign was cancelled before it reached the user",
        )
    } else {
        ChannelVerdict::of(
            ChannelStatus::Unknown,
            "no outcome recorded: not sent yet, or past the delivery log's retention",
        )
    })
}

async fn personal_item(
    ctx: &Context,
    campaign: &Campaign,
    user_id: &str,
    included: bool,
    prefs: &Preferences,
) -> Result<InboxVerdict> {
    let created_at = row_time(campaign.started_at.unwrap_or(campaign.created_at));
    let id = notification_id(&campaign.id, user_id, created_at);
    let row = match InboxKey::of_id(id) {
        Some(key) => ctx.ports.inbox.get(user_id, key).await?,
        None => None,
    };
    let reason = match &row {
        Some(_) => "written to the user's inbox".to_owned(),
        None if !included => "not in the audience".to_owned(),
        None if !prefs.allows(Channel::InApp, campaign.category.as_deref()) => {
            switch_off(prefs, Channel::InApp, campaign)
        }
        None if campaign.started_at.is_none() => "the campaign has not started".to_owned(),
        None => {
            "not in the user's inbox: not written yet, dismissed, or past the retention".to_owned()
        }
    };
    Ok(InboxVerdict {
        id: id.to_string(),
        shown: row.is_some(),
        read_at: row.and_then(|n| n.read_at),
        dismissed_at: None,
        matches_now: None,
        reason,
    })
}

async fn broadcast_item(
    ctx: &Context,
    campaign: &Campaign,
    user_id: &str,
    attributes: &serde_json::Map<String, serde_json::Value>,
    segment_filter: Option<herald_core::filter::Filter>,
    now: DateTime<Utc>,
) -> Result<InboxVerdict> {
    let id = broadcast_id(&campaign.id);
    let stored = ctx.ports.broadcasts.get(id).await?;
    let state = ctx
        .ports
        .broadcast_states
        .user_states(user_id)
        .await?
        .into_iter()
        .find(|s| s.broadcast_id == id);
    // The filter the broadcast was stored with, else the segment's as it is now.
    let filter = stored.as_ref().map(|b| b.filter.clone()).or(segment_filter);
    let matches_now = filter.is_none_or(|f| f.matches(attributes, now));
    let live = stored.as_ref().is_some_and(|b| b.is_live_at(now));
    let dismissed_at = state.as_ref().and_then(|s| s.dismissed_at);
    let reason = if stored.is_none() {
        "the broadcast is not stored yet".to_owned()
    } else if !live {
        "the broadcast is not shown now (not started, expired or cancelled)".to_owned()
    } else if !matches_now {
        "its segment does not match the user's attributes now".to_owned()
    } else if dismissed_at.is_some() {
        "dismissed by the user".to_owned()
    } else {
        "shown in the user's inbox".to_owned()
    };
    Ok(InboxVerdict {
        id: id.to_string(),
        shown: live && matches_now && dismissed_at.is_none(),
        read_at: state.as_ref().and_then(|s| s.read_at),
        dismissed_at,
        matches_now: Some(matches_now),
        reason,
    })
}
