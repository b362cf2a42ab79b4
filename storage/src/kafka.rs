//! The bus on Kafka (`kafka://host:port[,host:port...]`), through librdkafka (the `rdkafka`
//! crate, bundled build).
//!
//! # Design
//!
//! - **Topics** are created by [`Bus::subscribe`] (so by `herald migrate` and every role's
//!   start) with the URL's `partitions` (default 16) and `replication` (default 1; 3 on a
//!   production cluster), and `retention_hours` (default 168) as `retention.ms`. A consumer
//!   group needs no declaring on Kafka: a group without committed offsets starts at the
//!   earliest message kept.
//! - **Publishing**: one idempotent producer per process (`enable.idempotence`, `acks=all`),
//!   messages keyed by their key (murmur2, as the Java client, so a key keeps its partition and
//!   its order); `publish` returns when every message of the call is acknowledged.
//! - **A member** ([`Bus::consumer`]) is one consumer client in the group (`enable.auto.commit`
//!   off), shared by the process's tasks. It tracks per assigned partition the offsets it has
//!   handed out and not finished; `commit` marks one finished and commits the contiguous
//!   prefix (the lowest unfinished offset, or one past the highest handed out), so completions
//!   may come in any order and nothing unfinished is ever committed past. `release` hands the
//!   message out again from this member (Kafka has no per-message redelivery). A commit the
//!   group coordinator does not answer within 10 s fails (`Unavailable`) instead of holding its
//!   caller, and its position is sent again with the partition's next commit.
//! - **Rebalances**: before partitions are revoked the member commits their finished prefix and
//!   forgets them (later commits of their receipts are ignored: the receipt carries the
//!   assignment's generation); their unfinished messages go to the new owner from the
//!   committed offset. At least once, duplicates bounded by what was in flight.
//! - **Leaving**: a dropped member closes (leaves its group, committing its finished prefix) on
//!   a thread of its own, never on a runtime thread nor in the way of a runtime's shutdown;
//!   [`wait_for_closes`] gives a stopping process's closes a bounded time.
//! - **Lag** is the high watermark minus the committed offset, summed over partitions.
//!   **Replay** commits the target offsets for the group (the earliest kept, the offsets of a
//!   time, or an offset) while it has no member connected (Kafka refuses otherwise: stop the
//!   group's consumers first).
//!
//! With `prefix=P` every topic and group is named `P.<name>` (deployments sharing a cluster).
//! Family subscriptions (`channel.>`) subscribe to the regular expression `^channel\..*`.
//! Kafka keeps no delivery count: [`Delivery::attempt`] counts this member's releases only.

use crate::{url, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use herald_core::model::{Delivery, OutMessage};
use herald_core::ports::{Bus, Consumer, ReplayFrom};
use herald_core::{Error, Result};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Round trips to the cluster (metadata, commits, watermarks) give up after this.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Params {
    brokers: String,
    partitions: i32,
    replication: i32,
    retention_hours: u64,
    session_timeout_ms: u32,
    /// Put before every topic and group name (`<prefix>.<name>`): deployments (or test runs)
    /// sharing one cluster stay apart.
    prefix: Option<String>,
}

impl Params {
    fn parse(url: &BackendUrl) -> Result<Params> {
        let (base, query) = url::split_query(&url.raw);
        let brokers = base
            .strip_prefix("kafka://")
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::invalid("a Kafka URL is kafka://host:port[,host:port...]"))?
            .trim_end_matches('/')
            .to_owned();
        let mut p = Params {
            brokers,
            partitions: 16,
            replication: 1,
            retention_hours: 168,
            session_timeout_ms: 10_000,
            prefix: None,
        };
        for (k, v) in query {
            let bad =
                || Error::invalid(format!("kafka URL parameter `{k}`: `{v}` is not a number"));
            match k.as_str() {
                "partitions" => p.partitions = v.parse().map_err(|_| bad())?,
                "replication" => p.replication = v.parse().map_err(|_| bad())?,
                "retention_hours" => p.retention_hours = v.parse().map_err(|_| bad())?,
                "session_timeout_ms" => p.session_timeout_ms = v.parse().map_err(|_| bad())?,
                "prefix" if !v.is_empty() => p.prefix = Some(v),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown kafka URL parameter `{other}` (known: partitions, replication, \
                         retention_hours, session_timeout_ms, prefix)"
                    )))
                }
            }
        }
        if p.partitions < 1 || p.replication < 1 {
            return Err(Error::invalid(
                "kafka URL: partitions and replication must be at least 1",
            ));
        }
        Ok(p)
    }

    /// A topic or group name as the cluster knows it.
    fn name(&self, name: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{name}"),
            None => name.to_owned(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }
}

fn kafka_error(what: &str, e: KafkaError) -> Error {
    Error::unavailable(format!("kafka: {what}"), e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, Error> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("kafka client task").with_source(e))?
}

/// `call` (a round trip to the cluster), or `Unavailable` once `limit` has passed without an
/// answer. The blocking thread of a call that never returns stays with librdkafka; the caller
/// goes on.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(Error::unavailable(
            format!("kafka: {what}: no answer within {limit:?}"),
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )),
    }
}

/// The Kafka subscription of a Herald topic: the topic, or a regular expression for a family
/// pattern (`channel.>` → `^channel\..*`).
fn kafka_subscription(topic: &str) -> String {
    match topic.strip_suffix('>') {
        Some(prefix) if prefix.is_empty() || prefix.ends_with('.') => {
            format!("^{}.*", prefix.replace('.', "\\."))
        }
        _ => topic.to_owned(),
    }
}

pub struct KafkaBus {
    params: Params,
    producer: FutureProducer,
    /// Creates topics and answers `ping` (asking for one topic, which it never auto-creates).
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Topics known to exist (created or found by this process).
    created: Mutex<HashSet<String>>,
    /// One metadata client per group, for lag and replay.
    inspectors: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl KafkaBus {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let params = Params::parse(url)?;
        let producer: FutureProducer = params
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|e| kafka_error("creating the producer", e))?;
        let admin = params
            .client()
            .set("allow.auto.create.topics", "false")
            .create()
            .map(Arc::new)
            .map_err(|e| kafka_error("creating the admin client", e))?;
        let bus = KafkaBus {
            params,
            producer,
            admin,
            created: Mutex::new(HashSet::new()),
            inspectors: Mutex::new(HashMap::new()),
        };
        bus.ping().await?;
        Ok(bus)
    }

    fn inspector(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        if let Some(c) = self.inspectors.lock().get(group) {
            return Ok(c.clone());
        }
        let c: BaseConsumer = self
            .params
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| kafka_error("creating a metadata client", e))?;
        let c = Arc::new(c);
        self.inspectors.lock().insert(group.to_owned(), c.clone());
        Ok(c)
    }

    /// The topics a subscription covers, with their partitions.
    async fn partitions(&self, topic: &str, group: &str) -> Result<Vec<(String, Vec<i32>)>> {
        let inspector = self.inspector(group)?;
        let topic = topic.to_owned();
        blocking(move || {
            let pattern = topic.strip_suffix('>');
            let md = inspector
                .fetch_metadata(
                    if pattern.is_some() {
                        None
                    } else {
                        Some(&topic)
                    },
                    TIMEOUT,
                )
                .map_err(|e| kafka_error("reading metadata", e))?;
            Ok(md
                .topics()
                .iter()
                .filter(|t| match pattern {
                    Some(prefix) => t.name().starts_with(prefix) && !t.name().starts_with("__"),
                    None => t.name() == topic,
                })
                .filter(|t| t.error().is_none())
                .map(|t| {
                    (
                        t.name().to_owned(),
                        t.partitions().iter().map(|p| p.id()).collect(),
                    )
                })
                .collect())
        })
        .await
    }

    /// Per partition: (topic, partition, committed offset or None, low, high watermark).
    async fn positions(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Vec<(String, i32, Option<i64>, i64, i64)>> {
        let topics = self.partitions(topic, group).await?;
        let inspector = self.inspector(group)?;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, ps) in &topics {
                for p in ps {
                    tpl.add_partition(t, *p);
                }
            }
            let committed = inspector
                .committed_offsets(tpl, TIMEOUT)
                .map_err(|e| kafka_error("reading committed offsets", e))?;
            let mut out = Vec::new();
            for e in committed.elements() {
                let (low, high) = inspector
                    .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
                    .map_err(|e| kafka_error("reading watermarks", e))?;
                let committed = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                out.push((e.topic().to_owned(), e.partition(), committed, low, high));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn ping(&self) -> Result<()> {
        // One topic's metadata, not the cluster's: a readiness probe must not cost more with
        // every topic of every deployment sharing the cluster (on tansu the whole list took
        // 20 ms at 2,600 topics and 115 ms at 6,000). The topic need not exist yet.
        let admin = self.admin.clone();
        let topic = self.params.name(herald_core::topics::BATCHES);
        blocking(move || {
            admin
                .inner()
                .fetch_metadata(Some(&topic), TIMEOUT)
                .map(|_| ())
                .map_err(|e| kafka_error("cannot reach the cluster", e))
        })
        .await
    }

    async fn subscribe(&self, topic: &str, _group: &str) -> Result<()> {
        let topic = &self.params.name(topic);
        if topic.ends_with('>') || self.created.lock().contains(topic) {
            return Ok(());
        }
        let retention = (self.params.retention_hours * 3_600_000).to_string();
        let new = NewTopic::new(
            topic,
            self.params.partitions,
            TopicReplication::Fixed(self.params.replication),
        )
        .set("retention.ms", &retention);
        let results = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(|e| kafka_error("creating topics", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::unavailable(
                        format!("kafka: creating topic `{name}`"),
                        KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        self.created.lock().insert(topic.to_owned());
        Ok(())
    }

    async fn publish(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        let topic = &self.params.name(topic);
        let sends = messages.iter().map(|m| {
            let mut record = FutureRecord::to(topic).payload(&m.payload);
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            self.producer.send(record, TIMEOUT)
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| kafka_error("publishing", e))?;
        }
        Ok(())
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<dyn Consumer>> {
        let (topic, group) = (&self.params.name(topic), &self.params.name(group));
        let state = Arc::new(Mutex::new(MemberState::default()));
        let context = MemberContext {
            state: state.clone(),
        };
        let consumer: StreamConsumer<MemberContext> = self
            .params
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.params.session_timeout_ms.to_string(),
            )
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create_with_context(context)
            .map_err(|e| kafka_error("creating a consumer", e))?;
        consumer
            .subscribe(&[&kafka_subscription(topic)])
            .map_err(|e| kafka_error("subscribing", e))?;
        Ok(Arc::new(KafkaMember {
            consumer: Arc::new(consumer),
            state,
        }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let (topic, group) = (&self.params.name(topic), &self.params.name(group));
        Ok(self
            .positions(topic, group)
            .await?
            .into_iter()
            .map(|(_, _, committed, low, high)| (high - committed.unwrap_or(low).max(low)).max(0))
            .sum::<i64>() as u64)
    }

    async fn replay(
        &self,
        topic: &str,
        group: &str,
        from: ReplayFrom,
        dry_run: bool,
    ) -> Result<u64> {
        let (topic, group) = (&self.params.name(topic), &self.params.name(group));
        let positions = self.positions(topic, group).await?;
        let inspector = self.inspector(group)?;
        let group = group.to_owned();
        blocking(move || {
            // Target offset per partition.
            let mut targets: Vec<(String, i32, i64, i64)> = Vec::new();
            match from {
                ReplayFrom::Earliest => {
                    for (t, p, _, low, high) in &positions {
                        targets.push((t.clone(), *p, *low, *high));
                    }
                }
                ReplayFrom::Offset(o) => {
                    let o = i64::try_from(o).unwrap_or(i64::MAX);
                    for (t, p, _, low, high) in &positions {
                        targets.push((t.clone(), *p, o.clamp(*low, *high), *high));
                    }
                }
                ReplayFrom::Time(at) => {
                    let mut tpl = TopicPartitionList::new();
                    for (t, p, _, _, _) in &positions {
                        tpl.add_partition_offset(t, *p, Offset::Offset(at.timestamp_millis()))
                            .map_err(|e| kafka_error("building a partition list", e))?;
                    }
                    let found = inspector
                        .offsets_for_times(tpl, TIMEOUT)
                        .map_err(|e| kafka_error("finding offsets for a time", e))?;
                    for (t, p, _, low, high) in &positions {
                        let at = found
                            .find_partition(t, *p)
                            .map(|e| match e.offset() {
                                Offset::Offset(o) => o,
                                _ => *high, // nothing published since: the end
                            })
                            .unwrap_or(*high);
                        targets.push((t.clone(), *p, at.clamp(*low, *high), *high));
                    }
                }
            }
            let count: i64 = targets.iter().map(|(_, _, at, high)| high - at).sum();
            if dry_run {
                return Ok(count.max(0) as u64);
            }
            let mut tpl = TopicPartitionList::new();
            for (t, p, at, _) in &targets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*at))
                    .map_err(|e| kafka_error("building a partition list", e))?;
            }
            inspector
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| match e {
                    KafkaError::ConsumerCommit(
                        RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::RebalanceInProgress,
                    ) => Error::conflict(format!(
                    "group `{group}` has members connected; stop its consumers and replay again"
                )),
                    e => kafka_error("committing the replay position", e),
                })?;
            Ok(count.max(0) as u64)
        })
        .await
    }
}

/// What a member tracks between its polls, commits and rebalances.
#[derive(Default)]
struct MemberState {
    /// Raised at every assignment: receipts of an earlier one are stale.
    generation: u64,
    partitions: HashMap<(String, i32), Track>,
    /// Released messages, handed out again by the next polls.
    again: VecDeque<Delivery>,
}

impl MemberState {
    /// A commit of `tpl` that failed or timed out: its positions count as not committed.
    fn forget_commits(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let (Some(track), Offset::Offset(o)) = (self.partitions.get_mut(&key), e.offset()) {
                if track.committed == Some(o) {
                    track.committed = None;
                }
            }
        }
    }
}

/// One assigned partition.
struct Track {
    generation: u64,
    /// Handed out and not finished (a released message stays here until committed).
    open: BTreeMap<i64, Delivery>,
    /// One past the highest offset handed out.
    next: Option<i64>,
    committed: Option<i64>,
}

impl Track {
    fn new(generation: u64) -> Track {
        Track {
            generation,
            open: BTreeMap::new(),
            next: None,
            committed: None,
        }
    }

    /// Where the group may resume: the lowest unfinished offset, or one past the highest
    /// handed out.
    fn position(&self) -> Option<i64> {
        self.open.keys().next().copied().or(self.next)
    }
}

struct MemberContext {
    state: Arc<Mutex<MemberState>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // Commit what is finished of the partitions going away, then forget them.
        let mut tpl = TopicPartitionList::new();
        {
            let mut state = self.state.lock();
            for e in revoked.elements() {
                let key = (e.topic().to_owned(), e.partition());
                if let Some(track) = state.partitions.remove(&key) {
                    if let Some(pos) = track.position() {
                        if track.committed.is_none_or(|c| pos > c) {
                            let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(pos));
                        }
                    }
                }
                state
                    .again
                    .retain(|d| receipt_partition(&d.receipt).as_ref() != Some(&key));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing revoked partitions failed; their finished messages will be delivered again");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let mut state = self.state.lock();
            state.generation += 1;
            let generation = state.generation;
            for e in assigned.elements() {
                state.partitions.insert(
                    (e.topic().to_owned(), e.partition()),
                    Track::new(generation),
                );
            }
        }
    }
}

/// A receipt: `<generation>:<partition>:<offset>:<topic>` (Kafka topic names have no `:`).
fn receipt(generation: u64, topic: &str, partition: i32, offset: i64) -> String {
    format!("{generation}:{partition}:{offset}:{topic}")
}

fn parse_receipt(r: &str) -> Option<(u64, String, i32, i64)> {
    let mut parts = r.splitn(4, ':');
    let generation = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    Some((generation, topic, partition, offset))
}

fn receipt_partition(r: &str) -> Option<(String, i32)> {
    parse_receipt(r).map(|(_, t, p, _)| (t, p))
}

struct KafkaMember {
    consumer: Arc<StreamConsumer<MemberContext>>,
    state: Arc<Mutex<MemberState>>,
}

/// A message's create time (the producer sets it); now for a message without one.
fn timestamp(ms: Option<i64>) -> DateTime<Utc> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_else(Utc::now)
}

impl KafkaMember {
    /// Records a message handed out (under the current assignment's generation).
    fn track(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
        let mut state = self.state.lock();
        let generation = state.generation;
        let key = (m.topic().to_owned(), m.partition());
        let track = state
            .partitions
            .entry(key)
            .or_insert_with(|| Track::new(generation));
        let d = Delivery {
            receipt: receipt(track.generation, m.topic(), m.partition(), m.offset()),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().unwrap_or_default().to_vec(),
            attempt: 1,
            published_at: timestamp(m.timestamp().to_millis()),
        };
        track.open.insert(m.offset(), d.clone());
        track.next = Some(track.next.map_or(m.offset() + 1, |n| n.max(m.offset() + 1)));
        d
    }

    fn settle(&self, receipts: &[String], again: bool) -> Result<TopicPartitionList> {
        let mut state = self.state.lock();
        let mut touched = HashSet::new();
        for r in receipts {
            let (generation, topic, partition, offset) = parse_receipt(r)
                .ok_or_else(|| Error::invalid(format!("malformed bus receipt `{r}`")))?;
            let key = (topic, partition);
            let Some(track) = state.partitions.get_mut(&key) else {
                continue; // rebalanced away: the new owner has it
            };
            if track.generation != generation {
                continue;
            }
            if again {
                if let Some(d) = track.open.get_mut(&offset) {
                    d.attempt += 1;
                    let d = d.clone();
                    state.again.push_back(d);
                }
            } else if track.open.remove(&offset).is_some() {
                touched.insert(key);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for key in touched {
            let Some(track) = state.partitions.get_mut(&key) else {
                continue;
            };
            if let Some(pos) = track.position() {
                if track.committed.is_none_or(|c| pos > c) {
                    tpl.add_partition_offset(&key.0, key.1, Offset::Offset(pos))
                        .map_err(|e| kafka_error("building a partition list", e))?;
                    track.committed = Some(pos);
                }
            }
        }
        Ok(tpl)
    }
}

impl Drop for KafkaMember {
    fn drop(&mut self) {
        close_in_background(self.consumer.clone(), self.state.clone());
    }
}

/// Closes a member's consumer on a thread of its own. Closing blocks (the member leaves the
/// group, committing the finished prefix of its partitions on the way out) and librdkafka
/// bounds none of it: on a runtime thread it would stall every task there, and on the
/// runtime's blocking pool it would hold up the runtime's shutdown, which waits for that pool
/// without end. A test process once hung 53 minutes in a closing member's drop on tansu. A
/// thread of its own keeps both free; [`wait_for_closes`] lets a process that is shutting down
/// give its closes a bounded time to finish.
///
/// A member that has not finished joining first finishes: a member leaving in the middle of
/// the group's formation leaves some brokers' group stuck (tansu, in the conformance suite's
/// `a_member_that_leaves_while_the_group_forms_does_not_stall_the_next`), and a join takes a
/// few seconds at most.
fn close_in_background(
    consumer: Arc<StreamConsumer<MemberContext>>,
    state: Arc<Mutex<MemberState>>,
) {
    // Counted until the thread ends, however it ends; with no thread to be had, at once (the
    // consumer then closes where its last handle drops).
    let closing = CLOSING.started();
    let _ = std::thread::Builder::new()
        .name("herald-kafka-close".into())
        .spawn(move || {
            let _closing = closing;
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                rt.block_on(async {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                    while state.lock().generation == 0 && tokio::time::Instant::now() < deadline {
                        // Messages received meanwhile are not handed out: uncommitted, they go
                        // to the next owner.
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
                    }
                });
            }
            // The close runs where the last handle goes: wait for the member's own (dropped
            // right after its `drop`) and for commits in flight, so that it is this thread.
            let mut consumer = consumer;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match Arc::try_unwrap(consumer) {
                    Ok(last) => return drop(last),
                    Err(shared) if std::time::Instant::now() < deadline => {
                        consumer = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
}

/// Consumers of this process being closed in the background.
struct Closing {
    count: std::sync::Mutex<usize>,
    none_left: std::sync::Condvar,
}

static CLOSING: Closing = Closing {
    count: std::sync::Mutex::new(0),
    none_left: std::sync::Condvar::new(),
};

impl Closing {
    /// One more close under way, until the returned mark drops.
    fn started(&'static self) -> ClosingMark {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        ClosingMark(self)
    }

    fn finished(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.none_left.notify_all();
        }
    }
}

/// A close under way, counted finished when dropped.
struct ClosingMark(&'static Closing);

impl Drop for ClosingMark {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// Waits up to `timeout` for the consumers this process is closing (see
/// [`close_in_background`]) to have left their groups; true if none is left. A process calls
/// it on its way out, after its runtime is gone: a member that leaves its group hands its
/// partitions over at once, where one that vanishes holds them until its session times out.
pub fn wait_for_closes(timeout: Duration) -> bool {
    let n = CLOSING.count.lock().unwrap_or_else(|e| e.into_inner());
    let (n, _) = CLOSING
        .none_left
        .wait_timeout_while(n, timeout, |n| *n > 0)
        .unwrap_or_else(|e| e.into_inner());
    *n == 0
}

#[async_trait]
impl Consumer for KafkaMember {
    async fn poll(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        {
            let mut state = self.state.lock();
            while out.len() < max {
                match state.again.pop_front() {
                    Some(d) => out.push(d),
                    None => break,
                }
            }
        }
        if !out.is_empty() || max == 0 {
            return Ok(out);
        }
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(m) => m.map_err(|e| kafka_error("receiving", e))?,
        };
        out.push(self.track(&first));
        drop(first);
        while out.len() < max {
            use futures::FutureExt;
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(self.track(&m)),
                Some(Err(e)) => return Err(kafka_error("receiving", e)),
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&self, receipts: &[String]) -> Result<()> {
        let tpl = self.settle(receipts, false)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let sent = tpl.clone();
        let commit = blocking(move || match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => Ok(()),
            // The group rebalanced meanwhile: the partitions' new owner resumes from the last
            // commit that went through (at least once).
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId,
            )) => Ok(()),
            Err(e) => Err(kafka_error("committing", e)),
        });
        // librdkafka's synchronous commit has no deadline of its own: a group coordinator that
        // stops answering would hold the caller (a worker's step, so its worker) for good.
        let outcome = within(TIMEOUT, "committing", commit).await;
        if outcome.is_err() {
            // Not known to have landed: the partitions' next commit sends their position again.
            self.state.lock().forget_commits(&sent);
        }
        outcome
    }

    async fn release(&self, receipts: &[String]) -> Result<()> {
        self.settle(receipts, true).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_round_trip_without_an_answer_is_unavailable_once_its_limit_has_passed() {
        let started = std::time::Instant::now();
        let stuck = blocking(|| {
            std::thread::sleep(Duration::from_secs(1));
            Ok(())
        });
        let err = within(Duration::from_millis(100), "committing", stuck)
            .await
            .expect_err("no answer within the limit");
        assert_eq!(err.kind, herald_core::ErrorKind::Unavailable);
        assert!(err.to_string().contains("committing"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let answered = within(Duration::from_secs(5), "committing", async { Ok(7) }).await;
        assert_eq!(answered.unwrap(), 7);
    }

    #[test]
    fn a_failed_commit_leaves_its_position_to_be_committed_again() {
        let mut state = MemberState::default();
        let mut track = Track::new(0);
        track.next = Some(6);
        track.committed = Some(6);
        state.partitions.insert(("t".to_owned(), 1), track);
        let mut other = Track::new(0);
        other.committed = Some(9);
        state.partitions.insert(("t".to_owned(), 2), other);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 1, Offset::Offset(6)).unwrap();
        // A later commit of partition 2 went through; the failed one is of an older position.
        tpl.add_partition_offset("t", 2, Offset::Offset(8)).unwrap();
        state.forget_commits(&tpl);
        assert_eq!(state.partitions[&("t".to_owned(), 1)].committed, None);
        assert_eq!(state.partitions[&("t".to_owned(), 2)].committed, Some(9));
        // The next commit of partition 1 carries its position again.
        let track = &state.partitions[&("t".to_owned(), 1)];
        assert!(track
            .committed
            .is_none_or(|c| track.position().unwrap() > c));
    }

    #[test]
    fn family_patterns_become_regular_expressions() {
        assert_eq!(kafka_subscription("channel.push"), "channel.push");
        assert_eq!(kafka_subscription("channel.>"), "^channel\\..*");
        assert_eq!(kafka_subscription(">"), "^.*");
    }

    #[test]
    fn receipts_round_trip_and_reject_garbage() {
        let r = receipt(3, "channel.push", 2, 41);
        assert_eq!(
            parse_receipt(&r),
            Some((3, "channel.push".to_owned(), 2, 41))
        );
        assert_eq!(parse_receipt("x:1:2:t"), None);
        assert_eq!(parse_receipt("1:2"), None);
    }

    #[test]
    fn the_position_is_the_lowest_unfinished_offset_or_past_the_last() {
        let d = |o: i64| Delivery {
            receipt: receipt(1, "t", 0, o),
            key: None,
            payload: vec![],
            attempt: 1,
            published_at: Utc::now(),
        };
        let mut t = Track::new(1);
        t.next = Some(13);
        assert_eq!(t.position(), Some(13));
        t.open.insert(10, d(10));
        t.open.insert(12, d(12));
        assert_eq!(t.position(), Some(10), "10 unfinished: nothing past it");
        t.open.remove(&10);
        assert_eq!(t.position(), Some(12));
    }

    #[test]
    fn urls_carry_the_topic_settings() {
        let p = Params::parse(
            &BackendUrl::parse("kafka://a:9092,b:9092?partitions=4&replication=3&prefix=eu")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.name("channel.push"), "eu.channel.push");
        assert_eq!(p.brokers, "a:9092,b:9092");
        assert_eq!((p.partitions, p.replication), (4, 3));
        assert!(Params::parse(&BackendUrl::parse("kafka://a:9092?parts=4").unwrap()).is_err());
        assert!(Params::parse(&BackendUrl::parse("kafka://a:9092?partitions=0").unwrap()).is_err());
    }
}
