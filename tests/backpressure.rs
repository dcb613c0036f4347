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
