//! The events reader of `run`: reads, decodes and dead-letters records, and
//! hands decoded batches to processing through a bounded channel.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

/// The events reader's task: what it reads with, where it sends, and the
/// batch being gathered.
pub(super) struct EventsReader {
    pub(super) consumer: Arc<KafkaConsumer>,
    pub(super) decoder: crate::decode::Decoder,
    pub(super) producer: FutureProducer,
    pub(super) p: Pipeline,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) stats: Arc<RunStats>,
    /// Stop after this many events (demos, tests).
    pub(super) max_events: Option<u64>,
}

/// The batch being gathered: first and last offset read per partition
/// (decoded or not), the dead letters to await, when it is due.
#[derive(Default)]
struct Gathering {
    first: BTreeMap<i32, i64>,
    last: BTreeMap<i32, i64>,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    deadline: Option<tokio::time::Instant>,
}

impl EventsReader {
    /// Reads until shutdown, `max_events`, or processing stops; a batch goes
    /// to processing when full, when its linger time is up, and at the end.
    pub(super) async fn read(mut self) -> Result<(), RuntimeError> {
        let max = self.p.batch.max_events.get();
        let mut batch = Gathering::default();
        let mut read = 0u64;
        let mut generation = self.consumer.generation();
        let mut checked = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            if checked.elapsed() > Duration::from_secs(2) {
                checked = tokio::time::Instant::now();
                if let Some(e) = self.consumer.fatal_error() {
                    // Nothing more can be read or committed: stop, so that a
                    // supervisor sees the exit instead of a run that retries forever.
                    return Err(RuntimeError::Other(format!("kafka consumer of {}: {e}", self.p.name)));
                }
                if !self.stats.ready.load(Ordering::Relaxed) && self.consumer.assigned() {
                    self.stats.ready.store(true, Ordering::Relaxed);
                }
            }
            let stop = self.shutdown.load(Ordering::SeqCst) || self.max_events.is_some_and(|m| read >= m);
            let due = batch.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if (stop || self.decoder.len() >= max || due) && !self.send(&mut batch, generation).await? {
                return Ok(()); // processing stopped
            }
            if stop {
                return Ok(());
            }
            let rec = self.receive(read, batch.deadline).await;
            let now = self.consumer.generation();
            if now != generation {
                generation = now;
                if !self.rebalanced(&mut batch, generation).await? {
                    return Ok(());
                }
            }
            let Some(rec) = rec else { continue };
            read += 1;
            self.take(&rec, &mut batch)?;
        }
    }

    /// Sends the gathered batch, if there is anything to account for;
    /// false when processing has stopped.
    async fn send(&mut self, batch: &mut Gathering, generation: u64) -> Result<bool, RuntimeError> {
        // Rebalance problems are reported by the consumer context; say them here.
        for e in self.consumer.take_errors() {
            tracing::error!(error = %e, "consumer group");
        }
        if self.decoder.is_empty() && batch.pending.is_empty() && batch.last.is_empty() {
            return Ok(true);
        }
        let taken = std::mem::take(batch);
        let work = Work {
            generation,
            batch: self.decoder.flush()?,
            first: taken.first,
            last: taken.last,
            pending: taken.pending,
        };
        Ok(self.tx.send(Msg::Events(work)).await.is_ok())
    }

    /// The next record, or None when the linger time is up (or for a
    /// periodic shutdown check, or after an error: librdkafka reconnects).
    async fn receive(&self, read: u64, deadline: Option<tokio::time::Instant>) -> Option<crate::source::RawRecord> {
        // A message already fetched needs no timer: take it at once (most
        // are, under load), yielding now and then so the worker's other
        // tasks run. Only an empty queue waits, up to the linger deadline.
        let ready = if read % 256 == 255 {
            tokio::task::yield_now().await;
            None
        } else {
            futures::FutureExt::now_or_never(self.consumer.recv())
        };
        let got = match ready {
            Some(r) => Ok(r),
            None => {
                let wait = deadline
                    .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
                    .unwrap_or(Duration::from_millis(200));
                tokio::time::timeout(wait, self.consumer.recv()).await
            }
        };
        match got {
            Err(_) => None,
            Ok(Err(e)) => {
                // Broker outages surface here; librdkafka reconnects by itself.
                tracing::warn!(error = %e, "kafka consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            Ok(Ok(r)) => Some(r),
        }
    }

    /// A rebalance ran inside `recv`: what was read before it is read again
    /// from the committed offsets, by this or another instance. Processing
    /// learns of it at once, even if no record follows: its windows and the
    /// labels reader follow the new assignment. False when it has stopped.
    async fn rebalanced(&mut self, batch: &mut Gathering, generation: u64) -> Result<bool, RuntimeError> {
        let _ = self.decoder.flush()?;
        let notice = Work {
            generation,
            batch: None,
            first: BTreeMap::new(),
            last: BTreeMap::new(),
            pending: std::mem::take(&mut batch.pending),
        };
        *batch = Gathering::default();
        Ok(self.tx.send(Msg::Events(notice)).await.is_ok())
    }

    /// A record into the batch: decoded, or dead-lettered with its reason.
    fn take(&mut self, rec: &crate::source::RawRecord, batch: &mut Gathering) -> Result<(), RuntimeError> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        // Reading means assigned.
        self.stats.ready.store(true, Ordering::Relaxed);
        if batch.deadline.is_none() {
            batch.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(self.p.batch.linger_ms));
        }
        batch.first.entry(rec.partition).or_insert(rec.offset);
        batch.last.insert(rec.partition, rec.offset);
        match self.decoder.decode(rec) {
            Ok(()) => {
                self.stats.decoded.fetch_add(1, Ordering::Relaxed);
            }
            Err(rej) => {
                let f = dead_letter(&self.producer, &self.p, &self.stats, self.consumer.topic(), &rej)?;
                batch.pending.push(f);
            }
        }
        Ok(())
    }
}
