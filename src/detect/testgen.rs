//! Deterministic samples for tests, bit-identical to `scripts/golden_stats.py`'s
//! `synth` (SplitMix64 and only exactly rounded arithmetic), so golden
//! fixtures can name a sample by its generator instead of storing it.

use serde_json::Value;

/// SplitMix64 uniforms in [0, 1).
pub fn splitmix(seed: u64, count: usize) -> Vec<f64> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

/// The sample a generator spec `{n, seed, kind, shift, scale}` describes.
pub fn synth(spec: &Value) -> Vec<f64> {
    let n = spec["n"].as_u64().unwrap() as usize;
    let seed = spec["seed"].as_u64().unwrap();
    let (shift, scale) = (spec["shift"].as_f64().unwrap(), spec["scale"].as_f64().unwrap());
    let kind = spec["kind"].as_str().unwrap();
    if kind == "grid" {
        return (0..n).map(|i| i as f64 + shift).collect();
    }
    let xs: Vec<f64> = match kind {
        "normal" => {
            let u = splitmix(seed, 12 * n);
            (0..n)
                .map(|i| {
                    let mut acc = 0.0;
                    for j in 0..12 {
                        acc += u[12 * i + j];
                    }
                    acc - 6.0
                })
                .collect()
        }
        "heavy" => {
            let u = splitmix(seed, 2 * n);
            (0..n)
                .map(|i| 1.0 / (u[2 * i] + 1e-3) - 1.0 / (u[2 * i + 1] + 1e-3))
                .collect()
        }
        "ties" => splitmix(seed, n).into_iter().map(|v| (6.0 * v).floor()).collect(),
        k => panic!("unknown generator kind {k}"),
    };
    xs.into_iter().map(|x| x * scale + shift).collect()
}

/// Samples `a` and `b` of a golden case, from their generator specs.
pub fn pair(case: &Value) -> (Vec<f64>, Vec<f64>) {
    (synth(&case["a"]), synth(&case["b"]))
}

/// A JSON array of numbers.
pub fn nums(x: &Value) -> Vec<f64> {
    x.as_array().unwrap().iter().map(|f| f.as_f64().unwrap()).collect()
}

/// A fixture file of `tests/fixtures`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
