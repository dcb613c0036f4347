//! The statistics as DataFusion aggregate UDFs, so detectors are SQL over the
//! `windows` table (DESIGN §3):
//!
//! ```sql
//! SELECT key, ks_test(mean_intensity, window = 'current') AS mean_intensity FROM windows GROUP BY key
//! SELECT key, mmd_test(embedding, window = 'current', 200, 7) AS embedding FROM windows GROUP BY key
//! ```
//!
//! Each returns a struct `{statistic, p_value, n_reference, n_current}`
//! (`mmd_test` adds `sigma`), or NULL when a side has too few rows.
//! `mmd_test(vector, is_current [, permutations [, seed [, sigma]]])`: the
//! optional arguments are literals; sigma ≤ 0 means the median heuristic.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, StructArray, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};

use super::ks::ks_2samp;
use super::mmd::{MmdOptions, mmd_test};

/// Default number of permutations of `mmd_test` when the query gives none.
pub const DEFAULT_PERMUTATIONS: usize = 200;

/// All driftwatch aggregate functions, for registration in a session.
pub fn all() -> Vec<AggregateUDF> {
    vec![AggregateUDF::from(KsTest::new()), AggregateUDF::from(MmdTest::new())]
}

fn result_fields(extra: &[&str]) -> Fields {
    let mut f = vec![
        Field::new("statistic", DataType::Float64, false),
        Field::new("p_value", DataType::Float64, false),
        Field::new("n_reference", DataType::UInt64, false),
        Field::new("n_current", DataType::UInt64, false),
    ];
    f.extend(extra.iter().map(|n| Field::new(*n, DataType::Float64, false)));
    Fields::from(f)
}

/// One-row struct scalar; `None` gives a NULL struct of the same type.
fn result_scalar(fields: Fields, vals: Option<(f64, f64, usize, usize, Vec<f64>)>) -> ScalarValue {
    let (s, p, nr, nc, extra, nulls) = match vals {
        Some((s, p, nr, nc, extra)) => (s, p, nr as u64, nc as u64, extra, None),
        None => (
            0.0,
            1.0,
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

fn as_bool<'a>(values: &'a ArrayRef, fname: &str) -> Result<&'a BooleanArray> {
    match values.data_type() {
        DataType::Boolean => Ok(values.as_boolean()),
        t => exec_err!("{fname}: second argument (is_current) must be boolean, e.g. window = 'current'; got {t}"),
    }
}

// ---------------------------------------------------------------- ks_test

/// `ks_test(value, is_current)`: two-sample KS, see [`super::ks`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KsTest {
    signature: Signature,
}

impl KsTest {
    pub fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl Default for KsTest {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for KsTest {
    fn name(&self) -> &str {
        "ks_test"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields(&[])))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(KsAcc::default()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            list_field(args.name, "reference"),
            list_field(args.name, "current"),
        ])
    }
}

#[derive(Debug, Default)]
struct KsAcc {
    reference: Vec<f64>,
    current: Vec<f64>,
}

impl Accumulator for KsAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let v = as_f64(&values[0], "ks_test")?;
        let c = as_bool(&values[1], "ks_test")?;
        for i in 0..v.len() {
            // NULL or non-finite values (e.g. from a derived SQL column) carry no information.
            if v.is_null(i) || c.is_null(i) || !v.value(i).is_finite() {
                continue;
            }
            if c.value(i) {
                &mut self.current
            } else {
                &mut self.reference
            }
            .push(v.value(i));
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let r = ks_2samp(&self.reference, &self.current)
            .map(|r| (r.statistic, r.p_value, self.reference.len(), self.current.len(), vec![]));
        Ok(result_scalar(result_fields(&[]), r))
    }
    fn size(&self) -> usize {
        size_of_val(self) + 8 * (self.reference.capacity() + self.current.capacity())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![list_scalar(&self.reference), list_scalar(&self.current)])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        extend_from_list(&mut self.reference, &states[0])?;
        extend_from_list(&mut self.current, &states[1])
    }
}

// ---------------------------------------------------------------- mmd_test

/// `mmd_test(vector, is_current [, permutations [, seed [, sigma]]])`: MMD², see [`super::mmd`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MmdTest {
    signature: Signature,
}

impl MmdTest {
    pub fn new() -> Self {
        let sig = TypeSignature::Any;
        Self {
            signature: Signature::one_of(vec![sig(2), sig(3), sig(4), sig(5)], Volatility::Immutable),
        }
    }
}

impl Default for MmdTest {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for MmdTest {
    fn name(&self) -> &str {
        "mmd_test"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(result_fields(&["sigma"])))
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MmdAcc::default()))
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
        ])
    }
}

#[derive(Debug)]
struct MmdAcc {
    reference: Vec<f64>,
    current: Vec<f64>,
    dim: Option<usize>,
    opts: MmdOptions,
}

impl Default for MmdAcc {
    fn default() -> Self {
        Self {
            reference: vec![],
            current: vec![],
            dim: None,
            opts: MmdOptions {
                permutations: DEFAULT_PERMUTATIONS,
                seed: 0,
                sigma: None,
            },
        }
    }
}

/// First non-null value of a literal argument column, as u64.
fn literal_u64(a: &ArrayRef, what: &str) -> Result<Option<u64>> {
    let v = as_f64(a, "mmd_test")?;
    match v.iter().flatten().next() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as u64)),
        Some(x) => exec_err!("mmd_test: {what} must be a non-negative integer, got {x}"),
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
}

impl Accumulator for MmdAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(a) = values.get(2)
            && let Some(b) = literal_u64(a, "permutations")?
        {
            self.opts.permutations = b as usize;
        }
        if let Some(a) = values.get(3)
            && let Some(s) = literal_u64(a, "seed")?
        {
            self.opts.seed = s;
        }
        if let Some(a) = values.get(4) {
            let s = as_f64(a, "mmd_test")?;
            self.opts.sigma = s.iter().flatten().next().filter(|s| *s > 0.0);
        }
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
            .and_then(|d| mmd_test(&self.reference, &self.current, d, &self.opts))
            .map(|r| {
                let d = self.dim.unwrap_or(1);
                (
                    r.statistic,
                    r.p_value,
                    self.reference.len() / d,
                    self.current.len() / d,
                    vec![r.sigma],
                )
            });
        Ok(result_scalar(result_fields(&["sigma"]), r))
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
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        extend_from_list(&mut self.reference, &states[0])?;
        extend_from_list(&mut self.current, &states[1])?;
        if let Some(d) = states[2]
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
            .iter()
            .flatten()
            .next()
        {
            self.set_dim(d as usize)?;
        }
        let u = |i: usize| {
            states[i]
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                .iter()
                .flatten()
                .next()
        };
        if let Some(p) = u(3) {
            self.opts.permutations = p as usize;
        }
        if let Some(s) = u(4) {
            self.opts.seed = s;
        }
        if let Some(s) = states[5].as_primitive::<Float64Type>().iter().flatten().next() {
            self.opts.sigma = Some(s);
        }
        Ok(())
    }
}
