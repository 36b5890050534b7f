//! Turns a parsed document into the trusted [`Config`], collecting every problem.
//!
//! The document is walked as a `serde_json::Value` instead of being
//! deserialized into structs, so that a wrong type in one field is reported
//! next to every other problem instead of stopping at the first one.

mod action;
mod backend;
mod document;
mod hosts;
mod obj;
mod pool;
mod protect;
mod re2_names;
mod regex;
mod route;
mod tls;

use serde_json::Value;

use crate::model::{Config, LoadBalancer, Protocol, ProxyProtocol, Timeouts, Tls, limits};
use crate::network::IpNet;
use crate::problem::{FieldPath, Problem, Rejected};

use document::{Identity, cross_document, listening};
use document::{acme_owners, document_size};
pub use obj::is_valid_id;
pub(crate) use obj::type_name;
use obj::{Ctx, Need, Obj, valid_id};
use pool::every_pool;
use route::routes;
use tls::tls;

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
    /// Directories no certificate, key or CA path may be under: the
    /// agent's state (its ACME keys) and its config.
    pub private_paths: Vec<String>,
    /// ACME directories a document may name besides Let's Encrypt's
    /// production and staging ones: `acme.allowed_directories`.
    pub acme_directories: Vec<String>,
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
    let mut cx = Ctx {
        private_paths: opts.private_paths.clone(),
        acme_directories: opts.acme_directories.clone(),
        ..Ctx::default()
    };
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
    document_size(&keys, &mut cx);
    acme_owners(&keys, &mut cx);

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
    "sticky_sessions",
    "slow_start",
    "redirect_http_port",
    "pools",
    "routes",
    "rate_limit",
    "access",
    "waf",
    "proxy_protocol",
    "deregistration_delay",
    "http3",
    "per_client",
    // Sent by the API, deliberately ignored.
    "created_at",
    "updated_at",
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
        ports: vec![],
        size: Default::default(),
        acme_domains: vec![],
    };
    let Some(obj) = Obj::new(value, path, cx) else {
        return (None, key);
    };
    obj.check_keys(LB_KEYS, cx);
    let before = cx.errors.len();

    let id = obj
        .string(cx, "id", Need::Required)
        .and_then(|s| valid_id(s, &path.key("id"), cx));
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
            ("tls_passthrough", Protocol::TlsPassthrough),
            ("udp", Protocol::Udp),
        ],
        Need::Required,
    );
    let port = obj.port(cx, "port");
    let redirect_http_port = redirect_port(&obj, protocol, port, cx);
    let max_connections = obj
        .int_in(
            cx,
            "max_connections",
            1..=i64::from(limits::MAX_CONNECTIONS),
            Need::Optional,
        )
        .map(|n| n as u32);
    let (default_pool, pools, index) =
        every_pool(&obj, protocol, &opts.allowed_backend_networks, cx);
    let routes = routes(&obj, protocol, &index, cx);
    let tls = tls_for(&obj, protocol, cx);
    if tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        acme_port(&obj, redirect_http_port, cx);
    }
    let timeouts = match obj.object(cx, "timeouts") {
        Some(t) => timeouts(&t, protocol, cx),
        None => Some(default_timeouts(protocol)),
    };
    let rate_limit = protect::rate_limit(&obj, protocol, cx);
    let access = protect::access(&obj, cx);
    let waf = protect::waf(&obj, protocol, cx);
    let proxy_protocol = obj.enumeration(
        cx,
        "proxy_protocol",
        &[("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)],
        Need::Optional,
    );
    let http3 = http3(&obj, protocol, cx);
    let deregistration_delay = obj
        .int_in(
            cx,
            "deregistration_delay",
            0..=i64::from(limits::MAX_DEREGISTRATION_DELAY),
            Need::Optional,
        )
        .map_or(0, |d| d as u32);

    let per_client = protect::per_client(&obj, protocol, max_connections, cx);
    if protocol == Some(Protocol::Udp) {
        udp_rules(&obj, cx);
    }
    key.id.clone_from(&id);
    key.ports = listening(protocol, port, redirect_http_port, http3 == Some(true));
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
            max_connections,
            default_pool: default_pool?,
            pools: pools?,
            routes: routes?,
            redirect_http_port,
            tls,
            timeouts: timeouts?,
            rate_limit: rate_limit?,
            access: access?,
            waf: waf?,
            proxy_protocol,
            deregistration_delay,
            http3: http3?,
            per_client: per_client?,
        })
    })();
    let Some(lb) = lb else {
        return (None, key);
    };
    // What the routes become in Envoy, before anything renders them: a
    // small document must not make a configuration that exhausts the VM.
    let size = crate::vhosts::translated_size(&lb, limits::MAX_TRANSLATED_ROUTES);
    if let Some(why) = crate::vhosts::over_cap(&size) {
        cx.error(&path.key("routes"), why);
        return (None, key);
    }
    key.size = size;
    if let Some(acme) = lb.tls.as_ref().and_then(|t| t.acme.as_ref()) {
        key.acme_domains.clone_from(&acme.domains);
    }
    (Some(lb), key)
}

/// What a udp load balancer cannot have: Envoy's UDP proxy sends no PROXY
/// header, and its listener runs no connection filters, so access lists and
/// connection rates would silently do nothing.
fn udp_rules(obj: &Obj<'_>, cx: &mut Ctx) {
    let refused: [(&str, &str); 3] = [
        ("proxy_protocol", "is not sent over udp"),
        ("access", "needs a connection to judge; udp has none"),
        (
            "rate_limit",
            "needs connections or requests to count; udp has neither",
        ),
    ];
    for (key, why) in refused {
        if obj.get(key).is_some() {
            cx.error(&obj.path.key(key), why);
        }
    }
    if obj.get("algorithm").and_then(Value::as_str) == Some("least_request") {
        cx.error(
            &obj.path.key("algorithm"),
            "least_request counts requests, which udp has none of; use round_robin, random or ring_hash",
        );
    }
}

/// `http3`: https only, since QUIC always carries TLS; `None` when wrong.
fn http3(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<bool> {
    if obj.get("http3").is_none() {
        return Some(false);
    }
    let on = obj.boolean(cx, "http3")?;
    match protocol {
        Some(p) if on && p != Protocol::Https => {
            cx.error(
                &obj.path.key("http3"),
                format!(
                    "needs protocol https (got {}): QUIC always carries TLS",
                    p.name()
                ),
            );
            None
        }
        _ => Some(on),
    }
}

/// `redirect_http_port`: https only, and not the listener's own port.
fn redirect_port(
    obj: &Obj<'_>,
    protocol: Option<Protocol>,
    port: Option<u16>,
    cx: &mut Ctx,
) -> Option<u16> {
    obj.get("redirect_http_port")?;
    let at = obj.path.key("redirect_http_port");
    let p = obj.port(cx, "redirect_http_port")?;
    match protocol {
        Some(Protocol::Https) if port == Some(p) => {
            cx.error(&at, format!("must differ from port ({p})"));
            None
        }
        Some(Protocol::Https) => Some(p),
        Some(other) => {
            cx.error(&at, format!("needs protocol https (got {})", other.name()));
            None
        }
        None => None,
    }
}

/// An ACME certificate is proved over plain HTTP on port 80, which this
/// load balancer's redirect listener answers: it needs one.
fn acme_port(obj: &Obj<'_>, redirect_http_port: Option<u16>, cx: &mut Ctx) {
    let at = obj.path.key("redirect_http_port");
    match redirect_http_port {
        None if obj.get("redirect_http_port").is_none() => cx.error(
            &at,
            "is required with tls_config.acme: the ACME server proves the names over plain HTTP on port 80, which the redirect listener answers",
        ),
        Some(p) if p != 80 => cx.warn(
            &at,
            format!("is {p}: ACME servers prove names on port 80 only, so port 80 must reach this port"),
        ),
        _ => {}
    }
}

/// `tls_config`: required for https, ignored with a warning otherwise.
fn tls_for(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<Tls> {
    match (protocol, obj.object(cx, "tls_config")) {
        (Some(Protocol::Https), Some(t)) => tls(&t, cx),
        (Some(Protocol::Https), None) => {
            cx.error(
                &obj.path.key("tls_config"),
                "is required when protocol is https",
            );
            None
        }
        (Some(p), Some(t)) => {
            cx.warn(&t.path, format!("ignored because protocol is {}", p.name()));
            None
        }
        _ => None,
    }
}

fn default_timeouts(protocol: Option<Protocol>) -> Timeouts {
    let idle = match protocol {
        Some(Protocol::Udp) => limits::DEFAULT_UDP_IDLE_TIMEOUT,
        _ => limits::DEFAULT_IDLE_TIMEOUT,
    };
    Timeouts {
        connect: limits::DEFAULT_CONNECT_TIMEOUT,
        idle: Some(idle),
        request: Some(limits::DEFAULT_REQUEST_TIMEOUT),
    }
}

fn timeouts(obj: &Obj<'_>, protocol: Option<Protocol>, cx: &mut Ctx) -> Option<Timeouts> {
    obj.check_keys(TIMEOUT_KEYS, cx);
    let d = default_timeouts(protocol);
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
    let idle = match obj.int_in(cx, "idle", span.clone(), Need::Optional) {
        // A UDP session is over only when it idles out, so 0 cannot
        // disable it; Go clients send 0 for "unset", so it is not an error.
        Some(0) if protocol == Some(Protocol::Udp) => {
            cx.warn(
                &obj.path.key("idle"),
                "0 cannot disable the idle timeout of udp sessions; the default applies",
            );
            d.idle
        }
        v => v.map_or(d.idle, disabled_if_zero),
    };
    let request = obj
        .int_in(cx, "request", span, Need::Optional)
        .map_or(d.request, disabled_if_zero);
    if let Some(p) = protocol.filter(|p| !p.is_http())
        && obj.get("request").is_some()
    {
        cx.warn(
            &obj.path.key("request"),
            format!("ignored for a {} load balancer", p.name()),
        );
    }
    (cx.errors.len() == before).then_some(Timeouts {
        connect,
        idle,
        request,
    })
}
