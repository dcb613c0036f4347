//! A broker outage mid-stream: the broker goes away for 30 s and comes back;
//! the run does not crash, loses nothing, and catches up. Against the
//! embedded broker and against tansu (whose process is killed and restarted
//! on its storage).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use driftwatch::broker::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_broker_outage_loses_nothing() {
    outage(&mut Broker::start(1).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_tansu_outage_loses_nothing() {
    outage(&mut Tansu::start()).await;
}

async fn outage(broker: &mut impl Kafka) {
    for t in ["out", "out-alerts", "out-dlq", "out-stats"] {
        broker.create_topic(t, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = ks_pipeline(
        dir.path(),
        "outage",
        "out",
        &broker.bootstrap(),
        "{reference: {type: first, size: 300}, current: {size: 300}}",
    );
    // Before the outage: the reference and two windows; after it: two more, the last shifted.
    let before = normal_events(1, 900, 0.0);
    let mut after = normal_events(2, 300, 0.0);
    after.extend(normal_events(3, 300, 2.0));
    produce(&*broker, "out", &before).await;

    let (run, stats) = spawn_pipeline(&p, 1500, "g-out").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.evaluations.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "no evaluation before the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.set_up(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!run.is_finished(), "the run waits for the broker, it does not stop");
    broker.set_up(true);
    produce(&*broker, "out", &after).await;

    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the run catches up after the outage")
        .unwrap()
        .expect("no error from the outage");
    assert_eq!(stats.received.load(Ordering::Relaxed), 1500);
    assert_eq!(
        stats.decoded.load(Ordering::Relaxed),
        1500,
        "nothing lost or dead-lettered"
    );
    assert_eq!(stats.evaluations.load(Ordering::Relaxed), 4);
    let alerts = read_topic(&*broker, "out-alerts", 1, Duration::from_secs(30));
    assert_eq!(alerts.len(), 1, "the shifted window after the outage alerts");
    assert_eq!(alerts[0]["evaluation"], 4);
}
