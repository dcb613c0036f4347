//! The current window's kernel rows, kept between evaluations against the
//! same reference, so that a slide computes and converts only the rows of
//! the events that entered the window.
//!
//! Each current event keeps its row of the pooled kernel left of the
//! diagonal: its K_YX row (against the reference) and its K_YY values
//! against the current events before it, in f64 (for the statistic) and in
//! fixed point (for the permutation sums). When the window slides, an event
//! that stays keeps its row: its K_YX part is unchanged, and its K_YY part
//! loses the values of the events that left before it. In a sliding window
//! those are the first ones of the row, so the kept row is the old one with
//! a larger `skip`; nothing is copied or converted again. An event whose
//! earlier neighbours changed otherwise (a reordered window) gets its row
//! gathered from the old rows; a new event gets a row computed in full.

use std::sync::{Arc, Mutex};

use super::{Block, Points, XxPart, column_means, or_fallback, sigma_from_median};
use crate::detect::simd;

/// Values per partial sum of a row's K_YY part, counted from its end (see
/// [`CurrentRow::yy_sum`]).
pub(super) const YY_CHUNK: usize = 64;

/// The rows one evaluation computed or gathered (or one thread's share of
/// them), in one buffer of each kind that they share: it goes back to the
/// pool ([`Block`]) when the last of them has left the window, so a slide
/// neither allocates per row nor faults in fresh pages.
struct RowStore {
    /// Per row: its K_YX row (n values), then its K_YY values, in fixed point.
    fixed: Block<u8>,
    /// Per row: its K_YY values, then the sums of their last 1, 2, …
    /// whole [`YY_CHUNK`]s (see [`CurrentRow::yy_sum`]).
    yy: Block<f64>,
}

/// Where a row's values are in its [`RowStore`].
#[derive(Clone, Copy)]
struct Placed {
    fixed_at: usize,
    yy_at: usize,
    yy_len: usize,
    yx_sum: f64,
}

impl RowStore {
    /// Room for rows with `yy_lens` K_YY values each and `n` K_YX ones.
    fn with_room(n: usize, yy_lens: impl Iterator<Item = usize> + Clone) -> Self {
        let fixed: usize = yy_lens.clone().map(|l| n + l).sum();
        let yy: usize = yy_lens.map(|l| l + l / YY_CHUNK).sum();
        Self {
            fixed: Block::with_capacity(fixed),
            yy: Block::with_capacity(yy),
        }
    }

    /// Appends a row: its K_YX row and its K_YY values.
    fn push(&mut self, yx: Yx, yy: &[f64]) -> Placed {
        let fixed_at = self.fixed.len();
        let yx_sum = match yx {
            Yx::Values(yx) => {
                simd::to_fixed(yx, self.fixed.values());
                simd::sum(yx)
            }
            Yx::Fixed(yx_fixed, sum) => {
                self.fixed.values().extend_from_slice(yx_fixed);
                sum
            }
        };
        simd::to_fixed(yy, self.fixed.values());
        let yy_at = self.yy.len();
        let values = self.yy.values();
        values.extend_from_slice(yy);
        let mut tail = 0.0;
        values.extend(yy.rchunks_exact(YY_CHUNK).map(|c| {
            tail += simd::sum(c);
            tail
        }));
        Placed {
            fixed_at,
            yy_at,
            yy_len: yy.len(),
            yx_sum,
        }
    }
}

/// A row's K_YX part, as [`RowStore::push`] takes it.
enum Yx<'a> {
    /// Computed: the f64 values.
    Values(&'a [f64]),
    /// Kept from an old row: in fixed point, with the f64 values' sum.
    Fixed(&'a [u8], f64),
}

/// One current event's part of the pooled kernel left of the diagonal.
#[derive(Clone)]
pub(super) struct CurrentRow {
    store: Arc<RowStore>,
    at: Placed,
    /// Stored K_YY values of events that have left the window since.
    skip: usize,
}

impl CurrentRow {
    /// Σ of its f64 K_YX row.
    pub(super) fn yx_sum(&self) -> f64 {
        self.at.yx_sum
    }

    /// K_YY against the window's events before this one (f64).
    fn yy(&self) -> &[f64] {
        &self.store.yy[self.at.yy_at + self.skip..self.at.yy_at + self.at.yy_len]
    }

    /// Σ of [`Self::yy`]: the values short of a whole [`YY_CHUNK`] from the
    /// end, plus the stored sum of the whole chunks after them (the chunks'
    /// sums added from the row's end). What is added depends only on the
    /// values, so a kept row whose first values left gives the bits a
    /// restart's row gives, and a slide sums a few values a row instead of
    /// all.
    pub(super) fn yy_sum(&self) -> f64 {
        let len = self.at.yy_len - self.skip;
        let whole = len / YY_CHUNK;
        let head = simd::sum(&self.yy()[..len - whole * YY_CHUNK]);
        match whole.checked_sub(1) {
            None => head,
            Some(w) => head + self.store.yy[self.at.yy_at + self.at.yy_len + w],
        }
    }

    /// K_YX in fixed point (`n`: the reference's size).
    pub(super) fn yx_fixed(&self, n: usize) -> &[u8] {
        &self.store.fixed[self.at.fixed_at..self.at.fixed_at + n]
    }

    /// [`Self::yy`] in fixed point.
    pub(super) fn yy_fixed(&self, n: usize) -> &[u8] {
        let start = self.at.fixed_at + n;
        &self.store.fixed[start + self.skip..start + self.at.yy_len]
    }
}

/// The kernel of one evaluation: the reference's part and the current rows.
pub(super) struct Window {
    pub(super) xx: Arc<XxPart>,
    pub(super) rows: Vec<CurrentRow>,
    pub(super) sigma: f64,
    pub(super) sigma_fallback: bool,
    /// Rows of the previous window kept as they were (a slide's kept events).
    pub(super) reused: usize,
}

/// What is kept between evaluations against the same reference.
struct CacheEntry {
    key: (u64, usize, u64),
    /// Whose evaluation it was, if known ([`super::mmd_test_of`]).
    stream: Option<u64>,
    /// Memory it keeps alive ([`held_bytes`]).
    bytes: usize,
    sigma: f64,
    sigma_fallback: bool,
    xx: Arc<XxPart>,
    /// The previous current window's events (matched by content), their
    /// hashes, where each is by its hash (the last of equal ones), and
    /// their rows.
    current: Vec<f64>,
    hashes: Vec<u64>,
    index: ahash::AHashMap<u64, usize>,
    rows: Vec<CurrentRow>,
}

/// Streams (keys, detectors) whose windows are kept at once, and the bytes
/// their rows may hold in all (a key at n = m = 1000 holds ~10 MB: its
/// rows' f64 K_YY parts, four slides of them); oldest dropped first. A
/// stream whose entry was dropped pays a full test at its next evaluation,
/// so the count is well above the keys a pipeline usually has (it was 8:
/// a ninth key made every evaluation of every key start from scratch).
const CACHE_ENTRIES: usize = 64;
const CACHE_BYTES: usize = 512 << 20;
static CACHE: Mutex<Vec<CacheEntry>> = Mutex::new(Vec::new());

/// Windows the kernel cache holds against `reference` (other tests, run
/// at the same time, add their own).
#[cfg(test)]
pub(super) fn cached_windows(reference: &[f64]) -> usize {
    let hash = hash_rows(reference);
    let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.iter().filter(|e| e.key.0 == hash).count()
}

/// Empties the kernel cache (benchmarks measure the cold path with it).
pub fn clear_kernel_cache() {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// FNV-1a over the bit patterns, in four interleaved lanes then combined:
/// equal rows hash equal, and the four chains of multiplies run side by
/// side (one chain took 4 cycles a value: ~5 % of an evaluation, hashing the
/// reference and every current row).
fn hash_rows(x: &[f64]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let step = |h: u64, v: &f64| (h ^ v.to_bits()).wrapping_mul(PRIME);
    let mut lanes = [0u64, 1, 2, 3].map(|lane| 0xcbf2_9ce4_8422_2325 ^ lane);
    let mut quads = x.chunks_exact(4);
    for q in &mut quads {
        for (h, v) in lanes.iter_mut().zip(q) {
            *h = step(*h, v);
        }
    }
    for (h, v) in lanes.iter_mut().zip(quads.remainder()) {
        *h = step(*h, v);
    }
    lanes.iter().fold(x.len() as u64, |a, &h| (a ^ h).wrapping_mul(PRIME))
}

/// The kernel rows of `current` against `reference` (row-major, `dim`
/// columns), reusing what the cache holds for this reference.
/// `threads`: how many compute the reference's distances and the new rows;
/// `stream`: whose evaluation it is, if known (its older entries for this
/// reference are dropped).
pub(super) fn window(
    stream: Option<u64>,
    reference: &[f64],
    current: &[f64],
    dim: usize,
    sigma_opt: Option<f64>,
    threads: usize,
) -> Window {
    let m = current.len() / dim;
    let key = (hash_rows(reference), dim, sigma_opt.map_or(0, f64::to_bits));
    // Distances are translation-invariant: centring on the reference mean
    // keeps the norms small, so ‖x‖² + ‖y‖² − 2x·y loses nothing to cancellation.
    let centre = column_means(reference, dim);
    let hashes: Vec<u64> = current.chunks_exact(dim).map(hash_rows).collect();
    let (sigma, sigma_fallback, xx, old) = match cached(key, current, &hashes, dim) {
        Some(Reuse::Slide(e, run)) => (e.sigma, e.sigma_fallback, e.xx.clone(), Some((e, run))),
        Some(Reuse::Reference(sigma, fallback, xx)) => (sigma, fallback, xx, None),
        None => {
            let (sigma, fallback, xx) = reference_part(reference, dim, &centre, sigma_opt, threads);
            (sigma, fallback, xx, None)
        }
    };
    let old_pos: Vec<Option<usize>> = match &old {
        Some((e, run)) => e.positions(&hashes, current, dim, *run),
        None => vec![None; m],
    };
    let old_rows = old.as_ref().map_or(&[][..], |(e, _)| &e.rows[..]);
    let run = old.as_ref().map(|(_, run)| *run);
    let kept = run.map_or(0, |r| r.len);
    let fresh = FreshRows::new(
        &xx.points,
        current,
        &centre,
        1.0 / (2.0 * sigma * sigma),
        &old_pos,
        kept,
    );
    let (rows, reused) = current_rows(reference.len() / dim, &old_pos, old_rows, run, &fresh, threads);
    remember(CacheEntry {
        bytes: held_bytes(&rows, &xx, current.len()),
        key,
        stream,
        sigma,
        sigma_fallback,
        xx: xx.clone(),
        current: current.to_vec(),
        // The last of equal rows, as `insert` in order keeps it.
        index: hashes.iter().enumerate().map(|(j, &h)| (h, j)).collect(),
        hashes,
        rows: rows.clone(),
    });
    Window {
        xx,
        rows,
        sigma,
        sigma_fallback,
        reused,
    }
}

/// Puts an evaluation's entry in the cache: it replaces its stream's
/// entries for the same reference, and the oldest entries go past the
/// cache's limits.
fn remember(entry: CacheEntry) {
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if entry.stream.is_some() {
        c.retain(|e| e.key != entry.key || e.stream != entry.stream);
    }
    c.push(entry);
    let mut total: usize = c.iter().map(|e| e.bytes).sum();
    while c.len() > 1 && (c.len() > CACHE_ENTRIES || total > CACHE_BYTES) {
        total -= c.remove(0).bytes;
    }
}

/// What an entry keeps alive: its rows' stores (each once), its reference
/// part and its copy of the window (`current` values).
fn held_bytes(rows: &[CurrentRow], xx: &XxPart, current: usize) -> usize {
    let mut stores: Vec<(*const RowStore, usize)> = rows
        .iter()
        .map(|r| {
            (
                Arc::as_ptr(&r.store),
                r.store.fixed.held_bytes() + r.store.yy.held_bytes(),
            )
        })
        .collect();
    stores.sort_unstable();
    stores.dedup();
    let points = xx.points.rows.held_bytes() + xx.points.cols.held_bytes();
    let xx_bytes = xx.fixed.capacity() + points;
    stores.iter().map(|s| s.1).sum::<usize>() + xx_bytes + size_of::<f64>() * current
}

/// σ (given, or the median heuristic's) and the reference's part.
fn reference_part(
    reference: &[f64],
    dim: usize,
    centre: &[f64],
    sigma_opt: Option<f64>,
    threads: usize,
) -> (f64, bool, Arc<XxPart>) {
    let n = reference.len() / dim;
    let points = Points::new(reference, dim, centre);
    let d = points.sq_dists_lower(threads);
    let (sigma, fallback) = match sigma_opt {
        Some(s) => (s, false),
        None => or_fallback(sigma_from_median(&d, n)),
    };
    (
        sigma,
        fallback,
        Arc::new(XxPart::new(d, 1.0 / (2.0 * sigma * sigma), points)),
    )
}

/// Fresh rows per computed chunk: about 256 KB of kernel values, so that
/// a chunk's distances, exponentials and conversions stay in L2 instead of
/// streaming megabytes through memory three times (at n = m = 1000, d = 32:
/// 24 rows). Each chunk reads all the points' coordinates again: when they
/// are more than 1 MB (wide points, `dim`), all rows go in one chunk, as
/// the distance kernels then read each column panel once (at d = 384,
/// chunks of 24 rows made a test 15 % slower).
fn chunk_rows(n: usize, m: usize, dim: usize) -> usize {
    const TILES: usize = 24; // a multiple of the AVX2 (6) and AVX-512 (8) row tiles
    match (n + m) * dim * size_of::<f64>() {
        0..=0x10_0000 => (32768 / (n + m).max(1)).div_ceil(TILES).max(1) * TILES,
        _ => m,
    }
}

/// The kernel values of the events new to the window (in window order):
/// against the reference, and against the window's events; computed a
/// chunk of rows at a time, as [`current_rows`] takes them.
struct FreshRows<'a> {
    xs: &'a Points,
    ys: Points,
    gamma: f64,
    m: usize,
    /// Window positions of the fresh events.
    fresh: Vec<usize>,
    /// Per fresh event: the K_YY columns it needs, the window's events
    /// before it, and after it up to the last gathered row (see
    /// [`current_rows`]); when every event is fresh, below the diagonal.
    ends: Vec<usize>,
    /// Window position → index in `fresh` (fresh events only).
    at: Vec<usize>,
    per_chunk: usize,
}

/// One chunk of fresh rows, as [`FreshRows::load`] computed it (each thread
/// that stores rows has its own).
struct Chunk {
    n: usize,
    m: usize,
    /// The fresh events whose rows `yx` and `yy` hold.
    rows: std::ops::Range<usize>,
    /// Row r − rows.start: against the reference (n values).
    yx: Block,
    /// Row r − rows.start at offset (r − rows.start)·m: against the window.
    yy: Block,
}

impl Chunk {
    /// Fresh event `r`'s row against the reference.
    fn yx(&self, r: usize) -> &[f64] {
        let i = r - self.rows.start;
        &self.yx[i * self.n..(i + 1) * self.n]
    }

    /// Fresh event `r`'s values against the window's first `len` events.
    fn yy(&self, r: usize, len: usize) -> &[f64] {
        let i = r - self.rows.start;
        &self.yy[i * self.m..i * self.m + len]
    }
}

impl<'a> FreshRows<'a> {
    /// `xs`: the reference's points; `kept`: the events before it keep
    /// their rows as they are (the run a slide continues).
    fn new(
        xs: &'a Points,
        current: &[f64],
        centre: &[f64],
        gamma: f64,
        old_pos: &[Option<usize>],
        kept: usize,
    ) -> Self {
        let (n, m) = (xs.norms.len(), current.len() / xs.dim);
        let fresh: Vec<usize> = (0..m).filter(|&j| old_pos[j].is_none()).collect();
        // A gathered row after a fresh one reads the fresh one's value past
        // its position.
        let gathered = (kept..m).rev().find(|&j| old_pos[j].is_some());
        let ends: Vec<usize> = fresh
            .iter()
            .map(|&j| gathered.filter(|&g| g > j).map_or(j, |g| g + 1))
            .collect();
        let mut at = vec![usize::MAX; m];
        fresh.iter().enumerate().for_each(|(r, &j)| at[j] = r);
        // Then every gathered row reads fresh rows: all in one chunk.
        let reads_fresh = gathered.is_some_and(|g| fresh.first().is_some_and(|&f| f < g));
        let per_chunk = match reads_fresh {
            true => fresh.len(),
            false => chunk_rows(n, m, xs.dim).min(fresh.len()),
        }
        .max(1);
        Self {
            xs,
            // The window's points, which only new rows read.
            ys: Points::new(if fresh.is_empty() { &[] } else { current }, xs.dim, centre),
            gamma,
            m,
            fresh,
            ends,
            at,
            per_chunk,
        }
    }

    /// Empty buffers for [`Self::load`].
    fn chunk(&self) -> Chunk {
        let (n, m) = (self.xs.norms.len(), self.m);
        Chunk {
            n,
            m,
            rows: 0..0,
            yx: Block::new(self.per_chunk * n),
            yy: Block::new(self.per_chunk * m),
        }
    }

    /// Computes into `c` the chunk that starts with fresh event `r`, unless
    /// `c` holds `r`'s row.
    fn load(&self, c: &mut Chunk, r: usize) {
        if c.rows.contains(&r) {
            return;
        }
        c.rows = r..(r + self.per_chunk).min(self.fresh.len());
        let rows = self.ys.select(&self.fresh[c.rows.clone()]);
        let (n, m) = (c.n, c.m);
        let count = c.rows.len();
        rows.sq_dists_into(self.xs, None, &mut c.yx[..count * n]);
        simd::gaussian_in_place(&mut c.yx[..count * n], self.gamma);
        let ends = &self.ends[c.rows.clone()];
        rows.sq_dists_into(&self.ys, Some(ends), &mut c.yy[..count * m]);
        for (i, &end) in ends.iter().enumerate() {
            simd::gaussian_in_place(&mut c.yy[i * m..i * m + end], self.gamma);
        }
    }
}

/// The window's rows: a fresh event's computed in full; the events of the
/// `run` that continues the old window (old events a0.. in order) keep
/// their old rows, whose K_YY part is then a suffix of the old one; other
/// kept events' rows are gathered from the old rows (`old_pos`: each
/// event's old position, if kept). The rows not kept as they are go into
/// new [`RowStore`]s: one, or with `threads` > 1 and only fresh rows (a
/// slide), one per thread, each computing a share of them. Also returns how
/// many were kept as they are.
fn current_rows(
    n: usize,
    old_pos: &[Option<usize>],
    old_rows: &[CurrentRow],
    run: Option<Run>,
    fresh: &FreshRows,
    threads: usize,
) -> (Vec<CurrentRow>, usize) {
    let m = fresh.m;
    let run = run.unwrap_or(Run { len: 0, a0: 0 });
    let mut kept: Vec<Option<CurrentRow>> = (0..m)
        .map(|j| {
            (j < run.len).then(|| {
                let mut row = old_rows[run.a0 + j].clone();
                row.skip += run.a0;
                row
            })
        })
        .collect();
    let new: Vec<usize> = (0..m).filter(|&j| kept[j].is_none()).collect();
    let reused = m - new.len();
    let all_fresh = new.iter().all(|&j| old_pos[j].is_none());
    let share = match all_fresh && threads > 1 {
        true => new.len().div_ceil(threads).max(fresh.per_chunk.min(new.len())),
        false => new.len(),
    };
    let store = |part: &[usize]| store_rows(n, part, old_pos, old_rows, fresh);
    let parts: Vec<&[usize]> = new.chunks(share.max(1)).collect();
    let stored: Vec<(RowStore, Vec<Placed>)> = super::parallel(parts.clone(), store);
    for (part, (store, placed)) in parts.iter().zip(stored) {
        let store = Arc::new(store);
        for (&j, at) in part.iter().zip(placed) {
            kept[j] = Some(CurrentRow {
                store: store.clone(),
                at,
                skip: 0,
            });
        }
    }
    (kept.into_iter().flatten().collect(), reused)
}

/// The rows of the window's events `part` (in window order, none kept as
/// they are) in a new [`RowStore`]: a fresh event's computed, a kept one's
/// gathered from the old rows.
fn store_rows(
    n: usize,
    part: &[usize],
    old_pos: &[Option<usize>],
    old_rows: &[CurrentRow],
    fresh: &FreshRows,
) -> (RowStore, Vec<Placed>) {
    let mut store = RowStore::with_room(n, part.iter().copied());
    let mut chunk = fresh.chunk();
    let mut gathered = vec![];
    let placed = part
        .iter()
        .map(|&j| match old_pos[j] {
            None => {
                let r = fresh.at[j];
                fresh.load(&mut chunk, r);
                store.push(Yx::Values(chunk.yx(r)), chunk.yy(r, j))
            }
            Some(a) => {
                gathered.clear();
                for (l, pos) in old_pos[..j].iter().enumerate() {
                    gathered.push(match *pos {
                        Some(b) if b < a => old_rows[a].yy()[b],
                        Some(b) if b > a => old_rows[b].yy()[a],
                        // Equal events map to one old event; k(y, y) = 1.
                        Some(_) => 1.0,
                        None => {
                            fresh.load(&mut chunk, fresh.at[l]);
                            chunk.yy(fresh.at[l], j + 1)[j]
                        }
                    });
                }
                let old = &old_rows[a];
                store.push(Yx::Fixed(old.yx_fixed(n), old.yx_sum()), &gathered)
            }
        })
        .collect();
    (store, placed)
}

/// What the cache has for an evaluation.
enum Reuse {
    /// The previous evaluation of the same stream: its reference part and
    /// current rows, and the run of events the window kept ([`Run`]).
    Slide(Box<CacheEntry>, Run),
    /// Another stream's evaluation against the same reference (keys with
    /// equal references): σ and the reference's part.
    Reference(f64, bool, Arc<XxPart>),
}

/// Events of a current window whose positions are probed to find where it
/// continues an old one.
const PROBES: usize = 8;

/// The current window's first `len` events are the old window's from `a0`
/// on, in order (a slide).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    len: usize,
    a0: usize,
}

/// The cache's entry for this reference (`key`) whose window the current
/// one continues furthest, when it continues it for at least an eighth of
/// its events (taken out: it is replaced): that is this stream's previous
/// window, which slid. Else the reference's part from any entry for it.
/// Several streams (keys) may be tested against equal references, each
/// with its own entry, and equal events occur in several streams (a pool of
/// inputs that repeat): a window shares many events with another stream's,
/// but not a run of them. `hashes`: the current rows' [`hash_rows`].
fn cached(key: (u64, usize, u64), current: &[f64], hashes: &[u64], dim: usize) -> Option<Reuse> {
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let best = (0..c.len())
        .filter(|&i| c[i].key == key)
        .map(|i| (c[i].run(hashes, current, dim), i))
        .max();
    match best {
        Some((run, i)) if run.len * 8 >= hashes.len() && run.len > 0 => Some(Reuse::Slide(Box::new(c.remove(i)), run)),
        Some((_, i)) => Some(Reuse::Reference(c[i].sigma, c[i].sigma_fallback, c[i].xx.clone())),
        None => None,
    }
}

impl CacheEntry {
    /// The longest run of `current`'s events from the first on that
    /// continues this entry's window from some position, found from the
    /// old positions of a few events ([`PROBES`]), as the run would hold
    /// them. `hashes`: the events' [`hash_rows`].
    fn run(&self, hashes: &[u64], current: &[f64], dim: usize) -> Run {
        let m = hashes.len();
        let row = |j: usize| j * dim..(j + 1) * dim;
        let run_from = |a0: usize| {
            (0..m)
                .take_while(|&j| {
                    self.hashes.get(a0 + j) == Some(&hashes[j]) && self.current[row(a0 + j)] == current[row(j)]
                })
                .count()
        };
        let probes = PROBES.min(m);
        let mut starts: Vec<usize> = (0..probes)
            .filter_map(|p| {
                let j = p * m / probes;
                self.position(hashes[j], &current[row(j)], dim)?.checked_sub(j)
            })
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
            .into_iter()
            .map(|a0| Run { len: run_from(a0), a0 })
            .max()
            .unwrap_or(Run { len: 0, a0: 0 })
    }

    /// Where each event of `current` was in this entry's window, if it was:
    /// the events of `run` at the run's positions (even where equal events
    /// occur elsewhere in either window), the others at the last of equal
    /// old events.
    fn positions(&self, hashes: &[u64], current: &[f64], dim: usize, run: Run) -> Vec<Option<usize>> {
        (0..hashes.len())
            .map(|j| match j < run.len {
                true => Some(run.a0 + j),
                false => self.position(hashes[j], &current[j * dim..(j + 1) * dim], dim),
            })
            .collect()
    }

    /// Where the event `row` (whose hash is `hash`) was in this entry's
    /// window, if it was (equal events: the last of them).
    fn position(&self, hash: u64, row: &[f64], dim: usize) -> Option<usize> {
        self.index
            .get(&hash)
            .copied()
            .filter(|&o| &self.current[o * dim..(o + 1) * dim] == row)
    }
}
