//! The driftwatch command line. Library errors become messages and exit codes
//! here: 0 success, 1 runtime failure, 2 invalid configuration or input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use driftwatch::runtime::{self, RunOptions, RunStats, RuntimeError};

#[derive(Parser)]
#[command(
    name = "driftwatch",
    version,
    about = "Streaming drift detection for ML models, straight off Kafka"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline against Kafka until interrupted (SIGINT/SIGTERM).
    Run(RunArgs),
    /// Check pipelines: config, schema, model, SQL. Non-zero exit on any error.
    Validate(ValidateArgs),
    /// List the detector kinds, what each tests and the options it takes.
    Kinds,
    /// Run a pipeline's detectors once: reference file vs current file (JSONL or Parquet); prints JSON.
    Compare(CompareArgs),
    /// Start the embedded Kafka-protocol broker; prints its bootstrap address on the first line.
    Broker(BrokerArgs),
    /// The demo: embedded broker, digit images, a CNN, each kind of drift caught live.
    Demo(DemoArgs),
    /// Write a drift scenario's events to a Kafka topic (--brokers, --topic) or a JSONL file (--out),
    /// and its ground truth (phase boundaries in event time and offsets) to --truth.
    Produce(ProduceArgs),
    /// Replay a bounded range of the pipeline's topic (or a file) as a backtest: alerts.jsonl,
    /// stats.jsonl, summary.json and report.html in --out. Commits nothing; publishes only with --publish.
    Replay(ReplayArgs),
    /// Model tools.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
    /// End-to-end throughput benchmark on the embedded broker.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    pipeline: PathBuf,
    /// Consumer group id (default: the pipeline's, or driftwatch-<name>).
    #[arg(long)]
    group_id: Option<String>,
    /// Stop cleanly after reading this many events.
    #[arg(long)]
    max_events: Option<u64>,
    /// Serve Prometheus metrics (/metrics) and readiness (/health) here; `off` to disable.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics: String,
    /// Log a status line (events read and scored, evaluations, alerts,
    /// dead letters, the late-label join's waiting counts) every this
    /// many seconds; 0 turns it off. A run that reads but makes no
    /// evaluations shows here, without a metrics scraper.
    #[arg(long, default_value_t = 60)]
    status_every: u64,
    /// Seconds without reading anything, while events wait to be read,
    /// after which the run counts as stalled: /health answers 503, the
    /// status line and `driftwatch_consumer_stalled` say so; 0 never.
    #[arg(long, default_value_t = 120)]
    stall_after: u64,
    /// Static group membership (Kafka's `group.instance.id`, KIP-345): an
    /// id of this instance that stays the same across its restarts (a
    /// StatefulSet pod's name, a compose service's replica name). A
    /// restarted instance then gets its partitions back at once instead of
    /// after the dead one's session timeout; no two running instances may
    /// share it. Letters, digits, `.`, `_`, `-`; at most 249.
    #[arg(long, env = "DRIFTWATCH_INSTANCE_ID")]
    instance_id: Option<String>,
}

#[derive(clap::Args)]
struct ValidateArgs {
    #[arg(required = true)]
    pipelines: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct CompareArgs {
    pipeline: PathBuf,
    #[arg(long)]
    reference: PathBuf,
    #[arg(long)]
    current: PathBuf,
    /// JSONL of label records (`{"event_id": …, "label": …}`) labelling
    /// the events of both files, for error_rate and label_shift.
    #[arg(long)]
    labels: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// Topics to create, as NAME or NAME:PARTITIONS.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Number of brokers in the cluster.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, default_value = "pipelines/digits.yaml")]
    pipeline: PathBuf,
    /// The drift scenario streamed through it.
    #[arg(long, default_value = "pipelines/scenarios/demo.yaml")]
    scenario: PathBuf,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The text demo: news paragraphs through MiniLM
    /// (pipelines/news.yaml, pipelines/scenarios/news.yaml).
    #[arg(long, conflicts_with_all = ["pipeline", "scenario"])]
    text: bool,
}

#[derive(clap::Args)]
struct ProduceArgs {
    scenario: PathBuf,
    #[arg(long, requires = "topic", conflicts_with = "out")]
    brokers: Option<String>,
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
    /// JSONL file of events instead of Kafka.
    #[arg(long, required_unless_present = "brokers")]
    out: Option<PathBuf>,
    /// JSONL file for late labels when the scenario sends them separately (with --out).
    #[arg(long)]
    labels_out: Option<PathBuf>,
    /// Ground-truth file (default: TOPIC.truth.json, or the --out file with .truth.json).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the scenario's start_time (RFC 3339 or `now`; use `now` on a real cluster,
    /// whose retention deletes old message timestamps).
    #[arg(long)]
    start_time: Option<String>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    pipeline: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// A JSONL or Parquet file instead of the topic.
    #[arg(long, conflicts_with_all = ["from", "to", "offsets"])]
    input: Option<PathBuf>,
    /// Start of the range: RFC 3339 time or epoch ms, resolved per partition.
    #[arg(long, conflicts_with = "offsets")]
    from: Option<String>,
    /// End of the range (exclusive), as --from.
    #[arg(long, conflicts_with = "offsets")]
    to: Option<String>,
    /// Explicit offsets per partition: P:FROM-TO[,P:FROM-TO…], TO exclusive and optional (the end).
    #[arg(long)]
    offsets: Option<String>,
    /// Ground-truth file (as `produce` writes) to score detections, delays and false alarms.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Also publish the alerts to the pipeline's alert topic.
    #[arg(long)]
    publish: bool,
    /// Events per micro-batch (default: the pipeline's); changes nothing in the results.
    #[arg(long)]
    batch: Option<usize>,
    /// JSONL of late label records (`{"event_id", "label", "ts"}`, as `produce
    /// --labels-out` writes them) instead of the pipeline's labels topic.
    #[arg(long)]
    labels: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value = "pipelines/bench.yaml")]
    pipeline: PathBuf,
    #[arg(long, default_value = "models/digits_train.jsonl")]
    pool: PathBuf,
    /// Events made of the paragraphs of this text corpus (news schema,
    /// e.g. `--pipeline pipelines/news.yaml --corpus .deps/bbc`)
    /// instead of digit images from `--pool`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Events made of the census records in this folder (census schema,
    /// e.g. `--pipeline pipelines/census.yaml --census .deps/census`).
    #[arg(long, conflicts_with = "corpus")]
    census: Option<PathBuf>,
    /// Events to push through.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Leave out this detector of the pipeline (repeatable), to see what
    /// it costs, e.g. `--without embedding_mmd`.
    #[arg(long, value_name = "DETECTOR")]
    without: Vec<String>,
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Inputs, outputs, parameters per layer (and what convolutions save over
    /// fully connected layers), metadata. Works without ONNX Runtime.
    Inspect {
        model: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; `DRIFTWATCH_LOG` (tracing filter syntax) overrides the default level.
fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIFTWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: in a file or a pipe they are noise.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<RuntimeError>() {
        Some(RuntimeError::Config(_) | RuntimeError::Model(_) | RuntimeError::Transform(_) | RuntimeError::File(_)) => {
            2
        }
        _ if e.downcast_ref::<ScenarioFailed>().is_some() => 2,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the benchmark print their own view; per-evaluation log lines would bury it.
    let default = if matches!(cli.cmd, Cmd::Demo { .. } | Cmd::Bench { .. }) {
        "warn"
    } else {
        "info,rdkafka=warn"
    };
    init_logging(cli.log_json, default);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Sets the flag on SIGINT or SIGTERM.
fn on_signal(flag: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: finishing the batch in hand, delivering, committing");
        flag.store(true, Ordering::SeqCst);
    });
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run(a) => {
            let opts = RunOptions {
                max_events: a.max_events,
                group_id: a.group_id,
                instance_id: a.instance_id,
                stall_after: Some(std::time::Duration::from_secs(a.stall_after)),
                fault: None, // DRIFTWATCH_FAULT, read by the run
            };
            run(&a.pipeline, opts, &a.metrics, a.status_every).await
        }
        Cmd::Validate(a) => validate(&a.pipelines).await,
        Cmd::Kinds => {
            print!("{}", driftwatch::detect::kinds::describe());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare(a) => compare(&a.pipeline, &a.reference, &a.current, a.labels.as_deref()).await,
        Cmd::Broker(a) => broker(&a.topics, a.brokers).await,
        Cmd::Demo(a) => match a.text {
            true => {
                demo(
                    "pipelines/news.yaml".into(),
                    "pipelines/scenarios/news.yaml".into(),
                    a.seed,
                )
                .await
            }
            false => demo(a.pipeline, a.scenario, a.seed).await,
        },
        Cmd::Produce(a) => produce(a).await,
        Cmd::Replay(a) => replay_cmd(a).await,
        Cmd::Model {
            cmd: ModelCmd::Inspect { model, json },
        } => inspect(&model, json),
        Cmd::Bench(a) => {
            let from = match (&a.corpus, &a.census) {
                (Some(dir), _) => driftwatch::bench::BenchEvents::News(dir),
                (_, Some(dir)) => driftwatch::bench::BenchEvents::Census(dir),
                _ => driftwatch::bench::BenchEvents::Digits(&a.pool),
            };
            driftwatch::bench::bench(&a.pipeline, from, a.events, &a.without).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `replay`: the range is the first given of --input, --offsets, --from/--to.
async fn replay_cmd(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    use driftwatch::replay::{Range, ReplayOptions};
    let range = match (a.input, a.offsets) {
        (Some(f), _) => Range::File(f),
        (None, Some(o)) => Range::Offsets(parse_offsets(&o)?),
        (None, None) => Range::Times {
            from: a.from.as_deref().map(parse_time).transpose()?,
            to: a.to.as_deref().map(parse_time).transpose()?,
        },
    };
    let opts = ReplayOptions {
        range,
        out: a.out,
        truth: a.truth,
        publish: a.publish,
        batch: a.batch,
        labels: a.labels,
    };
    replay(&a.pipeline, opts).await
}

/// `compare`: the report as JSON on stdout.
async fn compare(pipeline: &Path, reference: &Path, current: &Path, labels: Option<&Path>) -> anyhow::Result<ExitCode> {
    let stages = runtime::validate(pipeline).await?;
    let report = runtime::compare(stages, reference, current, labels).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// `model inspect`: text, or JSON with `--json`.
fn inspect(model: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let m = driftwatch::model::inspect::inspect(model).map_err(RuntimeError::from)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `produce`: the scenario's events (and labels) written to a topic or a
/// file, then its truth file.
async fn produce(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    let l = load_scenario(&a.scenario, a.seed, a.start_time)?;
    let (t, truth_path) = match (a.out, a.brokers, a.topic) {
        (Some(out), _, _) => {
            // A missing --labels-out or an --out that cannot be written: bad input (exit 2).
            let t = driftwatch::scenario::write_jsonl(&l, &out, a.labels_out.as_deref())
                .map_err(|e| anyhow::anyhow!(ScenarioFailed(e)))?;
            (t, a.truth.unwrap_or_else(|| out.with_extension("truth.json")))
        }
        (None, Some(brokers), Some(topic)) => {
            let t = produce_to(&l, &brokers, &topic).await?;
            (
                t,
                a.truth.unwrap_or_else(|| PathBuf::from(format!("{topic}.truth.json"))),
            )
        }
        _ => anyhow::bail!("give --brokers and --topic, or --out"),
    };
    t.write(&truth_path)?;
    eprintln!(
        "{} events of scenario `{}` (seed {}) written to {}; ground truth in {}",
        l.total_events(),
        l.scenario.name,
        l.scenario.seed,
        t.destination,
        truth_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `run`: the metrics endpoint and status line beside the pipeline, until a signal.
async fn run(pipeline: &Path, opts: RunOptions, metrics: &str, status_every: u64) -> anyhow::Result<ExitCode> {
    let stages = runtime::validate(pipeline).await?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(shutdown.clone());
    let stats = Arc::new(RunStats::default());
    if metrics != "off" {
        let s = stats.clone();
        let addr = driftwatch::metrics::serve(
            metrics,
            stats.clone(),
            Arc::new(move || s.ready.load(Ordering::Relaxed)),
        )
        .with_context(|| format!("cannot serve metrics on {metrics} (use --metrics ADDR or --metrics off)"))?;
        tracing::info!("metrics on http://{addr}/metrics, readiness on http://{addr}/health");
    }
    if status_every > 0 {
        let s = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(status_every));
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                s.log_status();
            }
        });
    }
    runtime::run(stages, opts, shutdown, stats, None).await?;
    Ok(ExitCode::SUCCESS)
}

/// `validate`: every file, each on its line; exit 2 when any fails.
async fn validate(pipelines: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for p in pipelines {
        match runtime::validate(p).await {
            Ok(s) => println!("ok: {}: {}", p.display(), s.summary()),
            Err(e) => {
                failed += 1;
                println!("error: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `broker`: the embedded broker with the topics asked for (`NAME[:PARTITIONS]`), until Ctrl-C.
async fn broker(topics: &[String], brokers: i32) -> anyhow::Result<ExitCode> {
    let b = driftwatch::broker::Broker::start(brokers)?;
    for t in topics {
        let (name, parts) = match t.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .with_context(|| format!("--topic {t}: partitions must be a number"))?,
            ),
            None => (t.as_str(), 1),
        };
        b.create_topic(name, parts)?;
    }
    println!("{}", b.bootstrap());
    eprintln!("embedded Kafka-protocol broker running; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}

/// `demo`: the scenario live on the embedded broker, then the summary table.
async fn demo(pipeline: PathBuf, scenario: PathBuf, seed: Option<u64>) -> anyhow::Result<ExitCode> {
    let opts = driftwatch::demo::DemoOptions {
        pipeline: pipeline.clone(),
        scenario,
        seed,
        live: true,
    };
    let summary = driftwatch::demo::run(opts).await?;
    let p = driftwatch::config::Pipeline::load(&pipeline)?;
    let names: Vec<String> = p.detectors.iter().map(|d| d.name.clone()).collect();
    println!("{}", driftwatch::demo::summary_table(&summary, &names));
    Ok(ExitCode::SUCCESS)
}

/// A scenario file with `produce`'s overrides of its seed and start time.
fn load_scenario(
    path: &Path,
    seed: Option<u64>,
    start_time: Option<String>,
) -> anyhow::Result<driftwatch::scenario::Loaded> {
    use driftwatch::scenario;
    let mut l = scenario::Loaded::load(path).map_err(|e| anyhow::anyhow!(ScenarioFailed(e)))?;
    if seed.is_some() || start_time.is_some() {
        // Checked and planned again: the seed orders a table's rows too.
        let mut sc = l.scenario.clone();
        sc.seed = seed.unwrap_or(sc.seed);
        sc.start_time = start_time.unwrap_or(sc.start_time);
        l = scenario::Loaded::new(sc, l.pool, path).map_err(|e| anyhow::anyhow!(ScenarioFailed(e)))?;
    }
    Ok(l)
}

/// `replay`: a bounded range through the pipeline into the report folder.
async fn replay(pipeline: &Path, opts: driftwatch::replay::ReplayOptions) -> anyhow::Result<ExitCode> {
    let stages = runtime::validate(pipeline).await?;
    let out = opts.out.clone();
    let s = driftwatch::replay::replay(stages, opts).await?;
    eprintln!(
        "{} events, {} evaluations, {} alerts; see {}",
        s.events,
        s.evaluations,
        s.alerts,
        out.join("report.html").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A scenario file that cannot be used: exit code 2, like an invalid pipeline.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ScenarioFailed(driftwatch::scenario::ScenarioError);

/// Produces a scenario to a Kafka topic, waiting for every delivery.
async fn produce_to(
    l: &driftwatch::scenario::Loaded,
    brokers: &str,
    topic: &str,
) -> anyhow::Result<driftwatch::scenario::Truth> {
    use rdkafka::producer::{FutureProducer, Producer};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        // JSON events shrink several times: more fits a broker's retention
        // (the embedded broker keeps about 5 MiB per partition).
        .set("compression.type", "lz4")
        .create()
        .context("cannot create the Kafka producer")?;
    let md = tokio::task::block_in_place(|| {
        producer
            .client()
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(15))
    })
    .with_context(|| format!("cannot reach the brokers at {brokers}"))?;
    // A topic that does not exist yet is auto-created with the broker's default (one partition here).
    let partitions = md.topics().first().map_or(1, |t| t.partitions().len().max(1) as i32);
    Ok(driftwatch::scenario::produce_kafka(l, &producer, topic, partitions).await?)
}

/// `P:FROM-TO,…` (TO exclusive, optional).
fn parse_offsets(s: &str) -> anyhow::Result<std::collections::BTreeMap<i32, (i64, Option<i64>)>> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let bad = || {
            anyhow::anyhow!(
                "--offsets: `{part}` is not PARTITION:FROM-TO (e.g. 0:100-2000, or 0:100- for up to the end)"
            )
        };
        let (p, range) = part.trim().split_once(':').ok_or_else(bad)?;
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let p: i32 = p.parse().map_err(|_| bad())?;
        let a: i64 = a.parse().map_err(|_| bad())?;
        let b: Option<i64> = if b.is_empty() {
            None
        } else {
            Some(b.parse().map_err(|_| bad())?)
        };
        if b.is_some_and(|b| b < a) {
            anyhow::bail!("--offsets: `{part}` ends before it starts");
        }
        out.insert(p, (a, b));
    }
    if out.is_empty() {
        anyhow::bail!("--offsets: no partition given");
    }
    Ok(out)
}

/// RFC 3339 or epoch ms.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t =
        humantime::parse_rfc3339_weak(s).with_context(|| format!("`{s}` is neither epoch ms nor an RFC 3339 time"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}
