//! Statistics on labelled events: concept drift through the error rate, and
//! label shift through black-box shift estimation (BBSE).
//!
//! **Error rate.** Reference and current windows each give a 2×2 table row
//! (errors, correct) over their labelled events. Fisher's exact test of the
//! table (two-sided, as `scipy.stats.fisher_exact`): with margins fixed the
//! top-left cell is hypergeometric, and p = Σ P(k) over every k with
//! P(k) ≤ P(observed)·(1 + 1e-7). Above [`FISHER_MAX_N`] events the Pearson
//! chi-square test of the same table (1 degree of freedom, no continuity
//! correction) is used instead. Reference: Fisher (1922); Agresti,
//! *Categorical Data Analysis* §3.5.
//!
//! **BBSE.** Under label shift p(x|y) stays, so the predicted-class
//! frequencies of the current window are μ = C·w, where C_ij = P_ref(ŷ = i,
//! y = j) is the reference's joint confusion matrix and w_j = q(y=j)/p(y=j)
//! the importance weights. Solving C·w = μ gives w; negative weights (noise)
//! are clipped to 0 and q = w·p renormalised. A nearly singular C makes w
//! unreliable, which the condition number κ₁(C) = ‖C‖₁‖C⁻¹‖₁ tells.
//! Reference: Lipton, Wang & Smola, *Detecting and Correcting for Label Shift
//! with Black Box Predictors*, ICML 2018.

use std::collections::BTreeMap;

use serde::Serialize;

use super::special::{chi2_sf, ln_gamma};

/// Tables with more events than this use the chi-square test instead of Fisher's.
pub const FISHER_MAX_N: u64 = 1_000_000;

/// κ₁(C) above which the BBSE weights are flagged as unreliable.
pub const ILL_CONDITIONED: f64 = 1e3;

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Two-sided p-value of Fisher's exact test of [[a, b], [c, d]].
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let (r1, c1, n) = (a + b, a + c, a + b + c + d);
    if n == 0 || r1 == 0 || r1 == n || c1 == 0 || c1 == n {
        return 1.0;
    }
    let lo = c1.saturating_sub(n - r1);
    let hi = c1.min(r1);
    let ln_denom = ln_choose(n, c1);
    let ln_p = |k: u64| ln_choose(r1, k) + ln_choose(n - r1, c1 - k) - ln_denom;
    let observed = ln_p(a);
    // Relative tolerance as scipy, so ties in probability count as extreme.
    let cut = observed + (1.0f64 + 1e-7).ln();
    let p: f64 = (lo..=hi).map(ln_p).filter(|lp| *lp <= cut).map(f64::exp).sum();
    p.min(1.0)
}

/// Pearson chi-square p-value of a 2×2 table, 1 degree of freedom, no correction.
pub fn chi2_2x2(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let (a, b, c, d) = (a as f64, b as f64, c as f64, d as f64);
    let n = a + b + c + d;
    let den = (a + b) * (c + d) * (a + c) * (b + d);
    if den == 0.0 {
        return 1.0;
    }
    let stat = n * (a * d - b * c).powi(2) / den;
    chi2_sf(stat, 1.0)
}

/// Error counts of one window, per true class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorCounts {
    /// class → (correct, labelled events)
    pub per_class: BTreeMap<String, (u64, u64)>,
}

impl ErrorCounts {
    pub fn add(&mut self, label: &str, correct: bool) {
        self.add_n(label, correct, 1);
    }
    /// `n` events of class `label`, all right or all wrong.
    pub fn add_n(&mut self, label: &str, correct: bool, n: u64) {
        let e = self.per_class.entry(label.to_string()).or_default();
        e.0 += if correct { n } else { 0 };
        e.1 += n;
    }
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (k, (c, n)) in &other.per_class {
            let e = self.per_class.entry(k.clone()).or_default();
            e.0 += c;
            e.1 += n;
        }
    }
    /// (correct, labelled) over all classes.
    pub fn totals(&self) -> (u64, u64) {
        self.per_class.values().fold((0, 0), |(c, n), (a, b)| (c + a, n + b))
    }
}

/// Result of the error-rate test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRateResult {
    /// Current error rate minus reference error rate.
    pub statistic: f64,
    pub p_value: f64,
    /// `fisher` or `chi2`.
    pub test: &'static str,
    pub reference_error_rate: f64,
    pub current_error_rate: f64,
    pub reference_labelled: u64,
    pub current_labelled: u64,
    /// Per true class: accuracy in each window (null without events of it).
    pub per_class: Vec<ClassAccuracy>,
}

/// Accuracy of one class in both windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub reference_accuracy: Option<f64>,
    pub current_accuracy: Option<f64>,
    pub reference_n: u64,
    pub current_n: u64,
}

/// Tests whether the error rate changed; `None` when a window has no labelled event.
pub fn error_rate_test(reference: &ErrorCounts, current: &ErrorCounts) -> Option<ErrorRateResult> {
    let (rc, rn) = reference.totals();
    let (cc, cn) = current.totals();
    if rn == 0 || cn == 0 {
        return None;
    }
    let (a, b, c, d) = (rn - rc, rc, cn - cc, cc);
    let (p_value, test) = if rn + cn <= FISHER_MAX_N {
        (fisher_exact(a, b, c, d), "fisher")
    } else {
        (chi2_2x2(a, b, c, d), "chi2")
    };
    let (re, ce) = (a as f64 / rn as f64, c as f64 / cn as f64);
    let mut classes: Vec<&String> = reference.per_class.keys().chain(current.per_class.keys()).collect();
    sort_classes(&mut classes);
    classes.dedup();
    let acc = |w: &ErrorCounts, k: &str| {
        w.per_class
            .get(k)
            .map_or((None, 0), |(c, n)| ((*n > 0).then(|| *c as f64 / *n as f64), *n))
    };
    let per_class = classes
        .into_iter()
        .map(|k| {
            let (ra, rn) = acc(reference, k);
            let (ca, cn) = acc(current, k);
            ClassAccuracy {
                class: k.clone(),
                reference_accuracy: ra,
                current_accuracy: ca,
                reference_n: rn,
                current_n: cn,
            }
        })
        .collect();
    Some(ErrorRateResult {
        statistic: ce - re,
        p_value,
        test,
        reference_error_rate: re,
        current_error_rate: ce,
        reference_labelled: rn,
        current_labelled: cn,
        per_class,
    })
}

/// Sorts class names numerically when they are all integers, else as text.
pub fn sort_classes<S: AsRef<str>>(v: &mut [S]) {
    if v.iter().all(|s| s.as_ref().parse::<i64>().is_ok()) {
        v.sort_by_key(|s| s.as_ref().parse::<i64>().unwrap_or(0));
    } else {
        v.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    }
}

/// BBSE's estimate of the current class priors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorEstimate {
    /// Classes, in the order of the vectors below.
    pub classes: Vec<String>,
    /// p(y) on the labelled reference.
    pub reference_priors: Vec<f64>,
    /// q(y) = w·p(y), renormalised.
    pub estimated_priors: Vec<f64>,
    /// w = C⁻¹μ, clipped at 0 (after renormalisation: q/p).
    pub weights: Vec<f64>,
    /// κ₁ of the confusion matrix (∞ when singular).
    pub condition_number: f64,
    /// Set when the estimate should not be trusted.
    pub warning: Option<String>,
}

/// BBSE from `confusion[(predicted, label)]` counts of the labelled reference
/// and the current window's predicted-class counts. `None` without labelled
/// reference events or current events.
pub fn bbse(confusion: &BTreeMap<(String, String), u64>, current: &BTreeMap<String, u64>) -> Option<PriorEstimate> {
    let mut classes: Vec<String> = confusion.keys().map(|(_, y)| y.clone()).collect();
    sort_classes(&mut classes);
    classes.dedup();
    let idx: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let (c, p) = joint(confusion, &idx)?;
    let mu = predicted_shares(current, &idx)?;
    let k = classes.len();
    let inv = invert(&c);
    let norm1 = |m: &[Vec<f64>]| {
        (0..k)
            .map(|j| (0..k).map(|i| m[i][j].abs()).sum::<f64>())
            .fold(0.0, f64::max)
    };
    let (condition_number, w) = match &inv {
        Some(inv) => (
            norm1(&c) * norm1(inv),
            (0..k)
                .map(|i| (0..k).map(|j| inv[i][j] * mu[j]).sum::<f64>())
                .collect::<Vec<f64>>(),
        ),
        None => (f64::INFINITY, vec![1.0; k]),
    };
    let (q, warning) = match inv {
        None => (
            p.clone(),
            Some("the confusion matrix is singular: priors cannot be estimated (reference priors shown)".into()),
        ),
        Some(_) => target_priors(&w, &p, condition_number),
    };
    let weights = q
        .iter()
        .zip(&p)
        .map(|(q, p)| if *p > 0.0 { q / p } else { 0.0 })
        .collect();
    Some(PriorEstimate {
        classes,
        reference_priors: p,
        estimated_priors: q,
        weights,
        condition_number,
        warning,
    })
}

/// From the reference's `confusion` counts: C_ij = P(ŷ = i, y = j) and
/// p(y), over the label classes `idx` (predictions of classes never seen as
/// labels fall out of C). `None` without classes or counts.
fn joint(
    confusion: &BTreeMap<(String, String), u64>,
    idx: &BTreeMap<&str, usize>,
) -> Option<(Vec<Vec<f64>>, Vec<f64>)> {
    let k = idx.len();
    let total: u64 = confusion.values().sum();
    if k == 0 || total == 0 {
        return None;
    }
    let mut c = vec![vec![0.0; k]; k];
    let mut p = vec![0.0; k];
    for ((yhat, y), n) in confusion {
        let j = idx[y.as_str()];
        p[j] += *n as f64 / total as f64;
        if let Some(&i) = idx.get(yhat.as_str()) {
            c[i][j] += *n as f64 / total as f64;
        }
    }
    Some((c, p))
}

/// μ̂(ŷ = i): the current window's predicted classes among `idx`, as
/// shares. `None` when none of them is one of `idx`.
fn predicted_shares(current: &BTreeMap<String, u64>, idx: &BTreeMap<&str, usize>) -> Option<Vec<f64>> {
    let in_set: u64 = current
        .iter()
        .filter(|(y, _)| idx.contains_key(y.as_str()))
        .map(|(_, n)| n)
        .sum();
    if in_set == 0 {
        return None;
    }
    let mut mu = vec![0.0; idx.len()];
    for (y, n) in current {
        if let Some(&i) = idx.get(y.as_str()) {
            mu[i] = *n as f64 / in_set as f64;
        }
    }
    Some(mu)
}

/// q(y) = max(w, 0)·p(y), renormalised, with a warning when it cannot be
/// trusted (every weight negative: p instead; C ill-conditioned).
fn target_priors(w: &[f64], p: &[f64], condition_number: f64) -> (Vec<f64>, Option<String>) {
    let mut q: Vec<f64> = w.iter().zip(p).map(|(w, p)| w.max(0.0) * p).collect();
    let s: f64 = q.iter().sum();
    if s <= 0.0 {
        let warning = "every estimated weight was negative: priors cannot be estimated";
        return (p.to_vec(), Some(warning.into()));
    }
    q.iter_mut().for_each(|x| *x /= s);
    let warning = (condition_number > ILL_CONDITIONED).then(|| {
        format!(
            "the confusion matrix is ill-conditioned (κ₁ = {condition_number:.3e}): the estimated priors are unreliable"
        )
    });
    (q, warning)
}

/// Gauss–Jordan inverse with partial pivoting; `None` when singular.
fn invert(m: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let k = m.len();
    let mut a: Vec<Vec<f64>> = m.to_vec();
    let mut inv: Vec<Vec<f64>> = (0..k).map(|i| (0..k).map(|j| f64::from(i == j)).collect()).collect();
    let scale = m.iter().flatten().fold(0.0f64, |s, x| s.max(x.abs()));
    for col in 0..k {
        let piv = (col..k).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() <= scale * 1e-14 {
            return None;
        }
        a.swap(col, piv);
        inv.swap(col, piv);
        let d = a[col][col];
        for j in 0..k {
            a[col][j] /= d;
            inv[col][j] /= d;
        }
        for r in 0..k {
            if r != col {
                let f = a[r][col];
                if f != 0.0 {
                    for j in 0..k {
                        a[r][j] -= f * a[col][j];
                        inv[r][j] -= f * inv[col][j];
                    }
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fisher_matches_scipy() {
        // scipy.stats.fisher_exact, from scripts/golden_stats.py.
        let g = crate::detect::testgen::fixture("stats_golden.json");
        let cases = g["fisher"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for c in cases {
            let t: Vec<u64> = c["table"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let want = c["p_value"].as_f64().unwrap();
            let p = fisher_exact(t[0], t[1], t[2], t[3]);
            assert!((p - want).abs() <= 1e-9, "{t:?}: {p} vs {want}");
            assert!(
                (p - want).abs() <= 1e-9 * want.max(1e-300) || want > 1e-3,
                "{t:?}: relative {p} vs {want}"
            );
        }
    }

    #[test]
    fn error_rate_sees_a_jump_and_not_noise() {
        let mut r = ErrorCounts::default();
        let mut c = ErrorCounts::default();
        for i in 0..1000 {
            r.add(&(i % 10).to_string(), i % 50 != 0); // 2% errors
        }
        for i in 0..500 {
            c.add(&(i % 10).to_string(), i % 50 != 0 && i % 10 != 3); // class 3 all wrong
        }
        let t = error_rate_test(&r, &c).unwrap();
        assert!(t.p_value < 1e-10 && t.statistic > 0.09, "{t:?}");
        let three = t.per_class.iter().find(|x| x.class == "3").unwrap();
        assert_eq!(three.current_accuracy, Some(0.0));
        assert_eq!(t.per_class.len(), 10);
        let same = error_rate_test(&r, &r).unwrap();
        assert!(same.p_value > 0.99 && same.statistic == 0.0);
        assert!(error_rate_test(&r, &ErrorCounts::default()).is_none());
    }

    #[test]
    fn bbse_recovers_priors_through_a_noisy_classifier() {
        // Three classes, a classifier right 80% of the time, errors spread evenly.
        let mut confusion = BTreeMap::new();
        let p = [0.5, 0.3, 0.2];
        for (j, pj) in p.iter().enumerate() {
            for i in 0..3 {
                let rate = if i == j { 0.8 } else { 0.1 };
                confusion.insert((i.to_string(), j.to_string()), (10_000.0 * pj * rate) as u64);
            }
        }
        // Current priors q = (0.2, 0.2, 0.6): predicted frequencies μ = C_cond q.
        let q = [0.2, 0.2, 0.6];
        let mut current = BTreeMap::new();
        for i in 0..3 {
            let mu: f64 = (0..3).map(|j| q[j] * if i == j { 0.8 } else { 0.1 }).sum();
            current.insert(i.to_string(), (mu * 100_000.0) as u64);
        }
        let e = bbse(&confusion, &current).unwrap();
        assert_eq!(e.classes, ["0", "1", "2"]);
        for (got, want) in e.estimated_priors.iter().zip(q) {
            assert!((got - want).abs() < 1e-3, "{e:?}");
        }
        assert!(e.warning.is_none() && e.condition_number < 10.0);
        // A classifier that cannot tell 1 from 2: singular, said so.
        let mut bad = BTreeMap::new();
        for j in 0..3 {
            bad.insert(((j.min(1)).to_string(), j.to_string()), 100);
        }
        let e = bbse(&bad, &current).unwrap();
        assert!(e.warning.unwrap().contains("singular"));
    }
}
