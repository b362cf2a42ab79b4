//! The channel consumers: one loop per `push.consumers_per_channel` on each channel topic
//! (`channel.push`, `channel.email`, `channel.sms`, `channel.webhook`), in the `push-gateway`
//! consumer group.
//!
//! For each channel message: one that arrives well before its `deliver_after` (quiet hours,
//! retry backoff) goes back to the delay store (messages normally wait there before they are
//! published, so this is for clocks that disagree); claim its delivery key: skip it if the key
//! was processed already (a redelivery after a crash), and put it back in the delay store
//! until the claim ends if another consumer holds the key (two copies of one message in
//! flight at once, as a fan-out batch redone after a crash publishes); expand it into one send per device token, address or webhook
//! subscriber; send through the providers' lanes; then act on each outcome (delete dead
//! tokens, republish the transient failures as the next attempt, dead-letter what is out of
//! attempts), publish the delivery report, mark the key processed and ack (a handling that
//! fails before the sends gives its claim back, so the retry need not wait out the lease;
//! after the sends, an engine outage is waited out, the claim kept, rather than failing the
//! message into a redelivery that would send again). Every step can be
//! repeated after a crash without losing a send; only a crash between sending and marking
//! repeats sends (once the dead holder's claim runs out), which is the at-least-once promise
//! providers and receivers are built for. Copies that are merely concurrent never both send.
//! A stop is not a crash: the lanes hand nothing more to the providers once the gateway is
//! stopping, so a message under way finishes within the shutdown grace, its unsent part as
//! its next attempt (see [`crate::lanes`]).

use crate::backoff::Backoff;
use crate::lanes::Lane;
use crate::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use herald_core::config::PushConfig;
use herald_core::consume::{SharedConsumer, MAX_DELIVERIES};
use herald_core::delivery::{
    DeadLetter, DeliveryReport, RecipientOutcome, RecipientStatus, SendFailure, Webhook,
};
use herald_core::model::{Channel, Device, InboxKey, OutMessage, Platform, User};
use herald_core::ports::{DeliveryClaim, Throttle};
use herald_core::topics::{self, ChannelItem, ChannelMessage, ReadCheck};
use herald_core::worker::{AbortOnDrop, Worker, WorkerState};
use herald_core::{Context, Error, Result};
use herald_usecases::changes::CHANGES_REFRESH;
use herald_usecases::retractions::RetractionCache;
use herald_usecases::revisions::{self, Revision, RevisionCache, REPLACE_PAGE};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a consumer's claim on a channel message's delivery key lasts; renewed every third
/// of it while the sends are in flight, so after a crash this is how long a redelivered copy
/// waits before it is sent.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// A device used this recently is not touched again (saves a write per send).
const TOUCH_AFTER: chrono::Duration = chrono::Duration::hours(24);
/// Webhook subscriptions are re-read this often.
const WEBHOOK_TTL: Duration = Duration::from_secs(2);
/// At most this many per-send failures go into a delivery report.
const REPORTED_FAILURES: usize = 100;
/// Read-state lookups of one unless-read message under way at once.
const READ_CHECKS_IN_FLIGHT: usize = 32;

/// The provider clients the gateway sends through; `None` means not configured (its sends go
/// to the dead-letter queue, to be replayed once it is).
#[derive(Clone, Default)]
pub struct Providers {
    /// Devices of platform `fcm` and `web`.
    pub fcm: Option<Arc<dyn Provider>>,
    pub apns: Option<Arc<dyn Provider>>,
    pub email: Option<Arc<dyn Provider>>,
    pub sms: Option<Arc<dyn Provider>>,
    pub webhook: Option<Arc<dyn Provider>>,
}

impl Providers {
    /// The providers the configuration sets up.
    pub fn from_config(cfg: &PushConfig) -> Result<Self> {
        use crate::providers::*;
        let arc = |p: Arc<dyn Provider>| Some(p);
        Ok(Providers {
            fcm: match cfg.fcm.credentials_file {
                Some(_) => arc(Arc::new(fcm::FcmProvider::new(&cfg.fcm)?)),
                None => None,
            },
            apns: match cfg.apns.key_file {
                Some(_) => arc(Arc::new(apns::ApnsProvider::new(&cfg.apns)?)),
                None => None,
            },
            email: match cfg.email.smtp_url {
                Some(_) => arc(Arc::new(email::EmailProvider::new(&cfg.email)?)),
                None => None,
            },
            sms: match cfg.sms.account_sid {
                Some(_) => arc(Arc::new(sms::SmsProvider::new(&cfg.sms)?)),
                None => None,
            },
            webhook: arc(Arc::new(webhook::WebhookProvider::new(&cfg.webhook)?)),
        })
    }
}

/// One lane per configured provider.
struct Lanes {
    fcm: Option<Lane>,
    apns: Option<Lane>,
    email: Option<Lane>,
    sms: Option<Lane>,
    webhook: Option<Lane>,
}

/// Which lane a send takes: (slot, provider name for "not configured").
fn route(d: &Destination) -> (usize, &'static str) {
    match d {
        Destination::Device {
            platform: Platform::Fcm | Platform::Web,
            ..
        } => (0, "fcm"),
        Destination::Device {
            platform: Platform::Apns,
            ..
        } => (1, "apns"),
        Destination::Email(_) => (2, "email"),
        Destination::Phone(_) => (3, "sms"),
        Destination::Webhook(_) => (4, "webhook"),
    }
}

impl Lanes {
    fn start(
        p: &Providers,
        cfg: &PushConfig,
        throttle: &Arc<dyn Throttle>,
        stopping: &CancellationToken,
    ) -> Lanes {
        let window = Duration::from_millis(cfg.fcm.batch_window_ms);
        let lane = |p: &Option<Arc<dyn Provider>>, size: usize, window: Duration, rate: u32| {
            p.as_ref().map(|p| {
                let throttle = throttle.clone();
                Lane::start(p.clone(), size, window, rate, throttle, stopping.clone())
            })
        };
        Lanes {
            fcm: lane(
                &p.fcm,
                cfg.fcm.batch_size,
                window,
                cfg.fcm.limits.rate_per_s,
            ),
            apns: lane(
                &p.apns,
                cfg.fcm.batch_size,
                window,
                cfg.apns.limits.rate_per_s,
            ),
            email: lane(
                &p.email,
                cfg.email.limits.concurrency,
                Duration::ZERO,
                cfg.email.limits.rate_per_s,
            ),
            sms: lane(
                &p.sms,
                cfg.sms.limits.concurrency,
                Duration::ZERO,
                cfg.sms.limits.rate_per_s,
            ),
            webhook: lane(
                &p.webhook,
                cfg.webhook.limits.concurrency,
                Duration::ZERO,
                cfg.webhook.limits.rate_per_s,
            ),
        }
    }

    fn slot(&self, i: usize) -> Option<&Lane> {
        [&self.fcm, &self.apns, &self.email, &self.sms, &self.webhook][i].as_ref()
    }
}

type Subscribers = Arc<Vec<Arc<Webhook>>>;

/// Webhook subscriptions, re-read every [`WEBHOOK_TTL`].
#[derive(Default)]
struct WebhookCache(Mutex<Option<(Instant, Subscribers)>>);

impl WebhookCache {
    async fn get(&self, ctx: &Context) -> Result<Subscribers> {
        if let Some((at, list)) = &*self.0.lock() {
            if at.elapsed() < WEBHOOK_TTL {
                return Ok(list.clone());
            }
        }
        let all: Vec<Arc<Webhook>> = ctx
            .ports
            .deliveries
            .all_webhooks()
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let list = Arc::new(all);
        *self.0.lock() = Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

/// The push gateway's shared state: the context, the lanes, the retry policy.
pub struct Gateway {
    ctx: Context,
    lanes: Lanes,
    backoff: Backoff,
    max_attempts: u32,
    webhooks: WebhookCache,
    retractions: RetractionCache,
    revisions: RevisionCache,
}

/// How early a channel message may arrive before its `deliver_after` and still be sent at
/// once: the delay publisher and this node read different clocks. One arriving earlier than
/// that (a clock far behind, a message published straight to the bus) goes back to the delay
/// store.
const EARLY_TOLERANCE: chrono::Duration = chrono::Duration::milliseconds(250);

impl Gateway {
    /// Starts the lanes of `providers`; must be called inside a tokio runtime. Once
    /// `stopping` is cancelled, sends not yet with a provider go to their next attempt
    /// instead (see [`crate::lanes`]).
    pub fn new(ctx: Context, providers: &Providers, stopping: &CancellationToken) -> Gateway {
        let cfg = &ctx.config.push;
        Gateway {
            lanes: Lanes::start(providers, cfg, &ctx.ports.throttle, stopping),
            backoff: Backoff {
                base: Duration::from_millis(cfg.backoff_base_ms),
                max: Duration::from_millis(cfg.backoff_max_ms),
            },
            max_attempts: cfg.max_attempts.max(1),
            webhooks: WebhookCache::default(),
            retractions: RetractionCache::new(
                ctx.ports.campaigns.clone(),
                ctx.config.inbox.retention_days,
                CHANGES_REFRESH,
            ),
            revisions: RevisionCache::new(
                ctx.ports.campaigns.clone(),
                ctx.config.inbox.retention_days,
                CHANGES_REFRESH,
            ),
            ctx,
        }
    }

    /// Handles one channel message; when this returns `Ok` the message may be acked.
    async fn handle(&self, channel: Channel, payload: &[u8]) -> Result<()> {
        let msg: ChannelMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                // Nothing can ever make it decodable: drop it loudly rather than loop on it.
                tracing::error!(error = %e, %channel, "undecodable channel message dropped");
                metrics::counter!("herald_push_undecodable_messages_total", "channel" => channel.as_str())
                    .increment(1);
                return Ok(());
            }
        };
        let now = self.ctx.clock.now();
        if let Some(after) = msg.deliver_after.filter(|a| *a > now + EARLY_TOLERANCE) {
            // Too early: kept in the delay store until it is due (under its delivery key, so
            // a redelivery of this message schedules it once).
            return self.defer(&msg, payload, after, now).await;
        }
        let key = msg.delivery_key();
        // One handling of one copy holds the key while it sends. A copy of the same message in
        // another consumer's hands (a fan-out batch redone after a crash published it again)
        // finds the claim and waits, instead of sending beside it.
        let holder = herald_core::ids::new_id().to_string();
        let deliveries = &self.ctx.ports.deliveries;
        match deliveries.claim(&key, &holder, now, CLAIM_LEASE).await? {
            DeliveryClaim::Won => {}
            DeliveryClaim::Processed => {
                metrics::counter!("herald_push_duplicate_messages_total", "channel" => channel.as_str())
                    .increment(1);
                return Ok(());
            }
            DeliveryClaim::Held { until } => {
                // Not dropped: the holder may die before it marks the key processed, and its
                // own copy then waits for this claim to run out like this one. Kept in the
                // delay store until the claim ends (under the key, so any number of copies
                // wait as one), it comes back to find the key processed, or free to send.
                metrics::counter!("herald_push_held_copies_total", "channel" => channel.as_str())
                    .increment(1);
                return self.defer(&msg, payload, until, now).await;
            }
        }
        // Renewed while the sends are in flight, however long they take; ends with this call.
        let keeper = AbortOnDrop::spawn(keep_claim(self.ctx.clone(), key.clone(), holder.clone()));
        let handled = self.send_claimed(&msg, &key).await;
        drop(keeper);
        if let Err(e) = &handled {
            // The message goes back to the bus for another try: let that try (or a copy in
            // another consumer's hands) claim the key now rather than wait out the lease. If
            // this fails too, the claim simply runs out.
            if let Err(release) = deliveries.release(&key, &holder).await {
                tracing::warn!(%key, error = %release, cause = %e, "delivery claim not released");
            }
        }
        handled
    }

    /// The sends of a message whose delivery key this handling holds, their report, and the
    /// key marked processed.
    async fn send_claimed(&self, msg: &ChannelMessage, key: &str) -> Result<()> {
        // A step of a revision's replacement: its page of recipients, rendered.
        let page;
        let msg = match &msg.replaces {
            Some(step) if msg.items.is_empty() => {
                page = self.replacement_page(msg, step).await?;
                &page
            }
            _ => msg,
        };
        let channel = msg.channel;
        let started = Instant::now();
        let report = self.deliver(msg, key.to_owned()).await?;
        let payload = serde_json::to_vec(&report)
            .map_err(|e| Error::internal("delivery report").with_source(e))?;
        let report = [OutMessage {
            key: Some(msg.campaign_id.clone()),
            payload,
        }];
        after_sends("the delivery report", || {
            self.ctx.ports.bus.publish(topics::RESULTS, &report)
        })
        .await?;
        after_sends("the processed mark", || {
            self.ctx
                .ports
                .deliveries
                .mark_processed(key, self.ctx.clock.now())
        })
        .await?;
        metrics::histogram!("herald_push_message_seconds", "channel" => channel.as_str())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The page of a replacement step: the recipients after `step.after_user` whose push was
    /// sent, each with the revision's text; the next step is queued first when the page is
    /// full (under its own delivery key: a step handled twice queues it once). A revision
    /// superseded by a later one (which replaces the pushes itself), or a campaign retracted
    /// meanwhile, ends the chain with an empty page.
    async fn replacement_page(
        &self,
        msg: &ChannelMessage,
        step: &topics::Replacement,
    ) -> Result<ChannelMessage> {
        let ports = &self.ctx.ports;
        let now = self.ctx.clock.now();
        let empty = ChannelMessage {
            items: Vec::new(),
            ..msg.clone()
        };
        if self
            .retractions
            .current(now)
            .await?
            .contains(&msg.campaign_id)
        {
            return Ok(empty);
        }
        let cached = self
            .revisions
            .current(now)
            .await?
            .of_campaign(&msg.campaign_id)
            .cloned();
        let revision = match cached {
            Some(r) if r.record.revision >= msg.revision => r,
            // Not seen by this node's cache yet: from the store.
            _ => match ports.campaigns.revision(&msg.campaign_id).await? {
                Some(record) => Arc::new(Revision::prepare(record)?),
                None => return Ok(empty),
            },
        };
        if revision.record.revision != msg.revision {
            return Ok(empty);
        }
        let ids = ports
            .deliveries
            .sent_recipients(
                &msg.campaign_id,
                msg.channel,
                step.after_user.as_deref(),
                REPLACE_PAGE,
            )
            .await?;
        if ids.len() == REPLACE_PAGE as usize {
            let next = ChannelMessage {
                deliver_after: None,
                replaces: Some(topics::Replacement {
                    page: step.page + 1,
                    after_user: ids.last().cloned(),
                }),
                ..empty.clone()
            };
            revisions::queue_replacement(&self.ctx, &next, now).await?;
        }
        let users: HashMap<String, Arc<User>> = ports
            .directory
            .get_users(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), Arc::new(u)))
            .collect();
        let items = ids
            .iter()
            .filter_map(|id| {
                let user = users
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(User::nameless(id)));
                revision.render_item(msg.channel, &user)
            })
            .collect();
        Ok(ChannelMessage { items, ..empty })
    }

    /// A message rendered before the campaign's latest revision, rendered again from it (its
    /// recipients' attributes read once for the message); `None` when it is current.
    async fn rerendered(
        &self,
        msg: &ChannelMessage,
        now: DateTime<Utc>,
    ) -> Result<Option<ChannelMessage>> {
        let revised = self.revisions.current(now).await?;
        let Some(revision) = revised
            .of_campaign(&msg.campaign_id)
            .filter(|r| r.record.revision > msg.revision)
        else {
            return Ok(None);
        };
        let ids: Vec<String> = msg.items.iter().map(|i| i.user_id.clone()).collect();
        let users = self
            .ctx
            .ports
            .directory
            .get_users(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), Arc::new(u)))
            .collect();
        Ok(Some(ChannelMessage {
            items: revision.rerender(msg.channel, &msg.items, &users),
            revision: revision.record.revision,
            ..msg.clone()
        }))
    }

    /// Puts a channel message back in the delay store until `until`, under its delivery key
    /// (so any number of copies of it wait as one).
    async fn defer(
        &self,
        msg: &ChannelMessage,
        payload: &[u8],
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let topic = topics::channel_topic(msg.channel);
        self.ctx
            .ports
            .publish_at(
                topic,
                OutMessage {
                    key: Some(msg.campaign_id.clone()),
                    payload: payload.to_vec(),
                },
                Some(until),
                now,
                || format!("{topic}/{}", msg.delivery_key()),
            )
            .await
    }

    /// The items of an [`ChannelMessage::unless_read`] message whose recipients have neither
    /// read nor dismissed the item: one read by key each, a few under way at once.
    async fn still_unread(
        &self,
        msg: &ChannelMessage,
        check: ReadCheck,
    ) -> Result<Vec<ChannelItem>> {
        let broadcast = herald_core::ids::broadcast_id(&msg.campaign_id);
        // Owned items and handles: the lookups borrow nothing across their awaits.
        let lookups: Vec<_> = msg
            .items
            .iter()
            .cloned()
            .map(|item| {
                let inbox = self.ctx.ports.inbox.clone();
                let states = self.ctx.ports.broadcast_states.clone();
                async move {
                    let unread = match check {
                        ReadCheck::Inbox => match InboxKey::of_id(item.notification_id) {
                            // Not there any more: dismissed (or purged), so seen.
                            Some(key) => inbox
                                .get(&item.user_id, key)
                                .await?
                                .is_some_and(|n| n.read_at.is_none()),
                            // An id without its time cannot be looked up by key: sent.
                            None => true,
                        },
                        ReadCheck::Broadcast => {
                            !states.user_states(&item.user_id).await?.iter().any(|s| {
                                s.broadcast_id == broadcast
                                    && (s.read_at.is_some() || s.dismissed_at.is_some())
                            })
                        }
                    };
                    Ok::<_, Error>(unread.then_some(item))
                }
            })
            .collect();
        let looked: Vec<Option<ChannelItem>> = futures::stream::iter(lookups)
            .buffered(READ_CHECKS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(looked.into_iter().flatten().collect())
    }

    /// Sends everything a message holds and acts on the outcomes; returns the report.
    pub async fn deliver(&self, msg: &ChannelMessage, key: String) -> Result<DeliveryReport> {
        let now = self.ctx.clock.now();
        let channel = msg.channel;
        let mut report = DeliveryReport {
            key,
            campaign_id: msg.campaign_id.clone(),
            channel,
            attempt: msg.attempt,
            sent: 0,
            failed: 0,
            retried: 0,
            invalid_tokens: 0,
            dead_lettered: 0,
            failures: Vec::new(),
            at: now,
            provider_ms: 0,
            unreachable: 0,
            due_at: msg
                .deliver_after
                .or_else(|| msg.replay_of.as_ref().map(|_| now)),
            suppressed_online: 0,
            cancelled: 0,
            recipients: Vec::new(),
            replacement: msg.replaces.is_some(),
        };
        // A retracted campaign sends nothing more: every recipient's send is cancelled.
        if self
            .retractions
            .current(now)
            .await?
            .contains(&msg.campaign_id)
        {
            report.cancelled = msg.items.len() as u64;
            report.recipients = msg
                .items
                .iter()
                .map(|item| RecipientOutcome {
                    user_id: item.user_id.clone(),
                    status: RecipientStatus::Cancelled,
                    sent: 0,
                    reason: Some("the campaign was retracted before the send".into()),
                    dead_letter_id: None,
                })
                .collect();
            count(channel, "cancelled", report.cancelled);
            return Ok(report);
        }
        if msg.expires_at.is_some_and(|e| e <= now) {
            for item in &msg.items {
                fail(&mut report, failure(item, "-", "expired before delivery"));
                report.unreachable += 1;
                report.recipients.push(RecipientOutcome {
                    user_id: item.user_id.clone(),
                    status: RecipientStatus::Failed,
                    sent: 0,
                    reason: Some("expired before delivery".into()),
                    dead_letter_id: None,
                });
            }
            count(channel, "failed", report.failed);
            return Ok(report);
        }
        // Rendered before the campaign's content changed: sent with the new content.
        let current;
        let msg = match self.rerendered(msg, now).await? {
            Some(m) => {
                current = m;
                &current
            }
            None => msg,
        };
        // Pushes held back for recipients who were looking at the inbox: only those who have
        // not read or dismissed the item since are sent to.
        let unread;
        let msg = match msg.unless_read {
            Some(check) => {
                let items = self.still_unread(msg, check).await?;
                report.suppressed_online = (msg.items.len() - items.len()) as u64;
                let kept: std::collections::HashSet<(&str, uuid::Uuid)> = items
                    .iter()
                    .map(|i| (i.user_id.as_str(), i.notification_id))
                    .collect();
                for held in msg
                    .items
                    .iter()
                    .filter(|i| !kept.contains(&(i.user_id.as_str(), i.notification_id)))
                {
                    report.recipients.push(RecipientOutcome {
                        user_id: held.user_id.clone(),
                        status: RecipientStatus::SuppressedOnline,
                        sent: 0,
                        reason: Some("read or dismissed before the push was due".into()),
                        dead_letter_id: None,
                    });
                }
                count(channel, "suppressed_online", report.suppressed_online);
                unread = ChannelMessage {
                    items,
                    ..msg.clone()
                };
                &unread
            }
            None => msg,
        };

        let envelope = Arc::new(Envelope {
            campaign_id: msg.campaign_id.clone(),
            channel,
            category: msg.category.clone(),
            priority: msg.priority,
            expires_at: msg.expires_at,
        });
        let Expanded {
            dispatches,
            item_of,
            unreachable,
            last_used,
        } = self.expand(msg, &envelope).await?;
        // What became of each item (recipient), for its record.
        let mut tally: Vec<Tally> = vec![Tally::default(); msg.items.len()];
        for (i, reason) in unreachable {
            report.unreachable += 1;
            fail(&mut report, failure(&msg.items[i], "-", reason));
            tally[i].failed.get_or_insert_with(|| reason.to_owned());
        }

        // What the outcomes are acted on by; the dispatches themselves move into the lanes.
        let targets: Vec<(String, bool)> = dispatches
            .iter()
            .map(|d| {
                let device = matches!(d.destination, Destination::Device { .. });
                (d.destination.target().to_owned(), device)
            })
            .collect();
        let sending = Instant::now();
        let outcomes = self.send_all(dispatches).await;
        report.provider_ms = sending.elapsed().as_millis() as u64;
        // The outcomes' time: what the latency from campaign start is measured to.
        report.at = self.ctx.clock.now();

        // Act on the outcomes.
        let mut invalid_tokens = Vec::new();
        let mut touch = Vec::new();
        let mut retry: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut retry_after: Option<Duration> = None;
        let mut dead: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut dead_reason: Option<String> = None;
        let last_attempt = msg.attempt + 1 >= self.max_attempts;
        for (((target, device), outcome), item) in targets.into_iter().zip(&outcomes).zip(&item_of)
        {
            match outcome {
                Outcome::Sent => tally[*item].sent += 1,
                Outcome::InvalidToken { reason } | Outcome::Failed { reason } => {
                    tally[*item].failed.get_or_insert_with(|| reason.clone());
                }
                Outcome::Retry { .. } if !last_attempt => tally[*item].retried = true,
                Outcome::Retry { reason, .. } | Outcome::NotConfigured { reason } => {
                    tally[*item].dead = true;
                    tally[*item].failed.get_or_insert_with(|| reason.clone());
                }
            }
            match outcome {
                Outcome::Sent => {
                    report.sent += 1;
                    if device {
                        let stale = last_used
                            .get(&target)
                            .is_none_or(|t| now - *t > TOUCH_AFTER);
                        if stale {
                            touch.push(target);
                        }
                    }
                }
                Outcome::InvalidToken { reason } => {
                    report.invalid_tokens += 1;
                    invalid_tokens.push(target.clone());
                    fail(&mut report, failure(&msg.items[*item], &target, reason));
                }
                Outcome::Failed { reason } => {
                    fail(&mut report, failure(&msg.items[*item], &target, reason));
                }
                Outcome::Retry { reason, after } if !last_attempt => {
                    report.retried += 1;
                    retry.entry(*item).or_default().push(target);
                    retry_after = retry_after.max(*after);
                    tracing::debug!(%reason, %channel, "send will be retried");
                }
                Outcome::Retry { reason, .. } | Outcome::NotConfigured { reason } => {
                    report.dead_lettered += 1;
                    dead_reason.get_or_insert_with(|| reason.clone());
                    dead.entry(*item).or_default().push(target.clone());
                    fail(&mut report, failure(&msg.items[*item], &target, reason));
                }
            }
        }

        // From here on the sends are made: nothing may fail the message, whose redelivery
        // would make them again. The token upkeep is best effort (a rejected token is rejected
        // again next time, and removed then); the writes that keep sends for later wait out an
        // engine outage (`after_sends`).
        let directory = &self.ctx.ports.directory;
        if !invalid_tokens.is_empty() {
            match directory.delete_tokens(&invalid_tokens).await {
                Ok(n) => {
                    tracing::info!(deleted = n, %channel, "removed device tokens the provider rejected")
                }
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "rejected device tokens not removed")
                }
            }
        }
        if !touch.is_empty() {
            if let Err(e) = directory.touch_tokens(&touch, now).await {
                tracing::warn!(error = %e, %channel, "device tokens' last use not recorded");
            }
        }
        if !retry.is_empty() {
            let delay = self.backoff.delay(msg.attempt, retry_after);
            let next = ChannelMessage {
                attempt: msg.attempt + 1,
                deliver_after: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
                items: narrowed(msg, &retry),
                ..msg.clone()
            };
            // The devices listed per item can make a retry larger than its message was: it
            // is cut to the bus's bound as the fan-out's messages are.
            let messages = next.encoded()?;
            // The next attempt waits out its backoff in the delay store.
            let topic = topics::channel_topic(channel);
            for (next, payload) in messages {
                after_sends("the next attempt", || {
                    self.ctx.ports.publish_at(
                        topic,
                        OutMessage {
                            key: Some(msg.campaign_id.clone()),
                            payload: payload.clone(),
                        },
                        next.deliver_after,
                        now,
                        || format!("{topic}/{}", next.delivery_key()),
                    )
                })
                .await?;
            }
        }
        let mut letter_id = None;
        if !dead.is_empty() {
            let letter = DeadLetter {
                id: herald_core::ids::new_id().to_string(),
                channel,
                campaign_id: msg.campaign_id.clone(),
                reason: dead_reason.unwrap_or_default(),
                attempts: msg.attempt + 1,
                sends: report.dead_lettered,
                message: ChannelMessage {
                    deliver_after: None,
                    items: narrowed(msg, &dead),
                    ..msg.clone()
                },
                created_at: now,
                replayed_at: None,
            };
            after_sends("a dead letter", || {
                self.ctx.ports.deliveries.insert_dead_letter(&letter)
            })
            .await?;
            tracing::warn!(
                dead_letter = %letter.id,
                campaign = %letter.campaign_id,
                %channel,
                sends = letter.sends,
                reason = %letter.reason,
                "sends moved to the dead-letter queue"
            );
            letter_id = Some(letter.id);
        }
        for (item, t) in msg.items.iter().zip(tally) {
            let status = if t.sent > 0 {
                RecipientStatus::Sent
            } else if t.retried {
                RecipientStatus::Retrying
            } else if t.dead {
                RecipientStatus::DeadLettered
            } else {
                RecipientStatus::Failed
            };
            report.recipients.push(RecipientOutcome {
                user_id: item.user_id.clone(),
                status,
                sent: t.sent,
                reason: t.failed,
                dead_letter_id: if t.dead { letter_id.clone() } else { None },
            });
        }

        count(channel, "sent", report.sent);
        count(channel, "failed", report.failed);
        count(channel, "retried", report.retried);
        count(channel, "invalid_token", report.invalid_tokens);
        count(channel, "dead_lettered", report.dead_lettered);
        Ok(report)
    }

    /// One dispatch per device token / address / subscriber of the message's items.
    async fn expand(&self, msg: &ChannelMessage, envelope: &Arc<Envelope>) -> Result<Expanded> {
        let mut x = Expanded::default();
        let wanted = |item: &ChannelItem, target: &str| {
            item.targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|x| x == target))
        };
        let push = |x: &mut Expanded, i: usize, item: &ChannelItem, to: Destination| {
            x.dispatches.push(Dispatch {
                envelope: envelope.clone(),
                user_id: item.user_id.clone(),
                notification_id: item.notification_id,
                destination: to,
                title: item.title.clone(),
                body: item.body.clone(),
                html: item.html.clone(),
                data: item.data.clone(),
            });
            x.item_of.push(i);
        };
        match msg.channel {
            Channel::Push => {
                let ids: Vec<String> = msg.items.iter().map(|i| i.user_id.clone()).collect();
                let devices = self.ctx.ports.directory.list_devices(&ids).await?;
                let mut by_user: HashMap<&str, Vec<&Device>> = HashMap::new();
                for d in &devices {
                    by_user.entry(d.user_id.as_str()).or_default().push(d);
                    x.last_used.insert(d.token.clone(), d.last_used_at);
                }
                for (i, item) in msg.items.iter().enumerate() {
                    let mine = by_user.get(item.user_id.as_str());
                    let mut any = false;
                    for d in mine.into_iter().flatten() {
                        if wanted(item, &d.token) {
                            any = true;
                            let to = Destination::Device {
                                platform: d.platform,
                                token: d.token.clone(),
                            };
                            push(&mut x, i, item, to);
                        }
                    }
                    // A retry whose tokens were deleted meanwhile has nothing left to do.
                    if !any && item.targets.is_none() {
                        x.unreachable.push((i, "no registered device"));
                    }
                }
            }
            Channel::Email | Channel::Sms => {
                for (i, item) in msg.items.iter().enumerate() {
                    let address = match msg.channel {
                        Channel::Email => item.email.clone().map(Destination::Email),
                        _ => item.phone.clone().map(Destination::Phone),
                    };
                    match address {
                        Some(to) => push(&mut x, i, item, to),
                        None => x.unreachable.push((i, "no address")),
                    }
                }
            }
            Channel::Webhook => {
                let hooks = self.webhooks.get(&self.ctx).await?;
                let category = msg.category.as_deref();
                for (i, item) in msg.items.iter().enumerate() {
                    for hook in hooks.iter().filter(|h| h.wants(category)) {
                        if wanted(item, &hook.id) {
                            push(&mut x, i, item, Destination::Webhook(hook.clone()));
                        }
                    }
                }
            }
            Channel::InApp => {}
        }
        Ok(x)
    }

    /// Sends through each provider's lane at once; outcomes in dispatch order.
    async fn send_all(&self, dispatches: Vec<Dispatch>) -> Vec<Outcome> {
        let mut per_slot: [Vec<(usize, Dispatch)>; 5] = Default::default();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; dispatches.len()];
        for (i, d) in dispatches.into_iter().enumerate() {
            let (slot, name) = route(&d.destination);
            if self.lanes.slot(slot).is_some() {
                per_slot[slot].push((i, d));
            } else {
                outcomes[i] = Some(Outcome::NotConfigured {
                    reason: format!("{name} is not configured"),
                });
            }
        }
        let sends = per_slot
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(slot, batch)| {
                let lane = self.lanes.slot(slot).expect("checked above");
                let (indices, batch): (Vec<usize>, Vec<Dispatch>) = batch.into_iter().unzip();
                async move { (indices, lane.send(batch).await) }
            });
        for (indices, got) in futures::future::join_all(sends).await {
            for (i, o) in indices.iter().zip(got) {
                outcomes[*i] = Some(o);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome", None)))
            .collect()
    }
}

/// How long a write that follows a message's sends is retried through an engine outage.
const AFTER_SENDS_PATIENCE: Duration = Duration::from_secs(300);

/// A write that follows a message's sends (the next attempt, a dead letter, the report, the
/// processed mark): retried while its engine is unavailable, for up to
/// [`AFTER_SENDS_PATIENCE`], instead of failing the message, whose redelivery would send again
/// once the claim (still renewed meanwhile) runs out. Other errors fail at once, as before.
async fn after_sends<T, F, Fut>(what: &'static str, mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.kind == herald_core::ErrorKind::Unavailable
                    && started.elapsed() < AFTER_SENDS_PATIENCE =>
            {
                metrics::counter!("herald_push_after_send_retries_total").increment(1);
                tracing::warn!(error = %e, "{what} not written after the sends; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renews `holder`'s claim on `key` every third of [`CLAIM_LEASE`] until dropped.
async fn keep_claim(ctx: Context, key: String, holder: String) {
    let deliveries = &ctx.ports.deliveries;
    loop {
        tokio::time::sleep(CLAIM_LEASE / 3).await;
        match deliveries
            .claim(&key, &holder, ctx.clock.now(), CLAIM_LEASE)
            .await
        {
            Ok(DeliveryClaim::Won) => {}
            Ok(DeliveryClaim::Processed) => return,
            Ok(DeliveryClaim::Held { .. }) => {
                // Renewals failed (the store was down) until the claim ran out and another
                // copy of the message took it: that copy may be sending beside this one.
                tracing::warn!(%key, "delivery claim lost before the sends finished");
                metrics::counter!("herald_push_claims_lost_total").increment(1);
                return;
            }
            Err(e) => tracing::warn!(%key, error = %e, "delivery claim not renewed; trying again"),
        }
    }
}

/// One consumer of one channel topic, in the `push-gateway` group: one message per step.
pub struct ChannelConsumer {
    gateway: Arc<Gateway>,
    channel: Channel,
    member: Arc<SharedConsumer>,
}

impl ChannelConsumer {
    /// A consumer of `channel`'s topic through `member` (shared by the process's consumers
    /// of that channel: see [`ChannelConsumer::member`]).
    pub fn new(gateway: Arc<Gateway>, channel: Channel, member: Arc<SharedConsumer>) -> Self {
        Self {
            gateway,
            channel,
            member,
        }
    }

    /// The member of the gateway group on `channel`'s topic.
    pub fn member(gateway: &Gateway, channel: Channel) -> Arc<SharedConsumer> {
        SharedConsumer::new(
            gateway.ctx.ports.bus.clone(),
            topics::channel_topic(channel),
            topics::GATEWAY,
        )
    }
}

#[async_trait::async_trait]
impl Worker for ChannelConsumer {
    fn name(&self) -> &'static str {
        topics::channel_topic(self.channel)
    }

    async fn step(&mut self, _shutdown: &CancellationToken) -> Result<WorkerState> {
        let topic = topics::channel_topic(self.channel);
        for d in self.member.poll(1, Duration::from_secs(1)).await? {
            // The member keeps the message while the sends are in flight, however long they
            // take; a panic in a handler drops `d`, which gives the message back.
            match self.gateway.handle(self.channel, d.payload()).await {
                Ok(()) => d.commit().await?,
                Err(e) => {
                    // The gateway's own failures (a store it cannot reach): the message is
                    // tried again after a pause, and dead-lettered once it has failed too often.
                    let bus = self.gateway.ctx.ports.bus.clone();
                    d.failed(bus.as_ref(), topic, topics::GATEWAY, &e, MAX_DELIVERIES)
                        .await?;
                    return Err(e);
                }
            }
        }
        Ok(WorkerState::Busy)
    }
}

#[derive(Default)]
struct Expanded {
    dispatches: Vec<Dispatch>,
    /// The item each dispatch came from.
    item_of: Vec<usize>,
    /// Items with nothing to send to, and why.
    unreachable: Vec<(usize, &'static str)>,
    /// Last use of each device token seen.
    last_used: HashMap<String, DateTime<Utc>>,
}

/// The items of `msg` named in `which`, each narrowed to the given targets (device tokens and
/// webhook ids; an address is the item itself, so email and SMS keep no target list).
fn narrowed(msg: &ChannelMessage, which: &BTreeMap<usize, Vec<String>>) -> Vec<ChannelItem> {
    which
        .iter()
        .map(|(i, targets)| {
            let mut item = msg.items[*i].clone();
            item.targets = match msg.channel {
                Channel::Push | Channel::Webhook => Some(targets.clone()),
                _ => None,
            };
            item
        })
        .collect()
}

/// Counts one failed send, keeping its details while the report has room for them.
/// One item's sends, as their outcomes come back.
#[derive(Debug, Clone, Default)]
struct Tally {
    sent: u32,
    retried: bool,
    dead: bool,
    /// The first failure's reason.
    failed: Option<String>,
}

fn fail(report: &mut DeliveryReport, f: SendFailure) {
    report.failed += 1;
    if report.failures.len() < REPORTED_FAILURES {
        report.failures.push(f);
    }
}

fn failure(item: &ChannelItem, target: &str, reason: &str) -> SendFailure {
    SendFailure {
        user_id: item.user_id.clone(),
        notification_id: item.notification_id,
        target: target.to_owned(),
        reason: reason.to_owned(),
    }
}

fn count(channel: Channel, result: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("herald_push_deliveries_total", "channel" => channel.as_str(), "result" => result)
            .increment(n);
    }
}
