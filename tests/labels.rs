//! Label shift and concept drift end to end on the embedded broker: BBSE's
//! estimated priors in the alert, and error-rate (concept) alerts that the
//! covariate detectors do not echo.

mod common;

use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;
use driftwatch::scenario::{Loaded, Truth, produce_kafka};

/// Produces a scenario (YAML body; pool and name added) to `topic` on a fresh
/// embedded broker and writes a digits pipeline with `detectors` and `window`.
async fn setup(
    name: &str,
    scenario: &str,
    window: &str,
    detectors: &str,
) -> (Broker, tempfile::TempDir, std::path::PathBuf, Truth, u64) {
    let broker = Broker::start(1).unwrap();
    for t in [
        name.to_string(),
        format!("{name}.labels"),
        format!("{name}-alerts"),
        format!("{name}-dlq"),
    ] {
        broker.create_topic(&t, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let s = write(
        dir.path(),
        "s.yaml",
        &format!(
            "name: {name}\npool: {}\n{scenario}",
            root().join("models/digits_train.jsonl").display()
        ),
    );
    let l = Loaded::load(&s).unwrap();
    let producer: rdkafka::producer::FutureProducer =
        broker.client_config().set("compression.type", "lz4").create().unwrap();
    let truth = produce_kafka(&l, &producer, name, 1).await.unwrap();
    let p = write(
        dir.path(),
        "p.yaml",
        &format!(
            "name: {name}
schema: {schema}
source: {{type: kafka, brokers: \"{brokers}\", topic: {name}, start: earliest}}
batch: {{max_events: 500, linger_ms: 20}}
model: {{path: {model}, input: pixels}}
window: {window}
detectors:
{detectors}
output: {{alerts_topic: {name}-alerts, dead_letter_topic: {name}-dlq}}
",
            schema = root().join("schemas/digits.yaml").display(),
            model = root().join("models/digits_cnn.onnx").display(),
            brokers = broker.bootstrap(),
        ),
    );
    let total = l.total_events() as u64;
    (broker, dir, p, truth, total)
}

/// A pure prior shift (images from the same per-class pools, priors changed):
/// the label-shift alert carries BBSE's estimate of the new priors, within
/// 0.05 in L1 of the true ones at a current window of 2000 events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_shift_alert_estimates_the_new_priors() {
    for (seed, priors) in [(1, "{0: 0.3, 1: 0.2, 2: 0.2}"), (2, "{7: 0.5, 9: 0.02, 4: 0.02}")] {
        let name = format!("prior{seed}");
        let (broker, _dir, p, truth, total) = setup(
            &name,
            &format!(
                "seed: {seed}\nkeys:\n  s:\n    - {{kind: clean, events: 3000}}\n    - {{kind: label, events: 2000, priors: {priors}}}\n"
            ),
            "{reference: {type: first, size: 3000}, current: {size: 2000}}",
            "  - {name: priors, kind: label_shift, alpha: 0.001}\n  - {name: embedding_mmd, kind: mmd, alpha: 0.01}",
        )
        .await;
        run_pipeline(&p, total, &format!("{name}-g")).await;
        let alerts = read_topic(&broker, &format!("{name}-alerts"), 1, Duration::from_secs(20));
        let a = alerts
            .iter()
            .find(|a| a["detector"] == "priors")
            .expect("a label-shift alert");
        assert_eq!(a["drift_type"], "label");
        let d = &a["tests"][0]["details"];
        let classes: Vec<i64> = d["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().parse().unwrap())
            .collect();
        let est: Vec<f64> = d["estimated_priors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want = &truth.phases.iter().find(|p| p.kind == "label").unwrap().priors;
        let l1: f64 = classes.iter().zip(&est).map(|(c, q)| (q - want[c]).abs()).sum();
        eprintln!("seed {seed}: L1 distance of the estimated priors = {l1:.4}");
        assert!(l1 < 0.05, "seed {seed}: L1 {l1}: {d}");
        assert_eq!(d["reference_priors"].as_array().unwrap().len(), 10);
        assert_eq!(d["weights"].as_array().unwrap().len(), 10);
        assert!(d["warning"].is_null(), "{d}");
    }
}

/// A pure concept drift (inputs unchanged, labels remapped) whose labels come
/// late on their own topic: the error rate on the joined events raises a
/// concept alert, and the covariate detectors say nothing over the same run.
/// Garbage on the labels topic goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_labels_join_and_concept_drift_alerts_alone() {
    let name = "concept";
    let (broker, _dir, p, _truth, total) = setup(
        name,
        "seed: 4\nlabels: {topic: concept.labels, delay_events: 300}\nkeys:\n  s:\n    - {kind: clean, events: 2000}\n    - {kind: concept, events: 2000, remap: {3: 8, 8: 3, 5: 9, 9: 5}}\n",
        "{reference: {type: first, size: 1000}, current: {size: 500}}",
        "  - {name: features_ks, kind: ks, columns: [mean_intensity, ink_fraction], alpha: 0.001}\n  - {name: embedding_mmd, kind: mmd, permutations: 200, alpha: 0.005}\n  - {name: errors, kind: error_rate, alpha: 0.001}",
    )
    .await;
    // The scenario already produced its labels; add garbage after them.
    produce(
        &broker,
        "concept.labels",
        &[
            "{not json".to_string(),
            r#"{"event_id": "s-1"}"#.to_string(),
            r#"{"event_id": "s-2", "label": "eight", "ts": 1}"#.to_string(),
        ],
    )
    .await;
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "detectors:",
        "labels: {topic: concept.labels, horizon_ms: 60000}\ndetectors:",
    );
    std::fs::write(&p, text).unwrap();
    let stats = run_pipeline(&p, total, "concept-g").await;
    let joined = stats.labels.lock().unwrap().clone();
    assert_eq!(joined.joined, 4000, "{joined:?}");
    assert_eq!((joined.late, joined.waiting_events), (0, 0), "{joined:?}");
    let alerts = read_topic(&broker, "concept-alerts", 1, Duration::from_secs(20));
    let concept: Vec<_> = alerts.iter().filter(|a| a["detector"] == "errors").collect();
    assert!(!concept.is_empty(), "a concept alert");
    assert!(concept.iter().all(|a| a["drift_type"] == "concept"));
    let per_class = concept[0]["tests"][0]["details"]["per_class"].as_array().unwrap();
    let three = per_class.iter().find(|c| c["class"] == "3").unwrap();
    assert!(three["current_accuracy"].as_f64().unwrap() < 0.2, "{three}");
    let covariate: Vec<_> = alerts.iter().filter(|a| a["drift_type"] == "covariate").collect();
    assert!(covariate.is_empty(), "inputs never changed: {covariate:#?}");
    let m = driftwatch::metrics::render(&stats);
    assert!(
        m.contains("driftwatch_events_dead_lettered_total{reason=\"malformed_json\"} 1"),
        "bad label records are counted by reason: {m}"
    );
    let dlq = read_topic(&broker, "concept-dlq", 3, Duration::from_secs(20));
    let reasons: Vec<_> = dlq
        .iter()
        .map(|d| (d["topic"].as_str().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("concept.labels", "malformed_json"),
            ("concept.labels", "missing_field"),
            ("concept.labels", "wrong_type")
        ]
    );
}

/// Labels that come after the horizon are counted, never joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_after_the_horizon_are_not_joined() {
    let name = "horizon";
    let (broker, _dir, p, _truth, total) = setup(
        name,
        // 500 events late at 100 ms per event: 50 s after their events.
        "labels: {topic: horizon.labels, delay_events: 500}\nkeys:\n  s:\n    - {kind: clean, events: 1500}\n",
        "{reference: {type: first, size: 500}, current: {size: 500}}",
        "  - {name: errors, kind: error_rate, alpha: 0.001}",
    )
    .await;
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "detectors:",
        "labels: {topic: horizon.labels, horizon_ms: 10000}\ndetectors:",
    );
    std::fs::write(&p, text).unwrap();
    let stats = run_pipeline(&p, total, "horizon-g").await;
    let j = stats.labels.lock().unwrap().clone();
    // Only the labels of the last 101 events, flushed at the last event's
    // time when the stream ends, come within 10 s; the other 1399 are never
    // joined. Each is counted late — or orphaned, when its event already
    // left the join unlabelled — or, on a loaded machine where the labels
    // consumer runs ahead of the events, is still waiting for its event's
    // batch when the run stops: which one depends on how the two streams'
    // batches interleave, so only the sum is fixed.
    assert_eq!(j.joined, 101, "{j:?}");
    assert_eq!(j.late + j.orphaned + j.waiting_labels, 1399, "{j:?}");
    assert_eq!(
        j.late + j.joined + j.unlabelled + j.dropped,
        1500,
        "every event accounted for: {j:?}"
    );
    assert_eq!(stats.evaluations.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(broker);
}
