//! `model.sample`: score a deterministic share of the events when the model
//! is slower than the topic.
//!
//! An event is scored when a hash of its event id falls below `fraction` of
//! the hash range, so every replay and every restart scores the same
//! events, whatever the batches. The others pass through with null model
//! outputs: the detectors on model outputs (embeddings, predicted classes,
//! probabilities) see the scored events only, while those on the event's
//! own fields see every event.

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;

/// Which events the model scores.
#[derive(Debug, Clone)]
pub struct Sampler {
    fraction: f64,
    /// Hashes below it are scored.
    threshold: u64,
    id_col: String,
}

impl Sampler {
    /// Scores `fraction` (in (0, 1]) of the events, chosen by their `id_col`.
    pub fn new(fraction: f64, id_col: &str) -> Result<Self, String> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(format!("`fraction` must be in (0, 1], got {fraction}"));
        }
        let threshold = if fraction >= 1.0 {
            u64::MAX
        } else {
            (fraction * 2f64.powi(64)) as u64
        };
        Ok(Self {
            fraction,
            threshold,
            id_col: id_col.to_string(),
        })
    }

    /// The share of events scored.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether the event with this id is scored.
    pub fn keeps(&self, id: &str) -> bool {
        self.threshold == u64::MAX || crate::id_hash::id_hash(id.as_bytes(), 0) < self.threshold
    }

    /// Per row of `batch`: scored or not (an event without an id is not).
    pub fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let col = batch
            .column_by_name(&self.id_col)
            .ok_or_else(|| ArrowError::SchemaError(format!("event id column `{}` not in the batch", self.id_col)))?;
        let ids = cast(col, &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        Ok((0..ids.len())
            .map(|i| Some(ids.is_valid(i) && self.keeps(ids.value(i))))
            .collect())
    }
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
        let s = Sampler::new(0.25, "id").unwrap();
        let kept = (0..100_000).filter(|i| s.keeps(&format!("event-{i}"))).count();
        assert!((kept as f64 / 100_000.0 - 0.25).abs() < 0.005, "{kept}");
        assert_eq!(
            s.keeps("event-7"),
            Sampler::new(0.25, "other").unwrap().keeps("event-7")
        );
        // A larger fraction keeps what a smaller one keeps.
        let wide = Sampler::new(0.5, "id").unwrap();
        assert!((0..10_000).all(|i| !s.keeps(&i.to_string()) || wide.keeps(&i.to_string())));
        assert!((0..1000).all(|i| Sampler::new(1.0, "id").unwrap().keeps(&i.to_string())));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(Sampler::new(bad, "id").unwrap_err().contains("(0, 1]"), "{bad}");
        }
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
        let m = Sampler::new(1.0, "id").unwrap().mask(&batch).unwrap();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), Some(true), Some(true)]
        );
    }
}
