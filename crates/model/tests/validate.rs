//! Validation rules as data: one `check()` and a good and a bad case per rule.

use serde_json::json;
use vpsie_lb_model::{Address, TlsVersion, ValidateOptions, validate};

mod common;

use common::{base, check, ok, opts, with};

#[test]
fn base_document_is_valid_and_sorted_defaults_apply() {
    let v = ok(base());
    let lb = &v.config.load_balancers[0];
    assert_eq!(
        lb.default_pool.backends[0].weight, 1,
        "absent weight is the default"
    );
    assert_eq!(lb.default_pool.backends[1].weight, 3);
    let tls = lb.tls.as_ref().expect("tls");
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.alpn, vec!["h2", "http/1.1"]);
    assert!(
        tls.cipher_suites
            .iter()
            .all(|c| c.contains("GCM") || c.contains("CHACHA20"))
    );
    assert_eq!(lb.timeouts.connect, 5);
    assert!(v.warnings.is_empty());
}

#[test]
fn id() {
    ok(with("/id", Some(json!("Lb_9-x"))));
    check(
        with("/id", Some(json!("bad id!"))),
        &["id: must match [A-Za-z0-9_-]{1,64}"],
    );
    check(
        with("/id", Some(json!("a".repeat(65)))),
        &["id: must match"],
    );
    check(with("/id", None), &["id: is required"]);
    check(
        with("/id", Some(json!(7))),
        &["id: must be a string, got a number"],
    );
}

#[test]
fn name() {
    ok(with("/name", Some(json!("café ☕ front"))));
    // Go's zero value: the name defaults to the id.
    let v = ok(with("/name", Some(json!(""))));
    assert_eq!(v.config.load_balancers[0].name, "lb-1");
    let v = ok(with("/name", None));
    assert_eq!(v.config.load_balancers[0].name, "lb-1");
    check(
        with("/name", Some(json!("x".repeat(256)))),
        &["name: must be 1..=255 characters (got 256)"],
    );
    check(
        with("/name", Some(json!("a\tb"))),
        &["name: must not contain control characters"],
    );
}

#[test]
fn protocol() {
    ok(with("/protocol", Some(json!("https"))));
    let mut tcp = with("/protocol", Some(json!("tcp")));
    tcp.as_object_mut().expect("object").remove("tls_config");
    ok(tcp);
    check(
        with("/protocol", Some(json!("sctp"))),
        &["protocol: must be one of http, https, tcp, tls_passthrough, udp (got \"sctp\")"],
    );
}

#[test]
fn listener_port() {
    ok(with("/port", Some(json!(1))));
    ok(with("/port", Some(json!(65535))));
    check(
        with("/port", Some(json!(0))),
        &["port: must be 1..=65535 (got 0)"],
    );
    check(
        with("/port", Some(json!(65536))),
        &["port: must be 1..=65535 (got 65536)"],
    );
    check(
        with("/port", Some(json!("443"))),
        &["port: must be an integer, got a string"],
    );
    check(
        with("/port", Some(json!(443.5))),
        &["port: must be a whole number"],
    );
    check(
        with("/port", Some(json!(9901))),
        &["port: port 9901 is reserved for envoy admin"],
    );
}

#[test]
fn algorithm() {
    for a in ["round_robin", "least_request", "random", "ring_hash"] {
        ok(with("/algorithm", Some(json!(a))));
    }
    check(
        with("/algorithm", Some(json!("leastconn"))),
        &["algorithm: must be one of round_robin, least_request, random, ring_hash"],
    );
    // Absent, or Go's zero value: round robin.
    for doc in [
        with("/algorithm", None),
        with("/algorithm", Some(json!(""))),
    ] {
        let v = ok(doc);
        assert_eq!(
            v.config.load_balancers[0].default_pool.algorithm,
            vpsie_lb_model::Algorithm::RoundRobin
        );
    }
}

#[test]
fn max_connections() {
    ok(with("/max_connections", Some(json!(1))));
    // Go's zero value: no per-listener limit.
    let v = ok(with("/max_connections", Some(json!(0))));
    assert_eq!(v.config.load_balancers[0].max_connections, None);
    check(
        with("/max_connections", Some(json!(-5))),
        &["max_connections: must be 1..="],
    );
}

#[test]
fn backends_list() {
    ok(with("/backends", Some(json!([]))));
    check(with("/backends", None), &["backends: is required"]);
    check(
        with("/backends", Some(json!({}))),
        &["backends: must be an array, got an object"],
    );
    check(
        with("/backends/0", Some(json!("10.0.0.1:80"))),
        &["backends[0]: must be an object, got a string"],
    );
}

#[test]
fn backend_id() {
    check(
        with("/backends/1/id", Some(json!("b1"))),
        &["backends[1].id: id \"b1\" is already used by backends[0]"],
    );
    check(
        with("/backends/0/id", Some(json!("b 1"))),
        &["backends[0].id: must match"],
    );
}

/// Every address class that reaches the VM itself, as the review found them
/// passing `check`: each is refused with its field and the way out.
#[test]
fn regression_a_backend_could_point_at_the_vm_itself() {
    for (bad, class) in [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("255.255.255.255", "broadcast"),
        ("localhost", "always means the load balancer VM"),
        ("LOCALHOST.", "always means the load balancer VM"),
        ("admin.localhost", "always means the load balancer VM"),
    ] {
        let doc = with("/backends/1/address", Some(json!(bad)));
        check(doc.clone(), &[&format!("backends[1].address: {class}")]);
        let rej = validate(&doc, &opts()).expect_err("refused");
        assert!(
            rej.errors[0].message.contains("allowed_backend_networks")
                && rej.errors[0].message.contains("--allow-backend-network"),
            "the way out is named: {}",
            rej.errors[0]
        );
    }
}

#[test]
fn allowed_backend_networks_let_the_operator_trust_a_range() {
    let trusting = |nets: &[&str]| ValidateOptions {
        allowed_backend_networks: nets.iter().map(|n| n.parse().expect("cidr")).collect(),
        ..opts()
    };
    let doc = |addr: &str| with("/backends/0/address", Some(json!(addr)));
    let allow_lo = trusting(&["127.0.0.0/8", "::1/128"]);
    for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
        assert!(validate(&doc(addr), &allow_lo).is_ok(), "{addr}");
    }
    for addr in ["169.254.169.254", "localhost", "0.0.0.0"] {
        assert!(validate(&doc(addr), &allow_lo).is_err(), "{addr}");
    }
    let narrow = trusting(&["127.0.0.1/32"]);
    assert!(validate(&doc("127.0.0.1"), &narrow).is_ok());
    assert!(validate(&doc("127.0.0.2"), &narrow).is_err());
}

#[test]
fn backend_address() {
    for good in [
        "2001:db8::5",
        "backend.internal",
        "web-1.example.com.",
        "localhost.example.com",
    ] {
        ok(with("/backends/0/address", Some(json!(good))));
    }
    for (bad, why) in [
        ("0.0.0.0", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("[::1]", "without brackets"),
        ("bad_host!", "must be an IPv4 address"),
        ("-a.example.com", "must be an IPv4 address"),
        ("1.2.3", "must be an IPv4 address"),
        ("", "must be an IPv4 address"),
    ] {
        check(
            with("/backends/0/address", Some(json!(bad))),
            &[&format!("backends[0].address: {why}")],
        );
    }
    let long = format!("{}.com", "a.".repeat(126));
    check(
        with("/backends/0/address", Some(json!(long))),
        &["backends[0].address: must be"],
    );
    let v = ok(with("/backends/0/address", Some(json!("API.Example.com"))));
    assert_eq!(
        v.config.load_balancers[0].default_pool.backends[0].address,
        Address::Hostname("api.example.com".into())
    );
}

#[test]
fn backend_port() {
    check(
        with("/backends/0/port", Some(json!(70000))),
        &["backends[0].port: must be 1..=65535 (got 70000)"],
    );
    check(
        with("/backends/1/port", None),
        &["backends[1].port: is required"],
    );
}

#[test]
fn backend_weight() {
    let v = ok(with("/backends/0/weight", Some(json!(0))));
    assert_eq!(
        v.config.load_balancers[0].default_pool.backends[0].weight, 1,
        "0 means the default"
    );
    ok(with("/backends/0/weight", Some(json!(1000))));
    check(
        with("/backends/0/weight", Some(json!(-1))),
        &["backends[0].weight: must not be negative (got -1)"],
    );
    check(
        with("/backends/0/weight", Some(json!(1001))),
        &["backends[0].weight: must be at most 1000 (got 1001)"],
    );
    check(
        with("/backends/0/weight", Some(json!(2.5))),
        &["backends[0].weight: must be a whole number"],
    );
}

#[test]
fn backend_enabled_and_duplicate_endpoints() {
    let v = ok(with("/backends/0/enabled", Some(json!(false))));
    assert!(!v.config.load_balancers[0].default_pool.backends[0].enabled);
    check(
        with("/backends/0/enabled", Some(json!("yes"))),
        &["backends[0].enabled: must be true or false"],
    );
    let dup = json!({"id": "b3", "address": "10.0.0.1", "port": 8080});
    let mut doc = base();
    doc["backends"]
        .as_array_mut()
        .expect("array")
        .push(dup.clone());
    check(
        doc,
        &["backends[2]: 10.0.0.1:8080 is the same endpoint as backends[0]"],
    );
    let mut doc = base();
    let mut disabled = dup;
    disabled["enabled"] = json!(false);
    doc["backends"]
        .as_array_mut()
        .expect("array")
        .push(disabled);
    ok(doc);
}

#[test]
fn tls_config_fields() {
    check(
        with("/tls_config", None),
        &["tls_config: is required when protocol is https"],
    );
    check(
        with("/tls_config/certificate_path", Some(json!("cert.pem"))),
        &["tls_config.certificate_path: must be an absolute path"],
    );
    check(
        with("/tls_config/private_key_path", None),
        &["tls_config.private_key_path: is required"],
    );
}

#[test]
fn regression_a_document_could_serve_the_acme_store_s_keys() {
    // `opts()` marks the agent's state and config directories private.
    // (key, path, the problem; "" when the path is allowed)
    let cases = [
        (
            "private_key_path",
            "/var/lib/vpsie-lb/acme/certificates/victim/key.pem",
            "is under /var/lib/vpsie-lb, which only the agent may read",
        ),
        (
            "certificate_path",
            "/etc/ssl/../vpsie-lb/agent.yaml",
            "must not contain \"..\"",
        ),
        (
            "ca_cert_path",
            "/etc/vpsie-lb/agent.yaml",
            "is under /etc/vpsie-lb",
        ),
        (
            "private_key_path",
            "/proc/self/root/var/lib/vpsie-lb/k.pem",
            "is under /proc, /sys or /dev",
        ),
        // A directory that only starts with the same letters is not under it.
        ("certificate_path", "/var/lib/vpsie-lb-certs/c.pem", ""),
    ];
    for (key, path, why) in cases {
        let doc = with(&format!("/tls_config/{key}"), Some(json!(path)));
        let problem = format!("tls_config.{key}: {path:?} {why}");
        match why {
            "" => check(doc, &[]),
            _ => check(doc, &[problem.as_str()]),
        };
    }
}

#[test]
fn tls_config_versions() {
    check(
        with("/tls_config/min_version", Some(json!("TLSv1.1"))),
        &["tls_config.min_version: must be one of TLSv1.2, TLSv1.3"],
    );
    let mut doc = with("/tls_config/min_version", Some(json!("TLSv1.3")));
    doc["tls_config"]["max_version"] = json!("TLSv1.2");
    check(
        doc,
        &["tls_config.max_version: must not be lower than min_version"],
    );
    check(
        with("/tls_config/cipher_suites", Some(json!(["RC4-MD5"]))),
        &["tls_config.cipher_suites[0]: unknown cipher suite \"RC4-MD5\""],
    );
    check(
        with(
            "/tls_config/cipher_suites",
            Some(json!(["TLS_AES_128_GCM_SHA256"])),
        ),
        &["tls_config.cipher_suites[0]: \"TLS_AES_128_GCM_SHA256\" is a TLS 1.3 suite"],
    );
    let v = ok(with(
        "/tls_config/cipher_suites",
        Some(json!(["ECDHE-RSA-AES128-SHA"])),
    ));
    assert_eq!(
        v.config.load_balancers[0]
            .tls
            .as_ref()
            .expect("tls")
            .cipher_suites,
        vec!["ECDHE-RSA-AES128-SHA"]
    );
    check(
        with("/tls_config/alpn", Some(json!(["h3"]))),
        &["tls_config.alpn[0]: must be \"h2\" or \"http/1.1\""],
    );
    let v = ok(with(
        "/tls_config/ca_cert_path",
        Some(json!("/etc/tls/ca.pem")),
    ));
    assert!(
        v.config.load_balancers[0]
            .tls
            .as_ref()
            .expect("tls")
            .ca_cert_path
            .is_some()
    );
}

#[test]
fn tls_config_on_plain_http_is_ignored_with_a_warning() {
    let v = ok(with("/protocol", Some(json!("http"))));
    assert!(v.config.load_balancers[0].tls.is_none());
    assert_eq!(
        v.warnings[0].to_string(),
        "tls_config: ignored because protocol is http"
    );
}

#[test]
fn timeouts() {
    let v = ok(with(
        "/timeouts",
        Some(json!({"connect": 3, "idle": 0, "request": 0})),
    ));
    let t = v.config.load_balancers[0].timeouts;
    assert_eq!(
        (t.connect, t.idle, t.request),
        (3, None, None),
        "0 disables idle and request"
    );
    // Go's zero value: the default connect timeout (the original agent
    // ignored the field and always used 5 s).
    let v = ok(with("/timeouts", Some(json!({"connect": 0}))));
    assert_eq!(v.config.load_balancers[0].timeouts.connect, 5);
    check(
        with("/timeouts", Some(json!({"connect": 301}))),
        &["timeouts.connect: must be 1..=300 (got 301)"],
    );
    check(
        with("/timeouts", Some(json!({"request": -1}))),
        &["timeouts.request: must be 0..=86400 (got -1)"],
    );
    check(
        with("/timeouts", Some(json!({"idle": 86401}))),
        &["timeouts.idle: must be 0..=86400"],
    );
}
