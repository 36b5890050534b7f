//! The trusted model: what a load balancer is after validation.
//!
//! Every type here is `#[non_exhaustive]`, so other crates can read the
//! fields but cannot build values: [`crate::validate`] is the only way in,
//! and translation may assume every invariant documented here holds.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Limits and defaults the validator applies, in one place so the docs can cite them.
#[path = "limits.rs"]
pub mod limits;

/// A validated set of load balancers that can share one Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The load balancers, sorted by id.
    pub load_balancers: Vec<LoadBalancer>,
}

/// One load balancer: one listener (two with `redirect_http_port`) in front
/// of one or more pools of backends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadBalancer {
    /// `[A-Za-z0-9_-]{1,64}`, unique in the config.
    pub id: String,
    /// 1-255 printable characters.
    pub name: String,
    /// How clients talk to the listener.
    pub protocol: Protocol,
    /// Listener port, unique in the config and never a reserved port.
    pub port: u16,
    /// Per-listener concurrent connection limit.
    pub max_connections: Option<u32>,
    /// The pool the top-level fields describe, id [`DEFAULT_POOL`]: where
    /// a request goes when no route matches.
    pub default_pool: Pool,
    /// The other pools, in input order; ids unique and never [`DEFAULT_POOL`].
    /// Empty for tcp.
    pub pools: Vec<Pool>,
    /// HTTP routes, in order: the first match wins. Empty for tcp.
    pub routes: Vec<Route>,
    /// https only: a plain-HTTP port that answers every request with a 301
    /// to the same URL on the https listener. Unique like `port`.
    pub redirect_http_port: Option<u16>,
    /// TLS termination; `Some` exactly when the protocol is https.
    pub tls: Option<Tls>,
    /// Timeouts with defaults filled in.
    pub timeouts: Timeouts,
    /// Per-client request limit (http/https) and new-connection rate.
    pub rate_limit: RateLimit,
    /// Which clients may connect at all.
    pub access: Option<Access>,
    /// Request inspection by the WAF service (http/https).
    pub waf: Option<Waf>,
    /// The PROXY protocol header sent to backends at the start of each
    /// upstream connection, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Seconds a backend removed or disabled in the document keeps its
    /// in-flight connections, taking no new ones, before they are closed;
    /// 0 removes it at once.
    pub deregistration_delay: u32,
    /// https only: also serve HTTP/3 over QUIC on the same port (UDP), and
    /// say so in an `alt-svc` header on every answer.
    pub http3: bool,
    /// udp only (`Some` exactly then): how much of the listener one client
    /// address may hold, enforced by the agent in the kernel since Envoy's
    /// UDP proxy counts sessions for the listener only.
    pub per_client: Option<PerClient>,
}

/// What one client address may take of a udp load balancer. IPv6 clients
/// count per /64, the block one subscriber gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PerClient {
    /// Sessions (client ports) open at once.
    pub max_sessions: u32,
    /// New sessions per second, with the bucket they may come in at once.
    pub new_sessions: Option<RequestRate>,
}

/// The PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The human-readable version 1 header.
    V1,
    /// The binary version 2 header.
    V2,
}

/// A load balancer's web application firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waf {
    /// Off, detect or block.
    pub mode: WafMode,
    /// The Core Rule Set's paranoia level, 1..=4.
    pub paranoia_level: u8,
    /// Rule ids disabled, sorted and unique.
    pub exclusions: Vec<u32>,
    /// Whether requests pass when the WAF service is down or slow.
    pub fail_open: bool,
    /// What `block` does with a body past the inspection limits.
    pub oversize_body: OversizeBody,
}

/// What the WAF does, in `block`, with a request body past its inspection
/// limits (see docs/load-balancer-format.md for the limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OversizeBody {
    /// Refuse it with 413: nothing can hide past the limit (the default).
    #[default]
    Refuse,
    /// Inspect up to the limits and pass the rest uninspected.
    InspectStart,
}

/// What the WAF does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WafMode {
    /// Nothing: requests are not sent to the service.
    Off,
    /// Matches are logged and counted; every request passes.
    Detect,
    /// Requests the rule set refuses get 403.
    Block,
}

/// Limits on what clients may send; each part is off when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests per second per client IP, with its bucket (http/https only).
    pub requests: Option<RequestRate>,
    /// New connections per second on the listener, all clients together.
    pub connections_per_second: Option<u32>,
}

/// A token bucket per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestRate {
    /// Tokens added per second.
    pub per_second: u32,
    /// The bucket's size: how many a client may start at once.
    pub burst: u32,
}

/// An access list over the client's own address (never X-Forwarded-For).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Access {
    /// When not empty, only clients in these networks get in.
    pub allow: Vec<crate::IpNet>,
    /// Clients in these networks never get in; checked before `allow`.
    pub deny: Vec<crate::IpNet>,
}

impl LoadBalancer {
    /// The default pool first, then the others in input order.
    pub fn all_pools(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.default_pool).chain(&self.pools)
    }
    /// The pool with id `id`, if there is one.
    pub fn pool(&self, id: &str) -> Option<&Pool> {
        self.all_pools().find(|p| p.id == id)
    }
    /// Whether the default pool has no backend that may receive traffic, and
    /// routes exist: a request that matches no route then gets 404, not 503.
    pub fn unrouted_is_not_found(&self) -> bool {
        !self.routes.is_empty() && self.default_pool.enabled_backends().next().is_none()
    }
}

/// Id of the pool the top-level `algorithm`, `backends`, `health_check`,
/// `sticky_sessions` and `slow_start` describe.
pub const DEFAULT_POOL: &str = "default";

/// A set of backends with one algorithm and one health check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pool {
    /// `[A-Za-z0-9_-]{1,64}`, unique in the load balancer.
    pub id: String,
    /// How requests are spread over the backends.
    pub algorithm: Algorithm,
    /// Every backend, enabled or not, in input order. Ids are unique across
    /// every pool of the load balancer.
    pub backends: Vec<Backend>,
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheck>,
    /// Cookie-based session affinity (http and https only).
    pub sticky_sessions: Option<StickySessions>,
    /// Seconds a newly added backend takes to reach its full share; only
    /// with round robin and least request.
    pub slow_start: Option<u32>,
    /// Backends the document no longer serves whose deregistration delay
    /// has not ended: they take no new connections. Validation leaves this
    /// empty; only [`crate::drain::overlay`] fills it.
    pub draining: Vec<Draining>,
}

/// A backend on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Draining {
    /// The backend as it was last served.
    pub backend: Backend,
    /// When its connections are closed, in milliseconds since the Unix epoch.
    pub until_ms: u64,
}

impl Pool {
    /// The backends that may receive traffic.
    pub fn enabled_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.enabled)
    }
}

/// Session affinity by cookie: a client that carries the cookie returns to
/// the backend it names while that backend is enabled and healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StickySessions {
    /// The cookie's name: an HTTP token, 1..=64 bytes.
    pub cookie_name: String,
    /// Cookie lifetime in seconds; 0 makes it a session cookie.
    pub ttl: u32,
}

/// One routing rule: what it matches, and what a matching request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Route {
    /// `[A-Za-z0-9_-]{1,64}`, unique in the load balancer.
    pub id: String,
    /// Lowercased host names, exact or `*.suffix`; empty matches any host.
    pub hosts: Vec<String>,
    /// How the path must match; `None` matches every path.
    pub path: Option<PathMatch>,
    /// Header conditions, all of which must hold.
    pub headers: Vec<HeaderMatch>,
    /// Upper-case methods, one of which must be the request's; empty matches any.
    pub methods: Vec<String>,
    /// What a matching request gets.
    pub action: RouteAction,
    /// A per-client request limit of this route's own, replacing the load
    /// balancer's for requests it matches.
    pub rate_limit: Option<RequestRate>,
    /// An access list of this route's own, applied on top of the load
    /// balancer's (a client must pass both).
    pub access: Option<Access>,
}

/// How a route matches the request path (the query is not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The whole path matches this RE2 expression.
    Regex(String),
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderMatch {
    /// The lowercased header name.
    pub name: String,
    /// What its value must be.
    pub value: HeaderValueMatch,
    /// Match when the condition does not hold.
    pub invert: bool,
}

/// How a header value must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    /// Exactly this value.
    Exact(String),
    /// A value starting with this.
    Prefix(String),
    /// A value the RE2 expression matches whole.
    Regex(String),
    /// Any value: the header is present.
    Present,
}

/// What a matching request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forwarded to one of these pools, chosen by relative weight.
    Forward(Vec<WeightedPool>),
    /// A redirect.
    Redirect(Redirect),
    /// A fixed response from the load balancer itself.
    Respond(Respond),
}

/// A pool and its share of a forward.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WeightedPool {
    /// The id of a pool of this load balancer.
    pub pool: String,
    /// Relative weight, 1..=[`limits::MAX_WEIGHT`].
    pub weight: u32,
}

/// A redirect; fields left `None` keep the request's own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redirect {
    /// The new scheme.
    pub scheme: Option<Scheme>,
    /// The new host name.
    pub host: Option<String>,
    /// The new path, starting with `/`, without query or fragment: the
    /// request's query is kept.
    pub path: Option<String>,
    /// The new port.
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A URL scheme a redirect may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Respond {
    /// 200..=599.
    pub status: u16,
    /// The body, at most [`limits::MAX_RESPONSE_BODY`] bytes.
    pub body: String,
}

/// Listener protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// Plain HTTP/1.1 and h2c.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS, terminated here.
    Https,
    /// Opaque TCP.
    Tcp,
    /// TLS that is not terminated here: the client's server name (SNI)
    /// chooses the pool, and the bytes pass through unchanged.
    TlsPassthrough,
    /// UDP datagrams, each client address and port a session held to one
    /// backend.
    Udp,
}

impl Protocol {
    /// The name the document uses.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::TlsPassthrough => "tls_passthrough",
            Protocol::Udp => "udp",
        }
    }
    /// Whether requests are seen (and routed, limited, inspected) one by one.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
    /// Whether routes may choose among pools: by request, or by server name.
    pub fn has_routes(self) -> bool {
        self.is_http() || self == Protocol::TlsPassthrough
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    /// Weighted round robin.
    RoundRobin,
    /// Fewest active requests (power of two choices).
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on the client's source IP.
    RingHash,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backend {
    /// `[A-Za-z0-9_-]{1,64}`, unique within the load balancer.
    pub id: String,
    /// Where the backend is.
    pub address: Address,
    /// Backend port, 1-65535.
    pub port: u16,
    /// Relative weight, 1..=[`limits::MAX_WEIGHT`].
    pub weight: u32,
    /// A disabled backend is kept in the model but gets no traffic.
    pub enabled: bool,
}

/// A backend address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    /// A literal IPv4 or IPv6 address (never unspecified or multicast).
    Ip(IpAddr),
    /// An RFC 1123 host name, lowercased, without a trailing dot.
    Hostname(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Hostname(h) => f.write_str(h),
        }
    }
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// What a check sends.
    pub kind: HealthCheckKind,
    /// Milliseconds between checks, [`limits::MIN_HC_MS`]..=[`limits::MAX_HC_INTERVAL`] s.
    pub interval_ms: u32,
    /// Milliseconds a check may take; always smaller than `interval_ms`.
    pub timeout_ms: u32,
    /// Milliseconds between checks of a backend marked unhealthy, when it
    /// differs from `interval_ms` (HAProxy's `fastinter`).
    pub unhealthy_interval_ms: Option<u32>,
    /// Passes needed to mark a backend healthy.
    pub healthy_threshold: u32,
    /// Failures needed to mark a backend unhealthy.
    pub unhealthy_threshold: u32,
    /// The port checks go to, when not the backend's own (a UDP service's
    /// TCP or HTTP status port).
    pub port: Option<u16>,
}

/// The kind of health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP request in clear text.
    Http(HttpCheck),
    /// An HTTP request over TLS (the backend's certificate is not verified).
    Https(HttpCheck),
}

/// The HTTP part of an http or https check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpCheck {
    /// Request path, starting with `/`.
    pub path: String,
    /// Accepted status codes, sorted and unique, each in 100..=599.
    pub expected_status: Vec<u16>,
    /// The Host header to send, if the document set one.
    pub host: Option<String>,
    /// Other headers to send, by lowercased name.
    pub headers: BTreeMap<String, String>,
}

/// TLS protocol versions a listener may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// TLS termination settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tls {
    /// Absolute path of the PEM certificate chain. Empty for an ACME
    /// certificate not issued yet (see [`Tls::awaits_certificate`]).
    pub certificate_path: String,
    /// Absolute path of the PEM private key; empty like `certificate_path`.
    pub private_key_path: String,
    /// Where the certificate comes from when the agent obtains it itself
    /// (`tls_config.acme`); the two paths above then point into its store
    /// once one was issued.
    pub acme: Option<Acme>,
    /// Absolute path of a PEM CA bundle; when set, clients must present a certificate it signed.
    pub ca_cert_path: Option<String>,
    /// Lowest accepted version.
    pub min_version: TlsVersion,
    /// Highest accepted version; `None` lets Envoy pick (currently TLS 1.3).
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites, in preference order.
    pub cipher_suites: Vec<String>,
    /// ALPN protocols, in preference order.
    pub alpn: Vec<String>,
    /// More certificates, each served to clients whose SNI it names; the
    /// default one above serves everything else.
    pub certificates: Vec<SniCertificate>,
}

impl Tls {
    /// Whether this is an ACME certificate that was not issued yet: the
    /// https listener waits for it.
    pub fn awaits_certificate(&self) -> bool {
        self.acme.is_some() && self.certificate_path.is_empty()
    }
}

/// An ACME (RFC 8555) certificate the agent obtains and renews itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Acme {
    /// Lowercased DNS names, unique, no wildcard (HTTP-01 cannot prove one);
    /// the first is the certificate's subject.
    pub domains: Vec<String>,
    /// Contact address given to the ACME server, if any.
    pub email: Option<String>,
    /// The directory URL (https).
    pub directory_url: String,
}

impl Acme {
    /// An ACME source; for tests and the agent's overlay.
    pub fn new(domains: Vec<String>, email: Option<String>, directory_url: String) -> Acme {
        Acme {
            domains,
            email,
            directory_url,
        }
    }
}

/// Let's Encrypt's production directory: what `directory_url` defaults to.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: allowed like production, for trials.
pub const STAGING_ACME_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// A certificate chosen by the client's SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SniCertificate {
    /// Lowercased names, exact or `*.suffix`, unique across the listener.
    pub server_names: Vec<String>,
    /// Absolute path of the PEM certificate chain.
    pub certificate_path: String,
    /// Absolute path of the PEM private key.
    pub private_key_path: String,
}

/// Timeouts in seconds, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Upstream connect timeout, at least 1.
    pub connect: u32,
    /// Idle connection timeout; `None` means disabled.
    pub idle: Option<u32>,
    /// Whole-request timeout (HTTP only); `None` means disabled.
    pub request: Option<u32>,
}

/// The TLS 1.2 cipher suites used when the document names none: ECDHE key
/// exchange and AEAD ciphers only, ECDSA first because its handshakes are cheaper.
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
];

/// Every TLS 1.2 cipher suite name Envoy's BoringSSL accepts that we allow.
/// CBC suites are allowed for legacy clients but never a default.
pub const KNOWN_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
];

/// ALPN protocols offered when the document names none.
pub const DEFAULT_ALPN: &[&str] = &["h2", "http/1.1"];
