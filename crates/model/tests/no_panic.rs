//! Property: no input, however malformed, makes validation panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use vpsie_lb_model::{ValidateOptions, validate, validate_str};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<u64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "http",
            "https",
            "tcp",
            "ring_hash",
            "10.0.0.1",
            "/x",
            "TLSv1.3",
            "h2",
            "http2",
            "roundrobin",
            "leastconn",
            "www.example.com",
            "www",
            "1000",
            "10.0.0.0/8",
            "::/0",
        ])
        .prop_map(|s| json!(s)),
    ];
    let keys = prop::sample::select(vec![
        "id",
        "name",
        "protocol",
        "port",
        "algorithm",
        "max_connections",
        "backends",
        "address",
        "weight",
        "enabled",
        "health_check",
        "type",
        "interval",
        "timeout",
        "path",
        "expected_status",
        "headers",
        "tls_config",
        "certificate_path",
        "min_version",
        "cipher_suites",
        "alpn",
        "timeouts",
        "healthy_threshold",
        "unhealthy_threshold",
        "connect",
        "idle",
        "request",
        // Routing: hostile pools, routes, matches, actions and certificates.
        "pools",
        "routes",
        "hosts",
        "path_prefix",
        "path_exact",
        "path_regex",
        "methods",
        "forward",
        "pool",
        "redirect",
        "respond",
        "status",
        "body",
        "exact",
        "prefix",
        "regex",
        "present",
        "invert",
        "sticky_sessions",
        "cookie_name",
        "ttl",
        "slow_start",
        "redirect_http_port",
        "certificates",
        "server_names",
        // Protection.
        "rate_limit",
        "requests_per_second",
        "burst",
        "connections_per_second",
        "access",
        "allow",
        "deny",
        // The public API's load balancers.
        "rules",
        "ruleId",
        "scheme",
        "frontPort",
        "backPort",
        "domains",
        "domainName",
        "domainId",
        "subdomain",
        "backendScheme",
        "redirectHTTP",
        "cookieCheck",
        "cookieName",
        "healthCheckPath",
        "checkInterval",
        "fastInterval",
        "rise",
        "fall",
        "ip",
        "identifier",
        "other",
    ]);
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..10).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_json_never_panics(doc in arb_json()) {
        let _ = validate(&doc, &ValidateOptions::default());
        let _ = validate(&json!([doc.clone(), doc]), &ValidateOptions { strict: true, ..Default::default() });
    }

    #[test]
    fn arbitrary_public_api_answers_never_panic(data in arb_json()) {
        let env = vpsie_lb_model::public::MapEnv::default();
        for rule in vpsie_lb_model::public::map_load_balancer("lb-1", &data, &env).rules {
            if let Ok(doc) = rule.doc
                && let Err(rej) = validate(&doc, &ValidateOptions::default())
            {
                for p in &rej.errors {
                    let _ = rule.paths.translate(p).to_string();
                }
            }
        }
        let wrapped = json!({"identifier": "lb-1", "rules": [data]});
        let _ = vpsie_lb_model::public::map_load_balancer("lb-1", &wrapped, &env);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = validate_str(&text, &ValidateOptions::default());
    }
}
