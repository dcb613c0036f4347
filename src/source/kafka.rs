//! Kafka source: an rdkafka consumer in a consumer group.
//!
//! Offsets are never auto-committed: the runtime commits, per partition, the
//! oldest offset its windows still need, with the last offset whose
//! evaluations were delivered stored in the commit metadata (`dw1:hw=N;at=MS`).
//! After a restart the windows are rebuilt by replaying from the committed
//! offset and evaluations up to `hw` are not sent again (DESIGN §5). With a
//! checkpoint topic, `hw` is also recorded there ([`super::checkpoint`]).
//! Each mark also carries the time it was written (`;at=MS`): evaluations
//! delivered after it but not yet covered by a mark (a process killed in
//! between) were produced after that time, which bounds the search for them
//! (the runtime's scan of published evaluations).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::RawRecord;
use super::checkpoint::Checkpoints;
pub use super::marks::{Delivered, Position, now_ms};
use super::marks::{meta, parse_meta};
use super::properties::ClientRole;
use crate::config::{KafkaSource, StartPosition};

/// How long a revocation waits for the batch in processing to be delivered
/// and committed before it lets the partitions go (the group waits meanwhile).
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// Builds a client config from brokers and the pass-through properties that
/// apply to a client of `role`. Values are never logged (they may hold secrets).
pub fn client_config(role: ClientRole, brokers: &str, props: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in super::properties::for_role(role, props) {
        c.set(k, v);
    }
    c
}

/// A producer for output topics: acks=all, so a delivered record is on every in-sync replica.
pub fn producer(brokers: &str, props: &BTreeMap<String, String>) -> KafkaResult<FutureProducer> {
    let mut c = client_config(ClientRole::Producer, brokers, props);
    c.set("acks", "all")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5");
    c.create()
}

/// `src` with `group.instance.id` = `id`: the group consumer becomes a
/// static member (KIP-345). A restarted instance with the same id takes its
/// old place in the group without a rebalance, so it gets its partitions
/// back at once instead of after the dead one's `session.timeout.ms`; a
/// clean stop does not leave the group either (the partitions wait for the
/// same id until the session times out). Kafka's rule for the id: at most
/// 249 characters of `[a-zA-Z0-9._-]`.
pub fn static_member(src: &KafkaSource, id: &str) -> Result<KafkaSource, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 249 || !id.chars().all(legal) {
        return Err(format!(
            "instance id `{id}`: give 1 to 249 letters, digits, `.`, `_` or `-` (it becomes the consumer's group.instance.id)"
        ));
    }
    let mut src = src.clone();
    if let Some(old) = src.properties.insert("group.instance.id".into(), id.into())
        && old != id
    {
        tracing::info!(configured = %old, used = %id, "--instance-id overrides source.properties' group.instance.id");
    }
    Ok(src)
}

#[derive(Clone, Copy, Debug)]
enum Start {
    Committed,
    Earliest,
    Latest,
    Timestamp(i64),
}

/// What the consumer context shares with the consumer's owner.
#[derive(Default, Debug)]
struct Shared {
    /// Per partition: the last mark of an earlier run (or assignment).
    delivered: BTreeMap<i32, Delivered>,
    /// Partitions marked in this assignment.
    marked: BTreeSet<i32>,
    errors: Vec<String>,
    /// Lags per partition, from librdkafka's statistics.
    lag: BTreeMap<i32, PartitionLag>,
    /// Partitions assigned now: only these are committed.
    assigned: BTreeSet<i32>,
    /// The last positions the runtime committed, per partition (next offset
    /// and mark): committed again, synchronously, when the partition is
    /// revoked, so that its next owner starts exactly where this instance stopped.
    positions: BTreeMap<i32, (i64, Delivered)>,
}

/// How far behind one partition is, in messages. The end is the last
/// stable offset (the high watermark under `isolation.level:
/// read_uncommitted`), the position the offset after the last record read.
///
/// `read` + `commit_hold` = `committed`: what is waiting to be read, and
/// what has been read but is not committed yet because open windows still
/// need it (a restart reads it again to rebuild them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    /// end − position: waiting to be read. 0 once everything is read.
    pub read: i64,
    /// position − committed: read, held back by open windows.
    pub commit_hold: i64,
    /// end − committed, what Kafka's own tools (kafka-consumer-groups) call lag.
    pub committed: i64,
}

impl PartitionLag {
    /// From librdkafka's statistics of one partition; `None` until its end
    /// and a position (or a committed offset) are known.
    fn from_stats(p: &rdkafka::statistics::Partition) -> Option<Self> {
        let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
        let committed = (p.committed_offset >= 0).then_some(p.committed_offset);
        let position = if p.app_offset >= 0 {
            Some(p.app_offset)
        } else {
            committed
        }?;
        if end < 0 {
            return None;
        }
        let committed = committed.unwrap_or(position);
        Some(Self {
            read: (end - position).max(0),
            commit_hold: (position - committed).max(0),
            committed: (end - committed).max(0),
        })
    }
}

/// Rebalance bookkeeping between the consumer callback (which runs inside
/// `recv`, on the reading task) and the processing task. Every rebalance
/// starts a new generation; records read in an older one are discarded,
/// since the partitions are read again from their committed offsets.
/// The generation is written only while `in_flight` is locked, so a batch
/// that [`KafkaConsumer::begin`]s is either of the current generation or
/// waited for; it is read without the lock on every record.
#[derive(Default, Debug)]
struct Gate {
    generation: AtomicU64,
    /// A batch of the current generation is being delivered and committed.
    in_flight: Mutex<bool>,
    done: Condvar,
}

type SharedGate = Arc<Gate>;

struct Ctx {
    topic: String,
    start: Start,
    shared: Arc<Mutex<Shared>>,
    gate: SharedGate,
    checkpoints: Option<Arc<Checkpoints>>,
}

/// How long an assignment may take to read the checkpoint topic to its end.
const CHECKPOINT_READ: Duration = Duration::from_secs(30);

impl Ctx {
    /// Starts a new generation; waits (bounded) until the batch in
    /// processing, if any, is delivered and committed.
    fn next_generation(&self) {
        let mut in_flight = self.gate.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.gate.generation.fetch_add(1, Ordering::SeqCst);
        if !*in_flight {
            return;
        }
        let wait = move || {
            let deadline = Instant::now() + REVOKE_WAIT;
            while *in_flight {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(
                        "revoking partitions while a batch is still being delivered; its evaluations may be sent again by the next owner"
                    );
                    return;
                }
                in_flight = self
                    .gate
                    .done
                    .wait_timeout(in_flight, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        // The callback runs on the reading task: on a multi-threaded runtime
        // the worker hands its other tasks away while it waits. A
        // single-threaded runtime cannot finish the batch meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => tracing::warn!("revoking partitions while a batch is still being delivered (single-threaded runtime)"),
        }
    }

    /// Takes the partitions `tpl`: what was delivered from each before,
    /// where to start, then the assignment itself.
    fn assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, shared: &mut Shared) {
        let marks = self.checkpoint_marks(tpl);
        let committed = base
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the committed offsets' metadata");
                tpl.clone()
            });
        self.read_delivered(&marks, &committed, shared);
        self.set_start(base, tpl, shared);
        for e in tpl.elements() {
            // `Invalid`: from the committed offset (shown), else per auto.offset.reset.
            let commit = committed
                .find_partition(&self.topic, e.partition())
                .map(|c| c.offset())
                .unwrap_or(Offset::Invalid);
            tracing::info!(topic = %self.topic, partition = e.partition(), start = ?e.offset(), committed = ?commit, "partition assigned");
            shared.assigned.insert(e.partition());
        }
        if let Err(e) = base.assign(tpl) {
            shared.errors.push(format!("assign: {e}"));
        }
    }

    /// The checkpoint topic's marks (none without one), its references kept
    /// for the partitions `tpl` only.
    fn checkpoint_marks(&self, tpl: &TopicPartitionList) -> BTreeMap<i32, Delivered> {
        let Some(c) = &self.checkpoints else {
            return BTreeMap::new();
        };
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        c.keep_references_of(&partitions);
        c.delivered(CHECKPOINT_READ).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "evaluations replayed on this assignment may be sent again");
            BTreeMap::new()
        })
    }

    /// What was delivered before from each partition: the group's commit
    /// metadata (`committed`) and the checkpoint topic's `marks`, the higher
    /// of the two (both are written only after delivery). Checkpoints count
    /// even where the group has no commit: a group that is rebalancing
    /// refuses commits, not checkpoints.
    fn read_delivered(&self, marks: &BTreeMap<i32, Delivered>, committed: &TopicPartitionList, shared: &mut Shared) {
        for e in committed.elements() {
            let meta = parse_meta(e.metadata());
            // The highest mark, and of equal ones the latest.
            match meta.max(marks.get(&e.partition()).copied()) {
                Some(hw) => {
                    shared.delivered.insert(e.partition(), hw);
                }
                // Committed by something else, or by a broker that
                // drops commit metadata (tansu 0.6 does).
                None if matches!(e.offset(), Offset::Offset(_)) => {
                    tracing::warn!(topic = %self.topic, partition = e.partition(), offset = ?e.offset(),
                    "committed offset without driftwatch's commit metadata (set source.checkpoint_topic for brokers that drop it): evaluations replayed from it are sent again")
                }
                None => {}
            }
        }
    }

    /// Sets where each partition of `tpl` starts, per `source.start`.
    fn set_start(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, shared: &mut Shared) {
        let set = |tpl: &mut TopicPartitionList, o: Offset| {
            let _ = tpl.set_all_offsets(o);
        };
        match self.start {
            Start::Committed => {}
            Start::Earliest => set(tpl, Offset::Beginning),
            Start::Latest => set(tpl, Offset::End),
            Start::Timestamp(ts) => {
                let mut q = tpl.clone();
                let _ = q.set_all_offsets(Offset::Offset(ts));
                match base.offsets_for_times(q, Duration::from_secs(10)) {
                    Ok(r) => {
                        for e in r.elements() {
                            let _ = tpl.set_partition_offset(&self.topic, e.partition(), e.offset());
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, ts, "cannot resolve the start timestamp to offsets");
                        shared.errors.push(format!("offsets for start timestamp {ts}: {e}"))
                    }
                }
            }
        }
    }

    /// Gives up the partitions `tpl`, committing where this instance got to
    /// in each: the next owner resumes from there.
    fn revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList, shared: &mut Shared) {
        let mut last = TopicPartitionList::new();
        for e in tpl.elements() {
            let p = e.partition();
            if let Some((next, delivered)) = shared.positions.remove(&p) {
                let mut x = last.add_partition(&self.topic, p);
                let _ = x.set_offset(Offset::Offset(next));
                x.set_metadata(meta(delivered));
            }
            shared.delivered.remove(&p);
            shared.marked.remove(&p);
            shared.assigned.remove(&p);
            tracing::info!(topic = %self.topic, partition = p, "partition revoked");
        }
        if last.count() > 0
            && let Err(e) = base.commit(&last, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "commit on revoke");
        }
        if let Err(e) = base.unassign() {
            shared.errors.push(format!("unassign: {e}"));
        }
    }
}

impl ClientContext for Ctx {
    /// librdkafka's periodic statistics (`statistics.interval.ms`): the
    /// lags per partition, without a broker round trip of our own.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (p, part) in &t.partitions {
                if let Some(lag) = PartitionLag::from_stats(part).filter(|_| *p >= 0) {
                    shared.lag.insert(*p, lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, base: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
            // Before the lock: the batch in processing needs it to commit.
            self.next_generation();
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let _in_flight = self.gate.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                self.gate.generation.fetch_add(1, Ordering::SeqCst);
                self.assign(base, tpl, &mut shared);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base, tpl, &mut shared),
            other => shared.errors.push(format!("rebalance error: {other:?}")),
        }
    }
}

/// A consumer of one topic.
pub struct KafkaConsumer {
    consumer: StreamConsumer<Ctx>,
    topic: String,
    shared: Arc<Mutex<Shared>>,
    gate: SharedGate,
    checkpoints: Option<Arc<Checkpoints>>,
}

/// A batch being delivered and committed (see [`KafkaConsumer::begin`]):
/// a revocation waits until it is dropped.
pub struct InFlight<'a>(&'a SharedGate);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.done.notify_all();
    }
}

impl KafkaConsumer {
    /// Creates the consumer and subscribes. `group_id` overrides the
    /// config's. With `checkpoints`, delivery marks are also recorded there
    /// (see [`KafkaConsumer::checkpoint`]) and read on each assignment.
    pub fn new(cfg: &KafkaSource, group_id: &str, checkpoints: Option<Checkpoints>) -> KafkaResult<Self> {
        let c = Self::create(cfg, group_id, checkpoints, ClientRole::Consumer)?;
        c.consumer.subscribe(&[&cfg.topic])?;
        Ok(c)
    }

    /// A consumer that does not join `group_id` but is told which
    /// partitions to read ([`Self::follow`]); it resumes each from the
    /// offset committed in `group_id` and commits there.
    pub fn follower(cfg: &KafkaSource, group_id: &str) -> KafkaResult<Self> {
        Self::create(cfg, group_id, None, ClientRole::Reader)
    }

    /// Reads exactly `partitions` of the topic (a follower), each from its
    /// committed offset (the earliest without one). Call it from the task
    /// that receives, between two receives: every record received after it
    /// is then of the new assignment (librdkafka drops records fetched for
    /// an assignment once it is replaced), and the caller tags them as such.
    pub fn follow(&self, partitions: &[i32]) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.topic, *p, Offset::Stored)?;
        }
        // Unassign first, so a partition kept is read again from its commit.
        self.consumer.unassign()?;
        self.consumer.assign(&tpl)?;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.assigned = partitions.iter().copied().collect();
        shared.positions.clear();
        Ok(())
    }

    /// The group's committed offsets of `partitions` (none for a partition
    /// without a commit); blocks up to `timeout`.
    pub fn committed(&self, partitions: &[i32], timeout: Duration) -> KafkaResult<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let c = self.consumer.committed_offsets(tpl, timeout)?;
        Ok(c.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// How many partitions the topic has (a metadata request; blocks up to `timeout`).
    pub fn partition_count(&self, timeout: Duration) -> KafkaResult<usize> {
        topic_partitions(self.consumer.client(), &self.topic, timeout).map(|p| p.len())
    }

    fn create(
        cfg: &KafkaSource,
        group_id: &str,
        checkpoints: Option<Checkpoints>,
        role: ClientRole,
    ) -> KafkaResult<Self> {
        let checkpoints = checkpoints.map(Arc::new);
        let start = match &cfg.start {
            StartPosition::Committed => Start::Committed,
            StartPosition::Earliest => Start::Earliest,
            StartPosition::Latest => Start::Latest,
            p => Start::Timestamp(p.timestamp_ms().ok().flatten().unwrap_or(0)),
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let gate = SharedGate::default();
        if let Some(s) = cfg.properties.get("partition.assignment.strategy")
            && s.contains("cooperative")
        {
            // Windows are dropped and rebuilt on each (eager) rebalance.
            return Err(KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "driftwatch needs an eager strategy (range or roundrobin; it rebuilds windows on each rebalance), not"
                    .into(),
                "partition.assignment.strategy".into(),
                s.clone(),
            ));
        }
        let mut c = client_config(role, &cfg.brokers, &cfg.properties);
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000");
        // Pass-through properties may override the above, except the commit ones we rely on.
        for (k, v) in super::properties::for_role(role, &cfg.properties) {
            if !matches!(
                k.as_str(),
                "enable.auto.commit" | "enable.auto.offset.store" | "group.id"
            ) {
                c.set(k, v);
            }
        }
        let consumer: StreamConsumer<Ctx> = c.create_with_context(Ctx {
            topic: cfg.topic.clone(),
            start,
            shared: shared.clone(),
            gate: gate.clone(),
            checkpoints: checkpoints.clone(),
        })?;
        Ok(Self {
            consumer,
            topic: cfg.topic.clone(),
            shared,
            gate,
            checkpoints,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The current rebalance generation: it changes whenever partitions are
    /// revoked or assigned.
    pub fn generation(&self) -> u64 {
        self.gate.generation.load(Ordering::SeqCst)
    }

    /// Marks a batch read in `generation` as being delivered and committed;
    /// `None` if a rebalance happened since (the batch must be discarded: its
    /// records are read again from the committed offsets). A revocation
    /// waits until the returned guard is dropped.
    pub fn begin(&self, generation: u64) -> Option<InFlight<'_>> {
        let mut in_flight = self.gate.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if self.gate.generation.load(Ordering::SeqCst) != generation {
            return None;
        }
        *in_flight = true;
        Some(InFlight(&self.gate))
    }

    /// Whether partitions are assigned.
    pub fn assigned(&self) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    /// Lags per partition (messages), as librdkafka last reported them.
    pub fn lag(&self) -> BTreeMap<i32, PartitionLag> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).lag.clone()
    }

    /// Next record; waits until one arrives.
    pub async fn recv(&self) -> KafkaResult<RawRecord> {
        let m = self.consumer.recv().await?;
        Ok(RawRecord {
            payload: m.payload().map(<[u8]>::to_vec),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        })
    }

    /// The partition's delivery mark from an earlier run (commit metadata
    /// and checkpoints), read when it was assigned.
    pub fn mark(&self, partition: i32) -> Option<Delivered> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delivered
            .get(&partition)
            .copied()
    }

    /// The partitions assigned now.
    pub fn assignment(&self) -> Vec<i32> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.assigned.iter().copied().collect()
    }

    /// Whether the partition has a delivery mark with its time, from an
    /// earlier run or written in this assignment.
    pub fn has_timed_mark(&self, partition: i32) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.marked.contains(&partition) || shared.delivered.get(&partition).is_some_and(|d| d.at_ms.is_some())
    }

    /// librdkafka's fatal error, once the consumer has one: it cannot go on
    /// (a static member fenced by another instance with its id, for one).
    pub fn fatal_error(&self) -> Option<String> {
        let (code, reason) = self.consumer.client().fatal_error()?;
        Some(match code {
            rdkafka::types::RDKafkaErrorCode::FencedInstanceId => format!(
                "another instance joined the group with this instance's id (group.instance.id), and the broker fenced this one; give each instance its own --instance-id ({reason})"
            ),
            _ => format!("fatal consumer error {code:?}: {reason}"),
        })
    }

    /// Rebalance errors since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()).errors)
    }

    /// Records in the checkpoint topic, if there is one, the `delivered`
    /// offsets of the partitions still assigned, stamped with the time now;
    /// waits for the broker.
    pub async fn checkpoint(&self, positions: &BTreeMap<i32, Position>) -> KafkaResult<()> {
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let at = now_ms();
        let own: Vec<(i32, Delivered)> = {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            positions
                .iter()
                .filter(|(p, _)| shared.assigned.contains(p))
                .map(|(p, pos)| (*p, pos.mark(Some(at))))
                .collect()
        };
        c.record(own.iter().copied()).await?;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (p, _) in own {
            if shared.assigned.contains(&p) {
                shared.marked.insert(p);
            }
        }
        Ok(())
    }

    /// Whether there is a checkpoint topic (for delivery marks and key states).
    pub fn has_checkpoints(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Saves key states in the checkpoint topic (nothing without one: see
    /// [`Self::has_checkpoints`]). Returns the keys whose reference could
    /// not be saved.
    pub async fn save_states(&self, states: &[super::checkpoint::KeyState]) -> KafkaResult<Vec<String>> {
        match &self.checkpoints {
            Some(c) => c.save_states(states).await,
            None => Ok(vec![]),
        }
    }

    /// Key states of `windows` saved by earlier runs (read when partitions
    /// were assigned), of the keys whose partitions are all assigned now.
    pub fn states(&self, windows: &str) -> Vec<super::checkpoint::KeyState> {
        let Some(c) = &self.checkpoints else {
            return vec![];
        };
        let assigned = self.assignment();
        c.states(windows, |s| {
            !s.partitions.is_empty() && s.partitions.iter().all(|p| assigned.contains(p))
        })
    }

    /// After the run's final synchronous commit: closing the consumer
    /// revokes its partitions, and the revocation then has nothing left to
    /// commit. It would only repeat that commit, and wait forever if the
    /// broker has gone by the time the consumer is dropped.
    pub fn finished(&self) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).positions.clear();
    }

    /// Commits, per partition, `next` (where a restart must resume reading)
    /// and `delivered` (the last offset whose evaluations are delivered),
    /// stamped with the time now. `Ok(false)`: not committed, as the group
    /// is rebalancing or the partitions were revoked (their next owner
    /// resumes from the previous commit); with [`CommitMode::Async`], `true`
    /// only says the commit was sent.
    pub fn commit(&self, positions: &BTreeMap<i32, Position>, mode: CommitMode) -> KafkaResult<bool> {
        let mut tpl = TopicPartitionList::new();
        let at = Some(now_ms());
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            // A partition revoked meanwhile belongs to another instance now.
            let own: Vec<_> = positions
                .iter()
                .filter(|(p, _)| shared.assigned.contains(p))
                .map(|(p, pos)| (*p, pos.next, pos.mark(at)))
                .collect();
            for (p, next, d) in own {
                shared.positions.insert(p, (next, d));
                shared.marked.insert(p);
                let mut e = tpl.add_partition(&self.topic, p);
                e.set_offset(Offset::Offset(next))?;
                e.set_metadata(meta(d));
            }
        }
        if tpl.count() == 0 {
            return Ok(positions.is_empty());
        }
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => Ok(true),
            // Nothing assigned any more (revoked meanwhile): nothing to commit.
            Err(KafkaError::ConsumerCommit(Code::NoOffset)) => Ok(false),
            // The group is rebalancing: the partitions' next owner (maybe this
            // instance) resumes from the last commit that went through.
            Err(KafkaError::ConsumerCommit(
                e @ (Code::RebalanceInProgress | Code::IllegalGeneration | Code::UnknownMemberId),
            )) => {
                tracing::warn!(error = %e, "commit refused during a rebalance; the next owner replays from the previous commit");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads partitions of `topic`, each from `next[p]` up to `end[p]`
/// (exclusive), handing every record to `f`. `next` advances as it reads,
/// also past offsets that hold no record (compaction, transaction markers).
/// Fails with `OperationTimedOut` if not done by `deadline`.
pub fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    next: &mut BTreeMap<i32, i64>,
    mut end: BTreeMap<i32, i64>,
    deadline: Instant,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> KafkaResult<()> {
    end.retain(|p, high| next.get(p).is_some_and(|n| n < high));
    if end.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for p in end.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(next[p]))?;
    }
    consumer.assign(&tpl)?;
    let result = loop {
        if end.is_empty() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                f(&m);
                next.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => break Err(e),
            None => {}
        }
        if let Ok(pos) = consumer.position() {
            for e in pos.elements() {
                if let Offset::Offset(o) = e.offset() {
                    let n = next.entry(e.partition()).or_insert(o);
                    *n = (*n).max(o);
                }
            }
        }
        end.retain(|p, high| next.get(p).is_some_and(|n| n < high));
    };
    let _ = consumer.unassign();
    result
}

/// Failure to find an offset by time.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("{topic}/{partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("{topic}/{partition}@{offset}: {what}")]
    Message {
        topic: String,
        partition: i32,
        offset: i64,
        what: String,
    },
}

/// Timestamp of the message at `offset` (waits at most `timeout`).
fn timestamp_at(c: &BaseConsumer, topic: &str, p: i32, offset: i64, timeout: Duration) -> Result<i64, SeekError> {
    let kafka = |source| SeekError::Kafka {
        topic: topic.into(),
        partition: p,
        source,
    };
    let message = |what: String| SeekError::Message {
        topic: topic.into(),
        partition: p,
        offset,
        what,
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(offset))
        .map_err(kafka)?;
    c.assign(&tpl).map_err(kafka)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == p && m.offset() >= offset => {
                return m
                    .timestamp()
                    .to_millis()
                    .ok_or_else(|| message(format!("message at {} without timestamp", m.offset())));
            }
            Some(Err(e)) => return Err(kafka(e)),
            _ => {}
        }
    }
    Err(message(format!("no message within {timeout:?}")))
}

/// The first offset in `[low, high)` whose message timestamp is ≥ `t` (or
/// `high`). Asks the broker (offsets-for-times) and checks the answer against
/// the messages around it; a broker that answers wrongly (librdkafka's mock
/// cluster answers "end" to every query) is overruled by a binary search over
/// message timestamps, which assumes timestamps rise with offsets. Leaves
/// `c` assigned to the partition.
pub fn offset_for_time(
    c: &BaseConsumer,
    topic: &str,
    p: i32,
    t: i64,
    (low, high): (i64, i64),
    timeout: Duration,
) -> Result<i64, SeekError> {
    if low >= high {
        return Ok(high);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(t))
        .map_err(|source| SeekError::Kafka {
            topic: topic.into(),
            partition: p,
            source,
        })?;
    let answer = c
        .offsets_for_times(tpl, timeout)
        .ok()
        .and_then(|r| r.find_partition(topic, p).map(|e| e.offset()));
    let candidate = match answer {
        Some(Offset::Offset(o)) => o.clamp(low, high),
        _ => high,
    };
    let ok_before = candidate == low || timestamp_at(c, topic, p, candidate - 1, timeout)? < t;
    let ok_at = candidate == high || timestamp_at(c, topic, p, candidate, timeout)? >= t;
    if ok_before && ok_at {
        return Ok(candidate);
    }
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if timestamp_at(c, topic, p, mid, timeout)? >= t {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// The partitions of `topic` (a metadata request; blocks up to `timeout`):
/// an error if the brokers do not know it or list no partition.
pub fn topic_partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<Vec<i32>> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let missing = || KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
    let t = md.topics().iter().find(|t| t.name() == topic).ok_or_else(missing)?;
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    let ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ps.is_empty() {
        return Err(missing());
    }
    Ok(ps)
}

/// Per partition, the range of offsets present: (low, high) watermarks.
pub fn watermarks(
    brokers: &str,
    props: &BTreeMap<String, String>,
    topic: &str,
) -> KafkaResult<BTreeMap<i32, (i64, i64)>> {
    let c: BaseConsumer = client_config(ClientRole::Admin, brokers, props).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let w = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            out.insert(p.id(), w);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Pass-through properties reach librdkafka: TLS and SASL settings are
    /// accepted (this build has OpenSSL), a CA file that does not exist is
    /// refused naming it, and a setting librdkafka does not know is refused
    /// by name.
    #[test]
    fn properties_reach_librdkafka() {
        for p in [
            props(&[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ]),
            props(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]),
        ] {
            let c = client_config(ClientRole::Consumer, "127.0.0.1:9", &p)
                .set("group.id", "g")
                .create::<BaseConsumer>();
            assert!(c.is_ok(), "{p:?}: {:?}", c.err());
        }
        let e = client_config(
            ClientRole::Consumer,
            "127.0.0.1:9",
            &props(&[("security.protocol", "SSL"), ("ssl.ca.location", "/nonexistent/ca.pem")]),
        )
        .create::<BaseConsumer>()
        .err()
        .expect("a missing CA file is refused")
        .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") || e.contains("ssl.ca.location"),
            "{e}"
        );
        let e = client_config(ClientRole::Consumer, "127.0.0.1:9", &props(&[("ssl.bogus", "x")]))
            .create::<BaseConsumer>()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ssl.bogus"), "{e}");
    }

    /// `--instance-id` becomes the group consumer's `group.instance.id`
    /// (over one in the properties); ids Kafka would refuse are refused
    /// here, saying what is allowed.
    #[test]
    fn an_instance_id_makes_a_static_member_and_must_be_legal() {
        let cfg = KafkaSource {
            brokers: "127.0.0.1:9".into(),
            topic: "t".into(),
            group_id: None,
            start: StartPosition::Committed,
            properties: props(&[("group.instance.id", "old")]),
            checkpoint_topic: None,
        };
        for id in ["driftwatch-0", "dw.pod_7", &"x".repeat(249)] {
            let s = static_member(&cfg, id).unwrap();
            assert_eq!(s.properties["group.instance.id"], id);
        }
        for id in ["", "a b", "dw/0", "é", &"x".repeat(250)] {
            let e = static_member(&cfg, id).unwrap_err();
            assert!(e.contains("letters, digits") && e.contains("group.instance.id"), "{e}");
        }
    }

    /// Windows are rebuilt on eager rebalances; a cooperative strategy
    /// (incremental rebalances) is refused when the consumer is created.
    #[tokio::test]
    async fn cooperative_rebalancing_is_refused_by_name() {
        let cfg = KafkaSource {
            brokers: "127.0.0.1:9".into(),
            topic: "t".into(),
            group_id: None,
            start: StartPosition::Committed,
            properties: props(&[("partition.assignment.strategy", "cooperative-sticky")]),
            checkpoint_topic: None,
        };
        let e = KafkaConsumer::new(&cfg, "g", None).err().expect("refused").to_string();
        assert!(
            e.contains("partition.assignment.strategy") && e.contains("eager"),
            "{e}"
        );
        let ok = KafkaSource {
            properties: props(&[("partition.assignment.strategy", "roundrobin")]),
            ..cfg
        };
        assert!(KafkaConsumer::new(&ok, "g", None).is_ok());
    }

    #[test]
    fn read_lag_and_commit_hold_split_the_committed_lag() {
        let part = |app, committed, hi, ls| rdkafka::statistics::Partition {
            app_offset: app,
            committed_offset: committed,
            hi_offset: hi,
            ls_offset: ls,
            ..Default::default()
        };
        // Everything read (position = end), commits held back by 5099.
        let l = PartitionLag::from_stats(&part(17600, 12501, 17600, 17600)).unwrap();
        assert_eq!((l.read, l.commit_hold, l.committed), (0, 5099, 5099));
        // A backlog: 100 to read, 20 held.
        let l = PartitionLag::from_stats(&part(900, 880, 1000, 1000)).unwrap();
        assert_eq!((l.read, l.commit_hold, l.committed), (100, 20, 120));
        // The last stable offset is the end when known, else the high watermark.
        assert_eq!(PartitionLag::from_stats(&part(900, 900, 1000, 950)).unwrap().read, 50);
        assert_eq!(
            PartitionLag::from_stats(&part(900, 900, 1000, -1001)).unwrap().read,
            100
        );
        // Nothing read yet: the position is the committed offset.
        let l = PartitionLag::from_stats(&part(-1001, 300, 1000, 1000)).unwrap();
        assert_eq!((l.read, l.commit_hold), (700, 0));
        // No end or no position known yet: nothing to say.
        assert_eq!(PartitionLag::from_stats(&part(-1001, -1001, 1000, 1000)), None);
        assert_eq!(PartitionLag::from_stats(&part(5, 5, -1001, -1001)), None);
    }
}
