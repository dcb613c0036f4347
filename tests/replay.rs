//! `replay`: bounded topic ranges and files through a pipeline, byte-identical
//! results whatever the batch size, timestamp ranges resolved per partition,
//! nothing committed or published unless asked, and a report that matches
//! the statistics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;
use driftwatch::replay::{Range, resolve};
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

/// The demo scenario, shortened, on a two-partition topic: replayed twice by
/// offsets with different batch sizes and once by time, the files are
/// byte-identical; the production group commits nothing; alerts reach the
/// alert topic only with --publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_byte_identical_commit_nothing_and_publish_only_when_asked() {
    let broker = Broker::start(1).unwrap();
    for (t, n) in [("digits", 2), ("driftwatch.alerts", 1), ("driftwatch.dead-letters", 1)] {
        broker.create_topic(t, n).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write(
        dir.path(),
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
    truth.write(&dir.path().join("truth.json")).unwrap();
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
    // (2500 − 1000) / 250 + … per key: the digits pipeline slides by 500 after a reference of 1000.
    assert_eq!(stats.len(), 2 * 3 * 4);
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
    assert_eq!(sections, 4 * 2, "4 detectors × 2 keys");
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
