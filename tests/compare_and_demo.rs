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
    assert_eq!(dets(&same).len(), 2);
    for d in dets(&same) {
        assert_eq!(d["drift"], false, "held-out digits are the same distribution: {d:#}");
    }
    for d in dets(&shifted) {
        assert_eq!(d["drift"], true, "{d:#}");
        for t in d["tests"].as_array().unwrap() {
            assert!(t["p_value"].as_f64().unwrap() < 0.01, "{t:#}");
            assert!(t["column"].is_string() && t["statistic"].is_number());
        }
    }
    assert_eq!(shifted["current_events"], 450);
    assert_eq!(shifted["reference_events"], 1347);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flags_the_new_scanner_and_nothing_else() {
    let opts = driftwatch::demo::DemoOptions {
        pipeline: root().join("pipelines/digits.yaml"),
        pool: root().join("models/digits_train.jsonl"),
        seed: 11,
        phase_events: 1000,
        live: false,
    };
    let s = driftwatch::demo::run(opts).await.expect("demo runs");
    assert_eq!(s.received, 6000);
    assert_eq!(s.dead_lettered, 0);
    assert!(
        s.evaluations.len() >= 2 * 7 * 2,
        "every window of both scanners evaluated by both detectors"
    );
    let a_alerts: Vec<_> = s
        .evaluations
        .iter()
        .filter(|e| e.drift && e.key.as_deref() == Some("scanner-a"))
        .collect();
    assert!(a_alerts.is_empty(), "scanner a never changes: {a_alerts:#?}");
    assert!(
        s.fired("scanner-b", "clean").is_empty(),
        "no alert before the new scanner"
    );
    let fired = s.fired("scanner-b", "new scanner (covariate)");
    assert!(fired.contains_key("image_features_ks"), "{fired:?}");
    assert!(fired.contains_key("embedding_mmd"), "{fired:?}");
    // Every alert carries the model's identity.
    let e = s.evaluations.iter().find(|e| e.drift).unwrap();
    let m = e.model.as_ref().expect("model identity");
    assert_eq!(m.sha256.len(), 64);
    assert!(m.metadata.contains_key("test_accuracy") && m.metadata.contains_key("train.optimizer"));
}
