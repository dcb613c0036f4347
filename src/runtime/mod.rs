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
    /// Static membership: the group consumer's `group.instance.id`
    /// (overrides one in `source.properties`); see [`kafka::static_member`].
    pub instance_id: Option<String>,
    /// Stalled after this long without reading while events wait (see
    /// [`crate::metrics::StallWatch`]); `None`: [`DEFAULT_STALL_AFTER`],
    /// zero: never.
    pub stall_after: Option<Duration>,
    /// A fault to inject, for tests (see `DRIFTWATCH_FAULT`, which this overrides).
    pub fault: Option<String>,
}

/// How long a consumer may read nothing while events wait before it counts as stalled.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(120);

/// A callback seeing each evaluation (the demo's live view).
pub type Observer = Arc<dyn Fn(&Evaluation) + Send + Sync>;

/// What publishing evaluations needs.
struct Out {
    consumer: Arc<KafkaConsumer>,
    producer: FutureProducer,
    p: Pipeline,
    /// The source's topic (dead letters name it).
    events_topic: String,
    stats: Arc<RunStats>,
    observer: Option<Observer>,
    /// Evaluations a killed run delivered without a mark (see [`Published`]).
    published: Published,
    /// Key states of the event windows and of the labelled ones.
    states: KeyStates,
    labelled_states: KeyStates,
}

impl Out {
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
    let fault = Fault::from_env_or(opts.fault.as_deref())?;
    let p = stages.pipeline.clone();
    let (src, group) = source_and_group(&p, &opts)?;
    let (consumer, output, producer) = connect(&p, &src, &group).await?;
    let engine = Engine::new(stages).await?;
    tracing::info!(pipeline = %p.name, topic = %src.topic, group = %group, brokers = %src.brokers, "consuming");

    let (tx, rx) = mpsc::channel::<Msg>(4);
    let events_done = Arc::new(AtomicBool::new(false));
    let mut labels_reader = match &p.labels {
        Some(l) => Some(LabelsReader::spawn(l, &src, &group, &tx, &shutdown, &events_done)?),
        None => None,
    };
    let reader = EventsReader {
        consumer: consumer.clone(),
        decoder: engine.stages.decoder(),
        producer: producer.clone(),
        p: p.clone(),
        tx,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        max_events: opts.max_events,
    };
    let reader = tokio::spawn(reader.read());
    // The labels task stops once the events reader has (and labels went quiet).
    let reader = tokio::spawn(async move {
        let r = reader.await;
        events_done.store(true, Ordering::SeqCst);
        r
    });
    // Stops with the run, however it ends.
    let watcher = AbortOnDrop(Some(tokio::spawn(watch_lag(
        consumer.clone(),
        stats.clone(),
        opts.stall_after.unwrap_or(DEFAULT_STALL_AFTER),
    ))));

    let mut processing = Processing::new(engine, consumer, producer, output, stats, observer, fault);
    let result = processing.drain(rx, labels_reader.as_ref()).await;
    if result.is_err() {
        // Stop reading; nothing more is committed, so a restart redoes this batch.
        shutdown.store(true, Ordering::SeqCst);
    }
    let read = join_readers(reader, labels_reader.as_mut()).await;
    // The watcher holds the consumer too: gone before the final commit, so
    // that the consumer closes (and leaves its group) when the run returns,
    // while its brokers are still there.
    watcher.stop().await;
    result?;
    read?;
    processing.finish().await
}

/// The pipeline's Kafka source (as a static member with `--instance-id`)
/// and its consumer group: `--group-id`, else the source's `group_id`, else
/// `driftwatch-<pipeline>`.
fn source_and_group(p: &Pipeline, opts: &RunOptions) -> Result<(crate::config::KafkaSource, String), RuntimeError> {
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
    let src = match &opts.instance_id {
        Some(id) => kafka::static_member(src, id).map_err(RuntimeError::Other)?,
        None => src.clone(),
    };
    Ok((src, group))
}

/// The group consumer (with its checkpoint store), where evaluations go,
/// and the producer that sends them.
async fn connect(
    p: &Pipeline,
    src: &crate::config::KafkaSource,
    group: &str,
) -> Result<(Arc<KafkaConsumer>, Output, FutureProducer), RuntimeError> {
    let checkpoints = open_checkpoints(src, group).await?;
    let consumer = KafkaConsumer::new(src, group, checkpoints).map_err(kafka_err("creating consumer"))?;
    let output = Output::of(p, src);
    let producer = kafka::producer(&output.brokers, &output.properties).map_err(kafka_err("creating producer"))?;
    Ok((Arc::new(consumer), output, producer))
}

/// Waits for the events reader, then the labels reader; the first error.
/// The labels consumer itself lives on until the run returns (closing it
/// earlier, before the final commit, held runs up).
async fn join_readers(
    events: tokio::task::JoinHandle<Result<Result<(), RuntimeError>, tokio::task::JoinError>>,
    labels: Option<&mut LabelsReader>,
) -> Result<(), RuntimeError> {
    let task_err = |what: &str, e: tokio::task::JoinError| RuntimeError::Other(format!("{what}: {e}"));
    let read = events
        .await
        .map_err(|e| task_err("consumer task", e))?
        .map_err(|e| task_err("consumer task", e))?;
    if let Some(r) = labels {
        (&mut r.task).await.map_err(|e| task_err("labels consumer task", e))??;
    }
    read
}

/// Where evaluations go: the output brokers and their client properties
/// (the source's unless the pipeline's `output` names others).
struct Output {
    brokers: String,
    properties: BTreeMap<String, String>,
}

impl Output {
    fn of(p: &Pipeline, src: &crate::config::KafkaSource) -> Self {
        Self {
            brokers: p.output.brokers.clone().unwrap_or_else(|| src.brokers.clone()),
            properties: p.output.properties.clone().unwrap_or_else(|| src.properties.clone()),
        }
    }
}

/// The processing task: the engine, and what the delivery protocol keeps
/// for it between batches.
struct Processing {
    engine: Engine,
    out: Out,
    output: Output,
    fault: Fault,
    /// Per events partition, the last offset read in this assignment.
    last: BTreeMap<i32, i64>,
    hw: LabelledHw,
    /// The consumer's rebalance generation this state is of.
    generation: u64,
}

impl Processing {
    fn new(
        engine: Engine,
        consumer: Arc<KafkaConsumer>,
        producer: FutureProducer,
        output: Output,
        stats: Arc<RunStats>,
        observer: Option<Observer>,
        fault: Fault,
    ) -> Self {
        let scoring = engine.stages.scoring_id();
        let states = KeyStates::new(
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
        let out = Out {
            p: engine.stages.pipeline.clone(),
            events_topic: consumer.topic().to_string(),
            consumer,
            producer,
            stats,
            observer,
            published: Published::default(),
            states,
            labelled_states,
        };
        Self {
            generation: out.consumer.generation(),
            engine,
            out,
            output,
            fault,
            last: BTreeMap::new(),
            hw: LabelledHw::new(),
        }
    }

    /// Processes what the readers send until they stop, or until a step
    /// fails (its error).
    async fn drain(&mut self, mut rx: mpsc::Receiver<Msg>, labels: Option<&LabelsReader>) -> Result<(), RuntimeError> {
        while let Some(msg) = rx.recv().await {
            let now = self.out.consumer.generation();
            if now != self.generation {
                self.generation = now;
                self.rebalanced(labels).await?;
            }
            match msg {
                Msg::Events(work) => self.events(work).await?,
                Msg::Labels { generation, records } => self.labels(generation, records, labels).await?,
            }
        }
        Ok(())
    }

    /// A rebalance: state rebuilt from the committed offsets (see
    /// [`Held::rebuild`]); evaluations already delivered are recognised by
    /// the marks and the scan of published ones, not sent again.
    async fn rebalanced(&mut self, labels_reader: Option<&LabelsReader>) -> Result<(), RuntimeError> {
        self.last.clear();
        let out = &self.out;
        let held = Held {
            consumer: &out.consumer,
            states: &out.states,
            labelled_states: &out.labelled_states,
            labels_reader,
            stats: &out.stats,
        };
        held.rebuild(&mut self.engine, &mut self.hw).await?;
        let o = &self.output;
        self.out.published = scan_published(&self.out.consumer, &self.out.p, &o.brokers, &o.properties).await;
        Ok(())
    }

    /// A batch of events, unless it was read before the last rebalance.
    async fn events(&mut self, work: Work) -> Result<(), RuntimeError> {
        let Some(_in_flight) = self.out.consumer.begin(work.generation) else {
            // Read before the rebalance: read again from the committed offsets.
            let n = work.batch.as_ref().map_or(0, |b| b.num_rows() as u64);
            self.out.stats.discarded.fetch_add(n, Ordering::Relaxed);
            return await_deliveries(work.pending).await;
        };
        let (engine, hw, out) = (&mut self.engine, &mut self.hw, &self.out);
        process(engine, hw, out, work, &mut self.last, &mut self.fault).await
    }

    /// A batch of labels, unless read before the labels reader last
    /// followed the events partitions (then it is read again from its commit).
    async fn labels(
        &mut self,
        read_in: u64,
        records: Vec<crate::source::RawRecord>,
        reader: Option<&LabelsReader>,
    ) -> Result<(), RuntimeError> {
        let Some(r) = reader.filter(|r| r.follow.borrow().generation == read_in) else {
            return Ok(());
        };
        // Like an events batch, a revocation waits for it; after one
        // (handled on the next message) it is read again.
        let Some(_in_flight) = self.out.consumer.begin(self.generation) else {
            return Ok(());
        };
        let (engine, hw, out) = (&mut self.engine, &mut self.hw, &self.out);
        process_labels(engine, hw, &r.consumer, out, records, &self.last, &mut self.fault).await
    }

    /// The final synchronous commit of what is accounted for.
    async fn finish(mut self) -> Result<(), RuntimeError> {
        let out = &self.out;
        let states = [&out.states, &out.labelled_states];
        save_and_commit(&out.consumer, states, &mut self.engine, &self.hw, &self.last).await?;
        let (received, alerts) = (
            out.stats.received.load(Ordering::Relaxed),
            out.stats.alerts.load(Ordering::Relaxed),
        );
        tracing::info!(pipeline = %out.p.name, received, alerts, "stopped");
        Ok(())
    }
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
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone.
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
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

/// Scores a batch and adds it to the windows (and the label join), counting
/// both in the run's metrics: the evaluations that became due.
async fn score_and_window(
    engine: &mut Engine,
    out: &Out,
    batch: RecordBatch,
    fault: &mut Fault,
) -> Result<Vec<Evaluated>, RuntimeError> {
    let stats = &out.stats;
    let t = std::time::Instant::now();
    let scored = engine.stages.score(batch).await?;
    stats
        .model_nanos
        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.processed.fetch_add(scored.num_rows() as u64, Ordering::Relaxed);
    if let Some(t) = engine.stages.model_timings() {
        stats.model_scored.store(t.scored, Ordering::Relaxed);
        fault.scored(t.scored).await;
    }
    let evaluated = engine.push_scored(&scored).await?;
    let (keys, held) = engine.windows.fill();
    stats.window_keys.store(keys as u64, Ordering::Relaxed);
    stats.window_events.store(held as u64, Ordering::Relaxed);
    out.join_stats(engine);
    Ok(evaluated)
}

/// Scores a batch, adds it to the windows (and the label join) and
/// publishes what became due; then saves key states and commits.
async fn process(
    engine: &mut Engine,
    hw: &mut LabelledHw,
    out: &Out,
    work: Work,
    last: &mut BTreeMap<i32, i64>,
    fault: &mut Fault,
) -> Result<(), RuntimeError> {
    let consumer = &out.consumer;
    mark_start(consumer, &work.first).await?;
    let mut sink = Publisher {
        out,
        hw,
        pending: work.pending,
    };
    // Evaluations made (not replayed): their delivery is then checkpointed.
    let mut made = 0;
    if let Some(batch) = work.batch {
        let evaluated = score_and_window(engine, out, batch, fault).await?;
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
    commit(
        consumer,
        &engine.windows,
        labelled,
        last,
        (CommitMode::Async, &engine.stages),
        &touched,
    )
    .await
    .map(|_| ())
}
