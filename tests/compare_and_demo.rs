//! `compare` on files, and the demo end to end on the embedded broker.

mod common;

use std::process::Command;

use common::root;

fn run_compare(reference: &std::path::Path, current: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["compare", "pipelines/digits.yaml", "--reference"])
        .arg(reference)
        .arg("--current")
        .arg(current)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("compare prints JSON")
}

/// The held-out digits with a "new scanner": lower contrast, brighter background.
fn shifted_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("tests/data/digits_test.jsonl")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let px: Vec<f64> = v["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p.as_f64().unwrap() * 0.6 + 3.0).min(16.0))
            .collect();
        v["mean_intensity"] = (px.iter().sum::<f64>() / 64.0).into();
        v["ink_fraction"] = (px.iter().filter(|p| **p > 4.0).count() as f64 / 64.0).into();
        v["pixels"] = px.into();
        out += &format!("{v}\n");
    }
    common::write(dir, "shifted.jsonl", &out)
}

#[test]
fn compare_finds_the_shift_and_not_the_same_distribution() {
    let dir = tempfile::tempdir().unwrap();
    let train = root().join("models/digits_train.jsonl");
    let same = run_compare(&train, &root().join("tests/data/digits_test.jsonl"));
    let shifted = run_compare(&train, &shifted_copy(dir.path()));
    let dets = |v: &serde_json::Value| v["detectors"].as_array().unwrap().clone();
    assert_eq!(dets(&same).len(), 5);
    for d in dets(&same) {
        // The error rate compares the training split (which the CNN has
        // learned: no error) with the held-out one (11 errors in 450): the
        // generalisation gap is a real difference in P(y|x) as the model sees it.
        let expect = d["name"] == "error_rate";
        assert_eq!(d["drift"], expect, "held-out digits are the same distribution: {d:#}");
    }
    // The new scanner is a covariate shift: the input and embedding detectors see it.
    for d in dets(&shifted).into_iter().filter(|d| d["drift_type"] == "covariate") {
        assert_eq!(d["drift"], true, "{d:#}");
        for t in d["tests"].as_array().unwrap() {
            assert!(t["p_value"].as_f64().unwrap() < 0.01, "{t:#}");
            assert!(t["column"].is_string() && t["statistic"].is_number());
        }
    }
    assert_eq!(shifted["current_events"], 450);
    assert_eq!(shifted["reference_events"], 1347);
}

/// The demo scenario end to end, on several seeds: no false alarm on clean
/// data (by the pipeline's α budget and hysteresis, not by a lucky seed), the
/// new scanner caught by the embedding MMD and the feature KS, the class-prior
/// change by the predicted-class chi-square.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flags_each_drift_in_its_phase_and_nothing_on_clean_data() {
    for seed in [7, 11, 23] {
        let opts = driftwatch::demo::DemoOptions {
            pipeline: root().join("pipelines/digits.yaml"),
            scenario: root().join("pipelines/scenarios/demo.yaml"),
            seed: Some(seed),
            live: false,
        };
        let s = driftwatch::demo::run(opts).await.expect("demo runs");
        assert_eq!(s.received, 16_500);
        assert_eq!(s.dead_lettered, 0);
        // (6000 + 8500) / 500 windows after the references, five detectors each.
        assert_eq!(s.evaluations.len(), (12 + 17) * 5, "seed {seed}");
        assert!(s.false_alarms().is_empty(), "seed {seed}: {:?}", s.false_alarms());
        let phase = |name: &str| {
            s.truth
                .phases
                .iter()
                .find(|p| p.key == "scanner-b" && p.name == name)
                .unwrap()
        };
        let detected = |name: &str| {
            s.alerts_in(phase(name))
                .into_iter()
                .filter(|(_, v)| matches!(v, driftwatch::demo::Verdict::Detected { .. }))
                .map(|(d, _)| d)
                .collect::<Vec<_>>()
        };
        let cov = detected("new scanner");
        assert!(
            cov.contains(&"embedding_mmd".into()) && cov.contains(&"image_features_ks".into()),
            "seed {seed}: {cov:?}"
        );
        // The new scanner costs accuracy, which CBPE estimates before labels.
        assert!(cov.contains(&"estimated_accuracy".into()), "seed {seed}: {cov:?}");
        let label = detected("more 0s and 1s");
        assert!(label.contains(&"predicted_class_chi2".into()), "seed {seed}: {label:?}");
        // Relabelled: inputs and predictions as before, only the error rate moves.
        let concept = detected("relabelled");
        assert_eq!(concept, ["error_rate"], "seed {seed}");
        // Scanner a never changes: not a single alert.
        assert!(
            !s.evaluations
                .iter()
                .any(|e| e.alert && e.key.as_deref() == Some("scanner-a")),
            "seed {seed}"
        );
        // Alerts say what kind of drift they are about, and which model.
        let e = s
            .evaluations
            .iter()
            .find(|e| e.alert && e.detector == "predicted_class_chi2")
            .unwrap();
        assert_eq!(e.drift_type, driftwatch::alert::DriftType::Label);
        let c = s
            .evaluations
            .iter()
            .find(|e| e.alert && e.detector == "error_rate")
            .unwrap();
        assert_eq!(c.drift_type, driftwatch::alert::DriftType::Concept);
        assert!(
            c.tests[0].details.as_ref().unwrap()["per_class"]
                .as_array()
                .unwrap()
                .len()
                == 10
        );
        let m = e.model.as_ref().expect("model identity");
        assert_eq!(m.sha256.len(), 64);
        assert!(m.metadata.contains_key("test_accuracy") && m.metadata.contains_key("train.optimizer"));
        let table = driftwatch::demo::summary_table(
            &s,
            &[
                "image_features_ks".into(),
                "embedding_mmd".into(),
                "predicted_class_chi2".into(),
                "error_rate".into(),
            ],
        );
        assert!(table.contains("0 false alarms"), "{table}");
    }
}

/// A pipeline with a SQL transform (a derived column) and a SQL detector of the
/// user's own, over the same files: both stages are real DataFusion queries.
#[test]
fn transform_and_sql_detector_run_in_compare() {
    let dir = tempfile::tempdir().unwrap();
    let schema = root().join("schemas/digits.yaml");
    let model = root().join("models/digits_cnn.onnx");
    let p = common::write(
        dir.path(),
        "p.yaml",
        &format!(
            "name: sqltest
schema: {}
source: {{type: file, path: unused.jsonl}}
transform:
  sql: \"SELECT *, mean_intensity * (1.0 - ink_fraction) AS background FROM events\"
model: {{path: {}, input: pixels}}
window: {{reference: {{type: first, size: 10}}, current: {{size: 10}}}}
detectors:
  - name: background_and_class
    kind: sql
    sql: >-
      SELECT key, ks_test(background, window = 'current') AS background,
                  ks_test(CAST(predicted_class AS DOUBLE), window = 'current') AS predicted_class
      FROM windows GROUP BY key
    drift_type: covariate
",
            schema.display(),
            model.display()
        ),
    );
    let run = |current: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .arg("compare")
            .arg(&p)
            .arg("--reference")
            .arg(root().join("models/digits_train.jsonl"))
            .arg("--current")
            .arg(current)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let same = run(&root().join("tests/data/digits_test.jsonl"));
    let shifted = run(&shifted_copy(dir.path()));
    let tests = |v: &serde_json::Value| v["detectors"][0]["tests"].as_array().unwrap().clone();
    assert_eq!(tests(&same).len(), 2);
    assert_eq!(same["detectors"][0]["kind"], "sql");
    assert_eq!(same["detectors"][0]["drift"], false, "{same:#}");
    assert_eq!(shifted["detectors"][0]["drift"], true, "{shifted:#}");
    let bg = tests(&shifted)
        .into_iter()
        .find(|t| t["column"] == "background")
        .unwrap();
    assert_eq!(bg["drift"], true);
}

#[test]
fn a_missing_onnx_runtime_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["validate", "pipelines/digits.yaml"])
        .current_dir(root())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ONNX Runtime library not found"), "{stdout}");
    assert!(
        stdout.contains("scripts/setup.sh") && stdout.contains("ORT_DYLIB_PATH"),
        "{stdout}"
    );
}

#[test]
fn the_broker_command_prints_a_usable_address() {
    use std::time::Duration;
    let (mut child, addr) = cli_broker("cli-t:2");
    assert!(addr.contains(':'), "first line is host:port: {addr:?}");
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some("cli-t"), Duration::from_secs(10))
        .expect("metadata from the embedded broker");
    assert_eq!(md.topics()[0].partitions().len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Starts `driftwatch broker` with `topic` (NAME:PARTITIONS); its address.
fn cli_broker(topic: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["broker", "--topic", topic])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

/// (low, high) watermarks of each partition of `topic`.
fn watermarks(addr: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, std::time::Duration::from_secs(10))
                .unwrap()
        })
        .collect()
}

/// The README's sequence (`broker --topic digits:2`, then `produce` of the
/// demo scenario) keeps every event: the embedded broker deletes the oldest
/// messages past ~5 MiB per partition, and the scenario's 16,500 events
/// once lost 45% there silently. A scenario that cannot fit is refused
/// with a non-zero exit that says what was lost and what to do.
#[test]
fn produce_keeps_every_event_on_the_embedded_broker_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addr) = cli_broker("digits:2");
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args([
            "produce",
            "pipelines/scenarios/demo.yaml",
            "--brokers",
            &addr,
            "--topic",
            "digits",
        ])
        .arg("--truth")
        .arg(dir.path().join("t.json"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let marks = watermarks(&addr, "digits", 2);
    assert!(marks.iter().all(|(low, _)| *low == 0), "{marks:?}");
    assert_eq!(marks.iter().map(|(_, high)| high).sum::<i64>(), 16_500);
    broker.kill().unwrap();
    broker.wait().unwrap();

    // 60,000 events on one partition: more than it keeps.
    let big = common::write(
        dir.path(),
        "big.yaml",
        &format!(
            "name: big\nseed: 3\npool: {}\nnoise: 0.5\nkeys:\n  s:\n    - {{kind: clean, events: 60000}}\n",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let (mut broker, addr) = cli_broker("big:1");
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args([
            "produce",
            big.to_str().unwrap(),
            "--brokers",
            &addr,
            "--topic",
            "big",
            "--truth",
        ])
        .arg(dir.path().join("big.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the broker already deleted") && stderr.contains("--topic big:8"),
        "{stderr}"
    );
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// `compare --labels`: events whose labels come apart (a late-labels
/// scenario written to files), a current file whose digits were relabelled.
/// The error rate, run on the labelled events, reports the concept drift;
/// on a clean current file it does not. Without labels it cannot run, and
/// says so instead of vanishing.
#[test]
fn compare_with_a_labels_file_reports_the_error_rate_drift() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::write(
        dir.path(),
        "s.yaml",
        &format!(
            "name: cl\nseed: 5\npool: {}\nlabels: {{topic: cl.labels, delay_events: 10}}\nkeys:\n  s:\n    - {{kind: clean, events: 1600}}\n    - {{kind: concept, events: 800, remap: {{3: 8, 8: 3, 5: 9, 9: 5, 1: 7, 7: 1}}}}\n",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let l = driftwatch::scenario::Loaded::load(&s).unwrap();
    let (events, labels) = (dir.path().join("ev.jsonl"), dir.path().join("labels.jsonl"));
    driftwatch::scenario::write_jsonl(&l, &events, Some(&labels)).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let part =
        |name: &str, from: usize, to: usize| common::write(dir.path(), name, &(lines[from..to].join("\n") + "\n"));
    let (reference, clean, relabelled) = (
        part("ref.jsonl", 0, 800),
        part("clean.jsonl", 800, 1600),
        part("relabelled.jsonl", 1600, 2400),
    );
    let p = common::write(
        dir.path(),
        "p.yaml",
        &format!(
            "name: cl\nschema: {}\nmodel: {{path: {}, input: pixels}}\nlabels: {{topic: cl.labels, horizon_ms: 60000}}\ndetectors:\n  - {{name: features_ks, kind: ks, columns: [mean_intensity], alpha: 0.001}}\n  - {{name: errors, kind: error_rate, alpha: 0.001}}\n",
            root().join("schemas/digits.yaml").display(),
            root().join("models/digits_cnn.onnx").display()
        ),
    );
    let compare = |current: &std::path::Path, with_labels: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_driftwatch"));
        c.arg("compare")
            .arg(&p)
            .arg("--reference")
            .arg(&reference)
            .arg("--current")
            .arg(current);
        if with_labels {
            c.arg("--labels").arg(&labels);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["detectors"].as_array().unwrap().clone()
    };
    let find = |ds: &[serde_json::Value], name: &str| ds.iter().find(|d| d["name"] == name).cloned();
    let drifted = compare(&relabelled, true);
    let errors = find(&drifted, "errors").expect("the error rate is evaluated");
    assert_eq!(errors["drift"], true, "{errors:#}");
    assert_eq!(errors["drift_type"], "concept");
    assert_eq!(
        find(&drifted, "features_ks").unwrap()["drift"],
        false,
        "the inputs did not move"
    );
    let calm = compare(&clean, true);
    assert_eq!(find(&calm, "errors").unwrap()["drift"], false);
    // No labels: the error rate has nothing to run on, and says so.
    let unlabelled = compare(&relabelled, false);
    let errors = find(&unlabelled, "errors").expect("listed even when it cannot run");
    assert_eq!(errors["computed"], false, "{errors:#}");
    assert!(errors["reason"].as_str().unwrap().contains("current"), "{errors:#}");
    // A broken labels file is bad input (exit 2), named with its line.
    let broken = common::write(
        dir.path(),
        "broken.jsonl",
        "{\"event_id\": \"s-1\", \"label\": 3}\n{\"event_id\": \"s-2\"}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .arg("compare")
        .arg(&p)
        .arg("--reference")
        .arg(&reference)
        .arg("--current")
        .arg(&relabelled)
        .arg("--labels")
        .arg(&broken)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.jsonl") && err.contains("line 2") && err.contains("`label`"),
        "{err}"
    );
}
