//! The WAF, on either engine ([`WafEngine`]):
//! - the service: an ext_authz filter in the connection manager of a load
//!   balancer that has `waf`, calling the WAF service over gRPC with the
//!   load balancer's id; and the policy file the service reads. The mode,
//!   the paranoia level and the exclusions live in that file (and `off` in
//!   the route configuration);
//! - in Envoy: the `vpsie-lb-waf-filter` dynamic module as an HTTP filter,
//!   the load balancer's id and `fail_open` in the listener's filter
//!   config, its policy in the route configuration.
//!
//! Either way, changing a policy never changes the listener.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, AsyncDataSource, DataSource, GrpcService, async_data_source, data_source,
    grpc_service,
};
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::{
    DynamicModuleFilter, DynamicModuleFilterPerRoute,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    BufferSettings, CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Any;
use serde_json::json;
use vpsie_lb_model::{Config, LoadBalancer, OversizeBody, Waf, WafMode};

use crate::pb::any;
use crate::{TranslateOptions, names};

/// The ext_authz filter's name in the connection manager.
pub(crate) const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

/// The in-Envoy WAF filter's name in the connection manager.
pub(crate) const IN_ENVOY: &str = "vpsie_lb.waf";

/// Where the in-Envoy filter writes its verdict in a stream's dynamic
/// metadata (the filter crate's `METADATA_NAMESPACE`; a test pins the two).
pub const IN_ENVOY_METADATA: &str = "vpsie_lb.waf";

/// Where load balancers' requests are inspected (`envoy.waf_engine`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WafEngine {
    /// The `vpsie-lb-waf` service, through ext_authz. A crash or a stall
    /// of the engine costs requests what `fail_open` says, never Envoy.
    #[default]
    Service,
    /// Inside Envoy, on its worker threads: the `vpsie-lb-waf-filter`
    /// module at this path. No round trip (about 0.7 of the service's CPU
    /// per request), but the engine shares Envoy's fate.
    InEnvoy(PathBuf),
}

/// Where Debian's package installs the in-Envoy filter.
pub const DEFAULT_WAF_FILTER: &str = "/usr/lib/vpsie-lb/libvpsie_lb_waf_filter.so";

impl WafEngine {
    /// The engine `kind` names (`service` or `envoy`), the latter loading
    /// the filter module at `filter`, an absolute path.
    pub fn parse(kind: &str, filter: PathBuf) -> Result<Self, String> {
        match kind {
            "service" => Ok(WafEngine::Service),
            "envoy" if filter.is_absolute() => Ok(WafEngine::InEnvoy(filter)),
            "envoy" => Err(format!(
                "the filter module {} must be an absolute path",
                filter.display()
            )),
            other => Err(format!("must be service or envoy (got {other:?})")),
        }
    }
}

/// The dynamic metadata namespace the access log reads the verdict from.
pub(crate) fn metadata_namespace(engine: &WafEngine) -> &'static str {
    match engine {
        WafEngine::Service => EXT_AUTHZ,
        WafEngine::InEnvoy(_) => IN_ENVOY_METADATA,
    }
}

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

/// The WAF filter of a load balancer with a WAF.
pub(crate) fn http_filter(lb: &LoadBalancer, opts: &TranslateOptions) -> Option<HttpFilter> {
    let waf = lb.waf.as_ref()?;
    Some(match &opts.waf_engine {
        WafEngine::Service => ext_authz_filter(waf),
        WafEngine::InEnvoy(module) => in_envoy_filter(lb, module),
    })
}

/// The module, loaded once and kept: its engine holds the compiled rules.
fn module_config(module: &std::path::Path) -> DynamicModuleConfig {
    DynamicModuleConfig {
        do_not_close: true,
        module: Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(
                    module.to_string_lossy().into_owned(),
                )),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// Text handed to the module, as a `StringValue`.
fn string_value(text: String) -> Any {
    any(&envoy_types::pb::google::protobuf::StringValue { value: text })
}

/// What the in-Envoy filter is told, as JSON: the listener's settings
/// (which load balancer, what `fail_open` says) and the route's (the
/// policy). The filter crate's tests parse these.
pub fn in_envoy_settings(lb: &LoadBalancer) -> Option<(String, String)> {
    let waf = lb.waf.as_ref()?;
    Some((
        json!({"lb": lb.id, "fail_open": waf.fail_open}).to_string(),
        json!({"policy": policy(waf)}).to_string(),
    ))
}

/// The in-Envoy filter: which load balancer, and what `fail_open` says.
fn in_envoy_filter(lb: &LoadBalancer, module: &std::path::Path) -> HttpFilter {
    let config = DynamicModuleFilter {
        dynamic_module_config: Some(module_config(module)),
        filter_name: "waf".into(),
        filter_config: in_envoy_settings(lb).map(|(listener, _)| string_value(listener)),
        ..Default::default()
    };
    HttpFilter {
        name: IN_ENVOY.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The ext_authz filter, calling the service.
fn ext_authz_filter(waf: &Waf) -> HttpFilter {
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
    HttpFilter {
        name: EXT_AUTHZ.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The route configuration's setting: off, or inspect as this load balancer.
pub(crate) fn for_route_config(lb: &LoadBalancer, opts: &TranslateOptions) -> HashMap<String, Any> {
    let Some(waf) = &lb.waf else {
        return HashMap::new();
    };
    let mut configs = HashMap::new();
    if let WafEngine::InEnvoy(module) = &opts.waf_engine {
        let per_route = DynamicModuleFilterPerRoute {
            dynamic_module_config: Some(module_config(module)),
            filter_name: "waf".into(),
            filter_config: in_envoy_settings(lb).map(|(_, route)| string_value(route)),
            ..Default::default()
        };
        configs.insert(IN_ENVOY.to_owned(), any(&per_route));
    }
    // Kept with the in-Envoy engine too, where no ext_authz filter reads
    // it: a switch from the service drains the old listeners, whose
    // ext_authz reads the new route configuration, and without the load
    // balancer's id in it the service could only answer "no policy". (The
    // other way round, the module's setting is not kept: it would load the
    // module into an Envoy told to use the service.)
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
    configs.insert(EXT_AUTHZ.to_owned(), any(&per_route));
    configs
}

/// The WAF service's policy file for `config`: every load balancer with a
/// WAF, by id. Deterministic (sorted keys).
pub fn waf_policies(config: &Config) -> String {
    let lbs: serde_json::Map<String, serde_json::Value> = config
        .load_balancers
        .iter()
        .filter_map(|lb| Some((lb.id.clone(), policy(lb.waf.as_ref()?))))
        .collect();
    let mut text = json!({ "load_balancers": lbs }).to_string();
    text.push('\n');
    text
}

/// One load balancer's policy, as the engine reads it (either engine).
fn policy(w: &Waf) -> serde_json::Value {
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
    // Written only when not the default, so a service older than the
    // field (it refuses unknown keys) still reads the file during an
    // upgrade that reaches the agent first.
    if w.oversize_body == OversizeBody::InspectStart {
        policy["oversize_body"] = json!("inspect_start");
    }
    policy
}
