//! The backbone end to end against the embedded broker: events in, alerts
//! out, bad events dead-lettered, offsets committed, restarts without resends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;

fn pipeline(dir: &std::path::Path, topic: &str, start: &str) -> std::path::PathBuf {
    write(dir, "x.schema.yaml", SCHEMA_X);
    let text = format!(
        "name: xtest
schema: x.schema.yaml
source: {{type: kafka, brokers: \"${{KAFKA_BROKERS_{topic}}}\", topic: {topic}, start: {start}}}
batch: {{max_events: 64, linger_ms: 20}}
window:
  reference: {{type: first, size: 300}}
  current: {{size: 300}}
detectors:
  - {{name: x_ks, kind: ks, columns: [x], alpha: 0.001}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq, stats_topic: {topic}-stats}}
"
    );
    write(dir, "p.yaml", &text)
}

fn setup(topic: &str) -> (Broker, tempfile::TempDir, std::path::PathBuf) {
    setup_with(topic, "committed")
}

fn setup_with(topic: &str, start: &str) -> (Broker, tempfile::TempDir, std::path::PathBuf) {
    let broker = Broker::start(1).unwrap();
    for t in [
        topic.to_string(),
        format!("{topic}-alerts"),
        format!("{topic}-dlq"),
        format!("{topic}-stats"),
    ] {
        broker.create_topic(&t, 1).unwrap();
    }
    // SAFETY of set_var: a per-test variable name, set before the pipeline reads it.
    unsafe { std::env::set_var(format!("KAFKA_BROKERS_{topic}"), broker.bootstrap()) };
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), topic, start);
    (broker, dir, p)
}

fn alert_validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schemas/alert.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("alert schema compiles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mean_shift_alerts_and_no_shift_does_not() {
    let (broker, _dir, p) = setup("shift");
    // 300 reference + 3 clean windows of 300, then one shifted window.
    let mut events = normal_events(1, 1200, 0.0);
    events.extend(normal_events(2, 300, 1.0));
    produce(&broker, "shift", &events).await;
    let stats = run_pipeline(&p, events.len() as u64, "g-shift").await;
    assert_eq!(stats.evaluations.load(std::sync::atomic::Ordering::Relaxed), 4);

    let alerts = read_topic(&broker, "shift-alerts", 1, Duration::from_secs(20));
    assert_eq!(alerts.len(), 1, "exactly the shifted window alerts: {alerts:#?}");
    let a = &alerts[0];
    let v = alert_validator();
    let errors: Vec<String> = v.iter_errors(a).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "alert does not match schemas/alert.schema.json: {errors:?}\n{a:#}"
    );
    assert_eq!(a["detector"], "x_ks");
    assert_eq!(a["drift_type"], "covariate");
    assert_eq!(a["evaluation"], 4);
    assert_eq!(a["window"]["current_offsets"][0]["first"], 1200);
    assert_eq!(a["window"]["current_offsets"][0]["last"], 1499);
    assert!(a["p_value"].as_f64().unwrap() < 1e-6);

    // Every evaluation went to the stats topic, and those match the schema too.
    let evals = read_topic(&broker, "shift-stats", 4, Duration::from_secs(20));
    assert_eq!(evals.len(), 4);
    assert_eq!(evals.iter().filter(|e| e["drift"] == true).count(), 1);
    for e in &evals {
        assert!(v.is_valid(e), "{e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_go_to_the_dead_letter_topic_and_good_ones_go_on() {
    let (broker, _dir, p) = setup("bad");
    let mut events = normal_events(3, 700, 0.0);
    let bad = [
        ("{\"x\": ", "malformed_json"),
        ("[1, 2, 3]", "not_an_object"),
        ("{\"site\": \"a\"}", "missing_field"),
        ("{\"x\": \"high\"}", "wrong_type"),
        ("{\"x\": \"NaN\"}", "non_finite"),
    ];
    // Interleave the bad events with good ones in the same batches.
    for (i, (b, _)) in bad.iter().enumerate() {
        events.insert(10 + i * 37, b.to_string());
    }
    produce(&broker, "bad", &events).await;
    let stats = run_pipeline(&p, events.len() as u64, "g-bad").await;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.dead_lettered.load(Relaxed), bad.len() as u64);
    assert_eq!(stats.decoded.load(Relaxed), 700);
    assert_eq!(
        stats.evaluations.load(Relaxed),
        1,
        "the 400 good events after the reference fill one window"
    );

    // The same counts on /metrics.
    let m = driftwatch::metrics::render(&stats);
    for line in [
        "driftwatch_events_received_total 705",
        "driftwatch_events_decoded_total 700",
        "driftwatch_events_processed_total 700",
        "driftwatch_events_dead_lettered_total{reason=\"malformed_json\"} 1",
        "driftwatch_events_dead_lettered_total{reason=\"non_finite\"} 1",
        "driftwatch_evaluations_total{detector=\"x_ks\"} 1",
        "driftwatch_alerts_total{detector=\"x_ks\"} 0",
        "driftwatch_window_keys 1",
        "driftwatch_window_events 600",
    ] {
        assert!(m.contains(line), "missing {line}:\n{m}");
    }
    assert!(
        m.contains("driftwatch_last_p_value{detector=\"x_ks\",key=\"\"} "),
        "{m}"
    );
    assert!(stats.ready.load(Relaxed), "the consumer had its partition");

    let dlq = read_topic(&broker, "bad-dlq", bad.len(), Duration::from_secs(20));
    let reasons: Vec<&str> = dlq.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, bad.iter().map(|b| b.1).collect::<Vec<_>>());
    for (d, (payload, _)) in dlq.iter().zip(bad) {
        assert_eq!(d["payload"], payload);
        assert_eq!(d["topic"], "bad");
        assert_eq!(d["pipeline"], "xtest");
        assert_eq!(d["partition"], 0);
        assert!(d["offset"].as_i64().unwrap() >= 10);
        assert!(!d["message"].as_str().unwrap().is_empty());
    }
}

/// A payload that is not UTF-8 reaches the dead-letter topic byte for byte
/// (base64, `payload_encoding: base64`); a text one stays text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_payload_is_dead_lettered_byte_for_byte() {
    use base64::Engine as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (broker, _dir, p) = setup("bin");
    let binary: Vec<u8> = (0..=255u8).rev().chain([0x80, 0xc3, 0x28]).collect();
    let producer: FutureProducer = broker.client_config().create().unwrap();
    for payload in [binary.as_slice(), b"{\"x\": oops".as_slice()] {
        producer
            .send_result(FutureRecord::<(), _>::to("bin").payload(payload).partition(0))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    produce(&broker, "bin", &normal_events(9, 10, 0.0)).await;
    let stats = run_pipeline(&p, 12, "g-bin").await;
    assert_eq!(stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 2);
    let dlq = read_topic(&broker, "bin-dlq", 2, Duration::from_secs(20));
    assert_eq!(dlq[0]["payload_encoding"], "base64", "{}", dlq[0]);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(dlq[0]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, binary);
    assert_eq!(dlq[0]["reason"], "malformed_json");
    assert_eq!(
        (dlq[1]["payload_encoding"].as_str(), dlq[1]["payload"].as_str()),
        (Some("utf8"), Some("{\"x\": oops"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_committed_offsets_without_resending_alerts() {
    let (broker, _dir, p) = setup("restart");
    // reference 300, then windows: clean, shifted, shifted, clean.
    let mut events = normal_events(4, 600, 0.0);
    events.extend(normal_events(5, 600, 1.5));
    events.extend(normal_events(6, 300, 0.0));
    produce(&broker, "restart", &events).await;
    // First run stops part-way through the second shifted window.
    run_pipeline(&p, 1000, "g-restart").await;
    let first = read_topic(&broker, "restart-alerts", 1, Duration::from_secs(10));
    assert_eq!(first.len(), 1, "one shifted window evaluated before the stop");
    // The reference (offsets 0–299) was saved with the key's state: the
    // commit moved past it, to the start of the last evaluated window, so
    // a restart need not replay the topic from its start (nor find events
    // that retention deleted).
    let c: rdkafka::consumer::BaseConsumer = broker.client_config().set("group.id", "g-restart").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("restart", 0);
    let committed = rdkafka::consumer::Consumer::committed_offsets(&c, tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(
        committed.elements()[0].offset(),
        rdkafka::Offset::Offset(600),
        "committed at the last evaluated window (600–899), past the reference"
    );
    // The restart restores the key's state and reference and replays from
    // the committed offset: the alerts are those of an uninterrupted run.
    // It reads the 900 events from offset 600 on.
    let stats = run_pipeline(&p, 900, "g-restart").await;
    assert_eq!(
        stats.evaluations.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "only the windows ending after the stop (at 1199 and 1499) are sent"
    );
    let all = read_topic(&broker, "restart-alerts", 2, Duration::from_secs(10));
    let ids: HashSet<&str> = all.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    assert_eq!(
        all.len(),
        2,
        "the second shifted window alerts once; the first is not re-sent: {all:#?}"
    );
    assert_eq!(ids.len(), 2);
    let lasts: Vec<i64> = all
        .iter()
        .map(|a| a["window"]["current_offsets"][0]["last"].as_i64().unwrap())
        .collect();
    assert_eq!(lasts, vec![899, 1199]);
}

/// A key state saved under another window configuration is not restored:
/// the key is rebuilt from the replay alone (its evaluations count from 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_saved_under_another_window_configuration_is_not_restored() {
    let (broker, dir, p) = setup("cfg");
    produce(&broker, "cfg", &normal_events(12, 1200, 0.0)).await;
    // Evaluations at 599 and 899; the state (2 evaluations, window at 600) is saved.
    run_pipeline(&p, 900, "g-cfg").await;
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("current: {size: 300}"));
    let p2 = write(
        dir.path(),
        "p2.yaml",
        &text.replace("current: {size: 300}", "current: {size: 200}"),
    );
    // From the commit (600): reference 600–899, then windows of 200.
    run_pipeline(&p2, 600, "g-cfg").await;
    let evals = read_topic(&broker, "cfg-stats", 3, Duration::from_secs(20));
    let got: Vec<(u64, i64)> = evals
        .iter()
        .map(|e| {
            (
                e["evaluation"].as_u64().unwrap(),
                e["window"]["current_offsets"][0]["last"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(1, 599), (2, 899), (1, 1099)]);
}

// `start: {timestamp: …}` is resolved with offsets-for-times, which librdkafka's
// mock cluster does not implement (it answers "end"); it is tested against an
// independent Kafka implementation with the production-readiness work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_start_skips_what_was_there_before() {
    let (broker, _dir, p) = setup_with("latest", "latest");
    // Old events that would alert if they were read.
    produce(&broker, "latest", &normal_events(7, 500, 3.0)).await;
    // New clean events keep arriving until the run has read 700 of them; how
    // many arrive before the group's assignment does not matter.
    let run = run_pipeline(&p, 700, "g-latest");
    tokio::pin!(run);
    let mut seed = 100;
    let stats = loop {
        tokio::select! {
            stats = &mut run => break stats,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                produce(&broker, "latest", &normal_events(seed, 100, 0.0)).await;
                seed += 1;
            }
        }
    };
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 700);
    let evals = read_topic(&broker, "latest-stats", 1, Duration::from_secs(20));
    assert_eq!(evals.len(), 1);
    assert!(evals[0]["window"]["current_offsets"][0]["first"].as_i64().unwrap() >= 800);
    assert_eq!(evals[0]["drift"], false, "the old, shifted events were never read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_delivers_commits_and_exits_zero() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (broker, _dir, p) = setup("term");
    produce(&broker, "term", &normal_events(9, 700, 0.0)).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["run", "--group-id", "g-term", "--metrics", "127.0.0.1:0"])
        .arg(&p)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // One evaluation on the stats topic: the run is in the middle of its work.
    let evals = read_topic(&broker, "term-stats", 1, Duration::from_secs(90));
    assert_eq!(evals.len(), 1);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "driftwatch did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    // Committed: the oldest offset a window still holds (the current window
    // evaluated last, 300–599; the reference, 0–299, was saved with the
    // key's state), and the last offset whose evaluations were delivered.
    let c: BaseConsumer = broker.client_config().set("group.id", "g-term").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("term", 0);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let e = &committed.elements()[0];
    assert_eq!(e.offset(), rdkafka::Offset::Offset(300));
    // With the time of the mark (epoch ms), which bounds the search for
    // evaluations delivered after it.
    let (hw, at) = e.metadata().split_once(";at=").expect("dw1:hw=N;at=MS");
    assert_eq!(hw, "dw1:hw=699");
    let at: i64 = at.parse().unwrap();
    let now = driftwatch::source::kafka::now_ms();
    assert!(at <= now && at > now - 600_000, "{at} vs now {now}");
}

/// Producers that compress their batches (every codec Kafka has: gzip,
/// snappy, lz4, zstd) are read like plain ones: every event decoded, none
/// dead-lettered, the windows filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_read_like_plain_ones() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::atomic::Ordering::Relaxed;
    let (broker, _dir, p) = setup("packed");
    let events = normal_events(7, 600, 0.0);
    for (codec, part) in ["gzip", "snappy", "lz4", "zstd"].into_iter().zip(events.chunks(150)) {
        let prod: FutureProducer = broker
            .client_config()
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .create()
            .unwrap_or_else(|e| panic!("{codec} producer: {e}"));
        let sent: Vec<_> = part
            .iter()
            .map(|e| {
                prod.send_result(FutureRecord::<(), _>::to("packed").payload(e.as_bytes()).partition(0))
                    .expect("queue")
            })
            .collect();
        for f in sent {
            f.await.expect("delivery future").expect("delivered");
        }
    }
    let stats = run_pipeline(&p, 600, "g-packed").await;
    assert_eq!(stats.decoded.load(Relaxed), 600);
    assert_eq!(stats.dead_lettered.load(Relaxed), 0);
    assert_eq!(stats.evaluations.load(Relaxed), 1, "300 reference + 300 current events");
}

/// After a run has read everything and sits idle, the read lag is 0 on every
/// partition, while the commit hold keeps what the open windows still need
/// (it was one "lag" of end − committed, which never reached 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_lag_reaches_zero_while_the_commit_hold_keeps_the_open_windows() {
    use std::sync::atomic::Ordering::Relaxed;

    let broker = Broker::start(1).unwrap();
    for (t, parts) in [("lagt", 2), ("lagt-alerts", 1), ("lagt-dlq", 1), ("lagt-stats", 1)] {
        broker.create_topic(t, parts).unwrap();
    }
    let events = normal_events(5, 2000, 0.0);
    let records: Vec<(i32, &str, &str)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| ((i % 2) as i32, "", e.as_str()))
        .collect();
    produce_keyed(&broker, "lagt", &records).await;
    let dir = tempfile::tempdir().unwrap();
    let p = ks_pipeline_with(
        dir.path(),
        "lagt",
        "lagt",
        &broker.bootstrap(),
        "{reference: {type: first, size: 200}, current: {size: 200, slide: 50}}",
        ", properties: {statistics.interval.ms: \"200\"}",
    );
    let opts = driftwatch::runtime::RunOptions {
        max_events: None,
        group_id: Some("g-lag".into()),
        ..Default::default()
    };
    let (run, stats, shutdown) = start_pipeline(&p, opts).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let lag = loop {
        let lag = stats.lag.lock().unwrap().clone();
        if stats.processed.load(Relaxed) == 2000 && lag.len() == 2 && lag.values().all(|l| l.read == 0) {
            break lag;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processed {}, lags {lag:?}",
            stats.processed.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for l in lag.values() {
        assert_eq!(l.committed, l.read + l.commit_hold, "{lag:?}");
    }
    let hold: i64 = lag.values().map(|l| l.commit_hold).sum();
    assert!(hold > 0, "open windows hold commits back: {lag:?}");
    assert!(hold < 2000, "but not everything: {lag:?}");
    shutdown.store(true, Relaxed);
    run.await.unwrap().unwrap();
}

/// `model.sample` in a run: the model scores the sampled share of the
/// events read (by event id), and `/metrics` counts it beside the events
/// processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_model_scores_its_share_and_metrics_count_it() {
    let broker = Broker::start(1).unwrap();
    for t in ["smp", "smp-alerts", "smp-dlq"] {
        broker.create_topic(t, 1).unwrap();
    }
    let events = driftwatch::scenario::clean_events(&root().join("models/digits_train.jsonl"), "s", 1200, 3).unwrap();
    produce(&broker, "smp", &events).await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "smp.yaml",
        &format!(
            "name: smp
schema: {schema}
source: {{type: kafka, brokers: \"{b}\", topic: smp, start: earliest, checkpoint_topic: null}}
batch: {{max_events: 100, linger_ms: 10}}
model: {{path: {model}, input: pixels, outputs: {{embedding: embedding, logits: logits}}, sample: {{fraction: 0.3}}}}
window: {{reference: {{type: first, size: 400}}, current: {{size: 400, slide: 400}}}}
detectors:
  - {{name: mmd, kind: mmd, column: embedding, permutations: 100}}
output: {{alerts_topic: smp-alerts, dead_letter_topic: smp-dlq}}
",
            schema = root().join("schemas/digits.yaml").display(),
            model = root().join("models/digits_cnn.onnx").display(),
            b = broker.bootstrap(),
        ),
    );
    let stats = run_pipeline(&p, events.len() as u64, "g-smp").await;
    let expected = events
        .iter()
        .filter(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            driftwatch::model::sample::scored_at(0.3, v["event_id"].as_str().unwrap())
        })
        .count();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.processed.load(Relaxed), 1200);
    assert_eq!(stats.model_scored.load(Relaxed), expected as u64);
    assert!((expected as f64 / 1200.0 - 0.3).abs() < 0.06, "{expected}");
    let m = driftwatch::metrics::render(&stats);
    assert!(
        m.contains(&format!("driftwatch_model_scored_events_total {expected}")),
        "{m}"
    );
    let fraction = format!("driftwatch_model_sampled_fraction {}", expected as f64 / 1200.0);
    assert!(m.contains(&fraction), "{fraction} in {m}");
}

/// `model.sample: {max_rate}` across a restart: a topic at 500 events a
/// second and a model held to 100 a second scores about a fifth of each
/// window; the commit sits one rate block before what the windows need,
/// and the restarted run's evaluations (statistics, p-values, scored
/// events) are those of an uninterrupted run on the same topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_sampled_model_scores_the_same_events_after_a_restart() {
    let broker = Broker::start(1).unwrap();
    for t in ["rate", "rate-alerts", "rate-dlq", "full-stats", "cut-stats"] {
        broker.create_topic(t, 1).unwrap();
    }
    produce(&broker, "rate", &paced_digits("rate", 2400)).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |name: &str| {
        let text = format!(
            "name: {name}
schema: {root}/schemas/digits.yaml
source: {{type: kafka, brokers: \"{b}\", topic: rate, start: committed}}
batch: {{max_events: 100, linger_ms: 10}}
model:
  path: {root}/models/digits_cnn.onnx
  input: pixels
  outputs: {{embedding: embedding, logits: logits}}
  sample: {{max_rate: 100, rate_block: 250}}
window: {{reference: {{type: first, size: 300}}, current: {{size: 300}}}}
detectors:
  - {{name: features_ks, kind: ks, columns: [mean_intensity]}}
  - {{name: classes_chi2, kind: chi2, columns: [predicted_class]}}
output: {{alerts_topic: rate-alerts, dead_letter_topic: rate-dlq, stats_topic: {name}-stats}}
",
            root = root().display(),
            b = broker.bootstrap(),
        );
        write(dir.path(), &format!("{name}.yaml"), &text)
    };
    let (full, cut) = (pipeline("full"), pipeline("cut"));
    run_pipeline(&full, 2400, "g-full").await;
    // Stopped in the window 1200–1499: the key's state holds from its last
    // evaluated window (900–1199) on, the model the rate block before
    // 900's (500–749).
    run_pipeline(&cut, 1350, "g-cut").await;
    let c: rdkafka::consumer::BaseConsumer = broker.client_config().set("group.id", "g-cut").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("rate", 0);
    let committed = rdkafka::consumer::Consumer::committed_offsets(&c, tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(committed.elements()[0].offset(), rdkafka::Offset::Offset(500));
    run_pipeline(&cut, 2400 - 500, "g-cut").await;

    let evaluations = |topic: &str| {
        let mut v: Vec<String> = read_topic(&broker, topic, 14, Duration::from_secs(20))
            .iter()
            .map(|e| {
                assert_eq!(e["model"]["max_rate"], 100.0, "{e}");
                let w = &e["window"];
                let scored = w["current_scored"].as_u64().unwrap();
                assert!((30..=90).contains(&scored), "a fifth of 300 scored, not {scored}: {e}");
                if e["detector"] == "classes_chi2" {
                    assert_eq!(e["tests"][0]["details"]["n_current"], scored, "{e}");
                }
                format!(
                    "{} {} {} {} {} {scored}",
                    e["detector"], e["evaluation"], w["current_offsets"][0]["last"], e["statistic"], e["p_value"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let uninterrupted = evaluations("full-stats");
    assert_eq!(uninterrupted.len(), 14, "{uninterrupted:#?}");
    assert_eq!(evaluations("cut-stats"), uninterrupted);
}
