//! Helpers shared by the integration tests: an embedded broker, producing
//! JSON events, reading topics back, and writing pipelines to temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use driftwatch::broker::Broker;
use driftwatch::config::Pipeline;
use driftwatch::runtime::{self, RunOptions, RunStats, Stages};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Produces `events` (JSON text each) to partition 0 of `topic`, waiting for delivery.
pub async fn produce(broker: &Broker, topic: &str, events: &[String]) {
    let p: FutureProducer = broker.client_config().create().expect("producer");
    let mut fs = vec![];
    for e in events {
        fs.push(
            p.send_result(FutureRecord::<(), _>::to(topic).payload(e.as_bytes()).partition(0))
                .expect("queue"),
        );
    }
    for f in fs {
        f.await.expect("delivery future").expect("delivered");
    }
}

/// Reads every message of partition 0 of `topic` (waits until `min` arrived, or `wait`).
pub fn read_topic(broker: &Broker, topic: &str, min: usize, wait: Duration) -> Vec<serde_json::Value> {
    let c: BaseConsumer = broker
        .client_config()
        .set("group.id", "dw-test-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = vec![];
    let deadline = Instant::now() + wait;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON record"));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                if out.len() >= min && quiet_since.elapsed() > Duration::from_millis(1500) {
                    break;
                }
            }
        }
    }
    out
}

/// Writes `text` as `name` in `dir`, returning the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A one-float-feature schema: `x`, plus an optional key `site`.
pub const SCHEMA_X: &str =
    "name: x\nfields:\n  - {name: site, type: category, nullable: true}\n  - {name: x, type: float}\n";

/// Runs a pipeline file until `max_events` are read; returns the run's counters.
pub async fn run_pipeline(path: &Path, max_events: u64, group: &str) -> Arc<RunStats> {
    let p = Pipeline::load(path).expect("pipeline loads");
    let stages = Stages::build(p).await.expect("stages build");
    let stats = Arc::new(RunStats::default());
    let fut = runtime::run(
        stages,
        RunOptions {
            max_events: Some(max_events),
            group_id: Some(group.into()),
        },
        Arc::new(AtomicBool::new(false)),
        stats.clone(),
        None,
    );
    tokio::time::timeout(Duration::from_secs(240), fut)
        .await
        .expect("run finishes in time")
        .expect("run succeeds");
    stats
}

/// Seeded normal samples (Box–Muller), as JSON events `{"x": …}`.
pub fn normal_events(seed: u64, n: usize, mean: f64) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            format!(r#"{{"x": {}}}"#, z + mean)
        })
        .collect()
}
