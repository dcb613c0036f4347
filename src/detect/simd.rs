//! The MMD kernel's inner loops — squared distances, exp of a row, sums and
//! the permutations' fixed-point set sums — with AVX-512 or AVX2/FMA paths
//! chosen at run time and a portable fallback. Squared distances without
//! AVX2 go through `matrixmultiply`'s GEMM, which has its own NEON kernels
//! (on x86 it took 2.5× the FMA bound at d = 32, hence the register tiles
//! here).
//!
//! `DRIFTWATCH_SIMD=avx2` (no AVX-512) or `=portable` (neither) caps the
//! paths taken, so that one machine can measure and test what a smaller CPU
//! runs.
//! Explicit intrinsics, so the speed does not depend on the optimisation
//! level the crate is built at.
//!
//! exp (Tang's table-driven method with a table of four): x = k·ln2/4 + r
//! with |r| ≤ ln2/8 (Cody–Waite split of ln2), e^x = 2^⌊k/4⌋ · 2^((k mod 4)/4)
//! · e^r, e^r by its Taylor polynomial to degree 9 (truncation below 1e-17),
//! the table's entry picked by a permute across lanes and 2^⌊k/4⌋ added to
//! its exponent bits. Accurate to a few ulp, which the MMD tests need (the
//! statistic is a difference of large sums). The table took three of the
//! twelve multiply-adds a value of degree 12 on |r| ≤ ln2/2 needed, on the
//! ports they saturate; the permute runs on another.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The widest path `DRIFTWATCH_SIMD` allows: 0 portable, 1 AVX2, 2 AVX-512.
#[cfg(target_arch = "x86_64")]
fn allowed() -> u8 {
    use std::sync::OnceLock;
    static CAP: OnceLock<u8> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("DRIFTWATCH_SIMD").as_deref() {
        Ok("portable") => 0,
        Ok("avx2") => 1,
        _ => 2,
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| allowed() >= 1 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The CPU features this machine offers that the kernels (ours and ONNX
/// Runtime's) can use, and the path our statistics kernels take: benchmark
/// figures are only comparable between runs with the same.
pub fn features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let found: Vec<&str> = [
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let kernels = if has_avx512() {
            "avx512"
        } else if has_avx2() {
            "avx2"
        } else {
            "portable"
        };
        let capped = if allowed() < 2 {
            " (capped by DRIFTWATCH_SIMD)"
        } else {
            ""
        };
        format!(
            "x86_64 {}; statistics kernels: {kernels}{capped}",
            if found.is_empty() {
                "baseline".into()
            } else {
                found.join(" ")
            }
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("{} (portable kernels)", std::env::consts::ARCH)
    }
}

/// Σ (a_i − b_i)².
pub fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { sq_dist_avx2(&a[..n], &b[..n]) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Scale of the fixed-point kernel values the permutation sums work on:
/// k ∈ [0, 1] becomes round(k·255), a byte, so that one multiply-add
/// instruction (`vpmaddubsw`) takes 32 (AVX2) or 64 (AVX-512) of them.
pub const FIXED_SCALE: f64 = 255.0;

/// Appends round(x·255) (ties to even) for each x of `src` (kernel values
/// in [0, 1]) to `dst`.
pub fn to_fixed(src: &[f64], dst: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 present.
        return unsafe { to_fixed_avx2(src, dst) };
    }
    dst.extend(src.iter().map(|x| fixed_one(*x)));
}

fn fixed_one(x: f64) -> u8 {
    (x * FIXED_SCALE).round_ties_even() as u8
}

/// The conversion rounds in the default mode, to nearest with ties to even,
/// as `round_ties_even` does for the tail; values ≤ 255 pack to bytes
/// unchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_fixed_avx2(src: &[f64], dst: &mut Vec<u8>) {
    let (n, at) = (src.len(), dst.len());
    dst.reserve(n);
    let scale = _mm256_set1_pd(FIXED_SCALE);
    let mut i = 0;
    // SAFETY: i + 8 ≤ n reads inside `src`; writes go to the `n` reserved slots
    // after `at`, all of which are written before `set_len`.
    unsafe {
        let out = dst.as_mut_ptr().add(at);
        while i + 8 <= n {
            // Not an array `map`: closures do not inherit the target
            // feature, and their intrinsics would become calls.
            let lo = _mm256_cvtpd_epi32(_mm256_mul_pd(load_pd(src.as_ptr().wrapping_add(i)), scale));
            let hi = _mm256_cvtpd_epi32(_mm256_mul_pd(load_pd(src.as_ptr().wrapping_add(i + 4)), scale));
            let words = _mm_packs_epi32(lo, hi);
            _mm_storel_epi64(out.add(i) as *mut __m128i, _mm_packus_epi16(words, words));
            i += 8;
        }
        for (k, x) in src.iter().enumerate().skip(i) {
            out.add(k).write(fixed_one(*x));
        }
        dst.set_len(at + n);
    }
}

/// Adds `row` to `acc`, value by value, and returns the sum of `row`:
/// exact integer sums (the caller keeps them below 2³¹; wrapping adds keep
/// overflow checks, and with them scalar code, out of debug builds).
pub fn add_fixed_to(acc: &mut [i32], row: &[u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 present.
        return unsafe { add_fixed_to_avx2(acc, row) };
    }
    add_fixed_to_any(acc, row)
}

/// [`add_fixed_to_any`] compiled for AVX2 (eight lanes, where the x86-64
/// baseline the crate is built for has four).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_fixed_to_avx2(acc: &mut [i32], row: &[u8]) -> i32 {
    add_fixed_to_any(acc, row)
}

#[inline(always)]
fn add_fixed_to_any(acc: &mut [i32], row: &[u8]) -> i32 {
    // One pass: each value widened once, to the column's sum and the row's.
    let mut own = 0i32;
    for (c, &v) in acc.iter_mut().zip(row) {
        let v = i32::from(v);
        *c = c.wrapping_add(v);
        own = own.wrapping_add(v);
    }
    own
}

/// Values the portable set sums add in i32 before widening the sum to
/// i64: 2²² values ≤ 255 stay below 2³¹.
const FIXED_FLUSH: usize = 1 << 22;

/// Vector iterations whose byte products (pairs ≤ 2·255) are summed in i16
/// lanes before they are widened: 64 · 510 < 2¹⁵.
#[cfg(target_arch = "x86_64")]
const PAIRS_FLUSH: usize = 64;

/// Part of a row of values at consecutive columns: (its first column, its values).
pub type Piece<'a> = (usize, &'a [u8]);

/// Σ_t row[t]·set[t] for each of `H` sets given as columns of 0 and 1,
/// over the columns of a row given in pieces ([`Piece`]; every set's
/// column at least as long as each piece's last column): the sums of the
/// row over the columns each set holds. Integer sums are exact, so the
/// result does not depend on the order or grouping of the additions: a
/// permutation that equals another in law gives the same sum bit for bit,
/// on every path.
pub fn set_sums<const H: usize>(pieces: &[Piece], sets: [&[i8]; H]) -> [i64; H] {
    assert!(
        pieces
            .iter()
            .all(|(col0, row)| sets.iter().all(|s| s.len() >= col0 + row.len())),
        "a set's column is shorter than the row"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512bw() {
        // SAFETY: AVX-512F and BW present; columns as long as the row.
        return unsafe { set_sums_avx512(pieces, sets) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 present; columns as long as the row.
        return unsafe { set_sums_avx2(pieces, sets) };
    }
    set_sums_portable(pieces, sets)
}

/// Plain loops of byte products summed in i32, which the compiler turns
/// into multiply-adds of whatever width the target has (NEON on aarch64).
fn set_sums_portable<const H: usize>(pieces: &[Piece], sets: [&[i8]; H]) -> [i64; H] {
    let mut tot = [0i64; H];
    for &(col0, row) in pieces {
        for (c, chunk) in row.chunks(FIXED_FLUSH).enumerate() {
            let at = col0 + c * FIXED_FLUSH;
            for (t, set) in tot.iter_mut().zip(&sets) {
                let s = chunk.iter().zip(&set[at..at + chunk.len()]).fold(0i32, |s, (&v, &b)| {
                    s.wrapping_add(i32::from(v).wrapping_mul(i32::from(b)))
                });
                *t += i64::from(s);
            }
        }
    }
    tot
}

/// 32 values per multiply-add: `vpmaddubsw` multiplies a row's bytes by a
/// set's 0/1 and adds neighbouring pairs into sixteen i16 lanes, which are
/// widened into four i64 lanes every [`PAIRS_FLUSH`] iterations; one load
/// of the row serves every set. A piece's last values (fewer than 32) are
/// one more iteration on the piece's last 32 values with those already
/// added masked to 0; a piece shorter than 32 (the first rows of a
/// triangle) takes the portable loops.
///
/// # Safety
/// AVX2 present; every set's column at least as long as each piece's last
/// column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn set_sums_avx2<const H: usize>(pieces: &[Piece], sets: [&[i8]; H]) -> [i64; H] {
    let mut wide = [_mm256_setzero_si256(); H];
    let mut short = [0i64; H];
    for &(col0, row) in pieces {
        let n = row.len();
        if n < 32 {
            let part = set_sums_portable(&[(col0, row)], sets);
            short.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            continue;
        }
        let mut t = 0;
        while t < n {
            let stop = (t + 32 * PAIRS_FLUSH).min(n);
            let mut pairs = [_mm256_setzero_si256(); H];
            while t + 32 <= stop {
                // SAFETY: t + 32 ≤ row.len(), and col0 + t + 32 ≤ every column's length; `lddqu`: see [`load_pd`].
                unsafe {
                    let x = _mm256_lddqu_si256(row.as_ptr().add(t) as *const __m256i);
                    for h in 0..H {
                        let on = _mm256_lddqu_si256(sets[h].as_ptr().add(col0 + t) as *const __m256i);
                        pairs[h] = _mm256_add_epi16(pairs[h], _mm256_maddubs_epi16(x, on));
                    }
                }
                t += 32;
            }
            if t < stop {
                // Only at the piece's end (stop = n): its last 32 values,
                // those before t masked to 0.
                let at = n - 32;
                // SAFETY: LAST_32[stop − t..][..32] is inside it (stop − t < 32);
                // at + 32 = n, and col0 + n ≤ every column's length.
                unsafe {
                    let keep = _mm256_lddqu_si256(LAST_32.as_ptr().add(stop - t) as *const __m256i);
                    let x = _mm256_and_si256(keep, _mm256_lddqu_si256(row.as_ptr().add(at) as *const __m256i));
                    for h in 0..H {
                        let on = _mm256_lddqu_si256(sets[h].as_ptr().add(col0 + at) as *const __m256i);
                        pairs[h] = _mm256_add_epi16(pairs[h], _mm256_maddubs_epi16(x, on));
                    }
                }
                t = stop;
            }
            widen_pairs_avx2(&pairs, &mut wide);
        }
    }
    std::array::from_fn(|h| {
        let mut lanes = [0i64; 4];
        // SAFETY: 4 i64 lanes into a 4-element array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, wide[h]) };
        short[h] + lanes.iter().sum::<i64>()
    })
}

/// 32 zero bytes then 32 bytes of ones: from offset `left`, a mask that
/// keeps a vector's last `left` bytes ([`set_sums_avx2`]).
#[cfg(target_arch = "x86_64")]
static LAST_32: [u8; 64] = {
    let mut m = [0u8; 64];
    let mut i = 32;
    while i < 64 {
        m[i] = 0xFF;
        i += 1;
    }
    m
};

/// [`set_sums_avx2`]'s flush: each set's 16-bit pair sums added, widened
/// to 64 bits, to its running sums (before the pairs could overflow).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn widen_pairs_avx2<const H: usize>(pairs: &[__m256i; H], wide: &mut [__m256i; H]) {
    let ones = _mm256_set1_epi16(1);
    for (w, &p) in wide.iter_mut().zip(pairs) {
        let quads = _mm256_madd_epi16(p, ones);
        let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(quads));
        let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(quads));
        *w = _mm256_add_epi64(*w, _mm256_add_epi64(lo, hi));
    }
}

/// As [`set_sums_avx2`], 64 values per multiply-add; a piece's last ones
/// under a load mask.
///
/// # Safety
/// AVX-512F and BW present; every set's column at least as long as each
/// piece's last column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn set_sums_avx512<const H: usize>(pieces: &[Piece], sets: [&[i8]; H]) -> [i64; H] {
    let ones = _mm512_set1_epi16(1);
    let mut wide = [_mm512_setzero_si512(); H];
    for &(col0, row) in pieces {
        let n = row.len();
        let mut t = 0;
        while t < n {
            let stop = (t + 64 * PAIRS_FLUSH).min(n);
            let mut pairs = [_mm512_setzero_si512(); H];
            while t < stop {
                let left = stop - t;
                let valid: __mmask64 = if left >= 64 { u64::MAX } else { (1u64 << left) - 1 };
                // SAFETY: the masked loads read only the `left` values inside the row and columns.
                unsafe {
                    let x = _mm512_maskz_loadu_epi8(valid, row.as_ptr().add(t) as *const i8);
                    for h in 0..H {
                        let on = _mm512_maskz_loadu_epi8(valid, sets[h].as_ptr().add(col0 + t));
                        pairs[h] = _mm512_add_epi16(pairs[h], _mm512_maddubs_epi16(x, on));
                    }
                }
                t += 64;
            }
            for h in 0..H {
                let quads = _mm512_madd_epi16(pairs[h], ones);
                let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(quads));
                let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(quads));
                wide[h] = _mm512_add_epi64(wide[h], _mm512_add_epi64(lo, hi));
            }
        }
    }
    wide.map(|w| _mm512_reduce_add_epi64(w))
}

/// Σ x_i with four (AVX-512: eight-lane) partial sums.
pub fn sum(x: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present.
        return unsafe { sum_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 present.
        return unsafe { sum_avx2(x) };
    }
    sum4(x)
}

/// Sixteen partial sums in four registers: one register's chain of adds
/// waits on the add latency (four cycles) at every step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f64]) -> f64 {
    let mut s = [0.0; 16];
    let chunks = x.chunks_exact(16);
    let tail = sum4(chunks.remainder());
    for c in chunks {
        for l in 0..16 {
            s[l] += c[l];
        }
    }
    let quads: [f64; 4] = std::array::from_fn(|q| (s[q] + s[q + 4]) + (s[q + 8] + s[q + 12]));
    (quads[0] + quads[1]) + (quads[2] + quads[3]) + tail
}

#[inline(always)]
fn sum4(x: &[f64]) -> f64 {
    let mut s = [0.0; 4];
    let chunks = x.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..4 {
            s[l] += c[l];
        }
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(x: &[f64]) -> f64 {
    let (n, p) = (x.len(), x.as_ptr());
    let (mut a0, mut a1, mut a2, mut a3) = (
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
    );
    let mut i = 0;
    // SAFETY: full loads below n; the tail load is masked to lanes < n.
    unsafe {
        while i + 32 <= n {
            a0 = _mm512_add_pd(a0, _mm512_loadu_pd(p.add(i)));
            a1 = _mm512_add_pd(a1, _mm512_loadu_pd(p.add(i + 8)));
            a2 = _mm512_add_pd(a2, _mm512_loadu_pd(p.add(i + 16)));
            a3 = _mm512_add_pd(a3, _mm512_loadu_pd(p.add(i + 24)));
            i += 32;
        }
        while i < n {
            let left = n - i;
            let k = if left >= 8 { 0xFFu8 } else { (1u8 << left) - 1 };
            a0 = _mm512_add_pd(a0, _mm512_maskz_loadu_pd(k, p.add(i)));
            i += 8;
        }
    }
    _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)))
}

/// Squared distances from each row of `rows` (row-major, `dim` columns) to
/// each column of `cols_t` (the other points transposed: `dim` rows of
/// `ncols`), by ‖x‖² + ‖y‖² − 2x·y (clamped at 0) so the work is one FMA per
/// coordinate and pair. Callers centre the points first: the cancellation
/// error is then ε·(‖x‖² + ‖y‖²) on a squared distance of the same order.
/// `out` is rows × ncols, row-major. With `ends`, row r needs only the
/// columns c < ends[r] (the same points on both sides and ends[r] = r: the
/// entries left of the diagonal); the rest of its row in `out` is left
/// unspecified.
pub fn sq_dists_block(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    ends: Option<&[usize]>,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    assert!(rows.len() >= nr * dim && cols_t.len() >= nc * dim && out.len() >= nr * nc);
    assert!(ends.is_none_or(|e| e.len() >= nr), "fewer column ends than rows");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present; bounds asserted above.
        unsafe { sq_dists_block_avx512(rows, row_norms, cols_t, col_norms, dim, ends, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA present; bounds asserted above.
        unsafe { sq_dists_block_avx2(rows, row_norms, cols_t, col_norms, dim, ends, out) };
        return;
    }
    // The GEMM computes every entry, so `ends` changes nothing there.
    let _ = ends;
    sq_dists_block_gemm(rows, row_norms, cols_t, col_norms, dim, out);
}

/// Columns per panel of the distance blocks: about 128 KB of coordinates
/// (16,384 values), which stay in L2 while every row tile passes them; a
/// multiple of the `tile_columns` a register tile covers.
#[cfg(target_arch = "x86_64")]
fn panel_columns(dim: usize, tile_columns: usize) -> usize {
    (16384 / dim.max(1) / tile_columns * tile_columns).max(tile_columns)
}

/// The columns a tile of rows needs: up to the largest of their ends.
#[cfg(target_arch = "x86_64")]
fn tile_end(ends: &[usize]) -> usize {
    ends.iter().copied().max().unwrap_or(0)
}

/// Rows per register tile of [`sq_dists_block_avx2`]: 6 rows × 8 columns,
/// 12 accumulators (with the 2 column vectors and a broadcast, 15 of the
/// 16 registers); per coordinate 2 column loads and 6 broadcasts feed 12
/// FMAs. Twelve independent sums keep both FMA ports busy through their
/// 4-cycle latency, which the 8 of a 4-row tile only just did: 13 % less
/// time at d = 384, the same at d = 32.
#[cfg(target_arch = "x86_64")]
const TILE_ROWS_AVX2: usize = 6;

/// [`sq_dists_block`] on AVX2 + FMA: register tiles as on AVX-512, four
/// lanes wide. `matrixmultiply`'s GEMM took 2.5× the FMA bound here: with
/// 32 coordinates its packing and tile stores weigh as much as the
/// products, and it cannot skip the upper triangle.
/// The last columns of a row (fewer than 8) take the same FMAs one lane at
/// a time, so an entry's value does not depend on where in a block it falls.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sq_dists_block_avx2(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    ends: Option<&[usize]>,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    // Columns in panels (without them, wide points streamed all columns
    // from memory once per row tile).
    let full = nc - nc % 8;
    let width = panel_columns(dim, 8);
    for panel in (0..full).step_by(width) {
        let panel_end = (panel + width).min(full);
        let mut r0 = 0;
        while r0 < nr {
            let tile = (nr - r0).min(TILE_ROWS_AVX2);
            let end = ends.map_or(panel_end, |e| tile_end(&e[r0..r0 + tile]).min(panel_end));
            let mut c0 = panel;
            while c0 < end {
                // SAFETY: rows r0..r0 + tile < nr, columns c0..c0 + 8 ≤ nc.
                unsafe {
                    if tile == TILE_ROWS_AVX2 {
                        tile_avx2::<TILE_ROWS_AVX2>(rows, row_norms, cols_t, col_norms, dim, r0, c0, out);
                    } else {
                        for r in r0..r0 + tile {
                            tile_avx2::<1>(rows, row_norms, cols_t, col_norms, dim, r, c0, out);
                        }
                    }
                }
                c0 += 8;
            }
            r0 += tile;
        }
    }
    for r in 0..nr {
        let end = ends.map_or(nc, |e| e[r].min(nc));
        for c in full..end {
            let mut acc = 0.0f64;
            for k in 0..dim {
                acc = rows[r * dim + k].mul_add(cols_t[k * nc + c], acc);
            }
            out[r * nc + c] = (-2.0f64).mul_add(acc, col_norms[c] + row_norms[r]).max(0.0);
        }
    }
}

/// Four doubles from `p` by `lddqu`: the std `loadu` is a
/// `copy_nonoverlapping` that debug builds (the tests', the demo's) check
/// on every call, which tripled the time of this loop there.
///
/// # Safety
/// AVX2; p..p + 4 readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_pd(p: *const f64) -> __m256d {
    // SAFETY: the caller's.
    unsafe { _mm256_castsi256_pd(_mm256_lddqu_si256(p as *const __m256i)) }
}

/// Rows r0..r0 + R × columns c0..c0 + 8 of [`sq_dists_block_avx2`].
///
/// # Safety
/// AVX2 and FMA; r0 + R ≤ rows, c0 + 8 ≤ columns of the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const R: usize>(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    r0: usize,
    c0: usize,
    out: &mut [f64],
) {
    let nc = col_norms.len();
    let x: [*const f64; R] = std::array::from_fn(|r| rows.as_ptr().wrapping_add((r0 + r) * dim));
    let mut col = cols_t.as_ptr().wrapping_add(c0);
    let mut acc = [[_mm256_setzero_pd(); 2]; R];
    // SAFETY (loads): k < dim, rows r0..r0 + R and columns c0..c0 + 8 exist.
    // Pointers step by wrapping adds: index arithmetic would carry overflow
    // checks into this loop in debug builds.
    unsafe {
        for k in 0..dim {
            let t = [load_pd(col), load_pd(col.wrapping_add(4))];
            col = col.wrapping_add(nc);
            for (xr, a) in x.iter().zip(acc.iter_mut()) {
                let b = _mm256_broadcast_sd(&*xr.wrapping_add(k));
                a[0] = _mm256_fmadd_pd(b, t[0], a[0]);
                a[1] = _mm256_fmadd_pd(b, t[1], a[1]);
            }
        }
        let two = _mm256_set1_pd(2.0);
        for (r, a) in acc.iter().enumerate() {
            let row = r0 + r;
            for (h, v) in a.iter().enumerate() {
                let c = c0 + 4 * h;
                let base = _mm256_add_pd(
                    load_pd(col_norms.as_ptr().wrapping_add(c)),
                    _mm256_set1_pd(row_norms[row]),
                );
                let d = _mm256_max_pd(_mm256_fnmadd_pd(two, *v, base), _mm256_setzero_pd());
                _mm256_storeu_pd(out.as_mut_ptr().wrapping_add(row * nc + c), d);
            }
        }
    }
}

/// [`sq_dists_block`] by one GEMM, `out = −2·rows·cols_t`, then the norms
/// added (all of `out`, also above the diagonal: the GEMM is faster than
/// a triangle of dot products).
fn sq_dists_block_gemm(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    assert!(rows.len() >= nr * dim && cols_t.len() >= nc * dim && out.len() >= nr * nc);
    if nr == 0 || nc == 0 {
        return;
    }
    // SAFETY: rows is nr × dim (row stride dim), cols_t is dim × nc (row
    // stride nc), out is nr × nc (row stride nc): lengths asserted above.
    unsafe {
        matrixmultiply::dgemm(
            nr,
            dim,
            nc,
            -2.0,
            rows.as_ptr(),
            dim as isize,
            1,
            cols_t.as_ptr(),
            nc as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            nc as isize,
            1,
        );
    }
    for (r, row) in out[..nr * nc].chunks_exact_mut(nc).enumerate() {
        for (d, cn) in row.iter_mut().zip(col_norms) {
            *d = (*d + row_norms[r] + cn).max(0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| allowed() >= 2 && is_x86_feature_detected!("avx512f"))
}

/// AVX-512 with its 16-bit integer instructions (the permutation sums).
#[cfg(target_arch = "x86_64")]
fn has_avx512bw() -> bool {
    has_avx512() && is_x86_feature_detected!("avx512bw")
}

/// Rows per register tile of [`sq_dists_block_avx512`]; each tile is
/// `TILE_ROWS` × 16 columns: 16 accumulators, and per coordinate 2 column
/// loads and `TILE_ROWS` broadcasts for 16 FMAs (a 4 × 8 tile did 5 loads for
/// 4 FMAs and waited on the loads).
#[cfg(target_arch = "x86_64")]
const TILE_ROWS: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sq_dists_block_avx512(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    ends: Option<&[usize]>,
    out: &mut [f64],
) {
    let nr = row_norms.len();
    let full_rows = nr - nr % TILE_ROWS;
    // SAFETY: the caller's (features, and the lengths sq_dists_block asserted).
    unsafe {
        tiles_avx512(rows, row_norms, cols_t, col_norms, dim, ends, full_rows, out);
        single_rows_avx512(rows, row_norms, cols_t, col_norms, dim, ends, full_rows, out);
    }
}

/// Of the columns c..c + 8, the lanes that exist among `nc` (none past the end).
#[cfg(target_arch = "x86_64")]
fn lanes8(c: usize, nc: usize) -> __mmask8 {
    if c + 8 <= nc {
        0xFF
    } else if c >= nc {
        0
    } else {
        (1u8 << (nc - c)) - 1
    }
}

/// Row r's squared distances to the columns c0.. under `k8`,
/// max(0, ‖x‖² + ‖y‖² − 2·acc), stored at `out` (row r's column c0).
///
/// # Safety
/// AVX-512F; `out` and `col_norms[c0..]` hold the lanes under `k8` (the
/// pointers past them are never dereferenced).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_dists_avx512(acc: __m512d, row_norm: f64, col_norms: &[f64], c0: usize, k8: __mmask8, out: *mut f64) {
    // SAFETY: the caller's.
    unsafe {
        let base = _mm512_add_pd(
            _mm512_maskz_loadu_pd(k8, col_norms.as_ptr().wrapping_add(c0)),
            _mm512_set1_pd(row_norm),
        );
        let d = _mm512_max_pd(_mm512_fnmadd_pd(_mm512_set1_pd(2.0), acc, base), _mm512_setzero_pd());
        _mm512_mask_storeu_pd(out, k8, d);
    }
}

/// [`sq_dists_block_avx512`]'s rows 0..full_rows (a multiple of
/// [`TILE_ROWS`]), by register tiles of [`TILE_ROWS`] × 16.
///
/// # Safety
/// AVX-512F; the lengths [`sq_dists_block`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx512(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    ends: Option<&[usize]>,
    full_rows: usize,
    out: &mut [f64],
) {
    let nc = col_norms.len();
    let (pr, pt, po) = (rows.as_ptr(), cols_t.as_ptr(), out.as_mut_ptr());
    let zero = _mm512_setzero_pd();
    // Column panels as on AVX2: without them, wide points (d = 384: 3 MB of
    // columns) streamed every column from memory once per row tile, and
    // this path was slower than AVX2's.
    let width = panel_columns(dim, 16);
    // SAFETY (all loads and stores below): rows r < full_rows and k < dim,
    // and only columns under the masks (< nc), inside the lengths asserted.
    unsafe {
        for panel in (0..nc).step_by(width) {
            let panel_end = (panel + width).min(nc);
            for r0 in (0..full_rows).step_by(TILE_ROWS) {
                let end = ends.map_or(panel_end, |e| tile_end(&e[r0..r0 + TILE_ROWS]).min(panel_end));
                let x: [*const f64; TILE_ROWS] = std::array::from_fn(|r| pr.add((r0 + r) * dim));
                let mut c0 = panel;
                while c0 < end {
                    let (k0, k1) = (lanes8(c0, nc), lanes8(c0 + 8, nc));
                    let mut acc = [[zero; 2]; TILE_ROWS];
                    for k in 0..dim {
                        let t0 = _mm512_maskz_loadu_pd(k0, pt.wrapping_add(k * nc + c0));
                        let t1 = _mm512_maskz_loadu_pd(k1, pt.wrapping_add(k * nc + c0 + 8));
                        for (a, xr) in acc.iter_mut().zip(&x) {
                            let b = _mm512_set1_pd(*xr.add(k));
                            a[0] = _mm512_fmadd_pd(b, t0, a[0]);
                            a[1] = _mm512_fmadd_pd(b, t1, a[1]);
                        }
                    }
                    for (r, a) in acc.iter().enumerate() {
                        let (row, at) = (r0 + r, po.wrapping_add((r0 + r) * nc + c0));
                        store_dists_avx512(a[0], row_norms[row], col_norms, c0, k0, at);
                        store_dists_avx512(a[1], row_norms[row], col_norms, c0 + 8, k1, at.wrapping_add(8));
                    }
                    c0 += 16;
                }
            }
        }
    }
}

/// [`sq_dists_block_avx512`]'s rows from `r0` on (fewer than a tile), one
/// at a time.
///
/// # Safety
/// AVX-512F; the lengths [`sq_dists_block`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn single_rows_avx512(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    ends: Option<&[usize]>,
    r0: usize,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    let (pt, po) = (cols_t.as_ptr(), out.as_mut_ptr());
    for r in r0..nr {
        let x = &rows[r * dim..(r + 1) * dim];
        let end = ends.map_or(nc, |e| e[r].min(nc));
        for c0 in (0..end).step_by(8) {
            let k8 = lanes8(c0, nc);
            let mut a = _mm512_setzero_pd();
            // SAFETY: k < dim, and only columns under k8 (< nc) are read
            // or written, inside the lengths asserted.
            unsafe {
                for (k, &xk) in x.iter().enumerate() {
                    let t = _mm512_maskz_loadu_pd(k8, pt.wrapping_add(k * nc + c0));
                    a = _mm512_fmadd_pd(_mm512_set1_pd(xk), t, a);
                }
                store_dists_avx512(a, row_norms[r], col_norms, c0, k8, po.wrapping_add(r * nc + c0));
            }
        }
    }
}

// exp, shared by the SIMD paths. ln 2 = LN2_HI + LN2_LO, LN2_HI with its low
// bits zero so k·LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
/// Below this argument e^x underflows to 0 (and 2^k would leave the normal range).
const EXP_FLOOR: f64 = -708.0;
/// 1.5·2⁵²: x + SHIFT rounds x to an integer k (ties to even) and leaves
/// k in the low bits of the sum's mantissa (k + 2⁵¹ there, for |k| < 2⁵¹),
/// so one multiply-add gives k and the bits of the scale, without a
/// rounding instruction or a float-to-integer conversion.
const EXP_SHIFT: f64 = 6_755_399_441_055_744.0;
/// 4/ln 2: k = round(x·4/ln 2).
const EXP_K_PER_UNIT: f64 = 4.0 * std::f64::consts::LOG2_E;
/// ln2/4 = LN2_HI/4 + LN2_LO/4 (exact scalings: k·LN2_HI/4 stays exact).
const LN2_4_HI: f64 = LN2_HI / 4.0;
const LN2_4_LO: f64 = LN2_LO / 4.0;
/// 2^(j/4) for j = 0..4, correctly rounded (the shortest decimals that give
/// those doubles; checked by a test), twice: the AVX-512 permute
/// takes an index's low three bits, k's low two then select the same entry.
const EXP_TABLE: [f64; 8] = {
    let t = [
        1.0,
        1.189_207_115_002_721,
        std::f64::consts::SQRT_2,
        1.681_792_830_507_429,
    ];
    [t[0], t[1], t[2], t[3], t[0], t[1], t[2], t[3]]
};
/// Degree of the polynomial for e^r on |r| ≤ ln2/8: the next term,
/// (ln2/8)¹⁰/10!, is below 1e-17.
const EXP_DEGREE: usize = 9;
/// 1/k! for k = 0..=EXP_DEGREE, the Taylor coefficients of e^r.
const INV_FACT: [f64; EXP_DEGREE + 1] = {
    let mut t = [1.0f64; EXP_DEGREE + 1];
    let mut k = 1;
    while k <= EXP_DEGREE {
        t[k] = t[k - 1] / k as f64;
        k += 1;
    }
    t
};

/// x ← e^{−γ·x} for every element (x ≥ 0: squared distances).
pub fn gaussian_in_place(x: &mut [f64], gamma: f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present.
        unsafe { gaussian_avx512(x, gamma) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sq_dist`.
        unsafe { gaussian_avx2(x, gamma) };
        return;
    }
    gaussian_portable(x, gamma);
}

/// The AVX2 path's arithmetic, operation for operation (fused multiply-adds
/// as `mul_add`), so that it gives the same bits; branch-free, so the
/// compiler vectorises it where the target has vectors and FMA (NEON).
fn gaussian_portable(x: &mut [f64], gamma: f64) {
    for v in x {
        let raw = -gamma * *v;
        let arg = raw.max(EXP_FLOOR);
        let shifted = arg.mul_add(EXP_K_PER_UNIT, EXP_SHIFT);
        let k = shifted - EXP_SHIFT;
        let r = (-k).mul_add(LN2_4_LO, (-k).mul_add(LN2_4_HI, arg));
        let mut p = INV_FACT[EXP_DEGREE];
        for c in INV_FACT[..EXP_DEGREE].iter().rev() {
            p = p.mul_add(r, *c);
        }
        // 2^(k/4) = 2^((k mod 4)/4)·2^⌊k/4⌋: the table's entry (in [1, 2))
        // with ⌊k/4⌋ added to its exponent. k ≥ −4086 after the floor, so
        // the exponent stays normal. The mantissa's low bits are 2⁵¹ + k:
        // its two lowest are k mod 4, and the others shifted by 50 wrap to
        // ⌊k/4⌋·2⁵².
        // The entry by selects, not by an index: an indexed load from the
        // table kept the loop scalar on aarch64 (checked in its assembly).
        let bits = shifted.to_bits();
        let odd = bits & 1 != 0;
        let low = if odd { EXP_TABLE[1] } else { EXP_TABLE[0] };
        let high = if odd { EXP_TABLE[3] } else { EXP_TABLE[2] };
        let entry = if bits & 2 != 0 { high } else { low }.to_bits();
        let scale = f64::from_bits(entry.wrapping_add((bits & !3) << 50));
        *v = if raw < EXP_FLOOR { 0.0 } else { p * scale };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sq_dist_avx2(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    let mut s = _mm256_setzero_pd();
    let mut i = 0;
    // SAFETY (loads): i + 4 ≤ n = a.len() = b.len().
    unsafe {
        while i + 4 <= n {
            let d = _mm256_sub_pd(_mm256_loadu_pd(a.as_ptr().add(i)), _mm256_loadu_pd(b.as_ptr().add(i)));
            s = _mm256_fmadd_pd(d, d, s);
            i += 4;
        }
    }
    let mut t = hsum(s);
    for j in i..n {
        t += (a[j] - b[j]) * (a[j] - b[j]);
    }
    t
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256d) -> f64 {
    let mut out = [0.0f64; 4];
    // SAFETY: `out` holds 4 f64.
    unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
    (out[0] + out[1]) + (out[2] + out[3])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gaussian_avx2(x: &mut [f64], gamma: f64) {
    let n = x.len();
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 ≤ n.
        unsafe {
            let v = _mm256_loadu_pd(x.as_ptr().add(i));
            _mm256_storeu_pd(x.as_mut_ptr().add(i), gaussian4_avx2(v, gamma));
        }
        i += 4;
    }
    if i < n {
        // The last values in a padded vector: the same operations, so a
        // value's bits do not depend on where in the slice it falls.
        let mut last = [0.0f64; 4];
        last[..n - i].copy_from_slice(&x[i..]);
        // SAFETY: `last` holds 4 f64.
        unsafe {
            let y = gaussian4_avx2(_mm256_loadu_pd(last.as_ptr()), gamma);
            _mm256_storeu_pd(last.as_mut_ptr(), y);
        }
        x[i..].copy_from_slice(&last[..n - i]);
    }
}

/// e^{−γ·v} in four lanes (see the module's note on exp).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gaussian4_avx2(v: __m256d, gamma: f64) -> __m256d {
    let neg_gamma = _mm256_set1_pd(-gamma);
    let floor = _mm256_set1_pd(EXP_FLOOR);
    let raw = _mm256_mul_pd(neg_gamma, v);
    let arg = _mm256_max_pd(raw, floor);
    let shift = _mm256_set1_pd(EXP_SHIFT);
    let shifted = _mm256_fmadd_pd(arg, _mm256_set1_pd(EXP_K_PER_UNIT), shift);
    let k = _mm256_sub_pd(shifted, shift);
    let r = _mm256_fnmadd_pd(
        k,
        _mm256_set1_pd(LN2_4_LO),
        _mm256_fnmadd_pd(k, _mm256_set1_pd(LN2_4_HI), arg),
    );
    // Horner, from 1/9! down to 1/0!.
    let mut p = _mm256_set1_pd(INV_FACT[EXP_DEGREE]);
    for c in INV_FACT[..EXP_DEGREE].iter().rev() {
        p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(*c));
    }
    // The scale, as in `gaussian_portable`. The entry by `vpermps`, whose
    // index takes a 32-bit half a lane: 2·(k mod 4) in the low half (from
    // the low bits of 2·bits), then copied to the high one and made odd.
    let bits = _mm256_castpd_si256(shifted);
    let twice = _mm256_add_epi64(bits, bits);
    let pair = _mm256_shuffle_epi8(
        twice,
        _mm256_setr_epi8(
            0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11, 0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11,
        ),
    );
    let index = _mm256_or_si256(pair, _mm256_set1_epi64x(1 << 32));
    // SAFETY: EXP_TABLE holds 8 f64; its first 4 are read.
    let table = _mm256_castpd_ps(unsafe { _mm256_loadu_pd(EXP_TABLE.as_ptr()) });
    let entry = _mm256_castps_si256(_mm256_permutevar8x32_ps(table, index));
    let scale = _mm256_add_epi64(
        entry,
        _mm256_slli_epi64::<50>(_mm256_and_si256(bits, _mm256_set1_epi64x(!3))),
    );
    let y = _mm256_mul_pd(p, _mm256_castsi256_pd(scale));
    // Arguments below the floor underflow to 0, as exp would.
    let under = _mm256_cmp_pd(raw, floor, _CMP_LT_OQ);
    _mm256_andnot_pd(under, y)
}

/// As `gaussian_avx2`, eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gaussian_avx512(x: &mut [f64], gamma: f64) {
    let n = x.len();
    let neg_gamma = _mm512_set1_pd(-gamma);
    let per_unit = _mm512_set1_pd(EXP_K_PER_UNIT);
    let shift = _mm512_set1_pd(EXP_SHIFT);
    let (hi, lo) = (_mm512_set1_pd(LN2_4_HI), _mm512_set1_pd(LN2_4_LO));
    let c: [__m512d; EXP_DEGREE + 1] = INV_FACT.map(|v| _mm512_set1_pd(v));
    // SAFETY: EXP_TABLE holds 8 f64.
    let table = unsafe { _mm512_loadu_pd(EXP_TABLE.as_ptr()) };
    let high_bits = _mm512_set1_epi64(!3);
    let floor = _mm512_set1_pd(EXP_FLOOR);
    let mut i = 0;
    while i < n {
        let left = n - i;
        let k8: __mmask8 = if left >= 8 { 0xFF } else { (1u8 << left) - 1 };
        // SAFETY: lanes under k8 are < n.
        let v = unsafe { _mm512_maskz_loadu_pd(k8, x.as_ptr().add(i)) };
        let raw = _mm512_mul_pd(neg_gamma, v);
        let arg = _mm512_max_pd(raw, floor);
        let shifted = _mm512_fmadd_pd(arg, per_unit, shift);
        let k = _mm512_sub_pd(shifted, shift);
        let r = _mm512_fnmadd_pd(k, lo, _mm512_fnmadd_pd(k, hi, arg));
        let mut p = c[9];
        p = _mm512_fmadd_pd(p, r, c[8]);
        p = _mm512_fmadd_pd(p, r, c[7]);
        p = _mm512_fmadd_pd(p, r, c[6]);
        p = _mm512_fmadd_pd(p, r, c[5]);
        p = _mm512_fmadd_pd(p, r, c[4]);
        p = _mm512_fmadd_pd(p, r, c[3]);
        p = _mm512_fmadd_pd(p, r, c[2]);
        p = _mm512_fmadd_pd(p, r, c[1]);
        p = _mm512_fmadd_pd(p, r, c[0]);
        // The scale, as in `gaussian_portable` (the permute takes the low
        // three bits of each lane: k mod 4 in the doubled table).
        let bits = _mm512_castpd_si512(shifted);
        let entry = _mm512_castpd_si512(_mm512_permutexvar_pd(bits, table));
        let scale = _mm512_add_epi64(entry, _mm512_slli_epi64::<50>(_mm512_and_si512(bits, high_bits)));
        let y = _mm512_mul_pd(p, _mm512_castsi512_pd(scale));
        // Arguments below the floor underflow to 0, as exp would.
        let keep = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(raw, floor);
        // SAFETY: lanes under k8 are < n.
        unsafe { _mm512_mask_storeu_pd(x.as_mut_ptr().add(i), k8, _mm512_maskz_mov_pd(keep, y)) };
        i += 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of the fixed-point set sums against the plain definition:
    /// sets of different shapes, lengths around the lane widths, and values
    /// at the top of the range.
    #[test]
    fn fixed_set_sums() {
        let row: Vec<u8> = (0..2100)
            .map(|i| if i % 7 == 0 { 255 } else { ((i * 7919) % 256) as u8 })
            .collect();
        let every = vec![1i8; row.len()];
        let none = vec![0i8; row.len()];
        let sparse: Vec<i8> = (0..row.len()).map(|t| i8::from(t % 3 == 0 || t % 64 == 17)).collect();
        let sets: [&[i8]; 3] = [&every, &none, &sparse];
        for len in [0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1025, 2100] {
            let r = &row[..len];
            let want = sets.map(|b| (0..len).map(|t| i64::from(r[t]) * i64::from(b[t])).sum::<i64>());
            assert_eq!(want[0], r.iter().map(|&v| i64::from(v)).sum::<i64>());
            // One piece at column 0, and the row cut in two pieces at
            // columns that are not multiples of the lane widths.
            let cut = len / 3;
            let in_two = [(0, &r[..cut]), (cut, &r[cut..])];
            for pieces in [&[(0, r)][..], &in_two] {
                set_sums_on_every_path(pieces, sets, want, len);
            }
            // Columns that end with the row (the AVX2 path reads its last
            // vector back from there), and columns that go on past it with
            // values that must not be added.
            let exact = sets.map(|b| &b[..len]);
            let past: Vec<i8> = (0..len + 40).map(|t| if t < len { sparse[t] } else { 1 }).collect();
            for (cols, what) in [
                ([exact[0], exact[1], exact[2]], "exact"),
                ([&every[..], &none, &past], "past"),
            ] {
                assert_eq!(set_sums(&[(0, r)], cols), want, "{what} columns, len {len}");
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: feature checked.
                    assert_eq!(
                        unsafe { set_sums_avx2(&[(0, r)], cols) },
                        want,
                        "avx2, {what} columns, len {len}"
                    );
                }
            }
            // A piece that starts at a later column reads the sets from there.
            if len > 0 {
                let shifted: Vec<i8> = [vec![1i8; 5], sparse[..len].to_vec()].concat();
                assert_eq!(set_sums(&[(5, r)], [&shifted[..]]), [want[2]], "shifted, len {len}");
            }
        }
    }

    /// [`set_sums`] of `pieces` is `want` on every path this CPU runs.
    fn set_sums_on_every_path(pieces: &[Piece], sets: [&[i8]; 3], want: [i64; 3], len: usize) {
        assert_eq!(set_sums_portable(pieces, sets), want, "portable, len {len}");
        assert_eq!(set_sums(pieces, sets), want, "len {len}");
        assert_eq!(set_sums(pieces, [sets[2]]), [want[2]], "one set, len {len}");
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512bw() {
                // SAFETY: features checked.
                assert_eq!(unsafe { set_sums_avx512(pieces, sets) }, want, "avx512, len {len}");
            }
            if has_avx2() {
                // SAFETY: feature checked.
                assert_eq!(unsafe { set_sums_avx2(pieces, sets) }, want, "avx2, len {len}");
            }
        }
    }

    /// Past the i16 and i32 flush intervals, at the largest values.
    #[test]
    fn set_sums_flush_before_they_overflow() {
        let long = vec![255u8; FIXED_FLUSH + 40];
        let ones = vec![1i8; long.len()];
        let want = [long.len() as i64 * 255];
        assert_eq!(set_sums(&[(0, &long)], [&ones]), want);
        assert_eq!(set_sums_portable(&[(0, &long)], [&ones]), want);
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: feature checked.
            assert_eq!(unsafe { set_sums_avx2(&[(0, &long)], [&ones]) }, want);
        }
    }

    /// Rounding to nearest, ties to even (0.5 and 0.7 scale to 127.5 and
    /// 178.5 exactly), on every path and in the tail.
    #[test]
    fn fixed_point_rounds_to_nearest_even() {
        let xs: Vec<f64> = (0..21)
            .map(|i| [0.0, 1.0, 0.5, 1.0 / 3.0, 0.25, 0.75, 0.7][i % 7])
            .collect();
        let want: Vec<u8> = (0..21).map(|i| [0, 255, 128, 85, 64, 191, 178][i % 7]).collect();
        for len in [0, 3, 8, 21] {
            let mut fixed = vec![7];
            to_fixed(&xs[..len], &mut fixed);
            assert_eq!(fixed[1..], want[..len], "len {len}");
            let portable: Vec<u8> = xs[..len].iter().map(|x| fixed_one(*x)).collect();
            assert_eq!(portable, want[..len]);
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                let mut fixed = vec![];
                // SAFETY: feature checked.
                unsafe { to_fixed_avx2(&xs[..len], &mut fixed) };
                assert_eq!(fixed, want[..len]);
            }
        }
    }

    #[test]
    fn sums() {
        for n in [0usize, 1, 7, 8, 33, 100] {
            let x: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
            assert_eq!(sum(&x), x.iter().sum::<f64>(), "n = {n}");
        }
    }

    /// Points for the distance kernels: rows and columns (row-major, `dim`
    /// coordinates), their squared norms, the columns transposed, and the
    /// block of squared distances by the dispatched path.
    struct DistCase {
        dim: usize,
        nr: usize,
        nc: usize,
        rows: Vec<f64>,
        cols: Vec<f64>,
        rn: Vec<f64>,
        cn: Vec<f64>,
        t: Vec<f64>,
        out: Vec<f64>,
    }

    impl DistCase {
        fn new(dim: usize, nr: usize, nc: usize) -> Self {
            let rows: Vec<f64> = (0..nr * dim).map(|i| (i as f64 * 0.37).sin()).collect();
            let cols: Vec<f64> = (0..nc * dim).map(|i| (i as f64 * 0.11).cos()).collect();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
            let rn: Vec<f64> = rows.chunks(dim).map(norm).collect();
            let cn: Vec<f64> = cols.chunks(dim).map(norm).collect();
            let t = transposed(&cols, dim);
            let mut out = vec![-1.0; nr * nc];
            sq_dists_block(&rows, &rn, &t, &cn, dim, None, &mut out);
            Self {
                dim,
                nr,
                nc,
                rows,
                cols,
                rn,
                cn,
                t,
                out,
            }
        }

        fn row(&self, r: usize) -> &[f64] {
            &self.rows[r * self.dim..(r + 1) * self.dim]
        }

        /// Every entry of `block` (one of this case's, by some path) within
        /// the cancellation error of ‖x‖² + ‖y‖² − 2x·y of the direct one.
        fn check_direct(&self, block: &[f64], path: &str) {
            let (dim, nr, nc) = (self.dim, self.nr, self.nc);
            for r in 0..nr {
                for c in 0..nc {
                    let want = sq_dist(self.row(r), &self.cols[c * dim..(c + 1) * dim]);
                    let tol = 1e-14 * (1.0 + self.rn[r] + self.cn[c]);
                    assert!((block[r * nc + c] - want).abs() < tol, "{path} ({r},{c}) of {nr}×{nc}");
                }
            }
        }
    }

    /// `points` (row-major, `dim` coordinates) transposed: `dim` rows.
    fn transposed(points: &[f64], dim: usize) -> Vec<f64> {
        let count = points.len() / dim;
        let mut t = vec![0.0; count * dim];
        for c in 0..count {
            for k in 0..dim {
                t[k * count + c] = points[c * dim + k];
            }
        }
        t
    }

    /// The sizes the distance kernels are tested on.
    fn dist_cases() -> impl Iterator<Item = DistCase> {
        // 1100 coordinates make column panels of 16 (AVX-512) and 8 (AVX2)
        // columns, so the wider blocks below span several panels.
        let wide = [(1100, (17usize, 40usize)), (1100, (9, 33))];
        let small = [
            (1usize, 1usize),
            (3, 7),
            (4, 8),
            (9, 17),
            (13, 3),
            (8, 16),
            (17, 17),
            (33, 33),
            (21, 40),
        ];
        wide.into_iter()
            .chain(small.map(|size| (5, size)))
            .map(|(dim, (nr, nc))| DistCase::new(dim, nr, nc))
    }

    #[test]
    fn block_distances_match_direct_ones() {
        for case in dist_cases() {
            let (nr, nc, dim) = (case.nr, case.nc, case.dim);
            case.check_direct(&case.out, "dispatched");
            // The GEMM and AVX2 paths on their own (the dispatch above may take AVX-512).
            let mut by_gemm = vec![-1.0; nr * nc];
            sq_dists_block_gemm(&case.rows, &case.rn, &case.t, &case.cn, dim, &mut by_gemm);
            case.check_direct(&by_gemm, "gemm");
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                let mut o = vec![-1.0; nr * nc];
                // SAFETY: features checked; sizes as above.
                unsafe { sq_dists_block_avx2(&case.rows, &case.rn, &case.t, &case.cn, dim, None, &mut o) };
                case.check_direct(&o, "avx2");
            }
        }
    }

    /// An entry is the same bit for bit wherever its column falls in a
    /// block (a slide recomputes pairs at other positions).
    #[test]
    fn a_distance_does_not_depend_on_its_column_s_place() {
        for case in dist_cases().filter(|c| c.nc > 3) {
            let (nr, nc, dim, t) = (case.nr, case.nc, case.dim, &case.t);
            let shifted: Vec<f64> = (0..dim).flat_map(|k| t[k * nc + 3..(k + 1) * nc].to_vec()).collect();
            let mut o = vec![-1.0; nr * (nc - 3)];
            sq_dists_block(&case.rows, &case.rn, &shifted, &case.cn[3..], dim, None, &mut o);
            for r in 0..nr {
                assert_eq!(
                    o[r * (nc - 3)..(r + 1) * (nc - 3)],
                    case.out[r * nc + 3..(r + 1) * nc],
                    "row {r}"
                );
            }
        }
    }

    /// The lower triangle alone (the same points on both sides).
    #[test]
    fn lower_triangles_match_direct_distances() {
        for case in dist_cases().filter(|c| c.nr == c.nc) {
            let (nr, dim, rn) = (case.nr, case.dim, &case.rn);
            let t = transposed(&case.rows, dim);
            let mut low = vec![-1.0; nr * nr];
            let diagonal: Vec<usize> = (0..nr).collect();
            sq_dists_block(&case.rows, rn, &t, rn, dim, Some(&diagonal), &mut low);
            for r in 0..nr {
                for c in 0..r {
                    let want = sq_dist(case.row(r), case.row(c));
                    let tol = 1e-14 * (1.0 + rn[r] + rn[c]);
                    assert!((low[r * nr + c] - want).abs() < tol, "lower ({r},{c}) of {nr}");
                }
            }
        }
    }

    /// Ends in no order (a window's new events at any positions): each
    /// row's entries before its end, bit for bit the full block's.
    #[test]
    fn rows_cut_at_their_ends_match_the_full_block() {
        for case in dist_cases() {
            let (nr, nc) = (case.nr, case.nc);
            let ends: Vec<usize> = (0..nr).map(|r| (r * 7 + 3) % (nc + 2)).collect();
            let mut part = vec![-1.0; nr * nc];
            sq_dists_block(
                &case.rows,
                &case.rn,
                &case.t,
                &case.cn,
                case.dim,
                Some(&ends),
                &mut part,
            );
            for r in 0..nr {
                let end = ends[r].min(nc);
                assert_eq!(
                    part[r * nc..r * nc + end],
                    case.out[r * nc..r * nc + end],
                    "row {r} to {end}"
                );
            }
        }
    }

    #[test]
    fn exp_table_is_two_to_the_quarters() {
        for (j, entry) in EXP_TABLE.iter().enumerate() {
            let want = 2f64.powf((j % 4) as f64 / 4.0);
            // An ulp: the table's error and powf's together.
            assert!((entry - want).abs() <= f64::EPSILON, "entry {j}");
        }
    }

    /// The exponential's bits over a dense grid, hashed (FNV-1a): the
    /// same on every architecture and path, so that a kernel matrix, its
    /// fixed-point bytes and the p-values do not depend on the CPU. The
    /// constant was computed on x86_64; scripts/check-aarch64.sh runs this
    /// test on aarch64 (under QEMU).
    #[test]
    fn exp_bits_are_the_same_on_every_architecture() {
        let mut x: Vec<f64> = (0..20_011).map(|i| i as f64 * 0.0272).collect();
        gaussian_in_place(&mut x, 1.3);
        let mut portable: Vec<f64> = (0..20_011).map(|i| i as f64 * 0.0272).collect();
        gaussian_portable(&mut portable, 1.3);
        let fnv = |v: &[f64]| {
            v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
                (h ^ x.to_bits()).wrapping_mul(0x0100_0000_01b3)
            })
        };
        assert_eq!(fnv(&x), fnv(&portable), "the dispatched path and the portable one");
        assert_eq!(fnv(&portable), 0x749b_fe4c_ff6c_4a5c, "{:#x}", fnv(&portable));
    }

    #[test]
    fn sq_dist_agrees_with_scalar() {
        let a: Vec<f64> = (0..37).map(|i| (i as f64 * 0.7).sin()).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64 * 0.3).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((sq_dist(&a, &b) - want).abs() < 1e-13);
    }

    /// Arguments from 0 to near the floor (−708 at 544.6), densely, then
    /// below it.
    fn exp_arguments() -> Vec<f64> {
        (0..20_011)
            .map(|i| i as f64 * 0.0272)
            .chain((0..200).map(|i| 540.0 + i as f64 * 0.0231))
            .chain([0.0, 1e-300, 800.0, 1e6])
            .collect()
    }

    /// Each of `ys`, e^(−1.3·x) of `xs`, within 4 ulp of std's.
    fn within_4_ulp(xs: &[f64], ys: &[f64], path: &str) {
        assert_eq!(xs.len(), ys.len());
        for (o, y) in xs.iter().zip(ys) {
            let want = (-1.3 * o).exp();
            assert!(
                (y - want).abs() <= 4.0 * f64::EPSILON * want,
                "{path}: exp(-1.3·{o}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn gaussians_are_within_4_ulp_on_every_path() {
        let orig = exp_arguments();
        let mut x = orig.clone();
        gaussian_in_place(&mut x, 1.3);
        within_4_ulp(&orig, &x, "dispatched");
        let mut portable = orig.clone();
        gaussian_portable(&mut portable, 1.3);
        within_4_ulp(&orig, &portable, "portable");
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // The AVX2 path on its own (the dispatch may take AVX-512).
            let mut y = orig.clone();
            // SAFETY: feature checked.
            unsafe { gaussian_avx2(&mut y, 1.3) };
            within_4_ulp(&orig, &y, "avx2");
        }
    }

    /// Same operations, same bits: a kernel matrix does not depend on the
    /// path that computed it.
    #[test]
    fn gaussians_have_the_same_bits_on_every_path() {
        let orig = exp_arguments();
        let mut portable = orig.clone();
        gaussian_portable(&mut portable, 1.3);
        let same = |y: &[f64]| y.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut y = orig.clone();
            // SAFETY: feature checked.
            unsafe { gaussian_avx2(&mut y, 1.3) };
            assert!(same(&y), "avx2");
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            let mut z = orig.clone();
            // SAFETY: feature checked.
            unsafe { gaussian_avx512(&mut z, 1.3) };
            assert!(same(&z), "avx512");
        }
        let mut x = orig.clone();
        gaussian_in_place(&mut x, 1.3);
        assert!(same(&x), "dispatched");
    }

    /// A value's bits do not depend on where in a slice it falls (the last
    /// values of a slice, fewer than a vector, included): a slide computes
    /// kernel rows in other slices than a restart.
    #[test]
    fn a_gaussian_s_bits_do_not_depend_on_its_place() {
        let moderate: Vec<f64> = (0..23).map(|i| 0.37 * i as f64 + 0.011).collect();
        let mut whole = moderate.clone();
        gaussian_in_place(&mut whole, 0.7);
        for start in 0..5 {
            for end in [moderate.len(), moderate.len() - 1, moderate.len() - 2, start + 5] {
                let mut part = moderate[start..end].to_vec();
                gaussian_in_place(&mut part, 0.7);
                let same = part
                    .iter()
                    .zip(&whole[start..end])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "values {start}..{end}");
            }
        }
    }
}
