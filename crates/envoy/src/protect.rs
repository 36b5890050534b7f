//! Rate limits and access lists. For http and https everything lives in
//! the route configuration: the connection manager always carries an RBAC
//! and a local rate-limit filter that do nothing on their own, and the
//! load balancer's (or a route's) settings reach them as per-filter
//! configuration over RDS, so changing them never changes the listener.
//! Connections (the new-connection rate, and access on tcp) are the
//! listener's.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    CidrRange, HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::listener::v3::{ListenerFilter, listener_filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as Rules, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{RateLimit, rate_limit};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    LocalRateLimitDescriptor, rate_limit_descriptor,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac, RbacPerRoute};
use envoy_types::pb::envoy::extensions::filters::listener::local_ratelimit::v3::LocalRateLimit as ConnectionRate;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use vpsie_lb_model::{Access, IpNet, LoadBalancer, RequestRate, Route};

use crate::names;
use crate::pb::{any, secs, u32v};

/// The RBAC filter's name in the connection manager.
pub(crate) const RBAC: &str = "envoy.filters.http.rbac";
/// The local rate-limit filter's name in the connection manager.
pub(crate) const RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

/// Client buckets Envoy keeps per limit when none is configured: enough
/// for the distinct clients a busy site sees within a few seconds.
pub const DEFAULT_TRACKED_CLIENTS: u32 = 10_000;

/// The two filters every http connection manager carries, ahead of the
/// router: inert until a route configuration turns them on.
pub(crate) fn http_filters(lb: &LoadBalancer) -> Vec<HttpFilter> {
    let typed = |name: &str, config: Any| HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        // No rules: every request passes unless a per-route config says otherwise.
        typed(RBAC, any(&Rbac::default())),
        // filter_enabled unset is 0 %: off unless a per-route config enables it.
        typed(
            RATE_LIMIT,
            any(&LocalRateLimit {
                stat_prefix: names::lb(&lb.id),
                ..Default::default()
            }),
        ),
    ]
}

/// The load balancer's own settings, for its whole route configuration.
pub(crate) fn for_route_config(lb: &LoadBalancer, tracked: u32) -> HashMap<String, Any> {
    let mut out = HashMap::new();
    if let Some(rate) = lb.rate_limit.requests {
        out.insert(
            RATE_LIMIT.to_owned(),
            any(&per_client(&names::lb(&lb.id), rate, tracked)),
        );
    }
    if let Some(access) = &lb.access {
        out.insert(RBAC.to_owned(), any(&per_route_rbac(&[access])));
    }
    out
}

/// A route's own settings: its rate limit replaces the load balancer's,
/// its access list applies on top of the load balancer's.
pub(crate) fn for_route(lb: &LoadBalancer, r: &Route, tracked: u32) -> HashMap<String, Any> {
    let mut out = HashMap::new();
    if let Some(rate) = r.rate_limit {
        let prefix = format!("{}{}{}", names::lb(&lb.id), names::SEP, r.id);
        out.insert(
            RATE_LIMIT.to_owned(),
            any(&per_client(&prefix, rate, tracked)),
        );
    }
    if let Some(own) = &r.access {
        let lists: Vec<&Access> = lb.access.iter().chain([own]).collect();
        out.insert(RBAC.to_owned(), any(&per_route_rbac(&lists)));
    }
    out
}

/// No access list, for a route that must answer anyone (the ACME
/// challenge path). Its rate limit stays: buckets are per client, and a
/// CA's validation servers send one request each.
pub(crate) fn exempt() -> HashMap<String, Any> {
    // An RBACPerRoute without rules turns the filter off for the route.
    HashMap::from([(RBAC.to_owned(), any(&RbacPerRoute::default()))])
}

/// One token bucket per client address, `tracked` of them at most (the
/// least recently seen is forgotten, and comes back with a full bucket).
fn per_client(stat_prefix: &str, rate: RequestRate, tracked: u32) -> LocalRateLimit {
    let all = Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    });
    LocalRateLimit {
        stat_prefix: stat_prefix.to_owned(),
        // Envoy wants a bucket for the route as a whole; this one never runs
        // dry, and is not consumed when a client's bucket is found.
        token_bucket: Some(bucket(u32::MAX, u32::MAX)),
        always_consume_default_token_bucket: Some(BoolValue { value: false }),
        filter_enabled: all.clone(),
        filter_enforced: all,
        rate_limits: vec![RateLimit {
            actions: vec![rate_limit::Action {
                action_specifier: Some(rate_limit::action::ActionSpecifier::RemoteAddress(
                    rate_limit::action::RemoteAddress::default(),
                )),
            }],
            ..Default::default()
        }],
        // An entry without a value is a bucket per distinct value.
        descriptors: vec![LocalRateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry {
                key: "remote_address".into(),
                value: String::new(),
            }],
            token_bucket: Some(bucket(rate.burst, rate.per_second)),
            ..Default::default()
        }],
        max_dynamic_descriptors: u32v(tracked.max(1)),
        // Tokens come once a second, so a limited client may retry after one.
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "retry-after".into(),
                value: "1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn bucket(max_tokens: u32, per_second: u32) -> TokenBucket {
    TokenBucket {
        max_tokens,
        tokens_per_fill: u32v(per_second),
        fill_interval: secs(1),
    }
}

/// Allows a request when its client passes every list in `lists`.
fn per_route_rbac(lists: &[&Access]) -> RbacPerRoute {
    RbacPerRoute {
        rbac: Some(Rbac {
            rules: Some(allow_only(lists)),
            ..Default::default()
        }),
    }
}

/// The network RBAC filter of a tcp or tls_passthrough listener with an
/// access list (http and https answer 403 from the route configuration
/// instead).
pub(crate) fn tcp_access(lb: &LoadBalancer) -> Option<NetworkRbac> {
    if lb.protocol.is_http() {
        return None;
    }
    let access = lb.access.as_ref()?;
    Some(NetworkRbac {
        stat_prefix: names::lb(&lb.id),
        rules: Some(allow_only(&[access])),
        ..Default::default()
    })
}

/// One ALLOW policy whose principal is every list's condition, all of
/// which must hold: not in a deny list, and in the allow list if any.
fn allow_only(lists: &[&Access]) -> Rules {
    let conditions: Vec<Principal> = lists.iter().flat_map(|a| condition(a)).collect();
    Rules {
        action: rbac::Action::Allow as i32,
        policies: HashMap::from([(
            "access".to_owned(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![all(conditions)],
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

/// The conditions one access list puts on the client's own address.
fn condition(a: &Access) -> Vec<Principal> {
    let mut out = Vec::new();
    if !a.deny.is_empty() {
        out.push(Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(any_of(&a.deny)))),
        });
    }
    if !a.allow.is_empty() {
        out.push(any_of(&a.allow));
    }
    out
}

fn all(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(if ids.is_empty() {
            principal::Identifier::Any(true)
        } else {
            principal::Identifier::AndIds(principal::Set { ids })
        }),
    }
}

/// The peer's own address (never X-Forwarded-For) is in one of `nets`.
fn any_of(nets: &[IpNet]) -> Principal {
    let ids = nets
        .iter()
        .map(|n| Principal {
            identifier: Some(principal::Identifier::DirectRemoteIp(CidrRange {
                address_prefix: n.addr().to_string(),
                prefix_len: u32v(u32::from(n.prefix())),
            })),
        })
        .collect();
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

/// The listener filter that refuses new connections beyond the rate.
pub(crate) fn connection_rate(lb: &LoadBalancer) -> Option<ListenerFilter> {
    let per_second = lb.rate_limit.connections_per_second?;
    Some(ListenerFilter {
        name: "envoy.filters.listener.local_ratelimit".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &ConnectionRate {
                stat_prefix: names::lb(&lb.id),
                token_bucket: Some(bucket(per_second, per_second)),
                ..Default::default()
            },
        ))),
        ..Default::default()
    })
}
