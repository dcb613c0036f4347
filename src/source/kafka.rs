//! Kafka source: an rdkafka consumer in a consumer group.
//!
//! Offsets are never auto-committed: the runtime commits, per partition, the
//! oldest offset its windows still need, with the last offset whose
//! evaluations were delivered stored in the commit metadata (`dw1:hw=N`).
//! After a restart the windows are rebuilt by replaying from the committed
//! offset and evaluations up to `hw` are not sent again (DESIGN §5).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::RawRecord;
use crate::config::{KafkaSource, StartPosition};

const META_PREFIX: &str = "dw1:hw=";

/// Builds a client config from brokers and pass-through properties. Values are
/// never logged (they may hold secrets).
pub fn client_config(brokers: &str, props: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

/// A producer for output topics: acks=all, so a delivered record is on every in-sync replica.
pub fn producer(brokers: &str, props: &BTreeMap<String, String>) -> KafkaResult<FutureProducer> {
    let mut c = client_config(brokers, props);
    c.set("acks", "all")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5");
    c.create()
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
    /// Per partition: the last offset whose evaluations were already delivered.
    delivered: BTreeMap<i32, i64>,
    errors: Vec<String>,
    /// Consumer lag per partition, from librdkafka's statistics.
    lag: BTreeMap<i32, i64>,
}

struct Ctx {
    topic: String,
    start: Start,
    shared: Arc<Mutex<Shared>>,
}

impl ClientContext for Ctx {
    /// librdkafka's periodic statistics (`statistics.interval.ms`): the
    /// consumer lag per partition, without a broker round trip of our own.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    shared.lag.insert(*p, part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, base: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // What was delivered before, from the group's commit metadata.
                if let Ok(committed) = base.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                    for e in committed.elements() {
                        if let Some(hw) = e
                            .metadata()
                            .strip_prefix(META_PREFIX)
                            .and_then(|s| s.parse::<i64>().ok())
                        {
                            shared.delivered.insert(e.partition(), hw);
                        }
                    }
                }
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
                for e in tpl.elements() {
                    tracing::info!(topic = %self.topic, partition = e.partition(), start = ?e.offset(), "partition assigned");
                }
                if let Err(e) = base.assign(tpl) {
                    shared.errors.push(format!("assign: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    shared.delivered.remove(&e.partition());
                }
                if let Err(e) = base.unassign() {
                    shared.errors.push(format!("unassign: {e}"));
                }
            }
            other => shared.errors.push(format!("rebalance error: {other:?}")),
        }
    }
}

/// A consumer of one topic.
pub struct KafkaConsumer {
    consumer: StreamConsumer<Ctx>,
    topic: String,
    shared: Arc<Mutex<Shared>>,
}

impl KafkaConsumer {
    /// Creates the consumer and subscribes. `group_id` overrides the config's.
    pub fn new(cfg: &KafkaSource, group_id: &str) -> KafkaResult<Self> {
        let start = match &cfg.start {
            StartPosition::Committed => Start::Committed,
            StartPosition::Earliest => Start::Earliest,
            StartPosition::Latest => Start::Latest,
            p => Start::Timestamp(p.timestamp_ms().ok().flatten().unwrap_or(0)),
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut c = client_config(&cfg.brokers, &cfg.properties);
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000");
        // Pass-through properties may override the above, except the commit ones we rely on.
        for (k, v) in &cfg.properties {
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
        })?;
        consumer.subscribe(&[&cfg.topic])?;
        Ok(Self {
            consumer,
            topic: cfg.topic.clone(),
            shared,
        })
    }

    /// Next record; waits until one arrives.
    /// Whether partitions are assigned.
    pub fn assigned(&self) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    /// Consumer lag per partition (messages), as librdkafka last reported it.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).lag.clone()
    }

    pub async fn recv(&self) -> KafkaResult<RawRecord> {
        let m = self.consumer.recv().await?;
        Ok(RawRecord {
            payload: m.payload().map(<[u8]>::to_vec),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        })
    }

    /// Last delivered offset of a partition from an earlier run (commit metadata).
    pub fn delivered(&self, partition: i32) -> Option<i64> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delivered
            .get(&partition)
            .copied()
    }

    /// Rebalance errors since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()).errors)
    }

    /// Commits, per partition, `next` (where a restart must resume reading)
    /// and `delivered` (the last offset whose evaluations are delivered).
    pub fn commit(&self, positions: &BTreeMap<i32, (i64, i64)>, mode: CommitMode) -> KafkaResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, (next, delivered)) in positions {
            let mut e = tpl.add_partition(&self.topic, *p);
            e.set_offset(Offset::Offset(*next))?;
            e.set_metadata(format!("{META_PREFIX}{delivered}"));
        }
        match self.consumer.commit(&tpl, mode) {
            // Nothing assigned any more (revoked meanwhile): nothing to commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            r => r,
        }
    }
}

/// Per partition, the range of offsets present: (low, high) watermarks.
pub fn watermarks(
    brokers: &str,
    props: &BTreeMap<String, String>,
    topic: &str,
) -> KafkaResult<BTreeMap<i32, (i64, i64)>> {
    let c: BaseConsumer = client_config(brokers, props).create()?;
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

    /// Pass-through properties reach librdkafka: SASL settings are accepted,
    /// and a setting librdkafka does not know is refused by name. (This
    /// build has no TLS: rdkafka's `ssl` feature is off, see the README.)
    #[test]
    fn properties_reach_librdkafka() {
        let p = props(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]);
        let c = client_config("127.0.0.1:9", &p)
            .set("group.id", "g")
            .create::<BaseConsumer>();
        assert!(c.is_ok(), "{p:?}: {:?}", c.err());
        let e = client_config("127.0.0.1:9", &props(&[("ssl.bogus", "x")]))
            .create::<BaseConsumer>()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ssl.bogus"), "{e}");
    }
}
