//! Late labels: records `{event_id, label, ts}` from a labels topic, joined
//! to scored events by event id within a horizon in event time
//! ([`crate::config::LabelsConfig`]).
//!
//! The join keeps two bounded buffers: events waiting for their label and
//! labels that came before their event. Whether a label joins depends only on
//! event times (label ts − event ts ≤ horizon), not on which stream was read
//! first. An event leaves the waiting buffer once the labels stream has
//! passed its event time + horizon (it stays unlabelled); a label waits for
//! its event until the events stream has passed the label's time. A stream
//! has passed a time once every partition read from it has: partitions are
//! read in no set order, so one far ahead must not decide for one behind.
//! The events partitions held count from the start ([`LabelJoin::expect_events_from`]),
//! read or not yet, since labels are often read before their events after a
//! rebalance; an events partition that gets no events then keeps the labels
//! waiting until the buffer's bound drops them (counted as dropped, not
//! orphaned). Labels partitions count once read from, so an idle one never
//! holds events back (the horizon is long next to how far partitions drift
//! apart). When a buffer is full the oldest entry is dropped and counted.
//!
//! Joined events are released in the order of the events stream (offset
//! order per partition): an event joined while an earlier one of its
//! partition still waits for its label is held until that one is decided
//! (joined, or unlabelled at its horizon). The labelled windows then see the
//! same sequence however the two streams and their partitions interleave —
//! as long as times rise within each partition — so concept-drift
//! evaluations, like the others, do not depend on read timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde::Serialize;

use crate::decode::{Format, Reason, Rejection};
use crate::schema::{OFFSET_COL, PARTITION_COL, TIMESTAMP_COL};
use crate::source::RawRecord;

/// One parsed label record.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRecord {
    pub event_id: String,
    /// The label, as text (cast to the label column's type when joined).
    pub label: String,
    /// Event time of the label, epoch ms.
    pub ts_ms: i64,
    /// Where the label record is in the labels topic.
    pub partition: i32,
    pub offset: i64,
}

/// Counters of the join (also reported as metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JoinStats {
    /// Labels joined to their event.
    pub joined: u64,
    /// Labels that came after the horizon: counted, not kept.
    pub late: u64,
    /// Labels whose event never came (or was dropped) while they waited.
    pub orphaned: u64,
    /// Events whose label did not come within the horizon.
    pub unlabelled: u64,
    /// Entries dropped because a buffer was full.
    pub dropped: u64,
    /// Events waiting for a label now.
    pub waiting_events: u64,
    /// Labels waiting for their event now.
    pub waiting_labels: u64,
    /// Joined events held until the earlier events of their partition are decided.
    pub held: u64,
    /// Where (partition, offset) the first event still waiting for its label
    /// is: the one holding back the joined events after it.
    pub first_waiting: Option<(i32, i64)>,
}

/// Where an event is in the events stream: (partition, offset), or
/// (0, arrival number) for batches without those columns.
type Pos = (i32, i64);

/// An event in the release queue.
enum Slot {
    /// Waiting for its label.
    Waiting(RecordBatch),
    /// Joined (or labelled inline), to be released in stream order.
    Joined(RecordBatch),
}

/// The join state.
pub struct LabelJoin {
    horizon_ms: i64,
    max_pending: usize,
    event_id_col: String,
    event_time_col: Option<String>,
    label_col: String,
    /// The label column's type: labels are checked against it as they are read.
    label_type: DataType,
    /// Waiting events: event id → (position, event time).
    events: HashMap<String, (Pos, i64)>,
    /// Waiting and joined events not yet released, in stream order.
    queue: BTreeMap<Pos, Slot>,
    /// Arrival number, for batches without stream positions.
    arrivals: i64,
    /// Where the label of each joined event (not labelled inline) is in the
    /// labels topic, while its row may still be needed (see [`Self::labels_needed`]).
    label_of: BTreeMap<Pos, Pos>,
    /// (event time, id) of waiting events, oldest first.
    events_order: BTreeSet<(i64, String)>,
    labels: HashMap<String, LabelRecord>,
    /// (label time, id) of waiting labels, oldest first.
    labels_order: BTreeSet<(i64, String)>,
    /// Per partition, the latest event time read (events, labels): a stream
    /// has passed a time once every partition it was read from has.
    events_watermark: BTreeMap<i32, i64>,
    labels_watermark: BTreeMap<i32, i64>,
    pub stats: JoinStats,
}

impl LabelJoin {
    /// `schema`: of scored batches, which must hold the event id and label columns.
    pub fn new(
        schema: SchemaRef,
        event_id_col: &str,
        event_time_col: Option<&str>,
        label_col: &str,
        horizon_ms: i64,
        max_pending: usize,
    ) -> Result<Self, String> {
        let column_type = |c: &str| {
            schema
                .field_with_name(c)
                .map(|f| f.data_type().clone())
                .map_err(|_| format!("the scored events have no column `{c}`"))
        };
        column_type(event_id_col)?;
        let label_type = column_type(label_col)?;
        Ok(Self {
            horizon_ms,
            max_pending: max_pending.max(1),
            event_id_col: event_id_col.into(),
            event_time_col: event_time_col.map(str::to_string),
            label_col: label_col.into(),
            label_type,
            events: HashMap::new(),
            queue: BTreeMap::new(),
            arrivals: 0,
            label_of: BTreeMap::new(),
            events_order: BTreeSet::new(),
            labels: HashMap::new(),
            labels_order: BTreeSet::new(),
            events_watermark: BTreeMap::new(),
            labels_watermark: BTreeMap::new(),
            stats: JoinStats::default(),
        })
    }

    /// Reads a label record of `format`; a bad one becomes a rejection for
    /// the dead-letter topic.
    pub fn parse(&self, rec: &RawRecord, format: &dyn Format) -> Result<LabelRecord, Box<Rejection>> {
        read_label(rec, format, &self.label_col, &self.label_type, true)
    }

    /// Forgets every waiting event and label and every joined event not yet
    /// released (a rebalance: both streams are read again from their
    /// commits); the cumulative counters stay.
    pub fn reset(&mut self) {
        self.events.clear();
        self.queue.clear();
        self.label_of.clear();
        self.events_order.clear();
        self.labels.clear();
        self.labels_order.clear();
        self.events_watermark.clear();
        self.labels_watermark.clear();
        self.stats.waiting_events = 0;
        self.stats.waiting_labels = 0;
        self.stats.held = 0;
        self.stats.first_waiting = None;
    }

    /// The events partitions this join is fed (those held): until each has
    /// passed a label's time, the label waits for its event.
    pub fn expect_events_from(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.events_watermark.entry(*p).or_insert(i64::MIN);
        }
    }

    /// Scored events in; returns the joined events released now, in stream order.
    pub fn add_events(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>, ArrowError> {
        let ids = cast(self.col(batch, &self.event_id_col)?, &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let time_col = self.event_time_col.as_deref().unwrap_or(TIMESTAMP_COL);
        let times = match batch.column_by_name(time_col) {
            Some(c) => Some(cast(c, &DataType::Int64)?),
            None => None,
        };
        let positions = match (batch.column_by_name(PARTITION_COL), batch.column_by_name(OFFSET_COL)) {
            (Some(p), Some(o)) => Some((cast(p, &DataType::Int32)?, cast(o, &DataType::Int64)?)),
            _ => None,
        };
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                continue; // no id: can never be labelled
            }
            self.arrivals += 1;
            let pos = positions.as_ref().map_or((0, self.arrivals), |(p, o)| {
                (
                    p.as_primitive::<datafusion::arrow::datatypes::Int32Type>().value(i),
                    o.as_primitive::<Int64Type>().value(i),
                )
            });
            let mark = self.events_watermark.entry(pos.0).or_insert(i64::MIN);
            let ts = times
                .as_ref()
                .map(|t| t.as_primitive::<Int64Type>())
                .filter(|t| t.is_valid(i))
                .map_or(*mark, |t| t.value(i));
            *mark = (*mark).max(ts);
            let row = batch.slice(i, 1);
            if self.col(batch, &self.label_col)?.is_valid(i) {
                // Labelled inline: nothing to wait for.
                self.stats.joined += 1;
                self.queue.insert(pos, Slot::Joined(row));
                continue;
            }
            self.join_event(ids.value(i).to_string(), pos, ts, row)?;
        }
        self.expire();
        Ok(self.release())
    }

    /// An event without a label inline (`row`, at stream position `pos`,
    /// of time `ts`): joined with its label if that came first, else it
    /// waits for it.
    fn join_event(&mut self, id: String, pos: Pos, ts: i64, row: RecordBatch) -> Result<(), ArrowError> {
        if let Some(l) = self.labels.remove(&id) {
            self.labels_order.remove(&(l.ts_ms, id));
            if l.ts_ms.saturating_sub(ts) <= self.horizon_ms {
                self.stats.joined += 1;
                self.label_of.insert(pos, (l.partition, l.offset));
                self.queue.insert(pos, Slot::Joined(self.with_label(&row, &l.label)?));
            } else {
                self.stats.late += 1;
            }
            return Ok(());
        }
        if let Some((old_pos, old_ts)) = self.events.insert(id.clone(), (pos, ts)) {
            // A repeated id: the newest event waits, the older one stays unlabelled.
            self.events_order.remove(&(old_ts, id.clone()));
            self.queue.remove(&old_pos);
            self.stats.unlabelled += 1;
        }
        self.queue.insert(pos, Slot::Waiting(row));
        self.events_order.insert((ts, id));
        Ok(())
    }

    /// Labels in; returns the joined events released now, in stream order.
    pub fn add_labels(&mut self, labels: Vec<LabelRecord>) -> Result<Vec<RecordBatch>, ArrowError> {
        for l in labels {
            let mark = self.labels_watermark.entry(l.partition).or_insert(i64::MIN);
            *mark = (*mark).max(l.ts_ms);
            match self.events.remove(&l.event_id) {
                Some((pos, ts)) => {
                    self.events_order.remove(&(ts, l.event_id.clone()));
                    let slot = self.queue.remove(&pos);
                    match slot {
                        Some(Slot::Waiting(row)) if l.ts_ms.saturating_sub(ts) <= self.horizon_ms => {
                            self.stats.joined += 1;
                            self.label_of.insert(pos, (l.partition, l.offset));
                            self.queue.insert(pos, Slot::Joined(self.with_label(&row, &l.label)?));
                        }
                        _ => self.stats.late += 1,
                    }
                }
                None => {
                    if let Some(old) = self.labels.insert(l.event_id.clone(), l.clone()) {
                        self.labels_order.remove(&(old.ts_ms, old.event_id)); // the newest label wins
                    }
                    self.labels_order.insert((l.ts_ms, l.event_id));
                }
            }
        }
        self.expire();
        Ok(self.release())
    }

    /// Both streams have ended (a bounded replay): every event still waiting
    /// stays unlabelled, every label still waiting is orphaned, and the
    /// joined events are released, in stream order.
    pub fn finish(&mut self) -> Vec<RecordBatch> {
        self.expire_to(i64::MAX, i64::MAX);
        self.release()
    }

    /// The event time every events partition read has passed (the minimum
    /// of their latest times; `i64::MIN` before the first event): a driver
    /// that reads both streams itself feeds the labels up to it, so neither
    /// buffer holds more than the horizon's worth.
    pub fn events_passed(&self) -> i64 {
        self.events_watermark.values().copied().min().unwrap_or(i64::MIN)
    }

    /// Per events partition, the oldest event offset the join still holds
    /// (waiting, or joined and not yet released): a restart must read the
    /// events again from there.
    pub fn events_needed(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (p, o) in self.queue.keys() {
            out.entry(*p).or_insert(*o); // keys are ordered: the first is the oldest
        }
        out
    }

    /// Per labels partition, the oldest label offset a restart must read
    /// again: labels waiting for their event, and the labels of joined
    /// events not yet released or still held by the labelled windows
    /// (`held`: per events partition, the oldest offset they need). Forgets
    /// the labels of joined events older than that.
    pub fn labels_needed(&mut self, held: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        let queued = self.events_needed();
        self.label_of.retain(|(p, o), _| {
            let keep_from = match (held.get(p), queued.get(p)) {
                (Some(h), Some(q)) => (*h).min(*q),
                (Some(x), None) | (None, Some(x)) => *x,
                (None, None) => i64::MAX,
            };
            *o >= keep_from
        });
        let mut out: BTreeMap<i32, i64> = BTreeMap::new();
        let waiting = self.labels.values().map(|l| (l.partition, l.offset));
        for (lp, lo) in self.label_of.values().copied().chain(waiting) {
            let e = out.entry(lp).or_insert(lo);
            *e = (*e).min(lo);
        }
        out
    }

    /// Takes the joined events at the front of each partition's queue, up to
    /// its first event still waiting.
    fn release(&mut self) -> Vec<RecordBatch> {
        let mut out = vec![];
        let mut partition = self.queue.keys().next().map(|k| k.0);
        while let Some(p) = partition {
            loop {
                let front = self
                    .queue
                    .range((p, i64::MIN)..=(p, i64::MAX))
                    .next()
                    .map(|(k, slot)| (*k, matches!(slot, Slot::Joined(_))));
                let Some((k, true)) = front else { break };
                if let Some(Slot::Joined(row)) = self.queue.remove(&k) {
                    out.push(row);
                }
            }
            partition = p
                .checked_add(1)
                .and_then(|next| self.queue.range((next, i64::MIN)..).next().map(|(k, _)| k.0));
        }
        self.stats.held = (self.queue.len() - self.events.len()) as u64;
        // After the release each partition's queue starts with a waiting event.
        self.stats.first_waiting = self.queue.keys().next().copied();
        out
    }

    /// Joined rows as one batch (None when there are none).
    pub fn concat(&self, rows: &[RecordBatch]) -> Result<Option<RecordBatch>, ArrowError> {
        if rows.is_empty() {
            return Ok(None);
        }
        concat_batches(&rows[0].schema(), rows).map(Some)
    }

    fn col<'a>(&self, b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
        b.column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))
    }

    fn with_label(&self, row: &RecordBatch, label: &str) -> Result<RecordBatch, ArrowError> {
        let idx = row.schema().index_of(&self.label_col)?;
        let t = row.schema().field(idx).data_type().clone();
        let mut cols = row.columns().to_vec();
        cols[idx] = cast(&(Arc::new(StringArray::from(vec![label])) as ArrayRef), &t)?;
        RecordBatch::try_new(row.schema(), cols)
    }

    fn expire(&mut self) {
        // Partitions are read in no particular order: a stream has passed a
        // time once each of its partitions has (times rise per partition).
        let passed = |marks: &BTreeMap<i32, i64>| marks.values().copied().min().unwrap_or(i64::MIN);
        let (events_passed, labels_passed) = (passed(&self.events_watermark), passed(&self.labels_watermark));
        self.expire_to(events_passed, labels_passed);
    }

    /// Expires what the two streams having passed these times decides.
    fn expire_to(&mut self, events_passed: i64, labels_passed: i64) {
        // Events whose horizon the labels stream has passed stay unlabelled.
        while let Some((ts, id)) = self.events_order.first().cloned() {
            let full = self.events_order.len() > self.max_pending;
            if !full && ts.saturating_add(self.horizon_ms) >= labels_passed {
                break;
            }
            self.events_order.pop_first();
            if let Some((pos, _)) = self.events.remove(&id) {
                self.queue.remove(&pos);
            }
            if full {
                self.stats.dropped += 1;
            } else {
                self.stats.unlabelled += 1;
            }
        }
        // Labels whose time the events stream has passed: their event is not coming.
        while let Some((ts, id)) = self.labels_order.first().cloned() {
            let full = self.labels_order.len() > self.max_pending;
            if !full && ts >= events_passed {
                break;
            }
            self.labels_order.pop_first();
            self.labels.remove(&id);
            if full {
                self.stats.dropped += 1;
            } else {
                self.stats.orphaned += 1;
            }
        }
        self.stats.waiting_events = self.events.len() as u64;
        self.stats.waiting_labels = self.labels.len() as u64;
    }
}

/// Parses a label record `{event_id, label, ts}` for a label column
/// `label_col` of type `label_type`; a bad one becomes a rejection for the
/// dead-letter topic. `ts` (epoch ms or RFC 3339; else the message
/// timestamp) is required when `need_time` (the join's horizon is in event
/// time), else 0 when absent.
pub fn read_label(
    rec: &RawRecord,
    format: &dyn Format,
    label_col: &str,
    label_type: &DataType,
    need_time: bool,
) -> Result<LabelRecord, Box<Rejection>> {
    let reject = |reason: Reason, message: String, field: Option<&str>| {
        Rejection::of(rec, reason, message, field.map(str::to_string))
    };
    let Some(bytes) = &rec.payload else {
        return Err(reject(Reason::EmptyPayload, "label record with no value".into(), None));
    };
    let fields = format
        .label(bytes)
        .map_err(|(reason, m, field)| reject(reason, m, field))?;
    let label = fields.label;
    // The label must fit the label column's type.
    let ok = cast(
        &(Arc::new(StringArray::from(vec![label.as_str()])) as ArrayRef),
        label_type,
    )
    .is_ok_and(|a| a.is_valid(0));
    if !ok {
        return Err(reject(
            Reason::WrongType,
            format!("label `{label}` is not a valid {label_type} for column `{label_col}`"),
            Some("label"),
        ));
    }
    let ts_ms = fields.ts_ms.or(rec.timestamp_ms).or((!need_time).then_some(0));
    let Some(ts_ms) = ts_ms else {
        return Err(reject(
            Reason::WrongType,
            "`ts` must be epoch ms or an RFC 3339 time (or absent, with a message timestamp)".into(),
            Some("ts"),
        ));
    };
    Ok(LabelRecord {
        event_id: fields.event_id,
        label,
        ts_ms,
        partition: rec.partition,
        offset: rec.offset,
    })
}

/// Sets the label column of `batch` from `labels` (event id → label, as
/// text) on the rows that have none; a label that does not fit the column's
/// type stays null. For offline runs, where no horizon applies.
pub fn fill_labels(
    batch: &RecordBatch,
    event_id_col: &str,
    label_col: &str,
    labels: &HashMap<String, String>,
) -> Result<RecordBatch, ArrowError> {
    let missing = |c: &str| ArrowError::SchemaError(format!("no column `{c}` to join labels by"));
    let ids = cast(
        batch
            .column_by_name(event_id_col)
            .ok_or_else(|| missing(event_id_col))?,
        &DataType::Utf8,
    )?;
    let idx = batch.schema().index_of(label_col).map_err(|_| missing(label_col))?;
    let inline = cast(batch.column(idx), &DataType::Utf8)?;
    let (ids, inline) = (ids.as_string::<i32>(), inline.as_string::<i32>());
    let text: StringArray = (0..batch.num_rows())
        .map(|i| {
            if inline.is_valid(i) {
                Some(inline.value(i))
            } else if ids.is_valid(i) {
                labels.get(ids.value(i)).map(String::as_str)
            } else {
                None
            }
        })
        .collect();
    let mut cols = batch.columns().to_vec();
    cols[idx] = cast(&(Arc::new(text) as ArrayRef), batch.schema().field(idx).data_type())?;
    RecordBatch::try_new(batch.schema(), cols)
}

/// The rows of `batch` that have a label.
pub fn labelled_rows(batch: &RecordBatch, label_col: &str) -> Result<RecordBatch, ArrowError> {
    let col = batch
        .column_by_name(label_col)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{label_col}`")))?;
    let keep = datafusion::arrow::compute::is_not_null(col)?;
    datafusion::arrow::compute::filter_record_batch(batch, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("label", DataType::Int64, true),
        ]))
    }

    fn events(ids: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(ids.iter().map(|i| i.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(ids.iter().map(|i| i.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(vec![None::<i64>; ids.len()])),
            ],
        )
        .unwrap()
    }

    fn label(id: &str, l: i64, ts: i64) -> LabelRecord {
        LabelRecord {
            event_id: id.into(),
            label: l.to_string(),
            ts_ms: ts,
            partition: 0,
            offset: ts,
        }
    }

    fn labels_of(rows: &[RecordBatch]) -> Vec<(String, i64)> {
        rows.iter()
            .map(|r| {
                (
                    r.column(0).as_string::<i32>().value(0).to_string(),
                    r.column(2).as_primitive::<Int64Type>().value(0),
                )
            })
            .collect()
    }

    #[test]
    fn labels_join_within_the_horizon_only() {
        let mut j = LabelJoin::new(schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        assert!(
            j.add_events(&events(&[("a", 0), ("b", 10), ("c", 20)]))
                .unwrap()
                .is_empty()
        );
        let joined = j.add_labels(vec![label("a", 3, 50), label("b", 4, 111)]).unwrap();
        // a: 50 after its event, joined; b: 101 after, too late.
        assert_eq!(labels_of(&joined), [("a".to_string(), 3)]);
        assert_eq!((j.stats.joined, j.stats.late), (1, 1));
        assert_eq!(j.stats.first_waiting, Some((0, 3)), "c, the third event, waits");
        // The labels stream passed c's horizon (20 + 100 < 121): c stays unlabelled.
        j.add_labels(vec![label("zz", 1, 121)]).unwrap();
        assert_eq!(j.stats.unlabelled, 1);
        assert_eq!(j.stats.waiting_events, 0);
        assert_eq!(j.stats.first_waiting, None);
        assert_eq!(j.stats.waiting_labels, 1, "zz waits for its event");
    }

    #[test]
    fn a_label_may_come_before_its_event() {
        let mut j = LabelJoin::new(schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        assert!(j.add_labels(vec![label("a", 7, 30)]).unwrap().is_empty());
        let joined = j.add_events(&events(&[("a", 0)])).unwrap();
        assert_eq!(labels_of(&joined), [("a".to_string(), 7)]);
        // A label whose event the stream has passed is orphaned.
        j.add_labels(vec![label("ghost", 1, 5)]).unwrap();
        j.add_events(&events(&[("b", 6)])).unwrap();
        assert_eq!(j.stats.orphaned, 1);
    }

    #[test]
    fn buffers_are_bounded() {
        let mut j = LabelJoin::new(schema(), "event_id", Some("ts"), "label", 1_000_000, 10).unwrap();
        let ids: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
        let evs: Vec<(&str, i64)> = ids.iter().map(|i| (i.as_str(), 0)).collect();
        j.add_events(&events(&evs)).unwrap();
        assert_eq!(j.stats.waiting_events, 10);
        assert_eq!(j.stats.dropped, 90);
        // The newest ones are kept; e99, joined first, is held until the
        // events before it are joined too, then all come out in order.
        assert!(j.add_labels(vec![label("e99", 1, 1)]).unwrap().is_empty());
        assert_eq!(j.stats.held, 1);
        let rest: Vec<_> = (90..99).map(|i| label(&format!("e{i}"), 1, 1)).collect();
        let out = labels_of(&j.add_labels(rest).unwrap());
        let want: Vec<_> = (90..100).map(|i| (format!("e{i}"), 1)).collect();
        assert_eq!(out, want);
        assert_eq!((j.stats.held, j.stats.waiting_events), (0, 0));
    }

    fn positioned_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("label", DataType::Int64, true),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
        ]))
    }

    /// Events `(id, ts, partition, offset)`.
    fn positioned(rows: &[(String, i64, i32, i64)]) -> RecordBatch {
        use datafusion::arrow::array::Int32Array;
        RecordBatch::try_new(
            positioned_schema(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(vec![None::<i64>; rows.len()])),
                Arc::new(Int32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    /// What a restart must read again: the oldest event the join holds, and
    /// the oldest label joined to an event still held (by the labelled
    /// windows, `held`, or the join) or waiting for its event.
    #[test]
    fn what_a_restart_must_read_again() {
        let lab = |id: &str, ts: i64, offset: i64| LabelRecord {
            offset,
            ..label(id, 1, ts)
        };
        let mut j = LabelJoin::new(positioned_schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        let evs: Vec<_> = (0..5).map(|o| (format!("e{o}"), 10 * o, 0, o)).collect();
        assert!(j.add_events(&positioned(&evs)).unwrap().is_empty());
        assert_eq!(j.events_needed(), BTreeMap::from([(0, 0)]));
        let out = j.add_labels(vec![lab("e1", 15, 7), lab("e0", 16, 8)]).unwrap();
        assert_eq!(out.len(), 2, "e0 and e1 joined and released");
        assert_eq!(j.events_needed(), BTreeMap::from([(0, 2)]), "e2 waits");
        // e3 joins but is held behind e2; a label for an unknown event waits.
        assert!(
            j.add_labels(vec![lab("e3", 35, 9), lab("zz", 45, 20)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(j.stats.held, 1);
        assert_eq!(j.labels_needed(&BTreeMap::from([(0, 0)])), BTreeMap::from([(0, 7)]));
        // The labelled windows let go of e0, then of e1: their labels are not needed.
        assert_eq!(j.labels_needed(&BTreeMap::from([(0, 1)])), BTreeMap::from([(0, 7)]));
        assert_eq!(j.labels_needed(&BTreeMap::from([(0, 2)])), BTreeMap::from([(0, 9)]));
        // e2 and e4 pass their horizon unlabelled: e3 is released; only zz waits.
        assert_eq!(labels_of(&j.add_labels(vec![lab("late", 200, 30)]).unwrap()).len(), 1);
        assert_eq!(j.events_needed(), BTreeMap::new());
        assert_eq!(j.labels_needed(&BTreeMap::from([(0, 4)])), BTreeMap::from([(0, 20)]));
    }

    /// After a reset (a rebalance: both streams are read again from their
    /// commits) the join holds nothing and treats the same input as a new
    /// join does; only the cumulative counters remain.
    #[test]
    fn a_reset_join_is_a_new_join() {
        let new = || LabelJoin::new(positioned_schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        let evs: Vec<_> = (0..5).map(|o| (format!("e{o}"), 10 * o, 0, o)).collect();
        let run = |j: &mut LabelJoin| {
            let mut out = labels_of(&j.add_events(&positioned(&evs)).unwrap());
            out.extend(labels_of(
                &j.add_labels(vec![label("e1", 1, 15), label("e0", 2, 16), label("e3", 3, 40)])
                    .unwrap(),
            ));
            out
        };
        let mut used = new();
        run(&mut used);
        // A label far ahead moves the labels stream past every horizon.
        used.add_labels(vec![label("zz", 1, 500)]).unwrap();
        let counted = used.stats.joined;
        used.reset();
        assert_eq!(used.events_needed(), BTreeMap::new());
        assert_eq!(used.labels_needed(&BTreeMap::new()), BTreeMap::new());
        assert_eq!(
            (used.stats.waiting_events, used.stats.waiting_labels, used.stats.held),
            (0, 0, 0)
        );
        assert_eq!(run(&mut used), run(&mut new()));
        assert_eq!(used.stats.joined, 2 * counted, "counters add up over resets");
    }

    /// A partition read ahead does not decide for one behind: a label read
    /// while its event's partition lags (or is not read yet) waits for it
    /// although another partition is past the label's time, and an event
    /// waits for its label while a labels partition lags although another
    /// is past its horizon.
    #[test]
    fn a_partition_read_ahead_does_not_expire_another_s_entries() {
        let mut j = LabelJoin::new(positioned_schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        let on = |p: i32, l: LabelRecord| LabelRecord { partition: p, ..l };
        // Events partition 0 is read up to time 1000; partition 1 only to 10.
        let evs = [("a".to_string(), 1000, 0, 0), ("b0".to_string(), 10, 1, 0)];
        assert!(j.add_events(&positioned(&evs)).unwrap().is_empty());
        // The label of b1 (time 40, event at 30 not read yet) waits.
        assert!(j.add_labels(vec![on(1, label("b1", 7, 40))]).unwrap().is_empty());
        assert_eq!(j.stats.orphaned, 0);
        // Labels partition 0 is far ahead; partition 1 lags: b0 still waits.
        assert!(j.add_labels(vec![on(0, label("zz", 1, 5000))]).unwrap().is_empty());
        assert_eq!(j.stats.unlabelled, 0);
        let got = labels_of(&j.add_labels(vec![on(1, label("b0", 5, 60))]).unwrap());
        assert_eq!(got, vec![("b0".to_string(), 5)], "b0 joined with its label");
        let got = labels_of(&j.add_events(&positioned(&[("b1".to_string(), 30, 1, 1)])).unwrap());
        assert_eq!(
            got,
            vec![("b1".to_string(), 7)],
            "b1 joined with the label read before it"
        );
        assert_eq!((j.stats.orphaned, j.stats.unlabelled), (0, 0));
        // An events partition held but not read yet (after a rebalance the
        // labels often come first) holds the labels back as well.
        j.expect_events_from(&[0, 1, 2]);
        assert!(
            j.add_events(&positioned(&[("b2".to_string(), 2000, 1, 2)]))
                .unwrap()
                .is_empty()
        );
        assert!(j.add_labels(vec![on(2, label("c0", 3, 500))]).unwrap().is_empty());
        assert_eq!(j.stats.orphaned, 0, "partition 2 not read yet: c0 waits");
        let got = labels_of(&j.add_events(&positioned(&[("c0".to_string(), 450, 2, 0)])).unwrap());
        assert_eq!(got, vec![("c0".to_string(), 3)]);
    }

    /// Joined events come out in stream order per partition, whatever the
    /// interleaving of the two streams and their batch sizes: 200 seeded
    /// interleavings of two partitions' events (one label missing, one
    /// after the horizon) give the same sequence.
    /// An event: its id, time, partition and offset (as [`positioned`] takes it).
    type Event = (String, i64, i32, i64);

    /// A released event: its id, its label and its offset in its partition.
    type Released = (String, i64, i64);

    /// Partition p, offset o: event time 10·o + p, label 1–90 ms later (so
    /// labels come in another order than their events); e0-13 has no label,
    /// e1-21's comes after the horizon (100). Each stream in time order.
    fn two_partitions_of_events_and_labels() -> (Vec<Event>, Vec<LabelRecord>) {
        let mut evs = vec![];
        let mut labs = vec![];
        for o in 0..40i64 {
            for p in 0..2i32 {
                let id = format!("e{p}-{o}");
                let ts = 10 * o + i64::from(p);
                evs.push((id.clone(), ts, p, o));
                match id.as_str() {
                    "e0-13" => {}
                    "e1-21" => labs.push(label(&id, o, ts + 150)),
                    _ => labs.push(label(&id, o, ts + 1 + (o * 37 + i64::from(p) * 11) % 90)),
                }
            }
        }
        labs.sort_by_key(|l| l.ts_ms);
        (evs, labs)
    }

    fn released(rows: Vec<RecordBatch>) -> Vec<Released> {
        rows.iter()
            .map(|r| {
                (
                    r.column(0).as_string::<i32>().value(0).to_string(),
                    r.column(2).as_primitive::<Int64Type>().value(0),
                    r.column(4).as_primitive::<Int64Type>().value(0),
                )
            })
            .collect()
    }

    /// The events and labels fed to a join in batches of 1–7, the two
    /// streams interleaved at random (`seed`): what it released, once the
    /// labels stream moved past them all (nothing left waiting).
    fn released_interleaved(seed: u64, evs: &[Event], labs: &[LabelRecord]) -> Vec<Released> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut j = LabelJoin::new(positioned_schema(), "event_id", Some("ts"), "label", 100, 1000).unwrap();
        let (mut e, mut l) = (0, 0);
        let mut out = vec![];
        while e < evs.len() || l < labs.len() {
            let take_events = l == labs.len() || (e < evs.len() && rng.random_bool(0.5));
            if take_events {
                let n = rng.random_range(1..=7).min(evs.len() - e);
                out.extend(released(j.add_events(&positioned(&evs[e..e + n])).unwrap()));
                e += n;
            } else {
                let n = rng.random_range(1..=7).min(labs.len() - l);
                out.extend(released(j.add_labels(labs[l..l + n].to_vec()).unwrap()));
                l += n;
            }
        }
        // The labels stream moves on: what still waits is decided.
        out.extend(released(j.add_labels(vec![label("zz", 0, 10_000)]).unwrap()));
        assert_eq!((j.stats.held, j.stats.waiting_events), (0, 0), "seed {seed}");
        out
    }

    #[test]
    fn release_order_does_not_depend_on_interleaving() {
        let (evs, labs) = two_partitions_of_events_and_labels();
        let mut reference: Option<Vec<Released>> = None;
        for seed in 0..200u64 {
            let out = released_interleaved(seed, &evs, &labs);
            // Per partition, in offset order.
            for p in ["e0-", "e1-"] {
                let offs: Vec<i64> = out.iter().filter(|r| r.0.starts_with(p)).map(|r| r.2).collect();
                assert!(offs.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {offs:?}");
            }
            assert_eq!(out.len(), 78, "seed {seed}");
            assert!(!out.iter().any(|r| r.0 == "e0-13" || r.0 == "e1-21"));
            let per_partition =
                |p: &str| -> Vec<Released> { out.iter().filter(|r| r.0.starts_with(p)).cloned().collect() };
            let mine = [per_partition("e0-"), per_partition("e1-")].concat();
            match &reference {
                None => reference = Some(mine),
                Some(r) => assert_eq!(&mine, r, "seed {seed}"),
            }
        }
    }

    #[test]
    fn garbage_label_records_are_rejected_with_a_reason() {
        let j = LabelJoin::new(schema(), "event_id", Some("ts"), "label", 100, 10).unwrap();
        let rec = |p: Option<&str>| RawRecord {
            payload: p.map(|s| s.as_bytes().to_vec()),
            partition: 2,
            offset: 9,
            timestamp_ms: None,
        };
        for (p, reason) in [
            (None, Reason::EmptyPayload),
            (Some("{"), Reason::MalformedJson),
            (Some("[1]"), Reason::NotAnObject),
            (Some(r#"{"label": 1, "ts": 1}"#), Reason::MissingField),
            (Some(r#"{"event_id": "a", "ts": 1}"#), Reason::MissingField),
            (
                Some(r#"{"event_id": "a", "label": "seven", "ts": 1}"#),
                Reason::WrongType,
            ),
            (Some(r#"{"event_id": "a", "label": 1}"#), Reason::WrongType),
            (Some(r#"{"event_id": ["a"], "label": 1, "ts": 1}"#), Reason::WrongType),
        ] {
            let e = j.parse(&rec(p), &crate::decode::JSON).unwrap_err();
            assert_eq!(e.reason, reason, "{p:?}: {}", e.message);
            assert_eq!((e.partition, e.offset), (2, 9));
        }
        let ok = j
            .parse(
                &rec(Some(r#"{"event_id": "a", "label": 3, "ts": "2026-01-01T00:00:00Z"}"#)),
                &crate::decode::JSON,
            )
            .unwrap();
        assert_eq!((ok.label.as_str(), ok.ts_ms), ("3", 1_767_225_600_000));
    }
}
