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
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// A Kafka-protocol broker for tests: the embedded mock or tansu.
pub trait Kafka {
    fn bootstrap(&self) -> String;
    /// Creates a topic; panics if the broker refuses.
    fn create_topic(&self, topic: &str, partitions: i32);
    /// Takes the broker down or brings it back (an outage).
    fn set_up(&mut self, up: bool);
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }
}

impl Kafka for Broker {
    fn bootstrap(&self) -> String {
        Broker::bootstrap(self)
    }
    fn create_topic(&self, topic: &str, partitions: i32) {
        Broker::create_topic(self, topic, partitions).expect("create topic");
    }
    fn set_up(&mut self, up: bool) {
        self.set_broker_up(1, up).expect("broker up/down");
    }
}

/// tansu (an independent Kafka implementation, sqlite storage) as a child
/// process on a free loopback port; killed when dropped. `scripts/test.sh`
/// installs it (`scripts/tansu.sh`) and exports `DRIFTWATCH_TANSU`.
pub struct Tansu {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tansu {
    fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("DRIFTWATCH_TANSU") {
            return PathBuf::from(p);
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let p = PathBuf::from(home).join(".cache/driftwatch-tools/bin/tansu");
        assert!(
            p.exists(),
            "tansu is not installed: run scripts/tansu.sh (scripts/test.sh does), or set DRIFTWATCH_TANSU"
        );
        p
    }

    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut t = Tansu {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        t.up();
        t
    }

    /// Starts the broker process (again, on the same port and storage).
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "tansu already up");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log");
        let child = std::process::Command::new(Self::binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // The sqlite path is relative to the working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        // Ready once it answers a metadata request.
        let c: BaseConsumer = self.client_config().create().expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.fetch_metadata(None, Duration::from_secs(2)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the broker process (its storage stays).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.down();
    }
}

impl Kafka for Tansu {
    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn set_up(&mut self, up: bool) {
        if up { self.up() } else { self.down() }
    }
    fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().expect("admin client");
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        // Its own runtime on its own thread: callers may be async or not.
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(admin.create_topics([&t], &AdminOptions::new()))
            })
            .join()
            .expect("admin thread")
        });
        for res in r.expect("create_topics") {
            res.unwrap_or_else(|(t, e)| panic!("tansu: create topic {t}: {e}"));
        }
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Produces `events` (JSON text each) to partition 0 of `topic`, waiting for delivery.
pub async fn produce(broker: &impl Kafka, topic: &str, events: &[String]) {
    let keyed: Vec<(i32, &str, &str)> = events.iter().map(|e| (0, "", e.as_str())).collect();
    produce_keyed(broker, topic, &keyed).await
}

/// Produces `(partition, key, payload)` records to `topic`, waiting for delivery.
pub async fn produce_keyed(broker: &impl Kafka, topic: &str, records: &[(i32, &str, &str)]) {
    let p: FutureProducer = broker.client_config().create().expect("producer");
    let mut fs = vec![];
    for (partition, key, payload) in records {
        let mut r = FutureRecord::to(topic)
            .payload(payload.as_bytes())
            .partition(*partition);
        if !key.is_empty() {
            r = r.key(key.as_bytes());
        }
        fs.push(p.send_result(r).expect("queue"));
    }
    for f in fs {
        f.await.expect("delivery future").expect("delivered");
    }
}

/// Reads every message of partition 0 of `topic` (waits until `min` arrived, or `wait`).
pub fn read_topic(broker: &impl Kafka, topic: &str, min: usize, wait: Duration) -> Vec<serde_json::Value> {
    read_partitions(broker, topic, &[0], min, wait)
}

/// A consumer assigned `partitions` of `topic` from their beginning.
fn reader(broker: &impl Kafka, topic: &str, partitions: &[i32]) -> BaseConsumer {
    let c: BaseConsumer = broker
        .client_config()
        .set("group.id", "dw-test-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// Reads every message of the given partitions of `topic` (waits until `min` arrived, or `wait`).
pub fn read_partitions(
    broker: &impl Kafka,
    topic: &str,
    partitions: &[i32],
    min: usize,
    wait: Duration,
) -> Vec<serde_json::Value> {
    let c = reader(broker, topic, partitions);
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

/// [`SCHEMA_X`] with an event time, `ts` (epoch ms; where absent, the
/// message timestamp), for event-time windows.
pub const SCHEMA_XT: &str = "name: x\nevent_time: ts\nfields:\n  - {name: ts, type: timestamp, nullable: true}\n  - {name: site, type: category, nullable: true}\n  - {name: x, type: float}\n";

/// Runs a pipeline file until `max_events` are read; returns the run's counters.
pub async fn run_pipeline(path: &Path, max_events: u64, group: &str) -> Arc<RunStats> {
    let (run, stats) = spawn_pipeline(path, max_events, group).await;
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("run finishes in time")
        .expect("run task")
        .expect("run succeeds");
    stats
}

/// A pipeline run in a task: the task, its counters and its shutdown flag.
pub type Spawned = (
    tokio::task::JoinHandle<Result<(), runtime::RuntimeError>>,
    Arc<RunStats>,
    Arc<AtomicBool>,
);

/// Starts a pipeline file in a task with `opts`; returns the task, the run's
/// counters, to watch while it runs, and the flag that stops it.
pub async fn start_pipeline(path: &Path, opts: RunOptions) -> Spawned {
    let p = Pipeline::load(path).expect("pipeline loads");
    let stages = Stages::build(p).await.expect("stages build");
    let stats = Arc::new(RunStats::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(runtime::run(stages, opts, shutdown.clone(), stats.clone(), None));
    (run, stats, shutdown)
}

/// Starts a pipeline file in a task that ends once `max_events` are read;
/// returns the task and the run's counters, to watch while it runs.
pub async fn spawn_pipeline(
    path: &Path,
    max_events: u64,
    group: &str,
) -> (
    tokio::task::JoinHandle<Result<(), runtime::RuntimeError>>,
    Arc<RunStats>,
) {
    let opts = RunOptions {
        max_events: Some(max_events),
        group_id: Some(group.into()),
        ..Default::default()
    };
    let (run, stats, _) = start_pipeline(path, opts).await;
    (run, stats)
}

/// The `source` entry for [`ks_pipeline_with`]: record deliveries in
/// `topic`, or (`None`) in the commit metadata only.
pub fn checkpoint_option(topic: Option<&str>) -> String {
    topic.map_or(", checkpoint_topic: null".into(), |t| {
        format!(", checkpoint_topic: {t}")
    })
}

/// Writes `{topic}.yaml` in `dir`: pipeline `name` over the digits schema
/// and CNN reading `topic` (batches of 100), its late labels on
/// `{topic}.labels` (horizon 10 h), labelled windows first 400 / 200 by 100,
/// one `error_rate` test, outputs `{topic}-alerts`, `-dlq`, `-stats`; a
/// short session timeout, and `checkpoints` as in [`checkpoint_option`].
pub fn error_rate_pipeline(dir: &Path, name: &str, topic: &str, brokers: &str, checkpoints: Option<&str>) -> PathBuf {
    write(
        dir,
        &format!("{topic}.yaml"),
        &format!(
            "name: {name}
schema: {schema}
source: {{type: kafka, brokers: \"{brokers}\", topic: {topic}{cp}, properties: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\"}}}}
batch: {{max_events: 100, linger_ms: 10}}
model: {{path: {model}, input: pixels}}
labels: {{topic: {topic}.labels, horizon_ms: 36000000}}
window: {{reference: {{type: first, size: 400}}, current: {{size: 200, slide: 100}}}}
detectors:
  - {{name: errors, kind: error_rate, alpha: 0.001}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq, stats_topic: {topic}-stats}}
",
            schema = root().join("schemas/digits.yaml").display(),
            model = root().join("models/digits_cnn.onnx").display(),
            cp = checkpoint_option(checkpoints),
        ),
    )
}

/// Writes `{topic}.yaml` in `dir`: pipeline `name` over [`SCHEMA_X`] reading
/// `topic` at `brokers` in batches of 50, with `window` (flow YAML), one KS
/// test on `x`, and outputs `{topic}-alerts`, `{topic}-dlq`, `{topic}-stats`.
pub fn ks_pipeline(dir: &Path, name: &str, topic: &str, brokers: &str, window: &str) -> PathBuf {
    ks_pipeline_with(dir, name, topic, brokers, window, "")
}

/// [`ks_pipeline`] with more `source` options (`source_extra`: flow YAML
/// entries, each after a comma). Event-time windows (a `duration`) read
/// [`SCHEMA_XT`].
pub fn ks_pipeline_with(
    dir: &Path,
    name: &str,
    topic: &str,
    brokers: &str,
    window: &str,
    source_extra: &str,
) -> PathBuf {
    let schema = if window.contains("duration:") {
        SCHEMA_XT
    } else {
        SCHEMA_X
    };
    write(dir, "x.schema.yaml", schema);
    write(
        dir,
        &format!("{topic}.yaml"),
        &format!(
            "name: {name}
schema: x.schema.yaml
source: {{type: kafka, brokers: \"{brokers}\", topic: {topic}{source_extra}}}
batch: {{max_events: 50, linger_ms: 10}}
window: {window}
detectors:
  - {{name: x_ks, kind: ks, columns: [x], alpha: 0.001}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq, stats_topic: {topic}-stats}}
"
        ),
    )
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

/// Starts `driftwatch run` on pipeline `p` in consumer group `group` and waits
/// until it consumes (its signal handlers are set by then). `name` tells
/// instances of one group apart in their log files.
pub fn start_run(p: &Path, group: &str, name: &str) -> Running {
    start_run_with(p, group, name, &[])
}

/// [`start_run`] with environment variables.
pub fn start_run_with(p: &Path, group: &str, name: &str, env: &[(&str, &str)]) -> Running {
    use std::process::{Command, Stdio};
    // Tests of one binary run at once and may share group and run names: a
    // sequence number keeps each run's log its own.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!("driftwatch-{group}-{name}-{}-{n}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["run", "--metrics", "off", "--status-every", "5", "--group-id", group])
        .arg(p)
        .envs(env.iter().copied())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .expect("start driftwatch run");
    let run = Running(child, log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&run.1)
        .unwrap_or_default()
        .contains("consuming")
    {
        assert!(
            Instant::now() < deadline,
            "driftwatch run did not start: {}",
            run.1.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run
}

/// A `driftwatch run` child process and its log file; killed if still
/// running when dropped (a failed test leaves no instance behind).
pub struct Running(pub std::process::Child, pub PathBuf);

impl Running {
    /// SIGKILL, and wait for it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits until the process exits by itself (at most `timeout`).
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() >= deadline {
                let stacks = self.dump_stacks();
                panic!(
                    "driftwatch run did not exit within {timeout:?}: {}{stacks}\n{}",
                    self.1.display(),
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The run's log so far, without terminal colours.
    pub fn log_text(&self) -> String {
        let log = std::fs::read_to_string(&self.1).unwrap_or_default();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ … m
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The last `n` lines of the run's log, without terminal colours.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Where a stuck run waits: every thread's stack, by gdb (when
    /// installed), written next to the log; returns ", stacks in PATH" or "".
    fn dump_stacks(&self) -> String {
        let path = self.1.with_extension("stacks");
        let out = std::process::Command::new("gdb")
            .args(["-batch", "-ex", "thread apply all bt", "-p", &self.0.id().to_string()])
            .output();
        match out {
            Ok(o) if std::fs::write(&path, &o.stdout).is_ok() => format!(", stacks in {}", path.display()),
            _ => String::new(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Stops a run with SIGTERM; asserts it exits cleanly.
pub fn stop_run(mut run: Running) {
    std::process::Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .expect("kill");
    let status = run.0.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; {}:\n{}",
        run.1.display(),
        run.log_tail(15)
    );
}

/// Waits until group `group`'s commit metadata (or, with `checkpoints`,
/// that checkpoint topic) says that, in every partition of `last`, the
/// evaluations up to its last offset were delivered. A checkpoint moves only
/// with a batch that made evaluations: the input must end on one.
pub fn wait_delivered(
    broker: &impl Kafka,
    topic: &str,
    group: &str,
    last: &std::collections::BTreeMap<i32, i64>,
    checkpoints: Option<&str>,
) {
    let c: BaseConsumer = broker
        .client_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let marks = checkpoints.map(|t| {
        driftwatch::source::checkpoint::Checkpoints::new(&broker.bootstrap(), &Default::default(), t, group, topic)
            .expect("checkpoint reader")
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut tpl = TopicPartitionList::new();
        for p in last.keys() {
            tpl.add_partition(topic, *p);
        }
        // What each partition has delivered so far, as (partition, offset):
        // from the checkpoint topic, or the commit metadata's `hw`.
        let got: std::collections::BTreeMap<i32, i64> = match &marks {
            Some(m) => m
                .delivered(Duration::from_secs(10))
                .map(|got| got.iter().map(|(p, d)| (*p, d.offset)).collect())
                .unwrap_or_default(),
            None => c
                .committed_offsets(tpl, Duration::from_secs(5))
                .map(|got| {
                    // Exactly `dw1:hw=N;…`, N as a run writes it.
                    let hw = |meta: &str| {
                        let (text, _) = meta.strip_prefix("dw1:hw=")?.split_once(';')?;
                        text.parse::<i64>().ok().filter(|n| n.to_string() == text)
                    };
                    got.elements()
                        .iter()
                        .filter_map(|e| Some((e.partition(), hw(e.metadata())?)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if last.iter().all(|(p, l)| got.get(p) == Some(l)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} did not deliver up to {last:?}; delivered: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `topic` (partition 0) holds at least `n` messages; returns how many it saw.
pub fn wait_for(broker: &impl Kafka, topic: &str, n: usize) -> usize {
    let c = reader(broker, topic, &[0]);
    let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(120));
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(20)) {
            seen += 1;
        }
    }
    seen
}

/// Digits events at 500 a second of event time (`ts` 2 ms apart), ids `{tag}-{i}`.
pub fn paced_digits(tag: &str, n: usize) -> Vec<String> {
    let pool: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/data/digits_test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let mut e = pool[i % pool.len()].clone();
            e["event_id"] = format!("{tag}-{i}").into();
            e["ts"] = (1_767_225_600_000i64 + 2 * i as i64).into();
            e.to_string()
        })
        .collect()
}
