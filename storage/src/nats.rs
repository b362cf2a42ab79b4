//! The bus on NATS JetStream (`nats://host:port`), through `async-nats`.
//!
//! # Design
//!
//! - **A stream per topic family**: `channel.push` and `channel.email` live in the stream
//!   `HERALD_CHANNEL` (subjects `channel.>`), `fanout.batches` in `HERALD_FANOUT`, and so on.
//!   Messages are the subjects' own (the topic is the subject); the stream keeps them
//!   `retention_hours` (default 168, limits retention: a committed message stays for replays),
//!   with the URL's `replicas` (default 1). A message's key rides in the `Herald-Key` header;
//!   a stream is totally ordered, so a key keeps its order.
//! - **A durable pull consumer per (topic, group)**, filtered on the topic (a family pattern
//!   such as `channel.>` is a filter too: an audit tool reads every channel with one consumer),
//!   explicit acks, `ack_wait` 30 s, created by [`Bus::subscribe`] with the `new` deliver
//!   policy (what is published from then on). Members of a group pull from the same durable
//!   consumer: JetStream hands each message to one of them.
//! - A member sends *in progress* for what it holds every third of `ack_wait`, so work may take
//!   as long as it needs; `commit` acks, `release` naks (redelivery at once). A member that
//!   dies stops the progress signals and its messages come back after `ack_wait`; one dropped
//!   naks what it held. `attempt` is JetStream's delivery count (crashes included).
//! - `max_deliver` of the consumer is the URL's `max_deliver` (default unlimited): Herald's
//!   consumers dead-letter a message themselves at [`herald_core::consume::MAX_DELIVERIES`]
//!   deliveries, counted by JetStream, so the server never drops one silently first.
//! - With `prefix=P` every subject is `P.<topic>` and the deployment has one stream of its own
//!   (`HERALD_P`): deployments (or test runs) sharing a server stay apart.
//! - **Lag** is the consumer's pending plus unacknowledged messages. **Replay** recreates the
//!   durable consumer with a start sequence or time; members pulling from it carry on.

use crate::{url, BackendUrl};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use herald_core::model::{Delivery, OutMessage};
use herald_core::ports::{Bus, Consumer, ReplayFrom};
use herald_core::worker::AbortOnDrop;
use herald_core::{Error, Result};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const KEY_HEADER: &str = "Herald-Key";
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages a member may hold unacknowledged (JetStream's default is 1,000).
const MAX_ACK_PENDING: i64 = 20_000;

#[derive(Debug, Clone)]
struct Params {
    server: String,
    replicas: usize,
    retention_hours: u64,
    max_deliver: i64,
    /// Put before every subject (`<prefix>.<topic>`), so its streams are its own.
    prefix: Option<String>,
}

impl Params {
    /// A topic's subject: `<prefix>.<topic>` with a prefix, whose streams are then named
    /// after it (`HERALD_<PREFIX>`, subjects `<prefix>.>`).
    fn subject(&self, topic: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{topic}"),
            None => topic.to_owned(),
        }
    }

    fn parse(url: &BackendUrl) -> Result<Params> {
        let (base, query) = url::split_query(&url.raw);
        if base.len() <= "nats://".len() {
            return Err(Error::invalid("a NATS URL is nats://host:port"));
        }
        let mut p = Params {
            server: base.to_owned(),
            replicas: 1,
            retention_hours: 168,
            max_deliver: -1,
            prefix: None,
        };
        for (k, v) in query {
            let bad = || Error::invalid(format!("nats URL parameter `{k}`: `{v}` is not a number"));
            match k.as_str() {
                "replicas" => p.replicas = v.parse().map_err(|_| bad())?,
                "retention_hours" => p.retention_hours = v.parse().map_err(|_| bad())?,
                "max_deliver" => p.max_deliver = v.parse().map_err(|_| bad())?,
                "prefix" if !v.is_empty() => p.prefix = Some(v),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown nats URL parameter `{other}` (known: replicas, \
                         retention_hours, max_deliver, prefix)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(
        format!("nats: {what}"),
        std::io::Error::other(e.to_string()),
    )
}

/// The stream of a topic's family and the subjects it holds: `channel.push` → `HERALD_CHANNEL`
/// with `channel.>`; a topic without a dot is a family of its own.
fn stream_of(topic: &str) -> (String, String) {
    let family = topic.split('.').next().unwrap_or(topic);
    let name: String = family
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let subjects = if topic.contains('.') {
        format!("{family}.>")
    } else {
        topic.to_owned()
    };
    (format!("HERALD_{name}"), subjects)
}

/// The durable consumer's name for a group on a topic (names allow no `.`, `>`, `*`).
fn consumer_name(topic: &str, group: &str) -> String {
    format!("{group}__{topic}")
        .chars()
        .map(|c| match c {
            '>' => 'A',
            '*' => 'S',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect()
}

fn to_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        t.timestamp_nanos_opt().unwrap_or_default(),
    ))
    .map_err(|e| Error::invalid("replay time out of range").with_source(e))
}

fn from_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or_default())
}

pub struct NatsBus {
    params: Params,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Streams known to exist.
    streams: Mutex<HashSet<String>>,
}

impl NatsBus {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let params = Params::parse(url)?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(params.server.as_str())
            .await
            .map_err(|e| nats_error("cannot connect", e))?;
        let js = jetstream::new(client.clone());
        Ok(NatsBus {
            params,
            client,
            js,
            streams: Mutex::new(HashSet::new()),
        })
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream> {
        let (name, subjects) = stream_of(topic);
        if self.streams.lock().contains(&name) {
            return self
                .js
                .get_stream(&name)
                .await
                .map_err(|e| nats_error("reading a stream", e));
        }
        let stream = self
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subjects],
                max_age: Duration::from_secs(self.params.retention_hours * 3600),
                num_replicas: self.params.replicas,
                storage: jetstream::stream::StorageType::File,
                retention: jetstream::stream::RetentionPolicy::Limits,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("creating a stream", e))?;
        self.streams.lock().insert(name);
        Ok(stream)
    }

    fn consumer_config(&self, topic: &str, group: &str, deliver: DeliverPolicy) -> pull::Config {
        pull::Config {
            durable_name: Some(consumer_name(topic, group)),
            filter_subject: topic.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: self.params.max_deliver,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy: deliver,
            ..Default::default()
        }
    }

    fn deliver_policy(from: &ReplayFrom) -> Result<DeliverPolicy> {
        Ok(match from {
            ReplayFrom::Earliest => DeliverPolicy::All,
            ReplayFrom::Offset(o) => DeliverPolicy::ByStartSequence {
                start_sequence: (*o).max(1),
            },
            ReplayFrom::Time(t) => DeliverPolicy::ByStartTime {
                start_time: to_time(*t)?,
            },
        })
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn ping(&self) -> Result<()> {
        // The JetStream API's account info: answered only where JetStream is enabled.
        let reply = self
            .client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .map_err(|e| nats_error("JetStream does not answer", e))?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| nats_error("JetStream answered garbage", e))?;
        match info.get("error") {
            None => Ok(()),
            Some(e) => Err(nats_error("JetStream is not available", e)),
        }
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<()> {
        let topic = &self.params.subject(topic);
        let stream = self.stream(topic).await?;
        let name = consumer_name(topic, group);
        if stream.consumer_info(&name).await.is_ok() {
            return Ok(());
        }
        stream
            .create_consumer(self.consumer_config(topic, group, DeliverPolicy::New))
            .await
            .map_err(|e| nats_error("creating a consumer", e))?;
        Ok(())
    }

    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        let topic = &self.params.subject(topic);
        // Send everything, then wait for the acknowledgements (pipelined).
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let payload = bytes::Bytes::from(m.payload.clone());
            let ack = match &m.key {
                Some(k) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(KEY_HEADER, k.as_str());
                    self.js
                        .publish_with_headers(topic.to_owned(), headers, payload)
                        .await
                }
                None => self.js.publish(topic.to_owned(), payload).await,
            }
            .map_err(|e| nats_error("publishing", e))?;
            acks.push(ack);
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.map_err(|e| nats_error("publishing (no acknowledgement)", e))?;
        }
        Ok(())
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<dyn Consumer>> {
        let topic = &self.params.subject(topic);
        let stream = self.stream(topic).await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&consumer_name(topic, group))
            .await
            .map_err(|e| nats_error("joining a consumer (subscribe the group first)", e))?;
        let held: Arc<Mutex<Held>> = Arc::default();
        let keeper = AbortOnDrop::spawn(keep_in_progress(held.clone()));
        Ok(Arc::new(NatsMember {
            consumer,
            client: self.client.clone(),
            held,
            _keeper: keeper,
        }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let topic = &self.params.subject(topic);
        let stream = self.stream(topic).await?;
        let info = stream
            .consumer_info(consumer_name(topic, group))
            .await
            .map_err(|e| nats_error("reading a consumer", e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    async fn replay(
        &self,
        topic: &str,
        group: &str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> Result<u64> {
        let topic = &self.params.subject(topic);
        let stream = self.stream(topic).await?;
        let name = consumer_name(topic, group);
        stream.consumer_info(&name).await.map_err(|_| {
            Error::not_found(format!("group `{group}` is not subscribed to `{topic}`"))
        })?;
        let deliver = Self::deliver_policy(&from)?;
        if dry_run {
            // An ephemeral consumer from the same point counts what the group would receive.
            let mut probe = self.consumer_config(topic, group, deliver);
            probe.durable_name = None;
            probe.inactive_threshold = Duration::from_secs(30);
            let mut c: jetstream::consumer::PullConsumer = stream
                .create_consumer(probe)
                .await
                .map_err(|e| nats_error("counting a replay", e))?;
            let n = c
                .info()
                .await
                .map_err(|e| nats_error("counting a replay", e))?
                .num_pending;
            let probe_name = c.cached_info().name.clone();
            let _ = stream.delete_consumer(&probe_name).await;
            return Ok(n);
        }
        stream
            .delete_consumer(&name)
            .await
            .map_err(|e| nats_error("moving the group", e))?;
        let mut c: jetstream::consumer::PullConsumer = stream
            .create_consumer(self.consumer_config(topic, group, deliver))
            .await
            .map_err(|e| nats_error("moving the group", e))?;
        Ok(c.info()
            .await
            .map_err(|e| nats_error("moving the group", e))?
            .num_pending)
    }
}

/// What a member holds: receipt → (stream sequence, acker).
type Held = HashMap<String, (u64, Arc<jetstream::message::Acker>)>;

/// Tells JetStream every third of `ack_wait` that held messages are still being worked on.
async fn keep_in_progress(held: Arc<Mutex<Held>>) {
    loop {
        tokio::time::sleep(ACK_WAIT / 3).await;
        let ackers: Vec<_> = held.lock().values().map(|(_, a)| a.clone()).collect();
        for a in ackers {
            let _ = a.ack_with(jetstream::AckKind::Progress).await;
        }
    }
}

struct NatsMember {
    consumer: jetstream::consumer::PullConsumer,
    client: async_nats::Client,
    held: Arc<Mutex<Held>>,
    _keeper: AbortOnDrop<()>,
}

impl NatsMember {
    fn hold(&self, m: jetstream::Message) -> Result<Delivery> {
        let info = m
            .info()
            .map_err(|e| nats_error("reading a message's metadata", e))?;
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let published_at = from_time(info.published);
        let stream_sequence = info.stream_sequence;
        // The reply subject names the delivery (stream, consumer, sequences): the receipt.
        let receipt = m
            .reply
            .as_ref()
            .map(|r| r.to_string())
            .ok_or_else(|| Error::internal("a JetStream message without a reply subject"))?;
        let (message, acker) = m.split();
        let key = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KEY_HEADER))
            .map(|v| v.as_str().to_owned());
        self.held
            .lock()
            .insert(receipt.clone(), (stream_sequence, Arc::new(acker)));
        Ok(Delivery {
            receipt,
            key,
            payload: message.payload.to_vec(),
            attempt,
            published_at,
        })
    }

    async fn settle(&self, receipts: &[String], kind: jetstream::AckKind) -> Result<()> {
        let ackers: Vec<_> = {
            let mut held = self.held.lock();
            receipts
                .iter()
                .filter_map(|r| held.remove(r).map(|(_, a)| a))
                .collect()
        };
        for a in &ackers {
            a.ack_with(kind)
                .await
                .map_err(|e| nats_error("acknowledging", e))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| nats_error("acknowledging", e))
    }

    async fn fetch(&self, max: usize, wait: Option<Duration>) -> Result<Vec<Delivery>> {
        let mut batch = match wait {
            None => self
                .consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(|e| nats_error("pulling", e))?,
            Some(wait) => self
                .consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| nats_error("pulling", e))?,
        };
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| nats_error("pulling", e))?;
            out.push(self.hold(m)?);
        }
        Ok(out)
    }
}

impl Drop for NatsMember {
    fn drop(&mut self) {
        // A member that goes gives back what it still holds at once.
        // In stream order, so the group gets them back in the order they were published.
        let mut ackers: Vec<_> = self.held.lock().drain().map(|(_, a)| a).collect();
        ackers.sort_by_key(|(seq, _)| *seq);
        let ackers: Vec<_> = ackers.into_iter().map(|(_, a)| a).collect();
        if ackers.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            rt.spawn(async move {
                for a in ackers {
                    let _ = a.ack_with(jetstream::AckKind::Nak(None)).await;
                }
                let _ = client.flush().await;
            });
        }
    }
}

#[async_trait]
impl Consumer for NatsMember {
    async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // What is there now, without waiting; else wait for one, then take what came with it.
        let got = self.fetch(max, None).await?;
        if !got.is_empty() || wait < Duration::from_millis(10) {
            return Ok(got);
        }
        let mut got = self.fetch(1, Some(wait)).await?;
        if !got.is_empty() && max > 1 {
            got.extend(self.fetch(max - 1, None).await?);
        }
        Ok(got)
    }

    async fn commit(&self, receipts: &[String]) -> Result<()> {
        self.settle(receipts, jetstream::AckKind::Ack).await
    }

    async fn release(&self, receipts: &[String]) -> Result<()> {
        self.settle(receipts, jetstream::AckKind::Nak(None)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_lives_in_the_stream_of_its_family() {
        assert_eq!(
            stream_of("channel.push"),
            ("HERALD_CHANNEL".into(), "channel.>".into())
        );
        assert_eq!(
            stream_of("deadletter.channel.push"),
            ("HERALD_DEADLETTER".into(), "deadletter.>".into())
        );
        assert_eq!(stream_of("plain"), ("HERALD_PLAIN".into(), "plain".into()));
    }

    #[test]
    fn consumer_names_hold_no_subject_tokens() {
        assert_eq!(
            consumer_name("channel.push", "push-gateway"),
            "push-gateway__channel_push"
        );
        assert_eq!(consumer_name("channel.>", "audit"), "audit__channel_A");
    }
}
