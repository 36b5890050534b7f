//! Helpers for tests, benchmarks and the demo, written once and reused:
//! a real Envoy on free ports, real HTTP/TCP/TLS backends on 127.0.0.1, a
//! small HTTP client that counts responses by backend, and test certificates.
//!
//! Nothing here talks to anything but loopback. Waits poll a condition with
//! a deadline; nothing sleeps a fixed time hoping a thing is done.

pub mod backend;
pub mod envoy;
pub mod ftw;
pub mod h3;
pub mod ha_pair;
pub mod http;
pub mod netns;
pub mod pebble;
pub mod pki;
pub mod proxy_backend;
pub mod sources;
pub mod tls;
pub mod udp_backend;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (where README.md is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// A port that was free a moment ago on 127.0.0.1, for a listener someone
/// else will bind later (Envoy).
///
/// Ports come from 20000-31999, below Linux's default ephemeral range
/// (32768-60999), so an outgoing connection of a test running in parallel
/// cannot take the port between this check and Envoy's bind. A per-process
/// counter, started from the pid, keeps parallel tests from picking the same one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % u32::from(SPAN)) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Calls `f` every 50 ms until it returns `Ok`, or panics after `timeout`
/// naming `what` and the last reason `f` gave.
pub fn poll_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    try_poll_until(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// [`poll_until`] for callers that report instead of panicking (the
/// benchmark runner): the timeout is an `Err` naming `what` and the last
/// reason `f` gave.
pub fn try_poll_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}: {why}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Pids of processes whose command line contains `needle` (from /proc).
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Sends `signal` (e.g. "KILL", "TERM") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}
