//! systemd readiness (`sd_notify`): one datagram to `$NOTIFY_SOCKET`.
//! The agent says READY=1 only once Envoy serves a config it confirmed.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) when running under systemd; a no-op otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    // Abstract sockets ('@' prefix) need Linux-only APIs; systemd uses a
    // path for Type=notify services, which is what we support.
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(state.as_bytes(), &path));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
