//! A fixed-shape float tensor column (`FixedSizeList<Float32>`, e.g. a
//! `type: tensor` field) fed to the model's one float32 input as
//! `[batch, ...shape]`, straight from the column's buffer.

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, RecordBatch};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Float32Type, Schema};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use super::{Chunk, InputError, ModelInput};
use crate::config::ModelConfig;
use crate::schema::{EventSchema, FieldKind, column_names};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct FloatTensor {
    column: String,
    /// The ONNX input: as configured, else the model's only one (set by `check`).
    input_name: Option<String>,
    shape: Vec<usize>,
    per_event: usize,
}

impl FloatTensor {
    /// `column` (`model.input`) must be a float tensor column of `columns`;
    /// the shape is `model.shape`, else the schema field's, else flat.
    pub fn new(cfg: &ModelConfig, column: &str, schema: &EventSchema, columns: &Schema) -> Result<Self, InputError> {
        let err = |key: &str, message: String| InputError {
            key: key.into(),
            message,
        };
        let field = columns.field_with_name(column).map_err(|_| {
            err(
                "model.input",
                format!("no column `{}` (columns: {})", column, column_names(columns)),
            )
        })?;
        let len = match field.data_type() {
            DataType::FixedSizeList(f, n) if *f.data_type() == DataType::Float32 => *n as usize,
            t => {
                return Err(err(
                    "model.input",
                    format!("column `{}` is {t}, not a float tensor", column),
                ));
            }
        };
        let shape = match (&cfg.shape, schema.field(column)) {
            (Some(s), _) => s.clone(),
            (None, Some(f)) if f.kind == FieldKind::Tensor => f.shape.clone().unwrap_or_default(),
            _ => vec![len],
        };
        let per_event: usize = shape.iter().product();
        if per_event != len {
            return Err(err(
                "model.shape",
                format!(
                    "shape {shape:?} has {per_event} elements, column `{}` has {len}",
                    column
                ),
            ));
        }
        Ok(Self {
            column: column.to_string(),
            input_name: cfg.input_name.clone(),
            shape,
            per_event,
        })
    }

    fn column<'b>(&self, batch: &'b RecordBatch) -> Result<&'b FixedSizeListArray, String> {
        let col = batch
            .column_by_name(&self.column)
            .ok_or_else(|| format!("input column `{}` not in the batch", self.column))?;
        match col.data_type() {
            DataType::FixedSizeList(f, len)
                if *f.data_type() == DataType::Float32 && *len as usize == self.per_event =>
            {
                Ok(col.as_fixed_size_list())
            }
            t => Err(format!(
                "input column `{}` is {t}, expected {} float32 values per event",
                self.column, self.per_event
            )),
        }
    }

    fn dims(&self, n: usize) -> Vec<i64> {
        std::iter::once(n as i64)
            .chain(self.shape.iter().map(|d| *d as i64))
            .collect()
    }

    fn name(&self) -> String {
        self.input_name.clone().unwrap_or_default()
    }
}

impl ModelInput for FloatTensor {
    fn check(&mut self, session: &Session) -> Result<(), String> {
        let inputs = session.inputs();
        let names = || {
            inputs
                .iter()
                .map(|o| o.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input = match &self.input_name {
            Some(n) => inputs
                .iter()
                .find(|i| i.name() == n)
                .ok_or_else(|| format!("no input named `{n}` (inputs: {})", names()))?,
            None if inputs.len() == 1 => &inputs[0],
            None => {
                return Err(format!(
                    "has {} inputs ({}); set model.input_name",
                    inputs.len(),
                    names()
                ));
            }
        };
        let input_name = input.name().to_string();
        if let Some(s) = input.dtype().tensor_shape() {
            let dims: Vec<i64> = s.iter().copied().collect();
            let want: Vec<i64> = self.shape.iter().map(|d| *d as i64).collect();
            let ok = dims.len() == want.len() + 1 && dims[1..].iter().zip(&want).all(|(a, b)| *a < 0 || a == b);
            if !ok {
                return Err(format!(
                    "input `{input_name}` has shape {dims:?}, but the pipeline feeds [batch, {}]",
                    self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
            return Err(format!("input `{input_name}` must be float32, is {:?}", input.dtype()));
        }
        self.input_name = Some(input_name);
        Ok(())
    }

    fn chunks<'b>(&self, batch: &'b RecordBatch, max_rows: usize) -> Result<Vec<Chunk<'b>>, String> {
        let list = self.column(batch)?;
        let values = list.values().as_primitive::<Float32Type>();
        // Slicing the list slices its child (value_offset(0) is 0 then); the
        // offset is honoured anyway, should a list start inside its child.
        let base = if list.is_empty() {
            0
        } else {
            list.value_offset(0).max(0) as usize
        };
        let n = batch.num_rows();
        let mut chunks = vec![];
        for start in (0..n).step_by(max_rows.max(1)) {
            let rows = start..(start + max_rows).min(n);
            let flat = values
                .values()
                .get(base + rows.start * self.per_event..base + rows.end * self.per_event)
                .ok_or_else(|| format!("input column `{}` is shorter than its rows", self.column))?;
            let tensor = TensorRef::from_array_view((self.dims(rows.len()), flat)).map_err(|e| e.to_string())?;
            chunks.push(Chunk {
                rows: rows.collect(),
                inputs: vec![(self.name(), SessionInputValue::from(tensor))],
                mask: None,
            });
        }
        Ok(chunks)
    }

    fn probe(&self) -> Result<Chunk<'static>, String> {
        let zeros = vec![0f32; self.per_event];
        let tensor = Tensor::from_array((self.dims(1), zeros)).map_err(|e| e.to_string())?;
        Ok(Chunk {
            rows: vec![0],
            inputs: vec![(self.name(), SessionInputValue::from(tensor))],
            mask: None,
        })
    }

    fn nulls(&self, batch: &RecordBatch) -> Result<Option<NullBuffer>, String> {
        Ok(self.column(batch)?.logical_nulls())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Float32Array};
    use datafusion::arrow::datatypes::Field;

    use super::*;
    use crate::model::Model;

    fn digits() -> (EventSchema, ModelConfig) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let schema = EventSchema::load(&root.join("schemas/digits.yaml")).unwrap();
        let cfg: ModelConfig =
            serde_norway::from_str("path: models/digits_cnn.onnx\ninput: pixels\nbatch_size: 3").unwrap();
        (schema, cfg)
    }

    /// `rows` events of 64 pixels (row i: values i, i+1, …), row `null` absent.
    fn pixels(rows: usize, null: usize) -> RecordBatch {
        let values: Vec<f32> = (0..rows * 64).map(|v| ((v / 64 + v % 64) % 17) as f32).collect();
        let nulls = NullBuffer::from((0..rows).map(|i| i != null).collect::<Vec<_>>());
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let list = FixedSizeListArray::new(item, 64, Arc::new(Float32Array::from(values)), Some(nulls));
        let schema = Arc::new(Schema::new(vec![Field::new("pixels", list.data_type().clone(), true)]));
        RecordBatch::try_new(schema, vec![Arc::new(list) as ArrayRef]).unwrap()
    }

    #[test]
    fn the_column_and_shape_are_checked_where_the_pipeline_names_them() {
        let (schema, mut cfg) = digits();
        let columns = pixels(1, 9).schema();
        assert!(FloatTensor::new(&cfg, cfg.input.column().unwrap(), &schema, &columns).is_ok());
        cfg.shape = Some(vec![1, 4, 8]);
        let e = FloatTensor::new(&cfg, cfg.input.column().unwrap(), &schema, &columns).unwrap_err();
        assert_eq!(e.key, "model.shape");
        assert!(e.message.contains("has 32 elements, column `pixels` has 64"), "{e:?}");
        cfg.input = crate::config::ModelInputConfig::Column("image".into());
        let e = FloatTensor::new(&cfg, cfg.input.column().unwrap(), &schema, &columns).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("model.input", "no column `image` (columns: pixels)")
        );
        let other = Schema::new(vec![Field::new("image", DataType::Utf8, true)]);
        let e = FloatTensor::new(&cfg, cfg.input.column().unwrap(), &schema, &other).unwrap_err();
        assert!(e.message.contains("is Utf8, not a float tensor"), "{e:?}");
    }

    /// The rows of a sliced batch score as the same rows of the whole batch,
    /// in inference chunks of `batch_size` (3 here, so chunks straddle the
    /// slice); an absent input gets null outputs.
    #[test]
    fn a_sliced_batch_scores_as_its_rows_in_the_whole_one() {
        let (schema, cfg) = digits();
        let whole = pixels(8, 6);
        let input = FloatTensor::new(&cfg, cfg.input.column().unwrap(), &schema, &whole.schema()).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(&cfg.path);
        let mut model = Model::load(&cfg, &path, Box::new(input), None).unwrap();
        let all = model.score(&whole).unwrap();
        let part = model.score(&whole.slice(2, 5)).unwrap();
        let logits = |b: &RecordBatch, i: usize| {
            let l = b.column_by_name("logits").unwrap().as_fixed_size_list();
            (
                l.is_valid(i),
                l.value(i).as_primitive::<Float32Type>().values().to_vec(),
            )
        };
        for i in 0..5 {
            assert_eq!(logits(&part, i), logits(&all, i + 2), "row {i} of the slice");
        }
        assert!(!logits(&all, 6).0, "the absent input's outputs are null");
        assert_ne!(logits(&all, 1).1, logits(&all, 2).1);
    }
}
