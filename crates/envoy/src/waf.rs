//! The WAF: an ext_authz filter in the connection manager of a load
//! balancer that has `waf`, calling the WAF service over gRPC with the load
//! balancer's id; and the policy file the service reads. The mode, the
//! paranoia level and the exclusions live in that file (and `off` in the
//! route configuration), so changing them never changes the listener.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, grpc_service};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    BufferSettings, CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Any;
use serde_json::json;
use vpsie_lb_model::{Config, LoadBalancer, OversizeBody, WafMode};

use crate::names;
use crate::pb::any;

/// The ext_authz filter's name in the connection manager.
pub(crate) const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

/// How long Envoy waits for the WAF's verdict before the load balancer's
/// `fail_open` decides (see docs/load-balancer-format.md for the measure).
pub const WAF_TIMEOUT: Duration = Duration::from_millis(250);

/// Most body bytes Envoy holds and sends for inspection. In `block` with
/// `oversize_body: refuse` a longer body gets 413 from Envoy itself;
/// otherwise its start is inspected and the whole passes on. (The service
/// has tighter limits of its own on what it parses: see `vpsie-lb-waf`.)
pub const WAF_BODY_BYTES: u32 = 2 * 1024 * 1024;

/// How Envoy holds a body for the WAF: whole up to the limit, then either
/// its start (`partial`) or a 413.
fn buffering(partial: bool) -> BufferSettings {
    BufferSettings {
        max_request_bytes: WAF_BODY_BYTES,
        allow_partial_message: partial,
        pack_as_bytes: true,
    }
}

/// The ext_authz filter of a load balancer with a WAF.
pub(crate) fn http_filter(lb: &LoadBalancer) -> Option<HttpFilter> {
    let waf = lb.waf.as_ref()?;
    let config = ExtAuthz {
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: names::WAF_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: WAF_TIMEOUT.subsec_nanos() as i32,
            }),
            ..Default::default()
        })),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: waf.fail_open,
        // A closed WAF refuses as a blocked request would: 403.
        status_on_error: Some(HttpStatus {
            code: StatusCode::Forbidden as i32,
        }),
        // Routes of a load balancer that refuses oversize bodies override
        // this (see `for_route_config`), so the listener never changes.
        with_request_body: Some(buffering(true)),
        stat_prefix: "waf".into(),
        ..Default::default()
    };
    Some(HttpFilter {
        name: EXT_AUTHZ.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    })
}

/// The route configuration's setting: off, or inspect as this load balancer.
pub(crate) fn for_route_config(lb: &LoadBalancer) -> HashMap<String, Any> {
    let Some(waf) = &lb.waf else {
        return HashMap::new();
    };
    let per_route = ExtAuthzPerRoute {
        r#override: Some(match waf.mode {
            WafMode::Off => ext_authz_per_route::Override::Disabled(true),
            WafMode::Detect | WafMode::Block => {
                ext_authz_per_route::Override::CheckSettings(CheckSettings {
                    context_extensions: [("lb".to_owned(), lb.id.clone())].into(),
                    // Detect never refuses, so only block holds a body to
                    // the limit and answers 413 past it.
                    with_request_body: (waf.mode == WafMode::Block
                        && waf.oversize_body == OversizeBody::Refuse)
                        .then(|| buffering(false)),
                    ..Default::default()
                })
            }
        }),
    };
    HashMap::from([(EXT_AUTHZ.to_owned(), any(&per_route))])
}

/// The WAF service's policy file for `config`: every load balancer with a
/// WAF, by id. Deterministic (sorted keys).
pub fn waf_policies(config: &Config) -> String {
    let lbs: serde_json::Map<String, serde_json::Value> = config
        .load_balancers
        .iter()
        .filter_map(|lb| {
            let w = lb.waf.as_ref()?;
            let mode = match w.mode {
                WafMode::Off => "off",
                WafMode::Detect => "detect",
                WafMode::Block => "block",
            };
            let mut policy = json!({
                "mode": mode,
                "paranoia_level": w.paranoia_level,
                "exclusions": w.exclusions,
            });
            // Written only when not the default, so a service older than
            // the field (it refuses unknown keys) still reads the file
            // during an upgrade that reaches the agent first.
            if w.oversize_body == OversizeBody::InspectStart {
                policy["oversize_body"] = json!("inspect_start");
            }
            Some((lb.id.clone(), policy))
        })
        .collect();
    let mut text = json!({ "load_balancers": lbs }).to_string();
    text.push('\n');
    text
}
