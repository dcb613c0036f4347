//! Count windows: the reference is the first `size` events of a key (or a
//! fixed set of batches from a file); the current window holds the last
//! `size` events after the reference and is evaluated every `slide` events
//! once full. Evaluation points depend only on event counts, never on how
//! the stream was cut into batches.

use std::collections::{BTreeMap, HashMap, VecDeque};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::arrow::error::ArrowError;

use super::*;

#[derive(Debug, Default)]
struct KeyState {
    reference: Vec<RecordBatch>,
    ref_rows: usize,
    current: VecDeque<RecordBatch>,
    cur_rows: usize,
    since_eval: usize,
    evaluations: u64,
    /// Oldest offset per partition of the current window at the last
    /// evaluation. A replay must start there, not at the oldest row held
    /// now: the window then fills exactly at the last evaluation's end, and
    /// later evaluations fall where an uninterrupted run puts them.
    anchor: BTreeMap<i32, i64>,
    /// Restored from a snapshot ([`Windows::restore`]): the replay refills
    /// the current window from `anchor` without evaluating (that evaluation
    /// was made and delivered before the snapshot), skipping this key's
    /// rows before the anchor, which other keys of the partition need.
    refilling: bool,
    saved: SavedMark,
}

/// Count windows of a pipeline, all keys.
#[derive(Debug)]
pub struct CountWindows {
    key_col: Option<String>,
    time_col: Option<String>,
    reference: ReferenceMode,
    size: usize,
    slide: usize,
    keys: HashMap<String, KeyState>,
}

impl CountWindows {
    /// `time_col`: event-time column (Timestamp(ms) or Int64 ms), if any.
    pub fn new(
        key_col: Option<String>,
        time_col: Option<String>,
        reference: ReferenceMode,
        size: usize,
        slide: usize,
    ) -> Self {
        Self {
            key_col,
            time_col,
            reference,
            size,
            slide: slide.max(1),
            keys: HashMap::new(),
        }
    }

    /// Keys, and events held in their reference and current windows.
    pub fn fill(&self) -> (usize, usize) {
        let held = self.keys.values().map(|k| k.ref_rows + k.cur_rows).sum();
        (self.keys.len(), held)
    }

    /// Drops every key's windows (a rebalance: they are rebuilt by replay).
    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// Number of keys with state.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// What the windows' evaluation points depend on: snapshots saved under
    /// another configuration are not restored.
    pub fn config_id(&self) -> String {
        let reference = match &self.reference {
            ReferenceMode::First(n) => format!("first:{n}"),
            ReferenceMode::Fixed(b) => format!("fixed:{}", b.iter().map(|b| b.num_rows()).sum::<usize>()),
        };
        format!(
            "key={};reference={reference};size={};slide={}",
            self.key_col.as_deref().unwrap_or(""),
            self.size,
            self.slide
        )
    }

    /// Snapshots of the keys evaluated since their last saved one.
    pub fn unsaved(&self) -> Vec<KeySnapshot> {
        let mut out: Vec<KeySnapshot> = self
            .keys
            .iter()
            .filter(|(_, st)| st.evaluations > st.saved.evaluations)
            .map(|(k, st)| {
                let reference_rows = match self.reference {
                    ReferenceMode::First(n) if st.ref_rows == n => n,
                    _ => 0,
                };
                KeySnapshot {
                    time: None,
                    key: k.clone(),
                    evaluations: st.evaluations,
                    anchor: st.anchor.clone(),
                    reference_rows,
                    reference: if reference_rows > 0 && !st.saved.reference {
                        st.reference.clone()
                    } else {
                        vec![]
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// `snaps` are stored: not returned by [`Self::unsaved`] again.
    pub fn saved(&mut self, snaps: &[KeySnapshot]) {
        for s in snaps {
            if let Some(st) = self.keys.get_mut(&s.key) {
                st.saved.record(s);
            }
        }
    }

    /// Seeds keys from snapshots before a replay (after [`Self::clear`]).
    /// A `first` reference comes with the snapshot; without it (not saved,
    /// or not read back) it is rebuilt from the key's first replayed rows.
    pub fn restore(&mut self, snaps: impl IntoIterator<Item = KeySnapshot>) {
        for s in snaps.into_iter().filter(|s| s.evaluations > 0) {
            let rows: usize = s.reference.iter().map(|b| b.num_rows()).sum();
            let with_reference = matches!(self.reference, ReferenceMode::First(n) if rows == n);
            self.keys.insert(
                s.key,
                KeyState {
                    evaluations: s.evaluations,
                    saved: SavedMark {
                        evaluations: s.evaluations,
                        reference: with_reference,
                    },
                    anchor: s.anchor,
                    refilling: true,
                    ref_rows: if with_reference { rows } else { 0 },
                    reference: if with_reference { s.reference } else { vec![] },
                    ..Default::default()
                },
            );
        }
    }

    /// The rows of `batch` these windows will use: without those of restored
    /// keys from before their anchor, which a replay reads again for other
    /// keys of the partition. The label join takes only these, since events
    /// before a restored key's anchor may not have their labels read again.
    pub fn rows_needed(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        if !self.keys.values().any(|st| st.refilling) {
            return Ok(batch.clone());
        }
        let (Some(p), Some(o)) = (batch.column_by_name(PARTITION_COL), batch.column_by_name(OFFSET_COL)) else {
            return Ok(batch.clone());
        };
        let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
        let keys = self.key_strings(batch)?;
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let k = keys.map_or("", |k| key_at(k, i));
                let skip = self
                    .keys
                    .get(k)
                    .is_some_and(|st| st.refilling && st.anchor.get(&p.value(i)).is_some_and(|a| o.value(i) < *a));
                Some(!skip)
            })
            .collect();
        filter_record_batch(batch, &keep)
    }

    /// Adds a scored batch; returns the evaluations that became due, in order.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<Due>, ArrowError> {
        let mut due = vec![];
        for (key, rows) in self.split_by_key(batch)? {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows))?
            };
            self.push_key(key, part, &mut due)?;
        }
        arrival_order(batch, &mut due);
        Ok(due)
    }

    /// The key column as text; `None` when the pipeline is not keyed.
    fn key_strings(&self, batch: &RecordBatch) -> Result<Option<ArrayRef>, ArrowError> {
        key_strings(self.key_col.as_deref(), batch)
    }

    fn split_by_key(&self, batch: &RecordBatch) -> Result<Vec<(String, Vec<u32>)>, ArrowError> {
        let Some(strings) = self.key_strings(batch)? else {
            return Ok(vec![(String::new(), (0..batch.num_rows() as u32).collect())]);
        };
        let s = strings.as_string::<i32>();
        let mut order: Vec<String> = vec![];
        let mut groups: HashMap<&str, Vec<u32>> = HashMap::new();
        for i in 0..s.len() {
            let k = key_at(s, i);
            groups
                .entry(k)
                .or_insert_with(|| {
                    order.push(k.to_string());
                    vec![]
                })
                .push(i as u32);
        }
        Ok(order
            .into_iter()
            .map(|k| {
                let rows = groups.remove(k.as_str()).unwrap_or_default();
                (k, rows)
            })
            .collect())
    }

    fn push_key(&mut self, key: String, mut part: RecordBatch, due: &mut Vec<Due>) -> Result<(), ArrowError> {
        let (size, slide) = (self.size, self.slide);
        let st = self.keys.entry(key.clone()).or_default();
        if let ReferenceMode::First(n) = self.reference
            && st.ref_rows < n
        {
            let take = (n - st.ref_rows).min(part.num_rows());
            st.reference.push(part.slice(0, take));
            st.ref_rows += take;
            part = part.slice(take, part.num_rows() - take);
        }
        if st.refilling && part.num_rows() > 0 {
            part = rows_from(&part, &st.anchor)?;
        }
        while part.num_rows() > 0 {
            // Rows until the next evaluation point.
            let need = if st.cur_rows < size {
                size - st.cur_rows
            } else {
                slide - st.since_eval
            };
            let take = need.min(part.num_rows());
            st.current.push_back(part.slice(0, take));
            st.cur_rows += take;
            if st.evaluations > 0 && !st.refilling {
                st.since_eval += take;
            }
            part = part.slice(take, part.num_rows() - take);
            trim_front(&mut st.current, &mut st.cur_rows, size);
            let full = st.cur_rows == size;
            if full && st.refilling {
                // Back where the snapshot was taken.
                st.refilling = false;
                continue;
            }
            let first = full && st.evaluations == 0;
            if full && (first || st.since_eval >= slide) {
                st.since_eval = 0;
                st.evaluations += 1;
                let reference = match &self.reference {
                    ReferenceMode::First(_) => st.reference.clone(),
                    ReferenceMode::Fixed(b) => b.clone(),
                };
                let current: Vec<RecordBatch> = st.current.iter().cloned().collect();
                let coords = coords(&reference, &current, self.time_col.as_deref(), st.evaluations);
                st.anchor = coords
                    .current_offsets
                    .iter()
                    .map(|(p, (first, _))| (*p, *first))
                    .collect();
                due.push(Due {
                    key: key.clone(),
                    reference,
                    current,
                    coords,
                });
            }
        }
        Ok(())
    }

    /// Per partition, the smallest offset any window still holds: where a
    /// restart must start reading to rebuild every window.
    pub fn oldest_needed(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> = BTreeMap::new();
        for st in self.keys.values() {
            lower_to(&mut out, st.anchor.iter().map(|(p, o)| (*p, *o)));
            let reference = if st.saved.reference { &[][..] } else { &st.reference[..] };
            for b in reference.iter().chain(st.current.iter()) {
                lower_to(&mut out, partition_offsets(b));
            }
        }
        out
    }
}

/// Puts the evaluations of a batch in the order their last events arrived
/// in it, as time windows give theirs. `due` holds each key's evaluations in
/// order, key after key; offsets of different partitions say nothing of
/// arrival, so they cannot order them (sorting by offset put a key's
/// evaluations out of order when a batch held several partitions).
fn arrival_order(batch: &RecordBatch, due: &mut [Due]) {
    if due.windows(2).all(|w| w[0].key == w[1].key) {
        return;
    }
    let (Some(p), Some(o)) = (batch.column_by_name(PARTITION_COL), batch.column_by_name(OFFSET_COL)) else {
        return;
    };
    let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
    let row: HashMap<(i32, i64), usize> = (0..batch.num_rows()).map(|i| ((p.value(i), o.value(i)), i)).collect();
    // Stable: a key's evaluations end at rows in arrival order already.
    due.sort_by_key(|d| row.get(&d.coords.end).copied().unwrap_or(usize::MAX));
}

/// Drops rows from the front until at most `size` remain.
fn trim_front(q: &mut VecDeque<RecordBatch>, rows: &mut usize, size: usize) {
    while *rows > size {
        let excess = *rows - size;
        let front = q.front().expect("rows > 0 means a batch");
        if front.num_rows() <= excess {
            *rows -= front.num_rows();
            q.pop_front();
        } else {
            let f = q.pop_front().expect("checked");
            q.push_front(f.slice(excess, f.num_rows() - excess));
            *rows -= excess;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(keys: &[&str], first_offset: i64) -> RecordBatch {
        let n = keys.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("x", DataType::Float64, false),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
            Field::new(TIMESTAMP_COL, DataType::Int64, false),
        ]));
        let offs: Vec<i64> = (0..n as i64).map(|i| first_offset + i).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Float64Array::from(vec![0.0; n])),
                Arc::new(Int32Array::from(vec![0; n])),
                Arc::new(Int64Array::from(offs.clone())),
                Arc::new(Int64Array::from(offs)),
            ],
        )
        .unwrap()
    }

    fn run(batch_size: usize, total: usize) -> Vec<(String, (i32, i64), usize, usize)> {
        let mut w = CountWindows::new(Some("k".into()), None, ReferenceMode::First(10), 5, 2);
        let keys: Vec<&str> = (0..total).map(|i| if i % 3 == 0 { "a" } else { "b" }).collect();
        let mut out = vec![];
        for (c, chunk) in keys.chunks(batch_size).enumerate() {
            for d in w.push(&batch(chunk, (c * batch_size) as i64)).unwrap() {
                out.push((d.key, d.coords.end, d.coords.reference_size, d.coords.current_size));
            }
        }
        out
    }

    /// Evaluations in the order their last events arrived, each key's in
    /// its own order, when a batch interleaves partitions whose offsets say
    /// nothing of arrival (partition 0 is far ahead of partition 1).
    #[test]
    fn a_batch_of_several_partitions_gives_evaluations_in_arrival_order() {
        for keys in [
            vec!["a"; 40],
            (0..40).map(|i| if i % 3 == 0 { "a" } else { "b" }).collect(),
        ] {
            let b = batch(&keys, 0);
            let parts: Vec<i32> = (0..40).map(|i| i % 2).collect();
            let offs: Vec<i64> = (0..40).map(|i| if i % 2 == 0 { 1000 + i } else { i }).collect();
            let mut cols = b.columns().to_vec();
            cols[2] = Arc::new(Int32Array::from(parts.clone()));
            cols[3] = Arc::new(Int64Array::from(offs.clone()));
            let b = RecordBatch::try_new(b.schema(), cols).unwrap();
            let mut w = CountWindows::new(Some("k".into()), None, ReferenceMode::First(2), 3, 1);
            let due = w.push(&b).unwrap();
            let rows: Vec<usize> = due
                .iter()
                .map(|d| (0..40).find(|&i| (parts[i], offs[i]) == d.coords.end).unwrap())
                .collect();
            assert!(rows.windows(2).all(|r| r[0] < r[1]), "{rows:?}");
            for key in ["a", "b"] {
                let numbers: Vec<u64> = due
                    .iter()
                    .filter(|d| d.key == key)
                    .map(|d| d.coords.evaluation)
                    .collect();
                assert!(
                    numbers.iter().copied().eq(1..=numbers.len() as u64),
                    "{key}: {numbers:?}"
                );
            }
            assert_eq!(due.len(), if keys[1] == "a" { 36 } else { 10 + 22 });
        }
    }

    #[test]
    fn evaluation_points_do_not_depend_on_batching() {
        let a = run(1, 90);
        assert_eq!(a, run(7, 90));
        assert_eq!(a, run(90, 90));
        assert!(a.iter().all(|d| d.2 == 10 && d.3 == 5));
        // key a: 30 events, 10 reference, 20 current -> evaluations at 15, 17, 19, …, 29 = 8.
        assert_eq!(a.iter().filter(|d| d.0 == "a").count(), 8);
    }

    /// A restart restores the key states saved at some earlier point (the
    /// last batch whose evaluations were delivered), replays from the
    /// offset committed then (`oldest_needed`, or the next offset) and
    /// suppresses evaluations ending at or before the last offset read: at
    /// every pair of points, the evaluations after them are exactly those
    /// of an uninterrupted run, with the same numbers — for keys sharing a
    /// partition at different rates, a fixed or a first-events reference
    /// (read back with the state, not replayed), and sliding windows that
    /// overlap.
    #[test]
    fn a_restore_and_replay_from_the_committed_offset_keeps_the_evaluation_points() {
        let cases = [
            (ReferenceMode::Fixed(vec![batch(&["a"; 4], 0)]), 6, 4),
            (ReferenceMode::Fixed(vec![batch(&["a"; 4], 0)]), 5, 5),
            (ReferenceMode::Fixed(vec![batch(&["a"; 4], 0)]), 4, 1),
            (ReferenceMode::First(3), 6, 4),
            (ReferenceMode::First(5), 4, 3),
        ];
        // Three keys in one partition, at different rates.
        let keys: Vec<&str> = (0..120)
            .map(|i| match i % 6 {
                0 | 2 | 4 => "a",
                1 | 5 => "b",
                _ => "c",
            })
            .collect();
        for (reference, size, slide) in cases {
            let fresh = || CountWindows::new(Some("k".into()), None, reference.clone(), size, slide);
            let ends = |w: &mut CountWindows, from: usize| -> Vec<(String, i64, u64)> {
                let mut out = vec![];
                for (c, chunk) in keys[from..].chunks(3).enumerate() {
                    for d in w.push(&batch(chunk, (from + c * 3) as i64)).unwrap() {
                        out.push((d.key, d.coords.end.1, d.coords.evaluation));
                    }
                }
                out
            };
            let all = ends(&mut fresh(), 0);
            assert!(all.len() > 20, "{all:?}");
            for saved_at in (3..120).step_by(3) {
                // Saved, and committed, after the batch ending at `saved_at`.
                let mut w = fresh();
                for (c, chunk) in keys[..saved_at].chunks(3).enumerate() {
                    w.push(&batch(chunk, (c * 3) as i64)).unwrap();
                }
                let states = w.unsaved();
                // Saved: a saved `first` reference is no longer replayed.
                w.saved(&states);
                let from = w
                    .oldest_needed()
                    .get(&0)
                    .map_or(saved_at as i64, |n| (*n).min(saved_at as i64)) as usize;
                // Killed after delivering up to `read`, before the next save.
                for read in (saved_at..=120).step_by(9) {
                    let mut restored = fresh();
                    restored.restore(states.clone());
                    let last = read as i64 - 1;
                    let replayed: Vec<_> = ends(&mut restored, from)
                        .into_iter()
                        .filter(|(_, end, _)| *end > last)
                        .collect();
                    let want: Vec<_> = all.iter().filter(|(_, end, _)| *end > last).cloned().collect();
                    assert_eq!(
                        replayed, want,
                        "size {size}, slide {slide}, saved at {saved_at}, read to {read}"
                    );
                }
            }
        }
    }

    /// A restored key's rows before its anchor are not needed; other keys'
    /// rows are, and after the refill nothing is dropped.
    #[test]
    fn rows_needed_drops_restored_keys_rows_before_their_anchor() {
        let mut w = CountWindows::new(
            Some("k".into()),
            None,
            ReferenceMode::Fixed(vec![batch(&["a"; 2], 0)]),
            2,
            1,
        );
        let b = batch(&["a", "b", "a", "b", "a", "a"], 10);
        assert_eq!(w.rows_needed(&b).unwrap().num_rows(), 6);
        w.restore([KeySnapshot {
            key: "a".into(),
            evaluations: 3,
            anchor: BTreeMap::from([(0, 14)]),
            reference_rows: 0,
            reference: vec![],
            time: None,
        }]);
        let kept = w.rows_needed(&b).unwrap();
        let offs: Vec<i64> = kept
            .column_by_name(OFFSET_COL)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(offs, [11, 13, 14, 15]);
        w.push(&kept).unwrap();
        assert_eq!(w.rows_needed(&b).unwrap().num_rows(), 6);
    }

    /// Saved states are not returned again; new evaluations make them due.
    #[test]
    fn unsaved_lists_keys_evaluated_since_their_last_save() {
        let mut w = CountWindows::new(Some("k".into()), None, ReferenceMode::First(2), 2, 1);
        w.push(&batch(&["a", "a", "a", "a", "b"], 0)).unwrap();
        let s = w.unsaved();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].key.as_str(), s[0].evaluations), ("a", 1));
        assert_eq!(s[0].anchor, BTreeMap::from([(0, 2)]));
        w.saved(&s);
        assert!(w.unsaved().is_empty());
        w.push(&batch(&["a"], 5)).unwrap();
        assert_eq!(w.unsaved()[0].evaluations, 2);
    }

    /// A `first` reference holds the commit at the key's first event until
    /// it is saved with the key's state; then only the current window counts.
    #[test]
    fn oldest_needed_tracks_reference_start_until_it_is_saved() {
        let mut w = CountWindows::new(None, None, ReferenceMode::First(3), 2, 1);
        w.push(&batch(&["x"; 10], 100)).unwrap();
        assert_eq!(w.oldest_needed().get(&0), Some(&100));
        let s = w.unsaved();
        assert_eq!((s[0].reference_rows, s[0].reference.len()), (3, 1));
        w.saved(&s);
        assert_eq!(w.oldest_needed().get(&0), Some(&108));
        w.push(&batch(&["x"], 110)).unwrap();
        let s = w.unsaved();
        assert_eq!((s[0].reference_rows, s[0].reference.len()), (3, 0), "saved once");
        // Restored with it, the reference is not taken from the replay.
        let mut r = CountWindows::new(None, None, ReferenceMode::First(3), 2, 1);
        r.restore(w.unsaved().into_iter().map(|mut k| {
            k.reference = vec![batch(&["x"; 3], 100)];
            k
        }));
        let due = r.push(&batch(&["x"; 3], 109)).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].coords.end, (0, 111));
        assert_eq!(due[0].reference[0].num_rows(), 3);
    }
}
