//! A bounded range of a Kafka topic as a [`Source`]: per partition
//! `[from, to)` offsets, given or found from event times, read and merged in
//! canonical order (timestamp, partition, offset), so that every replay of
//! a range reads the same sequence.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::kafka::offset_for_time;
use super::{RawRecord, Source, SourceError};
use crate::config::KafkaSource;

/// Which part of a topic.
#[derive(Debug, Clone)]
pub enum TopicRange {
    /// Per partition `[from, to)` offsets (`to`: None = the end).
    Offsets(BTreeMap<i32, (i64, Option<i64>)>),
    /// Event-time range `[from, to)` in epoch ms, resolved per partition.
    Times { from: Option<i64>, to: Option<i64> },
}

fn other(e: impl std::fmt::Display) -> SourceError {
    SourceError::Range(e.to_string())
}

/// Opens `range` of `topic` on `src`'s brokers, read by a consumer of its
/// own (group `driftwatch-replay-<pipeline>`, nothing committed).
pub fn open(
    src: &KafkaSource,
    pipeline: &str,
    topic: &str,
    range: &TopicRange,
) -> Result<Box<dyn Source>, SourceError> {
    let consumer = consumer(src, pipeline)?;
    let ranges = resolve(&consumer, topic, range)?;
    Ok(Box::new(KafkaRange::new(consumer, topic.to_string(), ranges)?))
}

fn consumer(src: &KafkaSource, pipeline: &str) -> Result<BaseConsumer, SourceError> {
    super::kafka::client_config(super::properties::ClientRole::Reader, &src.brokers, &src.properties)
        .set("group.id", format!("driftwatch-replay-{pipeline}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(other)
}

const TIMEOUT: Duration = Duration::from_secs(15);

fn watermarks(c: &BaseConsumer, topic: &str, p: i32) -> Result<(i64, i64), SourceError> {
    c.fetch_watermarks(topic, p, TIMEOUT)
        .map_err(|e| other(format!("{topic}/{p}: cannot read the offsets: {e}")))
}

/// Per partition `[from, to)` offsets for a range.
pub fn resolve(c: &BaseConsumer, topic: &str, range: &TopicRange) -> Result<BTreeMap<i32, (i64, i64)>, SourceError> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| other(format!("cannot reach the brokers: {e}")))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(other(format!("topic `{topic}` does not exist or has no partitions")));
    }
    let mut out = BTreeMap::new();
    for p in parts {
        let (low, high) = watermarks(c, topic, p)?;
        let (from, to) = match range {
            TopicRange::Offsets(m) => match m.get(&p) {
                Some((a, b)) => (*a, b.unwrap_or(high)),
                None => continue,
            },
            TopicRange::Times { from, to } => (
                from.map_or(Ok(low), |t| offset_for_time(c, topic, p, t, (low, high), TIMEOUT))
                    .map_err(other)?,
                to.map_or(Ok(high), |t| offset_for_time(c, topic, p, t, (low, high), TIMEOUT))
                    .map_err(other)?,
            ),
        };
        let (from, to) = (from.clamp(low, high), to.clamp(low, high));
        out.insert(p, (from, to.max(from)));
    }
    if let TopicRange::Offsets(m) = range
        && let Some(p) = m.keys().find(|p| !out.contains_key(p))
    {
        return Err(other(format!("topic `{topic}` has no partition {p}")));
    }
    Ok(out)
}

/// Reads `[from, to)` of every partition, merged by (timestamp, partition, offset).
struct KafkaRange {
    topic: String,
    consumer: BaseConsumer,
    ranges: BTreeMap<i32, (i64, i64)>,
    /// Next offset expected per partition.
    next: BTreeMap<i32, i64>,
    buffers: BTreeMap<i32, VecDeque<RawRecord>>,
    deadline: Instant,
}

impl KafkaRange {
    fn new(consumer: BaseConsumer, topic: String, ranges: BTreeMap<i32, (i64, i64)>) -> Result<Self, SourceError> {
        let mut tpl = TopicPartitionList::new();
        for (p, (from, to)) in &ranges {
            if from < to {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*from))
                    .map_err(other)?;
            }
        }
        consumer.assign(&tpl).map_err(other)?;
        Ok(Self {
            topic,
            next: ranges.iter().map(|(p, (f, _))| (*p, *f)).collect(),
            buffers: ranges.keys().map(|p| (*p, VecDeque::new())).collect(),
            ranges,
            consumer,
            deadline: Instant::now() + TIMEOUT,
        })
    }

    fn finished(&self, p: i32) -> bool {
        self.next[&p] >= self.ranges[&p].1
    }
}

impl Iterator for KafkaRange {
    type Item = Result<RawRecord, SourceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Emit when every partition that is not finished has a record buffered.
            let ready = self
                .ranges
                .keys()
                .all(|p| !self.buffers[p].is_empty() || self.finished(*p));
            if ready {
                let best = self
                    .buffers
                    .iter()
                    .filter_map(|(p, b)| b.front().map(|r| (r.timestamp_ms.unwrap_or(0), *p, r.offset)))
                    .min()?;
                return self.buffers.get_mut(&best.1).and_then(VecDeque::pop_front).map(Ok);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    self.deadline = Instant::now() + TIMEOUT;
                    let p = m.partition();
                    let Some((_, to)) = self.ranges.get(&p).copied() else {
                        continue;
                    };
                    if m.offset() < self.next[&p] || m.offset() >= to {
                        continue;
                    }
                    self.next.insert(p, m.offset() + 1);
                    if let Some(b) = self.buffers.get_mut(&p) {
                        b.push_back(RawRecord {
                            payload: m.payload().map(<[u8]>::to_vec),
                            partition: p,
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                        });
                    }
                }
                Some(Err(e)) => return Some(Err(other(format!("reading the range: {e}")))),
                None if Instant::now() > self.deadline => {
                    return Some(Err(other(format!(
                        "no message for {TIMEOUT:?} before the end of the range (next offsets {:?}, range {:?}): were they deleted by retention?",
                        self.next, self.ranges
                    ))));
                }
                None => {}
            }
        }
    }
}

impl Source for KafkaRange {
    fn total(&self) -> Option<u64> {
        Some(self.ranges.values().map(|(a, b)| (b - a).max(0) as u64).sum())
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.ranges.iter().map(|(p, (a, b))| format!("{p}:{a}-{b}")).collect();
        format!("{} {}", self.topic, parts.join(","))
    }
}
