//! Table columns fed to a tabular model, as scikit-learn pipelines exported
//! by skl2onnx take them: one ONNX input per column (`[batch, 1]`, named
//! like the column; float32 or float64 with a missing value as NaN, int64,
//! or string), or one float32 matrix `[batch, columns]` of numeric columns.
//! An event missing a value fed as int64 or string (types without a missing
//! value) is left out of inference; its outputs are null.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType};

use super::{BuildContext, Chunk, InputError, InputKind, ModelInput, Options};
use crate::schema::column_names;

/// `model.input: {type: columns, columns: [a, b, …]}`: one ONNX input per column.
pub(super) const COLUMNS: InputKind = InputKind {
    name: "columns",
    build: build_columns,
};

/// `model.input: {type: matrix, columns: [a, b, …]}`: one float32 input `[batch, columns]`.
pub(super) const MATRIX: InputKind = InputKind {
    name: "matrix",
    build: build_matrix,
};

/// The options of both kinds.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TableOptions {
    /// The columns, in order (at least one).
    columns: Vec<String>,
}

fn build_columns(o: &Options, cx: &BuildContext) -> Result<Box<dyn ModelInput>, InputError> {
    build_table(o, cx, false)
}

fn build_matrix(o: &Options, cx: &BuildContext) -> Result<Box<dyn ModelInput>, InputError> {
    build_table(o, cx, true)
}

fn build_table(o: &Options, cx: &BuildContext, matrix: bool) -> Result<Box<dyn ModelInput>, InputError> {
    let TableOptions { columns } = super::options(o)?;
    if columns.is_empty() {
        return Err(InputError {
            key: "model.input.columns".into(),
            message: "`columns` needs at least one column".into(),
        });
    }
    let input = TableColumns::new(&columns, matrix, cx.cfg.input_name.clone(), cx.columns)?;
    Ok(Box::new(input))
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct TableColumns {
    columns: Vec<String>,
    matrix: bool,
    /// The matrix's ONNX input: as configured, else the model's only one.
    input_name: Option<String>,
    /// Per column, what its ONNX input takes (set by `check`).
    feeds: Vec<Elem>,
}

/// What an ONNX input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Float32,
    Float64,
    Int64,
    Text,
}

impl Elem {
    fn of(t: TensorElementType) -> Option<Self> {
        match t {
            TensorElementType::Float32 => Some(Elem::Float32),
            TensorElementType::Float64 => Some(Elem::Float64),
            TensorElementType::Int64 => Some(Elem::Int64),
            TensorElementType::String => Some(Elem::Text),
            _ => None,
        }
    }
    /// Whether a column of type `t` can be fed to it.
    fn accepts(self, t: &DataType) -> bool {
        match self {
            Elem::Float32 | Elem::Float64 => t.is_numeric() || *t == DataType::Boolean,
            Elem::Int64 => t.is_integer() || *t == DataType::Boolean,
            Elem::Text => !t.is_nested(),
        }
    }
    /// Types without a missing value: a null leaves the event unscored.
    fn needs_value(self) -> bool {
        matches!(self, Elem::Int64 | Elem::Text)
    }
}

impl TableColumns {
    /// `columns` must be scalar columns of `schema` (numeric for a matrix).
    pub fn new(
        columns: &[String],
        matrix: bool,
        input_name: Option<String>,
        schema: &Schema,
    ) -> Result<Self, InputError> {
        for (i, c) in columns.iter().enumerate() {
            let err = |message: String| InputError {
                key: format!("model.input.columns[{i}]"),
                message,
            };
            let f = schema
                .field_with_name(c)
                .map_err(|_| err(format!("no column `{c}` (columns: {})", column_names(schema))))?;
            let t = f.data_type();
            if matrix && !(t.is_numeric() || *t == DataType::Boolean) {
                return Err(err(format!("column `{c}` is {t}, a matrix input takes numbers")));
            }
            if t.is_nested() {
                return Err(err(format!("column `{c}` is {t}, a table input takes scalar columns")));
            }
        }
        if !matrix && input_name.is_some() {
            return Err(InputError {
                key: "model.input_name".into(),
                message:
                    "`input_name` names the input of a matrix; with `type: columns` each input is named like its column"
                        .into(),
            });
        }
        Ok(Self {
            columns: columns.to_vec(),
            matrix,
            input_name,
            feeds: vec![],
        })
    }

    /// `type: matrix`: the one float32 input `[batch, columns]`.
    fn check_matrix(&mut self, session: &Session) -> Result<(), String> {
        let inputs = session.inputs();
        let input = match &self.input_name {
            Some(n) => inputs
                .iter()
                .find(|i| i.name() == n)
                .ok_or_else(|| format!("no input named `{n}` (inputs: {})", input_names(session).join(", ")))?,
            None if inputs.len() == 1 => &inputs[0],
            None => {
                return Err(format!(
                    "has {} inputs ({}); set model.input_name, or use `type: columns` for one input per column",
                    inputs.len(),
                    input_names(session).join(", ")
                ));
            }
        };
        let name = input.name().to_string();
        if input.dtype().tensor_type() != Some(TensorElementType::Float32) {
            return Err(format!(
                "input `{name}` must be float32 for a matrix, is {:?}",
                input.dtype()
            ));
        }
        if let Some(s) = input.dtype().tensor_shape() {
            let dims: Vec<i64> = s.iter().copied().collect();
            let f = self.columns.len() as i64;
            if dims.len() != 2 || (dims[1] >= 0 && dims[1] != f) {
                return Err(format!(
                    "input `{name}` has shape {dims:?}, the pipeline feeds [batch, {f}]"
                ));
            }
        }
        self.input_name = Some(name);
        self.feeds = vec![Elem::Float32; self.columns.len()];
        Ok(())
    }

    /// `type: columns`: every model input is one listed column and back.
    fn check_columns(&mut self, session: &Session) -> Result<(), String> {
        let names = input_names(session);
        let unfed: Vec<&String> = names.iter().filter(|n| !self.columns.contains(n)).collect();
        if !unfed.is_empty() {
            return Err(format!(
                "inputs {unfed:?} have no column in model.input.columns (each input is fed the column of its name)"
            ));
        }
        let mut feeds = vec![];
        for c in &self.columns {
            let input = session.inputs().iter().find(|i| i.name() == c).ok_or_else(|| {
                format!(
                    "column `{c}` is not an input of the model (inputs: {})",
                    names.join(", ")
                )
            })?;
            let elem = input.dtype().tensor_type().and_then(Elem::of).ok_or_else(|| {
                format!(
                    "input `{c}` is {:?}; a table input feeds float32, float64, int64 or string",
                    input.dtype()
                )
            })?;
            if let Some(s) = input.dtype().tensor_shape() {
                let dims: Vec<i64> = s.iter().copied().collect();
                if dims.len() != 2 || dims[1] > 1 {
                    return Err(format!("input `{c}` has shape {dims:?}, a column is fed as [batch, 1]"));
                }
            }
            feeds.push(elem);
        }
        self.feeds = feeds;
        Ok(())
    }

    /// Each fed column of `batch` as the type its input takes.
    fn arrays(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, String> {
        self.columns
            .iter()
            .zip(&self.feeds)
            .map(|(c, elem)| {
                let col = batch
                    .column_by_name(c)
                    .ok_or_else(|| format!("input column `{c}` not in the batch"))?;
                if !elem.accepts(col.data_type()) {
                    return Err(format!("column `{c}` is {}, its input takes {elem:?}", col.data_type()));
                }
                let to = match elem {
                    Elem::Float32 | Elem::Float64 => DataType::Float64,
                    Elem::Int64 => DataType::Int64,
                    Elem::Text => DataType::Utf8,
                };
                cast(col, &to).map_err(|e| format!("column `{c}`: {e}"))
            })
            .collect()
    }

    /// The inputs for `rows` of the cast columns.
    fn tensors(
        &self,
        arrays: &[ArrayRef],
        rows: &[usize],
    ) -> Result<Vec<(String, SessionInputValue<'static>)>, String> {
        let k = rows.len();
        let float = |a: &ArrayRef, r: usize| {
            let a = a.as_primitive::<Float64Type>();
            if a.is_null(r) { f64::NAN } else { a.value(r) }
        };
        if self.matrix {
            let values: Vec<f32> = rows
                .iter()
                .flat_map(|&r| arrays.iter().map(move |a| float(a, r) as f32))
                .collect();
            let t = Tensor::from_array((vec![k as i64, arrays.len() as i64], values)).map_err(|e| e.to_string())?;
            return Ok(vec![(
                self.input_name.clone().unwrap_or_default(),
                SessionInputValue::from(t),
            )]);
        }
        let dims = vec![k as i64, 1];
        let mut out = vec![];
        for ((name, elem), a) in self.columns.iter().zip(&self.feeds).zip(arrays) {
            let value = match elem {
                Elem::Float32 => {
                    let v: Vec<f32> = rows.iter().map(|&r| float(a, r) as f32).collect();
                    SessionInputValue::from(Tensor::from_array((dims.clone(), v)).map_err(|e| e.to_string())?)
                }
                Elem::Float64 => {
                    let v: Vec<f64> = rows.iter().map(|&r| float(a, r)).collect();
                    SessionInputValue::from(Tensor::from_array((dims.clone(), v)).map_err(|e| e.to_string())?)
                }
                Elem::Int64 => {
                    let a = a.as_primitive::<Int64Type>();
                    let v: Vec<i64> = rows.iter().map(|&r| a.value(r)).collect();
                    SessionInputValue::from(Tensor::from_array((dims.clone(), v)).map_err(|e| e.to_string())?)
                }
                Elem::Text => {
                    let a = a.as_string::<i32>();
                    // ONNX Runtime copies strings as C strings: a NUL would end them early.
                    let v: Vec<String> = rows.iter().map(|&r| a.value(r).replace('\0', "\u{FFFD}")).collect();
                    let t = Tensor::from_string_array((dims.clone(), v.as_slice())).map_err(|e| e.to_string())?;
                    SessionInputValue::from(t)
                }
            };
            out.push((name.clone(), value));
        }
        Ok(out)
    }
}

fn input_names(session: &Session) -> Vec<String> {
    session.inputs().iter().map(|i| i.name().to_string()).collect()
}

impl ModelInput for TableColumns {
    fn check(&mut self, session: &Session) -> Result<(), String> {
        if self.matrix {
            self.check_matrix(session)
        } else {
            self.check_columns(session)
        }
    }

    fn chunks<'b>(&self, batch: &'b RecordBatch, max_rows: usize) -> Result<Vec<Chunk<'b>>, String> {
        let arrays = self.arrays(batch)?;
        let nulls = self.nulls(batch)?;
        let scored: Vec<usize> = (0..batch.num_rows())
            .filter(|r| nulls.as_ref().is_none_or(|n| n.is_valid(*r)))
            .collect();
        scored
            .chunks(max_rows.max(1))
            .map(|rows| {
                Ok(Chunk {
                    rows: rows.to_vec(),
                    inputs: self.tensors(&arrays, rows)?,
                    mask: None,
                })
            })
            .collect()
    }

    fn probe(&self) -> Result<Chunk<'static>, String> {
        let arrays: Vec<ArrayRef> = self
            .feeds
            .iter()
            .map(|e| -> ArrayRef {
                match e {
                    Elem::Float32 | Elem::Float64 => {
                        std::sync::Arc::new(datafusion::arrow::array::Float64Array::from(vec![0.0]))
                    }
                    Elem::Int64 => std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![0])),
                    Elem::Text => std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec![""])),
                }
            })
            .collect();
        Ok(Chunk {
            rows: vec![0],
            inputs: self.tensors(&arrays, &[0])?,
            mask: None,
        })
    }

    fn probe_description(&self) -> String {
        "one event of zeros and empty strings".into()
    }

    fn nulls(&self, batch: &RecordBatch) -> Result<Option<NullBuffer>, String> {
        let mut nulls: Option<NullBuffer> = None;
        for (c, elem) in self.columns.iter().zip(&self.feeds) {
            if !elem.needs_value() {
                continue;
            }
            let col = batch
                .column_by_name(c)
                .ok_or_else(|| format!("input column `{c}` not in the batch"))?;
            nulls = NullBuffer::union(nulls.as_ref(), col.logical_nulls().as_ref());
        }
        Ok(nulls)
    }
}
