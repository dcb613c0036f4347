//! Evaluations already on the output topics, by `alert_id`.
//!
//! A delivery mark is written once a batch's evaluations are delivered
//! (DESIGN §5). A process killed between the two (one round trip) has sent
//! evaluations no mark covers, and its next run evaluates the same windows
//! again. Since `alert_id` is deterministic, the next run reads the output
//! topics from shortly before the last mark's time to their end and does not
//! send what is already there. Every evaluation a mark does not cover was
//! produced after that mark was written (marks and evaluations come from the
//! same process, one batch after the other), so nothing older can be missing.
//! [`CLOCK_SKEW_MS`] covers the difference between the marking host's clock
//! and the output records' timestamps (CreateTime from another host's clock,
//! or LogAppendTime from the broker's).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use crate::source::kafka::{SeekError, client_config, offset_for_time, read_range};
use crate::source::properties::ClientRole;

/// Failure of a scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Seek(#[from] SeekError),
}

/// How far before a mark's time the output topics are read.
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// `alert_id`s found on each output topic.
#[derive(Debug, Default)]
pub struct Published {
    ids: HashMap<String, HashSet<String>>,
}

/// The part of an evaluation record the scan needs.
#[derive(serde::Deserialize)]
struct Id {
    alert_id: String,
}

impl Published {
    /// Whether `topic` holds an evaluation with this id.
    pub fn contains(&self, topic: &str, id: &str) -> bool {
        self.ids.get(topic).is_some_and(|s| s.contains(id))
    }

    /// Ids found, over all topics.
    pub fn len(&self) -> usize {
        self.ids.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `topics` from their first record with a timestamp at or after
    /// `since_ms` to their current end, within `timeout` (blocking: call it
    /// off the async workers). Records that are not evaluations are skipped.
    pub fn scan(
        brokers: &str,
        props: &BTreeMap<String, String>,
        topics: &[String],
        since_ms: i64,
        timeout: Duration,
    ) -> Result<Self, ScanError> {
        let deadline = Instant::now() + timeout;
        let mut cfg = client_config(ClientRole::Reader, brokers, props);
        // Only assigned, never subscribed or committed: the group id is a formality.
        cfg.set("group.id", "driftwatch-published-scan")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = cfg.create()?;
        let mut out = Self::default();
        for topic in topics {
            let md = consumer.fetch_metadata(Some(topic), timeout)?;
            let mut next = BTreeMap::new();
            let mut end = BTreeMap::new();
            // A topic not created yet lists no partitions: nothing published.
            for t in md.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                    let start = offset_for_time(&consumer, topic, p.id(), since_ms, (low, high), timeout)?;
                    next.insert(p.id(), start);
                    end.insert(p.id(), high);
                }
            }
            let ids = out.ids.entry(topic.clone()).or_default();
            read_range(&consumer, topic, &mut next, end, deadline, |m| {
                if let Some(id) = m.payload().and_then(|b| serde_json::from_slice::<Id>(b).ok()) {
                    ids.insert(id.alert_id);
                }
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    async fn send(p: &FutureProducer, topic: &str, body: &str, ts: i64) {
        p.send(
            FutureRecord::<(), _>::to(topic).payload(body).timestamp(ts),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }

    /// Ids are found per topic from the first record at or after the time
    /// given; other records are skipped; a topic that does not exist holds none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finds_the_ids_published_since_a_time() {
        let b = Broker::start(1).unwrap();
        b.create_topic("alerts", 2).unwrap();
        b.create_topic("stats", 1).unwrap();
        let none = BTreeMap::new();
        let p: FutureProducer = client_config(ClientRole::Producer, &b.bootstrap(), &none)
            .create()
            .unwrap();
        send(&p, "alerts", r#"{"alert_id":"old"}"#, 1_000).await;
        send(&p, "alerts", r#"{"alert_id":"a1","drift":true}"#, 5_000).await;
        send(&p, "alerts", "not json", 6_000).await;
        send(&p, "alerts", r#"{"alert_id":"a2"}"#, 7_000).await;
        send(&p, "stats", r#"{"alert_id":"s1"}"#, 8_000).await;
        let topics = ["alerts", "stats", "absent"].map(String::from);
        let found = Published::scan(&b.bootstrap(), &none, &topics, 5_000, Duration::from_secs(30)).unwrap();
        assert!(found.contains("alerts", "a1") && found.contains("alerts", "a2"));
        assert!(!found.contains("alerts", "old"), "before the time given");
        assert!(found.contains("stats", "s1") && !found.contains("alerts", "s1"));
        assert_eq!(found.len(), 3);
        // Nothing after the time: nothing found.
        let later = Published::scan(&b.bootstrap(), &none, &topics, 9_000, Duration::from_secs(30)).unwrap();
        assert!(later.is_empty());
    }
}
