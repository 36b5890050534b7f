//! The service holds many policies without a rule set each: 200 load
//! balancers with distinct exclusions fit far inside its unit's limit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unit's `MemoryMax` (packaging/systemd/vpsie-lb-waf.service).
const UNIT_LIMIT: u64 = 1 << 30;

/// A `VmRSS`-style field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect(field);
    kib * 1024
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the service on a policy file of `n` load balancers, each with
/// its own exclusions, and waits until it serves (it loads every policy
/// before it listens). Its peak resident memory then.
fn peak_with(n: u32) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let lbs: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let mode = if i % 2 == 0 { "block" } else { "detect" };
            let policy = serde_json::json!({
                "mode": mode,
                "paranoia_level": i % 4 + 1,
                "exclusions": [920_000 + i, 942_100 + (i % 50), 1_000_000 + i],
            });
            (format!("lb-{i}"), policy)
        })
        .collect();
    let config = dir.path().join("waf.json");
    let text = serde_json::json!({ "load_balancers": lbs }).to_string();
    std::fs::write(&config, text).expect("config");
    let socket = dir.path().join("waf.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vpsie-lb-waf"))
        .args([
            "--metrics-socket",
            "off",
            "--log-format",
            "text",
            "--socket",
        ])
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vpsie-lb-waf");
    let mut service = Service(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !socket.exists() {
        assert!(
            service.0.try_wait().expect("wait").is_none(),
            "the service exited"
        );
        assert!(Instant::now() < deadline, "the service did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    status_bytes(service.0.id(), "VmHWM")
}

#[test]
fn regression_each_policy_compiled_its_own_rule_set_and_70_exhausted_memory() {
    let one = peak_with(1);
    let many = peak_with(200);
    eprintln!(
        "peak rss: 1 policy {} MiB, 200 policies {} MiB",
        one >> 20,
        many >> 20
    );
    assert!(many < UNIT_LIMIT / 4, "200 policies peaked at {many} bytes");
    // A rule set each would cost about 16 MB per policy; sharing one costs
    // each policy a few kilobytes of references.
    assert!(
        many < one + 64 * (1 << 20),
        "200 policies: {many} bytes against {one} for one"
    );
}
