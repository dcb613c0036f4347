//! Data-quality detectors, as Evidently, TFDV and NannyML have them; each
//! gives a p-value, so each is part of the false-alarm budget:
//!
//! - `missing_share`: the share of missing values (null, or NaN in a float
//!   column) of each column, current vs reference: Fisher's exact test on the
//!   2×2 table (missing, present) × (reference, current), two-sided, as
//!   `scipy.stats.fisher_exact` (Pearson's chi-square beyond 10⁶ events).
//! - `unseen_categories`: the share of current values whose category never
//!   occurs in the reference. Under no drift the two windows are
//!   exchangeable, so the p-value is a permutation test of that count
//!   (seeded; (1 + #{X* ≥ X}) / (B + 1), valid at any sample size).
//! - `out_of_range`: the share of current values strictly outside the
//!   reference's range, or outside its `tail` … 1 − `tail` quantiles. For
//!   exchangeable continuous values, the probability mass outside the k-th
//!   smallest and k-th largest of n reference values is Beta(2k, n + 1 − 2k)
//!   (the sum of 2k of the n + 1 spacings of uniform order statistics; David
//!   & Nagaraja, *Order Statistics*, 2003, §2.5), so the count X of m current
//!   values outside is beta-binomial(m, 2k, n + 1 − 2k) and the p-value
//!   P(X ≥ x) is exact; ties only make it conservative.
//!
//! - `dead_letter_rate`: the share of the window's events that were
//!   dead-lettered, current vs reference, Fisher's exact test as above.
//!   Each decoded event carries the count of its partition's events
//!   rejected just before it (`_dead_letters`, set by the decoder whatever
//!   the batching), so a window counts the dead letters among its events; a
//!   keyed pipeline counts them in the key of the next decoded event of
//!   their partition (a rejected event's key cannot be trusted).
//!
//! Each test's `details` carry the counts the alert names.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Correction, Decision, Detector, Kind, Need, OptionError, Options, Reads, check_columns, per_column_sql};
use crate::config::{Alpha, Positive};
use crate::detect::labels::{FISHER_MAX_N, chi2_2x2, fisher_exact};
use crate::detect::special::ln_gamma;
use crate::detect::udaf_labels::{detail_fields, detail_scalar};
use crate::schema::DEAD_LETTERS_COL;

pub const MISSING_SHARE: Kind = Kind {
    name: "missing_share",
    about: "share of missing values (null or NaN) per column vs the reference, Fisher's exact test (p-value)",
    build: |name, o| build(name, o, Check::Missing),
    options: || &["columns", "alpha", "correction"],
    udafs: || udaf(Check::Missing),
};

pub const UNSEEN_CATEGORIES: Kind = Kind {
    name: "unseen_categories",
    about: "share of current values of categories the reference never had, per column (permutation p-value)",
    build: |name, o| build(name, o, Check::Unseen),
    options: || &["columns", "alpha", "correction", "permutations", "seed"],
    udafs: || udaf(Check::Unseen),
};

pub const OUT_OF_RANGE: Kind = Kind {
    name: "out_of_range",
    about: "share of current values outside the reference's range or tail quantiles, per numeric column (exact p-value)",
    build: |name, o| build(name, o, Check::Range),
    options: || &["columns", "alpha", "correction", "tail"],
    udafs: || udaf(Check::Range),
};

pub const DEAD_LETTER_RATE: Kind = Kind {
    name: "dead_letter_rate",
    about: "share of the window's events dead-lettered vs the reference, Fisher's exact test (p-value)",
    build: dead_letters,
    options: || &["alpha"],
    udafs: || udaf(Check::DeadLetters),
};

/// Default permutations of `unseen_categories`.
const DEFAULT_PERMUTATIONS: usize = 1000;

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Check {
    Missing,
    Unseen,
    Range,
    DeadLetters,
}

impl Check {
    fn kind(self) -> &'static str {
        match self {
            Check::Missing => "missing_share",
            Check::Unseen => "unseen_categories",
            Check::Range => "out_of_range",
            Check::DeadLetters => "dead_letter_rate",
        }
    }
    fn udaf(self) -> &'static str {
        match self {
            Check::Missing => "missing_share_test",
            Check::Unseen => "unseen_categories_test",
            Check::Range => "out_of_range_test",
            Check::DeadLetters => "dead_letter_test",
        }
    }

    /// What its test reads of a sampled window.
    fn reads(self) -> Reads {
        match self {
            Check::Missing => Reads::Presence,
            Check::Unseen | Check::DeadLetters => Reads::Values,
            Check::Range => Reads::Sample,
        }
    }
}

/// Options of `kind: missing_share | unseen_categories | out_of_range` (each
/// takes those its registration lists above).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QualityOptions {
    /// Columns to check (numbers for out_of_range; any scalar otherwise).
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// Significance level of the detector as a whole per evaluation
    /// (default 0.01, or derived from `alerting.ert`).
    #[serde(default)]
    alpha: Option<Alpha>,
    /// Correction across columns: `none`, `bonferroni` (default) or
    /// `benjamini_hochberg`.
    #[serde(default)]
    correction: Option<Correction>,
    /// unseen_categories: permutations for the p-value (default 1000;
    /// p ≥ 1/(permutations + 1)).
    #[serde(default)]
    permutations: Option<Positive>,
    /// unseen_categories: seed of the permutations (default 0).
    #[serde(default)]
    seed: Option<u64>,
    /// out_of_range: the share of the reference cut from each end to set
    /// the range, in [0, 0.25) (default 0: the reference's minimum and
    /// maximum; 0.001: its 0.1 % and 99.9 % quantiles).
    #[serde(default)]
    tail: Option<f64>,
}

#[derive(Debug)]
struct Quality {
    name: String,
    check: Check,
    columns: Vec<String>,
    alpha: Option<Alpha>,
    correction: Correction,
    permutations: usize,
    seed: u64,
    tail: f64,
}

fn build(name: String, o: Options, check: Check) -> Result<Box<dyn Detector>, OptionError> {
    let o: QualityOptions = o.parse()?;
    let tail = o.tail.unwrap_or(0.0);
    if !(0.0..0.25).contains(&tail) {
        return Err(OptionError::new(
            "tail",
            format!("`tail` must be in [0, 0.25), got {tail}"),
        ));
    }
    let columns = o
        .columns
        .ok_or_else(|| OptionError::item(format!("kind {} needs `columns`", check.kind())))?;
    Ok(Box::new(Quality {
        name,
        check,
        columns: super::non_empty(columns)?,
        alpha: o.alpha,
        correction: o.correction.unwrap_or_default(),
        permutations: o.permutations.map_or(DEFAULT_PERMUTATIONS, Positive::get),
        seed: o.seed.unwrap_or(0),
        tail,
    }))
}

impl Detector for Quality {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        self.check.kind()
    }
    fn columns(&self) -> Vec<String> {
        self.columns.clone()
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        let need = if self.check == Check::Range {
            Need::Number
        } else {
            Need::Scalar
        };
        check_columns(scored, &self.columns, self.check.kind(), need)
    }
    fn sql(&self) -> String {
        let extra = match self.check {
            Check::Missing => String::new(),
            Check::Unseen => format!(", {}, {}", self.permutations, self.seed),
            Check::Range => format!(", {:?}", self.tail),
            Check::DeadLetters => String::new(),
        };
        per_column_sql(self.check.udaf(), &self.columns, &extra, self.check.reads())
    }
    fn counted(&self) -> Vec<crate::window::CountGroup> {
        self.check.reads().groups(&self.columns)
    }
    fn decision(&self) -> Decision {
        Decision::test(self.alpha, self.correction)
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        Some(&mut self.alpha)
    }
    /// A permutation p-value is never below 1/(B + 1).
    fn check_alpha(&self) -> Result<(), OptionError> {
        let alpha = self.alpha.unwrap_or_default().0;
        let b = self.permutations as f64;
        if self.check == Check::Unseen && alpha < 1.0 / (b + 1.0) {
            return Err(OptionError::new(
                "permutations",
                format!(
                    "with {b} permutations the smallest p-value is 1/{}, above alpha {alpha:.2e}: this detector could never fire; use at least {} permutations",
                    b + 1.0,
                    (1.0 / alpha).ceil() as u64 - 1
                ),
            ));
        }
        Ok(())
    }
}

/// `kind: dead_letter_rate`: no columns; its only option is `alpha`.
#[derive(Debug)]
struct DeadLetters {
    name: String,
    alpha: Option<Alpha>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterOptions {
    /// Significance level per evaluation (default 0.01, or derived from
    /// `alerting.ert`).
    #[serde(default)]
    alpha: Option<Alpha>,
}

fn dead_letters(name: String, o: Options) -> Result<Box<dyn Detector>, OptionError> {
    let o: DeadLetterOptions = o.parse()?;
    Ok(Box::new(DeadLetters { name, alpha: o.alpha }))
}

impl Detector for DeadLetters {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "dead_letter_rate"
    }
    fn columns(&self) -> Vec<String> {
        vec![]
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        match scored.field_with_name(DEAD_LETTERS_COL) {
            Ok(_) => Ok(()),
            Err(_) => Err(OptionError::item(format!(
                "the events have no `{DEAD_LETTERS_COL}` column (a transform must keep it: `SELECT *, …`)"
            ))),
        }
    }
    fn sql(&self) -> String {
        per_column_sql("dead_letter_test", &[DEAD_LETTERS_COL.to_string()], "", Reads::Values)
    }
    fn counted(&self) -> Vec<crate::window::CountGroup> {
        Reads::Values.groups(&[DEAD_LETTERS_COL.to_string()])
    }
    fn decision(&self) -> Decision {
        Decision::test(self.alpha, Correction::None)
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        Some(&mut self.alpha)
    }
}

// ---------------------------------------------------------------- statistics

/// A column's values in one window, as each check needs them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Side {
    total: u64,
    missing: u64,
    /// Unseen: present values by category.
    categories: BTreeMap<String, u64>,
    /// Range: finite values.
    numbers: Vec<f64>,
}

impl Side {
    fn merge(&mut self, o: Side) {
        self.total += o.total;
        self.missing += o.missing;
        for (k, v) in o.categories {
            *self.categories.entry(k).or_default() += v;
        }
        self.numbers.extend(o.numbers);
    }
}

/// A test's outcome: statistic, p-value, details.
type Outcome = (f64, f64, serde_json::Value);

/// Fisher's exact test of (missing, present) × (reference, current).
fn missing_test(r: &Side, c: &Side) -> Option<Outcome> {
    if r.total == 0 || c.total == 0 {
        return None;
    }
    let (a, b) = (r.missing, r.total - r.missing);
    let (cm, cp) = (c.missing, c.total - c.missing);
    let p = if r.total + c.total > FISHER_MAX_N {
        chi2_2x2(a, b, cm, cp)
    } else {
        fisher_exact(a, b, cm, cp)
    };
    let share = |m: u64, n: u64| m as f64 / n as f64;
    let details = serde_json::json!({
        "reference_missing": a, "reference_share": share(a, r.total),
        "current_missing": cm, "current_share": share(cm, c.total),
    });
    Some((share(cm, c.total), p, details))
}

/// Fisher's exact test of (dead-lettered, decoded) × (reference, current);
/// a side's `missing` holds its dead letters and `total` its decoded events.
fn dead_letter_test(r: &Side, c: &Side) -> Option<Outcome> {
    if r.total == 0 || c.total == 0 {
        return None;
    }
    let (rd, cd) = (r.missing, c.missing);
    let p = if r.total + c.total + rd + cd > FISHER_MAX_N {
        chi2_2x2(rd, r.total, cd, c.total)
    } else {
        fisher_exact(rd, r.total, cd, c.total)
    };
    let share = |d: u64, n: u64| d as f64 / (d + n) as f64;
    let details = serde_json::json!({
        "reference_dead_letters": rd, "reference_share": share(rd, r.total),
        "current_dead_letters": cd, "current_share": share(cd, c.total),
    });
    Some((share(cd, c.total), p, details))
}

/// Current values whose category the reference lacks; permutation p-value.
fn unseen_test(r: &Side, c: &Side, permutations: usize, seed: u64) -> Option<Outcome> {
    let n: u64 = r.categories.values().sum();
    let m: u64 = c.categories.values().sum();
    if n == 0 || m == 0 {
        return None;
    }
    let unseen: Vec<(&String, &u64)> = c
        .categories
        .iter()
        .filter(|(k, _)| !r.categories.contains_key(*k))
        .collect();
    let observed: u64 = unseen.iter().map(|(_, v)| **v).sum();
    // Every permutation's count is ≥ 0: with nothing unseen the p-value is
    // exactly (1 + B)/(B + 1) = 1, no permutation needed (the usual case).
    let permutations = if observed == 0 { 0 } else { permutations };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let at_least = if n + m > SHUFFLE_UP_TO {
        unseen_split_counts(r, c, n, permutations, observed, &mut rng)
    } else {
        unseen_shuffles(r, c, n, permutations, observed, &mut rng)
    };
    let p = (1 + at_least) as f64 / (permutations + 1) as f64;
    let mut examples: Vec<(&String, &u64)> = unseen.clone();
    examples.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let details = serde_json::json!({
        "unseen_values": observed,
        "unseen_categories": unseen.len(),
        "examples": examples.iter().take(10).map(|(k, v)| serde_json::json!({"category": k, "count": v})).collect::<Vec<_>>(),
        "reference_categories": r.categories.len(),
        "permutations": permutations,
    });
    Some((observed as f64 / m as f64, p, details))
}

/// Pooled windows up to this many events are permuted event by event;
/// larger ones (sampled windows' exact counts) by their category counts.
const SHUFFLE_UP_TO: u64 = 200_000;

/// Permutations whose unseen count reaches `observed`: each shuffles the
/// pooled values and splits them at `n`.
fn unseen_shuffles(r: &Side, c: &Side, n: u64, permutations: usize, observed: u64, rng: &mut ChaCha8Rng) -> usize {
    // The pooled values as category ids; each permutation splits them anew.
    let mut ids: BTreeMap<&String, u32> = BTreeMap::new();
    for k in r.categories.keys().chain(c.categories.keys()) {
        let next = ids.len() as u32;
        ids.entry(k).or_insert(next);
    }
    let mut pooled: Vec<u32> = vec![];
    for side in [r, c] {
        for (k, v) in &side.categories {
            pooled.extend(std::iter::repeat_n(ids[k], *v as usize));
        }
    }
    let mut seen = vec![false; ids.len()];
    let mut at_least = 0usize;
    for _ in 0..permutations {
        pooled.shuffle(rng);
        seen.iter_mut().for_each(|s| *s = false);
        let (reference, current) = pooled.split_at(n as usize);
        reference.iter().for_each(|&i| seen[i as usize] = true);
        let x = current.iter().filter(|&&i| !seen[i as usize]).count() as u64;
        at_least += usize::from(x >= observed);
    }
    at_least
}

/// The same permutation distribution drawn from the category counts: a
/// uniform split of the pooled events into `n` and the rest gives each
/// category's share of the reference as successive hypergeometric draws
/// (the multivariate hypergeometric law, category by category), so a
/// permutation costs one draw per category, not one step per event.
fn unseen_split_counts(r: &Side, c: &Side, n: u64, permutations: usize, observed: u64, rng: &mut ChaCha8Rng) -> usize {
    use rand::distr::Distribution;
    let mut pooled: BTreeMap<&String, u64> = BTreeMap::new();
    for (k, v) in r.categories.iter().chain(&c.categories) {
        *pooled.entry(k).or_default() += v;
    }
    let total: u64 = pooled.values().sum();
    let mut at_least = 0usize;
    for _ in 0..permutations {
        let (mut left, mut draws, mut x) = (total, n, 0u64);
        for count in pooled.values() {
            let in_reference = match rand_distr::Hypergeometric::new(left, *count, draws) {
                Ok(h) => h.sample(rng),
                Err(_) => 0, // unreachable: count ≤ left and draws ≤ left by construction
            };
            if in_reference == 0 {
                x += count;
            }
            left -= count;
            draws -= in_reference;
        }
        at_least += usize::from(x >= observed);
    }
    at_least
}

/// Current values outside the reference's [k-th smallest, k-th largest],
/// k = max(1, ⌈tail·(n + 1)⌉); exact beta-binomial p-value.
fn range_test(r: &Side, c: &Side, tail: f64) -> Option<Outcome> {
    let n = r.numbers.len();
    let m = c.numbers.len();
    let k = ((tail * (n + 1) as f64).ceil() as usize).max(1);
    if m == 0 || 2 * k > n {
        return None;
    }
    let mut sorted = r.numbers.clone();
    sorted.sort_by(f64::total_cmp);
    let (low, high) = (sorted[k - 1], sorted[n - k]);
    let below = c.numbers.iter().filter(|v| **v < low).count();
    let above = c.numbers.iter().filter(|v| **v > high).count();
    let x = below + above;
    let (a, b) = ((2 * k) as f64, (n + 1 - 2 * k) as f64);
    let p = beta_binomial_sf(x, m, a, b);
    let details = serde_json::json!({
        "low": low, "high": high, "below": below, "above": above,
        "expected_share": a / (a + b),
    });
    Some((x as f64 / m as f64, p, details))
}

/// P(X ≥ x) for X ~ beta-binomial(m, a, b): Σ_{j ≥ x} C(m, j) B(j + a, m − j + b) / B(a, b).
pub fn beta_binomial_sf(x: usize, m: usize, a: f64, b: f64) -> f64 {
    if x == 0 {
        return 1.0;
    }
    let ln_beta = |p: f64, q: f64| ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q);
    let ln_choose = |n: f64, k: f64| ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0);
    let mf = m as f64;
    let base = ln_beta(a, b);
    let tail: f64 = (x..=m)
        .map(|j| {
            let j = j as f64;
            (ln_choose(mf, j) + ln_beta(j + a, mf - j + b) - base).exp()
        })
        .sum();
    tail.clamp(0.0, 1.0)
}

// ---------------------------------------------------------------- the aggregate functions

/// A check's aggregate function, registered by its kind.
fn udaf(check: Check) -> Vec<AggregateUDF> {
    let arities = [2, 3, 4, 5].into_iter().map(TypeSignature::Any).collect();
    vec![AggregateUDF::from(QualityTest {
        check,
        signature: Signature::one_of(arities, Volatility::Immutable),
    })]
}

/// `missing_share_test(value, is_current [, weight])`,
/// `unseen_categories_test(value, is_current [, permutations [, seed [, weight]]])`,
/// `out_of_range_test(value, is_current [, tail])`,
/// `dead_letter_test(_dead_letters, is_current [, weight])`: a struct
/// `{statistic (the current share), p_value, n_reference, n_current, details}`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct QualityTest {
    check: Check,
    signature: Signature,
}

impl AggregateUDFImpl for QualityTest {
    fn name(&self) -> &str {
        self.check.udaf()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if self.check == Check::Range
            && let Some(t) = args.first()
            && !t.is_numeric()
        {
            return exec_err!("out_of_range_test: first argument must be numeric, got {t}");
        }
        Ok(DataType::Struct(detail_fields()))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QualityAcc {
            check: self.check,
            sides: Default::default(),
            params: Params::default(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[sides]", args.name),
            DataType::Utf8,
            true,
        ))])
    }
}

/// The literal arguments.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Params {
    permutations: Option<usize>,
    seed: Option<u64>,
    tail: Option<f64>,
}

#[derive(Debug)]
struct QualityAcc {
    check: Check,
    /// [reference, current]
    sides: [Side; 2],
    params: Params,
}

/// The first value of a literal argument column.
fn literal(a: &ArrayRef) -> Result<Option<f64>> {
    if !a.data_type().is_numeric() {
        return exec_err!(
            "data-quality tests: literal arguments must be numbers, got {}",
            a.data_type()
        );
    }
    Ok(cast(a, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .iter()
        .flatten()
        .next())
}

impl QualityAcc {
    fn read_params(&mut self, values: &[ArrayRef]) -> Result<()> {
        let name = self.check.udaf();
        match self.check {
            Check::Unseen => {
                if let Some(b) = values.get(2).map(literal).transpose()?.flatten() {
                    if !(b >= 1.0 && b.fract() == 0.0) {
                        return exec_err!("{name}: permutations must be a positive integer, got {b}");
                    }
                    self.params.permutations = Some(b as usize);
                }
                if let Some(s) = values.get(3).map(literal).transpose()?.flatten() {
                    self.params.seed = Some(s as u64);
                }
            }
            Check::Range => {
                if let Some(t) = values.get(2).map(literal).transpose()?.flatten() {
                    if !(0.0..0.25).contains(&t) {
                        return exec_err!("{name}: tail must be in [0, 0.25), got {t}");
                    }
                    self.params.tail = Some(t);
                }
            }
            Check::Missing | Check::DeadLetters if values.len() > 3 => {
                return exec_err!("{name} takes (value, is_current [, weight])");
            }
            Check::Missing | Check::DeadLetters => {}
        }
        Ok(())
    }

    /// Each row's weight (the windows table's `_weight`): the last argument
    /// after the check's literals, if given.
    fn weights(&self, values: &[ArrayRef]) -> Result<Option<Vec<u64>>> {
        let at = match self.check {
            Check::Missing | Check::DeadLetters => 2,
            Check::Unseen => 4,
            Check::Range => return Ok(None),
        };
        crate::detect::udaf::weights(values, at, self.check.udaf())
    }
}

impl QualityAcc {
    /// `dead_letter_test`: per side, the events and the dead letters before them.
    fn count_dead_letters(
        &mut self,
        v: &ArrayRef,
        cur: &datafusion::arrow::array::BooleanArray,
        weights: Option<&[u64]>,
    ) -> Result<()> {
        if !v.data_type().is_integer() {
            return exec_err!("dead_letter_test: first argument must be the `{DEAD_LETTERS_COL}` count");
        }
        let counts = cast(v, &DataType::UInt64)?;
        let counts = counts.as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        for i in 0..counts.len() {
            if cur.is_null(i) {
                continue;
            }
            let n = weights.map_or(1, |w| w[i]);
            let side = &mut self.sides[usize::from(cur.value(i))];
            side.total += n;
            side.missing += n * if counts.is_valid(i) { counts.value(i) } else { 0 };
        }
        Ok(())
    }
}

impl Accumulator for QualityAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.read_params(values)?;
        let Some(cur) = values[1].as_boolean_opt() else {
            return exec_err!("{}: second argument (is_current) must be boolean", self.check.udaf());
        };
        let v = &values[0];
        let weights = self.weights(values)?;
        if self.check == Check::DeadLetters {
            return self.count_dead_letters(v, cur, weights.as_deref());
        }
        let floats = v
            .data_type()
            .is_floating()
            .then(|| cast(v, &DataType::Float64))
            .transpose()?;
        let floats = floats.as_ref().map(|f| f.as_primitive::<Float64Type>());
        let text = (self.check == Check::Unseen)
            .then(|| cast(v, &DataType::Utf8))
            .transpose()?;
        let text = text.as_ref().map(|t| t.as_string::<i32>());
        let numbers = (self.check == Check::Range)
            .then(|| cast(v, &DataType::Float64))
            .transpose()?;
        let numbers = numbers.as_ref().map(|n| n.as_primitive::<Float64Type>());
        for i in 0..v.len() {
            if cur.is_null(i) {
                continue;
            }
            let n = weights.as_ref().map_or(1, |w| w[i]);
            let side = &mut self.sides[usize::from(cur.value(i))];
            side.total += n;
            let missing = v.is_null(i) || floats.is_some_and(|f| f.value(i).is_nan());
            if missing {
                side.missing += n;
                continue;
            }
            if let Some(t) = text {
                *side.categories.entry(t.value(i).to_string()).or_default() += n;
            }
            if let Some(n) = numbers
                && n.value(i).is_finite()
            {
                side.numbers.push(n.value(i));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let [r, c] = &self.sides;
        let p = self.params;
        let out = match self.check {
            Check::Missing => missing_test(r, c),
            Check::Unseen => unseen_test(
                r,
                c,
                p.permutations.unwrap_or(DEFAULT_PERMUTATIONS),
                p.seed.unwrap_or(0),
            ),
            Check::Range => range_test(r, c, p.tail.unwrap_or(0.0)),
            Check::DeadLetters => dead_letter_test(r, c),
        };
        let row = out.map(|(s, p, d)| (s, Some(p), d.to_string()));
        Ok(detail_scalar(row, r.total, c.total))
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self
                .sides
                .iter()
                .map(|s| 8 * s.numbers.capacity() + s.categories.keys().map(|k| k.len() + 48).sum::<usize>())
                .sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let state = (&self.sides, self.params);
        Ok(vec![ScalarValue::Utf8(Some(
            serde_json::to_string(&state).unwrap_or_default(),
        ))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let s = states[0].as_string::<i32>();
        for i in 0..s.len() {
            if s.is_null(i) {
                continue;
            }
            let (sides, params): ([Side; 2], Params) = match serde_json::from_str(s.value(i)) {
                Ok(v) => v,
                Err(e) => return exec_err!("{}: bad partial state: {e}", self.check.udaf()),
            };
            let [r, c] = sides;
            self.sides[0].merge(r);
            self.sides[1].merge(c);
            self.params.permutations = self.params.permutations.or(params.permutations);
            self.params.seed = self.params.seed.or(params.seed);
            self.params.tail = self.params.tail.or(params.tail);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(values: &[Option<&str>]) -> Side {
        let mut s = Side::default();
        for v in values {
            s.total += 1;
            match v {
                Some(v) => *s.categories.entry(v.to_string()).or_default() += 1,
                None => s.missing += 1,
            }
        }
        s
    }

    fn numbers(v: impl IntoIterator<Item = f64>) -> Side {
        let numbers: Vec<f64> = v.into_iter().collect();
        Side {
            total: numbers.len() as u64,
            numbers,
            ..Default::default()
        }
    }

    #[test]
    fn beta_binomial_tail_matches_scipy() {
        // Exact rationals (scripts/golden_stats.py; scipy's betabinom.sf where it is accurate).
        let g = crate::detect::testgen::fixture("stats_golden.json");
        let cases = g["betabinom"].as_array().unwrap();
        assert!(cases.len() >= 6);
        for case in cases {
            let (x, m) = (
                case["x"].as_u64().unwrap() as usize,
                case["m"].as_u64().unwrap() as usize,
            );
            let (a, b) = (case["a"].as_f64().unwrap(), case["b"].as_f64().unwrap());
            let want = case["sf"].as_f64().unwrap();
            let got = beta_binomial_sf(x, m, a, b);
            // ln Γ differences of arguments near 10³: agreement to 1e-8 relative.
            assert!((got - want).abs() <= 1e-8 * want + 1e-14, "{case}: {got}");
        }
    }

    #[test]
    fn missing_share_is_fishers_test_on_the_counts() {
        let r = side(&[Some("a"), None, Some("b"), Some("c")]);
        let c = side(&[None, None, None, Some("a")]);
        let (share, p, d) = missing_test(&r, &c).unwrap();
        assert_eq!(share, 0.75);
        assert_eq!(p, fisher_exact(1, 3, 3, 1));
        assert_eq!(d["current_missing"], 3);
        assert_eq!(d["reference_missing"], 1);
        assert!(missing_test(&r, &Side::default()).is_none());
    }

    #[test]
    fn unseen_categories_count_the_new_ones_and_are_calibrated() {
        let r = side(&[Some("a"), Some("b"), Some("a"), Some("b")]);
        let c = side(&[Some("a"), Some("z"), Some("z"), Some("y")]);
        let (share, _, d) = unseen_test(&r, &c, 200, 1).unwrap();
        assert_eq!(share, 0.75);
        assert_eq!(d["unseen_values"], 3);
        assert_eq!(d["unseen_categories"], 2);
        assert_eq!(d["examples"][0]["category"], "z");
        // Same distribution, many rare categories: p-values uniform enough.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut draw = |n: usize| -> Side {
            use rand::Rng;
            let names: Vec<String> = (0..n).map(|_| format!("c{}", rng.random_range(0..60))).collect();
            side(&names.iter().map(|s| Some(s.as_str())).collect::<Vec<_>>())
        };
        let rejections = (0..200)
            .filter(|i| {
                let (r, c) = (draw(200), draw(100));
                unseen_test(&r, &c, 199, *i).unwrap().1 <= 0.05
            })
            .count();
        assert!(rejections <= 20, "{rejections} of 200 at 0.05");
    }

    /// Drawn from the category counts, the permutation distribution of the
    /// unseen count is the one of shuffling the events: over many
    /// permutations the two p-values agree, and calibration holds.
    #[test]
    fn unseen_categories_drawn_from_counts_match_the_event_shuffles() {
        let mut r = side(&[Some("a"); 30]);
        r.merge(side(&[Some("b"); 10]));
        r.merge(side(&[Some("q"); 1]));
        let mut c = side(&[Some("a"); 12]);
        c.merge(side(&[Some("z"); 2]));
        c.merge(side(&[Some("y"); 1]));
        let observed = 3;
        let n = 41;
        let b = 20_000;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let shuffled = unseen_shuffles(&r, &c, n, b, observed, &mut rng) as f64 / b as f64;
        let drawn = unseen_split_counts(&r, &c, n, b, observed, &mut rng) as f64 / b as f64;
        // Binomial standard error at p ≈ 0.1 and B = 20,000: about 0.002.
        assert!((shuffled - drawn).abs() < 0.01, "shuffles {shuffled}, counts {drawn}");
        assert!(shuffled > 0.0 && shuffled < 1.0, "{shuffled}");
    }

    /// Rows standing for several events (sampled windows' count rows) give
    /// what the events one by one give.
    #[test]
    fn weighted_rows_count_as_the_events_they_stand_for() {
        use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray, UInt64Array};
        let run = |check: Check, values: ArrayRef, cur: Vec<bool>, extra: Vec<ArrayRef>| {
            let mut acc = QualityAcc {
                check,
                sides: Default::default(),
                params: Params::default(),
            };
            let mut args: Vec<ArrayRef> = vec![values, Arc::new(BooleanArray::from(cur))];
            args.extend(extra);
            acc.update_batch(&args).unwrap();
            acc.evaluate().unwrap()
        };
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let weights = |w: Vec<u64>| Arc::new(UInt64Array::from(w)) as ArrayRef;
        // (value, window) with weights 3, 2, 4 — and the same nine events one by one.
        let (v, cur, w) = (vec![Some("a"), None, Some("z")], vec![false, true, true], vec![3, 2, 4]);
        let mut ev = vec![];
        let mut ec = vec![];
        for ((v, c), w) in v.iter().zip(&cur).zip(&w) {
            ev.extend(std::iter::repeat_n(*v, *w as usize));
            ec.extend(std::iter::repeat_n(*c, *w as usize));
        }
        // unseen_categories' literals (permutations, seed), one per row.
        let lits = |n: usize| -> Vec<ArrayRef> {
            vec![
                Arc::new(Int64Array::from(vec![199; n])),
                Arc::new(Int64Array::from(vec![4; n])),
            ]
        };
        for check in [Check::Missing, Check::Unseen] {
            let (mut weighted, plain) = match check {
                Check::Unseen => (lits(3), lits(9)),
                _ => (vec![], vec![]),
            };
            weighted.push(weights(w.clone()));
            let got = run(check, text(v.clone()), cur.clone(), weighted);
            let want = run(check, text(ev.clone()), ec.clone(), plain);
            assert_eq!(got, want, "{check:?}");
        }
        let dead = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let got = run(
            Check::DeadLetters,
            dead(vec![1, 0, 2]),
            cur.clone(),
            vec![weights(w.clone())],
        );
        let want = run(
            Check::DeadLetters,
            dead([vec![1; 3], vec![0; 2], vec![2; 4]].concat()),
            ec.clone(),
            vec![],
        );
        assert_eq!(got, want);
    }

    #[test]
    fn out_of_range_is_exact_for_exchangeable_values() {
        let r = numbers((0..99).map(f64::from));
        let c = numbers([-1.0, 50.0, 120.0, 98.0]);
        let (share, p, d) = range_test(&r, &c, 0.0).unwrap();
        assert_eq!(share, 0.5);
        assert_eq!(d["below"], 1);
        assert_eq!(d["above"], 1);
        assert_eq!(p, beta_binomial_sf(2, 4, 2.0, 98.0));
        // Under the null, P(p ≤ u) ≤ u (up to noise) for i.i.d. normals.
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut normals = |n: usize| numbers((0..n).map(|_| rng.random::<f64>() + rng.random::<f64>()));
        let ps: Vec<f64> = (0..400)
            .map(|_| range_test(&normals(300), &normals(150), 0.01).unwrap().1)
            .collect();
        let at = |u: f64| ps.iter().filter(|p| **p <= u).count() as f64 / ps.len() as f64;
        assert!(at(0.05) <= 0.08 && at(0.2) <= 0.26, "{} {}", at(0.05), at(0.2));
        // Too small a reference for the tail: no test.
        assert!(range_test(&numbers([1.0, 2.0]), &c, 0.4).is_none());
    }
}
