//! The agent's own configuration file (`--config`), validated in full
//! before anything starts. Every key is documented in docs/configuration.md.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpsie_lb_envoy::LocalAddress;

use vpsie_lb_acme::config as acme;
mod envoy;
use vpsie_lb_ha::config as ha;
use vpsie_lb_udp_guard::config as udp_guard_config;
pub use vpsie_lb_udp_guard::config::{
    DEFAULT_UDP_GUARD_TABLE, DEFAULT_UDP_TRACKED_CLIENTS, UdpGuardConfig,
};
mod vpsie;

pub use acme::AcmeConfig;
pub use ha::{Ha, HaMode, script_path};

use crate::listen::{default_agent_address, local_address};
pub use vpsie::read_api_key;
#[cfg(test)]
use vpsie::url_problem;
pub use vpsie_lb_host::config_text::parse_duration;
use vpsie_lb_host::config_text::socket_path;

/// Where desired state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The VPSie agent API (`GET /loadbalancers/{id}`).
    Vpsie,
    /// VPSie's public load-balancer API (`GET /api/v1/lb/{identifier}`),
    /// mapped onto documents.
    VpsiePublic,
    /// A local file in the load-balancer document format.
    File(PathBuf),
}

/// Settings for talking to the VPSie API.
#[derive(Debug, Clone)]
pub struct Vpsie {
    /// Base URL; https unless the host is loopback.
    pub api_url: String,
    /// File holding the API key (never logged; must not be readable by others).
    pub api_key_file: PathBuf,
    /// The load balancers this VM serves.
    pub loadbalancer_ids: Vec<String>,
    /// Time between passes.
    pub poll_interval: Duration,
    /// With `vpsie_public`: where certificates live, certbot's layout.
    pub certificate_dir: PathBuf,
    /// With `vpsie_public`: the agent API that gets events and health, if any.
    pub agent_api_url: Option<String>,
    /// With `vpsie_public`: the plain-HTTP port `redirectHTTP` redirects from.
    pub redirect_port: u16,
}

impl SourceKind {
    /// Whether this source talks to the VPSie API (and so needs a key).
    pub fn is_remote(&self) -> bool {
        matches!(self, SourceKind::Vpsie | SourceKind::VpsiePublic)
    }
}

/// Settings for the local Envoy.
#[derive(Debug, Clone)]
pub struct Envoy {
    /// Bootstrap and dynamic files live here.
    pub config_dir: PathBuf,
    /// Envoy's admin API: a Unix socket (the default), or loopback TCP.
    pub admin_address: LocalAddress,
    /// The read-only metrics listener (loopback), with the admin on a Unix socket.
    pub stats_address: Option<SocketAddr>,
    /// The Envoy binary (used for pre-flight, and to run Envoy when `manage`).
    pub binary_path: PathBuf,
    /// Address the listeners bind to.
    pub listen_address: IpAddr,
    /// Whether the agent starts and supervises Envoy itself.
    pub manage: bool,
    /// Where Envoy writes its access log.
    pub access_log: String,
    /// Percent of successful requests logged; failures always are.
    pub access_log_sample_percent: u32,
    /// Seconds Envoy drains connections on a listener change or shutdown.
    pub drain_time: Duration,
    /// How resources reach Envoy.
    pub delivery: DeliveryKind,
    /// The xDS server's Unix socket, with the xds delivery.
    pub xds_socket: PathBuf,
    /// Client buckets Envoy keeps per rate limit.
    pub rate_limit_tracked_clients: u32,
    /// The WAF service's Unix socket (Envoy's `vpsie_lb_waf` cluster).
    pub waf_socket: PathBuf,
    /// Where WAF load balancers' requests are inspected.
    pub waf_engine: vpsie_lb_envoy::WafEngine,
}

/// How resources reach Envoy (`envoy.delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Files Envoy watches.
    Files,
    /// The agent's delta ADS server.
    Xds,
}

impl std::str::FromStr for DeliveryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "files" => Ok(DeliveryKind::Files),
            "xds" => Ok(DeliveryKind::Xds),
            other => Err(format!("must be xds or files (got {other:?})")),
        }
    }
}

/// The delivery when `envoy.delivery` is not set (see docs/configuration.md
/// for why).
pub const DEFAULT_DELIVERY: DeliveryKind = DeliveryKind::Files;

/// Where the xDS server listens by default: in the agent's runtime
/// directory, which only the agent and Envoy's group can enter.
pub fn default_xds_socket() -> PathBuf {
    PathBuf::from("/run/vpsie-lb/xds.sock")
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// JSON lines (`json`) or human-readable (`text`).
    pub json: bool,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where desired state comes from.
    pub source: SourceKind,
    /// API settings (also present for `source: file`, with defaults).
    pub vpsie: Vpsie,
    /// Envoy settings.
    pub envoy: Envoy,
    /// Last-known-good and anything else that must survive a restart.
    pub state_dir: PathBuf,
    /// Log settings.
    pub logging: Logging,
    /// Where the agent's own endpoints (metrics, status) listen.
    pub agent_listen: LocalAddress,
    /// Backend networks trusted although they reach this VM (loopback, link-local, ...).
    pub allowed_backend_networks: Vec<vpsie_lb_model::IpNet>,
    /// This node's half of a keepalived pair, if it is in one.
    pub ha: Option<Ha>,
    /// Where ACME challenges are answered, and whom to trust for the directory.
    pub acme: AcmeConfig,
    /// The kernel's per-client bounds on udp load balancers; `None` when
    /// `udp_guard.enabled` is false.
    pub udp_guard: Option<UdpGuardConfig>,
}

/// The configuration file is unusable; nothing was started.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", problems.join("; "))]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Every problem, each naming its key.
    pub problems: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    vpsie: Option<RawVpsie>,
    source: Option<String>,
    file: Option<PathBuf>,
    envoy: Option<RawEnvoy>,
    state_dir: Option<PathBuf>,
    logging: Option<RawLogging>,
    agent: Option<RawAgent>,
    allowed_backend_networks: Option<Vec<String>>,
    ha: Option<ha::RawHa>,
    acme: Option<acme::RawAcme>,
    udp_guard: Option<udp_guard_config::RawUdpGuard>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    listen_address: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVpsie {
    api_url: Option<String>,
    api_key_file: Option<PathBuf>,
    loadbalancer_ids: Option<Vec<String>>,
    loadbalancer_id: Option<String>,
    poll_interval: Option<serde_norway::Value>,
    certificate_dir: Option<PathBuf>,
    agent_api_url: Option<String>,
    redirect_port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnvoy {
    config_dir: Option<PathBuf>,
    admin_address: Option<String>,
    stats_address: Option<String>,
    binary_path: Option<PathBuf>,
    listen_address: Option<String>,
    manage: Option<bool>,
    access_log: Option<String>,
    access_log_sample_percent: Option<u32>,
    drain_time: Option<serde_norway::Value>,
    delivery: Option<String>,
    xds_socket: Option<PathBuf>,
    rate_limit_tracked_clients: Option<u32>,
    waf_socket: Option<PathBuf>,
    waf_engine: Option<String>,
    waf_filter: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<String>,
    format: Option<String>,
}

impl Config {
    /// Reads and validates `path`, collecting every problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            problems: vec![e.to_string()],
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: origin.to_owned(),
            problems,
        };
        let de = serde_norway::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.inner().to_string();
            // serde_norway prefixes its own, shorter path; keep the precise one.
            let msg = inner
                .split_once(": ")
                .filter(|(p, _)| at.starts_with(p))
                .map_or(inner.clone(), |(_, m)| m.to_owned());
            fail(vec![format!("{at}: {msg}")])
        })?;
        Self::from_raw(raw).map_err(fail)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let (source, vpsie) = vpsie::read(
            raw.source.as_deref(),
            raw.file,
            raw.vpsie.unwrap_or_default(),
            &mut problems,
        );
        let envoy = envoy::read(raw.envoy.unwrap_or_default(), &mut problems);
        let logging = raw.logging.unwrap_or_default();
        let level = logging.level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            problems.push(format!(
                "logging.level: must be error, warn, info, debug or trace (got {level:?})"
            ));
        }
        let json = match logging.format.as_deref().unwrap_or("json") {
            "json" => true,
            "text" => false,
            other => {
                problems.push(format!(
                    "logging.format: must be json or text (got {other:?})"
                ));
                true
            }
        };
        let agent_listen = local_address(
            &mut problems,
            "agent.listen_address",
            raw.agent.unwrap_or_default().listen_address.as_deref(),
            default_agent_address(),
            "the endpoints are unauthenticated, and POST /sync runs a pass",
        );
        let mut allowed_backend_networks = Vec::new();
        for net in raw.allowed_backend_networks.unwrap_or_default() {
            match net.parse::<vpsie_lb_model::IpNet>() {
                Ok(n) => allowed_backend_networks.push(n),
                Err(e) => problems.push(format!("allowed_backend_networks: {e}")),
            }
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/vpsie-lb"));
        let ha = raw.ha.and_then(|h| ha::read(h, &state_dir, &mut problems));
        if ha.is_some() && !envoy.listen_address.is_unspecified() {
            // A listener bound to one address would need an Envoy change (or
            // freebind) each time a virtual IP moved; the wildcard needs none.
            problems.push(format!(
                "envoy.listen_address: {} must be 0.0.0.0 or :: in an ha pair, so that a virtual IP can move without an envoy change",
                envoy.listen_address
            ));
        }
        let acme = acme::read(raw.acme.unwrap_or_default(), &mut problems);
        let udp_guard = udp_guard_config::read(raw.udp_guard.unwrap_or_default(), &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            acme,
            agent_listen,
            allowed_backend_networks,
            source,
            vpsie,
            envoy,
            state_dir,
            logging: Logging { level, json },
            ha,
            udp_guard,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "ha_tests.rs"]
mod ha_tests;
