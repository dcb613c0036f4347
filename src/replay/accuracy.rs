//! What a backtest says beyond the alerts: the accuracy `cbpe` estimated
//! for each window next to the accuracy realised once its labels came, and
//! per phase of the ground truth (e.g. each year of a real stream), which
//! detectors drifted.
//!
//! The realised accuracy of a window is the estimate's own when the events
//! carried their labels, else 1 − the current error rate of the `error_rate`
//! evaluation on the windows of joined events that covers exactly the same
//! events (same key and offsets): with every label in, the joined windows
//! fall where the event windows did.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::alert::{Evaluation, OffsetRange};
use crate::scenario::Truth;

/// One window's estimated and realised accuracy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccuracyRow {
    pub detector: String,
    pub key: Option<String>,
    pub evaluation: u64,
    pub current_start_ms: i64,
    pub current_end_ms: i64,
    pub estimated: f64,
    /// Estimate ± 3 standard errors.
    pub band: [f64; 2],
    /// None while the window's labels have not come.
    pub realised: Option<f64>,
}

/// Estimated vs realised accuracy over a backtest (`summary.json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccuracySummary {
    /// Windows with an estimate.
    pub windows: usize,
    /// Of those, windows whose realised accuracy is known.
    pub realised: usize,
    /// Mean |estimated − realised| over them.
    pub mean_abs_error: Option<f64>,
    /// Share of them whose realised accuracy lies in the band.
    pub in_band: Option<f64>,
}

fn number(details: &serde_json::Value, key: &str) -> Option<f64> {
    details.get(key).and_then(serde_json::Value::as_f64)
}

/// The cbpe estimates of a backtest, each with its realised accuracy when known.
pub fn rows(evals: &[Evaluation]) -> Vec<AccuracyRow> {
    let window = |e: &Evaluation| (e.key.clone(), e.window.current_offsets.clone());
    let joined: HashMap<(Option<String>, Vec<OffsetRange>), f64> = evals
        .iter()
        .filter(|e| e.kind == "error_rate")
        .filter_map(|e| {
            let d = e.tests.first()?.details.as_ref()?;
            Some((window(e), 1.0 - number(d, "current_error_rate")?))
        })
        .collect();
    evals
        .iter()
        .filter(|e| e.kind == "cbpe")
        .filter_map(|e| {
            let d = e.tests.first()?.details.as_ref()?;
            let estimated = number(d, "estimated_accuracy")?;
            let band = d
                .get("band")
                .and_then(|b| Some([b.get(0)?.as_f64()?, b.get(1)?.as_f64()?]))?;
            let realised = number(d, "realised_accuracy").or_else(|| joined.get(&window(e)).copied());
            Some(AccuracyRow {
                detector: e.detector.clone(),
                key: e.key.clone(),
                evaluation: e.evaluation,
                current_start_ms: e.window.current_start_ms,
                current_end_ms: e.window.current_end_ms,
                estimated,
                band,
                realised,
            })
        })
        .collect()
}

/// Mean error and band coverage of the estimates; None without estimates.
pub fn summarize(rows: &[AccuracyRow]) -> Option<AccuracySummary> {
    if rows.is_empty() {
        return None;
    }
    let known: Vec<(&AccuracyRow, f64)> = rows.iter().filter_map(|r| Some((r, r.realised?))).collect();
    let n = known.len() as f64;
    let mean =
        |f: &dyn Fn(&AccuracyRow, f64) -> f64| (n > 0.0).then(|| known.iter().map(|(r, a)| f(r, *a)).sum::<f64>() / n);
    Some(AccuracySummary {
        windows: rows.len(),
        realised: known.len(),
        mean_abs_error: mean(&|r, a| (r.estimated - a).abs()),
        in_band: mean(&|r, a| f64::from(u8::from(r.band[0] <= a && a <= r.band[1]))),
    })
}

/// Per phase of the truth: for each detector, (evaluations, drifts, alerts)
/// of the windows that end in the phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseCounts {
    pub key: String,
    pub phase: String,
    pub kind: String,
    pub detectors: BTreeMap<String, [u64; 3]>,
}

/// Which detectors drifted in which phase.
pub fn by_phase(truth: &Truth, evals: &[Evaluation]) -> Vec<PhaseCounts> {
    truth
        .phases
        .iter()
        .map(|p| {
            let mut detectors: BTreeMap<String, [u64; 3]> = BTreeMap::new();
            for e in evals.iter().filter(|e| {
                e.key.as_deref().unwrap_or(&p.key) == p.key
                    && (p.start_ms..=p.end_ms).contains(&e.window.current_end_ms)
            }) {
                let c = detectors.entry(e.detector.clone()).or_default();
                c[0] += 1;
                c[1] += u64::from(e.drift);
                c[2] += u64::from(e.alert);
            }
            PhaseCounts {
                key: p.key.clone(),
                phase: p.name.clone(),
                kind: p.kind.clone(),
                detectors,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::WindowInfo;
    use crate::detect::TestResult;

    fn eval(kind: &str, evaluation: u64, offsets: (i64, i64), details: serde_json::Value) -> Evaluation {
        Evaluation {
            alert_id: String::new(),
            pipeline: "p".into(),
            detector: kind.into(),
            kind: kind.into(),
            drift_type: crate::alert::DriftType::Concept,
            key: None,
            evaluation,
            drift: false,
            alert: false,
            statistic: 0.0,
            p_value: None,
            threshold: None,
            also_drifted: vec![],
            window: WindowInfo {
                reference_size: 10,
                current_size: 10,
                current_offsets: vec![OffsetRange {
                    partition: 0,
                    first: offsets.0,
                    last: offsets.1,
                }],
                current_start_ms: offsets.0,
                current_end_ms: offsets.1,
                window_start_ms: None,
                window_end_ms: None,
                late_events: None,
                reference_sample: None,
                current_sample: None,
                current_scored: None,
            },
            tests: vec![TestResult {
                column: String::new(),
                statistic: 0.0,
                p_value: None,
                drift: false,
                details: Some(details),
            }],
            model: None,
        }
    }

    #[test]
    fn the_realised_accuracy_comes_from_the_same_window_of_joined_events() {
        let est = |a: f64| serde_json::json!({"estimated_accuracy": a, "band": [a - 0.01, a + 0.01]});
        let evals = vec![
            eval("cbpe", 1, (0, 9), est(0.80)),
            eval("cbpe", 2, (5, 14), est(0.75)),
            eval(
                "cbpe",
                3,
                (10, 19),
                serde_json::json!({"estimated_accuracy": 0.7, "band": [0.6, 0.8], "realised_accuracy": 0.71}),
            ),
            eval("error_rate", 1, (0, 9), serde_json::json!({"current_error_rate": 0.25})),
            // Another window: not the estimate's.
            eval("error_rate", 2, (4, 13), serde_json::json!({"current_error_rate": 0.5})),
        ];
        let rows = rows(&evals);
        let realised: Vec<Option<f64>> = rows.iter().map(|r| r.realised).collect();
        assert_eq!(realised, vec![Some(0.75), None, Some(0.71)]);
        let s = summarize(&rows).unwrap();
        assert_eq!((s.windows, s.realised), (3, 2));
        assert!((s.mean_abs_error.unwrap() - 0.03).abs() < 1e-12);
        assert_eq!(s.in_band, Some(0.5));
        assert_eq!(summarize(&[]), None);
    }
}
