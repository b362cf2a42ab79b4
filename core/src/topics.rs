//! The bus topics Herald's roles talk over, their consumer groups, and the message bodies.
//! Messages are JSON so a person can read a queue with any tool.

use crate::model::{Channel, Priority};
use crate::ports::Bus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Hints that a campaign needs a dispatcher (from the API and the scheduler); ownership itself
/// is a lease in the campaign store.
pub const DISPATCH: &str = "campaigns.dispatch";
pub const DISPATCHERS: &str = "dispatcher";
/// Fan-out batches of up to `fanout.batch_size` users.
pub const BATCHES: &str = "fanout.batches";
pub const BATCH_WORKERS: &str = "batch-workers";
/// Consumer group of the push gateway on every channel topic.
pub const GATEWAY: &str = "push-gateway";
/// Delivery reports ([`crate::delivery::DeliveryReport`]) of the push gateway.
pub const RESULTS: &str = "delivery.results";
/// The group that adds delivery reports to the campaigns' counters.
pub const RESULT_COUNTERS: &str = "delivery-counters";
/// Digests whose window has ended ([`DigestDue`]), published by the delay store when due.
pub const DIGESTS: &str = "digests.due";
/// The group that sends due digests (in the fan-out role).
pub const DIGEST_SENDERS: &str = "digest-senders";

/// The channel queue topic of a channel delivered outside the inbox (`channel.push`, ...).
pub fn channel_topic(channel: Channel) -> &'static str {
    match channel {
        Channel::InApp => "channel.in_app",
        Channel::Push => "channel.push",
        Channel::Email => "channel.email",
        Channel::Sms => "channel.sms",
        Channel::Webhook => "channel.webhook",
    }
}

/// Consumer group that keeps the dead letters of every topic until an operator reads them
/// (`herald bus lag` shows how many wait).
pub const DEAD_LETTERS: &str = "dead-letters";

/// The topic a consumer moves a message to after too many failed attempts
/// ([`crate::consume`]): `deadletter.<topic>`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("deadletter.{topic}")
}

/// `topic` as a metric label: one of the standard topics, or `other` (labels stay bounded).
pub fn known(topic: &str) -> &'static str {
    [DISPATCH, BATCHES, RESULTS, DIGESTS]
        .into_iter()
        .chain(OUTBOUND.map(channel_topic))
        .find(|t| *t == topic)
        .unwrap_or("other")
}

/// The channels that leave Herald through the push gateway.
pub const OUTBOUND: [Channel; 4] = [
    Channel::Push,
    Channel::Email,
    Channel::Sms,
    Channel::Webhook,
];

/// Declares every standard subscription, so messages published before a consumer first runs
/// wait for it. Idempotent; `herald migrate` and every role call it on start.
pub async fn declare(bus: &dyn Bus) -> crate::Result<()> {
    for (topic, group) in subscriptions() {
        bus.subscribe(&topic, group).await?;
    }
    Ok(())
}

/// The standard subscriptions, as (topic, consumer group), in the order of the flows, then
/// the dead-letter topics of each.
pub fn subscriptions() -> Vec<(String, &'static str)> {
    let mut all = vec![(DISPATCH, DISPATCHERS), (BATCHES, BATCH_WORKERS)];
    all.extend(OUTBOUND.map(|c| (channel_topic(c), GATEWAY)));
    all.push((RESULTS, RESULT_COUNTERS));
    all.push((DIGESTS, DIGEST_SENDERS));
    let dead: Vec<(String, &'static str)> = all
        .iter()
        .map(|(topic, _)| (dead_letter_topic(topic), DEAD_LETTERS))
        .collect();
    all.into_iter()
        .map(|(t, g)| (t.to_owned(), g))
        .chain(dead)
        .collect()
}

/// Puts a dispatch hint for `campaign_id` on the bus, so an idle dispatcher looks at once.
/// Best effort, and said so in the log only: dispatchers find claimable campaigns in the
/// campaign store without it (the store, not the bus, is the source of truth).
pub async fn hint_dispatch(bus: &dyn Bus, campaign_id: &str) {
    let payload = serde_json::to_vec(&DispatchRequest {
        campaign_id: campaign_id.to_owned(),
    })
    .expect("a dispatch request encodes");
    let hint = crate::model::OutMessage {
        key: Some(campaign_id.to_owned()),
        payload,
    };
    if let Err(e) = bus.publish(DISPATCH, &[hint]).await {
        tracing::debug!(campaign = campaign_id, error = %e, "dispatch hint not published");
    }
}

/// Body of a [`DIGESTS`] message: a digest whose window has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestDue {
    pub digest_id: String,
}

/// Body of a [`DISPATCH`] message: a hint that a campaign needs a dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub campaign_id: String,
}

/// Body of a [`BATCHES`] message: one slice of a campaign's audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutBatch {
    pub campaign_id: String,
    /// 0-based; with the campaign id it makes the batch's identity, so a redelivered batch is
    /// recognised and counted once.
    pub batch_no: u64,
    pub user_ids: Vec<String>,
    /// A replay of a batch given up earlier (`POST /v1/campaigns/{id}/failed-batches/{n}/
    /// replay`): its counters are added as a replay, once, instead of as a new batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// Attempts of this batch that failed before this message (a failed attempt is retried
    /// through the delay store as a new message carrying the count).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: u32,
    /// Recipients per channel message (`fanout.message_users` where the batch was cut): fixed
    /// in the batch, so every processing of it cuts its channel messages into the same pieces
    /// (see [`ChannelMessage::piece`]) even if the setting changed meanwhile. 0 (a batch
    /// published before pieces existed): the whole batch is one piece.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub message_users: u32,
}

/// Body of a channel queue message: one campaign batch's deliveries on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMessage {
    pub campaign_id: String,
    pub batch_no: u64,
    pub channel: Channel,
    /// Which of the batch's messages on this channel: a batch becomes one message per
    /// channel and quiet-hours end, and each must be told apart from its siblings. It is the
    /// end of the recipients' quiet hours in Unix seconds (0 for those sent at once), so the
    /// same batch processed again yields the same parts; retries and replays keep it.
    #[serde(default)]
    pub part: i64,
    /// Which piece of its part: a batch of more than [`FanoutBatch::message_users`] users
    /// publishes each part in pieces, piece `n` holding the items of the batch's users at
    /// positions `n * message_users ..` onwards (by position in the batch, so the same batch
    /// processed again puts each user in the same piece). 0 for a batch of one piece; retries
    /// and replays keep it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub piece: u32,
    /// Set on a message cut from a larger one because as one message it would pass
    /// [`MAX_CHANNEL_MESSAGE_BYTES`] (see [`ChannelMessage::encoded`]): the positions of its
    /// first and last item among the items of the piece (or of the retry) it was cut from.
    /// Retries and replays keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<[u32; 2]>,
    pub category: Option<String>,
    pub priority: Priority,
    /// Not to be delivered before this instant (the end of the recipients' quiet hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// 0 for the fan-out's message; the push gateway republishes the sends that failed for a
    /// while as attempt 1, 2, ...
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Set on a message replayed from the dead-letter queue: the dead letter's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Set on the pushes of recipients who had a live inbox socket (`push_when: offline` with
    /// `online_push_delay_s`): when the message is due, an item its recipient has read or
    /// dismissed meanwhile is not sent (counted `suppressed_online`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless_read: Option<ReadCheck>,
    /// The revision of the campaign's content its items were rendered from (0: the content
    /// it was created with). A message older than the campaign's latest revision is
    /// rendered again before it is sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u32,
    /// Set on the messages that replace the pushes already sent with revision `revision`'s
    /// content: with no items, it is a step through the recipients sent to (the gateway
    /// renders the page after `after_user` and queues the next step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Replacement>,
    pub items: Vec<ChannelItem>,
}

/// Where a replacement of sent pushes is (see [`ChannelMessage::replaces`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// 0 for the first page of recipients.
    pub page: u64,
    /// The last recipient of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_user: Option<String>,
}

/// Where an [`ChannelMessage::unless_read`] message looks up whether an item was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadCheck {
    /// The recipient's inbox row (the item's notification id is the row's id).
    Inbox,
    /// The recipient's state of the campaign's broadcast.
    Broadcast,
}

/// The part of an [`ChannelMessage::unless_read`] message whose recipients' quiet hours end
/// at `quiet_part` (0: none): negative, so it never meets a part of pushes sent at once.
pub fn unless_read_part(quiet_part: i64) -> i64 {
    -1 - quiet_part
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The largest channel message the fan-out publishes, in bytes of JSON. Brokers refuse larger
/// messages by default (Kafka's `message.max.bytes` and NATS's `max_payload` are about 1 MiB);
/// the rest of that MiB leaves room for what a retry adds (its attempt and due time).
pub const MAX_CHANNEL_MESSAGE_BYTES: usize = 768 * 1024;

impl ChannelMessage {
    /// This message as the bus carries it: one payload, or, when its JSON would pass
    /// [`MAX_CHANNEL_MESSAGE_BYTES`] (a thousand recipients of a large HTML email), its items
    /// cut in halves, and halves of those, until each message fits, each with its
    /// [`span`](Self::span). The same items always make the same messages. A single item
    /// larger than the bound goes alone (an item is bounded by the template limits).
    pub fn encoded(self) -> crate::Result<Vec<(ChannelMessage, Vec<u8>)>> {
        let mut out = Vec::new();
        self.encode_into(&mut out)
            .map_err(|e| crate::Error::internal("channel message").with_source(e))?;
        Ok(out)
    }

    fn encode_into(mut self, out: &mut Vec<(ChannelMessage, Vec<u8>)>) -> serde_json::Result<()> {
        let payload = serde_json::to_vec(&self)?;
        let n = self.items.len();
        if payload.len() <= MAX_CHANNEL_MESSAGE_BYTES || n < 2 {
            out.push((self, payload));
            return Ok(());
        }
        drop(payload);
        let first = self.span.map_or(0, |[first, _]| first);
        let mid = n / 2;
        let mut right_items = std::mem::take(&mut self.items);
        let left_items: Vec<ChannelItem> = right_items.drain(..mid).collect();
        let mut right = self.clone();
        right.items = right_items;
        right.span = Some([first + mid as u32, first + n as u32 - 1]);
        self.items = left_items;
        self.span = Some([first, first + mid as u32 - 1]);
        self.encode_into(out)?;
        right.encode_into(out)
    }

    /// The identity of this message's deliveries: a redelivered copy has the same key (and is
    /// recognised), a sibling part of the same batch, a retry or a replay has its own.
    pub fn delivery_key(&self) -> String {
        let mut key = match &self.replaces {
            // Pages of a revision's replacement pushes, apart from the fan-out's batches.
            Some(r) => format!(
                "{}/revision/{}/{}/{}/{}",
                self.campaign_id, self.revision, r.page, self.channel, self.attempt
            ),
            None => format!(
                "{}/{}/{}/{}/{}",
                self.campaign_id, self.batch_no, self.channel, self.part, self.attempt
            ),
        };
        // Piece 0 keeps the key a batch of one piece always had.
        if self.piece > 0 {
            key.push_str("/piece/");
            key.push_str(&self.piece.to_string());
        }
        // Both ends: a piece replayed after its items changed size may be cut elsewhere, and
        // a message must never be taken for one that held fewer of its items.
        if let Some([first, last]) = self.span {
            key.push_str(&format!("/items/{first}-{last}"));
        }
        if let Some(replay) = &self.replay_of {
            key.push_str("/replay/");
            key.push_str(replay);
        }
        key
    }
}

/// One recipient's rendered content on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelItem {
    pub user_id: String,
    pub notification_id: uuid::Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Title (push, in-app) or subject (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Body (push), text (email, SMS) or JSON body (webhook).
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    pub data: serde_json::Value,
    /// Only these targets (device tokens for push, webhook ids for webhooks): set on retries
    /// and dead letters so what was delivered is not delivered again. `None` means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(part: i64, piece: u32, attempt: u32) -> ChannelMessage {
        ChannelMessage {
            campaign_id: "c1".into(),
            batch_no: 7,
            channel: Channel::Push,
            part,
            piece,
            span: None,
            category: None,
            priority: Priority::Normal,
            deliver_after: None,
            expires_at: None,
            attempt,
            replay_of: None,
            unless_read: None,
            revision: 0,
            replaces: None,
            items: Vec::new(),
        }
    }

    #[test]
    fn each_piece_of_a_part_has_a_delivery_key_of_its_own_and_piece_0_keeps_the_unpieced_one() {
        assert_eq!(message(0, 0, 0).delivery_key(), "c1/7/push/0/0");
        assert_eq!(message(0, 1, 0).delivery_key(), "c1/7/push/0/0/piece/1");
        // A retry of piece 1 is not a retry of piece 2, nor piece 1 itself.
        assert_eq!(message(0, 1, 2).delivery_key(), "c1/7/push/0/2/piece/1");
        assert_ne!(
            message(0, 2, 2).delivery_key(),
            message(0, 1, 2).delivery_key()
        );
        // Piece 0 is left out of the message as it was before pieces.
        let json = serde_json::to_value(message(0, 0, 0)).unwrap();
        assert!(json.get("piece").is_none(), "{json}");
        let back: ChannelMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back.piece, 0);
        let json = serde_json::to_value(message(0, 3, 0)).unwrap();
        assert_eq!(json["piece"], 3);
    }

    fn item(user: usize, body_bytes: usize) -> ChannelItem {
        ChannelItem {
            user_id: format!("u{user:04}"),
            notification_id: uuid::Uuid::from_u128(user as u128),
            title: Some("t".into()),
            body: "x".repeat(body_bytes),
            html: None,
            email: None,
            phone: None,
            data: serde_json::Value::Null,
            targets: None,
        }
    }

    #[test]
    fn a_message_within_the_bound_is_one_payload_under_its_own_key() {
        let mut msg = message(0, 2, 0);
        msg.items = (0..1000).map(|u| item(u, 100)).collect();
        let key = msg.delivery_key();
        let parts = msg.clone().encoded().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, msg);
        assert_eq!(parts[0].0.delivery_key(), key);
        assert_eq!(parts[0].1, serde_json::to_vec(&msg).unwrap());
    }

    #[test]
    fn a_message_over_the_bound_is_cut_into_messages_that_fit_hold_every_item_once_and_have_keys_of_their_own(
    ) {
        let mut msg = message(0, 1, 0);
        // 1,000 recipients of a 5 KB body: about 5 MB as one message.
        msg.items = (0..1000).map(|u| item(u, 5_000)).collect();
        let parts = msg.clone().encoded().unwrap();
        assert!(parts.len() >= 7, "{} messages", parts.len());
        let mut keys = std::collections::HashSet::new();
        let mut next = 0u32;
        for (part, payload) in &parts {
            assert!(
                payload.len() <= MAX_CHANNEL_MESSAGE_BYTES,
                "{}",
                payload.len()
            );
            assert_eq!(
                &serde_json::from_slice::<ChannelMessage>(payload).unwrap(),
                part
            );
            let [first, last] = part.span.expect("a cut message says which items it holds");
            assert_eq!(first, next, "in order, none left out");
            assert_eq!(last as usize, first as usize + part.items.len() - 1);
            assert_eq!(part.items, msg.items[first as usize..=last as usize]);
            next = last + 1;
            assert!(keys.insert(part.delivery_key()), "{}", part.delivery_key());
            assert!(part
                .delivery_key()
                .starts_with("c1/7/push/0/0/piece/1/items/"));
        }
        assert_eq!(next, 1000);
        // The same items make the same messages (a replayed batch is recognised).
        assert_eq!(msg.clone().encoded().unwrap(), parts);
        // A retry of a cut message stays apart from its siblings and from itself.
        let retry = ChannelMessage {
            attempt: 1,
            ..parts[0].0.clone()
        };
        assert!(!keys.contains(&retry.delivery_key()));
    }

    #[test]
    fn an_item_larger_than_the_bound_goes_alone() {
        let mut msg = message(0, 0, 0);
        msg.items = vec![
            item(0, 10),
            item(1, MAX_CHANNEL_MESSAGE_BYTES + 1),
            item(2, 10),
        ];
        let parts = msg.encoded().unwrap();
        let spans: Vec<_> = parts.iter().map(|(m, _)| m.span).collect();
        assert_eq!(spans, [Some([0, 0]), Some([1, 1]), Some([2, 2])]);
    }
}
