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
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::alert::Evaluation;
use crate::config::{ConfigError, SourceConfig};
use crate::decode::Rejection;
use crate::engine::{Engine, Evaluated, Sink, Stream};
use crate::labels::LabelRecord;
use crate::runtime::{RuntimeError, Stages};
use crate::source::RawRecord;
use crate::source::kafka::offset_for_time;

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
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub source: String,
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
type Records = Box<dyn Iterator<Item = Result<RawRecord, RuntimeError>>>;

/// Runs a replay; returns the summary (also written to `summary.json`).
pub async fn replay(stages: Stages, opts: ReplayOptions) -> Result<Summary, RuntimeError> {
    let p = stages.pipeline.clone();
    std::fs::create_dir_all(&opts.out).map_err(|e| other(format!("{}: {e}", opts.out.display())))?;
    let (records, total, source) = open(&stages, &opts.range)?;
    let labels = open_labels(&stages, &opts)?;
    let truth = match &opts.truth {
        Some(t) => Some(crate::scenario::Truth::load(t).map_err(other)?),
        None => None,
    };
    let publisher = if opts.publish {
        let src = p.kafka_source("--publish")?;
        let brokers = p.output.brokers.clone().unwrap_or_else(|| src.brokers.clone());
        let props = p.output.properties.clone().unwrap_or_else(|| src.properties.clone());
        Some(crate::source::kafka::producer(&brokers, &props).map_err(other)?)
    } else {
        None
    };
    let mut engine = Engine::new(stages).await?;
    if labels.is_none() && engine.labelled.is_some() {
        tracing::warn!(
            "no labels to replay (give --labels FILE with --input): detectors on late labels (error_rate, label_shift) are not evaluated"
        );
    }
    let mut labels = labels.map(LabelsFeed::new);
    let mut sink = Files::create(&opts.out, publisher, &p.output.alerts_topic, &p.name)?;
    sink.summary.source = source;
    let mut decoder = engine.stages.decoder();
    let batch_size = opts.batch.unwrap_or(p.batch.max_events.get()).max(1);
    let mut progress = Progress::new(total);
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
        if let Some(feed) = labels.as_mut() {
            let evaluated = feed.up_to_events(&mut engine, &mut sink).await?;
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
    if let Some(feed) = labels.as_mut() {
        let evaluated = feed.rest(&mut engine, &mut sink).await?;
        sink.evaluated(evaluated)?;
        sink.summary.labels = Some(LabelsSummary {
            rejected: sink.labels_rejected,
            join: engine
                .labelled
                .as_ref()
                .map(|l| l.join.stats.clone())
                .unwrap_or_default(),
        });
    }
    sink.write_before(u64::MAX)?;
    let (mut summary, all) = sink.finish().await?;
    let truth = truth.map(|t| truth::keyed_as(t, &all));
    if let (Some(t), Some(w)) = (&truth, &p.window) {
        let size = w.current.size.get() as i64;
        let shape = truth::WindowShape {
            reference: match &w.reference {
                crate::config::ReferenceConfig::First { size } => size.get() as i64,
                crate::config::ReferenceConfig::File { .. } => 0,
            },
            size,
            slide: w.current.slide.map_or(size, |s| s.get() as i64),
        };
        let scores = truth::score(t, &all, shape).map_err(|e| {
            let path = opts.truth.as_deref().unwrap_or(Path::new("--truth"));
            RuntimeError::File(crate::source::file::FileError::new(path, e))
        })?;
        summary.truth = Some(scores);
        summary.phases = accuracy::by_phase(t, &all);
    }
    let estimates = accuracy::rows(&all);
    summary.accuracy = accuracy::summarize(&estimates);
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).map_err(other)? + "\n",
    )
    .map_err(other)?;
    let html = report::render(&summary, &all, truth.as_ref(), &estimates);
    std::fs::write(opts.out.join("report.html"), html).map_err(other)?;
    Ok(summary)
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
        return Ok(Some(jsonl(f)?));
    }
    let (Some(SourceConfig::Kafka(src)), Range::Offsets(_) | Range::Times { .. }) = (&p.source, &opts.range) else {
        return Ok(None);
    };
    let range = match &opts.range {
        Range::Times { from, to } => Range::Times {
            from: *from,
            to: to.map(|t| t.saturating_add(cfg.horizon_ms.get() as i64)),
        },
        _ => Range::Times { from: None, to: None },
    };
    let consumer = range_consumer(src, &p.name)?;
    let ranges = resolve(&consumer, &cfg.topic, &range)?;
    Ok(Some(Box::new(KafkaRange::new(consumer, cfg.topic.clone(), ranges)?)))
}

fn range_consumer(src: &crate::config::KafkaSource, pipeline: &str) -> Result<BaseConsumer, RuntimeError> {
    crate::source::kafka::client_config(
        crate::source::properties::ClientRole::Consumer,
        &src.brokers,
        &src.properties,
    )
    .set("group.id", format!("driftwatch-replay-{pipeline}"))
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "false")
    .create()
    .map_err(other)
}

/// Opens the range: records, their number when known, and a description.
fn open(stages: &Stages, range: &Range) -> Result<(Records, Option<u64>, String), RuntimeError> {
    match range {
        Range::File(path) => {
            let is_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
            if is_parquet {
                let recs = crate::source::file::read_records(path)?;
                let n = recs.len() as u64;
                Ok((Box::new(recs.into_iter().map(Ok)), Some(n), path.display().to_string()))
            } else {
                Ok((jsonl(path)?, None, path.display().to_string()))
            }
        }
        Range::Offsets(_) | Range::Times { .. } => {
            let src = stages.pipeline.kafka_source("a topic range (use --input for files)")?;
            let consumer = range_consumer(src, &stages.pipeline.name)?;
            let ranges = resolve(&consumer, &src.topic, range)?;
            let total = ranges.values().map(|(a, b)| (b - a).max(0) as u64).sum();
            let desc = format!(
                "{} {}",
                src.topic,
                ranges
                    .iter()
                    .map(|(p, (a, b))| format!("{p}:{a}-{b}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            Ok((
                Box::new(KafkaRange::new(consumer, src.topic.clone(), ranges)?),
                Some(total),
                desc,
            ))
        }
    }
}

/// Streams a JSONL file; offsets are line numbers from 0, blank lines skipped.
fn jsonl(path: &Path) -> Result<Records, RuntimeError> {
    // A file that cannot be opened is bad input (exit 2), like a bad pipeline.
    let f = std::fs::File::open(path).map_err(|e| RuntimeError::File(crate::source::file::FileError::new(path, e)))?;
    let p = path.display().to_string();
    Ok(Box::new(
        std::io::BufReader::new(f)
            .split(b'\n')
            .enumerate()
            .filter_map(move |(i, line)| match line {
                Err(e) => Some(Err(other(format!("{p}: {e}")))),
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
                Ok(l) => Some(Ok(RawRecord {
                    payload: Some(l),
                    partition: 0,
                    offset: i as i64,
                    timestamp_ms: None,
                })),
            }),
    ))
}

const TIMEOUT: Duration = Duration::from_secs(15);

fn watermarks(c: &BaseConsumer, topic: &str, p: i32) -> Result<(i64, i64), RuntimeError> {
    c.fetch_watermarks(topic, p, TIMEOUT)
        .map_err(|e| other(format!("{topic}/{p}: cannot read the offsets: {e}")))
}

/// Per partition `[from, to)` offsets for a range.
pub fn resolve(c: &BaseConsumer, topic: &str, range: &Range) -> Result<BTreeMap<i32, (i64, i64)>, RuntimeError> {
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
            Range::Offsets(m) => match m.get(&p) {
                Some((a, b)) => (*a, b.unwrap_or(high)),
                None => continue,
            },
            Range::Times { from, to } => (
                from.map_or(Ok(low), |t| offset_for_time(c, topic, p, t, (low, high), TIMEOUT))
                    .map_err(other)?,
                to.map_or(Ok(high), |t| offset_for_time(c, topic, p, t, (low, high), TIMEOUT))
                    .map_err(other)?,
            ),
            Range::File(_) => unreachable!("files are not resolved"),
        };
        let (from, to) = (from.clamp(low, high), to.clamp(low, high));
        out.insert(p, (from, to.max(from)));
    }
    if let Range::Offsets(m) = range
        && let Some(p) = m.keys().find(|p| !out.contains_key(p))
    {
        return Err(other(format!("topic `{topic}` has no partition {p}")));
    }
    Ok(out)
}

/// Reads `[from, to)` of every partition, merged by (timestamp, partition, offset).
struct KafkaRange {
    consumer: BaseConsumer,
    ranges: BTreeMap<i32, (i64, i64)>,
    /// Next offset expected per partition.
    next: BTreeMap<i32, i64>,
    buffers: BTreeMap<i32, VecDeque<RawRecord>>,
    deadline: Instant,
}

impl KafkaRange {
    fn new(consumer: BaseConsumer, topic: String, ranges: BTreeMap<i32, (i64, i64)>) -> Result<Self, RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for (p, (from, to)) in &ranges {
            if from < to {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(*from))
                    .map_err(other)?;
            }
        }
        consumer.assign(&tpl).map_err(other)?;
        Ok(Self {
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
    type Item = Result<RawRecord, RuntimeError>;
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
