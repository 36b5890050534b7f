//! What a matching request gets: forwarded, redirected, or answered.

use serde_json::Value;

use crate::model::{Redirect, Respond, RouteAction, Scheme, WeightedPool, limits};

use super::hosts::host_pattern;
use super::obj::{Ctx, Need, Obj, type_name, url_path};
use super::pool::PoolIndex;

const FORWARD_KEYS: &[&str] = &["pool", "weight"];
const REDIRECT_KEYS: &[&str] = &["scheme", "host", "path", "port", "status"];
const RESPOND_KEYS: &[&str] = &["status", "body"];

/// What route `r` does: exactly one of forward, redirect and respond.
pub(super) fn action(r: &Obj<'_>, pools: &PoolIndex, cx: &mut Ctx) -> Option<RouteAction> {
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
