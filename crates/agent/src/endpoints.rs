//! The agent's own HTTP endpoints, on loopback by default:
//! `GET /metrics`, `GET /healthz`, `GET /readyz`, `GET /status`, `POST /sync`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::controller::Signal;
use crate::status::AgentStatus;

/// What the endpoints serve from.
#[derive(Clone)]
pub struct Endpoints {
    /// All metrics.
    pub registry: Arc<Registry>,
    /// The latest snapshot.
    pub status: Arc<Mutex<AgentStatus>>,
    /// Where `POST /sync` asks for a pass.
    pub sync: Sender<Signal>,
}

/// Binds `addr` and serves in a background thread; returns the bound address.
pub fn spawn(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let e = endpoints.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = handle(stream, &e);
            });
        }
    });
    Ok(bound)
}

fn handle(stream: TcpStream, e: &Endpoints) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Headers are not needed; read them so the client sees a clean close.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let snapshot = || e.status.lock().map(|s| s.clone()).unwrap_or_default();
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::encode(&e.registry),
        ),
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => {
            if snapshot().ready {
                (
                    200,
                    "text/plain",
                    "ready: envoy serves a verified config\n".to_owned(),
                )
            } else {
                (
                    503,
                    "text/plain",
                    "not ready: envoy does not serve a verified config yet\n".to_owned(),
                )
            }
        }
        ("GET", "/status") => (
            200,
            "application/json",
            serde_json::to_string_pretty(&snapshot()).unwrap_or_else(|_| "{}".into()) + "\n",
        ),
        ("POST", "/sync") => match e.sync.send(Signal::Sync) {
            Ok(()) => (202, "text/plain", "sync requested\n".to_owned()),
            Err(_) => (503, "text/plain", "the agent is stopping\n".to_owned()),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/sync") => {
            (405, "text/plain", "method not allowed\n".to_owned())
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        match status {
            200 => "OK",
            202 => "Accepted",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        },
        body.len()
    )?;
    out.flush()
}
