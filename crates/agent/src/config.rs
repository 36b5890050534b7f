//! The agent's own configuration file (`--config`), validated in full
//! before anything starts. Every key is documented in docs/configuration.md.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpsie_lb_envoy::LocalAddress;

use crate::listen::{default_agent_address, local_address, stats_address};

/// Where desired state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The VPSie API.
    Vpsie,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<String>,
    format: Option<String>,
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(v: &serde_norway::Value) -> Result<Duration, String> {
    if let Some(n) = v.as_u64() {
        return (n <= MAX_DURATION_SECS)
            .then(|| Duration::from_secs(n))
            .ok_or_else(|| format!("{n} is longer than {MAX_DURATION_SECS} seconds (one year)"));
    }
    let s = v
        .as_str()
        .ok_or("must be a duration like 30s, 500ms or 2m")?
        .trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} must be a duration like 30s, 500ms or 2m"))?;
    let per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    n.checked_mul(per_unit)
        .filter(|secs| *secs <= MAX_DURATION_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is longer than {MAX_DURATION_SECS} seconds (one year)"))
}

/// The longest duration any key accepts: a year. Longer values are typos,
/// and would overflow `Instant` arithmetic in the loop.
const MAX_DURATION_SECS: u64 = 365 * 86_400;

/// Whether `url` is https, or http to a loopback host.
fn url_problem(url: &str) -> Option<String> {
    match crate::origin::Origin::parse(url) {
        Err(e) => Some(format!("vpsie.api_url: {e}")),
        Ok(o) if o.scheme == "http" && !o.is_loopback() => Some(format!(
            "vpsie.api_url: {url:?} must use https unless the host is loopback"
        )),
        Ok(_) => None,
    }
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
        let v = raw.vpsie.unwrap_or_default();
        let e = raw.envoy.unwrap_or_default();

        let source = match raw.source.as_deref().unwrap_or("vpsie") {
            "vpsie" => SourceKind::Vpsie,
            "file" => match raw.file {
                Some(f) => SourceKind::File(f),
                None => {
                    problems.push("file: is required when source is file".into());
                    SourceKind::File(PathBuf::new())
                }
            },
            other => {
                problems.push(format!("source: must be vpsie or file (got {other:?})"));
                SourceKind::Vpsie
            }
        };
        let api_url = v
            .api_url
            .unwrap_or_else(|| "https://api.vpsie.com/v1".into());
        if let Some(p) = url_problem(&api_url) {
            problems.push(p);
        }
        let mut ids = v.loadbalancer_ids.unwrap_or_default();
        ids.extend(v.loadbalancer_id);
        ids.sort();
        ids.dedup();
        for id in &ids {
            if !vpsie_lb_model::is_valid_id(id) {
                problems.push(format!(
                    "vpsie.loadbalancer_ids: {id:?} must match [A-Za-z0-9_-]{{1,64}}"
                ));
            }
        }
        if ids.len() > vpsie_lb_model::limits::MAX_LOAD_BALANCERS {
            problems.push(format!(
                "vpsie.loadbalancer_ids: {} ids, more than the {} one agent serves",
                ids.len(),
                vpsie_lb_model::limits::MAX_LOAD_BALANCERS
            ));
        }
        if source == SourceKind::Vpsie && ids.is_empty() {
            problems.push(
                "vpsie.loadbalancer_ids: at least one id is required when source is vpsie".into(),
            );
        }
        let poll_interval = match v.poll_interval.as_ref().map(parse_duration) {
            None => Duration::from_secs(30),
            Some(Ok(d)) if d >= Duration::from_millis(100) => d,
            Some(Ok(_)) => {
                problems.push("vpsie.poll_interval: must be at least 100ms".into());
                Duration::from_secs(30)
            }
            Some(Err(msg)) => {
                problems.push(format!("vpsie.poll_interval: {msg}"));
                Duration::from_secs(30)
            }
        };
        let api_key_file = v
            .api_key_file
            .unwrap_or_else(|| PathBuf::from("/etc/vpsie-lb/api-key"));
        if source == SourceKind::Vpsie
            && let Some(p) = key_file_problem(&api_key_file)
        {
            problems.push(p);
        }

        let admin_address = local_address(
            &mut problems,
            "envoy.admin_address",
            e.admin_address.as_deref(),
            vpsie_lb_envoy::default_admin_address(),
            "the admin api is unauthenticated",
        );
        let stats_address = stats_address(&admin_address, e.stats_address.as_deref())
            .unwrap_or_else(|e| {
                problems.push(format!("envoy.stats_address: {e}"));
                None
            });
        let listen_address = match e
            .listen_address
            .as_deref()
            .unwrap_or("0.0.0.0")
            .parse::<IpAddr>()
        {
            Ok(a) => a,
            Err(err) => {
                problems.push(format!("envoy.listen_address: {err}"));
                IpAddr::from([0, 0, 0, 0])
            }
        };
        let drain_time = match e.drain_time.as_ref().map(parse_duration) {
            None => Duration::from_secs(30),
            Some(Ok(d)) => d,
            Some(Err(msg)) => {
                problems.push(format!("envoy.drain_time: {msg}"));
                Duration::from_secs(30)
            }
        };
        let access_log_sample_percent = match e.access_log_sample_percent {
            None => vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT,
            Some(p) if p <= 100 => p,
            Some(p) => {
                problems.push(format!(
                    "envoy.access_log_sample_percent: must be 0..=100 (got {p})"
                ));
                vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT
            }
        };
        let delivery = match e.delivery.as_deref().map(str::parse::<DeliveryKind>) {
            None => DEFAULT_DELIVERY,
            Some(Ok(d)) => d,
            Some(Err(msg)) => {
                problems.push(format!("envoy.delivery: {msg}"));
                DEFAULT_DELIVERY
            }
        };
        let xds_socket = e.xds_socket.unwrap_or_else(default_xds_socket);
        if !xds_socket.is_absolute() {
            problems.push(format!(
                "envoy.xds_socket: {} must be an absolute path",
                xds_socket.display()
            ));
        }
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
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            agent_listen,
            allowed_backend_networks,
            source,
            vpsie: Vpsie {
                api_url: api_url.trim_end_matches('/').to_owned(),
                api_key_file,
                loadbalancer_ids: ids,
                poll_interval,
            },
            envoy: Envoy {
                config_dir: e.config_dir.unwrap_or_else(|| PathBuf::from("/etc/envoy")),
                admin_address,
                stats_address,
                binary_path: e
                    .binary_path
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/envoy")),
                listen_address,
                manage: e.manage.unwrap_or(false),
                access_log: e.access_log.unwrap_or_else(|| "/dev/stdout".into()),
                access_log_sample_percent,
                drain_time,
                delivery,
                xds_socket,
            },
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/vpsie-lb")),
            logging: Logging { level, json },
        })
    }
}

/// The API key file must exist and be readable by its owner (and group) only.
fn key_file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("vpsie.api_key_file: {}: {e}", path.display())),
        Ok(m) if m.permissions().mode() & 0o004 != 0 => Some(format!(
            "vpsie.api_key_file: {} is readable by every user (mode {:04o}); run chmod 600 {}",
            path.display(),
            m.permissions().mode() & 0o777,
            path.display()
        )),
        Ok(_) => None,
    }
}

/// Reads the API key (trimmed). The key is never logged or put in an error.
pub fn read_api_key(path: &Path) -> Result<String, String> {
    let key = std::fs::read_to_string(path)
        .map_err(|e| format!("vpsie.api_key_file: {}: {e}", path.display()))?;
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(format!("vpsie.api_key_file: {} is empty", path.display()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agent.yaml");
        std::fs::write(&p, yaml).expect("write");
        Config::load(&p).map_err(|e| e.problems)
    }

    #[test]
    fn file_source_needs_only_a_file() {
        let c = load("source: file\nfile: /tmp/lb.yaml\n").expect("valid");
        assert_eq!(c.source, SourceKind::File("/tmp/lb.yaml".into()));
        assert_eq!(c.vpsie.poll_interval, Duration::from_secs(30));
        assert_eq!(
            c.envoy.admin_address.to_string(),
            "unix:/run/envoy/admin.sock"
        );
        assert_eq!(
            c.envoy.stats_address,
            Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
        );
        assert_eq!(c.agent_listen.to_string(), "unix:/run/vpsie-lb/agent.sock");
        assert_eq!(c.envoy.access_log_sample_percent, 1);
    }

    #[test]
    fn every_problem_is_named() {
        let errs = load(
            "source: file\nvpsie: {api_url: 'http://api.example.com/v1', poll_interval: 3x, loadbalancer_ids: ['bad id']}\nenvoy: {admin_address: '0.0.0.0:9901', access_log_sample_percent: 101}\nlogging: {level: loud}\n",
        )
        .expect_err("invalid");
        let all = errs.join("\n");
        for want in [
            "file: is required when source is file",
            "vpsie.api_url: \"http://api.example.com/v1\" must use https unless the host is loopback",
            "vpsie.poll_interval: \"3x\": unit must be ms, s, m or h",
            "vpsie.loadbalancer_ids: \"bad id\" must match",
            "envoy.admin_address: 0.0.0.0:9901 must be a unix socket or a loopback address",
            "envoy.access_log_sample_percent: must be 0..=100 (got 101)",
            "logging.level: must be error",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let errs = load("envoy: {admin_adress: '127.0.0.1:9901'}\n").expect_err("typo");
        assert!(
            errs[0].starts_with("envoy.admin_adress: unknown field `admin_adress`"),
            "{errs:?}"
        );
    }

    #[test]
    fn http_is_allowed_only_to_loopback() {
        for ok in [
            "https://api.vpsie.com/v1",
            "http://127.0.0.1:8080/v1",
            "http://localhost/v1",
            "http://[::1]:9/v1",
        ] {
            assert_eq!(url_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://10.0.0.1/v1",
            "ftp://x/v1",
            "http://127.0.0.1.evil.com/v1",
            "http://127.0.0.1:80@evil.example/v1",
            "HTTP://10.0.0.1/v1",
            "api.vpsie.com/v1",
        ] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("api-key");
        std::fs::write(&key, "secret-key-123\n").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let cfg = format!(
            "vpsie: {{api_key_file: {}, loadbalancer_id: lb-1}}\n",
            key.display()
        );
        let errs = load(&cfg).expect_err("world-readable key");
        assert!(
            errs[0].contains("readable by every user (mode 0644); run chmod 600"),
            "{errs:?}"
        );
        assert!(!errs[0].contains("secret-key-123"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = load(&cfg).expect("0600 key is fine");
        assert_eq!(c.vpsie.loadbalancer_ids, vec!["lb-1"]);
        assert_eq!(read_api_key(&key).expect("key"), "secret-key-123");
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(&serde_norway::from_str(s).expect("yaml"));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("5"), Ok(Duration::from_secs(5)));
        assert!(d("-1s").is_err());
    }

    #[test]
    fn regression_overflowing_durations_wrapped_or_panicked() {
        let d = |s: &str| parse_duration(&serde_norway::from_str(s).expect("yaml"));
        for huge in [
            "18446744073709551615h",
            "5124095576030432h",
            "307445734561825861m",
            "18446744073709551615",
            "18446744073709551615s",
            "400d",
            "366d",
        ] {
            assert!(d(huge).is_err(), "{huge} must be refused");
        }
        assert_eq!(d("8760h"), Ok(Duration::from_secs(365 * 86_400)));
        let errs = load("source: file\nfile: /x\nvpsie: {poll_interval: 99999999999999h}\n")
            .expect_err("huge interval");
        assert!(errs[0].starts_with("vpsie.poll_interval:"), "{errs:?}");
    }

    #[test]
    fn agent_endpoints_must_listen_on_loopback() {
        let errs = load("source: file\nfile: /x\nagent: {listen_address: '0.0.0.0:9902'}\n")
            .expect_err("public endpoints");
        assert!(
            errs[0].starts_with(
                "agent.listen_address: 0.0.0.0:9902 must be a unix socket or a loopback address"
            ),
            "{errs:?}"
        );
        assert!(load("source: file\nfile: /x\nagent: {listen_address: '[::1]:9902'}\n").is_ok());
    }

    #[test]
    fn allowed_backend_networks_are_parsed_and_named_when_wrong() {
        let c =
            load("source: file\nfile: /x\nallowed_backend_networks: [127.0.0.0/8, '::1/128']\n")
                .expect("valid");
        assert_eq!(c.allowed_backend_networks.len(), 2);
        let errs = load("source: file\nfile: /x\nallowed_backend_networks: [127.0.0.0/40]\n")
            .expect_err("bad prefix");
        assert!(
            errs[0].starts_with("allowed_backend_networks: \"127.0.0.0/40\""),
            "{errs:?}"
        );
    }
}
