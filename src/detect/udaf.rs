//! The statistics as DataFusion aggregate UDFs, so detectors are SQL over the
//! `windows` table (DESIGN §3):
//!
//! ```sql
//! SELECT key, ks_test(mean_intensity, window = 'current') AS mean_intensity FROM windows GROUP BY key
//! SELECT key, mmd_test(embedding, window = 'current', 200, 7) AS embedding FROM windows GROUP BY key
//! ```
//!
//! Each returns a struct `{statistic, p_value, n_reference, n_current}`
//! (`mmd_test` adds `sigma`), or NULL when a side has too few rows. Tests
//! (`ks_test`, `chi2_test`, `mmd_test`) give a p-value; distances (`psi`,
//! `kl_divergence`, `js_divergence`, `wasserstein_distance`) a NULL one and
//! are compared to a threshold on the statistic.
//! `mmd_test(vector, is_current [, permutations [, seed [, sigma [, stop_after [, threads [, stream]]]]]])`:
//! the optional arguments are literals but `stream`; sigma ≤ 0 means the
//! median heuristic; stop_after = h > 0 stops the permutations once h
//! statistics reach the observed one (Besag–Clifford sequential p-value; 0
//! or absent: all permutations); threads (default 1) compute the kernel rows
//! and the permutations (the result does not depend on it); stream (any
//! expression, its first value counts) names whose evaluations these are,
//! so that the kernel cache keeps one window per stream. Its result adds
//! `permutations`, the number drawn.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, StringArray, StructArray, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};

use super::chi2::{chi2_homogeneity, count_table};
use super::divergence::{self, DEFAULT_BINS, Metric};
use super::ks::ks_2samp;
use super::mmd::{MAX_THREADS, MmdOptions, mmd_linear, mmd_test_of};
use super::udaf_labels::{LabelStat, LabelledTest};

/// Default number of permutations of `mmd_test` when the query gives none.
pub const DEFAULT_PERMUTATIONS: usize = 200;

/// All driftwatch aggregate functions, for registration in a session.
pub fn all() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(TwoSample::new("ks_test", Stat::Ks)),
        AggregateUDF::from(TwoSample::new("chi2_test", Stat::Chi2)),
        AggregateUDF::from(TwoSample::new("psi", Stat::Distance(Metric::Psi))),
        AggregateUDF::from(TwoSample::new("kl_divergence", Stat::Distance(Metric::Kl))),
        AggregateUDF::from(TwoSample::new("js_divergence", Stat::Distance(Metric::Js))),
        AggregateUDF::from(TwoSample::new(
            "wasserstein_distance",
            Stat::Distance(Metric::Wasserstein),
        )),
        AggregateUDF::from(MmdTest::new(false)),
        AggregateUDF::from(MmdTest::new(true)),
        AggregateUDF::from(LabelledTest::new(LabelStat::ErrorRate)),
        AggregateUDF::from(LabelledTest::new(LabelStat::LabelShift)),
    ]
    .into_iter()
    .chain(super::kinds::udafs())
    .collect()
}

fn result_fields(extra: &[&str]) -> Fields {
    let mut f = vec![
        Field::new("statistic", DataType::Float64, false),
        Field::new("p_value", DataType::Float64, true),
        Field::new("n_reference", DataType::UInt64, false),
        Field::new("n_current", DataType::UInt64, false),
    ];
    f.extend(extra.iter().map(|n| Field::new(*n, DataType::Float64, false)));
    Fields::from(f)
}

/// One-row struct scalar; `None` gives a NULL struct of the same type.
/// (statistic, p-value, reference rows, current rows, extra fields).
type ResultRow = (f64, Option<f64>, usize, usize, Vec<f64>);

fn result_scalar(fields: Fields, vals: Option<ResultRow>) -> ScalarValue {
    let (s, p, nr, nc, extra, nulls) = match vals {
        Some((s, p, nr, nc, extra)) => (s, p, nr as u64, nc as u64, extra, None),
        None => (
            0.0,
            None,
            0,
            0,
            vec![0.0; fields.len() - 4],
            Some(NullBuffer::new_null(1)),
        ),
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![s])),
        Arc::new(Float64Array::from(vec![p])),
        Arc::new(UInt64Array::from(vec![nr])),
        Arc::new(UInt64Array::from(vec![nc])),
    ];
    cols.extend(
        extra
            .into_iter()
            .map(|v| Arc::new(Float64Array::from(vec![v])) as ArrayRef),
    );
    ScalarValue::Struct(Arc::new(StructArray::new(fields, cols, nulls)))
}

fn list_scalar(values: &[f64]) -> ScalarValue {
    let arr = ListArray::new(
        Arc::new(Field::new_list_field(DataType::Float64, true)),
        OffsetBuffer::from_lengths([values.len()]),
        Arc::new(Float64Array::from(values.to_vec())),
        None,
    );
    ScalarValue::List(Arc::new(arr))
}

fn list_field(name: &str, state: &str) -> FieldRef {
    Arc::new(Field::new(
        format!("{name}[{state}]"),
        DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
        true,
    ))
}

/// Appends every value of every row of a List<Float64> state column.
fn extend_from_list(dst: &mut Vec<f64>, state: &ArrayRef) -> Result<()> {
    let list = state.as_list::<i32>();
    for i in 0..list.len() {
        if list.is_valid(i) {
            let v = list.value(i);
            dst.extend(v.as_primitive::<Float64Type>().iter().flatten());
        }
    }
    Ok(())
}

fn as_f64(values: &ArrayRef, fname: &str) -> Result<Float64Array> {
    match values.data_type() {
        t if t.is_numeric() => Ok(cast(values, &DataType::Float64)?.as_primitive::<Float64Type>().clone()),
        t => exec_err!("{fname}: first argument must be numeric, got {t}"),
    }
}

/// Each row's weight: the events it stands for (the windows table's
/// `_weight`, see [`crate::window::sample`]); 1 each without the argument.
pub(crate) fn weights(values: &[ArrayRef], at: usize, fname: &str) -> Result<Option<Vec<u64>>> {
    let Some(w) = values.get(at) else {
        return Ok(None);
    };
    if !w.data_type().is_integer() {
        return exec_err!(
            "{fname}: the weight argument must be an integer column such as _weight, got {}",
            w.data_type()
        );
    }
    let w = cast(w, &DataType::UInt64)?;
    let w = w.as_primitive::<UInt64Type>();
    Ok(Some(
        (0..w.len())
            .map(|i| if w.is_valid(i) { w.value(i) } else { 0 })
            .collect(),
    ))
}

fn as_bool<'a>(values: &'a ArrayRef, fname: &str) -> Result<&'a BooleanArray> {
    match values.data_type() {
        DataType::Boolean => Ok(values.as_boolean()),
        t => exec_err!("{fname}: second argument (is_current) must be boolean, e.g. window = 'current'; got {t}"),
    }
}

// ---------------------------------------------------------------- two-sample tests on one column

/// What a [`TwoSample`] aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Kolmogorov–Smirnov on a numeric column.
    Ks,
    /// Chi-square homogeneity on a categorical column (any type; values compared as text).
    Chi2,
    /// A distance without p-value (float columns binned, others by category).
    Distance(Metric),
}

/// `ks_test(value, is_current)`, `chi2_test(value, is_current [, weight])`,
/// `psi(value, is_current [, bins])`, `kl_divergence(…)`, `js_divergence(…)`,
/// `wasserstein_distance(value, is_current)`: see [`super::ks`],
/// [`super::chi2`], [`super::divergence`]. Distances return a NULL `p_value`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TwoSample {
    name: &'static str,
    stat: Stat,
    signature: Signature,
}

impl TwoSample {
    pub fn new(name: &'static str, stat: Stat) -> Self {
        let binned = matches!(stat, Stat::Distance(m) if m != Metric::Wasserstein);
        // The third argument: a distance's bins, chi2's weight.
        let arities = if binned || stat == Stat::Chi2 {
            vec![2, 3]
        } else {
            vec![2]
        };
        Self {
            name,
            stat,
            signature: Signature::one_of(
                arities.into_iter().map(TypeSignature::Any).collect(),
                Volatility::Immutable,
            ),
        }
    }
}

/// Whether `stat` treats values of type `t` as categories (`name`: for errors).
fn categorical(name: &str, stat: Stat, t: &DataType) -> Result<bool> {
    match stat {
        Stat::Ks | Stat::Distance(Metric::Wasserstein) if t.is_numeric() => Ok(false),
        Stat::Ks | Stat::Distance(Metric::Wasserstein) => {
            exec_err!("{name}: first argument must be numeric, got {t}")
        }
        Stat::Chi2 => Ok(true),
        Stat::Distance(_) => Ok(!t.is_floating()),
    }
}

impl AggregateUDFImpl for TwoSample {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if let Some(t) = args.first() {
            categorical(self.name, self.stat, t)?;
        }
        Ok(DataType::Struct(result_fields(&[])))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SampleAcc {
            name: self.name,
            stat: self.stat,
            numeric: Default::default(),
            categories: Default::default(),
            bins: None,
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let text = |state: &str| {
            Arc::new(Field::new(
                format!("{}[{state}]", args.name),
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ))
        };
        Ok(vec![
            list_field(args.name, "reference"),
            list_field(args.name, "current"),
            text("reference_categories"),
            text("current_categories"),
            Arc::new(Field::new(format!("{}[bins]", args.name), DataType::UInt64, true)),
            list_field(args.name, "reference_counts"),
            list_field(args.name, "current_counts"),
        ])
    }
}

/// `n` more `value`s in a window's category counts.
fn count(counts: &mut BTreeMap<String, u64>, value: &str, n: u64) {
    match counts.get_mut(value) {
        Some(c) => *c += n,
        None => {
            counts.insert(value.to_string(), n);
        }
    }
}

/// Values of both windows, numeric or categorical, kept until evaluation.
#[derive(Debug)]
struct SampleAcc {
    name: &'static str,
    stat: Stat,
    /// [reference, current]
    numeric: [Vec<f64>; 2],
    /// Category → count: a window of categories is its counts, and a
    /// value already seen costs a lookup, not an allocation.
    categories: [BTreeMap<String, u64>; 2],
    bins: Option<u64>,
}

impl SampleAcc {
    fn sizes(&self) -> (usize, usize) {
        (
            self.numeric[0].len() + self.categories[0].values().sum::<u64>() as usize,
            self.numeric[1].len() + self.categories[1].values().sum::<u64>() as usize,
        )
    }
}

impl Accumulator for SampleAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        // chi2_test(value, is_current [, weight]): only chi2 takes a weight.
        let weights = match self.stat {
            Stat::Chi2 => weights(values, 2, self.name)?,
            _ => None,
        };
        if self.stat != Stat::Chi2
            && let Some(a) = values.get(2)
            && let Some(b) = literal_u64(a, self.name, "bins")?
        {
            if b < 2 {
                return exec_err!("{}: bins must be at least 2, got {b}", self.name);
            }
            self.bins = Some(b);
        }
        let c = as_bool(&values[1], self.name)?;
        if categorical(self.name, self.stat, values[0].data_type())? {
            let text = cast(&values[0], &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            for i in 0..text.len() {
                let n = weights.as_ref().map_or(1, |w| w[i]);
                if text.is_valid(i) && c.is_valid(i) && n > 0 {
                    count(&mut self.categories[usize::from(c.value(i))], text.value(i), n);
                }
            }
        } else {
            let v = as_f64(&values[0], self.name)?;
            for i in 0..v.len() {
                // NULL or non-finite values (e.g. from a derived SQL column) carry no information.
                if v.is_valid(i) && c.is_valid(i) && v.value(i).is_finite() {
                    self.numeric[usize::from(c.value(i))].push(v.value(i));
                }
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let [rn, cn] = &self.numeric;
        let [rc, cc] = &self.categories;
        let bins = self.bins.map_or(DEFAULT_BINS, |b| b as usize);
        let r: Option<(f64, Option<f64>)> = match self.stat {
            Stat::Ks => ks_2samp(rn, cn).map(|r| (r.statistic, Some(r.p_value))),
            Stat::Chi2 => {
                let (p, q) = count_table(rc, cc);
                chi2_homogeneity(&p, &q).map(|r| (r.statistic, Some(r.p_value)))
            }
            Stat::Distance(m) if rc.is_empty() && cc.is_empty() => {
                divergence::numeric(m, rn, cn, bins).map(|d| (d, None))
            }
            Stat::Distance(m) => {
                let (p, q) = count_table(rc, cc);
                divergence::categorical_counts(m, &p, &q).map(|d| (d, None))
            }
        };
        let (nr, nc) = self.sizes();
        Ok(result_scalar(
            result_fields(&[]),
            r.map(|(s, p)| (s, p, nr, nc, vec![])),
        ))
    }
    fn size(&self) -> usize {
        size_of_val(self)
            + 8 * (self.numeric[0].capacity() + self.numeric[1].capacity())
            + self
                .categories
                .iter()
                .flatten()
                .map(|(s, _)| s.capacity() + 48)
                .sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        // Each category once, its count beside it (exact as f64 below 2^53).
        let text = |v: &BTreeMap<String, u64>| {
            let values: Vec<&str> = v.keys().map(String::as_str).collect();
            let arr = ListArray::new(
                Arc::new(Field::new_list_field(DataType::Utf8, true)),
                OffsetBuffer::from_lengths([values.len()]),
                Arc::new(StringArray::from_iter_values(values)),
                None,
            );
            ScalarValue::List(Arc::new(arr))
        };
        Ok(vec![
            list_scalar(&self.numeric[0]),
            list_scalar(&self.numeric[1]),
            text(&self.categories[0]),
            text(&self.categories[1]),
            ScalarValue::UInt64(self.bins),
            list_scalar(&self.categories[0].values().map(|n| *n as f64).collect::<Vec<_>>()),
            list_scalar(&self.categories[1].values().map(|n| *n as f64).collect::<Vec<_>>()),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for side in 0..2 {
            extend_from_list(&mut self.numeric[side], &states[side])?;
            let (list, counts) = (states[2 + side].as_list::<i32>(), states[5 + side].as_list::<i32>());
            for i in 0..list.len() {
                if list.is_valid(i) && counts.is_valid(i) {
                    let (v, n) = (list.value(i), counts.value(i));
                    let n = n.as_primitive::<Float64Type>();
                    for (s, n) in v.as_string::<i32>().iter().zip(n.iter()) {
                        if let (Some(s), Some(n)) = (s, n) {
                            count(&mut self.categories[side], s, n as u64);
                        }
                    }
                }
            }
        }
        if let Some(b) = states[4].as_primitive::<UInt64Type>().iter().flatten().next() {
            self.bins = Some(b);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- mmd_test

/// `mmd_test(vector, is_current [, permutations [, seed [, sigma [, stop_after [, threads [, stream]]]]]])`:
/// MMD² with a permutation p-value (sequential when stop_after > 0); `stream`
/// names whose evaluations these are (any value, e.g. the detector and the
/// key: [`super::mmd::mmd_test_of`]); `mmd_linear_test(vector, is_current [, sigma])`:
/// the linear-time statistic with its normal p-value. See [`super::mmd`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MmdTest {
    linear: bool,
    signature: Signature,
}

impl MmdTest {
    pub fn new(linear: bool) -> Self {
        let sig = TypeSignature::Any;
        let arities = if linear { vec![2, 3] } else { vec![2, 3, 4, 5, 6, 7, 8] };
        Self {
            linear,
            signature: Signature::one_of(arities.into_iter().map(sig).collect(), Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for MmdTest {
    fn name(&self) -> &str {
        if self.linear { "mmd_linear_test" } else { "mmd_test" }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields(mmd_extras(self.linear))))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MmdAcc {
            linear: self.linear,
            ..Default::default()
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let f = |s: &str, t: DataType| Arc::new(Field::new(format!("{}[{s}]", args.name), t, true));
        Ok(vec![
            list_field(args.name, "reference"),
            list_field(args.name, "current"),
            f("dim", DataType::UInt64),
            f("permutations", DataType::UInt64),
            f("seed", DataType::UInt64),
            f("sigma", DataType::Float64),
            f("stop_after", DataType::UInt64),
            f("threads", DataType::UInt64),
            f("stream", DataType::UInt64),
        ])
    }
}

/// The result fields of `mmd_test` (and `mmd_linear_test`) besides the common ones.
fn mmd_extras(linear: bool) -> &'static [&'static str] {
    if linear {
        &["sigma", "sigma_fallback"]
    } else {
        &["sigma", "sigma_fallback", "permutations"]
    }
}

#[derive(Debug)]
struct MmdAcc {
    linear: bool,
    reference: Vec<f64>,
    current: Vec<f64>,
    dim: Option<usize>,
    opts: MmdOptions,
    /// A hash of the `stream` argument's first value.
    stream: Option<u64>,
}

impl Default for MmdAcc {
    fn default() -> Self {
        Self {
            linear: false,
            reference: vec![],
            current: vec![],
            dim: None,
            stream: None,
            opts: MmdOptions {
                permutations: DEFAULT_PERMUTATIONS,
                seed: 0,
                sigma: None,
                threads: 1,
                stop_after: None,
            },
        }
    }
}

/// A value of `mmd_test`'s `stream` argument as the kernel cache's stream
/// id (the same in every run: std's SipHash with its fixed keys).
fn stream_hash(v: &ScalarValue) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// `mmd_test`'s threads: 1 to [`MAX_THREADS`].
fn threads_arg(t: u64) -> Result<usize> {
    match usize::try_from(t) {
        Ok(t @ 1..=MAX_THREADS) => Ok(t),
        _ => exec_err!("mmd_test: threads must be 1 to {MAX_THREADS}, got {t}"),
    }
}

/// First non-null value of a literal argument column, as u64.
fn literal_u64(a: &ArrayRef, fname: &str, what: &str) -> Result<Option<u64>> {
    let v = as_f64(a, fname)?;
    match v.iter().flatten().next() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as u64)),
        Some(x) => exec_err!("{fname}: {what} must be a non-negative integer, got {x}"),
        None => Ok(None),
    }
}

impl MmdAcc {
    fn set_dim(&mut self, d: usize) -> Result<()> {
        match self.dim {
            Some(old) if old != d => exec_err!("mmd_test: vectors of different lengths ({old} and {d})"),
            _ => {
                self.dim = Some(d);
                Ok(())
            }
        }
    }

    /// The literal arguments after the two columns: `mmd_test(x, is_current,
    /// permutations, seed, sigma, stop_after, threads, stream)`,
    /// `mmd_linear_test(x, is_current, sigma)`.
    fn read_options(&mut self, values: &[ArrayRef]) -> Result<()> {
        let arg = |i: usize, what: &str| match values.get(i) {
            Some(a) if !self.linear => literal_u64(a, "mmd_test", what),
            _ => Ok(None),
        };
        if let Some(b) = arg(2, "permutations")? {
            self.opts.permutations = b as usize;
        }
        if let Some(s) = arg(3, "seed")? {
            self.opts.seed = s;
        }
        if let Some(h) = arg(5, "stop_after")? {
            self.opts.stop_after = (h > 0).then_some(h as usize);
        }
        if let Some(t) = arg(6, "threads")? {
            self.opts.threads = threads_arg(t)?;
        }
        if let Some(a) = values.get(7).filter(|a| !a.is_empty()) {
            self.stream = Some(stream_hash(&ScalarValue::try_from_array(a, 0)?));
        }
        let sigma_at = if self.linear { 2 } else { 4 };
        if let Some(a) = values.get(sigma_at) {
            let s = as_f64(a, "mmd_test")?;
            self.opts.sigma = s.iter().flatten().next().filter(|s| *s > 0.0);
        }
        Ok(())
    }
}

impl Accumulator for MmdAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.read_options(values)?;
        let c = as_bool(&values[1], "mmd_test")?;
        if values[0].is_empty() {
            return Ok(());
        }
        // `base`: where row 0 starts in `flat` (a sliced list keeps its whole child array).
        let (dim, flat, nulls, base) = match values[0].data_type() {
            DataType::FixedSizeList(_, d) => {
                let l = values[0].as_fixed_size_list();
                (
                    *d as usize,
                    cast(l.values(), &DataType::Float64)?,
                    l.logical_nulls(),
                    l.value_offset(0) as usize,
                )
            }
            DataType::Float32 | DataType::Float64 => {
                (1, cast(&values[0], &DataType::Float64)?, values[0].logical_nulls(), 0)
            }
            t => return exec_err!("mmd_test: first argument must be a fixed-size float vector or a float, got {t}"),
        };
        self.set_dim(dim)?;
        let flat = flat.as_primitive::<Float64Type>();
        for i in 0..values[0].len() {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) || c.is_null(i) {
                continue;
            }
            let start = base + i * dim;
            let row = &flat.values()[start..start + dim];
            if row.iter().any(|x| !x.is_finite()) {
                continue;
            }
            if c.value(i) {
                &mut self.current
            } else {
                &mut self.reference
            }
            .extend_from_slice(row);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let r = self
            .dim
            .and_then(|d| {
                if self.linear {
                    mmd_linear(&self.reference, &self.current, d, self.opts.sigma)
                } else {
                    mmd_test_of(self.stream, &self.reference, &self.current, d, &self.opts)
                }
            })
            .map(|r| {
                let d = self.dim.unwrap_or(1);
                (
                    r.statistic,
                    Some(r.p_value),
                    self.reference.len() / d,
                    self.current.len() / d,
                    [r.sigma, f64::from(u8::from(r.sigma_fallback)), r.permutations as f64]
                        [..mmd_extras(self.linear).len()]
                        .to_vec(),
                )
            });
        Ok(result_scalar(result_fields(mmd_extras(self.linear)), r))
    }
    fn size(&self) -> usize {
        size_of_val(self) + 8 * (self.reference.capacity() + self.current.capacity())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            list_scalar(&self.reference),
            list_scalar(&self.current),
            ScalarValue::UInt64(self.dim.map(|d| d as u64)),
            ScalarValue::UInt64(Some(self.opts.permutations as u64)),
            ScalarValue::UInt64(Some(self.opts.seed)),
            ScalarValue::Float64(self.opts.sigma),
            ScalarValue::UInt64(self.opts.stop_after.map(|h| h as u64)),
            ScalarValue::UInt64(Some(self.opts.threads as u64)),
            ScalarValue::UInt64(self.stream),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        extend_from_list(&mut self.reference, &states[0])?;
        extend_from_list(&mut self.current, &states[1])?;
        if let Some(d) = states[2].as_primitive::<UInt64Type>().iter().flatten().next() {
            self.set_dim(d as usize)?;
        }
        let u = |i: usize| states[i].as_primitive::<UInt64Type>().iter().flatten().next();
        if let Some(p) = u(3) {
            self.opts.permutations = p as usize;
        }
        if let Some(s) = u(4) {
            self.opts.seed = s;
        }
        if let Some(s) = states[5].as_primitive::<Float64Type>().iter().flatten().next() {
            self.opts.sigma = Some(s);
        }
        if let Some(h) = u(6) {
            self.opts.stop_after = Some(h as usize);
        }
        if let Some(t) = u(7) {
            self.opts.threads = threads_arg(t)?;
        }
        if let Some(s) = u(8) {
            self.stream = Some(s);
        }
        Ok(())
    }
}
