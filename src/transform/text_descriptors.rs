//! Text descriptors: SQL functions of a text column, for `transform.sql`,
//! whose results the detectors test like any numeric column (KS, PSI) —
//! as Evidently's text descriptors, computed per event:
//!
//! | function | value |
//! |---|---|
//! | `text_chars(t)` | characters (Unicode scalar values) |
//! | `text_non_ascii_share(t)` | share of the characters that are not ASCII (null for `''`) |
//! | `text_tokens(t)` | tokens the model gets, special tokens included, after truncation |
//! | `text_unknown_share(t)` | share of the word tokens that are the unknown token (null if none) |
//! | `text_truncated(t)` | whether the text had more than `model.tokenizer.max_length` tokens |
//!
//! The token descriptors use the pipeline's `model.tokenizer`; without one
//! they are a planning error that says so. A null text gives null.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::model::tokenizer::TextTokenizer;

/// Which descriptor a function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Descriptor {
    Chars,
    NonAsciiShare,
    Tokens,
    UnknownShare,
    Truncated,
}

const ALL: [(&str, Descriptor); 5] = [
    ("text_chars", Descriptor::Chars),
    ("text_non_ascii_share", Descriptor::NonAsciiShare),
    ("text_tokens", Descriptor::Tokens),
    ("text_unknown_share", Descriptor::UnknownShare),
    ("text_truncated", Descriptor::Truncated),
];

/// The descriptor functions, the token ones using `tokenizer`.
pub fn all(tokenizer: Option<Arc<TextTokenizer>>) -> Vec<ScalarUDF> {
    ALL.iter()
        .map(|(name, which)| {
            ScalarUDF::from(TextDescriptor {
                name,
                which: *which,
                tokenizer: tokenizer.clone(),
                signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug)]
struct TextDescriptor {
    name: &'static str,
    which: Descriptor,
    tokenizer: Option<Arc<TextTokenizer>>,
    signature: Signature,
}

// Functions are equal when they compute the same thing with the same tokenizer.
impl PartialEq for TextDescriptor {
    fn eq(&self, other: &Self) -> bool {
        let same_tokenizer = match (&self.tokenizer, &other.tokenizer) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        self.which == other.which && same_tokenizer
    }
}
impl Eq for TextDescriptor {}
impl Hash for TextDescriptor {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.which.hash(state);
    }
}

impl TextDescriptor {
    fn needs_tokenizer(&self) -> bool {
        matches!(
            self.which,
            Descriptor::Tokens | Descriptor::UnknownShare | Descriptor::Truncated
        )
    }

    /// The descriptor per row of `texts`.
    fn describe(&self, texts: &datafusion::arrow::array::StringArray) -> Result<ArrayRef> {
        match (self.which, &self.tokenizer) {
            (Descriptor::Chars, _) => Ok(Arc::new(Int64Array::from_iter(
                texts.iter().map(|t| t.map(|t| t.chars().count() as i64)),
            ))),
            (Descriptor::NonAsciiShare, _) => Ok(Arc::new(Float64Array::from_iter(texts.iter().map(|t| {
                let t = t?;
                let n = t.chars().count();
                (n > 0).then(|| t.chars().filter(|c| !c.is_ascii()).count() as f64 / n as f64)
            })))),
            (which, Some(tok)) => {
                let valid: Vec<usize> = (0..texts.len()).filter(|i| texts.is_valid(*i)).collect();
                let encodings = tok
                    .encode(valid.iter().map(|i| texts.value(*i)).collect())
                    .map_err(datafusion::error::DataFusionError::Execution)?;
                let mut stats = vec![None; texts.len()];
                for (i, e) in valid.iter().zip(&encodings) {
                    stats[*i] = Some(tok.stats(e));
                }
                Ok(match which {
                    Descriptor::Tokens => {
                        Arc::new(Int64Array::from_iter(stats.iter().map(|s| s.map(|s| s.tokens as i64))))
                    }
                    Descriptor::Truncated => {
                        Arc::new(BooleanArray::from_iter(stats.iter().map(|s| s.map(|s| s.truncated))))
                    }
                    _ => Arc::new(Float64Array::from_iter(stats.iter().map(|s| {
                        let s = (*s)?;
                        (s.words > 0).then(|| s.unknown as f64 / s.words as f64)
                    }))),
                })
            }
            (_, None) => plan_err!("{} needs model.tokenizer", self.name),
        }
    }
}

impl ScalarUDFImpl for TextDescriptor {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        if self.needs_tokenizer() && self.tokenizer.is_none() {
            return plan_err!("{} counts tokens: it needs the pipeline's model.tokenizer", self.name);
        }
        Ok(match self.which {
            Descriptor::Chars | Descriptor::Tokens => DataType::Int64,
            Descriptor::NonAsciiShare | Descriptor::UnknownShare => DataType::Float64,
            Descriptor::Truncated => DataType::Boolean,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return plan_err!("{} takes one text argument", self.name);
        };
        let scalar = matches!(arg, ColumnarValue::Scalar(_));
        let array = arg.to_array(args.number_rows)?;
        let out = self.describe(array.as_string::<i32>())?;
        Ok(if scalar {
            ColumnarValue::Scalar(datafusion::scalar::ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringArray;

    use super::*;

    fn run(name: &str, texts: &[Option<&str>]) -> Result<ArrayRef> {
        let f = all(None).into_iter().find(|f| f.name() == name).unwrap();
        let any: &dyn std::any::Any = f.inner().as_ref();
        let f = any.downcast_ref::<TextDescriptor>().unwrap();
        f.describe(&StringArray::from(texts.to_vec()))
    }

    #[test]
    fn characters_and_non_ascii_share_count_unicode_scalars() {
        let texts = [Some("café"), Some(""), None, Some("東京 ok")];
        let chars = run("text_chars", &texts).unwrap();
        assert_eq!(
            chars
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .iter()
                .collect::<Vec<_>>(),
            vec![Some(4), Some(0), None, Some(5)]
        );
        let share = run("text_non_ascii_share", &texts).unwrap();
        let share: Vec<_> = share
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .iter()
            .collect();
        assert_eq!(share, vec![Some(0.25), None, None, Some(0.4)]);
    }

    #[test]
    fn token_descriptors_without_a_tokenizer_say_what_they_need() {
        let f = all(None).into_iter().find(|f| f.name() == "text_tokens").unwrap();
        let e = f.return_type(&[DataType::Utf8]).unwrap_err().to_string();
        assert!(
            e.contains("text_tokens counts tokens: it needs the pipeline's model.tokenizer"),
            "{e}"
        );
    }
}
