//! One route configuration per HTTP listener: the load balancer's routes
//! as virtual hosts, and the default pool behind them.
//!
//! Our routes are one ordered list whose entries may name hosts; Envoy
//! first picks one virtual host by the most specific domain, then the
//! first matching route inside it. Every host pattern a route names
//! becomes a virtual host holding, in order, each route that matches every
//! name that virtual host can be picked for, so the two agree.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, TypedExtensionConfig, data_source,
    header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher, redirect_action,
    route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::{
    StatefulSession, StatefulSessionPerRoute, stateful_session_per_route,
};
use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
use envoy_types::pb::envoy::r#type::http::v3::{Cookie, CookieAttribute};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use vpsie_lb_model::{
    Algorithm, DEFAULT_POOL, HeaderValueMatch, LoadBalancer, PathMatch, Protocol, Redirect,
    RouteAction as Action, Scheme, StickySessions,
};

use crate::pb::{any, secs, u32v};
use crate::{TranslateOptions, names};

/// How long a client may remember that HTTP/3 is offered, seconds (a day,
/// as the common deployments announce it).
const ALT_SVC_MAX_AGE: u32 = 86_400;

/// Name the stateful-session filter is registered under in the connection
/// manager; per-route settings refer to it.
pub(crate) const STATEFUL_SESSION: &str = "envoy.filters.http.stateful_session";

/// The route configuration of the load balancer's main listener.
pub(crate) fn route_config(lb: &LoadBalancer, opts: &TranslateOptions) -> RouteConfiguration {
    let tracked = opts.rate_limit_tracked_clients;
    let name = names::lb(&lb.id);
    // The plan validation measured: a route without hosts is in every
    // virtual host, so "first route wins" holds whichever Envoy picks.
    let virtual_hosts: Vec<VirtualHost> = vpsie_lb_model::vhosts::virtual_hosts(lb)
        .into_iter()
        .map(|vh| VirtualHost {
            name: vh.domain.map_or_else(|| name.clone(), str::to_owned),
            domains: vec![vh.domain.unwrap_or("*").to_owned()],
            routes: vh
                .routes
                .iter()
                .map(|&i| route(lb, &lb.routes[i], tracked))
                .chain([default_route(lb)])
                .collect(),
            ..Default::default()
        })
        .collect();
    RouteConfiguration {
        name,
        virtual_hosts,
        // `Host: api.example.com:8443` is api.example.com.
        ignore_port_in_host_matching: true,
        typed_per_filter_config: {
            let mut c = crate::protect::for_route_config(lb, tracked);
            c.extend(crate::waf::for_route_config(lb, opts));
            c
        },
        response_headers_to_add: alt_svc(lb).into_iter().collect(),
        ..Default::default()
    }
}

fn route(lb: &LoadBalancer, r: &vpsie_lb_model::Route, tracked: u32) -> Route {
    let mut m = RouteMatch {
        path_specifier: Some(match &r.path {
            None => route_match::PathSpecifier::Prefix("/".into()),
            Some(PathMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
            Some(PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
            Some(PathMatch::Regex(re)) => route_match::PathSpecifier::SafeRegex(regex(re)),
        }),
        ..Default::default()
    };
    m.headers = r
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            invert_match: h.invert,
            header_match_specifier: Some(match &h.value {
                HeaderValueMatch::Present => {
                    header_matcher::HeaderMatchSpecifier::PresentMatch(true)
                }
                HeaderValueMatch::Exact(v) => {
                    string(string_matcher::MatchPattern::Exact(v.clone()))
                }
                HeaderValueMatch::Prefix(v) => {
                    string(string_matcher::MatchPattern::Prefix(v.clone()))
                }
                HeaderValueMatch::Regex(v) => {
                    string(string_matcher::MatchPattern::SafeRegex(regex(v)))
                }
            }),
            ..Default::default()
        })
        .collect();
    if !r.methods.is_empty() {
        // Validation allows only token characters, so the alternation needs no escaping.
        m.headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(string(string_matcher::MatchPattern::SafeRegex(regex(
                &r.methods.join("|"),
            )))),
            ..Default::default()
        });
    }
    let mut out = Route {
        name: r.id.clone(),
        r#match: Some(m),
        ..Default::default()
    };
    match &r.action {
        Action::Forward(pools) => {
            let pools: Vec<(&str, u32)> =
                pools.iter().map(|w| (w.pool.as_str(), w.weight)).collect();
            forward(lb, &pools, &mut out);
        }
        Action::Redirect(rd) => out.action = Some(route::Action::Redirect(redirect(rd))),
        Action::Respond(rs) => {
            out.action = Some(route::Action::DirectResponse(direct(rs.status, &rs.body)));
        }
    }
    out.typed_per_filter_config
        .extend(crate::protect::for_route(lb, r, tracked));
    out
}

/// Where a request that matches no route goes: the default pool, or 404
/// when routes exist and the default pool has no enabled backend.
fn default_route(lb: &LoadBalancer) -> Route {
    let mut out = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    if lb.unrouted_is_not_found() {
        out.action = Some(route::Action::DirectResponse(direct(404, "")));
    } else {
        forward(lb, &[(DEFAULT_POOL, 1)], &mut out);
    }
    out
}

/// Forwards to `pools` (id, relative weight).
fn forward(lb: &LoadBalancer, pools: &[(&str, u32)], out: &mut Route) {
    let cluster_specifier = match pools {
        [(one, _)] => route_action::ClusterSpecifier::Cluster(names::pool_cluster(&lb.id, one)),
        many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(pool, weight)| weighted_cluster::ClusterWeight {
                    name: names::pool_cluster(&lb.id, pool),
                    weight: u32v(*weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
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
    let ring = pools.iter().any(|(id, _)| {
        lb.pool(id)
            .is_some_and(|p| p.algorithm == Algorithm::RingHash)
    });
    if ring {
        action.hash_policy = vec![route_action::HashPolicy {
            policy_specifier: Some(
                route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                    route_action::hash_policy::ConnectionProperties { source_ip: true },
                ),
            ),
            terminal: false,
        }];
    }
    if uses_sticky_sessions(lb) {
        out.typed_per_filter_config =
            HashMap::from([(STATEFUL_SESSION.to_owned(), sticky_per_route(lb, pools))]);
    }
    out.action = Some(route::Action::Route(action));
}

/// Whether any pool asks for sticky sessions, so the listener needs the filter.
pub(crate) fn uses_sticky_sessions(lb: &LoadBalancer) -> bool {
    lb.protocol.is_http() && lb.all_pools().any(|p| p.sticky_sessions.is_some())
}

/// Sticky sessions for a forward: the pool's own when it forwards to one
/// pool that has them, off otherwise (a weighted choice picks the pool
/// first, which a cookie naming a backend cannot follow).
fn sticky_per_route(lb: &LoadBalancer, pools: &[(&str, u32)]) -> Any {
    let sticky = match pools {
        [(one, _)] => lb.pool(one).and_then(|p| p.sticky_sessions.as_ref()),
        _ => None,
    };
    let over = match sticky {
        Some(s) => stateful_session_per_route::Override::StatefulSession(stateful_session(
            s,
            lb.protocol == Protocol::Https,
        )),
        None => stateful_session_per_route::Override::Disabled(true),
    };
    any(&StatefulSessionPerRoute {
        r#override: Some(over),
    })
}

/// A cookie that names the backend a client was sent to. Envoy checks it
/// on every request: while that backend is in the pool and healthy it is
/// used, otherwise the pool picks another and the cookie is replaced.
fn stateful_session(s: &StickySessions, https: bool) -> StatefulSession {
    let mut attributes = vec![CookieAttribute {
        name: "HttpOnly".into(),
        value: String::new(),
    }];
    if https {
        attributes.push(CookieAttribute {
            name: "Secure".into(),
            value: String::new(),
        });
    }
    let cookie = Cookie {
        name: s.cookie_name.clone(),
        // No ttl makes a session cookie.
        ttl: (s.ttl > 0).then(|| secs(s.ttl)).flatten(),
        path: "/".into(),
        attributes,
    };
    StatefulSession {
        session_state: Some(TypedExtensionConfig {
            name: "envoy.http.stateful_session.cookie".into(),
            typed_config: Some(any(&CookieBasedSessionState {
                cookie: Some(cookie),
            })),
        }),
        ..Default::default()
    }
}

fn string(p: string_matcher::MatchPattern) -> header_matcher::HeaderMatchSpecifier {
    header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    })
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_owned(),
        ..Default::default()
    }
}

fn direct(status: u16, body: &str) -> DirectResponseAction {
    DirectResponseAction {
        status: u32::from(status),
        body: (!body.is_empty()).then(|| DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn redirect(r: &Redirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    RedirectAction {
        scheme_rewrite_specifier: r.scheme.map(|s| {
            redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
                match s {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                }
                .into(),
            )
        }),
        host_redirect: r.host.clone().unwrap_or_default(),
        port_redirect: r.port.map_or(0, u32::from),
        path_rewrite_specifier: r
            .path
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        response_code: match r.status {
            302 => Code::Found,
            303 => Code::SeeOther,
            307 => Code::TemporaryRedirect,
            308 => Code::PermanentRedirect,
            _ => Code::MovedPermanently,
        } as i32,
        strip_query: false,
    }
}

/// The route configuration of the `redirect_http_port` listener: every
/// request gets a 301 to the same host, path and query on the https port.
/// The redirect listener's routes: ACME challenges to the agent, every
/// other request to https. The load balancer's access list and rate limit
/// hold here as on its own port.
pub(crate) fn redirect_config(lb: &LoadBalancer, tracked: u32) -> RouteConfiguration {
    let name = names::redirect_listener(&lb.id);
    RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name,
            domains: vec!["*".into()],
            routes: acme_challenge(lb)
                .into_iter()
                .chain([Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Redirect(RedirectAction {
                        scheme_rewrite_specifier: Some(
                            redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
                        ),
                        port_redirect: u32::from(lb.port),
                        ..Default::default()
                    })),
                    ..Default::default()
                }])
                .collect(),
            ..Default::default()
        }],
        ignore_port_in_host_matching: true,
        typed_per_filter_config: crate::protect::for_route_config(lb, tracked),
        ..Default::default()
    }
}

/// With an ACME certificate, HTTP-01 challenges go to the agent's
/// responder, which knows the tokens of its own orders and nothing else;
/// never to the customer's backends. The path it gets names the load
/// balancer (see [`crate::acme_challenge_path`]).
fn acme_challenge(lb: &LoadBalancer) -> Option<Route> {
    lb.tls.as_ref()?.acme.as_ref()?;
    Some(Route {
        name: "acme-challenge".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(
                crate::ACME_CHALLENGE_PREFIX.into(),
            )),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                names::ACME_CLUSTER.into(),
            )),
            // The responder learns whose listener asked: it answers only
            // this load balancer's tokens (and only for its names), so no
            // customer proves a name through another's port 80.
            prefix_rewrite: crate::acme_challenge_path(&lb.id),
            timeout: secs(5),
            ..Default::default()
        })),
        // The CA's validation servers are nobody's clients: a customer's
        // access list must not keep them from its own certificate.
        typed_per_filter_config: crate::protect::exempt(),
        ..Default::default()
    })
}

/// The `alt-svc` header of a load balancer that serves HTTP/3, replacing
/// any a backend sent (ours is the one that serves this port).
fn alt_svc(lb: &LoadBalancer) -> Option<HeaderValueOption> {
    lb.http3.then(|| HeaderValueOption {
        header: Some(HeaderValue {
            key: "alt-svc".into(),
            value: format!("h3=\":{}\"; ma={ALT_SVC_MAX_AGE}", lb.port),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    })
}
