//! What protects the backends: per-client request limits, the listener's
//! new-connection rate, and access lists over the client's own address.

use serde_json::Value;

use crate::model::{
    Access, OversizeBody, PerClient, Protocol, RateLimit, RequestRate, Waf, WafMode, limits,
};
use crate::network::IpNet;

use super::obj::{Ctx, Need, Obj, type_name};

const RATE_KEYS: &[&str] = &["requests_per_second", "burst", "connections_per_second"];
const ACCESS_KEYS: &[&str] = &["allow", "deny"];
const WAF_KEYS: &[&str] = &[
    "mode",
    "paranoia_level",
    "exclusions",
    "fail_open",
    "oversize_body",
];
const PER_CLIENT_KEYS: &[&str] = &["max_sessions", "new_sessions_per_second", "burst"];

/// `per_client`, udp only: `Some(None)` on other protocols, `None` when
/// wrong. A udp load balancer always gets one: without it, one client's
/// source ports could take every session of the listener.
pub(super) fn per_client(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    max_connections: Option<u32>,
    cx: &mut Ctx,
) -> Option<Option<PerClient>> {
    let given = obj.object(cx, "per_client");
    if protocol != Some(Protocol::Udp) {
        if let (Some(p), Some(c)) = (protocol, &given) {
            cx.error(
                &c.path,
                format!(
                    "counts udp sessions, and a {} load balancer has none; use max_connections and rate_limit",
                    p.name()
                ),
            );
            return None;
        }
        return Some(None);
    }
    let all = max_connections.unwrap_or(limits::UDP_SESSIONS_WITHOUT_CAP);
    let share = all.div_ceil(limits::DEFAULT_UDP_CLIENT_SHARE);
    let Some(c) = given else {
        return Some(Some(PerClient {
            max_sessions: share,
            new_sessions: None,
        }));
    };
    c.check_keys(PER_CLIENT_KEYS, cx);
    let before = cx.errors.len();
    let max_sessions = c
        .int_in(
            cx,
            "max_sessions",
            1..=i64::from(limits::MAX_CONNECTIONS),
            Need::Optional,
        )
        .map_or(share, |n| n as u32);
    let new_sessions = bucket(
        &c,
        "new_sessions_per_second",
        limits::MAX_NEW_SESSIONS_PER_SECOND,
        cx,
    );
    (cx.errors.len() == before).then_some(Some(PerClient {
        max_sessions,
        new_sessions,
    }))
}

/// `waf`: `Some(None)` when absent, `None` when wrong.
pub(super) fn waf(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<Option<Waf>> {
    let Some(w) = obj.object(cx, "waf") else {
        return Some(None);
    };
    w.check_keys(WAF_KEYS, cx);
    let before = cx.errors.len();
    if let Some(p) = protocol.filter(|p| !p.is_http()) {
        cx.error(
            &w.path,
            format!("a {} load balancer has no requests to inspect", p.name()),
        );
    }
    let mode = w.enumeration(
        cx,
        "mode",
        &[
            ("off", WafMode::Off),
            ("detect", WafMode::Detect),
            ("block", WafMode::Block),
        ],
        Need::Required,
    );
    let paranoia_level = w
        .int_in(cx, "paranoia_level", 1..=4, Need::Optional)
        .unwrap_or(1) as u8;
    let fail_open = w.boolean(cx, "fail_open").unwrap_or(true);
    let oversize_body = w
        .enumeration(
            cx,
            "oversize_body",
            &[
                ("refuse", OversizeBody::Refuse),
                ("inspect_start", OversizeBody::InspectStart),
            ],
            Need::Optional,
        )
        .unwrap_or_default();
    let mut exclusions = Vec::new();
    if let Some(items) = w.array(cx, "exclusions", Need::Optional) {
        let at = w.path.key("exclusions");
        for (i, item) in items.iter().enumerate() {
            let id = super::obj::int_value(
                item,
                &at.index(i),
                1..=i64::from(limits::MAX_WAF_RULE_ID),
                cx,
            );
            let id = id.map(|n| n as u32);
            if let Some(id) = id.filter(|id| limits::RESERVED_WAF_RULE_IDS.contains(id)) {
                cx.error(
                    &at.index(i),
                    format!("rule {id} is one vpsie-lb adds to carry this load balancer's settings; it cannot be excluded"),
                );
                continue;
            }
            exclusions.extend(id);
        }
    }
    exclusions.sort_unstable();
    exclusions.dedup();
    (cx.errors.len() == before).then(|| {
        mode.map(|mode| Waf {
            mode,
            paranoia_level,
            exclusions,
            fail_open,
            oversize_body,
        })
    })
}

/// A load balancer's `rate_limit`: `None` when it is wrong.
pub(super) fn rate_limit(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    cx: &mut Ctx,
) -> Option<RateLimit> {
    let Some(r) = obj.object(cx, "rate_limit") else {
        return Some(RateLimit::default());
    };
    r.check_keys(RATE_KEYS, cx);
    let before = cx.errors.len();
    if let Some(p) = protocol.filter(|p| !p.is_http())
        && r.get("requests_per_second").is_some()
    {
        cx.error(
            &r.path.key("requests_per_second"),
            format!(
                "{} has no requests to count; limit new connections with connections_per_second",
                p.name()
            ),
        );
    }
    let requests = request_rate(&r, cx);
    let connections_per_second = r
        .int_in(
            cx,
            "connections_per_second",
            1..=i64::from(limits::MAX_CONNECTIONS_PER_SECOND),
            Need::Optional,
        )
        .map(|n| n as u32);
    (cx.errors.len() == before).then_some(RateLimit {
        requests,
        connections_per_second,
    })
}

/// A route's `rate_limit`: requests only, since connections belong to the
/// listener. `Some(None)` when absent, `None` when wrong.
pub(super) fn route_rate_limit(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Option<RequestRate>> {
    let Some(r) = obj.object(cx, "rate_limit") else {
        return Some(None);
    };
    r.check_keys(RATE_KEYS, cx);
    let before = cx.errors.len();
    if r.get("connections_per_second").is_some() {
        cx.error(
            &r.path.key("connections_per_second"),
            "a route sees requests, not connections; set it on the load balancer",
        );
    }
    if r.get("requests_per_second").is_none() {
        cx.error(&r.path.key("requests_per_second"), "is required on a route");
    }
    let rate = request_rate(&r, cx);
    (cx.errors.len() == before).then_some(rate)
}

/// `requests_per_second` and `burst` (which defaults to the rate).
fn request_rate(r: &Obj<'_>, cx: &mut Ctx) -> Option<RequestRate> {
    bucket(
        r,
        "requests_per_second",
        limits::MAX_REQUESTS_PER_SECOND,
        cx,
    )
}

/// A token bucket: its rate under `rate_key` (1..=`max`) and `burst`,
/// which defaults to the rate and means nothing without it.
fn bucket(r: &Obj<'_>, rate_key: &str, max: u32, cx: &mut Ctx) -> Option<RequestRate> {
    let span = 1..=i64::from(max);
    let per_second = r.int_in(cx, rate_key, span.clone(), Need::Optional);
    let burst = r.int_in(cx, "burst", span, Need::Optional);
    match (per_second, burst) {
        (Some(rate), burst) => Some(RequestRate {
            per_second: rate as u32,
            burst: burst.unwrap_or(rate) as u32,
        }),
        (None, Some(_)) => {
            cx.error(
                &r.path.key("burst"),
                format!("needs {rate_key}, the rate that refills it"),
            );
            None
        }
        (None, None) => None,
    }
}

/// `access`: `Some(None)` when absent, `None` when wrong.
pub(super) fn access(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Option<Access>> {
    let Some(a) = obj.object(cx, "access") else {
        return Some(None);
    };
    a.check_keys(ACCESS_KEYS, cx);
    let before = cx.errors.len();
    let allow = networks(&a, "allow", cx);
    let deny = networks(&a, "deny", cx);
    // Judged on what was written, not on what parsed.
    if a.get("allow")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        cx.error(
            &a.path.key("allow"),
            "is empty, so it would refuse every client; leave it out to allow everyone",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Some(Access {
        allow: allow.unwrap_or_default(),
        deny: deny.unwrap_or_default(),
    }))
}

/// A list of networks (`10.0.0.0/8`, `2001:db8::/32`, or one address).
fn networks(a: &Obj<'_>, key: &str, cx: &mut Ctx) -> Option<Vec<IpNet>> {
    let items = a.array(cx, key, Need::Optional)?;
    let at = a.path.key(key);
    if items.len() > limits::MAX_ACCESS_NETWORKS {
        cx.error(
            &at,
            format!(
                "has {} networks, more than {}",
                items.len(),
                limits::MAX_ACCESS_NETWORKS
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => match s.trim().parse::<IpNet>() {
                Ok(net) => out.push(net),
                Err(e) => cx.error(&at.index(i), e),
            },
            other => cx.error(
                &at.index(i),
                format!("must be a network as a string, got {}", type_name(other)),
            ),
        }
    }
    Some(out)
}
