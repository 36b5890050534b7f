//! A udp load balancer: a UDP listener whose one listener filter is
//! Envoy's UDP proxy. Each client address and port is a session held to one
//! backend of the default pool until it idles out.

use envoy_types::pb::envoy::config::listener::v3::{
    Listener, ListenerFilter, UdpListenerConfig, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    Route, UdpProxyConfig, udp_proxy_config,
};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{Matcher, matcher};
use vpsie_lb_model::{Algorithm, LoadBalancer};

use crate::pb::{any, secs};
use crate::{TranslateOptions, names};

/// The load balancer's UDP listener.
pub(crate) fn listener(lb: &LoadBalancer, opts: &TranslateOptions) -> Listener {
    let name = names::lb(&lb.id);
    Listener {
        name,
        address: crate::pb::listen_on(
            opts.listen_address,
            lb.port,
            envoy_types::pb::envoy::config::core::v3::socket_address::Protocol::Udp,
        ),
        udp_listener_config: Some(UdpListenerConfig::default()),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.udp_listener.udp_proxy".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(&proxy(
                lb, opts,
            )))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The UDP proxy: every session to the default pool's cluster (a matcher
/// with only its no-match action, the form that replaced the deprecated
/// `cluster` field), hashed on the client's address under ring hash.
fn proxy(lb: &LoadBalancer, opts: &TranslateOptions) -> UdpProxyConfig {
    let name = names::lb(&lb.id);
    let route = TypedExtensionConfig {
        name: "route".into(),
        typed_config: Some(any(&Route {
            cluster: name.clone(),
        })),
    };
    let hash_policies = if lb.default_pool.algorithm == Algorithm::RingHash {
        vec![udp_proxy_config::HashPolicy {
            policy_specifier: Some(udp_proxy_config::hash_policy::PolicySpecifier::SourceIp(
                true,
            )),
        }]
    } else {
        vec![]
    };
    UdpProxyConfig {
        stat_prefix: name,
        idle_timeout: secs(lb.timeouts.idle.unwrap_or(0)),
        hash_policies,
        access_log: vec![crate::listener::access_log(lb, opts, false)],
        route_specifier: Some(udp_proxy_config::RouteSpecifier::Matcher(Matcher {
            on_no_match: Some(Box::new(matcher::OnMatch {
                on_match: Some(matcher::on_match::OnMatch::Action(route)),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}
