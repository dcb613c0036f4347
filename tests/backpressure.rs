//! Back-pressure: when the output topics are slow, the consumer slows down
//! with them. Events wait in Kafka (lag), not in driftwatch's memory: what
//! has been read but not yet processed stays within the bounded pipeline
//! between the reader and the processor (DESIGN §10).

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_output_topic_slows_the_consumer_instead_of_filling_memory() {
    let broker = Broker::start(2).unwrap();
    broker.create_topic("bp", 1).unwrap();
    for t in ["bp-alerts", "bp-dlq", "bp-stats"] {
        broker.create_topic(t, 1).unwrap();
        broker.set_leader(t, 0, 2).unwrap();
    }
    broker.set_leader("bp", 0, 1).unwrap();
    let events = normal_events(3, 3000, 0.0);
    produce(&broker, "bp", &events).await;
    // Every evaluation goes to the stats topic, whose broker answers in 200 ms.
    broker.set_round_trip(2, Duration::from_millis(200)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let batch = 50u64; // ks_pipeline's batch size
    let p = ks_pipeline(
        dir.path(),
        "bp",
        "bp",
        &broker.bootstrap(),
        "{reference: {type: first, size: 200}, current: {size: 200, slide: 50}}",
    );
    let (run, stats) = spawn_pipeline(&p, events.len() as u64, "g-bp").await;
    // Sample how far reading runs ahead of processing while the run goes on.
    let (mut ahead_max, mut half_read_at_processed) = (0u64, None);
    while !run.is_finished() {
        let (read, done) = (stats.received.load(Relaxed), stats.processed.load(Relaxed));
        ahead_max = ahead_max.max(read.saturating_sub(done));
        if half_read_at_processed.is_none() && read >= events.len() as u64 / 2 {
            half_read_at_processed = Some(done);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.await.unwrap().unwrap();
    assert_eq!(stats.processed.load(Relaxed), 3000, "nothing lost");
    assert_eq!(stats.evaluations.load(Relaxed), 53, "(3000 - 400) / 50 + 1 evaluations");
    // The reader holds at most the channel's 4 batches, the one being
    // processed and the one it is filling.
    eprintln!("read ahead of processing: at most {ahead_max} events");
    assert!(ahead_max <= 6 * batch, "read {ahead_max} events ahead of processing");
    let at_half = half_read_at_processed.expect("sampled");
    assert!(
        at_half + 6 * batch >= 1500,
        "half the input was read when only {at_half} events were processed"
    );
}

/// A run whose reader cannot go on (here: every evaluation waits 3 s for
/// its output broker, so the channel to the processor stays full) while
/// events wait to be read is stalled after `stall_after`: the flag that
/// /health and the metrics read is set and the stall counted; once the
/// outputs answer again it reads everything and the flag clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_go_on_is_reported_stalled_then_recovers() {
    let broker = Broker::start(2).unwrap();
    broker.create_topic("stall", 1).unwrap();
    for t in ["stall-alerts", "stall-dlq", "stall-stats"] {
        broker.create_topic(t, 1).unwrap();
        broker.set_leader(t, 0, 2).unwrap();
    }
    broker.set_leader("stall", 0, 1).unwrap();
    produce(&broker, "stall", &normal_events(4, 3000, 0.0)).await;
    broker.set_round_trip(2, Duration::from_secs(3)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = ks_pipeline_with(
        dir.path(),
        "stall",
        "stall",
        &broker.bootstrap(),
        "{reference: {type: first, size: 200}, current: {size: 200, slide: 50}}",
        ", properties: {statistics.interval.ms: \"200\"}",
    );
    let opts = driftwatch::runtime::RunOptions {
        max_events: None,
        group_id: Some("g-stall".into()),
        stall_after: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let (run, stats, shutdown) = start_pipeline(&p, opts).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !stats.stalled.load(Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "never reported stalled; read {} of 3000, lags {:?}",
            stats.received.load(Relaxed),
            stats.lag.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stats.stalls.load(Relaxed) >= 1);
    assert!(stats.received.load(Relaxed) < 3000, "events still wait while stalled");
    broker.set_round_trip(2, Duration::ZERO).unwrap();
    while stats.processed.load(Relaxed) < 3000 || stats.stalled.load(Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "did not recover: processed {}, stalled {}",
            stats.processed.load(Relaxed),
            stats.stalled.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.store(true, Relaxed);
    run.await.unwrap().unwrap();
}

/// A digits pipeline on `topic` whose model scores the events `sample`
/// chooses (`model.sample`), with a KS test on an event field and a
/// chi-square on the model's predicted classes.
fn sampled_model_pipeline(dir: &std::path::Path, topic: &str, brokers: &str, sample: &str) -> std::path::PathBuf {
    let root = root().display().to_string();
    let text = format!(
        r#"name: {topic}
schema: {root}/schemas/digits.yaml
source: {{type: kafka, brokers: "{brokers}", topic: {topic}, start: earliest, checkpoint_topic: null}}
batch: {{max_events: 50, linger_ms: 20}}
model:
  path: {root}/models/digits_cnn.onnx
  input: pixels
  outputs: {{embedding: embedding, logits: logits}}
  threads: 1
  sample: {sample}
window: {{reference: {{type: first, size: 200}}, current: {{size: 200, slide: 100}}}}
detectors:
  - {{name: features_ks, kind: ks, columns: [mean_intensity]}}
  - {{name: classes_chi2, kind: chi2, columns: [predicted_class]}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq}}
"#
    );
    write(dir, &format!("{topic}.yaml"), &text)
}

/// An evaluation's detector, the events its test read and the events of
/// its window the model scored.
type Seen = (String, u64, Option<u64>);

/// The largest backlog (events produced but not yet processed) of a run
/// of `p` while `n` digits events are produced at 500 a second; stops
/// early once the backlog passes `give_up`. Returns the backlog and each
/// evaluation's (detector, events its test read, events of its window the
/// model scored) of a run that read all.
async fn backlog_under_load(
    broker: &Broker,
    topic: &str,
    p: &std::path::Path,
    n: usize,
    give_up: u64,
) -> (u64, Vec<Seen>) {
    use std::sync::{Arc, Mutex};
    let events = paced_digits(topic, n);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let observer: driftwatch::runtime::Observer = {
        let seen = seen.clone();
        Arc::new(move |e: &driftwatch::alert::Evaluation| {
            let read = e
                .tests
                .iter()
                .filter_map(|t| t.details.as_ref()?["n_current"].as_u64())
                .sum();
            seen.lock()
                .unwrap()
                .push((e.detector.clone(), read, e.window.current_scored));
        })
    };
    let opts = driftwatch::runtime::RunOptions {
        group_id: Some(format!("g-{topic}")),
        fault: Some("slow-model:4".into()), // 250 scored events a second at most
        ..Default::default()
    };
    let stages = driftwatch::engine::Stages::build(driftwatch::config::Pipeline::load(p).unwrap())
        .await
        .unwrap();
    let stats = Arc::new(driftwatch::runtime::RunStats::default());
    let shutdown = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = tokio::spawn(driftwatch::runtime::run(
        stages,
        opts,
        shutdown.clone(),
        stats.clone(),
        Some(observer),
    ));
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (broker_cfg, topic, produced) = (broker.client_config(), topic.to_string(), produced.clone());
        let stats = stats.clone();
        tokio::spawn(async move {
            let p: rdkafka::producer::FutureProducer = broker_cfg.create().unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            // A late tick waits: the pace stays 500 a second, never a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for (i, chunk) in events.chunks(50).enumerate() {
                // The pace starts once the run consumes (its group joined).
                while i == 1 && stats.processed.load(Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tick.tick().await;
                let sent: Vec<_> = chunk
                    .iter()
                    .map(|e| {
                        let r = rdkafka::producer::FutureRecord::<(), _>::to(&topic).payload(e.as_bytes());
                        p.send_result(r).expect("queued")
                    })
                    .collect();
                for d in sent {
                    d.await.unwrap().unwrap();
                }
                produced.fetch_add(chunk.len() as u64, Relaxed);
            }
        })
    };
    let mut backlog = 0u64;
    while stats.processed.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while stats.processed.load(Relaxed) < n as u64 && backlog <= give_up {
        backlog = backlog.max(produced.load(Relaxed).saturating_sub(stats.processed.load(Relaxed)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    producer.abort();
    eprintln!(
        "{topic}: produced {}, processed {}, scored {}",
        produced.load(Relaxed),
        stats.processed.load(Relaxed),
        stats.model_scored.load(Relaxed)
    );
    shutdown.store(true, Relaxed);
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    (backlog, seen)
}

/// A model slower than the topic (a test hook slows it to 4 ms per scored
/// event: 250 a second) while events come at 500 a second. Scoring every
/// event, the backlog grows without end; with `model.sample: {fraction:
/// 0.1}` the run keeps up (the backlog stays within about a second of
/// events), and the windows hold every event for the test on an event
/// field but about a tenth of them, the scored ones, for the test on the
/// model's predicted classes. With `{max_rate: 25}` (events a second of
/// event time, measured over blocks of 100 offsets) the model scores about
/// a twentieth, after a first block scored whole, and keeps up too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_model_keeps_up_with_a_topic_faster_than_it_scores() {
    let broker = Broker::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for t in [
        "all",
        "all-alerts",
        "all-dlq",
        "tenth",
        "tenth-alerts",
        "tenth-dlq",
        "rate",
        "rate-alerts",
        "rate-dlq",
    ] {
        broker.create_topic(t, 1).unwrap();
    }
    let b = broker.bootstrap();
    let all = sampled_model_pipeline(dir.path(), "all", &b, "{fraction: 1.0}");
    let (backlog, _) = backlog_under_load(&broker, "all", &all, 3000, 1000).await;
    assert!(backlog > 1000, "scoring every event kept up: backlog at most {backlog}");

    let tenth = sampled_model_pipeline(dir.path(), "tenth", &b, "{fraction: 0.1}");
    let (backlog, seen) = backlog_under_load(&broker, "tenth", &tenth, 4000, 2000).await;
    eprintln!("sampled model: backlog at most {backlog} events");
    assert!(backlog <= 500, "the sampled model fell behind: backlog {backlog}");
    assert_scored_share(&seen, 0.07..=0.13);

    let rate = sampled_model_pipeline(dir.path(), "rate", &b, "{max_rate: 25, rate_block: 100}");
    let (backlog, seen) = backlog_under_load(&broker, "rate", &rate, 4000, 2000).await;
    eprintln!("rate-sampled model: backlog at most {backlog} events");
    assert!(backlog <= 500, "the rate-sampled model fell behind: backlog {backlog}");
    assert_scored_share(&seen, 0.03..=0.07);
}

/// Every evaluation of 4000 events (windows of 200 sliding by 100 after a
/// reference of 200): the KS on an event field read all 200 events of its
/// window, the chi-square on predicted classes the scored ones, as many as
/// the window says it scored, `share` of them in all.
fn assert_scored_share(seen: &[Seen], share: std::ops::RangeInclusive<f64>) {
    let read = |d: &str| -> Vec<(u64, Option<u64>)> {
        seen.iter().filter(|(n, ..)| n == d).map(|(_, r, s)| (*r, *s)).collect()
    };
    let (features, classes) = (read("features_ks"), read("classes_chi2"));
    assert_eq!(features.len(), (4000 - 400) / 100 + 1, "{seen:?}");
    assert!(features.iter().all(|(r, _)| *r == 200), "{features:?}");
    assert!(
        classes.iter().all(|(r, s)| Some(*r) == *s),
        "read what was scored: {classes:?}"
    );
    let got = classes.iter().map(|(r, _)| r).sum::<u64>() as f64 / (200 * classes.len()) as f64;
    assert!(
        share.contains(&got),
        "model outputs of {got} of the events, not {share:?}: {classes:?}"
    );
}
