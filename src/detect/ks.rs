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
    let (n1, n2) = (reference.len(), current.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let mut tmp = Vec::new();
    let a = sorted_keys(reference, &mut tmp);
    let b = sorted_keys(current, &mut tmp);
    let (d, p) = statistic_and_p(statistic_sorted(&a, &b), n1, n2);
    Some(KsResult {
        statistic: d,
        p_value: p.clamp(0.0, 1.0),
    })
}

/// `x` as an unsigned integer with the same order: the IEEE total order
/// (sign bit flipped for positives, all bits for negatives), with −0 read as
/// +0 so that the two zeros tie, as they compare in f64.
fn order_key(x: f64) -> u64 {
    let b = (x + 0.0).to_bits();
    if b >> 63 == 1 { !b } else { b | 1 << 63 }
}

/// The order keys of `xs`, ascending. A comparison sort spends most of the
/// test's time here, so: an LSD radix sort (8-bit digits, digits equal in
/// every key skipped) on the upper 24 bits — sign, exponent and 12 mantissa
/// bits, which order almost all real data — then an insertion pass for keys
/// that agree in those bits (few and adjacent), which falls back to a
/// comparison sort if the data turn out to be that close together.
fn sorted_keys(xs: &[f64], tmp: &mut Vec<u64>) -> Vec<u64> {
    const DIGITS: usize = 3;
    const LOW: usize = 64 - 8 * DIGITS;
    let n = xs.len();
    if n < 64 || n > u32::MAX as usize {
        let mut v: Vec<u64> = xs.iter().map(|&x| order_key(x)).collect();
        v.sort_unstable();
        return v;
    }
    let mut v = Vec::with_capacity(n);
    let mut counts = [[0u32; 256]; DIGITS];
    for &x in xs {
        let k = order_key(x);
        v.push(k);
        for (d, c) in counts.iter_mut().enumerate() {
            c[(k >> (LOW + 8 * d)) as usize & 255] += 1;
        }
    }
    tmp.clear();
    tmp.resize(n, 0);
    for (d, c) in counts.iter_mut().enumerate() {
        if c.contains(&(n as u32)) {
            continue;
        }
        let mut at = 0;
        for slot in c.iter_mut() {
            (at, *slot) = (at + *slot, at);
        }
        let shift = LOW + 8 * d;
        for &k in &v {
            let slot = &mut c[(k >> shift) as usize & 255];
            tmp[*slot as usize] = k;
            *slot += 1;
        }
        std::mem::swap(&mut v, tmp);
    }
    // Keys out of order now differ only below bit LOW; each moves back past
    // its equals-so-far. Bounded work, then the general sort.
    let mut budget = 8 * n;
    for i in 1..n {
        let k = v[i];
        if v[i - 1] <= k {
            continue;
        }
        let mut j = i;
        while j > 0 && v[j - 1] > k {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = k;
        budget = budget.saturating_sub(i - j);
        if budget == 0 {
            v.sort_unstable();
            break;
        }
    }
    v
}

/// sup |F_a − F_b| over the pooled sample, from sorted order keys, as the
/// integer |i·n₂ − j·n₁| (= n₁n₂·|i/n₁ − j/n₂|) divided once, where i and j
/// count the values ≤ a pooled value v on each side (the right-continuous
/// ECDFs, which is how ties are handled).
///
/// Two merge walks run at once, meeting in the middle — each step of one
/// walk waits on its previous step, so two halve the time:
/// - forwards, taking the smaller head; after taking v, (i, j) are the counts
///   ≤ v once the next pooled value is larger;
/// - backwards, taking the larger tail; while v is the largest value not yet
///   taken, everything not taken is ≤ v, so (i, j) are its counts — recorded
///   when v first comes up.
///
/// Every distinct value is recorded by the walk that finishes it; both may
/// record it, which changes nothing in a maximum. Branch-free: which side the
/// next value comes from is data, not control flow.
fn statistic_sorted(a: &[u64], b: &[u64]) -> f64 {
    let (n1, n2) = (a.len(), b.len());
    // Each side framed by end markers: finite values never map to 0 or
    // u64::MAX (NaN patterns), so 0 stands before the smallest and MAX after
    // the largest, and the walks need no bounds logic of their own.
    let framed = |s: &[u64]| {
        let mut f = Vec::with_capacity(s.len() + 2);
        f.push(0);
        f.extend_from_slice(s);
        f.push(u64::MAX);
        f
    };
    let (a, b) = (framed(a), framed(b));
    let gap = |i: usize, j: usize| (i as u64 * n2 as u64).abs_diff(j as u64 * n1 as u64);
    // Forwards: a[i], b[j] are the heads (i − 1, j − 1 taken). Backwards:
    // a[ri], b[rj] are the tails (ri, rj not taken).
    let (mut i, mut j) = (1usize, 1usize);
    let (mut ri, mut rj) = (n1, n2);
    let mut prev = u64::MAX;
    let mut best = 0u64;
    // Each walk takes one value per step and together they take them all;
    // neither empties both sides, so the markers are never passed.
    for _ in 0..(n1 + n2).div_ceil(2) {
        let (x, y) = (a[i], b[j]);
        let from_a = x <= y;
        let cur = x.min(y);
        i += usize::from(from_a);
        j += usize::from(!from_a);
        let next = a[i].min(b[j]);
        best = best.max(if next > cur { gap(i - 1, j - 1) } else { 0 });

        let (x, y) = (a[ri], b[rj]);
        let top = x.max(y);
        best = best.max(if top < prev { gap(ri, rj) } else { 0 });
        prev = top;
        let from_a = x >= y;
        ri -= usize::from(from_a);
        rj -= usize::from(!from_a);
    }
    best as f64 / (n1 as u64 * n2 as u64) as f64
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
        let kh = (k as u64 * h) as f64;
        let (nf, top) = (n as f64 - kh, (n + 1) as f64 + kh);
        // A_k = Π_j (n − kh − j)/(n + kh + j + 1): four interleaved partial
        // products, so the divisions do not wait on each other. (n − kh − j)
        // may be negative for the top k; it then zeroes A_k.
        let mut q = [1.0f64; 4];
        let mut j = 0;
        while j + 4 <= h {
            for (l, ql) in q.iter_mut().enumerate() {
                let jf = (j + l as u64) as f64;
                *ql = (nf - jf) * *ql / (top + jf);
            }
            j += 4;
        }
        for (l, ql) in q.iter_mut().enumerate().take((h - j) as usize) {
            let jf = (j + l as u64) as f64;
            *ql = (nf - jf) * *ql / (top + jf);
        }
        let p1 = (q[0] * q[1]) * (q[2] * q[3]);
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
    use proptest::strategy::Strategy as _;

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

        /// The radix sort orders as `f64::total_cmp` does (−0 and +0 tied),
        /// whatever the spread: wide ranges, values agreeing in their upper
        /// 32 bits (the run fix-up), negatives, exact ties.
        #[test]
        fn keys_sort_as_floats(
            base in proptest::prop_oneof![
                proptest::num::f64::NORMAL.prop_map(|x| x.clamp(-1e300, 1e300)),
                proptest::strategy::Just(1000.0),
                proptest::strategy::Just(0.0),
            ],
            steps in proptest::collection::vec((-1_000_000i64..1_000_000, 0u8..3), 0..300),
        ) {
            let xs: Vec<f64> = steps
                .iter()
                .map(|&(s, kind)| match kind {
                    0 => base + s as f64,                        // wide
                    1 => f64::from_bits(base.to_bits().wrapping_add(s as u64 & 0xFFFF)), // same upper bits
                    _ => -(s as f64) * 1e-3,                     // negatives, zeros
                })
                .filter(|x| x.is_finite())
                .collect();
            let mut want = xs.clone();
            want.sort_unstable_by(f64::total_cmp);
            let got = sorted_keys(&xs, &mut Vec::new());
            // Keys taken in float order are already in key order, and the
            // radix sort yields exactly that sequence.
            let want: Vec<u64> = want.into_iter().map(order_key).collect();
            proptest::prop_assert!(want.windows(2).all(|w| w[0] <= w[1]));
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        /// Both merge walks together give the textbook statistic: the largest
        /// ECDF gap over all pooled points, ties included.
        #[test]
        fn statistic_is_the_largest_ecdf_gap(
            a in proptest::collection::vec(-8i32..8, 1..70),
            b in proptest::collection::vec(-8i32..8, 1..70),
        ) {
            let (a, b): (Vec<f64>, Vec<f64>) = (
                a.into_iter().map(f64::from).collect(),
                b.into_iter().map(f64::from).collect(),
            );
            let ecdf = |s: &[f64], v: f64| s.iter().filter(|x| **x <= v).count() as f64 / s.len() as f64;
            let naive = a.iter().chain(&b).map(|&v| (ecdf(&a, v) - ecdf(&b, v)).abs()).fold(0.0, f64::max);
            let mut tmp = vec![];
            let d = statistic_sorted(&sorted_keys(&a, &mut tmp), &sorted_keys(&b, &mut tmp));
            proptest::prop_assert!((d - naive).abs() < 1e-12, "{} vs {}", d, naive);
        }
    }

    #[test]
    fn zeros_tie_whatever_their_sign() {
        let r = ks_2samp(&[-0.0, 1.0], &[0.0, 1.0]).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert!(order_key(-0.0) == order_key(0.0) && order_key(-1.0) < order_key(-0.5));
    }
}
