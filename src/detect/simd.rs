//! The MMD kernel's inner loops — squared distances, exp of a row, sums and
//! masked row sums — with AVX-512 or AVX2/FMA paths chosen at run time and a
//! portable fallback.
//! Explicit intrinsics, so the speed does not depend on the optimisation
//! level the crate is built at.
//!
//! exp: x = n·ln2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln2), e^r by its
//! Taylor polynomial to degree 12 (truncation below 2e-16), times 2ⁿ built
//! in the exponent bits. Accurate to a few ulp, which the MMD tests need
//! (the statistic is a difference of large sums).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
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

/// Σ_t row[t] over the t whose bit `first_bit + t` is set in `bits`.
pub fn masked_sum(row: &[f64], bits: &[u64], first_bit: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present.
        return unsafe { masked_sum_avx512(row, bits, first_bit) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `sq_dist`.
        return unsafe { masked_sum_avx2(row, bits, first_bit) };
    }
    row.iter()
        .enumerate()
        .filter(|(t, _)| {
            let p = first_bit + t;
            bits[p >> 6] >> (p & 63) & 1 == 1
        })
        .map(|(_, v)| v)
        .sum()
}

/// 64 bits of `bits` starting at bit `p` (zeros past the end).
#[inline(always)]
fn bits_at(bits: &[u64], p: usize) -> u64 {
    let (w, o) = (p >> 6, p & 63);
    let lo = if w < bits.len() { bits[w] >> o } else { 0 };
    let hi = if o != 0 && w + 1 < bits.len() {
        bits[w + 1] << (64 - o)
    } else {
        0
    };
    lo | hi
}

/// The mask bits drive the lanes directly: one masked add per 8 values.
/// Written out by hand (four accumulators in registers, 64 values per mask
/// word) so the speed does not depend on the crate's optimisation level.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn masked_sum_avx512(row: &[f64], bits: &[u64], first_bit: usize) -> f64 {
    let n = row.len();
    let p = row.as_ptr();
    let (mut a0, mut a1, mut a2, mut a3) = (
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
        _mm512_setzero_pd(),
    );
    let mut t = 0;
    // SAFETY (loads): t + 64 ≤ n in the main loop; the tail's lanes are masked to < n.
    unsafe {
        while t + 64 <= n {
            let w = bits_at(bits, first_bit + t);
            let q = p.add(t);
            a0 = _mm512_mask_add_pd(a0, w as u8, a0, _mm512_loadu_pd(q));
            a1 = _mm512_mask_add_pd(a1, (w >> 8) as u8, a1, _mm512_loadu_pd(q.add(8)));
            a2 = _mm512_mask_add_pd(a2, (w >> 16) as u8, a2, _mm512_loadu_pd(q.add(16)));
            a3 = _mm512_mask_add_pd(a3, (w >> 24) as u8, a3, _mm512_loadu_pd(q.add(24)));
            a0 = _mm512_mask_add_pd(a0, (w >> 32) as u8, a0, _mm512_loadu_pd(q.add(32)));
            a1 = _mm512_mask_add_pd(a1, (w >> 40) as u8, a1, _mm512_loadu_pd(q.add(40)));
            a2 = _mm512_mask_add_pd(a2, (w >> 48) as u8, a2, _mm512_loadu_pd(q.add(48)));
            a3 = _mm512_mask_add_pd(a3, (w >> 56) as u8, a3, _mm512_loadu_pd(q.add(56)));
            t += 64;
        }
        if t < n {
            let w = bits_at(bits, first_bit + t);
            let mut off = 0;
            while t + off < n {
                let left = n - t - off;
                let valid = if left >= 8 { 0xFFu8 } else { (1u8 << left) - 1 };
                let k = ((w >> off) as u8) & valid;
                a0 = _mm512_add_pd(a0, _mm512_maskz_loadu_pd(k, p.add(t + off)));
                off += 8;
            }
        }
    }
    _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)))
}

/// [`masked_sum`] of one row under four bitsets at once: each load of the
/// row feeds four masked adds, so the row is read once for four sets.
pub fn masked_sums4(row: &[f64], bits: [&[u64]; 4], first_bit: usize) -> [f64; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present.
        return unsafe { masked_sums4_avx512(row, bits, first_bit) };
    }
    bits.map(|b| masked_sum(row, b, first_bit))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn masked_sums4_avx512(row: &[f64], bits: [&[u64]; 4], first_bit: usize) -> [f64; 4] {
    let n = row.len();
    let p = row.as_ptr();
    let z = _mm512_setzero_pd();
    // Two accumulators per set, so the adds of one set do not wait on each other.
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
    let mut t = 0;
    // SAFETY (loads): t + 16 ≤ n in the main loop; the tail's lanes are masked to < n.
    unsafe {
        while t + 64 <= n {
            let at = first_bit + t;
            let (w0, w1, w2, w3) = (
                bits_at(bits[0], at),
                bits_at(bits[1], at),
                bits_at(bits[2], at),
                bits_at(bits[3], at),
            );
            let mut g = 0;
            while g < 64 {
                let (x, y) = (_mm512_loadu_pd(p.add(t + g)), _mm512_loadu_pd(p.add(t + g + 8)));
                a0 = _mm512_mask_add_pd(a0, (w0 >> g) as u8, a0, x);
                a1 = _mm512_mask_add_pd(a1, (w1 >> g) as u8, a1, x);
                a2 = _mm512_mask_add_pd(a2, (w2 >> g) as u8, a2, x);
                a3 = _mm512_mask_add_pd(a3, (w3 >> g) as u8, a3, x);
                b0 = _mm512_mask_add_pd(b0, (w0 >> (g + 8)) as u8, b0, y);
                b1 = _mm512_mask_add_pd(b1, (w1 >> (g + 8)) as u8, b1, y);
                b2 = _mm512_mask_add_pd(b2, (w2 >> (g + 8)) as u8, b2, y);
                b3 = _mm512_mask_add_pd(b3, (w3 >> (g + 8)) as u8, b3, y);
                g += 16;
            }
            t += 64;
        }
        if t < n {
            let at = first_bit + t;
            let (w0, w1, w2, w3) = (
                bits_at(bits[0], at),
                bits_at(bits[1], at),
                bits_at(bits[2], at),
                bits_at(bits[3], at),
            );
            let mut off = 0;
            while t + off < n {
                let left = n - t - off;
                let valid = if left >= 8 { 0xFFu8 } else { (1u8 << left) - 1 };
                let x = _mm512_maskz_loadu_pd(valid, p.add(t + off));
                a0 = _mm512_mask_add_pd(a0, (w0 >> off) as u8, a0, x);
                a1 = _mm512_mask_add_pd(a1, (w1 >> off) as u8, a1, x);
                a2 = _mm512_mask_add_pd(a2, (w2 >> off) as u8, a2, x);
                a3 = _mm512_mask_add_pd(a3, (w3 >> off) as u8, a3, x);
                off += 8;
            }
        }
    }
    [
        _mm512_reduce_add_pd(_mm512_add_pd(a0, b0)),
        _mm512_reduce_add_pd(_mm512_add_pd(a1, b1)),
        _mm512_reduce_add_pd(_mm512_add_pd(a2, b2)),
        _mm512_reduce_add_pd(_mm512_add_pd(a3, b3)),
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_sum_avx2(row: &[f64], bits: &[u64], first_bit: usize) -> f64 {
    // Lane masks for each 4-bit pattern.
    const fn lut() -> [[u64; 4]; 16] {
        let mut t = [[0u64; 4]; 16];
        let mut m = 0;
        while m < 16 {
            let mut l = 0;
            while l < 4 {
                if m >> l & 1 == 1 {
                    t[m][l] = u64::MAX;
                }
                l += 1;
            }
            m += 1;
        }
        t
    }
    static LUT: [[u64; 4]; 16] = lut();
    let n = row.len();
    let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut t = 0;
    while t + 8 <= n {
        let byte = (bits_at(bits, first_bit + t) & 0xFF) as usize;
        // SAFETY: t + 8 ≤ n; nibbles index the 16-entry LUT; each entry holds 4 u64.
        unsafe {
            let m0 = _mm256_loadu_pd(LUT.get_unchecked(byte & 0xF).as_ptr() as *const f64);
            let m1 = _mm256_loadu_pd(LUT.get_unchecked(byte >> 4).as_ptr() as *const f64);
            s0 = _mm256_add_pd(s0, _mm256_and_pd(_mm256_loadu_pd(row.as_ptr().add(t)), m0));
            s1 = _mm256_add_pd(s1, _mm256_and_pd(_mm256_loadu_pd(row.as_ptr().add(t + 4)), m1));
        }
        t += 8;
    }
    let mut sum = hsum(_mm256_add_pd(s0, s1));
    for (k, v) in row.iter().enumerate().skip(t) {
        let p = first_bit + k;
        if bits.get(p >> 6).is_some_and(|w| w >> (p & 63) & 1 == 1) {
            sum += v;
        }
    }
    sum
}

/// Σ x_i with four (AVX-512: eight-lane) partial sums.
pub fn sum(x: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present.
        return unsafe { sum_avx512(x) };
    }
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
/// `out` is rows × ncols, row-major. With `lower` (rows and columns are the
/// same points) only the entries left of the diagonal, c < r, are computed;
/// the rest of `out` is left unspecified.
pub fn sq_dists_block(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    lower: bool,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    assert!(rows.len() >= nr * dim && cols_t.len() >= nc * dim && out.len() >= nr * nc);
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F present; bounds asserted above.
        unsafe { sq_dists_block_avx512(rows, row_norms, cols_t, col_norms, dim, lower, out) };
        return;
    }
    for r in 0..nr {
        let x = &rows[r * dim..(r + 1) * dim];
        for c in 0..if lower { r.min(nc) } else { nc } {
            let dot: f64 = (0..dim).map(|k| x[k] * cols_t[k * nc + c]).sum();
            out[r * nc + c] = (row_norms[r] + col_norms[c] - 2.0 * dot).max(0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Rows per register tile of [`sq_dists_block_avx512`]; each tile is
/// `TILE_ROWS` × 16 columns: 16 accumulators, and per coordinate 2 column
/// loads and `TILE_ROWS` broadcasts for 16 FMAs (a 4 × 8 tile did 5 loads for
/// 4 FMAs and waited on the loads).
const TILE_ROWS: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sq_dists_block_avx512(
    rows: &[f64],
    row_norms: &[f64],
    cols_t: &[f64],
    col_norms: &[f64],
    dim: usize,
    lower: bool,
    out: &mut [f64],
) {
    let (nr, nc) = (row_norms.len(), col_norms.len());
    let (pr, pt, po) = (rows.as_ptr(), cols_t.as_ptr(), out.as_mut_ptr());
    let zero = _mm512_setzero_pd();
    // Lanes of columns c..c+8 that exist (none past the end).
    let lanes = |c: usize| -> __mmask8 {
        if c + 8 <= nc {
            0xFF
        } else if c >= nc {
            0
        } else {
            (1u8 << (nc - c)) - 1
        }
    };
    // d = max(0, ‖x‖² + ‖y‖² − 2·acc), stored under the column mask.
    let finish = |acc: __m512d, r: usize, c0: usize, k8: __mmask8| {
        // SAFETY: r < nr, and only the lanes under k8 (columns < nc) are
        // read or written; the pointers past them are never dereferenced.
        unsafe {
            let base = _mm512_add_pd(
                _mm512_maskz_loadu_pd(k8, col_norms.as_ptr().wrapping_add(c0)),
                _mm512_set1_pd(row_norms[r]),
            );
            let d = _mm512_max_pd(_mm512_fnmadd_pd(_mm512_set1_pd(2.0), acc, base), zero);
            _mm512_mask_storeu_pd(po.wrapping_add(r * nc + c0), k8, d);
        }
    };
    let mut r0 = 0;
    // SAFETY (all loads below): rows r < nr and k < dim, and only columns
    // under the masks (< nc), inside the lengths the caller asserted.
    unsafe {
        while r0 + TILE_ROWS <= nr {
            let end = if lower { (r0 + TILE_ROWS).min(nc) } else { nc };
            let x: [*const f64; TILE_ROWS] = std::array::from_fn(|r| pr.add((r0 + r) * dim));
            let mut c0 = 0;
            while c0 < end {
                let (k0, k1) = (lanes(c0), lanes(c0 + 8));
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
                    finish(a[0], r0 + r, c0, k0);
                    finish(a[1], r0 + r, c0 + 8, k1);
                }
                c0 += 16;
            }
            r0 += TILE_ROWS;
        }
        while r0 < nr {
            let x = pr.add(r0 * dim);
            let end = if lower { r0.min(nc) } else { nc };
            let mut c0 = 0;
            while c0 < end {
                let k8 = lanes(c0);
                let mut a = zero;
                for k in 0..dim {
                    a = _mm512_fmadd_pd(
                        _mm512_set1_pd(*x.add(k)),
                        _mm512_maskz_loadu_pd(k8, pt.wrapping_add(k * nc + c0)),
                        a,
                    );
                }
                finish(a, r0, c0, k8);
                c0 += 8;
            }
            r0 += 1;
        }
    }
}

// exp, shared by the SIMD paths. ln 2 = LN2_HI + LN2_LO, LN2_HI with its low
// bits zero so k·LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
/// Below this argument e^x underflows to 0 (and 2^k would leave the normal range).
const EXP_FLOOR: f64 = -708.0;
/// 1/k! for k = 0..=12, the Taylor coefficients of e^r.
const INV_FACT: [f64; 13] = {
    let mut t = [1.0f64; 13];
    let mut k = 1;
    while k < 13 {
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
    for v in x {
        *v = (-gamma * *v).exp();
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
    let neg_gamma = _mm256_set1_pd(-gamma);
    let log2e = _mm256_set1_pd(std::f64::consts::LOG2_E);
    let (hi, lo) = (_mm256_set1_pd(LN2_HI), _mm256_set1_pd(LN2_LO));
    let floor = _mm256_set1_pd(EXP_FLOOR);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 ≤ n.
        let v = unsafe { _mm256_loadu_pd(x.as_ptr().add(i)) };
        let arg = _mm256_max_pd(_mm256_mul_pd(neg_gamma, v), floor);
        let k = _mm256_round_pd(_mm256_mul_pd(arg, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_pd(k, lo, _mm256_fnmadd_pd(k, hi, arg));
        // Horner, from 1/12! down to 1/0!.
        let mut p = _mm256_set1_pd(INV_FACT[12]);
        for c in INV_FACT[..12].iter().rev() {
            p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(*c));
        }
        // 2^k: k in [−1022, 0] after the floor, so the biased exponent is valid.
        let ki = _mm256_cvtpd_epi32(k);
        let bits = _mm256_slli_epi64(
            _mm256_add_epi64(_mm256_cvtepi32_epi64(ki), _mm256_set1_epi64x(1023)),
            52,
        );
        let y = _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
        // Arguments below the floor underflow to 0, as exp would.
        let under = _mm256_cmp_pd(_mm256_mul_pd(neg_gamma, v), floor, _CMP_LT_OQ);
        let y = _mm256_andnot_pd(under, y);
        // SAFETY: i + 4 ≤ n.
        unsafe { _mm256_storeu_pd(x.as_mut_ptr().add(i), y) };
        i += 4;
    }
    for v in &mut x[i..] {
        *v = (-gamma * *v).exp();
    }
}

/// As `gaussian_avx2`, eight lanes, with 2ᵏ applied by `scalef`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gaussian_avx512(x: &mut [f64], gamma: f64) {
    let n = x.len();
    let neg_gamma = _mm512_set1_pd(-gamma);
    let log2e = _mm512_set1_pd(std::f64::consts::LOG2_E);
    let (hi, lo) = (_mm512_set1_pd(LN2_HI), _mm512_set1_pd(LN2_LO));
    let c: [__m512d; 13] = INV_FACT.map(|v| _mm512_set1_pd(v));
    let floor = _mm512_set1_pd(EXP_FLOOR);
    let mut i = 0;
    while i < n {
        let left = n - i;
        let k8: __mmask8 = if left >= 8 { 0xFF } else { (1u8 << left) - 1 };
        // SAFETY: lanes under k8 are < n.
        let v = unsafe { _mm512_maskz_loadu_pd(k8, x.as_ptr().add(i)) };
        let raw = _mm512_mul_pd(neg_gamma, v);
        let arg = _mm512_max_pd(raw, floor);
        let k = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_pd(arg, log2e));
        let r = _mm512_fnmadd_pd(k, lo, _mm512_fnmadd_pd(k, hi, arg));
        let mut p = c[12];
        p = _mm512_fmadd_pd(p, r, c[11]);
        p = _mm512_fmadd_pd(p, r, c[10]);
        p = _mm512_fmadd_pd(p, r, c[9]);
        p = _mm512_fmadd_pd(p, r, c[8]);
        p = _mm512_fmadd_pd(p, r, c[7]);
        p = _mm512_fmadd_pd(p, r, c[6]);
        p = _mm512_fmadd_pd(p, r, c[5]);
        p = _mm512_fmadd_pd(p, r, c[4]);
        p = _mm512_fmadd_pd(p, r, c[3]);
        p = _mm512_fmadd_pd(p, r, c[2]);
        p = _mm512_fmadd_pd(p, r, c[1]);
        p = _mm512_fmadd_pd(p, r, c[0]);
        let y = _mm512_scalef_pd(p, k);
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

    #[test]
    fn masked_sums_and_row_distances() {
        let row: Vec<f64> = (0..150).map(|i| i as f64).collect();
        let mut bits = vec![0u64; 4];
        for p in [3usize, 61, 62, 63, 64, 65, 100, 130, 190] {
            bits[p >> 6] |= 1 << (p & 63);
        }
        for first in [0usize, 1, 40, 60] {
            let want: f64 = row
                .iter()
                .enumerate()
                .filter(|(t, _)| {
                    let p = first + t;
                    p < 256 && bits[p >> 6] >> (p & 63) & 1 == 1
                })
                .map(|(_, v)| v)
                .sum();
            assert_eq!(masked_sum(&row, &bits, first), want, "first bit {first}");
            // Each SIMD path on its own, where the machine has it.
            #[cfg(target_arch = "x86_64")]
            for len in [0usize, 5, 64, 70, 149] {
                let want: f64 = (0..len)
                    .filter(|t| {
                        let p = first + t;
                        p < 256 && bits[p >> 6] >> (p & 63) & 1 == 1
                    })
                    .map(|t| row[t])
                    .sum();
                if has_avx512() {
                    // SAFETY: feature checked.
                    assert_eq!(unsafe { masked_sum_avx512(&row[..len], &bits, first) }, want);
                }
                let empty = [0u64; 4];
                let four = masked_sums4(&row[..len], [&bits, &empty, &bits, &empty], first);
                assert_eq!(four, [want, 0.0, want, 0.0], "four sets, len {len}");
                if has_avx2() {
                    // SAFETY: feature checked.
                    assert_eq!(unsafe { masked_sum_avx2(&row[..len], &bits, first) }, want);
                }
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

    #[test]
    fn block_distances_match_direct_ones() {
        let dim = 5;
        for (nr, nc) in [
            (1usize, 1usize),
            (3, 7),
            (4, 8),
            (9, 17),
            (13, 3),
            (8, 16),
            (17, 17),
            (33, 33),
            (21, 40),
        ] {
            let rows: Vec<f64> = (0..nr * dim).map(|i| (i as f64 * 0.37).sin()).collect();
            let cols: Vec<f64> = (0..nc * dim).map(|i| (i as f64 * 0.11).cos()).collect();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
            let rn: Vec<f64> = rows.chunks(dim).map(norm).collect();
            let cn: Vec<f64> = cols.chunks(dim).map(norm).collect();
            let mut t = vec![0.0; nc * dim];
            for c in 0..nc {
                for k in 0..dim {
                    t[k * nc + c] = cols[c * dim + k];
                }
            }
            let mut out = vec![-1.0; nr * nc];
            sq_dists_block(&rows, &rn, &t, &cn, dim, false, &mut out);
            for r in 0..nr {
                for c in 0..nc {
                    let want = sq_dist(&rows[r * dim..(r + 1) * dim], &cols[c * dim..(c + 1) * dim]);
                    assert!((out[r * nc + c] - want).abs() < 1e-12, "({r},{c}) of {nr}×{nc}");
                }
            }
            // The lower triangle alone (the same points on both sides).
            if nr == nc {
                let mut t = vec![0.0; nr * dim];
                for c in 0..nr {
                    for k in 0..dim {
                        t[k * nr + c] = rows[c * dim + k];
                    }
                }
                let mut low = vec![-1.0; nr * nr];
                sq_dists_block(&rows, &rn, &t, &rn, dim, true, &mut low);
                for r in 0..nr {
                    for c in 0..r {
                        let want = sq_dist(&rows[r * dim..(r + 1) * dim], &rows[c * dim..(c + 1) * dim]);
                        assert!((low[r * nr + c] - want).abs() < 1e-12, "lower ({r},{c}) of {nr}");
                    }
                }
            }
        }
    }

    #[test]
    fn agrees_with_scalar() {
        let a: Vec<f64> = (0..37).map(|i| (i as f64 * 0.7).sin()).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64 * 0.3).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((sq_dist(&a, &b) - want).abs() < 1e-13);
        let mut x: Vec<f64> = (0..1003)
            .map(|i| i as f64 * 0.05)
            .chain([0.0, 1e-300, 800.0, 1e6])
            .collect();
        let orig = x.clone();
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // The AVX2 path on its own (the dispatch below may take AVX-512).
            let mut y = orig.clone();
            // SAFETY: feature checked.
            unsafe { gaussian_avx2(&mut y, 1.3) };
            for (o, v) in orig.iter().zip(&y) {
                let want = (-1.3 * o).exp();
                assert!(
                    (v - want).abs() <= 4.0 * f64::EPSILON * want,
                    "avx2 exp(-1.3·{o}) = {v}"
                );
            }
        }
        gaussian_in_place(&mut x, 1.3);
        for (o, y) in orig.iter().zip(&x) {
            let want = (-1.3 * o).exp();
            assert!(
                (y - want).abs() <= 4.0 * f64::EPSILON * want,
                "exp(-1.3·{o}) = {y}, want {want}"
            );
        }
    }
}
