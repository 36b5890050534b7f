//! The benchmark runner in smoke mode (tiny durations and counts), so it
//! cannot rot: every scenario runs against the real Envoy, HAProxy, nginx
//! and wrk, and the report it writes has every table.

use std::process::Command;

#[test]
fn smoke_run_writes_every_scenario_and_records_no_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("BENCHMARKS.md");
    let run = Command::new(env!("CARGO_BIN_EXE_vpsie-lb-bench"))
        .args(["--smoke", "--strict", "--out"])
        .arg(&out)
        .env("ENVOY_BIN", vpsie_lb_testkit::envoy::envoy_bin())
        .output()
        .expect("run vpsie-lb-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "vpsie-lb-bench --smoke failed ({}):\n{stderr}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout)
    );
    let md = std::fs::read_to_string(&out).expect("report written");
    for heading in [
        "## Machine and versions",
        "## Failures (must be none)\n\nNone.",
        "### Data plane: HTTP/1.1 keep-alive",
        "### Data plane: HTTPS (TLS 1.3) keep-alive",
        "### Data plane: HTTPS, a new connection per request",
        "### Data plane: TCP proxy",
        "### Data plane: ours against hand-tuned Envoy and HAProxy",
        "### Convergence: from the change stored in the API to Envoy serving it",
        "### The agent's own share of a push-triggered change, per phase (ms)",
        "### Hitless (files): 6 backend changes under load",
        "### Hitless (xds): 6 backend changes under load",
        "### Scale: time per phase of one pass",
        "### Footprint: the agent with 5 load balancers",
        "### Restarts: time a load balancer answers nothing",
        "### Protection: the WAF against the reference connector",
    ] {
        assert!(md.contains(heading), "report lacks {heading:?}:\n{md}");
    }
    // Every data-plane cell (the 8-column rows) carried traffic through its target.
    let mut cells_seen = 0;
    for line in md.lines().filter(|l| {
        l.split('|').count() == 10 && !l.starts_with("| target") && !l.starts_with("|---")
    }) {
        cells_seen += 1;
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let rps: f64 = cells[2]
            .split_whitespace()
            .next()
            .map(|v| v.replace(',', ""))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(rps > 0.0, "no traffic in {line}");
    }
    assert_eq!(cells_seen, 20, "4 modes × 5 targets:\n{md}");
    // Hitless changes failed nothing and drained nothing (--strict makes a
    // failure exit non-zero; this names it).
    assert!(
        md.contains("| failed requests (non-2xx + socket errors; target 0) | 0 | 0 |"),
        "{md}"
    );
}
