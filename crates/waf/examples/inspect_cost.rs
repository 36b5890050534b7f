//! CPU per inspection in process, without Envoy or gRPC: the share of the
//! WAF's cost that is ModSecurity and the Core Rule Set alone, with the
//! service's allocator. Run with
//! `cargo run --release -p vpsie-lb-waf --example inspect_cost`.

use std::path::Path;

use vpsie_lb_waf::config::{Mode, Policy};
use vpsie_lb_waf::engine::{DEFAULT_CRS_DIR, DEFAULT_CRS_SETUP, Engine, Request};

/// The service's allocator (jemalloc, replacing malloc for the library too).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// This process's user and system CPU time, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// What wrk sends through the load balancer: `GET /` as Envoy describes it.
fn plain_get() -> Request {
    let headers = [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5d6c4a8e-2f7b-4d1e-9b55-0c7a3e1f2a9b"),
    ];
    Request {
        client: ("127.0.0.1".into(), 40000),
        method: "GET".into(),
        uri: "/".into(),
        http_version: "1.1".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        body: Vec::new(),
        partial: false,
    }
}

fn main() {
    let engine = Engine::new(Path::new(DEFAULT_CRS_DIR), Path::new(DEFAULT_CRS_SETUP));
    let req = plain_get();
    for level in 1..=4 {
        let policy = Policy {
            mode: Mode::Block,
            paranoia_level: level,
            exclusions: Vec::new(),
            oversize_body: Default::default(),
        };
        // Warm up: the first use builds the policy's set.
        for _ in 0..200 {
            let _ = engine.inspect(&policy, &req);
        }
        let n = 3000;
        let start = cpu_seconds().unwrap_or_default();
        for _ in 0..n {
            let _ = engine.inspect(&policy, &req);
        }
        let spent = cpu_seconds().unwrap_or_default() - start;
        println!(
            "paranoia level {level}: {:.0} us of CPU per inspection ({n} inspections)",
            spent * 1e6 / f64::from(n)
        );
    }
}
