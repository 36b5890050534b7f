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
//!
//! The running drains are saved beside last-known-good, so that an agent
//! restarted while Envoy serves on (under systemd) resumes them.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpsie_lb_model::drain::SavedDrain;

/// The running drains' file in the state directory.
pub const SAVED_FILE: &str = "draining.json";

/// One saved drain, as the file holds it.
#[derive(Serialize, Deserialize)]
struct Wire {
    lb: String,
    pool: String,
    id: String,
    ip: IpAddr,
    port: u16,
    weight: u32,
    until_ms: u64,
}

/// Saves `drains` in `state_dir` in one rename, or removes the file when
/// there are none; an error names the file.
pub fn save(state_dir: &Path, drains: &[SavedDrain]) -> Result<(), String> {
    let path = state_dir.join(SAVED_FILE);
    let done = if drains.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        let wire: Vec<Wire> = drains
            .iter()
            .map(|d| Wire {
                lb: d.lb.clone(),
                pool: d.pool.clone(),
                id: d.id.clone(),
                ip: d.ip,
                port: d.port,
                weight: d.weight,
                until_ms: d.until_ms,
            })
            .collect();
        let json = serde_json::to_vec_pretty(&wire).map_err(std::io::Error::other);
        json.and_then(|j| crate::fsutil::write_atomic(&path, &j, 0o644))
    };
    done.map_err(|e| format!("{}: {e}", path.display()))
}

/// The drains the last run saved in `state_dir`: none when it saved none;
/// an error names the file.
pub fn load(state_dir: &Path) -> Result<Vec<SavedDrain>, String> {
    let path = state_dir.join(SAVED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let wire: Vec<Wire> =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(wire
        .into_iter()
        .map(|w| SavedDrain {
            lb: w.lb,
            pool: w.pool,
            id: w.id,
            ip: w.ip,
            port: w.port,
            weight: w.weight,
            until_ms: w.until_ms,
        })
        .collect())
}

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

    #[test]
    fn saved_drains_load_back_and_none_removes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), Ok(vec![]));
        let drains = vec![SavedDrain {
            lb: "web".into(),
            pool: "default".into(),
            id: "a".into(),
            ip: "2001:db8::1".parse().expect("ip"),
            port: 8080,
            weight: 3,
            until_ms: 1_800_000_000_000,
        }];
        save(dir.path(), &drains).expect("save");
        assert_eq!(load(dir.path()), Ok(drains));
        save(dir.path(), &[]).expect("save none");
        assert!(!dir.path().join(SAVED_FILE).exists());
        save(dir.path(), &[]).expect("none again");
    }

    #[test]
    fn a_corrupt_drains_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SAVED_FILE), "[{").expect("write");
        let e = load(dir.path()).expect_err("corrupt");
        assert!(e.contains("draining.json"), "{e}");
    }
}
