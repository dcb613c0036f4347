//! A text corpus of labelled paragraphs: a folder of topic folders of
//! articles (plain text, first line the title), as the BBC News corpus
//! that setup fetches into `.deps/bbc` (BBC copyright, research use only:
//! never committed). Labels are the topic folders in name order.
//!
//! Paragraphs are the blocks of non-blank lines after the title, of
//! [`MIN_WORDS`] words or more: scripts/train_news_head.py splits them the
//! same way, so the head's held-out split is the same paragraphs here.

use std::path::{Path, PathBuf};

/// Shorter paragraphs (bylines, captions) are left out.
pub const MIN_WORDS: usize = 8;

/// One paragraph of one article.
#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    /// Index of its topic in [`Corpus::topics`].
    pub topic: usize,
    /// The article's number (its file name, `042.txt` → 42).
    pub article: u32,
    pub text: String,
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Topic names (folder names), ascending.
    pub topics: Vec<String>,
    /// Paragraphs by topic, then article, then position.
    pub paragraphs: Vec<Paragraph>,
}

/// A corpus folder that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("corpus {}: {message}", path.display())]
pub struct CorpusError {
    pub path: PathBuf,
    pub message: String,
}

impl Corpus {
    /// Reads every `<topic>/<number>.txt` under `dir`. A file that is not
    /// UTF-8 is read as Latin-1 (one article of the BBC corpus is).
    pub fn load(dir: &Path) -> Result<Self, CorpusError> {
        let err = |path: &Path, message: String| CorpusError {
            path: path.into(),
            message,
        };
        let listing = |d: &Path| -> Result<Vec<PathBuf>, CorpusError> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(|e| {
                    err(
                        d,
                        format!("cannot read: {e} (scripts/setup.sh fetches the news corpus)"),
                    )
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            v.sort();
            Ok(v)
        };
        let mut topics = vec![];
        let mut paragraphs = vec![];
        for topic_dir in listing(dir)?.into_iter().filter(|p| p.is_dir()) {
            let topic = topics.len();
            topics.push(topic_dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            for file in listing(&topic_dir)? {
                let Some(article) = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let bytes = std::fs::read(&file).map_err(|e| err(&file, format!("cannot read: {e}")))?;
                let text =
                    String::from_utf8(bytes).unwrap_or_else(|e| e.into_bytes().iter().map(|b| *b as char).collect());
                paragraphs.extend(
                    split_paragraphs(&text)
                        .into_iter()
                        .map(|text| Paragraph { topic, article, text }),
                );
            }
        }
        if paragraphs.is_empty() {
            return Err(err(dir, "no paragraphs (expected <topic>/<number>.txt files)".into()));
        }
        Ok(Self { topics, paragraphs })
    }
}

/// The paragraphs of one article: see the module doc.
pub fn split_paragraphs(text: &str) -> Vec<String> {
    let mut blocks = vec![];
    let mut current: Vec<&str> = vec![];
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if !line.trim().is_empty() {
            current.push(line);
        } else if !current.is_empty() {
            blocks.push(current.join("\n").trim().to_string());
            current.clear();
        }
    }
    if !current.is_empty() {
        blocks.push(current.join("\n").trim().to_string());
    }
    blocks
        .into_iter()
        .skip(1)
        .filter(|b| b.split_whitespace().count() >= MIN_WORDS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_and_short_blocks_are_left_out() {
        let article = "Title of the piece\n\nOne two three four five six seven eight.\r\n  \nshort line\n\nA paragraph\nover two lines with nine words.\n";
        assert_eq!(
            split_paragraphs(article),
            vec![
                "One two three four five six seven eight.".to_string(),
                "A paragraph\nover two lines with nine words.".to_string()
            ]
        );
    }
}
