//! Delivery analytics and the health status: what `/v1/analytics/summary`,
//! `/v1/analytics/channels/{channel}` and `/v1/health/status` answer, computed from the
//! delivery log (`DeliveryStore::delivery_rollups`), the campaign store's figures for the
//! window, and the consumer groups' lag on the bus.
//!
//! The health status judges each outbound channel on its consumer group's lag, its failure
//! rate, dead letters and latency over the last `analytics.health_window_minutes`, and every
//! other consumer group on its lag; each finding is an alert with a plain-language
//! recommendation. Lag trends come from the samples this process took on earlier calls
//! ([`LagHistory`]).

use chrono::{DateTime, Duration, DurationRound, Utc};
use herald_core::analytics::{CampaignStats, MinuteRollup};
use herald_core::config::AnalyticsConfig;
use herald_core::model::Channel;
use herald_core::{topics, Context, Error, Result};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Failures listed in a channel's answer.
const RECENT_FAILURES: u32 = 20;

/// The window of an analytics question: the last `hours`, up to the delivery log's retention.
pub fn window(ctx: &Context, hours: Option<i64>) -> Result<(i64, DateTime<Utc>, DateTime<Utc>)> {
    let max = i64::from(ctx.config.analytics.retention_days) * 24;
    let hours = hours.unwrap_or(24);
    if !(1..=max).contains(&hours) {
        return Err(Error::invalid(format!(
            "hours must be between 1 and {max} (the delivery log's retention), got {hours}"
        )));
    }
    let to = ctx.clock.now();
    Ok((hours, to - Duration::hours(hours), to))
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Window {
    pub hours: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Delivery figures of a set of rollups.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DeliveryFigures {
    /// Delivery reports (channel messages handled).
    pub reports: u64,
    pub sent: u64,
    pub failed: u64,
    pub failed_by_reason: FailedByReason,
    pub retried: u64,
    /// `sent / (sent + failed)`; `null` when nothing was sent or failed.
    pub delivery_rate: Option<f64>,
    /// `failed / (sent + failed)`.
    pub failure_rate: Option<f64>,
    /// Time from campaign start to provider acceptance, seconds.
    pub latency: Latency,
    /// Mean wall time of one channel message's sends (provider calls, with the lanes' rate
    /// pacing and concurrency waits), seconds.
    pub provider_mean_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FailedByReason {
    /// The provider called the token or address invalid (it was removed).
    pub invalid_token: u64,
    /// Attempts exhausted or provider not configured: on the dead-letter list.
    pub dead_lettered: u64,
    /// Nothing to send to (no device, no address) or expired before delivery.
    pub unreachable: u64,
    /// Refused by the provider.
    pub rejected: u64,
}

/// Latency percentiles are the upper bounds of the histogram buckets they fall in.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Latency {
    pub avg_secs: Option<f64>,
    pub p50_secs: Option<f64>,
    pub p95_secs: Option<f64>,
    pub p99_secs: Option<f64>,
}

fn total(rollups: &[MinuteRollup], channel: Channel) -> MinuteRollup {
    let mut sum = MinuteRollup::empty(DateTime::<Utc>::UNIX_EPOCH, channel);
    for r in rollups {
        sum.add(r);
    }
    sum
}

fn finite(v: Option<f64>) -> Option<f64> {
    // Above the last bucket: said as the last bound is not honest, so `null` (JSON has no
    // infinity); the bucket bounds reach a day.
    v.filter(|v| v.is_finite())
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl DeliveryFigures {
    fn of(r: &MinuteRollup) -> Self {
        let c = &r.counts;
        let done = c.sent + c.failed;
        DeliveryFigures {
            reports: c.reports,
            sent: c.sent,
            failed: c.failed,
            failed_by_reason: FailedByReason {
                invalid_token: c.invalid_tokens,
                dead_lettered: c.dead_lettered,
                unreachable: c.unreachable,
                rejected: c.rejected(),
            },
            retried: c.retried,
            delivery_rate: ratio(c.sent, done),
            failure_rate: ratio(c.failed, done),
            latency: Latency {
                avg_secs: r.latency_mean(),
                p50_secs: finite(r.latency_quantile(0.50)),
                p95_secs: finite(r.latency_quantile(0.95)),
                p99_secs: finite(r.latency_quantile(0.99)),
            },
            provider_mean_secs: c.provider_mean_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StrategyFigures {
    pub campaigns: u64,
    pub audience: u64,
    pub notifications_written: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CampaignFigures {
    /// Campaigns created in the window (an event that matched a rule is one).
    pub created: u64,
    pub by_strategy: BTreeMap<&'static str, StrategyFigures>,
    /// Sum and mean of their audience sizes.
    pub audience_total: u64,
    pub audience_avg: Option<f64>,
    /// In-app notifications written for them (broadcasts write none per user).
    pub notifications_written: u64,
    /// Recipients skipped because they opted out, and sends held for quiet hours.
    pub skipped_opted_out: u64,
    pub deferred_quiet_hours: u64,
}

fn campaign_figures(stats: &[CampaignStats]) -> CampaignFigures {
    let created = stats.iter().map(|s| s.campaigns).sum();
    let audience_total = stats.iter().map(|s| s.audience).sum();
    CampaignFigures {
        created,
        by_strategy: stats
            .iter()
            .map(|s| {
                (
                    s.strategy.as_str(),
                    StrategyFigures {
                        campaigns: s.campaigns,
                        audience: s.audience,
                        notifications_written: s.notifications_written,
                    },
                )
            })
            .collect(),
        audience_total,
        audience_avg: ratio(audience_total, created),
        notifications_written: stats.iter().map(|s| s.notifications_written).sum(),
        skipped_opted_out: stats.iter().map(|s| s.skipped_opted_out).sum(),
        deferred_quiet_hours: stats.iter().map(|s| s.deferred_quiet_hours).sum(),
    }
}

/// `GET /v1/analytics/summary`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    pub window: Window,
    pub campaigns: CampaignFigures,
    /// Every channel together.
    pub deliveries: DeliveryFigures,
    /// Per channel, the channels with any report in the window.
    pub channels: BTreeMap<&'static str, DeliveryFigures>,
}

pub async fn summary(ctx: &Context, hours: Option<i64>) -> Result<Summary> {
    let (hours, from, to) = window(ctx, hours)?;
    let (rollups, stats) = tokio::try_join!(
        ctx.ports.deliveries.delivery_rollups(from, None),
        ctx.ports.campaigns.campaign_stats(from),
    )?;
    let mut per_channel: BTreeMap<Channel, Vec<MinuteRollup>> = BTreeMap::new();
    for r in rollups
        .iter()
        .filter(|r| r.minute + Duration::minutes(1) > from)
    {
        per_channel.entry(r.channel).or_default().push(r.clone());
    }
    let all: Vec<MinuteRollup> = per_channel.values().flatten().cloned().collect();
    Ok(Summary {
        window: Window { hours, from, to },
        campaigns: campaign_figures(&stats),
        deliveries: DeliveryFigures::of(&total(&all, Channel::Push)),
        channels: per_channel
            .iter()
            .map(|(c, rs)| (c.as_str(), DeliveryFigures::of(&total(rs, *c))))
            .collect(),
    })
}

/// One hour of a channel's series.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct HourFigures {
    pub hour: DateTime<Utc>,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub delivery_rate: Option<f64>,
    pub latency_p95_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RecentFailure {
    pub at: DateTime<Utc>,
    pub campaign_id: String,
    pub user_id: String,
    pub target: String,
    pub reason: String,
}

/// `GET /v1/analytics/channels/{channel}`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelReport {
    pub channel: Channel,
    pub window: Window,
    #[serde(flatten)]
    pub figures: DeliveryFigures,
    /// Newest first, at most 20 (each report keeps its first 10).
    pub recent_failures: Vec<RecentFailure>,
    /// Every hour of the window, oldest first (hours with nothing are zeros).
    pub series: Vec<HourFigures>,
}

pub async fn channel(ctx: &Context, channel: Channel, hours: Option<i64>) -> Result<ChannelReport> {
    let (hours, from, to) = window(ctx, hours)?;
    let (rollups, failures) = tokio::try_join!(
        ctx.ports.deliveries.delivery_rollups(from, Some(channel)),
        ctx.ports
            .deliveries
            .recent_failures(channel, from, RECENT_FAILURES),
    )?;
    let rollups: Vec<MinuteRollup> = rollups
        .into_iter()
        .filter(|r| r.minute + Duration::minutes(1) > from)
        .collect();
    let hour = |t: DateTime<Utc>| t.duration_trunc(Duration::hours(1)).unwrap_or(t);
    let mut by_hour: BTreeMap<DateTime<Utc>, MinuteRollup> = BTreeMap::new();
    let mut h = hour(from);
    while h < to {
        by_hour.insert(h, MinuteRollup::empty(h, channel));
        h += Duration::hours(1);
    }
    for r in &rollups {
        by_hour
            .entry(hour(r.minute))
            .or_insert_with(|| MinuteRollup::empty(hour(r.minute), channel))
            .add(r);
    }
    Ok(ChannelReport {
        channel,
        window: Window { hours, from, to },
        figures: DeliveryFigures::of(&total(&rollups, channel)),
        recent_failures: failures
            .into_iter()
            .map(|f| RecentFailure {
                at: f.at,
                campaign_id: f.campaign_id,
                user_id: f.user_id,
                target: f.target,
                reason: f.reason,
            })
            .collect(),
        series: by_hour
            .into_iter()
            .map(|(hour, r)| HourFigures {
                hour,
                sent: r.counts.sent,
                failed: r.counts.failed,
                retried: r.counts.retried,
                dead_lettered: r.counts.dead_lettered,
                delivery_rate: ratio(r.counts.sent, r.counts.sent + r.counts.failed),
                latency_p95_secs: finite(r.latency_quantile(0.95)),
            })
            .collect(),
    })
}

/// How healthy something is; ordered, so the worst of several is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Degraded,
    Failing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Rising,
    Falling,
    Steady,
    /// No earlier sample in this process yet.
    Unknown,
}

impl Trend {
    fn words(self) -> &'static str {
        match self {
            Trend::Rising => " and rising",
            Trend::Falling => " and falling",
            Trend::Steady => ", not moving",
            Trend::Unknown => "",
        }
    }
}

/// A consumer group's lag, as the health status shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct GroupHealth {
    pub topic: String,
    pub group: &'static str,
    pub lag: u64,
    pub trend: Trend,
    /// Messages per second the lag changed by since the sample it is compared with
    /// (negative: draining).
    pub lag_change_per_s: Option<f64>,
    pub status: Status,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChannelHealth {
    pub status: Status,
    /// The lag of the channel's gateway consumer group.
    pub lag: u64,
    pub lag_trend: Trend,
    /// Over the window.
    pub sent: u64,
    pub failed: u64,
    /// Failed sends among those that reached a provider (recipients with no device or
    /// address left out).
    pub failure_rate: Option<f64>,
    pub dead_lettered: u64,
    pub latency_p95_secs: Option<f64>,
    /// Mean wall time of one channel message's provider calls over the window, seconds.
    pub provider_mean_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Alert {
    pub severity: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub message: String,
    pub recommendation: String,
}

/// `GET /v1/health/status`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct HealthStatus {
    pub status: Status,
    pub checked_at: DateTime<Utc>,
    pub window_minutes: u32,
    pub channels: BTreeMap<&'static str, ChannelHealth>,
    pub consumer_groups: Vec<GroupHealth>,
    pub alerts: Vec<Alert>,
    /// The alerts' recommendations, worst first (what to do, in plain words).
    pub recommendations: Vec<String>,
}

/// Earlier lag samples this process took, to tell a rising lag from a draining one. Kept for
/// ten minutes; one sample per call, at most one per two seconds.
#[derive(Default)]
pub struct LagHistory {
    samples: Mutex<VecDeque<(DateTime<Utc>, Lags)>>,
}

/// Lag per (topic, consumer group).
type Lags = HashMap<(String, &'static str), u64>;

/// How far back a trend looks at most, and the youngest sample it compares with.
const HISTORY_KEPT: Duration = Duration::minutes(10);
const TREND_AFTER: Duration = Duration::seconds(2);

/// A group's lag against earlier samples.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Comparison {
    /// Against the newest sample at least [`TREND_AFTER`] old.
    trend: Trend,
    /// Messages per second the lag changed by since that sample.
    change: Option<f64>,
    /// Whether the lag is above the oldest sample kept (ten minutes at most).
    grown: bool,
}

impl LagHistory {
    fn compare(
        &self,
        now: DateTime<Utc>,
        lags: &Lags,
    ) -> HashMap<(String, &'static str), Comparison> {
        let mut samples = self.samples.lock();
        while samples
            .front()
            .is_some_and(|(t, _)| now - *t > HISTORY_KEPT)
        {
            samples.pop_front();
        }
        let earlier = samples.iter().rev().find(|(t, _)| now - *t >= TREND_AFTER);
        let oldest = samples.front();
        let out = lags
            .iter()
            .map(|(k, lag)| {
                let seen = earlier.and_then(|(t, m)| m.get(k).map(|l| (*t, *l)));
                let (trend, change) = match seen {
                    None => (Trend::Unknown, None),
                    Some((t, before)) => {
                        let trend = match lag.cmp(&before) {
                            std::cmp::Ordering::Greater => Trend::Rising,
                            std::cmp::Ordering::Less => Trend::Falling,
                            std::cmp::Ordering::Equal => Trend::Steady,
                        };
                        let secs = (now - t).num_milliseconds() as f64 / 1000.0;
                        (trend, Some((*lag as f64 - before as f64) / secs))
                    }
                };
                let grown = oldest
                    .and_then(|(_, m)| m.get(k))
                    .is_some_and(|first| lag > first);
                (
                    k.clone(),
                    Comparison {
                        trend,
                        change,
                        grown,
                    },
                )
            })
            .collect();
        if samples.back().is_none_or(|(t, _)| now - *t >= TREND_AFTER) {
            samples.push_back((now, lags.clone()));
        }
        out
    }
}

/// The config keys that speed up a channel's sends, for the recommendations.
fn provider_keys(channel: Channel) -> &'static str {
    match channel {
        Channel::Push => "push.fcm.concurrency / push.apns.concurrency",
        Channel::Email => "push.email.concurrency",
        Channel::Sms => "push.sms.concurrency",
        Channel::Webhook => "push.webhook.concurrency",
        Channel::InApp => "fanout.workers",
    }
}

fn lag_status(cfg: &AnalyticsConfig, lag: u64) -> Status {
    if lag >= cfg.lag_failing {
        Status::Failing
    } else if lag >= cfg.lag_degraded {
        Status::Degraded
    } else {
        Status::Ok
    }
}

/// What to do about a consumer group other than a channel's that is behind.
fn group_advice(topic: &str, group: &str) -> String {
    if let Some(original) = topic.strip_prefix("deadletter.") {
        return format!(
            "messages of `{original}` failed every attempt and were set aside on `{topic}`: the \
             log line \"message dead-lettered\" says why; once the cause is fixed, have the \
             group receive them again with `herald bus replay --topic {original} --group <group> \
             --from <time before the failures>`"
        );
    }
    match group {
        topics::DISPATCHERS | topics::BATCH_WORKERS => {
            "the fan-out is behind: add a fanout node or raise fanout.workers".to_owned()
        }
        topics::RESULT_COUNTERS => {
            "delivery reports are counted late (campaign counters and analytics lag): add a push \
             node or check the campaign store's and delivery store's latency"
                .to_owned()
        }
        _ => format!("consumer group `{group}` is behind: add a node of the role that runs it"),
    }
}

pub async fn health(ctx: &Context, history: &LagHistory) -> Result<HealthStatus> {
    let cfg = &ctx.config.analytics;
    let now = ctx.clock.now();
    // The current minute and the whole minutes before it: `health_window_minutes` in all.
    let since = herald_core::analytics::minute_of(now)
        - Duration::minutes(i64::from(cfg.health_window_minutes.max(1) - 1));
    let rollups = ctx.ports.deliveries.delivery_rollups(since, None).await?;
    let mut lags = HashMap::new();
    let mut unreadable = Vec::new();
    for (topic, group) in topics::subscriptions() {
        match ctx.ports.bus.lag(&topic, group).await {
            Ok(lag) => {
                lags.insert((topic, group), lag);
            }
            // A health answer must not fail with the bus: the group is reported failing.
            Err(e) => unreadable.push((topic, group, e.to_string())),
        }
    }
    let trends = history.compare(now, &lags);
    let mut alerts = Vec::new();
    let mut groups = Vec::new();
    let mut channel_lag: HashMap<Channel, (u64, Trend)> = HashMap::new();
    for (topic, group, error) in unreadable {
        alerts.push(Alert {
            severity: Status::Failing,
            channel: None,
            group: Some(group.to_owned()),
            message: format!("the lag of `{group}` on `{topic}` cannot be read: {error}"),
            recommendation: "the bus does not answer: check the broker (`herald bus lag` \
                             and the /readyz of each process name what fails)"
                .to_owned(),
        });
    }
    for (topic, group) in topics::subscriptions() {
        let Some(&lag) = lags.get(&(topic.clone(), group)) else {
            continue;
        };
        let Comparison {
            trend,
            change,
            grown,
        } = trends[&(topic.clone(), group)];
        let channel = topics::OUTBOUND
            .into_iter()
            .find(|c| topics::channel_topic(*c) == topic && group == topics::GATEWAY);
        let status = if topic.starts_with("deadletter.") {
            // Nothing consumes the dead-letter topics: their lag is what was ever set aside.
            // More of it within the samples kept (10 minutes) needs a person, whatever the
            // thresholds.
            if grown {
                Status::Degraded
            } else {
                Status::Ok
            }
        } else {
            lag_status(cfg, lag)
        };
        if let Some(c) = channel {
            channel_lag.insert(c, (lag, trend));
        }
        if status > Status::Ok {
            let (message, recommendation) = match channel {
                Some(c) => (
                    format!("{c} lag {lag}{}", trend.words()),
                    format!(
                        "{c} lag {lag}{}: raise {} or push.consumers_per_channel, or add a push \
                         node; if no push node is running, start one",
                        trend.words(),
                        provider_keys(c)
                    ),
                ),
                None => (
                    format!(
                        "consumer group `{group}` on `{topic}`: lag {lag}{}",
                        trend.words()
                    ),
                    group_advice(&topic, group),
                ),
            };
            alerts.push(Alert {
                severity: status,
                channel,
                group: Some(group.to_owned()),
                message,
                recommendation,
            });
        }
        groups.push(GroupHealth {
            topic,
            group,
            lag,
            trend,
            lag_change_per_s: change,
            status,
        });
    }

    let mut channels = BTreeMap::new();
    for c in topics::OUTBOUND {
        let rs: Vec<MinuteRollup> = rollups.iter().filter(|r| r.channel == c).cloned().collect();
        let sum = total(&rs, c);
        let counts = sum.counts;
        let (lag, lag_trend) = channel_lag.get(&c).copied().unwrap_or((0, Trend::Unknown));
        let mut status = lag_status(cfg, lag);
        // Judged on what reached a provider: recipients with nothing to send to are the
        // audience's doing, not the channel's.
        let done = counts.attempted();
        let failure_rate = ratio(counts.failed.saturating_sub(counts.unreachable), done);
        let minutes = cfg.health_window_minutes;
        if let Some(rate) = failure_rate.filter(|_| done >= cfg.min_sends) {
            let severity = if rate >= cfg.failure_rate_failing {
                Status::Failing
            } else if rate >= cfg.failure_rate_degraded {
                Status::Degraded
            } else {
                Status::Ok
            };
            if severity > Status::Ok {
                status = status.max(severity);
                alerts.push(Alert {
                    severity,
                    channel: Some(c),
                    group: None,
                    message: format!(
                        "{c} failed {:.1} % of {done} sends in the last {minutes} min",
                        rate * 100.0
                    ),
                    recommendation: format!(
                        "{c} sends are failing: read the reasons at GET /v1/analytics/channels/{c}; \
                         check the provider's credentials, quota and status page"
                    ),
                });
            }
        }
        if counts.dead_lettered > 0 {
            status = status.max(Status::Degraded);
            alerts.push(Alert {
                severity: Status::Degraded,
                channel: Some(c),
                group: None,
                message: format!(
                    "{} {c} sends dead-lettered in the last {minutes} min",
                    counts.dead_lettered
                ),
                recommendation: format!(
                    "list them at GET /v1/dead-letters?channel={c} and replay them once the \
                     cause (provider down or not configured) is fixed"
                ),
            });
        }
        let p95 = sum.latency_quantile(0.95);
        if let Some(p95) = p95.filter(|p| *p > cfg.latency_p95_degraded_secs) {
            status = status.max(Status::Degraded);
            let shown = if p95.is_finite() {
                format!("{p95} s")
            } else {
                "over a day".to_owned()
            };
            alerts.push(Alert {
                severity: Status::Degraded,
                channel: Some(c),
                group: None,
                message: format!(
                    "{c} p95 time from campaign start to provider acceptance is {shown}"
                ),
                recommendation: format!(
                    "{c} sends wait long: raise {} or the provider's rate_per_s if the provider \
                     allows, or add a push node",
                    provider_keys(c)
                ),
            });
        }
        let provider = counts.provider_mean_secs();
        if let Some(secs) = provider.filter(|s| *s > cfg.provider_degraded_secs) {
            status = status.max(Status::Degraded);
            alerts.push(Alert {
                severity: Status::Degraded,
                channel: Some(c),
                group: None,
                message: format!(
                    "{c} sends take {secs:.2} s per message on average over the last {minutes} min"
                ),
                recommendation: format!(
                    "{c} sends are slow: if the provider's rate_per_s paces them, that is the \
                     configured quota; otherwise the provider answers slowly (check its status \
                     page; sends that time out are retried), so raise {} only if it allows more \
                     at once",
                    provider_keys(c)
                ),
            });
        }
        channels.insert(
            c.as_str(),
            ChannelHealth {
                status,
                lag,
                lag_trend,
                sent: counts.sent,
                failed: counts.failed,
                failure_rate,
                dead_lettered: counts.dead_lettered,
                latency_p95_secs: finite(p95),
                provider_mean_secs: provider,
            },
        );
    }
    alerts.sort_by_key(|a| std::cmp::Reverse(a.severity));
    let status = alerts
        .iter()
        .map(|a| a.severity)
        .max()
        .unwrap_or(Status::Ok);
    let mut recommendations: Vec<String> = Vec::new();
    for a in &alerts {
        if !recommendations.contains(&a.recommendation) {
            recommendations.push(a.recommendation.clone());
        }
    }
    Ok(HealthStatus {
        status,
        checked_at: now,
        window_minutes: cfg.health_window_minutes,
        channels,
        consumer_groups: groups,
        alerts,
        recommendations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_trend_compares_with_the_newest_sample_at_least_two_seconds_old() {
        let h = LagHistory::default();
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000);
        let key = ("channel.push".to_owned(), topics::GATEWAY);
        let at = |secs: i64, lag: u64| {
            let lags = HashMap::from([(key.clone(), lag)]);
            let c = h.compare(t0 + Duration::seconds(secs), &lags)[&key];
            (c.trend, c.change)
        };
        assert_eq!(at(0, 4), (Trend::Unknown, None), "nothing to compare with");
        assert_eq!(
            at(1, 6),
            (Trend::Unknown, None),
            "the first sample is 1 s old"
        );
        assert_eq!(at(3, 10), (Trend::Rising, Some(2.0)), "4 → 10 in 3 s");
        assert_eq!(at(4, 10).0, Trend::Rising, "still against the 0 s sample");
        assert_eq!(
            at(6, 10),
            (Trend::Steady, Some(0.0)),
            "against the 3 s sample"
        );
        assert_eq!(
            at(8, 2),
            (Trend::Falling, Some(-4.0)),
            "against the 6 s sample"
        );
        // Samples older than ten minutes are forgotten.
        assert_eq!(at(8 + 601, 2), (Trend::Unknown, None));
    }

    #[test]
    fn growth_is_judged_against_the_oldest_sample_kept() {
        let h = LagHistory::default();
        let t0 = DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000);
        let key = ("deadletter.channel.push".to_owned(), topics::DEAD_LETTERS);
        let grown = |secs: i64, lag: u64| {
            let lags = HashMap::from([(key.clone(), lag)]);
            h.compare(t0 + Duration::seconds(secs), &lags)[&key].grown
        };
        assert!(!grown(0, 3), "no earlier sample");
        assert!(grown(60, 4), "one more set aside");
        assert!(grown(300, 4), "still more than ten minutes' first sample");
        assert!(
            !grown(601, 4),
            "the 0 s sample is forgotten: 4 since the 60 s one"
        );
    }

    #[test]
    fn the_worst_status_wins() {
        assert!(Status::Failing > Status::Degraded && Status::Degraded > Status::Ok);
        assert_eq!(
            [Status::Ok, Status::Failing, Status::Degraded]
                .into_iter()
                .max(),
            Some(Status::Failing)
        );
    }
}
