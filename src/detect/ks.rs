//! Two-sample Kolmogorov–Smirnov test, two-sided.
//!
//! Statistic: D = sup_x |F_ref(x) − F_cur(x)| over the pooled sample, with
//! ties handled as in `scipy.stats.ks_2samp` (ECDFs evaluated with
//! right-continuous `searchsorted(side='right')` at every pooled point).
//!
//! p-value, following `ks_2samp(method='auto')`:
//! - exact when max(n, m) ≤ 10 000: D is rounded to h / lcm(n, m) and
//!   P(D_{n,m} ≥ h / lcm) is computed by lattice-path counting — for n = m the
//!   closed form of Gnedenko–Korolyuk evaluated by a Horner-like scheme, for
//!   n ≠ m Hodges' "inside method" rewritten to carry 1 − p (Viehmann 2021,
//!   arXiv:2102.08037) so small p-values keep their relative accuracy;
//! - asymptotic otherwise (or when the exact recursion under/overflows):
//!   P(D_en ≥ D) for the one-sample statistic with en = round(nm / (n + m)),
//!   i.e. scipy's `kstwo.sf(D, en)` (see [`super::kolmogorov`]).
//!
//! References: Hodges, J.L. (1958) "The significance probability of the
//! Smirnov two-sample test", Arkiv för Matematik 3(43); Viehmann (2021).

/// Largest sample size for which the exact p-value is used (scipy's `MAX_AUTO_N`).
pub const MAX_EXACT_N: usize = 10_000;

/// Result of a two-sample test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// D statistic in [0, 1].
    pub statistic: f64,
    /// Two-sided p-value in [0, 1].
    pub p_value: f64,
}

/// KS test of `reference` against `current`. NaNs must be removed by the
/// caller (the decode stage rejects them). Returns `None` if either side is empty.
pub fn ks_2samp(reference: &[f64], current: &[f64]) -> Option<KsResult> {
    let mut a = reference.to_vec();
    let mut b = current.to_vec();
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    ks_2samp_sorted(&a, &b)
}

/// As [`ks_2samp`], on samples already sorted ascending.
pub fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> Option<KsResult> {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (d, p) = statistic_and_p(statistic_sorted(a, b), n1, n2);
    Some(KsResult {
        statistic: d,
        p_value: p.clamp(0.0, 1.0),
    })
}

/// sup |F_a − F_b| by a merge walk; equal values are consumed on both sides
/// before comparing, which is the right-continuous ECDF at each pooled point.
fn statistic_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    while i < a.len() && j < b.len() {
        let x = if a[i] <= b[j] { a[i] } else { b[j] };
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n1 - j as f64 / n2).abs());
    }
    // Once one side is exhausted the other's ECDF only rises towards 1,
    // so the gap can only shrink: nothing more to check.
    d
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Two-sided statistic and p-value for raw statistic `d` with sample sizes
/// n1, n2. In the exact range D is snapped to the lattice value h / lcm(n1, n2)
/// it must be (as scipy does), which removes floating-point noise from D.
pub fn statistic_and_p(d: f64, n1: usize, n2: usize) -> (f64, f64) {
    let (n1, n2) = (n1 as u64, n2 as u64);
    let mut d = d;
    if n1.max(n2) <= MAX_EXACT_N as u64 {
        let g = gcd(n1, n2);
        let lcm = (n1 / g) * n2;
        let h = (d * lcm as f64).round_ties_even() as u64;
        d = h as f64 / lcm as f64;
        if h == 0 {
            return (d, 1.0);
        }
        let p = if n1 == n2 {
            prob_outside_square(n1, h)
        } else {
            outer_prob_inside(n1, n2, g, h)
        };
        if p.is_finite() && (0.0..=1.0).contains(&p) {
            return (d, p);
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    // numpy's round: half to even.
    let en = (m * n / (m + n)).round_ties_even();
    (d, super::kolmogorov::kolmogn_sf(en as u64, d))
}

/// P(D_{n,n} ≥ h/n) = 2 Σ_k (−1)^{k+1} C(2n, n − kh) / C(2n, n), evaluated as
/// 2·A0(1 − A1(1 − A2(…))) with each A_k a product of h ratios, which avoids
/// the cancellation of the alternating sum.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let mut p = 0.0;
    let mut k = (n / h) as i64;
    while k >= 0 {
        let kh = k as u64 * h;
        let mut p1 = 1.0;
        for j in 0..h {
            // (n − kh − j) may be negative for the top k; it then zeroes p1.
            let num = n as f64 - kh as f64 - j as f64;
            p1 = num * p1 / (n + kh + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// Proportion of lattice paths from (0,0) to (m,n) that leave the band
/// |x/m − y/n| < h/lcm(m,n), computed column by column over a sliding window
/// of the band; each cell holds the *outside* proportion, so the recursion
/// A(x,y) = (x·A(x−1,y) + y·A(x,y−1))/(x+y) stays in [0,1].
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = (m / g, n / g);
    let (m, n, mg, ng, h) = (m as i64, n as i64, mg as i64, ng as i64, h as i64);
    let ceil_div = |a: i64, b: i64| -> i64 { a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0) };
    let mut minj: i64 = 0;
    let mut maxj: i64 = ceil_div(h, mg).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a.max(1)];
    for v in a.iter_mut().take(maxj as usize) {
        *v = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((ng * i - h).div_euclid(mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let prev = a[(jj + minj - lastminj) as usize];
            val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = (start + (lastlen - curlen) as usize).min(a.len());
            for v in &mut a[start..end] {
                *v = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_have_d0_p1() {
        let x = [1.0, 2.0, 3.0, 3.0];
        let r = ks_2samp(&x, &x).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
    }

    #[test]
    fn scipy_small_cases() {
        // scipy.stats.ks_2samp([1,2,3,4,5], [6,7,8,9,10]) -> D=1, p=0.007936507936507936
        let r = ks_2samp(&[1., 2., 3., 4., 5.], &[6., 7., 8., 9., 10.]).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert!((r.p_value - 0.007936507936507936).abs() < 1e-12, "{}", r.p_value);
        // ks_2samp([0,1,2], [0.5,1.5,2.5,3.5]) -> D=0.5, p=0.6571428571428571 (n≠m path)
        let r = ks_2samp(&[0., 1., 2.], &[0.5, 1.5, 2.5, 3.5]).unwrap();
        assert!((r.statistic - 0.5).abs() < 1e-15);
        assert!((r.p_value - 0.6571428571428571).abs() < 1e-12, "{}", r.p_value);
    }

    #[test]
    fn empty_side_is_none() {
        assert!(ks_2samp(&[], &[1.0]).is_none());
    }

    #[test]
    fn single_points() {
        let r = ks_2samp(&[1.0], &[2.0]).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert_eq!(r.p_value, 1.0);
    }

    /// tests/fixtures/ks_golden.json, written by scripts/golden_stats.py from scipy.
    #[test]
    fn matches_scipy_golden_values() {
        use super::super::testgen::nums;
        let v = super::super::testgen::fixture("ks_golden.json");
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for c in cases {
            let (a, b) = (nums(&c["a"]), nums(&c["b"]));
            let r = ks_2samp(&a, &b).unwrap();
            let (ws, wp) = (c["statistic"].as_f64().unwrap(), c["p_value"].as_f64().unwrap());
            let what = format!("{} n={} m={}", c["kind"], a.len(), b.len());
            assert!(
                (r.statistic - ws).abs() <= 1e-12 * ws.abs().max(1e-300),
                "{what}: D {} vs {ws}",
                r.statistic
            );
            assert!((r.p_value - wp).abs() <= 1e-9, "{what}: p {} vs {wp}", r.p_value);
            // Symmetric in its arguments.
            let s = ks_2samp(&b, &a).unwrap();
            assert_eq!((s.statistic, s.p_value), (r.statistic, r.p_value), "{what}");
        }
    }

    /// Large samples named by generator: the exact path up to 10,000 and each
    /// region of the asymptotic one.
    #[test]
    fn matches_scipy_on_large_samples() {
        let v = super::super::testgen::fixture("ks_golden.json");
        for c in v["large_cases"].as_array().unwrap() {
            let (a, b) = super::super::testgen::pair(c);
            let r = ks_2samp(&a, &b).unwrap();
            let (ws, wp) = (c["statistic"].as_f64().unwrap(), c["p_value"].as_f64().unwrap());
            let what = format!("n={} m={}", a.len(), b.len());
            assert!(
                (r.statistic - ws).abs() <= 1e-12 * ws.abs(),
                "{what}: D {} vs {ws}",
                r.statistic
            );
            assert!((r.p_value - wp).abs() <= 1e-9, "{what}: p {} vs {wp}", r.p_value);
        }
    }

    proptest::proptest! {
        #[test]
        fn symmetric_order_free_and_bounded(
            a in proptest::collection::vec(-5i32..5, 1..60),
            b in proptest::collection::vec(-5i32..5, 1..60),
        ) {
            let a: Vec<f64> = a.into_iter().map(f64::from).collect();
            let b: Vec<f64> = b.into_iter().map(f64::from).collect();
            let r = ks_2samp(&a, &b).unwrap();
            proptest::prop_assert!((0.0..=1.0).contains(&r.p_value));
            proptest::prop_assert!((0.0..=1.0).contains(&r.statistic));
            proptest::prop_assert_eq!(ks_2samp(&b, &a).unwrap(), r);
            let mut rev = a.clone();
            rev.reverse();
            proptest::prop_assert_eq!(ks_2samp(&rev, &b).unwrap(), r);
        }
    }
}
