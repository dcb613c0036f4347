//! Crashes: `driftwatch run` killed with SIGKILL at several points of a
//! stream and restarted ends with exactly the alerts of an uninterrupted run
//! of the same input — none lost, none duplicated (by alert_id and by count).
//! (Not against tansu: tansu 0.6 drops offset-commit metadata, where the
//! runtime records what was delivered; see the README.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use driftwatch::broker::Broker;

fn pipeline(dir: &std::path::Path, topic: &str, brokers: &str) -> std::path::PathBuf {
    ks_pipeline(
        dir,
        "crash",
        topic,
        brokers,
        "{reference: {type: first, size: 300}, current: {size: 300, slide: 150}}",
    )
}

/// Alternating clean and shifted stretches: several alerts over the stream.
fn events() -> Vec<String> {
    let mut out = normal_events(1, 600, 0.0);
    for (i, mean) in [1.0, 0.0, 1.5, 0.0, 1.0, 0.0].iter().enumerate() {
        out.extend(normal_events(10 + i as u64, 450, *mean));
    }
    out
}

/// Runs until every event is accounted for, then stops it with SIGTERM.
fn run_to_the_end(broker: &impl Kafka, p: &std::path::Path, topic: &str, group: &str, last: i64) {
    let child = start_run(p, group, "last");
    wait_delivered(broker, topic, group, &BTreeMap::from([(0, last)]));
    stop_run(child);
}

fn alert_ids(broker: &impl Kafka, topic: &str, min: usize) -> Vec<String> {
    let mut ids: Vec<String> = read_topic(broker, topic, min, Duration::from_secs(30))
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn kill_and_restart(broker: &Broker) {
    for t in ["ref", "crash"] {
        for s in ["", "-alerts", "-dlq", "-stats"] {
            broker.create_topic(&format!("{t}{s}"), 1).unwrap();
        }
    }
    let ev = events();
    produce(broker, "ref", &ev).await;
    produce(broker, "crash", &ev).await;
    let dir = tempfile::tempdir().unwrap();
    let last = ev.len() as i64 - 1;

    // Uninterrupted.
    let p_ref = pipeline(dir.path(), "ref", &broker.bootstrap());
    run_to_the_end(broker, &p_ref, "ref", "g-ref", last);
    let want = alert_ids(broker, "ref-alerts", 1);
    assert!(want.len() >= 3, "the stream has several alerts: {}", want.len());

    // Killed with SIGKILL after 2, 6, 10 and 14 evaluations were published, then finished.
    let p = pipeline(dir.path(), "crash", &broker.bootstrap());
    let mut kills = 0;
    for after in [2, 6, 10, 14] {
        let child = start_run(&p, "g-crash", &format!("kill{after}"));
        let seen = wait_for(broker, "crash-stats", after);
        child.kill(); // SIGKILL
        if seen >= after {
            kills += 1;
        }
    }
    run_to_the_end(broker, &p, "crash", "g-crash", last);
    let got = alert_ids(broker, "crash-alerts", want.len());
    eprintln!("{kills} kills survived, {} alerts compared", want.len());
    assert_eq!(kills, 4);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no alert sent twice: {got:?}");
    assert_eq!(got, want, "exactly the alerts of the uninterrupted run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_gives_exactly_the_alerts_of_an_uninterrupted_run() {
    kill_and_restart(&Broker::start(1).unwrap()).await;
}
