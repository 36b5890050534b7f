//! The public API's load balancers mapped onto documents: every field,
//! every quirk, every inference, each with a good and a bad case.

use serde_json::{Value, json};
use vpsie_lb_model::public::{MapEnv, host_name, map_load_balancer, rule_document_id};
use vpsie_lb_model::{ValidateOptions, validate};

const LB: &str = "lb-1";

fn env() -> MapEnv {
    MapEnv {
        zones: [("zone-1".to_owned(), "example.com".to_owned())].into(),
        certificate_dir: "/etc/vpsie-lb/certs/".into(),
        redirect_port: 80,
    }
}

fn domain(name: &str) -> Value {
    json!({"domainId": "zone-1", "domainName": name, "backendScheme": "http", "backPort": 8080,
           "algorithm": "roundrobin", "redirectHTTP": 0, "cookieCheck": 0, "cookieName": "",
           "healthCheckPath": "/health", "checkInterval": 1000, "fastInterval": 500, "rise": 5, "fall": 2,
           "backends": [{"ip": "10.0.0.6", "identifier": format!("b-{}", name.replace('.', "-"))}]})
}

fn http_rule(id: &str, scheme: &str, port: u16, domains: Vec<Value>) -> Value {
    json!({"ruleId": id, "scheme": scheme, "frontPort": port, "backPort": 8080, "domains": domains})
}

fn tcp_rule() -> Value {
    json!({"ruleId": "r1", "scheme": "tcp", "frontPort": 5432, "backPort": 5432,
           "backends": [{"ip": "10.0.0.5", "identifier": "b1", "vmIdentifier": "vm-1"}]})
}

fn lb(rules: Vec<Value>) -> Value {
    json!({"lbName": "web", "identifier": LB, "rules": rules})
}

/// Maps `data` and returns, per rule, the document (validated: the mapping
/// must never make one our validator refuses) or its problems as lines,
/// with validation problems led back to the API's paths.
fn map(data: &Value) -> Vec<Result<Value, Vec<String>>> {
    let mapped = map_load_balancer(LB, data, &env());
    assert!(mapped.problems.is_empty(), "{:?}", mapped.problems);
    mapped
        .rules
        .into_iter()
        .map(|r| match r.doc {
            Ok(doc) => match validate(&doc, &ValidateOptions::default()) {
                Ok(_) => Ok(doc),
                Err(rej) => Err(rej
                    .errors
                    .iter()
                    .map(|p| r.paths.translate(p).to_string())
                    .collect()),
            },
            Err(problems) => Err(problems.iter().map(ToString::to_string).collect()),
        })
        .collect()
}

fn ok(data: &Value, i: usize) -> Value {
    map(data)
        .remove(i)
        .unwrap_or_else(|e| panic!("rule {i}: {e:?}"))
}

/// Rule `i` is refused with exactly `want` (each a prefix of a line).
fn refused(data: &Value, i: usize, want: &[&str]) {
    let got = map(data).remove(i).expect_err("refused");
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.starts_with(w), "{g:?} should start with {w:?}");
    }
}

#[test]
fn a_tcp_rule_is_its_backends_on_back_port_round_robin_with_a_tcp_check() {
    let doc = ok(&lb(vec![tcp_rule()]), 0);
    assert_eq!(doc["id"], rule_document_id(LB, "r1"));
    assert_eq!(doc["name"], "web tcp:5432");
    assert_eq!(
        (doc["protocol"].as_str(), doc["port"].as_u64()),
        (Some("tcp"), Some(5432))
    );
    assert_eq!(doc["algorithm"], "round_robin");
    assert_eq!(
        doc["backends"],
        json!([{"id": "b1", "address": "10.0.0.5", "port": 5432}])
    );
    assert_eq!(
        doc["health_check"],
        json!({"type": "tcp", "interval": 2, "healthy_threshold": 2, "unhealthy_threshold": 3})
    );
    let mut bad = tcp_rule();
    bad["backPort"] = Value::Null;
    bad["domains"] = json!([domain("www.example.com")]);
    refused(
        &lb(vec![bad]),
        0,
        &[
            "rules[0].domains: a tcp rule cannot route",
            "rules[0].backPort: is required",
        ],
    );
}

#[test]
fn an_http_rule_routes_each_domain_to_its_own_pool() {
    let doc = ok(
        &lb(vec![http_rule(
            "r2",
            "http",
            80,
            vec![domain("www.example.com"), domain("api.example.com")],
        )]),
        0,
    );
    assert_eq!(doc["protocol"], "http");
    assert_eq!(doc["backends"], json!([]), "unknown hosts get 404");
    assert_eq!(
        doc["routes"][1],
        json!({"id": "api_example_com", "hosts": ["api.example.com"], "forward": [{"pool": "api_example_com"}]})
    );
    let pool = &doc["pools"][0];
    assert_eq!(pool["id"], "www_example_com");
    assert_eq!(
        pool["backends"],
        json!([{"id": "b-www-example-com", "address": "10.0.0.6", "port": 8080}])
    );
    assert_eq!(
        pool["health_check"],
        json!({"type": "http", "path": "/health", "headers": {"Host": "www.example.com"},
               "interval": 1, "unhealthy_interval": 0.5, "healthy_threshold": 5, "unhealthy_threshold": 2})
    );
    assert!(pool.get("sticky_sessions").is_none());
    refused(
        &lb(vec![http_rule("r2", "http", 80, vec![])]),
        0,
        &["rules[0].domains: an http rule needs at least one domain"],
    );
}

#[test]
fn quirks_ports_as_strings_flags_as_numbers_or_bools_and_keys_in_any_case() {
    let mut d = domain("www.example.com");
    d["backPort"] = json!("8081");
    d["cookieCheck"] = json!(true);
    d["cookieName"] = json!("lb");
    d["BackEnds"] = d["backends"].take();
    let mut rule = http_rule("r2", "http", 80, vec![d.clone()]);
    rule["frontPort"] = json!("8000");
    let doc = ok(&lb(vec![rule]), 0);
    assert_eq!(doc["port"], 8000);
    assert_eq!(doc["pools"][0]["backends"][0]["port"], 8081);
    assert_eq!(
        doc["pools"][0]["sticky_sessions"],
        json!({"cookie_name": "lb"})
    );
    for (flag, sticky) in [
        (json!(1), true),
        (json!("1"), true),
        (json!(0), false),
        (json!(false), false),
    ] {
        d["cookieCheck"] = flag.clone();
        let doc = ok(&lb(vec![http_rule("r2", "http", 80, vec![d.clone()])]), 0);
        assert_eq!(
            doc["pools"][0].get("sticky_sessions").is_some(),
            sticky,
            "{flag}"
        );
    }
    d["cookieCheck"] = json!(2);
    d["backPort"] = json!("80a");
    refused(
        &lb(vec![http_rule("r2", "http", 80, vec![d.clone()])]),
        0,
        &[
            "rules[0].domains[0].backPort: must be a whole number, got \"80a\"",
            "rules[0].domains[0].cookieCheck: must be 0 or 1",
        ],
    );
    d["cookieCheck"] = json!(1);
    d["cookieName"] = json!("");
    d["backPort"] = json!(70000);
    refused(
        &lb(vec![http_rule("r2", "http", 80, vec![d])]),
        0,
        &[
            "rules[0].domains[0].backPort: must be a port, 1..=65535 (got 70000)",
            "rules[0].domains[0].cookieName: is required when cookieCheck is on",
        ],
    );
}

#[test]
fn algorithms_map_from_haproxy_names() {
    for (theirs, ours) in [
        ("roundrobin", "round_robin"),
        ("leastconn", "least_request"),
        ("", "round_robin"),
    ] {
        let mut d = domain("www.example.com");
        d["algorithm"] = json!(theirs);
        assert_eq!(
            ok(&lb(vec![http_rule("r", "http", 80, vec![d])]), 0)["pools"][0]["algorithm"],
            ours
        );
    }
    let mut d = domain("www.example.com");
    d["algorithm"] = json!("source");
    refused(
        &lb(vec![http_rule("r", "http", 80, vec![d])]),
        0,
        &["rules[0].domains[0].algorithm: must be roundrobin or leastconn (got \"source\")"],
    );
}

#[test]
fn intervals_are_milliseconds_and_impossible_ones_are_refused() {
    let interval = |v: Value| {
        let mut d = domain("www.example.com");
        d["checkInterval"] = v;
        d["fastInterval"] = Value::Null;
        lb(vec![http_rule("r", "http", 80, vec![d])])
    };
    for (given, seconds) in [
        (json!(1000), json!(1)),
        (json!(1500), json!(1.5)),
        (json!("3000"), json!(3)),
        (json!(0), json!(2)),
    ] {
        assert_eq!(
            ok(&interval(given.clone()), 0)["pools"][0]["health_check"]["interval"],
            seconds,
            "{given}"
        );
    }
    refused(
        &interval(json!(5)),
        0,
        &[
            "rules[0].domains[0].checkInterval: must be 100..=3600000 milliseconds (got 5); the api counts milliseconds, so 5 s would be 5000",
        ],
    );
    refused(
        &interval(json!(3_600_001)),
        0,
        &["rules[0].domains[0].checkInterval: must be 100..=3600000 milliseconds"],
    );
    let mut d = domain("www.example.com");
    d["fastInterval"] = json!(50);
    refused(
        &lb(vec![http_rule("r", "http", 80, vec![d])]),
        0,
        &["rules[0].domains[0].fastInterval: must be 100..=3600000"],
    );
}

#[test]
fn rise_and_fall_are_thresholds_and_the_validator_limits_are_reported_in_api_terms() {
    let mut d = domain("www.example.com");
    d["rise"] = json!(0);
    d["fall"] = Value::Null;
    let hc =
        &ok(&lb(vec![http_rule("r", "http", 80, vec![d.clone()])]), 0)["pools"][0]["health_check"];
    assert_eq!(
        (
            hc["healthy_threshold"].as_u64(),
            hc["unhealthy_threshold"].as_u64()
        ),
        (Some(2), Some(3))
    );
    // The cloud controller's bug sends the interval as rise.
    d["rise"] = json!(1000);
    d["backends"][0]["ip"] = json!("0.0.0.0");
    refused(
        &lb(vec![http_rule("r", "http", 80, vec![d])]),
        0,
        &[
            "rules[0].domains[0].backends[0].ip: ",
            "rules[0].domains[0].rise: must be 1..=100",
        ],
    );
}

#[test]
fn host_names_are_built_from_name_subdomain_and_zone() {
    let zones = env().zones;
    let host =
        |name: Option<&str>, sub: Option<&str>, id: Option<&str>| host_name(name, sub, id, &zones);
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Result<&'a str, &'a str>,
    );
    let cases: &[Case] = &[
        (Some("WWW.Example.com."), None, None, Ok("www.example.com")),
        (
            Some("example.com"),
            Some("api"),
            None,
            Ok("api.example.com"),
        ),
        (
            Some("api.example.com"),
            Some("api"),
            None,
            Ok("api.example.com"),
        ),
        (Some("www"), None, Some("zone-1"), Ok("www.example.com")),
        (
            Some("www"),
            Some("eu"),
            Some("zone-1"),
            Ok("eu.www.example.com"),
        ),
        (Some("@"), None, Some("zone-1"), Ok("example.com")),
        (None, Some("shop"), Some("zone-1"), Ok("shop.example.com")),
        (
            Some("www"),
            None,
            Some("zone-9"),
            Err("\"www\" is a single label and domainId \"zone-9\" names no dns zone"),
        ),
        (
            Some("www"),
            None,
            None,
            Err("\"www\" is a single label and no domainId names its dns zone"),
        ),
        (None, None, None, Err("is empty and no domainId")),
    ];
    for (name, sub, id, want) in cases {
        match (host(*name, *sub, *id), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, *w),
            (Err(got), Err(w)) => assert!(got.starts_with(w), "{got}"),
            (got, w) => panic!("{name:?} {sub:?} {id:?}: {got:?}, want {w:?}"),
        }
    }
    let doc = ok(
        &lb(vec![http_rule(
            "r",
            "http",
            80,
            vec![domain("www"), domain("shop")],
        )]),
        0,
    );
    assert_eq!(doc["routes"][1]["hosts"], json!(["shop.example.com"]));
}

#[test]
fn https_reads_a_certificate_per_host_and_http2_offers_h2_first() {
    let data = lb(vec![http_rule(
        "r",
        "https",
        443,
        vec![domain("www.example.com"), domain("api")],
    )]);
    let mapped = map_load_balancer(LB, &data, &env());
    let rule = &mapped.rules[0];
    let hosts: Vec<&str> = rule.certificates.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, ["www.example.com", "api.example.com"]);
    assert_eq!(
        rule.certificates[1].certificate_path,
        "/etc/vpsie-lb/certs/api.example.com/fullchain.pem"
    );
    assert_eq!(rule.certificates[1].at.to_string(), "rules[0].domains[1]");
    let doc = ok(&data, 0);
    assert_eq!(doc["protocol"], "https");
    let tls = &doc["tls_config"];
    assert_eq!(
        tls["private_key_path"],
        "/etc/vpsie-lb/certs/www.example.com/privkey.pem"
    );
    assert_eq!(tls["alpn"], json!(["http/1.1"]));
    assert_eq!(
        tls["certificates"][0]["server_names"],
        json!(["api.example.com"])
    );
    let h2 = ok(
        &lb(vec![http_rule(
            "r",
            "http2",
            443,
            vec![domain("www.example.com")],
        )]),
        0,
    );
    assert_eq!(h2["tls_config"]["alpn"], json!(["h2", "http/1.1"]));
    assert!(h2["tls_config"].get("certificates").is_none());
}

#[test]
fn redirect_http_becomes_a_port_80_redirect() {
    let mut d = domain("www.example.com");
    d["redirectHTTP"] = json!(1);
    let alone = ok(&lb(vec![http_rule("r", "https", 443, vec![d.clone()])]), 0);
    assert_eq!(alone["redirect_http_port"], 80);
    // With an http rule on port 80, that rule redirects the host instead.
    let data = lb(vec![
        http_rule("r", "https", 8443, vec![d.clone()]),
        http_rule("p", "http", 80, vec![domain("api.example.com")]),
    ]);
    assert!(ok(&data, 0).get("redirect_http_port").is_none());
    let plain = ok(&data, 1);
    assert_eq!(
        plain["routes"][0],
        json!({"id": "redirect-0", "hosts": ["www.example.com"], "redirect": {"scheme": "https", "port": 8443}})
    );
    assert_eq!(plain["routes"][1]["id"], "api_example_com");
    // Two https rules cannot share one redirect listener.
    let data = lb(vec![
        http_rule("r", "https", 443, vec![d.clone()]),
        http_rule(
            "s",
            "https",
            8443,
            vec![{
                let mut e = domain("api.example.com");
                e["redirectHTTP"] = json!("1");
                e
            }],
        ),
    ]);
    assert_eq!(ok(&data, 0)["redirect_http_port"], 80);
    refused(
        &data,
        1,
        &["rules[1].domains[0].redirectHTTP: port 80 already redirects to lb-1_r"],
    );
    d["redirectHTTP"] = json!("yes");
    refused(
        &lb(vec![http_rule("r", "https", 443, vec![d])]),
        0,
        &["rules[0].domains[0].redirectHTTP: must be 0 or 1"],
    );
}

#[test]
fn a_broken_domain_refuses_its_rule_only_and_names_the_api_path() {
    let mut broken = domain("api.example.com");
    broken["backPort"] = Value::Null;
    broken["backendScheme"] = json!("https");
    broken["backends"][0]["identifier"] = Value::Null;
    let data = lb(vec![
        tcp_rule(),
        http_rule("r2", "http", 80, vec![domain("www.example.com"), broken]),
    ]);
    assert!(map(&data)[0].is_ok());
    refused(
        &data,
        1,
        &[
            "rules[1].domains[1].backendScheme: only http backends are supported (got \"https\")",
            "rules[1].domains[1].backPort: is required",
            "rules[1].domains[1].backends[0].identifier: is required",
        ],
    );
    let dup = lb(vec![http_rule(
        "r2",
        "http",
        80,
        vec![domain("www.example.com"), domain("www")],
    )]);
    refused(
        &dup,
        0,
        &[
            "rules[0].domains[1].domainName: host \"www.example.com\" is already served by rules[0].domains[0]",
        ],
    );
    let mut scheme = tcp_rule();
    scheme["scheme"] = json!("udp");
    refused(
        &lb(vec![scheme]),
        0,
        &["rules[0].scheme: must be tcp, http, https or http2 (got \"udp\")"],
    );
}

#[test]
fn answers_that_name_no_rule_are_problems_of_the_whole_load_balancer() {
    let cases = [
        (json!([]), "(document): must be an object, got an array"),
        (
            json!({"identifier": "lb-2", "rules": [tcp_rule()]}),
            "identifier: the answer is about load balancer \"lb-2\", not \"lb-1\"",
        ),
        (
            lb(vec![json!({"scheme": "tcp"})]),
            "rules[0].ruleId: is required",
        ),
        (
            lb(vec![tcp_rule(), tcp_rule()]),
            "rules[1].ruleId: \"r1\" is used by an earlier rule",
        ),
        (
            json!({"rules": {"a": 1}}),
            "rules: must be an array, got an object",
        ),
    ];
    for (data, want) in cases {
        let mapped = map_load_balancer(LB, &data, &env());
        let got: Vec<String> = mapped.problems.iter().map(ToString::to_string).collect();
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "{got:?} should hold {want:?}"
        );
    }
    let empty = map_load_balancer(LB, &json!({"identifier": LB}), &env());
    assert!(empty.rules.is_empty() && empty.problems.is_empty());
}
