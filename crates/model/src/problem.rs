//! Problems found in a document, each tied to the field it is about.

use std::fmt;

/// A location inside a document, rendered like `[1].backends[0].port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// The path of key `name` below this one. A key that is not a plain
    /// name (header names, unknown keys: anything a document chose) is
    /// quoted and escaped, `headers["x\u001b[2J"]`, so a document cannot
    /// put terminal escape sequences into `check` or `status` output.
    pub fn key(&self, name: &str) -> Self {
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match (plain, self.0.is_empty()) {
            (true, true) => Self(name.to_owned()),
            (true, false) => Self(format!("{}.{name}", self.0)),
            (false, _) => Self(format!("{}[{}]", self.0, serde_json::Value::from(name))),
        }
    }

    /// The path of element `i` below this one.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// This path with `rest` (`.port`, `[0].ip`) written after it.
    pub(crate) fn join_raw(&self, rest: &str) -> Self {
        if self.0.is_empty() {
            Self(rest.trim_start_matches('.').to_owned())
        } else {
            Self(format!("{}{rest}", self.0))
        }
    }

    /// The index of the item of a top-level array this path is in:
    /// `Some(1)` for `[1].backends[0].port`, `None` for `port`.
    pub fn top_index(&self) -> Option<usize> {
        self.0.strip_prefix('[')?.split(']').next()?.parse().ok()
    }

    /// The path as text; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(document)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// One thing wrong with (or worth telling about) a field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Where the problem is.
    pub path: FieldPath,
    /// What is wrong, lowercase, without the path.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: &FieldPath, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A document that failed validation: every error found, plus the warnings.
///
/// Validation never retries on its own: the same input always gives the same
/// problems, so retrying cannot help until the input changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Every error, in document order.
    pub errors: Vec<Problem>,
    /// Warnings, which alone would not have rejected the document.
    pub warnings: Vec<Problem>,
}

impl Rejected {
    /// Retrying with the same input gives the same answer.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} problem(s) in the load-balancer document",
            self.errors.len()
        )?;
        for e in &self.errors {
            write!(f, "\n{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_header_names_put_escape_sequences_into_output() {
        let p = FieldPath::root().key("health_check").key("headers");
        assert_eq!(p.key("X-Trace").to_string(), "health_check.headers.X-Trace");
        let evil = p.key("x\u{1b}[2J\u{7}");
        assert_eq!(
            evil.to_string(),
            "health_check.headers[\"x\\u001b[2J\\u0007\"]"
        );
        assert!(!evil.to_string().chars().any(char::is_control));
        assert_eq!(FieldPath::root().key("a b").to_string(), "[\"a b\"]");
        assert_eq!(FieldPath::root().key("").to_string(), "[\"\"]");
        // A quoted key at the top is no index.
        assert_eq!(FieldPath::root().key("1").top_index(), None);
        assert_eq!(FieldPath::root().key("[1]").top_index(), None);
        assert_eq!(FieldPath::root().index(3).key("port").top_index(), Some(3));
    }
}
