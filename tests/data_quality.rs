//! The data-quality detectors through `compare`: each fires on its injected
//! fault (10 % missing in one column, an unseen category, values out of
//! range, 3 % broken events), names the column and the counts, and stays
//! quiet on clean data, over two seeds.

mod common;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const SCHEMA: &str = "name: tabular
fields:
  - {name: age, type: float, nullable: true, allow_non_finite: true}
  - {name: income, type: float, nullable: true}
  - {name: region, type: category, nullable: true}
  - {name: hours, type: int}
";

// alpha 0.001: 24 clean tests per detector in this file should not see a
// false alarm by chance (at 0.01 one in a dozen runs of the suite would).
const PIPELINE: &str = "name: quality
schema: tabular.yaml
detectors:
  - {name: missing, kind: missing_share, columns: [age, income, region], alpha: 0.001}
  - {name: unseen, kind: unseen_categories, columns: [region], seed: 3, permutations: 3999, alpha: 0.001}
  - {name: range, kind: out_of_range, columns: [age, income, hours], tail: 0.001, alpha: 0.001}
  - {name: dead, kind: dead_letter_rate, alpha: 0.001}
";

/// What to break in the current file.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// 10 % of `income` missing (null or absent).
    Missing,
    /// 3 % of `region` a region the reference never had.
    Unseen,
    /// 2 % of `age` above any reference age.
    OutOfRange,
    /// 3 % of the events broken (a string for `hours`, or not JSON).
    DeadLetters,
}

fn rows(seed: u64, n: usize, fault: Fault) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let regions = ["north", "south", "east", "west", "centre"];
    let mut out = String::new();
    for _ in 0..n {
        let u: f64 = rng.random();
        let age = 18.0 + 60.0 * rng.random::<f64>();
        // Some ages are missing (NaN) at a steady 2 % in every window.
        let age = if rng.random::<f64>() < 0.02 { f64::NAN } else { age };
        let mut e = json!({
            "age": if age.is_nan() { json!(null) } else { json!(age) },
            "income": 20_000.0 + 80_000.0 * rng.random::<f64>(),
            "region": regions[rng.random_range(0..regions.len())],
            "hours": rng.random_range(10..60),
        });
        match fault {
            Fault::Missing if u < 0.05 => e["income"] = Value::Null,
            Fault::Missing if u < 0.10 => {
                e.as_object_mut().unwrap().remove("income");
            }
            Fault::Unseen if u < 0.03 => e["region"] = json!("atlantis"),
            Fault::OutOfRange if u < 0.02 => e["age"] = json!(150.0 + u),
            Fault::DeadLetters if u < 0.015 => e["hours"] = json!("forty"),
            Fault::DeadLetters if u < 0.03 => {
                out += "{\"age\": 3\n";
                continue;
            }
            _ => {}
        }
        out += &format!("{e}\n");
    }
    out
}

fn setup(dir: &Path) -> PathBuf {
    common::write(dir, "tabular.yaml", SCHEMA);
    common::write(dir, "quality.yaml", PIPELINE)
}

async fn compare(dir: &Path, seed: u64, fault: Fault) -> Value {
    let pipeline = setup(dir);
    let reference = common::write(dir, "reference.jsonl", &rows(seed, 3000, Fault::None));
    let current = common::write(dir, "current.jsonl", &rows(seed + 100, 1500, fault));
    let stages = driftwatch::runtime::validate(&pipeline)
        .await
        .expect("the pipeline validates");
    let report = driftwatch::runtime::compare(stages, &reference, &current, None)
        .await
        .expect("compare runs");
    if fault != Fault::DeadLetters {
        assert_eq!(report.rejected, 0, "every row decodes");
    }
    serde_json::to_value(report).unwrap()
}

/// Detector name → the columns it found drifting.
fn drifting(report: &Value) -> Vec<(String, Vec<String>)> {
    report["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["computed"], true, "{d}");
            let cols = d["tests"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["drift"] == true)
                .map(|t| t["column"].as_str().unwrap().to_string())
                .collect();
            (d["name"].as_str().unwrap().to_string(), cols)
        })
        .collect()
}

fn test<'a>(report: &'a Value, detector: &str, column: &str) -> &'a Value {
    let d = report["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == detector)
        .unwrap();
    d["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["column"] == column)
        .unwrap()
}

#[tokio::test]
async fn each_check_fires_on_its_fault_and_names_the_counts_and_is_quiet_on_clean_data() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 2] {
        let clean = compare(dir.path(), seed, Fault::None).await;
        for (name, cols) in drifting(&clean) {
            assert!(
                cols.is_empty(),
                "seed {seed}: {name} fired on clean data: {cols:?}\n{clean:#}"
            );
        }
        let expect = |fault| match fault {
            Fault::Missing => ("missing", "income"),
            Fault::Unseen => ("unseen", "region"),
            Fault::DeadLetters => ("dead", "_dead_letters"),
            _ => ("range", "age"),
        };
        for fault in [Fault::Missing, Fault::Unseen, Fault::OutOfRange, Fault::DeadLetters] {
            let report = compare(dir.path(), seed, fault).await;
            let (detector, column) = expect(fault);
            for (name, cols) in drifting(&report) {
                let want: Vec<String> = if name == detector { vec![column.into()] } else { vec![] };
                assert_eq!(cols, want, "seed {seed}, detector {name}\n{report:#}");
            }
            let t = test(&report, detector, column);
            let d = &t["details"];
            match fault {
                Fault::Missing => {
                    let missing = d["current_missing"].as_u64().unwrap();
                    assert!((100..=200).contains(&missing), "{t}");
                    assert_eq!(d["reference_missing"], 0, "{t}");
                }
                Fault::Unseen => {
                    assert_eq!(d["unseen_categories"], 1, "{t}");
                    assert_eq!(d["examples"][0]["category"], "atlantis", "{t}");
                    assert!(d["unseen_values"].as_u64().unwrap() >= 20, "{t}");
                }
                Fault::DeadLetters => {
                    let dead = d["current_dead_letters"].as_u64().unwrap();
                    assert!((25..=70).contains(&dead), "{t}");
                    assert_eq!(d["reference_dead_letters"], 0, "{t}");
                }
                _ => {
                    assert!(d["above"].as_u64().unwrap() >= 15, "{t}");
                    assert!(d["high"].as_f64().unwrap() < 78.0, "{t}");
                }
            }
            // The permutation p-value's floor is 1/(3999 + 1).
            assert!(t["p_value"].as_f64().unwrap() <= 1.0 / 4000.0, "{t}");
        }
    }
}

#[tokio::test]
async fn options_of_another_check_and_wrong_columns_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "tabular.yaml", SCHEMA);
    for (detector, want) in [
        (
            "{name: d, kind: missing_share, columns: [age], tail: 0.01}",
            "detectors[0]: `tail` does not apply to kind missing_share",
        ),
        (
            "{name: d, kind: out_of_range, columns: [region]}",
            "detectors[0].columns[0]: column `region` is Utf8, out_of_range needs a number",
        ),
        (
            "{name: d, kind: out_of_range, columns: [age], tail: 0.5}",
            "detectors[0].tail: `tail` must be in [0, 0.25), got 0.5",
        ),
        (
            "{name: d, kind: unseen_categories, columns: [region], permutations: 50, alpha: 0.001}",
            "detectors[0].permutations: with 50 permutations the smallest p-value is 1/51",
        ),
        (
            "{name: d, kind: unseen_categories, columns: [nope]}",
            "detectors[0].columns[0]: no column `nope`",
        ),
    ] {
        let p = common::write(
            dir.path(),
            "bad.yaml",
            &format!("name: bad\nschema: tabular.yaml\ndetectors:\n  - {detector}\n"),
        );
        let e = driftwatch::runtime::validate(&p)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(want), "{detector}:\n   got: {e}\n  want: {want}");
        assert!(e.contains("bad.yaml:4:"), "located: {e}");
    }
}
