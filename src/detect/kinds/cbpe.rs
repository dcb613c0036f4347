//! `cbpe`: the model's accuracy estimated without labels, by
//! confidence-based performance estimation (CBPE, as NannyML's).
//!
//! The model's class probabilities are calibrated on the labelled reference:
//! per class k, an isotonic regression of 1[y = k] on p_k (pool adjacent
//! violators; predictions interpolated linearly between the fitted points
//! and clipped at the ends, as scikit-learn's `IsotonicRegression(
//! out_of_bounds="clip")`), then normalised over the classes (binary: p₁
//! only, c₀ = 1 − c₁). An event predicted as class ĵ = argmax p is then
//! right with probability c_ĵ, so the window's expected accuracy is
//! Â = (1/m) Σ c_ĵ(i), and, the events being independent, its standard
//! error is √(Σ c(1 − c))/m; the band is Â ± 3 standard errors.
//! For a binary model the ROC AUC is estimated too: the expected number of
//! (positive, negative) pairs ordered right over the expected number of
//! pairs, Σᵢ≠ⱼ cᵢ(1 − cⱼ)·(1[sᵢ > sⱼ] + ½·1[sᵢ = sⱼ]) / Σᵢ≠ⱼ cᵢ(1 − cⱼ), s
//! the score p₁ (sorted once: O(m log m)).
//! Reference: Kivimäki et al., "Confidence-based performance estimation",
//! NannyML documentation (2023); Zadrozny & Elkan, KDD 2002 (isotonic
//! calibration).
//!
//! Decision: the window drifts when the estimate falls below the
//! reference's realised accuracy by more than `margin` (a threshold, not a
//! p-value, so outside the false-alarm budget). Where the current events
//! carry labels, the realised accuracy of the same window is put next to the
//! estimate. Labels are class indices (positions in the probabilities, as
//! scikit-learn's `classes_` are sorted); rows whose label is null are
//! unlabelled. With a labels topic, a `file` reference labelled inline lets
//! it estimate each window as its events come; with a reference of the
//! stream's first events it runs once the labels have come, estimate and
//! realised accuracy side by side.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type, Schema};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};
use serde::{Deserialize, Serialize};

use super::{
    Decision, Detector, DriftType, Kind, LabelUse, Need, OptionError, Options, Reads, check_column, is_current,
};
use crate::config::PROBABILITIES_COL;
use crate::detect::udaf_labels::{detail_fields, detail_scalar};
use crate::detect::{KEY_COL, WINDOWS_TABLE, ident};

pub const KIND: Kind = Kind {
    name: "cbpe",
    about: "accuracy (and binary ROC AUC) estimated from the model's probabilities before labels come (CBPE); threshold `margin` below the reference",
    build,
    options: super::field_names::<CbpeOptions>,
    udafs: || vec![AggregateUDF::from(CbpeEstimate::new())],
};

/// Default drop of estimated accuracy below the reference that alerts.
const DEFAULT_MARGIN: f64 = 0.02;

/// Options of `kind: cbpe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CbpeOptions {
    /// The class probabilities column (default `probabilities`, as a
    /// scikit-learn classifier's).
    #[serde(default)]
    probabilities: Option<String>,
    /// Instead of `probabilities`: a column of logits (the digits CNN's, a
    /// text classifier head's), turned into probabilities by a softmax per
    /// event, p_k = exp(z_k − max z) / Σ_j exp(z_j − max z).
    #[serde(default)]
    logits: Option<String>,
    /// The true label column: class indices (default `label`).
    #[serde(default)]
    label: Option<String>,
    /// Alert when the estimated accuracy is below the reference's realised
    /// accuracy by more than this (default 0.02).
    #[serde(default)]
    margin: Option<f64>,
}

#[derive(Debug)]
struct Cbpe {
    name: String,
    probabilities: String,
    /// The column holds logits: softmax first.
    softmax: bool,
    label: String,
    margin: f64,
}

fn build(name: String, o: Options) -> Result<Box<dyn Detector>, OptionError> {
    let o: CbpeOptions = o.parse()?;
    let margin = o.margin.unwrap_or(DEFAULT_MARGIN);
    if !(0.0..1.0).contains(&margin) {
        return Err(OptionError::new(
            "margin",
            format!("`margin` must be in [0, 1), got {margin}"),
        ));
    }
    let (probabilities, softmax) = match (o.probabilities, o.logits) {
        (Some(_), Some(_)) => {
            return Err(OptionError::new("logits", "give `probabilities` or `logits`, not both"));
        }
        (_, Some(l)) => (l, true),
        (p, None) => (p.unwrap_or_else(|| PROBABILITIES_COL.into()), false),
    };
    Ok(Box::new(Cbpe {
        name,
        probabilities,
        softmax,
        label: o.label.unwrap_or_else(|| "label".into()),
        margin,
    }))
}

impl Detector for Cbpe {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "cbpe"
    }
    fn columns(&self) -> Vec<String> {
        vec![self.probabilities.clone(), self.label.clone()]
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        check_column(
            scored,
            if self.softmax { "logits" } else { "probabilities" }.into(),
            &self.probabilities,
            "cbpe",
            Need::FloatVector,
        )?;
        check_column(scored, "label".into(), &self.label, "cbpe", Need::Number)
    }
    fn sql(&self) -> String {
        format!(
            "SELECT {KEY_COL}, cbpe_estimate({}, {}, {}, {}){} AS accuracy FROM {WINDOWS_TABLE} GROUP BY {KEY_COL}",
            ident(&self.probabilities),
            ident(&self.label),
            is_current(),
            self.softmax,
            Reads::Sample.tail(&[]).1
        )
    }
    fn decision(&self) -> Decision {
        Decision::threshold(self.margin)
    }
    /// A model that gets worse at the same inputs' mapping, or on inputs
    /// it knows less well: performance, reported as concept drift.
    fn drift_type(&self) -> DriftType {
        DriftType::Concept
    }
    /// Calibrated on the labelled reference; the current window needs no labels.
    fn labels(&self) -> LabelUse {
        LabelUse::Reference
    }
}

// ---------------------------------------------------------------- the statistics

/// Isotonic regression (non-decreasing) of `y` on `x` with unit weights:
/// the fitted points (x, ŷ) at the distinct x, by pool adjacent violators.
pub fn isotonic_fit(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    // Blocks: (first x, last x, sum of y, weight).
    let mut blocks: Vec<(f64, f64, f64, f64)> = vec![];
    let mut i = 0;
    while i < order.len() {
        let xv = x[order[i]];
        let (mut sum, mut w) = (0.0, 0.0);
        while i < order.len() && x[order[i]] == xv {
            sum += y[order[i]];
            w += 1.0;
            i += 1;
        }
        blocks.push((xv, xv, sum, w));
        while blocks.len() > 1 {
            let (a, b) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
            if a.2 / a.3 <= b.2 / b.3 {
                break;
            }
            blocks.pop();
            *blocks.last_mut().expect("two blocks") = (a.0, b.1, a.2 + b.2, a.3 + b.3);
        }
    }
    // Each block's value at its first and last x, as scikit-learn keeps them.
    let mut points = vec![];
    for (lo, hi, sum, w) in blocks {
        points.push((lo, sum / w));
        if hi > lo {
            points.push((hi, sum / w));
        }
    }
    points
}

/// The fitted function at `v`: linear between points, clipped at the ends.
pub fn isotonic_predict(points: &[(f64, f64)], v: f64) -> f64 {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return v;
    };
    if v <= first.0 {
        return first.1;
    }
    if v >= last.0 {
        return last.1;
    }
    let j = points.partition_point(|p| p.0 <= v);
    let (a, b) = (points[j - 1], points[j]);
    a.1 + (b.1 - a.1) * (v - a.0) / (b.0 - a.0)
}

/// Probabilities from logits: exp(z_k − max z) / Σ_j exp(z_j − max z)
/// (shifted by the max so no exp overflows).
pub fn softmax_row(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Rows of probabilities (`dim` per row) and labels of one window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Side {
    dim: usize,
    probabilities: Vec<f64>,
    labels: Vec<Option<i64>>,
}

impl Side {
    fn rows(&self) -> usize {
        self.labels.len()
    }
    fn row(&self, i: usize) -> &[f64] {
        &self.probabilities[i * self.dim..(i + 1) * self.dim]
    }
    fn predicted(&self, i: usize) -> usize {
        let r = self.row(i);
        (0..r.len()).fold(0, |best, k| if r[k] > r[best] { k } else { best })
    }
    /// Realised accuracy over the labelled rows, and how many there are.
    fn accuracy(&self) -> Option<(f64, usize)> {
        let labelled: Vec<usize> = (0..self.rows()).filter(|i| self.labels[*i].is_some()).collect();
        let right = labelled
            .iter()
            .filter(|&&i| self.labels[i] == Some(self.predicted(i) as i64))
            .count();
        (!labelled.is_empty()).then(|| (right as f64 / labelled.len() as f64, labelled.len()))
    }
}

/// Per-class calibration fitted on the labelled reference.
struct Calibration {
    per_class: Vec<Vec<(f64, f64)>>,
}

impl Calibration {
    fn fit(r: &Side) -> Self {
        let labelled: Vec<usize> = (0..r.rows()).filter(|i| r.labels[*i].is_some()).collect();
        let classes = if r.dim == 2 { 1..2 } else { 0..r.dim };
        let per_class = classes
            .map(|k| {
                let x: Vec<f64> = labelled.iter().map(|&i| r.row(i)[k]).collect();
                let y: Vec<f64> = labelled
                    .iter()
                    .map(|&i| f64::from(r.labels[i] == Some(k as i64)))
                    .collect();
                isotonic_fit(&x, &y)
            })
            .collect();
        Self { per_class }
    }

    /// Calibrated probabilities of one row.
    fn apply(&self, row: &[f64]) -> Vec<f64> {
        if row.len() == 2 {
            let c1 = isotonic_predict(&self.per_class[0], row[1]).clamp(0.0, 1.0);
            return vec![1.0 - c1, c1];
        }
        let c: Vec<f64> = row
            .iter()
            .zip(&self.per_class)
            .map(|(p, f)| isotonic_predict(f, *p).clamp(0.0, 1.0))
            .collect();
        let total: f64 = c.iter().sum();
        if total > 0.0 {
            c.iter().map(|v| v / total).collect()
        } else {
            row.to_vec()
        }
    }
}

/// Expected ROC AUC of scores `s` whose positive-class probabilities are `c`.
pub fn expected_auc(s: &[f64], c: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    // An event is never paired with itself: its own c(1 − c) leaves both sums.
    let own: f64 = c.iter().map(|v| v * (1.0 - v)).sum();
    let (pos, neg): (f64, f64) = (c.iter().sum(), c.iter().map(|v| 1.0 - v).sum());
    let all_pairs = pos * neg - own;
    if all_pairs <= 0.0 {
        return None;
    }
    let (mut below_neg, mut pairs, mut i) = (0.0, 0.0, 0);
    while i < order.len() {
        // A run of equal scores: each pair inside counts a half.
        let mut j = i;
        let (mut run_pos, mut run_neg) = (0.0, 0.0);
        while j < order.len() && s[order[j]] == s[order[i]] {
            run_pos += c[order[j]];
            run_neg += 1.0 - c[order[j]];
            j += 1;
        }
        let run_own: f64 = order[i..j].iter().map(|&k| c[k] * (1.0 - c[k])).sum();
        pairs += run_pos * below_neg + 0.5 * (run_pos * run_neg - run_own);
        below_neg += run_neg;
        i = j;
    }
    Some(pairs / all_pairs)
}

/// The estimate for the current window: (statistic = reference accuracy −
/// estimate, details), or None without a labelled reference or current rows.
fn estimate(r: &Side, c: &Side) -> Option<(f64, serde_json::Value)> {
    let (reference_accuracy, labelled) = r.accuracy()?;
    if c.rows() == 0 || r.dim != c.dim || r.dim < 2 {
        return None;
    }
    let cal = Calibration::fit(r);
    let calibrated: Vec<Vec<f64>> = (0..c.rows()).map(|i| cal.apply(c.row(i))).collect();
    let right: Vec<f64> = (0..c.rows()).map(|i| calibrated[i][c.predicted(i)]).collect();
    let m = c.rows() as f64;
    let est = right.iter().sum::<f64>() / m;
    let se = right.iter().map(|p| p * (1.0 - p)).sum::<f64>().sqrt() / m;
    let mut details = serde_json::json!({
        "estimated_accuracy": est,
        "band": [est - 3.0 * se, est + 3.0 * se],
        "reference_accuracy": reference_accuracy,
        "reference_labelled": labelled,
    });
    if let Some((realised, n)) = c.accuracy() {
        details["realised_accuracy"] = realised.into();
        details["current_labelled"] = n.into();
    }
    if r.dim == 2 {
        let scores: Vec<f64> = (0..c.rows()).map(|i| c.row(i)[1]).collect();
        let c1: Vec<f64> = calibrated.iter().map(|p| p[1]).collect();
        if let Some(auc) = expected_auc(&scores, &c1) {
            details["estimated_roc_auc"] = auc.into();
        }
        let lab: Vec<usize> = (0..r.rows()).filter(|i| r.labels[*i].is_some()).collect();
        let rs: Vec<f64> = lab.iter().map(|&i| r.row(i)[1]).collect();
        let ry: Vec<f64> = lab.iter().map(|&i| f64::from(r.labels[i] == Some(1))).collect();
        if let Some(auc) = expected_auc(&rs, &ry) {
            details["reference_roc_auc"] = auc.into();
        }
    }
    Some((reference_accuracy - est, details))
}

/// CBPE on plain rows (probabilities row-major, `dim` per row; labels as
/// class indices): the `details` the detector reports, or None without a
/// labelled reference or current rows.
pub fn estimate_rows(
    dim: usize,
    reference: (&[f64], &[Option<i64>]),
    current: (&[f64], &[Option<i64>]),
) -> Option<serde_json::Value> {
    let side = |(p, l): (&[f64], &[Option<i64>])| Side {
        dim,
        probabilities: p.to_vec(),
        labels: l.to_vec(),
    };
    estimate(&side(reference), &side(current)).map(|(_, d)| d)
}

// ---------------------------------------------------------------- the aggregate function

/// `cbpe_estimate(probabilities, label, is_current[, softmax])`: a struct
/// `{statistic (reference accuracy − estimated accuracy), p_value (null),
/// n_reference, n_current, details}`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CbpeEstimate {
    signature: Signature,
}

impl CbpeEstimate {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(3), TypeSignature::Any(4)],
                Volatility::Immutable,
            ),
        }
    }
}

impl AggregateUDFImpl for CbpeEstimate {
    fn name(&self) -> &str {
        "cbpe_estimate"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(DataType::FixedSizeList(f, _)) if f.data_type().is_floating() => Ok(DataType::Struct(detail_fields())),
            Some(t) => {
                exec_err!("cbpe_estimate: first argument must be a float vector of class probabilities, got {t}")
            }
            None => exec_err!("cbpe_estimate(probabilities, label, is_current)"),
        }
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CbpeAcc::default()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[sides]", args.name),
            DataType::Utf8,
            true,
        ))])
    }
}

#[derive(Debug, Default)]
struct CbpeAcc {
    /// [reference, current]
    sides: [Side; 2],
}

impl Accumulator for CbpeAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let list = values[0].as_fixed_size_list();
        let dim = list.value_length() as usize;
        let flat = cast(list.values(), &DataType::Float64)?;
        let flat = flat.as_primitive::<Float64Type>();
        let labels = cast(&values[1], &DataType::Int64)?;
        let labels = labels.as_primitive::<Int64Type>();
        let Some(cur) = values[2].as_boolean_opt() else {
            return exec_err!("cbpe_estimate: third argument (is_current) must be boolean");
        };
        let softmax = match values.get(3).map(|v| v.as_boolean_opt()) {
            None => false,
            Some(Some(b)) => !b.is_empty() && b.is_valid(0) && b.value(0),
            Some(None) => return exec_err!("cbpe_estimate: fourth argument (softmax) must be boolean"),
        };
        let base = list.offset() * dim;
        for i in 0..list.len() {
            // A row without probabilities (not scored) carries nothing.
            if cur.is_null(i) || list.is_null(i) {
                continue;
            }
            let side = &mut self.sides[usize::from(cur.value(i))];
            if side.dim != 0 && side.dim != dim {
                return exec_err!("cbpe_estimate: probabilities of {} and {dim} classes", side.dim);
            }
            side.dim = dim;
            let row = &flat.values()[base + i * dim..base + (i + 1) * dim];
            if softmax {
                side.probabilities.extend(softmax_row(row));
            } else {
                side.probabilities.extend(row);
            }
            side.labels.push(labels.is_valid(i).then(|| labels.value(i)));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let [r, c] = &self.sides;
        // A threshold on the estimated drop: no p-value.
        let row = estimate(r, c).map(|(s, d)| (s, None, d.to_string()));
        Ok(detail_scalar(row, r.rows() as u64, c.rows() as u64))
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self
                .sides
                .iter()
                .map(|s| 8 * s.probabilities.capacity() + 16 * s.labels.capacity())
                .sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Utf8(Some(
            serde_json::to_string(&self.sides).unwrap_or_default(),
        ))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let s = states[0].as_string::<i32>();
        for i in 0..s.len() {
            if s.is_null(i) {
                continue;
            }
            let sides: [Side; 2] = match serde_json::from_str(s.value(i)) {
                Ok(v) => v,
                Err(e) => return exec_err!("cbpe_estimate: bad partial state: {e}"),
            };
            for (mine, other) in self.sides.iter_mut().zip(sides) {
                if other.rows() == 0 {
                    continue;
                }
                if mine.dim != 0 && mine.dim != other.dim {
                    return exec_err!("cbpe_estimate: probabilities of {} and {} classes", mine.dim, other.dim);
                }
                mine.dim = other.dim;
                mine.probabilities.extend(other.probabilities);
                mine.labels.extend(other.labels);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn softmax_is_exact_and_stable_for_large_logits() {
        // scipy.special.softmax([1, 2, 3])
        let p = softmax_row(&[1.0, 2.0, 3.0]);
        for (a, b) in p
            .iter()
            .zip([0.09003057317038046, 0.24472847105479767, 0.6652409557748219])
        {
            assert!((a - b).abs() < 1e-15, "{p:?}");
        }
        let p = softmax_row(&[1000.0, 1000.0, -1000.0]);
        assert_eq!(p, vec![0.5, 0.5, 0.0]);
    }

    #[test]
    fn isotonic_regression_pools_violators_as_scikit_learn() {
        // sklearn.isotonic.IsotonicRegression(out_of_bounds="clip").fit(x, y)
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [1.0, 3.0, 2.0, 4.0, 3.5, 5.0];
        let f = isotonic_fit(&x, &y);
        let at: Vec<f64> = x.iter().map(|v| isotonic_predict(&f, *v)).collect();
        assert_eq!(at, vec![1.0, 2.5, 2.5, 3.75, 3.75, 5.0]);
        assert_eq!(isotonic_predict(&f, 0.0), 1.0);
        assert_eq!(isotonic_predict(&f, 9.0), 5.0);
        assert_eq!(isotonic_predict(&f, 2.5), 2.5);
        assert_eq!(isotonic_predict(&f, 3.5), 3.125);
    }

    #[test]
    fn expected_auc_of_zero_one_probabilities_is_the_mann_whitney_auc() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4];
        let y = [0.0, 0.0, 1.0, 1.0, 1.0];
        // Pairs (pos, neg): (0.35,0.1)1 (0.35,0.4)0 (0.8,·)2 (0.4,0.1)1 (0.4,0.4)½ → 4.5/6.
        assert_eq!(expected_auc(&s, &y), Some(0.75));
    }

    /// Events whose true class follows the model's (miscalibrated) scores:
    /// after calibration on the reference, the estimate on a shifted current
    /// window is within its band of the realised accuracy.
    #[test]
    fn the_estimate_follows_the_realised_accuracy_under_covariate_shift() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut side = |n: usize, shift: f64| {
            let mut s = Side {
                dim: 2,
                ..Default::default()
            };
            for _ in 0..n {
                let z: f64 = rng.random::<f64>() * 6.0 - 3.0 + shift;
                let truth = 1.0 / (1.0 + (-1.5 * z).exp());
                let model = 1.0 / (1.0 + (-3.0 * z).exp()); // overconfident
                let y = i64::from(rng.random::<f64>() < truth);
                s.probabilities.extend([1.0 - model, model]);
                s.labels.push(Some(y));
            }
            s
        };
        let r = side(20_000, 0.0);
        for shift in [0.0, 1.5, -2.0] {
            let c = side(5_000, shift);
            let (_, d) = estimate(&r, &c).unwrap();
            let est = d["estimated_accuracy"].as_f64().unwrap();
            let realised = d["realised_accuracy"].as_f64().unwrap();
            let band = d["band"].as_array().unwrap();
            let half = (band[1].as_f64().unwrap() - band[0].as_f64().unwrap()) / 2.0;
            assert!(
                (est - realised).abs() <= half,
                "shift {shift}: {est} vs {realised} ± {half}"
            );
            let auc = d["estimated_roc_auc"].as_f64().unwrap();
            assert!((0.5..1.0).contains(&auc), "{auc}");
        }
        assert!(
            estimate(&Side::default(), &r).is_none(),
            "no labelled reference, no estimate"
        );
    }
}
