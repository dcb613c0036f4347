//! Drift detection. The statistics are pure functions (`ks`, `mmd`); `udaf`
//! exposes them to SQL; this module turns each configured detector into a
//! query over the `windows` table and reads its results.
//!
//! `windows` has the columns of the scored events plus `key` (Utf8, "" when
//! the pipeline is not keyed) and `window` (`'reference'` or `'current'`).
//! A detector query returns an optional `key` column and one or more result
//! columns, each a struct with `statistic` and `p_value` (what `ks_test` and
//! `mmd_test` return).

pub mod chi2;
pub mod divergence;
pub mod kinds;
pub mod kolmogorov;
pub mod ks;
pub mod labels;
pub mod mmd;
pub mod sequential;
pub mod simd;
pub mod special;
#[cfg(test)]
pub(crate) mod testgen;
pub mod udaf;
pub mod udaf_labels;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use serde::Serialize;

use crate::sql::SqlStage;
use crate::window::sample::{COUNTED_COL, WEIGHT_COL};
use crate::window::{Coords, Due};
pub use kinds::{Correction, Decision, Detector, DriftType, drift_type_name};

/// Name of the windows table and its two added columns.
pub const WINDOWS_TABLE: &str = "windows";
pub const KEY_COL: &str = "key";
pub const WINDOW_COL: &str = "window";

/// Detection failures.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("detector `{detector}`: {message}")]
    Plan { detector: String, message: String },
    #[error("detector `{detector}`: evaluation failed: {message}")]
    Run { detector: String, message: String },
}

impl DetectError {
    /// Name of the detector at fault ("" when it is not one detector's).
    pub fn detector(&self) -> &str {
        match self {
            DetectError::Plan { detector, .. } | DetectError::Run { detector, .. } => detector,
        }
    }
}

/// One test inside a detector (one column).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TestResult {
    pub column: String,
    pub statistic: f64,
    /// None for distances, which are compared to a threshold instead.
    pub p_value: Option<f64>,
    /// Whether this column drifted at the corrected threshold.
    pub drift: bool,
    /// What the test adds (per-class accuracies, estimated priors), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// A detector's result for one key and one evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectorResult {
    pub detector: String,
    pub kind: String,
    pub key: String,
    pub drift: bool,
    /// Statistic of the most significant test (largest distance for distances).
    pub statistic: f64,
    /// Smallest p-value among the tests (None for distance detectors).
    pub p_value: Option<f64>,
    /// What the tests are compared to: the per-test p-value cutoff (alpha
    /// after correction) for tests, the statistic's threshold for distances
    /// (None when a sql detector's distance has none configured).
    pub threshold: Option<f64>,
    pub tests: Vec<TestResult>,
    #[serde(skip)]
    pub coords: Option<Coords>,
}

struct Planned {
    name: String,
    kind: &'static str,
    decision: Decision,
    plan: crate::sql::Prepared,
}

/// Evaluations run and time spent per detector: a shared handle, readable
/// while (and after) a run owns the detectors (`bench` reports it).
#[derive(Debug, Clone, Default)]
pub struct DetectorClocks(Arc<Vec<Clock>>);

#[derive(Debug)]
struct Clock {
    name: String,
    runs: AtomicU64,
    spent_ns: AtomicU64,
}

impl DetectorClocks {
    fn new(names: Vec<String>) -> Self {
        Self(Arc::new(
            names
                .into_iter()
                .map(|name| Clock {
                    name,
                    runs: AtomicU64::new(0),
                    spent_ns: AtomicU64::new(0),
                })
                .collect(),
        ))
    }

    fn record(&self, detector: usize, spent: Duration) {
        if let Some(c) = self.0.get(detector) {
            c.runs.fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
            c.spent_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Time spent per detector so far, in configuration order.
    pub fn snapshot(&self) -> Vec<DetectorTiming> {
        self.0
            .iter()
            .map(|c| DetectorTiming {
                name: c.name.clone(),
                evaluations: c.runs.load(Ordering::Relaxed),
                total: Duration::from_nanos(c.spent_ns.load(Ordering::Relaxed)),
            })
            .collect()
    }
}

/// How much time one detector took so far.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorTiming {
    pub name: String,
    /// Window pairs evaluated.
    pub evaluations: u64,
    /// Time spent in them (the query with its statistic).
    pub total: Duration,
}

/// The detectors of a pipeline, planned once, run per evaluation.
pub struct Detectors {
    stage: SqlStage,
    schema: SchemaRef,
    planned: Vec<Planned>,
    clocks: DetectorClocks,
}

/// Quotes an identifier for SQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Schema of the `windows` table for scored events of `scored`: `key`,
/// `window`, the scored columns (nullable: a sampled window's count rows
/// leave the columns they do not count NULL), `_weight` and `_counted`
/// (see [`crate::window::sample`]; 1 and NULL on every row of a window that
/// is not sampled).
pub fn windows_schema(scored: &Schema) -> SchemaRef {
    let mut fields = vec![
        Field::new(KEY_COL, DataType::Utf8, false),
        Field::new(WINDOW_COL, DataType::Utf8, false),
    ];
    let table = crate::window::sample::table_schema(scored);
    fields.extend(
        table
            .fields()
            .iter()
            .filter(|f| f.name() != KEY_COL && f.name() != WINDOW_COL)
            .map(|f| f.as_ref().clone()),
    );
    Arc::new(Schema::new(fields))
}

impl Detectors {
    /// The detectors' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.planned.iter().map(|p| p.name.clone()).collect()
    }

    /// Plans every detector against the schema of scored events.
    pub async fn new(scored: &Schema, detectors: &[Arc<dyn Detector>]) -> Result<Self, DetectError> {
        let schema = windows_schema(scored);
        let stage = SqlStage::new(WINDOWS_TABLE, schema.clone(), udaf::all()).map_err(|e| DetectError::Plan {
            detector: String::new(),
            message: e.to_string(),
        })?;
        let mut planned = vec![];
        for d in detectors {
            let sql = d.sql();
            let err = |m: String| DetectError::Plan {
                detector: d.name().to_string(),
                message: m,
            };
            let plan = stage.plan(&sql).await.map_err(|e| err(format!("{e} (query: {sql})")))?;
            check_output(plan.logical.schema().as_arrow()).map_err(err)?;
            planned.push(Planned {
                name: d.name().to_string(),
                kind: d.kind(),
                decision: d.decision(),
                plan,
            });
        }
        let clocks = DetectorClocks::new(planned.iter().map(|p| p.name.clone()).collect());
        Ok(Self {
            stage,
            schema,
            planned,
            clocks,
        })
    }

    /// Runs every detector on one window pair.
    pub async fn evaluate(&self, due: &Due) -> Result<Vec<DetectorResult>, DetectError> {
        let mut batches = Vec::with_capacity(due.reference.len() + due.current.len());
        for (label, part) in [("reference", &due.reference), ("current", &due.current)] {
            for b in part {
                batches.push(self.with_window(b, &due.key, label).map_err(|m| DetectError::Run {
                    detector: String::new(),
                    message: m,
                })?);
            }
        }
        let mut out = vec![];
        for (i, p) in self.planned.iter().enumerate() {
            let started = Instant::now();
            let rows = self
                .stage
                .run(&p.plan, batches.clone())
                .await
                .map_err(|e| DetectError::Run {
                    detector: p.name.clone(),
                    message: e.to_string(),
                })?;
            for b in rows {
                out.extend(read_results(p, &b, &due.key, &due.coords));
            }
            self.clocks.record(i, started.elapsed());
        }
        Ok(out)
    }

    /// A handle on the time each detector takes.
    pub fn clocks(&self) -> DetectorClocks {
        self.clocks.clone()
    }

    fn with_window(&self, b: &RecordBatch, key: &str, window: &str) -> Result<RecordBatch, String> {
        let n = b.num_rows();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![key; n])),
            Arc::new(StringArray::from(vec![window; n])),
        ];
        for f in self.schema.fields().iter().skip(2) {
            let c = match (b.column_by_name(f.name()), f.name().as_str()) {
                (Some(c), _) => c.clone(),
                // A window that is not sampled: every row one event of the sample.
                (None, WEIGHT_COL) => Arc::new(UInt64Array::from(vec![1u64; n])) as ArrayRef,
                (None, COUNTED_COL) => datafusion::arrow::array::new_null_array(&DataType::Utf8, n),
                (None, name) => return Err(format!("column `{name}` missing from window batch")),
            };
            cols.push(c);
        }
        RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| e.to_string())
    }
}

/// A detector query must return struct columns with statistic and p_value.
fn check_output(schema: &Schema) -> Result<(), String> {
    let mut tests = 0;
    for f in schema.fields() {
        if f.name() == KEY_COL {
            continue;
        }
        match f.data_type() {
            DataType::Struct(fs) if fs.find("statistic").is_some() && fs.find("p_value").is_some() => tests += 1,
            t => {
                return Err(format!(
                    "result column `{}` is {t}; every column but `key` must be a test result (ks_test(...), mmd_test(...))",
                    f.name()
                ));
            }
        }
    }
    if tests == 0 {
        return Err("the query returns no test result column".into());
    }
    Ok(())
}

/// A test's `details` with what its result struct says besides the
/// statistic and p-value: the sample sizes it used (`n_reference`,
/// `n_current`) and the statistic's own fields (MMD: the bandwidth `sigma`,
/// the `permutations` drawn, fewer than configured when the sequential
/// p-value stopped early, and a `warning` when the median heuristic fell
/// back to σ = 1).
fn with_result_fields(
    details: Option<serde_json::Value>,
    s: &datafusion::arrow::array::StructArray,
    row: usize,
) -> Option<serde_json::Value> {
    use datafusion::arrow::datatypes::UInt64Type;
    let mut out = match details {
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => serde_json::Map::from_iter([("value".to_string(), other)]),
        None => serde_json::Map::new(),
    };
    for (field, col) in s.fields().iter().zip(s.columns()) {
        let name = field.name().as_str();
        if matches!(name, "statistic" | "p_value" | "details") || col.is_null(row) {
            continue;
        }
        let value = match col.data_type() {
            DataType::UInt64 => serde_json::Value::from(col.as_primitive::<UInt64Type>().value(row)),
            // A count carried in a float field (MMD's `permutations`).
            DataType::Float64 if name == "permutations" => {
                serde_json::Value::from(col.as_primitive::<Float64Type>().value(row) as u64)
            }
            DataType::Float64 => serde_json::Value::from(col.as_primitive::<Float64Type>().value(row)),
            _ => continue,
        };
        if name == "sigma_fallback" {
            if value.as_f64() == Some(1.0) {
                out.insert(
                    "warning".into(),
                    "more than half the reference pairs coincide: the median distance is 0, so the median heuristic gave no bandwidth and sigma = 1 was used; set the detector's `sigma`".into(),
                );
            }
            continue;
        }
        out.insert(name.to_string(), value);
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

fn read_results(p: &Planned, b: &RecordBatch, due_key: &str, coords: &Coords) -> Vec<DetectorResult> {
    let key_col = b.column_by_name(KEY_COL).map(|c| c.as_string::<i32>().clone());
    let mut out = vec![];
    for row in 0..b.num_rows() {
        let key = key_col
            .as_ref()
            .filter(|k| k.is_valid(row))
            .map(|k| k.value(row).to_string())
            .unwrap_or_else(|| due_key.to_string());
        let tests = row_tests(b, row);
        if !tests.is_empty() {
            out.push(decide(p, key, tests, coords));
        }
    }
    out
}

/// The tests of one result row: one per result column (a struct of
/// statistic, p-value, details), not yet decided; none where a column is
/// null (too few rows on a side).
fn row_tests(b: &RecordBatch, row: usize) -> Vec<TestResult> {
    let mut tests = vec![];
    for (i, f) in b.schema().fields().iter().enumerate() {
        if f.name() == KEY_COL {
            continue;
        }
        let s = b.column(i).as_struct();
        if s.is_null(row) {
            continue;
        }
        let get = |n: &str| {
            s.column_by_name(n)
                .map(|c| c.as_primitive::<Float64Type>())
                .filter(|c| c.is_valid(row))
                .map(|c| c.value(row))
        };
        if let Some(stat) = get("statistic") {
            let details = s
                .column_by_name("details")
                .and_then(|c| c.as_string_opt::<i32>())
                .filter(|c| c.is_valid(row))
                .and_then(|c| serde_json::from_str(c.value(row)).ok());
            tests.push(TestResult {
                column: f.name().clone(),
                statistic: stat,
                p_value: get("p_value"),
                drift: false,
                details: with_result_fields(details, s, row),
            });
        }
    }
    tests
}

/// A detector's result on one key from its (non-empty) `tests`: each
/// decided at the corrected cutoff (or against the threshold, without a
/// p-value), and the result reported through the most significant one.
fn decide(p: &Planned, key: String, mut tests: Vec<TestResult>, coords: &Coords) -> DetectorResult {
    let p_values: Vec<f64> = tests.iter().filter_map(|t| t.p_value).collect();
    let cutoff = p_cutoff(&p_values, p.decision.alpha, p.decision.correction);
    for t in &mut tests {
        t.drift = match t.p_value {
            Some(pv) => pv <= cutoff,
            None => p.decision.threshold.is_some_and(|th| t.statistic > th),
        };
    }
    let best = tests
        .iter()
        .filter(|t| t.p_value.is_some())
        .min_by(|a, b| a.p_value.unwrap_or(1.0).total_cmp(&b.p_value.unwrap_or(1.0)))
        .or_else(|| tests.iter().max_by(|a, b| a.statistic.total_cmp(&b.statistic)));
    let (statistic, p_value) = best.map_or((f64::NAN, None), |t| (t.statistic, t.p_value));
    DetectorResult {
        detector: p.name.clone(),
        kind: p.kind.to_string(),
        key,
        drift: tests.iter().any(|t| t.drift),
        statistic,
        p_value,
        threshold: if p_value.is_some() {
            Some(cutoff)
        } else {
            p.decision.threshold
        },
        tests,
        coords: Some(coords.clone()),
    }
}

/// The p-value at or below which a test drifts, for `m` tests at level alpha.
/// Bonferroni: alpha/m. Benjamini–Hochberg (1995): k·alpha/m for the largest k
/// with p₍ₖ₎ ≤ k·alpha/m (sorted ascending); when there is no such k nothing
/// drifts and alpha/m — the smallest BH cutoff — is reported.
pub fn p_cutoff(p_values: &[f64], alpha: f64, correction: Correction) -> f64 {
    let m = p_values.len().max(1) as f64;
    match correction {
        Correction::None => alpha,
        Correction::Bonferroni => alpha / m,
        Correction::BenjaminiHochberg => {
            let mut sorted = p_values.to_vec();
            sorted.sort_unstable_by(f64::total_cmp);
            sorted
                .iter()
                .enumerate()
                .rev()
                .find(|(i, p)| **p <= (*i as f64 + 1.0) * alpha / m)
                .map_or(alpha / m, |(i, _)| (i as f64 + 1.0) * alpha / m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections() {
        let p = [0.01, 0.04, 0.03, 0.005];
        assert_eq!(p_cutoff(&p, 0.05, Correction::None), 0.05);
        assert_eq!(p_cutoff(&p, 0.05, Correction::Bonferroni), 0.0125);
        // Sorted 0.005, 0.01, 0.03, 0.04 against 0.0125, 0.025, 0.0375, 0.05: k = 4.
        assert_eq!(p_cutoff(&p, 0.05, Correction::BenjaminiHochberg), 0.05);
        // 0.001 ≤ 0.0125, 0.2 > 0.025, 0.3 > 0.0375, 0.9 > 0.05: k = 1.
        assert_eq!(
            p_cutoff(&[0.9, 0.2, 0.001, 0.3], 0.05, Correction::BenjaminiHochberg),
            0.0125
        );
        // statsmodels.multipletests([0.03, 0.04], 0.05, 'fdr_bh') rejects both; Bonferroni neither.
        assert_eq!(p_cutoff(&[0.03, 0.04], 0.05, Correction::BenjaminiHochberg), 0.05);
        assert!(0.03 > p_cutoff(&[0.03, 0.04], 0.05, Correction::Bonferroni));
    }
}
