//! Live: each algorithm against a real Envoy and real backends.

mod common;

use std::net::IpAddr;

use common::{Lab, Via, backends, lb, lb_over, share};
use serde_json::json;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::free_port;
use vpsie_lb_testkit::http::{count_by_backend, count_from};

fn three() -> Vec<HttpBackend> {
    backends(&["a", "b", "c"])
}

fn round_robin_spreads_1000_requests_evenly(via: Via) {
    let bs = three();
    let port = free_port();
    let doc = lb_over("rr", "http", port, "round_robin", &bs);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("rr", 3);
    let counts = count_by_backend(port, 1000);
    for b in &bs {
        let n = counts.get(b.name()).copied().unwrap_or(0);
        // An even share is 333; allow +-10 % of it.
        assert!(
            (300..=367).contains(&n),
            "backend {}: {n} of 1000 ({counts:?})",
            b.name()
        );
    }
}

fn weights_3_to_1_give_75_and_25_percent(via: Via) {
    let heavy = HttpBackend::start("heavy");
    let light = HttpBackend::start("light");
    let port = free_port();
    let doc = lb(
        "w",
        "http",
        port,
        "round_robin",
        &[("heavy", heavy.port(), 3), ("light", light.port(), 1)],
    );
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("w", 2);
    let counts = count_by_backend(port, 1000);
    let h = share(&counts, "heavy");
    assert!(
        (70.0..=80.0).contains(&h),
        "heavy got {h:.1} % ({counts:?})"
    );
    assert!(
        (20.0..=30.0).contains(&share(&counts, "light")),
        "{counts:?}"
    );
}

fn disabled_backend_gets_no_requests(via: Via) {
    let bs = three();
    let port = free_port();
    let mut doc = lb_over("dis", "http", port, "round_robin", &bs);
    doc["backends"][1]["enabled"] = json!(false);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("dis", 2);
    let counts = count_by_backend(port, 300);
    assert_eq!(
        counts.get("b"),
        None,
        "disabled backend got traffic: {counts:?}"
    );
    assert_eq!(bs[1].requests(), 0, "disabled backend saw requests");
    assert!(
        counts.get("a").copied().unwrap_or(0) > 100 && counts.get("c").copied().unwrap_or(0) > 100,
        "{counts:?}"
    );
}

fn least_request_and_random_reach_every_backend(via: Via) {
    let bs = three();
    let (p1, p2) = (free_port(), free_port());
    let doc = json!([
        lb_over("lr", "http", p1, "least_request", &bs),
        lb_over("rand", "http", p2, "random", &bs)
    ]);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("lr", 3);
    lab.wait_healthy("rand", 3);
    for (algo, port) in [("least_request", p1), ("random", p2)] {
        let counts = count_by_backend(port, 300);
        for b in &bs {
            assert!(
                counts.get(b.name()).copied().unwrap_or(0) > 0,
                "{algo}: {} never chosen: {counts:?}",
                b.name()
            );
        }
    }
}

/// One client (source IP) always lands on one backend, and different clients
/// are spread over more than one backend, for both http and tcp.
fn ring_hash_pins_clients(via: Via, protocol: &str) {
    let bs = three();
    let port = free_port();
    let id = format!("ring_{protocol}");
    let doc = lb_over(&id, protocol, port, "ring_hash", &bs);
    let lab = Lab::start(via, &doc);
    lab.wait_healthy(&id, 3);
    let mut used = std::collections::BTreeSet::new();
    for last in 10..40u8 {
        let source = IpAddr::from([127, 0, 0, last]);
        let counts = count_from(Some(source), port, 20);
        assert_eq!(
            counts.len(),
            1,
            "{protocol}: client {source} was spread: {counts:?}"
        );
        let backend = counts.keys().next().expect("one backend").clone();
        assert!(
            !backend.starts_with("status") && backend != "error",
            "{protocol}: {counts:?}"
        );
        used.insert(backend);
    }
    assert!(
        used.len() > 1,
        "{protocol}: 30 clients all hashed to {used:?}"
    );
}

fn ring_hash_keeps_each_http_client_on_one_backend(via: Via) {
    ring_hash_pins_clients(via, "http");
}

fn ring_hash_keeps_each_tcp_client_on_one_backend(via: Via) {
    ring_hash_pins_clients(via, "tcp");
}

common::over_deliveries!(
    round_robin_spreads_1000_requests_evenly,
    weights_3_to_1_give_75_and_25_percent,
    disabled_backend_gets_no_requests,
    least_request_and_random_reach_every_backend,
    ring_hash_keeps_each_http_client_on_one_backend,
    ring_hash_keeps_each_tcp_client_on_one_backend,
);
