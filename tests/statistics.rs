//! The statistics as users meet them: calibrated under no drift, powerful
//! under drift, the ERT budget honoured through the window machinery, and
//! every detector kind reachable from a pipeline and from `compare`.

use std::path::Path;

use driftwatch::config::Pipeline;
use driftwatch::detect::ks::ks_2samp;
use driftwatch::detect::mmd::{MmdOptions, mmd_test};
use driftwatch::runtime::{self, Stages};
use driftwatch::source::RawRecord;

/// SplitMix64: a tiny seeded generator, so the tests need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn normals(&mut self, n: usize, shift: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() + shift).collect()
    }
}

/// Binomial 99.9% interval (normal approximation) for `trials` at rate `p`.
fn binomial_999(p: f64, trials: usize) -> (f64, f64) {
    let sd = (p * (1.0 - p) / trials as f64).sqrt();
    (p - 3.29 * sd, p + 3.29 * sd)
}

/// How many of `trials` seeded tests reject at α = 0.05 (`p_value(t)` for trial t).
fn rejections(trials: usize, mut p_value: impl FnMut(u64) -> f64) -> usize {
    (0..trials).filter(|&t| p_value(t as u64) <= 0.05).count()
}

/// Asserts the false-alarm rate of `alarms` in `trials` null trials is in the
/// binomial 99.9 % interval around α = 0.05.
fn assert_calibrated(what: &str, alarms: usize, trials: usize) {
    let rate = alarms as f64 / trials as f64;
    let (lo, hi) = binomial_999(0.05, trials);
    assert!(
        rate >= lo && rate <= hi,
        "{what} false-alarm rate {rate} outside [{lo}, {hi}]"
    );
}

#[test]
fn ks_is_calibrated_and_powerful() {
    let mut rng = Rng(11);
    let mut ks = |shift| {
        let (a, b) = (rng.normals(200, 0.0), rng.normals(150, shift));
        ks_2samp(&a, &b).unwrap().p_value
    };
    assert_calibrated("KS", rejections(600, |_| ks(0.0)), 600);
    let detected = rejections(200, |_| ks(0.5));
    assert!(detected >= 190, "KS power {detected}/200 on a 0.5σ shift");
}

#[test]
fn mmd_is_calibrated_and_powerful() {
    let mut rng = Rng(12);
    let dim = 4;
    let opts = |seed| MmdOptions {
        permutations: 99,
        seed,
        sigma: None,
        threads: 1,
        stop_after: None,
    };
    let mut mmd = |t, shift| {
        let (a, b) = (rng.normals(40 * dim, 0.0), rng.normals(30 * dim, shift));
        mmd_test(&a, &b, dim, &opts(t)).unwrap().p_value
    };
    assert_calibrated("MMD", rejections(500, |t| mmd(t, 0.0)), 500);
    let detected = rejections(100, |t| mmd(t, 1.0));
    assert!(detected >= 95, "MMD power {detected}/100 on a 1σ shift");
}

/// The sequential p-value (Besag–Clifford, h = 11 as a pipeline's default
/// for alpha 0.05 and B = 200) decides as the full test on every one of
/// 1,000 seeded windows, null and shifted (shifts chosen so that many
/// p-values fall near alpha), stays calibrated, and draws far fewer
/// permutations on null windows.
#[test]
fn mmd_early_stop_decides_as_all_permutations() {
    let mut rng = Rng(14);
    let dim = 3;
    let opts = |seed, stop_after| MmdOptions {
        permutations: 200,
        seed,
        sigma: None,
        threads: 1,
        stop_after,
    };
    let (mut same, mut null_draws, mut null_alarms, mut stopped_shifted) = (0, 0, 0, 0);
    for t in 0..1000u64 {
        let shift = if t % 2 == 0 { 0.0 } else { 0.1 * (t % 10) as f64 };
        let (a, b) = (rng.normals(50 * dim, 0.0), rng.normals(40 * dim, shift));
        let full = mmd_test(&a, &b, dim, &opts(t, None)).unwrap();
        let seq = mmd_test(&a, &b, dim, &opts(t, Some(11))).unwrap();
        same += usize::from((full.p_value <= 0.05) == (seq.p_value <= 0.05));
        assert_eq!(full.statistic, seq.statistic);
        assert_eq!(full.permutations, 200);
        if seq.permutations == 200 {
            // Not stopped: exactly the full test's p-value.
            assert_eq!(seq.p_value, full.p_value, "window {t}");
        }
        if shift == 0.0 {
            null_draws += seq.permutations;
            null_alarms += usize::from(seq.p_value <= 0.05);
        } else if seq.permutations < 200 {
            stopped_shifted += 1;
        }
    }
    assert_eq!(same, 1000, "decisions that differ from the full test's");
    assert_calibrated("MMD with early stop", null_alarms, 500);
    let mean_draws = null_draws as f64 / 500.0;
    assert!(
        mean_draws < 60.0,
        "null windows drew {mean_draws} permutations on average"
    );
    // Small shifts have middling p-values: some of those stop too.
    assert!(stopped_shifted > 0);
}

#[test]
fn mmd_p_value_within_monte_carlo_error_of_10000_permutations() {
    let mut rng = Rng(13);
    let dim = 3;
    // A small shift: p is in the middle, where Monte-Carlo error is largest.
    let (a, b) = (rng.normals(60 * dim, 0.0), rng.normals(60 * dim, 0.15));
    let reference = mmd_test(
        &a,
        &b,
        dim,
        &MmdOptions {
            permutations: 10_000,
            seed: 1,
            sigma: None,
            threads: 2,
            stop_after: None,
        },
    )
    .unwrap();
    for seed in 0..5 {
        let r = mmd_test(
            &a,
            &b,
            dim,
            &MmdOptions {
                permutations: 200,
                seed,
                sigma: None,
                threads: 1,
                stop_after: None,
            },
        )
        .unwrap();
        let p = reference.p_value;
        let tol = 3.29 * (p * (1.0 - p) / 200.0).sqrt() + 1.0 / 201.0;
        assert!(
            (r.p_value - p).abs() <= tol,
            "seed {seed}: p {} vs {p} (±{tol})",
            r.p_value
        );
        assert!(r.p_value >= 1.0 / 201.0);
        assert_eq!(r.statistic, reference.statistic);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// chi-square, JS and Wasserstein are symmetric in the two windows; every
    /// statistic ignores row order; p-values stay in [0, 1] (MMD: ≥ 1/(B+1)).
    #[test]
    fn symmetric_order_free_and_bounded(
        a in proptest::collection::vec(0u8..6, 2..80),
        b in proptest::collection::vec(0u8..6, 2..80),
        seed in 0u64..1000,
    ) {
        use driftwatch::detect::chi2::{chi2_homogeneity, contingency};
        use driftwatch::detect::divergence::{Metric, categorical, numeric};
        let (ca, cb): (Vec<String>, Vec<String>) = (a.iter().map(u8::to_string).collect(), b.iter().map(u8::to_string).collect());
        let (_, p, q) = contingency(&ca, &cb);
        let r = chi2_homogeneity(&p, &q).unwrap();
        let r2 = chi2_homogeneity(&q, &p).unwrap();
        proptest::prop_assert!((r.statistic - r2.statistic).abs() <= 1e-9 * r.statistic.max(1.0));
        proptest::prop_assert!((0.0..=1.0).contains(&r.p_value));
        let mut rev = ca.clone();
        rev.reverse();
        let (_, p3, q3) = contingency(&rev, &cb);
        proptest::prop_assert_eq!(chi2_homogeneity(&p3, &q3).unwrap(), r);
        let js = categorical(Metric::Js, &ca, &cb).unwrap();
        proptest::prop_assert!((js - categorical(Metric::Js, &cb, &ca).unwrap()).abs() < 1e-12);
        proptest::prop_assert!((0.0..=1.0).contains(&js));
        let (fa, fb): (Vec<f64>, Vec<f64>) = (a.iter().map(|v| f64::from(*v)).collect(), b.iter().map(|v| f64::from(*v) * 1.5).collect());
        let w = driftwatch::detect::divergence::wasserstein(&fa, &fb);
        proptest::prop_assert!((w - driftwatch::detect::divergence::wasserstein(&fb, &fa)).abs() < 1e-12);
        for m in [Metric::Psi, Metric::Kl, Metric::Js, Metric::Wasserstein] {
            let d = numeric(m, &fa, &fb, 4).unwrap();
            let mut fr = fa.clone();
            fr.reverse();
            proptest::prop_assert!(d.is_finite() && d >= -1e-12);
            proptest::prop_assert!((numeric(m, &fr, &fb, 4).unwrap() - d).abs() < 1e-12);
        }
        // MMD: the statistic is invariant to the order of rows within a window.
        let o = MmdOptions { permutations: 19, seed, sigma: Some(1.0), threads: 1, stop_after: None };
        let m1 = mmd_test(&fa, &fb, 1, &o).unwrap();
        let mut fr = fa.clone();
        fr.reverse();
        let m2 = mmd_test(&fr, &fb, 1, &o).unwrap();
        // Up to summation order: MMD² is a difference of sums of kernel values ≤ 1.
        proptest::prop_assert!((m1.statistic - m2.statistic).abs() <= 1e-12);
        proptest::prop_assert!(m1.p_value >= 1.0 / 20.0 && m1.p_value <= 1.0);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SCHEMA: &str = "name: stream\nkey: k\nfields:\n  - {name: k, type: category}\n  - {name: x, type: float}\n  - {name: c, type: category}\n";

fn records(events: impl Iterator<Item = serde_json::Value>) -> Vec<RawRecord> {
    events
        .enumerate()
        .map(|(i, e)| RawRecord {
            payload: Some(serde_json::to_vec(&e).unwrap()),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        })
        .collect()
}

/// Over a long null stream (30 keys, 60 tumbling evaluations each, every key
/// with its own reference), the false-alarm rate per evaluation matches
/// 1/ert, so the mean run between false alarms matches the configured ert.
/// The interval is built from the spread between keys, which includes the
/// correlation that a shared reference induces within a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ert_budget_holds_over_a_long_null_stream() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.yaml", SCHEMA);
    let ert = 20.0;
    let pipe = write(
        dir.path(),
        "p.yaml",
        "name: ert\nschema: schema.yaml\nsource: {type: file, path: none.jsonl}\n\
         window: {key: k, reference: {type: first, size: 300}, current: {size: 100}}\n\
         alerting: {ert: 20}\n\
         detectors:\n  - {name: x_ks, kind: ks, columns: [x]}\n  - {name: x_chi2, kind: chi2, columns: [c]}\n",
    );
    let pipeline = Pipeline::load(&pipe).unwrap();
    let mut stages = Stages::build(pipeline).await.unwrap();
    let mut windows = stages.windows().await.unwrap();
    let (keys, evals_per_key) = (30usize, 60usize);
    let mut rng = Rng(14);
    let mut per_key = vec![(0usize, 0usize); keys];
    for (k, counts) in per_key.iter_mut().enumerate() {
        let n = 300 + evals_per_key * 100;
        let events = (0..n).map(|_| {
            let c = ["a", "b", "c", "d"][(rng.uniform() * 4.0) as usize];
            serde_json::json!({"k": format!("k{k}"), "x": rng.normal(), "c": c})
        });
        let recs = records(events);
        let (batches, rejected) = stages.ingest(&recs).await.unwrap();
        assert!(rejected.is_empty());
        for b in batches {
            for due in windows.push(&b).unwrap() {
                // One evaluation = both detectors on one window; a false alarm
                // is any detector drifting.
                let evs = stages.evaluate(&due).await.unwrap();
                assert_eq!(evs.len(), 2);
                counts.0 += 1;
                counts.1 += usize::from(evs.iter().any(|e| e.drift));
            }
        }
    }
    let total: usize = per_key.iter().map(|(e, _)| e).sum();
    assert_eq!(total, keys * evals_per_key);
    let rates: Vec<f64> = per_key.iter().map(|(e, a)| *a as f64 / *e as f64).collect();
    let mean = rates.iter().sum::<f64>() / keys as f64;
    let var = rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (keys - 1) as f64;
    let se = (var / keys as f64).sqrt().max(1e-3);
    let target = 1.0 / ert;
    // The tests are exact (discrete KS, chi-square): the rate may sit a little
    // below the budget, never above it beyond sampling error.
    assert!(
        mean <= target + 3.29 * se && mean >= target * 0.5 - 3.29 * se,
        "false alarms per evaluation {mean:.4} (mean run {:.1} evaluations), budget {target} (ert {ert}), se {se:.4}",
        1.0 / mean
    );
}

/// Every kind through a pipeline and `compare`: a shifted numeric column and
/// a re-weighted categorical column are flagged by each detector; the same
/// distribution is flagged by none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_reachable_from_yaml_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.yaml", SCHEMA);
    let pipe = write(
        dir.path(),
        "p.yaml",
        r#"name: kinds
schema: schema.yaml
source: {type: file, path: none.jsonl}
window: {reference: {type: first, size: 1000}, current: {size: 1000}}
detectors:
  - {name: ks, kind: ks, columns: [x], correction: benjamini_hochberg}
  - {name: chi2, kind: chi2, columns: [c]}
  - {name: psi, kind: psi, columns: [x, c]}
  - {name: kl, kind: kl, columns: [x], bins: 8}
  - {name: js, kind: js, columns: [x, c], threshold: 0.02}
  - {name: wasserstein, kind: wasserstein, columns: [x], threshold: 0.2}
  - {name: mmd, kind: mmd, column: x, permutations: 100, seed: 3}
  - {name: mmd_linear, kind: mmd, column: x, method: linear}
  - {name: mmd_threads, kind: mmd, column: x, permutations: 100, seed: 3, threads: 2}
  - name: own
    kind: sql
    threshold: 0.1
    sql: SELECT key, chi2_test(c, window = 'current') AS c, psi(x, window = 'current', 5) AS x FROM windows GROUP BY key
"#,
    );
    let mut rng = Rng(15);
    let mut file = |name: &str, shift: f64, weights: [f64; 3]| {
        let events = (0..1000).map(|_| {
            let u = rng.uniform();
            let c = if u < weights[0] {
                "a"
            } else if u < weights[0] + weights[1] {
                "b"
            } else {
                "c"
            };
            serde_json::json!({"k": "one", "x": rng.normal() + shift, "c": c})
        });
        let text: String = events.map(|e| e.to_string() + "\n").collect();
        write(dir.path(), name, &text)
    };
    let reference = file("ref.jsonl", 0.0, [0.5, 0.3, 0.2]);
    let same = file("same.jsonl", 0.0, [0.5, 0.3, 0.2]);
    let shifted = file("shifted.jsonl", 1.0, [0.2, 0.3, 0.5]);
    let run = |cur: std::path::PathBuf| {
        let pipe = pipe.clone();
        let reference = reference.clone();
        async move {
            let stages = Stages::build(Pipeline::load(&pipe).unwrap()).await.unwrap();
            let r = runtime::compare(stages, &reference, &cur, None).await.unwrap();
            serde_json::to_value(&r).unwrap()
        }
    };
    let drifted = run(shifted).await;
    let quiet = run(same).await;
    let dets = drifted["detectors"].as_array().unwrap();
    assert_eq!(dets.len(), 10, "{drifted:#}");
    for d in dets {
        assert_eq!(d["drift"], true, "{d:#}");
        // Everything drifted: each detector names the nine others.
        let others = d["also_drifted"].as_array().unwrap();
        assert_eq!(others.len(), 9, "{d:#}");
        assert!(!others.contains(&d["name"]));
        for t in d["tests"].as_array().unwrap() {
            assert_eq!(t["drift"], true, "{} {t:#}", d["name"]);
        }
    }
    for d in quiet["detectors"].as_array().unwrap() {
        assert_eq!(d["drift"], false, "{d:#}");
    }
    // MMD on two threads: the same statistic and p-value, to the bit.
    for r in [&drifted, &quiet] {
        let by_name = |n: &str| {
            r["detectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == n)
                .unwrap()["tests"]
                .clone()
        };
        assert_eq!(by_name("mmd"), by_name("mmd_threads"), "{r:#}");
        assert!(by_name("mmd")[0]["p_value"].is_number());
    }
    // Distances have no p-value and compare their statistic to the threshold.
    let psi = &dets[2];
    assert!(psi["tests"][0]["p_value"].is_null());
    assert_eq!(psi["threshold"], 0.2);
    // Predicted classes and categories: chi2 has dof = categories − 1 behind
    // its p-value; the label/covariate rule follows the column.
    assert_eq!(dets[1]["drift_type"], "covariate");
    assert!(dets[1]["tests"][0]["p_value"].as_f64().unwrap() < 1e-10);
}
