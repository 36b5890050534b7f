//! The commands that look and change nothing: `status` (what the running
//! agent serves) and `plan` (what a document would change against what the
//! agent last confirmed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use vpsie_lb_envoy::LocalAddress;

use super::{DocumentArgs, EXIT_INVALID, load, parse_local};

#[derive(Debug, Args)]
pub(super) struct PlanArgs {
    #[command(flatten)]
    doc: DocumentArgs,
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/vpsie-lb")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The agent's endpoints: `unix:/PATH` or a loopback `HOST:PORT`.
    #[arg(long, value_name = "ADDR", default_value = "unix:/run/vpsie-lb/agent.sock",
          value_parser = parse_local)]
    address: LocalAddress,
    /// Print the agent's JSON as it is.
    #[arg(long)]
    json: bool,
}

/// `status`: the running agent's `/status`, as a table or as it is.
pub(super) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let timeout = std::time::Duration::from_secs(5);
    let body = match crate::local_http::request(&args.address, "GET", "/status", timeout, 64 << 20)
    {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => {
            eprintln!("agent at {} answered {}", args.address, r.status);
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("agent unreachable at {}: {e}", args.address);
            return Ok(ExitCode::from(1));
        }
    };
    let s: crate::status::AgentStatus =
        serde_json::from_str(&body).context("agent status is not the expected json")?;
    if args.json {
        print!("{body}");
    } else {
        print!("{}", s.table());
    }
    let healthy = s.ready && s.load_balancers.values().all(|lb| lb.status == "active");
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

/// `plan`: what applying a document would change against last-known-good.
pub(super) fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let desired = match load(&args.doc)? {
        Ok(loaded) => loaded.docs,
        Err(code) => return Ok(code),
    };
    let applied = match crate::state::load(&args.state_dir)? {
        Some(docs) => docs,
        None => {
            eprintln!(
                "note: {} holds no last-known-good; planning against an empty envoy",
                args.state_dir.display()
            );
            Default::default()
        }
    };
    print!(
        "{}",
        vpsie_lb_core::preview::render(&vpsie_lb_core::preview::preview(
            &applied,
            &desired,
            &args.doc.validate_options()
        ))
    );
    Ok(ExitCode::SUCCESS)
}
