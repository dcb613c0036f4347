//! Sources of raw events: Kafka (consumer group) and files (JSONL, Parquet).
//! Both yield [`RawRecord`]s carrying their coordinates.

pub mod checkpoint;
pub mod file;
pub mod kafka;
pub mod properties;

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
