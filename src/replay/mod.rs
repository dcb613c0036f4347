//! `driftwatch replay`: a bounded range of a topic (or a file) through a
//! pipeline, as a backtest. Nothing is committed for any consumer group and
//! nothing is published unless asked; the results go to files:
//! `alerts.jsonl`, `stats.jsonl` (every evaluation), `summary.json` and
//! `report.html` (see [`report`]).
//!
//! Deterministic: records are taken in one canonical order (per partition by
//! offset, partitions merged by message timestamp, then partition), windows
//! count events, and evaluations are written in the order of the record that
//! completed their window — so batch size, linger and reading speed change
//! nothing, and two replays of the same range give byte-identical files.

pub mod accuracy;
pub mod report;
pub mod truth;

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alert::Evaluation;
use crate::config::{ConfigError, SourceConfig};
use crate::decode::Rejection;
use crate::engine::{Engine, Evaluated, Sink, Stream};
use crate::labels::LabelRecord;
use crate::runtime::{RuntimeError, Stages};
use crate::source::Source;
use crate::source::range::{self, TopicRange};

/// What to replay.
#[derive(Debug, Clone)]
pub enum Range {
    /// A JSONL (streamed) or Parquet file.
    File(PathBuf),
    /// Per partition `[from, to)` offsets of the pipeline's topic (`to`: None = the end).
    Offsets(BTreeMap<i32, (i64, Option<i64>)>),
    /// Event-time range `[from, to)` in epoch ms, resolved per partition.
    Times { from: Option<i64>, to: Option<i64> },
}

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub range: Range,
    pub out: PathBuf,
    pub truth: Option<PathBuf>,
    /// Also publish alerts to the pipeline's alert topic.
    pub publish: bool,
    /// Events per micro-batch (default: the pipeline's `batch.max_events`).
    pub batch: Option<usize>,
    /// A JSONL file of label records (`{event_id, label, ts}`) instead of
    /// the pipeline's labels topic.
    pub labels: Option<PathBuf>,
}

/// One line of `stats.jsonl`: an evaluation without the model identity.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRecord<'a> {
    pub detector: &'a str,
    pub kind: &'a str,
    pub drift_type: crate::alert::DriftType,
    pub key: Option<&'a str>,
    pub evaluation: u64,
    pub window: &'a crate::alert::WindowInfo,
    pub statistic: f64,
    pub p_value: Option<f64>,
    pub threshold: Option<f64>,
    pub drift: bool,
    pub alert: bool,
    /// What the tests add, by column (cbpe's estimated and realised
    /// accuracy, BBSE's priors, the data-quality counts), when they add
    /// something.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<&'a str, &'a serde_json::Value>,
    /// With `model.sample`: the share of events the model scored (the
    /// statistics on its outputs are over that sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sample: Option<f64>,
    /// With `model.sample: {max_rate}`: the events a second per partition
    /// the model scores at most (`window.current_scored` says how many it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_max_rate: Option<f64>,
}

impl<'a> From<&'a Evaluation> for StatsRecord<'a> {
    fn from(e: &'a Evaluation) -> Self {
        StatsRecord {
            detector: &e.detector,
            kind: &e.kind,
            drift_type: e.drift_type,
            key: e.key.as_deref(),
            evaluation: e.evaluation,
            window: &e.window,
            statistic: e.statistic,
            p_value: e.p_value,
            threshold: e.threshold,
            drift: e.drift,
            alert: e.alert,
            details: e
                .tests
                .iter()
                .filter_map(|t| Some((t.column.as_str(), t.details.as_ref()?)))
                .collect(),
            model_sample: e.model.as_ref().and_then(|m| m.sample),
            model_max_rate: e.model.as_ref().and_then(|m| m.max_rate),
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub source: String,
    /// Event-time windows: late events (later than `allowed_lateness`),
    /// counted and not added to any window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    pub events: u64,
    pub dead_lettered: u64,
    pub evaluations: u64,
    pub alerts: u64,
    /// Per detector: evaluations, drifting evaluations, alerts.
    pub detectors: BTreeMap<String, DetectorCounts>,
    /// The late-label join, when labels were replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelsSummary>,
    /// Scoring against the ground truth, when given.
    pub truth: Option<truth::Scores>,
    /// cbpe's estimated accuracy against the realised one, when the
    /// pipeline estimates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<accuracy::AccuracySummary>,
    /// With ground truth: per phase (e.g. each year of a real stream), each
    /// detector's [evaluations, drifts, alerts] on windows ending in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<accuracy::PhaseCounts>,
}

/// What became of the replayed labels.
#[derive(Debug, Clone, Serialize)]
pub struct LabelsSummary {
    /// Label records that could not be read (not JSON, no event id, …).
    pub rejected: u64,
    #[serde(flatten)]
    pub join: crate::labels::JoinStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DetectorCounts {
    pub evaluations: u64,
    pub drifts: u64,
    pub alerts: u64,
}

fn other(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

/// Records in canonical order.
type Records = Box<dyn Source>;

/// Runs a replay; returns the summary (also written to `summary.json`).
pub async fn replay(stages: Stages, opts: ReplayOptions) -> Result<Summary, RuntimeError> {
    let p = stages.pipeline.clone();
    std::fs::create_dir_all(&opts.out).map_err(|e| other(format!("{}: {e}", opts.out.display())))?;
    let records = open(&stages, &opts.range)?;
    let labels = open_labels(&stages, &opts)?;
    let truth = match &opts.truth {
        Some(t) => Some(crate::scenario::Truth::load(t).map_err(other)?),
        None => None,
    };
    let publisher = match opts.publish {
        true => Some(alerts_producer(&p)?),
        false => None,
    };
    let mut engine = Engine::new(stages).await?;
    if labels.is_none() && engine.labelled.is_some() {
        tracing::warn!(
            "no labels to replay (give --labels FILE with --input): detectors on late labels (error_rate, label_shift) are not evaluated"
        );
    }
    let mut sink = Files::create(&opts.out, publisher, &p.output.alerts_topic, &p.name)?;
    sink.summary.source = records.describe();
    let batch_size = opts.batch.unwrap_or(p.batch.max_events.get()).max(1);
    let mut labels = labels.map(LabelsFeed::new);
    stream(&mut engine, records, labels.as_mut(), batch_size, &mut sink).await?;
    if let Some(feed) = labels.as_mut() {
        let evaluated = feed.rest(&mut engine, &mut sink).await?;
        sink.evaluated(evaluated)?;
        let join = engine
            .labelled
            .as_ref()
            .map(|l| l.join.stats.clone())
            .unwrap_or_default();
        let rejected = sink.labels_rejected;
        sink.summary.labels = Some(LabelsSummary { rejected, join });
    }
    sink.write_before(u64::MAX)?;
    let (mut summary, all) = sink.finish().await?;
    let truth = truth.map(|t| truth::keyed_as(t, &all));
    if let (Some(t), Some(w)) = (&truth, &p.window) {
        let scores = truth::score(t, &all, truth::WindowShape::of(w)).map_err(|e| {
            let path = opts.truth.as_deref().unwrap_or(Path::new("--truth"));
            RuntimeError::File(crate::source::file::FileError::new(path, e))
        })?;
        summary.truth = Some(scores);
        summary.phases = accuracy::by_phase(t, &all);
    }
    let estimates = accuracy::rows(&all);
    summary.accuracy = accuracy::summarize(&estimates);
    let json = serde_json::to_string_pretty(&summary).map_err(other)? + "\n";
    std::fs::write(opts.out.join("summary.json"), json).map_err(other)?;
    let html = report::render(&summary, &all, truth.as_ref(), &estimates);
    std::fs::write(opts.out.join("report.html"), html).map_err(other)?;
    Ok(summary)
}

/// A producer for `--publish`, on the pipeline's output brokers.
fn alerts_producer(p: &crate::config::Pipeline) -> Result<rdkafka::producer::FutureProducer, RuntimeError> {
    let src = p.kafka_source("--publish")?;
    let brokers = p.output.brokers.clone().unwrap_or_else(|| src.brokers.clone());
    let props = p.output.properties.clone().unwrap_or_else(|| src.properties.clone());
    crate::source::kafka::producer(&brokers, &props).map_err(other)
}

/// The events in batches of `batch_size` through the engine, labels fed in
/// step; evaluations written as soon as no earlier one can come.
async fn stream(
    engine: &mut Engine,
    records: Records,
    mut labels: Option<&mut LabelsFeed>,
    batch_size: usize,
    sink: &mut Files,
) -> Result<(), RuntimeError> {
    let mut decoder = engine.stages.decoder();
    let mut progress = Progress::new(records.total());
    let mut records = records.peekable();
    while records.peek().is_some() || !decoder.is_empty() {
        while decoder.len() < batch_size {
            let Some(r) = records.next() else { break };
            let r = r?;
            sink.order.read(r.partition, r.offset);
            sink.summary.events += 1;
            if let Err(rej) = decoder.decode(&r) {
                sink.rejected(Stream::Events, &rej)?;
            }
        }
        progress.tick(sink.summary.events);
        let Some(batch) = decoder.flush()? else {
            if records.peek().is_none() {
                break;
            }
            continue;
        };
        sink.evaluated(engine.push_events(batch).await?)?;
        if let Some(feed) = labels.as_deref_mut() {
            let evaluated = feed.up_to_events(engine, sink).await?;
            sink.evaluated(evaluated)?;
        }
        let held = engine
            .labelled
            .as_ref()
            .map(|l| l.join.events_needed())
            .unwrap_or_default();
        sink.write_before(sink.order.frontier(&held))?;
        sink.order.forget_before(&held);
    }
    progress.done(sink.summary.events);
    Ok(())
}

/// Where each record read stands in the canonical order (its sequence
/// number), kept for the records a later evaluation may end on: those not
/// yet processed, and those the label join still holds.
#[derive(Default)]
struct StreamOrder {
    next: u64,
    /// Per partition, (offset, sequence number) in offset order.
    held: BTreeMap<i32, VecDeque<(i64, u64)>>,
}

impl StreamOrder {
    fn read(&mut self, partition: i32, offset: i64) {
        self.held.entry(partition).or_default().push_back((offset, self.next));
        self.next += 1;
    }

    fn seq_of(&self, (p, o): (i32, i64)) -> u64 {
        self.held
            .get(&p)
            .and_then(|q| q.binary_search_by_key(&o, |(off, _)| *off).ok().map(|i| q[i].1))
            .unwrap_or(u64::MAX)
    }

    /// No evaluation made from now on ends before this: on the next record
    /// read, or on an event the join still holds (`held`: per partition,
    /// its oldest offset there).
    fn frontier(&self, held: &BTreeMap<i32, i64>) -> u64 {
        held.iter()
            .map(|(p, o)| self.seq_of((*p, *o)))
            .fold(self.next, u64::min)
    }

    fn forget_before(&mut self, held: &BTreeMap<i32, i64>) {
        for (p, q) in self.held.iter_mut() {
            let from = held.get(p).copied().unwrap_or(i64::MAX);
            while q.front().is_some_and(|(o, _)| *o < from) {
                q.pop_front();
            }
        }
    }
}

/// The labels stream of a replay, fed to the join in step with the events:
/// labels up to the time every events partition has passed.
struct LabelsFeed {
    records: Records,
    /// A parsed label read ahead of the events.
    ahead: Option<LabelRecord>,
}

impl LabelsFeed {
    fn new(records: Records) -> Self {
        Self { records, ahead: None }
    }

    /// The next valid label (bad records go to the sink).
    fn next_label(&mut self, engine: &Engine, sink: &mut Files) -> Result<Option<LabelRecord>, RuntimeError> {
        if let Some(l) = self.ahead.take() {
            return Ok(Some(l));
        }
        for r in self.records.by_ref() {
            match engine.parse_label(&r?) {
                Some(Ok(l)) => return Ok(Some(l)),
                Some(Err(rej)) => sink.rejected(Stream::Labels, &rej)?,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn up_to_events(&mut self, engine: &mut Engine, sink: &mut Files) -> Result<Vec<Evaluated>, RuntimeError> {
        let passed = engine.labelled.as_ref().map_or(i64::MIN, |l| l.join.events_passed());
        let mut batch = vec![];
        while let Some(l) = self.next_label(engine, sink)? {
            if l.ts_ms > passed {
                self.ahead = Some(l);
                break;
            }
            batch.push(l);
        }
        engine.push_labels(batch).await
    }

    /// The events have ended: every label left, then the join is closed.
    async fn rest(&mut self, engine: &mut Engine, sink: &mut Files) -> Result<Vec<Evaluated>, RuntimeError> {
        let mut batch = vec![];
        while let Some(l) = self.next_label(engine, sink)? {
            batch.push(l);
        }
        let mut out = engine.push_labels(batch).await?;
        out.extend(engine.finish_labels().await?);
        Ok(out)
    }
}

/// A replay's outputs: `stats.jsonl` and `alerts.jsonl` in stream order (by
/// the record each evaluation's window ends on; events windows before
/// labelled ones on the same record), alerts published when asked.
struct Files {
    alerts: std::io::BufWriter<std::fs::File>,
    stats: std::io::BufWriter<std::fs::File>,
    publisher: Option<(rdkafka::producer::FutureProducer, String)>,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    /// Evaluations made but not written yet, by (sequence, labelled, rank).
    waiting: BTreeMap<(u64, bool, u64), Evaluation>,
    made: u64,
    /// Where each record read stands in the stream.
    order: StreamOrder,
    labels_rejected: u64,
    summary: Summary,
    all: Vec<Evaluation>,
}

impl Files {
    fn create(
        dir: &Path,
        publisher: Option<rdkafka::producer::FutureProducer>,
        alerts_topic: &str,
        pipeline: &str,
    ) -> Result<Self, RuntimeError> {
        let create = |name: &str| {
            std::fs::File::create(dir.join(name))
                .map(std::io::BufWriter::new)
                .map_err(|e| other(format!("{}: {e}", dir.join(name).display())))
        };
        Ok(Self {
            alerts: create("alerts.jsonl")?,
            stats: create("stats.jsonl")?,
            publisher: publisher.map(|p| (p, alerts_topic.to_string())),
            pending: vec![],
            waiting: BTreeMap::new(),
            made: 0,
            order: StreamOrder::default(),
            labels_rejected: 0,
            summary: Summary {
                pipeline: pipeline.to_string(),
                source: String::new(),
                late_events: None,
                events: 0,
                dead_lettered: 0,
                evaluations: 0,
                alerts: 0,
                detectors: BTreeMap::new(),
                labels: None,
                truth: None,
                accuracy: None,
                phases: vec![],
            },
            all: vec![],
        })
    }

    /// Writes the evaluations that end before `frontier`.
    fn write_before(&mut self, frontier: u64) -> Result<(), RuntimeError> {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 >= frontier {
                break;
            }
            let ev = entry.remove();
            let c = self.summary.detectors.entry(ev.detector.clone()).or_default();
            c.evaluations += 1;
            c.drifts += u64::from(ev.drift);
            c.alerts += u64::from(ev.alert);
            self.summary.evaluations += 1;
            let line = serde_json::to_string(&StatsRecord::from(&ev)).map_err(other)?;
            writeln!(self.stats, "{line}").map_err(other)?;
            if ev.alert {
                self.summary.alerts += 1;
                let body = serde_json::to_string(&ev).map_err(other)?;
                writeln!(self.alerts, "{body}").map_err(other)?;
                if let Some((prod, topic)) = &self.publisher {
                    let key = crate::alert::message_key(&ev);
                    let record = rdkafka::producer::FutureRecord::to(topic).payload(&body).key(&key);
                    self.pending.push(prod.send_result(record).map_err(|(e, _)| other(e))?);
                }
            }
            self.all.push(ev);
        }
        Ok(())
    }

    /// Waits for the published alerts; flushes the files.
    async fn finish(mut self) -> Result<(Summary, Vec<Evaluation>), RuntimeError> {
        for f in self.pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(other(format!("publishing an alert: {e}"))),
                Err(_) => return Err(other("publishing an alert: producer closed")),
            }
        }
        self.alerts.flush().map_err(other)?;
        self.stats.flush().map_err(other)?;
        Ok((self.summary, self.all))
    }
}

impl Sink for Files {
    /// Held until no earlier evaluation can come ([`Files::write_before`]).
    fn evaluated(&mut self, evaluated: Vec<Evaluated>) -> Result<usize, RuntimeError> {
        let mut made = 0;
        for e in evaluated {
            if let Some(late) = e.coords.late_events {
                *self.summary.late_events.get_or_insert(0) += late;
            }
            let seq = self.order.seq_of(e.coords.end);
            for ev in e.evaluations {
                self.waiting.insert((seq, e.labelled, self.made), ev);
                self.made += 1;
                made += 1;
            }
        }
        Ok(made)
    }

    /// Counted in the summary and logged at debug level: a replay reads
    /// history, whose dead letters the run that read it first has sent.
    fn rejected(&mut self, stream: Stream, rej: &Rejection) -> Result<(), RuntimeError> {
        match stream {
            Stream::Events => self.summary.dead_lettered += 1,
            Stream::Labels => self.labels_rejected += 1,
        }
        tracing::debug!(
            ?stream,
            reason = rej.reason.as_str(),
            offset = rej.offset,
            "{}",
            rej.message
        );
        Ok(())
    }
}

/// The labels stream of a replay: `--labels FILE`, else the pipeline's
/// labels topic over the range's times (up to `horizon_ms` past its end;
/// an offsets range reads the whole labels topic as it is now).
fn open_labels(stages: &Stages, opts: &ReplayOptions) -> Result<Option<Records>, RuntimeError> {
    let p = &stages.pipeline;
    let Some(cfg) = &p.labels else {
        return match &opts.labels {
            Some(f) => Err(RuntimeError::Config(ConfigError::invalid(
                &p.path,
                "labels",
                format!(
                    "--labels {} needs the pipeline's `labels` section (its horizon_ms decides which labels join)",
                    f.display()
                ),
            ))),
            None => Ok(None),
        };
    };
    if let Some(f) = &opts.labels {
        return Ok(Some(crate::source::file::open(f)?));
    }
    let (Some(SourceConfig::Kafka(src)), Range::Offsets(_) | Range::Times { .. }) = (&p.source, &opts.range) else {
        return Ok(None);
    };
    // Labels come up to a horizon after their events.
    let range = match &opts.range {
        Range::Times { from, to } => TopicRange::Times {
            from: *from,
            to: to.map(|t| t.saturating_add(cfg.horizon_ms.get() as i64)),
        },
        _ => TopicRange::Times { from: None, to: None },
    };
    Ok(Some(range::open(src, &p.name, &cfg.topic, &range)?))
}

/// Opens what to replay: a file, or a range of the pipeline's topic.
fn open(stages: &Stages, range: &Range) -> Result<Records, RuntimeError> {
    let (src, topic_range) = match range {
        Range::File(path) => return Ok(crate::source::file::open(path)?),
        Range::Offsets(o) => (
            stages.pipeline.kafka_source("a topic range (use --input for files)")?,
            TopicRange::Offsets(o.clone()),
        ),
        Range::Times { from, to } => (
            stages.pipeline.kafka_source("a topic range (use --input for files)")?,
            TopicRange::Times { from: *from, to: *to },
        ),
    };
    Ok(range::open(src, &stages.pipeline.name, &src.topic, &topic_range)?)
}

/// Progress on stderr: a bar on a terminal, a log line every 5 s otherwise.
struct Progress {
    total: Option<u64>,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Self {
            total,
            start: Instant::now(),
            last: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, done: u64) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        match self.total {
            Some(t) if t > 0 => {
                let frac = (done as f64 / t as f64).min(1.0);
                let eta = if rate > 0.0 {
                    (t.saturating_sub(done)) as f64 / rate
                } else {
                    0.0
                };
                let bar: String = (0..30)
                    .map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' })
                    .collect();
                format!("[{bar}] {done}/{t} events  {rate:.0} events/s  ETA {eta:.0}s")
            }
            _ => format!("{done} events  {rate:.0} events/s"),
        }
    }

    fn tick(&mut self, done: u64) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        if self.tty {
            eprint!("\r{}", self.line(done));
        } else {
            tracing::info!("replay: {}", self.line(done));
        }
    }

    fn done(&self, done: u64) {
        if self.tty {
            eprintln!("\r{}", self.line(done));
        } else {
            tracing::info!("replay done: {}", self.line(done));
        }
    }
}
