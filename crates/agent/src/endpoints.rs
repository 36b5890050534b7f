//! The agent's own HTTP endpoints, on loopback:
//! `GET /metrics`, `GET /healthz`, `GET /readyz`, `GET /status`, `POST /sync`.
//!
//! Any local process can reach them; the server they run on
//! (`local_server`) bounds what a client can hold.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use vpsie_lb_envoy::LocalAddress;

use crate::local_server::{Answer, Head, plain, serve};
use crate::status::AgentStatus;
use crate::trigger::Trigger;

/// What the endpoints serve from.
#[derive(Clone)]
pub struct Endpoints {
    /// All metrics.
    pub registry: Arc<Registry>,
    /// The latest snapshot.
    pub status: Arc<Mutex<AgentStatus>>,
    /// Where `POST /sync` asks for a pass.
    pub sync: Trigger,
    /// The HA gauges and records, when this node is in a pair: read at
    /// each request, since keepalived reports between passes.
    pub ha: Option<crate::ha::HaMetrics>,
    /// The ACME certificates' state and gauges, read at each request.
    pub acme: Option<crate::acme::Acme>,
}

/// Binds `addr` (a Unix socket, replacing a stale one, or loopback TCP) and
/// serves in a background thread; returns the bound address.
pub fn spawn(addr: &LocalAddress, endpoints: Endpoints) -> std::io::Result<LocalAddress> {
    serve(
        addr,
        Arc::new(move |head: &Head<'_>| route(head, &endpoints)),
    )
}

fn route(head: &Head<'_>, e: &Endpoints) -> Answer {
    // `/readyz` reads one flag; only `/status` needs the whole snapshot.
    let ready = || e.status.lock().is_ok_and(|s| s.ready);
    let snapshot = || {
        let mut s = e.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.ha = e.ha.as_ref().map(|h| crate::ha::status(h.ha()));
        s.certificates = e.acme.as_ref().map(|a| a.status()).unwrap_or_default();
        s
    };
    match (head.method, head.path) {
        ("GET", "/metrics") => {
            if let Some(h) = &e.ha {
                h.refresh();
            }
            if let Some(a) = &e.acme {
                a.refresh_metrics();
            }
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::encode(&e.registry),
            )
        }
        ("GET", "/healthz") => plain(200, "ok\n"),
        ("GET", "/readyz") if ready() => plain(200, "ready: envoy serves a verified config\n"),
        ("GET", "/readyz") => plain(
            503,
            "not ready: envoy does not serve a verified config yet\n",
        ),
        ("GET", "/status") => (
            200,
            "application/json",
            serde_json::to_string_pretty(&snapshot()).unwrap_or_else(|_| "{}".into()) + "\n",
        ),
        ("POST", "/sync") if e.sync.sync() => plain(202, "sync requested\n"),
        ("POST", "/sync") => plain(503, "the agent is stopping\n"),
        (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/sync") => {
            plain(405, "method not allowed\n")
        }
        _ => plain(404, "not found\n"),
    }
}
