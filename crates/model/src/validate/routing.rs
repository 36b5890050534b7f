//! Pools and routes: where an HTTP request goes, and what it matches on.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::model::{
    Algorithm, DEFAULT_POOL, HeaderMatch, HeaderValueMatch, PathMatch, Pool, Protocol, Redirect,
    Respond, Route, RouteAction, Scheme, StickySessions, WeightedPool, limits,
};
use crate::network::IpNet;
use crate::problem::FieldPath;

use super::backend::{backends, health_check};
use super::obj::{Ctx, IdList, Need, Obj, is_token_byte, type_name};
use super::regex::regex;

const POOL_KEYS: &[&str] = &[
    "id",
    "algorithm",
    "backends",
    "health_check",
    "sticky_sessions",
    "slow_start",
];
/// Why a pool may not be called `default`.
const RESERVED_POOL: &str = "is the pool the top-level backends describe; choose another id";
const STICKY_KEYS: &[&str] = &["cookie_name", "ttl"];
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
];
const HEADER_KEYS: &[&str] = &["name", "exact", "prefix", "regex", "present", "invert"];
const FORWARD_KEYS: &[&str] = &["pool", "weight"];
const REDIRECT_KEYS: &[&str] = &["scheme", "host", "path", "port", "status"];
const RESPOND_KEYS: &[&str] = &["status", "body"];

/// The pool fields of `obj`, which is the load balancer itself for the
/// default pool or one item of `pools`. `None` after reporting a problem.
pub(super) fn pool_body(
    obj: &Obj<'_>,
    id: Option<String>,
    protocol: Option<Protocol>,
    allowed: &[IpNet],
    cx: &mut Ctx,
) -> Option<Pool> {
    let before = cx.errors.len();
    let algorithm = algorithm(obj, cx);
    let backends = backends(obj, allowed, cx);
    let health_check = obj
        .object(cx, "health_check")
        .and_then(|hc| health_check(&hc, cx));
    let sticky_sessions = obj
        .object(cx, "sticky_sessions")
        .and_then(|s| sticky(&s, protocol, cx));
    let slow_start = obj
        .int_in(
            cx,
            "slow_start",
            1..=i64::from(limits::MAX_SLOW_START),
            Need::Optional,
        )
        .map(|s| s as u32);
    if let (Some(_), Some(algo @ (Algorithm::Random | Algorithm::RingHash))) =
        (slow_start, algorithm)
    {
        cx.error(
            &obj.path.key("slow_start"),
            format!(
                "needs algorithm round_robin or least_request (got {})",
                algorithm_name(algo)
            ),
        );
    }
    // Envoy starts the ramp at a backend's first passed active check; with
    // none it applies no ramp at all, which must not pass silently.
    if slow_start.is_some() && obj.get("health_check").is_none() {
        cx.error(
            &obj.path.key("slow_start"),
            "needs a health_check: the ramp starts when a new backend first passes it",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Pool {
        id: id?,
        algorithm: algorithm?,
        backends: backends?,
        health_check,
        sticky_sessions,
        slow_start,
    })
}

const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("round_robin", Algorithm::RoundRobin),
    ("least_request", Algorithm::LeastRequest),
    ("random", Algorithm::Random),
    ("ring_hash", Algorithm::RingHash),
];

fn algorithm_name(a: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, v)| *v == a)
        .map_or("?", |(n, _)| n)
}

/// `algorithm`, round robin when absent; `None` only after an error.
fn algorithm(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Algorithm> {
    if obj.get("algorithm").is_none() {
        return Some(Algorithm::RoundRobin);
    }
    obj.enumeration(cx, "algorithm", ALGORITHMS, Need::Required)
}

fn sticky(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<StickySessions> {
    obj.check_keys(STICKY_KEYS, cx);
    if protocol == Some(Protocol::Tcp) {
        cx.error(&obj.path, "needs protocol http or https");
        return None;
    }
    let name = obj.string(cx, "cookie_name", Need::Required).and_then(|n| {
        if (1..=64).contains(&n.len()) && n.bytes().all(is_token_byte) {
            Some(n.to_owned())
        } else {
            cx.error(
                &obj.path.key("cookie_name"),
                format!("must be 1..=64 characters of an HTTP token (got {n:?})"),
            );
            None
        }
    });
    let ttl = match obj.get("ttl") {
        None => Some(0),
        Some(_) => obj
            .int_in(
                cx,
                "ttl",
                0..=i64::from(limits::MAX_STICKY_TTL),
                Need::Required,
            )
            .map(|t| t as u32),
    };
    Some(StickySessions {
        cookie_name: name?,
        ttl: ttl?,
    })
}

/// The pools under `pools`, beside the default one. Ids of pools that
/// failed are still returned in `declared`, so routes naming them are not
/// reported a second time.
pub(super) fn pools(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    allowed: &[IpNet],
    cx: &mut Ctx,
    declared: &mut HashSet<String>,
) -> Option<Vec<(FieldPath, Pool)>> {
    let Some(items) = obj.array(cx, "pools", Need::Optional) else {
        return Some(vec![]);
    };
    let list = obj.path.key("pools");
    if protocol == Some(Protocol::Tcp) {
        cx.error(&list, "needs protocol http or https");
        return None;
    }
    if items.len() + 1 > limits::MAX_POOLS {
        cx.error(
            &list,
            format!(
                "has {} pools, more than the {} a load balancer may have besides the default one",
                items.len(),
                limits::MAX_POOLS - 1
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out = Vec::new();
    let mut reader = IdList::new(
        &list,
        "pool",
        POOL_KEYS,
        Some((DEFAULT_POOL, RESERVED_POOL)),
    );
    for (i, item) in items.iter().enumerate() {
        let Some((path, p, id)) = reader.read(i, item, cx) else {
            continue;
        };
        if let Some(id) = &id {
            declared.insert(id.clone());
        }
        let id = id.filter(|id| id != DEFAULT_POOL);
        if let Some(pool) = pool_body(&p, id, protocol, allowed, cx) {
            out.push((path, pool));
        }
    }
    (cx.errors.len() == before).then_some(out)
}

/// Backend ids are unique across every pool, so health reports, metrics
/// and `/status` can name a backend by its id alone.
pub(super) fn unique_backend_ids(pools: &[(FieldPath, &Pool)], cx: &mut Ctx) {
    let mut seen: HashMap<&str, FieldPath> = HashMap::new();
    for (path, pool) in pools {
        for (i, b) in pool.backends.iter().enumerate() {
            let at = path.key("backends").index(i);
            match seen.get(b.id.as_str()) {
                Some(first) => cx.error(
                    &at.key("id"),
                    format!("id {:?} is already used by {first}", b.id),
                ),
                None => {
                    seen.insert(&b.id, at);
                }
            }
        }
    }
}

/// What routes need to know about the pools: which ids exist, and which
/// ask for sticky sessions.
pub(super) struct PoolIndex {
    /// Every declared pool id, `default` included.
    pub declared: HashSet<String>,
    /// Ids of pools with sticky sessions.
    pub sticky: HashSet<String>,
}

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
    if protocol == Some(Protocol::Tcp) {
        cx.error(&list, "needs protocol http or https");
        return None;
    }
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
    let last = items.len().saturating_sub(1);
    let mut reader = IdList::new(&list, "route", ROUTE_KEYS, None);
    for (i, item) in items.iter().enumerate() {
        let Some((path, r, id)) = reader.read(i, item, cx) else {
            continue;
        };
        if let Some(route) = route(&r, id, pools, cx) {
            if i < last && matches_everything(&route) {
                cx.warn(
                    &path,
                    "matches every request, so the routes after it are never used",
                );
            }
            out.push(route);
        }
    }
    (cx.errors.len() == before).then_some(out)
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
    })
}

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

fn hosts(r: &Obj<'_>, cx: &mut Ctx) -> Option<Vec<String>> {
    host_list(r, "hosts", limits::MAX_ROUTE_HOSTS, cx)
}

/// A path or prefix a route matches or redirects to.
fn url_path(s: &str) -> Result<String, String> {
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

fn action(r: &Obj<'_>, pools: &PoolIndex, cx: &mut Ctx) -> Option<RouteAction> {
    let given: Vec<&str> = ["forward", "redirect", "respond"]
        .into_iter()
        .filter(|k| r.get(k).is_some())
        .collect();
    match given.as_slice() {
        ["forward"] => forward(r, pools, cx).map(RouteAction::Forward),
        ["redirect"] => {
            let o = r.object(cx, "redirect")?;
            redirect(&o, cx).map(RouteAction::Redirect)
        }
        ["respond"] => {
            let o = r.object(cx, "respond")?;
            respond(&o, cx).map(RouteAction::Respond)
        }
        [] | [_] => {
            cx.error(&r.path, "needs one of forward, redirect or respond");
            None
        }
        [first, second, ..] => {
            cx.error(
                &r.path.key(second),
                format!("give only one of forward, redirect and respond (also got {first})"),
            );
            None
        }
    }
}

fn forward(r: &Obj<'_>, pools: &PoolIndex, cx: &mut Ctx) -> Option<Vec<WeightedPool>> {
    let items = r.array(cx, "forward", Need::Required)?;
    let list = r.path.key("forward");
    if items.is_empty() || items.len() > limits::MAX_FORWARD_POOLS {
        cx.error(
            &list,
            format!(
                "must name 1..={} pools (got {})",
                limits::MAX_FORWARD_POOLS,
                items.len()
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out: Vec<WeightedPool> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut f) = Obj::new(item, &list.index(i), cx) else {
            continue;
        };
        f.kind = "forward";
        f.check_keys(FORWARD_KEYS, cx);
        let pool = f.string(cx, "pool", Need::Required).and_then(|p| {
            let at = f.path.key("pool");
            if !pools.declared.contains(p) {
                let mut known: Vec<&str> = pools.declared.iter().map(String::as_str).collect();
                known.sort_unstable();
                cx.error(
                    &at,
                    format!("pool {p:?} does not exist (pools: {})", known.join(", ")),
                );
                None
            } else if out.iter().any(|w| w.pool == p) {
                cx.error(&at, format!("pool {p:?} is listed twice"));
                None
            } else {
                Some(p.to_owned())
            }
        });
        let weight = match f.get("weight") {
            None => Some(1),
            Some(_) => f
                .int_in(
                    cx,
                    "weight",
                    1..=i64::from(limits::MAX_WEIGHT),
                    Need::Required,
                )
                .map(|w| w as u32),
        };
        if let (Some(pool), Some(weight)) = (pool, weight) {
            out.push(WeightedPool { pool, weight });
        }
    }
    if out.len() > 1
        && let Some(p) = out.iter().find(|w| pools.sticky.contains(&w.pool))
    {
        cx.warn(
            &list,
            format!(
                "pool {:?} has sticky_sessions, which apply only to routes that forward to one pool",
                p.pool
            ),
        );
    }
    (cx.errors.len() == before).then_some(out)
}

fn redirect(o: &Obj<'_>, cx: &mut Ctx) -> Option<Redirect> {
    o.check_keys(REDIRECT_KEYS, cx);
    let before = cx.errors.len();
    let scheme = o.enumeration(
        cx,
        "scheme",
        &[("http", Scheme::Http), ("https", Scheme::Https)],
        Need::Optional,
    );
    let host = o
        .string(cx, "host", Need::Optional)
        .and_then(|h| match host_pattern(h) {
            Ok(n) if !n.starts_with('*') => Some(n),
            Ok(_) | Err(_) => {
                cx.error(
                    &o.path.key("host"),
                    format!("must be a host name (got {h:?})"),
                );
                None
            }
        });
    let path = o
        .string(cx, "path", Need::Optional)
        .and_then(|p| match url_path(p) {
            Ok(p) => Some(p),
            Err(e) => {
                cx.error(&o.path.key("path"), e);
                None
            }
        });
    let port = o
        .int_in(cx, "port", 1..=65535, Need::Optional)
        .map(|p| p as u16);
    let status = match o.get("status") {
        None => Some(301),
        Some(v) => match v.as_i64() {
            Some(s @ (301 | 302 | 303 | 307 | 308)) => Some(s as u16),
            _ => {
                cx.error(
                    &o.path.key("status"),
                    format!("must be 301, 302, 303, 307 or 308 (got {v})"),
                );
                None
            }
        },
    };
    if ["scheme", "host", "path", "port"]
        .iter()
        .all(|k| o.get(k).is_none())
    {
        cx.error(
            &o.path,
            "must change at least one of scheme, host, path and port, or it redirects to itself",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Redirect {
        scheme,
        host,
        path,
        port,
        status: status?,
    })
}

fn respond(o: &Obj<'_>, cx: &mut Ctx) -> Option<Respond> {
    o.check_keys(RESPOND_KEYS, cx);
    let status = o.int_in(cx, "status", 200..=599, Need::Required);
    let body = match o.get("body") {
        None => Some(String::new()),
        Some(Value::String(b)) if b.len() <= limits::MAX_RESPONSE_BODY => Some(b.clone()),
        Some(Value::String(_)) => {
            cx.error(
                &o.path.key("body"),
                format!("must be at most {} bytes", limits::MAX_RESPONSE_BODY),
            );
            None
        }
        Some(other) => {
            cx.error(
                &o.path.key("body"),
                format!("must be a string, got {}", type_name(other)),
            );
            None
        }
    };
    Some(Respond {
        status: status? as u16,
        body: body?,
    })
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
