//! Distribution of the one-sample Kolmogorov–Smirnov statistic D_n for finite
//! n — what `scipy.stats.kstwo` evaluates and what `ks_2samp` uses for its
//! asymptotic p-value (n = round(n₁n₂ / (n₁ + n₂))).
//!
//! The survival function P(D_n ≥ x) picks, by region of (n, x), the algorithm
//! Simard & L'Ecuyer recommend — the same regions and cut-offs as scipy, so
//! the p-values agree with scipy's to rounding:
//! - Ruben–Gambino closed forms for n·x ≤ 1 and n·x ≥ n − 1;
//! - twice the one-sided Smirnov tail, Σ_j C(n,j)(1−x−j/n)^{n−j}(x+j/n)^{j−1}·x
//!   (Birnbaum–Tingey), where the two one-sided tails cannot overlap (x ≥ 1/2)
//!   or their overlap is below double precision (n·x² ≥ 2.2);
//! - the Durbin matrix (Marsaglia–Tsang–Wang) or Pomeranz recursion for the
//!   exact CDF at small n·x²;
//! - the Pelz–Good asymptotic series otherwise.
//!
//! References: Simard, R., L'Ecuyer, P. (2011) "Computing the Two-Sided
//! Kolmogorov-Smirnov Distribution", J. Stat. Softw. 39(11); Marsaglia, G.,
//! Tsang, W.W., Wang, J. (2003) J. Stat. Softw. 8(18); Pomeranz, J. (1974)
//! CACM 17(12); Pelz, W., Good, I.J. (1976) JRSS B 38(2); Birnbaum, Z.W.,
//! Tingey, F.H. (1951) Ann. Math. Stat. 22(4).

use std::f64::consts::PI;

/// Rescaling constant for the recursions: 2^128.
const SCALE_EXP: i32 = 128;
const SCALE: f64 = 3.402_823_669_209_385e38;
const SCALE_INV: f64 = 1.0 / SCALE;
/// exp() of anything below this underflows.
const MIN_LOG: f64 = -708.396_418_532_264_1;
/// Above this n the one-sided tail is approximated (as scipy's `smirnov`).
const SMIRNOV_MAX_EXACT_N: u64 = 1_000_000;

/// P(D_n ≥ x), the two-sided survival function for sample size n ≥ 1.
pub fn kolmogn_sf(n: u64, x: f64) -> f64 {
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    let p = if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        // P(D_n < x) = n!/n^n · (2t − 1)^n
        let cdf = if n <= 140 {
            (1..=n).map(|i| i as f64 / nf * (2.0 * t - 1.0)).product::<f64>()
        } else {
            (log_factorial_over_power(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        1.0 - cdf
    } else if t >= nf - 1.0 {
        2.0 * (1.0 - x).powf(nf)
    } else if x >= 0.5 {
        2.0 * smirnov_sf(n, x)
    } else {
        let nxx = t * x;
        if n <= 140 {
            if nxx <= 0.754_693 {
                1.0 - durbin_cdf(n, x)
            } else if nxx <= 4.0 {
                1.0 - pomeranz_cdf(n, x)
            } else {
                2.0 * smirnov_sf(n, x)
            }
        } else if nxx >= 370.0 {
            0.0
        } else if nxx >= 2.2 {
            2.0 * smirnov_sf(n, x)
        } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
            1.0 - durbin_cdf(n, x)
        } else {
            1.0 - pelz_good_cdf(nf, x)
        }
    };
    p.clamp(0.0, 1.0)
}

/// ln(n! / nⁿ) by Stirling's series (n > 140 only).
fn log_factorial_over_power(n: f64) -> f64 {
    const C: [f64; 8] = [
        -2.955_065_359_477_124e-2,
        6.410_256_410_256_41e-3,
        -1.917_526_917_526_917_5e-3,
        8.417_508_417_508_417e-4,
        -5.952_380_952_380_952e-4,
        7.936_507_936_507_937e-4,
        -2.777_777_777_777_778e-3,
        8.333_333_333_333_333e-2,
    ];
    let r = 1.0 / n;
    let series = C.iter().fold(0.0, |acc, c| acc * (r / n) + c);
    n.ln() / 2.0 - n + (2.0 * PI).ln() / 2.0 + r * series
}

/// One-sided Smirnov tail P(D⁺_n ≥ x) by the Birnbaum–Tingey sum
/// x · Σ_{j < n(1−x)} C(n,j) (1 − x − j/n)^{n−j} (x + j/n)^{j−1},
/// each term in logs (every term is positive, so the sum is stable).
pub fn smirnov_sf(n: u64, x: f64) -> f64 {
    if n == 1 {
        return x.clamp(0.0, 1.0);
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    if nf * x <= 1.0 {
        return 1.0 - x * (1.0 + x).powf(nf - 1.0);
    }
    if -2.0 * nf * x * x < MIN_LOG {
        return 0.0;
    }
    if nf * x >= nf - 1.0 {
        return (1.0 - x).powf(nf);
    }
    if n > SMIRNOV_MAX_EXACT_N {
        // scipy's approximation beyond its exact range: e^{−(6nx+1)²/(18n)}.
        return (-(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf).exp();
    }
    let mut sum = 0.0;
    let mut log_binom = 0.0; // ln C(n, j)
    let mut j = 0u64;
    loop {
        let jf = j as f64;
        let a = (nf - jf) / nf - x; // 1 − x − j/n
        if a <= 0.0 {
            break;
        }
        let b = x + jf / nf;
        let term = (log_binom + (nf - jf) * a.ln() + (jf - 1.0) * b.ln()).exp();
        sum += term;
        // The terms rise then fall; stop once the rest cannot matter.
        let remaining = (nf * (1.0 - x) - jf).max(0.0);
        if term > 0.0 && 4.0 * remaining * term < f64::EPSILON * sum {
            break;
        }
        log_binom += ((nf - jf) / (jf + 1.0)).ln();
        j += 1;
    }
    (x * sum).clamp(0.0, 1.0)
}

/// P(D_n < d) by the Durbin matrix method as Marsaglia, Tsang & Wang give it:
/// with k = ⌈nd⌉, h = k − nd, the (2k−1)² matrix H, the probability is
/// n!/nⁿ · (Hⁿ)_{k,k}. Powers are rescaled by 2^128 to stay in range.
fn durbin_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    // w[j] = 1/j!, v[j] = (1 − h^{j+1})/(j+1)!
    let mut w = vec![0.0; m];
    let mut v = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] = (1.0 - h.powi(j as i32)) * fac;
    }
    v[m - 1] = (1.0 + (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32)) * fac;
    let mut hm = vec![0.0; m * m];
    for r in 0..m {
        for c in 1..m {
            if r + 1 >= c {
                hm[r * m + c] = w[r + 1 - c];
            }
        }
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let mut pw = identity(m);
    let (mut exp_pw, mut exp_h) = (0i64, 0i64);
    let mut e = n;
    while e > 0 {
        if e % 2 == 1 {
            pw = matmul(&pw, &hm, m);
            exp_pw += exp_h;
        }
        hm = matmul(&hm, &hm, m);
        exp_h *= 2;
        if hm[(k - 1) * m + k - 1].abs() > SCALE {
            hm.iter_mut().for_each(|x| *x *= SCALE_INV);
            exp_h += SCALE_EXP as i64;
        }
        e /= 2;
    }
    let mut p = pw[(k - 1) * m + k - 1];
    let nf = n as f64;
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < SCALE_INV {
            p *= SCALE;
            exp_pw -= SCALE_EXP as i64;
        }
    }
    ldexp(p, exp_pw).clamp(0.0, 1.0)
}

fn identity(m: usize) -> Vec<f64> {
    let mut a = vec![0.0; m * m];
    for i in 0..m {
        a[i * m + i] = 1.0;
    }
    a
}

fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * m];
    for i in 0..m {
        for l in 0..m {
            let x = a[i * m + l];
            if x == 0.0 {
                continue;
            }
            let (row, brow) = (&mut c[i * m..(i + 1) * m], &b[l * m..(l + 1) * m]);
            for (cj, bj) in row.iter_mut().zip(brow) {
                *cj += x * bj;
            }
        }
    }
    c
}

fn ldexp(x: f64, e: i64) -> f64 {
    // Stepwise so intermediate powers of two stay representable.
    let mut x = x;
    let mut e = e;
    while e > 0 {
        let s = e.min(1000);
        x *= 2f64.powi(s as i32);
        e -= s;
    }
    while e < 0 {
        let s = (-e).min(1000);
        x *= 2f64.powi(-(s as i32));
        e += s;
    }
    x
}

/// Column range of row i of Pomeranz's recursion (0-based, clipped to 0..=n).
fn pomeranz_range(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (half, odd) = ((i + 1) / 2, (i + 1) % 2);
        if odd == 0 {
            if half == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1)
            }
        } else {
            (half - 1 - ll - 1, half + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// P(D_n < x) by Pomeranz's recursion over the 2n + 2 breakpoints
/// {i/n ± x}, as a sequence of truncated convolutions with the powers
/// (g/n)^m/m!, (2g/n)^m/m! and ((1−2g)/n)^m/m!, g = min(f, 1−f) for the
/// fractional part f of nx.
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    let ni = n as i64;
    let nf = n as f64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let np = (2 * (ll + 1)) as usize;
    let powers = |base: f64| -> Vec<f64> {
        let mut p = vec![1.0; np];
        for m in 1..np {
            p[m] = p[m - 1] * base / m as f64;
        }
        p
    };
    let gp = powers(g / nf);
    let twogp = powers(2.0 * g / nf);
    let onem2gp = powers((1.0 - 2.0 * g) / nf);
    let mut v0 = vec![0.0; np];
    let mut v1 = vec![0.0; np];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt: i64 = 0;
    let (mut j1, _) = pomeranz_range(0, ni, ll, ceilf, roundf);
    let mut j2;
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|x| *x = 0.0);
        (j1, j2) = pomeranz_range(i, ni, ll, ceilf, roundf);
        let pw = if i == 1 || i == 2 * ni + 1 {
            &gp
        } else if i % 2 == 1 {
            &twogp
        } else {
            &onem2gp
        };
        let len = j2 - k1 + 1;
        if len > 0 {
            let seg_start = (k1 - v0s) as usize;
            let count = ((j2 - j1 + 1) as usize).min(np);
            let (start, len) = ((j1 - k1) as usize, len as usize);
            truncated_convolution(&v0[seg_start..], len, pw, start, &mut v1[..count]);
            let mx = v1.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if mx > 0.0 && mx < SCALE_INV {
                v1.iter_mut().for_each(|x| *x *= SCALE);
                expnt -= SCALE_EXP as i64;
            }
            v1s = v0s + j1 - k1;
        }
    }
    times_factorial(v1[(ni - v1s) as usize], expnt, n).clamp(0.0, 1.0)
}

/// v·2^expnt·n!, rescaled as it grows so that it cannot overflow before
/// the last step.
fn times_factorial(mut v: f64, mut expnt: i64, n: u64) -> f64 {
    for m in 1..=n {
        if v.abs() > SCALE {
            v *= SCALE_INV;
            expnt += SCALE_EXP as i64;
        }
        v *= m as f64;
    }
    ldexp(v, expnt)
}

/// [`pomeranz_cdf`]'s step: out[o] = conv[start + o] for the convolution
/// conv[t] = Σ_{s < len, t − s < len} seg[s]·pw[t − s].
fn truncated_convolution(seg: &[f64], len: usize, pw: &[f64], start: usize, out: &mut [f64]) {
    for (o, slot) in out.iter_mut().enumerate() {
        let t = start + o;
        let mut acc = 0.0;
        for s in 0..=t.min(len - 1) {
            if t - s < len {
                acc += seg[s] * pw[t - s];
            }
        }
        *slot = acc;
    }
}

/// P(D_n ≤ x) by the Pelz–Good expansion K₀(z) + K₁(z)/√n + K₂(z)/n +
/// K₃(z)/n^{3/2}, z = x√n, each K in its Jacobi-theta form for small z.
fn pelz_good_cdf(n: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let z = n.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -PI * PI / 8.0 / z2;
    if qlog < MIN_LOG {
        return 0.0;
    }
    let q = qlog.exp();
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let maxk = (16.0 * z / PI).ceil() as i64;
    let mut kk = [0.0f64; 4];
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qp = q.powf(8.0 * k as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (a, c) in kk.iter_mut().zip(coeffs) {
            *a = *a * qp + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let denom = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (a, d) in kk.iter_mut().zip(denom) {
        *a = *a * q * sqrt2pi / d;
    }
    let q2 = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut extra2, mut extra3) = (0.0, 0.0);
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let k2 = kf * kf;
        let qp = q2.powf(k2);
        extra2 += k2 * qp;
        extra3 += (sqrt3z + PI * kf) * (sqrt3z - PI * kf) * k2 * qp;
    }
    kk[2] += extra2 * pi2 * sqrt2pi / (-36.0 * z3);
    kk[3] += extra3 * pi2 * sqrt2pi / (216.0 * z6);
    kk.iter().enumerate().map(|(i, a)| a / n.powf(i as f64 / 2.0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_agree_where_they_meet() {
        // Durbin (exact) and Pomeranz (exact) must agree wherever both apply.
        // Both are exact where n·x > 1 (their domain in `kolmogn_sf`).
        for (n, xs) in [
            (10u64, [0.12, 0.2, 0.3, 0.45]),
            (50, [0.03, 0.08, 0.12, 0.2]),
            (140, [0.01, 0.05, 0.1, 0.2]),
        ] {
            for x in xs {
                let a = durbin_cdf(n, x);
                let b = pomeranz_cdf(n, x);
                assert!((a - b).abs() < 1e-10, "n={n} x={x}: durbin {a} pomeranz {b}");
            }
        }
    }

    /// scipy.stats.kstwo.sf over a grid of n and x covering every region.
    #[test]
    fn matches_scipy_kstwo() {
        let v = super::super::testgen::fixture("ks_golden.json");
        for c in v["kstwo"].as_array().unwrap() {
            let (n, x, want) = (
                c["n"].as_u64().unwrap(),
                c["x"].as_f64().unwrap(),
                c["sf"].as_f64().unwrap(),
            );
            let got = kolmogn_sf(n, x);
            assert!((got - want).abs() <= 1e-9, "n={n} x={x}: {got} vs scipy {want}");
        }
    }

    #[test]
    fn tails_and_edges() {
        assert_eq!(kolmogn_sf(100, 0.0), 1.0);
        assert_eq!(kolmogn_sf(100, 1.0), 0.0);
        assert_eq!(kolmogn_sf(100, 0.004), 1.0); // n·x ≤ 1/2
        // n = 1: D_1 is uniform on [1/2, 1]: P(D ≥ x) = 2(1 − x).
        assert!((kolmogn_sf(1, 0.75) - 0.5).abs() < 1e-15);
        let p = kolmogn_sf(1000, 0.2);
        assert!(p > 0.0 && p < 1e-30);
    }
}
