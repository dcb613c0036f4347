//! Model inputs: how the columns of a scored batch become the model's input
//! tensors. One file per kind; [`KINDS`] is where each kind registers.
//!
//! - [`FloatTensor`]: one fixed-shape float tensor column fed as `[batch, ...shape]`.
//! - [`TextTokens`] (`text`): a text column through a Hugging Face tokenizer, fed as
//!   token ids and attention mask (and token types) to a transformer.
//! - [`TableColumns`]: table columns, one ONNX input each (as skl2onnx
//!   exports a scikit-learn pipeline) or one float matrix.
//!
//! An image input (bytes → decode → resize) is one more file implementing
//! [`ModelInput`], plus its line in [`KINDS`].

mod columns;
mod float_tensor;
mod text;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::Schema;
use ort::session::{Session, SessionInputValue};

pub use columns::TableColumns;
pub use float_tensor::FloatTensor;
pub use text::TextTokens;

use crate::config::{ModelConfig, ModelInputConfig};
use crate::model::tokenizer::TextTokenizer;
use crate::schema::EventSchema;

/// One kind of model input.
pub trait ModelInput: Send + Sync {
    /// Checks the model's declared inputs against what this kind feeds.
    fn check(&mut self, session: &Session) -> Result<(), String>;
    /// The inference calls that score `batch`, at most `max_rows` rows each.
    /// Rows without an input (see [`ModelInput::nulls`]) may be left out.
    fn chunks<'b>(&self, batch: &'b RecordBatch, max_rows: usize) -> Result<Vec<Chunk<'b>>, String>;
    /// The inputs of one neutral event: the probe that tells the outputs'
    /// sizes and proves the model accepts what this kind feeds.
    fn probe(&self) -> Result<Chunk<'static>, String>;
    /// What the probe feeds, for the error when the model fails on it.
    fn probe_description(&self) -> String {
        "one event of zeros".into()
    }
    /// The rows without an input: their outputs are null.
    fn nulls(&self, batch: &RecordBatch) -> Result<Option<NullBuffer>, String>;
}

/// One inference call.
pub struct Chunk<'b> {
    /// The batch rows scored, in the order of the tensors' first dimension.
    pub rows: Vec<usize>,
    /// The named input tensors.
    pub inputs: Vec<(String, SessionInputValue<'b>)>,
    /// For an input of token sequences: which positions hold a token
    /// (`rows.len()` × `tokens`, row-major), for pooling per-token outputs.
    pub mask: Option<TokenMask>,
}

/// Which positions of a padded token batch hold a token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMask {
    /// Positions per row (the padded length).
    pub tokens: usize,
    /// `true` where a token is, row-major.
    pub kept: Vec<bool>,
}

/// A problem with the pipeline's `model` section: the key at fault
/// (`model.input`, `model.shape`, …) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub key: String,
    pub message: String,
}

/// A kind of `model.input` given as a map: its `type` and how it is built
/// from the map's other keys (its options, which it checks itself).
pub struct InputKind {
    pub name: &'static str,
    pub build: BuildInput,
}

/// How an [`InputKind`] is built from its options.
pub type BuildInput = fn(&Options, &BuildContext) -> Result<Box<dyn ModelInput>, InputError>;

/// A tagged input's options as written.
pub type Options = serde_json::Map<String, serde_json::Value>;

/// The tagged kinds of `model.input`. A new kind (an image decoder, say) is
/// one file implementing [`ModelInput`] with its `InputKind`, plus its line
/// here.
pub const KINDS: &[InputKind] = &[columns::COLUMNS, columns::MATRIX, text::TEXT];

/// What building an input sees: the `model` section, the event schema, the
/// columns the model stage gets (after the transform), and `model.tokenizer`
/// loaded, which the pipeline shares with the text descriptors.
pub struct BuildContext<'a> {
    pub cfg: &'a ModelConfig,
    pub schema: &'a EventSchema,
    pub columns: &'a Schema,
    pub tokenizer: Option<Arc<TextTokenizer>>,
}

/// Deserializes a kind's `options`; an unknown or wrong key is an error at
/// `model.input`.
pub fn options<T: serde::de::DeserializeOwned>(options: &Options) -> Result<T, InputError> {
    serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| InputError {
        key: "model.input".into(),
        message: e.to_string(),
    })
}

/// The input a pipeline's `model` section describes, checked against the
/// columns the model stage will get (`schema_columns`, after the transform).
/// A column name is a float tensor, or with `model.tokenizer` a text
/// column (the `text` kind); a map is a registered kind ([`KINDS`]).
pub fn build(
    cfg: &ModelConfig,
    schema: &EventSchema,
    schema_columns: &Schema,
    tokenizer: Option<Arc<TextTokenizer>>,
) -> Result<Box<dyn ModelInput>, InputError> {
    // `input: NAME` with a tokenizer is short for `{type: text, column: NAME}`.
    let shorthand;
    let (kind, options) = match (&cfg.input, &cfg.tokenizer) {
        (ModelInputConfig::Column(c), None) => return Ok(Box::new(FloatTensor::new(cfg, c, schema, schema_columns)?)),
        (ModelInputConfig::Column(c), Some(_)) => {
            shorthand = Options::from_iter([("column".to_string(), serde_json::Value::from(c.as_str()))]);
            ("text", &shorthand)
        }
        (ModelInputConfig::Tagged { kind, options }, _) => (kind.as_str(), options),
    };
    let Some(k) = KINDS.iter().find(|k| k.name == kind) else {
        let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(InputError {
            key: "model.input.type".into(),
            message: format!("unknown input kind `{kind}`: known kinds are {}", known.join(", ")),
        });
    };
    let cx = BuildContext {
        cfg,
        schema,
        columns: schema_columns,
        tokenizer,
    };
    (k.build)(options, &cx)
}
