//! The route configuration's size that validation estimates (and caps)
//! before anything renders is an upper bound of what rendering gives.

use serde_json::{Value, json};
use vpsie_lb_envoy::{Delivery, TranslateOptions, XdsLayout, to_json, translate_lb};
use vpsie_lb_model::{ValidateOptions, validate, vhosts};

/// A load balancer whose routes are `routes`.
fn lb(routes: Value) -> Value {
    json!({"id": "size", "name": "size", "protocol": "http", "port": 80,
           "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}],
           "pools": [{"id": "api", "backends": [{"id": "b", "address": "10.0.0.2", "port": 80}]}],
           "rate_limit": {"requests_per_second": 10}, "access": {"deny": ["10.9.0.0/16"]},
           "routes": routes})
}

/// (estimated, rendered) bytes of `doc`'s route configuration.
fn sizes(doc: &Value) -> (usize, usize) {
    let v = validate(doc, &ValidateOptions::default()).expect("valid");
    let one = &v.config.load_balancers[0];
    let estimate = vhosts::translated_size(one, usize::MAX).bytes;
    let opts = TranslateOptions::new(Delivery::Files(XdsLayout::new(std::path::PathBuf::from(
        "/etc/envoy",
    ))));
    let out = translate_lb(one, &opts);
    let rendered = to_json(&out.routes[0]).expect("json").to_string().len();
    (estimate, rendered)
}

#[test]
fn the_estimate_is_never_below_the_rendered_route_configuration() {
    let hosts: Vec<String> = (0..40).map(|i| format!("h{i}.example.com")).collect();
    let cases = [
        json!([]),
        json!([{"id": "r", "hosts": hosts, "path_prefix": "/api", "forward": [{"pool": "api"}]},
               {"id": "all", "forward": [{"pool": "default", "weight": 9}, {"pool": "api", "weight": 1}]}]),
        json!([{"id": "re", "hosts": hosts, "path_regex": "/v[0-9]+/.*", "methods": ["GET", "PUT"],
                "headers": [{"name": "x-a", "regex": "[a-z]{1,8}"}, {"name": "x-b", "present": true}],
                "rate_limit": {"requests_per_second": 5}, "access": {"allow": ["10.0.0.0/8"]},
                "forward": [{"pool": "api"}]},
               {"id": "body", "respond": {"status": 503, "body": "x".repeat(4096)}},
               {"id": "moved", "path_exact": "/old", "redirect": {"host": "new.example.com", "path": "/new", "status": 301}}]),
        json!([{"id": "r", "hosts": hosts, "forward": [{"pool": "api"}]},
               {"id": "many", "path_regex": "/[a-z]+", "methods": ["GET", "POST"],
                "headers": (0..16).map(|h| json!({"name": format!("x-h{h}"), "regex": "[a-z]+[0-9]*"})).collect::<Vec<_>>(),
                "forward": [{"pool": "default"}]}]),
    ];
    for doc in cases.iter().map(|r| lb(r.clone())) {
        let (estimate, rendered) = sizes(&doc);
        eprintln!("estimate {estimate}, rendered {rendered}");
        assert!(
            estimate >= rendered,
            "estimate {estimate} < rendered {rendered}: {doc}"
        );
        // And not so far above that the cap refuses what it should not.
        assert!(
            estimate <= rendered * 4,
            "estimate {estimate} > 4 × rendered {rendered}"
        );
    }
}
