//! The agent's half of the deregistration delay: the clock the pure
//! [`vpsie_lb_model::drain`] steps are given, and closing what is left on a
//! backend once its delay ends.
//!
//! Envoy stops sending a draining backend new connections, and when the
//! backend is then removed it lets the open ones run to their end: it has no
//! way to close the connections of one host (envoyproxy/envoy#10846,
//! #27863). So the agent closes them itself, through the kernel's socket
//! destroy (`ss -K`, iproute2), which needs `CAP_NET_ADMIN`; the packaged
//! unit grants it. Envoy sees the upstream connection aborted and closes the
//! client's side, as after any backend failure.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the drain's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of `ms` since the epoch.
pub fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The `ss` filter for connections to `ip:port`.
fn filter(ip: IpAddr, port: u16) -> Vec<String> {
    let dst = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    [
        "state",
        "connected",
        "dst",
        &dst,
        "dport",
        "=",
        &format!(":{port}"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// TCP connections of this host to `ip:port`, one line each.
fn connections(ip: IpAddr, port: u16, kill: bool) -> Result<usize, String> {
    let mut cmd = Command::new("ss");
    if kill {
        cmd.arg("-K");
    }
    let out = cmd
        .args(["-H", "-t", "-n"])
        .args(filter(ip, port))
        .output()
        .map_err(|e| format!("run ss (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Closes every TCP connection of this host to `ip:port` and returns how
/// many there were; an error says how many are still open, and why.
pub fn close_connections(ip: IpAddr, port: u16) -> Result<usize, String> {
    let found = connections(ip, port, true)?;
    if found == 0 {
        return Ok(0);
    }
    // `ss -K` lists what it tried; without the capability it closes nothing
    // and says nothing, so count again.
    match connections(ip, port, false)? {
        0 => Ok(found),
        left => Err(format!(
            "{left} of {found} connections to {ip}:{port} are still open: closing them needs CAP_NET_ADMIN"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_names_the_endpoint_in_both_families() {
        let v4 = filter("10.0.0.1".parse().expect("ip"), 8080).join(" ");
        assert_eq!(v4, "state connected dst 10.0.0.1 dport = :8080");
        let v6 = filter("2001:db8::1".parse().expect("ip"), 443).join(" ");
        assert_eq!(v6, "state connected dst [2001:db8::1] dport = :443");
    }
}
