//! `POST /v1/campaigns?dry_run=true`: what a campaign would do, answered without writing or
//! sending anything. The request is checked and sized exactly as a real one
//! ([`crate::campaigns`]); then the fan-out's own per-user decisions (channel switches, quiet
//! hours, addresses, devices, webhook subscriptions) are made for the audience, or for its
//! first [`SAMPLE`] users when it is larger, scaled up and marked as an estimate.

use crate::campaigns::{validate_and_size, CampaignInput};
use chrono::{DateTime, Utc};
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::strategy;
use herald_core::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Users whose decisions are made one by one; a larger audience is judged on its first this
/// many (by id) and scaled.
pub const SAMPLE: u32 = 1_000;

/// What one outbound channel would do.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelForecast {
    /// Recipients it would reach (allowed by their switches, with an address or device).
    pub recipients: u64,
    /// Sends: one per device for push, per subscription for webhooks, per recipient else.
    pub sends: u64,
    /// Recipients whose switches turn the channel off.
    pub opted_out: u64,
    /// Recipients with nothing to send to (no email, phone or device).
    pub no_address: u64,
    /// Recipients in quiet hours now: sent when their window ends.
    pub deferred_quiet_hours: u64,
    /// Push with `push_when: offline`: recipients with a live inbox socket now, whose push
    /// would be held back (not sent, or only if still unread after `online_push_delay_s`).
    pub online_now: u64,
}

/// Sends a provider would take, and how long at its configured rate.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ProviderUse {
    pub sends: u64,
    /// `push.<provider>.rate_per_s`; `null` when unlimited.
    pub rate_per_s: Option<u32>,
    /// `sends / rate_per_s`; `null` when unlimited. (`fcm` counts web pushes too: they share
    /// its lane and rate.)
    pub secs_at_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DryRun {
    pub dry_run: bool,
    pub strategy: Strategy,
    pub audience_size: u64,
    /// Whether the figures below are scaled from a sample.
    pub estimate: bool,
    pub sampled_users: u64,
    /// In-app rows the fan-out would write (a broadcast writes none: it is stored once).
    pub notifications_written: u64,
    pub broadcast: bool,
    /// Users every requested channel is switched off for.
    pub skipped_opted_out: u64,
    pub channels: BTreeMap<Channel, ChannelForecast>,
    pub providers: BTreeMap<&'static str, ProviderUse>,
    /// The fan-out's pace for this strategy and size (`null`: not paced).
    pub pace_users_per_s: Option<u32>,
    /// `audience_size / pace`, the time the fan-out alone takes at that pace (`null` when not
    /// paced: as fast as the stores take it).
    pub estimated_fanout_secs: Option<f64>,
}

/// The first users of the audience (at most [`SAMPLE`]), as the fan-out would see them.
async fn sample(ctx: &Context, audience: &Audience, now: DateTime<Utc>) -> Result<Vec<User>> {
    let directory = &ctx.ports.directory;
    let named = |ids: &[String]| {
        let ids: Vec<String> = ids.iter().take(SAMPLE as usize).cloned().collect();
        async move {
            let found: HashMap<String, User> = directory
                .get_users(&ids)
                .await?
                .into_iter()
                .map(|u| (u.id.clone(), u))
                .collect();
            // Users named by id need not be in the directory: they get what needs no address.
            Ok::<_, herald_core::Error>(
                ids.into_iter()
                    .map(|id| {
                        found.get(&id).cloned().unwrap_or_else(|| User {
                            id,
                            email: None,
                            phone: None,
                            attributes: Default::default(),
                            created_at: now,
                            updated_at: now,
                        })
                    })
                    .collect(),
            )
        }
    };
    match audience {
        Audience::User(id) => named(std::slice::from_ref(id)).await,
        Audience::Users(ids) => named(ids).await,
        Audience::Segment(name) => {
            let filter = directory
                .get_segment(name)
                .await?
                .map(|s| s.filter)
                .unwrap_or_default();
            directory.page_users(&filter, None, SAMPLE, now).await
        }
        Audience::All(_) => {
            directory
                .page_users(&Filter::match_all(), None, SAMPLE, now)
                .await
        }
    }
}

/// Answers what `input` would do; changes nothing.
pub async fn dry_run(ctx: &Context, mut input: CampaignInput) -> Result<DryRun> {
    let now = ctx.clock.now();
    let size = validate_and_size(ctx, &mut input, now).await?;
    let strategy = strategy::choose(size, &input.audience, input.strategy, &ctx.config.strategy);
    let broadcast = strategy == Strategy::Broadcast;
    let users = sample(ctx, &input.audience, now).await?;
    let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
    let prefs = ctx.ports.directory.get_preferences(&ids).await?;
    let mut devices: HashMap<String, Vec<Platform>> = HashMap::new();
    if input.channels.contains(&Channel::Push) && !ids.is_empty() {
        for d in ctx.ports.directory.list_devices(&ids).await? {
            devices.entry(d.user_id).or_default().push(d.platform);
        }
    }
    // Presence as it is now (the fan-out looks again when it gets to each batch).
    let online = if input.push_when == PushWhen::Offline && !ids.is_empty() {
        ctx.ports.live.online(&ids).await.unwrap_or_default()
    } else {
        Default::default()
    };
    let category = input.category.as_deref();
    let hooks = if input.channels.contains(&Channel::Webhook) {
        let all = ctx.ports.deliveries.all_webhooks().await?;
        all.iter().filter(|h| h.wants(category)).count() as u64
    } else {
        0
    };

    let mut channels: BTreeMap<Channel, ChannelForecast> = input
        .channels
        .iter()
        .map(|c| (*c, ChannelForecast::default()))
        .collect();
    let mut providers: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut written, mut skipped) = (0u64, 0u64);
    let default_prefs = Preferences::default();
    let fanout_at = input.starts_at.map_or(now, |s| s.max(now));
    for user in &users {
        let p = prefs.get(&user.id).unwrap_or(&default_prefs);
        let allowed: Vec<Channel> = input
            .channels
            .iter()
            .copied()
            .filter(|c| !(broadcast && *c == Channel::InApp))
            .filter(|c| p.allows(*c, category))
            .collect();
        // A broadcast's in-app item is the one stored broadcast: no one is opted out of it.
        let stored_once = |c: Channel| broadcast && c == Channel::InApp;
        for c in &input.channels {
            if !(allowed.contains(c) || stored_once(*c)) {
                channels.entry(*c).or_default().opted_out += 1;
            }
        }
        if allowed.is_empty() {
            skipped += u64::from(!(broadcast && input.channels == [Channel::InApp]));
            continue;
        }
        // Judged when the fan-out would run: at the start, or now.
        let quiet = !input.priority.bypasses_quiet_hours()
            && p.quiet_hours
                .and_then(|q| q.ends_after(fanout_at, user.timezone().unwrap_or(chrono_tz::UTC)))
                .is_some();
        for c in allowed {
            let f = channels.entry(c).or_default();
            let sends = match c {
                Channel::InApp => {
                    written += 1;
                    1
                }
                Channel::Push => {
                    let mine = devices.get(&user.id).map(Vec::as_slice).unwrap_or(&[]);
                    for platform in mine {
                        // Web pushes go through FCM, on its lane and rate.
                        let provider = match platform {
                            Platform::Apns => "apns",
                            Platform::Fcm | Platform::Web => "fcm",
                        };
                        *providers.entry(provider).or_default() += 1;
                    }
                    mine.len() as u64
                }
                Channel::Email => {
                    let n = u64::from(user.email.is_some());
                    *providers.entry("email").or_default() += n;
                    n
                }
                Channel::Sms => {
                    let n = u64::from(user.phone.is_some());
                    *providers.entry("sms").or_default() += n;
                    n
                }
                Channel::Webhook => {
                    *providers.entry("webhook").or_default() += hooks;
                    hooks
                }
            };
            if sends == 0 {
                f.no_address += 1;
                continue;
            }
            f.recipients += 1;
            f.sends += sends;
            if quiet && matches!(c, Channel::Push | Channel::Email | Channel::Sms) {
                f.deferred_quiet_hours += 1;
            }
            if c == Channel::Push && online.contains(&user.id) {
                f.online_now += 1;
            }
        }
    }

    // Scaled from the sample to the audience.
    let sampled = users.len() as u64;
    let estimate = sampled < size;
    let scale = |n: u64| -> u64 {
        if sampled == 0 || !estimate {
            n
        } else {
            ((n as f64) * (size as f64) / (sampled as f64)).round() as u64
        }
    };
    for f in channels.values_mut() {
        for v in [
            &mut f.recipients,
            &mut f.sends,
            &mut f.opted_out,
            &mut f.no_address,
            &mut f.deferred_quiet_hours,
            &mut f.online_now,
        ] {
            *v = scale(*v);
        }
    }
    let push = &ctx.config.push;
    let rate = |provider: &str| -> u32 {
        match provider {
            "fcm" => push.fcm.limits.rate_per_s,
            "apns" => push.apns.limits.rate_per_s,
            "email" => push.email.limits.rate_per_s,
            "sms" => push.sms.limits.rate_per_s,
            _ => push.webhook.limits.rate_per_s,
        }
    };
    let providers = providers
        .into_iter()
        .map(|(name, n)| {
            let sends = scale(n);
            let rate = Some(rate(name)).filter(|r| *r > 0);
            (
                name,
                ProviderUse {
                    sends,
                    rate_per_s: rate,
                    secs_at_rate: rate.map(|r| sends as f64 / f64::from(r)),
                },
            )
        })
        .collect();
    // A broadcast with nothing but its in-app item is stored once: no batches to pace.
    let pace = strategy::pace(strategy, size, &ctx.config.strategy, &ctx.config.throttle)
        .filter(|_| !(broadcast && input.channels == [Channel::InApp]));
    Ok(DryRun {
        dry_run: true,
        strategy,
        audience_size: size,
        estimate,
        sampled_users: sampled,
        notifications_written: scale(written),
        broadcast,
        skipped_opted_out: scale(skipped),
        channels,
        providers,
        pace_users_per_s: pace,
        estimated_fanout_secs: pace.map(|p| size as f64 / f64::from(p)),
    })
}
