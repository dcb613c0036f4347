//! The delivery protocol of `run` (DESIGN §5): marks of what was delivered,
//! in the commit metadata and the checkpoint topic; the scan of the output
//! topics for evaluations a killed run delivered without a mark; commits
//! that never pass what the windows and the label join still need.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Per events partition, the end of the last labelled evaluation sent in
/// this assignment (recorded in the next mark).
pub(super) type LabelledHw = BTreeMap<i32, i64>;

/// The final synchronous commit of what is accounted for, key states first.
pub(super) async fn save_and_commit(
    consumer: &Arc<KafkaConsumer>,
    [states, labelled_states]: [&KeyStates; 2],
    engine: &mut Engine,
    hw: &LabelledHw,
    last: &BTreeMap<i32, i64>,
) -> Result<(), RuntimeError> {
    states.save(consumer, &mut engine.windows, &engine.policy).await?;
    if let Some(l) = engine.labelled.as_mut() {
        labelled_states.save(consumer, &mut l.windows, &engine.policy).await?;
    }
    let labelled = engine.labelled.as_ref().map(|l| (l, hw));
    commit(
        consumer,
        &engine.windows,
        labelled,
        last,
        (CommitMode::Sync, &engine.stages),
        &[],
    )
    .await?;
    consumer.finished();
    Ok(())
}

/// The checkpoint store of `src`, its topic created when missing; None
/// when the source has none.
pub(super) async fn open_checkpoints(
    src: &crate::config::KafkaSource,
    group: &str,
) -> Result<Option<Checkpoints>, RuntimeError> {
    let Some(t) = &src.checkpoint_topic else {
        return Ok(None);
    };
    let what = || format!("checkpoint topic `{t}` (source.checkpoint_topic; null turns checkpoints off)");
    if checkpoint::ensure_topic(&src.brokers, &src.properties, t)
        .await
        .map_err(kafka_err(what()))?
    {
        tracing::info!(topic = %t, "checkpoint topic created (one partition, compacted)");
    }
    let c = Checkpoints::new(&src.brokers, &src.properties, t, group, &src.topic).map_err(kafka_err(what()))?;
    Ok(Some(c))
}

/// Reads the output topics for evaluations delivered after the assigned
/// partitions' last marks (see [`Published`]). Marks without a time (or
/// none) ask for no scan. A scan that fails is logged: evaluations a killed
/// run delivered without a mark may then be sent twice, nothing is lost.
pub(super) async fn scan_published(
    consumer: &KafkaConsumer,
    p: &Pipeline,
    brokers: &str,
    props: &BTreeMap<String, String>,
) -> Published {
    let since = consumer
        .assignment()
        .into_iter()
        .filter_map(|part| consumer.mark(part).and_then(|m| m.at_ms))
        .min();
    let Some(since) = since.map(|t| t - published::CLOCK_SKEW_MS) else {
        return Published::default();
    };
    let mut topics = vec![p.output.alerts_topic.clone()];
    topics.extend(p.output.stats_topic.clone());
    let (brokers, props, what) = (brokers.to_string(), props.clone(), topics.join(", "));
    let t = std::time::Instant::now();
    let scan =
        tokio::task::spawn_blocking(move || Published::scan(&brokers, &props, &topics, since, Duration::from_secs(60)))
            .await;
    match scan {
        Ok(Ok(found)) => {
            tracing::info!(topics = %what, since_ms = since, found = found.len(), took_ms = t.elapsed().as_millis() as u64,
                "output topics read for evaluations delivered after the last marks");
            found
        }
        Ok(Err(e)) => {
            tracing::warn!(topics = %what, error = %e, "cannot read the output topics: evaluations a killed run delivered after its last mark may be sent again");
            Published::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "output topic scan failed");
            Published::default()
        }
    }
}

/// Marks the partitions of a batch that have no timed mark yet (first read
/// by this group, or marked by a version without times) before anything is
/// delivered for them: at the batch's first offset, which is where a
/// restart would replay from, with what was delivered so far. A run killed
/// after its first delivery then leaves a mark older than that delivery,
/// which bounds the scan for it ([`Published`]).
pub(super) async fn mark_start(consumer: &KafkaConsumer, first: &BTreeMap<i32, i64>) -> Result<(), RuntimeError> {
    let positions: BTreeMap<i32, Position> = first
        .iter()
        .filter(|(p, _)| !consumer.has_timed_mark(**p))
        .map(|(p, f)| {
            let mark = consumer.mark(*p);
            (
                *p,
                Position {
                    next: *f,
                    delivered: mark.map_or(-1, |m| m.offset),
                    labelled: mark.and_then(|m| m.labelled),
                },
            )
        })
        .collect();
    if positions.is_empty() {
        return Ok(());
    }
    consumer.checkpoint(&positions).await.map_err(kafka_err("checkpoint"))?;
    consumer
        .commit(&positions, CommitMode::Sync)
        .map(|_| ())
        .map_err(kafka_err("commit"))
}

/// Evaluations whose window ends at or before what an earlier run delivered
/// are not sent again. Labelled windows have a mark of their own: their
/// evaluations come when the labels do, after the events mark has moved on.
pub(super) fn already_delivered(consumer: &KafkaConsumer, (p, o): (i32, i64), labelled: bool) -> bool {
    let mark = consumer.mark(p);
    let hw = if labelled {
        mark.and_then(|m| m.labelled)
    } else {
        mark.map(|m| m.offset)
    };
    hw.is_some_and(|hw| o <= hw)
}

/// Where a restart must resume reading partition `p`: the oldest offset
/// still `needed`, else after the `last` one read.
pub(super) fn resume_at(needed: &BTreeMap<i32, i64>, p: i32, last: i64) -> i64 {
    needed.get(&p).map_or(last + 1, |n| (*n).min(last + 1))
}

/// Commits what the windows (and the label join) still need and what was
/// delivered; first records the delivery of the `checkpoint` partitions
/// (those with new evaluations) in the checkpoint topic, if there is one.
/// The offset a restart reads from is lowered to what the model stage of
/// `stages` needs to score as before ([`Stages::replay_floor`]).
/// `false`: the group refused the commit (see [`KafkaConsumer::commit`]).
pub(super) async fn commit(
    consumer: &KafkaConsumer,
    windows: &crate::window::Windows,
    labelled: Option<(&Labelled, &LabelledHw)>,
    last: &BTreeMap<i32, i64>,
    (mode, stages): (CommitMode, &Stages),
    checkpoint: &[i32],
) -> Result<bool, RuntimeError> {
    let mut needed = windows.oldest_needed();
    if let Some((ls, _)) = labelled {
        for (p, o) in ls.windows.oldest_needed().into_iter().chain(ls.join.events_needed()) {
            let e = needed.entry(p).or_insert(o);
            *e = (*e).min(o);
        }
    }
    let positions: BTreeMap<i32, Position> = last
        .iter()
        .map(|(p, l)| {
            let next = stages.replay_floor(resume_at(&needed, *p, *l));
            // Never lower what an earlier run recorded as delivered.
            let mark = consumer.mark(*p);
            let delivered = mark.map_or(*l, |d| d.offset.max(*l));
            let labelled = mark
                .and_then(|m| m.labelled)
                .max(labelled.and_then(|(_, hw)| hw.get(p).copied()));
            (
                *p,
                Position {
                    next,
                    delivered,
                    labelled,
                },
            )
        })
        .collect();
    if !checkpoint.is_empty() {
        let marks = positions
            .iter()
            .filter(|(p, _)| checkpoint.contains(p))
            .map(|(p, pos)| (*p, *pos))
            .collect();
        consumer.checkpoint(&marks).await.map_err(kafka_err("checkpoint"))?;
    }
    consumer.commit(&positions, mode).map_err(kafka_err("commit"))
}
