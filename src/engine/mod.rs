//! The pipeline step, written once: scored batch → windows (and, when labels
//! come on their own stream, the label join and the labelled windows) →
//! detector queries → alert policy → evaluations.
//!
//! `run`, `replay` and `compare` are drivers around it: they differ only in
//! where records come from (a Kafka group, a Kafka range or a file) and where
//! evaluations go (Kafka topics with the delivery protocol, report files,
//! stdout). The step itself never does I/O, so a replay of a stream gives the
//! evaluations a run of it gives.

use std::collections::HashMap;

use datafusion::arrow::array::RecordBatch;

use crate::alert::{AlertPolicy, Evaluation};
use crate::decode::Rejection;
use crate::labels::{LabelJoin, LabelRecord};
pub use stages::{Stages, key_column, validate};

use crate::error::RuntimeError;
use crate::source::RawRecord;
use crate::window::{Coords, Due, Windows};

mod sink;
mod stages;
pub use sink::{Sink, Stream};

/// Events joined to their late labels, and the windows they feed.
pub struct Labelled {
    pub join: LabelJoin,
    pub windows: Windows,
}

/// The evaluations of one window pair, with the alert policy applied.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub key: String,
    pub coords: Coords,
    /// Made on the windows of events joined to late labels.
    pub labelled: bool,
    pub evaluations: Vec<Evaluation>,
}

/// One pipeline's state: its built stages, windows and alert-policy memory.
pub struct Engine {
    pub stages: Stages,
    pub windows: Windows,
    /// With a labels stream (the pipeline's `labels`): the join and its windows.
    pub labelled: Option<Labelled>,
    pub policy: AlertPolicy,
}

impl Engine {
    /// Fresh windows (a reference file is read and scored here) and policy.
    pub async fn new(mut stages: Stages) -> Result<Self, RuntimeError> {
        let windows = stages.windows().await?;
        let labelled = match stages.label_join() {
            Some(join) => Some(Labelled {
                join,
                windows: stages.windows().await?,
            }),
            None => None,
        };
        let policy = AlertPolicy::new(&stages.pipeline.alerting);
        Ok(Self {
            stages,
            windows,
            labelled,
            policy,
        })
    }

    /// For one offline evaluation (`compare`): no windows are kept, and a
    /// reference file in the pipeline is not read.
    pub fn offline(stages: Stages) -> Self {
        let windows = Windows::new(None, None, crate::window::ReferenceMode::First(1), 1, 1);
        let labelled = stages.label_join().map(|join| Labelled {
            join,
            windows: Windows::new(None, None, crate::window::ReferenceMode::First(1), 1, 1),
        });
        let policy = AlertPolicy::new(&stages.pipeline.alerting);
        Self {
            stages,
            windows,
            labelled,
            policy,
        }
    }

    /// Transform and model on a decoded batch, then [`Self::push_scored`].
    pub async fn push_events(&mut self, batch: RecordBatch) -> Result<Vec<Evaluated>, RuntimeError> {
        let scored = self.stages.score(batch).await?;
        self.push_scored(&scored).await
    }

    /// A scored batch into the join (events labelled now go to the labelled
    /// windows first) and the event windows; returns what became due, in
    /// that order.
    pub async fn push_scored(&mut self, scored: &RecordBatch) -> Result<Vec<Evaluated>, RuntimeError> {
        let mut out = vec![];
        if let Some(l) = self.labelled.as_mut() {
            let joined = l.join.add_events(&l.windows.rows_needed(scored)?)?;
            self.evaluate_joined(&joined, &mut out).await?;
        }
        for due in self.windows.push(scored)? {
            out.push(self.evaluate(&due, false).await?);
        }
        Ok(out)
    }

    /// Parses a record of the labels stream (None: the pipeline joins no labels).
    pub fn parse_label(&self, record: &RawRecord) -> Option<Result<LabelRecord, Box<Rejection>>> {
        self.labelled.as_ref().map(|l| l.join.parse(record, self.stages.format))
    }

    /// Labels into the join; returns the labelled evaluations that became due.
    pub async fn push_labels(&mut self, labels: Vec<LabelRecord>) -> Result<Vec<Evaluated>, RuntimeError> {
        let mut out = vec![];
        if let Some(l) = self.labelled.as_mut() {
            let joined = l.join.add_labels(labels)?;
            self.evaluate_joined(&joined, &mut out).await?;
        }
        Ok(out)
    }

    /// Both streams have ended (a bounded replay): events still waiting for
    /// a label stay unlabelled and every joined event is released.
    pub async fn finish_labels(&mut self) -> Result<Vec<Evaluated>, RuntimeError> {
        let mut out = vec![];
        if let Some(l) = self.labelled.as_mut() {
            let joined = l.join.finish();
            self.evaluate_joined(&joined, &mut out).await?;
        }
        Ok(out)
    }

    async fn evaluate_joined(&mut self, joined: &[RecordBatch], out: &mut Vec<Evaluated>) -> Result<(), RuntimeError> {
        let Some(l) = self.labelled.as_mut() else {
            return Ok(());
        };
        let Some(b) = l.join.concat(joined)? else {
            return Ok(());
        };
        for due in l.windows.push(&b)? {
            out.push(self.evaluate(&due, true).await?);
        }
        Ok(())
    }

    /// The detectors on one window pair, then the alert policy, which
    /// remembers per (detector, key) in evaluation order.
    pub async fn evaluate(&mut self, due: &Due, labelled: bool) -> Result<Evaluated, RuntimeError> {
        let mut evaluations = if labelled {
            self.stages.evaluate_labelled(due).await?
        } else {
            self.stages.evaluate(due).await?
        };
        self.decide(&mut evaluations);
        Ok(Evaluated {
            key: due.key.clone(),
            coords: due.coords.clone(),
            labelled,
            evaluations,
        })
    }

    /// The alert policy on fresh evaluations.
    fn decide(&mut self, evaluations: &mut [Evaluation]) {
        for ev in evaluations {
            ev.alert = self
                .policy
                .decide(&ev.detector, ev.key.as_deref().unwrap_or(""), ev.drift);
        }
    }

    /// One evaluation of every detector over a reference and a current set
    /// of decoded batches (`compare`): the event detectors on all events,
    /// the detectors on late labels on the events that have a label
    /// (`labels`: event id → label, from a labels file; inline labels count
    /// too).
    pub async fn compare(
        &mut self,
        reference: Vec<RecordBatch>,
        current: Vec<RecordBatch>,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Evaluated>, RuntimeError> {
        let (id_col, label_col) = (self.stages.schema.event_id.clone(), self.stages.schema.label.clone());
        let with_labels = |batches: Vec<RecordBatch>| -> Result<Vec<RecordBatch>, RuntimeError> {
            match (&id_col, &label_col) {
                (Some(id), Some(label)) if !labels.is_empty() => Ok(batches
                    .iter()
                    .map(|b| crate::labels::fill_labels(b, id, label, labels))
                    .collect::<Result<_, _>>()?),
                _ => Ok(batches),
            }
        };
        let (reference, current) = (with_labels(reference)?, with_labels(current)?);
        let due = |reference: Vec<RecordBatch>, current: Vec<RecordBatch>| Due {
            key: String::new(),
            coords: Coords {
                reference_size: reference.iter().map(|b| b.num_rows()).sum(),
                current_size: current.iter().map(|b| b.num_rows()).sum(),
                current_offsets: Default::default(),
                current_time_ms: (0, 0),
                end: (0, -1),
                evaluation: 1,
                window_ms: None,
                late_events: None,
                ..Default::default()
            },
            reference,
            current,
        };
        let only = |b: &[RecordBatch]| -> Result<Option<Vec<RecordBatch>>, RuntimeError> {
            match (&self.labelled, &label_col) {
                (Some(_), Some(label)) => Ok(Some(
                    b.iter()
                        .map(|b| crate::labels::labelled_rows(b, label))
                        .collect::<Result<_, _>>()?,
                )),
                _ => Ok(None),
            }
        };
        let (labelled_reference, labelled_current) = (only(&reference)?, only(&current)?);
        let pair = due(reference, current);
        let mut evaluations = self.stages.evaluate_offline(&pair).await?;
        self.decide(&mut evaluations);
        let mut out = vec![Evaluated {
            key: String::new(),
            coords: pair.coords,
            labelled: false,
            evaluations,
        }];
        if let (Some(reference), Some(current)) = (labelled_reference, labelled_current) {
            out.push(self.evaluate(&due(reference, current), true).await?);
        }
        Ok(out)
    }
}
