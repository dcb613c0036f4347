//! Pipeline YAML → typed config. Unknown keys are rejected everywhere;
//! `${VAR}` / `${VAR:-default}` are interpolated from the environment first.
//! Every error names the file, line, column and key path.

mod interpolate;
mod pipeline;

use std::fmt;
use std::path::{Path, PathBuf};

pub use interpolate::{InterpolateError, interpolate, redact};
pub use pipeline::*;
use serde::de::DeserializeOwned;

/// A configuration problem, located.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not valid YAML, or does not match the expected structure.
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        key: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            ConfigError::Invalid {
                path,
                line,
                column,
                key,
                message,
            } => {
                write!(f, "{}: {message}", Loc(path, *line, *column, key))
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

struct Loc<'a>(&'a Path, Option<usize>, Option<usize>, &'a str);

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())?;
        if let Some(l) = self.1 {
            write!(f, ":{l}")?;
            if let Some(c) = self.2 {
                write!(f, ":{c}")?;
            }
        }
        if !self.3.is_empty() {
            write!(f, ": {}", self.3)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// A semantic error at `key` (a path like `detectors[2].window.size`); the
    /// line and column are looked up in the file when it can be read.
    pub fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        let key = key.into();
        let pos = std::fs::read_to_string(path).ok().and_then(|t| locate(&t, &key));
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            key,
            message: message.into(),
        }
    }

    /// The key path the error is about ("" for the whole file).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Io { .. } => "",
            ConfigError::Invalid { key, .. } => key,
        }
    }
}

/// Reads `path`, interpolates the environment and deserializes it, rejecting
/// unknown keys. Errors are located and have environment values redacted.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.into(),
        source,
    })?;
    parse_yaml(path, &raw)
}

/// As [`load_yaml`], on text already read.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, raw: &str) -> Result<T, ConfigError> {
    let interp = interpolate(raw, |n| std::env::var(n).ok()).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        line: Some(e.line),
        column: Some(e.column),
        key: String::new(),
        message: e.message,
    })?;
    let de = serde_norway::Deserializer::from_str(&interp.text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = clean_path(&e.path().to_string());
        let inner = e.inner();
        // The key's own position when the path can be followed to its end;
        // else serde's position (inside flow style); else the nearest ancestor.
        let pos = locate_exact(raw, &key)
            .or_else(|| inner.location().map(|l| (l.line(), l.column())))
            .or_else(|| locate(raw, &key));
        let mut msg = inner.to_string();
        // serde_norway appends "at line X column Y" and may prefix its own path;
        // we print our own position and key path.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        if let Some((head, rest)) = msg.split_once(": ")
            && !head.is_empty()
            && head.chars().all(|c| c.is_ascii_alphanumeric() || "._[]-".contains(c))
        {
            msg = rest.to_string();
        }
        ConfigError::Invalid {
            path: path.into(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            key,
            message: redact(&msg, &interp.secrets),
        }
    })
}

fn clean_path(p: &str) -> String {
    if p == "." { String::new() } else { p.to_string() }
}

/// Finds the 1-based (line, column) of a key path like `detectors[2].window.size`
/// in block-style YAML. When a segment cannot be followed (flow style `{…}`,
/// anchors) the position of the deepest segment found is returned; `None`
/// when not even the first is found.
pub fn locate(text: &str, key_path: &str) -> Option<(usize, usize)> {
    locate_inner(text, key_path).map(|(pos, _)| pos)
}

/// As [`locate`], but only when every segment of the path was found.
pub fn locate_exact(text: &str, key_path: &str) -> Option<(usize, usize)> {
    locate_inner(text, key_path)
        .filter(|(_, complete)| *complete)
        .map(|(pos, _)| pos)
}

fn locate_inner(text: &str, key_path: &str) -> Option<((usize, usize), bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    // Children of the current node are indented deeper than this.
    let mut parent_indent: i64 = -1;
    // After a list item, its first key sits on the item's own line.
    let mut same_line = false;
    let mut found = None;
    for seg in split_path(key_path) {
        let mut hit = None;
        let mut count = 0usize;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (l.len() - trimmed.len()) as i64;
            if indent <= parent_indent && !(same_line && i == start) {
                break;
            }
            match &seg {
                Seg::Key(k) => {
                    let (off, body) = strip_dash(trimmed);
                    let col = indent + off as i64;
                    let at_level = if found.is_none() { col == 0 } else { col > parent_indent };
                    if at_level && (body.starts_with(&format!("{k}:")) || body.starts_with(&format!("\"{k}\":"))) {
                        hit = Some((i, col as usize));
                        break;
                    }
                }
                Seg::Index(n) => {
                    if trimmed.starts_with("- ") || trimmed == "-" {
                        if count == *n {
                            hit = Some((i, indent as usize));
                            break;
                        }
                        count += 1;
                    }
                }
            }
        }
        let Some((li, col)) = hit else {
            return found.map(|f| (f, false));
        };
        found = Some((li + 1, col + 1));
        parent_indent = col as i64;
        same_line = matches!(seg, Seg::Index(_));
        start = if same_line { li } else { li + 1 };
    }
    found.map(|f| (f, true))
}

fn strip_dash(s: &str) -> (usize, &str) {
    let mut off = 0;
    let mut b = s;
    while let Some(r) = b.strip_prefix("- ") {
        let r2 = r.trim_start();
        off += 2 + (r.len() - r2.len());
        b = r2;
    }
    (off, b)
}

enum Seg {
    Key(String),
    Index(usize),
}

fn split_path(p: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in p.split('.').filter(|s| !s.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(rest[..b].to_string()));
            }
            rest = &rest[b..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some(e) = r.find(']') else { break };
                if let Ok(n) = r[..e].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &r[e + 1..];
            }
        } else {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: p\nsource:\n  type: kafka\n  topic: t\ndetectors:\n  - name: a\n    kind: ks\n  - name: b\n    kind: mmd\n    window:\n      size: 0\n";

    /// Checkpoints are on by default, off with `null`, renamed with a name,
    /// and refused for a file source.
    #[test]
    fn checkpoint_topic_default_null_and_name() {
        let doc = |extra: &str, kind: &str| {
            let src = match kind {
                "kafka" => format!("{{type: kafka, brokers: b, topic: t{extra}}}"),
                _ => format!("{{type: file, path: x.jsonl{extra}}}"),
            };
            format!(
                "name: p\nschema: s.yaml\nsource: {src}\nwindow: {{reference: {{type: first, size: 10}}, current: {{size: 10}}}}\ndetectors:\n  - {{name: a, kind: ks, columns: [x]}}\n"
            )
        };
        let topic = |extra: &str| match Pipeline::parse(Path::new("p.yaml"), &doc(extra, "kafka"))
            .unwrap()
            .source
        {
            Some(SourceConfig::Kafka(k)) => k.checkpoint_topic,
            _ => unreachable!(),
        };
        assert_eq!(topic("").as_deref(), Some(DEFAULT_CHECKPOINT_TOPIC));
        assert_eq!(topic(", checkpoint_topic: null"), None);
        assert_eq!(topic(", checkpoint_topic: marks").as_deref(), Some("marks"));
        let e = Pipeline::parse(Path::new("p.yaml"), &doc(", checkpoint_topic: marks", "file"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`checkpoint_topic` does not apply to a file source"), "{e}");
        assert!(Pipeline::parse(Path::new("p.yaml"), &doc("", "file")).is_ok());
    }

    #[test]
    fn locates_nested_keys_and_items() {
        assert_eq!(locate(DOC, "source.topic"), Some((4, 3)));
        assert_eq!(locate(DOC, "detectors[1]"), Some((8, 3)));
        assert_eq!(locate(DOC, "detectors[1].kind"), Some((9, 5)));
        assert_eq!(locate(DOC, "detectors[1].window.size"), Some((11, 7)));
        assert_eq!(locate(DOC, "detectors[0].name"), Some((6, 5)));
        assert_eq!(locate(DOC, "nope"), None);
        // A key that is not there: the deepest ancestor found.
        assert_eq!(locate(DOC, "detectors[1].nope"), Some((8, 3)));
        // Root keys are at column 1 only.
        assert_eq!(locate("a:\n  topic: x\ntopic: y\n", "topic"), Some((3, 1)));
    }
}
