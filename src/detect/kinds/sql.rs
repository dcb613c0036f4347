//! `sql`: a query of the user's own over `windows`.

use datafusion::arrow::datatypes::Schema;
use serde::Deserialize;

use super::{Correction, Decision, Detector, DriftType, Kind, OptionError, Options, no_udafs};
use crate::config::Alpha;

pub const KIND: Kind = Kind {
    name: "sql",
    about: "a query of your own over `windows` returning test results (p-values or distances)",
    build,
    options: super::field_names::<SqlOptions>,
    udafs: no_udafs,
};

/// Options of `kind: sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlOptions {
    /// A SELECT over `windows` returning an optional `key` column and one or
    /// more result columns (`ks_test(…)`, `mmd_test(…)`, `psi(…)`, …);
    /// GROUP BY key.
    #[serde(default)]
    sql: Option<String>,
    /// Significance level per evaluation for result columns with a p-value
    /// (default 0.01, or derived from `alerting.ert`).
    #[serde(default)]
    alpha: Option<Alpha>,
    /// Correction across result columns: `none`, `bonferroni` (default) or
    /// `benjamini_hochberg`.
    #[serde(default)]
    correction: Option<Correction>,
    /// Threshold for result columns without a p-value (distances).
    #[serde(default)]
    threshold: Option<f64>,
    /// Kind of drift the query watches: covariate (default), label or concept.
    #[serde(default)]
    drift_type: Option<DriftType>,
}

#[derive(Debug)]
struct SqlDetector {
    name: String,
    sql: String,
    alpha: Option<Alpha>,
    correction: Correction,
    threshold: Option<f64>,
    drift_type: Option<DriftType>,
}

fn build(name: String, o: Options) -> Result<Box<dyn Detector>, OptionError> {
    let o: SqlOptions = o.parse()?;
    if o.threshold.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
        return Err(OptionError::item("`threshold` must be a non-negative number"));
    }
    Ok(Box::new(SqlDetector {
        name,
        sql: o.sql.ok_or_else(|| OptionError::item("kind sql needs `sql`"))?,
        alpha: o.alpha,
        correction: o.correction.unwrap_or_default(),
        threshold: o.threshold,
        drift_type: o.drift_type,
    }))
}

impl Detector for SqlDetector {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "sql"
    }
    fn columns(&self) -> Vec<String> {
        vec![]
    }
    /// The query is checked when it is planned.
    fn check(&self, _: &Schema) -> Result<(), OptionError> {
        Ok(())
    }
    fn sql(&self) -> String {
        self.sql.clone()
    }
    fn decision(&self) -> Decision {
        Decision {
            threshold: self.threshold,
            ..Decision::test(self.alpha, self.correction)
        }
    }
    fn drift_type(&self) -> DriftType {
        self.drift_type.unwrap_or(DriftType::Covariate)
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        Some(&mut self.alpha)
    }
    fn query_key(&self) -> &'static str {
        "sql"
    }
}
