//! Chi-square test of homogeneity between the reference and current
//! distributions of a categorical variable (categorical features, predicted
//! classes). Both windows are samples, so the 2×k contingency table is tested
//! as a whole — `scipy.stats.chi2_contingency(table, correction=False)`:
//!
//! E_ij = R_i·C_j / N,  X² = Σ_ij (O_ij − E_ij)² / E_ij,  p = P(χ²_{k−1} ≥ X²)
//!
//! Categories absent from both windows are dropped (their expected count would
//! be 0); a category seen only in the current window is an ordinary column
//! with a zero reference cell. With one category left the table has no degree
//! of freedom: X² = 0, p = 1, as scipy returns.
//!
//! Reference: Pearson (1900); Agresti, *Categorical Data Analysis* §3.2.

use std::collections::BTreeMap;
use std::hash::Hash;

use super::special::chi2_sf;

/// Result of a chi-square test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chi2Result {
    pub statistic: f64,
    pub p_value: f64,
    /// Degrees of freedom (categories seen − 1).
    pub dof: usize,
}

/// Test on per-category counts (`reference[j]`, `current[j]` for category j).
/// `None` when either window is empty.
pub fn chi2_homogeneity(reference: &[f64], current: &[f64]) -> Option<Chi2Result> {
    let cols: Vec<(f64, f64)> = reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| (r, c))
        .filter(|(r, c)| r + c > 0.0)
        .collect();
    let (nr, nc): (f64, f64) = cols.iter().fold((0.0, 0.0), |(a, b), (r, c)| (a + r, b + c));
    if nr <= 0.0 || nc <= 0.0 {
        return None;
    }
    let dof = cols.len().saturating_sub(1);
    if dof == 0 {
        return Some(Chi2Result {
            statistic: 0.0,
            p_value: 1.0,
            dof,
        });
    }
    let n = nr + nc;
    let mut stat = 0.0;
    for (r, c) in &cols {
        let col = r + c;
        for (o, row) in [(r, nr), (c, nc)] {
            let e = row * col / n;
            stat += (o - e) * (o - e) / e;
        }
    }
    Some(Chi2Result {
        statistic: stat,
        p_value: chi2_sf(stat, dof as f64),
        dof,
    })
}

/// Counts per category of two samples, categories in sorted order (so the
/// table, and everything computed from it, does not depend on arrival order).
/// The table of two windows' category counts (`reference` and `current`:
/// category → count), over the union of their categories in order: each
/// category's count in each window (0 where it is absent).
pub fn count_table<T: Ord>(reference: &BTreeMap<T, u64>, current: &BTreeMap<T, u64>) -> (Vec<f64>, Vec<f64>) {
    let mut m: BTreeMap<&T, (f64, f64)> = BTreeMap::new();
    for (k, n) in reference {
        m.entry(k).or_default().0 += *n as f64;
    }
    for (k, n) in current {
        m.entry(k).or_default().1 += *n as f64;
    }
    m.values().cloned().unzip()
}

pub fn contingency<T: Ord + Clone + Hash>(reference: &[T], current: &[T]) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let mut m: BTreeMap<&T, (f64, f64)> = BTreeMap::new();
    for v in reference {
        m.entry(v).or_default().0 += 1.0;
    }
    for v in current {
        m.entry(v).or_default().1 += 1.0;
    }
    let cats = m.keys().map(|k| (*k).clone()).collect();
    let (r, c) = m.values().cloned().unzip();
    (cats, r, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scipy_values() {
        // chi2_contingency([[10, 20, 30], [15, 15, 30]], correction=False)
        // -> statistic 1.7142857142857144, p 0.42437284567695 (= e^{−X²/2} for dof 2)
        let r = chi2_homogeneity(&[10., 20., 30.], &[15., 15., 30.]).unwrap();
        assert_eq!(r.dof, 2);
        assert!((r.statistic - 1.714_285_714_285_714_4).abs() < 1e-12);
        assert!((r.p_value - 0.424_372_845_676_95).abs() < 1e-13);
    }

    #[test]
    fn matches_scipy_chi2_contingency() {
        use super::super::testgen::nums;
        let v = super::super::testgen::fixture("stats_golden.json");
        for c in v["chi2"].as_array().unwrap() {
            let r = chi2_homogeneity(&nums(&c["reference"]), &nums(&c["current"])).unwrap();
            let (ws, wp) = (c["statistic"].as_f64().unwrap(), c["p_value"].as_f64().unwrap());
            assert_eq!(r.dof as u64, c["dof"].as_u64().unwrap(), "{c}");
            assert!(
                (r.statistic - ws).abs() <= 1e-12 * ws.abs().max(1.0),
                "{c}: {}",
                r.statistic
            );
            assert!((r.p_value - wp).abs() <= 1e-9, "{c}: p {}", r.p_value);
        }
    }

    #[test]
    fn unseen_and_single_categories() {
        // A category only in the current window is a column with a zero cell.
        let r = chi2_homogeneity(&[50., 50., 0.], &[40., 40., 20.]).unwrap();
        assert_eq!(r.dof, 2);
        assert!(r.p_value < 1e-4);
        // Empty columns are dropped; one category left: no test possible, p = 1.
        let r = chi2_homogeneity(&[5., 0.], &[7., 0.]).unwrap();
        assert_eq!((r.statistic, r.p_value, r.dof), (0.0, 1.0, 0));
        assert!(chi2_homogeneity(&[0., 0.], &[1., 2.]).is_none());
    }

    #[test]
    fn contingency_is_sorted_and_order_free() {
        let (cats, r, c) = contingency(&["b", "a", "b"], &["c", "a"]);
        assert_eq!(cats, vec!["a", "b", "c"]);
        assert_eq!((r, c), (vec![1., 2., 0.], vec![1., 0., 1.]));
    }
}
