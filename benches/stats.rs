//! Statistics benchmarks (criterion): `cargo bench --bench stats`.
//!
//! - MMD test, n = m = 1000, d = 32, B = 100, from scratch (cache cleared), one and two threads;
//! - MMD slide: reference 1000, current 1000, slide 100, per evaluation (cache warm);
//! - KS on 32 features, n = m = 1000.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use driftwatch::detect::ks::ks_2samp;
use driftwatch::detect::mmd::{MmdOptions, clear_kernel_cache, mmd_test};

fn normals(seed: u64, n: usize, shift: f64) -> Vec<f64> {
    let mut x = seed;
    let mut u = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 1e-12
    };
    (0..n)
        .map(|_| (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos() + shift)
        .collect()
}

fn mmd(c: &mut Criterion) {
    let d = 32;
    let x = normals(1, 1000 * d, 0.0);
    let y = normals(2, 1000 * d, 0.05);
    for threads in [1, 2] {
        let o = MmdOptions {
            permutations: 100,
            seed: 1,
            sigma: None,
            threads,
        };
        c.bench_function(&format!("mmd n=m=1000 d=32 B=100 threads={threads}"), |b| {
            b.iter_batched(clear_kernel_cache, |_| mmd_test(&x, &y, d, &o), BatchSize::SmallInput)
        });
    }
    // Sliding: each evaluation's current window is the previous one moved by 100 rows.
    let stream = normals(3, 20_000 * d, 0.0);
    let o = MmdOptions {
        permutations: 100,
        seed: 1,
        sigma: None,
        threads: 1,
    };
    clear_kernel_cache();
    let mut start = 0usize;
    c.bench_function("mmd slide ref=1000 cur=1000 slide=100 B=100", |b| {
        b.iter(|| {
            start = (start + 100) % 19_000;
            mmd_test(&x, &stream[start * d..(start + 1000) * d], d, &o)
        })
    });
}

fn ks(c: &mut Criterion) {
    let refs: Vec<Vec<f64>> = (0..32).map(|f| normals(10 + f, 1000, 0.0)).collect();
    let curs: Vec<Vec<f64>> = (0..32).map(|f| normals(100 + f, 1000, 0.02)).collect();
    c.bench_function("ks 32 features n=m=1000", |b| {
        b.iter(|| {
            refs.iter()
                .zip(&curs)
                .map(|(r, c)| ks_2samp(r, c).map_or(1.0, |r| r.p_value))
                .sum::<f64>()
        })
    });
}

criterion_group!(benches, mmd, ks);
criterion_main!(benches);
