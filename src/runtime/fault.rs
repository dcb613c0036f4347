//! A fault injected for tests (`DRIFTWATCH_FAULT`).

use super::*;

/// A fault injected for tests (`DRIFTWATCH_FAULT`, not for production):
/// `abort-before-mark:N` aborts the process right after the N-th batch (of
/// events or of labels) with new evaluations is delivered and before its
/// mark or commit is written, the worst moment for a crash.
#[derive(Debug, Default)]
pub(super) struct Fault {
    pub(super) abort_before_mark: Option<u64>,
    pub(super) delivered: u64,
}

impl Fault {
    pub(super) fn from_env() -> Result<Self, RuntimeError> {
        Self::parse(std::env::var("DRIFTWATCH_FAULT").ok().as_deref())
    }

    pub(super) fn parse(value: Option<&str>) -> Result<Self, RuntimeError> {
        let Some(v) = value else {
            return Ok(Self::default());
        };
        let n = v
            .strip_prefix("abort-before-mark:")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                RuntimeError::Other(format!(
                    "DRIFTWATCH_FAULT=`{v}`: expected abort-before-mark:N with N ≥ 1 (a test hook; unset it)"
                ))
            })?;
        tracing::warn!(fault = %v, "fault injection on: this process will abort");
        Ok(Self {
            abort_before_mark: Some(n),
            delivered: 0,
        })
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
    }
}
