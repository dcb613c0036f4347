//! Where a driver puts what the engine made: the one trait the three
//! drivers differ by on the way out.
//!
//! | driver | sink |
//! |---|---|
//! | `run` | alerts and stats topics, the dead-letter topic, with the delivery protocol (`runtime::publish`) |
//! | `replay` | `alerts.jsonl`, `stats.jsonl` in stream order, the summary and report (`replay::Files`) |
//! | `compare` | one JSON report on stdout (`compare::Report`) |

use crate::decode::Rejection;
use crate::error::RuntimeError;

use super::Evaluated;

/// Which stream a rejected record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The events (the source's topic or file).
    Events,
    /// The late labels (the labels topic or file).
    Labels,
}

/// Takes the engine's evaluations and the records it could not decode.
pub trait Sink {
    /// Evaluations of window pairs, in the order the engine made them (the
    /// alert policy already applied). Returns how many evaluations were
    /// new: a sink that knows what an earlier run delivered skips those.
    fn evaluated(&mut self, evaluated: Vec<Evaluated>) -> Result<usize, RuntimeError>;

    /// A record of `stream` that could not be decoded, with the reason.
    fn rejected(&mut self, stream: Stream, rejection: &Rejection) -> Result<(), RuntimeError>;
}
