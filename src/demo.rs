//! `driftwatch demo`: the embedded broker, a stream of digit images from two
//! scanners, and `pipelines/digits.yaml` watching it. Scanner `a` stays
//! clean; scanner `b` is replaced by a "new scanner" (lower contrast, brighter
//! background) half-way: covariate shift, which the KS detectors on image
//! features and the MMD on the CNN embedding catch, for key `b` only.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

use crate::alert::Evaluation;
use crate::broker::Broker;
use crate::config::Pipeline;
use crate::runtime::{self, RunOptions, RunStats, RuntimeError, Stages};

/// One image of the pool.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolImage {
    pub pixels: Vec<f32>,
    pub label: i64,
}

/// A phase of the demo stream for one scanner.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub events: usize,
    /// Contrast factor and added background (0..16 scale); `None` = clean.
    pub shift: Option<(f32, f32)>,
}

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub pipeline: PathBuf,
    pub pool: PathBuf,
    pub seed: u64,
    /// Events per phase.
    pub phase_events: usize,
    /// Print the live view.
    pub live: bool,
}

/// What the demo saw, per scanner and phase.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// (scanner, phase name, first offset, last offset)
    pub phases: Vec<(String, String, i64, i64)>,
    /// Every evaluation.
    pub evaluations: Vec<Evaluation>,
    pub received: u64,
    pub dead_lettered: u64,
}

impl DemoSummary {
    /// Detectors that fired in a phase, with events into the phase at their first alert.
    pub fn fired(&self, scanner: &str, phase: &str) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (s, ph, first, last) in &self.phases {
            if s != scanner || ph != phase {
                continue;
            }
            for e in self
                .evaluations
                .iter()
                .filter(|e| e.drift && e.key.as_deref() == Some(s.as_str()))
            {
                let end = e.window.current_offsets.iter().map(|r| r.last).max().unwrap_or(-1);
                if end >= *first && end <= *last {
                    out.entry(e.detector.clone()).or_insert(end - first + 1);
                }
            }
        }
        out
    }
}

/// Reads the image pool (JSONL with `pixels` and `label`).
pub fn load_pool(path: &Path) -> Result<Vec<PoolImage>, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Other(format!("{}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| RuntimeError::Other(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// One event JSON: an image from the pool with seeded noise and an optional shift.
pub fn make_event(
    img: &PoolImage,
    rng: &mut ChaCha8Rng,
    shift: Option<(f32, f32)>,
    scanner: &str,
    id: u64,
    ts: i64,
) -> serde_json::Value {
    let px: Vec<f32> = img
        .pixels
        .iter()
        .map(|&v| {
            let mut x = v + rng.random_range(-0.5f32..0.5);
            if let Some((contrast, background)) = shift {
                x = x * contrast + background;
            }
            (x.clamp(0.0, 16.0) * 100.0).round() / 100.0
        })
        .collect();
    let mean = px.iter().sum::<f32>() / px.len() as f32;
    let ink = px.iter().filter(|&&v| v > 4.0).count() as f32 / px.len() as f32;
    serde_json::json!({
        "event_id": format!("{scanner}-{id}"),
        "ts": ts,
        "scanner": scanner,
        "pixels": px,
        "mean_intensity": mean,
        "ink_fraction": ink,
        "label": img.label,
    })
}

/// The demo's phases per scanner.
pub fn phases(n: usize) -> Vec<(&'static str, Vec<Phase>)> {
    let clean = |name| Phase {
        name,
        events: n,
        shift: None,
    };
    vec![
        ("a", vec![clean("reference"), clean("clean"), clean("clean, later")]),
        (
            "b",
            vec![
                clean("reference"),
                clean("clean"),
                Phase {
                    name: "new scanner (covariate)",
                    events: n,
                    shift: Some((0.6, 3.0)),
                },
            ],
        ),
    ]
}

/// Runs the demo end to end on an embedded broker.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, RuntimeError> {
    let broker = Broker::start(1).map_err(|e| RuntimeError::Other(e.to_string()))?;
    let bootstrap = broker.bootstrap();
    // The pipeline reads its brokers from ${KAFKA_BROKERS}.
    // SAFETY of set_var: called before any thread of ours reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", &bootstrap) };
    let pipeline = Pipeline::load(&opts.pipeline)?;
    let crate::config::SourceConfig::Kafka(src) = &pipeline.source else {
        return Err(RuntimeError::Other("the demo pipeline must have a kafka source".into()));
    };
    let scanners = phases(opts.phase_events);
    for (t, parts) in [
        (&src.topic, scanners.len() as i32),
        (&pipeline.output.alerts_topic, 1),
        (&pipeline.output.dead_letter_topic, 1),
    ] {
        broker
            .create_topic(t, parts)
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
    }
    if let Some(t) = &pipeline.output.stats_topic {
        broker
            .create_topic(t, 1)
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
    }
    if opts.live {
        eprintln!(
            "embedded broker at {bootstrap}; producing {} events…",
            scanners
                .iter()
                .map(|s| s.1.iter().map(|p| p.events).sum::<usize>())
                .sum::<usize>()
        );
    }
    let pool = load_pool(&opts.pool)?;
    let producer: FutureProducer = broker.client_config().create().map_err(|e| RuntimeError::Kafka {
        what: "demo producer".into(),
        source: e,
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut summary = DemoSummary::default();
    let mut total = 0u64;
    let mut futures = vec![];
    for (part, (scanner, ph)) in scanners.iter().enumerate() {
        let key = format!("scanner-{scanner}");
        let mut offset = 0i64;
        for phase in ph {
            summary.phases.push((
                key.clone(),
                phase.name.to_string(),
                offset,
                offset + phase.events as i64 - 1,
            ));
            for _ in 0..phase.events {
                let img = &pool[rng.random_range(0..pool.len())];
                let ts = 1_767_225_600_000 + offset * 100;
                let ev = make_event(img, &mut rng, phase.shift, &key, offset as u64, ts);
                let body = serde_json::to_vec(&ev).unwrap_or_default();
                let rec = FutureRecord::to(&src.topic)
                    .payload(&body)
                    .key(&key)
                    .partition(part as i32);
                futures.push(producer.send_result(rec).map_err(|(e, _)| RuntimeError::Kafka {
                    what: "demo produce".into(),
                    source: e,
                })?);
                offset += 1;
                total += 1;
            }
        }
    }
    for f in futures {
        if !matches!(f.await, Ok(Ok(_))) {
            return Err(RuntimeError::Other(
                "demo: an event was not delivered to the embedded broker".into(),
            ));
        }
    }
    let stages = Stages::build(pipeline).await?;
    let seen = Arc::new(Mutex::new(vec![]));
    let seen2 = seen.clone();
    let live = opts.live;
    let color = std::io::stdout().is_terminal();
    let observer: runtime::Observer = Arc::new(move |e: &Evaluation| {
        if live {
            println!("{}", live_line(e, color));
        }
        seen2.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
    });
    let stats = Arc::new(RunStats::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let run = runtime::run(
        stages,
        RunOptions {
            max_events: Some(total),
            group_id: None,
        },
        shutdown,
        stats.clone(),
        Some(observer),
    );
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .map_err(|_| RuntimeError::Other("demo: pipeline did not finish within 300 s".into()))??;
    summary.evaluations = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    summary.received = stats.received.load(std::sync::atomic::Ordering::Relaxed);
    summary.dead_lettered = stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed);
    drop(producer);
    drop(broker);
    Ok(summary)
}

/// One line of the live view.
pub fn live_line(e: &Evaluation, color: bool) -> String {
    let flag = if e.drift {
        if color { "\x1b[1;31mDRIFT\x1b[0m" } else { "DRIFT" }
    } else {
        "  ok "
    };
    let worst = e
        .tests
        .iter()
        .filter(|t| t.drift)
        .map(|t| t.column.as_str())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{flag} {:<10} eval {:>3}  {:<16} {:<4} stat {:>9.5}  {}  (threshold {}){}",
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
    let mut out = String::from(
        "\nscanner     phase                      detectors fired (events into the phase at first alert)\n",
    );
    for (scanner, phase, first, last) in &s.phases {
        let fired = s.fired(scanner, phase);
        let cell = if phase == "reference" {
            "(reference window)".to_string()
        } else if fired.is_empty() {
            "none".to_string()
        } else {
            detectors
                .iter()
                .filter_map(|d| fired.get(d).map(|n| format!("{d} after {n}")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out += &format!("{scanner:<11} {:<26} {cell}   [offsets {first}..{last}]\n", phase);
    }
    out += &format!(
        "\n{} events read, {} dead-lettered, {} evaluations, {} alerts\n",
        s.received,
        s.dead_lettered,
        s.evaluations.len(),
        s.evaluations.iter().filter(|e| e.drift).count()
    );
    out
}
