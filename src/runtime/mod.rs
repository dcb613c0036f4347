//! Wiring the stages: `run` (Kafka in, Kafka out) and `compare` (two files).
//!
//! `run` has two tasks joined by a bounded channel (back-pressure, not an
//! unbounded queue): the consumer task reads, decodes and dead-letters; the
//! processing task scores, windows, detects, publishes, and commits offsets
//! only after every record that depends on them is delivered (acks=all).

mod delivery;
mod fault;
mod labels_reader;
mod publish;
pub mod published;
mod reader;
mod states;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use rdkafka::consumer::CommitMode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::compare::{CompareDetector, CompareReport, compare};
pub use crate::engine::{Stages, key_column, validate};
pub use crate::error::RuntimeError;
pub use crate::metrics::RunStats;
use crate::metrics::StallWatch;

use crate::alert::{Evaluation, message_key};
use crate::config::{Pipeline, SourceConfig};
use crate::decode::Rejection;
use crate::engine::{Engine, Evaluated, Labelled, Sink};
use crate::source::checkpoint::{self, Checkpoints};
use crate::source::kafka::{self, KafkaConsumer, Position};
use delivery::*;
use fault::Fault;
use labels_reader::*;
use publish::*;
use published::Published;
use reader::*;
use states::{KeyStates, Which};

pub(crate) fn kafka_err(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Kafka { what, source }
}

/// Options of `run` beyond the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (cleanly) after this many events were read: for demos and tests.
    pub max_events: Option<u64>,
    /// Consumer group override.
    pub group_id: Option<String>,
    /// Stalled after this long without reading while events wait (see
    /// [`crate::metrics::StallWatch`]); `None`: [`DEFAULT_STALL_AFTER`],
    /// zero: never.
    pub stall_after: Option<Duration>,
}

/// How long a consumer may read nothing while events wait before it counts as stalled.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(120);

/// A callback seeing each evaluation (the demo's live view).
pub type Observer = Arc<dyn Fn(&Evaluation) + Send + Sync>;

/// What publishing evaluations needs.
struct Out<'a> {
    consumer: &'a KafkaConsumer,
    producer: &'a FutureProducer,
    p: &'a Pipeline,
    /// The source's topic (dead letters name it).
    events_topic: &'a str,
    stats: &'a RunStats,
    observer: Option<&'a Observer>,
    /// Evaluations a killed run delivered without a mark (see [`Published`]).
    published: &'a Published,
    /// Key states of the event windows and of the labelled ones.
    states: &'a KeyStates,
    labelled_states: &'a KeyStates,
}

impl Out<'_> {
    /// The label join's counters, for the metrics.
    fn join_stats(&self, engine: &Engine) {
        if let Some(l) = &engine.labelled {
            *self.stats.labels.lock().unwrap_or_else(|e| e.into_inner()) = l.join.stats.clone();
        }
    }
}

/// What the processing task receives.
enum Msg {
    Events(Work),
    /// Records of the labels topic, read in the labels reader's `generation`
    /// (its partitions follow the events partitions: see [`follow_labels`]).
    Labels {
        generation: u64,
        records: Vec<crate::source::RawRecord>,
    },
}

struct Work {
    /// The consumer's rebalance generation when these records were read.
    generation: u64,
    batch: Option<RecordBatch>,
    /// First and last offset read per partition, decoded or not.
    first: BTreeMap<i32, i64>,
    last: BTreeMap<i32, i64>,
    /// Dead-letter deliveries to await before committing.
    pending: Vec<rdkafka::producer::DeliveryFuture>,
}

/// Runs a Kafka pipeline until `shutdown` is set (or `max_events` read).
/// On shutdown the batch in hand is finished, pending records are delivered
/// and offsets committed.
pub async fn run(
    stages: Stages,
    opts: RunOptions,
    shutdown: Arc<AtomicBool>,
    stats: Arc<RunStats>,
    observer: Option<Observer>,
) -> Result<(), RuntimeError> {
    // Refused before anything connects.
    let mut fault = Fault::from_env()?;
    let p = stages.pipeline.clone();
    let Some(SourceConfig::Kafka(src)) = &p.source else {
        return Err(RuntimeError::Other(
            "`run` needs a kafka source; use `compare` or `replay --input` for files".into(),
        ));
    };
    let group = opts
        .group_id
        .clone()
        .or_else(|| src.group_id.clone())
        .unwrap_or_else(|| format!("driftwatch-{}", p.name));
    let checkpoints = open_checkpoints(src, &group).await?;
    let consumer = Arc::new(KafkaConsumer::new(src, &group, checkpoints).map_err(kafka_err("creating consumer"))?);
    let out_brokers = p.output.brokers.clone().unwrap_or_else(|| src.brokers.clone());
    let out_props = p.output.properties.clone().unwrap_or_else(|| src.properties.clone());
    let producer = kafka::producer(&out_brokers, &out_props).map_err(kafka_err("creating producer"))?;
    let mut engine = Engine::new(stages).await?;
    let mut hw = LabelledHw::new();
    tracing::info!(pipeline = %p.name, topic = %src.topic, group = %group, brokers = %src.brokers, "consuming");

    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let events_done = Arc::new(AtomicBool::new(false));
    let mut labels_reader = match &p.labels {
        Some(l) => Some(LabelsReader::spawn(l, src, &group, &tx, &shutdown, &events_done)?),
        None => None,
    };
    let reader = tokio::spawn(read_loop(
        consumer.clone(),
        engine.stages.decoder(),
        producer.clone(),
        p.clone(),
        src.topic.clone(),
        tx,
        shutdown.clone(),
        stats.clone(),
        opts.max_events,
    ));

    // Stops with the run, however it ends.
    let _watcher = AbortOnDrop(tokio::spawn(watch_lag(
        consumer.clone(),
        stats.clone(),
        opts.stall_after.unwrap_or(DEFAULT_STALL_AFTER),
    )));

    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let scoring = engine.stages.scoring_id();
    let key_states = KeyStates::new(
        Which::Events,
        &engine.windows,
        &engine.policy,
        engine.stages.detector_names(false),
        &scoring,
    );
    let labelled_states = KeyStates::new(
        Which::Labelled,
        engine.labelled.as_ref().map_or(&engine.windows, |l| &l.windows),
        &engine.policy,
        engine.stages.detector_names(true),
        &scoring,
    );
    let mut published = Published::default();
    let mut result = Ok(());
    // The labels task stops once the events reader has (and labels went quiet).
    let reader = {
        let done = events_done.clone();
        tokio::spawn(async move {
            let r = reader.await;
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let mut generation = consumer.generation();
    while let Some(msg) = rx.recv().await {
        let now = consumer.generation();
        if now != generation {
            // A rebalance: state rebuilt from the committed offsets (see
            // `Held::rebuild`); evaluations already delivered are recognised
            // by the marks and the scan of published ones, not sent again.
            generation = now;
            last.clear();
            let held = Held {
                consumer: &consumer,
                states: &key_states,
                labelled_states: &labelled_states,
                labels_reader: labels_reader.as_ref(),
                stats: &stats,
            };
            match held.rebuild(&mut engine, &mut hw).await {
                Ok(()) => published = scan_published(&consumer, &p, &out_brokers, &out_props).await,
                Err(e) => {
                    shutdown.store(true, Ordering::SeqCst);
                    result = Err(e);
                    break;
                }
            }
        }
        let out = Out {
            consumer: &consumer,
            producer: &producer,
            p: &p,
            events_topic: &src.topic,
            stats: &stats,
            observer: observer.as_ref(),
            published: &published,
            states: &key_states,
            labelled_states: &labelled_states,
        };
        let step = match msg {
            Msg::Events(work) => {
                let in_flight = consumer.begin(work.generation);
                let Some(_in_flight) = in_flight else {
                    // Read before the rebalance: read again from the committed offsets.
                    stats.discarded.fetch_add(
                        work.batch.as_ref().map_or(0, |b| b.num_rows() as u64),
                        Ordering::Relaxed,
                    );
                    if let Err(e) = await_deliveries(work.pending).await {
                        shutdown.store(true, Ordering::SeqCst);
                        result = Err(e);
                        break;
                    }
                    continue;
                };
                process(&mut engine, &mut hw, &out, work, &mut last, &mut fault).await
            }
            Msg::Labels {
                generation: read_in,
                records,
            } => match &labels_reader {
                // Labels read before the reader last followed the events
                // partitions are read again from their commit.
                Some(r) if r.follow.borrow().generation == read_in => {
                    // Like an events batch, a revocation waits for it;
                    // after one (handled on the next message) it is read again.
                    let Some(_in_flight) = consumer.begin(generation) else {
                        continue;
                    };
                    process_labels(&mut engine, &mut hw, &r.consumer, &out, records, &last, &mut fault).await
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = step {
            // Stop reading; nothing more is committed, so a restart redoes this batch.
            shutdown.store(true, Ordering::SeqCst);
            result = Err(e);
            break;
        }
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| RuntimeError::Other(format!("consumer task: {e}")))?
        .map_err(|e| RuntimeError::Other(format!("consumer task: {e}")))?;
    // The labels consumer itself lives on until the run returns (closing it
    // earlier, before the final commit, held runs up).
    if let Some(r) = labels_reader.as_mut() {
        (&mut r.task)
            .await
            .map_err(|e| RuntimeError::Other(format!("labels consumer task: {e}")))??;
    }
    result?;
    read?;
    let states = [&key_states, &labelled_states];
    save_and_commit(&consumer, states, &mut engine, &hw, &last).await?;
    tracing::info!(pipeline = %p.name, received = stats.received.load(Ordering::Relaxed), alerts = stats.alerts.load(Ordering::Relaxed), "stopped");
    Ok(())
}

/// What an instance holds between rebalances.
struct Held<'a> {
    consumer: &'a Arc<KafkaConsumer>,
    states: &'a KeyStates,
    labelled_states: &'a KeyStates,
    labels_reader: Option<&'a LabelsReader>,
    stats: &'a RunStats,
}

impl Held<'_> {
    /// After a rebalance: every partition was revoked (eager protocol).
    /// Windows, labelled windows and the label join are rebuilt by replaying
    /// the partitions this instance holds now, and their labels, from the
    /// committed offsets (saved key states first); the labels reader follows
    /// the new partitions.
    async fn rebuild(&self, engine: &mut Engine, hw: &mut LabelledHw) -> Result<(), RuntimeError> {
        let restored = self
            .states
            .rebuild(self.consumer, &mut engine.windows, &mut engine.policy);
        let mut restored_labelled = 0;
        hw.clear();
        if let Some(l) = engine.labelled.as_mut() {
            l.join.reset();
            l.join.expect_events_from(&self.consumer.assignment());
            restored_labelled = self
                .labelled_states
                .rebuild(self.consumer, &mut l.windows, &mut engine.policy);
        }
        if let Some(r) = self.labels_reader {
            follow_labels(self.consumer, &r.consumer, &r.follow).await?;
        }
        if restored + restored_labelled > 0 {
            tracing::info!(
                keys = restored,
                labelled_keys = restored_labelled,
                "key states restored; windows rebuilt by replay"
            );
        }
        let dropped = self.stats.window_keys.swap(0, Ordering::Relaxed);
        self.stats.window_events.store(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::info!(
                keys_dropped = dropped,
                "rebalance: windows dropped, to be rebuilt by replay"
            );
        }
        Ok(())
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every second: the lags librdkafka last reported, and whether the run is
/// stalled. A task of its own, because a stalled reader is exactly the one
/// that cannot report it (it waits on a full channel, or on the broker).
async fn watch_lag(consumer: Arc<KafkaConsumer>, stats: Arc<RunStats>, stall_after: Duration) {
    let mut stall = StallWatch::new(stall_after, std::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        *stats.lag.lock().unwrap_or_else(|e| e.into_inner()) = consumer.lag();
        stall.check(&stats, std::time::Instant::now());
    }
}

/// Scores a batch, adds it to the windows (and the label join) and
/// publishes what became due; then saves key states and commits.
async fn process(
    engine: &mut Engine,
    hw: &mut LabelledHw,
    out: &Out<'_>,
    work: Work,
    last: &mut BTreeMap<i32, i64>,
    fault: &mut Fault,
) -> Result<(), RuntimeError> {
    let (consumer, stats) = (out.consumer, out.stats);
    mark_start(consumer, &work.first).await?;
    let mut sink = Publisher {
        out,
        hw,
        pending: work.pending,
    };
    // Evaluations made (not replayed): their delivery is then checkpointed.
    let mut made = 0;
    if let Some(batch) = work.batch {
        let t = std::time::Instant::now();
        let scored = engine.stages.score(batch).await?;
        stats
            .model_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.processed.fetch_add(scored.num_rows() as u64, Ordering::Relaxed);
        if let Some(t) = engine.stages.model_timings() {
            stats.model_scored.store(t.scored, Ordering::Relaxed);
        }
        let evaluated = engine.push_scored(&scored).await?;
        let (keys, held) = engine.windows.fill();
        stats.window_keys.store(keys as u64, Ordering::Relaxed);
        stats.window_events.store(held as u64, Ordering::Relaxed);
        out.join_stats(engine);
        made += sink.evaluated(evaluated)?;
    }
    await_deliveries(sink.pending).await?;
    if made > 0 {
        fault.delivered();
    }
    // Only the partitions read in this batch can have new evaluations.
    let touched: Vec<i32> = if made > 0 {
        work.last.keys().copied().collect()
    } else {
        vec![]
    };
    last.extend(work.last);
    out.states.save(consumer, &mut engine.windows, &engine.policy).await?;
    if let Some(l) = engine.labelled.as_mut() {
        out.labelled_states
            .save(consumer, &mut l.windows, &engine.policy)
            .await?;
    }
    let labelled = engine.labelled.as_ref().map(|l| (l, &*hw));
    commit(consumer, &engine.windows, labelled, last, CommitMode::Async, &touched)
        .await
        .map(|_| ())
}
