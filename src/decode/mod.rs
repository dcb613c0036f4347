//! Raw JSON events → Arrow `RecordBatch` by an [`EventSchema`].
//!
//! Each event is checked completely before any of it is appended, so a bad
//! event is rejected whole (with a [`Rejection`] for the dead-letter topic)
//! and the good events around it go on.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringBuilder, TimestampMillisecondArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde::Serialize;
use serde_json::Value;

use crate::schema::{EventSchema, FieldKind, FieldSpec};
use crate::source::RawRecord;

/// Why an event was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Null message value (tombstone).
    EmptyPayload,
    /// Larger than `batch.max_event_bytes`.
    Oversized,
    /// Not valid JSON.
    MalformedJson,
    /// Valid JSON but not an object.
    NotAnObject,
    /// A required field is missing or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A tensor has the wrong number of elements.
    WrongTensorLength,
    /// NaN or ±Inf where the schema does not allow it.
    NonFinite,
}

impl Reason {
    /// Stable snake_case name, as in the dead-letter record and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyPayload => "empty_payload",
            Reason::Oversized => "oversized",
            Reason::MalformedJson => "malformed_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::WrongTensorLength => "wrong_tensor_length",
            Reason::NonFinite => "non_finite",
        }
    }
}

/// A rejected event: what went wrong, where, and (part of) what it was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub reason: Reason,
    /// Human-readable detail naming the field.
    pub message: String,
    /// The field at fault, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// The payload as UTF-8 (lossy), cut at [`PAYLOAD_EXCERPT_BYTES`].
    pub payload: String,
    /// Whether `payload` was cut.
    pub payload_truncated: bool,
}

/// How much of a rejected payload the dead-letter record keeps.
pub const PAYLOAD_EXCERPT_BYTES: usize = 4096;

enum Cell {
    Null,
    F(f64),
    I(i64),
    B(bool),
    S(String),
    /// Tensor values are in `scratch[start..start+len]`.
    T(usize),
}

enum Col {
    F(Vec<f64>, Vec<bool>),
    I(Vec<i64>, Vec<bool>),
    B(Vec<bool>, Vec<bool>),
    S(StringBuilder),
    T(Vec<f32>, Vec<bool>, usize),
    Ts(Vec<i64>, Vec<bool>),
}

/// Decodes JSON events into batches of one schema.
pub struct Decoder {
    schema: Arc<EventSchema>,
    arrow: SchemaRef,
    max_bytes: usize,
    cols: Vec<Col>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    timestamp: Vec<i64>,
    row: Vec<Cell>,
    scratch: Vec<f32>,
}

type FieldErr = (Reason, String);

impl Decoder {
    /// A decoder for `schema`, rejecting events over `max_event_bytes`.
    pub fn new(schema: Arc<EventSchema>, max_event_bytes: usize) -> Self {
        let arrow = schema.arrow_schema();
        let cols = schema.fields.iter().map(new_col).collect();
        Self {
            schema,
            arrow,
            max_bytes: max_event_bytes,
            cols,
            partition: vec![],
            offset: vec![],
            timestamp: vec![],
            row: vec![],
            scratch: vec![],
        }
    }

    /// Arrow schema of the batches produced.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Events decoded and not yet flushed.
    pub fn len(&self) -> usize {
        self.offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offset.is_empty()
    }

    /// Decodes one event into the pending batch, or says why not.
    pub fn decode(&mut self, rec: &RawRecord) -> Result<(), Box<Rejection>> {
        let reject = |reason: Reason, message: String, field: Option<String>| {
            let payload = rec.payload.as_deref().unwrap_or_default();
            let cut = payload.len().min(PAYLOAD_EXCERPT_BYTES);
            Box::new(Rejection {
                reason,
                message,
                field,
                partition: rec.partition,
                offset: rec.offset,
                timestamp_ms: rec.timestamp_ms,
                payload: String::from_utf8_lossy(&payload[..cut]).into_owned(),
                payload_truncated: cut < payload.len(),
            })
        };
        let Some(payload) = rec.payload.as_deref() else {
            return Err(reject(
                Reason::EmptyPayload,
                "null message value (tombstone)".into(),
                None,
            ));
        };
        if payload.len() > self.max_bytes {
            return Err(reject(
                Reason::Oversized,
                format!(
                    "event of {} bytes exceeds batch.max_event_bytes = {}",
                    payload.len(),
                    self.max_bytes
                ),
                None,
            ));
        }
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Err(reject(Reason::MalformedJson, format!("malformed JSON: {e}"), None)),
        };
        let Value::Object(obj) = value else {
            return Err(reject(Reason::NotAnObject, "event is not a JSON object".into(), None));
        };
        self.row.clear();
        self.scratch.clear();
        for f in &self.schema.fields {
            let nullable = f.nullable || Some(&f.name) == self.schema.label.as_ref();
            let cell = match obj.get(&f.name) {
                None | Some(Value::Null) if nullable => Ok(Cell::Null),
                None | Some(Value::Null) => Err((
                    Reason::MissingField,
                    format!("required field `{}` is missing or null", f.name),
                )),
                Some(v) => parse_cell(f, v, &mut self.scratch),
            };
            match cell {
                Ok(c) => self.row.push(c),
                Err((reason, msg)) => return Err(reject(reason, msg, Some(f.name.clone()))),
            }
        }
        for (col, cell) in self.cols.iter_mut().zip(self.row.drain(..)) {
            push(col, cell, &self.scratch);
        }
        self.partition.push(rec.partition);
        self.offset.push(rec.offset);
        self.timestamp.push(rec.timestamp_ms.unwrap_or(0));
        Ok(())
    }

    /// Takes the pending events as a batch (`None` when there are none).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cols.len() + 3);
        arrays.extend(self.cols.iter_mut().map(finish));
        arrays.push(Arc::new(Int32Array::from(std::mem::take(&mut self.partition))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.offset))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.timestamp))));
        RecordBatch::try_new(self.arrow.clone(), arrays).map(Some)
    }
}

fn new_col(f: &FieldSpec) -> Col {
    match f.kind {
        FieldKind::Float => Col::F(vec![], vec![]),
        FieldKind::Int => Col::I(vec![], vec![]),
        FieldKind::Bool => Col::B(vec![], vec![]),
        FieldKind::Category | FieldKind::String => Col::S(StringBuilder::new()),
        FieldKind::Tensor => Col::T(vec![], vec![], f.tensor_len()),
        FieldKind::Timestamp => Col::Ts(vec![], vec![]),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(f: &FieldSpec, want: &str, v: &Value) -> FieldErr {
    (
        Reason::WrongType,
        format!("field `{}`: expected {want}, got {}", f.name, type_name(v)),
    )
}

fn parse_cell(f: &FieldSpec, v: &Value, scratch: &mut Vec<f32>) -> Result<Cell, FieldErr> {
    match f.kind {
        FieldKind::Float => {
            let x = number(f, v)?;
            Ok(Cell::F(x))
        }
        FieldKind::Int => match v {
            Value::Number(n) => n.as_i64().map(Cell::I).ok_or_else(|| wrong(f, "an integer", v)),
            _ => Err(wrong(f, "an integer", v)),
        },
        FieldKind::Bool => v.as_bool().map(Cell::B).ok_or_else(|| wrong(f, "a boolean", v)),
        FieldKind::Category | FieldKind::String => match v {
            Value::String(s) => Ok(Cell::S(s.clone())),
            // Categories are often sent as small integers; keep them as text.
            Value::Number(n) if f.kind == FieldKind::Category => Ok(Cell::S(n.to_string())),
            _ => Err(wrong(f, "a string", v)),
        },
        FieldKind::Timestamp => match v {
            Value::Number(n) => n.as_i64().map(Cell::I).ok_or_else(|| wrong(f, "epoch milliseconds", v)),
            Value::String(s) => humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| Cell::I(d.as_millis() as i64))
                .ok_or_else(|| {
                    (
                        Reason::WrongType,
                        format!("field `{}`: `{s}` is not an RFC 3339 time", f.name),
                    )
                }),
            _ => Err(wrong(f, "epoch milliseconds or an RFC 3339 string", v)),
        },
        FieldKind::Tensor => {
            let start = scratch.len();
            flatten(f, v, scratch)?;
            let got = scratch.len() - start;
            let want = f.tensor_len();
            if got != want {
                return Err((
                    Reason::WrongTensorLength,
                    format!(
                        "field `{}`: expected {want} numbers (shape {:?}), got {got}",
                        f.name,
                        f.shape.clone().unwrap_or_default()
                    ),
                ));
            }
            Ok(Cell::T(start))
        }
    }
}

fn number(f: &FieldSpec, v: &Value) -> Result<f64, FieldErr> {
    let x = match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| wrong(f, "a number", v))?,
        // JSON has no NaN/Infinity literals; producers that need them send strings.
        Value::String(s) if matches!(s.as_str(), "NaN" | "nan" | "Infinity" | "-Infinity" | "inf" | "-inf") => {
            s.parse::<f64>().unwrap_or(f64::NAN)
        }
        _ => return Err(wrong(f, "a number", v)),
    };
    if !x.is_finite() && !f.allow_non_finite {
        return Err((
            Reason::NonFinite,
            format!(
                "field `{}`: {x} is not allowed (set allow_non_finite: true to accept)",
                f.name
            ),
        ));
    }
    Ok(x)
}

/// Appends the numbers of a flat or nested array, checking each.
fn flatten(f: &FieldSpec, v: &Value, out: &mut Vec<f32>) -> Result<(), FieldErr> {
    match v {
        Value::Array(items) => {
            for it in items {
                match it {
                    Value::Array(_) => flatten(f, it, out)?,
                    _ => {
                        let x = number(f, it)?;
                        let y = x as f32;
                        if !y.is_finite() && x.is_finite() {
                            return Err((Reason::NonFinite, format!("field `{}`: {x} overflows float32", f.name)));
                        }
                        out.push(y);
                    }
                }
                // Stop early on absurd sizes rather than growing without bound.
                if out.len() > f.tensor_len() * 4 + 1024 {
                    return Ok(());
                }
            }
            Ok(())
        }
        _ => Err(wrong(f, "an array of numbers", v)),
    }
}

fn push(col: &mut Col, cell: Cell, scratch: &[f32]) {
    match (col, cell) {
        (Col::F(v, n), Cell::F(x)) => {
            v.push(x);
            n.push(true);
        }
        (Col::F(v, n), _) => {
            v.push(0.0);
            n.push(false);
        }
        (Col::I(v, n) | Col::Ts(v, n), Cell::I(x)) => {
            v.push(x);
            n.push(true);
        }
        (Col::I(v, n) | Col::Ts(v, n), _) => {
            v.push(0);
            n.push(false);
        }
        (Col::B(v, n), Cell::B(x)) => {
            v.push(x);
            n.push(true);
        }
        (Col::B(v, n), _) => {
            v.push(false);
            n.push(false);
        }
        (Col::S(b), Cell::S(s)) => b.append_value(s),
        (Col::S(b), _) => b.append_null(),
        (Col::T(v, n, len), Cell::T(start)) => {
            v.extend_from_slice(&scratch[start..start + *len]);
            n.push(true);
        }
        (Col::T(v, n, len), _) => {
            v.extend(std::iter::repeat_n(0.0, *len));
            n.push(false);
        }
    }
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

fn finish(col: &mut Col) -> ArrayRef {
    match col {
        Col::F(v, n) => Arc::new(Float64Array::new(std::mem::take(v).into(), nulls(std::mem::take(n)))),
        Col::I(v, n) => Arc::new(Int64Array::new(std::mem::take(v).into(), nulls(std::mem::take(n)))),
        Col::Ts(v, n) => Arc::new(TimestampMillisecondArray::new(
            std::mem::take(v).into(),
            nulls(std::mem::take(n)),
        )),
        Col::B(v, n) => Arc::new(BooleanArray::new(std::mem::take(v).into(), nulls(std::mem::take(n)))),
        Col::S(b) => Arc::new(b.finish()),
        Col::T(v, n, len) => {
            let values = Float32Array::from(std::mem::take(v));
            let field = Arc::new(Field::new_list_field(
                datafusion::arrow::datatypes::DataType::Float32,
                false,
            ));
            Arc::new(FixedSizeListArray::new(
                field,
                *len as i32,
                Arc::new(values),
                nulls(std::mem::take(n)),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
