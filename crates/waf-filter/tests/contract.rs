//! What the agent's translation tells the filter, the filter reads: the
//! settings `vpsie_lb_envoy` writes for a load balancer with a WAF parse
//! (and the policy compiles against the packaged Core Rule Set), and the
//! verdict goes where the access log looks for it.

use serde_json::json;
use vpsie_lb_envoy::{IN_ENVOY_METADATA, in_envoy_settings};
use vpsie_lb_model::{ValidateOptions, validate_str};
use vpsie_lb_waf_filter::{FilterConfig, METADATA_NAMESPACE, RouteConfig};

#[test]
fn the_filter_reads_what_translation_writes() {
    let wafs = [
        json!({"mode": "block"}),
        json!({"mode": "detect", "paranoia_level": 3, "exclusions": [942100],
               "oversize_body": "inspect_start", "fail_open": true}),
        json!({"mode": "off"}),
    ];
    for waf in wafs {
        let doc = json!([{
            "id": "shop", "protocol": "http", "port": 80,
            "backends": [{"id": "b1", "address": "10.0.0.11", "port": 8080}],
            "waf": waf,
        }]);
        let valid = validate_str(&doc.to_string(), &ValidateOptions::default())
            .unwrap_or_else(|e| panic!("{waf}: {e:?}"));
        let (listener, route) =
            in_envoy_settings(&valid.config.load_balancers[0]).expect("a load balancer with a waf");
        if let Err(e) = FilterConfig::parse(listener.as_bytes()) {
            panic!("{waf}: {listener}: {e}");
        }
        if let Err(e) = RouteConfig::parse(route.as_bytes()) {
            panic!("{waf}: {route}: {e}");
        }
    }
}

#[test]
fn the_verdict_is_where_the_access_log_reads_it() {
    assert_eq!(METADATA_NAMESPACE, IN_ENVOY_METADATA);
}
