//! Sources of raw events: Kafka (a consumer group, `kafka.rs`; a bounded
//! range of a topic, `range.rs`) and files (JSONL, Parquet, `file.rs`). All
//! yield [`RawRecord`]s carrying their coordinates; the bounded ones (what
//! `replay` and `compare` read) through the [`Source`] trait.

pub mod checkpoint;
pub mod file;
pub mod kafka;
pub mod marks;
pub mod properties;
pub mod range;

/// A bounded stream of raw records in canonical order, then its end: a
/// file, or a range of a Kafka topic. A new kind of source is one file
/// implementing this, plus its arm where drivers choose one
/// (`replay::open`).
pub trait Source: Iterator<Item = Result<RawRecord, SourceError>> {
    /// How many records in all, when known before reading them.
    fn total(&self) -> Option<u64>;
    /// What is read (a path, a topic and its offsets), for logs and reports.
    fn describe(&self) -> String;
}

/// A source that could not be read, and why.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] file::FileError),
    /// A topic range: the brokers, the topic or its offsets.
    #[error("{0}")]
    Range(String),
}

/// One raw event as read, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Message value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Partition (0 for files).
    pub partition: i32,
    /// Offset in the partition (line number − 1 for files).
    pub offset: i64,
    /// Message timestamp in epoch ms, if any.
    pub timestamp_ms: Option<i64>,
}
