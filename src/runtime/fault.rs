//! A fault injected for tests (`DRIFTWATCH_FAULT`).

use super::*;

/// A fault injected for tests (`DRIFTWATCH_FAULT`, or `RunOptions::fault`;
/// not for production):
/// - `abort-before-mark:N` aborts the process right after the N-th batch
///   (of events or of labels) with new evaluations is delivered and before
///   its mark or commit is written, the worst moment for a crash;
/// - `slow-model:MS` makes the model stage take MS milliseconds more per
///   event it scores (a model slower than the topic).
#[derive(Debug, Default)]
pub(super) struct Fault {
    pub(super) abort_before_mark: Option<u64>,
    pub(super) delivered: u64,
    slow_model: Option<Duration>,
    /// Events the model had scored at the last slow-down.
    scored: u64,
}

impl Fault {
    /// The fault `given` (a run's option), else `DRIFTWATCH_FAULT`'s.
    pub(super) fn from_env_or(given: Option<&str>) -> Result<Self, RuntimeError> {
        match given {
            Some(v) => Self::parse(Some(v)),
            None => Self::parse(std::env::var("DRIFTWATCH_FAULT").ok().as_deref()),
        }
    }

    pub(super) fn parse(value: Option<&str>) -> Result<Self, RuntimeError> {
        let Some(v) = value else {
            return Ok(Self::default());
        };
        let number = |prefix: &str| {
            v.strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        if let Some(ms) = number("slow-model:") {
            tracing::warn!(fault = %v, "fault injection on: the model stage is slowed down");
            return Ok(Self {
                slow_model: Some(Duration::from_millis(ms)),
                ..Self::default()
            });
        }
        let n = number("abort-before-mark:").ok_or_else(|| {
            RuntimeError::Other(format!(
                "DRIFTWATCH_FAULT=`{v}`: expected abort-before-mark:N or slow-model:MS with N, MS ≥ 1 (a test hook; unset it)"
            ))
        })?;
        tracing::warn!(fault = %v, "fault injection on: this process will abort");
        Ok(Self {
            abort_before_mark: Some(n),
            ..Self::default()
        })
    }

    /// The model has scored `total` events so far: with `slow-model`, waits
    /// for those it scored since the last call.
    pub(super) async fn scored(&mut self, total: u64) {
        let new = total.saturating_sub(self.scored);
        self.scored = total;
        if let Some(per_event) = self.slow_model.filter(|_| new > 0) {
            tokio::time::sleep(per_event * u32::try_from(new).unwrap_or(u32::MAX)).await;
        }
    }

    /// A batch's new evaluations were delivered; its mark comes next.
    pub(super) fn delivered(&mut self) {
        self.delivered += 1;
        if self.abort_before_mark == Some(self.delivered) {
            eprintln!(
                "DRIFTWATCH_FAULT: aborting after delivery #{}, before its mark",
                self.delivered
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test hook takes `abort-before-mark:N` (N ≥ 1) and refuses
    /// anything else by name, before the run connects to anything.
    #[test]
    fn fault_values_are_checked() {
        assert_eq!(Fault::parse(None).unwrap().abort_before_mark, None);
        assert_eq!(
            Fault::parse(Some("abort-before-mark:3")).unwrap().abort_before_mark,
            Some(3)
        );
        for bad in [
            "",
            "abort-before-mark:0",
            "abort-before-mark:x",
            "abort-before-mark:-1",
            "crash:1",
        ] {
            let e = Fault::parse(Some(bad)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains(&format!("DRIFTWATCH_FAULT=`{bad}`")) && e.contains("abort-before-mark:N"),
                "{bad}: {e}"
            );
        }
        let slow = Fault::parse(Some("slow-model:4")).unwrap();
        assert_eq!(
            (slow.slow_model, slow.abort_before_mark),
            (Some(Duration::from_millis(4)), None)
        );
        assert!(Fault::parse(Some("slow-model:0")).is_err());
    }
}
