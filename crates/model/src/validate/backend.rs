//! Backends and their health checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{Address, Backend, HealthCheck, HealthCheckKind, HttpCheck, limits};
use crate::network::{IpNet, forbidden_class, is_localhost_name};

use super::obj::{Ctx, IdList, Need, Obj, int_value, is_token_byte, type_name};

const BACKEND_KEYS: &[&str] = &["id", "address", "port", "weight", "enabled", "status"];
const HC_KEYS: &[&str] = &[
    "type",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "path",
    "expected_status",
    "headers",
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
    let span = 1..=i64::from(limits::MAX_HC_INTERVAL);
    let interval = match obj.get("interval") {
        None => Some(i64::from(limits::DEFAULT_HC_INTERVAL)),
        Some(_) => obj.int_in(cx, "interval", span.clone(), Need::Required),
    };
    let timeout = match (obj.get("timeout"), interval) {
        // Timeouts are whole seconds, at least 1, and shorter than the
        // interval: an interval of 1 can never be met. Said here, where the
        // document is wrong, not on a timeout it never wrote.
        (None, Some(1)) => {
            cx.error(
                &obj.path.key("interval"),
                "must be at least 2: the timeout (at least 1 s) must be shorter",
            );
            return None;
        }
        // The default, shortened to fit an interval the document chose.
        (None, Some(i)) => Some(i64::from(limits::DEFAULT_HC_TIMEOUT).min(i - 1)),
        (None, None) => None,
        (Some(_), _) => obj.int_in(cx, "timeout", span, Need::Required),
    };
    if let (Some(i), Some(t)) = (interval, timeout)
        && t >= i
    {
        cx.error(
            &obj.path.key("timeout"),
            format!("must be smaller than interval ({t} >= {i})"),
        );
    }
    let threshold = 1..=i64::from(limits::MAX_HC_THRESHOLD);
    let threshold_or = |cx: &mut Ctx, key: &str, default: u32| match obj.get(key) {
        None => Some(i64::from(default)),
        Some(_) => obj.int_in(cx, key, threshold.clone(), Need::Required),
    };
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
    Some(HealthCheck {
        kind,
        interval: interval as u32,
        timeout: timeout as u32,
        healthy_threshold: healthy? as u32,
        unhealthy_threshold: unhealthy? as u32,
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
        Address::Ip(ip) => match forbidden_class(*ip) {
            Some(class) if !allowed.iter().any(|n| n.contains(*ip)) => Err(format!(
                "{ip} is {class}; refused so that traffic cannot reach envoy's admin or the agent. \
                 To trust it, add its network to allowed_backend_networks in the agent config \
                 (or pass --allow-backend-network CIDR)"
            )),
            _ => Ok(address),
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
