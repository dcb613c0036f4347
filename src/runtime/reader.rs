//! The events reader of `run`: reads, decodes and dead-letters records, and
//! hands decoded batches to processing through a bounded channel.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn read_loop(
    consumer: Arc<KafkaConsumer>,
    mut decoder: crate::decode::Decoder,
    producer: FutureProducer,
    p: Pipeline,
    topic: String,
    tx: mpsc::Sender<Msg>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<RunStats>,
    max_events: Option<u64>,
) -> Result<(), RuntimeError> {
    let linger = Duration::from_millis(p.batch.linger_ms);
    let max = p.batch.max_events.get();
    let mut first = BTreeMap::new();
    let mut last = BTreeMap::new();
    let mut pending = vec![];
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut read = 0u64;
    let mut generation = consumer.generation();
    let mut checked = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        if checked.elapsed() > Duration::from_secs(2) {
            checked = tokio::time::Instant::now();
            if !stats.ready.load(Ordering::Relaxed) && consumer.assigned() {
                stats.ready.store(true, Ordering::Relaxed);
            }
        }
        let stop = shutdown.load(Ordering::SeqCst) || max_events.is_some_and(|m| read >= m);
        let flush_now = stop || decoder.len() >= max || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        if flush_now {
            // Rebalance problems are reported by the consumer context; say them here.
            for e in consumer.take_errors() {
                tracing::error!(error = %e, "consumer group");
            }
        }
        if flush_now && (!decoder.is_empty() || !pending.is_empty() || !last.is_empty()) {
            let batch = decoder.flush()?;
            let work = Work {
                generation,
                batch,
                first: std::mem::take(&mut first),
                last: std::mem::take(&mut last),
                pending: std::mem::take(&mut pending),
            };
            if tx.send(Msg::Events(work)).await.is_err() {
                return Ok(()); // processing stopped
            }
            deadline = None;
        }
        if stop {
            return Ok(());
        }
        // A message already fetched needs no timer: take it at once (most
        // are, under load), yielding now and then so the worker's other
        // tasks run. Only an empty queue waits, up to the linger deadline.
        let ready = if read % 256 == 255 {
            tokio::task::yield_now().await;
            None
        } else {
            futures::FutureExt::now_or_never(consumer.recv())
        };
        let got = match ready {
            Some(r) => Ok(r),
            None => {
                let wait = deadline
                    .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
                    .unwrap_or(Duration::from_millis(200));
                tokio::time::timeout(wait, consumer.recv()).await
            }
        };
        let rec = match got {
            Err(_) => None, // linger elapsed or periodic shutdown check
            Ok(Err(e)) => {
                // Broker outages surface here; librdkafka reconnects by itself.
                tracing::warn!(error = %e, "kafka consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            Ok(Ok(r)) => Some(r),
        };
        let now = consumer.generation();
        if now != generation {
            // A rebalance ran inside `recv`: what was read before it is read
            // again from the committed offsets, by this or another instance.
            generation = now;
            let _ = decoder.flush()?;
            first.clear();
            last.clear();
            deadline = None;
            // Processing learns of it at once, even if no record follows:
            // its windows and the labels reader follow the new assignment.
            let notice = Work {
                generation,
                batch: None,
                first: BTreeMap::new(),
                last: BTreeMap::new(),
                pending: std::mem::take(&mut pending),
            };
            if tx.send(Msg::Events(notice)).await.is_err() {
                return Ok(());
            }
        }
        let Some(rec) = rec else { continue };
        read += 1;
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Reading means assigned.
        stats.ready.store(true, Ordering::Relaxed);
        if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + linger);
        }
        first.entry(rec.partition).or_insert(rec.offset);
        last.insert(rec.partition, rec.offset);
        match decoder.decode(&rec) {
            Ok(()) => {
                stats.decoded.fetch_add(1, Ordering::Relaxed);
            }
            Err(rej) => pending.push(dead_letter(&producer, &p, &stats, &topic, &rej)?),
        }
    }
}
