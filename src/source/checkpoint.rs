//! Delivery checkpoints in a topic of their own (`source.checkpoint_topic`).
//!
//! The runtime records "evaluations delivered up to offset N" per partition
//! in the offset-commit metadata (DESIGN §5). Two things defeat that alone:
//! brokers that drop commit metadata (tansu 0.6), and a group that is
//! rebalancing, which refuses commits while an instance, not yet told,
//! still delivers. A checkpoint record, produced once a batch's evaluations
//! are delivered, is refused by neither. The next owner of a partition reads
//! the checkpoint topic to its end and takes the highest mark recorded for
//! its group, topic and partition: a mark is written only after what it
//! covers was delivered, so the highest one is always true.
//!
//! The same topic holds each window key's state ([`KeyState`]): where its
//! last evaluated window started, its evaluation count and the alert
//! policy's memory. A partition holds many keys, and the committed offset is
//! the oldest any of them needs; a restart replays from there, and each key
//! skips the rows before its own window, so that its evaluation points and
//! alerts are those of an uninterrupted run. Written after the evaluations
//! it counts were delivered; the highest count per key is taken.
//!
//! A `first` reference is saved once per key, in records of its own: a JSON
//! header line, then the rows as an Arrow IPC stream, in chunks of at most
//! [`REFERENCE_CHUNK_BYTES`] (brokers refuse messages over 1 MB by default).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use super::kafka::Delivered;
use super::properties::ClientRole;

/// One checkpoint record: in `group`, partition `partition` of `topic` has
/// the delivery mark `mark` (its fields inline: `delivered`, and `at_ms` and
/// `labelled` where known).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Mark {
    group: String,
    topic: String,
    partition: i32,
    #[serde(flatten)]
    mark: Delivered,
}

/// A window key's state, as a restart needs it (see the module doc). What
/// the windows and the alert policy keep is `state`, opaque here: the
/// runtime writes and reads it; this store needs only the key, its
/// evaluation count (the highest is kept) and its `first` reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyState {
    /// Which windows: `events`, or `labelled` (the events joined to their labels).
    pub windows: String,
    /// The windows' and the alert policy's configuration when it was saved:
    /// a state saved under another one is not restored.
    pub config: String,
    pub key: String,
    /// Evaluations the key had made when saved.
    pub evaluations: u64,
    /// The source partitions of the key's windows.
    pub partitions: Vec<i32>,
    /// Rows of the `first` reference saved for this key (0: none).
    pub reference_rows: usize,
    /// The reference's rows: to save (the key's first state), or read back.
    /// Stored in records of their own.
    #[serde(skip)]
    pub reference: Vec<RecordBatch>,
    /// The windows' and the alert policy's own state.
    pub state: serde_json::Value,
}

/// Most bytes of Arrow IPC in one reference record.
pub const REFERENCE_CHUNK_BYTES: usize = 256 * 1024;

/// A reference chunk larger than this (a single row larger than
/// [`REFERENCE_CHUNK_BYTES`]) is not saved: producers and brokers refuse
/// messages over 1 MB by default.
pub const MAX_REFERENCE_RECORD_BYTES: usize = 900_000;

/// Header of a reference record (its first line); the rest is Arrow IPC.
#[derive(Debug, Serialize, Deserialize)]
struct ReferenceHeader {
    group: String,
    topic: String,
    windows: String,
    key: String,
    config: String,
    chunk: usize,
    chunks: usize,
    /// The source partitions of the key's windows (none in records of
    /// earlier versions: kept whatever is assigned).
    #[serde(default)]
    partitions: Vec<i32>,
}

/// A key's reference as read back, chunk by chunk.
#[derive(Debug, Default)]
struct ReferenceChunks {
    config: String,
    chunks: usize,
    partitions: Vec<i32>,
    parts: BTreeMap<usize, Vec<u8>>,
}

/// `batches` as Arrow IPC streams of about `limit` bytes at most each
/// (a single row larger than that makes a larger chunk).
fn encode_reference(batches: &[RecordBatch], limit: usize) -> Result<Vec<Vec<u8>>, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(vec![]);
    };
    let all = concat_batches(&first.schema(), batches)?;
    let encode = |b: &RecordBatch| -> Result<Vec<u8>, ArrowError> {
        let mut w = StreamWriter::try_new(Vec::new(), &b.schema())?;
        w.write(b)?;
        w.into_inner()
    };
    let whole = encode(&all)?;
    let rows = all.num_rows().max(1);
    let mut chunks = whole.len().div_ceil(limit.max(1)).max(1);
    loop {
        let per = rows.div_ceil(chunks);
        let out: Vec<Vec<u8>> = (0..all.num_rows())
            .step_by(per)
            .map(|at| encode(&all.slice(at, per.min(all.num_rows() - at))))
            .collect::<Result<_, _>>()?;
        if per == 1 || out.iter().all(|c| c.len() <= limit) {
            return Ok(out);
        }
        chunks *= 2;
    }
}

fn decode_reference(parts: &BTreeMap<usize, Vec<u8>>) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut out = vec![];
    for bytes in parts.values() {
        for b in StreamReader::try_new(std::io::Cursor::new(bytes), None)? {
            out.push(b?);
        }
    }
    Ok(out)
}

/// One key-state record: `state` for `group` reading `topic`.
#[derive(Debug, Serialize, Deserialize)]
struct StateRecord {
    group: String,
    topic: String,
    state: KeyState,
}

/// Writes and reads the delivery marks of one consumer group on one topic.
pub struct Checkpoints {
    topic: String,
    group: String,
    source_topic: String,
    producer: FutureProducer,
    reader: Mutex<Reader>,
}

struct Reader {
    consumer: BaseConsumer,
    /// Next offset to read, per partition of the checkpoint topic.
    next: BTreeMap<i32, i64>,
    /// What the records read so far say.
    seen: Seen,
}

/// What the checkpoint topic's records read so far say
/// ([`Checkpoints::read_record`]).
#[derive(Default)]
struct Seen {
    /// Highest mark seen per source partition (this group and topic only).
    marks: BTreeMap<i32, Delivered>,
    /// Key states with the most evaluations, per windows and key (this group and topic only).
    states: BTreeMap<(String, String), KeyState>,
    /// `first` references per windows and key (this group and topic only),
    /// of keys whose partitions are all in `wanted` (when set).
    references: BTreeMap<(String, String), ReferenceChunks>,
    /// The source partitions assigned (see [`Checkpoints::keep_references_of`]).
    wanted: Option<BTreeSet<i32>>,
}

/// Creates the checkpoint topic if it does not exist: one partition,
/// compacted (only the last mark per partition matters), the broker's
/// default replication. Returns whether it was created.
pub async fn ensure_topic(brokers: &str, props: &BTreeMap<String, String>, topic: &str) -> KafkaResult<bool> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        super::kafka::client_config(ClientRole::Admin, brokers, props).create()?;
    // Looked up first: a client allowed to write the topic may not be allowed to create topics.
    let cfg = super::kafka::client_config(ClientRole::Admin, brokers, props);
    if listed(cfg.clone(), topic).await? {
        return Ok(false);
    }
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let err = match admin.create_topics([&t], &opts).await {
        Ok(r) => match r.into_iter().next() {
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(false),
            Some(Err((_, e))) => KafkaError::AdminOp(e),
            _ => return Ok(true),
        },
        Err(e) => e,
    };
    // A broker without the admin call may still create topics on first use.
    let mut auto = cfg;
    auto.set("allow.auto.create.topics", "true");
    match listed(auto, topic).await {
        Ok(true) => {
            tracing::warn!(topic, error = %err, "the checkpoint topic was created by the broker's auto-creation, not compacted: set cleanup.policy=compact on it");
            Ok(true)
        }
        _ => Err(err),
    }
}

/// Whether the brokers list `topic` with partitions (one metadata request,
/// off the async workers).
async fn listed(cfg: ClientConfig, topic: &str) -> KafkaResult<bool> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = cfg.create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(md
            .topics()
            .iter()
            .any(|t| t.name() == topic && !t.partitions().is_empty()))
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

impl Checkpoints {
    /// Clients for `topic` on the source's brokers; checks that the topic exists.
    pub fn new(
        brokers: &str,
        props: &BTreeMap<String, String>,
        topic: &str,
        group: &str,
        source_topic: &str,
    ) -> KafkaResult<Self> {
        let mut pc = super::kafka::client_config(ClientRole::Producer, brokers, props);
        // Idempotence keeps a partition's marks in the order they were sent.
        pc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "300000")
            .set("linger.ms", "0");
        let producer: FutureProducer = pc.create()?;
        let mut cc = super::kafka::client_config(ClientRole::Reader, brokers, props);
        // Only assigned, never subscribed or committed: the group id is a formality.
        cc.set("group.id", format!("{group}-checkpoint-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = cc.create()?;
        let c = Self {
            topic: topic.into(),
            group: group.into(),
            source_topic: source_topic.into(),
            producer,
            reader: Mutex::new(Reader {
                consumer,
                next: BTreeMap::new(),
                seen: Seen::default(),
            }),
        };
        let reader = c.reader.lock().unwrap_or_else(|e| e.into_inner());
        super::kafka::topic_partitions(reader.consumer.client(), topic, Duration::from_secs(10))?;
        drop(reader);
        Ok(c)
    }

    /// Sends one record to the checkpoint topic; returns its delivery.
    fn send(&self, key: &[u8], body: &[u8]) -> KafkaResult<rdkafka::producer::DeliveryFuture> {
        self.producer
            .send_result(FutureRecord::to(&self.topic).key(key).payload(body))
            .map_err(|(e, _)| e)
    }

    /// Records `delivered` (partition → mark) and waits until the broker has it.
    pub async fn record(&self, delivered: impl IntoIterator<Item = (i32, Delivered)>) -> KafkaResult<()> {
        let mut fs = vec![];
        for (partition, d) in delivered {
            let m = Mark {
                group: self.group.clone(),
                topic: self.source_topic.clone(),
                partition,
                mark: d,
            };
            // The key names the partition's mark: compaction keeps the last.
            let key = serde_json::to_vec(&(&m.group, &m.topic, m.partition)).unwrap_or_default();
            let body = serde_json::to_vec(&m).unwrap_or_default();
            fs.push(self.send(&key, &body)?);
        }
        delivered_all(fs).await
    }

    /// Records key states (with the references they carry, first) and
    /// waits until the broker has them. Returns the keys whose reference
    /// could not be saved (see [`MAX_REFERENCE_RECORD_BYTES`]); their states
    /// are saved as without one.
    pub async fn save_states(&self, states: &[KeyState]) -> KafkaResult<Vec<String>> {
        let mut fs = vec![];
        // Indices in `states` of the references not saved.
        let mut unsaved = vec![];
        for (at, s) in states.iter().enumerate().filter(|(_, s)| !s.reference.is_empty()) {
            let chunks = match encode_reference(&s.reference, REFERENCE_CHUNK_BYTES) {
                Ok(c) if c.iter().all(|c| c.len() <= MAX_REFERENCE_RECORD_BYTES) => c,
                other => {
                    let why = match other {
                        Err(e) => format!("cannot encode it as Arrow IPC: {e}"),
                        Ok(c) => format!(
                            "a row takes {} bytes, more than a record may ({MAX_REFERENCE_RECORD_BYTES})",
                            c.iter().map(Vec::len).max().unwrap_or(0)
                        ),
                    };
                    tracing::warn!(windows = %s.windows, key = %s.key, why,
                        "reference not saved: the commit keeps holding its rows, and a restart rebuilds it by replay");
                    unsaved.push(at);
                    continue;
                }
            };
            for (i, bytes) in chunks.iter().enumerate() {
                let header = ReferenceHeader {
                    group: self.group.clone(),
                    topic: self.source_topic.clone(),
                    windows: s.windows.clone(),
                    key: s.key.clone(),
                    config: s.config.clone(),
                    chunk: i,
                    chunks: chunks.len(),
                    partitions: s.partitions.clone(),
                };
                let key = serde_json::to_vec(&(&self.group, &self.source_topic, &s.windows, &s.key, "reference", i))
                    .unwrap_or_default();
                let mut body = serde_json::to_vec(&header).unwrap_or_default();
                body.push(b'\n');
                body.extend_from_slice(bytes);
                fs.push(self.send(&key, &body)?);
            }
        }
        delivered_all(std::mem::take(&mut fs)).await?;
        for (at, s) in states.iter().enumerate() {
            let mut s = s.clone();
            if unsaved.contains(&at) {
                // Restored without it: rebuilt from the replayed rows.
                s.reference_rows = 0;
            }
            // Compaction keeps each key's last state.
            let key = serde_json::to_vec(&(&self.group, &self.source_topic, &s.windows, &s.key)).unwrap_or_default();
            let body = serde_json::to_vec(&StateRecord {
                group: self.group.clone(),
                topic: self.source_topic.clone(),
                state: s,
            })
            .unwrap_or_default();
            fs.push(self.send(&key, &body)?);
        }
        delivered_all(fs).await?;
        Ok(unsaved.into_iter().map(|at| states[at].key.clone()).collect())
    }

    /// The key states of `windows` read by the last [`Self::delivered`] that
    /// `keep` accepts, each with its `first` reference if one was saved under
    /// the same configuration (decoded only for those).
    pub fn states(&self, windows: &str, keep: impl Fn(&KeyState) -> bool) -> Vec<KeyState> {
        let r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![];
        for (k, st) in r.seen.states.iter().filter(|(k, st)| k.0 == windows && keep(st)) {
            let mut st = st.clone();
            if st.reference_rows > 0 {
                let found = r
                    .seen
                    .references
                    .get(k)
                    .filter(|c| c.config == st.config && c.parts.len() == c.chunks)
                    .map(|c| decode_reference(&c.parts));
                match found {
                    Some(Ok(batches)) if batches.iter().map(|b| b.num_rows()).sum::<usize>() == st.reference_rows => {
                        st.reference = batches;
                    }
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            Some(Ok(_)) => "a different number of rows".into(),
                            None => "not found (or incomplete)".into(),
                        };
                        tracing::warn!(topic = %self.topic, windows = %st.windows, key = %st.key, why,
                            "saved reference not read back: the key's reference is rebuilt from its first replayed events, which may not be the original ones");
                    }
                }
            }
            out.push(st);
        }
        out
    }

    /// Keeps, from now on, only the references of keys whose source
    /// partitions are all in `partitions` (those assigned), so that an
    /// instance does not hold every key's reference of the group. An
    /// assignment with a partition not kept before has the topic read again
    /// from its start by the next [`Self::delivered`].
    pub fn keep_references_of(&self, partitions: &[i32]) {
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<i32> = partitions.iter().copied().collect();
        if r.seen.wanted.as_ref().is_some_and(|w| !now.is_subset(w)) {
            // Some were skipped: read them all again.
            r.next.clear();
            r.seen.references.clear();
        }
        r.seen
            .references
            .retain(|_, c| c.partitions.iter().all(|p| now.contains(p)));
        r.seen.wanted = Some(now);
    }

    /// The highest mark per source partition (of equal ones the latest),
    /// after reading the checkpoint topic up to its current end (waits at
    /// most `timeout`).
    pub fn delivered(&self, timeout: Duration) -> Result<BTreeMap<i32, Delivered>, String> {
        let deadline = Instant::now() + timeout;
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let what = |e: KafkaError| format!("checkpoint topic `{}`: {e}", self.topic);
        let mut end = BTreeMap::new();
        for p in super::kafka::topic_partitions(r.consumer.client(), &self.topic, timeout).map_err(what)? {
            let (low, high) = r.consumer.fetch_watermarks(&self.topic, p, timeout).map_err(what)?;
            let next = r.next.get(&p).copied().unwrap_or(low).max(low);
            r.next.insert(p, next);
            end.insert(p, high);
        }
        let Reader { consumer, next, seen } = &mut *r;
        super::kafka::read_range(consumer, &self.topic, next, end, deadline, |m| {
            if let Some(body) = m.payload() {
                self.read_record(body, seen);
            }
        })
        .map_err(|e| match e {
            KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) => format!(
                "checkpoint topic `{}`: not read to its end within {timeout:?}",
                self.topic
            ),
            e => what(e),
        })?;
        Ok(seen.marks.clone())
    }

    /// One record of the checkpoint topic, if of this group and source
    /// topic: a chunk of a saved reference (a JSON header line, then Arrow
    /// IPC), a key's window state (the one with the most evaluations is
    /// kept), or a delivery mark (the highest is kept).
    fn read_record(&self, body: &[u8], seen: &mut Seen) {
        let ours = |group: &str, topic: &str| group == self.group && topic == self.source_topic;
        if let Some((header, ipc)) = body.iter().position(|b| *b == b'\n').and_then(|i| {
            Some((
                serde_json::from_slice::<ReferenceHeader>(&body[..i]).ok()?,
                &body[i + 1..],
            ))
        }) {
            let kept = seen
                .wanted
                .as_ref()
                .is_none_or(|w| header.partitions.iter().all(|p| w.contains(p)));
            if ours(&header.group, &header.topic) && kept {
                let e = seen.references.entry((header.windows, header.key)).or_default();
                // A newer save (another configuration) replaces what was read.
                if e.config != header.config || e.chunks != header.chunks {
                    *e = ReferenceChunks {
                        config: header.config,
                        chunks: header.chunks,
                        partitions: header.partitions,
                        parts: BTreeMap::new(),
                    };
                }
                e.parts.insert(header.chunk, ipc.to_vec());
            }
        } else if let Ok(rec) = serde_json::from_slice::<StateRecord>(body) {
            if ours(&rec.group, &rec.topic) {
                let k = (rec.state.windows.clone(), rec.state.key.clone());
                match seen.states.get(&k) {
                    Some(s) if s.evaluations > rec.state.evaluations => {}
                    _ => {
                        seen.states.insert(k, rec.state);
                    }
                }
            }
        } else if let Some(mark) = serde_json::from_slice::<Mark>(body)
            .ok()
            .filter(|k| ours(&k.group, &k.topic))
        {
            let e = seen.marks.entry(mark.partition).or_insert(mark.mark);
            *e = (*e).max(mark.mark);
        }
    }
}

/// Waits for every send; the first failure is returned.
async fn delivered_all(fs: Vec<rdkafka::producer::DeliveryFuture>) -> KafkaResult<()> {
    for f in fs {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;

    fn m(offset: i64, at: i64) -> Delivered {
        Delivered {
            offset,
            at_ms: Some(at),
            labelled: None,
        }
    }

    /// The record's JSON: the mark's fields inline, the unknown ones left out;
    /// a record of an earlier version (no time) still reads.
    #[test]
    fn mark_records_keep_their_format() {
        let m = Mark {
            group: "g".into(),
            topic: "t".into(),
            partition: 2,
            mark: Delivered {
                labelled: Some(5),
                ..m(9, 7)
            },
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"group":"g","topic":"t","partition":2,"delivered":9,"at_ms":7,"labelled":5}"#
        );
        assert_eq!(serde_json::from_str::<Mark>(&json).unwrap(), m);
        let old: Mark = serde_json::from_str(r#"{"group":"g","topic":"t","partition":2,"delivered":9}"#).unwrap();
        assert_eq!(
            old.mark,
            Delivered {
                offset: 9,
                at_ms: None,
                labelled: None
            }
        );
    }

    /// Marks written are read back, highest per partition (of equal ones
    /// the latest, with its time), this group and topic only, by a reader
    /// that joins later and one that catches up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn marks_are_read_back_highest_per_partition() {
        let b = Broker::start(1).unwrap();
        b.create_topic("cp", 2).unwrap();
        let none = BTreeMap::new();
        let w = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        let other_group = Checkpoints::new(&b.bootstrap(), &none, "cp", "h", "events").unwrap();
        let other_topic = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "other").unwrap();
        assert_eq!(w.delivered(Duration::from_secs(30)).unwrap(), BTreeMap::new());
        w.record([(0, m(10, 1)), (1, m(5, 1))]).await.unwrap();
        w.record([(0, m(20, 2))]).await.unwrap();
        // An older mark arriving last does not lower the highest one.
        w.record([(0, m(15, 3))]).await.unwrap();
        // Marks of earlier versions have no time.
        w.record([(
            1,
            Delivered {
                offset: 4,
                at_ms: None,
                labelled: None,
            },
        )])
        .await
        .unwrap();
        other_group.record([(0, m(99, 9)), (2, m(7, 9))]).await.unwrap();
        other_topic.record([(1, m(99, 9))]).await.unwrap();
        let want = BTreeMap::from([(0, m(20, 2)), (1, m(5, 1))]);
        let late = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        assert_eq!(late.delivered(Duration::from_secs(30)).unwrap(), want);
        assert_eq!(w.delivered(Duration::from_secs(30)).unwrap(), want);
        let with_labelled = Delivered {
            labelled: Some(12),
            ..m(20, 5)
        };
        w.record([(1, m(30, 4)), (0, with_labelled)]).await.unwrap();
        let want = BTreeMap::from([(0, with_labelled), (1, m(30, 4))]);
        assert_eq!(late.delivered(Duration::from_secs(30)).unwrap(), want);
        assert_eq!(
            other_group.delivered(Duration::from_secs(30)).unwrap(),
            BTreeMap::from([(0, m(99, 9)), (2, m(7, 9))])
        );
    }

    fn state(windows: &str, key: &str, evaluations: u64) -> KeyState {
        KeyState {
            windows: windows.into(),
            config: "c".into(),
            key: key.into(),
            evaluations,
            partitions: vec![1],
            reference_rows: 0,
            reference: vec![],
            state: serde_json::json!({"anchor": 10 * evaluations}),
        }
    }

    /// Key states share the topic with the marks: read back with the most
    /// evaluations per windows and key (an older state arriving last does
    /// not win), this group and topic only, and the marks are unaffected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_states_are_read_back_most_evaluations_per_key() {
        let b = Broker::start(1).unwrap();
        b.create_topic("cp", 1).unwrap();
        let none = BTreeMap::new();
        let w = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        let other = Checkpoints::new(&b.bootstrap(), &none, "cp", "h", "events").unwrap();
        w.save_states(&[state("events", "a", 1), state("events", "b", 2)])
            .await
            .unwrap();
        w.record([(1, m(20, 2))]).await.unwrap();
        w.save_states(&[state("events", "a", 3), state("labelled", "a", 1)])
            .await
            .unwrap();
        w.save_states(&[state("events", "a", 2)]).await.unwrap();
        other.save_states(&[state("events", "a", 9)]).await.unwrap();
        let late = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        assert_eq!(
            late.delivered(Duration::from_secs(30)).unwrap(),
            BTreeMap::from([(1, m(20, 2))])
        );
        let mut got = late.states("events", |_| true);
        got.extend(late.states("labelled", |_| true));
        got.sort_by(|x, y| (&x.windows, &x.key).cmp(&(&y.windows, &y.key)));
        assert_eq!(
            got,
            [
                state("events", "a", 3),
                state("events", "b", 2),
                state("labelled", "a", 1)
            ]
        );
        // Only the states kept are returned.
        assert_eq!(late.states("events", |s| s.key == "b"), [state("events", "b", 2)]);
    }

    fn rows(n: usize) -> RecordBatch {
        use datafusion::arrow::array::{Float64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 * 0.5))),
                std::sync::Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then(|| format!("v{i}"))),
                )),
            ],
        )
        .unwrap()
    }

    /// References are cut into chunks under the limit and read back whole.
    #[test]
    fn references_are_chunked_and_decoded_back() {
        let batches = [rows(700), rows(0), rows(300).slice(100, 200)];
        let want = concat_batches(&batches[0].schema(), &batches).unwrap();
        for limit in [usize::MAX, 4096, 1] {
            let chunks = encode_reference(&batches, limit).unwrap();
            if limit == usize::MAX {
                assert_eq!(chunks.len(), 1);
            } else {
                assert!(chunks.len() > 1, "{limit}");
            }
            assert!(limit == 1 || chunks.iter().all(|c| c.len() <= limit), "{limit}");
            let parts: BTreeMap<usize, Vec<u8>> = chunks.into_iter().enumerate().collect();
            let back = decode_reference(&parts).unwrap();
            assert_eq!(concat_batches(&want.schema(), &back).unwrap(), want, "{limit}");
        }
    }

    /// A state's reference is saved in records of its own (two chunks here)
    /// and comes back with the state; a state whose reference is missing
    /// comes back without one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn references_are_saved_and_read_back_with_their_state() {
        let b = Broker::start(1).unwrap();
        b.create_topic("cp", 1).unwrap();
        let none = BTreeMap::new();
        let w = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        let reference = vec![rows(15_000), rows(10_000)];
        assert_eq!(encode_reference(&reference, REFERENCE_CHUNK_BYTES).unwrap().len(), 2);
        let mut with = state("events", "a", 1);
        with.reference_rows = 25_000;
        with.reference = reference.clone();
        let mut lost = state("events", "b", 1);
        lost.reference_rows = 10;
        w.save_states(&[with.clone(), lost.clone()]).await.unwrap();
        // A later state of the key, saved without its reference (already saved).
        let mut later = state("events", "a", 2);
        later.reference_rows = 25_000;
        w.save_states(std::slice::from_ref(&later)).await.unwrap();
        let r = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        r.delivered(Duration::from_secs(30)).unwrap();
        let got = r.states("events", |_| true);
        assert_eq!(got.len(), 2);
        let a = got.iter().find(|s| s.key == "a").unwrap();
        assert_eq!(a.evaluations, 2);
        let back = concat_batches(&reference[0].schema(), &a.reference).unwrap();
        assert_eq!(back, concat_batches(&reference[0].schema(), &reference).unwrap());
        let b_state = got.iter().find(|s| s.key == "b").unwrap();
        assert!(b_state.reference.is_empty());

        // A reference with a row larger than a record may be is not saved
        // (the run goes on; the key's state is saved as without one).
        let huge_row = {
            let one = rows(1);
            let s = datafusion::arrow::array::StringArray::from(vec!["x".repeat(1_000_000)]);
            RecordBatch::try_new(one.schema(), vec![one.column(0).clone(), std::sync::Arc::new(s)]).unwrap()
        };
        let mut huge = state("events", "huge", 1);
        huge.reference_rows = 1;
        huge.reference = vec![huge_row];
        let unsaved = w.save_states(&[huge, with.clone()]).await.unwrap();
        assert_eq!(unsaved, ["huge"]);
        r.delivered(Duration::from_secs(30)).unwrap();
        let got = r.states("events", |s| s.key == "huge");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].reference_rows, got[0].reference.len()), (0, 0));
    }

    /// An instance keeps only the references of keys whose partitions it
    /// holds; once it is assigned another partition the topic is read again
    /// and that key's reference comes back too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_references_of_assigned_partitions_are_kept() {
        let b = Broker::start(1).unwrap();
        b.create_topic("cp", 1).unwrap();
        let none = BTreeMap::new();
        let w = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        let with = |key: &str, partition: i32, n: usize| {
            let mut s = state("events", key, 1);
            s.partitions = vec![partition];
            s.reference_rows = n;
            s.reference = vec![rows(n)];
            s
        };
        w.save_states(&[with("a", 1, 100), with("b", 2, 50)]).await.unwrap();
        let r = Checkpoints::new(&b.bootstrap(), &none, "cp", "g", "events").unwrap();
        let held = |assigned: &[i32]| -> BTreeMap<String, usize> {
            r.keep_references_of(assigned);
            r.delivered(Duration::from_secs(30)).unwrap();
            r.states("events", |_| true)
                .into_iter()
                .map(|s| (s.key, s.reference.iter().map(|b| b.num_rows()).sum()))
                .collect()
        };
        let m = |kv: &[(&str, usize)]| kv.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        assert_eq!(held(&[1]), m(&[("a", 100), ("b", 0)]));
        assert_eq!(held(&[1, 2]), m(&[("a", 100), ("b", 50)]), "read again for partition 2");
        assert_eq!(held(&[2]), m(&[("a", 0), ("b", 50)]), "a let go");
    }

    /// A checkpoint topic that does not exist is refused by the clients,
    /// and created by `ensure_topic` (once). The mock has no CreateTopics
    /// call: this covers the fallback to the broker's auto-creation (tansu
    /// and Apache Kafka take the admin call: the tansu tests cover it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_checkpoint_topic_is_created() {
        let b = Broker::start(1).unwrap();
        let none = BTreeMap::new();
        let e = Checkpoints::new(&b.bootstrap(), &none, "nope", "g", "events")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("Unknown topic"), "{e}");
        assert!(ensure_topic(&b.bootstrap(), &none, "nope").await.unwrap());
        assert!(!ensure_topic(&b.bootstrap(), &none, "nope").await.unwrap());
        // The embedded broker comes with the default one.
        assert!(
            !ensure_topic(&b.bootstrap(), &none, crate::config::DEFAULT_CHECKPOINT_TOPIC)
                .await
                .unwrap()
        );
        let c = Checkpoints::new(&b.bootstrap(), &none, "nope", "g", "events").unwrap();
        c.record([(0, m(3, 1))]).await.unwrap();
        assert_eq!(
            c.delivered(Duration::from_secs(30)).unwrap(),
            BTreeMap::from([(0, m(3, 1))])
        );
    }
}
