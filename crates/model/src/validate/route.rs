//! Routes: what a request must match, in document order.

use crate::model::{HeaderMatch, HeaderValueMatch, PathMatch, Protocol, Route, limits};

use super::action::action;
use super::hosts::host_list;
use super::obj::{Ctx, IdList, Need, Obj, is_token_byte, type_name, url_path};
use super::pool::PoolIndex;
use super::regex::regex;

const ROUTE_KEYS: &[&str] = &[
    "id",
    "hosts",
    "path_prefix",
    "path_exact",
    "path_regex",
    "headers",
    "methods",
    "forward",
    "redirect",
    "respond",
    "rate_limit",
    "access",
];
/// What a tls_passthrough route may say: it sees only the server name.
const PASSTHROUGH_KEYS: &[&str] = &["id", "hosts", "forward"];
const HEADER_KEYS: &[&str] = &["name", "exact", "prefix", "regex", "present", "invert"];

/// The routes, in order.
pub(super) fn routes(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    pools: &PoolIndex,
    cx: &mut Ctx,
) -> Option<Vec<Route>> {
    let Some(items) = obj.array(cx, "routes", Need::Optional) else {
        return Some(vec![]);
    };
    let list = obj.path.key("routes");
    if protocol.is_some_and(|p| !p.has_routes()) {
        cx.error(&list, "needs protocol http, https or tls_passthrough");
        return None;
    }
    let passthrough = protocol == Some(Protocol::TlsPassthrough);
    if items.len() > limits::MAX_ROUTES {
        cx.error(
            &list,
            format!(
                "has {} routes, more than the {} a load balancer may have",
                items.len(),
                limits::MAX_ROUTES
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out = Vec::new();
    let mut server_names = Vec::new();
    let last = items.len().saturating_sub(1);
    let mut reader = IdList::new(&list, "route", ROUTE_KEYS, None);
    for (i, item) in items.iter().enumerate() {
        let Some((path, r, id)) = reader.read(i, item, cx) else {
            continue;
        };
        if passthrough {
            passthrough_only(&r, cx);
        }
        if let Some(route) = route(&r, id, pools, cx) {
            if passthrough {
                server_names.push((path.key("hosts"), route.hosts.clone()));
            } else if i < last && matches_everything(&route) {
                cx.warn(
                    &path,
                    "matches every request, so the routes after it are never used",
                );
            }
            out.push(route);
        }
    }
    // Each name chooses one filter chain; Envoy refuses a listener that
    // matches a name twice.
    super::hosts::unique_server_names(&server_names, cx);
    (cx.errors.len() == before).then_some(out)
}

/// A tls_passthrough route sees the server name and nothing else: it needs
/// `hosts`, and every request-level key is refused by name.
fn passthrough_only(r: &Obj<'_>, cx: &mut Ctx) {
    for key in ROUTE_KEYS.iter().filter(|k| !PASSTHROUGH_KEYS.contains(k)) {
        if r.get(key).is_some() {
            cx.error(
                &r.path.key(key),
                "needs protocol http or https: a tls_passthrough route matches the server name (SNI) only",
            );
        }
    }
    let named = r
        .get("hosts")
        .and_then(|h| h.as_array())
        .is_some_and(|a| !a.is_empty());
    if !named {
        cx.error(
            &r.path.key("hosts"),
            "is required for a tls_passthrough route: the server names it takes",
        );
    }
}

fn matches_everything(r: &Route) -> bool {
    r.hosts.is_empty()
        && r.headers.is_empty()
        && r.methods.is_empty()
        && match &r.path {
            None => true,
            Some(PathMatch::Prefix(p)) => p == "/",
            Some(_) => false,
        }
}

fn route(r: &Obj<'_>, id: Option<String>, pools: &PoolIndex, cx: &mut Ctx) -> Option<Route> {
    let before = cx.errors.len();
    let hosts = hosts(r, cx);
    let path = path_match(r, cx);
    let headers = header_matches(r, cx);
    let methods = methods(r, cx);
    let action = action(r, pools, cx);
    let rate_limit = super::protect::route_rate_limit(r, cx);
    let access = super::protect::access(r, cx);
    if cx.errors.len() != before {
        return None;
    }
    Some(Route {
        id: id?,
        hosts: hosts?,
        path,
        headers: headers?,
        methods: methods?,
        action: action?,
        rate_limit: rate_limit?,
        access: access?,
    })
}

fn hosts(r: &Obj<'_>, cx: &mut Ctx) -> Option<Vec<String>> {
    host_list(r, "hosts", limits::MAX_ROUTE_HOSTS, cx)
}

fn path_match(r: &Obj<'_>, cx: &mut Ctx) -> Option<PathMatch> {
    let given: Vec<&str> = ["path_prefix", "path_exact", "path_regex"]
        .into_iter()
        .filter(|k| r.get(k).is_some())
        .collect();
    if given.len() > 1 {
        cx.error(
            &r.path.key(given[1]),
            format!(
                "give at most one of path_prefix, path_exact and path_regex (also got {})",
                given[0]
            ),
        );
        return None;
    }
    let key = *given.first()?;
    let s = r.string(cx, key, Need::Required)?;
    let at = r.path.key(key);
    if key == "path_regex" {
        regex(s, &at, cx).map(PathMatch::Regex)
    } else {
        match url_path(s) {
            Ok(p) if key == "path_prefix" => Some(PathMatch::Prefix(p)),
            Ok(p) => Some(PathMatch::Exact(p)),
            Err(e) => {
                cx.error(&at, e);
                None
            }
        }
    }
}

fn header_matches(r: &Obj<'_>, cx: &mut Ctx) -> Option<Vec<HeaderMatch>> {
    let Some(items) = r.array(cx, "headers", Need::Optional) else {
        return Some(vec![]);
    };
    let list = r.path.key("headers");
    if items.len() > limits::MAX_HEADER_MATCHES {
        cx.error(
            &list,
            format!(
                "has {} conditions, more than {}",
                items.len(),
                limits::MAX_HEADER_MATCHES
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut h) = Obj::new(item, &list.index(i), cx) else {
            continue;
        };
        h.kind = "header";
        h.check_keys(HEADER_KEYS, cx);
        out.extend(header_match(&h, cx));
    }
    (cx.errors.len() == before).then_some(out)
}

fn header_match(h: &Obj<'_>, cx: &mut Ctx) -> Option<HeaderMatch> {
    let name = h.string(cx, "name", Need::Required).and_then(|n| {
        if !n.is_empty() && n.len() <= 256 && n.bytes().all(is_token_byte) {
            Some(n.to_ascii_lowercase())
        } else {
            cx.error(
                &h.path.key("name"),
                format!("is not a valid header name (got {n:?})"),
            );
            None
        }
    });
    let given: Vec<&str> = ["exact", "prefix", "regex", "present"]
        .into_iter()
        .filter(|k| h.get(k).is_some())
        .collect();
    let value = match given.as_slice() {
        [one] => header_value(h, one, cx),
        [] => {
            cx.error(&h.path, "needs one of exact, prefix, regex or present");
            None
        }
        [first, second, ..] => {
            cx.error(
                &h.path.key(second),
                format!("give only one of exact, prefix, regex and present (also got {first})"),
            );
            None
        }
    };
    let invert = h.boolean(cx, "invert").unwrap_or(false);
    Some(HeaderMatch {
        name: name?,
        value: value?,
        invert,
    })
}

fn header_value(h: &Obj<'_>, key: &str, cx: &mut Ctx) -> Option<HeaderValueMatch> {
    let at = h.path.key(key);
    if key == "present" {
        return match h.boolean(cx, "present")? {
            true => Some(HeaderValueMatch::Present),
            false => {
                cx.error(
                    &at,
                    "must be true; to match a missing header add invert: true",
                );
                None
            }
        };
    }
    let s = h.string(cx, key, Need::Required)?;
    if key == "regex" {
        return regex(s, &at, cx).map(HeaderValueMatch::Regex);
    }
    if s.len() > 8192 || s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        cx.error(&at, "must be at most 8192 bytes without CR, LF or NUL");
        return None;
    }
    Some(match key {
        "exact" => HeaderValueMatch::Exact(s.to_owned()),
        _ => HeaderValueMatch::Prefix(s.to_owned()),
    })
}

fn methods(r: &Obj<'_>, cx: &mut Ctx) -> Option<Vec<String>> {
    let Some(items) = r.array(cx, "methods", Need::Optional) else {
        return Some(vec![]);
    };
    let list = r.path.key("methods");
    let before = cx.errors.len();
    let mut out: Vec<String> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let at = list.index(i);
        match v.as_str() {
            Some(m)
                if (1..=32).contains(&m.len())
                    && m.bytes().all(|b| {
                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }) =>
            {
                if out.iter().any(|o| o == m) {
                    cx.error(&at, format!("{m:?} is listed twice"));
                } else {
                    out.push(m.to_owned());
                }
            }
            Some(m) => cx.error(
                &at,
                format!("must be an upper-case HTTP method such as GET (got {m:?})"),
            ),
            None => cx.error(&at, format!("must be a string, got {}", type_name(v))),
        }
    }
    (cx.errors.len() == before).then_some(out)
}
