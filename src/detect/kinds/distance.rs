//! `psi`, `kl`, `js`, `wasserstein`: a distance between the reference and
//! current distributions of each listed column, compared with a threshold
//! (no p-value, so not part of the false-alarm budget).

use datafusion::arrow::datatypes::Schema;
use serde::Deserialize;

use super::{Decision, Detector, Kind, Need, OptionError, Options, Reads, check_columns, no_udafs, per_column_sql};
use crate::config::Positive;
use crate::detect::divergence::{DEFAULT_BINS, Metric};

pub const PSI: Kind = Kind {
    name: "psi",
    about: "population stability index per column (threshold, default 0.2)",
    build: |name, o| binned(name, o, Metric::Psi),
    options: super::field_names::<BinnedOptions>,
    udafs: no_udafs,
};

pub const KL: Kind = Kind {
    name: "kl",
    about: "Kullback–Leibler divergence, current ‖ reference, per column (threshold, default 0.1)",
    build: |name, o| binned(name, o, Metric::Kl),
    options: super::field_names::<BinnedOptions>,
    udafs: no_udafs,
};

pub const JS: Kind = Kind {
    name: "js",
    about: "Jensen–Shannon divergence, base 2, in [0, 1], per column (threshold, default 0.1)",
    build: |name, o| binned(name, o, Metric::Js),
    options: super::field_names::<BinnedOptions>,
    udafs: no_udafs,
};

pub const WASSERSTEIN: Kind = Kind {
    name: "wasserstein",
    about: "Wasserstein-1 distance in reference standard deviations per numeric column (threshold, default 0.5)",
    build: wasserstein,
    options: super::field_names::<WassersteinOptions>,
    udafs: no_udafs,
};

/// Options of `kind: psi | kl | js`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BinnedOptions {
    /// Columns to compare.
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// A column drifts when its distance exceeds this. Defaults: psi 0.2,
    /// kl 0.1, js 0.1.
    #[serde(default)]
    threshold: Option<f64>,
    /// Quantile bins fitted on the reference for float columns (default 10;
    /// other column types use their categories).
    #[serde(default)]
    bins: Option<Positive>,
}

/// Options of `kind: wasserstein`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WassersteinOptions {
    /// Numeric columns to compare.
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// A column drifts when its distance, in reference standard deviations,
    /// exceeds this (default 0.5).
    #[serde(default)]
    threshold: Option<f64>,
}

#[derive(Debug)]
struct Distance {
    name: String,
    metric: Metric,
    columns: Vec<String>,
    threshold: f64,
    bins: usize,
}

fn binned(name: String, o: Options, metric: Metric) -> Result<Box<dyn Detector>, OptionError> {
    let o: BinnedOptions = o.parse()?;
    if o.bins.is_some_and(|b| b.get() < 2) {
        return Err(OptionError::item("`bins` must be at least 2"));
    }
    let bins = o.bins.map_or(DEFAULT_BINS, Positive::get);
    distance(name, metric, o.columns, o.threshold, bins)
}

fn wasserstein(name: String, o: Options) -> Result<Box<dyn Detector>, OptionError> {
    let o: WassersteinOptions = o.parse()?;
    distance(name, Metric::Wasserstein, o.columns, o.threshold, DEFAULT_BINS)
}

fn distance(
    name: String,
    metric: Metric,
    columns: Option<Vec<String>>,
    threshold: Option<f64>,
    bins: usize,
) -> Result<Box<dyn Detector>, OptionError> {
    if threshold.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
        return Err(OptionError::item("`threshold` must be a non-negative number"));
    }
    let columns = columns.ok_or_else(|| OptionError::item(format!("kind {} needs `columns`", metric.name())))?;
    Ok(Box::new(Distance {
        name,
        metric,
        columns: super::non_empty(columns)?,
        threshold: threshold.unwrap_or(match metric {
            Metric::Psi => 0.2,
            Metric::Kl | Metric::Js => 0.1,
            Metric::Wasserstein => 0.5,
        }),
        bins,
    }))
}

impl Detector for Distance {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        self.metric.name()
    }
    fn columns(&self) -> Vec<String> {
        self.columns.clone()
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        let need = if self.metric == Metric::Wasserstein {
            Need::Number
        } else {
            Need::Scalar
        };
        check_columns(scored, &self.columns, self.metric.name(), need)
    }
    fn sql(&self) -> String {
        let bins = format!(", {}", self.bins);
        match self.metric {
            Metric::Psi => per_column_sql("psi", &self.columns, &bins, Reads::Sample),
            Metric::Kl => per_column_sql("kl_divergence", &self.columns, &bins, Reads::Sample),
            Metric::Js => per_column_sql("js_divergence", &self.columns, &bins, Reads::Sample),
            Metric::Wasserstein => per_column_sql("wasserstein_distance", &self.columns, "", Reads::Sample),
        }
    }
    fn decision(&self) -> Decision {
        Decision::threshold(self.threshold)
    }
}
