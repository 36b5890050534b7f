//! A small client for Envoy's admin API: the stats and config dump that say
//! whether Envoy accepted a version.

use std::collections::HashMap;
use std::time::Duration;

use vpsie_lb_envoy::LocalAddress;

/// Per-request timeout; the admin API answers from memory.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on an admin response; a config dump of 1,000 load balancers is a few MB.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// Envoy's admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address is not loopback; the admin API must never be reached over a network.
    #[error("envoy admin {0}: must be a unix socket or a loopback address")]
    NotLoopback(LocalAddress),
    /// The request failed. Retrying may help (Envoy may be starting).
    #[error("envoy admin {path}: {reason}")]
    Request {
        /// The admin path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What one xDS subscription (LDS, CDS, an EDS cluster, an SDS secret) has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The last version Envoy accepted in full.
    pub version: String,
    /// Updates attempted.
    pub attempts: u64,
    /// Updates Envoy refused (bad content).
    pub rejected: u64,
    /// Updates Envoy could not read (bad file).
    pub failures: u64,
}

pub use vpsie_lb_core::health::HostHealth;

/// A client for one Envoy's admin API.
#[derive(Debug, Clone)]
pub struct EnvoyAdmin {
    addr: LocalAddress,
    timeout: Duration,
}

impl EnvoyAdmin {
    /// A client for the admin API at `addr`: a Unix socket, or loopback TCP.
    pub fn new(addr: LocalAddress) -> Result<Self, AdminError> {
        if !addr.is_local() {
            return Err(AdminError::NotLoopback(addr));
        }
        Ok(Self {
            addr,
            timeout: TIMEOUT,
        })
    }

    /// The same client, waiting at most `timeout` for each read or write.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    fn call(&self, method: &str, path: &str) -> Result<crate::local_http::Reply, AdminError> {
        crate::local_http::request(&self.addr, method, path, self.timeout, MAX_BODY).map_err(|e| {
            AdminError::Request {
                path: path.to_owned(),
                reason: format!("{}: {e}", self.addr),
            }
        })
    }

    /// GETs an admin path and returns the body of a 200 answer.
    pub fn get(&self, path: &str) -> Result<String, AdminError> {
        let reply = self.call("GET", path)?;
        if reply.status != 200 {
            return Err(AdminError::Request {
                path: path.to_owned(),
                reason: format!("status {}: {}", reply.status, truncate(&reply.body, 200)),
            });
        }
        Ok(reply.body)
    }

    /// GETs an admin path that answers JSON.
    fn get_json(&self, path: &str) -> Result<serde_json::Value, AdminError> {
        serde_json::from_str(&self.get(path)?).map_err(|e| AdminError::Request {
            path: path.to_owned(),
            reason: format!("not json: {e}"),
        })
    }

    /// POSTs an admin path (e.g. `/healthcheck/fail`).
    pub fn post(&self, path: &str) -> Result<(), AdminError> {
        match self.call("POST", path)?.status {
            200 => Ok(()),
            s => Err(AdminError::Request {
                path: path.to_owned(),
                reason: format!("status {s}"),
            }),
        }
    }

    /// Every stat whose name starts with `prefix`, as text.
    fn stats(&self, prefix: &str) -> Result<HashMap<String, String>, AdminError> {
        let filter = format!("^{}", prefix.replace('.', "\\."));
        let json = self.get_json(&format!(
            "/stats?format=json&filter={}",
            url_escape(&filter)
        ))?;
        let mut out = HashMap::new();
        for s in json["stats"].as_array().into_iter().flatten() {
            if let Some(name) = s["name"].as_str() {
                let value = match &s["value"] {
                    serde_json::Value::String(v) => v.clone(),
                    other => other.to_string(),
                };
                out.insert(name.to_owned(), value);
            }
        }
        Ok(out)
    }

    /// Downstream connections open now (`server.total_connections`).
    pub fn downstream_connections(&self) -> Result<u64, AdminError> {
        let stats = self.stats("server.total_connections")?;
        Ok(stats
            .get("server.total_connections")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The state of the subscription whose stats live under `prefix`, e.g.
    /// `listener_manager.lds`, `cluster_manager.cds`, `cluster.lb_web`.
    pub fn subscription(&self, prefix: &str) -> Result<Subscription, AdminError> {
        let stats = self.stats(&format!("{prefix}."))?;
        let num = |k: &str| {
            stats
                .get(&format!("{prefix}.{k}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Subscription {
            version: stats
                .get(&format!("{prefix}.version_text"))
                .cloned()
                .unwrap_or_default(),
            attempts: num("update_attempt"),
            rejected: num("update_rejected"),
            failures: num("update_failure"),
        })
    }

    /// Hosts of every cluster with their health, from `/clusters?format=json`.
    pub fn host_health(&self) -> Result<Vec<HostHealth>, AdminError> {
        let path = "/clusters?format=json";
        // Typed, keeping only what health needs: as a JSON tree, every
        // host's dozens of stats made 1,000 load balancers of 10 backends
        // cost the agent 90 MB on each pass (its peak memory).
        let doc: clusters::Doc =
            serde_json::from_str(&self.get(path)?).map_err(|e| AdminError::Request {
                path: path.to_owned(),
                reason: format!("not json: {e}"),
            })?;
        let mut out = Vec::new();
        for c in doc.cluster_statuses {
            for h in c.host_statuses {
                let hs = &h.health_status;
                let failed = hs.failed_active_health_check
                    || hs.failed_outlier_check
                    || hs.failed_eds_health
                    || hs.pending_dynamic_removal;
                let eds_ok = hs
                    .eds_health_status
                    .as_deref()
                    .is_none_or(|s| s == "HEALTHY");
                let sa = h.address.socket_address;
                out.push(HostHealth {
                    cluster: c.name.clone(),
                    address: sa.address,
                    port: u16::try_from(sa.port_value).unwrap_or(0),
                    hostname: h.hostname,
                    healthy: eds_ok && !failed,
                });
            }
        }
        Ok(out)
    }

    /// The names of the listeners Envoy has active (warmed, not draining).
    pub fn active_listeners(&self) -> Result<std::collections::BTreeSet<String>, AdminError> {
        let json = self.get_json("/listeners?format=json")?;
        Ok(json["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Listeners whose last update Envoy refused, with Envoy's reason.
    pub fn listener_errors(&self) -> Result<Vec<(String, String)>, AdminError> {
        let json = self.get_json("/config_dump?resource=dynamic_listeners")?;
        let mut named: Vec<(String, String)> = Vec::new();
        let mut unnamed: Vec<String> = Vec::new();
        for l in json["configs"].as_array().into_iter().flatten() {
            let Some(details) = l["error_state"]["details"].as_str() else {
                continue;
            };
            match l["name"].as_str() {
                Some(name) => named.push((name.to_owned(), details.to_owned())),
                None => unnamed.push(details.to_owned()),
            }
        }
        // Envoy also lists the failed update as a whole, without a name,
        // usually repeating a named listener's reason.
        for details in unnamed {
            if !named.iter().any(|(_, d)| *d == details) {
                named.push(("(update)".to_owned(), details));
            }
        }
        Ok(named)
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Escapes the few characters a stats regex uses that a URL query cannot carry.
fn url_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '^' => "%5E".to_owned(),
            '\\' => "%5C".to_owned(),
            '|' => "%7C".to_owned(),
            '(' => "%28".to_owned(),
            ')' => "%29".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The parts of `/clusters?format=json` that health needs; serde skips the rest.
mod clusters {
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Doc {
        pub cluster_statuses: Vec<Cluster>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Cluster {
        pub name: String,
        pub host_statuses: Vec<Host>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Host {
        pub address: Address,
        pub hostname: String,
        pub health_status: Health,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Address {
        pub socket_address: SocketAddress,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct SocketAddress {
        pub address: String,
        pub port_value: u64,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Health {
        pub failed_active_health_check: bool,
        pub failed_outlier_check: bool,
        pub failed_eds_health: bool,
        pub pending_dynamic_removal: bool,
        pub eds_health_status: Option<String>,
    }
}
