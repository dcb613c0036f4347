//! Quadratic MMD² and its permutation p-value for windows too large to hold
//! the kernel matrix (tens of thousands of events a side).
//!
//! The statistic and the permutations are those of [`super::mmd_test`]
//! (the same sets from the same seeded stream, each T_b = MMD² of its split
//! from one quadratic form sᵀK₀s, the observed split through the same sums),
//! but the pooled K₀ is never stored: it is computed in tiles of
//! [`TILE`] × [`TILE`] below its diagonal, and each tile, once in fixed
//! point, feeds everything at once — its rows' and columns' sums, the three
//! block sums, and the sums of every permutation's set over its rows — then
//! is dropped. Memory is the points, the B sets' 0/1 columns (bytes) and the
//! row sums: O((n + m)·(d + B)), not O((n + m)²). Every sum is an integer
//! sum of the kernel in fixed point (round(k·255)), so the result is the
//! same whatever the tiling and the thread count.
//!
//! All B permutations are drawn up front and go through each tile together:
//! with `stop_after` (sequential p-value), the stop is applied to them in
//! draw order afterwards, which gives the p-value of the sequential test
//! (it would draw the same permutations in the same order) without a pass
//! over the kernel per round.

use super::{
    Draws, Holders, MmdOptions, MmdResult, Points, SetColumns, Split, column_means, median_sigma, or_fallback,
};
use crate::detect::sequential::Sequential;
use crate::detect::simd;

/// Pooled windows of more events go to the tiled path (below it the stored
/// kernel, at most ~100 MB, is reused across slides of the current window).
pub const TILED_ABOVE: usize = 4096;

/// Rows and columns of a kernel tile.
const TILE: usize = 256;

/// Integer sums over one share of the tiles.
struct Sums {
    /// Per set: the sum over its rows, left of the diagonal.
    q: Vec<i64>,
    /// Per pooled row: the sum of its entries left of the diagonal, and of
    /// the entries below it in its column.
    row: Vec<i64>,
    col: Vec<i64>,
    /// Left of the diagonal: X×X, Y×X and Y×Y.
    xx: i64,
    yx: i64,
    yy: i64,
    /// The same three in f64, per row tile (summed in tile order at the
    /// end, whichever thread did a tile): the reported statistic is a small
    /// difference of large sums, which the fixed point would blur.
    exact: Vec<(usize, [f64; 3])>,
}

impl Sums {
    fn new(total: usize, sets: usize) -> Self {
        Self {
            q: vec![0; sets],
            row: vec![0; total],
            col: vec![0; total],
            xx: 0,
            yx: 0,
            yy: 0,
            exact: vec![],
        }
    }

    fn merge(&mut self, o: Sums) {
        let add = |a: &mut [i64], b: Vec<i64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.q, o.q);
        add(&mut self.row, o.row);
        add(&mut self.col, o.col);
        (self.xx, self.yx, self.yy) = (self.xx + o.xx, self.yx + o.yx, self.yy + o.yy);
        self.exact.extend(o.exact);
    }

    /// Row `i`'s entries at pooled columns `col0..col0 + row.len()` (all
    /// left of the diagonal), `n` the reference's size.
    fn add(&mut self, (index, holders): &(SetColumns, Holders), i: usize, row: &[u8], col0: usize, n: usize) {
        let total: i64 = row.iter().map(|&v| i64::from(v)).sum();
        self.row[i] += total;
        for (c, &v) in self.col[col0..col0 + row.len()].iter_mut().zip(row) {
            *c += i64::from(v);
        }
        // The part against the reference (columns below n), and the rest.
        let split = n.saturating_sub(col0).min(row.len());
        let against_x: i64 = row[..split].iter().map(|&v| i64::from(v)).sum();
        if i < n {
            self.xx += total;
        } else {
            self.yx += against_x;
            self.yy += total - against_x;
        }
        index.add_row(holders.of(i), &[(col0, row)], &mut self.q);
    }
}

/// The sums of every row tile `t` with `t % threads == part`.
fn tile_sums(
    tiles: &[Points],
    gamma: f64,
    n: usize,
    index: &(SetColumns, Holders),
    sets: usize,
    part: usize,
    threads: usize,
) -> Sums {
    let total = tiles.len() * TILE; // an upper bound: rows past the end are never added
    let mut sums = Sums::new(total, sets);
    let mut fixed = Vec::with_capacity(TILE);
    for a in (part..tiles.len()).step_by(threads) {
        let mut exact = [0.0; 3];
        for c in 0..=a {
            let mut k = tiles[a].sq_dists(&tiles[c]);
            simd::gaussian_in_place(&mut k, gamma);
            let cols = tiles[c].norms.len();
            for r in 0..tiles[a].norms.len() {
                let i = a * TILE + r;
                // Left of the diagonal: the whole tile, or up to column i on it.
                let len = if c < a { cols } else { r };
                let row = &k[r * cols..r * cols + len];
                let split = n.saturating_sub(c * TILE).min(len);
                let (against_x, rest) = (simd::sum(&row[..split]), simd::sum(&row[split..]));
                if i < n {
                    exact[0] += against_x;
                } else {
                    exact[1] += against_x;
                    exact[2] += rest;
                }
                fixed.clear();
                simd::to_fixed(row, &mut fixed);
                sums.add(index, i, &fixed, c * TILE, n);
            }
        }
        sums.exact.push((a, exact));
    }
    sums
}

/// [`super::mmd_test`] without the kernel matrix in memory (see the module
/// documentation); `None` as there (fewer than two rows a side, `dim` 0).
pub fn mmd_test_tiled(reference: &[f64], current: &[f64], dim: usize, opts: &MmdOptions) -> Option<MmdResult> {
    if dim == 0 || !reference.len().is_multiple_of(dim) || !current.len().is_multiple_of(dim) {
        return None;
    }
    let (n, m) = (reference.len() / dim, current.len() / dim);
    if n < 2 || m < 2 {
        return None;
    }
    let total = n + m;
    let (sigma, sigma_fallback) = match opts.sigma.filter(|s| *s > 0.0 && s.is_finite()) {
        Some(s) => (s, false),
        None => or_fallback(median_sigma(reference, dim)),
    };
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let centre = column_means(reference, dim);
    let pooled = Points::new(&[reference, current].concat(), dim, &centre);
    let tiles: Vec<Points> = (0..total)
        .step_by(TILE)
        .map(|t| pooled.select(&(t..(t + TILE).min(total)).collect::<Vec<_>>()))
        .collect();
    drop(pooled);
    let mut draws = Draws::new(n, m, opts.seed);
    let mut members = draws.next(opts.permutations);
    members.push(draws.observed());
    let index = (SetColumns::new(&members, total), Holders::new(&members, total));
    let threads = opts.threads.clamp(1, tiles.len());
    let run = |part: usize| tile_sums(&tiles, gamma, n, &index, members.len(), part, threads);
    let mut sums = Sums::new(tiles.len() * TILE, members.len());
    super::parallel((0..threads).collect(), run)
        .into_iter()
        .for_each(|p| sums.merge(p));
    let scale = simd::FIXED_SCALE;
    let row_sums: Vec<f64> = (0..total).map(|i| (sums.row[i] + sums.col[i]) as f64 / scale).collect();
    let (sxx, sxy, syy) = (
        2.0 * sums.xx as f64 / scale,
        sums.yx as f64 / scale,
        2.0 * sums.yy as f64 / scale,
    );
    let grand = sxx + 2.0 * sxy + syy;
    sums.exact.sort_by_key(|(a, _)| *a);
    let [exx, eyx, eyy] = sums
        .exact
        .iter()
        .fold([0.0; 3], |acc, (_, e)| [acc[0] + e[0], acc[1] + e[1], acc[2] + e[2]]);
    let split = Split::new(n, m, &row_sums, grand);
    let mut stats: Vec<f64> = (0..members.len())
        .map(|b| split.stat(2.0 * sums.q[b] as f64 / scale, &members[b]))
        .collect();
    let t_obs = stats.pop().unwrap_or(0.0);
    let mut seq = Sequential::new(opts.permutations, opts.stop_after);
    seq.record(stats.iter().map(|tb| *tb >= t_obs - split.slack()));
    Some(MmdResult {
        statistic: super::mmd_from_sums(2.0 * exx, eyx, 2.0 * eyy, n, m),
        p_value: seq.p_value(),
        permutations: seq.drawn(),
        sigma,
        sigma_fallback,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::tests::gauss;
    use super::*;

    /// Where both run (n = m = 2,000 pooled under [`TILED_ABOVE`]): the
    /// statistic and p-value of the stored-kernel path, with and without
    /// drift, with all permutations and with early stopping, on one and two
    /// threads.
    #[test]
    fn the_tiled_test_equals_the_stored_kernel_test() {
        let _cache = super::super::tests::cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let d = 8;
        let x = gauss(&mut rng, 2000, d, 0.0);
        for (shift, stop_after) in [(0.0, None), (0.08, None), (0.0, Some(5)), (0.15, Some(5))] {
            let y = gauss(&mut rng, 2000, d, shift);
            for threads in [1, 2] {
                let o = MmdOptions {
                    permutations: 100,
                    seed: 9,
                    sigma: None,
                    threads,
                    stop_after,
                };
                super::super::clear_kernel_cache();
                let stored = super::super::mmd_test(&x, &y, d, &o).unwrap();
                let tiled = mmd_test_tiled(&x, &y, d, &o).unwrap();
                assert!(
                    (tiled.statistic - stored.statistic).abs() <= 1e-9 * stored.statistic.abs().max(1e-6),
                    "shift {shift}: {tiled:?} vs {stored:?}"
                );
                assert_eq!(
                    (tiled.p_value, tiled.permutations, tiled.sigma),
                    (stored.p_value, stored.permutations, stored.sigma),
                    "shift {shift}, stop {stop_after:?}, threads {threads}"
                );
            }
        }
    }

    /// Uneven sides and sizes off the tile grid, the current side smaller.
    #[test]
    fn uneven_windows_off_the_tile_grid() {
        let _cache = super::super::tests::cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let d = 3;
        let x = gauss(&mut rng, 700, d, 0.0);
        let y = gauss(&mut rng, 301, d, 0.5);
        let o = MmdOptions {
            permutations: 50,
            seed: 1,
            sigma: Some(1.3),
            threads: 2,
            stop_after: None,
        };
        super::super::clear_kernel_cache();
        let stored = super::super::mmd_test(&x, &y, d, &o).unwrap();
        let tiled = mmd_test_tiled(&x, &y, d, &o).unwrap();
        assert!((tiled.statistic - stored.statistic).abs() <= 1e-9 * stored.statistic.abs());
        assert_eq!(tiled.p_value, stored.p_value);
        assert!(tiled.p_value < 0.05, "a shift of 0.5 is seen: {tiled:?}");
    }
}
