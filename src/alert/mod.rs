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

/// Which kind of drift a detector watches.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DriftType {
    /// P(X) moved: input features and embeddings.
    Covariate,
    /// P(Y) moved: predicted classes and priors.
    Label,
    /// P(Y|X) moved: error rates against true labels.
    Concept,
}

/// Offsets of one partition inside a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    pub drift: bool,
    pub statistic: f64,
    pub p_value: f64,
    pub threshold: f64,
    pub window: WindowInfo,
    pub tests: Vec<TestResult>,
    /// The model that scored the events, if the pipeline has one.
    pub model: Option<ModelIdentity>,
}

/// Deterministic id of an evaluation.
pub fn alert_id(pipeline: &str, detector: &str, key: &str, end: (i32, i64)) -> String {
    let mut h = Sha256::new();
    for part in [pipeline, detector, key, &format!("{}:{}", end.0, end.1)] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Drift type of a detector kind (the rule documented in the README).
pub fn drift_type_of(kind: &str, configured: Option<DriftType>) -> DriftType {
    configured.unwrap_or(match kind {
        "chi2" | "label_shift" | "bbse" => DriftType::Label,
        "error_rate" => DriftType::Concept,
        _ => DriftType::Covariate,
    })
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
    });
    Evaluation {
        alert_id: alert_id(pipeline, &r.detector, &r.key, c.end),
        pipeline: pipeline.to_string(),
        detector: r.detector.clone(),
        kind: r.kind.clone(),
        drift_type,
        key: (!r.key.is_empty()).then(|| r.key.clone()),
        evaluation: c.evaluation,
        drift: r.drift,
        statistic: r.statistic,
        p_value: r.p_value,
        threshold: r.threshold,
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
        let a = alert_id("p", "d", "k", (0, 10));
        assert_eq!(a, alert_id("p", "d", "k", (0, 10)));
        assert_ne!(a, alert_id("p", "d", "k", (0, 11)));
        assert_ne!(a, alert_id("p", "d", "k2", (0, 10)));
        // No ambiguity from concatenation.
        assert_ne!(alert_id("p", "dk", "", (0, 1)), alert_id("p", "d", "k", (0, 1)));
        assert_eq!(a.len(), 32);
    }
}
