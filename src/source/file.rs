//! File source: JSONL (one event per line, exactly as on Kafka) or Parquet
//! (one event per row; rows are turned into the same JSON the decoder reads).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{RawRecord, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

impl FileError {
    /// `path` could not be read, and why.
    pub fn new(path: &Path, message: impl ToString) -> Self {
        FileError::Read {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

/// Reads every event of a `.jsonl`/`.json` or `.parquet`/`.pq` file. Offsets are
/// line (row) numbers from 0; partition 0.
pub fn read_records(path: &Path) -> Result<Vec<RawRecord>, FileError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "parquet" | "pq" => read_parquet(path),
        "jsonl" | "json" | "ndjson" => read_jsonl(path),
        _ => Err(FileError::new(
            path,
            "unknown file type: expected .jsonl or .parquet (.pq)",
        )),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<RawRecord>, FileError> {
    let f = std::fs::File::open(path).map_err(|e| FileError::new(path, e))?;
    let mut out = vec![];
    for (offset, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line = line.map_err(|e| FileError::new(path, e))?;
        // Blank lines are layout, not events.
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(RawRecord {
                payload: Some(line),
                partition: 0,
                offset: offset as i64,
                timestamp_ms: None,
            });
        }
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Vec<RawRecord>, FileError> {
    ParquetRows::open(path)?
        .map(|r| {
            r.map_err(|e| match e {
                SourceError::File(f) => f,
                other => FileError::new(path, other),
            })
        })
        .collect()
}

/// A file as a [`Source`]: Parquet (`.parquet`, `.pq`) streamed a row group
/// batch at a time (its row count is in its footer); anything else
/// streamed as JSONL, line by line.
pub fn open(path: &Path) -> Result<Box<dyn Source>, FileError> {
    let is_parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq"));
    if is_parquet {
        return Ok(Box::new(ParquetRows::open(path)?));
    }
    // A file that cannot be opened is bad input, like a bad pipeline.
    let f = std::fs::File::open(path).map_err(|e| FileError::new(path, e))?;
    Ok(Box::new(Jsonl {
        lines: std::io::BufReader::new(f).split(b'\n').enumerate(),
        path: path.to_path_buf(),
    }))
}

/// A Parquet file streamed: each Arrow batch read becomes JSON events (as
/// a JSONL line would be), offsets are row numbers from 0.
struct ParquetRows {
    reader: datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    rows: std::vec::IntoIter<RawRecord>,
    next_offset: i64,
    total: u64,
    path: PathBuf,
}

impl ParquetRows {
    fn open(path: &Path) -> Result<Self, FileError> {
        let f = std::fs::File::open(path).map_err(|e| FileError::new(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| FileError::new(path, e))?;
        let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        Ok(Self {
            reader: builder.build().map_err(|e| FileError::new(path, e))?,
            rows: Vec::new().into_iter(),
            next_offset: 0,
            total,
            path: path.to_path_buf(),
        })
    }

    /// The next batch's rows as JSON events.
    fn events_of(&mut self, batch: &datafusion::arrow::array::RecordBatch) -> Result<Vec<RawRecord>, FileError> {
        let err = |e: &dyn std::fmt::Display| FileError::new(&self.path, e);
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, JsonArray>(Vec::new());
        w.write(batch).map_err(|e| err(&e))?;
        w.finish().map_err(|e| err(&e))?;
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&w.into_inner()).map_err(|e| err(&e))?;
        let first = self.next_offset;
        self.next_offset += rows.len() as i64;
        Ok(rows
            .into_iter()
            .zip(first..)
            .map(|(r, offset)| RawRecord {
                payload: Some(serde_json::to_vec(&r).unwrap_or_default()),
                partition: 0,
                offset,
                timestamp_ms: None,
            })
            .collect())
    }
}

impl Iterator for ParquetRows {
    type Item = Result<RawRecord, SourceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.rows.next() {
                return Some(Ok(r));
            }
            let batch = match self.reader.next()? {
                Ok(b) => b,
                Err(e) => return Some(Err(FileError::new(&self.path, e).into())),
            };
            match self.events_of(&batch) {
                Ok(rows) => self.rows = rows.into_iter(),
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

impl Source for ParquetRows {
    fn total(&self) -> Option<u64> {
        Some(self.total)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A JSONL file streamed: offsets are line numbers from 0, blank lines skipped.
struct Jsonl {
    lines: std::iter::Enumerate<std::io::Split<std::io::BufReader<std::fs::File>>>,
    path: PathBuf,
}

impl Iterator for Jsonl {
    type Item = Result<RawRecord, SourceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (i, line) = self.lines.next()?;
            match line {
                Err(e) => return Some(Err(FileError::new(&self.path, e).into())),
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(l) => {
                    return Some(Ok(RawRecord {
                        payload: Some(l),
                        partition: 0,
                        offset: i as i64,
                        timestamp_ms: None,
                    }));
                }
            }
        }
    }
}

impl Source for Jsonl {
    fn total(&self) -> Option<u64> {
        None
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Float64Array, ListArray, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Float64Type;
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;

    /// A Parquet row becomes the same JSON event a JSONL line would be:
    /// nulls left out, lists as arrays, offsets numbered across row groups.
    #[test]
    fn parquet_rows_become_json_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.parquet");
        let batch = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])) as ArrayRef,
            ),
            ("x", Arc::new(Float64Array::from(vec![1.5, -2.0, 3.25])) as ArrayRef),
            (
                "v",
                Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
                    Some(vec![Some(1.0), Some(2.0)]),
                    Some(vec![Some(3.0), Some(4.0)]),
                    Some(vec![Some(5.0), Some(6.0)]),
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let f = std::fs::File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.flush().unwrap(); // a second row group
        w.write(&batch.slice(0, 1)).unwrap();
        w.close().unwrap();
        let recs = read_records(&path).unwrap();
        assert_eq!(recs.len(), 4);
        let json = |i: usize| serde_json::from_slice::<serde_json::Value>(recs[i].payload.as_ref().unwrap()).unwrap();
        assert_eq!(json(0), serde_json::json!({"k": "a", "x": 1.5, "v": [1.0, 2.0]}));
        assert_eq!(json(2), serde_json::json!({"x": 3.25, "v": [5.0, 6.0]}));
        assert_eq!(json(3), json(0));
        assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        // As a source it streams the same events, its row count from the footer.
        let source = open(&path).unwrap();
        assert_eq!(source.total(), Some(4));
        let streamed: Vec<RawRecord> = source.map(Result::unwrap).collect();
        assert_eq!(streamed, recs);
        // Not a Parquet file: a clear error naming the file.
        std::fs::write(dir.path().join("bad.parquet"), b"not parquet").unwrap();
        let e = read_records(&dir.path().join("bad.parquet")).unwrap_err().to_string();
        assert!(e.contains("bad.parquet"), "{e}");
    }
}
