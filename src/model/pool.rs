//! From per-token outputs to one vector per event, and L2 normalisation:
//! what sentence-transformers does after the transformer.

use crate::config::Pooling;

/// Pools `hidden` (`rows` × `tokens` × `dim`, row-major) to `rows` × `dim`.
///
/// `Mean`: `out[r] = Σ_t m[r,t]·h[r,t] / max(Σ_t m[r,t], 1e-9)`, the
/// masked mean of sentence-transformers' `Pooling(pooling_mode_mean_tokens)`
/// (Reimers & Gurevych 2019, Sentence-BERT §3); without a mask every
/// position counts. `First`: `out[r] = h[r,0]` (BERT's CLS token).
pub fn pool(how: Pooling, hidden: &[f32], rows: usize, tokens: usize, dim: usize, kept: Option<&[bool]>) -> Vec<f32> {
    let mut out = vec![0f32; rows * dim];
    for (r, acc) in out.chunks_exact_mut(dim.max(1)).enumerate().take(rows) {
        let row = &hidden[r * tokens * dim..(r + 1) * tokens * dim];
        if how == Pooling::First {
            acc.copy_from_slice(&row[..dim]);
            continue;
        }
        let mut count = 0f32;
        for t in 0..tokens {
            if kept.is_none_or(|k| k[r * tokens + t]) {
                count += 1.0;
                for (a, h) in acc.iter_mut().zip(&row[t * dim..(t + 1) * dim]) {
                    *a += h;
                }
            }
        }
        let scale = 1.0 / count.max(1e-9);
        acc.iter_mut().for_each(|a| *a *= scale);
    }
    out
}

/// Scales each `dim`-vector of `v` to unit length: `x / max(‖x‖₂, 1e-12)`
/// (PyTorch's `F.normalize`, as sentence-transformers' `Normalize`).
pub fn l2_normalize(v: &mut [f32], dim: usize) {
    for x in v.chunks_exact_mut(dim.max(1)) {
        let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        x.iter_mut().for_each(|a| *a /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of three tokens of two values; row 0 keeps two tokens, row 1 one.
    const HIDDEN: [f32; 12] = [1., 2., 3., 4., 100., 100., 5., 6., 7., 8., 9., 10.];
    const KEPT: [bool; 6] = [true, true, false, true, false, false];

    #[test]
    fn the_mean_counts_only_the_tokens_the_mask_keeps() {
        assert_eq!(pool(Pooling::Mean, &HIDDEN, 2, 3, 2, Some(&KEPT)), vec![2., 3., 5., 6.]);
        assert_eq!(
            pool(Pooling::Mean, &HIDDEN, 2, 3, 2, None),
            vec![104. * (1. / 3.), 106. * (1. / 3.), 7., 8.]
        );
        assert_eq!(
            pool(Pooling::First, &HIDDEN, 2, 3, 2, Some(&KEPT)),
            vec![1., 2., 5., 6.]
        );
    }

    #[test]
    fn a_row_without_tokens_pools_to_zeros_not_nan() {
        let none = [false; 6];
        assert_eq!(pool(Pooling::Mean, &HIDDEN, 2, 3, 2, Some(&none)), vec![0.; 4]);
    }

    #[test]
    fn normalised_rows_have_unit_length_and_zero_stays_zero() {
        let mut v = vec![3., 4., 0., 0.];
        l2_normalize(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0., 0.]);
    }
}
