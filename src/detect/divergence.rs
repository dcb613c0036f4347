//! Distances between the reference and current distributions of one column,
//! for detectors that alert on a threshold rather than a p-value.
//!
//! Numeric columns are binned on the reference: `bins` quantile bins
//! (edges at the reference's i/bins quantiles, numpy's linear interpolation;
//! repeated edges merged; the outer bins open to ±∞ so every current value
//! falls in one). Categorical columns use their categories as bins.
//! A value equal to an edge falls in the bin below it.
//!
//! With p the reference and q the current bin proportions:
//! - **PSI** = Σ (q_i − p_i) ln(q_i / p_i)  (Siddiqi 2006, *Credit Risk Scorecards*)
//! - **KL**  = Σ q_i ln(q_i / p_i), the information lost describing current
//!   data with the reference (Kullback & Leibler 1951)
//! - **JS**  = ½ Σ p_i log₂(p_i/m_i) + ½ Σ q_i log₂(q_i/m_i), m = (p+q)/2,
//!   in [0, 1] (Lin 1991)
//! - **Wasserstein-1** = ∫ |F_p(x) − F_q(x)| dx on the raw values (not bins),
//!   exactly `scipy.stats.wasserstein_distance`, divided by the reference's
//!   standard deviation (ddof = 0) so thresholds read in units of σ; when the
//!   reference is constant the distance is not normalised.
//!
//! Empty bins: PSI and KL would be infinite, so their proportions are smoothed
//! by half a count per bin (Jeffreys prior): p_i = (c_i + ½)/(n + k/2). JS is
//! finite on raw proportions and uses them.

use super::chi2::contingency;

/// Which distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Psi,
    Kl,
    Js,
    Wasserstein,
}

impl Metric {
    /// Name used in YAML (`kind:`) and in results.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Psi => "psi",
            Metric::Kl => "kl",
            Metric::Js => "js",
            Metric::Wasserstein => "wasserstein",
        }
    }
}

/// Default number of quantile bins.
pub const DEFAULT_BINS: usize = 10;

/// Interior bin edges: the reference's j/bins quantiles (j = 1..bins−1), deduplicated.
pub fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let n = sorted.len();
    if n == 0 || bins < 2 {
        return vec![];
    }
    let mut edges: Vec<f64> = (1..bins)
        .map(|j| {
            let h = (n - 1) as f64 * j as f64 / bins as f64;
            let (lo, frac) = (h.floor() as usize, h.fract());
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + frac * (sorted[hi] - sorted[lo])
        })
        .collect();
    edges.dedup();
    edges
}

/// Counts of `values` in the bins delimited by `edges` (k edges → k + 1 bins).
pub fn histogram(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let mut counts = vec![0.0; edges.len() + 1];
    for v in values {
        counts[edges.partition_point(|e| e < v)] += 1.0;
    }
    counts
}

fn smoothed(counts: &[f64]) -> Vec<f64> {
    let n: f64 = counts.iter().sum();
    let k = counts.len() as f64;
    counts.iter().map(|c| (c + 0.5) / (n + 0.5 * k)).collect()
}

fn proportions(counts: &[f64]) -> Vec<f64> {
    let n: f64 = counts.iter().sum();
    counts.iter().map(|c| c / n).collect()
}

/// A binned distance between reference counts `p` and current counts `q`.
pub fn binned(metric: Metric, p: &[f64], q: &[f64]) -> f64 {
    match metric {
        Metric::Psi => {
            let (p, q) = (smoothed(p), smoothed(q));
            p.iter().zip(&q).map(|(p, q)| (q - p) * (q / p).ln()).sum()
        }
        Metric::Kl => {
            let (p, q) = (smoothed(p), smoothed(q));
            p.iter().zip(&q).map(|(p, q)| q * (q / p).ln()).sum()
        }
        Metric::Js => {
            let (p, q) = (proportions(p), proportions(q));
            let term = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
            let js: f64 = p
                .iter()
                .zip(&q)
                .map(|(&a, &b)| {
                    let m = (a + b) / 2.0;
                    0.5 * term(a, m) + 0.5 * term(b, m)
                })
                .sum();
            js.clamp(0.0, 1.0)
        }
        Metric::Wasserstein => f64::NAN, // not binned: see `wasserstein`
    }
}

/// W₁ between two empirical distributions: ∫ |F_a − F_b| over the pooled
/// support (scipy's `wasserstein_distance` without weights).
pub fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut w = 0.0;
    for win in all.windows(2) {
        let x = win[0];
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        w += (i as f64 / na - j as f64 / nb).abs() * (win[1] - win[0]);
    }
    w
}

/// Population standard deviation.
fn std(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// Distance between numeric samples (bins fitted on the reference).
/// `None` when either side is empty.
pub fn numeric(metric: Metric, reference: &[f64], current: &[f64], bins: usize) -> Option<f64> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    if metric == Metric::Wasserstein {
        let w = wasserstein(reference, current);
        let s = std(reference);
        return Some(if s > 0.0 { w / s } else { w });
    }
    let mut sorted = reference.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let edges = quantile_edges(&sorted, bins);
    Some(binned(
        metric,
        &histogram(reference, &edges),
        &histogram(current, &edges),
    ))
}

/// Distance between categorical samples (categories as bins). Wasserstein
/// has no meaning without an order: `None`.
pub fn categorical(metric: Metric, reference: &[String], current: &[String]) -> Option<f64> {
    let (_, p, q) = contingency(reference, current);
    categorical_counts(metric, &p, &q)
}

/// As [`categorical`], from each category's count in each window.
pub fn categorical_counts(metric: Metric, p: &[f64], q: &[f64]) -> Option<f64> {
    if p.iter().sum::<f64>() == 0.0 || q.iter().sum::<f64>() == 0.0 || metric == Metric::Wasserstein {
        return None;
    }
    Some(binned(metric, p, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_and_histogram() {
        let x: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(quantile_edges(&x, 2), vec![5.0]);
        assert_eq!(quantile_edges(&x, 4), vec![2.5, 5.0, 7.5]);
        // Ties collapse edges.
        assert_eq!(quantile_edges(&[1.0; 8], 4), vec![1.0]);
        assert_eq!(histogram(&[-100.0, 2.5, 2.6, 100.0], &[2.5, 5.0]), vec![2.0, 1.0, 1.0]);
    }

    #[test]
    fn identical_is_zero_and_empty_bins_are_finite() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        for m in [Metric::Psi, Metric::Kl, Metric::Js, Metric::Wasserstein] {
            assert!(numeric(m, &x, &x, 10).unwrap().abs() < 1e-12, "{m:?}");
            // All current values beyond the reference: empty bins everywhere but one.
            let far: Vec<f64> = x.iter().map(|v| v + 100.0).collect();
            let d = numeric(m, &x, &far, 10).unwrap();
            assert!(d.is_finite() && d > 0.5, "{m:?}: {d}");
        }
        // Disjoint supports: JS is exactly 1 bit.
        let (a, b) = (vec!["a".to_string(); 5], vec!["b".to_string(); 7]);
        assert!((categorical(Metric::Js, &a, &b).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn wasserstein_matches_scipy() {
        // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) = 5.0
        assert!((wasserstein(&[0., 1., 3.], &[5., 6., 8.]) - 5.0).abs() < 1e-12);
        // scipy.stats.wasserstein_distance([3.4, 3.9, 7.5, 7.8], [4.5, 1.4]) = 2.7
        assert!((wasserstein(&[3.4, 3.9, 7.5, 7.8], &[4.5, 1.4]) - 2.7).abs() < 1e-12);
    }

    #[test]
    fn wasserstein_matches_scipy_golden() {
        let v = super::super::testgen::fixture("stats_golden.json");
        for c in v["wasserstein"].as_array().unwrap() {
            let (a, b) = super::super::testgen::pair(c);
            let w = c["distance"].as_f64().unwrap();
            assert!((wasserstein(&a, &b) - w).abs() <= 1e-12 * w, "{c}");
            let norm = numeric(Metric::Wasserstein, &a, &b, 10).unwrap();
            assert!((norm - w / c["reference_std"].as_f64().unwrap()).abs() <= 1e-12 * norm);
        }
    }

    #[test]
    fn psi_by_hand() {
        // p = (60.5/101, 40.5/101) after smoothing, q = (40.5/101, 60.5/101)
        let (p0, p1): (f64, f64) = (60.5 / 101.0, 40.5 / 101.0);
        let want = (p1 - p0) * (p1 / p0).ln() + (p0 - p1) * (p0 / p1).ln();
        assert!((binned(Metric::Psi, &[60., 40.], &[40., 60.]) - want).abs() < 1e-12);
        let cats = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            categorical(Metric::Psi, &cats(&["a", "b"]), &cats(&["a", "b"]))
                .unwrap()
                .abs()
                < 1e-12
        );
        assert!(categorical(Metric::Wasserstein, &cats(&["a"]), &cats(&["b"])).is_none());
    }
}
