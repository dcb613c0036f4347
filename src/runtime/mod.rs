//! Wiring the stages: `run` (Kafka in, Kafka out) and `compare` (two files).
//!
//! `run` has two tasks joined by a bounded channel (back-pressure, not an
//! unbounded queue): the consumer task reads, decodes and dead-letters; the
//! processing task scores, windows, detects, publishes, and commits offsets
//! only after every record that depends on them is delivered (acks=all).

pub mod published;
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

pub use crate::engine::{Stages, key_column, validate};
pub use crate::error::RuntimeError;
pub use crate::metrics::RunStats;
use crate::metrics::StallWatch;

use crate::alert::{Evaluation, message_key};
use crate::config::{ConfigError, Pipeline, SourceConfig};
use crate::decode::Rejection;
use crate::engine::{Engine, Evaluated, Labelled};
use crate::source::checkpoint::{self, Checkpoints};
use crate::source::file;
use crate::source::kafka::{self, KafkaConsumer, Position};
use published::Published;
use states::{KeyStates, Which};

fn kafka_err(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Kafka { what, source }
}

/// Dead-letter record: the rejection plus where it came from.
#[derive(Serialize)]
struct DeadLetter<'a> {
    pipeline: &'a str,
    topic: &'a str,
    #[serde(flatten)]
    rejection: &'a Rejection,
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

/// Per events partition, the end of the last labelled evaluation sent in
/// this assignment (recorded in the next mark).
type LabelledHw = BTreeMap<i32, i64>;

/// What publishing evaluations needs.
struct Out<'a> {
    consumer: &'a KafkaConsumer,
    producer: &'a FutureProducer,
    p: &'a Pipeline,
    stats: &'a RunStats,
    observer: Option<&'a Observer>,
    /// Evaluations a killed run delivered without a mark (see [`Published`]).
    published: &'a Published,
    /// Key states of the event windows and of the labelled ones.
    states: &'a KeyStates,
    labelled_states: &'a KeyStates,
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

/// The final synchronous commit of what is accounted for, key states first.
async fn save_and_commit(
    consumer: &Arc<KafkaConsumer>,
    [states, labelled_states]: [&KeyStates; 2],
    engine: &mut Engine,
    hw: &LabelledHw,
    last: &BTreeMap<i32, i64>,
) -> Result<(), RuntimeError> {
    states.save(consumer, &mut engine.windows, &engine.policy).await?;
    if let Some(l) = engine.labelled.as_mut() {
        labelled_states.save(consumer, &mut l.windows, &engine.policy).await?;
    }
    let labelled = engine.labelled.as_ref().map(|l| (l, hw));
    commit(consumer, &engine.windows, labelled, last, CommitMode::Sync, &[]).await?;
    consumer.finished();
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

/// The checkpoint store of `src`, its topic created when missing; None
/// when the source has none.
async fn open_checkpoints(src: &crate::config::KafkaSource, group: &str) -> Result<Option<Checkpoints>, RuntimeError> {
    let Some(t) = &src.checkpoint_topic else {
        return Ok(None);
    };
    let what = || format!("checkpoint topic `{t}` (source.checkpoint_topic; null turns checkpoints off)");
    if checkpoint::ensure_topic(&src.brokers, &src.properties, t)
        .await
        .map_err(kafka_err(what()))?
    {
        tracing::info!(topic = %t, "checkpoint topic created (one partition, compacted)");
    }
    let c = Checkpoints::new(&src.brokers, &src.properties, t, group, &src.topic).map_err(kafka_err(what()))?;
    Ok(Some(c))
}

/// The late labels' reader: a consumer that follows the labels partitions
/// numbered like the events partitions held, its task, and what to follow.
struct LabelsReader {
    consumer: Arc<KafkaConsumer>,
    task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
    follow: tokio::sync::watch::Sender<Follow>,
}

impl LabelsReader {
    fn spawn(
        l: &crate::config::LabelsConfig,
        src: &crate::config::KafkaSource,
        group: &str,
        tx: &mpsc::Sender<Msg>,
        shutdown: &Arc<AtomicBool>,
        events_done: &Arc<AtomicBool>,
    ) -> Result<Self, RuntimeError> {
        let mut lsrc = src.clone();
        lsrc.topic = l.topic.clone();
        let lgroup = l.group_id.clone().unwrap_or_else(|| format!("{group}-labels"));
        let consumer =
            Arc::new(KafkaConsumer::follower(&lsrc, &lgroup).map_err(kafka_err("creating labels consumer"))?);
        tracing::info!(topic = %l.topic, group = %lgroup, horizon_ms = l.horizon_ms.get(), "joining late labels");
        let (follow, wanted) = tokio::sync::watch::channel(Follow::default());
        let task = tokio::spawn(labels_loop(
            consumer.clone(),
            wanted,
            tx.clone(),
            shutdown.clone(),
            events_done.clone(),
        ));
        Ok(Self { consumer, task, follow })
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

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    consumer: Arc<KafkaConsumer>,
    mut decoder: crate::decode::Decoder,
    producer: FutureProducer,
    p: Pipeline,
    topic: String,
    tx: mpsc::Sender<Msg>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<RunStats>,
    max_events: Option<u64>,
) -> Result<(), RuntimeError> {
    let linger = Duration::from_millis(p.batch.linger_ms);
    let max = p.batch.max_events.get();
    let mut first = BTreeMap::new();
    let mut last = BTreeMap::new();
    let mut pending = vec![];
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut read = 0u64;
    let mut generation = consumer.generation();
    let mut checked = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        if checked.elapsed() > Duration::from_secs(2) {
            checked = tokio::time::Instant::now();
            if !stats.ready.load(Ordering::Relaxed) && consumer.assigned() {
                stats.ready.store(true, Ordering::Relaxed);
            }
        }
        let stop = shutdown.load(Ordering::SeqCst) || max_events.is_some_and(|m| read >= m);
        let flush_now = stop || decoder.len() >= max || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if flush_now {
            // Rebalance problems are reported by the consumer context; say them here.
            for e in consumer.take_errors() {
                tracing::error!(error = %e, "consumer group");
            }
        }
        if flush_now && (!decoder.is_empty() || !pending.is_empty() || !last.is_empty()) {
            let batch = decoder.flush()?;
            let work = Work {
                generation,
                batch,
                first: std::mem::take(&mut first),
                last: std::mem::take(&mut last),
                pending: std::mem::take(&mut pending),
            };
            if tx.send(Msg::Events(work)).await.is_err() {
                return Ok(()); // processing stopped
            }
            deadline = None;
        }
        if stop {
            return Ok(());
        }
        // A message already fetched needs no timer: take it at once (most
        // are, under load), yielding now and then so the worker's other
        // tasks run. Only an empty queue waits, up to the linger deadline.
        let ready = if read % 256 == 255 {
            tokio::task::yield_now().await;
            None
        } else {
            futures::FutureExt::now_or_never(consumer.recv())
        };
        let got = match ready {
            Some(r) => Ok(r),
            None => {
                let wait = deadline
                    .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
                    .unwrap_or(Duration::from_millis(200));
                tokio::time::timeout(wait, consumer.recv()).await
            }
        };
        let rec = match got {
            Err(_) => None, // linger elapsed or periodic shutdown check
            Ok(Err(e)) => {
                // Broker outages surface here; librdkafka reconnects by itself.
                tracing::warn!(error = %e, "kafka consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            Ok(Ok(r)) => Some(r),
        };
        let now = consumer.generation();
        if now != generation {
            // A rebalance ran inside `recv`: what was read before it is read
            // again from the committed offsets, by this or another instance.
            generation = now;
            let _ = decoder.flush()?;
            first.clear();
            last.clear();
            deadline = None;
            // Processing learns of it at once, even if no record follows:
            // its windows and the labels reader follow the new assignment.
            let notice = Work {
                generation,
                batch: None,
                first: BTreeMap::new(),
                last: BTreeMap::new(),
                pending: std::mem::take(&mut pending),
            };
            if tx.send(Msg::Events(notice)).await.is_err() {
                return Ok(());
            }
        }
        let Some(rec) = rec else { continue };
        read += 1;
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Reading means assigned.
        stats.ready.store(true, Ordering::Relaxed);
        if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + linger);
        }
        first.entry(rec.partition).or_insert(rec.offset);
        last.insert(rec.partition, rec.offset);
        match decoder.decode(&rec) {
            Ok(()) => {
                stats.decoded.fetch_add(1, Ordering::Relaxed);
            }
            Err(rej) => pending.push(dead_letter(&producer, &p, &stats, &topic, &rej)?),
        }
    }
}

/// Counts and logs a rejected record of `topic`, and sends it to the
/// dead-letter topic with its reason; returns the delivery to await.
fn dead_letter(
    producer: &FutureProducer,
    p: &Pipeline,
    stats: &RunStats,
    topic: &str,
    rej: &Rejection,
) -> Result<rdkafka::producer::DeliveryFuture, RuntimeError> {
    stats.dead_letter(rej.reason.as_str());
    tracing::warn!(
        topic,
        reason = rej.reason.as_str(),
        partition = rej.partition,
        offset = rej.offset,
        "{}",
        rej.message
    );
    let body = serde_json::to_vec(&DeadLetter {
        pipeline: &p.name,
        topic,
        rejection: rej,
    })
    .unwrap_or_default();
    let key = format!("{}/{}/{}", topic, rej.partition, rej.offset);
    producer
        .send_result(FutureRecord::to(&p.output.dead_letter_topic).payload(&body).key(&key))
        .map_err(|(e, _)| RuntimeError::Kafka {
            what: "dead-letter produce".into(),
            source: e,
        })
}

/// Waits for every delivery; the first failure is the error.
async fn await_deliveries(pending: Vec<rdkafka::producer::DeliveryFuture>) -> Result<(), RuntimeError> {
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(RuntimeError::Kafka {
                    what: "delivery".into(),
                    source: e,
                });
            }
            Err(_) => return Err(RuntimeError::Other("delivery cancelled (producer closed)".into())),
        }
    }
    Ok(())
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
    let mut pending = work.pending;
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
        made += emit_all(engine, evaluated, out, hw, &mut pending)?;
    }
    await_deliveries(pending).await?;
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

/// Publishes what the engine evaluated, in its order; labelled evaluations
/// sent move the labelled mark. Returns how many evaluations were new.
fn emit_all(
    engine: &Engine,
    evaluated: Vec<Evaluated>,
    out: &Out<'_>,
    hw: &mut LabelledHw,
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> Result<usize, RuntimeError> {
    if let Some(l) = &engine.labelled {
        *out.stats.labels.lock().unwrap_or_else(|e| e.into_inner()) = l.join.stats.clone();
    }
    let mut made = 0;
    for e in evaluated {
        let n = emit(e.evaluations, e.coords.end, e.labelled, out, pending)?;
        if n > 0 && e.labelled {
            let (p, o) = e.coords.end;
            let mark = hw.entry(p).or_insert(o);
            *mark = (*mark).max(o);
        }
        made += n;
    }
    Ok(made)
}

/// Publishes a window pair's evaluations (the alert policy already
/// applied): alerts and statistics. Returns how many evaluations were new
/// (not covered by a mark of an earlier run); those a killed run already
/// put on an output topic are not sent there again.
fn emit(
    evals: Vec<Evaluation>,
    end: (i32, i64),
    labelled: bool,
    out: &Out<'_>,
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> Result<usize, RuntimeError> {
    let (p, stats) = (out.p, out.stats);
    if already_delivered(out.consumer, end, labelled) {
        // Sent by an earlier run: only the alert policy's memory was rebuilt.
        stats.suppressed.fetch_add(1, Ordering::Relaxed);
        return Ok(0);
    }
    let mut made = 0;
    for ev in evals {
        made += 1;
        let mut topics = vec![];
        if ev.alert {
            topics.push(p.output.alerts_topic.as_str());
        }
        if let Some(t) = &p.output.stats_topic {
            topics.push(t.as_str());
        }
        let before = topics.len();
        topics.retain(|t| !out.published.contains(t, &ev.alert_id));
        if topics.len() < before {
            tracing::info!(alert_id = %ev.alert_id, detector = %ev.detector, key = ev.key.as_deref().unwrap_or(""),
                "evaluation already published by a run that stopped before marking it: not sent again");
            if topics.is_empty() {
                stats.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        stats.evaluations.fetch_add(1, Ordering::Relaxed);
        {
            let mut d = stats.detectors.lock().unwrap_or_else(|e| e.into_inner());
            let m = d.entry(ev.detector.clone()).or_default();
            m.evaluations += 1;
            m.alerts += u64::from(ev.alert);
            m.last_p_value
                .insert(ev.key.clone().unwrap_or_default(), ev.p_value.unwrap_or(ev.statistic));
        }
        tracing::info!(
            detector = %ev.detector, key = ev.key.as_deref().unwrap_or(""), evaluation = ev.evaluation,
            statistic = ev.statistic, p_value = ev.p_value, threshold = ev.threshold, drift = ev.drift, alert = ev.alert,
            "evaluation"
        );
        if let Some(o) = out.observer {
            o(&ev);
        }
        let body = serde_json::to_vec(&ev).map_err(|e| RuntimeError::Other(e.to_string()))?;
        let key = message_key(&ev);
        if topics.contains(&p.output.alerts_topic.as_str()) {
            stats.alerts.fetch_add(1, Ordering::Relaxed);
        }
        for t in topics {
            let f = out
                .producer
                .send_result(FutureRecord::to(t).payload(&body).key(&key))
                .map_err(|(e, _)| RuntimeError::Kafka {
                    what: format!("produce to {t}"),
                    source: e,
                })?;
            pending.push(f);
        }
    }
    Ok(made)
}

/// Joins a batch of label records: bad ones to the dead-letter topic, joined
/// events into the labelled windows, their evaluations published; then the
/// events offsets (`last`: the last offsets read) and the labels consumer's
/// offsets are committed.
async fn process_labels(
    engine: &mut Engine,
    hw: &mut LabelledHw,
    labels_consumer: &KafkaConsumer,
    out: &Out<'_>,
    records: Vec<crate::source::RawRecord>,
    last_events: &BTreeMap<i32, i64>,
    fault: &mut Fault,
) -> Result<(), RuntimeError> {
    let (producer, p, stats) = (out.producer, out.p, out.stats);
    let topic = p.labels.as_ref().map(|l| l.topic.as_str()).unwrap_or_default();
    let mut pending = vec![];
    let mut good = vec![];
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        last.insert(r.partition, r.offset);
        match engine.parse_label(r) {
            Some(Ok(l)) => good.push(l),
            Some(Err(rej)) => pending.push(dead_letter(producer, p, stats, topic, &rej)?),
            None => {}
        }
    }
    let evaluated = engine.push_labels(good).await?;
    let made = emit_all(engine, evaluated, out, hw, &mut pending)?;
    await_deliveries(pending).await?;
    if made > 0 {
        fault.delivered();
    }
    let Some(ls) = engine.labelled.as_mut() else {
        return Ok(());
    };
    out.labelled_states
        .save(out.consumer, &mut ls.windows, &engine.policy)
        .await?;
    // The events commit follows the labelled windows too (else it waits for
    // the next events batch, which may never come), with the labelled mark;
    // synchronous, so that labels are never committed past events a restart
    // would replay.
    let touched: Vec<i32> = if made > 0 { hw.keys().copied().collect() } else { vec![] };
    let events_committed = commit(
        out.consumer,
        &engine.windows,
        Some((ls, &*hw)),
        last_events,
        CommitMode::Sync,
        &touched,
    )
    .await?;
    if !events_committed {
        // Refused (a rebalance): the labels commit must not get ahead of
        // the events one, or events replayed from the older commit would
        // wait for labels nobody reads again.
        return Ok(());
    }
    // Labels still needed to rebuild the join and the labelled windows are
    // read again after a restart.
    let needed = ls.join.labels_needed(&ls.windows.oldest_needed());
    let positions = last
        .iter()
        .map(|(p, o)| {
            (
                *p,
                Position {
                    next: resume_at(&needed, *p, *o),
                    delivered: *o,
                    labelled: None,
                },
            )
        })
        .collect();
    // Synchronous: the next owner of these partitions reads the labels
    // from this commit as soon as the events revocation completes.
    labels_consumer
        .commit(&positions, CommitMode::Sync)
        .map(|_| ())
        .map_err(kafka_err("commit labels"))
}

/// The labels partitions the labels reader is to read, set by the
/// processing task on each rebalance and applied by the reader itself
/// between two receives: every record it receives after applying one is of
/// the new assignment, and is tagged with its generation. (Applied from the
/// processing task, a record of the new assignment received just before the
/// generation moved was tagged with the old one and dropped, and never read
/// again: its event then waited for it forever, holding back its partition's
/// labelled windows.)
#[derive(Debug, Default, Clone)]
struct Follow {
    /// Labels batches carry the generation they were read in; those of an
    /// older one are dropped (read again from the commit).
    generation: u64,
    partitions: Vec<i32>,
}

/// Points the labels reader at the labels partitions that go with the
/// events partitions this instance holds: those of the same numbers, where
/// the labels of their events are (a label is produced with its event's key,
/// on a topic with as many partitions); every labels partition while it
/// holds every events partition, whatever their counts.
async fn follow_labels(
    events: &Arc<KafkaConsumer>,
    labels: &Arc<KafkaConsumer>,
    follow: &tokio::sync::watch::Sender<Follow>,
) -> Result<(), RuntimeError> {
    let held = events.assignment();
    let (e, l) = (events.clone(), labels.clone());
    let counts = tokio::task::spawn_blocking(move || {
        let t = Duration::from_secs(10);
        (e.partition_count(t), l.partition_count(t))
    })
    .await
    .map_err(|e| RuntimeError::Other(format!("labels partitions: {e}")))?;
    let partitions: Vec<i32> = match counts {
        (Ok(n_events), Ok(n_labels)) => {
            if !held.is_empty() && held.len() == n_events {
                (0..n_labels as i32).collect()
            } else {
                if n_events != n_labels && !held.is_empty() {
                    tracing::error!(events_topic = %events.topic(), events_partitions = n_events,
                        labels_topic = %labels.topic(), labels_partitions = n_labels,
                        "the labels topic is not partitioned like the events topic: with several instances in a group each reads the labels partitions numbered like its events partitions, so labels of its events may be on partitions it does not read (give both topics as many partitions and each label its event's key)");
                }
                held.iter().copied().filter(|p| (*p as usize) < n_labels).collect()
            }
        }
        (e, l) => {
            let err = e.err().or(l.err()).map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(error = %err, "cannot read the topics' partition counts; reading the labels partitions numbered like the events partitions held");
            held
        }
    };
    follow.send_modify(|f| {
        f.generation += 1;
        f.partitions = partitions.clone();
    });
    // Where the labels are read from: with the events' committed offsets,
    // what a restart rebuilds the join from.
    let (l, ps) = (labels.clone(), partitions.clone());
    let from = tokio::task::spawn_blocking(move || l.committed(&ps, Duration::from_secs(10)))
        .await
        .map_err(|e| RuntimeError::Other(format!("labels partitions: {e}")))?;
    match from {
        Ok(from) => tracing::info!(topic = %labels.topic(), partitions = ?partitions, committed = ?from,
            "labels partitions to follow (from their committed offsets; the earliest without one)"),
        Err(e) => tracing::info!(topic = %labels.topic(), partitions = ?partitions, error = %e,
            "labels partitions to follow (their committed offsets could not be read for this log)"),
    }
    Ok(())
}

/// Reads the labels topic in small batches until shutdown, or until the
/// events reader is done and the labels have been quiet for a moment.
/// How long the labels consumer may wait for its partitions before its
/// silence counts (see [`labels_loop`]).
const LABELS_JOIN_GRACE: Duration = Duration::from_secs(30);

async fn labels_loop(
    consumer: Arc<KafkaConsumer>,
    mut wanted: tokio::sync::watch::Receiver<Follow>,
    tx: mpsc::Sender<Msg>,
    shutdown: Arc<AtomicBool>,
    events_done: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let mut buf = vec![];
    // The generation the records in `buf` were read in.
    let mut generation = wanted.borrow().generation;
    let batch = |generation: u64, buf: &mut Vec<crate::source::RawRecord>| Msg::Labels {
        generation,
        records: std::mem::take(buf),
    };
    let mut quiet_since: Option<tokio::time::Instant> = None;
    let started = tokio::time::Instant::now();
    loop {
        let done = shutdown.load(Ordering::SeqCst) || events_done.load(Ordering::SeqCst);
        if done && quiet_since.is_some_and(|q| q.elapsed() > Duration::from_millis(1500)) {
            if !buf.is_empty() {
                let _ = tx.send(batch(generation, &mut buf)).await;
            }
            return Ok(());
        }
        if wanted.has_changed().unwrap_or(false) {
            // Moved to other partitions: what was read is read again.
            let f = wanted.borrow_and_update().clone();
            buf.clear();
            if let Err(e) = consumer.follow(&f.partitions) {
                shutdown.store(true, Ordering::SeqCst);
                return Err(kafka_err(format!("assigning labels partitions {:?}", f.partitions))(e));
            }
            generation = f.generation;
        }
        match tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await {
            Err(_) => {
                // Silence means "no more labels" only once the consumer has its
                // partitions: joining the group takes seconds, and the events
                // may all be read by then. A consumer never assigned counts as
                // quiet after a grace period, so it cannot hold the run forever.
                if consumer.assigned() || started.elapsed() > LABELS_JOIN_GRACE {
                    quiet_since.get_or_insert_with(tokio::time::Instant::now);
                } else {
                    quiet_since = None;
                }
                if !buf.is_empty() && tx.send(batch(generation, &mut buf)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka labels consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok(r)) => {
                quiet_since = None;
                buf.push(r);
                if buf.len() >= 500 && tx.send(batch(generation, &mut buf)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads the output topics for evaluations delivered after the assigned
/// partitions' last marks (see [`Published`]). Marks without a time (or
/// none) ask for no scan. A scan that fails is logged: evaluations a killed
/// run delivered without a mark may then be sent twice, nothing is lost.
async fn scan_published(
    consumer: &KafkaConsumer,
    p: &Pipeline,
    brokers: &str,
    props: &BTreeMap<String, String>,
) -> Published {
    let since = consumer
        .assignment()
        .into_iter()
        .filter_map(|part| consumer.mark(part).and_then(|m| m.at_ms))
        .min();
    let Some(since) = since.map(|t| t - published::CLOCK_SKEW_MS) else {
        return Published::default();
    };
    let mut topics = vec![p.output.alerts_topic.clone()];
    topics.extend(p.output.stats_topic.clone());
    let (brokers, props, what) = (brokers.to_string(), props.clone(), topics.join(", "));
    let t = std::time::Instant::now();
    let scan =
        tokio::task::spawn_blocking(move || Published::scan(&brokers, &props, &topics, since, Duration::from_secs(60)))
            .await;
    match scan {
        Ok(Ok(found)) => {
            tracing::info!(topics = %what, since_ms = since, found = found.len(), took_ms = t.elapsed().as_millis() as u64,
                "output topics read for evaluations delivered after the last marks");
            found
        }
        Ok(Err(e)) => {
            tracing::warn!(topics = %what, error = %e, "cannot read the output topics: evaluations a killed run delivered after its last mark may be sent again");
            Published::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "output topic scan failed");
            Published::default()
        }
    }
}

/// Marks the partitions of a batch that have no timed mark yet (first read
/// by this group, or marked by a version without times) before anything is
/// delivered for them: at the batch's first offset, which is where a
/// restart would replay from, with what was delivered so far. A run killed
/// after its first delivery then leaves a mark older than that delivery,
/// which bounds the scan for it ([`Published`]).
async fn mark_start(consumer: &KafkaConsumer, first: &BTreeMap<i32, i64>) -> Result<(), RuntimeError> {
    let positions: BTreeMap<i32, Position> = first
        .iter()
        .filter(|(p, _)| !consumer.has_timed_mark(**p))
        .map(|(p, f)| {
            let mark = consumer.mark(*p);
            (
                *p,
                Position {
                    next: *f,
                    delivered: mark.map_or(-1, |m| m.offset),
                    labelled: mark.and_then(|m| m.labelled),
                },
            )
        })
        .collect();
    if positions.is_empty() {
        return Ok(());
    }
    consumer.checkpoint(&positions).await.map_err(kafka_err("checkpoint"))?;
    consumer
        .commit(&positions, CommitMode::Sync)
        .map(|_| ())
        .map_err(kafka_err("commit"))
}

/// A fault injected for tests (`DRIFTWATCH_FAULT`, not for production):
/// `abort-before-mark:N` aborts the process right after the N-th batch (of
/// events or of labels) with new evaluations is delivered and before its
/// mark or commit is written, the worst moment for a crash.
#[derive(Debug, Default)]
struct Fault {
    abort_before_mark: Option<u64>,
    delivered: u64,
}

impl Fault {
    fn from_env() -> Result<Self, RuntimeError> {
        Self::parse(std::env::var("DRIFTWATCH_FAULT").ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Self, RuntimeError> {
        let Some(v) = value else {
            return Ok(Self::default());
        };
        let n = v
            .strip_prefix("abort-before-mark:")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                RuntimeError::Other(format!(
                    "DRIFTWATCH_FAULT=`{v}`: expected abort-before-mark:N with N ≥ 1 (a test hook; unset it)"
                ))
            })?;
        tracing::warn!(fault = %v, "fault injection on: this process will abort");
        Ok(Self {
            abort_before_mark: Some(n),
            delivered: 0,
        })
    }

    /// A batch's new evaluations were delivered; its mark comes next.
    fn delivered(&mut self) {
        self.delivered += 1;
        if self.abort_before_mark == Some(self.delivered) {
            eprintln!(
                "DRIFTWATCH_FAULT: aborting after delivery #{}, before its mark",
                self.delivered
            );
            std::process::abort();
        }
    }
}

/// Evaluations whose window ends at or before what an earlier run delivered
/// are not sent again. Labelled windows have a mark of their own: their
/// evaluations come when the labels do, after the events mark has moved on.
fn already_delivered(consumer: &KafkaConsumer, (p, o): (i32, i64), labelled: bool) -> bool {
    let mark = consumer.mark(p);
    let hw = if labelled {
        mark.and_then(|m| m.labelled)
    } else {
        mark.map(|m| m.offset)
    };
    hw.is_some_and(|hw| o <= hw)
}

/// Where a restart must resume reading partition `p`: the oldest offset
/// still `needed`, else after the `last` one read.
fn resume_at(needed: &BTreeMap<i32, i64>, p: i32, last: i64) -> i64 {
    needed.get(&p).map_or(last + 1, |n| (*n).min(last + 1))
}

/// Commits what the windows (and the label join) still need and what was
/// delivered; first records the delivery of the `checkpoint` partitions
/// (those with new evaluations) in the checkpoint topic, if there is one.
/// `false`: the group refused the commit (see [`KafkaConsumer::commit`]).
async fn commit(
    consumer: &KafkaConsumer,
    windows: &crate::window::Windows,
    labelled: Option<(&Labelled, &LabelledHw)>,
    last: &BTreeMap<i32, i64>,
    mode: CommitMode,
    checkpoint: &[i32],
) -> Result<bool, RuntimeError> {
    let mut needed = windows.oldest_needed();
    if let Some((ls, _)) = labelled {
        for (p, o) in ls.windows.oldest_needed().into_iter().chain(ls.join.events_needed()) {
            let e = needed.entry(p).or_insert(o);
            *e = (*e).min(o);
        }
    }
    let positions: BTreeMap<i32, Position> = last
        .iter()
        .map(|(p, l)| {
            let next = resume_at(&needed, *p, *l);
            // Never lower what an earlier run recorded as delivered.
            let mark = consumer.mark(*p);
            let delivered = mark.map_or(*l, |d| d.offset.max(*l));
            let labelled = mark
                .and_then(|m| m.labelled)
                .max(labelled.and_then(|(_, hw)| hw.get(p).copied()));
            (
                *p,
                Position {
                    next,
                    delivered,
                    labelled,
                },
            )
        })
        .collect();
    if !checkpoint.is_empty() {
        let marks = positions
            .iter()
            .filter(|(p, _)| checkpoint.contains(p))
            .map(|(p, pos)| (*p, *pos))
            .collect();
        consumer.checkpoint(&marks).await.map_err(kafka_err("checkpoint"))?;
    }
    consumer.commit(&positions, mode).map_err(kafka_err("commit"))
}

/// `compare`: one evaluation of every detector, reference file vs current
/// file; `labels`, a JSONL file of label records (`{event_id, label}`),
/// labels the events of both for the detectors on labels.
pub async fn compare(
    stages: Stages,
    reference: &std::path::Path,
    current: &std::path::Path,
    labels: Option<&std::path::Path>,
) -> Result<CompareReport, RuntimeError> {
    let mut engine = crate::engine::Engine::offline(stages);
    let (rb, rrej) = engine.stages.ingest(&file::read_records(reference)?).await?;
    let (cb, crej) = engine.stages.ingest(&file::read_records(current)?).await?;
    for (name, rej) in [(reference, &rrej), (current, &crej)] {
        for r in rej.iter().take(5) {
            tracing::warn!(file = %name.display(), line = r.offset + 1, reason = r.reason.as_str(), "{}", r.message);
        }
    }
    let labels = match labels {
        Some(path) => read_labels_file(&engine.stages, path)?,
        None => Default::default(),
    };
    let (reference_events, current_events) = (
        rb.iter().map(|b| b.num_rows()).sum(),
        cb.iter().map(|b| b.num_rows()).sum(),
    );
    let evaluated = engine.compare(rb, cb, &labels).await?;
    let mut detectors = vec![];
    for e in &evaluated {
        for name in engine.stages.detector_names(e.labelled) {
            let found = e.evaluations.iter().filter(|ev| ev.detector == name);
            let before = detectors.len();
            detectors.extend(found.map(|ev| CompareDetector::from(ev.clone())));
            if detectors.len() == before {
                detectors.push(CompareDetector::not_computed(&engine.stages, &name, e));
            }
        }
    }
    Ok(CompareReport {
        detectors,
        reference_events,
        current_events,
        rejected: rrej.len() + crej.len(),
    })
}

/// A labels file for `compare`: event id → label. Bad records are errors
/// naming the line: offline, the file is the user's to fix.
fn read_labels_file(
    stages: &Stages,
    path: &std::path::Path,
) -> Result<std::collections::HashMap<String, String>, RuntimeError> {
    let (Some(_), Some(label_col)) = (&stages.schema.event_id, &stages.schema.label) else {
        return Err(ConfigError::invalid(
            &stages.pipeline.path,
            "schema",
            "--labels needs the schema to name its `event_id` and `label` fields".to_string(),
        )
        .into());
    };
    let label_type = stages
        .scored_schema
        .field_with_name(label_col)
        .map(|f| f.data_type().clone())
        .map_err(|e| RuntimeError::Other(e.to_string()))?;
    let mut out = std::collections::HashMap::new();
    for r in file::read_records(path)? {
        let l = crate::labels::read_label(&r, label_col, &label_type, false)
            .map_err(|rej| file::FileError::new(path, format!("line {}: {}", rej.offset + 1, rej.message)))?;
        out.insert(l.event_id, l.label);
    }
    Ok(out)
}

/// Output of `compare`.
#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub detectors: Vec<CompareDetector>,
    pub reference_events: usize,
    pub current_events: usize,
    /// Events of either file that failed to decode.
    pub rejected: usize,
}

#[derive(Debug, Serialize)]
pub struct CompareDetector {
    pub name: String,
    pub kind: String,
    pub drift_type: crate::alert::DriftType,
    /// Whether any of its tests could be computed on these files; when not,
    /// `reason` says why and `drift` is false.
    pub computed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub drift: bool,
    /// Other detectors that drifted on the same data.
    pub also_drifted: Vec<String>,
    pub threshold: Option<f64>,
    pub tests: Vec<crate::detect::TestResult>,
}

impl From<Evaluation> for CompareDetector {
    fn from(e: Evaluation) -> Self {
        CompareDetector {
            name: e.detector,
            kind: e.kind,
            drift_type: e.drift_type,
            computed: true,
            reason: None,
            drift: e.drift,
            also_drifted: e.also_drifted,
            threshold: e.threshold,
            tests: e.tests,
        }
    }
}

impl CompareDetector {
    /// A detector none of whose tests could be computed on `e`'s windows.
    fn not_computed(stages: &Stages, name: &str, e: &Evaluated) -> Self {
        let kind = stages
            .detector_configs()
            .iter()
            .find(|d| d.name() == name)
            .map_or_else(String::new, |d| d.kind().to_string());
        let (r, c) = (e.coords.reference_size, e.coords.current_size);
        let mut reason = format!(
            "no test could be computed: a window has too few values (reference {r} events, current {c} events)"
        );
        if e.labelled {
            reason += "; it runs on labelled events only: give --labels, or label the events inline";
        }
        CompareDetector {
            drift_type: stages.drift_type(name),
            name: name.to_string(),
            kind,
            computed: false,
            reason: Some(reason),
            drift: false,
            also_drifted: vec![],
            threshold: None,
            tests: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels reader is re-pointed many times while records arrive (as
    /// on rebalances). The records of each assignment reach processing
    /// tagged with its generation, in order and none missing: from the
    /// partition's start (nothing committed) on, with no gap and no record
    /// of an older assignment. A gap is a label lost: its event would wait
    /// for it forever and hold back its partition's labelled windows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_labels_reader_loses_no_record_when_its_partitions_change() {
        use crate::config::{KafkaSource, StartPosition};
        let broker = crate::broker::Broker::start(1).unwrap();
        broker.create_topic("lab", 1).unwrap();
        let src = KafkaSource {
            brokers: broker.bootstrap(),
            topic: "lab".into(),
            group_id: None,
            start: StartPosition::Committed,
            properties: BTreeMap::new(),
            checkpoint_topic: None,
        };
        let total = 3000;
        let producer: FutureProducer = broker.client_config().create().unwrap();
        let produced = tokio::spawn(async move {
            for chunk in 0..total / 100 {
                let mut fs = vec![];
                for i in chunk * 100..(chunk + 1) * 100 {
                    let body = i.to_string();
                    fs.push(
                        producer
                            .send_result(FutureRecord::<(), _>::to("lab").payload(&body))
                            .unwrap(),
                    );
                }
                for f in fs {
                    f.await.unwrap().unwrap();
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
        let consumer = Arc::new(KafkaConsumer::follower(&src, "lab-g").unwrap());
        let (follow, wanted) = tokio::sync::watch::channel(Follow::default());
        let (tx, mut rx) = mpsc::channel(4);
        let (shutdown, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let reader = tokio::spawn(labels_loop(consumer, wanted, tx, shutdown.clone(), done));
        // Per generation, the offsets received, in order.
        let mut got: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        let take = |m: Msg, got: &mut BTreeMap<u64, Vec<i64>>| {
            if let Msg::Labels { generation, records } = m {
                got.entry(generation)
                    .or_default()
                    .extend(records.iter().map(|r| r.offset));
            }
        };
        let generations = 20;
        for g in 1..=generations {
            follow.send_modify(|f| {
                f.generation = g;
                f.partitions = vec![0];
            });
            // Re-pointed while records flow: once the new assignment's
            // first batch is in, a little later each time.
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while !got.contains_key(&g)
                && let Ok(Some(m)) = tokio::time::timeout_at(until, rx.recv()).await
            {
                take(m, &mut got);
            }
            tokio::time::sleep(Duration::from_millis(3 * (g % 7))).await;
        }
        produced.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while got.get(&generations).map_or(0, |o| o.len()) < total {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => take(m, &mut got),
                _ => break,
            }
        }
        shutdown.store(true, Ordering::SeqCst);
        while let Some(m) = rx.recv().await {
            take(m, &mut got);
        }
        reader.await.unwrap().unwrap();
        assert!(got.keys().all(|g| (1..=generations).contains(g)), "{:?}", got.keys());
        for (g, offsets) in &got {
            let want: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, &want, "generation {g}: every record from the start, in order");
        }
        assert_eq!(got[&generations].len(), total, "the last assignment read every record");
    }

    /// The test hook takes `abort-before-mark:N` (N ≥ 1) and refuses
    /// anything else by name, before the run connects to anything.
    #[test]
    fn fault_values_are_checked() {
        assert_eq!(Fault::parse(None).unwrap().abort_before_mark, None);
        assert_eq!(
            Fault::parse(Some("abort-before-mark:3")).unwrap().abort_before_mark,
            Some(3)
        );
        for bad in [
            "",
            "abort-before-mark:0",
            "abort-before-mark:x",
            "abort-before-mark:-1",
            "crash:1",
        ] {
            let e = Fault::parse(Some(bad)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains(&format!("DRIFTWATCH_FAULT=`{bad}`")) && e.contains("abort-before-mark:N"),
                "{bad}: {e}"
            );
        }
    }
}
