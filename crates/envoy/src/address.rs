//! Where a local control endpoint listens: a TCP port on loopback, or a Unix
//! socket. A Unix socket cannot be reached by a connection Envoy proxies
//! (backends are TCP), which is why Envoy's admin and the agent's endpoints
//! default to one.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes).
const MAX_SOCKET_PATH: usize = 107;

/// A loopback TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddress {
    /// `127.0.0.1:9901`; callers check that it is loopback.
    Tcp(SocketAddr),
    /// `unix:/run/envoy/admin.sock`: an absolute path.
    Unix(PathBuf),
}

impl LocalAddress {
    /// The TCP port, if this is a TCP address.
    pub fn port(&self) -> Option<u16> {
        match self {
            LocalAddress::Tcp(a) => Some(a.port()),
            LocalAddress::Unix(_) => None,
        }
    }

    /// Why `path` cannot name a Unix socket, if it cannot: it must be
    /// absolute and fit the kernel's `sun_path`.
    pub fn unix_path_problem(path: &str) -> Option<String> {
        if !path.starts_with('/') {
            Some("a unix socket needs an absolute path".into())
        } else if path.len() > MAX_SOCKET_PATH || path.contains('\0') {
            Some(format!(
                "a unix socket path must be at most {MAX_SOCKET_PATH} bytes"
            ))
        } else {
            None
        }
    }

    /// Whether nothing outside this machine can reach it: a Unix socket, or TCP on loopback.
    pub fn is_local(&self) -> bool {
        match self {
            LocalAddress::Tcp(a) => a.ip().is_loopback(),
            LocalAddress::Unix(_) => true,
        }
    }
}

impl FromStr for LocalAddress {
    type Err = String;

    /// `unix:/abs/path`, `/abs/path`, or `HOST:PORT` with an IP host.
    fn from_str(s: &str) -> Result<Self, String> {
        let path = s.strip_prefix("unix:").or(s.starts_with('/').then_some(s));
        if let Some(p) = path {
            if let Some(why) = LocalAddress::unix_path_problem(p) {
                return Err(format!("{s:?}: {why}"));
            }
            return Ok(LocalAddress::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>()
            .map(LocalAddress::Tcp)
            .map_err(|e| format!("{s:?}: {e} (want 127.0.0.1:PORT or unix:/PATH)"))
    }
}

impl fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddress::Tcp(a) => write!(f, "{a}"),
            LocalAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_says_what_is_wrong() {
        let a: LocalAddress = "unix:/run/envoy/admin.sock".parse().expect("unix");
        assert_eq!(a, LocalAddress::Unix("/run/envoy/admin.sock".into()));
        assert_eq!(a.to_string(), "unix:/run/envoy/admin.sock");
        assert_eq!(
            "/run/x.sock"
                .parse::<LocalAddress>()
                .expect("bare path")
                .port(),
            None
        );
        let t: LocalAddress = "127.0.0.1:9901".parse().expect("tcp");
        assert_eq!((t.port(), t.is_local()), (Some(9901), true));
        assert!(
            !"0.0.0.0:9901"
                .parse::<LocalAddress>()
                .expect("tcp")
                .is_local()
        );
        assert!("unix:run/x.sock".parse::<LocalAddress>().is_err());
        assert!(
            format!("unix:/{}", "a".repeat(200))
                .parse::<LocalAddress>()
                .is_err()
        );
        assert!("localhost:9901".parse::<LocalAddress>().is_err());
    }
}
