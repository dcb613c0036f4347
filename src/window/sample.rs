//! Windows of any size in bounded memory (`window.max_sample`).
//!
//! A window keeps, for the tests that need raw values (KS, MMD, distances,
//! out-of-range, CBPE), a sample of at most `max` of its events: those with
//! the smallest seeded hash of their event id (the schema's `event_id`, else
//! partition and offset), ties broken by partition and offset. That is a
//! uniform sample without replacement (bottom-k sampling: Cohen & Kaplan,
//! "Summarizing data using bottom-k sketches", PODC 2007) that depends only
//! on which events the window holds: the same in a run, its replay and after
//! a restart, whatever the batching. The bottom-k of a union is the bottom-k
//! of its parts' bottom-k, so a window is built from panes (its stretches of
//! `gcd(duration, slide)`), each keeping at most `2·max` rows.
//!
//! The categorical tests (chi-square, label shift, error rate, missing
//! share, unseen categories, dead letters) stay exact: each pane counts,
//! over every event, the value tuples of the column groups those tests read
//! ([`CountGroup`]). A window reaches the detectors in *table form*: its
//! sample rows (`_weight` 1, `_counted` NULL), then per group the events
//! not in the sample as one row per distinct tuple (`_weight` = how many,
//! `_counted` = the group's tag, the other columns NULL). A raw-value test
//! reads `FILTER (WHERE _counted IS NULL)`; a counted test reads the sample
//! and its group's rows, weighted: together they are every event once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches, is_not_null, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::id_hash::id_hash;

/// Column of the windows table: how many events a row stands for.
pub const WEIGHT_COL: &str = "_weight";
/// Column of the windows table: NULL on sample rows, the group's tag on count rows.
pub const COUNTED_COL: &str = "_counted";
/// Tag of the count rows that only count the window's events.
const EVENTS_TAG: &str = "events";

/// Columns counted together, exactly, over whole windows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountGroup {
    pub columns: Vec<String>,
    /// Count only whether each value is missing (NULL, or NaN in a float
    /// column), not the value itself (for `missing_share`).
    pub presence: bool,
}

impl CountGroup {
    /// The values of `columns`, jointly.
    pub fn values(columns: &[&str]) -> Self {
        Self {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            presence: false,
        }
    }

    /// Whether `column` is missing.
    pub fn presence(column: &str) -> Self {
        Self {
            columns: vec![column.to_string()],
            presence: true,
        }
    }

    /// The group's `_counted` value.
    pub fn tag(&self) -> String {
        let kind = if self.presence { "missing" } else { "values" };
        format!("{kind}:{}", self.columns.join(","))
    }
}

/// How windows are sampled, and what they count.
#[derive(Debug)]
pub struct Sampling {
    pub max: usize,
    pub seed: u64,
    /// The schema's event id; partition and offset identify events without one.
    pub id_col: Option<String>,
    pub groups: Vec<CountGroup>,
    /// Per group, its row converter, made from the first batch's types;
    /// None for a group whose columns these windows lack.
    converters: std::sync::OnceLock<Vec<Option<RowConverter>>>,
}

impl Clone for Sampling {
    fn clone(&self) -> Self {
        Self::new(self.max, self.seed, self.id_col.clone(), self.groups.clone())
    }
}

impl Sampling {
    pub fn new(max: usize, seed: u64, id_col: Option<String>, mut groups: Vec<CountGroup>) -> Self {
        groups.sort();
        groups.dedup();
        Self {
            max: max.max(1),
            seed,
            id_col,
            groups,
            converters: std::sync::OnceLock::new(),
        }
    }

    /// What evaluation points and samples depend on (for snapshots).
    pub fn config_id(&self) -> String {
        format!("max_sample={};sample_seed={}", self.max, self.seed)
    }

    fn converters(&self, schema: &Schema) -> Result<&[Option<RowConverter>], ArrowError> {
        if let Some(c) = self.converters.get() {
            return Ok(c);
        }
        let mut made = vec![];
        for g in &self.groups {
            let types: Option<Vec<DataType>> = g
                .columns
                .iter()
                .map(|c| schema.field_with_name(c).ok().map(|f| f.data_type().clone()))
                .collect();
            made.push(match types {
                Some(_) if g.presence => Some(RowConverter::new(vec![SortField::new(DataType::Boolean)])?),
                Some(t) => Some(RowConverter::new(t.into_iter().map(SortField::new).collect())?),
                None => None,
            });
        }
        Ok(self.converters.get_or_init(|| made))
    }

    /// Each row's sample key: seeded hash of its id, partition, offset.
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<SampleKey>, ArrowError> {
        let (p, o) = crate::schema::positions(batch, "to sample windows by")?;
        let ids = match &self.id_col {
            Some(c) => {
                let id = batch.column_by_name(c);
                let id = id.ok_or_else(|| ArrowError::SchemaError(format!("no column `{c}` to sample windows by")))?;
                Some(cast(id, &DataType::Utf8)?)
            }
            None => None,
        };
        let ids = ids.as_ref().map(|a| a.as_string::<i32>());
        Ok((0..batch.num_rows())
            .map(|i| {
                let (partition, offset) = (p.value(i), o.value(i));
                let hash = match ids {
                    Some(ids) if ids.is_valid(i) => id_hash(ids.value(i).as_bytes(), self.seed),
                    _ => {
                        // On the stack: this runs for every event.
                        let mut at = [0u8; 12];
                        at[..4].copy_from_slice(&partition.to_le_bytes());
                        at[4..].copy_from_slice(&offset.to_le_bytes());
                        id_hash(&at, self.seed)
                    }
                };
                SampleKey {
                    hash,
                    partition,
                    offset,
                }
            })
            .collect())
    }
}

/// The order of the sample: smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SampleKey {
    hash: u64,
    partition: i32,
    offset: i64,
}

/// A stretch of events in bounded memory: its bottom-k rows, counts per
/// group, and where its events sit.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    rows: Vec<RecordBatch>,
    keys: Vec<SampleKey>,
    events: u64,
    /// Per group of the sampling: encoded tuple → events.
    counts: Vec<HashMap<Box<[u8]>, u64>>,
    /// Per presence group: a present value (what its count rows show).
    present: Vec<Option<ArrayRef>>,
    /// Per partition, the first and last offset of the events added.
    pub offsets: BTreeMap<i32, (i64, i64)>,
    /// The first and last event time added.
    pub times: Option<(i64, i64)>,
}

impl Summary {
    /// Events added.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Rows held (at most twice the sample size).
    pub fn held(&self) -> usize {
        self.keys.len()
    }

    /// Adds `batch`, whose rows have event times `times`.
    pub fn add(&mut self, s: &Sampling, batch: &RecordBatch, times: &[i64]) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = s.keys(batch)?;
        for (k, t) in keys.iter().zip(times) {
            widen(
                self.offsets.entry(k.partition).or_insert((k.offset, k.offset)),
                (k.offset, k.offset),
            );
            widen(self.times.get_or_insert((*t, *t)), (*t, *t));
        }
        self.count(s, batch)?;
        self.events += batch.num_rows() as u64;
        self.rows.push(batch.clone());
        self.keys.extend(keys);
        if self.keys.len() > 2 * s.max {
            self.keep_smallest(s.max)?;
        }
        Ok(())
    }

    fn count(&mut self, s: &Sampling, batch: &RecordBatch) -> Result<(), ArrowError> {
        let converters = s.converters(&batch.schema())?;
        self.counts.resize_with(s.groups.len(), HashMap::new);
        self.present.resize(s.groups.len(), None);
        for (gi, (g, conv)) in s.groups.iter().zip(converters).enumerate() {
            let Some(conv) = conv else { continue };
            let cols = group_columns(g, batch)?;
            if g.presence && self.present[gi].is_none() {
                let present = cols[0].as_boolean();
                if let Some(i) = (0..present.len()).find(|i| present.value(*i)) {
                    // Copied out: a slice would keep the whole batch alive.
                    let col = batch.column_by_name(&g.columns[0]).expect("checked");
                    self.present[gi] = Some(take(col, &UInt32Array::from(vec![i as u32]), None)?);
                }
            }
            let rows = conv.convert_columns(&cols)?;
            let counts = &mut self.counts[gi];
            for r in rows.iter() {
                match counts.get_mut(r.as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(r.as_ref().into(), 1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the `k` rows with the smallest keys.
    fn keep_smallest(&mut self, k: usize) -> Result<(), ArrowError> {
        let (batch, keys) = smallest(&self.rows, &self.keys, k)?;
        self.rows = vec![batch];
        self.keys = keys;
        Ok(())
    }

    /// Adds another summary's events (a window's panes, merged).
    fn merge(&mut self, o: &Summary) {
        self.rows.extend(o.rows.iter().cloned());
        self.keys.extend(&o.keys);
        self.events += o.events;
        self.counts
            .resize_with(o.counts.len().max(self.counts.len()), HashMap::new);
        self.present.resize(o.present.len().max(self.present.len()), None);
        for (gi, c) in o.counts.iter().enumerate() {
            for (k, n) in c {
                *self.counts[gi].entry(k.clone()).or_default() += n;
            }
            if self.present[gi].is_none() {
                self.present[gi] = o.present[gi].clone();
            }
        }
        for (p, range) in &o.offsets {
            widen(self.offsets.entry(*p).or_insert(*range), *range);
        }
        if let Some(range) = o.times {
            widen(self.times.get_or_insert(range), range);
        }
    }

    /// The merged summary of `parts` (a window's panes).
    pub fn union<'a>(parts: impl IntoIterator<Item = &'a Summary>) -> Summary {
        let mut out = Summary::default();
        for p in parts {
            out.merge(p);
        }
        out
    }

    /// The window in table form (see the module's doc); None when it has no event.
    pub fn table(&self, s: &Sampling) -> Result<Option<Vec<RecordBatch>>, ArrowError> {
        if self.events == 0 {
            return Ok(None);
        }
        let (sample, _) = smallest(&self.rows, &self.keys, s.max)?;
        let schema = table_schema(&sample.schema());
        let n = sample.num_rows();
        let mut cols = sample.columns().to_vec();
        cols.push(Arc::new(UInt64Array::from(vec![1u64; n])));
        cols.push(new_null_array(&DataType::Utf8, n));
        let mut out = vec![RecordBatch::try_new(schema.clone(), cols)?];
        let converters = s.converters(&sample.schema())?;
        for (gi, (g, conv)) in s.groups.iter().zip(converters).enumerate() {
            let (Some(conv), Some(counts)) = (conv, self.counts.get(gi)) else {
                continue;
            };
            let mut rest = counts.clone();
            for r in conv.convert_columns(&group_columns(g, &sample)?)?.iter() {
                if let Some(c) = rest.get_mut(r.as_ref()) {
                    *c = c.saturating_sub(1);
                }
            }
            out.extend(self.count_rows(&schema, g, conv, rest, self.present.get(gi).cloned().flatten())?);
        }
        let rest = self.events - n as u64;
        if rest > 0 {
            let nulls = schema.fields()[..schema.fields().len() - 2]
                .iter()
                .map(|f| new_null_array(f.data_type(), 1));
            let mut cols: Vec<ArrayRef> = nulls.collect();
            cols.push(Arc::new(UInt64Array::from(vec![rest])));
            cols.push(Arc::new(StringArray::from(vec![EVENTS_TAG])));
            out.push(RecordBatch::try_new(schema, cols)?);
        }
        Ok(Some(out))
    }

    /// One row per tuple of `g` still to count.
    fn count_rows(
        &self,
        schema: &SchemaRef,
        g: &CountGroup,
        conv: &RowConverter,
        rest: HashMap<Box<[u8]>, u64>,
        present: Option<ArrayRef>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let mut rest: Vec<(Box<[u8]>, u64)> = rest.into_iter().filter(|(_, n)| *n > 0).collect();
        if rest.is_empty() {
            return Ok(None);
        }
        rest.sort(); // deterministic rows
        let parser = conv.parser();
        let values = conv.convert_rows(rest.iter().map(|(k, _)| parser.parse(k)))?;
        let values = if g.presence {
            // present → the group's present value, missing → NULL.
            let flags = values[0].as_boolean();
            let idx: UInt32Array = flags.iter().map(|f| f.filter(|f| *f).map(|_| 0u32)).collect();
            match present {
                Some(p) => vec![take(&p, &idx, None)?],
                None => vec![new_null_array(
                    schema.field_with_name(&g.columns[0])?.data_type(),
                    idx.len(),
                )],
            }
        } else {
            values
        };
        let n = rest.len();
        let mut cols = vec![];
        for f in &schema.fields()[..schema.fields().len() - 2] {
            cols.push(match g.columns.iter().position(|c| c == f.name()) {
                Some(i) => values[i].clone(),
                None => new_null_array(f.data_type(), n),
            });
        }
        cols.push(Arc::new(UInt64Array::from_iter_values(rest.iter().map(|(_, c)| *c))));
        cols.push(Arc::new(StringArray::from(vec![g.tag(); n])));
        Ok(Some(RecordBatch::try_new(schema.clone(), cols)?))
    }

    /// A summary of a window given in table form (a saved reference).
    pub fn from_table(s: &Sampling, table: &[RecordBatch]) -> Result<Summary, ArrowError> {
        let mut out = Summary::default();
        let mut rest_events = 0;
        for b in table {
            let (Some(w), Some(c)) = (b.column_by_name(WEIGHT_COL), b.column_by_name(COUNTED_COL)) else {
                return Err(ArrowError::SchemaError(
                    "a saved sampled window lacks its count columns".into(),
                ));
            };
            let (w, c) = (w.as_primitive::<UInt64Type>(), c.as_string::<i32>());
            let sample: BooleanArray = c.iter().map(|t| Some(t.is_none())).collect();
            let rows = datafusion::arrow::compute::filter_record_batch(b, &sample)?;
            let rows = rows.project(&(0..rows.num_columns() - 2).collect::<Vec<_>>())?;
            let times = vec![0; rows.num_rows()];
            out.add(s, &rows, &times)?;
            for i in (0..b.num_rows()).filter(|i| c.is_valid(*i)) {
                let tag = c.value(i);
                if tag == EVENTS_TAG {
                    rest_events += w.value(i);
                    continue;
                }
                out.add_counted(s, b, i, tag, w.value(i))?;
            }
        }
        out.events += rest_events;
        out.times = None;
        Ok(out)
    }

    /// Count row `i` of `b` (of group `tag`, standing for `n` events).
    fn add_counted(&mut self, s: &Sampling, b: &RecordBatch, i: usize, tag: &str, n: u64) -> Result<(), ArrowError> {
        let converters = s.converters(&b.schema())?;
        let Some(gi) = s.groups.iter().position(|g| g.tag() == tag) else {
            return Ok(());
        };
        let (g, Some(conv)) = (&s.groups[gi], &converters[gi]) else {
            return Ok(());
        };
        let row = datafusion::arrow::compute::take_record_batch(b, &UInt32Array::from(vec![i as u32]))?;
        let cols = group_columns(g, &row)?;
        if g.presence && cols[0].as_boolean().value(0) && self.present[gi].is_none() {
            self.present[gi] = Some(row.column_by_name(&g.columns[0]).expect("checked").clone());
        }
        let key: Box<[u8]> = conv.convert_columns(&cols)?.row(0).as_ref().into();
        *self.counts[gi].entry(key).or_default() += n;
        Ok(())
    }
}

/// Widens the range `into` to hold `other`.
fn widen(into: &mut (i64, i64), other: (i64, i64)) {
    *into = (into.0.min(other.0), into.1.max(other.1));
}

/// The group's columns of `batch` as counted (presence: a Boolean "present").
fn group_columns(g: &CountGroup, batch: &RecordBatch) -> Result<Vec<ArrayRef>, ArrowError> {
    let cols: Vec<ArrayRef> = g
        .columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .cloned()
                .ok_or_else(|| ArrowError::SchemaError(format!("no column `{c}` to count")))
        })
        .collect::<Result<_, _>>()?;
    if !g.presence {
        return Ok(cols);
    }
    let present = is_not_null(&cols[0])?;
    let present: BooleanArray = match cols[0].data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let f = cast(&cols[0], &DataType::Float64)?;
            let f = f.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            (0..f.len())
                .map(|i| Some(present.value(i) && !f.value(i).is_nan()))
                .collect()
        }
        _ => present,
    };
    Ok(vec![Arc::new(present)])
}

/// The rows of `rows` with the `k` smallest keys, in key order.
fn smallest(rows: &[RecordBatch], keys: &[SampleKey], k: usize) -> Result<(RecordBatch, Vec<SampleKey>), ArrowError> {
    let Some(first) = rows.first() else {
        return Err(ArrowError::InvalidArgumentError("no rows to sample".into()));
    };
    let all = concat_batches(&first.schema(), rows)?;
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    let k = k.min(order.len());
    if k < order.len() {
        order.select_nth_unstable_by_key(k, |i| keys[*i as usize]);
        order.truncate(k);
    }
    order.sort_unstable_by_key(|i| keys[*i as usize]);
    let kept = order.iter().map(|i| keys[*i as usize]).collect();
    let batch = datafusion::arrow::compute::take_record_batch(&all, &UInt32Array::from(order))?;
    Ok((batch, kept))
}

/// The windows table form's schema: every column nullable, then the two count columns.
pub fn table_schema(scored: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = scored
        .fields()
        .iter()
        .filter(|f| f.name() != WEIGHT_COL && f.name() != COUNTED_COL)
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(WEIGHT_COL, DataType::UInt64, false));
    fields.push(Field::new(COUNTED_COL, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Events and sample rows of a window given in table form (or as plain rows).
pub fn table_events(table: &[RecordBatch]) -> (u64, usize) {
    let (mut events, mut sample) = (0u64, 0usize);
    for b in table {
        let (Some(w), Some(c)) = (b.column_by_name(WEIGHT_COL), b.column_by_name(COUNTED_COL)) else {
            events += b.num_rows() as u64;
            sample += b.num_rows();
            continue;
        };
        let (w, c) = (w.as_primitive::<UInt64Type>(), c.as_string::<i32>());
        for i in 0..b.num_rows() {
            if c.is_null(i) {
                sample += 1;
                events += 1;
            } else if c.value(i) == EVENTS_TAG {
                events += w.value(i);
            }
        }
    }
    (events, sample)
}

/// Events of a window (in table form, or plain rows) whose `column` is
/// present: counted on its sample rows and, when the sampling counts the
/// column's presence, on the count rows of that group.
pub fn present_events(table: &[RecordBatch], column: &str) -> Result<u64, ArrowError> {
    let group = CountGroup::presence(column);
    let tag = group.tag();
    let mut events = 0u64;
    for b in table {
        let present = &group_columns(&group, b)?[0];
        let present = present.as_boolean();
        let counted = b.column_by_name(COUNTED_COL).map(|c| c.as_string::<i32>());
        let weight = b.column_by_name(WEIGHT_COL).map(|w| w.as_primitive::<UInt64Type>());
        for i in (0..b.num_rows()).filter(|i| present.value(*i)) {
            events += match (counted, weight) {
                (Some(c), Some(w)) if c.is_valid(i) => {
                    if c.value(i) == tag {
                        w.value(i)
                    } else {
                        0
                    }
                }
                _ => 1,
            };
        }
    }
    Ok(events)
}

/// A key's held events by pane: stretches of event time `[start, start +
/// width)`, `width` dividing both the windows' duration and slide, so that
/// every window is a union of whole panes.
#[derive(Debug, Default)]
pub struct Panes {
    panes: BTreeMap<i64, Summary>,
}

impl Panes {
    /// Adds `batch` (event times `times`) to the panes of width `width`.
    pub fn add(&mut self, s: &Sampling, width: i64, batch: &RecordBatch, times: &[i64]) -> Result<(), ArrowError> {
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, t) in times.iter().enumerate() {
            by_pane.entry(t.div_euclid(width) * width).or_default().push(i as u32);
        }
        for (start, rows) in by_pane {
            let ts: Vec<i64> = rows.iter().map(|i| times[*i as usize]).collect();
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?
            };
            self.panes.entry(start).or_default().add(s, &part, &ts)?;
        }
        Ok(())
    }

    /// The events with time in `[from, to)` (both pane boundaries).
    pub fn between(&self, from: i64, to: i64) -> Summary {
        Summary::union(self.panes.range(from..to).map(|(_, p)| p))
    }

    /// Drops the panes before `from`.
    pub fn prune(&mut self, from: i64) {
        self.panes = self.panes.split_off(&from);
    }

    /// The oldest event time held.
    pub fn min_time(&self) -> Option<i64> {
        self.panes.values().filter_map(|p| p.times.map(|t| t.0)).min()
    }

    /// Rows held.
    pub fn held(&self) -> usize {
        self.panes.values().map(Summary::held).sum()
    }

    /// Per partition, the first offset of the events held (a restart
    /// replays from there to count them again).
    pub fn first_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for p in self.panes.values() {
            super::lower_to(&mut out, p.offsets.iter().map(|(p, (a, _))| (*p, *a)));
        }
        out
    }
}

/// Width of the panes of windows of `duration` sliding by `slide`.
pub fn pane_width(duration: i64, slide: i64) -> i64 {
    let (mut a, mut b) = (duration.max(1), slide.max(1));
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array};

    use super::*;
    use crate::schema::{OFFSET_COL, PARTITION_COL};
    use datafusion::arrow::datatypes::{Int32Type, Int64Type};

    /// Events: (partition, offset, category, value); value NaN when missing.
    fn batch(evs: &[(i32, i64, &str, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("c", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(evs.iter().map(|e| e.2).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(evs.iter().map(|e| e.3).collect::<Vec<_>>())),
                Arc::new(Int32Array::from(evs.iter().map(|e| e.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(evs.iter().map(|e| e.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn events(n: i64) -> Vec<(i32, i64, &'static str, f64)> {
        let cats = ["a", "b", "c", "d", "e"];
        (0..n)
            .map(|i| {
                let v = if i % 7 == 0 { f64::NAN } else { i as f64 };
                ((i % 3) as i32, i, cats[(i * i % 5) as usize], v)
            })
            .collect()
    }

    fn sampling(max: usize) -> Sampling {
        let groups = vec![CountGroup::values(&["c"]), CountGroup::presence("v")];
        Sampling::new(max, 11, None, groups)
    }

    fn summary(s: &Sampling, evs: &[(i32, i64, &str, f64)], chunk: usize) -> Summary {
        let mut out = Summary::default();
        for c in evs.chunks(chunk) {
            out.add(s, &batch(c), &vec![0; c.len()]).unwrap();
        }
        out
    }

    /// (partition, offset) of the sample rows, and per (tag, c or v-missing) the weights.
    type Seen = (Vec<(i32, i64)>, BTreeMap<(String, String), u64>);

    fn seen(table: &[RecordBatch]) -> Seen {
        let (mut rows, mut counts) = (vec![], BTreeMap::new());
        for all in table {
            let p = all
                .column_by_name(PARTITION_COL)
                .unwrap()
                .as_primitive::<Int32Type>()
                .clone();
            let o = all
                .column_by_name(OFFSET_COL)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let c = all.column_by_name("c").unwrap().as_string::<i32>().clone();
            let v = all
                .column_by_name("v")
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .clone();
            let w = all
                .column_by_name(WEIGHT_COL)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .clone();
            let t = all.column_by_name(COUNTED_COL).unwrap().as_string::<i32>().clone();
            for i in 0..all.num_rows() {
                let missing = v.is_null(i) || v.value(i).is_nan();
                let add = |counts: &mut BTreeMap<_, u64>, tag: &str, what: String| {
                    *counts.entry((tag.to_string(), what)).or_default() += w.value(i)
                };
                if t.is_null(i) {
                    rows.push((p.value(i), o.value(i)));
                    add(&mut counts, "values:c", c.value(i).to_string());
                    add(&mut counts, "missing:v", missing.to_string());
                    add(&mut counts, EVENTS_TAG, String::new());
                } else if t.value(i) == "values:c" {
                    add(&mut counts, t.value(i), c.value(i).to_string());
                } else if t.value(i) == "missing:v" {
                    add(&mut counts, t.value(i), missing.to_string());
                } else {
                    add(&mut counts, t.value(i), String::new());
                }
            }
        }
        (rows, counts)
    }

    /// What every event counts to, without sampling.
    fn exact(evs: &[(i32, i64, &str, f64)]) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for e in evs {
            *out.entry(("values:c".to_string(), e.2.to_string())).or_default() += 1;
            *out.entry(("missing:v".to_string(), e.3.is_nan().to_string()))
                .or_default() += 1;
            *out.entry((EVENTS_TAG.to_string(), String::new())).or_default() += 1;
        }
        out
    }

    #[test]
    fn the_sample_is_the_bottom_k_of_the_whole_window_whatever_the_batching() {
        let s = sampling(50);
        let evs = events(1000);
        let want = {
            let keys = s.keys(&batch(&evs)).unwrap();
            let mut k: Vec<SampleKey> = keys;
            k.sort();
            k.truncate(50);
            k.into_iter().map(|k| (k.partition, k.offset)).collect::<Vec<_>>()
        };
        for chunk in [1, 7, 100, 1000] {
            let sm = summary(&s, &evs, chunk);
            assert!(sm.held() <= 100, "chunk {chunk}: {} rows held", sm.held());
            let (rows, counts) = seen(&sm.table(&s).unwrap().unwrap());
            assert_eq!(rows, want, "chunk {chunk}");
            assert_eq!(counts, exact(&evs), "chunk {chunk}: counts are exact");
        }
        // Another seed, another sample.
        let other = Sampling::new(50, 12, None, vec![]);
        let (rows, _) = seen(&summary(&other, &evs, 100).table(&other).unwrap().unwrap());
        assert_ne!(rows, want);
    }

    #[test]
    fn a_window_of_panes_is_sampled_and_counted_as_one_summary() {
        let s = sampling(40);
        let evs = events(600);
        let (whole, mut panes) = (summary(&s, &evs, 600), Panes::default());
        let times: Vec<i64> = evs.iter().map(|e| e.1 * 10).collect();
        for (c, t) in evs.chunks(33).zip(times.chunks(33)) {
            panes.add(&s, 500, &batch(c), t).unwrap();
        }
        let merged = panes.between(0, 6000);
        assert_eq!(
            seen(&merged.table(&s).unwrap().unwrap()),
            seen(&whole.table(&s).unwrap().unwrap())
        );
        // The first half only, then pruned to the second half.
        assert_eq!(panes.between(0, 3000).events(), 300);
        panes.prune(3000);
        assert_eq!(panes.between(0, 6000).events(), 300);
        assert_eq!(panes.first_offsets(), BTreeMap::from([(0, 300), (1, 301), (2, 302)]));
        assert_eq!(panes.min_time(), Some(3000));
    }

    #[test]
    fn a_table_read_back_is_the_same_summary() {
        let s = sampling(30);
        let evs = events(500);
        let table = summary(&s, &evs, 64).table(&s).unwrap().unwrap();
        assert_eq!(table_events(&table), (500, 30));
        let back = Summary::from_table(&s, &table).unwrap();
        assert_eq!(back.events(), 500);
        assert_eq!(seen(&back.table(&s).unwrap().unwrap()), seen(&table));
        // Fewer events than the sample size: every event, and no count rows.
        let small = summary(&s, &evs[..20], 64).table(&s).unwrap().unwrap();
        assert_eq!(table_events(&small), (20, 20));
        assert_eq!(small.iter().map(|b| b.num_rows()).sum::<usize>(), 20);
    }

    /// The events with a present `v` (not NaN), counted on the sample rows
    /// and the presence group's count rows, are those of the whole window;
    /// plain rows (no sampling) count one each.
    #[test]
    fn present_events_count_the_whole_window() {
        let evs = events(500);
        let want = evs.iter().filter(|e| !e.3.is_nan()).count() as u64;
        let s = sampling(40);
        let table = summary(&s, &evs, 64).table(&s).unwrap().unwrap();
        assert!(table_events(&table).1 <= 40);
        assert_eq!(present_events(&table, "v").unwrap(), want);
        // Plain rows (NaN is missing, as for `missing_share`) count one each.
        let plain = batch(&evs);
        assert_eq!(present_events(&[plain], "v").unwrap(), want);
    }

    #[test]
    fn pane_width_divides_duration_and_slide() {
        assert_eq!(pane_width(3_600_000, 900_000), 900_000);
        assert_eq!(pane_width(3_600_000, 3_600_000), 3_600_000);
        assert_eq!(pane_width(60_000, 45_000), 15_000);
        assert_eq!(pane_width(20, 7), 1);
    }
}
