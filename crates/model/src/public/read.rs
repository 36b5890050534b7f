//! Reading the public API's JSON the way its Go clients do: keys match
//! without regard to case, ports and counts arrive as numbers or as
//! strings, flags as booleans or as 0/1, and `null` means absent.

use serde_json::{Map, Value};

use super::{MapEnv, PathMap};
use crate::problem::{FieldPath, Problem};

/// Builds one rule's document (its domains in `domain.rs`, the rest in
/// `rule.rs`), collecting problems and path entries.
pub(crate) struct Builder<'e> {
    pub(crate) env: &'e MapEnv,
    pub(crate) problems: Problems,
    pub(crate) paths: PathMap,
}

/// One object of an answer, with its path in the API's own terms.
#[derive(Clone, Copy)]
pub(crate) struct ApiObj<'a> {
    map: &'a Map<String, Value>,
    path: &'a FieldPath,
}

/// Problems found while reading, in the order they were found.
pub(crate) type Problems = Vec<Problem>;

impl<'a> ApiObj<'a> {
    /// `value` as an object, or a problem at `path`.
    pub(crate) fn new(value: &'a Value, path: &'a FieldPath, out: &mut Problems) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self { map, path }),
            other => {
                out.push(Problem::new(
                    path,
                    format!("must be an object, got {}", kind(other)),
                ));
                None
            }
        }
    }

    /// This object's path.
    pub(crate) fn path(&self) -> &FieldPath {
        self.path
    }

    /// The path of `key` below this object.
    pub(crate) fn at(&self, key: &str) -> FieldPath {
        self.path.key(key)
    }

    /// The value under `key`: the exact key first, else any spelling of it
    /// in another case (Go's decoder accepts `Data` for `data`). `null`
    /// counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null()).or_else(|| {
            self.map
                .iter()
                .find(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_null())
                .map(|(_, v)| v)
        })
    }

    /// A string; a number is taken as its decimal text (ids sometimes
    /// arrive as numbers). Empty strings count as absent.
    pub(crate) fn text(&self, key: &str, out: &mut Problems) -> Option<String> {
        match self.get(key)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                out.push(Problem::new(
                    &self.at(key),
                    format!("must be a string, got {}", kind(other)),
                ));
                None
            }
        }
    }

    /// A whole number, written as a number or as a string of digits.
    pub(crate) fn int(&self, key: &str, out: &mut Problems) -> Option<i64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if n.is_none() {
            out.push(Problem::new(
                &self.at(key),
                format!("must be a whole number, got {}", shown(v)),
            ));
        }
        n
    }

    /// A port, 1–65535, as a number or a string; required.
    pub(crate) fn port(&self, key: &str, out: &mut Problems) -> Option<u16> {
        let Some(n) = self.int(key, out) else {
            if self.get(key).is_none() {
                out.push(Problem::new(&self.at(key), "is required"));
            }
            return None;
        };
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                out.push(Problem::new(
                    &self.at(key),
                    format!("must be a port, 1..=65535 (got {n})"),
                ));
                None
            }
        }
    }

    /// A flag: `true`/`false`, `1`/`0`, or those as strings. Absent is off.
    pub(crate) fn flag(&self, key: &str, out: &mut Problems) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v @ (Value::Number(_) | Value::String(_))) => {
                match v.to_string().trim_matches('"') {
                    "1" | "true" => true,
                    "0" | "false" | "" => false,
                    _ => {
                        out.push(Problem::new(
                            &self.at(key),
                            format!("must be 0 or 1 (or a boolean), got {}", shown(v)),
                        ));
                        false
                    }
                }
            }
            Some(v) => {
                out.push(Problem::new(
                    &self.at(key),
                    format!("must be 0 or 1 (or a boolean), got {}", kind(v)),
                ));
                false
            }
        }
    }

    /// The items of the array under `key` (absent is empty), with their paths.
    pub(crate) fn list(&self, key: &str, out: &mut Problems) -> Vec<(&'a Value, FieldPath)> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (v, self.at(key).index(i)))
                .collect(),
            Some(other) => {
                out.push(Problem::new(
                    &self.at(key),
                    format!("must be an array, got {}", kind(other)),
                ));
                Vec::new()
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    crate::validate::type_name(v)
}

/// A value for a message: short, and never more than 40 characters of it.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}
