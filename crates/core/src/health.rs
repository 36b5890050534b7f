//! Envoy's view of the upstream hosts, as the agent reads it from the
//! admin API and the status reports it.

/// One upstream host as Envoy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    /// The cluster it belongs to.
    pub cluster: String,
    /// Its IP.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// The DNS name it was resolved from, if any.
    pub hostname: String,
    /// Whether Envoy would send it traffic.
    pub healthy: bool,
}
