//! Prometheus metrics (`/metrics`) and readiness (`/health`) for `run`.
//!
//! Served by a plain std thread on a `std::net::TcpListener`: two read-only
//! endpoints need no HTTP framework (and no extra tokio features). Names
//! follow Prometheus conventions: `driftwatch_` prefix, units in the name,
//! counters end in `_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Whether the pipeline is ready (consumer assigned, model loaded).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Per detector counters and the last p-value per key.
#[derive(Debug, Default, Clone)]
pub struct DetectorMetrics {
    pub evaluations: u64,
    pub alerts: u64,
    /// key → last p-value (or statistic for distances)
    pub last_p_value: BTreeMap<String, f64>,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct RunStats {
    pub received: AtomicU64,
    pub decoded: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub evaluations: AtomicU64,
    pub alerts: AtomicU64,
    pub suppressed: AtomicU64,
    /// Events read before a rebalance and discarded (they are read again).
    pub discarded: AtomicU64,
    /// The late-label join: joined, late, unlabelled, waiting (with a labels topic).
    pub labels: std::sync::Mutex<crate::labels::JoinStats>,
    /// Events scored and added to windows.
    pub processed: AtomicU64,
    /// Dead-lettered records by reason.
    pub dead_by_reason: std::sync::Mutex<BTreeMap<String, u64>>,
    pub batches: AtomicU64,
    /// Time in the transform and model stages, ns.
    pub model_nanos: AtomicU64,
    /// Events the model scored: all processed ones, or its `model.sample`.
    pub model_scored: AtomicU64,
    /// Evaluations, alerts and last p-values per detector.
    pub detectors: std::sync::Mutex<BTreeMap<String, crate::metrics::DetectorMetrics>>,
    /// Lags per partition (messages), refreshed every few seconds.
    pub lag: std::sync::Mutex<BTreeMap<i32, crate::source::kafka::PartitionLag>>,
    pub window_keys: AtomicU64,
    pub window_events: AtomicU64,
    /// Event-time windows: events that came later than `allowed_lateness`
    /// (counted when their key is next evaluated).
    pub late_events: AtomicU64,
    /// The consumer has its partitions (the model is loaded before it starts).
    pub ready: AtomicBool,
    /// Events wait to be read but none has been read for the stall time.
    pub stalled: AtomicBool,
    /// Times the run stalled.
    pub stalls: AtomicU64,
}

/// Tells a stalled consumer from an idle one: stalled when events wait to
/// be read (read lag above 0) and none was read for `after`; idle when
/// nothing waits. Fed every second by the run's lag watcher.
#[derive(Debug)]
pub struct StallWatch {
    after: Duration,
    received: u64,
    since: std::time::Instant,
}

impl StallWatch {
    pub fn new(after: Duration, now: std::time::Instant) -> Self {
        Self {
            after,
            received: 0,
            since: now,
        }
    }

    /// Updates `stats.stalled` (and counts a new stall) from the events
    /// read so far and the read lag; returns whether the run is stalled.
    pub fn check(&mut self, stats: &RunStats, now: std::time::Instant) -> bool {
        let received = stats.received.load(Ordering::Relaxed);
        let waiting = stats.lag_total(|l| l.read);
        if received != self.received || waiting == 0 {
            (self.received, self.since) = (received, now);
        }
        let stalled = !self.after.is_zero() && waiting > 0 && now.duration_since(self.since) >= self.after;
        if stalled && !stats.stalled.swap(true, Ordering::Relaxed) {
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                waiting,
                seconds = now.duration_since(self.since).as_secs(),
                "stalled: events wait to be read but none was read; /health reports it"
            );
        } else if !stalled && stats.stalled.swap(false, Ordering::Relaxed) {
            tracing::info!("reading again after a stall");
        }
        stalled
    }
}

impl RunStats {
    /// One part of the lags (`read`, `commit_hold`, …) summed over partitions.
    pub fn lag_total(&self, part: fn(&crate::source::kafka::PartitionLag) -> i64) -> i64 {
        self.lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(part)
            .sum()
    }

    /// Logs the counters in one line (`run --status-every`).
    pub fn log_status(&self) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let join = self.labels.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::info!(
            received = n(&self.received),
            processed = n(&self.processed),
            dead_lettered = n(&self.dead_lettered),
            evaluations = n(&self.evaluations),
            alerts = n(&self.alerts),
            read_lag = self.lag_total(|l| l.read),
            commit_hold = self.lag_total(|l| l.commit_hold),
            stalled = self.stalled.load(Ordering::Relaxed),
            window_keys = n(&self.window_keys),
            window_events = n(&self.window_events),
            labels_joined = join.joined,
            labels_waiting = join.waiting_labels,
            labels_late = join.late,
            labels_orphaned = join.orphaned,
            unlabelled = join.unlabelled,
            join_dropped = join.dropped,
            events_waiting_for_labels = join.waiting_events,
            joined_held = join.held,
            first_waiting = ?join.first_waiting,
            "status"
        );
    }

    /// Counts one dead-lettered record of `reason`.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        *self
            .dead_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_string())
            .or_default() += 1;
    }
}

/// Binds `addr` and serves until the process ends; returns the bound address.
pub fn serve(addr: &str, stats: Arc<RunStats>, ready: Ready) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            // One bad client must not stop the endpoint.
            if let Err(e) = handle(conn, &stats, &ready) {
                tracing::debug!(error = %e, "metrics request");
            }
        }
    })?;
    Ok(bound)
}

fn handle(mut conn: TcpStream, stats: &RunStats, ready: &Ready) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).take(8192).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match (line.split_whitespace().next(), path) {
        (Some("GET"), "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(stats)),
        (Some("GET"), "/health") if stats.stalled.load(Ordering::Relaxed) => (
            "503 Service Unavailable",
            "text/plain",
            "stalled: events wait to be read but none was read (see driftwatch_consumer_read_lag_messages)\n"
                .to_string(),
        ),
        (Some("GET"), "/health") if ready() => ("200 OK", "text/plain", "ok\n".to_string()),
        (Some("GET"), "/health") => ("503 Service Unavailable", "text/plain", "not ready\n".to_string()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics in Prometheus text format.
pub fn render(s: &RunStats) -> String {
    let mut w = Prometheus::default();
    events_metrics(&mut w, s);
    model_metrics(&mut w, s);
    detector_metrics(&mut w, s);
    consumer_metrics(&mut w, s);
    label_metrics(&mut w, s);
    w.0
}

/// Prometheus text being written.
#[derive(Default)]
struct Prometheus(String);

impl Prometheus {
    /// One metric: its help and type lines, then its samples (labels, value).
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }
}

/// A counter without labels.
fn count(a: &std::sync::atomic::AtomicU64) -> Vec<(String, f64)> {
    vec![(String::new(), a.load(Ordering::Relaxed) as f64)]
}

/// Events read, decoded, dead-lettered, processed.
fn events_metrics(w: &mut Prometheus, s: &RunStats) {
    w.metric(
        "driftwatch_events_received_total",
        "counter",
        "Events read from the source topic.",
        count(&s.received),
    );
    w.metric(
        "driftwatch_events_decoded_total",
        "counter",
        "Events decoded into Arrow.",
        count(&s.decoded),
    );
    w.metric(
        "driftwatch_events_processed_total",
        "counter",
        "Events scored and added to windows.",
        count(&s.processed),
    );
    let reasons = s.dead_by_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
    w.metric(
        "driftwatch_events_dead_lettered_total",
        "counter",
        "Records sent to the dead-letter topic, by reason.",
        reasons
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", label(r)), *n as f64))
            .collect(),
    );
    w.metric(
        "driftwatch_events_discarded_total",
        "counter",
        "Events read before a rebalance and discarded; they are read again from the committed offsets.",
        count(&s.discarded),
    );
    w.metric(
        "driftwatch_batches_total",
        "counter",
        "Micro-batches processed.",
        count(&s.batches),
    );
}

/// The model stage: its time, the events it scored and their share.
fn model_metrics(w: &mut Prometheus, s: &RunStats) {
    w.metric(
        "driftwatch_model_inference_seconds_total",
        "counter",
        "Time spent in the model stage.",
        vec![(String::new(), s.model_nanos.load(Ordering::Relaxed) as f64 / 1e9)],
    );
    w.metric(
        "driftwatch_model_scored_events_total",
        "counter",
        "Events the model scored (with model.sample, the sampled share of driftwatch_events_processed_total).",
        count(&s.model_scored),
    );
    // The share scored since the start; rate() of the two counters gives it
    // over any recent span (what `max_rate` makes vary).
    let processed = s.processed.load(Ordering::Relaxed);
    if processed > 0 {
        w.metric(
            "driftwatch_model_sampled_fraction",
            "gauge",
            "Share of the processed events the model scored since the start (1 without model.sample).",
            vec![(
                String::new(),
                s.model_scored.load(Ordering::Relaxed) as f64 / processed as f64,
            )],
        );
    }
}

/// Evaluations, alerts and last p-values per detector.
fn detector_metrics(w: &mut Prometheus, s: &RunStats) {
    let dets = s.detectors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let per = |f: &dyn Fn(&DetectorMetrics) -> u64| {
        dets.iter()
            .map(|(d, m)| (format!("{{detector=\"{}\"}}", label(d)), f(m) as f64))
            .collect()
    };
    w.metric(
        "driftwatch_evaluations_total",
        "counter",
        "Detector evaluations.",
        per(&|m| m.evaluations),
    );
    w.metric("driftwatch_alerts_total", "counter", "Alerts sent.", per(&|m| m.alerts));
    w.metric(
        "driftwatch_last_p_value",
        "gauge",
        "p-value of the last evaluation (statistic for distance detectors), per detector and key.",
        dets.iter()
            .flat_map(|(d, m)| {
                m.last_p_value
                    .iter()
                    .map(move |(k, v)| (format!("{{detector=\"{}\",key=\"{}\"}}", label(d), label(k)), *v))
            })
            .collect(),
    );
}

/// Lags, stalls and the windows held.
fn consumer_metrics(w: &mut Prometheus, s: &RunStats) {
    let lag = s.lag.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let per_partition = |f: fn(&crate::source::kafka::PartitionLag) -> i64| {
        lag.iter()
            .map(|(p, l)| (format!("{{partition=\"{p}\"}}"), f(l) as f64))
            .collect()
    };
    w.metric(
        "driftwatch_consumer_read_lag_messages",
        "gauge",
        "Messages waiting to be read: end of the partition minus the position. 0 once everything is read.",
        per_partition(|l| l.read),
    );
    w.metric(
        "driftwatch_consumer_commit_hold_messages",
        "gauge",
        "Messages read but not committed because open windows still need them (position minus committed offset).",
        per_partition(|l| l.commit_hold),
    );
    w.metric(
        "driftwatch_consumer_lag_messages",
        "gauge",
        "End of the partition minus the committed offset (Kafka's consumer-group lag): read lag plus commit hold.",
        per_partition(|l| l.committed),
    );
    w.metric(
        "driftwatch_consumer_stalled",
        "gauge",
        "1 while events wait to be read but none was read for the stall time (run --stall-after); /health is 503 meanwhile.",
        vec![(String::new(), f64::from(u8::from(s.stalled.load(Ordering::Relaxed))))],
    );
    w.metric(
        "driftwatch_consumer_stalls_total",
        "counter",
        "Times the consumer stalled.",
        count(&s.stalls),
    );
    w.metric(
        "driftwatch_window_keys",
        "gauge",
        "Keys with windows.",
        count(&s.window_keys),
    );
    w.metric(
        "driftwatch_window_events",
        "gauge",
        "Events held in reference and current windows, all keys.",
        count(&s.window_events),
    );
    w.metric(
        "driftwatch_window_late_events_total",
        "counter",
        "Event-time windows: events later than window.allowed_lateness behind their partition's newest, counted and not added (reported by their key's next evaluation).",
        count(&s.late_events),
    );
}

/// The late-label join.
fn label_metrics(w: &mut Prometheus, s: &RunStats) {
    let j = s.labels.lock().unwrap_or_else(|e| e.into_inner()).clone();
    w.metric(
        "driftwatch_labels_total",
        "counter",
        "Late labels by outcome.",
        [
            ("joined", j.joined),
            ("late", j.late),
            ("unlabelled", j.unlabelled),
            ("orphaned", j.orphaned),
            ("dropped", j.dropped),
        ]
        .iter()
        .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), *v as f64))
        .collect(),
    );
    w.metric(
        "driftwatch_labels_waiting",
        "gauge",
        "Entries in the label join buffers: events waiting for a label, labels waiting for their event, joined events held until the earlier events of their partition are decided.",
        vec![
            ("{buffer=\"events\"}".into(), j.waiting_events as f64),
            ("{buffer=\"labels\"}".into(), j.waiting_labels as f64),
            ("{buffer=\"held\"}".into(), j.held as f64),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_stall_is_events_waiting_and_none_read_for_the_stall_time() {
        use crate::source::kafka::PartitionLag;
        let stats = RunStats::default();
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let waiting = |n: i64| {
            *stats.lag.lock().unwrap() = [(
                0,
                PartitionLag {
                    read: n,
                    ..Default::default()
                },
            )]
            .into();
        };
        let mut w = StallWatch::new(Duration::from_secs(60), t0);
        // Idle: nothing waits, however long nothing is read.
        waiting(0);
        assert!(!w.check(&stats, at(600)));
        // Events wait; none read for 59 s, then 60 s: stalled, counted once.
        waiting(500);
        assert!(!w.check(&stats, at(659)));
        assert!(w.check(&stats, at(660)));
        assert!(w.check(&stats, at(700)));
        assert!(stats.stalled.load(Ordering::Relaxed));
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 1);
        // Reading again clears it; a new stall counts again.
        stats.received.store(10, Ordering::Relaxed);
        assert!(!w.check(&stats, at(702)));
        assert!(!stats.stalled.load(Ordering::Relaxed));
        assert!(w.check(&stats, at(762)));
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 2);
        // A stall time of 0 never stalls.
        let mut never = StallWatch::new(Duration::ZERO, t0);
        assert!(!never.check(&stats, at(10_000)));
    }

    #[test]
    fn serves_metrics_and_health() {
        let stats = Arc::new(RunStats::default());
        stats.received.store(42, Ordering::Relaxed);
        stats.dead_by_reason.lock().unwrap().insert("malformed_json".into(), 3);
        stats.detectors.lock().unwrap().insert(
            "ks".into(),
            DetectorMetrics {
                evaluations: 5,
                alerts: 1,
                last_p_value: [("scanner \"b\"".to_string(), 0.25)].into(),
            },
        );
        stats.lag.lock().unwrap().insert(
            0,
            crate::source::kafka::PartitionLag {
                read: 0,
                commit_hold: 250,
                committed: 250,
            },
        );
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ready.clone();
        let stats_handle = stats.clone();
        let addr = serve("127.0.0.1:0", stats, Arc::new(move || r.load(Ordering::Relaxed))).unwrap();
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        for line in [
            "driftwatch_events_received_total 42",
            "driftwatch_events_dead_lettered_total{reason=\"malformed_json\"} 3",
            "driftwatch_evaluations_total{detector=\"ks\"} 5",
            "driftwatch_alerts_total{detector=\"ks\"} 1",
            "driftwatch_last_p_value{detector=\"ks\",key=\"scanner \\\"b\\\"\"} 0.25",
            "# TYPE driftwatch_consumer_lag_messages gauge",
            "driftwatch_consumer_read_lag_messages{partition=\"0\"} 0",
            "driftwatch_consumer_commit_hold_messages{partition=\"0\"} 250",
            "driftwatch_consumer_lag_messages{partition=\"0\"} 250",
        ] {
            assert!(m.contains(line), "missing {line}:\n{m}");
        }
        assert!(get(addr, "/health").starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/health").starts_with("HTTP/1.1 200"));
        stats_handle.stalled.store(true, Ordering::Relaxed);
        let h = get(addr, "/health");
        assert!(h.starts_with("HTTP/1.1 503") && h.contains("stalled"), "{h}");
        assert!(get(addr, "/metrics").contains("driftwatch_consumer_stalled 1"));
        stats_handle.stalled.store(false, Ordering::Relaxed);
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
