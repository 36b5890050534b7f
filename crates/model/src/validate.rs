//! Turns a parsed document into the trusted [`Config`], collecting every problem.
//!
//! The document is walked as a `serde_json::Value` instead of being
//! deserialized into structs, so that a wrong type in one field is reported
//! next to every other problem instead of stopping at the first one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::model::{
    Address, Algorithm, Backend, Config, DEFAULT_ALPN, DEFAULT_CIPHER_SUITES, HealthCheck,
    HealthCheckKind, HttpCheck, KNOWN_CIPHER_SUITES, LoadBalancer, Protocol, Timeouts, Tls,
    TlsVersion, limits,
};
use crate::network::{IpNet, forbidden_class, is_localhost_name};
use crate::problem::{FieldPath, Problem, Rejected};

/// A port the load balancers may not use, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedPort {
    /// The port.
    pub port: u16,
    /// Who uses it, e.g. "envoy admin".
    pub owner: String,
}

/// Knobs for [`validate`].
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// Turn unknown-key warnings into errors.
    pub strict: bool,
    /// Ports no listener may take.
    pub reserved_ports: Vec<ReservedPort>,
    /// Networks the operator trusts as backends although they reach the VM
    /// itself (loopback, link-local, ...): `allowed_backend_networks`.
    pub allowed_backend_networks: Vec<IpNet>,
}

/// A document that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The trusted model.
    pub config: Config,
    /// Things worth telling that did not reject the document.
    pub warnings: Vec<Problem>,
}

/// The largest document accepted, in bytes. The agent caps API bodies at the same size.
pub const MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;

/// Parses JSON or YAML text into a document tree.
///
/// Text that starts with `{` or `[` is read as JSON, anything else as YAML.
pub fn parse_document(text: &str) -> Result<Value, Rejected> {
    let fail = |message: String| Rejected {
        errors: vec![Problem::new(&FieldPath::root(), message)],
        warnings: vec![],
    };
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(fail(format!(
            "document is {} bytes, more than the {MAX_DOCUMENT_BYTES}-byte limit",
            text.len()
        )));
    }
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(fail("document is empty".into()));
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| fail(format!("invalid json: {e}")))
    } else {
        serde_norway::from_str(text).map_err(|e| fail(format!("invalid yaml: {e}")))
    }
}

/// Parses and validates in one step.
pub fn validate_str(text: &str, opts: &ValidateOptions) -> Result<Validated, Rejected> {
    validate(&parse_document(text)?, opts)
}

/// Validates a document: one load-balancer object, or an array of them.
///
/// Every problem is collected. On success the load balancers come back sorted by id.
pub fn validate(doc: &Value, opts: &ValidateOptions) -> Result<Validated, Rejected> {
    let mut cx = Ctx::default();
    let root = FieldPath::root();
    let items: Vec<(FieldPath, &Value)> = match doc {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (root.index(i), v))
            .collect(),
        Value::Object(_) => vec![(root.clone(), doc)],
        other => {
            cx.error(
                &root,
                format!(
                    "must be a load-balancer object or an array of them, got {}",
                    type_name(other)
                ),
            );
            vec![]
        }
    };

    if items.len() > limits::MAX_LOAD_BALANCERS {
        cx.error(
            &root,
            format!(
                "has {} load balancers, more than the {} one agent serves",
                items.len(),
                limits::MAX_LOAD_BALANCERS
            ),
        );
        return Err(cx.into_rejected());
    }
    let mut lbs: Vec<LoadBalancer> = Vec::new();
    let mut keys: Vec<Identity> = Vec::new();
    for (path, value) in items {
        let (lb, key) = load_balancer(value, &path, opts, &mut cx);
        lbs.extend(lb);
        keys.push(key);
    }
    cross_document(&keys, opts, &mut cx);

    if opts.strict {
        let unknown = std::mem::take(&mut cx.unknown);
        cx.errors.extend(unknown);
    } else {
        let unknown = std::mem::take(&mut cx.unknown);
        cx.warnings.extend(unknown);
    }
    if !cx.errors.is_empty() {
        return Err(cx.into_rejected());
    }
    let mut load_balancers = lbs;
    load_balancers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Validated {
        config: Config { load_balancers },
        warnings: cx.warnings,
    })
}

/// The fields of one load balancer that cross-document rules look at. They
/// are checked even when the rest of that load balancer is invalid, so every
/// conflict is reported in one pass.
struct Identity {
    path: FieldPath,
    id: Option<String>,
    port: Option<u16>,
}

/// Rules that span load balancers: unique ids, unique ports, reserved ports.
fn cross_document(items: &[Identity], opts: &ValidateOptions, cx: &mut Ctx) {
    let mut ids: HashMap<&str, &FieldPath> = HashMap::new();
    let mut ports: HashMap<u16, (&FieldPath, Option<&str>)> = HashMap::new();
    for item in items {
        if let Some(id) = &item.id {
            match ids.get(id.as_str()) {
                Some(first) => cx.error(
                    &item.path.key("id"),
                    format!("id {id:?} is already used by {first}"),
                ),
                None => {
                    ids.insert(id, &item.path);
                }
            }
        }
        let Some(port) = item.port else { continue };
        if let Some(r) = opts.reserved_ports.iter().find(|r| r.port == port) {
            cx.error(
                &item.path.key("port"),
                format!("port {port} is reserved for {}", r.owner),
            );
        }
        match ports.get(&port) {
            Some((first, Some(first_id))) => cx.error(
                &item.path.key("port"),
                format!("port {port} is already used by {first} (load balancer {first_id:?})"),
            ),
            Some((first, None)) => cx.error(
                &item.path.key("port"),
                format!("port {port} is already used by {first}"),
            ),
            None => {
                ports.insert(port, (&item.path, item.id.as_deref()));
            }
        }
    }
}

const LB_KEYS: &[&str] = &[
    "id",
    "name",
    "protocol",
    "port",
    "algorithm",
    "max_connections",
    "backends",
    "health_check",
    "tls_config",
    "timeouts",
    // Sent by the API, deliberately ignored.
    "created_at",
    "updated_at",
];
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
const TLS_KEYS: &[&str] = &[
    "certificate_path",
    "private_key_path",
    "ca_cert_path",
    "min_version",
    "max_version",
    "cipher_suites",
    "alpn",
];
const TIMEOUT_KEYS: &[&str] = &["connect", "idle", "request"];

fn load_balancer(
    value: &Value,
    path: &FieldPath,
    opts: &ValidateOptions,
    cx: &mut Ctx,
) -> (Option<LoadBalancer>, Identity) {
    let mut key = Identity {
        path: path.clone(),
        id: None,
        port: None,
    };
    let Some(obj) = Obj::new(value, path, cx) else {
        return (None, key);
    };
    obj.check_keys(LB_KEYS, cx);
    let before = cx.errors.len();

    let id = obj.string(cx, "id", Need::Required).and_then(|s| {
        if is_valid_id(s) {
            Some(s.to_owned())
        } else {
            cx.error(
                &path.key("id"),
                format!("must match [A-Za-z0-9_-]{{1,64}} (got {s:?})"),
            );
            None
        }
    });
    let name = obj.string(cx, "name", Need::Optional).and_then(|s| {
        let len = s.chars().count();
        if !(1..=255).contains(&len) {
            cx.error(
                &path.key("name"),
                format!("must be 1..=255 characters (got {len})"),
            );
            None
        } else if s.chars().any(char::is_control) {
            cx.error(&path.key("name"), "must not contain control characters");
            None
        } else {
            Some(s.to_owned())
        }
    });
    let protocol = obj.enumeration(
        cx,
        "protocol",
        &[
            ("http", Protocol::Http),
            ("https", Protocol::Https),
            ("tcp", Protocol::Tcp),
        ],
        Need::Required,
    );
    let port = obj.port(cx, "port");
    let algorithm = obj
        .enumeration(
            cx,
            "algorithm",
            &[
                ("round_robin", Algorithm::RoundRobin),
                ("least_request", Algorithm::LeastRequest),
                ("random", Algorithm::Random),
                ("ring_hash", Algorithm::RingHash),
            ],
            Need::Optional,
        )
        // Absent means round robin; an invalid value was reported, and the
        // load balancer is dropped below before this default is used.
        .unwrap_or(Algorithm::RoundRobin);
    let max_connections = obj
        .int_in(
            cx,
            "max_connections",
            1..=i64::from(limits::MAX_CONNECTIONS),
            Need::Optional,
        )
        .map(|n| n as u32);
    let backends = backends(&obj, &opts.allowed_backend_networks, cx);
    let health_check = obj
        .object(cx, "health_check")
        .and_then(|hc| health_check(&hc, cx));
    let tls = match (protocol, obj.object(cx, "tls_config")) {
        (Some(Protocol::Https), Some(t)) => tls(&t, cx),
        (Some(Protocol::Https), None) => {
            cx.error(
                &path.key("tls_config"),
                "is required when protocol is https",
            );
            None
        }
        (Some(p), Some(t)) => {
            cx.warn(
                &t.path,
                format!("ignored because protocol is {}", protocol_name(p)),
            );
            None
        }
        _ => None,
    };
    let timeouts = match obj.object(cx, "timeouts") {
        Some(t) => timeouts(&t, protocol, cx),
        None => Some(default_timeouts()),
    };

    key.id.clone_from(&id);
    key.port = port;
    if cx.errors.len() != before {
        return (None, key);
    }
    let lb = (|| {
        let id = id?;
        Some(LoadBalancer {
            // No errors past this point, so a missing name is an absent one.
            name: name.unwrap_or_else(|| id.clone()),
            id,
            protocol: protocol?,
            port: port?,
            algorithm,
            max_connections,
            backends: backends?,
            health_check,
            tls,
            timeouts: timeouts?,
        })
    })();
    (lb, key)
}

fn backends(obj: &Obj<'_>, allowed: &[IpNet], cx: &mut Ctx) -> Option<Vec<Backend>> {
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
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut endpoints: HashMap<(Address, u16), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = list_path.index(i);
        let Some(mut b) = Obj::new(item, &path, cx) else {
            continue;
        };
        b.kind = "backend";
        b.check_keys(BACKEND_KEYS, cx);
        let id = b.string(cx, "id", Need::Required).and_then(|s| {
            if !is_valid_id(s) {
                cx.error(
                    &path.key("id"),
                    format!("must match [A-Za-z0-9_-]{{1,64}} (got {s:?})"),
                );
                return None;
            }
            if let Some(first) = ids.insert(s.to_owned(), i) {
                cx.error(
                    &path.key("id"),
                    format!("id {s:?} is already used by {}", list_path.index(first)),
                );
                return None;
            }
            Some(s.to_owned())
        });
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

fn health_check(obj: &Obj<'_>, cx: &mut Ctx) -> Option<HealthCheck> {
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
        // The default, shortened to fit an interval the document chose.
        (None, Some(i)) => Some(i64::from(limits::DEFAULT_HC_TIMEOUT).min(i - 1).max(1)),
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

fn tls(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Tls> {
    obj.check_keys(TLS_KEYS, cx);
    let certificate_path = obj.abs_path(cx, "certificate_path", Need::Required);
    let private_key_path = obj.abs_path(cx, "private_key_path", Need::Required);
    let ca_cert_path = obj.abs_path(cx, "ca_cert_path", Need::Optional);
    let versions = [
        ("TLSv1.2", TlsVersion::Tls12),
        ("TLSv1.3", TlsVersion::Tls13),
    ];
    let min_version = if obj.get("min_version").is_some() {
        obj.enumeration(cx, "min_version", &versions, Need::Required)
    } else {
        Some(TlsVersion::Tls12)
    };
    let max_version = obj.enumeration(cx, "max_version", &versions, Need::Optional);
    if let (Some(min), Some(max)) = (min_version, max_version)
        && max < min
    {
        cx.error(
            &obj.path.key("max_version"),
            "must not be lower than min_version",
        );
    }

    let mut ok = true;
    let mut cipher_suites = Vec::new();
    if let Some(items) = obj.array(cx, "cipher_suites", Need::Optional) {
        let list = obj.path.key("cipher_suites");
        for (i, v) in items.iter().enumerate() {
            let at = list.index(i);
            match v.as_str() {
                Some(s) if s.starts_with("TLS_") => {
                    cx.error(&at, format!("{s:?} is a TLS 1.3 suite, which Envoy does not let us choose; list TLS 1.2 suites only"));
                    ok = false;
                }
                Some(s) if KNOWN_CIPHER_SUITES.contains(&s) => {
                    if cipher_suites.iter().any(|c| c == s) {
                        cx.error(&at, format!("{s:?} is listed twice"));
                        ok = false;
                    } else {
                        cipher_suites.push(s.to_owned());
                    }
                }
                Some(s) => {
                    cx.error(
                        &at,
                        format!(
                            "unknown cipher suite {s:?}; known: {}",
                            KNOWN_CIPHER_SUITES.join(", ")
                        ),
                    );
                    ok = false;
                }
                None => {
                    cx.error(&at, format!("must be a string, got {}", type_name(v)));
                    ok = false;
                }
            }
        }
        if !cipher_suites.is_empty() && min_version == Some(TlsVersion::Tls13) {
            cx.warn(&list, "has no effect when min_version is TLSv1.3");
        }
    }
    if cipher_suites.is_empty() {
        cipher_suites = DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }

    let mut alpn = Vec::new();
    if let Some(items) = obj.array(cx, "alpn", Need::Optional) {
        let list = obj.path.key("alpn");
        for (i, v) in items.iter().enumerate() {
            match v.as_str() {
                Some(s @ ("h2" | "http/1.1")) if !alpn.iter().any(|a| a == s) => {
                    alpn.push(s.to_owned())
                }
                Some(s @ ("h2" | "http/1.1")) => {
                    cx.error(&list.index(i), format!("{s:?} is listed twice"));
                    ok = false;
                }
                _ => {
                    cx.error(&list.index(i), "must be \"h2\" or \"http/1.1\"");
                    ok = false;
                }
            }
        }
    }
    if alpn.is_empty() {
        alpn = DEFAULT_ALPN.iter().map(|s| (*s).to_owned()).collect();
    }
    if !ok {
        return None;
    }
    if let (Some(min), Some(max)) = (min_version, max_version)
        && max < min
    {
        return None;
    }
    Some(Tls {
        certificate_path: certificate_path?,
        private_key_path: private_key_path?,
        ca_cert_path,
        min_version: min_version?,
        max_version,
        cipher_suites,
        alpn,
    })
}

fn default_timeouts() -> Timeouts {
    Timeouts {
        connect: limits::DEFAULT_CONNECT_TIMEOUT,
        idle: Some(limits::DEFAULT_IDLE_TIMEOUT),
        request: Some(limits::DEFAULT_REQUEST_TIMEOUT),
    }
}

fn timeouts(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<Timeouts> {
    obj.check_keys(TIMEOUT_KEYS, cx);
    let d = default_timeouts();
    let before = cx.errors.len();
    let connect = obj
        .int_in(
            cx,
            "connect",
            1..=i64::from(limits::MAX_CONNECT_TIMEOUT),
            Need::Optional,
        )
        .map_or(d.connect, |v| v as u32);
    let span = 0..=i64::from(limits::MAX_TIMEOUT);
    let disabled_if_zero = |v: i64| (v > 0).then_some(v as u32);
    let idle = obj
        .int_in(cx, "idle", span.clone(), Need::Optional)
        .map_or(d.idle, disabled_if_zero);
    let request = obj
        .int_in(cx, "request", span, Need::Optional)
        .map_or(d.request, disabled_if_zero);
    if protocol == Some(Protocol::Tcp) && obj.get("request").is_some() {
        cx.warn(&obj.path.key("request"), "ignored for a tcp load balancer");
    }
    (cx.errors.len() == before).then_some(Timeouts {
        connect,
        idle,
        request,
    })
}

/// Problems collected during one validation.
#[derive(Default)]
struct Ctx {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Unknown keys: warnings normally, errors under `strict`.
    unknown: Vec<Problem>,
}

impl Ctx {
    /// The problems found, each list cut to [`limits::MAX_PROBLEMS`] with a
    /// last line that counts the rest: a 10 MiB document of bad backends
    /// must not become a million-line answer.
    fn into_rejected(self) -> Rejected {
        Rejected {
            errors: capped(self.errors),
            warnings: capped(self.warnings),
        }
    }

    fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }
    fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
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
enum Need {
    Required,
    Optional,
}

/// A JSON object being read, with its path.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: FieldPath,
    /// Which object this is, for the Go zero rules: `""` for a load
    /// balancer, else the key it sits under.
    kind: &'static str,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: &FieldPath, cx: &mut Ctx) -> Option<Self> {
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

    fn check_keys(&self, known: &[&str], cx: &mut Ctx) {
        for key in self.map.keys() {
            if !known.contains(&key.as_str()) {
                cx.unknown
                    .push(Problem::new(&self.path.key(key), "unknown key (ignored)"));
            }
        }
    }

    /// The value under `key`; `null` counts as absent.
    /// The value at `key`, unless it is null or a Go zero that means absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map
            .get(key)
            .filter(|v| !v.is_null() && !crate::gozero::means_absent(self.kind, key, v))
    }

    fn present(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() && need == Need::Required {
            cx.error(&self.path.key(key), "is required");
        }
        v
    }

    fn string(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a str> {
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

    fn int(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<i64> {
        let v = self.present(cx, key, need)?;
        int_value(v, &self.path.key(key), i64::MIN..=i64::MAX, cx)
    }

    fn int_in(
        &self,
        cx: &mut Ctx,
        key: &str,
        range: RangeInclusive<i64>,
        need: Need,
    ) -> Option<i64> {
        let v = self.present(cx, key, need)?;
        int_value(v, &self.path.key(key), range, cx)
    }

    fn port(&self, cx: &mut Ctx, key: &str) -> Option<u16> {
        self.int_in(cx, key, 1..=65535, Need::Required)
            .map(|p| p as u16)
    }

    fn boolean(&self, cx: &mut Ctx, key: &str) -> Option<bool> {
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

    fn array(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<&'a Vec<Value>> {
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

    fn object(&self, cx: &mut Ctx, key: &'static str) -> Option<Obj<'a>> {
        let v = self.get(key)?;
        let mut child = Obj::new(v, &self.path.key(key), cx)?;
        child.kind = key;
        Some(child)
    }

    fn enumeration<T: Copy>(
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

    fn abs_path(&self, cx: &mut Ctx, key: &str, need: Need) -> Option<String> {
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
        } else {
            Some(s.to_owned())
        }
    }
}

fn int_value(v: &Value, path: &FieldPath, range: RangeInclusive<i64>, cx: &mut Ctx) -> Option<i64> {
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Https => "https",
        Protocol::Tcp => "tcp",
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe in Envoy resource names, stat names and file names.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
