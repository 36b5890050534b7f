//! Backends and their health checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{Address, Backend, HealthCheck, HealthCheckKind, HttpCheck, limits};
use crate::network::{IpNet, is_localhost_name, refused_class};

use serde_json::Value;

use super::obj::{Ctx, IdList, Need, Obj, int_value, is_token_byte, type_name};
use crate::problem::FieldPath;

const BACKEND_KEYS: &[&str] = &["id", "address", "port", "weight", "enabled", "status"];
const HC_KEYS: &[&str] = &[
    "type",
    "interval",
    "timeout",
    "unhealthy_interval",
    "healthy_threshold",
    "unhealthy_threshold",
    "path",
    "expected_status",
    "headers",
    "port",
];

pub(super) fn backends(obj: &Obj<'_>, allowed: &[IpNet], cx: &mut Ctx) -> Option<Vec<Backend>> {
    let items = obj.array(cx, "backends", Need::Required)?;
    let list_path = obj.path.key("backends");
    if items.len() > limits::MAX_BACKENDS {
        cx.error(
            &list_path,
            format!(
                "has {} backends, more than the {} one load balancer may have",
                items.len(),
                limits::MAX_BACKENDS
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut endpoints: HashMap<(Address, u16), usize> = HashMap::new();
    let mut reader = IdList::new(&list_path, "backend", BACKEND_KEYS, None);
    for (i, item) in items.iter().enumerate() {
        let Some((path, b, id)) = reader.read(i, item, cx) else {
            continue;
        };
        let address = b.string(cx, "address", Need::Required).and_then(|s| {
            match parse_address(s).and_then(|a| reachable(a, allowed)) {
                Ok(a) => Some(a),
                Err(msg) => {
                    cx.error(&path.key("address"), msg);
                    None
                }
            }
        });
        let port = b.port(cx, "port");
        let weight = b.int(cx, "weight", Need::Optional).and_then(|w| match w {
            0 => Some(limits::DEFAULT_WEIGHT),
            w if w < 0 => {
                cx.error(
                    &path.key("weight"),
                    format!("must not be negative (got {w})"),
                );
                None
            }
            w if w > i64::from(limits::MAX_WEIGHT) => {
                cx.error(
                    &path.key("weight"),
                    format!("must be at most {} (got {w})", limits::MAX_WEIGHT),
                );
                None
            }
            w => Some(w as u32),
        });
        let weight = if b.get("weight").is_none() {
            Some(limits::DEFAULT_WEIGHT)
        } else {
            weight
        };
        let enabled = b.boolean(cx, "enabled").unwrap_or(true);
        let (Some(id), Some(address), Some(port), Some(weight)) = (id, address, port, weight)
        else {
            continue;
        };
        if enabled && let Some(first) = endpoints.insert((address.clone(), port), i) {
            cx.error(
                &path,
                format!(
                    "{address}:{port} is the same endpoint as {}",
                    list_path.index(first)
                ),
            );
        }
        out.push(Backend {
            id,
            address,
            port,
            weight,
            enabled,
        });
    }
    Some(out)
}

pub(super) fn health_check(obj: &Obj<'_>, cx: &mut Ctx) -> Option<HealthCheck> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Tcp,
        Http,
        Https,
    }
    obj.check_keys(HC_KEYS, cx);
    let kind = obj.enumeration(
        cx,
        "type",
        &[
            ("tcp", Kind::Tcp),
            ("http", Kind::Http),
            ("https", Kind::Https),
        ],
        Need::Required,
    );
    let max_ms = i64::from(limits::MAX_HC_INTERVAL) * 1000;
    let span = i64::from(limits::MIN_HC_MS)..=max_ms;
    let interval = match obj.get("interval") {
        None => Some(i64::from(limits::DEFAULT_HC_INTERVAL) * 1000),
        Some(v) => millis_value(v, &obj.path.key("interval"), span.clone(), cx),
    };
    let timeout = match (obj.get("timeout"), interval) {
        // The default, shortened to fit an interval the document chose:
        // one second less down to 2 s, half the interval below.
        (None, Some(i)) if i >= 2000 => {
            Some(i64::from(limits::DEFAULT_HC_TIMEOUT * 1000).min(i - 1000))
        }
        (None, Some(i)) => Some(i / 2),
        (None, None) => None,
        (Some(v), _) => millis_value(v, &obj.path.key("timeout"), span.clone(), cx),
    };
    if let (Some(i), Some(t)) = (interval, timeout)
        && t >= i
    {
        cx.error(
            &obj.path.key("timeout"),
            format!(
                "must be smaller than interval ({} >= {})",
                show_secs(t),
                show_secs(i)
            ),
        );
    }
    let unhealthy_interval = obj
        .get("unhealthy_interval")
        .map(|v| millis_value(v, &obj.path.key("unhealthy_interval"), span, cx));
    let threshold = 1..=i64::from(limits::MAX_HC_THRESHOLD);
    let threshold_or = |cx: &mut Ctx, key: &str, default: u32| match obj.get(key) {
        None => Some(i64::from(default)),
        Some(_) => obj.int_in(cx, key, threshold.clone(), Need::Required),
    };
    let port = obj.get("port").and_then(|_| obj.port(cx, "port"));
    let healthy = threshold_or(cx, "healthy_threshold", limits::DEFAULT_HC_HEALTHY);
    let unhealthy = threshold_or(cx, "unhealthy_threshold", limits::DEFAULT_HC_UNHEALTHY);

    let http = match kind {
        Some(Kind::Http | Kind::Https) => http_check(obj, cx),
        Some(Kind::Tcp) => {
            for key in ["path", "expected_status", "headers"] {
                if obj.get(key).is_some() {
                    cx.warn(&obj.path.key(key), "ignored for a tcp health check");
                }
            }
            None
        }
        None => None,
    };
    let kind = match kind? {
        Kind::Tcp => HealthCheckKind::Tcp,
        Kind::Http => HealthCheckKind::Http(http?),
        Kind::Https => HealthCheckKind::Https(http?),
    };
    let (interval, timeout) = (interval?, timeout?);
    if timeout >= interval {
        return None;
    }
    let unhealthy_interval = match unhealthy_interval {
        Some(ms) => Some(ms? as u32),
        None => None,
    };
    Some(HealthCheck {
        kind,
        interval_ms: interval as u32,
        timeout_ms: timeout as u32,
        unhealthy_interval_ms: unhealthy_interval,
        healthy_threshold: healthy? as u32,
        unhealthy_threshold: unhealthy? as u32,
        port,
    })
}

fn http_check(obj: &Obj<'_>, cx: &mut Ctx) -> Option<HttpCheck> {
    let path = obj.string(cx, "path", Need::Required).and_then(|p| {
        let at = obj.path.key("path");
        if !p.starts_with('/') {
            cx.error(&at, format!("must start with / (got {p:?})"));
            None
        } else if p.len() > limits::MAX_HC_PATH {
            cx.error(
                &at,
                format!("must be at most {} bytes", limits::MAX_HC_PATH),
            );
            None
        } else if !p.bytes().all(|b| b.is_ascii_graphic()) {
            cx.error(
                &at,
                "must be printable ascii without spaces (percent-encode the rest)",
            );
            None
        } else {
            Some(p.to_owned())
        }
    });

    let mut codes = BTreeSet::new();
    let mut ok = true;
    if let Some(items) = obj.array(cx, "expected_status", Need::Optional) {
        let list = obj.path.key("expected_status");
        for (i, v) in items.iter().enumerate() {
            match int_value(v, &list.index(i), 100..=599, cx) {
                Some(c) => {
                    codes.insert(c as u16);
                }
                None => ok = false,
            }
        }
    }
    // An empty list is read like an absent one, because the API sends empty
    // lists for unset fields.
    if codes.is_empty() {
        codes.insert(200);
    }

    let mut host = None;
    let mut headers = BTreeMap::new();
    if let Some(h) = obj.object(cx, "headers") {
        for (name, value) in h.map {
            let at = h.path.key(name);
            let lower = name.to_ascii_lowercase();
            let Some(value) = value.as_str() else {
                cx.error(&at, format!("must be a string, got {}", type_name(value)));
                ok = false;
                continue;
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                cx.error(&at, "is not a valid header name");
                ok = false;
            } else if value.len() > 8192
                || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
            {
                cx.error(&at, "must be at most 8192 bytes without CR, LF or NUL");
                ok = false;
            } else if lower == "host" {
                host = Some(value.to_owned());
            } else if headers.insert(lower, value.to_owned()).is_some() {
                cx.error(&at, "is given twice (header names are case-insensitive)");
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    Some(HttpCheck {
        path: path?,
        expected_status: codes.into_iter().collect(),
        host,
        headers,
    })
}

/// Refuses an address that reaches the VM itself, unless an allowed network
/// covers it. Names that always mean this host are refused outright: no
/// network can vouch for what a name resolves to.
fn reachable(address: Address, allowed: &[IpNet]) -> Result<Address, String> {
    match &address {
        Address::Ip(ip) => match refused_class(*ip, allowed) {
            Some(class) => Err(format!(
                "{ip} is {class}; refused so that traffic cannot reach envoy's admin or the agent. \
                 To trust it, add its network to allowed_backend_networks in the agent config \
                 (or pass --allow-backend-network CIDR)"
            )),
            None => Ok(address),
        },
        Address::Hostname(h) if is_localhost_name(h) => Err(format!(
            "{h} always means the load balancer VM itself; refused so that traffic cannot \
             reach envoy's admin or the agent. Write the IP address and add its network to \
             allowed_backend_networks (or pass --allow-backend-network CIDR)"
        )),
        Address::Hostname(_) => Ok(address),
    }
}

/// Parses a backend address: an IP literal or an RFC 1123 host name.
fn parse_address(s: &str) -> Result<Address, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        // `::ffff:0.0.0.0` is the unspecified address too.
        let canonical = ip.to_canonical();
        if canonical.is_unspecified() {
            return Err(format!("{s} is the unspecified address, not a backend"));
        }
        if canonical.is_multicast() {
            return Err(format!("{s} is a multicast address, not a backend"));
        }
        return Ok(Address::Ip(ip));
    }
    if s.starts_with('[') {
        return Err(format!(
            "write the IPv6 address without brackets (got {s:?})"
        ));
    }
    let host = s.strip_suffix('.').unwrap_or(s);
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = host.split('.').collect();
    let last_is_numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty()
        || host.len() > 253
        || !labels.iter().all(|l| valid_label(l))
        || last_is_numeric
    {
        return Err(format!(
            "must be an IPv4 address, an IPv6 address or a DNS host name (got {s:?})"
        ));
    }
    Ok(Address::Hostname(host.to_ascii_lowercase()))
}

/// Seconds with at most three decimals (`0.5`, `10`), as milliseconds in `range`.
fn millis_value(
    v: &Value,
    path: &FieldPath,
    range: std::ops::RangeInclusive<i64>,
    cx: &mut Ctx,
) -> Option<i64> {
    let Some(secs) = v.as_f64().filter(|_| v.is_number()) else {
        cx.error(
            path,
            format!("must be a number of seconds, got {}", type_name(v)),
        );
        return None;
    };
    let ms = secs * 1000.0;
    if !ms.is_finite() || (ms - ms.round()).abs() > 1e-6 {
        cx.error(
            path,
            format!("must be seconds with at most 3 decimals (got {v})"),
        );
        return None;
    }
    let ms = ms.round();
    if ms < *range.start() as f64 || ms > *range.end() as f64 {
        cx.error(
            path,
            format!(
                "must be {}..={} seconds (got {v})",
                show_secs(*range.start()),
                show_secs(*range.end())
            ),
        );
        return None;
    }
    Some(ms as i64)
}

/// Milliseconds as seconds the way a document writes them: `2`, `0.5`.
pub(crate) fn show_secs(ms: i64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}", ms as f64 / 1000.0)
    }
}
