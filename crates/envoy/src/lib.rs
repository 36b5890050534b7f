//! Translates the validated load-balancer model into Envoy v3 resources.
//!
//! Everything here is pure and deterministic: the same [`Config`] and options
//! always give byte-identical output, so golden files and content hashes are
//! stable. The envoy-types prost structs are the one typed model of Envoy's
//! schema; nothing here writes Envoy config as text templates.

mod address;
mod bootstrap;
mod cluster;
mod files;
mod listener;
pub mod names;
mod pb;
mod protect;
mod quic;
mod render;
mod resources;
mod routes;
mod stats;
mod tls;
mod udp;
mod waf;

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use vpsie_lb_model::{Config, LoadBalancer};

pub use address::LocalAddress;
pub use bootstrap::{
    ADMIN_SOCKET_MODE, BootstrapOptions, XDS_RETRY_BASE, XDS_RETRY_MAX, ads_bootstrap, bootstrap,
    preflight_bootstrap,
};
pub use files::{FileParts, assemble_files, render_files, render_parts};
pub use listener::DEFAULT_HOST_FOR_HTTP_10;
pub use names::{FileKind, FilesLayout, XdsLayout};
pub use protect::DEFAULT_TRACKED_CLIENTS;
pub use render::{
    RenderError, RenderedFile, file_from_json, prune_descriptor_set, to_json, to_yaml, write_json,
};
pub use resources::{
    Resource, ResourceSet, ResourceType, Step, make_before_break, render_resource_set, resource_set,
};
pub use stats::{STATS_NAME, STATS_PATHS};
pub use waf::{
    DEFAULT_WAF_FILTER, IN_ENVOY_METADATA, WAF_BODY_BYTES, WAF_TIMEOUT, WafEngine,
    in_envoy_settings, waf_policies,
};

/// Default cap on concurrent downstream connections across all listeners.
pub const DEFAULT_GLOBAL_MAX_CONNECTIONS: u64 = 50_000;

/// Where the WAF service listens by default: in its own runtime directory,
/// which only its user and Envoy (a member of its group) can enter.
pub const DEFAULT_WAF_SOCKET: &str = "/run/vpsie-lb-waf/waf.sock";

/// Where the agent answers ACME HTTP-01 challenges by default: in its own
/// runtime directory, which Envoy (a member of its group) can enter.
pub const DEFAULT_ACME_SOCKET: &str = "/run/vpsie-lb/acme.sock";

/// The path prefix of ACME HTTP-01 challenges (RFC 8555, section 8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the agent's responder is asked for a challenge that came to load
/// balancer `lb_id`'s port: the challenge prefix, the id, then the token.
/// Envoy rewrites the CA's path to this, so the responder knows whose
/// listener the request came through; a client cannot forge it (a path
/// that already names an id gets a second one).
pub fn acme_challenge_path(lb_id: &str) -> String {
    format!("{ACME_CHALLENGE_PREFIX}{lb_id}/")
}

/// Where the translated resources go, and so how they reach Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Dynamic files under this layout: clusters take endpoints from EDS
    /// files and listeners take certificates from SDS files.
    Files(FilesLayout),
    /// Everything inline, for a bootstrap's `static_resources`. Used for the
    /// `envoy --mode validate` pre-flight, which ignores dynamic files.
    Static,
    /// Over the agent's aggregated xDS stream: clusters take endpoints, and
    /// listeners certificates, from the same stream (`ads: {}`).
    Ads,
}

/// The old name of [`Target`], kept for callers written before the rename.
pub type Delivery = Target;

/// Default share of successful requests written to the access log, in
/// percent. Formatting and writing a JSON line for every request cost Envoy
/// about 7 % of its throughput on small requests (BENCHMARKS.md, docs/benchmarks.md);
/// failures, which are what an operator searches the log for, are always written.
pub const DEFAULT_ACCESS_LOG_SAMPLE_PERCENT: u32 = 1;

/// Inputs to [`translate`] that do not come from the load-balancer document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Address every listener binds to.
    pub listen_address: IpAddr,
    /// Where Envoy writes its JSON access log.
    pub access_log_path: String,
    /// Percent (0–100) of successful requests (and TCP connections) logged;
    /// failures (status ≥ 400, or any response flag) are always logged.
    pub access_log_sample_percent: u32,
    /// The global downstream connection cap; also the default circuit-breaker size.
    pub global_max_connections: u64,
    /// How the resources reach Envoy.
    pub delivery: Target,
    /// Client buckets Envoy keeps per rate limit (least recently seen forgotten first).
    pub rate_limit_tracked_clients: u32,
    /// Where load balancers with a WAF have their requests inspected.
    pub waf_engine: WafEngine,
}

impl TranslateOptions {
    /// Production defaults: listen on all IPv4 addresses, log to stdout.
    pub fn new(delivery: Target) -> Self {
        Self {
            listen_address: IpAddr::from([0, 0, 0, 0]),
            access_log_path: "/dev/stdout".into(),
            access_log_sample_percent: DEFAULT_ACCESS_LOG_SAMPLE_PERCENT,
            global_max_connections: DEFAULT_GLOBAL_MAX_CONNECTIONS,
            delivery,
            rate_limit_tracked_clients: DEFAULT_TRACKED_CLIENTS,
            waf_engine: WafEngine::Service,
        }
    }
}

/// Envoy resources for a whole config, each list sorted by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnvoyResources {
    /// One listener per load balancer, two with `redirect_http_port`.
    pub listeners: Vec<Listener>,
    /// Route configurations of HTTP listeners (empty with
    /// [`Target::Static`], whose listeners carry them inline).
    pub routes: Vec<RouteConfiguration>,
    /// One cluster per pool.
    pub clusters: Vec<Cluster>,
    /// Endpoints of the EDS clusters (empty with [`Target::Static`]).
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Certificates and client CAs of https load balancers.
    pub secrets: Vec<Secret>,
}

/// Translates a validated config. Infallible: validation already ruled out
/// every input that could not be expressed.
pub fn translate(config: &Config, opts: &TranslateOptions) -> EnvoyResources {
    let mut out = EnvoyResources::default();
    for lb in &config.load_balancers {
        let one = translate_lb(lb, opts);
        out.listeners.extend(one.listeners);
        out.routes.extend(one.routes);
        out.clusters.extend(one.clusters);
        out.endpoints.extend(one.endpoints);
        out.secrets.extend(one.secrets);
    }
    out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The load balancer's listeners: its own, and the redirect listener on
/// `redirect_http_port` when it has one, and its QUIC or UDP listener.
/// Chosen here, above the builders, because the QUIC and UDP builders
/// reuse the TCP listener's parts.
fn listeners(lb: &LoadBalancer, opts: &TranslateOptions) -> Vec<Listener> {
    if lb.protocol == vpsie_lb_model::Protocol::Udp {
        return vec![udp::listener(lb, opts)];
    }
    let waiting = awaits_certificate(lb);
    let mut out: Vec<Listener> = (!waiting)
        .then(|| listener::main_listener(lb, opts))
        .into_iter()
        .collect();
    if let Some(port) = lb.redirect_http_port {
        out.push(listener::redirect_listener(lb, port, opts));
    }
    if lb.http3 && !waiting {
        out.push(quic::listener(lb, opts));
    }
    out
}

/// The resources of one load balancer: what a per-load-balancer cache keeps,
/// so a change to one of 1,000 translates one.
pub fn translate_lb(lb: &LoadBalancer, opts: &TranslateOptions) -> EnvoyResources {
    let mut out = EnvoyResources {
        listeners: listeners(lb, opts),
        secrets: tls::secrets(lb),
        ..Default::default()
    };
    if lb.protocol.is_http() && !awaits_certificate(lb) && opts.delivery != Target::Static {
        out.routes.push(routes::route_config(lb, opts));
    }
    for pool in lb.all_pools() {
        let (cluster, endpoints) = cluster::cluster(lb, pool, opts);
        out.clusters.push(cluster);
        out.endpoints.extend(endpoints);
    }
    out
}

/// Whether `lb` waits for its ACME certificate: until it comes, its https
/// listener (and everything only that listener uses) is left out.
pub(crate) fn awaits_certificate(lb: &LoadBalancer) -> bool {
    lb.tls.as_ref().is_some_and(|t| t.awaits_certificate())
}

/// Where Envoy's admin API listens by default: a Unix socket, which no
/// proxied connection can reach.
pub fn default_admin_address() -> LocalAddress {
    LocalAddress::Unix("/run/envoy/admin.sock".into())
}

/// Where the read-only metrics listener listens by default (the port
/// operators scraped Envoy's admin on).
pub fn default_stats_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
