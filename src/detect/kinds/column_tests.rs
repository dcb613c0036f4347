//! `ks` and `chi2`: a two-sample test on each listed column, with a
//! correction across columns.

use datafusion::arrow::datatypes::Schema;
use serde::Deserialize;

use super::{
    Correction, Decision, Detector, Kind, Need, OptionError, Options, Reads, check_columns, no_udafs, per_column_sql,
};
use crate::config::Alpha;

pub const KS: Kind = Kind {
    name: "ks",
    about: "two-sample Kolmogorov–Smirnov per numeric column (p-value)",
    build: |name, o| build(name, o, &KS_TEST),
    options: super::field_names::<ColumnTestOptions>,
    udafs: no_udafs,
};

pub const CHI2: Kind = Kind {
    name: "chi2",
    about: "chi-square homogeneity per categorical column, e.g. `predicted_class` (p-value)",
    build: |name, o| build(name, o, &CHI2_TEST),
    options: super::field_names::<ColumnTestOptions>,
    udafs: no_udafs,
};

/// What differs between the two.
#[derive(Debug)]
struct Test {
    kind: &'static str,
    udaf: &'static str,
    need: Need,
    reads: Reads,
}

const KS_TEST: Test = Test {
    kind: "ks",
    udaf: "ks_test",
    need: Need::Number,
    reads: Reads::Sample,
};

const CHI2_TEST: Test = Test {
    kind: "chi2",
    udaf: "chi2_test",
    need: Need::Scalar,
    reads: Reads::Values,
};

/// Options of `kind: ks` and `kind: chi2`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnTestOptions {
    /// Columns to test (numbers for ks; numbers, strings or booleans for chi2).
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
}

#[derive(Debug)]
struct ColumnTests {
    name: String,
    test: &'static Test,
    columns: Vec<String>,
    alpha: Option<Alpha>,
    correction: Correction,
}

fn build(name: String, o: Options, test: &'static Test) -> Result<Box<dyn Detector>, OptionError> {
    let o: ColumnTestOptions = o.parse()?;
    let columns = o
        .columns
        .ok_or_else(|| OptionError::item(format!("kind {} needs `columns`", test.kind)))?;
    Ok(Box::new(ColumnTests {
        name,
        test,
        columns: super::non_empty(columns)?,
        alpha: o.alpha,
        correction: o.correction.unwrap_or_default(),
    }))
}

impl Detector for ColumnTests {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        self.test.kind
    }
    fn columns(&self) -> Vec<String> {
        self.columns.clone()
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        check_columns(scored, &self.columns, self.test.kind, self.test.need)
    }
    fn sql(&self) -> String {
        per_column_sql(self.test.udaf, &self.columns, "", self.test.reads)
    }
    fn counted(&self) -> Vec<crate::window::CountGroup> {
        self.test.reads.groups(&self.columns)
    }
    fn decision(&self) -> Decision {
        Decision::test(self.alpha, self.correction)
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<crate::config::Alpha>> {
        Some(&mut self.alpha)
    }
}
