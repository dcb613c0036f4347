//! Aggregate UDFs on predictions and labels (see [`super::labels`]):
//!
//! ```sql
//! SELECT key, error_rate_test(predicted_class, label, window = 'current') AS error_rate FROM windows GROUP BY key
//! SELECT key, label_shift_test(predicted_class, label, window = 'current') AS predicted_class FROM windows GROUP BY key
//! ```
//!
//! Both return `{statistic, p_value, n_reference, n_current, details}`;
//! `details` is JSON text (per-class accuracies; BBSE's priors and weights)
//! that alerts carry. Rows with a NULL label count as unlabelled: the error
//! rate ignores them, and label shift uses them for predicted-class
//! frequencies but not for the confusion matrix. Predictions and labels are
//! compared as text, so any class type works.
//!
//! `error_rate_test`: statistic = current − reference error rate, p-value of
//! Fisher's exact test. `label_shift_test`: statistic and p-value of the
//! chi-square homogeneity test on predicted classes (black-box shift
//! detection), details = BBSE's estimate of the current priors.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, StructArray, UInt64Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, TypeSignature, Volatility};
use serde::{Deserialize, Serialize};

use super::chi2::chi2_homogeneity;
use super::labels::{ErrorCounts, bbse, error_rate_test, sort_classes};

/// Which labelled test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelStat {
    ErrorRate,
    LabelShift,
}

/// `error_rate_test(prediction, label, is_current [, weight])` and
/// `label_shift_test(prediction, label, is_current [, weight])`; `weight`:
/// the events each row stands for (the windows table's `_weight`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LabelledTest {
    stat: LabelStat,
    signature: Signature,
}

impl LabelledTest {
    pub fn new(stat: LabelStat) -> Self {
        Self {
            stat,
            // (prediction, label, is_current [, weight])
            signature: Signature::one_of(
                vec![TypeSignature::Any(3), TypeSignature::Any(4)],
                Volatility::Immutable,
            ),
        }
    }
}

/// The result struct of a test whose extras are JSON `details` (the label
/// tests here, and the data-quality and CBPE kinds).
pub(crate) fn detail_fields() -> Fields {
    Fields::from(vec![
        Field::new("statistic", DataType::Float64, false),
        Field::new("p_value", DataType::Float64, true),
        Field::new("n_reference", DataType::UInt64, false),
        Field::new("n_current", DataType::UInt64, false),
        Field::new("details", DataType::Utf8, true),
    ])
}

/// One [`detail_fields`] struct: `row` = (statistic, p-value, details), or
/// None for a NULL result (a side without enough rows).
pub(crate) fn detail_scalar(row: Option<(f64, Option<f64>, String)>, n_reference: u64, n_current: u64) -> ScalarValue {
    let (s, p, d, nulls) = match row {
        Some((s, p, d)) => (s, p, Some(d), None),
        None => (0.0, None, None, Some(NullBuffer::new_null(1))),
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![s])),
        Arc::new(Float64Array::from(vec![p])),
        Arc::new(UInt64Array::from(vec![n_reference])),
        Arc::new(UInt64Array::from(vec![n_current])),
        Arc::new(StringArray::from(vec![d])),
    ];
    ScalarValue::Struct(Arc::new(StructArray::new(detail_fields(), cols, nulls)))
}

impl AggregateUDFImpl for LabelledTest {
    fn name(&self) -> &str {
        match self.stat {
            LabelStat::ErrorRate => "error_rate_test",
            LabelStat::LabelShift => "label_shift_test",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if let Some(t) = args.get(2)
            && *t != DataType::Boolean
        {
            return exec_err!(
                "{}: third argument (is_current) must be boolean, e.g. window = 'current'; got {t}",
                self.name()
            );
        }
        Ok(DataType::Struct(detail_fields()))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(LabelAcc {
            stat: self.stat,
            counts: Counts::default(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[counts]", args.name),
            DataType::Utf8,
            true,
        ))])
    }
}

/// Everything both tests need, as counts (so state is small and merges add).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counts {
    /// [reference, current] error counts over labelled rows.
    errors: [ErrorCounts; 2],
    /// Reference counts over labelled rows: predicted → label → count.
    confusion: BTreeMap<String, BTreeMap<String, u64>>,
    /// [reference, current] predicted-class counts over all rows.
    predicted: [BTreeMap<String, u64>; 2],
}

#[derive(Debug)]
struct LabelAcc {
    stat: LabelStat,
    counts: Counts,
}

impl Accumulator for LabelAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let text = |a: &ArrayRef| cast(a, &DataType::Utf8);
        let (pred, label) = (text(&values[0])?, text(&values[1])?);
        let (pred, label) = (pred.as_string::<i32>(), label.as_string::<i32>());
        let Some(cur) = values[2].as_boolean_opt() else {
            return exec_err!("label tests: is_current must be boolean");
        };
        let weights = super::udaf::weights(values, 3, "label tests")?;
        for i in 0..pred.len() {
            let n = weights.as_ref().map_or(1, |w| w[i]);
            if pred.is_null(i) || cur.is_null(i) || n == 0 {
                continue;
            }
            let side = usize::from(cur.value(i));
            let p = pred.value(i);
            *self.counts.predicted[side].entry(p.to_string()).or_default() += n;
            if label.is_valid(i) {
                let y = label.value(i);
                self.counts.errors[side].add_n(y, p == y, n);
                if side == 0 {
                    *self
                        .counts
                        .confusion
                        .entry(p.to_string())
                        .or_default()
                        .entry(y.to_string())
                        .or_default() += n;
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let c = &self.counts;
        let n = |side: usize| c.predicted[side].values().sum::<u64>();
        let row: Option<(f64, Option<f64>, String)> = match self.stat {
            LabelStat::ErrorRate => error_rate_test(&c.errors[0], &c.errors[1]).map(|r| {
                (
                    r.statistic,
                    Some(r.p_value),
                    serde_json::to_string(&r).unwrap_or_default(),
                )
            }),
            LabelStat::LabelShift => {
                let mut classes: Vec<&String> = c.predicted[0].keys().chain(c.predicted[1].keys()).collect();
                sort_classes(&mut classes);
                classes.dedup();
                let count = |side: usize| -> Vec<f64> {
                    classes
                        .iter()
                        .map(|k| *c.predicted[side].get(*k).unwrap_or(&0) as f64)
                        .collect()
                };
                chi2_homogeneity(&count(0), &count(1)).map(|t| {
                    let confusion: BTreeMap<(String, String), u64> = c
                        .confusion
                        .iter()
                        .flat_map(|(p, ys)| ys.iter().map(move |(y, n)| ((p.clone(), y.clone()), *n)))
                        .collect();
                    let details = match bbse(&confusion, &c.predicted[1]) {
                        Some(e) => serde_json::to_string(&e).unwrap_or_default(),
                        None => serde_json::json!({
                            "warning": "no labelled reference events: the current priors cannot be estimated"
                        })
                        .to_string(),
                    };
                    (t.statistic, Some(t.p_value), details)
                })
            }
        };
        let (nr, nc) = match self.stat {
            LabelStat::ErrorRate => (c.errors[0].totals().1, c.errors[1].totals().1),
            LabelStat::LabelShift => (n(0), n(1)),
        };
        Ok(detail_scalar(row, nr, nc))
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + 64 * (self.counts.confusion.values().map(BTreeMap::len).sum::<usize>()
                + self.counts.predicted.iter().map(BTreeMap::len).sum::<usize>()
                + self.counts.errors.iter().map(|e| e.per_class.len()).sum::<usize>())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Utf8(Some(
            serde_json::to_string(&self.counts).unwrap_or_default(),
        ))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let s = states[0].as_string::<i32>();
        for i in 0..s.len() {
            if s.is_null(i) {
                continue;
            }
            let other: Counts = match serde_json::from_str(s.value(i)) {
                Ok(c) => c,
                Err(e) => return exec_err!("label tests: bad partial state: {e}"),
            };
            for side in 0..2 {
                self.counts.errors[side].merge(&other.errors[side]);
                for (k, v) in &other.predicted[side] {
                    *self.counts.predicted[side].entry(k.clone()).or_default() += v;
                }
            }
            for (p, ys) in other.confusion {
                let row = self.counts.confusion.entry(p).or_default();
                for (y, n) in ys {
                    *row.entry(y).or_default() += n;
                }
            }
        }
        Ok(())
    }
}
