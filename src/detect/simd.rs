//! The MMD kernel's inner loops — squared distances, exp of a row and masked
//! row sums — with an AVX2/FMA path chosen at run time and a portable fallback.
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

/// out[r] = ‖x − ys[r]‖² for each row r of the row-major `ys` (`x.len()` columns).
pub fn sq_dists_to(x: &[f64], ys: &[f64], out: &mut [f64]) {
    let d = x.len();
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && d > 0 {
        // SAFETY: as in `sq_dist`.
        unsafe { sq_dists_avx2(x, ys, out) };
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = x
            .iter()
            .zip(&ys[r * d..(r + 1) * d])
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
    }
}

/// Σ_t row[t] over the t whose bit `first_bit + t` is set in `bits`.
pub fn masked_sum(row: &[f64], bits: &[u64], first_bit: usize) -> f64 {
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
    let words = bits.len();
    let mut t = 0;
    while t + 8 <= n {
        let p = first_bit + t;
        let (w, o) = (p >> 6, p & 63);
        if w >= words {
            break;
        }
        // SAFETY: w < words; w + 1 checked before use.
        let lo = unsafe { *bits.get_unchecked(w) } >> o;
        let hi = if o > 56 && w + 1 < words {
            (unsafe { *bits.get_unchecked(w + 1) }) << (64 - o)
        } else {
            0
        };
        let byte = ((lo | hi) & 0xFF) as usize;
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sq_dists_avx2(x: &[f64], ys: &[f64], out: &mut [f64]) {
    let d = x.len();
    let d4 = d - d % 4;
    for (r, o) in out.iter_mut().enumerate() {
        let y = &ys[r * d..(r + 1) * d];
        let mut s = _mm256_setzero_pd();
        let mut i = 0;
        // SAFETY (loads): i + 4 ≤ d4 ≤ d = x.len() = y.len().
        unsafe {
            while i < d4 {
                let v = _mm256_sub_pd(_mm256_loadu_pd(x.as_ptr().add(i)), _mm256_loadu_pd(y.as_ptr().add(i)));
                s = _mm256_fmadd_pd(v, v, s);
                i += 4;
            }
        }
        // Horizontal sum in registers.
        let h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        let mut t = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
        for j in d4..d {
            t += (x[j] - y[j]) * (x[j] - y[j]);
        }
        *o = t;
    }
}

/// x ← e^{−γ·x} for every element (x ≥ 0: squared distances).
pub fn gaussian_in_place(x: &mut [f64], gamma: f64) {
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
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with its low bits zero so k·LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    let n = x.len();
    let neg_gamma = _mm256_set1_pd(-gamma);
    let log2e = _mm256_set1_pd(std::f64::consts::LOG2_E);
    let (hi, lo) = (_mm256_set1_pd(LN2_HI), _mm256_set1_pd(LN2_LO));
    // 1/k! for k = 12 down to 0 (Horner).
    let mut inv_fact = [0.0f64; 13];
    inv_fact[0] = 1.0;
    for k in 1..13 {
        inv_fact[k] = inv_fact[k - 1] / k as f64;
    }
    let floor = _mm256_set1_pd(-708.0);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 ≤ n.
        let v = unsafe { _mm256_loadu_pd(x.as_ptr().add(i)) };
        let arg = _mm256_max_pd(_mm256_mul_pd(neg_gamma, v), floor);
        let k = _mm256_round_pd(_mm256_mul_pd(arg, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_pd(k, lo, _mm256_fnmadd_pd(k, hi, arg));
        let mut p = _mm256_set1_pd(inv_fact[12]);
        for c in inv_fact[..12].iter().rev() {
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
        }
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let ys = [1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut out = [9.0; 2];
        sq_dists_to(&x, &ys, &mut out);
        assert_eq!(out, [0.0, 55.0]);
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
