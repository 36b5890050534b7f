//! Rules over the whole document as data: conflicts between load
//! balancers, how problems are reported, the parsers, and the caps.

use serde_json::{Value, json};
use vpsie_lb_model::{ValidateOptions, validate, validate_str};

mod common;

use common::{base, check, ok, opts, with};

#[test]
fn cross_document_rules() {
    let mut second = base();
    second["name"] = json!("other");
    let doc = json!([base(), second]);
    check(
        doc,
        &[
            "[1].id: id \"lb-1\" is already used by [0]",
            "[1].port: port 443 is already used by [0] (load balancer \"lb-1\")",
        ],
    );
    let mut second = base();
    second["id"] = json!("lb-2");
    second["port"] = json!(8443);
    let v = ok(json!([second, base()]));
    let ids: Vec<&str> = v
        .config
        .load_balancers
        .iter()
        .map(|l| l.id.as_str())
        .collect();
    assert_eq!(ids, vec!["lb-1", "lb-2"], "sorted by id");
    assert!(ok(json!([])).config.load_balancers.is_empty());
}

/// `base()` as load balancer `id` on `port` over `protocol`, without TLS
/// unless https.
fn on(id: &str, protocol: &str, port: u16) -> Value {
    let mut d = base();
    d["id"] = json!(id);
    d["protocol"] = json!(protocol);
    d["port"] = json!(port);
    if protocol != "https" {
        d.as_object_mut().expect("object").remove("tls_config");
    }
    d
}

#[test]
fn tcp_and_udp_share_a_port_number_but_two_of_one_transport_do_not() {
    // DNS over both, on 53.
    check(
        json!([on("dns-tcp", "tcp", 53), on("dns-udp", "udp", 53)]),
        &[],
    );
    check(
        json!([on("a", "udp", 53), on("b", "udp", 53)]),
        &["[1].port: udp port 53 is already used by [0] (load balancer \"a\")"],
    );
    // HTTP/3 listens on UDP at the https port, whichever comes first.
    let mut h3 = on("web", "https", 443);
    h3["http3"] = json!(true);
    check(
        json!([h3.clone(), on("dns", "udp", 443)]),
        &["[1].port: udp port 443 is already used by [0] (load balancer \"web\" as its http3)"],
    );
    check(
        json!([on("dns", "udp", 443), h3]),
        &["[1].http3: udp port 443 is already used by [0] (load balancer \"dns\")"],
    );
    check(json!([on("web", "https", 443), on("dns", "udp", 443)]), &[]);
    // A redirect port is TCP.
    let mut redirecting = on("web", "https", 443);
    redirecting["redirect_http_port"] = json!(80);
    check(json!([redirecting.clone(), on("u", "udp", 80)]), &[]);
    check(
        json!([redirecting, on("t", "tcp", 80)]),
        &[
            "[1].port: port 80 is already used by [0] (load balancer \"web\" as its redirect_http_port)",
        ],
    );
}

#[test]
fn array_paths_are_prefixed_with_the_index() {
    let mut bad = base();
    bad["id"] = json!("lb-2");
    bad["port"] = json!(8443);
    bad["backends"][0]["port"] = json!(0);
    check(
        json!([base(), bad]),
        &["[1].backends[0].port: must be 1..=65535 (got 0)"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let doc = json!({
        "id": "bad id", "name": "\u{7}", "protocol": "ftp", "port": 0, "algorithm": "fastest",
        "backends": [{"id": "x", "address": "nope!", "port": -1, "weight": -2}],
    });
    check(
        doc,
        &[
            "id: must match",
            "name: must not contain control characters",
            "protocol: must be one of",
            "port: must be 1..=65535",
            "algorithm: must be one of",
            "backends[0].address: must be an IPv4",
            "backends[0].port: must be 1..=65535",
            "backends[0].weight: must not be negative",
        ],
    );
}

#[test]
fn unknown_keys_warn_and_strict_rejects_them() {
    let v = ok(with("/sticky", Some(json!(true))));
    assert_eq!(v.warnings[0].to_string(), "sticky: unknown key (ignored)");
    let strict = ValidateOptions {
        strict: true,
        ..opts()
    };
    let err = validate(&with("/backends/0/zone", Some(json!("a"))), &strict).expect_err("strict");
    assert_eq!(
        err.errors[0].to_string(),
        "backends[0].zone: unknown key (ignored)"
    );
    ok(with("/created_at", Some(json!("2024-01-01T00:00:00Z"))));
    ok(with("/backends/0/status", Some(json!("up"))));
}

#[test]
fn null_counts_as_absent() {
    ok(with("/health_check", Some(Value::Null)));
    check(with("/port", Some(Value::Null)), &["port: is required"]);
}

#[test]
fn parse_errors_name_the_document() {
    for (text, want) in [
        ("", "(document): document is empty"),
        ("{\"id\": ", "(document): invalid json"),
        ("id: [unclosed", "(document): invalid yaml"),
        (
            "42",
            "(document): must be a load-balancer object or an array of them, got a number",
        ),
    ] {
        let err = validate_str(text, &opts()).expect_err(text);
        assert!(
            err.errors[0].to_string().starts_with(want),
            "{text:?}: {}",
            err.errors[0]
        );
    }
}

#[test]
fn yaml_and_json_give_the_same_model() {
    let json_text = serde_json::to_string(&base()).expect("json");
    let yaml_text = "id: lb-1\nname: web\nprotocol: https\nport: 443\nalgorithm: round_robin\nbackends:\n  - {id: b1, address: 10.0.0.1, port: 8080}\n  - {id: b2, address: 10.0.0.2, port: 8080, weight: 3}\nhealth_check: {type: http, path: /health, interval: 10, timeout: 2, healthy_threshold: 2, unhealthy_threshold: 3}\ntls_config: {certificate_path: /etc/tls/cert.pem, private_key_path: /etc/tls/key.pem}\n";
    assert_eq!(
        validate_str(&json_text, &opts()),
        validate_str(yaml_text, &opts())
    );
}

/// Regression: port and id conflicts went unreported when one of the load
/// balancers involved had an unrelated error, so a fix-and-retry loop
/// surfaced problems one at a time.
#[test]
fn cross_document_conflicts_are_reported_even_when_a_load_balancer_is_invalid() {
    let mut broken = base();
    broken["backends"][0]["port"] = json!(0);
    let mut twin = base();
    twin["name"] = json!("twin");
    check(
        json!([broken, twin]),
        &[
            "[0].backends[0].port: must be 1..=65535 (got 0)",
            "[1].id: id \"lb-1\" is already used by [0]",
            "[1].port: port 443 is already used by [0] (load balancer \"lb-1\")",
        ],
    );
}

fn backends_json(n: usize, port: i64) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"id": format!("b{i}"), "address": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256), "port": port}))
            .collect(),
    )
}

#[test]
fn caps_on_backends_load_balancers_and_problems() {
    use vpsie_lb_model::limits::{MAX_BACKENDS, MAX_LOAD_BALANCERS, MAX_PROBLEMS};
    ok(with("/backends", Some(backends_json(MAX_BACKENDS, 80))));
    check(
        with("/backends", Some(backends_json(MAX_BACKENDS + 1, 80))),
        &["backends: has 10001 backends, more than the 10000 one load balancer may have"],
    );
    let many = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| {
                    let mut d = base();
                    d["id"] = json!(format!("lb{i}"));
                    d["port"] = json!(10_000 + i);
                    d
                })
                .collect(),
        )
    };
    assert!(validate(&many(MAX_LOAD_BALANCERS), &opts()).is_ok());
    check(
        many(MAX_LOAD_BALANCERS + 1),
        &["(document): has 1001 load balancers, more than the 1000 one agent serves"],
    );
    // 300 bad ports: the first 100 and a line that counts the rest.
    let rej =
        validate(&with("/backends", Some(backends_json(300, 0))), &opts()).expect_err("bad ports");
    assert_eq!(rej.errors.len(), MAX_PROBLEMS + 1);
    assert_eq!(
        rej.errors[MAX_PROBLEMS].to_string(),
        "(document): 200 more problem(s) not listed; fix these first"
    );
}
