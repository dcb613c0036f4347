//! `driftwatch bench`: events/s end to end through the embedded broker and a
//! whole pipeline, next to two ceilings measured in the same run on the same
//! events — consume + decode alone, and ONNX Runtime alone on the same batches
//! — and the process's peak memory. Ratios mean something on a noisy machine;
//! absolute numbers less so.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::broker::Broker;
use crate::config::Pipeline;
use crate::detect::DetectorClocks;
use crate::runtime::{self, RunOptions, RunStats, RuntimeError, Stages};
use crate::source::kafka::KafkaConsumer;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn other(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

/// Partitions of the benchmark's input topics; events go round-robin.
const PARTITIONS: i32 = 4;

/// Bytes the producer may run ahead of the consumer, per partition. The
/// embedded broker keeps only the last 5 MiB of each partition (older
/// messages are dropped, as retention would), so the stream is produced while
/// it is consumed, never far ahead — but several batches ahead, or the
/// pipeline's batches would wait for their linger time instead of filling.
/// Uncompressed: compression would spend a large share of the same 2 cores on
/// the benchmark's own producer.
const AHEAD_BYTES: u64 = 3 << 20;

/// Mean payload size in bytes.
fn mean_len(payloads: &[Vec<u8>]) -> u64 {
    payloads.iter().map(|p| p.len() as u64).sum::<u64>() / payloads.len().max(1) as u64
}

/// Events the producer may run ahead for payloads of `mean` bytes.
fn ahead(mean: u64) -> u64 {
    (AHEAD_BYTES * PARTITIONS as u64 / mean.max(1)).clamp(1_000, 20_000)
}

/// A consumer that makes no progress for this long has lost messages.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// How far a consumer got (events read).
type Progress = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Produces `events` payloads (cycled) to `topic`, round-robin over its
/// [`PARTITIONS`], staying at most [`ahead`] events in front of `progress`.
async fn feed(
    producer: FutureProducer,
    topic: String,
    payloads: Arc<Vec<Vec<u8>>>,
    events: u64,
    progress: Progress,
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let ahead = ahead(mean_len(&payloads));
    let mut pending = std::collections::VecDeque::new();
    let (mut seen, mut since) = (0, Instant::now());
    for i in 0..events {
        while i >= progress() + ahead {
            if progress() != seen {
                (seen, since) = (progress(), Instant::now());
            } else if since.elapsed() > STALL {
                stop.store(true, Ordering::SeqCst);
                return Err(other(format!(
                    "the consumer stalled at {seen} events: the embedded broker dropped messages it had not yet delivered"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let p = &payloads[(i % payloads.len() as u64) as usize];
        let rec = FutureRecord::<(), [u8]>::to(&topic)
            .partition((i % PARTITIONS as u64) as i32)
            .payload(p.as_slice());
        pending.push_back(producer.send_result(rec).map_err(|(e, _)| other(e))?);
        // Bound the futures in hand; delivery is checked in order.
        while pending.len() > ahead as usize {
            if let Some(f) = pending.pop_front() {
                delivered(f.await)?;
            }
        }
    }
    for f in pending {
        delivered(f.await)?;
    }
    Ok(())
}

fn delivered<T, M>(
    r: Result<Result<T, (rdkafka::error::KafkaError, M)>, futures::channel::oneshot::Canceled>,
) -> Result<(), RuntimeError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(other(format!("bench produce: {e}"))),
        Err(_) => Err(other("bench produce: cancelled")),
    }
}

/// What the benchmark's events are made of.
#[derive(Debug, Clone, Copy)]
pub enum BenchEvents<'a> {
    /// Digit images drawn from an image pool (`schemas/digits.yaml`).
    Digits(&'a Path),
    /// Paragraphs of a text corpus (`schemas/news.yaml`), in a seeded order.
    News(&'a Path),
    /// US Census records (`schemas/census.yaml`) from the folder setup
    /// fetches them into: 2015 (with `employed`), then 2016-2018, in id order.
    Census(&'a Path),
}

/// Distinct payloads, cycled: the stream is long, the generation cheap.
fn payloads(from: BenchEvents) -> Result<Vec<Vec<u8>>, RuntimeError> {
    match from {
        BenchEvents::Digits(pool) => Ok(crate::scenario::clean_events(pool, "bench", 4096, 1)
            .map_err(other)?
            .into_iter()
            .map(String::into_bytes)
            .collect()),
        BenchEvents::News(dir) => {
            use rand::seq::SliceRandom;
            let corpus = crate::corpus::Corpus::load(dir).map_err(other)?;
            let mut paragraphs = corpus.paragraphs;
            paragraphs.shuffle(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1));
            Ok(paragraphs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    serde_json::json!({"event_id": format!("bench-{i}"), "ts": i, "feed": "bench", "text": p.text})
                        .to_string()
                        .into_bytes()
                })
                .collect())
        }
        BenchEvents::Census(dir) => {
            let mut rows = vec![];
            for file in ["reference.pq", "analysis.pq"] {
                let records = crate::source::file::read_records(&dir.join(file)).map_err(other)?;
                rows.extend(records.into_iter().filter_map(|r| r.payload));
            }
            Ok(rows)
        }
    }
}

/// Loads the pipeline without the detectors named in `without`.
fn load_without(pipeline_path: &Path, without: &[String]) -> Result<Pipeline, RuntimeError> {
    let mut pipeline = Pipeline::load(pipeline_path)?;
    for name in without {
        if !pipeline.detectors.iter().any(|d| d.name == *name) {
            return Err(other(format!(
                "--without {name}: {} has no detector of that name (it has {})",
                pipeline_path.display(),
                pipeline
                    .detectors
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    pipeline.detectors.retain(|d| !without.contains(&d.name));
    Ok(pipeline)
}

/// Per detector: evaluations, mean cost of one, and its share of the run.
fn print_detector_costs(clocks: &[DetectorClocks], run: Duration) {
    for t in clocks.iter().flat_map(DetectorClocks::snapshot) {
        let each = t.total.as_secs_f64() / t.evaluations.max(1) as f64;
        println!(
            "  {:<26} {:>6} evaluations, {:>9.3} ms each, {:>5.1} % of the run",
            format!("{}:", t.name),
            t.evaluations,
            each * 1e3,
            100.0 * t.total.as_secs_f64() / run.as_secs_f64()
        );
    }
}

/// Runs the benchmark and prints a report to stdout; `without` names
/// detectors of the pipeline to leave out (to measure what they cost).
pub async fn bench(
    pipeline_path: &Path,
    from: BenchEvents<'_>,
    events: u64,
    without: &[String],
) -> Result<(), RuntimeError> {
    let broker = Broker::start(1).map_err(other)?;
    // SAFETY of set_var: before any thread of ours reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", broker.bootstrap()) };
    let pipeline = load_without(pipeline_path, without)?;
    let src = pipeline.kafka_source("the benchmark")?.clone();
    broker.create_topic(&src.topic, PARTITIONS).map_err(other)?;
    for t in [&pipeline.output.alerts_topic, &pipeline.output.dead_letter_topic] {
        broker.create_topic(t, 1).map_err(other)?;
    }
    // Labels are not part of the benchmark: their topic is there, empty.
    if let Some(l) = &pipeline.labels {
        broker.create_topic(&l.topic, PARTITIONS).map_err(other)?;
    }
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(other)?;
    let feed = Feed {
        producer,
        payloads: Arc::new(payloads(from)?),
        events,
    };
    let rss_base = rss_kib("VmRSS:");
    let mut stages = Stages::build(pipeline.clone()).await?;
    let (decode_rate, batches) = decode_ceiling(&broker, &src, &mut stages, &feed).await?;
    let model = model_ceiling(&mut stages, &batches, events).await?;
    let e2e = end_to_end(stages, &src, &feed).await?;
    let peak = rss_kib("VmHWM:");
    let max = pipeline.batch.max_events.get();
    print_report(&feed, decode_rate, &model, max, &e2e);
    println!(
        "memory: RSS {} MiB before the pipelines (broker log included), peak {} MiB, pipeline share {} MiB",
        rss_base / 1024,
        peak / 1024,
        peak.saturating_sub(rss_base) / 1024
    );
    Ok(())
}

/// The events a benchmark produces: `events` of `payloads`, round robin.
struct Feed {
    producer: FutureProducer,
    payloads: Arc<Vec<Vec<u8>>>,
    events: u64,
}

impl Feed {
    /// Produces to `topic` in the background, keeping ahead of `read`.
    fn start(
        &self,
        topic: &str,
        read: Progress,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Result<(), RuntimeError>> {
        let (producer, payloads) = (self.producer.clone(), self.payloads.clone());
        tokio::spawn(feed(producer, topic.to_string(), payloads, self.events, read, stop))
    }
}

/// Ceiling 1: the pipeline's own consumer and decoder alone, in a group of
/// its own on a topic of its own. Returns events/s and a sample of the
/// decoded batches for the model ceiling (not all: memory).
async fn decode_ceiling(
    broker: &Broker,
    src: &crate::config::KafkaSource,
    stages: &mut Stages,
    feed: &Feed,
) -> Result<(f64, Vec<RecordBatch>), RuntimeError> {
    let mut ceiling_src = src.clone();
    ceiling_src.topic = format!("{}-ceiling", src.topic);
    broker.create_topic(&ceiling_src.topic, PARTITIONS).map_err(other)?;
    let consumed = Arc::new(AtomicU64::new(0));
    let read = consumed.clone();
    let feeder = feed.start(
        &ceiling_src.topic,
        Arc::new(move || read.load(Ordering::Relaxed)),
        Arc::new(AtomicBool::new(false)),
    );
    let consumer = KafkaConsumer::new(&ceiling_src, "driftwatch-bench-ceiling", None).map_err(other)?;
    let mut dec = stages.decoder();
    let max = stages.pipeline.batch.max_events.get();
    let mut batches = vec![];
    let (mut n, mut t0) = (0u64, None);
    while n < feed.events {
        let Ok(rec) = tokio::time::timeout(STALL, consumer.recv()).await else {
            return Err(other(format!(
                "no event for {STALL:?} after {n}: messages were dropped"
            )));
        };
        let rec = rec.map_err(other)?;
        t0.get_or_insert_with(Instant::now);
        let _ = dec.decode(&rec);
        n += 1;
        consumed.store(n, Ordering::Relaxed);
        if dec.len() >= max
            && let Some(b) = dec.flush()?
            && batches.len() < 64
        {
            batches.push(b);
        }
    }
    let decode_secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    drop(consumer);
    feeder.await.map_err(other)??;
    Ok((feed.events as f64 / decode_secs, batches))
}

/// Ceiling 2: the model alone on the same batches.
struct ModelCeiling {
    /// Events/s through the model stage (inputs prepared and inferred).
    rate: f64,
    scored: u64,
    /// Events/s of inference alone.
    inference_rate: f64,
    /// Input preparation as a share of inference time.
    prepare_share: f64,
}

async fn model_ceiling(
    stages: &mut Stages,
    batches: &[RecordBatch],
    events: u64,
) -> Result<ModelCeiling, RuntimeError> {
    let before = stages.model_timings().unwrap_or_default();
    let t = Instant::now();
    let mut scored = 0u64;
    let rounds = (events / (batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()).max(1)).clamp(1, 4);
    for _ in 0..rounds {
        for b in batches {
            stages.score(b.clone()).await?;
            scored += b.num_rows() as u64;
        }
    }
    let rate = scored as f64 / t.elapsed().as_secs_f64();
    let timed = stages.model_timings().unwrap_or_default();
    let (prepare, infer) = (timed.prepare - before.prepare, timed.infer - before.infer);
    Ok(ModelCeiling {
        rate,
        scored,
        inference_rate: scored as f64 / infer.as_secs_f64(),
        prepare_share: prepare.as_secs_f64() / infer.as_secs_f64(),
    })
}

/// The end-to-end run: events/s from the first event read, as the decode
/// ceiling is timed (joining the group, seconds on the embedded broker, is
/// start-up, not throughput).
struct EndToEnd {
    rate: f64,
    run_time: std::time::Duration,
    startup: std::time::Duration,
    stats: Arc<RunStats>,
    clocks: Vec<DetectorClocks>,
}

async fn end_to_end(stages: Stages, src: &crate::config::KafkaSource, feed: &Feed) -> Result<EndToEnd, RuntimeError> {
    let stats = Arc::new(RunStats::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let read = stats.clone();
    let feeder = feed.start(
        &src.topic,
        Arc::new(move || read.received.load(Ordering::Relaxed)),
        shutdown.clone(),
    );
    let started = Instant::now();
    let first = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while stats.received.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Instant::now()
        })
    };
    let clocks = stages.detector_clocks();
    let opts = RunOptions {
        max_events: Some(feed.events),
        group_id: Some("driftwatch-bench".into()),
        ..Default::default()
    };
    runtime::run(stages, opts, shutdown.clone(), stats.clone(), None).await?;
    let first = first.await.map_err(other)?;
    let run_time = first.elapsed();
    feeder.await.map_err(other)??;
    Ok(EndToEnd {
        rate: feed.events as f64 / run_time.as_secs_f64(),
        run_time,
        startup: first - started,
        stats,
        clocks,
    })
}

fn print_report(feed: &Feed, decode_rate: f64, model: &ModelCeiling, max: usize, e2e: &EndToEnd) {
    let (events, mean) = (feed.events, mean_len(&feed.payloads));
    println!("events:                      {events} ({mean} bytes on average, {PARTITIONS} partitions)");
    println!("consume + decode alone:      {decode_rate:>12.0} events/s");
    println!(
        "ONNX Runtime alone:          {:>12.0} events/s ({} events in batches of {max})",
        model.rate, model.scored
    );
    println!(
        "  of which inference only:   {:>12.0} events/s (inputs prepared beforehand)",
        model.inference_rate
    );
    println!(
        "  input preparation:         {:>12.1} % of inference time (tokenizing, padding)",
        100.0 * model.prepare_share
    );
    println!("end to end:                  {:>12.0} events/s", e2e.rate);
    println!(
        "start-up (group join):       {:>12.2} s, not counted above",
        e2e.startup.as_secs_f64()
    );
    println!("end to end / decode ceiling: {:>12.2}", e2e.rate / decode_rate);
    println!("end to end / model ceiling:  {:>12.2}", e2e.rate / model.rate);
    println!("end to end / inference only: {:>12.2}", e2e.rate / model.inference_rate);
    println!("CPU features:                {}", crate::detect::simd::features());
    println!("detectors (in the end-to-end run):");
    print_detector_costs(&e2e.clocks, e2e.run_time);
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let s = &e2e.stats;
    println!(
        "evaluations {}, alerts {}, dead letters {}",
        count(&s.evaluations),
        count(&s.alerts),
        count(&s.dead_lettered)
    );
}
