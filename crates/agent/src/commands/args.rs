//! The command line's arguments, as clap reads them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vpsie_lb_envoy::{BootstrapOptions, DEFAULT_GLOBAL_MAX_CONNECTIONS, LocalAddress};
use vpsie_lb_model::{IpNet, ValidateOptions};

use super::inspect::{PlanArgs, StatusArgs};

/// Control plane for a VPSie load balancer running Envoy.
#[derive(Debug, Parser)]
#[command(name = "vpsie-lb-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Render a load-balancer document into an Envoy bootstrap plus dynamic files.
    ///
    /// Writes DIR/bootstrap.yaml and the files it refers to (absolute paths),
    /// so that `envoy -c DIR/bootstrap.yaml` serves the load balancers.
    Render(RenderArgs),
    /// Validate a load-balancer document, then ask Envoy whether it accepts the result.
    ///
    /// Exits 0 when valid, 2 when not (every problem printed, one per line), 1 on other errors.
    Check(CheckArgs),
    /// Apply a document to a running Envoy that reads DIR (made by `render`).
    ///
    /// Validates, asks Envoy's validate mode, then writes only what changed in
    /// a safe order, confirming every step through Envoy's admin API. If Envoy
    /// refuses a step, the previous files are restored and confirmed.
    /// Exits 0 when applied or unchanged, 2 when the document is invalid, 3
    /// when Envoy refused it and the previous config is serving again, 1 on
    /// other errors.
    Apply(ApplyArgs),
    /// Run the agent: keep Envoy in step with the configured source until
    /// SIGTERM. SIGHUP runs a pass at once. See docs/configuration.md.
    Run(RunArgs),
    /// Show what a running agent serves: load balancers, backends, health.
    ///
    /// Exits 0 when every load balancer is active and Envoy is ready, 2 when
    /// anything is degraded or not ready, 1 when the agent cannot be reached.
    Status(StatusArgs),
    /// Show what applying a document would change compared with what the
    /// agent last confirmed (`STATE_DIR/desired.json`): load balancers and
    /// backends added, removed or changed, and which listeners would drain.
    /// Touches nothing. Exits 0, or 2 when the document is invalid.
    Plan(PlanArgs),
    /// High availability with keepalived: render its config, and the
    /// check and notify scripts it runs. See docs/operations.md.
    #[command(subcommand)]
    Ha(crate::ha::cli::HaCommand),
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The agent's configuration file (YAML).
    #[arg(long, value_name = "FILE", default_value = "/etc/vpsie-lb/agent.yaml")]
    pub(super) config: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct DocumentArgs {
    /// The document: one load balancer, or an array of them (JSON or YAML).
    #[arg(long, value_name = "FILE")]
    pub(super) input: PathBuf,
    /// Envoy's admin API: `unix:/PATH` (no proxied connection can reach it)
    /// or a loopback `HOST:PORT` (its port is then reserved).
    #[arg(long, value_name = "ADDR", default_value = "unix:/run/envoy/admin.sock",
          value_parser = parse_local)]
    pub(super) admin_address: LocalAddress,
    /// With the admin on a unix socket: the loopback address of the
    /// read-only metrics listener (GET /stats/prometheus, GET /ready), or
    /// `off`; its port is reserved. Default 127.0.0.1:9901.
    #[arg(long, value_name = "HOST:PORT|off")]
    pub(super) stats_address: Option<String>,
    /// Treat unknown keys as errors instead of warnings.
    #[arg(long)]
    pub(super) strict: bool,
    /// Trust backends in this network although it reaches this machine
    /// (loopback, link-local, ...); repeatable. Like `allowed_backend_networks`
    /// in the agent config.
    #[arg(long = "allow-backend-network", value_name = "CIDR", value_parser = parse_network)]
    pub(super) allow_backend_networks: Vec<IpNet>,
    /// The WAF service's unix socket, for the bootstrap's `vpsie_lb_waf` cluster.
    #[arg(long, value_name = "PATH", default_value = vpsie_lb_envoy::DEFAULT_WAF_SOCKET)]
    pub(super) waf_socket: PathBuf,
    /// An ACME directory a document may name besides Let's Encrypt's;
    /// repeatable. Like `acme.allowed_directories` in the agent config.
    #[arg(long = "allow-acme-directory", value_name = "URL")]
    pub(super) acme_directories: Vec<String>,
    /// A directory no certificate, key or CA path may be under; repeatable.
    /// The agent marks its state and config directories so.
    #[arg(long = "private-path", value_name = "DIR")]
    pub(super) private_paths: Vec<String>,
}

pub(super) fn parse_network(s: &str) -> Result<IpNet, String> {
    s.parse()
}

pub(super) fn parse_local(s: &str) -> Result<LocalAddress, String> {
    s.parse()
}

impl DocumentArgs {
    /// The metrics listener these flags ask for; `Err` names the flag.
    pub(super) fn stats(&self) -> anyhow::Result<Option<SocketAddr>> {
        crate::listen::stats_address(&self.admin_address, self.stats_address.as_deref())
            .map_err(|e| anyhow::anyhow!("--stats-address: {e}"))
    }

    /// The validation options these flags ask for.
    pub(super) fn validate_options(&self) -> ValidateOptions {
        ValidateOptions {
            strict: self.strict,
            reserved_ports: crate::listen::reserved_ports(
                &self.admin_address,
                self.stats().ok().flatten(),
                // The agent's endpoints default to a unix socket.
                &crate::listen::default_agent_address(),
            ),
            allowed_backend_networks: self.allow_backend_networks.clone(),
            private_paths: self.private_paths.clone(),
            acme_directories: self.acme_directories.clone(),
        }
    }

    /// The bootstrap options these flags ask for.
    pub(super) fn bootstrap_options(&self) -> anyhow::Result<BootstrapOptions> {
        Ok(BootstrapOptions {
            admin: self.admin_address.clone(),
            stats_address: self.stats()?,
            waf_socket: self.waf_socket.clone(),
            ..Default::default()
        })
    }
}

#[derive(Debug, Args)]
pub(super) struct OutputArgs {
    /// Output directory (Envoy's xDS root); created if missing.
    #[arg(long, value_name = "DIR")]
    pub(super) out: PathBuf,
    /// Address the load balancers' listeners bind to.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub(super) listen_address: IpAddr,
    /// Where Envoy writes its JSON access log.
    #[arg(long, value_name = "PATH", default_value = "/dev/stdout")]
    pub(super) access_log: String,
    /// Percent of successful requests logged (failures always are); 100 logs everything.
    #[arg(long, value_name = "PERCENT", default_value_t = vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub(super) access_log_sample_percent: u32,
    /// Global cap on concurrent downstream connections.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_GLOBAL_MAX_CONNECTIONS)]
    pub(super) max_connections: u64,
    /// Client buckets Envoy keeps per rate limit (the least recently seen
    /// client is forgotten first, and comes back with a full bucket).
    #[arg(long, value_name = "N", default_value_t = vpsie_lb_envoy::DEFAULT_TRACKED_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(super) rate_limit_tracked_clients: u32,
    /// Where WAF load balancers' requests are inspected: `service` (the
    /// vpsie-lb-waf service, over ext_authz) or `envoy` (the filter module
    /// inside Envoy). Like `envoy.waf_engine` in the agent config.
    #[arg(long, value_name = "ENGINE", default_value = "service")]
    pub(super) waf_engine: String,
    /// The filter module the `envoy` engine loads (an absolute path).
    #[arg(long, value_name = "PATH", default_value = vpsie_lb_envoy::DEFAULT_WAF_FILTER)]
    pub(super) waf_filter: PathBuf,
}

impl OutputArgs {
    /// The WAF engine these flags ask for; `Err` names the flag.
    pub(super) fn waf_engine(&self) -> anyhow::Result<vpsie_lb_envoy::WafEngine> {
        vpsie_lb_envoy::WafEngine::parse(&self.waf_engine, self.waf_filter.clone())
            .map_err(|e| anyhow::anyhow!("--waf-engine: {e}"))
    }
}

#[derive(Debug, Args)]
pub(super) struct RenderArgs {
    #[command(flatten)]
    pub(super) doc: DocumentArgs,
    #[command(flatten)]
    pub(super) output: OutputArgs,
    /// How Envoy gets the resources: `files` it watches, or `xds` from the
    /// agent's socket (then the resources go to DIR/xds/*.yaml, to read).
    #[arg(long, value_name = "files|xds", default_value = "files")]
    pub(super) delivery: crate::config::DeliveryKind,
    /// The agent's xDS socket, for the xds bootstrap.
    #[arg(long, value_name = "PATH", default_value_os_t = crate::config::default_xds_socket())]
    pub(super) xds_socket: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct PreflightArgs {
    /// The Envoy binary for the pre-flight; default: ENVOY_BIN, then `envoy` on PATH.
    #[arg(long, value_name = "PATH")]
    pub(super) envoy_bin: Option<PathBuf>,
    /// Skip the Envoy pre-flight and check the document only.
    #[arg(long)]
    pub(super) no_envoy: bool,
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    #[command(flatten)]
    pub(super) doc: DocumentArgs,
    #[command(flatten)]
    pub(super) output: OutputArgs,
    #[command(flatten)]
    pub(super) preflight: PreflightArgs,
    /// Where the last-known-good copy is kept (outside Envoy's watched directories).
    #[arg(long, value_name = "DIR")]
    pub(super) state_dir: Option<PathBuf>,
    /// Seconds to wait for Envoy to confirm each step.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(super) verify_timeout: u64,
}

#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    pub(super) doc: DocumentArgs,
    #[command(flatten)]
    pub(super) preflight: PreflightArgs,
}
