//! `driftwatch bench`: events/s end to end through the embedded broker and a
//! whole pipeline, next to two ceilings measured in the same run on the same
//! events — consume + decode alone, and ONNX Runtime alone on the same batches
//! — and the process's peak memory. Ratios mean something on a noisy machine;
//! absolute numbers less so.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::broker::Broker;
use crate::config::{Pipeline, SourceConfig};
use crate::demo::{load_pool, make_event};
use crate::runtime::{self, RunOptions, RunStats, RuntimeError, Stages};
use crate::source::kafka::KafkaConsumer;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn other(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(e.to_string())
}

/// Runs the benchmark and prints a report to stdout.
pub async fn bench(pipeline_path: &Path, pool: &Path, events: u64) -> Result<(), RuntimeError> {
    let broker = Broker::start(1).map_err(other)?;
    // SAFETY of set_var: before any thread of ours reads the environment.
    unsafe { std::env::set_var("KAFKA_BROKERS", broker.bootstrap()) };
    let pipeline = Pipeline::load(pipeline_path)?;
    let SourceConfig::Kafka(src) = pipeline.source.clone() else {
        return Err(other("the bench pipeline must have a kafka source"));
    };
    for t in [
        &src.topic,
        &pipeline.output.alerts_topic,
        &pipeline.output.dead_letter_topic,
    ] {
        broker.create_topic(t, 1).map_err(other)?;
    }
    // Distinct payloads, cycled: the stream is long, the generation cheap.
    let pool = load_pool(pool)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let payloads: Vec<Vec<u8>> = (0..4096u64)
        .map(|i| {
            let img = &pool[rng.random_range(0..pool.len())];
            serde_json::to_vec(&make_event(
                img,
                &mut rng,
                None,
                "bench",
                i,
                1_767_225_600_000 + i as i64,
            ))
            .unwrap_or_default()
        })
        .collect();
    let t = Instant::now();
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("batch.num.messages", "10000")
        .create()
        .map_err(other)?;
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..events {
        let p = &payloads[(i % payloads.len() as u64) as usize];
        let rec = FutureRecord::<(), [u8]>::to(&src.topic).payload(p.as_slice());
        pending.push(producer.send_result(rec).map_err(|(e, _)| other(e))?);
        if pending.len() == 10_000 || i + 1 == events {
            for f in pending.drain(..) {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(other(format!("bench produce: {e}"))),
                    Err(_) => return Err(other("bench produce: cancelled")),
                }
            }
        }
    }
    drop(producer);
    println!(
        "produced {events} events in {:.1} s; RSS after produce {} MiB",
        t.elapsed().as_secs_f64(),
        rss_kib("VmRSS:") / 1024
    );
    let rss_base = rss_kib("VmRSS:");

    // Ceiling 1: consume + decode alone.
    let mut stages = Stages::build(pipeline.clone()).await?;
    // The pipeline's own consumer, in a group of its own.
    let consumer = KafkaConsumer::new(&src, "driftwatch-bench-ceiling").map_err(other)?;
    let mut dec = stages.decoder();
    let max = pipeline.batch.max_events.get();
    let mut batches = vec![];
    let (mut n, mut t0) = (0u64, None);
    while n < events {
        let rec = consumer.recv().await.map_err(other)?;
        t0.get_or_insert_with(Instant::now);
        let _ = dec.decode(&rec);
        n += 1;
        if dec.len() >= max
            && let Some(b) = dec.flush()?
        {
            // Keep a sample of batches for the model ceiling, not all (memory).
            if batches.len() < 64 {
                batches.push(b);
            }
        }
    }
    let decode_secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    drop(consumer);
    let decode_rate = events as f64 / decode_secs;

    // Ceiling 2: the model alone on the same batches.
    let t = Instant::now();
    let mut scored = 0u64;
    let rounds = (events / (batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()).max(1)).clamp(1, 4);
    for _ in 0..rounds {
        for b in &batches {
            stages.score(b.clone()).await?;
            scored += b.num_rows() as u64;
        }
    }
    let model_rate = scored as f64 / t.elapsed().as_secs_f64();

    // End to end.
    let stats = Arc::new(RunStats::default());
    let t = Instant::now();
    runtime::run(
        stages,
        RunOptions {
            max_events: Some(events),
            group_id: Some("driftwatch-bench".into()),
        },
        Arc::new(AtomicBool::new(false)),
        stats.clone(),
        None,
    )
    .await?;
    let e2e = events as f64 / t.elapsed().as_secs_f64();
    let peak = rss_kib("VmHWM:");
    println!("events:                      {events}");
    println!("consume + decode alone:      {decode_rate:>12.0} events/s");
    println!("ONNX Runtime alone:          {model_rate:>12.0} events/s ({scored} events in batches of {max})");
    println!("end to end:                  {e2e:>12.0} events/s");
    println!("end to end / decode ceiling: {:>12.2}", e2e / decode_rate);
    println!("end to end / model ceiling:  {:>12.2}", e2e / model_rate);
    println!(
        "evaluations {}, alerts {}, dead letters {}",
        stats.evaluations.load(std::sync::atomic::Ordering::Relaxed),
        stats.alerts.load(std::sync::atomic::Ordering::Relaxed),
        stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "memory: RSS {} MiB before the pipelines (broker log included), peak {} MiB, pipeline share {} MiB",
        rss_base / 1024,
        peak / 1024,
        peak.saturating_sub(rss_base) / 1024
    );
    Ok(())
}
