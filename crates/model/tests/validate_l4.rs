//! The fields that close the gap with the managed load balancers, as data:
//! PROXY protocol, TLS passthrough and the deregistration delay, a good and
//! a bad case for each.

mod common;

use common::{base, check, ok};
use serde_json::{Value, json};
use vpsie_lb_model::{Protocol, ProxyProtocol, RouteAction};

/// `base()` (https) with these top-level keys set.
fn set(pairs: &[(&str, Value)]) -> Value {
    let mut doc = base();
    for (k, v) in pairs {
        doc[*k] = v.clone();
    }
    doc
}

/// A tls_passthrough load balancer with a `shop` pool and these routes.
fn passthrough(routes: Value) -> Value {
    let mut doc = set(&[
        ("protocol", json!("tls_passthrough")),
        (
            "pools",
            json!([{"id": "shop", "backends": [{"id": "s1", "address": "10.0.2.1", "port": 443}]}]),
        ),
        ("routes", routes),
    ]);
    doc.as_object_mut().expect("object").remove("tls_config");
    doc.as_object_mut().expect("object").remove("health_check");
    doc
}

#[test]
fn proxy_protocol_takes_v1_or_v2_on_every_protocol() {
    for (text, want) in [("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)] {
        for protocol in ["https", "tcp"] {
            let mut doc = set(&[("proxy_protocol", json!(text))]);
            doc["protocol"] = json!(protocol);
            let v = ok(doc);
            assert_eq!(v.config.load_balancers[0].proxy_protocol, Some(want));
        }
    }
    assert_eq!(ok(base()).config.load_balancers[0].proxy_protocol, None);
    check(
        set(&[("proxy_protocol", json!("v3"))]),
        &["proxy_protocol: must be one of"],
    );
    check(
        set(&[("proxy_protocol", json!(2))]),
        &["proxy_protocol: must be a string"],
    );
}

#[test]
fn deregistration_delay_is_whole_seconds_up_to_an_hour() {
    let v = ok(set(&[("deregistration_delay", json!(30))]));
    assert_eq!(v.config.load_balancers[0].deregistration_delay, 30);
    assert_eq!(ok(base()).config.load_balancers[0].deregistration_delay, 0);
    check(
        set(&[("deregistration_delay", json!(-1))]),
        &["deregistration_delay: must be"],
    );
    check(
        set(&[("deregistration_delay", json!(3601))]),
        &["deregistration_delay: must be"],
    );
    check(
        set(&[("deregistration_delay", json!("30s"))]),
        &["deregistration_delay: must be"],
    );
}

#[test]
fn tls_passthrough_routes_choose_pools_by_server_name() {
    let v = ok(passthrough(json!([
        {"id": "shop", "hosts": ["Shop.Example.com", "*.shop.example.com"], "forward": [{"pool": "shop"}]}
    ])));
    let lb = &v.config.load_balancers[0];
    assert_eq!(lb.protocol, Protocol::TlsPassthrough);
    assert_eq!(
        lb.routes[0].hosts,
        ["shop.example.com", "*.shop.example.com"]
    );
    assert!(matches!(&lb.routes[0].action, RouteAction::Forward(p) if p[0].pool == "shop"));
    assert!(lb.tls.is_none());
}

#[test]
fn a_tls_passthrough_route_sees_only_the_server_name() {
    check(
        passthrough(json!([{"id": "r", "forward": [{"pool": "shop"}]}])),
        &["routes[0].hosts: is required for a tls_passthrough route"],
    );
    check(
        passthrough(
            json!([{"id": "r", "hosts": ["a.example"], "path_prefix": "/x",
                            "forward": [{"pool": "shop"}]}]),
        ),
        &["routes[0].path_prefix: needs protocol http or https"],
    );
    check(
        passthrough(json!([{"id": "r", "hosts": ["a.example"], "respond": {"status": 200}}])),
        &["routes[0].respond: needs protocol http or https"],
    );
    check(
        passthrough(json!([
            {"id": "r1", "hosts": ["a.example"], "forward": [{"pool": "shop"}]},
            {"id": "r2", "hosts": ["A.example"], "forward": [{"pool": "default"}]}
        ])),
        &["routes[1].hosts: \"a.example\" is already named by routes[0].hosts"],
    );
}

#[test]
fn tls_passthrough_has_no_requests_and_no_certificate() {
    let mut doc = passthrough(json!([]));
    doc["sticky_sessions"] = json!({"cookie_name": "s"});
    check(doc, &["sticky_sessions: needs protocol http or https"]);
    let mut doc = passthrough(json!([]));
    doc["waf"] = json!({"mode": "block"});
    check(
        doc,
        &["waf: a tls_passthrough load balancer has no requests to inspect"],
    );
    let mut doc = passthrough(json!([]));
    doc["rate_limit"] = json!({"requests_per_second": 5});
    check(
        doc,
        &["rate_limit.requests_per_second: tls_passthrough has no requests"],
    );
    let mut doc = passthrough(json!([]));
    doc["tls_config"] = base()["tls_config"].clone();
    let v = ok(doc);
    assert!(
        v.warnings
            .iter()
            .any(|w| w.to_string() == "tls_config: ignored because protocol is tls_passthrough"),
        "{:?}",
        v.warnings
    );
    let mut doc = passthrough(json!([]));
    doc["redirect_http_port"] = json!(80);
    check(
        doc,
        &["redirect_http_port: needs protocol https (got tls_passthrough)"],
    );
}

#[test]
fn tcp_still_has_no_pools_or_routes() {
    let mut doc = passthrough(json!([]));
    doc["protocol"] = json!("tcp");
    check(
        doc,
        &[
            "pools: needs protocol http, https or tls_passthrough",
            "routes: needs protocol http, https or tls_passthrough",
        ],
    );
}

/// A udp load balancer: `base()` made udp, without TLS.
fn udp(pairs: &[(&str, Value)]) -> Value {
    let mut doc = set(pairs);
    doc["protocol"] = json!("udp");
    doc.as_object_mut().expect("object").remove("tls_config");
    doc
}

#[test]
fn udp_sessions_idle_out_after_a_minute_by_default() {
    let v = ok(udp(&[]));
    let lb = &v.config.load_balancers[0];
    assert_eq!(lb.protocol, Protocol::Udp);
    assert_eq!(lb.timeouts.idle, Some(60));
    let v = ok(udp(&[("timeouts", json!({"idle": 5}))]));
    assert_eq!(v.config.load_balancers[0].timeouts.idle, Some(5));
    // Go clients send 0 for unset: the default, with a warning.
    let v = ok(udp(&[("timeouts", json!({"idle": 0}))]));
    assert_eq!(v.config.load_balancers[0].timeouts.idle, Some(60));
    assert!(
        v.warnings
            .iter()
            .any(|w| w.to_string().starts_with("timeouts.idle: 0 cannot disable")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn udp_refuses_what_needs_connections_or_requests() {
    check(
        udp(&[("proxy_protocol", json!("v2"))]),
        &["proxy_protocol: is not sent over udp"],
    );
    check(
        udp(&[("access", json!({"deny": ["10.0.0.0/8"]}))]),
        &["access: needs a connection to judge"],
    );
    check(
        udp(&[("rate_limit", json!({"connections_per_second": 10}))]),
        &["rate_limit: needs connections or requests to count"],
    );
    check(
        udp(&[("algorithm", json!("least_request"))]),
        &["algorithm: least_request counts requests"],
    );
    check(
        udp(&[("pools", json!([]))]),
        &["pools: needs protocol http, https or tls_passthrough"],
    );
    for algorithm in ["round_robin", "random", "ring_hash"] {
        ok(udp(&[("algorithm", json!(algorithm))]));
    }
}

#[test]
fn a_health_check_may_go_to_another_port() {
    let mut doc = udp(&[]);
    doc["health_check"]["port"] = json!(8053);
    let v = ok(doc);
    let hc = v.config.load_balancers[0]
        .default_pool
        .health_check
        .as_ref();
    assert_eq!(hc.and_then(|h| h.port), Some(8053));
    assert_eq!(
        ok(base()).config.load_balancers[0]
            .default_pool
            .health_check
            .as_ref()
            .and_then(|h| h.port),
        None
    );
    let mut doc = base();
    doc["health_check"]["port"] = json!(0);
    check(doc, &["health_check.port: must be 1..=65535"]);
}

#[test]
fn http3_is_for_https_only() {
    let v = ok(set(&[("http3", json!(true))]));
    assert!(v.config.load_balancers[0].http3);
    assert!(!ok(base()).config.load_balancers[0].http3);
    ok(set(&[("http3", json!(false))]));
    let mut doc = set(&[("http3", json!(true))]);
    doc["protocol"] = json!("tcp");
    doc.as_object_mut().expect("object").remove("tls_config");
    check(doc, &["http3: needs protocol https (got tcp)"]);
    check(set(&[("http3", json!("yes"))]), &["http3: must be"]);
}

/// `base()` with an ACME certificate (`acme` as given) and a redirect port.
fn acme(acme: Value) -> Value {
    set(&[
        ("tls_config", json!({"acme": acme})),
        ("redirect_http_port", json!(80)),
    ])
}

#[test]
fn acme_takes_plain_names_a_contact_and_an_https_directory() {
    let v = ok(acme(
        json!({"domains": ["Shop.Vpsie-Lab.net", "www.shop.vpsie-lab.net"],
                           "email": "ops@example.com"}),
    ));
    let tls = v.config.load_balancers[0].tls.as_ref().expect("tls");
    let a = tls.acme.as_ref().expect("acme");
    assert_eq!(a.domains, ["shop.vpsie-lab.net", "www.shop.vpsie-lab.net"]);
    assert_eq!(a.email.as_deref(), Some("ops@example.com"));
    assert_eq!(a.directory_url, vpsie_lb_model::DEFAULT_ACME_DIRECTORY);
    assert!(
        tls.awaits_certificate(),
        "no certificate before the agent stores one"
    );
    // A directory the operator allowed (`opts()` allows this one).
    let v = ok(acme(json!({"domains": ["a.vpsie-lab.net"],
                           "directory_url": "https://acme.internal:14000/dir"})));
    let a = v.config.load_balancers[0]
        .tls
        .as_ref()
        .and_then(|t| t.acme.clone());
    assert_eq!(
        a.expect("acme").directory_url,
        "https://acme.internal:14000/dir"
    );
}

#[test]
fn acme_refuses_what_http01_cannot_prove_and_a_second_certificate_source() {
    let d = |domains: Value| acme(json!({"domains": domains}));
    for (doc, want) in [
        (
            d(json!(["*.vpsie-lab.net"])),
            "tls_config.acme.domains[0]: a wildcard",
        ),
        (
            d(json!(["localhost"])),
            "tls_config.acme.domains[0]: an ACME server issues only",
        ),
        (
            d(json!([])),
            "tls_config.acme.domains: must name at least one",
        ),
        (
            d(json!(["a.vpsie-lab.net", "A.vpsie-lab.net"])),
            "tls_config.acme.domains[1]: \"a.vpsie-lab.net\" is listed twice",
        ),
        (
            d(json!(["a b.example.com"])),
            "tls_config.acme.domains[0]: must be a host name",
        ),
        (acme(json!({})), "tls_config.acme.domains: is required"),
        (
            acme(json!({"domains": ["a.vpsie-lab.net"], "email": "ops"})),
            "tls_config.acme.email: \"ops\" is not an email address",
        ),
        (
            acme(json!({"domains": ["a.vpsie-lab.net"], "directory_url": "http://ca.example/dir"})),
            "tls_config.acme.directory_url: \"http://ca.example/dir\" must be an https:// URL",
        ),
        (
            acme(json!({"domains": ["a.vpsie-lab.net"], "directory_url": "https:///dir"})),
            "tls_config.acme.directory_url: \"https:///dir\" must be an https:// URL",
        ),
        (
            set(&[
                (
                    "tls_config",
                    json!({"acme": {"domains": ["a.vpsie-lab.net"]},
                                      "certificate_path": "/etc/tls/c.pem"}),
                ),
                ("redirect_http_port", json!(80)),
            ]),
            "tls_config.certificate_path: must not be set together with acme",
        ),
        (
            set(&[(
                "tls_config",
                json!({"acme": {"domains": ["a.vpsie-lab.net"]}}),
            )]),
            "redirect_http_port: is required with tls_config.acme",
        ),
        (
            acme(json!(["a.vpsie-lab.net"])),
            "tls_config.acme: must be an object",
        ),
        (
            d(json!(["shop.example.com"])),
            "tls_config.acme.domains[0]: \"shop.example.com\": a special-use name",
        ),
        (
            d(json!(["10.0.0.1"])),
            "tls_config.acme.domains[0]: \"10.0.0.1\": an IP address",
        ),
        (
            d(json!(["printer.local"])),
            "tls_config.acme.domains[0]: \"printer.local\": a special-use",
        ),
        (
            d(json!(["db.internal"])),
            "tls_config.acme.domains[0]: \"db.internal\": a special-use",
        ),
        (
            d(json!(["shop.test"])),
            "tls_config.acme.domains[0]: \"shop.test\": a special-use",
        ),
        (
            d(json!(["a.localhost"])),
            "tls_config.acme.domains[0]: \"a.localhost\": a special-use",
        ),
        (
            acme(
                json!({"domains": ["a.vpsie-lab.net"], "directory_url": "https://127.0.0.1:9901/dir"}),
            ),
            "tls_config.acme.directory_url: \"https://127.0.0.1:9901/dir\" is not an ACME directory this agent may use",
        ),
    ] {
        check(doc, &[want]);
    }
}

#[test]
fn acme_warns_when_its_redirect_port_is_not_80() {
    let mut doc = acme(json!({"domains": ["a.vpsie-lab.net"]}));
    doc["redirect_http_port"] = json!(8080);
    let v = ok(doc);
    assert!(
        v.warnings.iter().any(|w| w
            .to_string()
            .contains("redirect_http_port: is 8080: ACME servers prove names on port 80")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn regression_a_load_balancer_could_order_another_ones_acme_name() {
    let mut first = acme(json!({"domains": ["shop.vpsie-lab.net"]}));
    first["id"] = json!("victim");
    let mut second = acme(json!({"domains": ["www.vpsie-lab.net", "shop.vpsie-lab.net"]}));
    second["id"] = json!("attacker");
    second["port"] = json!(8443);
    second["redirect_http_port"] = json!(8080);
    let rej = vpsie_lb_model::validate(&json!([first, second]), &common::opts())
        .expect_err("one name, two owners");
    let lines: Vec<String> = rej.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "[1].tls_config.acme.domains[1]: \"shop.vpsie-lab.net\" already has its certificate ordered by [0]"
        ]
    );
}

/// The per-client bound of the udp load balancer `doc` describes.
fn per_client(doc: Value) -> Option<(u32, Option<(u32, u32)>)> {
    let v = ok(doc);
    let p = v.config.load_balancers[0].per_client?;
    Some((
        p.max_sessions,
        p.new_sessions.map(|r| (r.per_second, r.burst)),
    ))
}

#[test]
fn udp_one_client_cannot_take_every_session() {
    // By default a client may hold a quarter of the listener's sessions,
    // rounded up: of max_connections, or of the global cap without one.
    assert_eq!(per_client(udp(&[])), Some((12_500, None)));
    assert_eq!(
        per_client(udp(&[("max_connections", json!(100))])),
        Some((25, None))
    );
    assert_eq!(
        per_client(udp(&[("max_connections", json!(1))])),
        Some((1, None))
    );
    let given = json!({"max_sessions": 3, "new_sessions_per_second": 10, "burst": 20});
    assert_eq!(
        per_client(udp(&[("per_client", given)])),
        Some((3, Some((10, 20))))
    );
    // The bucket holds one second's worth unless told otherwise.
    let rate_only = json!({"new_sessions_per_second": 5});
    assert_eq!(
        per_client(udp(&[
            ("max_connections", json!(8)),
            ("per_client", rate_only)
        ])),
        Some((2, Some((5, 5))))
    );
    // Go's zeros are unset fields.
    let zeros = json!({"max_sessions": 0, "new_sessions_per_second": 0, "burst": 0});
    assert_eq!(
        per_client(udp(&[("per_client", zeros)])),
        Some((12_500, None))
    );
    // Nothing to count elsewhere.
    assert_eq!(per_client(base()), None);
}

#[test]
fn per_client_refuses_what_it_cannot_enforce() {
    check(
        set(&[("per_client", json!({"max_sessions": 3}))]),
        &["per_client: counts udp sessions, and a https load balancer has none"],
    );
    check(
        udp(&[("per_client", json!({"burst": 3}))]),
        &["per_client.burst: needs new_sessions_per_second"],
    );
    check(
        udp(&[("per_client", json!({"max_sessions": -1}))]),
        &["per_client.max_sessions: must be"],
    );
    check(
        udp(&[("per_client", json!({"new_sessions_per_second": 1_000_001}))]),
        &["per_client.new_sessions_per_second: must be"],
    );
}
