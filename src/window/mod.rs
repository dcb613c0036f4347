//! Reference and current windows, per key, held as Arrow batches: by count
//! (`count.rs`) or by event time (`time.rs`). Either way events are consumed
//! in order and evaluation points never depend on how the stream was cut
//! into batches.

mod count;
pub mod sample;
mod time;

pub use count::CountWindows;
pub use sample::{CountGroup, Sampling};
pub use time::{TimeReference, TimeShape, TimeWindows};

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::arrow::error::ArrowError;
use serde::Serialize;

use crate::schema::{OFFSET_COL, PARTITION_COL, TIMESTAMP_COL};

/// How the reference window is formed.
#[derive(Debug, Clone)]
pub enum ReferenceMode {
    /// The first `n` events of each key.
    First(usize),
    /// Fixed batches (already scored), shared by all keys.
    Fixed(Vec<RecordBatch>),
}

/// A window pair due for evaluation.
#[derive(Debug, Clone)]
pub struct Due {
    /// Key value ("" when the pipeline is not keyed).
    pub key: String,
    pub reference: Vec<RecordBatch>,
    pub current: Vec<RecordBatch>,
    /// Where the windows sit in the stream.
    pub coords: Coords,
}

/// Position of a window pair in the stream, for alerts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Coords {
    pub reference_size: usize,
    pub current_size: usize,
    /// Per partition: first and last offset of the current window.
    pub current_offsets: BTreeMap<i32, (i64, i64)>,
    /// First and last event time of the current window (ms; the event-time
    /// field if the schema has one, else the message timestamp).
    pub current_time_ms: (i64, i64),
    /// Last event of the current window (partition, offset): the evaluation's position.
    pub end: (i32, i64),
    /// Evaluation number of this key (1-based).
    pub evaluation: u64,
    /// Event-time windows: the window, `[start, end)` in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<(i64, i64)>,
    /// Event-time windows: late events of the key since its last evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    /// Sampled windows (`max_sample`): the events of the reference and the
    /// current window the raw-value tests read (the sizes above count all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_sample: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_sample: Option<usize>,
    /// With `model.sample`: events of the current window the model scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_scored: Option<u64>,
}

/// What a restart needs to rebuild a key's windows from a replay that starts
/// at the committed offset, which may lie before the key's own anchor (other
/// keys of the partition need older rows): the evaluation count and where
/// the last evaluated current window started.
///
/// What a key's last saved snapshot covers; each window kind keeps one per
/// key, to snapshot only the keys evaluated since and a reference once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SavedMark {
    /// Evaluations covered by the last snapshot saved.
    evaluations: u64,
    /// The key's `first` reference is saved: a restart reads it back
    /// instead of replaying it, so `oldest_needed` lets its rows go.
    reference: bool,
}

impl SavedMark {
    /// `snap`, a snapshot of the key, is stored.
    fn record(&mut self, snap: &KeySnapshot) {
        self.evaluations = self.evaluations.max(snap.evaluations);
        self.reference |= snap.reference_rows > 0;
    }
}

/// A `first` reference is part of it: saved once, with the key's first
/// snapshot, so the committed offset need not stay at the key's first event
/// (replaying the topic from its start, or from rows retention deleted).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct KeySnapshot {
    pub key: String,
    pub evaluations: u64,
    /// Per partition: first offset of the current window at evaluation `evaluations`.
    pub anchor: BTreeMap<i32, i64>,
    /// Rows of the `first` reference saved for this key (0: none).
    #[serde(default)]
    pub reference_rows: usize,
    /// The reference's rows, when they are to be saved (the key's first
    /// snapshot) or were read back; stored apart from the snapshot record.
    #[serde(skip)]
    pub reference: Vec<RecordBatch>,
    /// Event-time windows: what else a restart needs (for them, `anchor` is
    /// the oldest row the key held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeState>,
}

/// What an event-time key's restart needs beside its anchor.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TimeState {
    /// A `first` reference by duration: the key's first event time.
    #[serde(default)]
    pub ref_start: Option<i64>,
    /// Windows ending at or before this (ms) were closed.
    pub closed_to: i64,
    /// Late events since the key's last evaluation.
    pub late: u64,
    /// Per partition of the key, the last offset read when saved.
    pub seen_to: BTreeMap<i32, i64>,
}

/// The windows of a pipeline, all keys: one kind or the other.
#[derive(Debug)]
pub enum Windows {
    Count(CountWindows),
    Time(TimeWindows),
}

/// Calls the same method on either kind.
macro_rules! either {
    ($self:expr, $w:ident => $e:expr) => {
        match $self {
            Windows::Count($w) => $e,
            Windows::Time($w) => $e,
        }
    };
}

impl Windows {
    /// Count windows (see [`CountWindows::new`]).
    pub fn new(
        key_col: Option<String>,
        time_col: Option<String>,
        reference: ReferenceMode,
        size: usize,
        slide: usize,
    ) -> Self {
        Windows::Count(CountWindows::new(key_col, time_col, reference, size, slide))
    }

    /// Keys, and events held in their reference and current windows.
    pub fn fill(&self) -> (usize, usize) {
        either!(self, w => w.fill())
    }

    /// Drops every key's windows (a rebalance: they are rebuilt by replay).
    pub fn clear(&mut self) {
        either!(self, w => w.clear())
    }

    /// Number of keys with state.
    pub fn key_count(&self) -> usize {
        either!(self, w => w.key_count())
    }

    /// What the windows' evaluation points depend on: snapshots saved under
    /// another configuration are not restored.
    pub fn config_id(&self) -> String {
        either!(self, w => w.config_id())
    }

    /// Snapshots of the keys evaluated since their last saved one.
    pub fn unsaved(&self) -> Vec<KeySnapshot> {
        either!(self, w => w.unsaved())
    }

    /// `snaps` are stored: not returned by [`Self::unsaved`] again.
    pub fn saved(&mut self, snaps: &[KeySnapshot]) {
        either!(self, w => w.saved(snaps))
    }

    /// Seeds keys from snapshots before a replay (after [`Self::clear`]).
    pub fn restore(&mut self, snaps: impl IntoIterator<Item = KeySnapshot>) {
        either!(self, w => w.restore(snaps))
    }

    /// The rows of `batch` these windows will use (see the kinds').
    pub fn rows_needed(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        either!(self, w => w.rows_needed(batch))
    }

    /// Adds a scored batch; returns the evaluations that became due, in order.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<Due>, ArrowError> {
        either!(self, w => w.push(batch))
    }

    /// Per partition, the smallest offset any window still needs: where a
    /// restart must start reading to rebuild every window.
    pub fn oldest_needed(&self) -> BTreeMap<i32, i64> {
        either!(self, w => w.oldest_needed())
    }
}

/// The key column as text; `None` when the pipeline is not keyed.
fn key_strings(key_col: Option<&str>, batch: &RecordBatch) -> Result<Option<ArrayRef>, ArrowError> {
    let Some(col) = key_col else {
        return Ok(None);
    };
    let arr = batch
        .column_by_name(col)
        .ok_or_else(|| ArrowError::SchemaError(format!("key column `{col}` not in the batch")))?;
    Ok(Some(datafusion::arrow::compute::cast(
        arr,
        &datafusion::arrow::datatypes::DataType::Utf8,
    )?))
}

/// (partition, offset) of each row of `b`.
fn partition_offsets(b: &RecordBatch) -> Vec<(i32, i64)> {
    let (Some(p), Some(o)) = (b.column_by_name(PARTITION_COL), b.column_by_name(OFFSET_COL)) else {
        return vec![];
    };
    let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
    (0..b.num_rows()).map(|i| (p.value(i), o.value(i))).collect()
}

/// Lowers `into`'s offset of each partition to the `at` (partition,
/// offset) pairs' lowest.
fn lower_to(into: &mut BTreeMap<i32, i64>, at: impl IntoIterator<Item = (i32, i64)>) {
    for (p, o) in at {
        let e = into.entry(p).or_insert(o);
        *e = (*e).min(o);
    }
}

/// Row `i`'s key ("" for a null key).
fn key_at(keys: &StringArray, i: usize) -> &str {
    if keys.is_null(i) { "" } else { keys.value(i) }
}

/// The rows of `b` at or after `from`'s offset for their partition.
fn rows_from(b: &RecordBatch, from: &BTreeMap<i32, i64>) -> Result<RecordBatch, ArrowError> {
    let (Some(p), Some(o)) = (b.column_by_name(PARTITION_COL), b.column_by_name(OFFSET_COL)) else {
        return Ok(b.clone());
    };
    let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
    let keep: BooleanArray = (0..b.num_rows())
        .map(|i| Some(from.get(&p.value(i)).is_none_or(|f| o.value(i) >= *f)))
        .collect();
    if keep.true_count() == b.num_rows() {
        return Ok(b.clone());
    }
    filter_record_batch(b, &keep)
}

fn coords(reference: &[RecordBatch], current: &[RecordBatch], time_col: Option<&str>, evaluation: u64) -> Coords {
    let mut offsets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let (mut tmin, mut tmax) = (i64::MAX, i64::MIN);
    let mut end = (0, -1);
    for b in current {
        let (Some(p), Some(o)) = (b.column_by_name(PARTITION_COL), b.column_by_name(OFFSET_COL)) else {
            continue;
        };
        let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
        let t = time_col
            .and_then(|c| b.column_by_name(c))
            .or_else(|| b.column_by_name(TIMESTAMP_COL))
            .and_then(|a| datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Int64).ok());
        for i in 0..b.num_rows() {
            let e = offsets.entry(p.value(i)).or_insert((i64::MAX, i64::MIN));
            e.0 = e.0.min(o.value(i));
            e.1 = e.1.max(o.value(i));
            end = (p.value(i), o.value(i));
            if let Some(t) = &t {
                let t = t.as_primitive::<Int64Type>();
                if t.is_valid(i) {
                    tmin = tmin.min(t.value(i));
                    tmax = tmax.max(t.value(i));
                }
            }
        }
    }
    if tmin > tmax {
        (tmin, tmax) = (0, 0);
    }
    Coords {
        window_ms: None,
        late_events: None,
        reference_sample: None,
        current_sample: None,
        current_scored: None,
        reference_size: reference.iter().map(|b| b.num_rows()).sum(),
        current_size: current.iter().map(|b| b.num_rows()).sum(),
        current_offsets: offsets,
        current_time_ms: (tmin, tmax),
        end,
        evaluation,
    }
}
