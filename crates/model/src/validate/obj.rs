//! The reading machinery: a problem collector and a typed view of one JSON
//! object that reports, with its path, every value it cannot use.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::model::limits;
use crate::problem::{FieldPath, Problem, Rejected};

/// Problems collected during one validation.
#[derive(Default)]
pub(crate) struct Ctx {
    pub(crate) errors: Vec<Problem>,
    pub(crate) warnings: Vec<Problem>,
    /// Unknown keys: warnings normally, errors under `strict`.
    pub(crate) unknown: Vec<Problem>,
    /// Directories no document path may name a file under (the agent's
    /// state, its config): [`super::ValidateOptions::private_paths`].
    pub(crate) private_paths: Vec<String>,
    /// ACME directories allowed besides Let's Encrypt's:
    /// [`super::ValidateOptions::acme_directories`].
    pub(crate) acme_directories: Vec<String>,
}

impl Ctx {
    /// The problems found, each list cut to [`limits::MAX_PROBLEMS`] with a
    /// last line that counts the rest: a 10 MiB document of bad backends
    /// must not become a million-line answer.
    pub(crate) fn into_rejected(self) -> Rejected {
        Rejected {
            errors: capped(self.errors),
            warnings: capped(self.warnings),
        }
    }

    pub(crate) fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }
    pub(crate) fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }
}

fn capped(mut problems: Vec<Problem>) -> Vec<Problem> {
    if problems.len() > limits::MAX_PROBLEMS {
        let more = problems.len() - limits::MAX_PROBLEMS;
        problems.truncate(limits::MAX_PROBLEMS);
        problems.push(Problem::new(
            &FieldPath::root(),
            format!("{more} more problem(s) not listed; fix these first"),
        ));
    }
    problems
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Need {
    Required,
    Optional,
}

/// A JSON object being read, with its path.
pub(crate) struct Obj<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: FieldPath,
    /// Which object this is, for the Go zero rules: `""` for a load
    /// balancer, else the key it sits under.
    pub(crate) kind: &'static str,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(value: &'a Value, path: &FieldPath, cx: &mut Ctx) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self {
                map,
                path: path.clone(),
                kind: "",
            }),
            other => {
                cx.error(path, format!("must be an object, got {}", type_name(other)));
                None
            }
        }
    }

    pub(crate) fn check_keys(&self, known: &[&str], cx: &mut Ctx) {
        for key in self.map.keys() {
            if !known.contains(&key.as_str()) {
                cx.unknown
                    .push(Problem::new(&self.path.key(key), "unknown key (ignored)"));
            }
        }
    }

    /// The value under `key`; `null` counts as absent.
    /// The value at `key`, unless it is null or a Go zero that means absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map
            .get(key)
            .filter(|v| !v.is_null() && !crate::gozero::means_absent(self.kind, key, v))
    }

    pub(crate) fn present(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() && need == Need::Required {
            cx.error(&self.path.key(key), "is required");
        }
        v
    }

    pub(crate) fn string(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a str> {
        match self.present(cx, key, need)? {
            Value::String(s) => Some(s),
            other => {
                cx.error(
                    &self.path.key(key),
                    format!("must be a string, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn int(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<i64> {
        let v = self.present(cx, key, need)?;
        int_value(v, &self.path.key(key), i64::MIN..=i64::MAX, cx)
    }

    pub(crate) fn int_in(
        &self,
        cx: &mut Ctx,
        key: &str,
        range: RangeInclusive<i64>,
        need: Need,
    ) -> Option<i64> {
        let v = self.present(cx, key, need)?;
        int_value(v, &self.path.key(key), range, cx)
    }

    pub(crate) fn port(&self, cx: &mut Ctx, key: &str) -> Option<u16> {
        self.int_in(cx, key, 1..=65535, Need::Required)
            .map(|p| p as u16)
    }

    pub(crate) fn boolean(&self, cx: &mut Ctx, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                cx.error(
                    &self.path.key(key),
                    format!("must be true or false, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn array(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a Vec<Value>> {
        match self.present(cx, key, need)? {
            Value::Array(a) => Some(a),
            other => {
                cx.error(
                    &self.path.key(key),
                    format!("must be an array, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn object(&self, cx: &mut Ctx, key: &'static str) -> Option<Obj<'a>> {
        let v = self.get(key)?;
        let mut child = Obj::new(v, &self.path.key(key), cx)?;
        child.kind = key;
        Some(child)
    }

    pub(crate) fn enumeration<T: Copy>(
        &self,
        cx: &mut Ctx,
        key: &str,
        choices: &[(&str, T)],
        need: Need,
    ) -> Option<T> {
        let s = self.string(cx, key, need)?;
        match choices.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                cx.error(
                    &self.path.key(key),
                    format!("must be one of {} (got {s:?})", names.join(", ")),
                );
                None
            }
        }
    }

    pub(crate) fn abs_path(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<String> {
        let s = self.string(cx, key, need)?;
        if !s.starts_with('/') {
            cx.error(
                &self.path.key(key),
                format!("must be an absolute path (got {s:?})"),
            );
            None
        } else if s.len() > 4096 || s.contains('\0') || s.chars().any(char::is_control) {
            cx.error(
                &self.path.key(key),
                "must be at most 4096 bytes without control characters",
            );
            None
        } else if let Some(why) = private_path(s, &cx.private_paths) {
            cx.error(&self.path.key(key), why);
            None
        } else {
            Some(s.to_owned())
        }
    }
}

pub(crate) fn int_value(
    v: &Value,
    path: &FieldPath,
    range: RangeInclusive<i64>,
    cx: &mut Ctx,
) -> Option<i64> {
    let n = match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None if n.is_f64() => {
                cx.error(path, format!("must be a whole number (got {n})"));
                return None;
            }
            None => {
                cx.error(path, format!("is out of range (got {n})"));
                return None;
            }
        },
        other => {
            cx.error(
                path,
                format!("must be an integer, got {}", type_name(other)),
            );
            return None;
        }
    };
    if range.contains(&n) {
        return Some(n);
    }
    let msg = match (*range.start(), *range.end()) {
        (i64::MIN, _) | (_, i64::MAX) => format!("is out of range (got {n})"),
        (lo, hi) => format!("must be {lo}..={hi} (got {n})"),
    };
    cx.error(path, msg);
    None
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe in Envoy resource names, stat names and file names.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads the objects of a list (backends, pools, routes) one at a time,
/// each with its id checked: valid, unique in the list, and not `reserved`
/// (an id and why: reported, but still returned, so the caller knows it
/// was declared). One item at a time, so problems come in document order.
pub(crate) struct IdList<'l> {
    list: &'l FieldPath,
    kind: &'static str,
    known: &'l [&'l str],
    reserved: Option<(&'l str, &'l str)>,
    ids: HashMap<String, usize>,
}

impl<'l> IdList<'l> {
    /// A reader for the list at `list` of objects of `kind` with `known` keys.
    pub(crate) fn new(
        list: &'l FieldPath,
        kind: &'static str,
        known: &'l [&'l str],
        reserved: Option<(&'l str, &'l str)>,
    ) -> Self {
        Self {
            list,
            kind,
            known,
            reserved,
            ids: HashMap::new(),
        }
    }

    /// Item `i`: its path, the object and its id; `None` (reported) when
    /// it is not an object.
    pub(crate) fn read<'a>(
        &mut self,
        i: usize,
        item: &'a Value,
        cx: &mut Ctx,
    ) -> Option<(FieldPath, Obj<'a>, Option<String>)> {
        let path = self.list.index(i);
        let mut o = Obj::new(item, &path, cx)?;
        o.kind = self.kind;
        o.check_keys(self.known, cx);
        let at = path.key("id");
        let id = o
            .string(cx, "id", Need::Required)
            .and_then(|s| valid_id(s, &at, cx))
            .filter(|s| {
                if let Some((taken, why)) = self.reserved
                    && taken == s
                {
                    cx.error(&at, format!("{s:?} {why}"));
                    return true;
                }
                match self.ids.insert(s.clone(), i) {
                    Some(first) => {
                        let first = self.list.index(first);
                        cx.error(&at, format!("id {s:?} is already used by {first}"));
                        false
                    }
                    None => true,
                }
            });
        Some((path, o, id))
    }
}

/// `s` when it is a valid id; else reports why at `at`.
pub(crate) fn valid_id(s: &str, at: &FieldPath, cx: &mut Ctx) -> Option<String> {
    if is_valid_id(s) {
        Some(s.to_owned())
    } else {
        cx.error(at, format!("must match [A-Za-z0-9_-]{{1,64}} (got {s:?})"));
        None
    }
}

pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A path or prefix a route matches or redirects to.
pub(crate) fn url_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        Err(format!("must start with / (got {s:?})"))
    } else if s.len() > limits::MAX_ROUTE_PATH {
        Err(format!("must be at most {} bytes", limits::MAX_ROUTE_PATH))
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) || s.contains(['?', '#']) {
        Err("must be printable ascii without spaces, ? or # (percent-encode the rest)".into())
    } else {
        Ok(s.to_owned())
    }
}

/// Why absolute `path` may not be named by a document, if it may not: a
/// `..` segment (it could climb anywhere), or a place under one of
/// `private` (the agent's state holds ACME keys another load balancer
/// must never serve). Judged on the text: the agent resolves no link.
fn private_path(path: &str, private: &[String]) -> Option<String> {
    let p = std::path::Path::new(path);
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Some(format!("{path:?} must not contain \"..\""));
    }
    // /proc/self/root/... reaches any file by another name, and nothing a
    // certificate needs lives in these.
    if ["/proc", "/sys", "/dev"].iter().any(|d| p.starts_with(d)) {
        return Some(format!("{path:?} is under /proc, /sys or /dev"));
    }
    private
        .iter()
        .find(|dir| p.starts_with(dir.as_str()))
        .map(|dir| format!("{path:?} is under {dir}, which only the agent may read"))
}
