//! Event-time windows: per key, windows `[start, start + duration)` of event
//! time starting at every multiple of `slide` since the Unix epoch, closed
//! by the watermark.
//!
//! Each partition's watermark is the newest event time read from it minus
//! `allowed_lateness`. An event older than its own partition's watermark is
//! late: counted (in the next evaluation of its key), never added. A key's
//! windows close, in order, once every partition the key was seen in has its
//! watermark at or past their end; an event whose windows have all closed
//! already (its key was seen in a partition that ran ahead) is late too. The
//! evaluation is made at the event that closed the window.
//!
//! Whether an event is late, and so what a window holds, depends only on
//! the order of events within each partition: when a key's events all come
//! from one partition (Kafka keyed by the window key), its evaluations are
//! the same however the partitions' reads interleave, whatever the batching,
//! in a run, its replay and after a restart.
//!
//! Rows are held while an open window (or, with a `previous` reference, the
//! window after it) still needs them; a window with no event is not
//! evaluated, nor one whose reference is empty.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::error::ArrowError;

use super::sample::{Panes, Summary, pane_width, table_events};
use super::*;
use crate::schema::event_times;

/// What an event-time window is compared with.
#[derive(Debug, Clone)]
pub enum TimeReference {
    /// The first `n` events of each key.
    First(usize),
    /// Fixed batches (already scored), shared by all keys.
    Fixed(Vec<RecordBatch>),
    /// The window of the same duration just before the current one.
    Previous,
    /// Each key's events from its first event's time for this long (ms).
    FirstFor(i64),
}

/// The shape of event-time windows (all in ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeShape {
    pub duration: i64,
    pub slide: i64,
    pub lateness: i64,
}

impl TimeShape {
    /// The end of the first window ending after `t` (window ends are
    /// `k·slide + duration`).
    fn end_after(&self, t: i64) -> i64 {
        ((t - self.duration).div_euclid(self.slide) + 1) * self.slide + self.duration
    }

    /// Whether the window ending at `end` holds `t`.
    fn holds(&self, end: i64, t: i64) -> bool {
        end - self.duration <= t && t < end
    }
}

#[derive(Debug)]
struct TimeKey {
    reference: Vec<RecordBatch>,
    ref_rows: usize,
    /// Rows booked for the `first` reference, added or not yet.
    ref_booked: usize,
    /// `FirstFor`: the key's first event time, and whether its watermark
    /// has passed the reference's end (the reference is then complete).
    ref_start: Option<i64>,
    ref_done: bool,
    /// Rows some open window (or its successor's `previous` reference) needs.
    held: VecDeque<RecordBatch>,
    held_rows: usize,
    /// End of the next window to close; None while nothing is held.
    next_end: Option<i64>,
    /// Windows ending at or before this are closed (evaluated or empty).
    closed_to: i64,
    evaluations: u64,
    /// Late events since the key's last evaluation.
    late: u64,
    /// Partitions the key was seen in: its windows wait for each.
    partitions: BTreeSet<i32>,
    /// Restored from a snapshot: the key's rows before these offsets are
    /// not needed; up to `seen_to` they were read before the snapshot, so
    /// they are added again (if held then) but not counted again.
    restore_from: BTreeMap<i32, i64>,
    seen_to: BTreeMap<i32, i64>,
    saved: SavedMark,
    /// Sampled windows: the reference and the held events, in bounded memory.
    ref_summary: Summary,
    panes: Panes,
}

impl Default for TimeKey {
    fn default() -> Self {
        Self {
            reference: vec![],
            ref_rows: 0,
            ref_booked: 0,
            ref_start: None,
            ref_done: false,
            held: VecDeque::new(),
            held_rows: 0,
            next_end: None,
            closed_to: i64::MIN,
            evaluations: 0,
            late: 0,
            partitions: BTreeSet::new(),
            restore_from: BTreeMap::new(),
            seen_to: BTreeMap::new(),
            saved: SavedMark::default(),
            ref_summary: Summary::default(),
            panes: Panes::default(),
        }
    }
}

/// Event-time windows of a pipeline, all keys.
#[derive(Debug)]
pub struct TimeWindows {
    key_col: Option<String>,
    time_col: Option<String>,
    reference: TimeReference,
    shape: TimeShape,
    keys: HashMap<String, TimeKey>,
    /// Per partition, the newest event time read.
    newest: BTreeMap<i32, i64>,
    /// Per partition, the last offset read.
    read_to: BTreeMap<i32, i64>,
    /// (next window end, key) of keys holding rows: what may close next.
    queue: BTreeSet<(i64, String)>,
    /// Windows of any size in bounded memory, and the width of their panes.
    sampling: Option<Sampling>,
    pane: i64,
}

/// One row as the windows see it.
#[derive(Clone, Copy)]
struct Row {
    partition: i32,
    offset: i64,
    time: i64,
}

impl TimeWindows {
    /// `time_col`: the event-time column (Timestamp(ms) or Int64 ms); the
    /// message timestamp where absent or null.
    pub fn new(key_col: Option<String>, time_col: Option<String>, reference: TimeReference, shape: TimeShape) -> Self {
        let shape = TimeShape {
            duration: shape.duration.max(1),
            slide: shape.slide.max(1),
            lateness: shape.lateness.max(0),
        };
        Self {
            key_col,
            time_col,
            reference,
            shape,
            keys: HashMap::new(),
            newest: BTreeMap::new(),
            read_to: BTreeMap::new(),
            queue: BTreeSet::new(),
            sampling: None,
            pane: pane_width(shape.duration, shape.slide),
        }
    }

    /// Windows sampled as `sampling` says (see [`super::sample`]); a fixed
    /// reference is then given in table form.
    pub fn sampled(mut self, sampling: Sampling) -> Self {
        self.sampling = Some(sampling);
        self
    }

    pub fn fill(&self) -> (usize, usize) {
        let held = match self.sampling {
            Some(_) => self.keys.values().map(|k| k.ref_summary.held() + k.panes.held()).sum(),
            None => self.keys.values().map(|k| k.ref_rows + k.held_rows).sum(),
        };
        (self.keys.len(), held)
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.newest.clear();
        self.read_to.clear();
        self.queue.clear();
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn config_id(&self) -> String {
        let reference = match &self.reference {
            TimeReference::First(n) => format!("first:{n}"),
            TimeReference::Fixed(b) => format!("fixed:{}", b.iter().map(|b| b.num_rows()).sum::<usize>()),
            TimeReference::Previous => "previous".into(),
            TimeReference::FirstFor(ms) => format!("first_for:{ms}"),
        };
        let TimeShape {
            duration,
            slide,
            lateness,
        } = self.shape;
        let key = self.key_col.as_deref().unwrap_or("");
        let sampled = self
            .sampling
            .as_ref()
            .map(|s| format!(";{}", s.config_id()))
            .unwrap_or_default();
        format!(
            "key={key};reference={reference};duration_ms={duration};slide_ms={slide};lateness_ms={lateness}{sampled}"
        )
    }

    /// Adds a scored batch, row by row in its order; returns the
    /// evaluations that became due, in the order they did.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<Due>, ArrowError> {
        let rows = self.rows(batch)?;
        let keys = key_strings(self.key_col.as_deref(), batch)?;
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let mut due = vec![];
        // Rows accepted since the last close, per key, in order.
        let mut accepted: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            let key = keys.map_or("", |k| key_at(k, i));
            let newest = self.newest.entry(row.partition).or_insert(row.time);
            let late = row.time < *newest - self.shape.lateness;
            let advanced = row.time > *newest;
            *newest = (*newest).max(row.time);
            self.read_to.insert(row.partition, row.offset);
            if self.take_row(key, *row, late) {
                accepted.entry(key.to_string()).or_default().push(i as u32);
            }
            if advanced && self.may_close(row.partition) {
                self.add_rows(batch, &mut accepted)?;
                self.close(row.partition, (row.partition, row.offset), &mut due)?;
            }
        }
        self.add_rows(batch, &mut accepted)?;
        self.end_restores();
        Ok(due)
    }

    /// Restored keys read past what they had read before the snapshot are
    /// keys like the others again.
    fn end_restores(&mut self) {
        let read_to = &self.read_to;
        for st in self.keys.values_mut().filter(|st| !st.seen_to.is_empty()) {
            if st.seen_to.iter().all(|(p, s)| read_to.get(p).is_some_and(|r| r > s)) {
                st.seen_to.clear();
                st.restore_from.clear();
            }
        }
    }

    /// Partition, offset and event time of each row.
    fn rows(&self, batch: &RecordBatch) -> Result<Vec<Row>, ArrowError> {
        let time = event_times(batch, self.time_col.as_deref())?;
        let at = partition_offsets(batch);
        if at.len() != batch.num_rows() {
            let m = format!("no `{PARTITION_COL}`/`{OFFSET_COL}` columns for event-time windows");
            return Err(ArrowError::SchemaError(m));
        }
        Ok(at
            .into_iter()
            .zip(time)
            .map(|((partition, offset), time)| Row {
                partition,
                offset,
                time,
            })
            .collect())
    }

    /// Books a row for its key; true when it is to be added to the key's
    /// rows (its `first` reference, or its windows).
    fn take_row(&mut self, key: &str, row: Row, late_in_partition: bool) -> bool {
        let shape = self.shape;
        let previous = matches!(self.reference, TimeReference::Previous);
        let st = self.keys.entry(key.to_string()).or_default();
        st.partitions.insert(row.partition);
        let at = |m: &BTreeMap<i32, i64>| m.get(&row.partition).copied();
        if at(&st.restore_from).is_some_and(|a| row.offset < a) {
            return false;
        }
        let seen = at(&st.seen_to).is_some_and(|s| row.offset <= s);
        // The next window ending after both the row and the closed ones.
        let end = shape.end_after(row.time.max(st.closed_to));
        let in_window = shape.holds(end, row.time);
        // Read again after a restore, a row is added where the first read added it.
        let late = late_in_partition || (!seen && !in_window && row.time < st.closed_to);
        if late {
            if !seen {
                st.late += 1;
            }
            return false;
        }
        match self.reference {
            TimeReference::First(n) if st.ref_booked < n => {
                st.ref_booked += 1;
                return true;
            }
            TimeReference::FirstFor(d) => {
                let t0 = *st.ref_start.get_or_insert(row.time);
                if row.time < t0 + d {
                    // Before the reference is complete, it takes the row;
                    // after, the row came too late for it.
                    if st.ref_done && !seen {
                        st.late += 1;
                    }
                    return !st.ref_done;
                }
            }
            _ => {}
        }
        if !in_window && !previous && !seen {
            return false; // between windows (a slide longer than the duration)
        }
        if st.next_end.is_none_or(|n| end < n) {
            if let Some(old) = st.next_end {
                self.queue.remove(&(old, key.to_string()));
            }
            st.next_end = Some(end);
            self.queue.insert((end, key.to_string()));
        }
        true
    }

    /// Whether a key waiting on `partition` may have a window to close.
    fn may_close(&self, partition: i32) -> bool {
        let mark = self.newest[&partition] - self.shape.lateness;
        self.queue.first().is_some_and(|(end, _)| *end <= mark)
    }

    /// Moves the accepted rows into their keys (the first `n` to a `first`
    /// reference).
    fn add_rows(&mut self, batch: &RecordBatch, accepted: &mut BTreeMap<String, Vec<u32>>) -> Result<(), ArrowError> {
        for (key, rows) in std::mem::take(accepted) {
            let mut part = take_record_batch(batch, &UInt32Array::from(rows))?;
            let Some(st) = self.keys.get_mut(&key) else { continue };
            let (sampling, time_col) = (self.sampling.as_ref(), self.time_col.as_deref());
            match self.reference {
                TimeReference::First(n) if st.ref_rows < n => {
                    let take = (n - st.ref_rows).min(part.num_rows());
                    keep_reference(st, sampling, part.slice(0, take), time_col)?;
                    st.ref_rows += take;
                    part = part.slice(take, part.num_rows() - take);
                }
                TimeReference::FirstFor(d) if !st.ref_done => {
                    // As `take_row` booked them: before the reference's end.
                    let until = st.ref_start.map_or(i64::MIN, |t0| t0 + d);
                    let split =
                        |from, to| rows_between(&VecDeque::from([part.clone()]), self.time_col.as_deref(), from, to);
                    let (early, rest) = (split(i64::MIN, until)?, split(until, i64::MAX)?);
                    st.ref_rows += early.iter().map(|b| b.num_rows()).sum::<usize>();
                    for b in early {
                        keep_reference(st, sampling, b, time_col)?;
                    }
                    let Some(rest) = rest.into_iter().next() else { continue };
                    part = rest;
                }
                _ => {}
            }
            if part.num_rows() > 0 {
                match sampling {
                    Some(s) => st.panes.add(s, self.pane, &part, &event_times(&part, time_col)?)?,
                    None => {
                        st.held_rows += part.num_rows();
                        st.held.push_back(part);
                    }
                }
            }
        }
        Ok(())
    }

    /// A key's watermark: the lowest of its partitions'.
    fn watermark(&self, st: &TimeKey) -> i64 {
        st.partitions
            .iter()
            .map(|p| self.newest.get(p).map_or(i64::MIN, |n| n - self.shape.lateness))
            .min()
            .unwrap_or(i64::MIN)
    }

    /// Closes, in order, the windows of keys seen in `partition` that its
    /// advance let close; `at` is the event that did.
    fn close(&mut self, partition: i32, at: (i32, i64), due: &mut Vec<Due>) -> Result<(), ArrowError> {
        let mark = self.newest[&partition] - self.shape.lateness;
        let ready: Vec<(i64, String)> = self.queue.iter().take_while(|(e, _)| *e <= mark).cloned().collect();
        for (end, key) in ready {
            let Some(st) = self.keys.get(&key) else { continue };
            if !st.partitions.contains(&partition) || self.watermark(st) < end {
                continue;
            }
            self.queue.remove(&(end, key.clone()));
            self.close_key(&key, at, due)?;
        }
        Ok(())
    }

    /// Every window of `key` the watermark has passed, in order; then the
    /// key waits for its next one.
    fn close_key(&mut self, key: &str, at: (i32, i64), due: &mut Vec<Due>) -> Result<(), ArrowError> {
        let mark = self.watermark(&self.keys[key]);
        let (shape, time_col) = (self.shape, self.time_col.as_deref());
        let Some(st) = self.keys.get_mut(key) else {
            return Ok(());
        };
        if let (TimeReference::FirstFor(d), Some(t0)) = (&self.reference, st.ref_start) {
            st.ref_done |= mark >= t0 + d;
        }
        let sampling = self.sampling.as_ref();
        while let Some(end) = st.next_end.filter(|e| *e <= mark) {
            let evaluated = match sampling {
                Some(s) => evaluate_sampled(st, s, &self.reference, shape, end, at)?,
                None => evaluate(st, &self.reference, shape, time_col, end, at)?,
            };
            if let Some(d) = evaluated {
                due.push(Due {
                    key: key.to_string(),
                    ..d
                });
            }
            st.closed_to = end;
            prune(st, shape, time_col, end + shape.slide, &self.reference)?;
            let oldest = match sampling {
                Some(_) => st.panes.min_time(),
                None => min_time(&st.held, time_col)?,
            };
            st.next_end = oldest.map(|t| (end + shape.slide).max(shape.end_after(t)));
        }
        if let Some(end) = st.next_end {
            self.queue.insert((end, key.to_string()));
        }
        Ok(())
    }

    /// Snapshots of the keys evaluated since their last saved one.
    pub fn unsaved(&self) -> Vec<KeySnapshot> {
        let mut out: Vec<KeySnapshot> = self
            .keys
            .iter()
            .filter(|(_, st)| st.evaluations > st.saved.evaluations)
            .map(|(k, st)| self.snapshot(k, st))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn snapshot(&self, key: &str, st: &TimeKey) -> KeySnapshot {
        let reference_rows = match self.reference {
            TimeReference::First(n) if st.ref_rows == n => n,
            TimeReference::FirstFor(_) if st.ref_done => st.ref_rows,
            _ => 0,
        };
        let seen_to = st
            .partitions
            .iter()
            .filter_map(|p| self.read_to.get(p).map(|o| (*p, *o)))
            .collect();
        KeySnapshot {
            key: key.to_string(),
            evaluations: st.evaluations,
            anchor: self.held_from(st),
            reference_rows,
            reference: if reference_rows > 0 && !st.saved.reference {
                self.reference_rows(st)
            } else {
                vec![]
            },
            time: Some(TimeState {
                ref_start: st.ref_start,
                closed_to: st.closed_to,
                late: st.late,
                seen_to,
            }),
        }
    }

    /// The key's reference as saved: its rows, or sampled its table form.
    fn reference_rows(&self, st: &TimeKey) -> Vec<RecordBatch> {
        let Some(s) = &self.sampling else {
            return st.reference.clone();
        };
        match st.ref_summary.table(s) {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => {
                // Not saved: a restart rebuilds it by replay, as before the first save.
                tracing::warn!(error = %e, "a sampled reference could not be put in table form to be saved");
                vec![]
            }
        }
    }

    /// Per partition, the oldest row `st` holds (its restore anchor while
    /// it holds none yet); sampled, the oldest event its panes counted.
    fn held_from(&self, st: &TimeKey) -> BTreeMap<i32, i64> {
        let mut out = st.restore_from.clone();
        for b in &st.held {
            lower_to(&mut out, partition_offsets(b));
        }
        lower_to(&mut out, st.panes.first_offsets());
        out
    }

    pub fn saved(&mut self, snaps: &[KeySnapshot]) {
        for s in snaps {
            if let Some(st) = self.keys.get_mut(&s.key) {
                st.saved.record(s);
            }
        }
    }

    /// Seeds keys from snapshots before a replay (after [`Self::clear`]).
    pub fn restore(&mut self, snaps: impl IntoIterator<Item = KeySnapshot>) {
        for s in snaps.into_iter().filter(|s| s.evaluations > 0) {
            let Some(t) = s.time else { continue };
            let rows = match self.sampling {
                Some(_) => table_events(&s.reference).0 as usize,
                None => s.reference.iter().map(|b| b.num_rows()).sum(),
            };
            let ref_summary = match &self.sampling {
                Some(sm) if rows > 0 => match Summary::from_table(sm, &s.reference) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(key = %s.key, error = %e, "a saved sampled reference could not be read; it is rebuilt");
                        None
                    }
                },
                _ => None,
            };
            let rows = if self.sampling.is_some() && ref_summary.is_none() {
                0
            } else {
                rows
            };
            let with_reference = match self.reference {
                TimeReference::First(n) => rows == n,
                TimeReference::FirstFor(_) => rows > 0 && rows == s.reference_rows,
                _ => false,
            };
            let st = TimeKey {
                ref_start: if with_reference { t.ref_start } else { None },
                ref_done: with_reference,
                evaluations: s.evaluations,
                saved: SavedMark {
                    evaluations: s.evaluations,
                    reference: with_reference,
                },
                closed_to: t.closed_to,
                late: t.late,
                partitions: s.anchor.keys().chain(t.seen_to.keys()).copied().collect(),
                restore_from: s.anchor,
                seen_to: t.seen_to,
                ref_rows: if with_reference { rows } else { 0 },
                ref_booked: if with_reference { rows } else { 0 },
                ref_summary: ref_summary.filter(|_| with_reference).unwrap_or_default(),
                reference: if with_reference && self.sampling.is_none() {
                    s.reference
                } else {
                    vec![]
                },
                ..Default::default()
            };
            self.keys.insert(s.key, st);
        }
    }

    /// The rows of `batch` these windows will use: without those of
    /// restored keys from before their anchor.
    pub fn rows_needed(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        if self.keys.values().all(|st| st.restore_from.is_empty()) {
            return Ok(batch.clone());
        }
        let rows = self.rows(batch)?;
        let keys = key_strings(self.key_col.as_deref(), batch)?;
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let keep: BooleanArray = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let st = self.keys.get(keys.map_or("", |k| key_at(k, i)));
                let before = st
                    .and_then(|st| st.restore_from.get(&r.partition))
                    .is_some_and(|a| r.offset < *a);
                Some(!before)
            })
            .collect();
        filter_record_batch(batch, &keep)
    }

    /// Per partition, the smallest offset any key still needs.
    pub fn oldest_needed(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> = BTreeMap::new();
        for st in self.keys.values() {
            lower_to(&mut out, self.held_from(st));
            if !st.saved.reference {
                for b in &st.reference {
                    lower_to(&mut out, partition_offsets(b));
                }
                lower_to(&mut out, st.ref_summary.offsets.iter().map(|(p, (a, _))| (*p, *a)));
            }
        }
        out
    }
}

/// The evaluation of `st`'s window ending at `end`, if it has events and a
/// reference; made at event `at`.
fn evaluate(
    st: &mut TimeKey,
    reference: &TimeReference,
    shape: TimeShape,
    time_col: Option<&str>,
    end: i64,
    at: (i32, i64),
) -> Result<Option<Due>, ArrowError> {
    let start = end - shape.duration;
    let current = rows_between(&st.held, time_col, start, end)?;
    let reference = match reference {
        TimeReference::First(n) if st.ref_rows == *n => st.reference.clone(),
        TimeReference::First(_) => vec![],
        TimeReference::Fixed(b) => b.clone(),
        TimeReference::Previous => rows_between(&st.held, time_col, start - shape.duration, start)?,
        TimeReference::FirstFor(_) if st.ref_done => st.reference.clone(),
        TimeReference::FirstFor(_) => vec![],
    };
    let count = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    if count(&current) == 0 || count(&reference) == 0 {
        return Ok(None);
    }
    st.evaluations += 1;
    let mut coords = super::coords(&reference, &current, time_col, st.evaluations);
    coords.end = at;
    coords.window_ms = Some((start, end));
    coords.late_events = Some(std::mem::take(&mut st.late));
    Ok(Some(Due {
        key: String::new(),
        reference,
        current,
        coords,
    }))
}

/// The evaluation of `st`'s sampled window ending at `end` (see
/// [`evaluate`]): each side in table form, sizes counting every event.
fn evaluate_sampled(
    st: &mut TimeKey,
    s: &Sampling,
    reference: &TimeReference,
    shape: TimeShape,
    end: i64,
    at: (i32, i64),
) -> Result<Option<Due>, ArrowError> {
    let start = end - shape.duration;
    let current = st.panes.between(start, end);
    let reference = match reference {
        TimeReference::First(n) if st.ref_rows == *n => st.ref_summary.table(s)?,
        TimeReference::Fixed(b) => Some(b.clone()),
        TimeReference::Previous => st.panes.between(start - shape.duration, start).table(s)?,
        TimeReference::FirstFor(_) if st.ref_done => st.ref_summary.table(s)?,
        TimeReference::First(_) | TimeReference::FirstFor(_) => None,
    };
    let (Some(reference), Some(table)) = (reference, current.table(s)?) else {
        return Ok(None);
    };
    let ((ref_events, ref_sample), (cur_events, cur_sample)) = (table_events(&reference), table_events(&table));
    if ref_events == 0 {
        return Ok(None);
    }
    st.evaluations += 1;
    let coords = Coords {
        reference_size: ref_events as usize,
        current_size: cur_events as usize,
        reference_sample: Some(ref_sample),
        current_sample: Some(cur_sample),
        current_offsets: current.offsets.clone(),
        current_time_ms: current.times.unwrap_or((0, 0)),
        end: at,
        evaluation: st.evaluations,
        window_ms: Some((start, end)),
        late_events: Some(std::mem::take(&mut st.late)),
        current_scored: None,
    };
    Ok(Some(Due {
        key: String::new(),
        reference,
        current: table,
        coords,
    }))
}

/// Keeps `b` as part of the key's `first` reference.
fn keep_reference(
    st: &mut TimeKey,
    sampling: Option<&Sampling>,
    b: RecordBatch,
    time_col: Option<&str>,
) -> Result<(), ArrowError> {
    match sampling {
        Some(s) => st.ref_summary.add(s, &b, &event_times(&b, time_col)?),
        None => {
            st.reference.push(b);
            Ok(())
        }
    }
}

/// Drops the rows no window from the one ending at `next_end` on needs.
fn prune(
    st: &mut TimeKey,
    shape: TimeShape,
    time_col: Option<&str>,
    next_end: i64,
    reference: &TimeReference,
) -> Result<(), ArrowError> {
    let mut keep_from = next_end - shape.duration;
    if matches!(reference, TimeReference::Previous) {
        keep_from -= shape.duration;
    }
    st.panes.prune(keep_from);
    let kept = rows_between(&st.held, time_col, keep_from, i64::MAX)?;
    st.held_rows = kept.iter().map(|b| b.num_rows()).sum();
    st.held = kept.into();
    Ok(())
}

/// The rows of `held` with event time in `[from, to)`.
fn rows_between(
    held: &VecDeque<RecordBatch>,
    time_col: Option<&str>,
    from: i64,
    to: i64,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut out = vec![];
    for b in held {
        let t = event_times(b, time_col)?;
        let keep: BooleanArray = t.iter().map(|t| Some(from <= *t && *t < to)).collect();
        match keep.true_count() {
            0 => {}
            n if n == b.num_rows() => out.push(b.clone()),
            _ => out.push(filter_record_batch(b, &keep)?),
        }
    }
    Ok(out)
}

/// The oldest event time held.
fn min_time(held: &VecDeque<RecordBatch>, time_col: Option<&str>) -> Result<Option<i64>, ArrowError> {
    let mut min = None;
    for b in held {
        for t in event_times(b, time_col)? {
            min = Some(min.map_or(t, |m: i64| m.min(t)));
        }
    }
    Ok(min)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// One event: key, partition, offset, event time.
    type Ev = (&'static str, i32, i64, i64);

    fn batch(evs: &[Ev]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("x", DataType::Float64, false),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
            Field::new(TIMESTAMP_COL, DataType::Int64, false),
        ]));
        let col = |f: fn(&Ev) -> i64| Int64Array::from(evs.iter().map(f).collect::<Vec<_>>());
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(evs.iter().map(|e| e.0).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(vec![0.0; evs.len()])),
                Arc::new(Int32Array::from(evs.iter().map(|e| e.1).collect::<Vec<_>>())),
                Arc::new(col(|e| e.2)),
                Arc::new(col(|e| e.3)),
            ],
        )
        .unwrap()
    }

    fn windows(reference: TimeReference, duration: i64, slide: i64, lateness: i64) -> TimeWindows {
        let shape = TimeShape {
            duration,
            slide,
            lateness,
        };
        TimeWindows::new(Some("k".into()), None, reference, shape)
    }

    /// What an evaluation is, for comparisons: key, window, position,
    /// number, sizes, late events.
    type Seen = (String, (i64, i64), (i32, i64), u64, usize, usize, u64);

    fn seen(d: &Due) -> Seen {
        let c = &d.coords;
        let w = c.window_ms.unwrap();
        (
            d.key.clone(),
            w,
            c.end,
            c.evaluation,
            c.reference_size,
            c.current_size,
            c.late_events.unwrap(),
        )
    }

    /// `w` fed the first `saved_at` events and its key states saved: the
    /// states, and the event a restart replays from (what they still need).
    fn saved(mut w: TimeWindows, evs: &[Ev], saved_at: usize) -> (Vec<KeySnapshot>, usize) {
        feed(&mut w, &evs[..saved_at], 3);
        let states = w.unsaved();
        w.saved(&states);
        let from = w.oldest_needed().get(&0).copied().unwrap_or(saved_at as i64);
        (states, from.min(saved_at as i64) as usize)
    }

    fn feed(w: &mut TimeWindows, evs: &[Ev], batch_size: usize) -> Vec<Seen> {
        evs.chunks(batch_size)
            .flat_map(|c| w.push(&batch(c)).unwrap())
            .map(|d| seen(&d))
            .collect()
    }

    /// Key `a` on partition 0 and `b` on partition 1, an event every 3 ms
    /// each (b shifted by 1 ms), with `late` events out of order.
    /// Offsets of the sample rows of a sampled evaluation's reference and current window.
    fn samples(d: &Due) -> (Vec<i64>, Vec<i64>) {
        let rows = |t: &[RecordBatch]| {
            let mut out = vec![];
            for b in t {
                let o = b.column_by_name(OFFSET_COL).unwrap().as_primitive::<Int64Type>();
                let c = b.column_by_name(super::super::sample::COUNTED_COL).unwrap();
                out.extend((0..b.num_rows()).filter(|i| c.is_null(*i)).map(|i| o.value(i)));
            }
            out
        };
        (rows(&d.reference), rows(&d.current))
    }

    /// An evaluation, and the offsets of its sample rows (reference, current).
    type SeenSampled = (Seen, (Vec<i64>, Vec<i64>));

    fn feed_sampled(w: &mut TimeWindows, evs: &[Ev], batch_size: usize) -> Vec<SeenSampled> {
        evs.chunks(batch_size)
            .flat_map(|c| w.push(&batch(c)).unwrap())
            .map(|d| (seen(&d), samples(&d)))
            .collect()
    }

    #[test]
    fn sampled_windows_evaluate_as_unsampled_ones_and_keep_their_sample_across_batching_and_restores() {
        let evs: Vec<Ev> = stream().into_iter().filter(|e| e.1 == 0).collect();
        let sampling = || Sampling::new(4, 3, None, vec![super::super::CountGroup::values(&["k"])]);
        let cases = [
            (TimeReference::First(5), 20),
            (TimeReference::Previous, 10),
            (TimeReference::FirstFor(25), 10),
        ];
        for (reference, slide) in cases {
            let fresh = || windows(reference.clone(), 20, slide, 0).sampled(sampling());
            let plain = feed(&mut windows(reference.clone(), 20, slide, 0), &evs, 3);
            let all = feed_sampled(&mut fresh(), &evs, 3);
            // The same evaluations, sizes counting every event; samples of at most 4.
            assert_eq!(
                all.iter().map(|a| a.0.clone()).collect::<Vec<_>>(),
                plain,
                "slide {slide}"
            );
            assert!(
                all.iter()
                    .all(|(s, (r, c))| r.len() == s.4.min(4) && c.len() == s.5.min(4)),
                "{all:?}"
            );
            assert_eq!(feed_sampled(&mut fresh(), &evs, 1), all, "slide {slide}: batching");
            for saved_at in (3..evs.len()).step_by(6) {
                let (states, from) = saved(fresh(), &evs, saved_at);
                let mut restored = fresh();
                restored.restore(states.clone());
                let last = saved_at as i64 - 1;
                let replayed: Vec<_> = feed_sampled(&mut restored, &evs[from..], 3)
                    .into_iter()
                    .filter(|s| s.0.2.1 > last)
                    .collect();
                let want: Vec<_> = all.iter().filter(|s| s.0.2.1 > last).cloned().collect();
                assert_eq!(replayed, want, "slide {slide}, saved at {saved_at}");
            }
        }
    }

    fn stream() -> Vec<Ev> {
        let mut out = vec![];
        for i in 0..60i64 {
            out.push(("a", 0, i, 3 * i));
            out.push(("b", 1, i, 3 * i + 1));
        }
        // Out of order by 7 ms on partition 0.
        out.push(("a", 0, 60, 190));
        out.push(("a", 0, 61, 183));
        out.push(("a", 0, 62, 200));
        out.push(("a", 0, 63, 230));
        out
    }

    #[test]
    fn tumbling_windows_close_at_the_first_event_past_their_end() {
        let mut w = windows(TimeReference::First(4), 30, 30, 0);
        let evs: Vec<Ev> = (0..25).map(|i| ("a", 0, i, 5 * i)).collect();
        let got = feed(&mut w, &evs, 100);
        // Reference: times 0..15; then windows [0,30) (2 events: 20, 25),
        // [30,60), [60,90), [90,120) closed by 30, 60, 90, 120.
        let want: Vec<Seen> = vec![
            ("a".into(), (0, 30), (0, 6), 1, 4, 2, 0),
            ("a".into(), (30, 60), (0, 12), 2, 4, 6, 0),
            ("a".into(), (60, 90), (0, 18), 3, 4, 6, 0),
            ("a".into(), (90, 120), (0, 24), 4, 4, 6, 0),
        ];
        assert_eq!(got, want);
        // Only the open window's rows (and the reference) are held.
        assert_eq!(w.fill(), (1, 4 + 1));
    }

    #[test]
    fn evaluations_do_not_depend_on_batching_or_on_how_partitions_interleave() {
        let evs = stream();
        for (reference, slide) in [(TimeReference::First(5), 20), (TimeReference::Previous, 10)] {
            let run = |evs: &[Ev], size| {
                let mut got = feed(&mut windows(reference.clone(), 20, slide, 0), evs, size);
                got.sort();
                got
            };
            let base = run(&evs, 1);
            assert!(base.len() > 10, "{base:?}");
            assert_eq!(base, run(&evs, 7));
            assert_eq!(base, run(&evs, evs.len()));
            // Partition 1 read well ahead of partition 0, then the reverse.
            let (p0, p1): (Vec<Ev>, Vec<Ev>) = evs.iter().partition(|e| e.1 == 0);
            assert_eq!(base, run(&[p1.clone(), p0.clone()].concat(), 5));
            assert_eq!(base, run(&[p0, p1].concat(), 5));
        }
    }

    #[test]
    fn late_events_are_counted_in_the_next_evaluation_not_added() {
        let evs = stream();
        let late = |lateness| {
            let got = feed(&mut windows(TimeReference::First(5), 20, 20, lateness), &evs, 4);
            got.iter().filter(|s| s.0 == "a").map(|s| s.6).sum::<u64>()
        };
        // 183 after 190 on partition 0: late without lateness, on time with 7 ms.
        assert_eq!(late(0), 1);
        assert_eq!(late(7), 0);
        let window = |lateness| {
            let got = feed(&mut windows(TimeReference::First(5), 20, 20, lateness), &evs, 4);
            let found = got.iter().find(|s| s.0 == "a" && s.1 == (180, 200)).cloned();
            found.unwrap_or_else(|| panic!("no window [180, 200) of a: {got:?}"))
        };
        // Late, 183 is left out of its window and reported by the key's
        // next evaluation, which is that very window's (it had not closed).
        assert_eq!((window(0).5, window(0).6), (1, 1));
        assert_eq!((window(7).5, window(7).6), (2, 0));
    }

    #[test]
    fn a_previous_reference_is_the_window_before_and_the_first_window_is_not_evaluated() {
        let evs: Vec<Ev> = (0..40).map(|i| ("a", 0, i, 5 * i)).collect();
        let got = feed(&mut windows(TimeReference::Previous, 50, 50, 0), &evs, 3);
        let want: Vec<Seen> = vec![
            ("a".into(), (50, 100), (0, 20), 1, 10, 10, 0),
            ("a".into(), (100, 150), (0, 30), 2, 10, 10, 0),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_first_reference_by_duration_takes_the_key_s_first_stretch_of_event_time() {
        let evs: Vec<Ev> = (0..25).map(|i| ("a", 0, i, 5 * i)).collect();
        // The first 50 ms (times 0..45: 10 events) are the reference; the
        // window [30, 60) holds 50 and 55 only.
        let want: Vec<Seen> = vec![
            ("a".into(), (30, 60), (0, 12), 1, 10, 2, 0),
            ("a".into(), (60, 90), (0, 18), 2, 10, 6, 0),
            ("a".into(), (90, 120), (0, 24), 3, 10, 6, 0),
        ];
        for size in [1, 4, 25] {
            assert_eq!(
                feed(&mut windows(TimeReference::FirstFor(50), 30, 30, 0), &evs, size),
                want
            );
        }
    }

    /// The count windows' restart property, for event time: saved at any
    /// batch, killed at any later point, restored and replayed from the
    /// committed offset, the evaluations after the last one delivered are
    /// exactly an uninterrupted run's, numbers and late counts included.
    #[test]
    fn a_restore_and_replay_from_the_committed_offset_keeps_the_evaluations() {
        let evs: Vec<Ev> = stream().into_iter().filter(|e| e.1 == 0).collect();
        let cases = [
            (TimeReference::First(5), 20),
            (TimeReference::Previous, 10),
            (TimeReference::FirstFor(25), 10),
        ];
        for (reference, slide) in cases {
            let fresh = || windows(reference.clone(), 20, slide, 0);
            let all = feed(&mut fresh(), &evs, 3);
            for saved_at in (3..evs.len()).step_by(3) {
                let (states, from) = saved(fresh(), &evs, saved_at);
                for read in (saved_at..=evs.len()).step_by(5) {
                    let mut restored = fresh();
                    restored.restore(states.clone());
                    let last = read as i64 - 1;
                    let replayed: Vec<Seen> = feed(&mut restored, &evs[from..], 3)
                        .into_iter()
                        .filter(|s| s.2.1 > last)
                        .collect();
                    let want: Vec<Seen> = all.iter().filter(|s| s.2.1 > last).cloned().collect();
                    assert_eq!(replayed, want, "slide {slide}, saved at {saved_at}, read to {read}");
                }
            }
        }
    }
}
