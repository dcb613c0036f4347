//! Crashes: `driftwatch run` killed with SIGKILL at several points of a
//! stream and restarted ends with exactly the alerts of an uninterrupted run
//! of the same input — none lost, none duplicated (by alert_id and by count).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use driftwatch::broker::Broker;

fn pipeline(dir: &std::path::Path, topic: &str, brokers: &str) -> std::path::PathBuf {
    write(dir, "x.schema.yaml", SCHEMA_X);
    write(
        dir,
        &format!("{topic}.yaml"),
        &format!(
            "name: crash
schema: x.schema.yaml
source: {{type: kafka, brokers: \"{brokers}\", topic: {topic}}}
batch: {{max_events: 50, linger_ms: 10}}
window:
  reference: {{type: first, size: 300}}
  current: {{size: 300, slide: 150}}
detectors:
  - {{name: x_ks, kind: ks, columns: [x], alpha: 0.001}}
output: {{alerts_topic: {topic}-alerts, dead_letter_topic: {topic}-dlq, stats_topic: {topic}-stats}}
"
        ),
    )
}

/// Starts `run` and waits until it consumes (its signal handlers are set by then).
fn start(p: &std::path::Path, group: &str) -> Child {
    let log = std::env::temp_dir().join(format!("driftwatch-crash-{group}-{}.log", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["run", "--metrics", "off", "--group-id", group])
        .arg(p)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("consuming") {
        assert!(Instant::now() < deadline, "driftwatch run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Alternating clean and shifted stretches: several alerts over the stream.
fn events() -> Vec<String> {
    let mut out = normal_events(1, 600, 0.0);
    for (i, mean) in [1.0, 0.0, 1.5, 0.0, 1.0, 0.0].iter().enumerate() {
        out.extend(normal_events(10 + i as u64, 450, *mean));
    }
    out
}

/// Runs until every event is accounted for (the committed metadata says the
/// last offset was delivered), then stops it with SIGTERM.
fn run_to_the_end(broker: &Broker, p: &std::path::Path, topic: &str, group: &str, last: i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut child = start(p, group);
    let c: BaseConsumer = broker.client_config().set("group.id", group).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "the run did not reach offset {last}");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        if let Ok(got) = c.committed_offsets(tpl, Duration::from_secs(5))
            && got.elements()[0].metadata() == format!("dw1:hw={last}")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Waits until `topic` holds at least `n` messages; returns as soon as it does.
fn wait_for(broker: &Broker, topic: &str, n: usize) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = broker.client_config().set("group.id", "crash-watch").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(120));
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(20)) {
            seen += 1;
        }
    }
    seen
}

fn alert_ids(broker: &Broker, topic: &str, min: usize) -> Vec<String> {
    let mut ids: Vec<String> = read_topic(broker, topic, min, Duration::from_secs(30))
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_gives_exactly_the_alerts_of_an_uninterrupted_run() {
    let broker = Broker::start(1).unwrap();
    for t in ["ref", "crash"] {
        for s in ["", "-alerts", "-dlq", "-stats"] {
            broker.create_topic(&format!("{t}{s}"), 1).unwrap();
        }
    }
    let ev = events();
    produce(&broker, "ref", &ev).await;
    produce(&broker, "crash", &ev).await;
    let dir = tempfile::tempdir().unwrap();
    let last = ev.len() as i64 - 1;

    // Uninterrupted.
    let p_ref = pipeline(dir.path(), "ref", &broker.bootstrap());
    run_to_the_end(&broker, &p_ref, "ref", "g-ref", last);
    let want = alert_ids(&broker, "ref-alerts", 1);
    assert!(want.len() >= 3, "the stream has several alerts: {}", want.len());

    // Killed with SIGKILL after 2, 6, 10 and 14 evaluations were published, then finished.
    let p = pipeline(dir.path(), "crash", &broker.bootstrap());
    let mut kills = 0;
    for after in [2, 6, 10, 14] {
        let mut child = start(&p, "g-crash");
        let seen = wait_for(&broker, "crash-stats", after);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if seen >= after {
            kills += 1;
        }
    }
    run_to_the_end(&broker, &p, "crash", "g-crash", last);
    let got = alert_ids(&broker, "crash-alerts", want.len());
    eprintln!("{kills} kills survived, {} alerts compared", want.len());
    assert_eq!(kills, 4);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no alert sent twice: {got:?}");
    assert_eq!(got, want, "exactly the alerts of the uninterrupted run");
}
