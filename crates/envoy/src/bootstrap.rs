//! Envoy's bootstrap: admin, where dynamic resources come from, and global limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::LocalAddress;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap, LayeredRuntime, RuntimeLayer, bootstrap, runtime_layer,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, BackoffStrategy, GrpcService, Http2ProtocolOptions, Node,
    RetryPolicy, api_config_source, grpc_service,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::overload::v3::{
    OverloadManager, ResourceMonitor, resource_monitor,
};
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};

use crate::pb::{ads_source, any, file_source, secs, socket};
use crate::{EnvoyResources, FilesLayout};

/// Settings of the bootstrap that do not come from the load-balancer document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// Envoy's admin API: a Unix socket, or loopback TCP; its POST
    /// endpoints are unauthenticated.
    pub admin: LocalAddress,
    /// With the admin on a Unix socket: the loopback address of the
    /// read-only metrics listener (`GET /stats/prometheus`, `GET /ready`).
    pub stats_address: Option<SocketAddr>,
    /// Envoy's node id and cluster.
    pub node_id: String,
    /// Cap on concurrent downstream connections across all listeners.
    pub global_max_connections: u64,
    /// The WAF service's Unix socket (the `vpsie_lb_waf` cluster).
    pub waf_socket: PathBuf,
    /// The agent's ACME challenge responder (the `vpsie_lb_acme` cluster).
    pub acme_socket: PathBuf,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            admin: crate::default_admin_address(),
            stats_address: Some(crate::default_stats_address()),
            node_id: "vpsie-lb".into(),
            global_max_connections: crate::DEFAULT_GLOBAL_MAX_CONNECTIONS,
            waf_socket: PathBuf::from(crate::DEFAULT_WAF_SOCKET),
            acme_socket: PathBuf::from(crate::DEFAULT_ACME_SOCKET),
        }
    }
}

/// Mode of Envoy's admin socket: Envoy's user and group (the agent is a
/// member of Envoy's group), nobody else.
pub const ADMIN_SOCKET_MODE: u32 = 0o660;

fn common(opts: &BootstrapOptions, admin: &LocalAddress) -> Bootstrap {
    Bootstrap {
        node: Some(Node {
            id: opts.node_id.clone(),
            cluster: opts.node_id.clone(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: match admin {
                LocalAddress::Tcp(a) => socket(&a.ip().to_string(), a.port()),
                LocalAddress::Unix(path) => crate::pb::pipe(path, ADMIN_SOCKET_MODE),
            },
            ..Default::default()
        }),
        // The overload manager's monitor, not the deprecated runtime key,
        // caps downstream connections; Envoy warns at start without a cap.
        overload_manager: Some(OverloadManager {
            resource_monitors: vec![ResourceMonitor {
                name: "envoy.resource_monitors.global_downstream_max_connections".into(),
                config_type: Some(resource_monitor::ConfigType::TypedConfig(any(
                    &DownstreamConnectionsConfig {
                        max_active_downstream_connections: i64::try_from(
                            opts.global_max_connections,
                        )
                        .unwrap_or(i64::MAX),
                    },
                ))),
            }],
            ..Default::default()
        }),
        layered_runtime: Some(runtime()),
        // Unused (and never connected to) until a load balancer has a WAF,
        // or an ACME certificate.
        static_resources: Some(bootstrap::StaticResources {
            clusters: vec![
                waf_cluster(&opts.waf_socket),
                unix_cluster(crate::names::ACME_CLUSTER, &opts.acme_socket),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Envoy's RE2 refuses, by default, any expression whose program is larger
/// than 100 steps: a plain list of twenty path words is already past it.
/// Validation bounds every expression we send (`limits::MAX_REGEX_COST`)
/// far below the limit set here. The admin layer is what Envoy has when no
/// runtime is configured.
fn runtime() -> LayeredRuntime {
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let limit = vpsie_lb_model::limits::MAX_REGEX_COST * 20;
    let fields = [(
        "re2.max_program_size.error_level".to_owned(),
        Value {
            kind: Some(value::Kind::NumberValue(limit as f64)),
        },
    )];
    LayeredRuntime {
        layers: vec![
            RuntimeLayer {
                name: "vpsie-lb".into(),
                layer_specifier: Some(runtime_layer::LayerSpecifier::StaticLayer(Struct {
                    fields: fields.into_iter().collect(),
                })),
            },
            RuntimeLayer {
                name: "admin".into(),
                layer_specifier: Some(runtime_layer::LayerSpecifier::AdminLayer(
                    runtime_layer::AdminLayer {},
                )),
            },
        ],
    }
}

/// The production bootstrap: listeners and clusters come from files under `layout`.
pub fn bootstrap(layout: &FilesLayout, opts: &BootstrapOptions) -> Bootstrap {
    let mut b = common(opts, &opts.admin);
    b.dynamic_resources = Some(bootstrap::DynamicResources {
        lds_config: file_source(&layout.lds_file(), &layout.lds_dir()),
        cds_config: file_source(&layout.cds_file(), &layout.cds_dir()),
        ..Default::default()
    });
    if let (LocalAddress::Unix(path), Some(addr)) = (&opts.admin, opts.stats_address) {
        let (listener, cluster) = crate::stats::stats_listener(addr, path);
        let statics = b.static_resources.get_or_insert_with(Default::default);
        statics.listeners.push(listener);
        statics.clusters.push(cluster);
    }
    b
}

/// How soon Envoy retries a lost xDS stream; Envoy's own default (500 ms,
/// growing to 30 s) would leave a restarted agent's Envoy on stale
/// resources for up to 30 s. The socket is local, so retrying often is cheap.
pub const XDS_RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two tries: with 1 s, an Envoy that had waited
/// two seconds for its agent took 424 ms more to be served once the agent
/// was back (the restart benchmark); a failed connect to a local socket
/// costs microseconds.
pub const XDS_RETRY_MAX: Duration = Duration::from_millis(250);

fn duration(d: Duration) -> Option<envoy_types::pb::google::protobuf::Duration> {
    Some(envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// A static cluster `name` that reaches a gRPC server on the Unix socket
/// `socket`, over HTTP/2 as gRPC needs: the agent's xDS server, the WAF.
fn grpc_cluster(name: &str, socket: &Path) -> Cluster {
    let h2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    Cluster {
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&h2),
        )]
        .into(),
        ..unix_cluster(name, socket)
    }
}

/// Most inspections in flight to the WAF service at once. Each may carry
/// a 2 MiB body, so this bounds what a flood of large bodies can make the
/// service hold (256 MiB) under its 1 GiB unit; past it ext_authz fails at
/// once and the load balancer's `fail_open` decides, as when the service
/// is busy.
pub const WAF_MAX_REQUESTS: u32 = 128;

/// The WAF service's cluster: gRPC, with its requests bounded.
fn waf_cluster(socket: &Path) -> Cluster {
    let bound = Some(envoy_types::pb::google::protobuf::UInt32Value {
        value: WAF_MAX_REQUESTS,
    });
    Cluster {
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_requests: bound,
                max_pending_requests: bound,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..grpc_cluster(crate::names::WAF_CLUSTER, socket)
    }
}

/// A cluster of one local service on a Unix socket, over HTTP/1.1.
fn unix_cluster(name: &str, socket: &Path) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: secs(1),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: crate::pb::pipe(socket, 0),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bootstrap for the xDS delivery: listeners, clusters, endpoints and
/// secrets all come over one delta ADS stream from the agent on `socket`.
pub fn ads_bootstrap(socket: &Path, opts: &BootstrapOptions) -> Bootstrap {
    let mut b = common(opts, &opts.admin);
    let grpc = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: crate::names::XDS_CLUSTER.into(),
                retry_policy: Some(RetryPolicy {
                    retry_back_off: Some(BackoffStrategy {
                        base_interval: duration(XDS_RETRY_BASE),
                        max_interval: duration(XDS_RETRY_MAX),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    b.dynamic_resources = Some(bootstrap::DynamicResources {
        ads_config: Some(ApiConfigSource {
            api_type: api_config_source::ApiType::DeltaGrpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            set_node_on_first_message_only: true,
            grpc_services: vec![grpc],
            ..Default::default()
        }),
        lds_config: ads_source(),
        cds_config: ads_source(),
        ..Default::default()
    });
    let statics = b.static_resources.get_or_insert_with(Default::default);
    statics
        .clusters
        .push(grpc_cluster(crate::names::XDS_CLUSTER, socket));
    if let (LocalAddress::Unix(path), Some(addr)) = (&opts.admin, opts.stats_address) {
        let (listener, cluster) = crate::stats::stats_listener(addr, path);
        statics.listeners.push(listener);
        statics.clusters.push(cluster);
    }
    b
}

/// A throwaway bootstrap with `resources` inlined, for `envoy --mode validate`,
/// which ignores dynamic files. `resources` must come from [`crate::Target::Static`].
/// The admin port is 0 so it never collides with a running Envoy.
pub fn preflight_bootstrap(resources: &EnvoyResources, opts: &BootstrapOptions) -> Bootstrap {
    let mut b = common(
        opts,
        &LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    let statics = b.static_resources.get_or_insert_with(Default::default);
    statics.listeners = resources.listeners.clone();
    statics.clusters.extend(resources.clusters.iter().cloned());
    statics.secrets = resources.secrets.clone();
    b
}
