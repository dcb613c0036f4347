//! A scikit-learn pipeline exported by skl2onnx (imputer, scaler, one-hot
//! encoder, logistic regression; `scripts/train_census_model.py`) on US
//! Census employment records: driftwatch's model stage gives the
//! probabilities scikit-learn and ONNX Runtime give, missing ages included;
//! a ZipMap export and inputs that do not fit are refused by `validate`;
//! bad values are dead-lettered or left unscored, never a panic.

mod common;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int64Type};
use driftwatch::engine::Stages;
use driftwatch::source::RawRecord;

use common::root;

async fn census_stages() -> Stages {
    driftwatch::runtime::validate(&root().join("pipelines/census.yaml"))
        .await
        .expect("census pipeline validates")
}

fn records(lines: &[String]) -> Vec<RawRecord> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| RawRecord {
            partition: 0,
            offset: i as i64,
            payload: Some(l.as_bytes().to_vec()),
            timestamp_ms: None,
        })
        .collect()
}

fn heldout() -> Vec<String> {
    std::fs::read_to_string(root().join("tests/data/census/heldout.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// (probabilities per row, or None for an unscored row; predicted class).
fn outputs(batches: &[RecordBatch]) -> Vec<(Option<Vec<f32>>, Option<i64>)> {
    let mut out = vec![];
    for b in batches {
        let p = b.column_by_name("probabilities").unwrap().as_fixed_size_list();
        let c = b.column_by_name("predicted_class").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let probs = p
                .is_valid(i)
                .then(|| p.value(i).as_primitive::<Float32Type>().values().to_vec());
            out.push((probs, c.is_valid(i).then(|| c.value(i))));
        }
    }
    out
}

#[tokio::test]
async fn the_model_stage_gives_scikit_learns_probabilities_missing_ages_included() {
    let mut stages = census_stages().await;
    let lines = heldout();
    let (batches, rejected) = stages.ingest(&records(&lines)).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let got = outputs(&batches);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/census/expected.json")).unwrap())
            .unwrap();
    let sk = expected["sklearn_predict_proba"].as_array().unwrap();
    let ort = expected["onnxruntime_probabilities"].as_array().unwrap();
    let labels = expected["onnxruntime_label"].as_array().unwrap();
    assert_eq!(got.len(), 600);
    let mut worst = 0f64;
    for (i, (probs, class)) in got.iter().enumerate() {
        let probs = probs.as_ref().unwrap_or_else(|| panic!("row {i} scored"));
        for (k, p) in probs.iter().enumerate() {
            let want_sk = sk[i][k].as_f64().unwrap();
            let want_ort = ort[i][k].as_f64().unwrap();
            worst = worst.max((*p as f64 - want_sk).abs());
            assert!(
                (*p as f64 - want_sk).abs() <= 1e-5,
                "row {i} class {k}: {p} vs scikit-learn {want_sk}"
            );
            assert!(
                (*p as f64 - want_ort).abs() <= 1e-6,
                "row {i} class {k}: {p} vs onnxruntime {want_ort}"
            );
        }
        assert_eq!(
            *class,
            labels[i].as_i64(),
            "row {i}: the label output is the predicted class"
        );
    }
    // Every 10th row has no age: the model's imputer fills it (these rows are in the check above).
    assert!(lines[0].contains("\"AGEP\": null"), "{}", lines[0]);
    eprintln!("max |driftwatch − scikit-learn| = {worst:.2e}");
}

#[tokio::test]
async fn bad_values_are_dead_lettered_and_absent_codes_leave_the_row_unscored() {
    let mut stages = census_stages().await;
    let good: serde_json::Value = serde_json::from_str(&heldout()[1]).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut e = good.clone();
        e[key] = value;
        e.to_string()
    };
    let without = |key: &str| {
        let mut e = good.clone();
        e.as_object_mut().unwrap().remove(key);
        e.to_string()
    };
    let lines = vec![
        good.to_string(),
        with("AGEP", serde_json::json!("forty")), // a string where a number goes
        without("SCHL"),                          // a code the model needs, absent (non-nullable)
        with("SEX", serde_json::json!(["1"])),    // not a scalar
        without("AGEP"),                          // nullable: NaN, imputed
        with("SCHL", serde_json::json!("99")),    // a code never seen: one-hot ignores it
        with("RAC1P", serde_json::json!("nul\u{0}byte")),
    ];
    let (batches, rejected) = stages.ingest(&records(&lines)).await.unwrap();
    let bad: Vec<i64> = rejected.iter().map(|r| r.offset).collect();
    assert_eq!(bad, vec![1, 2, 3], "{rejected:?}");
    for r in &rejected {
        assert!(!r.message.is_empty() && !r.reason.as_str().is_empty(), "{r:?}");
    }
    let got = outputs(&batches);
    assert_eq!(got.len(), 4);
    for (i, (p, c)) in got.iter().enumerate() {
        let p = p.as_ref().unwrap_or_else(|| panic!("row {i} scored"));
        assert!((p[0] + p[1] - 1.0).abs() < 1e-5 && c.is_some(), "row {i}: {p:?}");
    }
}

#[tokio::test]
async fn validate_refuses_a_zipmap_export_and_inputs_that_do_not_fit_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = std::fs::read_to_string(root().join("pipelines/census.yaml")).unwrap();
    let schema = root().join("schemas/census.yaml");
    let base = pipeline.replace("../schemas/census.yaml", schema.to_str().unwrap());
    let model = root().join("models/census_lr.onnx");
    let base = base.replace("../models/census_lr.onnx", model.to_str().unwrap());
    let zipmap = root().join("tests/data/census/zipmap.onnx");
    for (name, text, want) in [
        (
            "zipmap",
            base.replace(model.to_str().unwrap(), zipmap.to_str().unwrap()),
            "no output named `label` (outputs: output_label, output_probability); one of them is not a tensor, perhaps a ZipMap (a sequence of maps): export the model with skl2onnx's `options={'zipmap': False}`",
        ),
        (
            "zipmap_named",
            base.replace(model.to_str().unwrap(), zipmap.to_str().unwrap()).replace(
                "probabilities: probabilities, label: label",
                "probabilities: output_probability, label: output_label",
            ),
            "output `output_probability` is a ZipMap (a sequence of maps): export the model with skl2onnx's `options={'zipmap': False}`",
        ),
        (
            "column_missing",
            base.replace("columns: [AGEP, SCHL,", "columns: [SCHL,"),
            "inputs [\"AGEP\"] have no column in model.input.columns",
        ),
        (
            "not_an_input",
            base.replace("columns: [AGEP, SCHL,", "columns: [AGEP, year, SCHL,"),
            "column `year` is not an input of the model",
        ),
        (
            "unknown_column",
            base.replace("columns: [AGEP, SCHL,", "columns: [AGE, SCHL,"),
            "model.input.columns[0]: no column `AGE`",
        ),
        (
            "matrix_of_codes",
            base.replace(
                "type: columns\n    columns: [AGEP, SCHL,",
                "type: matrix\n    columns: [AGEP, SCHL,",
            ),
            "model.input.columns[1]: column `SCHL` is Utf8, a matrix input takes numbers",
        ),
    ] {
        let p = common::write(dir.path(), &format!("{name}.yaml"), &text);
        let e = driftwatch::runtime::validate(&p).await.err().map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("{name}: validated"));
        assert!(e.contains(want), "{name}:\n   got: {e}\n  want: …{want}…");
    }
}

/// The real 2016–2018 stream in NannyML's chunks of 5,000: driftwatch's CBPE
/// (calibrated on the labelled 2015 reference) estimates each chunk's
/// accuracy as well as NannyML's own CBPE on the same chunks does
/// (`tests/fixtures/cbpe_nannyml.json`, from `scripts/cbpe_nannyml.py`):
/// mean absolute error at most NannyML's + 0.005.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbpe_estimates_the_real_accuracy_of_2016_to_2018_as_well_as_nannyml() {
    let mut stages = census_stages().await;
    let reference = census_events("reference.pq");
    let current = census_events("analysis.pq");
    let mut score = async |events: Vec<serde_json::Value>| -> (Vec<f64>, Vec<Option<i64>>) {
        let lines: Vec<String> = events.iter().map(|v| v.to_string()).collect();
        let (batches, rejected) = stages.ingest(&records(&lines)).await.unwrap();
        assert!(rejected.is_empty());
        let probs: Vec<f64> = outputs(&batches)
            .into_iter()
            .flat_map(|(p, _)| p.unwrap().into_iter().map(f64::from))
            .collect();
        let labels = events.iter().map(|v| v["employed"].as_i64()).collect();
        (probs, labels)
    };
    let (rp, rl) = score(reference).await;
    let (cp, cl) = score(current).await;
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/cbpe_nannyml.json")).unwrap())
            .unwrap();
    let chunks = fixture["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 42);
    let (mut ours, mut theirs, mut auc_ours, mut auc_theirs) = (0.0, 0.0, 0.0, 0.0);
    for c in chunks {
        let (a, b) = (
            c["start"].as_u64().unwrap() as usize,
            c["end"].as_u64().unwrap() as usize,
        );
        let d = driftwatch::detect::kinds::cbpe::estimate_rows(2, (&rp, &rl), (&cp[2 * a..2 * b], &cl[a..b])).unwrap();
        let realised = c["realised_accuracy"].as_f64().unwrap();
        assert!(
            (d["realised_accuracy"].as_f64().unwrap() - realised).abs() < 1e-12,
            "same chunk {a}..{b}"
        );
        ours += (d["estimated_accuracy"].as_f64().unwrap() - realised).abs();
        theirs += (c["nannyml_accuracy"].as_f64().unwrap() - realised).abs();
        let realised_auc = c["realised_roc_auc"].as_f64().unwrap();
        auc_ours += (d["estimated_roc_auc"].as_f64().unwrap() - realised_auc).abs();
        auc_theirs += (c["nannyml_roc_auc"].as_f64().unwrap() - realised_auc).abs();
    }
    let n = chunks.len() as f64;
    let (ours, theirs) = (ours / n, theirs / n);
    eprintln!(
        "mean |estimated − realised| accuracy: driftwatch {ours:.4}, NannyML {theirs:.4}; ROC AUC: driftwatch {:.4}, NannyML {:.4}",
        auc_ours / n,
        auc_theirs / n
    );
    assert!(ours <= theirs + 0.005, "driftwatch {ours:.4} vs NannyML {theirs:.4}");
}

/// Rows of one of the census parquet files as events (`employed` joined
/// from the targets file for the analysis years).
fn census_events(file: &str) -> Vec<serde_json::Value> {
    use driftwatch::source::file::read_records;
    let data = root().join(".deps/census");
    let json = |r: &RawRecord| -> serde_json::Value { serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap() };
    let mut events: Vec<serde_json::Value> = read_records(&data.join(file)).unwrap().iter().map(json).collect();
    if file == "analysis.pq" {
        let employed: std::collections::HashMap<i64, i64> = read_records(&data.join("analysis_target.pq"))
            .unwrap()
            .iter()
            .map(|r| {
                let v = json(r);
                (v["id"].as_i64().unwrap(), v["employed"].as_i64().unwrap())
            })
            .collect();
        for v in &mut events {
            v["employed"] = employed[&v["id"].as_i64().unwrap()].into();
        }
    }
    events.sort_by_key(|v| v["id"].as_i64().unwrap());
    events
}

/// The seed's fraud case on real rows: 2016 resampled so that the share of
/// people not employed rises from about half to 80 % (seeded). The
/// label-shift detector fires, and its BBSE estimate of that share, from
/// predictions alone (the current labels are removed), is within 0.02 of the
/// truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prior_shift_on_real_rows_is_estimated_by_bbse_within_two_points() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, events: &[serde_json::Value]| {
        let text: String = events.iter().map(|v| format!("{v}\n")).collect();
        common::write(dir.path(), name, &text)
    };
    let reference = write("reference.jsonl", &census_events("reference.pq"));
    let year: Vec<serde_json::Value> = census_events("analysis.pq")
        .into_iter()
        .filter(|v| v["year"] == 2016)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut neg, mut pos): (Vec<_>, Vec<_>) = year.iter().cloned().partition(|v| v["employed"] == 0);
    neg.shuffle(&mut rng);
    pos.shuffle(&mut rng);
    let n = 20_000;
    let mut shifted: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            if rng.random::<f64>() < 0.8 {
                neg.pop()
            } else {
                pos.pop()
            }
            .unwrap()
        })
        .collect();
    let truth = shifted.iter().filter(|v| v["employed"] == 0).count() as f64 / n as f64;
    for v in &mut shifted {
        v.as_object_mut().unwrap().remove("employed");
    }
    let current = write("current.jsonl", &shifted);
    let stages = census_stages().await;
    let report = driftwatch::runtime::compare(stages, &reference, &current, None)
        .await
        .unwrap();
    let d = report.detectors.iter().find(|d| d.name == "label_shift").unwrap();
    assert!(d.drift, "{d:?}");
    let details = d.tests[0].details.as_ref().unwrap();
    let classes = details["classes"].as_array().unwrap();
    let at = classes
        .iter()
        .position(|c| c == "0")
        .unwrap_or_else(|| panic!("{details}"));
    let estimated = details["estimated_priors"][at].as_f64().unwrap();
    eprintln!("share not employed: truth {truth:.4}, BBSE {estimated:.4}");
    assert!((estimated - truth).abs() <= 0.02, "BBSE {estimated} vs truth {truth}");
}

/// `pipelines/census.yaml` with the first `size` events of the stream as
/// its reference instead of the 2015 file, written into `dir`.
fn census_pipeline_with_first_reference(dir: &std::path::Path, size: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("pipelines/census.yaml")).unwrap();
    let text = text
        .replace("../schemas/", &format!("{}/schemas/", root().display()))
        .replace("../models/", &format!("{}/models/", root().display()))
        .replace(
            "reference: {type: file, path: ../.deps/census/reference.pq}",
            &format!("reference: {{type: first, size: {size}}}"),
        );
    assert!(text.contains("type: first"), "census.yaml's reference line moved");
    common::write(dir, "census-first.yaml", &text)
}

/// `driftwatch produce` of a census scenario into `dir`, then `replay` of
/// the events with their late labels through `pipeline` against the
/// ground truth: (summary.json, stats.jsonl lines).
fn produce_and_replay(
    scenario: &str,
    pipeline: &std::path::Path,
    dir: &std::path::Path,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let bin = env!("CARGO_BIN_EXE_driftwatch");
    let (events, labels, out) = (dir.join("events.jsonl"), dir.join("labels.jsonl"), dir.join("out"));
    let run = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let scenario = root().join("pipelines/scenarios").join(scenario);
    run(&[
        "produce".as_ref(),
        scenario.as_os_str(),
        "--out".as_ref(),
        events.as_os_str(),
        "--labels-out".as_ref(),
        labels.as_os_str(),
    ]);
    let truth = dir.join("events.truth.json");
    run(&[
        "replay".as_ref(),
        pipeline.as_os_str(),
        "--input".as_ref(),
        events.as_os_str(),
        "--labels".as_ref(),
        labels.as_os_str(),
        "--truth".as_ref(),
        truth.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let summary = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let stats = std::fs::read_to_string(out.join("stats.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, stats)
}

/// The details of a `stats.jsonl` line's (only) result column.
fn first_details(stat: &serde_json::Value) -> &serde_json::Value {
    let details = stat["details"]
        .as_object()
        .unwrap_or_else(|| panic!("no details: {stat}"));
    details.values().next().unwrap()
}

/// Where a detector's evaluations in `stats.jsonl` lines were: their
/// current windows' offsets, in order.
fn windows_of(stats: &[serde_json::Value], detector: &str) -> Vec<String> {
    stats
        .iter()
        .filter(|e| e["detector"] == detector)
        .map(|e| e["window"]["current_offsets"].to_string())
        .collect()
}

/// The detector's score against the truth in a replay summary.
fn truth_score<'a>(summary: &'a serde_json::Value, detector: &str) -> &'a serde_json::Value {
    &summary["truth"]["detectors"][detector]
}

/// The seed's fraud case on real rows, streamed with late labels: 2015's
/// records resampled to 15 % employed, then 60 % (a rate that quadruples),
/// watched against the stream's first 5,000 events (the 2015 file has the
/// real rate). label_shift catches the rise within a window, its BBSE
/// estimate of the new rate is within 0.02 of the truth, and nothing fires
/// on the clean phase. Its reference's labels come late, so label_shift
/// and cbpe run on the windows of joined events, as error_rate.
#[test]
fn a_quadrupled_employment_rate_on_real_rows_is_caught_and_estimated() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = census_pipeline_with_first_reference(dir.path(), 5000);
    let (summary, stats) = produce_and_replay("census-prior-shift.yaml", &pipeline, dir.path());
    let s = truth_score(&summary, "label_shift");
    assert_eq!(
        (s["detected"].as_u64(), s["false_alarms"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    let first_alert_delay = s["intervals"][0]["delay_events"].as_i64().unwrap();
    assert!(
        first_alert_delay <= 5000,
        "the label shift is seen within one window: {first_alert_delay}"
    );
    // Deterministically on the windows of joined events (a run evaluates as
    // its replay, however fast it reads the labels).
    let windows = |d: &str| windows_of(&stats, d);
    assert_eq!(windows("label_shift"), windows("error_rate"));
    assert_eq!(windows("estimated_accuracy"), windows("error_rate"));
    // Evaluations whose window lies wholly in the shift (the last ones).
    let last = stats.iter().rev().find(|e| e["detector"] == "label_shift").unwrap();
    let details = first_details(last);
    let at = details["classes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c == "1")
        .unwrap();
    let estimated = details["estimated_priors"][at].as_f64().unwrap();
    assert!((estimated - 0.6).abs() <= 0.02, "BBSE {estimated} vs 0.6: {details}");
    for d in [
        "age_ks",
        "codes_chi2",
        "missing",
        "unseen_codes",
        "age_range",
        "dead_letters",
    ] {
        assert_eq!(
            truth_score(&summary, d)["false_alarms"],
            0,
            "{d}: {}",
            truth_score(&summary, d)
        );
    }
}

/// A concept change on real rows: employment inverted for people who moved
/// within the country. error_rate catches it once the labels come; the
/// input detectors stay quiet; cbpe, which sees only inputs and
/// probabilities, estimates each window as its events come (calibrated on
/// the labelled 2015 file) and keeps estimating the old accuracy while the
/// realised one drops (the report puts the two side by side).
#[test]
fn a_relationship_inverted_for_a_subgroup_is_concept_drift_that_only_labels_show() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = root().join("pipelines/census.yaml");
    let (summary, stats) = produce_and_replay("census-concept.yaml", &pipeline, dir.path());
    let windows = |d: &str| windows_of(&stats, d);
    assert_eq!(windows("estimated_accuracy"), windows("age_ks"), "on the event windows");
    let s = truth_score(&summary, "error_rate");
    assert_eq!(
        (s["detected"].as_u64(), s["false_alarms"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    for d in ["age_ks", "codes_chi2", "predicted_chi2", "label_shift"] {
        let alerts = summary["detectors"][d]["alerts"].as_u64().unwrap();
        assert_eq!(alerts, 0, "{d} sees no change in inputs or predictions");
    }
    // Estimated vs realised: in the inverted phase the estimate stays while
    // the realised accuracy drops by the subgroup's share of errors.
    let estimated: Vec<f64> = stats
        .iter()
        .filter(|e| e["detector"] == "estimated_accuracy")
        .map(|e| first_details(e)["estimated_accuracy"].as_f64().unwrap())
        .collect();
    assert!(!estimated.is_empty());
    let acc = &summary["accuracy"];
    assert_eq!(acc["windows"].as_u64(), Some(estimated.len() as u64), "{acc}");
    assert_eq!(acc["realised"], acc["windows"], "every window's labels came: {acc}");
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(html.contains("Estimated vs realised accuracy"));
    let realised: Vec<f64> = html
        .split("data-realised=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(realised.len(), estimated.len());
    let gap: Vec<f64> = estimated.iter().zip(&realised).map(|(e, r)| e - r).collect();
    let (first, worst) = (gap[0], gap.iter().cloned().fold(f64::MIN, f64::max));
    assert!(first.abs() < 0.03, "before the change the estimate holds: {gap:?}");
    assert!(
        worst > 0.05,
        "the inverted subgroup costs accuracy the estimate cannot see: {gap:?}"
    );
}

/// The real stream, 2015 to 2018 in time order with late labels: what the
/// README's backtest reports. 2015 (its first 5,000 records the reference)
/// is quiet; from 2017 the ancestry codes (ANC) move and ages pass 2015's
/// top; the model's accuracy holds, so error_rate, label_shift and cbpe stay
/// quiet, and cbpe's estimate is within 0.01 of the realised accuracy on
/// average over every window, the realised value inside its band in at
/// least 90 % of them.
#[test]
fn the_real_2015_to_2018_stream_backtests_as_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, _) = produce_and_replay("census.yaml", &root().join("pipelines/census.yaml"), dir.path());
    let phases = summary["phases"].as_array().unwrap();
    let drifts = |year: &str, detector: &str| -> u64 {
        let p = phases.iter().find(|p| p["phase"] == year).unwrap();
        p["detectors"][detector][1].as_u64().unwrap_or(0)
    };
    let detectors: Vec<&String> = summary["detectors"].as_object().unwrap().keys().collect();
    for d in &detectors {
        assert_eq!(drifts("2015", d), 0, "{d} in 2015");
    }
    for d in [
        "error_rate",
        "label_shift",
        "estimated_accuracy",
        "predicted_chi2",
        "missing",
        "unseen_codes",
        "dead_letters",
    ] {
        assert_eq!(summary["detectors"][d]["alerts"], 0, "{d}: {}", summary["detectors"][d]);
    }
    assert!(
        drifts("2018", "codes_chi2") >= 20 && drifts("2018", "age_range") >= 15,
        "{phases:?}"
    );
    let acc = &summary["accuracy"];
    assert!(
        acc["windows"].as_u64().unwrap() >= 100 && acc["realised"] == acc["windows"],
        "{acc}"
    );
    assert!(acc["mean_abs_error"].as_f64().unwrap() <= 0.01, "{acc}");
    assert!(acc["in_band"].as_f64().unwrap() >= 0.9, "{acc}");
}
