//! The `udp_guard` keys of the agent's config: whether the guard runs,
//! its nftables table, and how many clients it tracks.

use serde::Deserialize;

/// `udp_guard`, when enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpGuardConfig {
    /// The nftables table (`udp_guard.table`).
    pub table: String,
    /// Clients tracked per load balancer and address family
    /// (`udp_guard.tracked_clients`); past it a new client is refused.
    pub tracked_clients: u32,
}

/// `udp_guard` as written, before validation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUdpGuard {
    enabled: Option<bool>,
    table: Option<String>,
    tracked_clients: Option<u32>,
}

/// Most clients tracked per load balancer and address family, unless
/// `udp_guard.tracked_clients` says otherwise. A new client past this many
/// (spoofed sources, mostly) is refused until tracked clients' sessions
/// end: an untracked client would be an unbounded one.
pub const DEFAULT_UDP_TRACKED_CLIENTS: u32 = 65_536;
/// The guard's nftables table when `udp_guard.table` names none.
pub const DEFAULT_UDP_GUARD_TABLE: &str = "vpsie_lb";

/// Most clients `udp_guard.tracked_clients` may ask to track: each costs
/// the kernel a set element per family and load balancer.
const MAX_TRACKED_CLIENTS: u32 = 1 << 20;

/// `udp_guard`, when enabled. The table's name goes into nft commands, so
/// it is held to what nft accepts unquoted.
pub fn read(raw: RawUdpGuard, problems: &mut Vec<String>) -> Option<UdpGuardConfig> {
    let tracked_clients = raw.tracked_clients.unwrap_or(DEFAULT_UDP_TRACKED_CLIENTS);
    if !(1..=MAX_TRACKED_CLIENTS).contains(&tracked_clients) {
        problems.push(format!(
            "udp_guard.tracked_clients: must be 1..={MAX_TRACKED_CLIENTS} (got {tracked_clients})"
        ));
    }
    let table = raw
        .table
        .unwrap_or_else(|| DEFAULT_UDP_GUARD_TABLE.to_owned());
    let mut chars = table.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && table.len() <= 32;
    if !well_formed {
        problems.push(format!(
            "udp_guard.table: {table:?} must be 1-32 of a-z, 0-9 and _, not starting with a digit"
        ));
    }
    raw.enabled.unwrap_or(true).then_some(UdpGuardConfig {
        table,
        tracked_clients,
    })
}
