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
//! Phipson & Smyth (2010): p = (1 + #{T_b ≥ T}) / (B + 1), never 0; or, with
//! `stop_after` = h, Besag & Clifford's sequential p-value, which stops once
//! h permutation statistics reach T (see [`super::sequential`]).
//!
//! The permutation loop never copies the kernel matrix: with K₀ the pooled
//! kernel matrix with zero diagonal, r = K₀·1, S = 1ᵀK₀1 and s the indicator of
//! the permuted "reference" set, the three block sums are
//!   Σ_XX = sᵀK₀s,  Σ_XY = sᵀr − sᵀK₀s,  Σ_YY = S − 2sᵀr + sᵀK₀s,
//! so each permutation costs one quadratic form over the smaller set. The B
//! quadratic forms are computed together, row by row: each kernel row is read
//! from memory once and multiplied with the 0/1 column of every set that
//! holds it (the kernel in fixed point, one byte a value, 32 or 64 values
//! per multiply-add instruction, eight sets per pass), so the matrix streams
//! through the cache once for up to 128 permutations, not once per
//! permutation. Kernel entries come from ‖x‖² + ‖y‖² − 2x·y on centred
//! points (one FMA per coordinate and pair, in register tiles), below the
//! diagonal only: the matrix is symmetric.
//!
//! Sliding windows: the reference's part (σ, K_XX's sums and fixed-point
//! rows) is computed once per reference and kept in a small process-wide
//! cache keyed by the reference's content; the current window's rows are
//! matched by content against the previous evaluation of the same stream
//! ([`window`]), so a slide computes only the kernel rows of the events that
//! entered the window, and a kept event's row is reused as it is.
//!
//! Pooled windows of more than [`TILED_ABOVE`] events go to the tiled path
//! ([`tiled`]): the same statistic and p-value, with kernel tiles computed,
//! used by every permutation and dropped, in O((n + m)·B) memory.
//! For windows too large for the quadratic statistic, [`mmd_linear`] gives
//! the linear-time statistic with its normal null (Gretton et al. 2012, §6).

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::sequential::Sequential;
use super::simd;
use super::special::normal_sf;

mod tiled;
mod window;
pub use tiled::{TILED_ABOVE, mmd_test_tiled};
pub use window::clear_kernel_cache;

/// Most threads one test takes: more would only queue for the cores.
pub const MAX_THREADS: usize = 64;

/// Options of one MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdOptions {
    /// Number of permutations B for the p-value.
    pub permutations: usize,
    /// Seed of the permutation generator (runs are reproducible).
    pub seed: u64,
    /// Kernel bandwidth σ; `None` = median heuristic on the reference.
    pub sigma: Option<f64>,
    /// Threads for the kernel rows and the permutations (1 to
    /// [`MAX_THREADS`]; the result does not depend on it).
    pub threads: usize,
    /// Stop after this many permutation statistics reach the observed one
    /// (sequential p-value); `None`: all `permutations`.
    pub stop_after: Option<usize>,
}

impl Default for MmdOptions {
    fn default() -> Self {
        Self {
            permutations: 200,
            seed: 0,
            sigma: None,
            threads: 1,
            stop_after: None,
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
    /// Permutation statistics drawn: B, or fewer when the sequential test
    /// stopped early (linear test: 0).
    pub permutations: usize,
    /// Bandwidth σ used.
    pub sigma: f64,
    /// The median heuristic found a median distance of 0 (more than half the
    /// reference pairs coincide) and σ = 1 was used instead.
    pub sigma_fallback: bool,
}

/// The reference's own part of the sums, the same for every current window
/// tested against it (kept in the cache): K_XX left of its diagonal in
/// fixed point (row i: its i values from offset i(i−1)/2), the fixed-point
/// sums of its full rows, twice its f64 sum below the diagonal (added in
/// the order a pass over the pooled matrix would add it), and its points.
struct XxPart {
    fixed: Vec<u8>,
    fixed_sums: Vec<i32>,
    sxx: f64,
    points: Points,
}

impl XxPart {
    /// From the reference's squared distances below the diagonal (`d`,
    /// n × n), turned into kernel values e^{−γ·d} a row at a time, each
    /// summed and converted while it is in cache.
    fn new(mut d: Block, gamma: f64, points: Points) -> Self {
        let n = points.norms.len();
        let mut fixed = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        let mut sxx = 0.0;
        for i in 0..n {
            let row = &mut d[i * n..i * n + i];
            simd::gaussian_in_place(row, gamma);
            sxx += 2.0 * simd::sum(row);
            simd::to_fixed(row, &mut fixed);
        }
        let mut fixed_sums = vec![0; n];
        for i in 0..n {
            let row = &fixed[i * i.saturating_sub(1) / 2..i * (i + 1) / 2];
            let own = simd::add_fixed_to(&mut fixed_sums[..i], row);
            fixed_sums[i] = fixed_sums[i].wrapping_add(own);
        }
        Self {
            fixed,
            fixed_sums,
            sxx,
            points,
        }
    }
}

// The row sums of the stored kernel fit i32: a pooled row has fewer than
// TILED_ABOVE values ≤ 255.
const _: () = assert!(TILED_ABOVE * 255 < i32::MAX as usize);

/// A kernel-sized buffer whose storage goes back to its type's pool of
/// spares ([`Spare`]) when its last user drops it: the next evaluation
/// reuses warm pages instead of faulting in fresh ones (page faults were a
/// fifth of a cold test's time, and a tenth of a slide's).
struct Block<T: Spare = f64>(Vec<T>);

/// Element types of [`Block`]s, each with its pool of spare buffers: at
/// most [`SPARE_MAX`] of them and [`SPARE_BYTES`] in all, each of at least
/// [`SPARE_MIN_BYTES`] (smaller ones are cheap).
trait Spare: Copy + Default + 'static {
    fn spare() -> &'static Mutex<Vec<Vec<Self>>>;
}

impl Spare for f64 {
    fn spare() -> &'static Mutex<Vec<Vec<f64>>> {
        static SPARE: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
        &SPARE
    }
}

impl Spare for u8 {
    fn spare() -> &'static Mutex<Vec<Vec<u8>>> {
        static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        &SPARE
    }
}

const SPARE_MAX: usize = 16;
const SPARE_BYTES: usize = 256 << 20;
/// glibc's first threshold for serving an allocation by its own mapping,
/// whose pages are faulted in afresh each time.
const SPARE_MIN_BYTES: usize = 128 << 10;

impl<T: Spare> Block<T> {
    /// `len` values; their contents are unspecified (a reused buffer keeps
    /// old values), so callers write before they read.
    fn new(len: usize) -> Self {
        let mut v = Self::reused(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, T::default());
        }
        Block(v)
    }

    /// No values, and room for `capacity` of them (appended through
    /// [`Self::values`]).
    fn with_capacity(capacity: usize) -> Self {
        let mut v = Self::reused(capacity);
        v.clear();
        v.reserve(capacity);
        Block(v)
    }

    /// The smallest spare buffer that holds `len` values, so that small
    /// windows do not hold big buffers; else a new one, with room up to the
    /// next power of two: the sizes a stream asks for vary from one
    /// evaluation to the next (the events that entered), and a buffer that
    /// fits only the one it was made for would rarely be reused.
    fn reused(len: usize) -> Vec<T> {
        let mut spare = T::spare().lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..spare.len())
            .filter(|&i| spare[i].capacity() >= len)
            .min_by_key(|&i| spare[i].capacity());
        match best {
            Some(i) => spare.swap_remove(i),
            None if len * size_of::<T>() >= SPARE_MIN_BYTES => Vec::with_capacity(len.next_power_of_two()),
            None => Vec::with_capacity(len),
        }
    }

    /// The values, to append to.
    fn values(&mut self) -> &mut Vec<T> {
        &mut self.0
    }

    /// The memory it holds (its capacity, not only its values).
    fn held_bytes(&self) -> usize {
        self.0.capacity() * size_of::<T>()
    }
}

impl<T: Spare> std::ops::Deref for Block<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Spare> std::ops::DerefMut for Block<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T: Spare> Drop for Block<T> {
    fn drop(&mut self) {
        let bytes = self.held_bytes();
        if bytes < SPARE_MIN_BYTES {
            return;
        }
        let mut spare = T::spare().lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = spare.iter().map(|v| v.capacity() * size_of::<T>()).sum();
        if spare.len() < SPARE_MAX && held + bytes <= SPARE_BYTES {
            spare.push(std::mem::take(&mut self.0));
        }
    }
}

/// `task` on each of `items`, results in their order: on the calling
/// thread when there is one item, else side by side on rayon's pool (the
/// caller waits). A pool, not threads spawned per call: a spawn and join
/// cost ~50 µs on a VM, and a slide asked for several (a fifth of what a
/// second thread saved). A task's panic goes on in the caller, so a
/// missing share of the sums cannot pass for a result.
fn parallel<I: Send, T: Send>(items: Vec<I>, task: impl Fn(I) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    match items.len() {
        0 | 1 => items.into_iter().map(task).collect(),
        _ => items.into_par_iter().map(&task).collect(),
    }
}

/// Bounds of `parts` bands of rows 0..`rows` with about equal work
/// (`work(i)`: row i's), to share rows among threads or cut them into
/// chunks: `parts` + 1 ascending bounds from 0 to `rows` (a band may be
/// empty).
fn equal_work_bounds(rows: usize, parts: usize, work: impl Fn(usize) -> usize) -> Vec<usize> {
    let parts = parts.max(1);
    let total: usize = (0..rows).map(&work).sum();
    let mut bounds = vec![0];
    let mut done = 0;
    for i in 0..rows {
        done += work(i);
        while bounds.len() < parts && done * parts >= total * bounds.len() {
            bounds.push(i + 1);
        }
    }
    bounds.resize(parts + 1, rows);
    bounds
}

fn kernel(a: &[f64], b: &[f64], gamma: f64) -> f64 {
    (-gamma * sq_dist(a, b)).exp()
}

/// Test `reference` (n rows) against `current` (m rows), both row-major with
/// `dim` columns. Returns `None` when either side has fewer than two rows
/// (the U-statistic is undefined) or `dim` is 0.
pub fn mmd_test(reference: &[f64], current: &[f64], dim: usize, opts: &MmdOptions) -> Option<MmdResult> {
    mmd_test_of(None, reference, current, dim, opts)
}

/// [`mmd_test`] for one stream of evaluations (`stream`: e.g. a hash of the
/// detector and the window's key): the kernel cache keeps at most one entry
/// per stream and reference, its latest window, so the windows of a stream
/// that never slides (tumbling windows) replace one another instead of
/// filling the cache with windows no evaluation will continue.
pub fn mmd_test_of(
    stream: Option<u64>,
    reference: &[f64],
    current: &[f64],
    dim: usize,
    opts: &MmdOptions,
) -> Option<MmdResult> {
    if dim == 0 || !reference.len().is_multiple_of(dim) || !current.len().is_multiple_of(dim) {
        return None;
    }
    let (n, m) = (reference.len() / dim, current.len() / dim);
    if n < 2 || m < 2 {
        return None;
    }
    if n + m > TILED_ABOVE {
        return mmd_test_tiled(reference, current, dim, opts);
    }
    let sigma_opt = opts.sigma.filter(|s| *s > 0.0 && s.is_finite());
    let threads = opts.threads.clamp(1, MAX_THREADS);
    let mut draws = Draws::new(n, m, opts.seed);
    let seq = Sequential::new(opts.permutations, opts.stop_after);
    // The first round's sets do not depend on the kernel: with a thread to
    // spare they are drawn and indexed while the kernel rows are computed.
    let first = |draws: &mut Draws| (seq.next_round() > 0).then(|| draws.round(seq.next_round()));
    let kernel = || window::window(stream, reference, current, dim, sigma_opt, threads);
    let (w, first) = match threads {
        1 => (kernel(), first(&mut draws)),
        _ => rayon::join(kernel, || first(&mut draws)),
    };
    // How much of the window a slide kept: a low share on a sliding window
    // means its events were not matched (see window::CacheEntry::positions).
    tracing::trace!(current = m, kept = w.reused, "mmd kernel rows");
    // The statistic from the f64 kernel, summed row by row in window order;
    // each row's sum depends only on its values (see CurrentRow::yy_sum), so
    // a slide and a restart give the same bits.
    let syx: f64 = w.rows.iter().map(|r| r.yx_sum()).sum();
    let syy: f64 = w.rows.iter().map(|r| 2.0 * r.yy_sum()).sum();
    let t = mmd_from_sums(w.xx.sxx, syx, syy, n, m);
    // The permutations' statistics from the fixed-point kernel: exact
    // integer sums, so every one (the observed split's too) is the same
    // whatever the order or the path, slide or scratch.
    let fixed = FixedRows::of(n, &w);
    let sums = fixed.row_sums(&w.xx.fixed_sums, threads);
    let split = Split::new(n, m, &sums.r, sums.grand);
    // The observed split's statistic through the same sums as each T_b's
    // (an exact integer quadratic form, the one the permutation pass would
    // give it), which each T_b is compared with: summation order cannot
    // turn an exact tie (identical samples: every T_b = T) into a small
    // p-value.
    let t_obs = split.stat(sums.observed_quad, &draws.observed());
    let seq = permutations(&fixed, &split, t_obs, first, draws, seq, threads);
    Some(MmdResult {
        statistic: t,
        p_value: seq.p_value(),
        permutations: seq.drawn(),
        sigma: w.sigma,
        sigma_fallback: w.sigma_fallback,
    })
}

/// Draws and evaluates permutations round by round until `seq` has its
/// p-value, starting with `first` (the first round), each T_b compared with
/// `t_obs` (the observed split's statistic through the same sums).
fn permutations(
    fixed: &FixedRows,
    split: &Split,
    t_obs: f64,
    mut first: Option<Arc<Round>>,
    mut draws: Draws,
    mut seq: Sequential,
    threads: usize,
) -> Sequential {
    while seq.next_round() > 0 {
        let round = first.take().unwrap_or_else(|| draws.round(seq.next_round()));
        let quads = quad_forms(fixed, &round, threads);
        let stats = quads.iter().zip(&round.members).map(|(q, mem)| split.stat(*q, mem));
        seq.record(stats.map(|tb| tb >= t_obs - split.slack()));
    }
    seq
}

/// The permutations' sets: each a uniformly random subset of the pooled
/// indices of the smaller side's size (a partial Fisher–Yates shuffle draws
/// only those positions), from one seeded stream, so drawing them in rounds
/// or at once gives the same sets in the same order.
#[derive(Clone)]
struct Draws {
    /// The sides' sizes, the seed and the sets drawn so far: what the next
    /// sets depend on.
    sizes: (usize, usize),
    seed: u64,
    drawn: usize,
    rng: ChaCha8Rng,
    idx: Vec<u32>,
}

/// Rounds kept for reuse ([`Draws::round`]), and the memory they may take
/// in all (a round of 100 sets of 1000 at N = 2000 takes ~1 MB; a
/// detector's rounds at B = 100 and h = 10 are four).
const ROUNDS_KEPT: usize = 16;
const ROUNDS_KEPT_BYTES: usize = 64 << 20;

/// A round kept: what it was drawn for (sizes, seed, sets drawn before it,
/// its sets), the draws' state after it, and the round.
struct KeptRound {
    key: ((usize, usize), u64, usize, usize),
    after: Draws,
    round: Arc<Round>,
}

/// The rounds of the latest tests, most recent first.
static KEPT_ROUNDS: Mutex<Vec<KeptRound>> = Mutex::new(Vec::new());

impl Draws {
    fn new(n: usize, m: usize, seed: u64) -> Self {
        Self {
            sizes: (n, m),
            seed,
            drawn: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            idx: (0..(n + m) as u32).collect(),
        }
    }

    /// The next round of `count` sets, indexed. Every test with the same
    /// sizes and seed draws the same sets in the same rounds (their sizes
    /// depend only on B and h), so a round drawn for an earlier test is
    /// taken, with the draws' state after it, instead of drawing and
    /// indexing it again (with early stopping on a window without drift,
    /// often the only round: its shuffles, holders and 0/1 columns were a
    /// tenth of a slide).
    fn round(&mut self, count: usize) -> Arc<Round> {
        let key = (self.sizes, self.seed, self.drawn, count);
        let lock = || KEPT_ROUNDS.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = lock();
        if let Some(at) = kept.iter().position(|f| f.key == key) {
            let hit = kept.remove(at);
            *self = hit.after.clone();
            let round = hit.round.clone();
            kept.insert(0, hit);
            return round;
        }
        drop(kept);
        let round = Arc::new(Round::new(self.next(count), self.idx.len()));
        let after = self.clone();
        let mut kept = lock();
        // Another test may have kept the same round meanwhile.
        kept.retain(|k| k.key != key);
        kept.insert(
            0,
            KeptRound {
                key,
                after,
                round: round.clone(),
            },
        );
        let mut bytes = 0;
        let within = kept
            .iter()
            .take_while(|k| {
                bytes += k.round.bytes();
                bytes <= ROUNDS_KEPT_BYTES
            })
            .count();
        kept.truncate(within.min(ROUNDS_KEPT));
        round
    }

    /// The next `count` permutations' sets.
    fn next(&mut self, count: usize) -> Vec<Vec<u32>> {
        let (n, m) = self.sizes;
        self.drawn += count;
        (0..count)
            .map(|_| self.idx.partial_shuffle(&mut self.rng, n.min(m)).0.to_vec())
            .collect()
    }

    /// The observed split's set (the smaller side): its statistic goes
    /// through the same sums as the permutations' (see `mmd_test_of`, and
    /// the tiled path, where it is the last set).
    fn observed(&self) -> Vec<u32> {
        let (n, m) = self.sizes;
        match n <= m {
            true => (0..n as u32).collect(),
            false => (n as u32..(n + m) as u32).collect(),
        }
    }
}

/// MMD² of a split from its set's quadratic form: the set is the smaller
/// side (`small_is_x`: the permuted reference side); `row_sums` = K₀·1 and
/// `grand` = 1ᵀK₀1.
struct Split<'a> {
    n: usize,
    m: usize,
    row_sums: &'a [f64],
    grand: f64,
}

impl<'a> Split<'a> {
    fn new(n: usize, m: usize, row_sums: &'a [f64], grand: f64) -> Self {
        Self { n, m, row_sums, grand }
    }

    fn stat(&self, q: f64, members: &[u32]) -> f64 {
        let (n, m, grand) = (self.n, self.m, self.grand);
        let s_r: f64 = members.iter().map(|&i| self.row_sums[i as usize]).sum();
        // Σ over the permuted X side (sr) and its quadratic form (xx).
        let (xx, sr) = if n <= m {
            (q, s_r)
        } else {
            let sr = grand - s_r;
            (q - grand + 2.0 * sr, sr)
        };
        mmd_from_sums(xx, sr - xx, grand - 2.0 * sr + xx, n, m)
    }

    /// A T_b within summation rounding of T counts as a tie: each term of T
    /// is a mean of kernel values (mean k̄) summed in an order that depends
    /// on the split.
    fn slack(&self) -> f64 {
        let total = (self.n + self.m) as f64;
        1e-12 * (self.grand / (total * (total - 1.0))).abs()
    }
}

/// For each pooled row, the sets holding it (CSR: the sets holding row i
/// are `holders[start[i]..start[i + 1]]`, in set order).
struct Holders {
    start: Vec<usize>,
    holders: Vec<u32>,
}

impl Holders {
    fn new(members: &[Vec<u32>], total: usize) -> Self {
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
                holders[fill[i as usize]] = b as u32;
                fill[i as usize] += 1;
            }
        }
        Self { start, holders }
    }

    /// The sets holding row `i`.
    fn of(&self, i: usize) -> &[u32] {
        &self.holders[self.start[i]..self.start[i + 1]]
    }
}

/// Each set as a column of 0 and 1 over the pooled rows (entry b·total + i
/// is 1 when set b holds row i), in bytes for [`simd::set_sums`]: B·N values,
/// 200 KB for B = 100 and N = 2000, which stay in L2 while the rows stream
/// through once.
struct SetColumns {
    total: usize,
    on: Vec<i8>,
}

impl SetColumns {
    fn new(members: &[Vec<u32>], total: usize) -> Self {
        let mut on = vec![0i8; members.len() * total];
        for (b, mem) in members.iter().enumerate() {
            for &i in mem {
                on[b * total + i as usize] = 1;
            }
        }
        Self { total, on }
    }

    /// Set b's column.
    fn column(&self, b: u32) -> &[i8] {
        &self.on[b as usize * self.total..(b as usize + 1) * self.total]
    }

    /// Adds to `q[b]`, for every set b of `holders`, the sum of the row
    /// (its `pieces`) over the columns b holds: eight sets per pass over
    /// the row, then what is left in one pass.
    fn add_row(&self, holders: &[u32], pieces: &[simd::Piece], q: &mut [i64]) {
        let mut rest = holders;
        while rest.len() >= 8 {
            self.add_sets::<8>(&rest[..8], pieces, q);
            rest = &rest[8..];
        }
        match rest.len() {
            0 => {}
            1 => self.add_sets::<1>(rest, pieces, q),
            2 => self.add_sets::<2>(rest, pieces, q),
            3 => self.add_sets::<3>(rest, pieces, q),
            4 => self.add_sets::<4>(rest, pieces, q),
            5 => self.add_sets::<5>(rest, pieces, q),
            6 => self.add_sets::<6>(rest, pieces, q),
            _ => self.add_sets::<7>(rest, pieces, q),
        }
    }

    /// [`Self::add_row`] for exactly `H` sets.
    fn add_sets<const H: usize>(&self, sets: &[u32], pieces: &[simd::Piece], q: &mut [i64]) {
        let sums = simd::set_sums(pieces, std::array::from_fn::<_, H, _>(|l| self.column(sets[l])));
        for (&b, v) in sets.iter().zip(sums) {
            q[b as usize] += v;
        }
    }
}

/// Sets per pass over the rows: their 0/1 columns take N bytes each,
/// 256 KB for 128 sets and N = 2000.
const SETS_PER_PASS: usize = 128;

/// One round's sets (each the smaller side of a split), indexed for the
/// permutation pass: per group of at most [`SETS_PER_PASS`] sets, the sets
/// holding each row and their 0/1 columns.
struct Round {
    members: Vec<Vec<u32>>,
    groups: Vec<(Holders, SetColumns)>,
}

impl Round {
    fn new(members: Vec<Vec<u32>>, total: usize) -> Self {
        // One pass per group of sets, whose 0/1 columns stay in L2: with more
        // sets the rows are read again, which costs less than columns from L3.
        let groups = members
            .chunks(SETS_PER_PASS)
            .map(|g| (Holders::new(g, total), SetColumns::new(g, total)))
            .collect();
        Self { members, groups }
    }

    /// Memory it holds.
    fn bytes(&self) -> usize {
        let members: usize = self.members.iter().map(|m| m.len() * 4).sum();
        let groups: usize = self
            .groups
            .iter()
            .map(|(h, c)| h.holders.len() * 4 + h.start.len() * 8 + c.on.len())
            .sum();
        members + groups
    }
}

/// Row ranges the permutation work is cut into and shared among threads.
const CHUNKS: usize = 32;

/// The pooled K₀ left of its diagonal in fixed point (see [`quad_forms`]):
/// the reference's rows (cached, [`XxPart`]) and the current window's. A
/// current row comes in two parts, its K_YX row over the reference's
/// columns and its K_YY values over the current window's (columns n…).
struct FixedRows<'a> {
    n: usize,
    xx: &'a [u8],
    y: &'a [window::CurrentRow],
}

impl<'a> FixedRows<'a> {
    /// The rows of an evaluation's kernel (`n`: the reference's size).
    fn of(n: usize, w: &'a window::Window) -> Self {
        Self {
            n,
            xx: &w.xx.fixed,
            y: &w.rows,
        }
    }

    /// Pooled row i left of the diagonal: its part over columns 0.. and its
    /// part over columns n.. (empty for a reference row).
    fn row(&self, i: usize) -> [&[u8]; 2] {
        match i.checked_sub(self.n) {
            None => [&self.xx[i * i.saturating_sub(1) / 2..i * (i + 1) / 2], &[]],
            Some(j) => [self.y[j].yx_fixed(self.n), self.y[j].yy_fixed(self.n)],
        }
    }

    /// r = K₀·1, 1ᵀK₀1 and the observed split's sᵀK₀s, in units of the
    /// kernel (exact: sums of multiples of 1/255 far below 2⁵³), from the
    /// reference rows' sums `xx_sums` and one pass over the current rows,
    /// shared among `threads` (integer sums: the same whatever the share).
    fn row_sums(&self, xx_sums: &[i32], threads: usize) -> RowSums {
        let (n, m) = (self.n, self.y.len());
        // Row j has n + j values.
        let bounds = equal_work_bounds(m, threads.clamp(1, m.max(1)), |j| n + j);
        let bands: Vec<std::ops::Range<usize>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
        let parts = parallel(bands, |band| self.band_sums(band));
        let mut sums = xx_sums.to_vec();
        sums.resize(n + m, 0);
        let mut yy_total = 0i64;
        for (part, yy) in parts {
            for (s, v) in sums.iter_mut().zip(part) {
                *s = s.wrapping_add(v);
            }
            yy_total += yy;
        }
        let grand: i64 = sums.iter().map(|&v| i64::from(v)).sum();
        // The observed set is the smaller side: Σ over its pairs, twice, as
        // `group_quad_forms` gives it (the reference rows' sums count each
        // K_XX pair twice already).
        let observed: i64 = match n <= m {
            true => xx_sums.iter().map(|&v| i64::from(v)).sum(),
            false => 2 * yy_total,
        };
        let scale = simd::FIXED_SCALE;
        RowSums {
            r: sums.iter().map(|&v| f64::from(v) / scale).collect(),
            grand: grand as f64 / scale,
            observed_quad: observed as f64 / scale,
        }
    }

    /// The current rows `band`'s part of r (n + m values): each row's
    /// values go to its own sum and to the sums of the columns they are in;
    /// and the sum of the band's K_YY values.
    fn band_sums(&self, band: std::ops::Range<usize>) -> (Vec<i32>, i64) {
        let n = self.n;
        let mut sums = vec![0i32; n + self.y.len()];
        let mut yy_total = 0i64;
        for j in band {
            let [yx, yy] = self.row(n + j);
            let (head, tail) = sums.split_at_mut(n);
            let own_yy = simd::add_fixed_to(&mut tail[..j], yy);
            yy_total += i64::from(own_yy);
            let own = simd::add_fixed_to(head, yx).wrapping_add(own_yy);
            tail[j] = tail[j].wrapping_add(own);
        }
        (sums, yy_total)
    }
}

/// [`FixedRows::row_sums`]: in units of the kernel.
#[derive(Debug, PartialEq)]
struct RowSums {
    /// r = K₀·1.
    r: Vec<f64>,
    /// 1ᵀK₀1.
    grand: f64,
    /// sᵀK₀s of the observed split's set (see [`Draws::observed`]).
    observed_quad: f64,
}

/// sᵀK₀s for each member set s = 2 Σ_{i∈s} Σ_{j∈s, j<i} K₀[i,j] (`fixed`: the
/// pooled rows, [`FixedRows`]): for each row i, the dot product of its half
/// row with the 0/1 column of every set holding i ([`SetColumns`]).
/// The columns (N bytes a set: 200 KB for B = 100, N = 2000) stay in L2
/// while each row is read once from memory and then from cache for all its
/// sets.
///
/// The sums run on the kernel values in fixed point (round(k·255), one
/// byte, exact integer multiply-adds): integer sums do not depend on their
/// order, so the result is the same for any thread count, chunking and
/// instruction set, and two splits that are equal in law (equal rows
/// swapped) tie exactly. The permutation p-value is exact for the statistic
/// of the rounded kernel k' = round(255·k)/255, itself a symmetric kernel:
/// observed and permuted splits go through the same computation. Its T'
/// differs from T by a mean over ~10⁶ pairs of rounding errors ≤ 1/510 of
/// varying sign, ~10⁻⁶, against a permutation spread of T of ~10⁻⁴–10⁻³
/// at n = 1000; kernel values below 1/510 (σ far below the distances) do
/// round to 0. The reported statistic T is computed from the f64 kernel.
/// (Bytes, not the i16 of 2⁻¹⁴ used before: half the data and half the
/// instructions per value.)
fn quad_forms(fixed: &FixedRows, round: &Round, threads: usize) -> Vec<f64> {
    round
        .groups
        .iter()
        .flat_map(|(holders, columns)| group_quad_forms(fixed, holders, columns, threads))
        .collect()
}

/// [`quad_forms`] of one group of sets, in one pass over the rows.
fn group_quad_forms(fixed: &FixedRows, holders: &Holders, columns: &SetColumns, threads: usize) -> Vec<f64> {
    let (total, sets) = (columns.total, columns.on.len() / columns.total.max(1));
    // Row i has i entries left of the diagonal.
    let bounds = equal_work_bounds(total, CHUNKS, |i| i);
    let chunk = |c: usize| -> Vec<i64> {
        let mut q = vec![0i64; sets];
        for i in bounds[c]..bounds[c + 1] {
            let [x_part, y_part] = fixed.row(i);
            // A reference row has no part over the current window's columns.
            let pieces = [(0, x_part), (fixed.n, y_part)];
            let used = if y_part.is_empty() { 1 } else { 2 };
            columns.add_row(holders.of(i), &pieces[..used], &mut q);
        }
        q
    };
    let n_chunks = bounds.len() - 1;
    let threads = threads.clamp(1, n_chunks.max(1));
    let parts = parallel((0..threads).collect(), |t| {
        (t..n_chunks).step_by(threads).map(chunk).collect::<Vec<_>>()
    });
    let mut q = vec![0i64; sets];
    for part in parts.into_iter().flatten() {
        for (a, v) in q.iter_mut().zip(part) {
            *a += v;
        }
    }
    q.into_iter().map(|v| 2.0 * v as f64 / simd::FIXED_SCALE).collect()
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
    let (sigma, sigma_fallback) = match sigma.filter(|s| *s > 0.0 && s.is_finite()) {
        Some(s) => (s, false),
        None => or_fallback(median_sigma(&reference[..reference.len().min(1000 * dim)], dim)),
    };
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
        permutations: 0,
        sigma,
        sigma_fallback,
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
/// (In recycled [`Block`]s: a window's points are made at every evaluation.)
struct Points {
    dim: usize,
    rows: Block,
    norms: Vec<f64>,
    cols: Block,
}

impl Points {
    fn new(data: &[f64], dim: usize, centre: &[f64]) -> Self {
        let mut rows = Block::with_capacity(data.len());
        for r in data.chunks_exact(dim) {
            rows.values().extend(r.iter().zip(centre).map(|(v, c)| v - c));
        }
        Self::from_centred(rows, dim)
    }

    fn from_centred(rows: Block, dim: usize) -> Self {
        let count = rows.len() / dim;
        let norms = rows.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum()).collect();
        let mut cols = Block::new(rows.len());
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
        let mut rows = Block::with_capacity(idx.len() * d);
        for &i in idx {
            rows.values().extend_from_slice(&self.rows[i * d..(i + 1) * d]);
        }
        Self::from_centred(rows, d)
    }

    /// Squared distances, self's rows × other's rows, row-major.
    fn sq_dists(&self, other: &Points) -> Block {
        let mut out = Block::new(self.norms.len() * other.norms.len());
        self.sq_dists_into(other, None, &mut out);
        out
    }

    /// [`Self::sq_dists`] into `out` (at least self's × other's rows long);
    /// with `ends`, row r only up to column ends[r] (the rest unspecified).
    fn sq_dists_into(&self, other: &Points, ends: Option<&[usize]>, out: &mut [f64]) {
        simd::sq_dists_block(&self.rows, &self.norms, &other.cols, &other.norms, self.dim, ends, out);
    }

    /// Squared distances among self's rows, below the diagonal only (entry
    /// [i·count + j] for j < i; the rest unspecified), by `threads` threads
    /// on bands of rows of equal work (row i has i entries).
    fn sq_dists_lower(&self, threads: usize) -> Block {
        let count = self.norms.len();
        let diagonal: Vec<usize> = (0..count).collect();
        let mut out = Block::new(count * count);
        let bounds = equal_work_bounds(count, threads.clamp(1, count.max(1)), |i| i);
        let d = self.dim;
        let band = |r: std::ops::Range<usize>, out: &mut [f64]| {
            let (rows, norms) = (&self.rows[r.start * d..r.end * d], &self.norms[r.clone()]);
            simd::sq_dists_block(rows, norms, &self.cols, &self.norms, d, Some(&diagonal[r]), out);
        };
        let mut rest: &mut [f64] = &mut out;
        let mut bands = vec![];
        for w in bounds.windows(2) {
            let (mine, after) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * count);
            rest = after;
            bands.push((w[0]..w[1], mine));
        }
        parallel(bands, |(r, o)| band(r, o));
        out
    }
}

/// σ = sqrt(median_{i<j} d_ij / 2) from the n × n squared distances `d`
/// (read below the diagonal); `None` when that median is 0 (more than half
/// the pairs coincide; the callers then use σ = 1 and say so).
///
/// The median is selected exactly without copying all n(n−1)/2 values
/// (Floyd & Rivest 1975, "Expected time bounds for selection", CACM 18(3)):
/// a spread-out sample of ~4,000 values brackets the middle rank(s) between
/// two pivots with a wide margin; one pass counts the values below the
/// bracket and keeps those inside it (a few percent), and the selection
/// runs on those. Should the bracket miss (the margin is ~4 standard errors
/// of the sample rank), all values are selected from instead. Non-negative
/// doubles order as their bit patterns, so the work is on integers.
fn sigma_from_median(d: &[f64], n: usize) -> Option<f64> {
    let count = n * n.saturating_sub(1) / 2;
    if count == 0 {
        return None;
    }
    let rows = || (1..n).map(|i| &d[i * n..i * n + i]);
    // Ranks (0-based) of the middle value(s).
    let mid = count / 2;
    let lo_rank = if count % 2 == 1 { mid } else { mid - 1 };
    let (lo, hi, room) = median_bracket(d, n, lo_rank..mid + 1);
    // The compaction writes every value and advances only past those in the
    // bracket: no branch to mispredict.
    let mut cand = vec![0u64; room + 1];
    let (mut below, mut len) = (0usize, 0usize);
    let last = cand.len() - 1;
    for row in rows() {
        for x in row {
            let v = order_bits(x);
            below += usize::from(v < lo);
            cand[len.min(last)] = v;
            len += usize::from(v >= lo && v <= hi);
        }
    }
    cand.truncate(len.min(last));
    if len > last || below > lo_rank || below + cand.len() <= mid {
        // The bracket missed (or held more than its room): select from everything.
        below = 0;
        cand = rows().flat_map(|r| r.iter().map(order_bits)).collect();
    }
    let k = mid - below;
    let hi = f64::from_bits(*cand.select_nth_unstable(k).1);
    let med = if lo_rank == mid {
        hi
    } else {
        // The largest of the values below rank `mid`.
        let lo = cand[..k].iter().copied().max().map_or(hi, f64::from_bits);
        (lo + hi) / 2.0
    };
    (med > 0.0 && med.is_finite()).then(|| (med / 2.0).sqrt())
}

/// A squared distance as an integer of the same order ([`sigma_from_median`]):
/// non-negative doubles order as their bit patterns.
fn order_bits(x: &f64) -> u64 {
    x.abs().to_bits()
}

/// [`sigma_from_median`]'s bracket of the middle rank(s) `ranks` among
/// the n(n−1)/2 values below the diagonal of `d`, as bit patterns: [lo, hi]
/// from a spread-out sample, and room for twice the values expected in it
/// (everything, when the sample would be all the values).
fn median_bracket(d: &[f64], n: usize, ranks: std::ops::Range<usize>) -> (u64, u64, usize) {
    let count = n * n.saturating_sub(1) / 2;
    // Sample: every `stride`-th entry of each row, offset by the row number.
    let stride = (count / 4096).max(1);
    let mut sample: Vec<u64> = (1..n)
        .flat_map(|i| (i % stride..i).step_by(stride).map(move |j| (i, j)))
        .map(|(i, j)| order_bits(&d[i * n + j]))
        .collect();
    sample.sort_unstable();
    if stride == 1 || sample.is_empty() {
        return (0, u64::MAX, count);
    }
    let at = |rank: usize| rank * sample.len() / count;
    let margin = (4.0 * (sample.len() as f64).sqrt() / 2.0) as usize + 8;
    let a = at(ranks.start).saturating_sub(margin);
    let b = at(ranks.end - 1) + margin;
    (
        if a == 0 { 0 } else { sample[a] },
        sample.get(b).copied().unwrap_or(u64::MAX),
        (2 * (b - a + 1) * count / sample.len() + 64).min(count),
    )
}

/// σ = sqrt(median_{i<j} ‖x_i − x_j‖² / 2) over the reference rows (as Alibi
/// Detect). Falls back to 1 when that median is 0 (more than half the
/// reference pairs coincide): see [`MmdResult::sigma_fallback`].
pub fn median_heuristic_sigma(reference: &[f64], dim: usize) -> f64 {
    median_sigma(reference, dim).unwrap_or(1.0)
}

/// The median heuristic's σ, or σ = 1 when it has none; and whether it fell back.
fn or_fallback(median: Option<f64>) -> (f64, bool) {
    median.map_or((1.0, true), |s| (s, false))
}

/// Reference rows the median heuristic looks at, at most.
pub const MEDIAN_ROWS: usize = 2048;

/// The median heuristic's σ, `None` when the median distance is 0. Over at
/// most [`MEDIAN_ROWS`] reference rows, spread evenly through it: the
/// median of their pairs' distances estimates that of all pairs to within
/// a percent or so, and a heuristic's input needs no more (all pairs of a
/// million-event reference would be 4·10¹¹ distances).
fn median_sigma(reference: &[f64], dim: usize) -> Option<f64> {
    let n = reference.len() / dim;
    let picked: Vec<f64>;
    let rows = if n > MEDIAN_ROWS {
        picked = (0..MEDIAN_ROWS)
            .flat_map(|k| {
                let i = k * n / MEDIAN_ROWS;
                reference[i * dim..(i + 1) * dim].iter().copied()
            })
            .collect();
        &picked[..]
    } else {
        reference
    };
    let xs = Points::new(rows, dim, &column_means(rows, dim));
    sigma_from_median(&xs.sq_dists_lower(1), rows.len() / dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Normal rows (n × dim, mean `shift`), for the tests here and in `tiled`.
    pub(super) fn gauss(rng: &mut ChaCha8Rng, n: usize, dim: usize, shift: f64) -> Vec<f64> {
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

    /// The kernel cache is one per process: tests that clear it or count
    /// what it kept take turns.
    pub(super) fn cache_lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// More streams than the cache used to hold (8), evaluated in turn, as
    /// keys are: each one's second window still slides from its first.
    #[test]
    fn a_dozen_streams_in_turn_each_keep_their_slide() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let streams: Vec<(Vec<f64>, Vec<f64>)> = (0..12)
            .map(|_| (gauss(&mut rng, 30, 2, 0.0), gauss(&mut rng, 24, 2, 0.2)))
            .collect();
        clear_kernel_cache();
        for (x, y) in &streams {
            assert_eq!(window::window(None, x, &y[..20 * 2], 2, Some(1.0), 1).reused, 0);
        }
        for (i, (x, y)) in streams.iter().enumerate() {
            let slid = window::window(None, x, &y[4 * 2..24 * 2], 2, Some(1.0), 1);
            assert_eq!(slid.reused, 16, "stream {i}: events 4..20 stay as they were");
        }
    }

    /// Tumbling windows (no event in common with the last) of two streams
    /// against one reference: with the stream known, each keeps only its
    /// latest window; without, every window stays (up to the cache's
    /// limits). A known stream's slide still slides.
    #[test]
    fn a_stream_keeps_only_its_latest_window() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let x = gauss(&mut rng, 30, 2, 0.0);
        let y = gauss(&mut rng, 200, 2, 0.1);
        let window_of = |k: usize| &y[k * 20 * 2..(k + 1) * 20 * 2];
        for (stream, kept) in [(None, 10), (Some(7), 2)] {
            clear_kernel_cache();
            for k in 0..5 {
                for s in [0u64, 1] {
                    let w = window::window(
                        stream.map(|v| v + s),
                        &x,
                        window_of(2 * k + s as usize),
                        2,
                        Some(1.0),
                        1,
                    );
                    assert_eq!(w.reused, 0);
                }
            }
            assert_eq!(window::cached_windows(&x), kept, "stream {stream:?}");
        }
        clear_kernel_cache();
        window::window(Some(3), &x, &y[..20 * 2], 2, Some(1.0), 1);
        let slid = window::window(Some(3), &x, &y[4 * 2..24 * 2], 2, Some(1.0), 1);
        assert_eq!((slid.reused, window::cached_windows(&x)), (16, 1));
    }

    /// Bands cover the rows in order, and none holds much more than its
    /// share of the work (at most one row's more).
    #[test]
    fn equal_work_bounds_share_the_rows_evenly() {
        for (rows, parts) in [(0, 3), (1, 1), (3, 3), (3, 8), (2000, 32), (1000, 2), (1000, 7)] {
            for offset in [0, 1000] {
                let work = |i: usize| offset + i;
                let b = equal_work_bounds(rows, parts, work);
                assert_eq!((b.len(), b[0], b[parts]), (parts + 1, 0, rows));
                assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
                let total: usize = (0..rows).map(work).sum();
                let most = (0..rows).map(work).max().unwrap_or(0);
                for w in b.windows(2) {
                    let band: usize = (w[0]..w[1]).map(work).sum();
                    assert!(
                        band <= total.div_ceil(parts) + most,
                        "{rows} rows, {parts} parts: {b:?}"
                    );
                }
            }
        }
    }

    /// r = K₀·1 is the same integers whatever the number of threads that
    /// share the current rows, and within the fixed point's rounding
    /// (≤ 1/510 a value) of the definition's.
    #[test]
    fn row_sums_are_the_same_on_any_number_of_threads() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (x, y) = (gauss(&mut rng, 90, 3, 0.0), gauss(&mut rng, 70, 3, 0.2));
        let sigma = 1.1;
        let w = window::window(None, &x, &y, 3, Some(sigma), 1);
        let fixed = FixedRows::of(90, &w);
        let one = fixed.row_sums(&w.xx.fixed_sums, 1);
        for threads in [2, 3, 7, 70, 200] {
            assert_eq!(fixed.row_sums(&w.xx.fixed_sums, threads), one, "threads {threads}");
        }
        let pooled: Vec<&[f64]> = x.chunks(3).chain(y.chunks(3)).collect();
        let gamma = 1.0 / (2.0 * sigma * sigma);
        for (i, a) in pooled.iter().enumerate() {
            let want: f64 = (0..pooled.len())
                .filter(|&j| j != i)
                .map(|j| kernel(a, pooled[j], gamma))
                .sum();
            let tolerance = pooled.len() as f64 / 510.0;
            assert!((one.r[i] - want).abs() <= tolerance, "row {i}: {} vs {want}", one.r[i]);
        }
        assert!((one.grand - one.r.iter().sum::<f64>()).abs() <= 1e-9 * one.grand);
        // Exactly the sums of the fixed-point rows, added one value at a time.
        let mut exact = vec![0i64; pooled.len()];
        for i in 0..pooled.len() {
            let [xs, ys] = fixed.row(i);
            let columns = xs
                .iter()
                .enumerate()
                .chain(ys.iter().enumerate().map(|(j, v)| (fixed.n + j, v)));
            for (j, &v) in columns {
                exact[i] += i64::from(v);
                exact[j] += i64::from(v);
            }
        }
        let exact: Vec<f64> = exact.iter().map(|&e| e as f64 / simd::FIXED_SCALE).collect();
        assert_eq!(one.r, exact);
    }

    /// A round taken from those kept is the one drawing it gives, and the
    /// draws go on from where drawing it left them.
    #[test]
    fn a_kept_round_is_the_one_drawn() {
        let mut plain = Draws::new(30, 40, 9);
        let (want, want_second, want_next) = (plain.next(12), plain.next(7), plain.next(5));
        // Drawn (or taken from another test's, equal by construction), then kept.
        for _ in 0..2 {
            let mut draws = Draws::new(30, 40, 9);
            assert_eq!(draws.round(12).members, want);
            assert_eq!(draws.round(7).members, want_second);
            assert_eq!(draws.next(5), want_next);
        }
        // Other sizes, seeds or counts are other rounds.
        assert_ne!(Draws::new(30, 40, 8).round(12).members, want);
        assert_eq!(Draws::new(30, 40, 9).round(11).members, want[..11]);
        let mut other = Draws::new(30, 40, 9);
        other.round(11);
        assert_ne!(other.round(7).members, want_second);
    }

    /// The observed split's quadratic form, taken from the row sums, is the
    /// one the permutation pass gives its set, to the bit: either side the
    /// smaller, from scratch and after a slide.
    #[test]
    fn the_observed_quad_form_is_the_permutation_pass_s() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = gauss(&mut rng, 80, 3, 0.0);
        let stream = gauss(&mut rng, 200, 3, 0.3);
        for (n, m, start) in [(80, 60, 0), (80, 60, 20), (50, 100, 0), (50, 100, 40)] {
            let (x, y) = (&x[..n * 3], &stream[start * 3..(start + m) * 3]);
            let w = window::window(Some(9), x, y, 3, Some(1.2), 1);
            let fixed = FixedRows::of(n, &w);
            let sums = fixed.row_sums(&w.xx.fixed_sums, 1);
            let observed = Draws::new(n, m, 0).observed();
            let pass = quad_forms(&fixed, &Round::new(vec![observed], n + m), 1);
            assert_eq!(
                pass[0].to_bits(),
                sums.observed_quad.to_bits(),
                "n {n} m {m} start {start}"
            );
        }
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
                stop_after: None,
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
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x = gauss(&mut rng, 25, 2, 0.0);
        let mut stream = gauss(&mut rng, 40, 2, 0.2);
        stream.copy_within(20..24, 30); // rows 10 and 11 repeat as rows 15 and 16 (dim 2)
        let o = MmdOptions {
            permutations: 5,
            seed: 1,
            sigma: Some(1.1),
            threads: 1,
            stop_after: None,
        };
        // What a restarted run computes: the window from scratch.
        let scratch = |y: &[f64]| {
            clear_kernel_cache();
            mmd_test(&x, y, 2, &o)
        };
        for start in [0usize, 4, 8, 12] {
            let y = &stream[start * 2..(start + 20) * 2];
            let r = mmd_test(&x, y, 2, &o).unwrap();
            let want = naive(&x, y, 2, 1.1);
            assert_eq!(Some(r), scratch(y), "start {start}: a slide gives what a restart gives");
            assert!(
                (r.statistic - want).abs() <= 1e-12 * want.abs().max(1e-9),
                "start {start}: {} vs {want}",
                r.statistic
            );
        }
        // The same events in another order (rows reversed, then rotated):
        // kept events whose old order is not the new one. Then new events
        // before kept ones whose rows are gathered (they read the new
        // events' rows past their own positions), after a run kept as it is.
        let last: Vec<&[f64]> = stream[12 * 2..32 * 2].chunks(2).collect();
        let new: Vec<&[f64]> = stream[32 * 2..40 * 2].chunks(2).collect();
        for order in [
            last.iter().rev().copied().collect::<Vec<_>>(),
            [&last[7..], &last[..7]].concat(),
            [&new[..4], &last[..16]].concat(),
            [&last[..9], &new[4..], &last[12..], &last[9..12]].concat(),
        ] {
            let y: Vec<f64> = order.concat();
            let r = mmd_test(&x, &y, 2, &o).unwrap();
            assert_eq!(Some(r), scratch(&y), "reordered: as from scratch");
            let want = naive(&x, &y, 2, 1.1);
            assert!(
                (r.statistic - want).abs() <= 1e-12 * want.abs().max(1e-9),
                "reordered: {} vs {want}",
                r.statistic
            );
        }
    }

    /// Windows whose rows are several [`window::YY_CHUNK`]s long, sliding by
    /// steps that are and are not multiples of it: each slide gives what a
    /// restart gives, and the definition. Fresh rows are computed 120 at a
    /// time here (n + m = 330), so the first window and the slide of 160
    /// cross a chunk's end.
    #[test]
    fn long_windows_slide_as_from_scratch() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = gauss(&mut rng, 120, 2, 0.0);
        let stream = gauss(&mut rng, 600, 2, 0.1);
        let o = MmdOptions {
            permutations: 5,
            seed: 2,
            sigma: Some(0.9),
            threads: 1,
            stop_after: None,
        };
        // On several threads, the new rows are shared out in runs of whole
        // chunks (the first window's 210 and the slide of 160 in two).
        for threads in [1, 2, 3] {
            let slid = MmdOptions { threads, ..o };
            clear_kernel_cache();
            for start in [0usize, 64, 101, 165, 230, 390] {
                let y = &stream[start * 2..(start + 210) * 2];
                let r = mmd_test(&x, y, 2, &slid).unwrap();
                let want = naive(&x, y, 2, 0.9);
                // T is a difference of means of ~10⁴ kernel values ≤ 1, each
                // summed in its own order: both sides round at ~10⁻¹⁵.
                assert!(
                    (r.statistic - want).abs() <= 1e-13,
                    "threads {threads}, start {start}: {} vs {want}",
                    r.statistic
                );
                clear_kernel_cache();
                assert_eq!(
                    Some(r),
                    mmd_test(&x, y, 2, &o),
                    "threads {threads}, start {start}: a slide gives what a restart on one thread gives"
                );
                // The restart is cached again: the next slide starts from it.
            }
        }
    }

    /// A pool of inputs that repeat: the window's first event also occurs
    /// later in the old window, and a new event equals a kept one. The
    /// slide still keeps the rows of the events that stayed, and gives what
    /// a restart gives.
    #[test]
    fn repeated_events_keep_their_rows_on_a_slide() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let x = gauss(&mut rng, 30, 2, 0.0);
        let mut stream = gauss(&mut rng, 24, 2, 0.3);
        stream.copy_within(4 * 2..5 * 2, 15 * 2); // event 4 again at 15
        stream.copy_within(9 * 2..10 * 2, 22 * 2); // event 9 again at 22 (new)
        let o = MmdOptions {
            permutations: 9,
            seed: 4,
            sigma: Some(1.3),
            threads: 1,
            stop_after: None,
        };
        clear_kernel_cache();
        let first = window::window(None, &x, &stream[..20 * 2], 2, o.sigma, 1);
        assert_eq!(first.reused, 0);
        let slid = window::window(None, &x, &stream[4 * 2..24 * 2], 2, o.sigma, 1);
        assert_eq!(slid.reused, 16, "events 4..20 stay as they were");
        let r = mmd_test(&x, &stream[4 * 2..24 * 2], 2, &o);
        clear_kernel_cache();
        assert_eq!(r, mmd_test(&x, &stream[4 * 2..24 * 2], 2, &o), "as a restart");
    }

    /// Two streams tested against equal references, evaluated in turn, each
    /// sliding (and sharing some events): every evaluation is what a
    /// restart gives.
    #[test]
    fn interleaved_streams_against_one_reference_slide_as_from_scratch() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let x = gauss(&mut rng, 30, 2, 0.0);
        let mut a = gauss(&mut rng, 60, 2, 0.1);
        let b = gauss(&mut rng, 60, 2, 0.3);
        a[40..50].copy_from_slice(&b[40..50]); // five events in both streams
        let o = MmdOptions {
            permutations: 19,
            seed: 2,
            sigma: None,
            threads: 1,
            stop_after: None,
        };
        let mut results = vec![];
        for start in [0usize, 5, 10, 15] {
            for stream in [&a, &b] {
                results.push(mmd_test(&x, &stream[start * 2..(start + 20) * 2], 2, &o));
            }
        }
        let mut k = 0;
        for start in [0usize, 5, 10, 15] {
            for stream in [&a, &b] {
                clear_kernel_cache();
                assert_eq!(
                    results[k],
                    mmd_test(&x, &stream[start * 2..(start + 20) * 2], 2, &o),
                    "{k}"
                );
                k += 1;
            }
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
                stop_after: None,
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
            stop_after: None,
        };
        let r = mmd_test(&x, &y, 4, &opts).unwrap();
        assert_eq!(r.p_value, 0.01, "clear shift: every permutation below T, p = 1/(B+1)");
        let z = gauss(&mut rng, 100, 4, 0.0);
        let r0 = mmd_test(&x, &z, 4, &opts).unwrap();
        assert!(r0.p_value > 0.01, "no shift: p = {}", r0.p_value);
    }

    #[test]
    fn seeded_runs_are_reproducible() {
        let _cache = cache_lock();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = gauss(&mut rng, 50, 2, 0.0);
        let y = gauss(&mut rng, 50, 2, 0.1);
        let o = MmdOptions {
            permutations: 50,
            seed: 9,
            sigma: None,
            threads: 1,
            stop_after: None,
        };
        assert_eq!(mmd_test(&x, &y, 2, &o), mmd_test(&x, &y, 2, &o));
        // The thread count changes nothing (exact integer sums).
        for threads in [2, 3, 8] {
            clear_kernel_cache();
            assert_eq!(
                mmd_test(&x, &y, 2, &MmdOptions { threads, ..o }),
                mmd_test(&x, &y, 2, &o)
            );
        }
    }

    #[test]
    fn too_few_rows_is_none() {
        assert!(mmd_test(&[1.0], &[1.0, 2.0], 1, &MmdOptions::default()).is_none());
    }

    /// The bucketed selection gives the median of all pairwise squared
    /// distances exactly: odd and even pair counts, ties, coincident points,
    /// values spread over many exponents.
    #[test]
    fn median_heuristic_matches_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (n, dim) in [(2usize, 1usize), (3, 2), (4, 1), (5, 3), (40, 4), (101, 2), (300, 8)] {
            for kind in 0..3 {
                let x: Vec<f64> = (0..n * dim)
                    .map(|_| match kind {
                        0 => rng.random::<f64>(),
                        1 => f64::from(rng.random_range(0..3u8)), // ties and zeros
                        _ => rng.random::<f64>().powi(8) * 1e6,   // wide spread
                    })
                    .collect();
                let mut d = vec![];
                for i in 0..n {
                    for j in 0..i {
                        d.push(sq_dist(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]));
                    }
                }
                d.sort_by(f64::total_cmp);
                let k = d.len();
                let med = if k % 2 == 1 {
                    d[k / 2]
                } else {
                    (d[k / 2 - 1] + d[k / 2]) / 2.0
                };
                let want = if med > 0.0 { (med / 2.0).sqrt() } else { 1.0 };
                let got = median_heuristic_sigma(&x, dim);
                assert!(
                    (got - want).abs() <= 1e-9 * want,
                    "n={n} dim={dim} kind={kind}: {got} vs {want}"
                );
            }
        }
    }

    /// When more than half the reference pairs coincide the median distance
    /// is 0: σ = 1 is used, and the result says so; a configured σ or a
    /// spread-out reference does not.
    #[test]
    fn a_zero_median_distance_is_reported() {
        let mut reference = vec![0.5; 2 * 50];
        reference.extend((0..10).flat_map(|i| [i as f64, 1.0]));
        let current: Vec<f64> = (0..30).flat_map(|i| [i as f64 * 0.3, 2.0]).collect();
        let opts = MmdOptions {
            permutations: 50,
            ..MmdOptions::default()
        };
        let r = mmd_test(&reference, &current, 2, &opts).unwrap();
        assert!(r.sigma_fallback && r.sigma == 1.0, "{r:?}");
        let r = mmd_linear(&reference, &current, 2, None).unwrap();
        assert!(r.sigma_fallback, "{r:?}");
        let given = MmdOptions {
            sigma: Some(0.7),
            ..opts
        };
        let r = mmd_test(&reference, &current, 2, &given).unwrap();
        assert!(!r.sigma_fallback && r.sigma == 0.7);
        let r = mmd_test(&current, &reference, 2, &opts).unwrap();
        assert!(!r.sigma_fallback, "{r:?}");
    }
}
