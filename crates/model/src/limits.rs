//! Limits and defaults the validator applies, in one place so the docs can cite them.

/// Weight given to a backend whose weight is absent or 0.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted; 1000 gives 0.1 % steps, and keeps the sum of
/// 10,000 backends far below Envoy's u32 limit per locality.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest `max_connections` accepted.
pub const MAX_CONNECTIONS: u32 = 10_000_000;
/// Default upstream connect timeout, seconds.
pub const DEFAULT_CONNECT_TIMEOUT: u32 = 5;
/// Largest connect timeout, seconds.
pub const MAX_CONNECT_TIMEOUT: u32 = 300;
/// Default idle timeout, seconds: Envoy's own default, long so clients reuse connections.
pub const DEFAULT_IDLE_TIMEOUT: u32 = 3600;
/// Default idle timeout of a UDP session, seconds (Envoy's udp_proxy
/// default): a session holds a socket, and UDP never says it ended.
pub const DEFAULT_UDP_IDLE_TIMEOUT: u32 = 60;
/// A udp client may hold this fraction (1/N) of the listener's sessions
/// unless `per_client.max_sessions` says otherwise: a few clients can still
/// fill it, but one alone never can.
pub const DEFAULT_UDP_CLIENT_SHARE: u32 = 4;
/// The sessions a udp listener without `max_connections` may hold: Envoy's
/// global connection cap (50,000), whose share sets the per-client default.
pub const UDP_SESSIONS_WITHOUT_CAP: u32 = 50_000;
/// Largest `per_client.new_sessions_per_second` (and `burst`).
pub const MAX_NEW_SESSIONS_PER_SECOND: u32 = 1_000_000;
/// Default per-request timeout, seconds (Envoy's 15 s cuts off ordinary uploads).
pub const DEFAULT_REQUEST_TIMEOUT: u32 = 60;
/// Largest idle or request timeout, seconds (one day).
pub const MAX_TIMEOUT: u32 = 86_400;
/// Largest health-check interval, seconds.
pub const MAX_HC_INTERVAL: u32 = 3600;
/// Health-check interval when the document names none, seconds.
pub const DEFAULT_HC_INTERVAL: u32 = 10;
/// Health-check timeout when the document names none, seconds (shortened
/// to `interval - 1` when the interval is shorter, and to half the
/// interval below 2 s).
pub const DEFAULT_HC_TIMEOUT: u32 = 5;
/// Passes that mark a backend healthy when the document names none.
pub const DEFAULT_HC_HEALTHY: u32 = 2;
/// Failures that mark a backend unhealthy when the document names none.
pub const DEFAULT_HC_UNHEALTHY: u32 = 3;
/// Most backends in one load balancer; the benchmarks measure this size.
pub const MAX_BACKENDS: usize = 10_000;
/// Most load balancers in one document, and so on one agent; the
/// benchmarks measure this size.
pub const MAX_LOAD_BALANCERS: usize = 1_000;
/// Most errors (and, separately, warnings) listed for one document; a
/// last line counts the rest.
pub const MAX_PROBLEMS: usize = 100;
/// Shortest health-check interval or timeout, milliseconds: faster
/// checks load the backends more than they tell.
pub const MIN_HC_MS: u32 = 100;
/// Largest health-check threshold.
pub const MAX_HC_THRESHOLD: u32 = 100;
/// Longest health-check path, bytes.
pub const MAX_HC_PATH: usize = 1024;
/// Most pools in one load balancer, the default pool included.
pub const MAX_POOLS: usize = 50;
/// Most routes in one load balancer (AWS ALB allows 100 rules a listener).
pub const MAX_ROUTES: usize = 100;
/// Most host names in one route.
pub const MAX_ROUTE_HOSTS: usize = 50;
/// Most header conditions in one route.
pub const MAX_HEADER_MATCHES: usize = 16;
/// Most pools one route forwards to.
pub const MAX_FORWARD_POOLS: usize = 10;
/// Longest regular expression, bytes. With the repetition cap below it
/// keeps every expression well inside Envoy's RE2 program-size limit.
pub const MAX_REGEX: usize = 256;
/// Largest counted repetition (`x{n}`) in a regular expression.
pub const MAX_REGEX_REPEAT: u32 = 20;
/// Largest estimated size of a compiled regular expression; the
/// bootstrap lets Envoy's RE2 go twenty times further.
pub const MAX_REGEX_COST: usize = 5_000;
/// Longest path or prefix a route matches or redirects to, bytes.
pub const MAX_ROUTE_PATH: usize = 1024;
/// Largest fixed-response body, bytes.
pub const MAX_RESPONSE_BODY: usize = 4096;
/// Most extra certificates on one listener (AWS ALB's default is 25).
pub const MAX_CERTIFICATES: usize = 25;
/// Largest request rate per client, per second.
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;
/// Largest new-connection rate of a listener, per second.
pub const MAX_CONNECTIONS_PER_SECOND: u32 = 1_000_000;
/// Largest rule id a WAF exclusion may name.
pub const MAX_WAF_RULE_ID: u32 = 9_999_999;
/// Rule ids the WAF service adds itself (the paranoia level, HTTP/3, the
/// body processors, unparsable and oversize bodies): an exclusion naming
/// one would quietly undo the load balancer's own settings.
pub const RESERVED_WAF_RULE_IDS: &[u32] =
    &[10_001, 10_002, 10_003, 10_004, 10_005, 10_006, 900_000];
/// Most networks in one allow or deny list.
pub const MAX_ACCESS_NETWORKS: usize = 1_000;
/// Most server names on one extra certificate.
pub const MAX_SERVER_NAMES: usize = 100;
/// Names one ACME certificate may cover: Let's Encrypt's limit per order.
pub const MAX_ACME_DOMAINS: usize = 100;
/// Longest slow start, seconds.
pub const MAX_SLOW_START: u32 = 3600;
/// Longest sticky-session cookie lifetime, seconds (30 days).
pub const MAX_STICKY_TTL: u32 = 30 * 86_400;
/// Longest deregistration delay, seconds (AWS allows one hour too).
pub const MAX_DEREGISTRATION_DELAY: u32 = 3600;

/// Most Envoy routes one load balancer translates to, each copy counted:
/// a route without hosts is repeated in the virtual host of every host
/// name the routes name. The largest sensible configuration we know of is
/// AWS ALB's maximum (100 rules, 5 host names each: 500 host names) with a
/// tenth of the routes host-less: 500 × 10 + 500 = 5,500 routes; Envoy
/// holds a route in a few kilobytes, so this keeps one load balancer's
/// share of Envoy near 50 MB.
pub const MAX_TRANSLATED_ROUTES: usize = 10_000;
/// Most regular expressions one load balancer translates to, each copy
/// counted (a path regex, a header regex, and one for a route's methods).
/// Envoy compiles every copy, and RE2 gives each its own program and cache.
pub const MAX_TRANSLATED_REGEXES: usize = 2_000;
/// Largest estimated route configuration of one load balancer, bytes:
/// what Envoy parses, and what the agent holds two or three times over
/// (model, resources, rendered text).
pub const MAX_TRANSLATED_BYTES: usize = 4 << 20;
/// Most Envoy routes all the load balancers of one document translate to
/// together: the agent's share of memory for them stays far below its
/// unit's 1 GiB (measured in `live_isolation`).
pub const MAX_DOCUMENT_TRANSLATED_ROUTES: usize = 100_000;
/// Most regular expressions of one document, together.
pub const MAX_DOCUMENT_TRANSLATED_REGEXES: usize = 20_000;
/// Largest estimated route configuration of one document, together, bytes.
pub const MAX_DOCUMENT_TRANSLATED_BYTES: usize = 32 << 20;
