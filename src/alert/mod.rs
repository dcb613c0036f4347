//! Turning detector results into evaluation records and alerts.
//!
//! Every evaluation becomes an [`Evaluation`] (sent to the stats topic when
//! configured); those with `drift: true` are alerts (sent to the alerts
//! topic). The record's JSON Schema is `schemas/alert.schema.json`.
//! `alert_id` is deterministic — sha256 of pipeline, detector, key and the
//! window's end position — so a replay or a restart produces the same ids.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::detect::{DetectorResult, TestResult};
use crate::model::ModelIdentity;

pub use crate::detect::{DriftType, drift_type_name};

/// Offsets of one partition inside a window.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct OffsetRange {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// Where the evaluated windows were.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowInfo {
    pub reference_size: usize,
    pub current_size: usize,
    pub current_offsets: Vec<OffsetRange>,
    pub current_start_ms: i64,
    pub current_end_ms: i64,
    /// Event-time windows: the current window `[window_start_ms, window_end_ms)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end_ms: Option<i64>,
    /// Event-time windows: late events of this key since its last
    /// evaluation (counted, not added to any window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_events: Option<u64>,
    /// Sampled windows (`window.max_sample`): events of each window the
    /// raw-value tests (KS, MMD, distances) read; the sizes count them all,
    /// as do the categorical tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_sample: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_sample: Option<usize>,
    /// With `model.sample`: events of the current window the model scored
    /// (the detectors on its outputs read these, or a sample of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_scored: Option<u64>,
}

/// One detector evaluation for one key; an alert when `drift` is true.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    pub alert_id: String,
    pub pipeline: String,
    pub detector: String,
    pub kind: String,
    pub drift_type: DriftType,
    /// Window key, or null when the pipeline is not keyed.
    pub key: Option<String>,
    /// Evaluation number for this key (1-based).
    pub evaluation: u64,
    /// The detector's tests found drift on this evaluation.
    pub drift: bool,
    /// The evaluation is sent as an alert: it drifted and the pipeline's
    /// `alerting` rules (hysteresis, cooldown) let it through.
    pub alert: bool,
    pub statistic: f64,
    /// Smallest p-value; null for distance detectors.
    pub p_value: Option<f64>,
    /// p-value cutoff (tests) or statistic threshold (distances).
    pub threshold: Option<f64>,
    /// The other detectors that drifted on the same evaluation (same key and
    /// window), so an alert says when it is not alone.
    pub also_drifted: Vec<String>,
    pub window: WindowInfo,
    pub tests: Vec<TestResult>,
    /// The model that scored the events, if the pipeline has one.
    pub model: Option<ModelIdentity>,
}

/// Deterministic id of an evaluation: of its pipeline, detector, key and
/// position (the event it was made at), and for event-time windows also of
/// its window, since one event can close several of a key's windows.
pub fn alert_id(pipeline: &str, detector: &str, key: &str, end: (i32, i64), window: Option<(i64, i64)>) -> String {
    let mut h = Sha256::new();
    let position = format!("{}:{}", end.0, end.1);
    let window = window.map(|(s, e)| format!("{s}..{e}"));
    for part in [pipeline, detector, key, &position]
        .into_iter()
        .chain(window.as_deref())
    {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Turns drifting evaluations into alerts: at least k of the last m
/// evaluations of a detector and key drifted, and no alert of theirs within
/// the last `cooldown` evaluations. State is per (detector, key) and depends
/// only on the sequence of evaluations, so a replay reproduces it.
#[derive(Debug, Default)]
pub struct AlertPolicy {
    k: usize,
    m: usize,
    cooldown: usize,
    state: std::collections::HashMap<(String, String), PolicyState>,
}

/// One detector's memory for one key: the last `m` drift flags, oldest
/// first, and the evaluations left in its cooldown.
#[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PolicyState {
    recent: std::collections::VecDeque<bool>,
    quiet_left: usize,
}

impl AlertPolicy {
    pub fn new(cfg: &crate::config::AlertingConfig) -> Self {
        let (k, m) = cfg.hysteresis.map_or((1, 1), |h| (h.k.get(), h.m.get()));
        Self {
            k,
            m,
            cooldown: cfg.cooldown,
            state: Default::default(),
        }
    }

    /// Whether the policy keeps state between evaluations (then evaluations
    /// a restart skips must still be fed to it).
    pub fn stateful(&self) -> bool {
        self.m > 1 || self.cooldown > 0
    }

    /// Forgets every key's memory of `detectors`: after a rebalance their
    /// windows are restored and replayed, which rebuilds it.
    pub fn forget(&mut self, detectors: &[String]) {
        self.state.retain(|(d, _), _| !detectors.contains(d));
    }

    /// What the memory depends on: memories saved under other rules are not restored.
    pub fn config_id(&self) -> String {
        format!("k={};m={};cooldown={}", self.k, self.m, self.cooldown)
    }

    /// The memory of `key` for each of `detectors` that has one.
    pub fn export(&self, key: &str, detectors: &[String]) -> BTreeMap<String, PolicyState> {
        detectors
            .iter()
            .filter_map(|d| {
                let s = self.state.get(&(d.clone(), key.to_string()))?;
                Some((d.clone(), s.clone()))
            })
            .collect()
    }

    /// Sets the memory of `key` (as [`Self::export`] gave it).
    pub fn import(&mut self, key: &str, states: BTreeMap<String, PolicyState>) {
        for (d, s) in states {
            self.state.insert((d, key.to_string()), s);
        }
    }

    /// Records one evaluation and says whether it alerts.
    pub fn decide(&mut self, detector: &str, key: &str, drift: bool) -> bool {
        let s = self.state.entry((detector.to_string(), key.to_string())).or_default();
        s.recent.push_back(drift);
        while s.recent.len() > self.m {
            s.recent.pop_front();
        }
        if s.quiet_left > 0 {
            s.quiet_left -= 1;
            return false;
        }
        let fire = drift && s.recent.iter().filter(|d| **d).count() >= self.k;
        if fire {
            s.quiet_left = self.cooldown;
        }
        fire
    }
}

/// Builds the evaluation record of a detector result.
pub fn evaluation(
    pipeline: &str,
    r: &DetectorResult,
    drift_type: DriftType,
    model: Option<&ModelIdentity>,
) -> Evaluation {
    let c = r.coords.clone().unwrap_or_else(|| crate::window::Coords {
        reference_size: 0,
        current_size: 0,
        current_offsets: BTreeMap::new(),
        current_time_ms: (0, 0),
        end: (0, -1),
        evaluation: 0,
        window_ms: None,
        late_events: None,
        ..Default::default()
    });
    Evaluation {
        alert_id: alert_id(pipeline, &r.detector, &r.key, c.end, c.window_ms),
        pipeline: pipeline.to_string(),
        detector: r.detector.clone(),
        kind: r.kind.clone(),
        drift_type,
        key: (!r.key.is_empty()).then(|| r.key.clone()),
        evaluation: c.evaluation,
        drift: r.drift,
        alert: r.drift,
        statistic: r.statistic,
        p_value: r.p_value,
        threshold: r.threshold,
        also_drifted: vec![],
        window: WindowInfo {
            reference_size: c.reference_size,
            current_size: c.current_size,
            current_offsets: c
                .current_offsets
                .iter()
                .map(|(p, (f, l))| OffsetRange {
                    partition: *p,
                    first: *f,
                    last: *l,
                })
                .collect(),
            current_start_ms: c.current_time_ms.0,
            current_end_ms: c.current_time_ms.1,
            window_start_ms: c.window_ms.map(|w| w.0),
            window_end_ms: c.window_ms.map(|w| w.1),
            late_events: c.late_events,
            reference_sample: c.reference_sample,
            current_sample: c.current_sample,
            current_scored: c.current_scored,
        },
        tests: r.tests.clone(),
        model: model.cloned(),
    }
}

/// Kafka message key of an evaluation: pipeline/detector/key.
pub fn message_key(e: &Evaluation) -> String {
    format!("{}/{}/{}", e.pipeline, e.detector, e.key.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = alert_id("p", "d", "k", (0, 10), None);
        assert_eq!(a, alert_id("p", "d", "k", (0, 10), None));
        assert_ne!(a, alert_id("p", "d", "k", (0, 11), None));
        assert_ne!(a, alert_id("p", "d", "k2", (0, 10), None));
        // Two windows closed by one event.
        let w = |s| alert_id("p", "d", "k", (0, 10), Some((s, s + 60)));
        assert_ne!(w(0), w(30));
        assert_ne!(w(0), a);
        // No ambiguity from concatenation.
        assert_ne!(
            alert_id("p", "dk", "", (0, 1), None),
            alert_id("p", "d", "k", (0, 1), None)
        );
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn hysteresis_and_cooldown() {
        use crate::config::{AlertingConfig, Hysteresis, Positive};
        let cfg = AlertingConfig {
            ert: None,
            hysteresis: Some(Hysteresis {
                k: Positive(2),
                m: Positive(3),
            }),
            cooldown: 2,
        };
        let mut p = AlertPolicy::new(&cfg);
        let seq = [true, false, true, true, true, true, false, false, true];
        let got: Vec<bool> = seq.iter().map(|d| p.decide("d", "k", *d)).collect();
        // 2 of 3 first met at index 2; then 2 quiet evaluations; index 5 fires again.
        assert_eq!(got, [false, false, true, false, false, true, false, false, false]);
        // A memory exported after any evaluation and imported elsewhere
        // (a restart) decides the rest of the sequence the same way.
        for cut in 0..seq.len() {
            let mut a = AlertPolicy::new(&cfg);
            let head: Vec<bool> = seq[..cut].iter().map(|d| a.decide("d", "k", *d)).collect();
            let mut b = AlertPolicy::new(&cfg);
            b.import("k", a.export("k", &["d".to_string(), "absent".to_string()]));
            let tail: Vec<bool> = seq[cut..].iter().map(|d| b.decide("d", "k", *d)).collect();
            assert_eq!([head, tail].concat(), got, "cut at {cut}");
        }
        // Keys are independent; the default policy alerts on every drift.
        assert!(!p.decide("d", "other", true));
        let mut plain = AlertPolicy::new(&AlertingConfig::default());
        assert!(!plain.stateful());
        assert!(plain.decide("d", "k", true) && plain.decide("d", "k", true) && !plain.decide("d", "k", false));
    }
}
