//! Scoring a replay against ground truth (the file `produce` writes).
//!
//! An alert belongs where its current window ends (partition and offset of
//! its last event). For each true drift interval and detector: detected when
//! an alert of that key ends inside the interval or within one current-window
//! length after it (the window still holds drifted events); the delay is
//! counted from the interval's first event to the end of the alert's window,
//! in the key's own events and in event time.
//! Alerts of a key that end anywhere else are false alarms.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::alert::Evaluation;
use crate::scenario::Truth;

/// One true drift interval, for one detector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalScore {
    pub key: String,
    pub phase: String,
    pub kind: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub detected: bool,
    /// The key's events from the interval's first one to the end of the first alert's window.
    pub delay_events: Option<i64>,
    /// Event time from the interval's start to the end of that window.
    pub delay_ms: Option<i64>,
}

/// Per detector.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetectorScore {
    pub detected: usize,
    pub missed: usize,
    pub false_alarms: usize,
    pub intervals: Vec<IntervalScore>,
    /// Event-time end of each false alarm's window.
    pub false_alarm_times_ms: Vec<i64>,
}

/// Scores of all detectors.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    pub scenario: String,
    pub detectors: BTreeMap<String, DetectorScore>,
}

/// Where an evaluation's window ends: (partition, offset).
fn end_of(e: &Evaluation) -> Option<(i32, i64)> {
    e.window
        .current_offsets
        .iter()
        .map(|r| (r.partition, r.last))
        .max_by_key(|(_, o)| *o)
}

/// How windows count a key's events, to turn an evaluation into a position.
#[derive(Debug, Clone, Copy)]
pub struct WindowShape {
    /// Events of the key taken by the reference before the current window (0 for a file reference).
    pub reference: i64,
    pub size: i64,
    pub slide: i64,
}

impl WindowShape {
    /// The key's events read when evaluation `n` (1-based) happened.
    fn events_at(&self, n: u64) -> i64 {
        self.reference + self.size + (n as i64 - 1) * self.slide
    }
}

/// Scores every detector that evaluated.
pub fn score(truth: &Truth, evals: &[Evaluation], shape: WindowShape) -> Scores {
    let window = shape.size;
    let mut detectors: BTreeMap<String, DetectorScore> = BTreeMap::new();
    for e in evals {
        detectors.entry(e.detector.clone()).or_default();
    }
    for (name, s) in &mut detectors {
        let alerts: Vec<&Evaluation> = evals.iter().filter(|e| &e.detector == name && e.alert).collect();
        let mut explained = vec![false; alerts.len()];
        for ph in truth.phases.iter().filter(|p| p.drift) {
            // The key's events before this phase.
            let before: i64 = truth
                .phases
                .iter()
                .take_while(|p| !std::ptr::eq(*p, ph))
                .filter(|p| p.key == ph.key)
                .map(|p| p.events as i64)
                .sum();
            let mut hit = None;
            for (i, a) in alerts.iter().enumerate() {
                let Some((part, off)) = end_of(a) else { continue };
                if a.key.as_deref().unwrap_or("") != ph.key || part != ph.partition {
                    continue;
                }
                if off >= ph.first_offset && off <= ph.last_offset + window {
                    explained[i] = true;
                    hit.get_or_insert((shape.events_at(a.evaluation), a.window.current_end_ms));
                }
            }
            match hit {
                Some(_) => s.detected += 1,
                None => s.missed += 1,
            }
            s.intervals.push(IntervalScore {
                key: ph.key.clone(),
                phase: ph.name.clone(),
                kind: ph.kind.clone(),
                start_ms: ph.start_ms,
                end_ms: ph.end_ms,
                detected: hit.is_some(),
                delay_events: hit.map(|(n, _)| n - before),
                delay_ms: hit.map(|(_, t)| t - ph.start_ms),
            });
        }
        for (a, seen) in alerts.iter().zip(&explained) {
            if !seen {
                s.false_alarms += 1;
                s.false_alarm_times_ms.push(a.window.current_end_ms);
            }
        }
    }
    Scores {
        scenario: truth.scenario.clone(),
        detectors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{DriftType, OffsetRange, WindowInfo};
    use crate::scenario::TruthPhase;

    fn phase(name: &str, drift: bool, first: i64, last: i64) -> TruthPhase {
        TruthPhase {
            key: "k".into(),
            name: name.into(),
            kind: if drift { "covariate" } else { "clean" }.into(),
            drift,
            events: (last - first + 1) as usize,
            start_ms: first * 10,
            end_ms: last * 10,
            partition: 0,
            first_offset: first,
            last_offset: last,
            priors: Default::default(),
        }
    }

    fn alert(n: u64, end: i64, alert: bool) -> Evaluation {
        Evaluation {
            alert_id: String::new(),
            pipeline: "p".into(),
            detector: "d".into(),
            kind: "ks".into(),
            drift_type: DriftType::Covariate,
            key: Some("k".into()),
            evaluation: n,
            drift: alert,
            alert,
            statistic: 0.0,
            p_value: Some(0.5),
            threshold: Some(0.01),
            also_drifted: vec![],
            window: WindowInfo {
                reference_size: 100,
                current_size: 50,
                current_offsets: vec![OffsetRange {
                    partition: 0,
                    first: end - 49,
                    last: end,
                }],
                current_start_ms: (end - 49) * 10,
                current_end_ms: end * 10,
            },
            tests: vec![],
            model: None,
        }
    }

    /// By hand: reference 100 events, windows of 50 sliding 50, so
    /// evaluation n ends at offset 149 + 50(n−1). Drift in 300..=399 and
    /// 600..=699; clean elsewhere.
    #[test]
    fn detections_delays_and_false_alarms() {
        let truth = Truth {
            scenario: "s".into(),
            seed: 0,
            destination: "f".into(),
            labels_destination: None,
            phases: vec![
                phase("clean", false, 0, 299),
                phase("drift 1", true, 300, 399),
                phase("clean 2", false, 400, 599),
                phase("drift 2", true, 600, 699),
                phase("clean 3", false, 700, 999),
            ],
        };
        let ends = |n: u64| 149 + 50 * (n as i64 - 1);
        let evals = vec![
            alert(2, ends(2), true),   // ends at 199: clean, a false alarm
            alert(5, ends(5), false),  // 349: drifting but not alerted
            alert(6, ends(6), true),   // 399: drift 1 detected, 100 events in
            alert(7, ends(7), true),   // 449: within a window after drift 1: not false
            alert(12, ends(12), true), // 699: drift 2 detected, 100 events in
            alert(15, ends(15), true), // 849: 150 after drift 2 ended: false alarm
        ];
        assert_eq!(ends(12), 699);
        let shape = WindowShape {
            reference: 100,
            size: 50,
            slide: 50,
        };
        let s = &score(&truth, &evals, shape).detectors["d"];
        assert_eq!((s.detected, s.missed, s.false_alarms), (2, 0, 2));
        assert_eq!(s.intervals[0].delay_events, Some(100));
        assert_eq!(s.intervals[0].delay_ms, Some(3990 - 3000));
        assert_eq!(s.intervals[1].delay_events, Some(100));
        assert_eq!(s.false_alarm_times_ms, [1990, 8490]);
        // Without the second detection, drift 2 is missed.
        let s = &score(&truth, &evals[..4], shape).detectors["d"];
        assert_eq!((s.detected, s.missed, s.false_alarms), (1, 1, 1));
        assert!(!s.intervals[1].detected && s.intervals[1].delay_events.is_none());
    }
}
