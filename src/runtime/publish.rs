//! Publishing what the engine evaluated: alerts and statistics to their
//! topics, except what an earlier run already delivered.
use std::sync::atomic::Ordering;

use super::*;
use crate::engine::{Sink, Stream};

/// `run`'s sink for one batch (of events or of labels): evaluations to the
/// alerts and stats topics, rejected records to the dead-letter topic; the
/// deliveries to await before the batch's mark and commit gather in
/// `pending`. Labelled evaluations sent move the labelled mark (`hw`).
pub(super) struct Publisher<'a> {
    pub(super) out: &'a Out,
    pub(super) hw: &'a mut LabelledHw,
    pub(super) pending: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Sink for Publisher<'_> {
    fn evaluated(&mut self, evaluated: Vec<Evaluated>) -> Result<usize, RuntimeError> {
        let mut made = 0;
        for e in evaluated {
            let late = e.coords.late_events.unwrap_or(0);
            let n = emit(e.evaluations, e.coords.end, e.labelled, self.out, &mut self.pending)?;
            if n > 0 {
                self.out.stats.late_events.fetch_add(late, Ordering::Relaxed);
            }
            if n > 0 && e.labelled {
                let (p, o) = e.coords.end;
                let mark = self.hw.entry(p).or_insert(o);
                *mark = (*mark).max(o);
            }
            made += n;
        }
        Ok(made)
    }

    fn rejected(&mut self, stream: Stream, rejection: &Rejection) -> Result<(), RuntimeError> {
        let p = &self.out.p;
        let topic = match stream {
            Stream::Events => self.out.events_topic.as_str(),
            Stream::Labels => p.labels.as_ref().map_or("", |l| l.topic.as_str()),
        };
        let f = dead_letter(&self.out.producer, p, &self.out.stats, topic, rejection)?;
        self.pending.push(f);
        Ok(())
    }
}

/// Publishes a window pair's evaluations (the alert policy already
/// applied): alerts and statistics. Returns how many evaluations were new
/// (not covered by a mark of an earlier run); those a killed run already
/// put on an output topic are not sent there again.
pub(super) fn emit(
    evals: Vec<Evaluation>,
    end: (i32, i64),
    labelled: bool,
    out: &Out,
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> Result<usize, RuntimeError> {
    let (p, stats) = (&out.p, &out.stats);
    if already_delivered(&out.consumer, end, labelled) {
        // Sent by an earlier run: only the alert policy's memory was rebuilt.
        stats.suppressed.fetch_add(1, Ordering::Relaxed);
        return Ok(0);
    }
    let mut made = 0;
    for ev in evals {
        made += 1;
        let Some(topics) = topics_for(&ev, out) else {
            stats.suppressed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.evaluations.fetch_add(1, Ordering::Relaxed);
        {
            let mut d = stats.detectors.lock().unwrap_or_else(|e| e.into_inner());
            let m = d.entry(ev.detector.clone()).or_default();
            m.evaluations += 1;
            m.alerts += u64::from(ev.alert);
            m.last_p_value
                .insert(ev.key.clone().unwrap_or_default(), ev.p_value.unwrap_or(ev.statistic));
        }
        tracing::info!(
            detector = %ev.detector, key = ev.key.as_deref().unwrap_or(""), evaluation = ev.evaluation,
            statistic = ev.statistic, p_value = ev.p_value, threshold = ev.threshold, drift = ev.drift, alert = ev.alert,
            "evaluation"
        );
        if let Some(o) = &out.observer {
            o(&ev);
        }
        let body = serde_json::to_vec(&ev).map_err(|e| RuntimeError::Other(e.to_string()))?;
        let key = message_key(&ev);
        if topics.contains(&p.output.alerts_topic.as_str()) {
            stats.alerts.fetch_add(1, Ordering::Relaxed);
        }
        for t in topics {
            let f = out
                .producer
                .send_result(FutureRecord::to(t).payload(&body).key(&key))
                .map_err(|(e, _)| RuntimeError::Kafka {
                    what: format!("produce to {t}"),
                    source: e,
                })?;
            pending.push(f);
        }
    }
    Ok(made)
}

/// The output topics an evaluation goes to (alerts, if it is one, and
/// statistics, if configured; maybe none), less those a run that stopped
/// before marking it already published it on: `None` when that left none.
fn topics_for<'a>(ev: &Evaluation, out: &'a Out) -> Option<Vec<&'a str>> {
    let p = &out.p;
    let mut topics = vec![];
    if ev.alert {
        topics.push(p.output.alerts_topic.as_str());
    }
    if let Some(t) = &p.output.stats_topic {
        topics.push(t.as_str());
    }
    let before = topics.len();
    topics.retain(|t| !out.published.contains(t, &ev.alert_id));
    if topics.len() < before {
        tracing::info!(alert_id = %ev.alert_id, detector = %ev.detector, key = ev.key.as_deref().unwrap_or(""),
            "evaluation already published by a run that stopped before marking it: not sent again");
        if topics.is_empty() {
            return None;
        }
    }
    Some(topics)
}

/// Dead-letter record: the rejection plus where it came from.
#[derive(Serialize)]
pub(super) struct DeadLetter<'a> {
    pub(super) pipeline: &'a str,
    pub(super) topic: &'a str,
    #[serde(flatten)]
    pub(super) rejection: &'a Rejection,
}

/// Counts and logs a rejected record of `topic`, and sends it to the
/// dead-letter topic with its reason; returns the delivery to await.
pub(super) fn dead_letter(
    producer: &FutureProducer,
    p: &Pipeline,
    stats: &RunStats,
    topic: &str,
    rej: &Rejection,
) -> Result<rdkafka::producer::DeliveryFuture, RuntimeError> {
    stats.dead_letter(rej.reason.as_str());
    tracing::warn!(
        topic,
        reason = rej.reason.as_str(),
        partition = rej.partition,
        offset = rej.offset,
        "{}",
        rej.message
    );
    let body = serde_json::to_vec(&DeadLetter {
        pipeline: &p.name,
        topic,
        rejection: rej,
    })
    .unwrap_or_default();
    let key = format!("{}/{}/{}", topic, rej.partition, rej.offset);
    producer
        .send_result(FutureRecord::to(&p.output.dead_letter_topic).payload(&body).key(&key))
        .map_err(|(e, _)| RuntimeError::Kafka {
            what: "dead-letter produce".into(),
            source: e,
        })
}

/// Waits for every delivery; the first failure is the error.
pub(super) async fn await_deliveries(pending: Vec<rdkafka::producer::DeliveryFuture>) -> Result<(), RuntimeError> {
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(RuntimeError::Kafka {
                    what: "delivery".into(),
                    source: e,
                });
            }
            Err(_) => return Err(RuntimeError::Other("delivery cancelled (producer closed)".into())),
        }
    }
    Ok(())
}
