//! One cluster per pool, with its endpoints and health checks.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, UpstreamConnectionOptions, circuit_breakers,
    cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, HealthCheck, HealthStatus, Http1ProtocolOptions,
    HttpProtocolOptions as CommonHttpOptions, ProxyProtocolConfig, RoutingPriority, TcpKeepalive,
    TransportSocket, header_value_option, health_check, proxy_protocol_config, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, endpoint, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::{Int64Range, Percent};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use vpsie_lb_model::{
    Address, Algorithm, Backend, HealthCheckKind, HttpCheck, LoadBalancer, Pool, ProxyProtocol,
};

use crate::listener::BUFFER_LIMIT_BYTES;
use crate::pb::{any, millis, secs, u32v};
use crate::{Target, TranslateOptions, names, tls};

/// Seconds Envoy keeps an idle upstream HTTP connection; shorter than common
/// backend keep-alive timeouts (nginx: 75 s) so Envoy never reuses a
/// connection the backend is about to close.
const UPSTREAM_IDLE_TIMEOUT: u32 = 60;

/// The cluster, plus its EDS endpoints when endpoints are delivered by EDS.
///
/// Load balancers whose backends are all IP literals use EDS, so a backend
/// change rewrites only the endpoints file and never rebuilds the cluster or
/// its connection pools. Envoy's EDS takes IPs only, so a load balancer with
/// any host name uses STRICT_DNS instead: Envoy resolves every name and keeps
/// all of its addresses, re-resolving as the TTL says.
pub(crate) fn cluster(
    lb: &LoadBalancer,
    pool: &Pool,
    opts: &TranslateOptions,
) -> (Cluster, Option<ClusterLoadAssignment>) {
    let name = names::pool_cluster(&lb.id, &pool.id);
    let assignment = load_assignment(&name, pool);
    let has_hostname = pool
        .enabled_backends()
        .any(|b| matches!(b.address, Address::Hostname(_)));
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: secs(lb.timeouts.connect),
        lb_policy: match pool.algorithm {
            Algorithm::RoundRobin => cluster::LbPolicy::RoundRobin,
            Algorithm::LeastRequest => cluster::LbPolicy::LeastRequest,
            Algorithm::Random => cluster::LbPolicy::Random,
            Algorithm::RingHash => cluster::LbPolicy::RingHash,
        } as i32,
        per_connection_buffer_limit_bytes: u32v(BUFFER_LIMIT_BYTES),
        circuit_breakers: Some(circuit_breakers_for(lb, opts)),
        outlier_detection: Some(outlier_detection()),
        health_checks: pool.health_check.iter().map(health_check).collect(),
        // "Removed" must mean removed: without this, a host dropped from EDS
        // keeps getting traffic for as long as it passes health checks.
        ignore_health_on_host_removal: true,
        common_lb_config: Some(cluster::CommonLbConfig {
            // Fail open only when (almost) every backend is unhealthy, like
            // the managed LBs, instead of Envoy's 50 %, which sends traffic to
            // known-bad backends as soon as half a small pool is down.
            healthy_panic_threshold: Some(Percent { value: 1.0 }),
            ..Default::default()
        }),
        upstream_connection_options: Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive::default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.transport_socket = lb.proxy_protocol.map(|v| proxy_protocol(v, raw_buffer()));
    if lb.protocol.is_http() {
        c.typed_extension_protocol_options = HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&upstream_http_options()),
        )]);
    }
    c.lb_config = pool.slow_start.and_then(|s| slow_start(pool.algorithm, s));
    if let Some(HealthCheckKind::Https(_)) = pool.health_check.as_ref().map(|h| &h.kind) {
        c.transport_socket_matches = vec![cluster::TransportSocketMatch {
            name: "health_check_tls".into(),
            r#match: Some(hc_tls_match()),
            transport_socket: Some(health_check_tls(lb.proxy_protocol)),
        }];
    }

    let (kind, eds) = match &opts.delivery {
        _ if has_hostname => {
            c.dns_lookup_family = cluster::DnsLookupFamily::V4Preferred as i32;
            c.load_assignment = Some(assignment);
            (cluster::DiscoveryType::StrictDns, None)
        }
        Target::Static => {
            c.load_assignment = Some(assignment);
            (cluster::DiscoveryType::Static, None)
        }
        Target::Files(layout) => {
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: crate::pb::file_source(&layout.eds_file(&name), &layout.eds_dir(&name)),
                service_name: String::new(),
            });
            (cluster::DiscoveryType::Eds, Some(assignment))
        }
        Target::Ads => {
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: crate::pb::ads_source(),
                service_name: String::new(),
            });
            (cluster::DiscoveryType::Eds, Some(assignment))
        }
    };
    c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
    (c, eds)
}

/// The socket https health checks use: TLS, inside the PROXY protocol when
/// the backends expect it, since such a backend refuses a connection that
/// does not start with the header.
fn health_check_tls(proxy: Option<ProxyProtocol>) -> TransportSocket {
    let tls = TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &tls::health_check_context(),
        ))),
    };
    match proxy {
        Some(v) => proxy_protocol(v, tls),
        None => tls,
    }
}

/// `inner` with a PROXY protocol header before its first byte. Envoy fills
/// it from the downstream connection; a connection with none behind it (a
/// health check) gets the header's LOCAL form (v2) or `PROXY UNKNOWN` (v1),
/// which a backend that expects the header accepts and reads as "no client".
fn proxy_protocol(version: ProxyProtocol, inner: TransportSocket) -> TransportSocket {
    let version = match version {
        ProxyProtocol::V1 => proxy_protocol_config::Version::V1,
        ProxyProtocol::V2 => proxy_protocol_config::Version::V2,
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &ProxyProtocolUpstreamTransport {
                config: Some(ProxyProtocolConfig {
                    version: version as i32,
                    ..Default::default()
                }),
                transport_socket: Some(inner),
                ..Default::default()
            },
        ))),
    }
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer::default(),
        ))),
    }
}

/// A new backend's share grows linearly (aggression 1) from 10 % of its
/// weight over `window` seconds; validation allows it only where Envoy
/// implements it.
fn slow_start(algorithm: Algorithm, window: u32) -> Option<cluster::LbConfig> {
    let config = Some(cluster::SlowStartConfig {
        slow_start_window: secs(window),
        ..Default::default()
    });
    match algorithm {
        Algorithm::RoundRobin => Some(cluster::LbConfig::RoundRobinLbConfig(
            cluster::RoundRobinLbConfig {
                slow_start_config: config,
            },
        )),
        Algorithm::LeastRequest => Some(cluster::LbConfig::LeastRequestLbConfig(
            cluster::LeastRequestLbConfig {
                slow_start_config: config,
                ..Default::default()
            },
        )),
        Algorithm::Random | Algorithm::RingHash => None,
    }
}

/// The enabled backends as one locality, then the draining ones, which
/// Envoy sends no new connection or request and whose open ones it keeps.
/// An empty list is valid: HTTP answers 503.
fn load_assignment(cluster_name: &str, pool: &Pool) -> ClusterLoadAssignment {
    // Checks go to the backend's own port unless the pool names another.
    let health_check_config =
        pool.health_check
            .as_ref()
            .and_then(|h| h.port)
            .map(|port| endpoint::HealthCheckConfig {
                port_value: u32::from(port),
                ..Default::default()
            });
    let endpoint = |b: &Backend, health: HealthStatus| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: crate::pb::socket(&b.address.to_string(), b.port),
            health_check_config: health_check_config.clone(),
            ..Default::default()
        })),
        load_balancing_weight: u32v(b.weight),
        health_status: health as i32,
        ..Default::default()
    };
    let lb_endpoints: Vec<LbEndpoint> = pool
        .enabled_backends()
        .map(|b| endpoint(b, HealthStatus::Unknown))
        .chain(
            pool.draining
                .iter()
                .map(|d| endpoint(&d.backend, HealthStatus::Draining)),
        )
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: if lb_endpoints.is_empty() {
            vec![]
        } else {
            vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

/// Circuit breakers sized from `max_connections`, or from the global
/// downstream cap, so the breakers never trip before the LB's own limits do.
fn circuit_breakers_for(lb: &LoadBalancer, opts: &TranslateOptions) -> CircuitBreakers {
    let n = lb
        .max_connections
        .unwrap_or_else(|| u32::try_from(opts.global_max_connections).unwrap_or(u32::MAX));
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: u32v(n),
            max_pending_requests: u32v(n),
            max_requests: u32v(n),
            // A budget instead of a fixed count: retries may add 20 % load.
            retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent { value: 20.0 }),
                min_retry_concurrency: u32v(3),
                ..Default::default()
            }),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Passive health checking: eject a backend after 5 consecutive errors for
/// 30 s (growing with repeat ejections), never more than half of the pool.
fn outlier_detection() -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: u32v(5),
        consecutive_gateway_failure: u32v(5),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_time: secs(300),
        max_ejection_percent: u32v(50),
        ..Default::default()
    }
}

fn upstream_http_options() -> HttpProtocolOptions {
    HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: secs(UPSTREAM_IDLE_TIMEOUT),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    }
}

fn hc_tls_match() -> Struct {
    Struct {
        fields: HashMap::from([(
            names::HC_TLS_MATCH.to_owned(),
            Value {
                kind: Some(value::Kind::BoolValue(true)),
            },
        )]),
    }
}

fn health_check(hc: &vpsie_lb_model::HealthCheck) -> HealthCheck {
    let (checker, tls) = match &hc.kind {
        HealthCheckKind::Tcp => (
            // No payload: a completed connect is a pass.
            health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default()),
            false,
        ),
        HealthCheckKind::Http(h) => (http_checker(h), false),
        HealthCheckKind::Https(h) => (http_checker(h), true),
    };
    HealthCheck {
        timeout: millis(hc.timeout_ms),
        interval: millis(hc.interval_ms),
        unhealthy_interval: hc.unhealthy_interval_ms.and_then(millis),
        unhealthy_threshold: u32v(hc.unhealthy_threshold),
        healthy_threshold: u32v(hc.healthy_threshold),
        // Envoy checks idle clusters only every 60 s by default; an LB that
        // has had no traffic yet must still learn its backends' health.
        no_traffic_interval: millis(hc.interval_ms),
        no_traffic_healthy_interval: millis(hc.interval_ms),
        health_checker: Some(checker),
        transport_socket_match_criteria: tls.then(hc_tls_match),
        ..Default::default()
    }
}

fn http_checker(h: &HttpCheck) -> health_check::HealthChecker {
    health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
        host: h.host.clone().unwrap_or_default(),
        path: h.path.clone(),
        request_headers_to_add: h
            .headers
            .iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                }),
                append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                    as i32,
                ..Default::default()
            })
            .collect(),
        expected_statuses: status_ranges(&h.expected_status),
        ..Default::default()
    })
}

/// Sorted unique codes as half-open ranges, merging runs: [200, 201, 204] -> [200,202), [204,205).
fn status_ranges(codes: &[u16]) -> Vec<Int64Range> {
    let mut out: Vec<Int64Range> = Vec::new();
    for &c in codes {
        let c = i64::from(c);
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(Int64Range {
                start: c,
                end: c + 1,
            }),
        }
    }
    out
}
