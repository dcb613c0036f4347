//! Saving and restoring the windows' key states (DESIGN §5).
//!
//! The committed offset of a partition is the oldest one any of its keys
//! still needs, so a restart replays rows that keys with a younger window
//! had already let go. Each key's state — where its last evaluated window
//! started, its evaluation count, the alert policy's memory — is saved in
//! the checkpoint topic once that evaluation is delivered, and restored
//! before the replay: the key then skips the rows before its window and
//! evaluates where an uninterrupted run does, with the same alert decisions.
//! A `first` reference is saved with the key's first state, so the commit
//! moves on past the key's first events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::{AlertPolicy, PolicyState};
use crate::source::checkpoint::KeyState;
use crate::source::kafka::KafkaConsumer;
use crate::window::{KeySnapshot, Windows};

use super::RuntimeError;

/// What a key's saved state holds beside what the checkpoint store reads
/// (its opaque `state`): the window's snapshot and the alert policy's memory
/// per detector.
#[derive(Serialize, Deserialize)]
struct Saved {
    snapshot: KeySnapshot,
    policy: BTreeMap<String, PolicyState>,
}

/// Which windows a state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Events,
    Labelled,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Events => "events",
            Which::Labelled => "labelled",
        }
    }
}

/// The detectors and configuration of one set of windows.
pub(super) struct KeyStates {
    which: Which,
    config: String,
    detectors: Vec<String>,
}

impl KeyStates {
    /// `scoring`: what the scored events depend on ([`super::Stages::scoring_id`]).
    pub(super) fn new(
        which: Which,
        windows: &Windows,
        policy: &AlertPolicy,
        detectors: Vec<String>,
        scoring: &str,
    ) -> Self {
        Self {
            which,
            config: format!("{};{};{scoring}", windows.config_id(), policy.config_id()),
            detectors,
        }
    }

    /// After a rebalance: drops `windows` and the policy's memory of their
    /// detectors, then seeds both with the states saved for the keys whose
    /// partitions are all assigned now (the replay rebuilds the rest);
    /// returns how many were restored.
    pub(super) fn rebuild(&self, consumer: &KafkaConsumer, windows: &mut Windows, policy: &mut AlertPolicy) -> usize {
        windows.clear();
        policy.forget(&self.detectors);
        let mut skipped = 0;
        let mut snaps = vec![];
        for s in consumer.states(self.which.name()) {
            let saved = (s.config == self.config)
                .then(|| serde_json::from_value::<Saved>(s.state))
                .and_then(Result::ok);
            let Some(Saved {
                mut snapshot,
                policy: memory,
            }) = saved
            else {
                skipped += 1;
                continue;
            };
            // The reference travels beside the state, in records of its own.
            (snapshot.reference_rows, snapshot.reference) = (s.reference_rows, s.reference);
            policy.import(&snapshot.key, memory);
            snaps.push(snapshot);
        }
        if skipped > 0 {
            tracing::warn!(windows = self.which.name(), keys = skipped, saved = %self.config,
                "key states saved under another window, alerting or model configuration (or another version) are not restored: those keys are rebuilt from the replay alone");
        }
        let n = snaps.len();
        windows.restore(snaps);
        n
    }

    /// Saves the states of the keys evaluated since their last save; their
    /// evaluations must be delivered.
    pub(super) async fn save(
        &self,
        consumer: &KafkaConsumer,
        windows: &mut Windows,
        policy: &AlertPolicy,
    ) -> Result<(), RuntimeError> {
        // Without a checkpoint topic nothing is saved, and nothing may count
        // as saved: a `first` reference then holds the commit.
        if !consumer.has_checkpoints() {
            return Ok(());
        }
        let mut snaps = windows.unsaved();
        if snaps.is_empty() {
            return Ok(());
        }
        let states: Vec<KeyState> = snaps
            .iter()
            .map(|s| {
                let saved = Saved {
                    snapshot: s.clone(),
                    policy: policy.export(&s.key, &self.detectors),
                };
                KeyState {
                    windows: self.which.name().to_string(),
                    config: self.config.clone(),
                    key: s.key.clone(),
                    evaluations: s.evaluations,
                    partitions: s.anchor.keys().copied().collect(),
                    reference_rows: s.reference_rows,
                    reference: s.reference.clone(),
                    state: serde_json::to_value(&saved).unwrap_or_default(),
                }
            })
            .collect();
        let unsaved = consumer
            .save_states(&states)
            .await
            .map_err(super::kafka_err("saving key states"))?;
        // A reference not saved keeps holding the commit.
        for s in snaps.iter_mut().filter(|s| unsaved.contains(&s.key)) {
            s.reference_rows = 0;
        }
        windows.saved(&snaps);
        Ok(())
    }
}
