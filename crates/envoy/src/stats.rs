//! The read-only metrics listener: when Envoy's admin API is on a Unix
//! socket (where no proxied connection can reach it), operators still scrape
//! Envoy on loopback TCP. This listener forwards `GET /stats/prometheus` and
//! `GET /ready` to the admin socket and answers everything else 404, so
//! `/quitquitquit`, `/config_dump` or `/runtime_modify` are never reachable
//! over TCP, even through a load balancer whose backend resolves to loopback.

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

use crate::pb::{any, pipe, secs, socket};

/// The listener's and the cluster's name; `lb_` names are the load balancers'.
pub const STATS_NAME: &str = "vpsie_lb_stats";
/// The admin paths the listener forwards, GET only.
pub const STATS_PATHS: &[&str] = &["/stats/prometheus", "/ready"];

/// The read-only listener on `addr` and the cluster of the admin socket at `admin`.
pub fn stats_listener(addr: SocketAddr, admin: &Path) -> (Listener, Cluster) {
    let get = HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact("GET".into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut routes: Vec<Route> = STATS_PATHS
        .iter()
        .map(|path| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path((*path).into())),
                headers: vec![get.clone()],
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(STATS_NAME.into())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    routes.push(Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 404,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!(
                    "not found: this port serves only GET {}\n",
                    STATS_PATHS.join(" and GET ")
                ))),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: STATS_NAME.into(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: STATS_NAME.into(),
                virtual_hosts: vec![VirtualHost {
                    name: STATS_NAME.into(),
                    domains: vec!["*".into()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        server_header_transformation:
            http_connection_manager::ServerHeaderTransformation::PassThrough as i32,
        request_headers_timeout: secs(10),
        ..Default::default()
    };
    let listener = Listener {
        name: STATS_NAME.into(),
        address: socket(&addr.ip().to_string(), addr.port()),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let cluster = Cluster {
        name: STATS_NAME.into(),
        connect_timeout: secs(1),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: STATS_NAME.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: pipe(admin, 0),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    (listener, cluster)
}
