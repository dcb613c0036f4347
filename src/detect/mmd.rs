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
//! so each permutation costs one quadratic form over the smaller set. The B
//! quadratic forms are computed together, block of rows by block of rows, so
//! the matrix streams through the cache once for all permutations (a masked
//! matrix product) instead of once per permutation.
//!
//! Sliding windows: the reference block K_XX (and σ) is computed once per
//! reference and kept in a small process-wide cache keyed by the reference's
//! content; the current block's rows are matched by content against the
//! previous evaluation of the same reference, so a slide computes only the
//! kernel rows of the events that entered the window.
//!
//! For windows too large for the quadratic statistic, [`mmd_linear`] gives
//! the linear-time statistic with its normal null (Gretton et al. 2012, §6).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::simd;
use super::special::normal_sf;

/// Options of one MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdOptions {
    /// Number of permutations B for the p-value.
    pub permutations: usize,
    /// Seed of the permutation generator (runs are reproducible).
    pub seed: u64,
    /// Kernel bandwidth σ; `None` = median heuristic on the reference.
    pub sigma: Option<f64>,
    /// Threads for the permutations (the p-value does not depend on it).
    pub threads: usize,
}

impl Default for MmdOptions {
    fn default() -> Self {
        Self {
            permutations: 200,
            seed: 0,
            sigma: None,
            threads: 1,
        }
    }
}

/// Result of an MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdResult {
    /// MMD²_u (may be slightly negative under the null).
    pub statistic: f64,
    /// Permutation p-value in [1/(B+1), 1] (linear test: normal tail).
    pub p_value: f64,
    /// Bandwidth σ used.
    pub sigma: f64,
}

/// Kernel blocks of one evaluation. K_XX and K_YY have zero diagonals.
struct Gram {
    n: usize,
    m: usize,
    kxx: Arc<Vec<f64>>,
    /// n × m, and its transpose m × n (row access for both sides).
    kxy: Vec<f64>,
    kyx: Arc<Vec<f64>>,
    kyy: Arc<Vec<f64>>,
}

impl Gram {
    /// Row i of the pooled matrix as (part against X, part against Y).
    fn row(&self, i: usize) -> (&[f64], &[f64]) {
        let (n, m) = (self.n, self.m);
        if i < n {
            (&self.kxx[i * n..(i + 1) * n], &self.kxy[i * m..(i + 1) * m])
        } else {
            let j = i - n;
            (&self.kyx[j * n..(j + 1) * n], &self.kyy[j * m..(j + 1) * m])
        }
    }
}

/// What is kept between evaluations against the same reference.
struct CacheEntry {
    key: (u64, usize, u64),
    sigma: f64,
    kxx: Arc<Vec<f64>>,
    /// Previous current window: rows, and its kernel blocks.
    current: Vec<f64>,
    kyx: Arc<Vec<f64>>,
    kyy: Arc<Vec<f64>>,
}

/// A few references at once (several keys, detectors); oldest dropped first.
const CACHE_ENTRIES: usize = 8;
static CACHE: Mutex<Vec<CacheEntry>> = Mutex::new(Vec::new());

/// Empties the kernel cache (benchmarks measure the cold path with it).
pub fn clear_kernel_cache() {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn hash_rows(x: &[f64]) -> u64 {
    // FNV-1a over the bit patterns: cheap, and equal rows hash equal.
    x.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn kernel(a: &[f64], b: &[f64], gamma: f64) -> f64 {
    (-gamma * sq_dist(a, b)).exp()
}

/// Builds the kernel blocks, reusing what the cache holds for this reference.
fn gram(reference: &[f64], current: &[f64], dim: usize, sigma_opt: Option<f64>) -> (Gram, f64) {
    let (n, m) = (reference.len() / dim, current.len() / dim);
    let key = (hash_rows(reference), dim, sigma_opt.map_or(0, f64::to_bits));
    let cached = {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().position(|e| e.key == key).map(|i| c.remove(i))
    };
    let (sigma, kxx, prev) = match cached {
        Some(e) => (e.sigma, e.kxx, Some((e.current, e.kyx, e.kyy))),
        None => {
            let sigma = sigma_opt.unwrap_or_else(|| median_heuristic_sigma(reference, dim));
            let gamma = 1.0 / (2.0 * sigma * sigma);
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                let xi = &reference[i * dim..(i + 1) * dim];
                let row = &mut k[i * n + i + 1..(i + 1) * n];
                simd::sq_dists_to(xi, &reference[(i + 1) * dim..], row);
                simd::gaussian_in_place(row, gamma);
            }
            for i in 0..n {
                for j in 0..i {
                    k[i * n + j] = k[j * n + i];
                }
            }
            (sigma, Arc::new(k), None)
        }
    };
    let gamma = 1.0 / (2.0 * sigma * sigma);
    // Where each current row was in the previous current window, if it was.
    let old_pos: Vec<Option<usize>> = match &prev {
        Some((old, _, _)) => {
            let pm = old.len() / dim;
            let mut by_hash: HashMap<u64, usize> = HashMap::with_capacity(pm);
            for j in 0..pm {
                by_hash.insert(hash_rows(&old[j * dim..(j + 1) * dim]), j);
            }
            (0..m)
                .map(|j| {
                    let row = &current[j * dim..(j + 1) * dim];
                    by_hash
                        .get(&hash_rows(row))
                        .copied()
                        .filter(|&o| &old[o * dim..(o + 1) * dim] == row)
                })
                .collect()
        }
        None => vec![None; m],
    };
    let mut kyx = vec![0.0; m * n];
    for j in 0..m {
        let dst = &mut kyx[j * n..(j + 1) * n];
        match (old_pos[j], &prev) {
            (Some(o), Some((_, pkyx, _))) => dst.copy_from_slice(&pkyx[o * n..(o + 1) * n]),
            _ => {
                let y = &current[j * dim..(j + 1) * dim];
                simd::sq_dists_to(y, reference, dst);
                simd::gaussian_in_place(dst, gamma);
            }
        }
    }
    let mut kyy = vec![0.0; m * m];
    let pm = prev.as_ref().map_or(0, |(old, _, _)| old.len() / dim);
    // Rows of events new to the window are computed (whole rows, which
    // covers their pairs with every other event); pairs of events both in the
    // previous window are copied. Without a previous window: the triangle.
    let mut buf = vec![0.0; m];
    for j in 0..m {
        if old_pos[j].is_some() {
            continue;
        }
        let from = if prev.is_some() { 0 } else { j + 1 };
        let y = &current[j * dim..(j + 1) * dim];
        let row = &mut buf[from..m];
        simd::sq_dists_to(y, &current[from * dim..], row);
        simd::gaussian_in_place(row, gamma);
        for (l, v) in (from..m).zip(row.iter()) {
            if l != j {
                kyy[j * m + l] = *v;
                kyy[l * m + j] = *v;
            }
        }
    }
    if let Some((_, _, pkyy)) = &prev {
        for j in 0..m {
            let Some(a) = old_pos[j] else { continue };
            for l in (j + 1)..m {
                if let Some(b) = old_pos[l] {
                    // Equal rows map to one old row, whose diagonal is 0; k(y, y) = 1.
                    let v = if a == b { 1.0 } else { pkyy[a * pm + b] };
                    kyy[j * m + l] = v;
                    kyy[l * m + j] = v;
                }
            }
        }
    }
    let mut kxy = vec![0.0; n * m];
    for j in 0..m {
        for i in 0..n {
            kxy[i * m + j] = kyx[j * n + i];
        }
    }
    // Shared with the cache, not copied: the next slide reads them.
    let (kyx, kyy) = (Arc::new(kyx), Arc::new(kyy));
    {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= CACHE_ENTRIES {
            c.remove(0);
        }
        c.push(CacheEntry {
            key,
            sigma,
            kxx: kxx.clone(),
            current: current.to_vec(),
            kyx: kyx.clone(),
            kyy: kyy.clone(),
        });
    }
    (
        Gram {
            n,
            m,
            kxx,
            kxy,
            kyx,
            kyy,
        },
        sigma,
    )
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
    let sigma_opt = opts.sigma.filter(|s| *s > 0.0 && s.is_finite());
    let (g, sigma) = gram(reference, current, dim, sigma_opt);
    let total = n + m;
    let row_sums: Vec<f64> = (0..total)
        .map(|i| {
            let (a, b) = g.row(i);
            a.iter().sum::<f64>() + b.iter().sum::<f64>()
        })
        .collect();
    let grand: f64 = row_sums.iter().sum();
    let sxx: f64 = g.kxx.iter().sum();
    let syy: f64 = g.kyy.iter().sum();
    let sxy: f64 = g.kxy.iter().sum();
    let t = mmd_from_sums(sxx, sxy, syy, n, m);

    // Each permutation: the members of the smaller side (`small_is_x`: the
    // permuted reference side), sorted so rows are visited in order.
    let small_is_x = n <= m;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut idx: Vec<u32> = (0..total as u32).collect();
    let members: Vec<Vec<u32>> = (0..opts.permutations)
        .map(|_| {
            idx.shuffle(&mut rng);
            let mut s = if small_is_x {
                idx[..n].to_vec()
            } else {
                idx[n..].to_vec()
            };
            s.sort_unstable();
            s
        })
        .collect();
    let threads = opts.threads.clamp(1, members.len().max(1));
    let chunk = members.len().div_ceil(threads).max(1);
    let quads: Vec<f64> = if threads == 1 {
        quad_forms(&g, &members)
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = members.chunks(chunk).map(|c| s.spawn(|| quad_forms(&g, c))).collect();
            hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    };
    let mut exceed = 0usize;
    for (q, mem) in quads.iter().zip(&members) {
        let s_r: f64 = mem.iter().map(|&i| row_sums[i as usize]).sum();
        // Σ over the permuted X side (sr) and its quadratic form (xx).
        let (xx, sr) = if small_is_x {
            (*q, s_r)
        } else {
            let sr = grand - s_r;
            (q - grand + 2.0 * sr, sr)
        };
        let tb = mmd_from_sums(xx, sr - xx, grand - 2.0 * sr + xx, n, m);
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

/// Rows per block: a block of pooled rows stays in cache while every
/// permutation's mask is applied to it.
const BLOCK_ROWS: usize = 16;

/// sᵀK₀s for each member set s, by blocks of rows. K₀ is symmetric with a
/// zero diagonal, so sᵀK₀s = 2 Σ_{i∈s} Σ_{j∈s, j>i} K₀[i,j]: half a row each.
fn quad_forms(g: &Gram, members: &[Vec<u32>]) -> Vec<f64> {
    let (n, m) = (g.n, g.m);
    let total = n + m;
    // Membership as bitsets: 250 bytes a permutation, so all of them stay in
    // L1 while a block of matrix rows streams through.
    let masks: Vec<Vec<u64>> = members
        .iter()
        .map(|mem| {
            let mut v = vec![0u64; total.div_ceil(64)];
            for &i in mem {
                v[i as usize >> 6] |= 1 << (i & 63);
            }
            v
        })
        .collect();
    let mut q = vec![0.0; members.len()];
    let mut cursor = vec![0usize; members.len()];
    for start in (0..total).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(total);
        for (b, mem) in members.iter().enumerate() {
            let bits = &masks[b];
            let mut c = cursor[b];
            while c < mem.len() && (mem[c] as usize) < end {
                let i = mem[c] as usize;
                let (rx, ry) = g.row(i);
                q[b] += 2.0
                    * if i < n {
                        simd::masked_sum(&rx[i + 1..], bits, i + 1) + simd::masked_sum(ry, bits, n)
                    } else {
                        simd::masked_sum(&ry[i - n + 1..], bits, i + 1)
                    };
                c += 1;
            }
            cursor[b] = c;
        }
    }
    q
}

fn mmd_from_sums(xx: f64, xy: f64, yy: f64, n: usize, m: usize) -> f64 {
    let (nf, mf) = (n as f64, m as f64);
    xx / (nf * (nf - 1.0)) + yy / (mf * (mf - 1.0)) - 2.0 * xy / (nf * mf)
}

/// Linear-time MMD² (Gretton et al. 2012, §6, Lemma 14): with p = ⌊min(n,m)/2⌋
/// disjoint pairs, h_i = k(x₂ᵢ,x₂ᵢ₊₁) + k(y₂ᵢ,y₂ᵢ₊₁) − k(x₂ᵢ,y₂ᵢ₊₁) − k(x₂ᵢ₊₁,y₂ᵢ),
/// MMD²_l = mean(h), and under the null √p·MMD²_l/sd(h) → N(0,1), so the
/// one-sided p-value is P(Z ≥ √p·mean/sd). O(n·dim) time and no matrix:
/// for windows too large for the quadratic test. Rows beyond 2p are unused.
pub fn mmd_linear(reference: &[f64], current: &[f64], dim: usize, sigma: Option<f64>) -> Option<MmdResult> {
    if dim == 0 || !reference.len().is_multiple_of(dim) || !current.len().is_multiple_of(dim) {
        return None;
    }
    let pairs = (reference.len() / dim).min(current.len() / dim) / 2;
    if pairs < 2 {
        return None;
    }
    // σ from (at most) the first 1000 reference rows: the median heuristic is O(n²).
    let sigma = sigma
        .filter(|s| *s > 0.0 && s.is_finite())
        .unwrap_or_else(|| median_heuristic_sigma(&reference[..reference.len().min(1000 * dim)], dim));
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let row = |v: &[f64], i: usize| -> Vec<f64> { v[i * dim..(i + 1) * dim].to_vec() };
    let h: Vec<f64> = (0..pairs)
        .map(|i| {
            let (x1, x2) = (row(reference, 2 * i), row(reference, 2 * i + 1));
            let (y1, y2) = (row(current, 2 * i), row(current, 2 * i + 1));
            kernel(&x1, &x2, gamma) + kernel(&y1, &y2, gamma) - kernel(&x1, &y2, gamma) - kernel(&x2, &y1, gamma)
        })
        .collect();
    let pf = pairs as f64;
    let mean = h.iter().sum::<f64>() / pf;
    let var = h.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (pf - 1.0);
    let p = if var > 0.0 {
        normal_sf(mean / (var / pf).sqrt())
    } else if mean > 0.0 {
        0.0
    } else {
        1.0
    };
    Some(MmdResult {
        statistic: mean,
        p_value: p,
        sigma,
    })
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    simd::sq_dist(a, b)
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
                threads: 1,
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

    /// A slide reuses cached kernel rows — also for repeated rows, whose
    /// cached partner is themselves (k(y, y) = 1, not the zero diagonal).
    #[test]
    fn cached_slides_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x = gauss(&mut rng, 25, 2, 0.0);
        let mut stream = gauss(&mut rng, 40, 2, 0.2);
        stream.copy_within(20..24, 30); // rows 10 and 11 repeat as rows 15 and 16 (dim 2)
        let o = MmdOptions {
            permutations: 5,
            seed: 1,
            sigma: Some(1.1),
            threads: 1,
        };
        for start in [0usize, 4, 8, 12] {
            let y = &stream[start * 2..(start + 20) * 2];
            let r = mmd_test(&x, y, 2, &o).unwrap();
            let want = naive(&x, y, 2, 1.1);
            assert!(
                (r.statistic - want).abs() <= 1e-12 * want.abs().max(1e-9),
                "start {start}: {} vs {want}",
                r.statistic
            );
        }
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
                threads: 1,
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
            threads: 1,
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
            threads: 1,
        };
        assert_eq!(mmd_test(&x, &y, 2, &o), mmd_test(&x, &y, 2, &o));
    }

    #[test]
    fn too_few_rows_is_none() {
        assert!(mmd_test(&[1.0], &[1.0, 2.0], 1, &MmdOptions::default()).is_none());
    }
}
