//! Where the control plane listens: Envoy's admin API, its read-only
//! metrics listener and the agent's endpoints; Unix sockets by default, or
//! loopback TCP; and the ports load balancers may therefore not take.

use std::net::SocketAddr;

use vpsie_lb_envoy::LocalAddress;

/// The ports no load balancer may take: Envoy's admin (when on TCP), the
/// metrics listener, and the agent's endpoints (when on TCP).
pub fn reserved_ports(
    admin: &LocalAddress,
    stats: Option<SocketAddr>,
    agent: &LocalAddress,
) -> Vec<vpsie_lb_model::ReservedPort> {
    let owned = |port: Option<u16>, owner: &str| {
        port.map(|port| vpsie_lb_model::ReservedPort {
            port,
            owner: owner.into(),
        })
    };
    [
        owned(admin.port(), "envoy admin"),
        owned(stats.map(|s| s.port()), "envoy's metrics listener"),
        owned(agent.port(), "the agent's own endpoints"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Where the agent's endpoints listen by default: a Unix socket, which no
/// proxied connection can reach.
pub fn default_agent_address() -> LocalAddress {
    LocalAddress::Unix("/run/vpsie-lb/agent.sock".into())
}

/// A Unix socket or a loopback address for `key`, `default` when absent.
pub(crate) fn local_address(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<&str>,
    default: LocalAddress,
    why: &str,
) -> LocalAddress {
    match value.map(str::parse::<LocalAddress>) {
        None => default,
        Some(Ok(a)) if a.is_local() => a,
        Some(Ok(a)) => {
            problems.push(format!(
                "{key}: {a} must be a unix socket or a loopback address ({why})"
            ));
            a
        }
        Some(Err(e)) => {
            problems.push(format!("{key}: {e}"));
            default
        }
    }
}

/// The read-only metrics listener: on by default (127.0.0.1:9901) when the
/// admin API is on a Unix socket, `off` to disable; with a TCP admin the
/// admin itself serves the metrics.
pub(crate) fn stats_address(
    admin: &LocalAddress,
    value: Option<&str>,
) -> Result<Option<SocketAddr>, String> {
    match (admin, value) {
        (_, Some("off" | "")) | (LocalAddress::Tcp(_), None) => Ok(None),
        (LocalAddress::Unix(_), None) => Ok(Some(vpsie_lb_envoy::default_stats_address())),
        (LocalAddress::Tcp(_), Some(_)) => Err(
            "only with the admin on a unix socket (a tcp admin serves the metrics itself)".into(),
        ),
        (LocalAddress::Unix(_), Some(v)) => match v.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Ok(Some(a)),
            Ok(a) => Err(format!("{a} must be a loopback address")),
            Err(e) => Err(format!("{v:?}: {e}")),
        },
    }
}
