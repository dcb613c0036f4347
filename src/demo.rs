//! `driftwatch demo`: the embedded broker, the default scenario
//! (`pipelines/scenarios/demo.yaml`: scanner `a` stays clean, scanner `b`
//! goes through a new scanner, a change of class priors and a relabelling,
//! with clean phases between) and `pipelines/digits.yaml` watching it; a live
//! line per evaluation, then a table of which detectors alerted in which phase.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureProducer;

use crate::alert::Evaluation;
use crate::broker::Broker;
use crate::config::{Pipeline, WindowConfig};
use crate::runtime::{self, RunOptions, RunStats, RuntimeError, Stages};
use crate::scenario::{LabelsMode, Loaded, Truth, TruthPhase};

/// How long the demo waits for the next event before it gives up.
const STALL: Duration = Duration::from_secs(30);

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub pipeline: PathBuf,
    pub scenario: PathBuf,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Print the live view.
    pub live: bool,
}

/// What the demo saw.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub truth: Truth,
    /// Every evaluation.
    pub evaluations: Vec<Evaluation>,
    pub received: u64,
    pub dead_lettered: u64,
    /// Current-window size: alerts this soon after a drift phase may still see it.
    pub window: usize,
}

/// Where an evaluation falls relative to the truth.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// In a drift phase, `events` into it.
    Detected { events: i64 },
    /// In a clean phase, within one window of the end of a drift phase.
    Settling,
    /// In a clean phase: a false alarm.
    FalseAlarm,
}

impl DemoSummary {
    /// Alerts per phase: for each detector, its first alert's verdict.
    pub fn alerts_in(&self, phase: &TruthPhase) -> BTreeMap<String, Verdict> {
        let mut out = BTreeMap::new();
        for e in self
            .evaluations
            .iter()
            .filter(|e| e.alert && e.key.as_deref() == Some(phase.key.as_str()))
        {
            let Some(end) = e
                .window
                .current_offsets
                .iter()
                .find(|r| r.partition == phase.partition)
                .map(|r| r.last)
            else {
                continue;
            };
            if end < phase.first_offset || end > phase.last_offset {
                continue;
            }
            let v = if phase.drift {
                Verdict::Detected {
                    events: end - phase.first_offset + 1,
                }
            } else if self.after_drift(phase, end) {
                Verdict::Settling
            } else {
                Verdict::FalseAlarm
            };
            out.entry(e.detector.clone()).or_insert(v);
        }
        out
    }

    /// Whether `offset` of a clean phase is within one window of a preceding drift phase.
    fn after_drift(&self, phase: &TruthPhase, offset: i64) -> bool {
        self.truth.phases.iter().any(|p| {
            p.drift
                && p.key == phase.key
                && p.partition == phase.partition
                && p.last_offset < offset
                && offset - p.last_offset < self.window as i64
        })
    }

    /// False alarms: alerts in clean phases, settling windows excepted.
    pub fn false_alarms(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for p in self.truth.phases.iter().filter(|p| !p.drift) {
            for (d, v) in self.alerts_in(p) {
                if v == Verdict::FalseAlarm {
                    out.push((p.key.clone(), format!("{d} in {}", p.name)));
                }
            }
        }
        out
    }
}

/// Runs the demo end to end on an embedded broker.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, RuntimeError> {
    let mut scenario = Loaded::load(&opts.scenario).map_err(|e| other(&e))?;
    if let Some(seed) = opts.seed {
        scenario.scenario.seed = seed;
    }
    let broker = Broker::start(1).map_err(|e| other(&e))?;
    let bootstrap = broker.bootstrap();
    // The pipeline reads its brokers from ${KAFKA_BROKERS}.
    // SAFETY of set_var: called before any thread of ours reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", &bootstrap) };
    let pipeline = Pipeline::load(&opts.pipeline)?;
    let window = count_window(&pipeline)?;
    let topic = pipeline.kafka_source("the demo")?.topic.clone();
    let partitions = scenario.scenario.keys.len() as i32;
    create_topics(&broker, &pipeline, &topic, &scenario, partitions)?;
    let total = scenario.total_events() as u64;
    if opts.live {
        eprintln!(
            "embedded broker at {bootstrap}; producing scenario `{}` ({total} events, seed {})…",
            scenario.scenario.name, scenario.scenario.seed
        );
    }
    // lz4: the embedded broker keeps only ~5 MiB per partition and drops
    // older messages silently; compressed, the whole scenario fits.
    let producer: FutureProducer = broker
        .client_config()
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()
        .map_err(|e| RuntimeError::Kafka {
            what: "demo producer".into(),
            source: e,
        })?;
    let truth = crate::scenario::produce_kafka(&scenario, &producer, &topic, partitions)
        .await
        .map_err(|e| other(&e))?;
    let stages = Stages::build(pipeline).await?;
    let stats = Arc::new(RunStats::default());
    let evaluations = score(stages, total, opts.live, stats.clone()).await?;
    drop(producer);
    drop(broker);
    Ok(DemoSummary {
        truth,
        evaluations,
        received: stats.received.load(std::sync::atomic::Ordering::Relaxed),
        dead_lettered: stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        window,
    })
}

fn other(e: &dyn std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

/// The current window's size in events: the demo's live scoring (settling
/// windows after a phase starts) counts events.
fn count_window(pipeline: &Pipeline) -> Result<usize, RuntimeError> {
    let WindowConfig { current, .. } = pipeline.window()?;
    match current {
        crate::config::CurrentConfig::Count { size, .. } => Ok(size.get()),
        _ => Err(other(
            &"the demo's live scoring counts events: give its pipeline count windows",
        )),
    }
}

/// The pipeline's topics on the embedded broker: events (`topic`, and
/// labels if the scenario sends them apart) with a partition per key,
/// outputs with one.
fn create_topics(
    broker: &Broker,
    pipeline: &Pipeline,
    topic: &str,
    scenario: &Loaded,
    partitions: i32,
) -> Result<(), RuntimeError> {
    let mut topics = vec![
        (topic.to_string(), partitions),
        (pipeline.output.alerts_topic.clone(), 1),
        (pipeline.output.dead_letter_topic.clone(), 1),
    ];
    topics.extend(pipeline.output.stats_topic.clone().map(|t| (t, 1)));
    if let LabelsMode::Topic { topic, .. } = &scenario.scenario.labels {
        topics.push((topic.clone(), partitions));
    }
    for (t, parts) in &topics {
        broker.create_topic(t, *parts).map_err(|e| other(&e))?;
    }
    Ok(())
}

/// Runs the pipeline over the `total` events produced and returns its
/// evaluations (each printed as it comes when `live`). A pipeline that
/// stops receiving (messages lost by the broker) fails with a message
/// instead of hanging.
async fn score(stages: Stages, total: u64, live: bool, stats: Arc<RunStats>) -> Result<Vec<Evaluation>, RuntimeError> {
    let seen = Arc::new(Mutex::new(vec![]));
    let seen2 = seen.clone();
    let color = std::io::stdout().is_terminal();
    let observer: runtime::Observer = Arc::new(move |e: &Evaluation| {
        if live {
            println!("{}", live_line(e, color));
        }
        seen2.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
    });
    let shutdown = Arc::new(AtomicBool::new(false));
    let options = RunOptions {
        max_events: Some(total),
        group_id: None,
        ..Default::default()
    };
    let run = runtime::run(stages, options, shutdown.clone(), stats.clone(), Some(observer));
    tokio::pin!(run);
    let (mut seen_n, mut since) = (0, std::time::Instant::now());
    loop {
        tokio::select! {
            r = &mut run => { r?; break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let n = stats.received.load(std::sync::atomic::Ordering::Relaxed);
                // Progress is reading or processing: a slow model (a
                // transformer on a busy machine) still works through what
                // was read after the last event came.
                let progress = n + stats.processed.load(std::sync::atomic::Ordering::Relaxed);
                if progress != seen_n {
                    (seen_n, since) = (progress, std::time::Instant::now());
                } else if since.elapsed() > STALL {
                    shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(RuntimeError::Other(format!(
                        "demo: the pipeline received no event for {}s, at {n} of {total}: the embedded broker keeps about 5 MiB per partition and may have dropped the rest; use a shorter scenario",
                        STALL.as_secs()
                    )));
                }
            }
        }
    }
    Ok(std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner())))
}

/// One line of the live view.
pub fn live_line(e: &Evaluation, color: bool) -> String {
    let flag = match (e.alert, e.drift) {
        (true, _) if color => "\x1b[1;31mALERT\x1b[0m",
        (true, _) => "ALERT",
        (false, true) if color => "\x1b[33mdrift\x1b[0m",
        (false, true) => "drift",
        _ => "  ok ",
    };
    let worst = e
        .tests
        .iter()
        .filter(|t| t.drift)
        .map(|t| t.column.as_str())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{flag} {:<10} eval {:>3}  {:<20} {:<11} stat {:>9.5}  {}  (threshold {}){}",
        e.key.as_deref().unwrap_or("-"),
        e.evaluation,
        e.detector,
        e.kind,
        e.statistic,
        e.p_value
            .map_or_else(|| "           ".to_string(), |p| format!("p {p:>9.3e}")),
        e.threshold.map_or_else(|| "-".to_string(), |t| format!("{t:.1e}")),
        if worst.is_empty() {
            String::new()
        } else {
            format!("  drifted: {worst}")
        }
    )
}

/// The summary table printed at the end.
pub fn summary_table(s: &DemoSummary, detectors: &[String]) -> String {
    let mut out = format!(
        "\n{:<10} {:<24} {:<9} {}\n",
        "key", "phase", "truth", "alerts (events into the phase at the first)"
    );
    for p in &s.truth.phases {
        let alerts = s.alerts_in(p);
        let cell = if p.name == "reference" {
            "(reference window)".to_string()
        } else if alerts.is_empty() {
            if p.drift { "none: missed" } else { "none" }.to_string()
        } else {
            detectors
                .iter()
                .filter_map(|d| {
                    alerts.get(d).map(|v| match v {
                        Verdict::Detected { events } => format!("{d} after {events}"),
                        Verdict::Settling => format!("{d} (window still holds the drift)"),
                        Verdict::FalseAlarm => format!("{d} FALSE ALARM"),
                    })
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let truth = if p.drift { p.kind.as_str() } else { "-" };
        out += &format!("{:<10} {:<24} {truth:<9} {cell}\n", p.key, p.name);
    }
    let alerts = s.evaluations.iter().filter(|e| e.alert).count();
    out += &format!(
        "\n{} events read, {} dead-lettered, {} evaluations, {alerts} alerts, {} false alarms\n",
        s.received,
        s.dead_lettered,
        s.evaluations.len(),
        s.false_alarms().len()
    );
    out
}
