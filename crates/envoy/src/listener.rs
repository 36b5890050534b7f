//! One listener per load balancer: HTTP connection manager or TCP proxy.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions, SubstitutionFormatString,
    TransportSocket, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::StatefulSession;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value};
use vpsie_lb_model::{Algorithm, DEFAULT_POOL, LoadBalancer, Protocol, RouteAction};

use crate::pb::{any, secs, u32v, u64v};
use crate::{Target, TranslateOptions, names, routes, tls};

/// Per-connection read/write buffer cap; Envoy's edge guidance, instead of the 1 MiB default.
pub(crate) const BUFFER_LIMIT_BYTES: u32 = 32 * 1024;

/// The Host an HTTP/1.0 request without one is given: `.invalid` is
/// reserved (RFC 6761), so no route's host matches it and the request goes
/// where host-less routes and the default pool are.
pub const DEFAULT_HOST_FOR_HTTP_10: &str = "http10.vpsie-lb.invalid";

/// The listener on the load balancer's own port.
pub(crate) fn main_listener(lb: &LoadBalancer, opts: &TranslateOptions) -> Listener {
    let name = names::lb(&lb.id);
    // On tcp a refused client is closed before it counts against the limit.
    let mut filters: Vec<Filter> = crate::protect::tcp_access(lb)
        .map(|rbac| typed_filter("envoy.filters.network.rbac", any(&rbac)))
        .into_iter()
        .collect();
    filters.extend(connection_limit(lb, &name));
    if lb.protocol == Protocol::TlsPassthrough {
        return passthrough_listener(lb, opts, filters);
    }
    filters.push(if lb.protocol.is_http() {
        typed_filter(
            "envoy.filters.network.http_connection_manager",
            any(&http_connection_manager(lb, opts)),
        )
    } else {
        let default = [(DEFAULT_POOL, 1)];
        typed_filter(
            "envoy.filters.network.tcp_proxy",
            any(&tcp_proxy(lb, &default, opts)),
        )
    });
    let tls_socket = |secret: String| {
        tls::downstream_context(lb, secret, opts).map(|ctx| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
        })
    };
    let filter_chains = certificate_chains(lb, &filters, tls_socket);
    let sni = filter_chains.len() > 1;
    Listener {
        name,
        address: crate::pb::listen_on(
            opts.listen_address,
            lb.port,
            envoy_types::pb::envoy::config::core::v3::socket_address::Protocol::Tcp,
        ),
        per_connection_buffer_limit_bytes: u32v(buffer_limit(lb)),
        listener_filters: listener_filters(lb, sni),
        filter_chains,
        ..Default::default()
    }
}

/// One filter chain per certificate chosen by SNI, then the default chain
/// that serves every other name and clients that send none; `socket` makes
/// each chain's transport socket from the name of its certificate's secret.
pub(crate) fn certificate_chains(
    lb: &LoadBalancer,
    filters: &[Filter],
    socket: impl Fn(String) -> Option<TransportSocket>,
) -> Vec<FilterChain> {
    let chain = |name: String, server_names: Vec<String>, secret: String| FilterChain {
        name,
        filter_chain_match: matching(server_names),
        filters: filters.to_vec(),
        transport_socket: socket(secret),
        ..Default::default()
    };
    let sni = lb.tls.iter().flat_map(|t| &t.certificates).enumerate();
    sni.map(|(i, c)| {
        chain(
            format!("sni-{}", i + 1),
            c.server_names.clone(),
            names::sni_secret(&lb.id, i + 1),
        )
    })
    .chain(std::iter::once(chain(
        "default".into(),
        vec![],
        names::cert_secret(&lb.id),
    )))
    .collect()
}

/// A chain's match on these server names; none matches every connection.
fn matching(server_names: Vec<String>) -> Option<FilterChainMatch> {
    (!server_names.is_empty()).then(|| FilterChainMatch {
        server_names,
        ..Default::default()
    })
}

/// The connection rate first, so a refused connection is closed unread;
/// then, when chains are chosen by server name, the TLS inspector that reads
/// it from the ClientHello.
fn listener_filters(lb: &LoadBalancer, sni: bool) -> Vec<ListenerFilter> {
    let mut out: Vec<ListenerFilter> = crate::protect::connection_rate(lb).into_iter().collect();
    if sni {
        out.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    out
}

/// TLS passed through untouched: one chain per route, taken by the server
/// names of the ClientHello, each proxying to the route's pools; the default
/// chain takes other names, and clients that send none, to the default pool.
fn passthrough_listener(
    lb: &LoadBalancer,
    opts: &TranslateOptions,
    front: Vec<Filter>,
) -> Listener {
    let chain = |name: String, server_names: Vec<String>, pools: &[(&str, u32)]| {
        let mut filters = front.clone();
        filters.push(typed_filter(
            "envoy.filters.network.tcp_proxy",
            any(&tcp_proxy(lb, pools, opts)),
        ));
        FilterChain {
            name,
            filter_chain_match: matching(server_names),
            filters,
            ..Default::default()
        }
    };
    let mut filter_chains: Vec<FilterChain> = lb
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Forward(pools) => {
                let pools: Vec<(&str, u32)> =
                    pools.iter().map(|p| (p.pool.as_str(), p.weight)).collect();
                Some(chain(format!("route-{}", r.id), r.hosts.clone(), &pools))
            }
            // Validation allows only forwards here.
            RouteAction::Redirect(_) | RouteAction::Respond(_) => None,
        })
        .collect();
    filter_chains.push(chain("default".into(), vec![], &[(DEFAULT_POOL, 1)]));
    Listener {
        name: names::lb(&lb.id),
        address: crate::pb::listen_on(
            opts.listen_address,
            lb.port,
            envoy_types::pb::envoy::config::core::v3::socket_address::Protocol::Tcp,
        ),
        per_connection_buffer_limit_bytes: u32v(BUFFER_LIMIT_BYTES),
        listener_filters: listener_filters(lb, true),
        filter_chains,
        ..Default::default()
    }
}

/// The per-connection buffer: room for the body the WAF inspects, which
/// Envoy holds whole before it asks (a smaller buffer would answer 413).
fn buffer_limit(lb: &LoadBalancer) -> u32 {
    if lb.waf.is_some() {
        BUFFER_LIMIT_BYTES.max(crate::waf::WAF_BODY_BYTES + BUFFER_LIMIT_BYTES)
    } else {
        BUFFER_LIMIT_BYTES
    }
}

/// An HTTP/2 stream's receive window. Envoy buffers no more of a stream's
/// body than its window and a frame (measured: 413 at 81,920 bytes with a
/// 64 KiB window), so a load balancer with the WAF, whose ext_authz holds
/// up to `WAF_BODY_BYTES` before it asks, gets that and 256 KiB more:
/// without it every HTTP/2 upload past 80 KiB was refused and past 128 KiB
/// reset.
fn stream_window(lb: &LoadBalancer) -> u32 {
    if lb.waf.is_some() {
        crate::waf::WAF_BODY_BYTES + 256 * 1024
    } else {
        64 * 1024
    }
}

/// The connection_limit filter closes connections beyond `max_connections`
/// as soon as they are accepted; the listener itself has no such field.
/// Each filter counts its own connections; `stat_prefix` says whose.
pub(crate) fn connection_limit(lb: &LoadBalancer, stat_prefix: &str) -> Vec<Filter> {
    lb.max_connections
        .map(|max| {
            typed_filter(
                "envoy.filters.network.connection_limit",
                any(&ConnectionLimit {
                    stat_prefix: stat_prefix.to_owned(),
                    max_connections: u64v(u64::from(max)),
                    ..Default::default()
                }),
            )
        })
        .into_iter()
        .collect()
}

/// Plain HTTP on `port`, answering every request with a 301 to https.
pub(crate) fn redirect_listener(lb: &LoadBalancer, port: u16, opts: &TranslateOptions) -> Listener {
    let name = names::redirect_listener(&lb.id);
    let mut hcm = connection_manager(lb, &name, opts);
    // Fixed for the listener's life, so inline: a change of it is a change
    // of the listener anyway.
    hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(
        routes::redirect_config(lb, opts.rate_limit_tracked_clients),
    ));
    // The access list and rate limit hold on the redirect port too.
    let router = hcm.http_filters.len() - 1;
    hcm.http_filters
        .splice(router..router, crate::protect::http_filters(lb));
    let mut filters = connection_limit(lb, &names::lb(&lb.id));
    filters.push(typed_filter(
        "envoy.filters.network.http_connection_manager",
        any(&hcm),
    ));
    Listener {
        name,
        address: crate::pb::listen_on(
            opts.listen_address,
            port,
            envoy_types::pb::envoy::config::core::v3::socket_address::Protocol::Tcp,
        ),
        per_connection_buffer_limit_bytes: u32v(BUFFER_LIMIT_BYTES),
        filter_chains: vec![FilterChain {
            name: "default".into(),
            filters,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn typed_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

/// The main listener's connection manager: routes from RDS (inline for the
/// static pre-flight, which has no RDS), sticky sessions when a pool asks.
pub(crate) fn http_connection_manager(
    lb: &LoadBalancer,
    opts: &TranslateOptions,
) -> HttpConnectionManager {
    let name = names::lb(&lb.id);
    let mut hcm = connection_manager(lb, &name, opts);
    hcm.route_specifier = Some(match &opts.delivery {
        Target::Static => {
            http_connection_manager::RouteSpecifier::RouteConfig(routes::route_config(lb, opts))
        }
        Target::Files(layout) => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: crate::pb::file_source(&layout.rds_file(&name), &layout.rds_dir(&name)),
            route_config_name: name.clone(),
        }),
        Target::Ads => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: crate::pb::ads_source(),
            route_config_name: name.clone(),
        }),
    });
    // Access and rate limits first, so a refused request costs nothing more.
    let router = hcm.http_filters.len() - 1;
    let mut first = crate::protect::http_filters(lb);
    // The WAF after them: the cheap refusals come before the costly one.
    first.extend(crate::waf::http_filter(lb, opts));
    hcm.http_filters.splice(router..router, first);
    if routes::uses_sticky_sessions(lb) {
        // Off unless a route turns it on: each route carries its pool's cookie.
        hcm.http_filters.insert(
            hcm.http_filters.len() - 1,
            HttpFilter {
                name: routes::STATEFUL_SESSION.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &StatefulSession::default(),
                ))),
                ..Default::default()
            },
        );
    }
    hcm
}

/// What every connection manager of the load balancer shares; the caller
/// sets where routes come from.
fn connection_manager(
    lb: &LoadBalancer,
    stat_prefix: &str,
    opts: &TranslateOptions,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        // We are the edge: append the peer address to X-Forwarded-For and set
        // X-Forwarded-Proto from the downstream connection, ignoring what the
        // client claims.
        use_remote_address: Some(BoolValue { value: true }),
        generate_request_id: Some(BoolValue { value: true }),
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: secs(lb.timeouts.idle.unwrap_or(0)),
            ..Default::default()
        }),
        // HTTP/1.0 is served, as HAProxy and nginx serve it: monitoring
        // probes, `ab` and old scripts still speak it (Envoy's default
        // answers them 426). One without a Host header is routed as if it
        // had named DEFAULT_HOST_FOR_HTTP_10, which no route matches. Any
        // well-formed method is passed on (WebDAV's, say), as nginx and
        // HAProxy pass them, so the WAF's method policy is the one that
        // judges them rather than a 400 from the parser.
        http_protocol_options: Some(Http1ProtocolOptions {
            accept_http_10: true,
            default_host_for_http_10: DEFAULT_HOST_FOR_HTTP_10.into(),
            allow_custom_methods: true,
            ..Default::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: u32v(100),
            initial_stream_window_size: u32v(stream_window(lb)),
            initial_connection_window_size: u32v(1024 * 1024),
            ..Default::default()
        }),
        // Bounds how long a slow client may take to send its headers.
        request_headers_timeout: secs(10),
        // Route (and so apply access lists, rate limits and the WAF's
        // choice) on the path a backend acts on: `//admin` and
        // `/%2Fadmin` are `/admin` to most backends. Slashes are merged;
        // an escaped slash answers a redirect to the unescaped path, so
        // the request that follows is routed as the backend would read
        // it (see docs/load-balancer-format.md#paths).
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32,
        // Never announce ourselves (`server: envoy` is a scanner's banner):
        // the backend's own Server header passes, local replies get none.
        server_header_transformation:
            http_connection_manager::ServerHeaderTransformation::PassThrough as i32,
        access_log: vec![access_log(lb, opts, true)],
        ..Default::default()
    }
}

/// A TCP proxy to `pools` (ids and weights): one pool by name, several by weight.
fn tcp_proxy(lb: &LoadBalancer, pools: &[(&str, u32)], opts: &TranslateOptions) -> TcpProxy {
    let name = names::lb(&lb.id);
    let cluster = |id: &str| names::pool_cluster(&lb.id, id);
    let cluster_specifier = match pools {
        [(one, _)] => tcp_proxy::ClusterSpecifier::Cluster(cluster(one)),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(|&(id, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: cluster(id),
                    weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let ring_hash = pools
        .iter()
        .filter_map(|(id, _)| lb.pool(id))
        .any(|p| p.algorithm == Algorithm::RingHash);
    let hash_policy = if ring_hash {
        vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                hash_policy::SourceIp {},
            )),
        }]
    } else {
        vec![]
    };
    TcpProxy {
        stat_prefix: name,
        cluster_specifier: Some(cluster_specifier),
        idle_timeout: secs(lb.timeouts.idle.unwrap_or(0)),
        // One more try on another backend when a connect fails.
        max_connect_attempts: u32v(2),
        hash_policy,
        access_log: vec![access_log(lb, opts, false)],
        ..Default::default()
    }
}

/// Which requests (HTTP) or connections (TCP) get a log line: every one
/// that failed (status ≥ 400, or any response flag such as no healthy
/// upstream, reset or timeout), and a random `sample_percent` of the rest.
fn access_log_filter(sample_percent: u32) -> AccessLogFilter {
    use envoy_types::pb::envoy::config::accesslog::v3::{
        ComparisonFilter, OrFilter, ResponseFlagFilter, RuntimeFilter, StatusCodeFilter,
        access_log_filter::FilterSpecifier, comparison_filter,
    };
    use envoy_types::pb::envoy::config::core::v3::RuntimeUInt32;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
    let filter = |f: FilterSpecifier| AccessLogFilter {
        filter_specifier: Some(f),
    };
    let failed_status = filter(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
        comparison: Some(ComparisonFilter {
            op: comparison_filter::Op::Ge as i32,
            value: Some(RuntimeUInt32 {
                default_value: 400,
                runtime_key: "vpsie_lb.access_log.min_failed_status".into(),
            }),
        }),
    }));
    let any_flag = filter(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
        flags: vec![],
    }));
    let sampled = filter(FilterSpecifier::RuntimeFilter(RuntimeFilter {
        runtime_key: "vpsie_lb.access_log.sample_percent".into(),
        percent_sampled: Some(FractionalPercent {
            numerator: sample_percent.min(100),
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        use_independent_randomness: true,
    }));
    filter(FilterSpecifier::OrFilter(OrFilter {
        filters: vec![failed_status, any_flag, sampled],
    }))
}

/// A JSON access log line per request (HTTP) or per connection (TCP), for
/// failures and a sample of the rest.
pub(crate) fn access_log(lb: &LoadBalancer, opts: &TranslateOptions, http: bool) -> AccessLog {
    let mut fields: Vec<(&str, String)> = vec![
        ("time", "%START_TIME%".into()),
        ("lb_id", lb.id.clone()),
        ("listener", names::lb(&lb.id)),
        ("client", "%DOWNSTREAM_REMOTE_ADDRESS%".into()),
        ("upstream_host", "%UPSTREAM_HOST%".into()),
        ("response_flags", "%RESPONSE_FLAGS%".into()),
        ("bytes_received", "%BYTES_RECEIVED%".into()),
        ("bytes_sent", "%BYTES_SENT%".into()),
        ("duration_ms", "%DURATION%".into()),
    ];
    if lb.protocol == Protocol::TlsPassthrough {
        // The name the client asked for: what chose the pool.
        fields.push(("server_name", "%REQUESTED_SERVER_NAME%".into()));
    }
    if http {
        fields.extend([
            ("status", "%RESPONSE_CODE%".to_owned()),
            ("method", "%REQ(:METHOD)%".into()),
            ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%".into()),
            ("protocol", "%PROTOCOL%".into()),
            ("request_id", "%REQ(X-REQUEST-ID)%".into()),
            ("user_agent", "%REQ(USER-AGENT)%".into()),
        ]);
        if lb.waf.is_some() {
            // What the WAF said (see waf.rs): its action and rule ids.
            let ns = crate::waf::metadata_namespace(&opts.waf_engine);
            fields.extend([
                ("waf_action", format!("%DYNAMIC_METADATA({ns}:waf_action)%")),
                ("waf_rules", format!("%DYNAMIC_METADATA({ns}:waf_rules)%")),
            ]);
        }
    }
    let json = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    Value {
                        kind: Some(value::Kind::StringValue(v)),
                    },
                )
            })
            .collect(),
    };
    let format = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(json)),
        ..Default::default()
    };
    // Under systemd, stdout and stderr are sockets to the journal, which
    // cannot be opened by path: a file logger on /dev/stdout made Envoy
    // refuse every listener ("unable to open file '/dev/stdout': No such
    // device or address"). The stream loggers write to the descriptor.
    let (name, config) = match opts.access_log_path.as_str() {
        "/dev/stdout" => (
            "envoy.access_loggers.stdout",
            any(&StdoutAccessLog {
                access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(format)),
            }),
        ),
        "/dev/stderr" => (
            "envoy.access_loggers.stderr",
            any(&StderrAccessLog {
                access_log_format: Some(stderr_access_log::AccessLogFormat::LogFormat(format)),
            }),
        ),
        path => (
            "envoy.access_loggers.file",
            any(&FileAccessLog {
                path: path.to_owned(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
            }),
        ),
    };
    AccessLog {
        name: name.into(),
        // Logging everything is a plain log with no filter.
        filter: (opts.access_log_sample_percent < 100)
            .then(|| access_log_filter(opts.access_log_sample_percent)),
        config_type: Some(access_log::ConfigType::TypedConfig(config)),
    }
}
