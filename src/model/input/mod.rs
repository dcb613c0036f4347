//! Model inputs: how the columns of a scored batch become the model's input
//! tensors. One file per kind; [`build`] is where each kind registers.
//!
//! Today: [`FloatTensor`], one fixed-shape float tensor column fed as
//! `[batch, ...shape]`. A text input (tokenizer → ids and mask) or an image
//! input (bytes → decode → resize) is one more file implementing
//! [`ModelInput`], plus its line in [`build`].

mod float_tensor;

use std::ops::Range;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::Schema;
use ort::session::{Session, SessionInputValue};

pub use float_tensor::FloatTensor;

use crate::config::ModelConfig;
use crate::schema::EventSchema;

/// One kind of model input.
pub trait ModelInput: Send + Sync {
    /// Checks the model's declared inputs against what this kind feeds.
    fn check(&mut self, session: &Session) -> Result<(), String>;
    /// The model's inputs for `rows` of `batch`, borrowing the batch's
    /// buffers where the layout allows (no copy per batch).
    fn tensors<'b>(
        &self,
        batch: &'b RecordBatch,
        rows: Range<usize>,
    ) -> Result<Vec<(String, SessionInputValue<'b>)>, String>;
    /// The inputs of one neutral event: the probe that tells the outputs' sizes.
    fn probe(&self) -> Result<Vec<(String, SessionInputValue<'static>)>, String>;
    /// The rows without an input: their outputs are null.
    fn nulls(&self, batch: &RecordBatch) -> Result<Option<NullBuffer>, String>;
}

/// A problem with the pipeline's `model` section: the key at fault
/// (`model.input`, `model.shape`, …) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub key: String,
    pub message: String,
}

/// The input a pipeline's `model` section describes, checked against the
/// columns the model stage will get (`columns`, after the transform).
pub fn build(cfg: &ModelConfig, schema: &EventSchema, columns: &Schema) -> Result<Box<dyn ModelInput>, InputError> {
    Ok(Box::new(FloatTensor::new(cfg, schema, columns)?))
}
