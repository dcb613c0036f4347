//! `model.sample`: score a deterministic share of the events when the model
//! is slower than the topic.
//!
//! An event is scored when a hash of its event id falls below a share of
//! the hash range, so every replay and every restart scores the same
//! events, whatever the batches. The others pass through with null model
//! outputs: the detectors on model outputs (embeddings, predicted classes,
//! probabilities) see the scored events only, while those on the event's
//! own fields see every event. A larger share keeps what a smaller one
//! keeps, so scored events stay scored when the share grows.
//!
//! The share is fixed (`fraction`), or set per partition from its rate of
//! events (`max_rate`): a partition's offsets are cut into blocks of
//! `rate_block`, and the share of block b is `max_rate × span / count` (at
//! most 1) over the events of block b − 1, `span` their event-time spread
//! in seconds. It depends only on the partition's offsets and event times,
//! so a replay of the same range and a restart that reads block b − 1
//! again ([`Sampler::replay_floor`]) score the same events. One exception:
//! a run that first started (with no commit) inside block b − 1 measured
//! only its tail; a restart soon after measures all of it, so blocks b − 1
//! and b may score other events than the uninterrupted run did.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;

use crate::schema::{event_times, positions};

/// How the share of events scored is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// A fixed share, in (0, 1].
    Fraction(f64),
    /// At most `per_second` events a second of event time per partition,
    /// the rate measured over blocks of `block` offsets.
    MaxRate { per_second: f64, block: i64 },
}

/// Which events the model scores.
#[derive(Debug, Clone)]
pub struct Sampler {
    rule: Rule,
    id_col: String,
    /// The schema's event time (else the message timestamp), for `max_rate`.
    time_col: Option<String>,
    /// `max_rate`: per partition, where its rate measure stands.
    rates: HashMap<i32, PartitionRate>,
}

/// One partition under `max_rate`: the block being read, its share, and the
/// events of it seen so far.
#[derive(Debug, Clone)]
struct PartitionRate {
    last_offset: i64,
    block: i64,
    threshold: u64,
    count: u64,
    times: Option<(i64, i64)>,
}

impl PartitionRate {
    /// A partition first read at `block`: no previous block seen, every event scored.
    fn fresh(offset: i64, block: i64) -> Self {
        Self {
            last_offset: offset - 1,
            block,
            threshold: u64::MAX,
            count: 0,
            times: None,
        }
    }

    /// The share of the next block: `per_second × span / count` over this one.
    fn next_share(&self, per_second: f64) -> f64 {
        match self.times {
            Some((first, last)) if self.count >= 2 => {
                let span_s = (last - first).max(1) as f64 / 1000.0;
                (per_second * span_s / self.count as f64).min(1.0)
            }
            _ => 1.0,
        }
    }

    /// Moves to `block`: its share comes from the block before, if that one
    /// was read; after a gap (or at the start) every event is scored.
    fn enter(&mut self, block: i64, per_second: f64) {
        self.threshold = match block == self.block + 1 {
            true => threshold(self.next_share(per_second)),
            false => u64::MAX,
        };
        (self.block, self.count, self.times) = (block, 0, None);
    }
}

/// Hashes below it are scored.
fn threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else {
        (share * 2f64.powi(64)) as u64
    }
}

impl Sampler {
    /// Scores events chosen by their `id_col` under `rule`; `time_col` is the
    /// schema's event time (else the message timestamp is used).
    pub fn new(rule: Rule, id_col: &str, time_col: Option<&str>) -> Result<Self, String> {
        match rule {
            Rule::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(format!("`fraction` must be in (0, 1], got {f}"));
            }
            Rule::MaxRate { per_second, .. } if !(per_second > 0.0 && per_second.is_finite()) => {
                return Err(format!(
                    "`max_rate` must be a positive number of events a second, got {per_second}"
                ));
            }
            Rule::MaxRate { block, .. } if block < 2 => {
                return Err(format!("`rate_block` must be at least 2 offsets, got {block}"));
            }
            _ => {}
        }
        Ok(Self {
            rule,
            id_col: id_col.to_string(),
            time_col: time_col.map(str::to_string),
            rates: HashMap::new(),
        })
    }

    /// A fixed share `fraction` of the events, chosen by `id_col`.
    pub fn fraction(fraction: f64, id_col: &str) -> Result<Self, String> {
        Self::new(Rule::Fraction(fraction), id_col, None)
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Forgets every partition's rate measure: the next events come from
    /// another source, whose offsets do not follow those seen.
    pub fn forget_rates(&mut self) {
        self.rates.clear();
    }

    /// Where a restart must read partition offsets from so that the events
    /// from `offset` on are scored as in an uninterrupted run: the start of
    /// the block before `offset`'s (`max_rate`), else `offset` itself.
    pub fn replay_floor(&self, offset: i64) -> i64 {
        match self.rule {
            Rule::Fraction(_) => offset,
            Rule::MaxRate { block, .. } => ((offset.div_euclid(block) - 1) * block).clamp(0, offset),
        }
    }

    /// Per row of `batch`: scored or not (an event without an id is not).
    /// Under `max_rate`, rows of a partition must come in offset order; an
    /// offset read again (a seek back) restarts that partition's measure.
    pub fn mask(&mut self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let col = batch
            .column_by_name(&self.id_col)
            .ok_or_else(|| ArrowError::SchemaError(format!("event id column `{}` not in the batch", self.id_col)))?;
        let ids = cast(col, &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let id = |i: usize| ids.is_valid(i).then(|| ids.value(i));
        match self.rule {
            Rule::Fraction(f) => {
                let t = threshold(f);
                Ok((0..ids.len())
                    .map(|i| Some(id(i).is_some_and(|v| keeps_at(t, v))))
                    .collect())
            }
            Rule::MaxRate { per_second, block } => {
                let thresholds = self.rate_thresholds(batch, per_second, block)?;
                Ok((0..ids.len())
                    .map(|i| Some(id(i).is_some_and(|v| keeps_at(thresholds[i], v))))
                    .collect())
            }
        }
    }

    /// Per row, the hash threshold its partition's rate sets, the rate
    /// measure moved on by the row.
    fn rate_thresholds(&mut self, batch: &RecordBatch, per_second: f64, block: i64) -> Result<Vec<u64>, ArrowError> {
        let (partitions, offsets) = positions(batch, "to measure the rate")?;
        let times = event_times(batch, self.time_col.as_deref())?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for (i, t) in times.into_iter().enumerate() {
            let (p, o) = (partitions.value(i), offsets.value(i));
            let b = o.div_euclid(block);
            let st = self.rates.entry(p).or_insert_with(|| PartitionRate::fresh(o, b));
            if o <= st.last_offset {
                *st = PartitionRate::fresh(o, b);
            }
            if b != st.block {
                st.enter(b, per_second);
            }
            st.last_offset = o;
            st.count += 1;
            st.times = Some(st.times.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
            out.push(st.threshold);
        }
        Ok(out)
    }
}

/// Whether the event with this id is scored at a share of `fraction`
/// (as `model.sample: {fraction}` scores it).
pub fn scored_at(fraction: f64, id: &str) -> bool {
    keeps_at(threshold(fraction), id)
}

fn keeps_at(threshold: u64, id: &str) -> bool {
    threshold == u64::MAX || crate::id_hash::id_hash(id.as_bytes(), 0) < threshold
}

/// `batch` with the columns the model added to its kept rows (`scored`:
/// the kept rows, scored), null on the other rows.
pub fn scatter(
    batch: &RecordBatch,
    mask: &BooleanArray,
    scored: &RecordBatch,
    schema: SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let mut next = 0u32;
    let positions: UInt32Array = (0..mask.len())
        .map(|i| {
            mask.value(i).then(|| {
                next += 1;
                next - 1
            })
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    for c in &scored.columns()[batch.num_columns()..] {
        columns.push(take(c.as_ref(), &positions, None)?);
    }
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn the_sample_is_the_fraction_and_depends_on_the_id_alone() {
        let kept = (0..100_000).filter(|i| scored_at(0.25, &format!("event-{i}"))).count();
        assert!((kept as f64 / 100_000.0 - 0.25).abs() < 0.005, "{kept}");
        // A larger fraction keeps what a smaller one keeps.
        assert!((0..10_000).all(|i| !scored_at(0.25, &i.to_string()) || scored_at(0.5, &i.to_string())));
        assert!((0..1000).all(|i| scored_at(1.0, &i.to_string())));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(Sampler::fraction(bad, "id").unwrap_err().contains("(0, 1]"), "{bad}");
        }
        let rate = |per_second, block| Sampler::new(Rule::MaxRate { per_second, block }, "id", None);
        assert!(rate(0.0, 10).unwrap_err().contains("max_rate"));
        assert!(rate(f64::INFINITY, 10).unwrap_err().contains("max_rate"));
        assert!(rate(5.0, 1).unwrap_err().contains("rate_block"));
    }

    use crate::schema::{OFFSET_COL, PARTITION_COL};

    /// Events of `partition` at `offsets`, one every `gap_ms` of event time.
    fn events(partition: i32, offsets: std::ops::Range<i64>, gap_ms: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new(PARTITION_COL, DataType::Int32, false),
            Field::new(OFFSET_COL, DataType::Int64, false),
            Field::new(crate::schema::TIMESTAMP_COL, DataType::Int64, false),
        ]));
        let n = (offsets.end - offsets.start) as usize;
        let ids: Vec<String> = offsets.clone().map(|o| format!("p{partition}-{o}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(datafusion::arrow::array::Int32Array::from(vec![partition; n])),
                Arc::new(Int64Array::from_iter_values(offsets.clone())),
                Arc::new(Int64Array::from_iter_values(offsets.map(|o| o * gap_ms))),
            ],
        )
        .unwrap()
    }

    fn scored(s: &mut Sampler, batch: &RecordBatch) -> Vec<bool> {
        s.mask(batch).unwrap().iter().map(|v| v.unwrap()).collect()
    }

    /// `max_rate`: a partition of 1000 events a second (one per ms) at a
    /// max rate of 100 scores about a tenth of each block after the first;
    /// a slower partition (10 a second) scores all; the choice is the same
    /// at any batch size, and a restart from `replay_floor` scores what
    /// the uninterrupted run scored.
    #[test]
    fn max_rate_scores_the_rate_share_of_each_block_whatever_the_batches() {
        let rule = Rule::MaxRate {
            per_second: 100.0,
            block: 1000,
        };
        let mut whole = Sampler::new(rule, "id", None).unwrap();
        let all = scored(&mut whole, &events(0, 0..10_000, 1));
        assert!(
            all[..1000].iter().all(|s| *s),
            "the first block has no rate yet: all scored"
        );
        for b in 1..10 {
            let n = all[b * 1000..(b + 1) * 1000].iter().filter(|s| **s).count();
            assert!((60..=140).contains(&n), "block {b}: {n} scored of 1000");
        }
        let slow = scored(&mut whole, &events(1, 0..3000, 100));
        assert!(
            slow.iter().all(|s| *s),
            "10 events a second, under the rate: all scored"
        );
        // Other batchings, partitions interleaved.
        let mut split = Sampler::new(rule, "id", None).unwrap();
        let mut pieces = vec![];
        for start in (0..10_000).step_by(777) {
            pieces.extend(scored(&mut split, &events(0, start..(start + 777).min(10_000), 1)));
            if start < 3000 {
                scored(&mut split, &events(1, start..(start + 777).min(3000), 100));
            }
        }
        assert_eq!(pieces, all);
        // A restart at offset 6543 reads from the block before its own.
        let mut restarted = Sampler::new(rule, "id", None).unwrap();
        let from = restarted.replay_floor(6543);
        assert_eq!(from, 5000);
        let again = scored(&mut restarted, &events(0, from..10_000, 1));
        assert_eq!(again[6543 - 5000..], all[6543..]);
        // A seek back restarts the measure: the same as the restart.
        let rewound = scored(&mut whole, &events(0, from..10_000, 1));
        assert_eq!(rewound, again);
        assert_eq!(Sampler::fraction(0.5, "id").unwrap().replay_floor(6543), 6543);
        // Another source after a forget: measured from scratch, whatever came before.
        let mut other = Sampler::new(rule, "id", None).unwrap();
        scored(&mut other, &events(0, 0..5000, 1));
        other.forget_rates();
        assert_eq!(scored(&mut other, &events(0, 5000..10_000, 1)), again);
        assert_eq!(restarted.replay_floor(500), 0);
    }

    #[test]
    fn unscored_rows_get_null_outputs_in_place() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("a"), None, Some("c"), Some("d")]))],
        )
        .unwrap();
        let mask = BooleanArray::from(vec![true, false, true, false]);
        let sub = datafusion::arrow::compute::filter_record_batch(&batch, &mask).unwrap();
        assert_eq!(sub.num_rows(), 2);
        // The "model" adds a column to the kept rows.
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("score", DataType::Int64, true),
        ]));
        let scored = RecordBatch::try_new(
            out_schema.clone(),
            vec![sub.column(0).clone(), Arc::new(Int64Array::from(vec![10, 30]))],
        )
        .unwrap();
        let all = scatter(&batch, &mask, &scored, out_schema).unwrap();
        let score = all.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let got: Vec<Option<i64>> = (0..4).map(|i| score.is_valid(i).then(|| score.value(i))).collect();
        assert_eq!(got, vec![Some(10), None, Some(30), None]);
        // Ids are hashed as text: a null id is never scored.
        let m = Sampler::fraction(1.0, "id").unwrap().mask(&batch).unwrap();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), Some(true), Some(true)]
        );
    }
}
