//! Scoring a replay against ground truth (the file `produce` writes).
//!
//! Positions are counted in each key's own events, so keys sharing a
//! partition (or a file) do not move each other's: an evaluation stands
//! where its current window ends, after the key's `events_at(n)`-th event.
//! For each true drift interval and detector: detected when an alert of that
//! key ends inside the interval or within one current-window length after it
//! (the window still holds drifted events); the delay is counted from the
//! interval's first event to the end of the alert's window, in the key's own
//! events and in event time.
//!
//! A detector is scored against the drift kinds it watches (its evaluations'
//! `drift_type`: a KS on inputs cannot see a relabelling); intervals of other
//! kinds are listed apart (`watched: false`), neither missed nor detected,
//! and its alerts there are not false alarms. Alerts in a phase of kind
//! `real` (rows as they came, whose drift nobody knows) are only counted.
//! Alerts of a key that end anywhere else are false alarms.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::alert::{DriftType, Evaluation};
use crate::scenario::{Truth, TruthPhase};

/// One true drift interval, for one detector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalScore {
    pub key: String,
    pub phase: String,
    pub kind: String,
    /// Whether the detector watches this kind of drift (only those count as
    /// detected or missed).
    pub watched: bool,
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
    /// The kind of drift the detector watches.
    pub drift_type: Option<crate::alert::DriftType>,
    /// Intervals of that kind caught, and missed.
    pub detected: usize,
    pub missed: usize,
    pub false_alarms: usize,
    /// Alerts in phases of kind `real`, whose drift nobody knows.
    pub in_real_phases: usize,
    /// Intervals of other kinds that it alerted in too (not counted above).
    pub other_kinds_alerted: usize,
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

/// How an evaluation is placed against a phase: count windows by the key's
/// events read when it happened, event-time windows by their end time.
#[derive(Debug, Clone, Copy)]
pub enum WindowShape {
    Count {
        /// Events of the key taken by the reference before the current
        /// window (0 for a file reference).
        reference: i64,
        size: i64,
        slide: i64,
    },
    Time {
        duration: i64,
    },
}

impl WindowShape {
    /// The shape of a pipeline's windows (a file reference has no size here).
    pub fn of(w: &crate::config::WindowConfig) -> Self {
        match w.current {
            crate::config::CurrentConfig::Count { size, slide } => WindowShape::Count {
                reference: match &w.reference {
                    crate::config::ReferenceConfig::First { size } => size.get() as i64,
                    _ => 0,
                },
                size: size.get() as i64,
                slide: slide.get() as i64,
            },
            crate::config::CurrentConfig::Time { duration_ms, .. } => WindowShape::Time {
                duration: duration_ms as i64,
            },
        }
    }

    /// Where evaluation `e` sits: the key's events read when it happened
    /// (count windows), or its window's end (event time).
    fn at(&self, e: &Evaluation) -> i64 {
        match *self {
            WindowShape::Count { reference, size, slide } => reference + size + (e.evaluation as i64 - 1) * slide,
            WindowShape::Time { .. } => e.window.window_end_ms.unwrap_or(e.window.current_end_ms),
        }
    }

    /// Where phase `ph` starts and ends, on the same axis; the end of an
    /// alert's grace is one window after the phase.
    fn span(&self, truth: &Truth, ph: &crate::scenario::TruthPhase) -> (i64, i64, i64) {
        match *self {
            WindowShape::Count { size, .. } => {
                let before = truth.events_before(ph);
                (before, before + ph.events as i64, before + ph.events as i64 + size)
            }
            WindowShape::Time { duration } => (ph.start_ms, ph.end_ms, ph.end_ms + duration),
        }
    }
}

/// A truth file that does not describe the replayed stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the truth file (scenario `{scenario}`) does not describe this replay: {reason}")]
pub struct TruthMismatch {
    pub scenario: String,
    pub reason: String,
}

/// The truth as the evaluations name keys: a scenario streamed under one
/// key (a table, a single scanner) replayed through a pipeline without
/// keys is that key's stream, so its phases lose their key.
pub fn keyed_as(mut truth: Truth, evals: &[Evaluation]) -> Truth {
    let keys: std::collections::BTreeSet<&str> = truth.phases.iter().map(|p| p.key.as_str()).collect();
    if keys.len() == 1 && !evals.is_empty() && evals.iter().all(|e| e.key.is_none()) {
        for p in &mut truth.phases {
            p.key.clear();
        }
    }
    truth
}

/// Refuses a truth file whose keys or times the evaluations never meet (a
/// truth file of another scenario would score every phase missed and every
/// alert a false alarm).
fn check_matches(truth: &Truth, evals: &[Evaluation]) -> Result<(), TruthMismatch> {
    if evals.is_empty() || truth.phases.is_empty() {
        return Ok(());
    }
    let mismatch = |reason: String| TruthMismatch {
        scenario: truth.scenario.clone(),
        reason,
    };
    let truth_keys: std::collections::BTreeSet<&str> = truth.phases.iter().map(|p| p.key.as_str()).collect();
    let seen: std::collections::BTreeSet<&str> = evals.iter().map(|e| e.key.as_deref().unwrap_or("")).collect();
    if truth_keys.is_disjoint(&seen) {
        return Err(mismatch(format!(
            "its keys {truth_keys:?} are not among the replay's {seen:?}"
        )));
    }
    let (t0, t1) = truth
        .phases
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.start_ms), b.max(p.end_ms)));
    let (e0, e1) = evals.iter().fold((i64::MAX, i64::MIN), |(a, b), e| {
        (a.min(e.window.current_start_ms), b.max(e.window.current_end_ms))
    });
    if e1 < t0 || e0 > t1 {
        return Err(mismatch(format!(
            "its phases span event times {t0}..={t1} ms, the replay's windows {e0}..={e1} ms"
        )));
    }
    Ok(())
}

/// Scores every detector that evaluated.
pub fn score(truth: &Truth, evals: &[Evaluation], shape: WindowShape) -> Result<Scores, TruthMismatch> {
    check_matches(truth, evals)?;
    let mut detectors: BTreeMap<String, DetectorScore> = BTreeMap::new();
    for e in evals {
        detectors.entry(e.detector.clone()).or_default().drift_type = Some(e.drift_type);
    }
    for (name, s) in &mut detectors {
        let alerts: Vec<&Evaluation> = evals.iter().filter(|e| &e.detector == name && e.alert).collect();
        let mut explained = vec![false; alerts.len()];
        s.intervals = truth
            .phases
            .iter()
            .filter(|p| p.drift)
            .map(|ph| interval_score(truth, ph, &alerts, &mut explained, shape, s.drift_type))
            .collect();
        for i in &s.intervals {
            match (i.watched, i.detected) {
                (true, true) => s.detected += 1,
                (true, false) => s.missed += 1,
                (false, true) => s.other_kinds_alerted += 1,
                (false, false) => {}
            }
        }
        for ph in truth.phases.iter().filter(|p| p.kind == "real") {
            let (before, end, _) = shape.span(truth, ph);
            for (i, a) in alerts.iter().enumerate() {
                let at = shape.at(a);
                if !explained[i] && a.key.as_deref().unwrap_or("") == ph.key && at > before && at <= end {
                    explained[i] = true;
                    s.in_real_phases += 1;
                }
            }
        }
        for (a, seen) in alerts.iter().zip(&explained) {
            if !seen {
                s.false_alarms += 1;
                s.false_alarm_times_ms.push(a.window.current_end_ms);
            }
        }
    }
    Ok(Scores {
        scenario: truth.scenario.clone(),
        detectors,
    })
}

/// A detector's score on one true drift interval `ph`: whether one of its
/// `alerts` fell inside it (marking those in `explained`), how late the
/// first did, and whether the detector watches the interval's kind
/// (`drift_type`: the detector's).
fn interval_score(
    truth: &Truth,
    ph: &TruthPhase,
    alerts: &[&Evaluation],
    explained: &mut [bool],
    shape: WindowShape,
    drift_type: Option<DriftType>,
) -> IntervalScore {
    let (before, _, until) = shape.span(truth, ph);
    let mut hit = None;
    for (i, a) in alerts.iter().enumerate() {
        let at = shape.at(a);
        if a.key.as_deref().unwrap_or("") == ph.key && at > before && at <= until {
            explained[i] = true;
            hit.get_or_insert((at, a.window.window_end_ms.unwrap_or(a.window.current_end_ms)));
        }
    }
    IntervalScore {
        key: ph.key.clone(),
        phase: ph.name.clone(),
        kind: ph.kind.clone(),
        watched: drift_type.is_some_and(|t| crate::alert::drift_type_name(t) == ph.kind),
        start_ms: ph.start_ms,
        end_ms: ph.end_ms,
        detected: hit.is_some(),
        delay_events: hit
            .filter(|_| matches!(shape, WindowShape::Count { .. }))
            .map(|(n, _)| n - before),
        delay_ms: hit.map(|(_, t)| t - ph.start_ms),
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
                window_start_ms: None,
                window_end_ms: None,
                late_events: None,
                reference_sample: None,
                current_sample: None,
                current_scored: None,
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
        let shape = WindowShape::Count {
            reference: 100,
            size: 50,
            slide: 50,
        };
        let s = &score(&truth, &evals, shape).unwrap().detectors["d"];
        assert_eq!((s.detected, s.missed, s.false_alarms), (2, 0, 2));
        assert_eq!(s.intervals[0].delay_events, Some(100));
        assert_eq!(s.intervals[0].delay_ms, Some(3990 - 3000));
        assert_eq!(s.intervals[1].delay_events, Some(100));
        assert_eq!(s.false_alarm_times_ms, [1990, 8490]);
        // Without the second detection, drift 2 is missed.
        let s = &score(&truth, &evals[..4], shape).unwrap().detectors["d"];
        assert_eq!((s.detected, s.missed, s.false_alarms), (1, 1, 1));
        assert!(!s.intervals[1].detected && s.intervals[1].delay_events.is_none());
    }

    fn keyed(key: &str, name: &str, kind: &str, events: usize, start_ms: i64) -> TruthPhase {
        TruthPhase {
            key: key.into(),
            name: name.into(),
            kind: kind.into(),
            drift: kind != "clean",
            events,
            start_ms,
            end_ms: start_ms + events as i64 * 10,
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            priors: Default::default(),
        }
    }

    fn truth(phases: Vec<TruthPhase>) -> Truth {
        Truth {
            scenario: "s".into(),
            seed: 0,
            destination: "f".into(),
            labels_destination: None,
            phases,
        }
    }

    /// Seven keys interleaved in one file: key `g`'s 300-event drift, caught
    /// 700 of the file's lines but 100 of its own events in, is a
    /// detection, and the window straddling the phase's end is not a false
    /// alarm. (Measured in partition offsets, both were wrong.)
    #[test]
    fn positions_are_counted_in_the_key_s_own_events() {
        let mut phases: Vec<TruthPhase> = "abcdef"
            .chars()
            .map(|k| keyed(&k.to_string(), "clean", "clean", 1600, 0))
            .collect();
        phases.push(keyed("g", "clean", "clean", 1000, 0));
        phases.push(keyed("g", "shift", "covariate", 300, 10_000));
        phases.push(keyed("g", "clean again", "clean", 300, 13_000));
        let shape = WindowShape::Count {
            reference: 500,
            size: 100,
            slide: 100,
        };
        let mut a = alert(6, 0, true); // g's events at 1100: 100 into the drift
        a.key = Some("g".into());
        a.window.current_start_ms = 10_000;
        a.window.current_end_ms = 11_000;
        let mut b = alert(9, 0, true); // at 1400: within a window after it ended
        b.key = Some("g".into());
        let s = &score(&truth(phases), &[a, b], shape).unwrap().detectors["d"];
        assert_eq!((s.detected, s.missed, s.false_alarms), (1, 0, 0), "{s:?}");
        assert_eq!(s.intervals[0].delay_events, Some(100));
    }

    /// A KS on inputs cannot see a relabelling: that phase is listed apart,
    /// not missed; its alerts in a phase of another kind are not false alarms.
    #[test]
    fn detectors_are_scored_against_the_kinds_they_watch() {
        let phases = vec![
            keyed("k", "clean", "clean", 1000, 0),
            keyed("k", "new scanner", "covariate", 1000, 10_000),
            keyed("k", "relabelled", "concept", 1000, 20_000),
        ];
        let shape = WindowShape::Count {
            reference: 500,
            size: 500,
            slide: 500,
        };
        // Evaluation 2 ends at the key's 1500th event (the covariate phase).
        let mut ks = alert(2, 0, true);
        ks.window.current_start_ms = 10_000;
        ks.window.current_end_ms = 15_000;
        let s = &score(&truth(phases.clone()), &[ks.clone()], shape).unwrap().detectors["d"];
        assert_eq!(
            (s.detected, s.missed, s.false_alarms, s.other_kinds_alerted),
            (1, 0, 0, 0)
        );
        assert!(!s.intervals[1].watched && !s.intervals[1].detected);
        // An error-rate detector alerting in the covariate phase only.
        let mut er = ks;
        er.drift_type = DriftType::Concept;
        let s = &score(&truth(phases), &[er], shape).unwrap().detectors["d"];
        assert_eq!(
            (s.detected, s.missed, s.false_alarms, s.other_kinds_alerted),
            (0, 1, 0, 1)
        );
    }

    /// A truth file of another scenario is refused, naming what differs.
    #[test]
    fn a_truth_file_of_another_scenario_is_refused() {
        let shape = WindowShape::Count {
            reference: 100,
            size: 50,
            slide: 50,
        };
        let phases = vec![keyed("scanner-z", "clean", "clean", 1000, 0)];
        let e = score(&truth(phases), &[alert(1, 149, false)], shape).unwrap_err();
        assert!(e.to_string().contains("scanner-z"), "{e}");
        let phases = vec![keyed("k", "clean", "clean", 10, 1_000_000_000)];
        let e = score(&truth(phases), &[alert(1, 149, false)], shape).unwrap_err();
        assert!(e.to_string().contains("event times"), "{e}");
    }

    #[test]
    fn a_single_key_scenario_scores_an_unkeyed_replay() {
        let one = Truth {
            scenario: "s".into(),
            seed: 0,
            destination: "t".into(),
            labels_destination: None,
            phases: vec![phase("clean", false, 0, 299), phase("drift", true, 300, 399)],
        };
        let unkeyed = Evaluation {
            key: None,
            ..alert(5, 349, true)
        };
        let keyed = keyed_as(one.clone(), std::slice::from_ref(&unkeyed));
        assert!(keyed.phases.iter().all(|p| p.key.is_empty()));
        let shape = WindowShape::Count {
            reference: 100,
            size: 50,
            slide: 50,
        };
        let s = &score(&keyed, &[unkeyed], shape).unwrap().detectors["d"];
        assert_eq!((s.detected, s.false_alarms), (1, 0));
        // Keyed evaluations keep the truth as it is.
        assert_eq!(keyed_as(one.clone(), &[alert(5, 349, true)]), one);
    }
}
