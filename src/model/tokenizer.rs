//! A Hugging Face tokenizer (`tokenizer.json`, the `tokenizers` crate) as a
//! text model input and the text descriptors use it: truncating at
//! `max_length` tokens, never padding (the model input pads per call).

use std::path::{Path, PathBuf};

use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// Bytes of text kept per token of `max_length` before tokenizing: a
/// WordPiece token covers at most 100 characters (`max_input_chars_per_word`;
/// a longer word becomes one `[UNK]`), so a cut this far out never changes
/// the first `max_length` tokens, while it bounds the work on a huge text.
const BYTES_PER_TOKEN_KEPT: usize = 512;

/// See the module doc.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    max_length: usize,
    /// The id of the unknown token (`model.unk_token` of the file), if any.
    unk_id: Option<u32>,
    /// The id padding uses (the file's `padding.pad_id`, else 0).
    pad_id: u32,
}

/// What a text's tokens say about it (the text descriptors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenStats {
    /// Tokens the model gets, special tokens included, after truncation.
    pub tokens: usize,
    /// Of those, how many are not special tokens (`[CLS]`, `[SEP]`, …).
    pub words: usize,
    /// Of those, how many are the unknown token.
    pub unknown: usize,
    /// Whether the text had more than `max_length` tokens.
    pub truncated: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `path`; a missing or broken file is an error naming it.
    pub fn load(path: &Path, max_length: usize) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("tokenizer {}: cannot read: {e}", path.display()))?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("tokenizer {} is not a Hugging Face tokenizer.json: {e}", path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer {}: max_length {max_length}: {e}", path.display()))?;
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
        tokenizer.with_padding(None);
        // The unknown token is named in the model section of the file.
        let unk_id = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["model"]["unk_token"].as_str().map(String::from))
            .and_then(|t| tokenizer.token_to_id(&t));
        Ok(Self {
            tokenizer,
            path: path.into(),
            max_length,
            unk_id,
            pad_id,
        })
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id padding uses.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The largest id it can produce.
    pub fn max_id(&self) -> u32 {
        u32::try_from(self.tokenizer.get_vocab_size(true).saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// The encodings of `texts` (in parallel), truncated at `max_length`.
    pub fn encode(&self, texts: Vec<&str>) -> Result<Vec<Encoding>, String> {
        let cut: Vec<&str> = texts.into_iter().map(|t| cut_text(t, self.max_length)).collect();
        self.tokenizer
            .encode_batch_fast(cut, true)
            .map_err(|e| format!("tokenizer {}: {e}", self.path.display()))
    }

    /// Token ids of one text (special tokens included), as the model gets them.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(self.encode(vec![text])?.remove(0).get_ids().to_vec())
    }

    /// The descriptors of one encoding.
    pub fn stats(&self, e: &Encoding) -> TokenStats {
        let special = e.get_special_tokens_mask().iter().filter(|m| **m == 1).count();
        TokenStats {
            tokens: e.len(),
            words: e.len().saturating_sub(special),
            unknown: self
                .unk_id
                .map_or(0, |u| e.get_ids().iter().filter(|i| **i == u).count()),
            truncated: !e.get_overflowing().is_empty(),
        }
    }
}

/// `text` cut (at a character boundary) where no more than `max_length`
/// tokens can lie before the cut: see [`BYTES_PER_TOKEN_KEPT`].
fn cut_text(text: &str, max_length: usize) -> &str {
    let limit = max_length.saturating_mul(BYTES_PER_TOKEN_KEPT);
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_falls_on_a_character_boundary() {
        let text = "é".repeat(2000);
        let cut = cut_text(&text, 1);
        assert!(cut.len() <= BYTES_PER_TOKEN_KEPT && cut.len() >= BYTES_PER_TOKEN_KEPT - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(cut_text("short", 1), "short");
    }

    #[test]
    fn a_file_that_is_not_a_tokenizer_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("dw-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("tokenizer.json");
        std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").unwrap();
        let e = TextTokenizer::load(&bad, 128).unwrap_err();
        assert!(e.contains("is not a Hugging Face tokenizer.json"), "{e}");
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let e = TextTokenizer::load(&dir.join("missing.json"), 128).unwrap_err();
        assert!(e.contains("missing.json: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
