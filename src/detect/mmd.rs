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
//! quadratic forms are computed together, row by row: each kernel row is read
//! from memory once and summed under the bitsets of all the permutations that
//! hold it (AVX-512 masked adds, four sets per pass), so the matrix streams
//! through the cache once for all permutations, not once per permutation.
//! Kernel entries come from ‖x‖² + ‖y‖² − 2x·y on centred points (one FMA per
//! coordinate and pair, in 4×8 register tiles).
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
    /// n × n, m × n (rows: current events) and m × m. No n × m block: the
    /// pooled matrix is symmetric, and every sum here reads K_YX by rows.
    kxx: Arc<Vec<f64>>,
    kyx: Arc<Vec<f64>>,
    kyy: Arc<Vec<f64>>,
}

impl Gram {
    /// Row i of the pooled K₀ left of the diagonal (columns 0..i), as at most
    /// two runs, each with the pooled column of its first entry.
    fn lower_row(&self, i: usize) -> [(&[f64], usize); 2] {
        let (n, m) = (self.n, self.m);
        if i < n {
            [(&self.kxx[i * n..i * n + i], 0), (&[], 0)]
        } else {
            let j = i - n;
            [(&self.kyx[j * n..(j + 1) * n], 0), (&self.kyy[j * m..j * m + j], n)]
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
    // Distances are translation-invariant: centring on the reference mean
    // keeps the norms small, so ‖x‖² + ‖y‖² − 2x·y loses nothing to cancellation.
    let centre = column_means(reference, dim);
    let cached = {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().position(|e| e.key == key).map(|i| c.remove(i))
    };
    let (sigma, kxx, prev) = match cached {
        Some(e) => (e.sigma, e.kxx, Some((e.current, e.kyx, e.kyy))),
        None => {
            let xs = Points::new(reference, dim, &centre);
            let mut k = xs.sq_dists(&xs);
            let sigma = sigma_opt.unwrap_or_else(|| sigma_from_median(&k, n));
            simd::gaussian_in_place(&mut k, 1.0 / (2.0 * sigma * sigma));
            for i in 0..n {
                k[i * n + i] = 0.0;
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
    // Kernel rows of the events new to the window, against the reference
    // and against the whole current window, in two block computations.
    let fresh: Vec<usize> = (0..m).filter(|&j| old_pos[j].is_none()).collect();
    let ys = Points::new(current, dim, &centre);
    let new_rows = ys.select(&fresh);
    let mut new_yx = new_rows.sq_dists(&Points::new(reference, dim, &centre));
    simd::gaussian_in_place(&mut new_yx, gamma);
    let mut new_yy = new_rows.sq_dists(&ys);
    simd::gaussian_in_place(&mut new_yy, gamma);
    let (mut kyx, mut kyy) = if prev.is_none() {
        // Every row is new and in order: the blocks are the kernel matrices.
        (std::mem::take(&mut new_yx), std::mem::take(&mut new_yy))
    } else {
        (vec![0.0; m * n], vec![0.0; m * m])
    };
    for (r, &j) in fresh.iter().enumerate().filter(|_| prev.is_some()) {
        kyx[j * n..(j + 1) * n].copy_from_slice(&new_yx[r * n..(r + 1) * n]);
        let row = &new_yy[r * m..(r + 1) * m];
        kyy[j * m..(j + 1) * m].copy_from_slice(row);
        if prev.is_some() {
            // The column too: the pairs with events kept from the last window.
            for (l, v) in row.iter().enumerate() {
                kyy[l * m + j] = *v;
            }
        }
    }
    for j in 0..m {
        kyy[j * m + j] = 0.0;
    }
    if let Some((old, pkyx, pkyy)) = &prev {
        let pm = old.len() / dim;
        for j in 0..m {
            let Some(a) = old_pos[j] else { continue };
            kyx[j * n..(j + 1) * n].copy_from_slice(&pkyx[a * n..(a + 1) * n]);
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
    (Gram { n, m, kxx, kyx, kyy }, sigma)
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
    // One pass over the rows: row sums r = K₀·1 and the block sums. The X
    // rows' parts against Y are the column sums of K_YX.
    let mut col_yx = vec![0.0; n];
    let (mut sxx, mut syx, mut syy) = (0.0, 0.0, 0.0);
    let mut row_sums = Vec::with_capacity(total);
    for i in 0..n {
        let s = simd::sum(&g.kxx[i * n..(i + 1) * n]);
        sxx += s;
        row_sums.push(s);
    }
    for j in 0..m {
        let row = &g.kyx[j * n..(j + 1) * n];
        col_yx.iter_mut().zip(row).for_each(|(c, v)| *c += v);
        let (a, b) = (simd::sum(row), simd::sum(&g.kyy[j * m..(j + 1) * m]));
        syx += a;
        syy += b;
        row_sums.push(a + b);
    }
    row_sums[..n].iter_mut().zip(&col_yx).for_each(|(r, c)| *r += c);
    let sxy = syx;
    let grand = sxx + sxy + syx + syy;
    let t = mmd_from_sums(sxx, sxy, syy, n, m);

    // Each permutation: the members of the smaller side (`small_is_x`: the
    // permuted reference side).
    let small_is_x = n <= m;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut idx: Vec<u32> = (0..total as u32).collect();
    let small = n.min(m);
    // A uniformly random subset of the smaller side's size: a partial
    // Fisher–Yates shuffle draws only those `small` positions.
    let members: Vec<Vec<u32>> = (0..opts.permutations)
        .map(|_| idx.partial_shuffle(&mut rng, small).0.to_vec())
        .collect();
    // The observed split goes through the same sums as the permutations
    // (last set), and each T_b is compared with that: summation order cannot
    // turn an exact tie (identical samples: every T_b = T) into a small p-value.
    let mut members = members;
    members.push(if small_is_x {
        (0..n as u32).collect()
    } else {
        (n as u32..total as u32).collect()
    });
    let quads = quad_forms(&g, &members, opts.threads);
    let stats: Vec<f64> = quads
        .iter()
        .zip(&members)
        .map(|(q, mem)| {
            let s_r: f64 = mem.iter().map(|&i| row_sums[i as usize]).sum();
            // Σ over the permuted X side (sr) and its quadratic form (xx).
            let (xx, sr) = if small_is_x {
                (*q, s_r)
            } else {
                let sr = grand - s_r;
                (q - grand + 2.0 * sr, sr)
            };
            mmd_from_sums(xx, sr - xx, grand - 2.0 * sr + xx, n, m)
        })
        .collect();
    let (t_cmp, perms) = stats.split_last().map_or((t, &[][..]), |(l, r)| (*l, r));
    // A T_b within summation rounding of T counts as a tie: each term of T
    // is a mean of kernel values (mean k̄) summed in f64 in an order that
    // depends on the split.
    let kbar = grand / (total as f64 * (total as f64 - 1.0));
    let slack = 1e-12 * kbar.abs();
    let exceed = perms.iter().filter(|tb| **tb >= t_cmp - slack).count();
    let p = (1 + exceed) as f64 / (opts.permutations + 1) as f64;
    Some(MmdResult {
        statistic: t,
        p_value: p,
        sigma,
    })
}

/// Row ranges the permutation work is cut into: fixed (not per thread), and
/// summed in order, so the p-value does not depend on the thread count.
const CHUNKS: usize = 32;

/// sᵀK₀s for each member set s = 2 Σ_{i∈s} Σ_{j∈s, j<i} K₀[i,j]: for each row i,
/// one masked sum of its half row under the bitset of every set holding i.
/// The bitsets (B·N bits: 25 KB for B = 100, N = 2000) stay in L1 while each
/// row is read once from memory and then from cache for all its sets.
fn quad_forms(g: &Gram, members: &[Vec<u32>], threads: usize) -> Vec<f64> {
    let total = g.n + g.m;
    let sets = members.len();
    let words = total.div_ceil(64);
    let mut masks = vec![0u64; sets * words];
    // For each row, the sets holding it (CSR).
    let mut start = vec![0usize; total + 1];
    for mem in members {
        for &i in mem {
            start[i as usize + 1] += 1;
        }
    }
    for i in 0..total {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut holders = vec![0u32; start[total]];
    for (b, mem) in members.iter().enumerate() {
        for &i in mem {
            masks[b * words + (i as usize >> 6)] |= 1 << (i & 63);
            holders[fill[i as usize]] = b as u32;
            fill[i as usize] += 1;
        }
    }
    // Chunk bounds with about equal areas of the triangle (row i has i entries).
    let area = total * (total - 1) / 2;
    let mut bounds = vec![0usize];
    let mut acc = 0;
    for i in 0..total {
        acc += i;
        if acc * CHUNKS >= area * bounds.len() && bounds.len() < CHUNKS {
            bounds.push(i + 1);
        }
    }
    if *bounds.last().unwrap_or(&0) != total {
        bounds.push(total);
    }
    let chunk = |c: usize| -> Vec<f64> {
        let mut q = vec![0.0; sets];
        for i in bounds[c]..bounds[c + 1] {
            let runs = g.lower_row(i);
            let mask = |b: u32| &masks[b as usize * words..(b as usize + 1) * words];
            let held = &holders[start[i]..start[i + 1]];
            let mut fours = held.chunks_exact(4);
            for f in &mut fours {
                let sets = [mask(f[0]), mask(f[1]), mask(f[2]), mask(f[3])];
                for (row, first) in runs {
                    let s4 = simd::masked_sums4(row, sets, first);
                    for (b, v) in f.iter().zip(s4) {
                        q[*b as usize] += v;
                    }
                }
            }
            for &b in fours.remainder() {
                for (row, first) in runs {
                    q[b as usize] += simd::masked_sum(row, mask(b), first);
                }
            }
        }
        q
    };
    let n_chunks = bounds.len() - 1;
    let threads = threads.clamp(1, n_chunks.max(1));
    let parts: Vec<Vec<f64>> = if threads == 1 {
        (0..n_chunks).map(chunk).collect()
    } else {
        let mut parts: Vec<(usize, Vec<f64>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let chunk = &chunk;
                    s.spawn(move || {
                        (t..n_chunks)
                            .step_by(threads)
                            .map(|c| (c, chunk(c)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        parts.sort_by_key(|p| p.0);
        parts.into_iter().map(|p| p.1).collect()
    };
    let mut q = vec![0.0; sets];
    for part in parts {
        for (a, v) in q.iter_mut().zip(part) {
            *a += v;
        }
    }
    q.iter_mut().for_each(|v| *v *= 2.0);
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

/// Mean of each column of the row-major `data` (`dim` columns, ≥ 1 row).
fn column_means(data: &[f64], dim: usize) -> Vec<f64> {
    let rows = (data.len() / dim).max(1) as f64;
    let mut mean = vec![0.0; dim];
    for row in data.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(c, v)| *c += v);
    }
    mean.iter_mut().for_each(|c| *c /= rows);
    mean
}

/// Rows prepared for [`simd::sq_dists_block`]: centred, with their squared
/// norms, and transposed.
struct Points {
    dim: usize,
    rows: Vec<f64>,
    norms: Vec<f64>,
    cols: Vec<f64>,
}

impl Points {
    fn new(data: &[f64], dim: usize, centre: &[f64]) -> Self {
        let rows: Vec<f64> = data
            .chunks_exact(dim)
            .flat_map(|r| r.iter().zip(centre).map(|(v, c)| v - c))
            .collect();
        Self::from_centred(rows, dim)
    }

    fn from_centred(rows: Vec<f64>, dim: usize) -> Self {
        let count = rows.len() / dim;
        let norms = rows.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
        let mut cols = vec![0.0; rows.len()];
        for (i, r) in rows.chunks_exact(dim).enumerate() {
            for (k, v) in r.iter().enumerate() {
                cols[k * count + i] = *v;
            }
        }
        Self { dim, rows, norms, cols }
    }

    /// The rows at `idx`, in that order.
    fn select(&self, idx: &[usize]) -> Self {
        let d = self.dim;
        Self::from_centred(
            idx.iter()
                .flat_map(|&i| self.rows[i * d..(i + 1) * d].iter().copied())
                .collect(),
            d,
        )
    }

    /// Squared distances, self's rows × other's rows, row-major.
    fn sq_dists(&self, other: &Points) -> Vec<f64> {
        let mut out = vec![0.0; self.norms.len() * other.norms.len()];
        simd::sq_dists_block(&self.rows, &self.norms, &other.cols, &other.norms, self.dim, &mut out);
        out
    }
}

/// σ = sqrt(median_{i<j} d_ij / 2) from the n × n squared distances `d`;
/// 1 when all points coincide (any σ gives MMD = 0 then).
fn sigma_from_median(d: &[f64], n: usize) -> f64 {
    // Non-negative doubles order as their bit patterns: integer selection.
    let mut v: Vec<u64> = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        v.extend(d[i * n + i + 1..(i + 1) * n].iter().map(|x| x.abs().to_bits()));
    }
    if v.is_empty() {
        return 1.0;
    }
    let mid = v.len() / 2;
    let hi = f64::from_bits(*v.select_nth_unstable(mid).1);
    let med = if v.len() % 2 == 1 {
        hi
    } else {
        let lo = v[..mid].iter().copied().max().map_or(hi, f64::from_bits);
        (lo + hi) / 2.0
    };
    if med > 0.0 && med.is_finite() {
        (med / 2.0).sqrt()
    } else {
        1.0
    }
}

/// σ = sqrt(median_{i<j} ‖x_i − x_j‖² / 2) over the reference rows (as Alibi
/// Detect). Falls back to 1 when all reference points coincide.
pub fn median_heuristic_sigma(reference: &[f64], dim: usize) -> f64 {
    let n = reference.len() / dim;
    let xs = Points::new(reference, dim, &column_means(reference, dim));
    sigma_from_median(&xs.sq_dists(&xs), n)
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
