//! `replay`: bounded topic ranges and files through a pipeline, byte-identical
//! results whatever the batch size, timestamp ranges resolved per partition,
//! nothing committed or published unless asked, and a report that matches
//! the statistics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;
use driftwatch::source::range::{TopicRange as Range, resolve};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn replay(args: &[&str], out: &std::path::Path, brokers: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("replay")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("KAFKA_BROKERS", brokers)
        .current_dir(root())
        .output()
        .unwrap()
}

fn read(dir: &std::path::Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

/// The two-scanner stream (scanner a clean for 2500 events, scanner b clean
/// for 1500 then shifted for 1000, from 2026-01-01T00:00:00Z) produced to
/// `digits` (2 partitions, with the digits pipelines' output topics), its
/// truth in `dir/truth.json`.
async fn scanners_stream(broker: &Broker, dir: &std::path::Path) {
    for (t, n) in [("digits", 2), ("driftwatch.alerts", 1), ("driftwatch.dead-letters", 1)] {
        broker.create_topic(t, n).unwrap();
    }
    let s = write(
        dir,
        "s.yaml",
        &format!(
            "name: r\nseed: 3\npool: {}\nkeys:\n  scanner-a:\n    - {{kind: clean, events: 2500}}\n  scanner-b:\n    - {{kind: clean, events: 1500}}\n    - {{kind: covariate, events: 1000, contrast: 0.6, background: 3}}\n",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let l = driftwatch::scenario::Loaded::load(&s).unwrap();
    let producer: FutureProducer = broker.client_config().set("compression.type", "lz4").create().unwrap();
    let truth = driftwatch::scenario::produce_kafka(&l, &producer, "digits", 2)
        .await
        .unwrap();
    truth.write(&dir.join("truth.json")).unwrap();
}

/// The demo scenario, shortened, on a two-partition topic: replayed twice by
/// offsets with different batch sizes and once by time, the files are
/// byte-identical; the production group commits nothing; alerts reach the
/// alert topic only with --publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_byte_identical_commit_nothing_and_publish_only_when_asked() {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scanners_stream(&broker, dir.path()).await;
    let truth_path = dir.path().join("truth.json").display().to_string();
    let b = broker.bootstrap();
    let (o1, o2, o3) = (dir.path().join("o1"), dir.path().join("o2"), dir.path().join("o3"));
    for (out, extra) in [
        (&o1, vec!["--offsets", "0:0-,1:0-2500", "--batch", "512"]),
        (&o2, vec!["--offsets", "0:0-2500,1:0-", "--batch", "37"]),
        (
            &o3,
            vec![
                "--from",
                "2025-12-31T00:00:00Z",
                "--to",
                "2026-01-02T00:00:00Z",
                "--batch",
                "1000",
            ],
        ),
    ] {
        let mut args = vec!["pipelines/digits.yaml", "--truth", truth_path.as_str()];
        args.extend(extra);
        let o = replay(&args, out, &b);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in ["alerts.jsonl", "stats.jsonl"] {
        assert_eq!(read(&o1, f), read(&o2, f), "{f} differs with the batch size");
        assert_eq!(read(&o1, f), read(&o3, f), "{f} differs between offsets and times");
    }
    let stats: Vec<serde_json::Value> = read(&o1, "stats.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (2500 − 1000) / 500 = 3 windows per key (the digits pipeline slides by
    // 500 after a reference of 1000), five detectors each.
    assert_eq!(stats.len(), 2 * 3 * 5);
    let summary: serde_json::Value = serde_json::from_str(&read(&o1, "summary.json")).unwrap();
    assert_eq!(summary["events"], 5000);
    let mmd = &summary["truth"]["detectors"]["embedding_mmd"];
    assert_eq!(mmd["detected"], 1, "{mmd}");
    assert_eq!(mmd["false_alarms"], 0, "{mmd}");
    // Two drifting windows in a row (hysteresis 2 of 2): the alert ends 1000 events in.
    assert_eq!(mmd["intervals"][0]["delay_events"], 1000, "{mmd}");

    // Nothing committed for the production group, nothing published.
    let c: BaseConsumer = broker
        .client_config()
        .set("group.id", "driftwatch-digits")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("digits", 0);
    tpl.add_partition("digits", 1);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    assert!(
        committed
            .elements()
            .iter()
            .all(|e| e.offset() == rdkafka::Offset::Invalid),
        "{committed:?}"
    );
    assert!(read_topic(&broker, "driftwatch.alerts", 0, Duration::from_secs(3)).is_empty());
    let o4 = dir.path().join("o4");
    let o = replay(
        &["pipelines/digits.yaml", "--offsets", "0:0-,1:0-", "--publish"],
        &o4,
        &b,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let published = read_topic(&broker, "driftwatch.alerts", 1, Duration::from_secs(20));
    assert_eq!(published.len(), read(&o4, "alerts.jsonl").lines().count());
    assert!(!published.is_empty());

    // The report: one section per detector and key, its points as in stats.jsonl.
    let html = read(&o1, "report.html");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    // Self-contained: no external scripts, styles or images.
    for ext in ["<script", "<link", " src=", "url("] {
        assert!(!html.contains(ext), "report.html refers to something outside it: {ext}");
    }
    let sections = html.matches("<section class=\"detector\"").count();
    assert_eq!(sections, 5 * 2, "5 detectors × 2 keys");
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert_eq!(html.matches("<svg").count(), 2 * sections);
    for e in stats
        .iter()
        .filter(|e| e["detector"] == "embedding_mmd" && e["key"] == "scanner-b")
    {
        let p = e["p_value"].as_f64().unwrap();
        let needle = format!("data-evaluation=\"{}\" data-value=\"{p:e}\"", e["evaluation"]);
        assert!(html.contains(&needle), "{needle}");
    }
    assert!(html.contains("class=\"truth\""), "the drift interval is shaded");
}

/// Timestamps resolve to the first offset at or after them, per partition:
/// an empty partition, a range before the start and beyond the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_ranges_resolve_at_partition_edges() {
    let broker = Broker::start(1).unwrap();
    broker.create_topic("times", 3).unwrap();
    let p: FutureProducer = broker.client_config().create().unwrap();
    // Partition 0: ts 1000, 1010, …, 1090. Partition 1: empty. Partition 2: ts 2000, 2100.
    let mut fs = vec![];
    for (part, ts) in (0..10).map(|i| (0, 1000 + 10 * i)).chain([(2, 2000), (2, 2100)]) {
        fs.push(
            p.send_result(
                FutureRecord::<(), _>::to("times")
                    .payload("{}")
                    .partition(part)
                    .timestamp(ts),
            )
            .unwrap(),
        );
    }
    for f in fs {
        f.await.unwrap().unwrap();
    }
    let c: BaseConsumer = broker.client_config().set("group.id", "times-r").create().unwrap();
    let r = |from, to| resolve(&c, "times", &Range::Times { from, to }).unwrap();
    let got = r(Some(1035), Some(2050));
    assert_eq!(
        got[&0],
        (4, 10),
        "1040 is the first at or after 1035; 2050 is beyond the end"
    );
    assert_eq!(got[&1], (0, 0), "an empty partition");
    assert_eq!(got[&2], (0, 1));
    let got = r(Some(0), Some(1000));
    assert_eq!((got[&0], got[&2]), ((0, 0), (0, 0)), "before the start: empty ranges");
    let got = r(Some(5000), None);
    assert_eq!((got[&0], got[&2]), ((10, 10), (2, 2)), "after the end: empty ranges");
    let got = r(None, None);
    assert_eq!((got[&0], got[&2]), ((0, 10), (0, 2)));
    let e = resolve(&c, "times", &Range::Offsets([(7, (0, None))].into())).unwrap_err();
    assert!(e.to_string().contains("no partition 7"), "{e}");
}

/// A late-labels pipeline over `topic` (labels on `{topic}.labels`): an
/// error-rate and a label-shift detector on the labelled windows, a KS on
/// the events, every evaluation on `{topic}-stats`.
fn late_labels_pipeline(dir: &std::path::Path, topic: &str, brokers: &str) -> std::path::PathBuf {
    late_labels_pipeline_with(
        dir,
        topic,
        brokers,
        "{reference: {type: first, size: 400}, current: {size: 200, slide: 100}}",
    )
}

/// [`late_labels_pipeline`] with other windows (flow YAML).
fn late_labels_pipeline_with(dir: &std::path::Path, topic: &str, brokers: &str, window: &str) -> std::path::PathBuf {
    write(
        dir,
        "p.yaml",
        &format!(
            "name: {topic}
schema: {schema}
source: {{type: kafka, brokers: \"{brokers}\", topic: {topic}, start: earliest, checkpoint_topic: null}}
batch: {{max_events: 200, linger_ms: 10}}
model: {{path: {model}, input: pixels}}
labels: {{topic: {topic}.labels, horizon_ms: 36000000}}
window: {window}
detectors:
  - {{name: features_ks, kind: ks, columns: [mean_intensity], alpha: 0.001}}
  - {{name: errors, kind: error_rate, alpha: 0.001}}
  - {{name: priors, kind: label_shift, alpha: 0.001}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq, stats_topic: {topic}-stats}}
",
            schema = root().join("schemas/digits.yaml").display(),
            model = root().join("models/digits_cnn.onnx").display(),
        ),
    )
}

/// The late-labels stream of `topic` (seed `seed`): key a clean for 1000
/// events, key b clean for 600 then relabelled for 800, labels 150 events
/// late on `{topic}.labels`; produced to the broker (2 partitions, with the
/// output topics) and written to `dir` as `ev.jsonl`, `labels.jsonl` and
/// `truth.json`. Returns the scenario and the two files.
async fn late_labels_stream(
    broker: &Broker,
    dir: &std::path::Path,
    topic: &str,
    seed: u64,
) -> (driftwatch::scenario::Loaded, std::path::PathBuf, std::path::PathBuf) {
    for (t, n) in [
        (topic.to_string(), 2),
        (format!("{topic}.labels"), 2),
        (format!("{topic}-alerts"), 1),
        (format!("{topic}-dlq"), 1),
        (format!("{topic}-stats"), 1),
    ] {
        broker.create_topic(&t, n).unwrap();
    }
    let s = write(
        dir,
        "s.yaml",
        &format!(
            "name: {topic}\nseed: {seed}\npool: {}\nlabels: {{topic: {topic}.labels, delay_events: 150}}\nkeys:\n  a:\n    - {{kind: clean, events: 1000}}\n  b:\n    - {{kind: clean, events: 600}}\n    - {{kind: concept, events: 800, remap: {{3: 8, 8: 3, 5: 9, 9: 5}}}}\n",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let l = driftwatch::scenario::Loaded::load(&s).unwrap();
    let producer: FutureProducer = broker.client_config().set("compression.type", "lz4").create().unwrap();
    driftwatch::scenario::produce_kafka(&l, &producer, topic, 2)
        .await
        .unwrap();
    let (events, labels) = (dir.join("ev.jsonl"), dir.join("labels.jsonl"));
    let truth = driftwatch::scenario::write_jsonl(&l, &events, Some(&labels)).unwrap();
    truth.write(&dir.join("truth.json")).unwrap();
    (l, events, labels)
}

/// What must agree between a run and a replay of the same stream: the
/// labelled evaluations, by key and evaluation number.
fn labelled_evaluations(records: &[serde_json::Value], with_ends: bool) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .filter(|e| e["detector"] == "errors" || e["detector"] == "priors")
        .map(|e| {
            let end = if with_ends {
                e["window"]["current_offsets"].to_string()
            } else {
                String::new()
            };
            format!(
                "{} {} {} stat={} p={} drift={} alert={} sizes={}/{} {end}",
                e["detector"],
                e["key"],
                e["evaluation"],
                e["statistic"],
                e["p_value"],
                e["drift"],
                e["alert"],
                e["window"]["reference_size"],
                e["window"]["current_size"],
            )
        })
        .collect();
    out.sort();
    out
}

fn jsonl_values(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Late labels on their own topic: `run` on the embedded broker, then
/// `replay` of the topic (labels read from the labels topic over the same
/// range) at two batch sizes, and `replay --input` of the same scenario
/// written to files (`--labels FILE`): the error-rate and label-shift
/// evaluations are those of the run, the replays are byte-identical
/// whatever the batch, and the truth file scores the concept phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_late_labels_gives_the_run_s_labelled_evaluations() {
    let broker = Broker::start(1).unwrap();
    let topic = "ll";
    let dir = tempfile::tempdir().unwrap();
    let (l, events, labels) = late_labels_stream(&broker, dir.path(), topic, 11).await;
    let b = broker.bootstrap();
    let p = late_labels_pipeline(dir.path(), topic, &b);
    let stats = run_pipeline(&p, l.total_events() as u64, "ll-run").await;
    assert_eq!(stats.labels.lock().unwrap().joined, 2400);
    let run = read_topic(&broker, "ll-stats", 1, Duration::from_secs(20));
    let want = labelled_evaluations(&run, true);
    assert!(
        want.iter()
            .any(|e| e.contains("\"errors\"") && e.contains("alert=true")),
        "the run alerts on the concept drift: {want:#?}"
    );
    assert!(want.iter().any(|e| e.contains("\"priors\"")));

    let (o1, o2, o3) = (dir.path().join("o1"), dir.path().join("o2"), dir.path().join("o3"));
    let p_arg = p.display().to_string();
    for (out, batch) in [(&o1, "37"), (&o2, "500")] {
        let o = replay(&[&p_arg, "--offsets", "0:0-,1:0-", "--batch", batch], out, &b);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in ["alerts.jsonl", "stats.jsonl"] {
        assert_eq!(read(&o1, f), read(&o2, f), "{f} differs with the batch size");
    }
    let replayed = jsonl_values(&read(&o1, "stats.jsonl"));
    assert_eq!(
        labelled_evaluations(&replayed, true),
        want,
        "replay of the topic vs run"
    );
    let summary: serde_json::Value = serde_json::from_str(&read(&o1, "summary.json")).unwrap();
    assert_eq!(summary["labels"]["joined"], 2400, "{summary}");

    // The same scenario from files, labels from --labels: the same
    // evaluations (their offsets are line numbers there), scored.
    let truth_arg = dir.path().join("truth.json").display().to_string();
    let (ev_arg, labels_arg) = (events.display().to_string(), labels.display().to_string());
    let o = replay(
        &[
            &p_arg,
            "--input",
            &ev_arg,
            "--labels",
            &labels_arg,
            "--truth",
            &truth_arg,
            "--batch",
            "64",
        ],
        &o3,
        &b,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_files = jsonl_values(&read(&o3, "stats.jsonl"));
    assert_eq!(
        labelled_evaluations(&from_files, false),
        labelled_evaluations(&run, false)
    );
    let summary: serde_json::Value = serde_json::from_str(&read(&o3, "summary.json")).unwrap();
    let errors = &summary["truth"]["detectors"]["errors"];
    assert_eq!(errors["detected"], 1, "the concept phase is caught: {summary}");

    // --labels with a pipeline that joins no labels is bad input (exit 2).
    let o = replay(
        &["pipelines/digits.yaml", "--input", &ev_arg, "--labels", &labels_arg],
        &dir.path().join("o4"),
        &b,
    );
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("labels"));
}

/// A missing input file is bad input: exit 2, naming the file.
#[test]
fn a_missing_input_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = replay(
        &["pipelines/digits.yaml", "--input", "no/such/events.jsonl"],
        &dir.path().join("o"),
        "127.0.0.1:1",
    );
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/events.jsonl"));
}

/// Event-time windows (30 s tumbling; events every 100 ms per scanner, each
/// scanner on its own key): replays by offsets at two batch sizes and by
/// time give byte-identical files; each window is evaluated once it has
/// closed, on its own events, and the drift is caught within the windows
/// of its phase, with no false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_windows_replay_byte_identically_and_catch_the_drift_in_its_phase() {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scanners_stream(&broker, dir.path()).await;
    let truth_path = dir.path().join("truth.json").display().to_string();
    let pipeline = "pipelines/digits-by-time.yaml".to_string();
    let b = broker.bootstrap();
    let outs: Vec<_> = (1..=3).map(|i| dir.path().join(format!("o{i}"))).collect();
    for (out, extra) in outs.iter().zip([
        vec!["--offsets", "0:0-,1:0-", "--batch", "512"],
        vec!["--offsets", "0:0-,1:0-", "--batch", "37"],
        vec!["--from", "2025-12-31T00:00:00Z", "--batch", "1000"],
    ]) {
        let mut args = vec![pipeline.as_str(), "--truth", truth_path.as_str()];
        args.extend(extra);
        let o = replay(&args, out, &b);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in ["alerts.jsonl", "stats.jsonl"] {
        assert_eq!(read(&outs[0], f), read(&outs[1], f), "{f} differs with the batch size");
        assert_eq!(
            read(&outs[0], f),
            read(&outs[2], f),
            "{f} differs between offsets and times"
        );
    }
    let stats = jsonl_values(&read(&outs[0], "stats.jsonl"));
    // Per key 250 s of events; the first 1000 (100 s) are the reference;
    // windows ending at 120, 150, 180, 210 and 240 s close (the last, to
    // 270 s, is still open when the events end): 5 per key, 5 detectors.
    assert_eq!(stats.len(), 2 * 5 * 5, "{stats:?}");
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z, the scenario's start
    for e in &stats {
        let w = &e["window"];
        let (start, end) = (
            w["window_start_ms"].as_i64().unwrap(),
            w["window_end_ms"].as_i64().unwrap(),
        );
        assert_eq!((end - start, (end - t0) % 30_000), (30_000, 0), "{w}");
        assert!((end - t0) / 1000 >= 120 && (end - t0) / 1000 <= 240, "{w}");
        // The window's own events only.
        let (first, last) = (
            w["current_start_ms"].as_i64().unwrap(),
            w["current_end_ms"].as_i64().unwrap(),
        );
        assert!(start <= first && last < end, "{w}");
        assert_eq!(w["late_events"], 0, "{w}");
    }
    let summary: serde_json::Value = serde_json::from_str(&read(&outs[0], "summary.json")).unwrap();
    let mmd = &summary["truth"]["detectors"]["embedding_mmd"];
    assert_eq!(
        (mmd["detected"].as_u64(), mmd["false_alarms"].as_u64()),
        (Some(1), Some(0)),
        "{mmd}"
    );
    // Two drifting windows in a row: the alert is the window ending 60 s into the phase.
    assert_eq!(mmd["intervals"][0]["delay_ms"], 60_000, "{mmd}");
}

/// A `range` reference (the "training period"): the first 100 s of the
/// topic, both scanners, read once at start and shared by the keys. Every
/// window is evaluated against those 2000 events (none waits for a
/// reference of its own), byte-identically at two batch sizes, and the
/// drift of scanner b's last phase is caught with no false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_reference_is_read_once_and_every_window_is_tested_against_it() {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scanners_stream(&broker, dir.path()).await;
    let by_time = std::fs::read_to_string(root().join("pipelines/digits-by-time.yaml")).unwrap();
    let first = "reference: {type: first, size: 1000}";
    assert!(by_time.contains(first));
    let text = by_time
        .replace(
            first,
            "reference: {type: range, from: 2026-01-01T00:00:00Z, to: 2026-01-01T00:01:40Z}",
        )
        .replace("../", &format!("{}/", root().display()));
    let pipeline = write(dir.path(), "range.yaml", &text);
    let (p, t) = (
        pipeline.display().to_string(),
        dir.path().join("truth.json").display().to_string(),
    );
    let outs: Vec<_> = (1..=2).map(|i| dir.path().join(format!("o{i}"))).collect();
    for (out, batch) in outs.iter().zip(["512", "41"]) {
        let o = replay(
            &[&p, "--truth", &t, "--offsets", "0:0-,1:0-", "--batch", batch],
            out,
            &broker.bootstrap(),
        );
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{log}");
        assert!(log.contains("reference read") && log.contains("events=2000"), "{log}");
    }
    for f in ["alerts.jsonl", "stats.jsonl"] {
        assert_eq!(read(&outs[0], f), read(&outs[1], f), "{f} differs with the batch size");
    }
    let stats = jsonl_values(&read(&outs[0], "stats.jsonl"));
    // Windows ending at 30, 60, …, 240 s close (the one to 270 s is open
    // when the events end): 8 per key, 5 detectors each, all against the range.
    assert_eq!(stats.len(), 2 * 8 * 5, "{}", stats.len());
    assert!(
        stats.iter().all(|e| e["window"]["reference_size"] == 2000),
        "{:?}",
        stats[0]
    );
    let summary: serde_json::Value = serde_json::from_str(&read(&outs[0], "summary.json")).unwrap();
    let mmd = &summary["truth"]["detectors"]["embedding_mmd"];
    assert_eq!(
        (mmd["detected"].as_u64(), mmd["false_alarms"].as_u64()),
        (Some(1), Some(0)),
        "{mmd}"
    );
}

/// Event-time windows on the late-label (joined) windows: tumbling windows
/// of 20 s of event time over events joined to labels that come 150 events
/// later on their own topic. `run` and `replay` of the topic at two batch
/// sizes give the same labelled evaluations, each of a whole window
/// (`window_start_ms`/`window_end_ms`), and the error rate catches the
/// concept phase with no false alarm; `replay --input --labels` of the same
/// scenario gives those and one window more (see the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_windows_of_joined_events_agree_between_run_and_replays() {
    let broker = Broker::start(1).unwrap();
    let topic = "tl";
    let dir = tempfile::tempdir().unwrap();
    let (l, events, labels) = late_labels_stream(&broker, dir.path(), topic, 5).await;
    let b = broker.bootstrap();
    let window = "{reference: {type: first, size: 400}, current: {duration: 20s}}";
    let p = late_labels_pipeline_with(dir.path(), topic, &b, window);
    let stats = run_pipeline(&p, l.total_events() as u64, "tl-run").await;
    assert_eq!(stats.labels.lock().unwrap().joined, 2400);
    let run = read_topic(&broker, "tl-stats", 1, Duration::from_secs(20));
    let want = labelled_evaluations(&run, false);
    let errors: Vec<&serde_json::Value> = run.iter().filter(|e| e["detector"] == "errors").collect();
    assert!(errors.len() >= 4, "labelled windows evaluated: {}", errors.len());
    for e in &errors {
        let w = &e["window"];
        let (start, end) = (
            w["window_start_ms"].as_i64().unwrap(),
            w["window_end_ms"].as_i64().unwrap(),
        );
        assert_eq!((end - start, start % 20_000), (20_000, 0), "{w}");
    }
    assert!(
        errors.iter().any(|e| e["key"] == "b" && e["alert"] == true),
        "the concept drift of key b: {want:#?}"
    );
    assert!(
        !errors.iter().any(|e| e["key"] == "a" && e["alert"] == true),
        "{want:#?}"
    );

    let p_arg = p.display().to_string();
    let (o1, o2, o3) = (dir.path().join("o1"), dir.path().join("o2"), dir.path().join("o3"));
    for (out, batch) in [(&o1, "37"), (&o2, "500")] {
        let o = replay(&[&p_arg, "--offsets", "0:0-,1:0-", "--batch", batch], out, &b);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in ["alerts.jsonl", "stats.jsonl"] {
        assert_eq!(read(&o1, f), read(&o2, f), "{f} differs with the batch size");
    }
    assert_eq!(
        labelled_evaluations(&jsonl_values(&read(&o1, "stats.jsonl")), false),
        want,
        "replay vs run"
    );
    let (ev_arg, labels_arg) = (events.display().to_string(), labels.display().to_string());
    let o = replay(
        &[&p_arg, "--input", &ev_arg, "--labels", &labels_arg, "--batch", "64"],
        &o3,
        &b,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A file is one partition: key b's later events move its watermark past
    // key a's last window, which the run (a and b on partitions of their
    // own, a's idle after its last event) keeps open. Every window the run
    // closed is the same; the only extra is a's last one, per detector.
    let files = labelled_evaluations(&jsonl_values(&read(&o3, "stats.jsonl")), false);
    let extra: Vec<&String> = files.iter().filter(|e| !want.contains(e)).collect();
    assert!(want.iter().all(|e| files.contains(e)), "files vs run: {files:#?}");
    assert!(
        extra.len() == 2 && extra.iter().all(|e| e.contains("\"a\" 3 ")),
        "{extra:#?}"
    );
}

/// Sampled event-time windows (`window.max_sample`), against a `range`
/// reference of 2000 events: each window (300 events per key) and the
/// reference keep a sample of 100 for the tests of raw values, chosen by
/// event id, so replays at two batch sizes are byte-identical; the windows,
/// their sizes and the categorical tests (label shift and error rate, on
/// exact counts) are exactly those of the unsampled replay, while KS reads
/// the 100-event samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_time_windows_count_categories_exactly_and_sample_the_rest_by_event_id() {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scanners_stream(&broker, dir.path()).await;
    let by_time = std::fs::read_to_string(root().join("pipelines/digits-by-time.yaml")).unwrap();
    let (first, lateness) = ("reference: {type: first, size: 1000}", "  allowed_lateness: 0s");
    assert!(by_time.contains(first) && by_time.contains(lateness));
    let plain = by_time
        .replace(
            first,
            "reference: {type: range, from: 2026-01-01T00:00:00Z, to: 2026-01-01T00:01:40Z}",
        )
        .replace("../", &format!("{}/", root().display()));
    let sampled = plain.replace(lateness, &format!("{lateness}\n  max_sample: 100\n  sample_seed: 5"));
    let b = broker.bootstrap();
    let mut runs = vec![];
    for (name, text, batch) in [("p", &plain, "512"), ("s1", &sampled, "512"), ("s2", &sampled, "41")] {
        let pipeline = write(dir.path(), &format!("{name}.yaml"), text);
        let out = dir.path().join(name);
        let o = replay(
            &[
                &pipeline.display().to_string(),
                "--offsets",
                "0:0-,1:0-",
                "--batch",
                batch,
            ],
            &out,
            &b,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        runs.push(out);
    }
    assert_eq!(
        read(&runs[1], "stats.jsonl"),
        read(&runs[2], "stats.jsonl"),
        "batch size"
    );
    let (plain, sampled) = (
        jsonl_values(&read(&runs[0], "stats.jsonl")),
        jsonl_values(&read(&runs[1], "stats.jsonl")),
    );
    assert_eq!(plain.len(), 2 * 8 * 5);
    assert_eq!(sampled.len(), plain.len());
    let at = |e: &serde_json::Value| {
        (
            e["key"].clone(),
            e["detector"].clone(),
            e["window"]["window_end_ms"].clone(),
        )
    };
    for (p, s) in plain.iter().zip(&sampled) {
        assert_eq!(at(p), at(s));
        let (pw, sw) = (&p["window"], &s["window"]);
        assert_eq!(
            (&pw["reference_size"], &pw["current_size"]),
            (&sw["reference_size"], &sw["current_size"])
        );
        assert_eq!(
            (sw["reference_sample"].as_u64(), sw["current_sample"].as_u64()),
            (Some(100), Some(100)),
            "{sw}"
        );
        assert!(pw.get("current_sample").is_none(), "{pw}");
        match s["detector"].as_str().unwrap() {
            "predicted_class_chi2" | "error_rate" => {
                assert_eq!(
                    (&p["statistic"], &p["p_value"]),
                    (&s["statistic"], &s["p_value"]),
                    "{s}"
                );
                assert!(s["details"].is_object() && s["p_value"].is_f64(), "{s}");
                assert_eq!(p["details"], s["details"], "exact counts");
            }
            "image_features_ks" => {
                let columns = s["details"].as_object().unwrap_or_else(|| panic!("{s}"));
                assert_eq!(columns.len(), 2, "{s}");
                for d in columns.values() {
                    assert_eq!(
                        (d["n_reference"].as_u64(), d["n_current"].as_u64()),
                        (Some(100), Some(100)),
                        "{s}"
                    );
                }
            }
            _ => {}
        }
    }
}
