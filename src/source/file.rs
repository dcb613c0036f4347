//! File source: JSONL (one event per line, exactly as on Kafka) or Parquet
//! (one event per row; rows are turned into the same JSON the decoder reads).

use std::io::BufRead;
use std::path::Path;

use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::RawRecord;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
}

fn err(path: &Path, m: impl ToString) -> FileError {
    FileError::Read {
        path: path.display().to_string(),
        message: m.to_string(),
    }
}

/// Reads every event of a `.jsonl`/`.json` or `.parquet` file. Offsets are
/// line (row) numbers from 0; partition 0.
pub fn read_records(path: &Path) -> Result<Vec<RawRecord>, FileError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "parquet" => read_parquet(path),
        "jsonl" | "json" | "ndjson" => read_jsonl(path),
        _ => Err(err(path, "unknown file type: expected .jsonl or .parquet")),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<RawRecord>, FileError> {
    let f = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let mut out = vec![];
    for (offset, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line = line.map_err(|e| err(path, e))?;
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
    let f = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| err(path, e))?
        .build()
        .map_err(|e| err(path, e))?;
    let mut out = vec![];
    for batch in reader {
        let batch = batch.map_err(|e| err(path, e))?;
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, JsonArray>(Vec::new());
        w.write(&batch).map_err(|e| err(path, e))?;
        w.finish().map_err(|e| err(path, e))?;
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&w.into_inner()).map_err(|e| err(path, e))?;
        for r in rows {
            let offset = out.len() as i64;
            out.push(RawRecord {
                payload: Some(serde_json::to_vec(&r).unwrap_or_default()),
                partition: 0,
                offset,
                timestamp_ms: None,
            });
        }
    }
    Ok(out)
}
