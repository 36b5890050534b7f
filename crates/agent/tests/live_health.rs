//! Live: active health checks eject and restore backends.
//!
//! Deadlines are the bound the issue sets (interval x threshold + one
//! interval) plus a fixed grace for a loaded 2-core machine; the measured
//! time is printed so a slow trend is visible.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, Via, backends, lb, lb_over};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::{HttpBackend, TlsHttpBackend};
use vpsie_lb_testkit::http::count_by_backend;
use vpsie_lb_testkit::{free_port, poll_until};

const INTERVAL: u64 = 2;
const GRACE: Duration = Duration::from_secs(4);

fn with_check(mut doc: Value, check: Value) -> Value {
    doc["health_check"] = check;
    doc
}

fn http_check(kind: &str) -> Value {
    json!({"type": kind, "path": "/healthz", "interval": INTERVAL, "timeout": 1,
           "healthy_threshold": 2, "unhealthy_threshold": 2})
}

fn failed(flags: &str) -> bool {
    flags.contains("failed_active_hc")
}

fn http_check_ejects_a_backend_answering_503_and_restores_it(via: Via) {
    let bs = backends(&["a", "b", "c"]);
    let port = free_port();
    let doc = with_check(
        lb_over("hc", "http", port, "round_robin", &bs),
        http_check("http"),
    );
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("hc", 3);

    bs[1].set_health(503);
    let started = Instant::now();
    let bound = Duration::from_secs(INTERVAL * 2 + INTERVAL);
    lab.wait_flags(
        "hc",
        bs[1].port(),
        "backend b marked unhealthy",
        bound + GRACE,
        failed,
    );
    eprintln!("ejected after {:?} (bound {bound:?})", started.elapsed());
    let counts = count_by_backend(port, 200);
    assert_eq!(
        counts.get("b"),
        None,
        "unhealthy backend still got traffic: {counts:?}"
    );
    assert_eq!(
        counts.values().sum::<usize>(),
        counts.get("a").unwrap_or(&0) + counts.get("c").unwrap_or(&0),
        "{counts:?}"
    );

    bs[1].set_health(200);
    let started = Instant::now();
    lab.wait_flags(
        "hc",
        bs[1].port(),
        "backend b healthy again",
        bound + GRACE,
        |f| f == "healthy",
    );
    eprintln!("restored after {:?}", started.elapsed());
    let counts = count_by_backend(port, 150);
    assert!(
        counts.get("b").copied().unwrap_or(0) > 0,
        "restored backend gets no traffic: {counts:?}"
    );
}

fn health_checks_run_at_the_interval_without_any_traffic(via: Via) {
    let b = HttpBackend::start("idle");
    let doc = with_check(
        lb(
            "idle",
            "http",
            free_port(),
            "round_robin",
            &[("idle", b.port(), 0)],
        ),
        http_check("http"),
    );
    let _lab = Lab::start(via, &doc);
    // Envoy's default no_traffic_interval (60 s) would allow one check in
    // this window; the configured 2 s interval gives several.
    let start = b.requests();
    poll_until(
        "4 health checks on an idle load balancer",
        Duration::from_secs(INTERVAL * 4) + GRACE * 2,
        || {
            let n = b.requests() - start;
            if n >= 4 {
                Ok(())
            } else {
                Err(format!("{n} checks so far"))
            }
        },
    );
}

fn tcp_check_ejects_a_backend_whose_port_closed(via: Via) {
    let mut bs = backends(&["a", "b", "c"]);
    let port = free_port();
    let check = json!({"type": "tcp", "interval": INTERVAL, "timeout": 1, "healthy_threshold": 1, "unhealthy_threshold": 2});
    let doc = with_check(lb_over("tcphc", "http", port, "round_robin", &bs), check);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("tcphc", 3);
    let closed = bs[1].port();
    bs[1].stop();
    let started = Instant::now();
    lab.wait_flags(
        "tcphc",
        closed,
        "closed backend marked unhealthy",
        Duration::from_secs(INTERVAL * 3) + GRACE,
        failed,
    );
    eprintln!("ejected after {:?}", started.elapsed());
    let counts = count_by_backend(port, 200);
    assert_eq!(
        counts.get("a").unwrap_or(&0) + counts.get("c").unwrap_or(&0),
        200,
        "{counts:?}"
    );
}

fn https_check_passes_against_a_tls_only_health_endpoint(via: Via) {
    let tls_backend = TlsHttpBackend::start("secure");
    // Two load balancers on the same TLS-only backend: the https check must
    // pass, and a plain http check (the control) must fail.
    let doc = json!([
        with_check(
            lb(
                "hcs",
                "http",
                free_port(),
                "round_robin",
                &[("s", tls_backend.port(), 0)]
            ),
            http_check("https")
        ),
        with_check(
            lb(
                "hcplain",
                "http",
                free_port(),
                "round_robin",
                &[("s", tls_backend.port(), 0)]
            ),
            http_check("http")
        ),
    ]);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("hcs", 1);
    assert!(
        tls_backend.requests() > 0,
        "no health check reached the backend over TLS"
    );
    lab.wait_flags(
        "hcplain",
        tls_backend.port(),
        "plain http check against a TLS port to fail",
        Duration::from_secs(INTERVAL * 3) + GRACE,
        failed,
    );
    assert_eq!(
        lab.flags("hcs", tls_backend.port()).as_deref(),
        Some("healthy")
    );
}

common::over_deliveries!(
    http_check_ejects_a_backend_answering_503_and_restores_it,
    health_checks_run_at_the_interval_without_any_traffic,
    tcp_check_ejects_a_backend_whose_port_closed,
    https_check_passes_against_a_tls_only_health_endpoint,
);
