//! Host name patterns, for routes and for certificates chosen by SNI.

use std::collections::BTreeMap;

use crate::problem::FieldPath;

use super::obj::{Ctx, Need, Obj, type_name};

/// A host name pattern: an RFC 1123 name, or `*.` and one; lowercased.
pub(super) fn host_pattern(s: &str) -> Result<String, String> {
    let name = s.strip_prefix("*.").unwrap_or(s);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        let hint = if s.contains(':') {
            " (without a port: matching ignores it)"
        } else {
            ""
        };
        return Err(format!(
            "must be a host name or \"*.\" and a host name (got {s:?}){hint}"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// A list of host patterns under `key`, unique after lowercasing; absent or
/// empty means none.
pub(super) fn host_list(obj: &Obj<'_>, key: &str, max: usize, cx: &mut Ctx) -> Option<Vec<String>> {
    let Some(items) = obj.array(cx, key, Need::Optional) else {
        return Some(vec![]);
    };
    let list = obj.path.key(key);
    if items.len() > max {
        cx.error(&list, format!("has {} names, more than {max}", items.len()));
        return None;
    }
    let before = cx.errors.len();
    let mut out: Vec<String> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let at = list.index(i);
        let Some(s) = v.as_str() else {
            cx.error(&at, format!("must be a string, got {}", type_name(v)));
            continue;
        };
        match host_pattern(s) {
            Ok(h) if out.contains(&h) => cx.error(&at, format!("{h:?} is listed twice")),
            Ok(h) => out.push(h),
            Err(e) => cx.error(&at, e),
        }
    }
    (cx.errors.len() == before).then_some(out)
}

/// Server names may appear on one extra certificate only: Envoy refuses a
/// listener whose filter chains match the same name twice.
pub(super) fn unique_server_names(names: &[(FieldPath, Vec<String>)], cx: &mut Ctx) {
    let mut seen: BTreeMap<&str, &FieldPath> = BTreeMap::new();
    for (path, list) in names {
        for n in list {
            match seen.get(n.as_str()) {
                Some(first) => cx.error(path, format!("{n:?} is already named by {first}")),
                None => {
                    seen.insert(n, path);
                }
            }
        }
    }
}
