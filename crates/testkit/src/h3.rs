//! An HTTP/3 client: `py/h3client.py` on aioquic, in the venv
//! `scripts/setup.sh` makes (no Rust HTTP/3 client is as widely used, and
//! Debian's curl has no HTTP/3).

use std::collections::BTreeMap;
use std::process::Command;

use serde::Deserialize;

/// One HTTP/3 answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Every header, `:status` included, by name.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

/// What a closed-loop load run over one QUIC connection measured.
#[derive(Debug, Clone, Deserialize)]
pub struct Load {
    /// Requests answered 200.
    pub requests: u64,
    /// Requests that failed or got another status.
    pub failed: u64,
    /// Answered requests per second.
    pub rps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

fn run<T: for<'de> Deserialize<'de>>(args: &[String]) -> Result<T, String> {
    let root = crate::workspace_root();
    let python = root.join(".local/venv/bin/python");
    let script = root.join("crates/testkit/py/h3client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| {
            format!(
                "run {}: {e} (scripts/setup.sh installs aioquic)",
                python.display()
            )
        })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("h3client said something else: {e}"))
}

/// One GET of `path` over QUIC to 127.0.0.1:`port`, sending `sni`.
pub fn get(port: u16, path: &str, sni: &str) -> Result<Response, String> {
    run(&[
        "get".into(),
        port.to_string(),
        path.into(),
        "--sni".into(),
        sni.into(),
    ])
}

/// One POST of a multipart form carrying a file of `bytes` bytes to
/// `path` over QUIC, as a browser uploads a photo.
pub fn upload(port: u16, path: &str, sni: &str, bytes: usize) -> Result<Response, String> {
    run(&[
        "upload".into(),
        port.to_string(),
        path.into(),
        "--sni".into(),
        sni.into(),
        "--bytes".into(),
        bytes.to_string(),
    ])
}

/// `streams` requests in flight on one QUIC connection for `seconds`.
pub fn load(port: u16, path: &str, sni: &str, seconds: u64, streams: u32) -> Result<Load, String> {
    run(&[
        "load".into(),
        port.to_string(),
        path.into(),
        "--sni".into(),
        sni.into(),
        "--seconds".into(),
        seconds.to_string(),
        "--streams".into(),
        streams.to_string(),
    ])
}

/// How many of a run of QUIC connections, each held open after its first
/// answer, were answered 200.
#[derive(Debug, Clone, Deserialize)]
pub struct Held {
    /// Connections whose GET was answered 200.
    pub answered: u32,
    /// Connections refused, closed, or answered otherwise.
    pub refused: u32,
}

/// Opens `connections` QUIC connections one after another, each kept open
/// (after one GET of `path`) until every one was tried.
pub fn hold(port: u16, path: &str, sni: &str, connections: u32) -> Result<Held, String> {
    run(&[
        "hold".into(),
        port.to_string(),
        path.into(),
        "--sni".into(),
        sni.into(),
        "--connections".into(),
        connections.to_string(),
    ])
}
