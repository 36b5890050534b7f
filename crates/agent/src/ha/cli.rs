//! `vpsie-lb-agent ha render|check|notify`: the commands keepalived and
//! its unit run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::State;
use crate::config::{Config, Ha};
use crate::envoy_admin::EnvoyAdmin;

/// `ha`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Print keepalived.conf for this node's `ha` section (or write it with --out).
    ///
    /// Exits 0, or 2 when the agent config is invalid or has no `ha` section.
    Render(RenderArgs),
    /// keepalived's track script: may this node hold the virtual IPs?
    ///
    /// Exits 0 when Envoy is ready and holds every listener of the config
    /// last confirmed on this node; 1 (with the reason on stderr) when not.
    /// Reads Envoy's admin and the state directory, never the agent.
    Check(ConfigArg),
    /// keepalived's notify script: record an instance's new state, and run
    /// `ha.notify_command` on becoming master.
    Notify(NotifyArgs),
}

/// The agent config, as the other commands take it.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The agent's configuration file (YAML).
    #[arg(long, value_name = "FILE", default_value = "/etc/vpsie-lb/agent.yaml")]
    config: PathBuf,
}

/// `ha render`'s arguments.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Write keepalived.conf here (atomically) instead of printing it.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

/// `ha notify`'s arguments.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The VRRP instance (`vpsie_lb_1`, `vpsie_lb_2`).
    #[arg(long, value_name = "NAME")]
    instance: String,
    /// Its new state.
    state: State,
}

/// Runs an `ha` subcommand.
pub fn run(cmd: HaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HaCommand::Render(args) => render(args),
        HaCommand::Check(args) => check(&args.config),
        HaCommand::Notify(args) => notify(args),
    }
}

/// The config and its `ha` section, or the exit code that says why not.
fn load_ha(path: &Path) -> Result<(Config, Ha), ExitCode> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}: {p}", e.path);
            }
            return Err(ExitCode::from(2));
        }
    };
    match cfg.ha.clone() {
        Some(ha) => Ok((cfg, ha)),
        None => {
            eprintln!(
                "{}: has no ha section; keepalived is only for nodes in an ha pair",
                path.display()
            );
            Err(ExitCode::from(2))
        }
    }
}

fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let path = std::fs::canonicalize(&args.config.config)
        .with_context(|| format!("agent config {}", args.config.config.display()))?;
    if let Err(e) = crate::config::script_path(&path) {
        eprintln!("--config: {e}");
        return Ok(ExitCode::from(2));
    }
    let (_, ha) = match load_ha(&path) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let text = super::render(&ha, &path);
    match args.out {
        None => print!("{text}"),
        Some(out) => crate::fsutil::write_atomic(&out, text.as_bytes(), 0o644)
            .with_context(|| format!("write {}", out.display()))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("not fit to hold the virtual ips: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let admin = EnvoyAdmin::new(cfg.envoy.admin_address.clone())
        .map_err(|e| anyhow::anyhow!("envoy.admin_address: {e}"))?;
    match super::check(&admin, &cfg.state_dir) {
        Ok(fit) => {
            println!(
                "fit: envoy serves confirmed config {} ({} listeners)",
                fit.version, fit.listeners
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("not fit to hold the virtual ips: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Asks the agent for a pass now, so it reports the new state within a
/// second instead of at its next poll. Best effort: the record is what
/// counts, and an agent that is down reads it when it is back.
fn tell_the_agent(agent: &vpsie_lb_envoy::LocalAddress) {
    let asked = crate::local_http::request(agent, "POST", "/sync", Duration::from_secs(1), 4096);
    if let Err(e) = asked {
        eprintln!("the agent at {agent} was not told (it reads the record at its next pass): {e}");
    }
}

fn notify(args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let (cfg, ha) = match load_ha(&args.config.config) {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    match super::notify(&ha, &args.instance, args.state) {
        Ok(record) => {
            println!(
                "{} is {} since {}{}",
                record.instance,
                record.state.as_str(),
                record.since,
                record
                    .notify_command
                    .map(|h| format!("; notify_command: {h}"))
                    .unwrap_or_default()
            );
            tell_the_agent(&cfg.agent_listen);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ha notify: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
