//! `mmd`: maximum mean discrepancy on one vector column (the model's
//! embedding by default), with a permutation p-value (quadratic) or a normal
//! one (linear, for large windows).

use datafusion::arrow::datatypes::Schema;
use serde::{Deserialize, Deserializer};

use super::{
    Correction, Decision, Detector, Kind, Need, OptionError, Options, Reads, check_column, is_current, no_udafs,
};
use crate::config::{Alpha, Positive};
use crate::detect::mmd::MAX_THREADS;
use crate::detect::{KEY_COL, WINDOWS_TABLE, ident};

pub const KIND: Kind = Kind {
    name: "mmd",
    about: "MMD² with a Gaussian kernel on a vector column, e.g. the embedding (permutation p-value)",
    build,
    options: super::field_names::<MmdOptions>,
    udafs: no_udafs,
};

/// Options of `kind: mmd`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MmdOptions {
    /// Vector column (default `embedding`).
    #[serde(default)]
    column: Option<String>,
    /// Significance level per evaluation (default 0.01, or derived from
    /// `alerting.ert`).
    #[serde(default)]
    alpha: Option<Alpha>,
    /// Permutations for the p-value (default 200; p ≥ 1/(permutations+1)).
    #[serde(default)]
    permutations: Option<Positive>,
    /// Seed of the permutations (default 0).
    #[serde(default)]
    seed: Option<u64>,
    /// Stop drawing permutations once h of their statistics reach the
    /// observed one, with Besag & Clifford's sequential p-value (h/l after l
    /// draws; the full test's p-value when it does not stop). `true`
    /// (default): h = max(10, ⌊alpha·permutations⌋ + 1); a number: that h,
    /// at least ⌊alpha·permutations⌋ + 1, so that stopping never changes the
    /// decision; `false`: all permutations, every time.
    #[serde(default)]
    early_stop: Option<EarlyStop>,
    /// Threads for one evaluation (default 1): the new events' kernel rows,
    /// the reference's distances, the kernel's row sums and the
    /// permutations are shared among them (on a pool of worker threads),
    /// and the result is the same bits whatever the number. With a
    /// core to spare, 2 takes about a quarter off an evaluation; in `run` on
    /// a 2-core machine the consumer and decoder hold the other core, and
    /// it gained nothing there (README, Throughput).
    #[serde(default)]
    threads: Option<Positive>,
    /// Kernel bandwidth σ; default the median heuristic on the reference.
    #[serde(default)]
    sigma: Option<f64>,
    /// `quadratic` (default; unbiased U-statistic, permutation p-value) or
    /// `linear` (linear-time statistic, normal p-value: for large windows).
    #[serde(default)]
    method: Option<MmdMethod>,
}

/// A configured `mmd` detector.
#[derive(Debug, Clone)]
pub struct MmdDetector {
    pub name: String,
    pub column: String,
    pub alpha: Option<Alpha>,
    pub permutations: Positive,
    pub seed: u64,
    pub sigma: Option<f64>,
    pub method: MmdMethod,
    pub early_stop: EarlyStop,
    pub threads: Positive,
}

fn build(name: String, o: Options) -> Result<Box<dyn Detector>, OptionError> {
    let o: MmdOptions = o.parse()?;
    if o.sigma.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
        return Err(OptionError::item("`sigma` must be a positive number"));
    }
    if o.threads.is_some_and(|t| t.get() > MAX_THREADS) {
        return Err(OptionError::item(format!("`threads` must be at most {MAX_THREADS}")));
    }
    let method = o.method.unwrap_or_default();
    if method == MmdMethod::Linear {
        let given = [
            ("permutations", o.permutations.is_some()),
            ("seed", o.seed.is_some()),
            ("early_stop", o.early_stop.is_some()),
            ("threads", o.threads.is_some()),
        ];
        if let Some((k, _)) = given.iter().find(|(_, g)| *g) {
            return Err(OptionError::item(format!(
                "`{k}` does not apply to method linear (no permutations)"
            )));
        }
    }
    Ok(Box::new(MmdDetector {
        name,
        column: o.column.unwrap_or_else(|| crate::config::EMBEDDING_COL.into()),
        alpha: o.alpha,
        permutations: o.permutations.unwrap_or(Positive(200)),
        seed: o.seed.unwrap_or(0),
        sigma: o.sigma,
        method,
        early_stop: o.early_stop.unwrap_or_default(),
        threads: o.threads.unwrap_or(Positive(1)),
    }))
}

impl MmdDetector {
    /// h of the sequential p-value (`None`: all permutations). Stopping
    /// early never changes the decision at alpha when h > alpha·B (proof in
    /// `detect::sequential`); the default also keeps h ≥ 10 for a p-value
    /// worth reading.
    pub fn stop_after(&self) -> Option<usize> {
        match self.early_stop {
            EarlyStop::Off => None,
            EarlyStop::Auto => Some(self.min_stop_after().max(10)),
            EarlyStop::After(h) => Some(h),
        }
    }

    /// The smallest h for which stopping early cannot change the decision.
    pub fn min_stop_after(&self) -> usize {
        (self.alpha.unwrap_or_default().0 * self.permutations.get() as f64).floor() as usize + 1
    }
}

impl Detector for MmdDetector {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "mmd"
    }
    fn columns(&self) -> Vec<String> {
        vec![self.column.clone()]
    }
    fn check(&self, scored: &Schema) -> Result<(), OptionError> {
        check_column(scored, "column".into(), &self.column, "mmd", Need::FloatVector)
    }
    fn sql(&self) -> String {
        let c = ident(&self.column);
        let cur = is_current();
        let sample = Reads::Sample.tail(&[]).1;
        if self.method == MmdMethod::Linear {
            let sigma = self.sigma.map(|s| format!(", {s:?}")).unwrap_or_default();
            return format!(
                "SELECT {KEY_COL}, mmd_linear_test({c}, {cur}{sigma}){sample} AS {c} FROM {WINDOWS_TABLE} GROUP BY {KEY_COL}"
            );
        }
        // sigma 0 asks for the median heuristic; stop_after 0 for all
        // permutations. The stream, this detector on this key, lets the
        // kernel cache keep one window per stream (tumbling windows would
        // otherwise fill it with windows no evaluation continues).
        let stream = format!("concat('{}', '/', {KEY_COL})", self.name.replace('\'', "''"));
        format!(
            "SELECT {KEY_COL}, mmd_test({c}, {cur}, {}, {}, {:?}, {}, {}, {stream}){sample} AS {c} FROM {WINDOWS_TABLE} GROUP BY {KEY_COL}",
            self.permutations.get(),
            self.seed,
            self.sigma.unwrap_or(0.0),
            self.stop_after().unwrap_or(0),
            self.threads.get(),
        )
    }
    fn decision(&self) -> Decision {
        Decision::test(self.alpha, Correction::None)
    }
    fn alpha_mut(&mut self) -> Option<&mut Option<Alpha>> {
        Some(&mut self.alpha)
    }
    /// A permutation p-value is never below 1/(B+1): a detector whose alpha
    /// is smaller could never fire, so say so instead of watching in
    /// silence. An `early_stop` h ≤ alpha·B could stop with a p-value at or
    /// below alpha that the full test would not give: refused.
    fn check_alpha(&self) -> Result<(), OptionError> {
        if self.method != MmdMethod::Quadratic {
            return Ok(());
        }
        let alpha = self.alpha.unwrap_or_default().0;
        let b = self.permutations.get() as f64;
        if alpha < 1.0 / (b + 1.0) {
            return Err(OptionError::new(
                "permutations",
                format!(
                    "with {b} permutations the smallest p-value is 1/{} = {:.2e}, above alpha {alpha:.2e}: this detector could never fire; use at least {} permutations, a larger alpha or ert, or method: linear",
                    b + 1.0,
                    1.0 / (b + 1.0),
                    (1.0 / alpha).ceil() as u64 - 1
                ),
            ));
        }
        if let EarlyStop::After(h) = self.early_stop
            && h < self.min_stop_after()
        {
            return Err(OptionError::new(
                "early_stop",
                format!(
                    "early_stop {h} could change decisions: with alpha {alpha:.2e} and {b} permutations it must be at least {} (more than alpha × permutations), or true for the default",
                    self.min_stop_after()
                ),
            ));
        }
        Ok(())
    }
}

/// mmd `early_stop`: `true`, `false` or h (see [`MmdOptions::early_stop`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EarlyStop {
    #[default]
    Auto,
    Off,
    After(usize),
}

impl<'de> Deserialize<'de> for EarlyStop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EarlyStop;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a positive integer")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EarlyStop, E> {
                Ok(if v { EarlyStop::Auto } else { EarlyStop::Off })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EarlyStop, E> {
                match v {
                    0 => Err(E::custom("expected true, false or a positive integer, got 0")),
                    v => Ok(EarlyStop::After(v as usize)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EarlyStop, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "expected true, false or a positive integer, got {v}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// How MMD is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MmdMethod {
    /// Unbiased U-statistic, O((n+m)²), permutation p-value.
    #[default]
    Quadratic,
    /// Linear-time statistic over disjoint pairs, O(n), normal p-value.
    Linear,
}

#[cfg(test)]
mod tests {
    use super::super::{DetectorSpec, build_one};

    fn sql(yaml: &str) -> String {
        let spec: DetectorSpec = serde_norway::from_str(yaml).unwrap();
        build_one(&spec).unwrap().sql()
    }

    /// `threads` reaches the aggregate as its last argument (default 1).
    #[test]
    fn threads_go_to_the_test() {
        let q = sql("{name: d, kind: mmd, permutations: 100, seed: 3, threads: 2}");
        assert!(
            q.contains("mmd_test(\"embedding\", window = 'current', 100, 3, 0.0, 10, 2, concat('d', '/', key))"),
            "{q}"
        );
        let q = sql("{name: \"it's\", kind: mmd}");
        assert!(q.contains(", 1, concat('it''s', '/', key))"), "{q}");
    }
}
