//! Raw events → Arrow `RecordBatch` by an [`EventSchema`].
//!
//! Each event is checked completely before any of it is appended, so a bad
//! event is rejected whole (with a [`Rejection`] for the dead-letter topic)
//! and the good events around it go on.
//!
//! How the bytes are read is a [`Format`] (`json.rs`; registered in
//! [`FORMATS`], chosen by the schema's `format`): it turns one payload into
//! typed cells, and reads label records. What is common to every format —
//! size and tombstone checks, required fields, schema versions, the Arrow
//! columns, the source coordinates, the dead-letter counts — is here.

pub mod json;

/// The input formats, by the name a schema's `format` gives. A new format
/// is a file beside `json.rs` implementing [`Format`], plus its line here.
pub const FORMATS: &[&dyn Format] = &[&JSON];

/// JSON, the default format.
pub const JSON: json::Json = json::Json;

/// The format named `name`.
pub fn format(name: &str) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// How events and label records are encoded.
pub trait Format: Send + Sync {
    /// The name a schema's `format` gives.
    fn name(&self) -> &'static str;

    /// Parses one payload into `row`: each field it holds into its cell, or the
    /// field's error. Err: the payload is not a
    /// record of this format at all (the reason and a message).
    fn parse(&self, payload: &[u8], row: Row<'_>) -> Result<(), (Reason, String)>;

    /// Reads a label record: `event_id`, `label`, and `ts` if present.
    fn label(&self, payload: &[u8]) -> Result<LabelFields, LabelError>;
}

/// A label record's fields as read, before they are checked against the
/// label column (`labels.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFields {
    pub event_id: String,
    /// As text (numbers and booleans as written).
    pub label: String,
    /// `ts`: epoch ms, or None when absent.
    pub ts_ms: Option<i64>,
}

/// Why a label record could not be read: reason, message, and the field.
pub type LabelError = (Reason, String, Option<&'static str>);

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringBuilder, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::arrow::error::ArrowError;
use std::collections::HashMap;

use serde::Serialize;

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
    /// The event declares a schema version the schema does not accept.
    UnknownSchemaVersion,
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
            Reason::UnknownSchemaVersion => "unknown_schema_version",
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
    /// The payload's bytes, cut at [`PAYLOAD_EXCERPT_BYTES`]: as text when
    /// they are UTF-8, else base64 (`payload_encoding`), so that a binary
    /// payload comes back byte for byte.
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    /// Whether `payload` was cut.
    pub payload_truncated: bool,
}

/// How a rejection's `payload` holds the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// The bytes were UTF-8: the text itself.
    Utf8,
    /// Standard base64 (RFC 4648, padded) of the bytes.
    Base64,
}

impl Rejection {
    /// A rejection of `rec`, keeping (an excerpt of) its payload.
    pub fn of(rec: &RawRecord, reason: Reason, message: String, field: Option<String>) -> Box<Self> {
        use base64::Engine as _;
        let bytes = rec.payload.as_deref().unwrap_or_default();
        let (payload, payload_encoding, kept) = match std::str::from_utf8(bytes) {
            Ok(text) => {
                // Cut at a character boundary: the excerpt stays text.
                let mut cut = text.len().min(PAYLOAD_EXCERPT_BYTES);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                (text[..cut].to_string(), PayloadEncoding::Utf8, cut)
            }
            Err(_) => {
                let cut = bytes.len().min(PAYLOAD_EXCERPT_BYTES);
                let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes[..cut]);
                (b64, PayloadEncoding::Base64, cut)
            }
        };
        Box::new(Rejection {
            reason,
            message,
            field,
            partition: rec.partition,
            offset: rec.offset,
            timestamp_ms: rec.timestamp_ms,
            payload,
            payload_encoding,
            payload_truncated: kept < bytes.len(),
        })
    }

    /// The payload bytes kept (decoded from base64 where they were written so).
    pub fn payload_bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        match self.payload_encoding {
            PayloadEncoding::Utf8 => self.payload.as_bytes().to_vec(),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .unwrap_or_default(),
        }
    }
}

/// How much of a rejected payload the dead-letter record keeps.
pub const PAYLOAD_EXCERPT_BYTES: usize = 4096;

/// One field's value, checked and held until the whole event is accepted.
enum Cell {
    Null,
    F(f64),
    I(i64),
    B(bool),
    /// Text in `Pending::text[start..end]`.
    S(usize, usize),
    /// Tensor values in `Pending::scratch[start..start+len]`.
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

/// What one event's parse leaves: a cell per schema field (`None` = absent),
/// the first error met in each field, and the buffers cells point into.
#[derive(Default)]
struct Pending {
    cells: Vec<Option<Cell>>,
    errs: Vec<Option<FieldErr>>,
    scratch: Vec<f32>,
    text: String,
}

/// One event being decoded, as a [`Format`] fills it: a cell per schema
/// field, found by name.
pub struct Row<'a> {
    fields: &'a [FieldSpec],
    /// Schema field index by name.
    index: &'a HashMap<String, usize>,
    st: &'a mut Pending,
}

/// Decodes events of one [`Format`] into batches of one schema.
pub struct Decoder {
    format: &'static dyn Format,
    schema: Arc<EventSchema>,
    arrow: SchemaRef,
    max_bytes: usize,
    cols: Vec<Col>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    timestamp: Vec<i64>,
    /// Per pending event: its partition's events rejected since the one before.
    dead_letters: Vec<u32>,
    /// Per partition: events rejected since its last decoded one. Kept
    /// across flushes, so the counts do not depend on batching.
    rejected_since: HashMap<i32, u32>,
    /// Schema field index by JSON key.
    index: HashMap<String, usize>,
    /// The version field's index, the versions accepted as text, and those
    /// that are integers (parsed once, not per event).
    version: Option<(usize, Vec<String>, Vec<i64>)>,
    pending: Pending,
}

type FieldErr = (Reason, String);

/// Why an event is rejected: the reason, what is wrong, and the field at
/// fault if one is.
type Fault = (Reason, String, Option<String>);

impl Decoder {
    /// A decoder of JSON events for `schema`, rejecting events over `max_event_bytes`.
    pub fn new(schema: Arc<EventSchema>, max_event_bytes: usize) -> Self {
        Self::of(&JSON, schema, max_event_bytes)
    }

    /// A decoder of `format` for `schema`, rejecting events over `max_event_bytes`.
    pub fn of(format: &'static dyn Format, schema: Arc<EventSchema>, max_event_bytes: usize) -> Self {
        let arrow = schema.arrow_schema();
        let cols = schema.fields.iter().map(new_col).collect();
        Self {
            format,
            arrow,
            max_bytes: max_event_bytes,
            cols,
            partition: vec![],
            offset: vec![],
            timestamp: vec![],
            dead_letters: vec![],
            rejected_since: HashMap::new(),
            index: schema
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), i))
                .collect(),
            version: schema.version.as_ref().and_then(|v| {
                let i = schema.fields.iter().position(|f| f.name == v.field)?;
                let text: Vec<String> = v.accept.iter().map(ToString::to_string).collect();
                let ints = text.iter().filter_map(|t| t.parse().ok()).collect();
                Some((i, text, ints))
            }),
            pending: Pending::default(),
            schema,
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

    /// Decodes one event into the pending batch, or says why not. A decoded
    /// event carries the count of its partition's events rejected since the
    /// one before it (`_dead_letters`).
    pub fn decode(&mut self, rec: &RawRecord) -> Result<(), Box<Rejection>> {
        let decoded = self.decode_event(rec);
        let since = self.rejected_since.entry(rec.partition).or_default();
        match decoded {
            Ok(()) => self.dead_letters.push(std::mem::take(since)),
            Err(_) => *since = since.saturating_add(1),
        }
        decoded
    }

    fn decode_event(&mut self, rec: &RawRecord) -> Result<(), Box<Rejection>> {
        let reject = |(reason, message, field): Fault| Rejection::of(rec, reason, message, field);
        let payload = self.admit(rec).map_err(reject)?;
        self.parse(payload).map_err(reject)?;
        self.check_fields().map_err(reject)?;
        self.check_version().map_err(reject)?;
        let st = &self.pending;
        for (col, cell) in self.cols.iter_mut().zip(&st.cells) {
            push(col, cell.as_ref().unwrap_or(&Cell::Null), &st.text, &st.scratch);
        }
        self.partition.push(rec.partition);
        self.offset.push(rec.offset);
        self.timestamp.push(rec.timestamp_ms.unwrap_or(0));
        Ok(())
    }

    /// The record's payload, unless it has none or is too big to decode.
    fn admit<'r>(&self, rec: &'r RawRecord) -> Result<&'r [u8], Fault> {
        let Some(payload) = rec.payload.as_deref() else {
            return Err((Reason::EmptyPayload, "null message value (tombstone)".into(), None));
        };
        if payload.len() > self.max_bytes {
            let message = format!(
                "event of {} bytes exceeds batch.max_event_bytes = {}",
                payload.len(),
                self.max_bytes
            );
            return Err((Reason::Oversized, message, None));
        }
        Ok(payload)
    }

    /// Parses `payload` into the pending row's cells. One pass over the
    /// bytes straight into typed cells (no JSON tree): field errors are
    /// recorded and parsing goes on, so malformed JSON anywhere wins over a
    /// field error, as a parse-then-check would give.
    fn parse(&mut self, payload: &[u8]) -> Result<(), Fault> {
        let fields = &self.schema.fields;
        let st = &mut self.pending;
        st.cells.clear();
        st.cells.resize_with(fields.len(), || None);
        st.errs.clear();
        st.errs.resize(fields.len(), None);
        st.scratch.clear();
        st.text.clear();
        let row = Row {
            fields,
            index: &self.index,
            st,
        };
        self.format
            .parse(payload, row)
            .map_err(|(reason, message)| (reason, message, None))
    }

    /// The first field error the parse recorded, or a required field that
    /// is missing or null (the label column is never required).
    fn check_fields(&self) -> Result<(), Fault> {
        let st = &self.pending;
        for (i, f) in self.schema.fields.iter().enumerate() {
            if let Some((reason, msg)) = st.errs[i].clone() {
                return Err((reason, msg, Some(f.name.clone())));
            }
            let nullable = f.nullable || Some(&f.name) == self.schema.label.as_ref();
            if !nullable && matches!(st.cells[i], None | Some(Cell::Null)) {
                let message = format!("required field `{}` is missing or null", f.name);
                return Err((Reason::MissingField, message, Some(f.name.clone())));
            }
        }
        Ok(())
    }

    /// The schema version field's value, if the schema has one: one it decodes.
    fn check_version(&self) -> Result<(), Fault> {
        let Some((i, accept, ints)) = &self.version else {
            return Ok(());
        };
        let st = &self.pending;
        let cell = &st.cells[*i];
        let known = match cell {
            Some(Cell::I(v)) => ints.contains(v),
            Some(Cell::S(a, b)) => accept.iter().any(|x| *x == st.text[*a..*b]),
            _ => true, // absent: the field's `nullable` decided above
        };
        if known {
            return Ok(());
        }
        let name = &self.schema.fields[*i].name;
        let v = match cell {
            Some(Cell::S(a, b)) => format!("\"{}\"", &st.text[*a..*b]),
            Some(Cell::I(v)) => v.to_string(),
            _ => String::new(),
        };
        let message = format!(
            "`{name}` = {v}: schema `{}` decodes versions {}",
            self.schema.name,
            accept.join(", ")
        );
        Err((Reason::UnknownSchemaVersion, message, Some(name.clone())))
    }

    /// Takes the pending events as a batch (`None` when there are none).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cols.len() + 4);
        arrays.extend(self.cols.iter_mut().map(finish));
        arrays.push(Arc::new(Int32Array::from(std::mem::take(&mut self.partition))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.offset))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.timestamp))));
        arrays.push(Arc::new(UInt32Array::from(std::mem::take(&mut self.dead_letters))));
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

fn wrong(f: &FieldSpec, want: &str, got: &str) -> FieldErr {
    (
        Reason::WrongType,
        format!("field `{}`: expected {want}, got {got}", f.name),
    )
}

/// What a field of each kind expects, for messages.
fn expected(f: &FieldSpec) -> &'static str {
    match f.kind {
        FieldKind::Float => "a number",
        FieldKind::Int => "an integer",
        FieldKind::Bool => "a boolean",
        FieldKind::Category | FieldKind::String => "a string",
        FieldKind::Timestamp => "epoch milliseconds or an RFC 3339 string",
        FieldKind::Tensor => "an array of numbers",
    }
}

fn finite(f: &FieldSpec, x: f64) -> Result<f64, FieldErr> {
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

/// JSON has no NaN/Infinity literals; producers that need them send strings.
fn non_finite_literal(s: &str) -> Option<f64> {
    matches!(s, "NaN" | "nan" | "Infinity" | "-Infinity" | "inf" | "-inf").then(|| s.parse().unwrap_or(f64::NAN))
}

fn push(col: &mut Col, cell: &Cell, text: &str, scratch: &[f32]) {
    match (col, cell) {
        (Col::F(v, n), Cell::F(x)) => {
            v.push(*x);
            n.push(true);
        }
        (Col::F(v, n), _) => {
            v.push(0.0);
            n.push(false);
        }
        (Col::I(v, n) | Col::Ts(v, n), Cell::I(x)) => {
            v.push(*x);
            n.push(true);
        }
        (Col::I(v, n) | Col::Ts(v, n), _) => {
            v.push(0);
            n.push(false);
        }
        (Col::B(v, n), Cell::B(x)) => {
            v.push(*x);
            n.push(true);
        }
        (Col::B(v, n), _) => {
            v.push(false);
            n.push(false);
        }
        (Col::S(b), Cell::S(start, end)) => b.append_value(&text[*start..*end]),
        (Col::S(b), _) => b.append_null(),
        (Col::T(v, n, len), Cell::T(start)) => {
            v.extend_from_slice(&scratch[*start..*start + *len]);
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
