//! One listener per load balancer: HTTP connection manager or TCP proxy.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    Http2ProtocolOptions, HttpProtocolOptions, SubstitutionFormatString, TransportSocket,
    substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value};
use vpsie_lb_model::{Algorithm, LoadBalancer, Protocol};

use crate::pb::{any, secs, socket, u32v, u64v};
use crate::{TranslateOptions, names, tls};

/// Per-connection read/write buffer cap; Envoy's edge guidance, instead of the 1 MiB default.
pub(crate) const BUFFER_LIMIT_BYTES: u32 = 32 * 1024;

pub(crate) fn listener(lb: &LoadBalancer, opts: &TranslateOptions) -> Listener {
    let name = names::lb(&lb.id);
    let mut filters = Vec::new();
    if let Some(max) = lb.max_connections {
        // The connection_limit filter closes connections beyond the limit as
        // soon as they are accepted; the listener itself has no such field.
        filters.push(typed_filter(
            "envoy.filters.network.connection_limit",
            any(&ConnectionLimit {
                stat_prefix: name.clone(),
                max_connections: u64v(u64::from(max)),
                ..Default::default()
            }),
        ));
    }
    filters.push(match lb.protocol {
        Protocol::Http | Protocol::Https => typed_filter(
            "envoy.filters.network.http_connection_manager",
            any(&http_connection_manager(lb, opts)),
        ),
        Protocol::Tcp => typed_filter("envoy.filters.network.tcp_proxy", any(&tcp_proxy(lb, opts))),
    });
    let transport_socket = tls::downstream_context(lb, opts).map(|ctx| TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    });
    Listener {
        name,
        address: socket(&opts.listen_address.to_string(), lb.port),
        per_connection_buffer_limit_bytes: u32v(BUFFER_LIMIT_BYTES),
        filter_chains: vec![FilterChain {
            name: "default".into(),
            filters,
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn typed_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

fn http_connection_manager(lb: &LoadBalancer, opts: &TranslateOptions) -> HttpConnectionManager {
    let name = names::lb(&lb.id);
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.clone())),
        // Zero disables the timeout; leaving it unset would mean Envoy's 15 s.
        timeout: secs(lb.timeouts.request.unwrap_or(0)),
        // Retry only what never reached a backend, so no request runs twice.
        retry_policy: Some(RetryPolicy {
            retry_on: "connect-failure,refused-stream,reset-before-request".into(),
            num_retries: u32v(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    if lb.algorithm == Algorithm::RingHash {
        action.hash_policy = vec![route_action::HashPolicy {
            policy_specifier: Some(
                route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                    route_action::hash_policy::ConnectionProperties { source_ip: true },
                ),
            ),
            terminal: false,
        }];
    }
    let route_config = RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: name.clone(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpConnectionManager {
        stat_prefix: name,
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            route_config,
        )),
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
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: u32v(100),
            initial_stream_window_size: u32v(64 * 1024),
            initial_connection_window_size: u32v(1024 * 1024),
            ..Default::default()
        }),
        // Bounds how long a slow client may take to send its headers.
        request_headers_timeout: secs(10),
        normalize_path: Some(BoolValue { value: true }),
        // Never announce ourselves (`server: envoy` is a scanner's banner):
        // the backend's own Server header passes, local replies get none.
        server_header_transformation:
            http_connection_manager::ServerHeaderTransformation::PassThrough as i32,
        access_log: vec![access_log(lb, opts, true)],
        ..Default::default()
    }
}

fn tcp_proxy(lb: &LoadBalancer, opts: &TranslateOptions) -> TcpProxy {
    let name = names::lb(&lb.id);
    let hash_policy = if lb.algorithm == Algorithm::RingHash {
        vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                hash_policy::SourceIp {},
            )),
        }]
    } else {
        vec![]
    };
    TcpProxy {
        stat_prefix: name.clone(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name)),
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
fn access_log(lb: &LoadBalancer, opts: &TranslateOptions, http: bool) -> AccessLog {
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
    if http {
        fields.extend([
            ("status", "%RESPONSE_CODE%".to_owned()),
            ("method", "%REQ(:METHOD)%".into()),
            ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%".into()),
            ("protocol", "%PROTOCOL%".into()),
            ("request_id", "%REQ(X-REQUEST-ID)%".into()),
            ("user_agent", "%REQ(USER-AGENT)%".into()),
        ]);
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
