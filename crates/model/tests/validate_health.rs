//! Health check rules as data: every field, its defaults, and a good and a
//! bad case for each.

use serde_json::json;
use vpsie_lb_model::{HealthCheckKind, HttpCheck, Validated};

mod common;

use common::{base, check, ok, with};

#[test]
fn health_check_fields() {
    check(
        with("/health_check/type", Some(json!("icmp"))),
        &["health_check.type: must be one of tcp, http, https"],
    );
    check(
        with("/health_check/interval", Some(json!(-1))),
        &["health_check.interval: must be 0.1..=3600 seconds"],
    );
    check(
        with("/health_check/interval", Some(json!(3601))),
        &["health_check.interval: must be 0.1..=3600 seconds"],
    );
    check(
        with("/health_check/timeout", Some(json!(10))),
        &["health_check.timeout: must be smaller than interval (10 >= 10)"],
    );
    check(
        with("/health_check/healthy_threshold", Some(json!(101))),
        &["health_check.healthy_threshold: must be 1..=100"],
    );
    check(
        with("/health_check/path", None),
        &["health_check.path: is required"],
    );
    check(
        with("/health_check/path", Some(json!("health"))),
        &["health_check.path: must start with /"],
    );
    check(
        with("/health_check/path", Some(json!("/a b"))),
        &["health_check.path: must be printable ascii"],
    );
}

#[test]
fn health_check_timings_default_when_absent() {
    let mut doc = base();
    doc["health_check"] = json!({"type": "tcp"});
    let v = ok(doc);
    let hc = v.config.load_balancers[0]
        .default_pool
        .health_check
        .clone()
        .expect("check");
    assert_eq!(
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (10_000, 5_000, 2, 3)
    );
    let mut doc = base();
    doc["health_check"] = json!({"type": "tcp", "interval": 3});
    let hc = ok(doc).config.load_balancers[0]
        .default_pool
        .health_check
        .clone()
        .expect("check");
    assert_eq!(
        (hc.interval_ms, hc.timeout_ms),
        (3000, 2000),
        "the default timeout fits the interval"
    );
    // Below 2 s the default timeout is half the interval, so the public
    // API's 1000 ms default is a valid check.
    let mut doc = base();
    doc["health_check"] = json!({"type": "tcp", "interval": 1, "unhealthy_interval": 0.5});
    let hc = ok(doc).config.load_balancers[0]
        .default_pool
        .health_check
        .clone()
        .expect("check");
    assert_eq!(
        (hc.interval_ms, hc.timeout_ms, hc.unhealthy_interval_ms),
        (1000, 500, Some(500))
    );
}

#[test]
fn health_check_times_are_seconds_with_millisecond_precision() {
    for (key, value, want) in [
        (
            "interval",
            json!(0.05),
            "health_check.interval: must be 0.1..=3600 seconds (got 0.05)",
        ),
        (
            "interval",
            json!(1.0005),
            "health_check.interval: must be seconds with at most 3 decimals (got 1.0005)",
        ),
        (
            "interval",
            json!("2s"),
            "health_check.interval: must be a number of seconds, got a string",
        ),
        ("timeout", json!(0.25), ""),
        (
            "timeout",
            json!(10),
            "health_check.timeout: must be smaller than interval (10 >= 10)",
        ),
        (
            "unhealthy_interval",
            json!(3601),
            "health_check.unhealthy_interval: must be 0.1..=3600 seconds (got 3601)",
        ),
        ("unhealthy_interval", json!(1.5), ""),
    ] {
        let mut doc = base();
        doc["health_check"][key] = value;
        if want.is_empty() {
            ok(doc);
        } else {
            check(doc, &[want]);
        }
    }
}

#[test]
fn health_check_tcp_ignores_http_fields_with_a_warning() {
    let v = ok(with("/health_check/type", Some(json!("tcp"))));
    assert_eq!(
        v.config.load_balancers[0]
            .default_pool
            .health_check
            .as_ref()
            .map(|h| &h.kind),
        Some(&HealthCheckKind::Tcp)
    );
    assert_eq!(v.warnings.len(), 1);
    assert_eq!(
        v.warnings[0].to_string(),
        "health_check.path: ignored for a tcp health check"
    );
}

#[test]
fn health_check_expected_status() {
    let v = ok(with(
        "/health_check/expected_status",
        Some(json!([204, 200, 200])),
    ));
    let h = http_check(&v);
    assert_eq!(h.expected_status, vec![200, 204]);
    let v = ok(with("/health_check/expected_status", Some(json!([]))));
    let h = http_check(&v);
    assert_eq!(h.expected_status, vec![200], "empty means the default");
    check(
        with("/health_check/expected_status", Some(json!([99, 600]))),
        &[
            "health_check.expected_status[0]: must be 100..=599 (got 99)",
            "health_check.expected_status[1]: must be 100..=599 (got 600)",
        ],
    );
}

#[test]
fn health_check_headers() {
    let v = ok(with(
        "/health_check/headers",
        Some(json!({"Host": "app.example.com", "X-Probe": "lb"})),
    ));
    let h = http_check(&v);
    assert_eq!(h.host.as_deref(), Some("app.example.com"));
    assert_eq!(h.headers.get("x-probe").map(String::as_str), Some("lb"));
    check(
        with("/health_check/headers", Some(json!({"bad name": "x"}))),
        &["health_check.headers[\"bad name\"]: is not a valid header name"],
    );
    check(
        with("/health_check/headers", Some(json!({"X-A": "a\nb"}))),
        &["health_check.headers.X-A: must be at most 8192 bytes without CR, LF or NUL"],
    );
    check(
        with("/health_check/headers", Some(json!({"X-A": 1}))),
        &["health_check.headers.X-A: must be a string"],
    );
}

/// The first load balancer's http health check.
fn http_check(v: &Validated) -> &HttpCheck {
    match &v.config.load_balancers[0]
        .default_pool
        .health_check
        .as_ref()
        .expect("hc")
        .kind
    {
        HealthCheckKind::Http(h) => h,
        other => panic!("http check, got {other:?}"),
    }
}
