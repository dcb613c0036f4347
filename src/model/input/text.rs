//! A text column through a Hugging Face tokenizer (`tokenizer.json`, the
//! `tokenizers` crate), fed to a transformer as `input_ids`,
//! `attention_mask` and, if the model has it, `token_type_ids` (int64,
//! `[batch, tokens]`).
//!
//! Texts are truncated at `max_length` tokens, never rejected. The rows of
//! a batch are sorted by token count before they are cut into inference
//! calls, and each call is padded to its own longest sequence: padding
//! costs as much compute as tokens, and news paragraphs range from 10 to
//! 300 tokens. The model stage puts the outputs back in row order.
//! Rows whose text is null are not fed; their outputs are null.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Schema};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType};

use super::{BuildContext, Chunk, InputError, InputKind, ModelInput, Options, TokenMask};
use crate::config::TokenizerConfig;
use crate::model::tokenizer::TextTokenizer;
use crate::schema::column_names;

/// See the module doc.
#[derive(Debug)]
pub struct TextTokens {
    column: String,
    tokenizer: Arc<TextTokenizer>,
    /// Configured ONNX input names; resolved against the model by `check`.
    names: InputNames,
}

#[derive(Debug, Clone, Default)]
struct InputNames {
    ids: Option<String>,
    mask: Option<String>,
    types: Option<String>,
}

fn err(key: &str, message: String) -> InputError {
    InputError {
        key: key.into(),
        message,
    }
}

/// `model.input: {type: text, column: NAME}`, with `model.tokenizer`:
/// the text column fed through the tokenizer. `input: NAME` with a
/// `model.tokenizer` is short for it.
pub(super) const TEXT: InputKind = InputKind {
    name: "text",
    build: build_text,
};

/// The options of `{type: text}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextOptions {
    /// The text column (a `type: text` field or a derived text column).
    column: String,
}

fn build_text(o: &Options, cx: &BuildContext) -> Result<Box<dyn ModelInput>, InputError> {
    let TextOptions { column } = super::options(o)?;
    let Some(cfg) = &cx.cfg.tokenizer else {
        return Err(err(
            "model.tokenizer",
            "a text input needs `model.tokenizer: {path: …/tokenizer.json}`".into(),
        ));
    };
    let Some(tokenizer) = cx.tokenizer.clone() else {
        return Err(err(
            "model.tokenizer.path",
            format!("tokenizer {} was not loaded", cfg.path.display()),
        ));
    };
    Ok(Box::new(TextTokens::new(&column, cfg, cx.columns, tokenizer)?))
}

impl TextTokens {
    /// `column` must be a text column of `columns`; `tokenizer` is `cfg`'s file, loaded.
    pub fn new(
        column: &str,
        cfg: &TokenizerConfig,
        columns: &Schema,
        tokenizer: Arc<TextTokenizer>,
    ) -> Result<Self, InputError> {
        let field = columns.field_with_name(column).map_err(|_| {
            err(
                "model.input",
                format!("no column `{column}` (columns: {})", column_names(columns)),
            )
        })?;
        if *field.data_type() != DataType::Utf8 {
            return Err(err(
                "model.input",
                format!(
                    "column `{column}` is {}, not text (a tokenizer reads a `type: text` field)",
                    field.data_type()
                ),
            ));
        }
        Ok(Self {
            column: column.into(),
            tokenizer,
            names: InputNames {
                ids: cfg.input_ids.clone(),
                mask: cfg.attention_mask.clone(),
                types: cfg.token_type_ids.clone(),
            },
        })
    }

    fn column<'b>(&self, batch: &'b RecordBatch) -> Result<&'b StringArray, String> {
        let col = batch
            .column_by_name(&self.column)
            .ok_or_else(|| format!("input column `{}` not in the batch", self.column))?;
        col.as_string_opt::<i32>()
            .ok_or_else(|| format!("input column `{}` is {}, not text", self.column, col.data_type()))
    }

    /// One inference call: the token ids and type ids of `rows`, padded to the longest.
    fn chunk(&self, rows: Vec<usize>, sequences: &[(&[u32], &[u32])]) -> Result<Chunk<'static>, String> {
        let tokens = sequences.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0).max(1);
        let k = sequences.len();
        let mut ids = vec![i64::from(self.tokenizer.pad_id()); k * tokens];
        let mut mask = vec![0i64; k * tokens];
        let mut types = vec![0i64; k * tokens];
        let mut kept = vec![false; k * tokens];
        for (r, (seq_ids, seq_types)) in sequences.iter().enumerate() {
            let at = r * tokens;
            for (j, (id, ty)) in seq_ids.iter().zip(seq_types.iter()).enumerate() {
                ids[at + j] = i64::from(*id);
                types[at + j] = i64::from(*ty);
                mask[at + j] = 1;
                kept[at + j] = true;
            }
        }
        let shape = vec![k as i64, tokens as i64];
        let tensor = |v: Vec<i64>| -> Result<SessionInputValue<'static>, String> {
            Ok(Tensor::from_array((shape.clone(), v))
                .map_err(|e| e.to_string())?
                .into())
        };
        let mut inputs = vec![(self.names.ids.clone().unwrap_or_default(), tensor(ids)?)];
        if let Some(n) = &self.names.mask {
            inputs.push((n.clone(), tensor(mask)?));
        }
        if let Some(n) = &self.names.types {
            inputs.push((n.clone(), tensor(types)?));
        }
        Ok(Chunk {
            rows,
            inputs,
            mask: Some(TokenMask { tokens, kept }),
        })
    }
}

/// The input of `session` named `configured`, else `default` if the model
/// has it; `required` says whether it must exist. `what` names it in errors.
fn resolve_input(
    session: &Session,
    configured: &Option<String>,
    default: &str,
    required: bool,
    what: &str,
) -> Result<Option<String>, String> {
    let inputs = session.inputs();
    let want = configured.as_deref().unwrap_or(default);
    match inputs.iter().find(|i| i.name() == want) {
        Some(i) if i.dtype().tensor_type() != Some(TensorElementType::Int64) => {
            Err(format!("input `{want}` ({what}) must be int64, is {:?}", i.dtype()))
        }
        Some(_) => Ok(Some(want.to_string())),
        None if required || configured.is_some() => Err(format!(
            "no input named `{want}` for the {what} (inputs: {})",
            inputs.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
        )),
        None => Ok(None),
    }
}

impl ModelInput for TextTokens {
    fn check(&mut self, session: &Session) -> Result<(), String> {
        let ids = resolve_input(session, &self.names.ids, "input_ids", true, "token ids")?;
        let mask = resolve_input(session, &self.names.mask, "attention_mask", false, "attention mask")?;
        let types = resolve_input(session, &self.names.types, "token_type_ids", false, "token type ids")?;
        let fed = [&ids, &mask, &types];
        if let Some(other) = session
            .inputs()
            .iter()
            .find(|i| !fed.iter().any(|f| f.as_deref() == Some(i.name())))
        {
            return Err(format!(
                "input `{}` is not one a text input feeds (token ids, attention mask, token type ids); \
                 name them with model.tokenizer.input_ids / attention_mask / token_type_ids",
                other.name()
            ));
        }
        self.names = InputNames { ids, mask, types };
        Ok(())
    }

    fn chunks<'b>(&self, batch: &'b RecordBatch, max_rows: usize) -> Result<Vec<Chunk<'b>>, String> {
        let col = self.column(batch)?;
        let rows: Vec<usize> = (0..col.len()).filter(|i| col.is_valid(*i)).collect();
        let encodings = self.tokenizer.encode(rows.iter().map(|i| col.value(*i)).collect())?;
        // Shortest first: each call's padding is to a length close to all of its rows'.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|i| encodings[*i].len());
        order
            .chunks(max_rows.max(1))
            .map(|part| {
                let picked: Vec<(&[u32], &[u32])> = part
                    .iter()
                    .map(|i| (encodings[*i].get_ids(), encodings[*i].get_type_ids()))
                    .collect();
                self.chunk(part.iter().map(|i| rows[*i]).collect(), &picked)
            })
            .collect()
    }

    fn probe(&self) -> Result<Chunk<'static>, String> {
        // The tokenizer's largest id: a model whose vocabulary is smaller fails here.
        let mut ids = self.tokenizer.ids("")?;
        ids.push(self.tokenizer.max_id());
        let types = vec![0; ids.len()];
        self.chunk(vec![0], &[(&ids, &types)])
    }

    fn probe_description(&self) -> String {
        format!(
            "token ids up to {} (the vocabulary of tokenizer {})",
            self.tokenizer.max_id(),
            self.tokenizer.path().display()
        )
    }

    fn nulls(&self, batch: &RecordBatch) -> Result<Option<NullBuffer>, String> {
        Ok(self.column(batch)?.logical_nulls())
    }
}
