//! The shipped digits CNN (accuracy as its metadata states, `model inspect`)
//! and the scenario producer (`produce` to Kafka and to files, with truth).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{read_topic, root, write};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use driftwatch::broker::Broker;
use driftwatch::scenario::Truth;

/// The model stage of the pipeline itself scores the committed held-out split
/// with exactly the accuracy written into the model's metadata by training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cnn_scores_the_held_out_split_as_its_metadata_says() {
    // SAFETY of set_var: before this test's pipeline reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", "localhost:9") };
    let mut stages = driftwatch::runtime::validate(&root().join("pipelines/digits.yaml"))
        .await
        .expect("digits pipeline validates");
    let records = driftwatch::source::file::read_records(&root().join("tests/data/digits_test.jsonl")).unwrap();
    let (batches, rejected) = stages.ingest(&records).await.unwrap();
    assert!(rejected.is_empty());
    let (mut right, mut total) = (0usize, 0usize);
    for b in &batches {
        let pred = b.column_by_name("predicted_class").unwrap().as_primitive::<Int64Type>();
        let label = b.column_by_name("label").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            total += 1;
            right += usize::from(!label.is_null(i) && pred.value(i) == label.value(i));
        }
    }
    assert_eq!(total, 450);
    let meta = driftwatch::model::inspect::inspect(&root().join("models/digits_cnn.onnx"))
        .unwrap()
        .metadata;
    let stated: f64 = meta["test_accuracy"].parse().unwrap();
    let measured = right as f64 / total as f64;
    assert!(
        (measured - stated).abs() < 5e-5,
        "measured {measured}, metadata says {stated}"
    );
    assert!(measured >= 0.97, "{measured}");
}

#[test]
fn model_inspect_shows_the_architecture_and_refuses_what_is_not_onnx() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(args)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let out = run(&["model", "inspect", "models/digits_cnn.onnx", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let convs: Vec<_> = layers.iter().filter(|l| l["op_type"] == "Conv").collect();
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[0]["parameters"], 80);
    assert_eq!(convs[0]["dense_equivalent_weights"], 64 * 512);
    assert_eq!(convs[1]["parameters"], 1168);
    assert_eq!(convs[1]["output_shape"], serde_json::json!([-1, 16, 4, 4]));
    let gemms: Vec<_> = layers
        .iter()
        .filter(|l| l["op_type"] == "Gemm")
        .map(|l| l["parameters"].clone())
        .collect();
    assert_eq!(gemms, [8224, 330]);
    assert_eq!(v["total_parameters"], 9803);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", "1", "8", "8"]));
    assert_eq!(v["metadata"]["train.optimizer"], "AdamW");

    let text = run(&["model", "inspect", "models/digits_cnn.onnx"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("conv2") && text.contains("131,072 weights") && text.contains("9,803"),
        "{text}"
    );

    let out = run(&["model", "inspect", "pipelines/digits.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipelines/digits.yaml") && err.contains("not a valid ONNX model"),
        "{err}"
    );
}

const SCENARIO: &str = "name: t
seed: 5
pool: {POOL}
labels: {topic: t.labels, delay_events: 10}
keys:
  a:
    - {kind: clean, events: 30, name: reference}
    - {kind: covariate, events: 20, contrast: 0.5}
  b:
    - {kind: clean, events: 40}
";

fn scenario(dir: &std::path::Path) -> std::path::PathBuf {
    let text = SCENARIO.replace(
        "{POOL}",
        &root().join("models/digits_train.jsonl").display().to_string(),
    );
    write(dir, "s.yaml", &text)
}

#[test]
fn produce_writes_files_deterministically_with_their_truth() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path());
    let run = |out: &str, seed: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_driftwatch"));
        c.arg("produce")
            .arg(&s)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--labels-out")
            .arg(dir.path().join(format!("{out}.labels")));
        if let Some(seed) = seed {
            c.args(["--seed", seed]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(dir.path().join(out)).unwrap()
    };
    let one = run("one.jsonl", None);
    let two = run("two.jsonl", None);
    let other = run("three.jsonl", Some("6"));
    assert_eq!(one, two, "same scenario, same seed: same events");
    assert_ne!(one, other);
    assert_eq!(one.lines().count(), 90);
    let labels = std::fs::read_to_string(dir.path().join("one.jsonl.labels")).unwrap();
    assert_eq!(labels.lines().count(), 90);
    assert!(!one.contains("\"label\""), "labels go to their own file");
    let truth = Truth::load(&dir.path().join("one.truth.json")).unwrap();
    let cov = truth.phases.iter().find(|p| p.kind == "covariate").unwrap();
    assert_eq!((cov.key.as_str(), cov.events, cov.drift), ("a", 20, true));
    // Lines interleave a and b; the covariate phase starts at a's 31st event.
    let lines: Vec<serde_json::Value> = one.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[cov.first_offset as usize]["event_id"], "a-30");
    assert_eq!(lines[cov.last_offset as usize]["event_id"], "a-49");
    assert_eq!(lines[cov.first_offset as usize]["ts"], cov.start_ms);

    // A broken scenario is refused with its place, exit 2.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &std::fs::read_to_string(&s)
            .unwrap()
            .replace("contrast: 0.5", "contrast: 0.5, colour: red"),
    );
    let o = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("produce")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml:") && err.contains("colour"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_to_kafka_records_where_each_phase_landed() {
    let broker = Broker::start(1).unwrap();
    broker.create_topic("t.events", 1).unwrap();
    broker.create_topic("t.labels", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = scenario(dir.path());
    let truth_path = dir.path().join("truth.json");
    let o = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("produce")
        .arg(&s)
        .args(["--brokers", &broker.bootstrap(), "--topic", "t.events", "--truth"])
        .arg(&truth_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = read_topic(&broker, "t.events", 90, Duration::from_secs(30));
    let labels = read_topic(&broker, "t.labels", 90, Duration::from_secs(30));
    assert_eq!((events.len(), labels.len()), (90, 90));
    let truth = Truth::load(&truth_path).unwrap();
    assert_eq!(truth.destination, "t.events");
    assert_eq!(truth.labels_destination.as_deref(), Some("t.labels"));
    for p in &truth.phases {
        let first = &events[p.first_offset as usize];
        let last = &events[p.last_offset as usize];
        assert_eq!(first["scanner"], p.key.as_str());
        assert_eq!(first["ts"], p.start_ms);
        assert_eq!(last["ts"], p.end_ms);
    }
    // Each label names an event and comes after it; the first one 10 steps late.
    let ts_of: std::collections::HashMap<_, _> = events
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_string(), e["ts"].as_i64().unwrap()))
        .collect();
    for l in &labels {
        assert!(
            l["ts"].as_i64().unwrap() >= ts_of[l["event_id"].as_str().unwrap()],
            "{l}"
        );
    }
    assert_eq!(
        labels[0]["ts"].as_i64().unwrap(),
        ts_of[labels[0]["event_id"].as_str().unwrap()] + 10 * 100
    );

    // A broker that is not there: a clear error, non-zero exit, no hang.
    let o = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("produce")
        .arg(&s)
        .args(["--brokers", "127.0.0.1:9", "--topic", "t.events", "--truth"])
        .arg(&truth_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

/// The demo scenario's events and the stats of their replay through the
/// digits pipeline with `model.sample: {sample(rate)}` (`rate`: the events'
/// rate, events a second of event time), checked
/// byte-identical at two batch sizes: the same events are scored whatever
/// the batches.
fn sampled_replay(sample: impl Fn(f64) -> String) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_driftwatch");
    let events = dir.path().join("events.jsonl");
    let o = Command::new(bin)
        .arg("produce")
        .arg(root().join("pipelines/scenarios/demo.yaml"))
        .arg("--out")
        .arg(&events)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ts = |l: &serde_json::Value| l["ts"].as_i64().unwrap();
    let span_s = (lines.iter().map(ts).max().unwrap() - lines.iter().map(ts).min().unwrap()) as f64 / 1000.0;
    let rate = lines.len() as f64 / span_s;
    let pipeline = std::fs::read_to_string(root().join("pipelines/digits.yaml"))
        .unwrap()
        .replace("../schemas/", &format!("{}/schemas/", root().display()))
        .replace("../models/", &format!("{}/models/", root().display()))
        .replace("  threads: 1\n", &format!("  threads: 1\n  sample: {}\n", sample(rate)));
    assert!(pipeline.contains("sample: {"));
    let p = write(dir.path(), "sampled.yaml", &pipeline);
    let replay = |out: &str, batch: &str| -> String {
        let out = dir.path().join(out);
        let o = Command::new(bin)
            .args(["replay".as_ref(), p.as_os_str(), "--input".as_ref(), events.as_os_str()])
            .args(["--batch", batch, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out.join("stats.jsonl")).unwrap()
    };
    let stats = replay("a", "64");
    assert_eq!(stats, replay("b", "500"), "the same sample whatever the batches");
    let stats = stats.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (lines, stats)
}

/// `model.sample`: with a quarter of the events scored (by a hash of their
/// id), the detectors on the CNN's embedding see exactly the scored events
/// of each window and the KS on the images' own features every event; the
/// evaluations say it is a sample; replays at two batch sizes are
/// byte-identical (the same events are scored whatever the batches).
#[test]
fn a_sampled_model_scores_the_same_share_of_every_window_in_every_replay() {
    let (lines, stats) = sampled_replay(|_| "{fraction: 0.25}".into());
    let (mut mmd, mut ks) = (0, 0);
    for e in stats {
        assert_eq!(e["model_sample"], 0.25, "{e}");
        // The window's events: its key's lines between its first and last offset.
        let range = &e["window"]["current_offsets"][0];
        let (first, last) = (
            range["first"].as_u64().unwrap() as usize,
            range["last"].as_u64().unwrap() as usize,
        );
        let window: Vec<&serde_json::Value> = lines[first..=last]
            .iter()
            .filter(|l| l["scanner"] == e["key"])
            .collect();
        assert_eq!(window.len(), 500);
        let scored = window
            .iter()
            .filter(|l| driftwatch::model::sample::scored_at(0.25, l["event_id"].as_str().unwrap()))
            .count();
        assert_eq!(e["window"]["current_scored"], scored as u64, "{e}");
        let details = e["details"].as_object().unwrap();
        let n_current = |col: &str| details[col]["n_current"].as_u64().unwrap() as usize;
        match e["detector"].as_str().unwrap() {
            "embedding_mmd" => {
                assert_eq!(n_current("embedding"), scored, "{e}");
                assert!((scored as f64 / 500.0 - 0.25).abs() < 0.1, "{scored}");
                mmd += 1;
            }
            "image_features_ks" => {
                assert_eq!(n_current("mean_intensity"), 500);
                ks += 1;
            }
            _ => {}
        }
    }
    assert_eq!((mmd, ks), (29, 29));
}

/// `model.sample: {max_rate}` at 0.3 of the events' rate: after a first
/// rate block scored whole, each window has about 0.3 of its events scored,
/// the detectors on the embedding read exactly those, the KS on the
/// images' own features all; replays at two batch sizes are byte-identical.
#[test]
fn a_rate_sampled_model_scores_its_share_of_the_rate_in_every_replay() {
    let (_, stats) = sampled_replay(|rate| format!("{{max_rate: {:.3}, rate_block: 1000}}", 0.3 * rate));
    let (mut scored, mut events, mut mmd) = (0, 0, 0);
    for e in &stats {
        assert!(e["model_max_rate"].as_f64().unwrap() > 0.0, "{e}");
        assert_eq!(e["model_sample"], serde_json::Value::Null);
        let w = &e["window"];
        let n_current = |col: &str| e["details"][col]["n_current"].as_u64().unwrap();
        match e["detector"].as_str().unwrap() {
            "embedding_mmd" => {
                assert_eq!(n_current("embedding"), w["current_scored"].as_u64().unwrap(), "{e}");
                if w["current_offsets"][0]["first"].as_u64().unwrap() >= 1000 {
                    scored += n_current("embedding");
                    events += w["current_size"].as_u64().unwrap();
                }
                mmd += 1;
            }
            "image_features_ks" => assert_eq!(n_current("mean_intensity"), 500),
            _ => {}
        }
    }
    assert_eq!(mmd, 29);
    let share = scored as f64 / events as f64;
    assert!((0.2..=0.4).contains(&share), "{scored} of {events} scored");
}
