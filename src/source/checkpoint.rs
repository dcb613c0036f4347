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

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use super::kafka::Delivered;
use crate::alert::PolicyState;
use crate::window::KeySnapshot;

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

/// A window key's state, as a restart needs it (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyState {
    /// Which windows: `events`, or `labelled` (the events joined to their labels).
    pub windows: String,
    /// The windows' and the alert policy's configuration when it was saved:
    /// a state saved under another one is not restored.
    pub config: String,
    pub snapshot: KeySnapshot,
    /// The alert policy's memory per detector of these windows.
    pub policy: BTreeMap<String, PolicyState>,
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
    /// Highest mark seen per source partition (this group and topic only).
    marks: BTreeMap<i32, Delivered>,
    /// Key states with the most evaluations, per windows and key (this group and topic only).
    states: BTreeMap<(String, String), KeyState>,
}

/// Creates the checkpoint topic if it does not exist: one partition,
/// compacted (only the last mark per partition matters), the broker's
/// default replication. Returns whether it was created.
pub async fn ensure_topic(brokers: &str, props: &BTreeMap<String, String>, topic: &str) -> KafkaResult<bool> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = super::kafka::client_config(brokers, props).create()?;
    // Looked up first: a client allowed to write the topic may not be allowed to create topics.
    let cfg = super::kafka::client_config(brokers, props);
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
        let mut pc = super::kafka::client_config(brokers, props);
        // Idempotence keeps a partition's marks in the order they were sent.
        pc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "300000")
            .set("linger.ms", "0");
        let producer: FutureProducer = pc.create()?;
        let mut cc = super::kafka::client_config(brokers, props);
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
                marks: BTreeMap::new(),
                states: BTreeMap::new(),
            }),
        };
        let reader = c.reader.lock().unwrap_or_else(|e| e.into_inner());
        c.partitions(&reader.consumer, Duration::from_secs(10))?;
        drop(reader);
        Ok(c)
    }

    fn partitions(&self, consumer: &BaseConsumer, timeout: Duration) -> KafkaResult<Vec<i32>> {
        let md = consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let missing = || KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(missing)?;
        if let Some(e) = t.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        let ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        if ps.is_empty() {
            return Err(missing());
        }
        Ok(ps)
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
            let f = self
                .producer
                .send_result(FutureRecord::to(&self.topic).key(&key).payload(&body))
                .map_err(|(e, _)| e)?;
            fs.push(f);
        }
        delivered_all(fs).await
    }

    /// Records key states and waits until the broker has them.
    pub async fn save_states(&self, states: &[KeyState]) -> KafkaResult<()> {
        let mut fs = vec![];
        for s in states {
            // Compaction keeps each key's last state.
            let key =
                serde_json::to_vec(&(&self.group, &self.source_topic, &s.windows, &s.snapshot.key)).unwrap_or_default();
            let body = serde_json::to_vec(&StateRecord {
                group: self.group.clone(),
                topic: self.source_topic.clone(),
                state: s.clone(),
            })
            .unwrap_or_default();
            let f = self
                .producer
                .send_result(FutureRecord::to(&self.topic).key(&key).payload(&body))
                .map_err(|(e, _)| e)?;
            fs.push(f);
        }
        delivered_all(fs).await
    }

    /// The key states read by the last [`Self::delivered`].
    pub fn states(&self) -> Vec<KeyState> {
        let r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        r.states.values().cloned().collect()
    }

    /// The highest mark per source partition (of equal ones the latest),
    /// after reading the checkpoint topic up to its current end (waits at
    /// most `timeout`).
    pub fn delivered(&self, timeout: Duration) -> Result<BTreeMap<i32, Delivered>, String> {
        let deadline = Instant::now() + timeout;
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let what = |e: KafkaError| format!("checkpoint topic `{}`: {e}", self.topic);
        let mut end = BTreeMap::new();
        for p in self.partitions(&r.consumer, timeout).map_err(what)? {
            let (low, high) = r.consumer.fetch_watermarks(&self.topic, p, timeout).map_err(what)?;
            let next = r.next.get(&p).copied().unwrap_or(low).max(low);
            r.next.insert(p, next);
            end.insert(p, high);
        }
        let Reader {
            consumer,
            next,
            marks,
            states,
        } = &mut *r;
        super::kafka::read_range(consumer, &self.topic, next, end, deadline, |m| {
            let Some(body) = m.payload() else { return };
            if let Ok(rec) = serde_json::from_slice::<StateRecord>(body) {
                if rec.group == self.group && rec.topic == self.source_topic {
                    let k = (rec.state.windows.clone(), rec.state.snapshot.key.clone());
                    match states.get(&k) {
                        Some(s) if s.snapshot.evaluations > rec.state.snapshot.evaluations => {}
                        _ => {
                            states.insert(k, rec.state);
                        }
                    }
                }
            } else if let Some(mark) = serde_json::from_slice::<Mark>(body)
                .ok()
                .filter(|k| k.group == self.group && k.topic == self.source_topic)
            {
                let e = marks.entry(mark.partition).or_insert(mark.mark);
                *e = (*e).max(mark.mark);
            }
        })
        .map_err(|e| match e {
            KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) => format!(
                "checkpoint topic `{}`: not read to its end within {timeout:?}",
                self.topic
            ),
            e => what(e),
        })?;
        Ok(marks.clone())
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
            snapshot: KeySnapshot {
                key: key.into(),
                evaluations,
                anchor: BTreeMap::from([(1, 10 * evaluations as i64)]),
            },
            policy: BTreeMap::new(),
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
        let mut got = late.states();
        got.sort_by(|x, y| (&x.windows, &x.snapshot.key).cmp(&(&y.windows, &y.snapshot.key)));
        assert_eq!(
            got,
            [
                state("events", "a", 3),
                state("events", "b", 2),
                state("labelled", "a", 1)
            ]
        );
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
