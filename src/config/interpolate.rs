//! `${VAR}` / `${VAR:-default}` interpolation of pipeline text, before YAML
//! parsing. `$$` is a literal `$`. Values taken from the environment are
//! remembered so that error messages can redact them (they may be secrets).

/// Result of interpolating one file.
#[derive(Debug)]
pub struct Interpolated {
    /// The text with every reference replaced.
    pub text: String,
    /// Values that came from the environment (non-empty ones), to redact.
    pub secrets: Vec<String>,
}

/// An unresolvable reference: 1-based line and column, and what is wrong.
#[derive(Debug, PartialEq)]
pub struct InterpolateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Replaces `${VAR}` and `${VAR:-default}` using `lookup`.
pub fn interpolate(src: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Interpolated, InterpolateError> {
    let mut out = String::with_capacity(src.len());
    let mut secrets = Vec::new();
    let mut at = Cursor::default();
    let mut chars = src.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        at.see(c);
        if c == '$' && !at.in_comment {
            match chars.peek().map(|&(_, c)| c) {
                Some('$') => {
                    chars.next();
                    out.push('$');
                    at.col += 2;
                    continue;
                }
                Some('{') => {
                    let rest = &src[i + 2..];
                    let Some(end) = rest.find('}') else {
                        return Err(at.error("unterminated `${`".into()));
                    };
                    let inner = &rest[..end];
                    match resolve(inner, &lookup).map_err(|m| at.error(m))? {
                        Resolved::Env(v) => {
                            out.push_str(&v);
                            secrets.push(v);
                        }
                        Resolved::Default(d) => out.push_str(d),
                    }
                    // Skip past the closing brace.
                    let consumed = 2 + end + 1;
                    while chars.peek().is_some_and(|&(j, _)| j < i + consumed) {
                        chars.next();
                    }
                    at.col += inner.chars().count() + 3;
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
        at.advance(c);
    }
    Ok(Interpolated { text: out, secrets })
}

/// Where the scan is in the source: 1-based line and column, and whether
/// in a YAML comment (left alone: a commented-out `${SECRET}` must not be
/// required) or a quoted string.
struct Cursor {
    line: usize,
    col: usize,
    in_comment: bool,
    quote: Option<char>,
    prev: char,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            line: 1,
            col: 1,
            in_comment: false,
            quote: None,
            prev: '\n',
        }
    }
}

impl Cursor {
    /// Takes note of `c` before it is handled: a comment starts at a `#`
    /// after white space, outside quotes.
    fn see(&mut self, c: char) {
        if !self.in_comment {
            match (c, self.quote) {
                ('#', None) if self.prev.is_whitespace() => self.in_comment = true,
                ('"' | '\'', None) => self.quote = Some(c),
                (q, Some(open)) if q == open => self.quote = None,
                _ => {}
            }
        }
        self.prev = c;
    }

    /// Moves past `c`, copied as it is.
    fn advance(&mut self, c: char) {
        if c == '\n' {
            (self.line, self.col, self.in_comment, self.quote) = (self.line + 1, 1, false, None);
        } else {
            self.col += 1;
        }
    }

    fn error(&self, message: String) -> InterpolateError {
        InterpolateError {
            line: self.line,
            column: self.col,
            message,
        }
    }
}

/// What a reference `${inner}` stands for.
enum Resolved<'a> {
    /// A non-empty value from the environment (a possible secret).
    Env(String),
    /// The reference's default.
    Default(&'a str),
}

/// Resolves the body of one reference: `VAR` or `VAR:-default`.
fn resolve<'a>(inner: &'a str, lookup: impl Fn(&str) -> Option<String>) -> Result<Resolved<'a>, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid variable name `{name}` in `${{{inner}}}`"));
    }
    match (lookup(name).filter(|v| !v.is_empty()), default) {
        (Some(v), _) => Ok(Resolved::Env(v)),
        (None, Some(d)) => Ok(Resolved::Default(d)),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"
        )),
    }
}

/// Replaces every secret occurring in `msg` by `***`.
pub fn redact(msg: &str, secrets: &[String]) -> String {
    let mut m = msg.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        m = m.replace(s.as_str(), "***");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "HOST" => Some("kafka:9092".into()),
            "PASS" => Some("hunter22".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_defaults() {
        let r = interpolate("a: ${HOST}\nb: ${NOPE:-x y}\nc: $${HOST}\n", env).unwrap();
        assert_eq!(r.text, "a: kafka:9092\nb: x y\nc: ${HOST}\n");
        assert_eq!(r.secrets, vec!["kafka:9092".to_string()]);
    }

    #[test]
    fn missing_var_has_position() {
        let e = interpolate("a: 1\nb: ${MISSING}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("MISSING"));
    }

    #[test]
    fn comments_are_not_interpolated() {
        let r = interpolate("a: 1 # ${MISSING}\n# b: ${MISSING}\nc: \"x # ${HOST}\"\n", env).unwrap();
        assert_eq!(r.text, "a: 1 # ${MISSING}\n# b: ${MISSING}\nc: \"x # kafka:9092\"\n");
    }

    #[test]
    fn bad_name_and_unterminated() {
        assert!(
            interpolate("a: ${A B}", env)
                .unwrap_err()
                .message
                .contains("invalid variable name")
        );
        assert!(interpolate("a: ${A", env).unwrap_err().message.contains("unterminated"));
    }

    #[test]
    fn redacts() {
        assert_eq!(
            redact("bad value hunter22 here", &["hunter22".into()]),
            "bad value *** here"
        );
    }
}
