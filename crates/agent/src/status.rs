//! The agent's view of itself and of Envoy, served as `GET /status` and
//! printed by `vpsie-lb-agent status`. Never holds a secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything `/status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Envoy serves a config Envoy itself confirmed (what `/readyz` says).
    pub ready: bool,
    /// Envoy's admin API answered on the last pass.
    pub envoy_reachable: bool,
    /// Per load balancer.
    pub load_balancers: BTreeMap<String, LbStatus>,
}

/// One load balancer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LbStatus {
    /// `active`, `degraded` or `error`.
    pub status: String,
    /// Version of the newest document fetched (valid or not).
    pub desired_version: String,
    /// Version of the document Envoy serves.
    pub applied_version: String,
    /// When the last pass ended, RFC 3339.
    pub last_sync: String,
    /// How the last pass ended.
    pub last_result: String,
    /// Why the newest document is not served, if it is not.
    pub last_error: Option<String>,
    /// The served backends, with Envoy's view of their health.
    pub backends: Vec<BackendStatus>,
}

/// One backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Backend id.
    pub id: String,
    /// Address as configured.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Whether it may get traffic by configuration.
    pub enabled: bool,
    /// Envoy's view: None when Envoy does not know the host (disabled, or not yet resolved).
    pub healthy: Option<bool>,
}
