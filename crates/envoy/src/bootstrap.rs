//! Envoy's bootstrap: admin, where dynamic resources come from, and global limits.

use std::net::SocketAddr;

use crate::LocalAddress;

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::overload::v3::{
    OverloadManager, ResourceMonitor, resource_monitor,
};
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;

use crate::pb::{any, file_source, socket};
use crate::{EnvoyResources, XdsLayout};

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
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            admin: crate::default_admin_address(),
            stats_address: Some(crate::default_stats_address()),
            node_id: "vpsie-lb".into(),
            global_max_connections: crate::DEFAULT_GLOBAL_MAX_CONNECTIONS,
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
        ..Default::default()
    }
}

/// The production bootstrap: listeners and clusters come from files under `layout`.
pub fn bootstrap(layout: &XdsLayout, opts: &BootstrapOptions) -> Bootstrap {
    let mut b = common(opts, &opts.admin);
    b.dynamic_resources = Some(bootstrap::DynamicResources {
        lds_config: file_source(&layout.lds_file(), &layout.lds_dir()),
        cds_config: file_source(&layout.cds_file(), &layout.cds_dir()),
        ..Default::default()
    });
    if let (LocalAddress::Unix(path), Some(addr)) = (&opts.admin, opts.stats_address) {
        let (listener, cluster) = crate::stats::stats_listener(addr, path);
        b.static_resources = Some(bootstrap::StaticResources {
            listeners: vec![listener],
            clusters: vec![cluster],
            ..Default::default()
        });
    }
    b
}

/// A throwaway bootstrap with `resources` inlined, for `envoy --mode validate`,
/// which ignores dynamic files. `resources` must come from [`crate::Delivery::Static`].
/// The admin port is 0 so it never collides with a running Envoy.
pub fn preflight_bootstrap(resources: &EnvoyResources, opts: &BootstrapOptions) -> Bootstrap {
    let mut b = common(
        opts,
        &LocalAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    b.static_resources = Some(bootstrap::StaticResources {
        listeners: resources.listeners.clone(),
        clusters: resources.clusters.clone(),
        secrets: resources.secrets.clone(),
    });
    b
}
