//! Event schemas: `schemas/*.yaml` → Arrow schema.
//!
//! ```yaml
//! name: digits
//! format: json            # how events are encoded (optional; json is the default)
//! key: scanner            # field whose value keys the windows (optional)
//! event_id: event_id      # field with a unique event id (optional)
//! event_time: ts          # field with the event time, epoch ms or RFC 3339 (optional)
//! label: label            # field with the true label, may be absent per event (optional)
//! version:                # which schema versions events may declare (optional)
//!   field: schema_version #   a declared int, category or string field
//!   accept: [1, 2]        #   any other value: dead-lettered as `unknown_schema_version`
//! fields:
//!   - {name: scanner, type: category}
//!   - {name: brightness, type: float}
//!   - {name: pixels, type: tensor, shape: [1, 8, 8]}
//! ```
//!
//! The decoded batch carries the declared fields in order, then the source
//! coordinates `_partition`, `_offset`, `_timestamp` (Kafka timestamp, ms).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use serde::Deserialize;

use crate::config::{ConfigError, load_yaml};

/// Column names of the source coordinates appended to every decoded batch.
pub const PARTITION_COL: &str = "_partition";
pub const OFFSET_COL: &str = "_offset";
pub const TIMESTAMP_COL: &str = "_timestamp";
/// Per event, the events of its partition dead-lettered since the one before
/// it: the windows' dead-letter counts (`dead_letter_rate`).
pub const DEAD_LETTERS_COL: &str = "_dead_letters";

/// An event schema file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSchema {
    /// Schema name, for messages.
    pub name: String,
    /// How events, and the records of a labels topic, are encoded: `json`
    /// (the default, and the one format today; the list is `decode::FORMATS`).
    #[serde(default = "default_format")]
    pub format: String,
    /// Name of the field whose value keys the windows.
    #[serde(default)]
    pub key: Option<String>,
    /// Name of the field holding a unique event id.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Name of the field holding the event time (epoch milliseconds or RFC 3339 string).
    #[serde(default)]
    pub event_time: Option<String>,
    /// Name of the field holding the true label (events may omit it).
    #[serde(default)]
    pub label: Option<String>,
    /// Which schema versions events may declare; events declaring another
    /// are dead-lettered (reason `unknown_schema_version`).
    #[serde(default)]
    pub version: Option<VersionSpec>,
    /// The event's fields, in column order.
    pub fields: Vec<FieldSpec>,
    /// Where the schema was loaded from (set by [`EventSchema::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_format() -> String {
    "json".into()
}

/// Schema versions an event may declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// The field (declared in `fields`, of type int, category or string)
    /// naming the version an event follows. Whether it may be missing is
    /// that field's `nullable`.
    pub field: String,
    /// The versions this schema decodes (numbers or strings; `1` and `"1"`
    /// are the same version).
    pub accept: Vec<VersionValue>,
}

/// A schema version, as written in YAML.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum VersionValue {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for VersionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionValue::Int(i) => write!(f, "{i}"),
            VersionValue::Text(s) => f.write_str(s),
        }
    }
}

/// One field of an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// JSON key of the field; also the column name.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Tensor shape (only for `type: tensor`), e.g. `[1, 8, 8]`; the JSON value
    /// is a flat array of prod(shape) numbers, or nested arrays of that shape.
    #[serde(default)]
    pub shape: Option<Vec<usize>>,
    /// Whether the field may be missing or null (default: false, a missing
    /// value sends the event to the dead-letter topic).
    #[serde(default)]
    pub nullable: bool,
    /// Whether NaN / ±Inf are accepted for float and tensor fields (default: false).
    #[serde(default)]
    pub allow_non_finite: bool,
    /// Only for `type: category`: whether a JSON number is refused
    /// (dead-lettered as `wrong_type`) instead of being taken as its text.
    /// Default false, because categories are often sent as small integers:
    /// `"scanner": 17` is the category "17", `3.0` is "3.0" (serde_json's
    /// rendering), so `17` and `"17"` are one category but `3` and `3.0`
    /// are two. Set it where a number means a producer bug.
    #[serde(default)]
    pub strict: bool,
}

/// Field value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// 64-bit float column.
    Float,
    /// 64-bit integer column.
    Int,
    /// Boolean column.
    Bool,
    /// Categorical string (a finite set of values), Utf8 column.
    Category,
    /// Free text, Utf8 column; `type: text` says the same (the input of a
    /// text model). Events over `batch.max_event_bytes` are dead-lettered;
    /// a model input truncates long texts at its `max_length` tokens.
    #[serde(alias = "text")]
    String,
    /// Fixed-shape float tensor, FixedSizeList<Float32>.
    Tensor,
    /// Event time: epoch milliseconds or an RFC 3339 string, Timestamp(ms) column.
    Timestamp,
}

impl FieldSpec {
    /// Number of elements of a tensor field (product of the shape).
    pub fn tensor_len(&self) -> usize {
        self.shape.as_ref().map(|s| s.iter().product()).unwrap_or(0)
    }

    /// The Arrow type of this field.
    pub fn data_type(&self) -> DataType {
        match self.kind {
            FieldKind::Float => DataType::Float64,
            FieldKind::Int => DataType::Int64,
            FieldKind::Bool => DataType::Boolean,
            FieldKind::Category | FieldKind::String => DataType::Utf8,
            FieldKind::Tensor => tensor_type(self.tensor_len()),
            FieldKind::Timestamp => DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
        }
    }
}

/// The columns of `schema` a user can name (internal `_…` columns left
/// out), comma-separated: for "no column `x` (columns: …)" messages.
pub fn column_names(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !n.starts_with('_'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// FixedSizeList<Float32> of length `len`.
pub fn tensor_type(len: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, false)), len as i32)
}

/// Field `i`: its name (new to `seen`, the names before it), its shape
/// (tensors only) and `strict` (categories only).
fn check_field<'a>(
    i: usize,
    f: &'a FieldSpec,
    seen: &mut std::collections::HashSet<&'a str>,
) -> Result<(), (String, String)> {
    if f.name.is_empty() || f.name.starts_with('_') {
        return Err((
            format!("fields[{i}].name"),
            "must be non-empty and not start with '_' (reserved)".into(),
        ));
    }
    if !seen.insert(f.name.as_str()) {
        return Err((format!("fields[{i}].name"), format!("duplicate field `{}`", f.name)));
    }
    match (f.kind, &f.shape) {
        (FieldKind::Tensor, None) => {
            return Err((
                format!("fields[{i}].shape"),
                "a tensor field needs a shape, e.g. [1, 8, 8]".into(),
            ));
        }
        (FieldKind::Tensor, Some(s)) if s.is_empty() || s.contains(&0) => {
            return Err((format!("fields[{i}].shape"), "dimensions must be positive".into()));
        }
        (k, Some(_)) if k != FieldKind::Tensor => {
            return Err((format!("fields[{i}].shape"), "only tensor fields have a shape".into()));
        }
        _ => {}
    }
    if f.strict && f.kind != FieldKind::Category {
        return Err((
            format!("fields[{i}].strict"),
            format!("only category fields take `strict` (`{}` is {:?})", f.name, f.kind),
        ));
    }
    Ok(())
}

impl EventSchema {
    /// Loads and checks a schema file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut s: EventSchema = load_yaml(path)?;
        s.path = path.to_path_buf();
        s.check().map_err(|(key, msg)| ConfigError::invalid(path, key, msg))?;
        Ok(s)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            check_field(i, f, &mut seen)?;
        }
        self.check_roles()?;
        match &self.version {
            Some(v) => self.check_version(v),
            None => Ok(()),
        }
    }

    /// The fields named as key, event id, event time and label exist and
    /// have a type usable as such.
    fn check_roles(&self) -> Result<(), (String, String)> {
        for (role, name) in [
            ("key", &self.key),
            ("event_id", &self.event_id),
            ("event_time", &self.event_time),
            ("label", &self.label),
        ] {
            if let Some(n) = name {
                let Some(f) = self.field(n) else {
                    return Err((role.into(), format!("no field named `{n}` in `fields`")));
                };
                let ok = match role {
                    "key" | "event_id" => matches!(f.kind, FieldKind::Category | FieldKind::String | FieldKind::Int),
                    "event_time" => matches!(f.kind, FieldKind::Timestamp | FieldKind::Int),
                    _ => matches!(
                        f.kind,
                        FieldKind::Category | FieldKind::String | FieldKind::Int | FieldKind::Bool
                    ),
                };
                if !ok {
                    return Err((
                        role.into(),
                        format!("field `{n}` has type {:?}, not usable as {role}", f.kind),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The version field exists, is an int, category or string, and some
    /// version is accepted.
    fn check_version(&self, v: &VersionSpec) -> Result<(), (String, String)> {
        match self.field(&v.field) {
            None => {
                return Err((
                    "version.field".into(),
                    format!("no field named `{}` in `fields`", v.field),
                ));
            }
            Some(f) if !matches!(f.kind, FieldKind::Int | FieldKind::Category | FieldKind::String) => {
                return Err((
                    "version.field".into(),
                    format!(
                        "field `{}` has type {:?}; a version is an int, category or string",
                        v.field, f.kind
                    ),
                ));
            }
            Some(_) => {}
        }
        if v.accept.is_empty() {
            return Err(("version.accept".into(), "list at least one version".into()));
        }
        Ok(())
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The Arrow schema of a decoded batch: declared fields, then source coordinates.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .fields
            .iter()
            .map(|f| {
                Field::new(
                    &f.name,
                    f.data_type(),
                    f.nullable || Some(&f.name) == self.label.as_ref(),
                )
            })
            .collect();
        fields.push(Field::new(PARTITION_COL, DataType::Int32, false));
        fields.push(Field::new(OFFSET_COL, DataType::Int64, false));
        fields.push(Field::new(TIMESTAMP_COL, DataType::Int64, false));
        fields.push(Field::new(DEAD_LETTERS_COL, DataType::UInt32, false));
        Arc::new(Schema::new(fields))
    }
}

/// The partition and offset columns of `b`; missing ones are an error
/// saying what needed them (`purpose`, e.g. "to sample windows by").
pub fn positions(b: &RecordBatch, purpose: &str) -> Result<(Int32Array, Int64Array), ArrowError> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}` {purpose}")))
    };
    Ok((
        col(PARTITION_COL)?.as_primitive::<Int32Type>().clone(),
        col(OFFSET_COL)?.as_primitive::<Int64Type>().clone(),
    ))
}

/// Each row's event time (ms): `time_col`, else (or where null) the message timestamp.
pub fn event_times(b: &RecordBatch, time_col: Option<&str>) -> Result<Vec<i64>, ArrowError> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}` for event times")))
    };
    let stamp = cast(col(TIMESTAMP_COL)?, &DataType::Int64)?;
    let stamp = stamp.as_primitive::<Int64Type>();
    let time = match time_col {
        Some(c) => Some(cast(col(c)?, &DataType::Int64)?),
        None => None,
    };
    let time = time.as_ref().map(|t| t.as_primitive::<Int64Type>());
    Ok((0..b.num_rows())
        .map(|i| match time {
            Some(t) if t.is_valid(i) => t.value(i),
            _ => stamp.value(i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EventSchema, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.yaml");
        std::fs::write(&p, s).unwrap();
        EventSchema::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn tensor_needs_shape() {
        let e = parse("name: x\nfields:\n  - {name: p, type: tensor}\n").unwrap_err();
        assert!(e.contains("fields[0].shape") && e.contains("needs a shape"), "{e}");
    }

    #[test]
    fn key_must_exist() {
        let e = parse("name: x\nkey: site\nfields:\n  - {name: a, type: float}\n").unwrap_err();
        assert!(e.contains("key") && e.contains("no field named `site`"), "{e}");
    }

    #[test]
    fn each_check_names_the_key_at_fault() {
        let a = "  - {name: a, type: float}\n";
        for (body, at, says) in [
            (
                "  - {name: _a, type: float}\n".to_string(),
                "fields[0].name",
                "reserved",
            ),
            (format!("{a}{a}"), "fields[1].name", "duplicate field `a`"),
            (
                "  - {name: p, type: tensor, shape: [2, 0]}\n".into(),
                "fields[0].shape",
                "positive",
            ),
            (
                "  - {name: p, type: float, shape: [2]}\n".into(),
                "fields[0].shape",
                "only tensor fields",
            ),
            (
                "  - {name: p, type: float, strict: true}\n".into(),
                "fields[0].strict",
                "only category",
            ),
            (
                format!("event_time: a\nfields:\n{a}"),
                "event_time",
                "not usable as event_time",
            ),
            (format!("label: a\nfields:\n{a}"), "label", "not usable as label"),
            (
                format!("version: {{field: v, accept: [1]}}\nfields:\n{a}"),
                "version.field",
                "no field named `v`",
            ),
            (
                format!("version: {{field: a, accept: [1]}}\nfields:\n{a}"),
                "version.field",
                "a version is an int",
            ),
            (
                "version: {field: v, accept: []}\nfields:\n  - {name: v, type: int}\n".into(),
                "version.accept",
                "at least one",
            ),
        ] {
            let body = if body.starts_with("  -") {
                format!("fields:\n{body}")
            } else {
                body
            };
            let e = parse(&format!("name: x\n{body}")).unwrap_err();
            assert!(e.contains(at) && e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn arrow_types() {
        let s = parse("name: x\nfields:\n  - {name: a, type: float}\n  - {name: p, type: tensor, shape: [2, 3]}\n")
            .unwrap();
        let a = s.arrow_schema();
        assert_eq!(a.field(1).data_type(), &tensor_type(6));
        assert_eq!(
            a.fields().len(),
            6,
            "2 fields and _partition, _offset, _timestamp, _dead_letters"
        );
    }
}
