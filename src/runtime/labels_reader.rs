//! The late labels of `run`: a consumer of the labels topic that follows
//! the labels partitions numbered like the events partitions held, and the
//! processing of what it reads (join, labelled windows, commits).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::engine::{Sink, Stream};

/// The late labels' reader: a consumer that follows the labels partitions
/// numbered like the events partitions held, its task, and what to follow.
pub(super) struct LabelsReader {
    pub(super) consumer: Arc<KafkaConsumer>,
    pub(super) task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
    pub(super) follow: tokio::sync::watch::Sender<Follow>,
}

impl LabelsReader {
    pub(super) fn spawn(
        l: &crate::config::LabelsConfig,
        src: &crate::config::KafkaSource,
        group: &str,
        tx: &mpsc::Sender<Msg>,
        shutdown: &Arc<AtomicBool>,
        events_done: &Arc<AtomicBool>,
    ) -> Result<Self, RuntimeError> {
        let mut lsrc = src.clone();
        lsrc.topic = l.topic.clone();
        let lgroup = l.group_id.clone().unwrap_or_else(|| format!("{group}-labels"));
        let consumer =
            Arc::new(KafkaConsumer::follower(&lsrc, &lgroup).map_err(kafka_err("creating labels consumer"))?);
        tracing::info!(topic = %l.topic, group = %lgroup, horizon_ms = l.horizon_ms.get(), "joining late labels");
        let (follow, wanted) = tokio::sync::watch::channel(Follow::default());
        let task = tokio::spawn(labels_loop(
            consumer.clone(),
            wanted,
            tx.clone(),
            shutdown.clone(),
            events_done.clone(),
        ));
        Ok(Self { consumer, task, follow })
    }
}

/// Joins a batch of label records: bad ones to the dead-letter topic, joined
/// events into the labelled windows, their evaluations published; then the
/// events offsets (`last`: the last offsets read) and the labels consumer's
/// offsets are committed.
pub(super) async fn process_labels(
    engine: &mut Engine,
    hw: &mut LabelledHw,
    labels_consumer: &KafkaConsumer,
    out: &Out,
    records: Vec<crate::source::RawRecord>,
    last_events: &BTreeMap<i32, i64>,
    fault: &mut Fault,
) -> Result<(), RuntimeError> {
    let mut sink = Publisher {
        out,
        hw,
        pending: vec![],
    };
    let mut good = vec![];
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        last.insert(r.partition, r.offset);
        match engine.parse_label(r) {
            Some(Ok(l)) => good.push(l),
            Some(Err(rej)) => sink.rejected(Stream::Labels, &rej)?,
            None => {}
        }
    }
    let evaluated = engine.push_labels(good).await?;
    out.join_stats(engine);
    let made = sink.evaluated(evaluated)?;
    await_deliveries(sink.pending).await?;
    if made > 0 {
        fault.delivered();
    }
    let Some(ls) = engine.labelled.as_mut() else {
        return Ok(());
    };
    out.labelled_states
        .save(&out.consumer, &mut ls.windows, &engine.policy)
        .await?;
    // The events commit follows the labelled windows too (else it waits for
    // the next events batch, which may never come), with the labelled mark;
    // synchronous, so that labels are never committed past events a restart
    // would replay.
    let touched: Vec<i32> = if made > 0 { hw.keys().copied().collect() } else { vec![] };
    let events_committed = commit(
        &out.consumer,
        &engine.windows,
        Some((ls, &*hw)),
        last_events,
        (CommitMode::Sync, &engine.stages),
        &touched,
    )
    .await?;
    if !events_committed {
        // Refused (a rebalance): the labels commit must not get ahead of
        // the events one, or events replayed from the older commit would
        // wait for labels nobody reads again.
        return Ok(());
    }
    commit_labels(labels_consumer, ls, &last)
}

/// Commits the labels consumer where each partition's labels are no longer
/// needed (`last`: the last offsets read): labels still needed to rebuild
/// the join and the labelled windows are read again after a restart.
fn commit_labels(
    labels_consumer: &KafkaConsumer,
    ls: &mut crate::engine::Labelled,
    last: &BTreeMap<i32, i64>,
) -> Result<(), RuntimeError> {
    let needed = ls.join.labels_needed(&ls.windows.oldest_needed());
    let positions = last
        .iter()
        .map(|(p, o)| {
            (
                *p,
                Position {
                    next: resume_at(&needed, *p, *o),
                    delivered: *o,
                    labelled: None,
                },
            )
        })
        .collect();
    // Synchronous: the next owner of these partitions reads the labels
    // from this commit as soon as the events revocation completes.
    labels_consumer
        .commit(&positions, CommitMode::Sync)
        .map(|_| ())
        .map_err(kafka_err("commit labels"))
}

/// The labels partitions the labels reader is to read, set by the
/// processing task on each rebalance and applied by the reader itself
/// between two receives: every record it receives after applying one is of
/// the new assignment, and is tagged with its generation. (Applied from the
/// processing task, a record of the new assignment received just before the
/// generation moved was tagged with the old one and dropped, and never read
/// again: its event then waited for it forever, holding back its partition's
/// labelled windows.)
#[derive(Debug, Default, Clone)]
pub(super) struct Follow {
    /// Labels batches carry the generation they were read in; those of an
    /// older one are dropped (read again from the commit).
    pub(super) generation: u64,
    pub(super) partitions: Vec<i32>,
}

/// Points the labels reader at the labels partitions that go with the
/// events partitions this instance holds: those of the same numbers, where
/// the labels of their events are (a label is produced with its event's key,
/// on a topic with as many partitions); every labels partition while it
/// holds every events partition, whatever their counts.
pub(super) async fn follow_labels(
    events: &Arc<KafkaConsumer>,
    labels: &Arc<KafkaConsumer>,
    follow: &tokio::sync::watch::Sender<Follow>,
) -> Result<(), RuntimeError> {
    let held = events.assignment();
    let (e, l) = (events.clone(), labels.clone());
    let counts = tokio::task::spawn_blocking(move || {
        let t = Duration::from_secs(10);
        (e.partition_count(t), l.partition_count(t))
    })
    .await
    .map_err(|e| RuntimeError::Other(format!("labels partitions: {e}")))?;
    let partitions: Vec<i32> = match counts {
        (Ok(n_events), Ok(n_labels)) => {
            if !held.is_empty() && held.len() == n_events {
                (0..n_labels as i32).collect()
            } else {
                if n_events != n_labels && !held.is_empty() {
                    tracing::error!(events_topic = %events.topic(), events_partitions = n_events,
                        labels_topic = %labels.topic(), labels_partitions = n_labels,
                        "the labels topic is not partitioned like the events topic: with several instances in a group each reads the labels partitions numbered like its events partitions, so labels of its events may be on partitions it does not read (give both topics as many partitions and each label its event's key)");
                }
                held.iter().copied().filter(|p| (*p as usize) < n_labels).collect()
            }
        }
        (e, l) => {
            let err = e.err().or(l.err()).map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(error = %err, "cannot read the topics' partition counts; reading the labels partitions numbered like the events partitions held");
            held
        }
    };
    follow.send_modify(|f| {
        f.generation += 1;
        f.partitions = partitions.clone();
    });
    // Where the labels are read from: with the events' committed offsets,
    // what a restart rebuilds the join from.
    let (l, ps) = (labels.clone(), partitions.clone());
    let from = tokio::task::spawn_blocking(move || l.committed(&ps, Duration::from_secs(10)))
        .await
        .map_err(|e| RuntimeError::Other(format!("labels partitions: {e}")))?;
    match from {
        Ok(from) => tracing::info!(topic = %labels.topic(), partitions = ?partitions, committed = ?from,
            "labels partitions to follow (from their committed offsets; the earliest without one)"),
        Err(e) => tracing::info!(topic = %labels.topic(), partitions = ?partitions, error = %e,
            "labels partitions to follow (their committed offsets could not be read for this log)"),
    }
    Ok(())
}

/// How long the labels consumer may wait for its partitions before its
/// silence counts (see [`labels_loop`]).
pub(super) const LABELS_JOIN_GRACE: Duration = Duration::from_secs(30);

/// The label records read since the last batch went to processing, and the
/// generation (of the partitions followed) they were read in.
struct LabelsBatch {
    records: Vec<crate::source::RawRecord>,
    generation: u64,
    tx: mpsc::Sender<Msg>,
}

impl LabelsBatch {
    /// Sends the records read, if any: false when processing has stopped.
    async fn send(&mut self) -> bool {
        if self.records.is_empty() {
            return true;
        }
        let records = std::mem::take(&mut self.records);
        let generation = self.generation;
        self.tx.send(Msg::Labels { generation, records }).await.is_ok()
    }
}

/// Reads the labels topic in small batches until shutdown, or until the
/// events reader is done and the labels have been quiet for a moment.
pub(super) async fn labels_loop(
    consumer: Arc<KafkaConsumer>,
    mut wanted: tokio::sync::watch::Receiver<Follow>,
    tx: mpsc::Sender<Msg>,
    shutdown: Arc<AtomicBool>,
    events_done: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let generation = wanted.borrow().generation;
    let mut batch = LabelsBatch {
        records: vec![],
        generation,
        tx,
    };
    let mut quiet_since: Option<tokio::time::Instant> = None;
    let started = tokio::time::Instant::now();
    loop {
        let done = shutdown.load(Ordering::SeqCst) || events_done.load(Ordering::SeqCst);
        if done && quiet_since.is_some_and(|q| q.elapsed() > Duration::from_millis(1500)) {
            batch.send().await;
            return Ok(());
        }
        if wanted.has_changed().unwrap_or(false) {
            // Moved to other partitions: what was read is read again.
            let f = wanted.borrow_and_update().clone();
            batch.records.clear();
            if let Err(e) = consumer.follow(&f.partitions) {
                shutdown.store(true, Ordering::SeqCst);
                return Err(kafka_err(format!("assigning labels partitions {:?}", f.partitions))(e));
            }
            batch.generation = f.generation;
        }
        match tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await {
            Err(_) => {
                // Silence means "no more labels" only once the consumer has its
                // partitions: joining the group takes seconds, and the events
                // may all be read by then. A consumer never assigned counts as
                // quiet after a grace period, so it cannot hold the run forever.
                if consumer.assigned() || started.elapsed() > LABELS_JOIN_GRACE {
                    quiet_since.get_or_insert_with(tokio::time::Instant::now);
                } else {
                    quiet_since = None;
                }
                if !batch.send().await {
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka labels consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok(r)) => {
                quiet_since = None;
                batch.records.push(r);
                if batch.records.len() >= 500 && !batch.send().await {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `total` records (bodies 0, 1, …) to `topic`, a hundred at a time
    /// with a pause between.
    async fn produce_slowly(producer: FutureProducer, topic: &str, total: usize) {
        for chunk in 0..total / 100 {
            let mut fs = vec![];
            for i in chunk * 100..(chunk + 1) * 100 {
                let body = i.to_string();
                fs.push(
                    producer
                        .send_result(FutureRecord::<(), _>::to(topic).payload(&body))
                        .unwrap(),
                );
            }
            for f in fs {
                f.await.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// A labels batch's offsets, appended to those of its generation.
    fn offsets_by_generation(m: Msg, got: &mut BTreeMap<u64, Vec<i64>>) {
        if let Msg::Labels { generation, records } = m {
            got.entry(generation)
                .or_default()
                .extend(records.iter().map(|r| r.offset));
        }
    }

    /// The labels reader is re-pointed many times while records arrive (as
    /// on rebalances). The records of each assignment reach processing
    /// tagged with its generation, in order and none missing: from the
    /// partition's start (nothing committed) on, with no gap and no record
    /// of an older assignment. A gap is a label lost: its event would wait
    /// for it forever and hold back its partition's labelled windows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_labels_reader_loses_no_record_when_its_partitions_change() {
        use crate::config::{KafkaSource, StartPosition};
        let broker = crate::broker::Broker::start(1).unwrap();
        broker.create_topic("lab", 1).unwrap();
        let src = KafkaSource {
            brokers: broker.bootstrap(),
            topic: "lab".into(),
            group_id: None,
            start: StartPosition::Committed,
            properties: BTreeMap::new(),
            checkpoint_topic: None,
        };
        let total = 3000;
        let produced = tokio::spawn(produce_slowly(broker.client_config().create().unwrap(), "lab", total));
        let consumer = Arc::new(KafkaConsumer::follower(&src, "lab-g").unwrap());
        let (follow, wanted) = tokio::sync::watch::channel(Follow::default());
        let (tx, mut rx) = mpsc::channel(4);
        let (shutdown, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let reader = tokio::spawn(labels_loop(consumer, wanted, tx, shutdown.clone(), done));
        // Per generation, the offsets received, in order.
        let mut got: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        let generations = 20;
        for g in 1..=generations {
            follow.send_modify(|f| {
                f.generation = g;
                f.partitions = vec![0];
            });
            // Re-pointed while records flow: once the new assignment's
            // first batch is in, a little later each time.
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while !got.contains_key(&g)
                && let Ok(Some(m)) = tokio::time::timeout_at(until, rx.recv()).await
            {
                offsets_by_generation(m, &mut got);
            }
            tokio::time::sleep(Duration::from_millis(3 * (g % 7))).await;
        }
        produced.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while got.get(&generations).map_or(0, |o| o.len()) < total {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => offsets_by_generation(m, &mut got),
                _ => break,
            }
        }
        shutdown.store(true, Ordering::SeqCst);
        while let Some(m) = rx.recv().await {
            offsets_by_generation(m, &mut got);
        }
        reader.await.unwrap().unwrap();
        assert!(got.keys().all(|g| (1..=generations).contains(g)), "{:?}", got.keys());
        for (g, offsets) in &got {
            let want: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, &want, "generation {g}: every record from the start, in order");
        }
        assert_eq!(got[&generations].len(), total, "the last assignment read every record");
    }
}
