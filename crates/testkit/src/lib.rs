//! Helpers for tests, benchmarks and the demo, written once and reused:
//! a real Envoy on free ports, real HTTP/TCP/TLS backends on 127.0.0.1, a
//! small HTTP client that counts responses by backend, and test certificates.
//!
//! Nothing here talks to anything but loopback. Waits poll a condition with
//! a deadline; nothing sleeps a fixed time hoping a thing is done.

pub mod backend;
pub mod envoy;
pub mod http;
pub mod pki;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root (where README.md is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Calls `f` every 50 ms until it returns `Some`, or panics after `timeout`
/// naming `what` and the last reason `f` gave.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
