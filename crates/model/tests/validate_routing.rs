//! Routing rules as data: pools, routes, redirects, sticky sessions, slow
//! start and certificates by SNI, a good and a bad case for each.

mod common;

use common::{base, check, ok, with};
use serde_json::{Value, json};
use vpsie_lb_model::{HeaderValueMatch, PathMatch, RouteAction, Scheme};

/// `base()` with `key` set at the top level to each value in turn.
fn set(pairs: &[(&str, Value)]) -> Value {
    let mut doc = base();
    for (k, v) in pairs {
        doc[*k] = v.clone();
    }
    doc
}

fn api_pool() -> Value {
    json!({"id": "api", "algorithm": "least_request",
           "backends": [{"id": "a1", "address": "10.0.1.1", "port": 9000}]})
}

/// The base document with the `api` pool and these routes.
fn routes(r: Value) -> Value {
    set(&[("pools", json!([api_pool()])), ("routes", r)])
}

#[test]
fn pools_are_read_and_the_default_pool_is_the_top_level() {
    let v = ok(set(&[("pools", json!([api_pool()]))]));
    let lb = &v.config.load_balancers[0];
    assert_eq!(lb.default_pool.id, "default");
    assert_eq!(lb.default_pool.backends.len(), 2);
    assert_eq!(lb.pools.len(), 1);
    assert_eq!(lb.pools[0].id, "api");
    assert_eq!(
        lb.pool("api").map(|p| p.backends[0].id.as_str()),
        Some("a1")
    );
}

#[test]
fn pool_rules() {
    let pool = |p: Value| set(&[("pools", json!([p]))]);
    check(
        pool(json!({"id": "default", "backends": []})),
        &["pools[0].id: \"default\" is the pool the top-level backends describe"],
    );
    check(
        pool(json!({"id": "no good", "backends": []})),
        &["pools[0].id: must match"],
    );
    check(pool(json!({"backends": []})), &["pools[0].id: is required"]);
    check(
        pool(json!({"id": "x"})),
        &["pools[0].backends: is required"],
    );
    check(
        set(&[("pools", json!([api_pool(), api_pool()]))]),
        &[
            "pools[1].id: id \"api\" is already used by pools[0]",
            // Its backend repeats too; reported once the pool is readable.
        ],
    );
    check(
        pool(json!({"id": "x", "algorithm": "fastest", "backends": []})),
        &["pools[0].algorithm: must be one of"],
    );
    let many: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("p{i}"), "backends": []}))
        .collect();
    check(
        set(&[("pools", json!(many))]),
        &["pools: has 50 pools, more than the 49"],
    );
}

#[test]
fn regression_backend_ids_must_be_unique_across_pools() {
    // /status, metrics and health reports name a backend by its id alone.
    check(
        set(&[(
            "pools",
            json!([{"id": "api", "backends": [{"id": "b1", "address": "10.0.1.1", "port": 80}]}]),
        )]),
        &["pools[0].backends[0].id: id \"b1\" is already used by backends[0]"],
    );
    // The same server may sit in two pools.
    ok(set(&[(
        "pools",
        json!([{"id": "api", "backends": [{"id": "c1", "address": "10.0.0.1", "port": 8080}]}]),
    )]));
}

#[test]
fn pools_routes_and_sticky_sessions_need_http() {
    let mut doc = routes(json!([{"id": "r", "forward": [{"pool": "api"}]}]));
    doc["protocol"] = json!("tcp");
    doc["sticky_sessions"] = json!({"cookie_name": "s"});
    check(
        doc,
        &[
            "pools: needs protocol http, https or tls_passthrough",
            "routes: needs protocol http, https or tls_passthrough",
            "sticky_sessions: needs protocol http or https",
        ],
    );
}

#[test]
fn a_route_forwards_redirects_or_responds() {
    let v = ok(routes(json!([
        {"id": "canary", "hosts": ["API.example.com", "*.example.org"], "path_prefix": "/v2/",
         "forward": [{"pool": "api", "weight": 90}, {"pool": "default", "weight": 10}]},
        {"id": "docs", "path_exact": "/docs", "redirect": {"scheme": "https", "host": "docs.example.com"}},
        {"id": "no", "path_regex": "^/admin/.*", "respond": {"status": 403, "body": "no\n"}},
    ])));
    let r = &v.config.load_balancers[0].routes;
    assert_eq!(
        r[0].hosts,
        ["api.example.com", "*.example.org"],
        "lowercased"
    );
    assert_eq!(r[0].path, Some(PathMatch::Prefix("/v2/".into())));
    let RouteAction::Forward(f) = &r[0].action else {
        panic!("{:?}", r[0].action)
    };
    assert_eq!((f[0].pool.as_str(), f[0].weight), ("api", 90));
    let RouteAction::Redirect(rd) = &r[1].action else {
        panic!("{:?}", r[1].action)
    };
    assert_eq!(
        (rd.scheme, rd.status),
        (Some(Scheme::Https), 301),
        "301 by default"
    );
    assert!(matches!(&r[2].action, RouteAction::Respond(x) if x.status == 403 && x.body == "no\n"));
}

#[test]
fn route_rules() {
    let one = |r: Value| routes(json!([r]));
    let fwd = json!([{"pool": "api"}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"forward": fwd}), "routes[0].id: is required"),
        (
            json!({"id": "r"}),
            "routes[0]: needs one of forward, redirect or respond",
        ),
        (
            json!({"id": "r", "forward": fwd, "respond": {"status": 200}}),
            "routes[0].respond: give only one of forward, redirect and respond",
        ),
        (
            json!({"id": "r", "forward": [{"pool": "nope"}]}),
            "routes[0].forward[0].pool: pool \"nope\" does not exist (pools: api, default)",
        ),
        (
            json!({"id": "r", "forward": [{"pool": "api"}, {"pool": "api"}]}),
            "routes[0].forward[1].pool: pool \"api\" is listed twice",
        ),
        (
            json!({"id": "r", "forward": [{"pool": "api", "weight": 0}]}),
            "routes[0].forward[0].weight: must be 1..=1000",
        ),
        (
            json!({"id": "r", "forward": []}),
            "routes[0].forward: must name 1..=10 pools",
        ),
        (
            json!({"id": "r", "hosts": ["api.example.com:443"], "forward": fwd}),
            "routes[0].hosts[0]: must be a host name or \"*.\" and a host name",
        ),
        (
            json!({"id": "r", "hosts": ["a.*.com"], "forward": fwd}),
            "routes[0].hosts[0]: must be a host name",
        ),
        (
            json!({"id": "r", "hosts": ["a.com", "A.com"], "forward": fwd}),
            "routes[0].hosts[1]: \"a.com\" is listed twice",
        ),
        (
            json!({"id": "r", "path_prefix": "/a", "path_exact": "/b", "forward": fwd}),
            "routes[0].path_exact: give at most one of path_prefix, path_exact and path_regex",
        ),
        (
            json!({"id": "r", "path_prefix": "api", "forward": fwd}),
            "routes[0].path_prefix: must start with /",
        ),
        (
            json!({"id": "r", "path_exact": "/a?b=1", "forward": fwd}),
            "routes[0].path_exact: must be printable ascii without spaces, ? or #",
        ),
        (
            json!({"id": "r", "path_regex": "(", "forward": fwd}),
            "routes[0].path_regex: is not a valid regular expression",
        ),
        (
            json!({"id": "r", "path_regex": "[a-z&&[^m]]", "forward": fwd}),
            "routes[0].path_regex: uses a class operation",
        ),
        (
            json!({"id": "r", "headers": [{"name": "x", "exact": "1", "prefix": "1"}], "forward": fwd}),
            "routes[0].headers[0].prefix: give only one of exact, prefix, regex and present",
        ),
        (
            json!({"id": "r", "headers": [{"name": "x"}], "forward": fwd}),
            "routes[0].headers[0]: needs one of exact, prefix, regex or present",
        ),
        (
            json!({"id": "r", "headers": [{"name": "x y", "present": true}], "forward": fwd}),
            "routes[0].headers[0].name: is not a valid header name",
        ),
        (
            json!({"id": "r", "headers": [{"name": "x", "present": false}], "forward": fwd}),
            "routes[0].headers[0].present: must be true; to match a missing header add invert: true",
        ),
        (
            json!({"id": "r", "headers": [{"name": "x", "regex": "a{1,99}"}], "forward": fwd}),
            "routes[0].headers[0].regex: repeats 99 times",
        ),
        (
            json!({"id": "r", "methods": ["get"], "forward": fwd}),
            "routes[0].methods[0]: must be an upper-case HTTP method",
        ),
        (
            json!({"id": "r", "methods": ["GET", "GET"], "forward": fwd}),
            "routes[0].methods[1]: \"GET\" is listed twice",
        ),
        (
            json!({"id": "r", "redirect": {"status": 301}}),
            "routes[0].redirect: must change at least one of scheme, host, path and port",
        ),
        (
            json!({"id": "r", "redirect": {"scheme": "ftp"}}),
            "routes[0].redirect.scheme: must be one of http, https",
        ),
        (
            json!({"id": "r", "redirect": {"path": "/x", "status": 200}}),
            "routes[0].redirect.status: must be 301, 302, 303, 307 or 308",
        ),
        (
            json!({"id": "r", "redirect": {"host": "*.example.com"}}),
            "routes[0].redirect.host: must be a host name",
        ),
        (
            json!({"id": "r", "respond": {"status": 99}}),
            "routes[0].respond.status: must be 200..=599",
        ),
        (
            json!({"id": "r", "respond": {"status": 200, "body": "x".repeat(4097)}}),
            "routes[0].respond.body: must be at most 4096 bytes",
        ),
    ];
    for (route, want) in cases {
        check(one(route), &[want]);
    }
    check(
        routes(json!([{"id": "r", "forward": fwd}, {"id": "r", "forward": fwd}])),
        &["routes[1].id: id \"r\" is already used by routes[0]"],
    );
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("r{i}"), "forward": fwd}))
        .collect();
    check(
        routes(json!(many)),
        &["routes: has 101 routes, more than the 100"],
    );
}

#[test]
fn header_conditions_and_methods_are_read() {
    let v = ok(routes(
        json!([{"id": "r", "methods": ["GET", "POST"], "forward": [{"pool": "api"}],
        "headers": [{"name": "X-Canary", "exact": "1"}, {"name": "x-debug", "present": true, "invert": true},
                    {"name": "ua", "regex": ".*bot.*"}, {"name": "t", "prefix": "v"}]}]),
    ));
    let r = &v.config.load_balancers[0].routes[0];
    assert_eq!(r.methods, ["GET", "POST"]);
    assert_eq!(r.headers[0].name, "x-canary");
    assert_eq!(r.headers[0].value, HeaderValueMatch::Exact("1".into()));
    assert!(r.headers[1].invert);
    assert_eq!(r.headers[1].value, HeaderValueMatch::Present);
    assert_eq!(
        r.headers[2].value,
        HeaderValueMatch::Regex(".*bot.*".into())
    );
    assert_eq!(r.headers[3].value, HeaderValueMatch::Prefix("v".into()));
}

#[test]
fn a_route_that_matches_everything_warns_that_later_ones_are_dead() {
    let v = ok(routes(json!([
        {"id": "all", "forward": [{"pool": "api"}]},
        {"id": "never", "path_prefix": "/x", "forward": [{"pool": "default"}]},
    ])));
    assert!(
        v.warnings
            .iter()
            .any(|w| w.to_string().contains("routes[0]: matches every request")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn sticky_sessions_and_slow_start() {
    let v = ok(set(&[
        (
            "sticky_sessions",
            json!({"cookie_name": "vlb", "ttl": 3600}),
        ),
        ("slow_start", json!(30)),
    ]));
    let p = &v.config.load_balancers[0].default_pool;
    assert_eq!(p.sticky_sessions.as_ref().map(|s| s.ttl), Some(3600));
    assert_eq!(p.slow_start, Some(30));
    let session = ok(set(&[("sticky_sessions", json!({"cookie_name": "vlb"}))]));
    assert_eq!(
        session.config.load_balancers[0]
            .default_pool
            .sticky_sessions
            .as_ref()
            .map(|s| s.ttl),
        Some(0),
        "no ttl is a session cookie"
    );
    check(
        set(&[("sticky_sessions", json!({"cookie_name": "a b"}))]),
        &["sticky_sessions.cookie_name: must be 1..=64 characters of an HTTP token"],
    );
    check(
        set(&[("sticky_sessions", json!({"cookie_name": "s", "ttl": -1}))]),
        &["sticky_sessions.ttl: must be 0..=2592000"],
    );
    check(
        set(&[("slow_start", json!(3601))]),
        &["slow_start: must be 1..=3600"],
    );
    let mut unchecked = set(&[("slow_start", json!(30))]);
    unchecked.as_object_mut().map(|o| o.remove("health_check"));
    check(
        unchecked,
        &["slow_start: needs a health_check: the ramp starts when a new backend first passes it"],
    );
    check(
        set(&[("slow_start", json!(10)), ("algorithm", json!("ring_hash"))]),
        &["slow_start: needs algorithm round_robin or least_request (got ring_hash)"],
    );
    // Go's zero values mean absent.
    let zero = ok(set(&[
        ("slow_start", json!(0)),
        ("sticky_sessions", json!({"cookie_name": "", "ttl": 0})),
    ]));
    let p = &zero.config.load_balancers[0].default_pool;
    assert_eq!((p.slow_start, p.sticky_sessions.is_none()), (None, true));
}

#[test]
fn a_weighted_forward_warns_that_sticky_sessions_do_not_follow_it() {
    let mut doc = routes(json!([{"id": "r",
        "forward": [{"pool": "api", "weight": 1}, {"pool": "default", "weight": 1}]}]));
    doc["sticky_sessions"] = json!({"cookie_name": "s"});
    let v = ok(doc);
    assert!(
        v.warnings.iter().any(|w| w
            .to_string()
            .contains("apply only to routes that forward to one pool")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn redirect_http_port() {
    let v = ok(set(&[("redirect_http_port", json!(80))]));
    assert_eq!(v.config.load_balancers[0].redirect_http_port, Some(80));
    check(
        set(&[("redirect_http_port", json!(443))]),
        &["redirect_http_port: must differ from port (443)"],
    );
    let mut http = set(&[("redirect_http_port", json!(80))]);
    http["protocol"] = json!("http");
    http.as_object_mut().map(|o| o.remove("tls_config"));
    check(
        http,
        &["redirect_http_port: needs protocol https (got http)"],
    );
    check(
        set(&[("redirect_http_port", json!(9901))]),
        &["redirect_http_port: port 9901 is reserved for envoy admin"],
    );
}

#[test]
fn regression_a_redirect_port_could_collide_with_another_listener() {
    let a = set(&[("redirect_http_port", json!(80))]);
    let mut b = base();
    b["id"] = json!("lb-2");
    b["port"] = json!(80);
    check(
        json!([a, b]),
        &[
            "[1].port: port 80 is already used by [0] (load balancer \"lb-1\" as its redirect_http_port)",
        ],
    );
}

#[test]
fn certificates_by_sni() {
    let cert = |names: Value| json!({"server_names": names, "certificate_path": "/etc/tls/api.pem", "private_key_path": "/etc/tls/api.key"});
    let v = ok(with(
        "/tls_config/certificates",
        Some(json!([cert(json!([
            "API.example.com",
            "*.api.example.com"
        ]))])),
    ));
    let tls = v.config.load_balancers[0].tls.as_ref().expect("tls");
    assert_eq!(
        tls.certificates[0].server_names,
        ["api.example.com", "*.api.example.com"]
    );
    check(
        with("/tls_config/certificates", Some(json!([cert(json!([]))]))),
        &["tls_config.certificates[0].server_names: must name at least one server"],
    );
    check(
        with(
            "/tls_config/certificates",
            Some(json!([cert(json!(["a.com"])), cert(json!(["a.com"]))])),
        ),
        &[
            "tls_config.certificates[1].server_names: \"a.com\" is already named by tls_config.certificates[0].server_names",
        ],
    );
    check(
        with(
            "/tls_config/certificates",
            Some(
                json!([{"server_names": ["a.com"], "certificate_path": "rel.pem", "private_key_path": "/k"}]),
            ),
        ),
        &["tls_config.certificates[0].certificate_path: must be an absolute path"],
    );
    let many: Vec<Value> = (0..26)
        .map(|i| cert(json!([format!("s{i}.com")])))
        .collect();
    check(
        with("/tls_config/certificates", Some(json!(many))),
        &["tls_config.certificates: has 26 certificates, more than the 25"],
    );
}
