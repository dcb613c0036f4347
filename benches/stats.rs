//! Statistics benchmarks: `cargo bench --bench stats` (add `--profile dev` to
//! reuse the test build's dependencies).
//!
//! - MMD test, n = m = 1000, d = 32, B = 100, from scratch (cache cleared), one and two threads;
//! - MMD test, n = m = 1000, d = 384 (sentence embeddings), B = 400, from scratch;
//! - MMD slide: reference 1000, current 1000, slide 250, per evaluation (cache
//!   warm), with all permutations and with early stopping, on null windows,
//!   on one and two threads;
//! - MMD on the same null windows again (the permutation pass alone);
//! - the kernel's parts alone, on one chunk of a slide's new rows (24 × 1000
//!   points, d = 32): the squared distances, and their exponentials;
//! - KS on 32 features, n = m = 1000;
//! - big windows (`tiled`): MMD n = m = 2k, 10k, 20k, 50k, d = 32, B = 100,
//!   two threads, through the tiled path, each run once (a few seconds
//!   each), with the process's peak memory after it (the sizes ascend, so
//!   each peak is its own); under `cargo test` only 2k runs.
//!
//! Each figure is the median of repeated runs after a warm-up, with the
//! interquartile range: robust to a busy machine, unlike a mean.

use std::hint::black_box;
use std::time::{Duration, Instant};

use driftwatch::detect::ks::ks_2samp;
use driftwatch::detect::mmd::{MmdOptions, clear_kernel_cache, mmd_test, mmd_test_of, mmd_test_tiled};
use driftwatch::detect::simd;

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

/// Runs `f` (after `setup`, untimed) until ~2 s or 200 samples; prints median and IQR.
/// Under `cargo test` (no `--bench` argument) each benchmark runs once, as a smoke test.
fn bench(name: &str, mut setup: impl FnMut(), mut f: impl FnMut()) -> Duration {
    if !std::env::args().any(|a| a == "--bench") {
        setup();
        f();
        println!("{name}: ran once (cargo test); `cargo bench` times it");
        return Duration::ZERO;
    }
    for _ in 0..3 {
        setup();
        f();
    }
    let mut samples = vec![];
    let start = Instant::now();
    while samples.len() < 200 && (start.elapsed() < Duration::from_secs(2) || samples.len() < 10) {
        setup();
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    let q = |f: f64| samples[((samples.len() - 1) as f64 * f) as usize];
    println!(
        "{name:<48} median {:>10.3} ms   IQR {:.3}–{:.3} ms   ({} runs)",
        q(0.5).as_secs_f64() * 1e3,
        q(0.25).as_secs_f64() * 1e3,
        q(0.75).as_secs_f64() * 1e3,
        samples.len()
    );
    q(0.5)
}

/// The process's peak resident memory (VmHWM), MiB; 0 where /proc is absent.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The tiled MMD at growing sizes, once each: time, p-value and peak memory.
fn mmd_big(on: &dyn Fn(&str) -> bool) {
    let timing = std::env::args().any(|a| a == "--bench");
    let d = 32;
    for n in [2_000, 10_000, 20_000, 50_000] {
        let name = format!("mmd tiled n=m={n} d=32 B=100 threads=2");
        if !on(&name) || (!timing && n > 2_000) {
            continue;
        }
        let (x, y) = (normals(20 + n as u64, n * d, 0.0), normals(21 + n as u64, n * d, 0.01));
        let o = MmdOptions {
            permutations: 100,
            seed: 1,
            sigma: None,
            threads: 2,
            stop_after: None,
        };
        let t = Instant::now();
        let r = black_box(mmd_test_tiled(&x, &y, d, &o));
        println!(
            "{name:<48} {:>10.3} s   p = {:.3}   peak RSS {:.0} MiB (inputs {:.0} MiB)",
            t.elapsed().as_secs_f64(),
            r.map_or(f64::NAN, |r| r.p_value),
            peak_rss_mib(),
            (2 * n * d * 8) as f64 / (1 << 20) as f64
        );
    }
}

/// The kernel's two dense parts apart, on a chunk of a slide's new rows (24,
/// as `mmd` computes them) against 1000 points: what a change to either one
/// does, without the noise of a whole test.
fn kernel_parts(on: &dyn Fn(&str) -> bool, x: &[f64], y: &[f64], d: usize) {
    let rows = &y[..24 * d];
    let norms = |p: &[f64]| {
        p.chunks_exact(d)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect::<Vec<f64>>()
    };
    let (row_norms, col_norms) = (norms(rows), norms(x));
    let cols_t: Vec<f64> = (0..d * 1000).map(|i| x[(i % 1000) * d + i / 1000]).collect();
    let mut out = vec![0.0; 24 * 1000];
    let name = "kernel: squared distances 24 x 1000, d=32";
    if on(name) {
        bench(
            name,
            || (),
            || {
                simd::sq_dists_block(rows, &row_norms, &cols_t, &col_norms, d, None, &mut out);
                black_box(&out);
            },
        );
    }
    let name = "kernel: exp of 24 x 1000 values";
    if on(name) {
        simd::sq_dists_block(rows, &row_norms, &cols_t, &col_norms, d, None, &mut out);
        // Branch-free: the time does not depend on the values (after the
        // first run, kernel values of kernel values).
        bench(
            name,
            || (),
            || {
                simd::gaussian_in_place(&mut out, 0.02);
                black_box(&out);
            },
        );
    }
}

fn mmd_options(stop_after: Option<usize>, threads: usize) -> MmdOptions {
    MmdOptions {
        permutations: 100,
        seed: 1,
        sigma: None,
        threads,
        stop_after,
    }
}

/// Per evaluation of a window of 1000 sliding by 250 against `x`.
fn mmd_slide(name: &str, x: &[f64], d: usize, stop_after: Option<usize>, threads: usize) {
    // Long enough that the timed slides never wrap round to a window that
    // starts from scratch.
    const EVENTS: usize = 60_000;
    let stream = normals(3, EVENTS * d, 0.0);
    let o = mmd_options(stop_after, threads);
    clear_kernel_cache();
    let mut start = 0usize;
    bench(
        name,
        || {},
        || {
            start = (start + 250) % (EVENTS - 1000);
            // One stream, as a pipeline's detector on one key evaluates: the
            // cache keeps its latest window only (without a stream it keeps
            // up to 64, and the first 64 slides fault in their memory).
            black_box(mmd_test_of(Some(1), x, &stream[start * d..(start + 1000) * d], d, &o));
        },
    );
}

fn main() {
    println!("CPU features used: {}", driftwatch::detect::simd::features());
    // `cargo bench` passes `--bench`; a filter argument selects benchmarks by substring.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let on = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let d = 32;
    let x = normals(1, 1000 * d, 0.0);
    let y = normals(2, 1000 * d, 0.05);
    for threads in [1, 2] {
        let name = format!("mmd n=m=1000 d=32 B=100 threads={threads}");
        if on(&name) {
            let o = MmdOptions {
                permutations: 100,
                seed: 1,
                sigma: None,
                threads,
                stop_after: None,
            };
            bench(&name, clear_kernel_cache, || {
                black_box(mmd_test(&x, &y, d, &o));
            });
        }
    }
    kernel_parts(&on, &x, &y, d);
    // Sentence embeddings (all-MiniLM-L6-v2): 384 dimensions, the news pipeline's B.
    let name = "mmd n=m=1000 d=384 B=400 threads=1";
    if on(name) {
        let (x, y) = (normals(4, 1000 * 384, 0.0), normals(5, 1000 * 384, 0.01));
        let o = MmdOptions {
            permutations: 400,
            seed: 1,
            sigma: None,
            threads: 1,
            stop_after: None,
        };
        bench(name, clear_kernel_cache, || {
            black_box(mmd_test(&x, &y, 384, &o));
        });
    }
    // The cadence users run: a current window of 1000 sliding by 250 over a
    // stream with no drift, with all permutations and with early stopping
    // (h = 10, a pipeline's default at alpha 0.01).
    // Two threads: what `threads: 2` gives a pipeline on a 2-core machine.
    for (stop_after, threads) in [(None, 1), (Some(10), 1), (None, 2), (Some(10), 2)] {
        let name = format!("mmd slide ref=1000 cur=1000 slide=250 B=100 stop={stop_after:?} threads={threads}");
        if on(&name) {
            mmd_slide(&name, &x, d, stop_after, threads);
        }
    }
    // The permutation pass alone: the same null windows again (kernel cached).
    for stop_after in [None, Some(10)] {
        let name = format!("mmd same windows (kernel cached) B=100 stop={stop_after:?}");
        if on(&name) {
            let y0 = normals(6, 1000 * d, 0.0);
            let o = mmd_options(stop_after, 1);
            bench(
                &name,
                || {},
                || {
                    black_box(mmd_test(&x, &y0, d, &o));
                },
            );
        }
    }
    mmd_big(&on);
    let name = "ks 32 features n=m=1000";
    if on(name) {
        let refs: Vec<Vec<f64>> = (0..32).map(|f| normals(10 + f, 1000, 0.0)).collect();
        let curs: Vec<Vec<f64>> = (0..32).map(|f| normals(100 + f, 1000, 0.02)).collect();
        bench(
            name,
            || {},
            || {
                let s: f64 = refs
                    .iter()
                    .zip(&curs)
                    .map(|(r, c)| ks_2samp(r, c).map_or(1.0, |r| r.p_value))
                    .sum();
                black_box(s);
            },
        );
    }
}
