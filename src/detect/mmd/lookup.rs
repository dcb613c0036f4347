//! The permutation quadratic forms sᵀK₀s by table lookups, for CPUs with
//! AVX2 but not AVX-512 (where masked adds are cheap).
//!
//! For each three columns j, j+1, j+2 of a kernel row, the eight sums of
//! their subsets fit one register of eight i32 lanes (lane l holds the sum
//! of the columns whose bit is set in l). A set's three membership bits at
//! those columns are a lane index, so one `vpermd` gives eight sets at once
//! the sum of the columns each holds: three values for eight sets per
//! lookup, where a masked add (with its lane masks fetched from a table)
//! adds eight values for one set. Every set's sum of the row comes out of
//! one pass over the row's tables; a row's sum counts for the sets that
//! hold the row.
//!
//! The sums are the same exact integers (kernel values in fixed point) as
//! the masked sums', in another order, so the quadratic forms, and with them
//! the permutation p-values, are identical on every path. x86_64 only (the
//! module is compiled there alone).

use std::arch::x86_64::*;

/// Which sets hold which of the pooled columns `lo..total`, laid out for
/// the lookups. For a block of [`GROUPS_PER_WORD`] column groups (group g:
/// columns lo + 3g, +1, +2) and an octet of sets (8o … 8o+7), eight u32
/// lanes: lane l holds set 8o+l's three membership bits of each group of
/// the block, group k at bits 3k … 3k+2. `vpermd` reads only the low three
/// bits of an index lane, so a shift by 3 moves the lanes on to the next
/// group: one load feeds ten lookups, and the shift runs beside the
/// permute, not on its port.
pub(super) struct LookupIndex {
    octets: usize,
    words: Vec<[u32; 8]>,
}

/// Column groups whose patterns share a u32 lane (3 bits each).
const GROUPS_PER_WORD: usize = 10;

impl LookupIndex {
    pub(super) fn new(members: &[Vec<u32>], total: usize, lo: usize) -> Self {
        let sets = members.len();
        let octets = sets.div_ceil(8);
        let blocks = (total - lo).div_ceil(3).div_ceil(GROUPS_PER_WORD);
        let mut words = vec![[0u32; 8]; blocks * octets];
        for (b, mem) in members.iter().enumerate() {
            for i in mem.iter().filter_map(|&i| (i as usize).checked_sub(lo)) {
                let (g, c) = (i / 3, i % 3);
                let k = g % GROUPS_PER_WORD;
                words[g / GROUPS_PER_WORD * octets + b / 8][b % 8] |= 1 << (3 * k + c);
            }
        }
        Self { octets, words }
    }
}

/// Scratch of one thread: the row's subset-sum tables and per-set sums.
#[derive(Default)]
pub(super) struct Scratch {
    tables: Vec<__m256i>,
    sums: Vec<i64>,
}

/// Column groups after which the i32 lanes are flushed to i64 (a whole
/// number of blocks): a lookup adds at most three values ≤ 2²⁰, and
/// 510·3·2²⁰ < 2³¹.
const FLUSH_GROUPS: usize = 51 * GROUPS_PER_WORD;

/// Octets of sets per pass over a row's tables: their accumulators and
/// index words stay in registers.
const OCTETS_PER_PASS: usize = 4;

/// Adds to `q[b]`, for every set b of `holders`, the sum of a row over the
/// columns b holds; the row comes in parts, each over its own column space
/// (its values at the space's columns 0, 1, …).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn add_row(
    parts: [(&LookupIndex, &[i32]); 2],
    holders: &[u32],
    scratch: &mut Scratch,
    q: &mut [i64],
) {
    let octets = parts[0].0.octets;
    scratch.sums.clear();
    scratch.sums.resize(octets * 8, 0);
    for (index, row) in parts {
        subset_tables(row, &mut scratch.tables);
        let mut o = 0;
        while o < octets {
            let sums = &mut scratch.sums[o * 8..];
            // SAFETY: AVX2 (this function's feature); each pass reads octets o.. of every block.
            unsafe {
                match octets - o {
                    1 => pass::<1>(index, o, &scratch.tables, sums),
                    2 => pass::<2>(index, o, &scratch.tables, sums),
                    3 => pass::<3>(index, o, &scratch.tables, sums),
                    _ => pass::<OCTETS_PER_PASS>(index, o, &scratch.tables, sums),
                }
            }
            o += OCTETS_PER_PASS;
        }
    }
    for &b in holders {
        q[b as usize] += scratch.sums[b as usize];
    }
}

/// Per column group of `row`, the register of the eight subset sums (a
/// missing column of the last group counts 0).
#[target_feature(enable = "avx2")]
fn subset_tables(row: &[i32], tables: &mut Vec<__m256i>) {
    // Lane l takes column c when bit c of l is set.
    let m = [
        _mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1),
        _mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1),
        _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1),
    ];
    tables.clear();
    let groups = row.chunks_exact(3);
    let rest = groups.remainder();
    // A loop, not an iterator adapter: closures do not inherit the target
    // feature, and their intrinsics would become calls.
    for g in groups {
        tables.push(table3([g[0], g[1], g[2]], &m));
    }
    if !rest.is_empty() {
        tables.push(table3([rest[0], rest.get(1).copied().unwrap_or(0), 0], &m));
    }
}

/// The eight subset sums of three values: Σ_c v[c]·[bit c of lane].
#[target_feature(enable = "avx2")]
#[inline]
fn table3(v: [i32; 3], m: &[__m256i; 3]) -> __m256i {
    let a = _mm256_and_si256(_mm256_set1_epi32(v[0]), m[0]);
    let b = _mm256_and_si256(_mm256_set1_epi32(v[1]), m[1]);
    let c = _mm256_and_si256(_mm256_set1_epi32(v[2]), m[2]);
    _mm256_add_epi32(_mm256_add_epi32(a, b), c)
}

/// Octets o … o+P−1: for every column group, one lookup per octet into the
/// group's table, accumulated in P registers, flushed into `sums`.
#[target_feature(enable = "avx2")]
unsafe fn pass<const P: usize>(index: &LookupIndex, o: usize, tables: &[__m256i], sums: &mut [i64]) {
    let mut acc = [_mm256_setzero_si256(); P];
    for (c, chunk) in tables.chunks(FLUSH_GROUPS).enumerate() {
        for (k, block) in chunk.chunks(GROUPS_PER_WORD).enumerate() {
            let at = (c * FLUSH_GROUPS / GROUPS_PER_WORD + k) * index.octets + o;
            // SAFETY: eight u32 read from a [u32; 8].
            let mut idx = [_mm256_setzero_si256(); P];
            for (w, word) in idx.iter_mut().zip(&index.words[at..at + P]) {
                *w = unsafe { _mm256_loadu_si256(word.as_ptr() as *const __m256i) };
            }
            for t in block {
                for (a, w) in acc.iter_mut().zip(idx.iter_mut()) {
                    *a = _mm256_add_epi32(*a, _mm256_permutevar8x32_epi32(*t, *w));
                    *w = _mm256_srli_epi32::<3>(*w);
                }
            }
        }
        for (p, a) in acc.iter_mut().enumerate() {
            let mut lanes = [0i32; 8];
            // SAFETY: 8 i32 lanes into an 8-element array.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *a) };
            for (s, v) in sums[p * 8..p * 8 + 8].iter_mut().zip(lanes) {
                *s += i64::from(v);
            }
            *a = _mm256_setzero_si256();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every set's sum of every row is the direct Σ_{j<i, i∈b, j∈b} row_i[j],
    /// for set counts around the octet and pass sizes, rows longer than a
    /// flush, and rows in two parts over two column spaces.
    #[test]
    fn lookups_give_the_direct_sums() {
        if !is_x86_feature_detected!("avx2") {
            return; // no AVX2: the path is never taken
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (total, sets) in [(7, 1), (40, 9), (200, 64), (1700, 70), (3100, 17)] {
            let members: Vec<Vec<u32>> = (0..sets)
                .map(|_| (0..total as u32).filter(|_| rng.random::<bool>()).collect())
                .collect();
            // Rows in two parts, the second over the columns from `split` on.
            let split = total / 3;
            let (index, upper) = (
                LookupIndex::new(&members, total, 0),
                LookupIndex::new(&members, total, split),
            );
            let holders = crate::detect::mmd::Holders::new(&members, total);
            let rows: Vec<Vec<i32>> = (0..total)
                .map(|i| (0..i).map(|_| rng.random_range(0..=1 << 20)).collect())
                .collect();
            let mut q = vec![0i64; sets];
            let mut scratch = Scratch::default();
            for (i, row) in rows.iter().enumerate() {
                // SAFETY: AVX2 checked above.
                let (a, b) = row.split_at(row.len().min(split));
                unsafe { add_row([(&index, a), (&upper, b)], holders.of(i), &mut scratch, &mut q) };
            }
            let want: Vec<i64> = members
                .iter()
                .map(|mem| {
                    let on: std::collections::HashSet<u32> = mem.iter().copied().collect();
                    let mut s = 0i64;
                    for &i in mem {
                        for (j, v) in rows[i as usize].iter().enumerate() {
                            if on.contains(&(j as u32)) {
                                s += i64::from(*v);
                            }
                        }
                    }
                    s
                })
                .collect();
            assert_eq!(q, want, "{total} rows, {sets} sets");
        }
    }
}
