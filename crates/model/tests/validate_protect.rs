//! Rate limits and access lists as data: a good and a bad case for each
//! field, on a load balancer and on a route.

mod common;

use common::{base, check, ok};
use serde_json::{Value, json};

fn set(key: &str, v: Value) -> Value {
    let mut doc = base();
    doc[key] = v;
    doc
}

fn tcp(key: &str, v: Value) -> Value {
    let mut doc = set(key, v);
    doc["protocol"] = json!("tcp");
    doc.as_object_mut().expect("object").remove("tls_config");
    doc.as_object_mut().expect("object").remove("health_check");
    doc
}

/// The base document with one route carrying `key: v`.
fn on_route(key: &str, v: Value) -> Value {
    let mut route =
        json!({"id": "admin", "path_prefix": "/admin", "forward": [{"pool": "default"}]});
    route[key] = v;
    set("routes", json!([route]))
}

#[test]
fn rate_limits_are_read_with_burst_defaulting_to_the_rate() {
    let v = ok(set(
        "rate_limit",
        json!({"requests_per_second": 50, "connections_per_second": 200}),
    ));
    let r = &v.config.load_balancers[0].rate_limit;
    let req = r.requests.expect("requests");
    assert_eq!(
        (req.per_second, req.burst, r.connections_per_second),
        (50, 50, Some(200))
    );
    let v = ok(on_route(
        "rate_limit",
        json!({"requests_per_second": 5, "burst": 10}),
    ));
    let rr = v.config.load_balancers[0].routes[0]
        .rate_limit
        .expect("route limit");
    assert_eq!((rr.per_second, rr.burst), (5, 10));
    let v = ok(tcp("rate_limit", json!({"connections_per_second": 20})));
    assert_eq!(
        v.config.load_balancers[0].rate_limit.connections_per_second,
        Some(20)
    );
    assert!(
        ok(base()).config.load_balancers[0]
            .rate_limit
            .requests
            .is_none()
    );
}

#[test]
fn bad_rate_limits_name_the_field() {
    let cases: &[(Value, &[&str])] = &[
        (
            set("rate_limit", json!({"requests_per_second": 0})),
            &["rate_limit.requests_per_second: must be 1..=1000000"],
        ),
        (
            set("rate_limit", json!({"requests_per_second": 5, "burst": -1})),
            &["rate_limit.burst: must be 1..=1000000"],
        ),
        (
            set("rate_limit", json!({"burst": 5})),
            &["rate_limit.burst: needs requests_per_second"],
        ),
        (
            set("rate_limit", json!({"connections_per_second": 1_000_001})),
            &["rate_limit.connections_per_second: must be 1..=1000000"],
        ),
        (
            set("rate_limit", json!({"requests_per_second": "5"})),
            &["rate_limit.requests_per_second: must be an integer"],
        ),
        (
            set("rate_limit", json!(5)),
            &["rate_limit: must be an object"],
        ),
        (
            tcp("rate_limit", json!({"requests_per_second": 5})),
            &["rate_limit.requests_per_second: tcp has no requests to count"],
        ),
        (
            on_route(
                "rate_limit",
                json!({"requests_per_second": 5, "connections_per_second": 9}),
            ),
            &["routes[0].rate_limit.connections_per_second: a route sees requests"],
        ),
        (
            on_route("rate_limit", json!({"burst": 9})),
            &[
                "routes[0].rate_limit.requests_per_second: is required on a route",
                "routes[0].rate_limit.burst: needs requests_per_second",
            ],
        ),
    ];
    for (doc, want) in cases {
        check(doc.clone(), want);
    }
}

#[test]
fn access_lists_are_read_as_networks() {
    let v = ok(set(
        "access",
        json!({"allow": ["10.0.0.0/8", "2001:db8::/32", "198.51.100.7"], "deny": ["203.0.113.0/24"]}),
    ));
    let a = v.config.load_balancers[0].access.clone().expect("access");
    let allow: Vec<String> = a.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["10.0.0.0/8", "2001:db8::/32", "198.51.100.7/32"]);
    assert_eq!(a.deny[0].to_string(), "203.0.113.0/24");
    assert!(
        ok(tcp("access", json!({"deny": ["10.9.0.0/16"]})))
            .config
            .load_balancers[0]
            .access
            .is_some()
    );
    let v = ok(on_route("access", json!({"allow": ["10.1.0.0/16"]})));
    assert!(v.config.load_balancers[0].routes[0].access.is_some());
}

#[test]
fn bad_access_lists_name_the_entry() {
    let cases: &[(Value, &[&str])] = &[
        (
            set("access", json!({"allow": ["10.0.0.0/33"]})),
            &["access.allow[0]: \"10.0.0.0/33\": the prefix length must be 0..=32"],
        ),
        (
            set("access", json!({"deny": ["bad"]})),
            &["access.deny[0]: \"bad\" is not a network"],
        ),
        (
            set("access", json!({"deny": [10]})),
            &["access.deny[0]: must be a network as a string, got a number"],
        ),
        (
            set("access", json!({"allow": []})),
            &["access.allow: is empty, so it would refuse every client"],
        ),
        (
            set("access", json!({"allow": "10.0.0.0/8"})),
            &["access.allow: must be an array"],
        ),
        (
            on_route("access", json!({"deny": ["::/129"]})),
            &["routes[0].access.deny[0]: \"::/129\": the prefix length must be 0..=128"],
        ),
    ];
    for (doc, want) in cases {
        check(doc.clone(), want);
    }
    let many: Vec<String> = (0..1001)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    check(
        set("access", json!({"deny": many})),
        &["access.deny: has 1001 networks, more than 1000"],
    );
}

#[test]
fn the_waf_is_read_with_its_defaults() {
    let v = ok(set(
        "waf",
        json!({"mode": "block", "exclusions": [942100, 920350, 942100]}),
    ));
    let w = v.config.load_balancers[0].waf.clone().expect("waf");
    assert_eq!(w.mode, vpsie_lb_model::WafMode::Block);
    assert_eq!((w.paranoia_level, w.fail_open), (1, true), "defaults");
    assert_eq!(w.exclusions, [920350, 942100], "sorted, unique");
    assert_eq!(
        w.oversize_body,
        vpsie_lb_model::OversizeBody::Refuse,
        "safe default"
    );
    let v = ok(set(
        "waf",
        json!({"mode": "detect", "paranoia_level": 4, "fail_open": false, "oversize_body": "inspect_start"}),
    ));
    let w = v.config.load_balancers[0].waf.clone().expect("waf");
    assert_eq!(
        (w.mode, w.paranoia_level, w.fail_open, w.oversize_body),
        (
            vpsie_lb_model::WafMode::Detect,
            4,
            false,
            vpsie_lb_model::OversizeBody::InspectStart
        )
    );
    assert!(
        ok(set("waf", json!({"mode": "off"}))).config.load_balancers[0]
            .waf
            .is_some()
    );
}

#[test]
fn bad_waf_settings_name_the_field() {
    let cases: &[(Value, &[&str])] = &[
        (
            set("waf", json!({"paranoia_level": 2})),
            &["waf.mode: is required"],
        ),
        (
            set("waf", json!({"mode": "loud"})),
            &["waf.mode: must be one of"],
        ),
        (
            set("waf", json!({"mode": "block", "paranoia_level": 5})),
            &["waf.paranoia_level: must be 1..=4 (got 5)"],
        ),
        (
            set("waf", json!({"mode": "block", "exclusions": [0, "x"]})),
            &[
                "waf.exclusions[0]: must be 1..=9999999",
                "waf.exclusions[1]: must be an integer",
            ],
        ),
        (
            set("waf", json!({"mode": "block", "fail_open": "yes"})),
            &["waf.fail_open: must be true or false"],
        ),
        (
            set(
                "waf",
                json!({"mode": "block", "exclusions": [942100, 10005, 900000]}),
            ),
            &[
                "waf.exclusions[1]: rule 10005 is one vpsie-lb adds",
                "waf.exclusions[2]: rule 900000 is one vpsie-lb adds",
            ],
        ),
        (
            set("waf", json!({"mode": "block", "oversize_body": "pass"})),
            &["waf.oversize_body: must be one of"],
        ),
        (
            tcp("waf", json!({"mode": "block"})),
            &["waf: a tcp load balancer has no requests to inspect"],
        ),
    ];
    for (doc, want) in cases {
        check(doc.clone(), want);
    }
}
