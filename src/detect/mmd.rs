//! Maximum Mean Discrepancy two-sample test with a Gaussian RBF kernel.
//!
//! Statistic (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR 13, eq. 3),
//! the unbiased U-statistic
//!
//!   MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i,x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i,y_j)
//!            − 2/(nm) Σ_{i,j} k(x_i,y_j),
//!
//! with k(a,b) = exp(−‖a−b‖² / (2σ²)). Unless given, σ² comes from the median
//! heuristic on the reference: σ² = median_{i<j} ‖x_i − x_j‖² / 2 (as Alibi Detect).
//!
//! p-value by permutation of the pooled sample, with the +1 correction of
//! Phipson & Smyth (2010): p = (1 + #{T_b ≥ T}) / (B + 1), never 0.
//!
//! The permutation loop never copies the kernel matrix: with K₀ the pooled
//! kernel matrix with zero diagonal, r = K₀·1, S = 1ᵀK₀1 and s the indicator of
//! the permuted "reference" set, the three block sums are
//!   Σ_XX = sᵀK₀s,  Σ_XY = sᵀr − sᵀK₀s,  Σ_YY = S − 2sᵀr + sᵀK₀s,
//! so each permutation costs one quadratic form over the smaller set.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Options of one MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdOptions {
    /// Number of permutations B for the p-value.
    pub permutations: usize,
    /// Seed of the permutation generator (runs are reproducible).
    pub seed: u64,
    /// Kernel bandwidth σ; `None` = median heuristic on the reference.
    pub sigma: Option<f64>,
}

impl Default for MmdOptions {
    fn default() -> Self {
        Self {
            permutations: 200,
            seed: 0,
            sigma: None,
        }
    }
}

/// Result of an MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdResult {
    /// MMD²_u (may be slightly negative under the null).
    pub statistic: f64,
    /// Permutation p-value in [1/(B+1), 1].
    pub p_value: f64,
    /// Bandwidth σ used.
    pub sigma: f64,
}

/// Test `reference` (n rows) against `current` (m rows), both row-major with
/// `dim` columns. Returns `None` when either side has fewer than two rows
/// (the U-statistic is undefined) or `dim` is 0.
pub fn mmd_test(reference: &[f64], current: &[f64], dim: usize, opts: &MmdOptions) -> Option<MmdResult> {
    if dim == 0 || !reference.len().is_multiple_of(dim) || !current.len().is_multiple_of(dim) {
        return None;
    }
    let (n, m) = (reference.len() / dim, current.len() / dim);
    if n < 2 || m < 2 {
        return None;
    }
    let sigma = match opts.sigma {
        Some(s) if s > 0.0 && s.is_finite() => s,
        _ => median_heuristic_sigma(reference, dim),
    };
    let total = n + m;
    let pooled: Vec<f64> = reference.iter().chain(current).copied().collect();
    let k = kernel_matrix(&pooled, total, dim, sigma);
    let row_sums: Vec<f64> = (0..total).map(|i| k[i * total..(i + 1) * total].iter().sum()).collect();
    let grand: f64 = row_sums.iter().sum();

    // `perm[..n]` is the reference side. The quadratic form is taken over the
    // smaller side; the identities above give the other sums from it.
    let stat_for = |perm: &[usize]| -> f64 {
        let (q, sr) = if n <= m {
            let xs = &perm[..n];
            (quad_form(&k, total, xs), xs.iter().map(|&i| row_sums[i]).sum::<f64>())
        } else {
            let ys = &perm[n..];
            let qy = quad_form(&k, total, ys);
            let sr = grand - ys.iter().map(|&i| row_sums[i]).sum::<f64>();
            (qy - grand + 2.0 * sr, sr)
        };
        mmd_from_sums(q, sr - q, grand - 2.0 * sr + q, n, m)
    };
    let identity: Vec<usize> = (0..total).collect();
    let t = stat_for(&identity);

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut idx: Vec<usize> = (0..total).collect();
    let mut exceed = 0usize;
    for _ in 0..opts.permutations {
        idx.shuffle(&mut rng);
        let tb = stat_for(&idx);
        if tb >= t {
            exceed += 1;
        }
    }
    let p = (1 + exceed) as f64 / (opts.permutations + 1) as f64;
    Some(MmdResult {
        statistic: t,
        p_value: p,
        sigma,
    })
}

fn mmd_from_sums(xx: f64, xy: f64, yy: f64, n: usize, m: usize) -> f64 {
    let (nf, mf) = (n as f64, m as f64);
    xx / (nf * (nf - 1.0)) + yy / (mf * (mf - 1.0)) - 2.0 * xy / (nf * mf)
}

/// Σ_{i,j∈xs} K[i,j] (K has a zero diagonal).
fn quad_form(k: &[f64], total: usize, xs: &[usize]) -> f64 {
    let mut q = 0.0;
    for &i in xs {
        let row = &k[i * total..(i + 1) * total];
        q += xs.iter().map(|&j| row[j]).sum::<f64>();
    }
    q
}

/// Pooled kernel matrix with a zero diagonal (the U-statistic excludes i = j).
fn kernel_matrix(z: &[f64], total: usize, dim: usize, sigma: f64) -> Vec<f64> {
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let mut k = vec![0.0; total * total];
    for i in 0..total {
        let zi = &z[i * dim..(i + 1) * dim];
        for j in (i + 1)..total {
            let v = (-gamma * sq_dist(zi, &z[j * dim..(j + 1) * dim])).exp();
            k[i * total + j] = v;
            k[j * total + i] = v;
        }
    }
    k
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// σ = sqrt(median_{i<j} ‖x_i − x_j‖² / 2) over the reference rows. Falls back
/// to 1 when all reference points coincide (any σ gives MMD = 0 then).
pub fn median_heuristic_sigma(reference: &[f64], dim: usize) -> f64 {
    let n = reference.len() / dim;
    let mut d = Vec::with_capacity(n * (n.saturating_sub(1)) / 2);
    for i in 0..n {
        for j in (i + 1)..n {
            d.push(sq_dist(
                &reference[i * dim..(i + 1) * dim],
                &reference[j * dim..(j + 1) * dim],
            ));
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    let mid = d.len() / 2;
    let med = if d.len() % 2 == 1 {
        *d.select_nth_unstable_by(mid, f64::total_cmp).1
    } else {
        let hi = *d.select_nth_unstable_by(mid, f64::total_cmp).1;
        let lo = d[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo + hi) / 2.0
    };
    if med > 0.0 && med.is_finite() {
        (med / 2.0).sqrt()
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn gauss(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f64) -> Vec<f64> {
        // Box–Muller, enough for tests.
        (0..n * dim)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() + shift
            })
            .collect()
    }

    /// Direct O(n²) evaluation of the U-statistic, the definition itself.
    fn naive(x: &[f64], y: &[f64], dim: usize, sigma: f64) -> f64 {
        let k = |a: &[f64], b: &[f64]| (-sq_dist(a, b) / (2.0 * sigma * sigma)).exp();
        let (n, m) = (x.len() / dim, y.len() / dim);
        let row = |v: &[f64], i: usize| v[i * dim..(i + 1) * dim].to_vec();
        let mut xx = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    xx += k(&row(x, i), &row(x, j));
                }
            }
        }
        let mut yy = 0.0;
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    yy += k(&row(y, i), &row(y, j));
                }
            }
        }
        let mut xy = 0.0;
        for i in 0..n {
            for j in 0..m {
                xy += k(&row(x, i), &row(y, j));
            }
        }
        mmd_from_sums(xx, xy, yy, n, m)
    }

    #[test]
    fn statistic_matches_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = gauss(&mut rng, 40, 3, 0.0);
        let y = gauss(&mut rng, 30, 3, 0.5);
        let r = mmd_test(
            &x,
            &y,
            3,
            &MmdOptions {
                permutations: 10,
                seed: 1,
                sigma: None,
            },
        )
        .unwrap();
        let want = naive(&x, &y, 3, r.sigma);
        assert!(
            (r.statistic - want).abs() <= 1e-12 * want.abs().max(1e-12),
            "{} vs {}",
            r.statistic,
            want
        );
    }

    #[test]
    fn statistic_matches_definition_when_current_is_smaller() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = gauss(&mut rng, 30, 2, 0.0);
        let y = gauss(&mut rng, 12, 2, 0.3);
        let r = mmd_test(
            &x,
            &y,
            2,
            &MmdOptions {
                permutations: 5,
                seed: 1,
                sigma: Some(0.8),
            },
        )
        .unwrap();
        let want = naive(&x, &y, 2, 0.8);
        assert!(
            (r.statistic - want).abs() <= 1e-12 * want.abs().max(1e-12),
            "{} vs {}",
            r.statistic,
            want
        );
    }

    #[test]
    fn shift_detected_null_not_and_p_never_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = gauss(&mut rng, 100, 4, 0.0);
        let y = gauss(&mut rng, 100, 4, 1.0);
        let opts = MmdOptions {
            permutations: 99,
            seed: 3,
            sigma: None,
        };
        let r = mmd_test(&x, &y, 4, &opts).unwrap();
        assert_eq!(r.p_value, 0.01, "clear shift: every permutation below T, p = 1/(B+1)");
        let z = gauss(&mut rng, 100, 4, 0.0);
        let r0 = mmd_test(&x, &z, 4, &opts).unwrap();
        assert!(r0.p_value > 0.01, "no shift: p = {}", r0.p_value);
    }

    #[test]
    fn seeded_runs_are_reproducible() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = gauss(&mut rng, 50, 2, 0.0);
        let y = gauss(&mut rng, 50, 2, 0.1);
        let o = MmdOptions {
            permutations: 50,
            seed: 9,
            sigma: None,
        };
        assert_eq!(mmd_test(&x, &y, 2, &o), mmd_test(&x, &y, 2, &o));
    }

    #[test]
    fn too_few_rows_is_none() {
        assert!(mmd_test(&[1.0], &[1.0, 2.0], 1, &MmdOptions::default()).is_none());
    }
}
