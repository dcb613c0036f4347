//! Delivery marks (DESIGN §5): what was delivered up to which offset of a
//! partition, and when. Written in the commit metadata by the group
//! consumer (`kafka.rs`, as `dw1:hw=N;at=MS;lhw=L`) and in checkpoint
//! records (`checkpoint.rs`); the runtime's delivery protocol decides them.

const META_PREFIX: &str = "dw1:hw=";

/// A delivery mark: evaluations whose window ends at or before `offset` were
/// delivered, and evaluations of the labelled windows (late labels) ending at
/// or before `labelled`, as recorded at `at_ms` (wall clock, epoch ms;
/// `None` in marks written before driftwatch recorded the time).
/// Serialized as in a checkpoint record: `delivered`, `at_ms`, `labelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Delivered {
    #[serde(rename = "delivered")]
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled: Option<i64>,
}

/// What to commit for a partition: where a restart resumes reading, and
/// the delivery mark (see [`Delivered`]; the time is stamped when written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub next: i64,
    pub delivered: i64,
    pub labelled: Option<i64>,
}

impl Position {
    pub(super) fn mark(&self, at_ms: Option<i64>) -> Delivered {
        Delivered {
            offset: self.delivered,
            at_ms,
            labelled: self.labelled,
        }
    }
}

/// Commit metadata of a mark: `dw1:hw=N;at=MS;lhw=L` (the last two optional).
pub(super) fn meta(d: Delivered) -> String {
    let mut s = format!("{META_PREFIX}{}", d.offset);
    if let Some(at) = d.at_ms {
        s += &format!(";at={at}");
    }
    if let Some(l) = d.labelled {
        s += &format!(";lhw={l}");
    }
    s
}

/// Parses commit metadata written by [`meta`] (or by earlier versions,
/// with fewer fields); `None` for anything else.
pub(super) fn parse_meta(s: &str) -> Option<Delivered> {
    let mut fields = s.strip_prefix(META_PREFIX)?.split(';');
    let mut d = Delivered {
        offset: fields.next()?.parse().ok()?,
        at_ms: None,
        labelled: None,
    };
    for f in fields {
        match f.split_once('=')? {
            ("at", v) => d.at_ms = Some(v.parse().ok()?),
            ("lhw", v) => d.labelled = Some(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(d)
}

/// Wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commit metadata round-trips, also without the time (earlier versions);
    /// anything else is not a mark.
    #[test]
    fn marks_in_commit_metadata() {
        let d = Delivered {
            offset: 699,
            at_ms: Some(1_700_000_000_123),
            labelled: None,
        };
        assert_eq!(meta(d), "dw1:hw=699;at=1700000000123");
        assert_eq!(parse_meta(&meta(d)), Some(d));
        let l = Delivered {
            labelled: Some(650),
            ..d
        };
        assert_eq!(meta(l), "dw1:hw=699;at=1700000000123;lhw=650");
        assert_eq!(parse_meta(&meta(l)), Some(l));
        let old = Delivered {
            offset: 5,
            at_ms: None,
            labelled: None,
        };
        assert_eq!(parse_meta("dw1:hw=5"), Some(old));
        for bad in [
            "",
            "hw=5",
            "dw1:hw=",
            "dw1:hw=x",
            "dw1:hw=5;at=",
            "dw1:hw=5;at=y",
            "dw1:hw=5;zz=1",
            "dw1:hw=5;at",
        ] {
            assert_eq!(parse_meta(bad), None, "{bad}");
        }
        // The highest mark wins, and of equal ones the latest.
        assert!(d > old && Some(d) > None);
    }
}
