//! `vpsie-lb-bench`: measures the load balancer on this machine, against
//! the limit (no proxy), a hand-tuned Envoy and HAProxy, and writes
//! `BENCHMARKS.md`. Everything runs on 127.0.0.1 and every load is bounded
//! in time. `scripts/bench.sh` installs the tools and runs it.

mod ab;
mod convergence;
mod dataplane;
mod footprint;
mod ha;
mod hitless;
mod l4;
mod lab;
mod procs;
mod protect;
mod report;
mod restart;
mod routing;
mod scale;
mod waf_ref;
mod wrk;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::report::Table;

/// Measures data-plane overhead, convergence, hitless change, scale and
/// footprint, and writes the results as Markdown.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Tiny durations and counts: proves every scenario still runs, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Only these scenarios (comma-separated): dataplane, convergence, hitless, scale, footprint, restart, routing, protect, ha.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Exit 1 when a scenario records a failure that must never happen
    /// (a failed request, a listener drain, a change that never converged).
    #[arg(long)]
    strict: bool,
}

/// Settings every scenario reads.
pub struct Ctx {
    /// Tiny durations and counts.
    pub smoke: bool,
    /// Repetitions of each measured cell.
    pub runs: usize,
    /// Length of one load run.
    pub duration: Duration,
    /// Scratch directory for configs, logs and state.
    pub dir: PathBuf,
    /// The commit the runner started at: a commit made while it runs
    /// (it takes an hour) must not be named in the report.
    pub commit: String,
}

/// Things that went wrong or missed a target, listed at the end of the report.
pub type Findings = Vec<String>;

/// Problems that must never happen, whatever the machine's speed.
pub type Failures = Vec<String>;

const SCENARIOS: [&str; 10] = [
    "dataplane",
    "convergence",
    "hitless",
    "scale",
    "footprint",
    "restart",
    "routing",
    "protect",
    "ha",
    "l4",
];

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vpsie-lb-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<std::process::ExitCode> {
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!(
                "--only: unknown scenario {s:?} (known: {})",
                SCENARIOS.join(", ")
            );
        }
    }
    for tool in ["wrk", "haproxy", "nginx"] {
        if procs::version_of(tool, &["-v"]) == "not found" {
            bail!("{tool} not found: run scripts/bench.sh, which installs it");
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("vpsie-lb-bench-")
        .tempdir()
        .context("scratch directory")?;
    let ctx = Ctx {
        smoke: args.smoke,
        runs: if args.smoke { 1 } else { 3 },
        duration: Duration::from_secs(if args.smoke { 1 } else { 10 }),
        dir: scratch.path().to_path_buf(),
        commit: git_head(),
    };
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let started = Instant::now();
    let mut sections: Vec<(String, Vec<Table>)> = Vec::new();
    let mut findings = Findings::new();
    let mut failures = Failures::new();
    for name in SCENARIOS.iter().filter(|s| wanted(s)) {
        eprintln!("bench: {name} ...");
        let t0 = Instant::now();
        let tables = match *name {
            "dataplane" => dataplane::run(&ctx, &mut findings)?,
            "convergence" => convergence::run(&ctx, &mut findings, &mut failures)?,
            "hitless" => hitless::run(&ctx, &mut findings, &mut failures)?,
            "scale" => scale::run(&ctx, &mut findings)?,
            "restart" => restart::run(&ctx, &mut findings, &mut failures)?,
            "routing" => routing::run(&ctx, &mut findings)?,
            "protect" => protect::run(&ctx, &mut findings)?,
            "ha" => ha::run(&ctx, &mut findings, &mut failures)?,
            "l4" => l4::run(&ctx, &mut findings)?,
            _ => footprint::run(&ctx, &mut findings)?,
        };
        for t in &tables {
            println!("{}", t.plain());
        }
        eprintln!("bench: {name} took {:.0} s", t0.elapsed().as_secs_f64());
        sections.push(((*name).to_owned(), tables));
    }
    let md = document(&ctx, &sections, &findings, &failures, started.elapsed());
    std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("bench: wrote {}", args.out.display());
    for f in &failures {
        eprintln!("bench: FAILURE: {f}");
    }
    Ok(if args.strict && !failures.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The whole report: machine, versions, every table, findings.
fn document(
    ctx: &Ctx,
    sections: &[(String, Vec<Table>)],
    findings: &Findings,
    failures: &Failures,
    took: Duration,
) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    md.push_str("Written by `scripts/bench.sh` (`vpsie-lb-bench`); do not edit by hand. Every number below was measured in one run of the runner on the machine described here, with every comparison measured side by side in that same run. See `docs/benchmarks.md` for what each scenario does and how to read it.\n\n");
    if ctx.smoke {
        md.push_str("**Smoke mode: tiny durations. These numbers prove the runner works and mean nothing else.**\n\n");
    }
    md.push_str("## Machine and versions\n\n");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|s| s.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let envoy = vpsie_lb_testkit::envoy::envoy_bin();
    let envoy = envoy.to_str().unwrap_or("envoy");
    let rows = [
        ("CPU", format!("{cpu}, {cores} cores available")),
        ("memory", mem),
        ("kernel", procs::version_of("uname", &["-sr"])),
        (
            "Envoy",
            without_path(&procs::version_of(envoy, &["--version"])),
        ),
        ("HAProxy", procs::version_of("haproxy", &["-v"])),
        ("nginx (backends)", procs::version_of("nginx", &["-v"])),
        ("wrk", procs::version_of("wrk", &["-v"])),
        (
            "vpsie-lb",
            format!("{} ({})", env!("CARGO_PKG_VERSION"), ctx.commit),
        ),
        (
            "build",
            if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
        ),
        ("runner took", format!("{:.0} s", took.as_secs_f64())),
    ];
    md.push_str("| | |\n|---|---|\n");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {} |", v.replace('|', "/"));
    }
    md.push('\n');
    let _ = writeln!(md, "## Failures (must be none)\n");
    if failures.is_empty() {
        md.push_str("None.\n\n");
    } else {
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Targets missed and other findings\n");
    if findings.is_empty() {
        md.push_str("None.\n\n");
    } else {
        for f in findings {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }
    for (name, tables) in sections {
        let _ = writeln!(md, "## {name}\n");
        for t in tables {
            md.push_str(&t.markdown());
            md.push('\n');
        }
    }
    md
}

/// The commit the runner was built from, if this is a git checkout.
/// `envoy --version` starts with the binary's path, which says nothing about
/// the run and names a directory of the machine that ran it: keep the version.
fn without_path(version: &str) -> String {
    match version.find("version:") {
        Some(i) => version[i..].to_owned(),
        None => version.to_owned(),
    }
}

fn git_head() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(vpsie_lb_testkit::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("no git".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn regression_the_report_printed_the_envoy_binary_path() {
        let v = "/work/main/.local/venv/lib/python3.11/site-packages/envoy/_bin/envoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL";
        assert_eq!(
            super::without_path(v),
            "version: 9e55/1.40.0/Clean/RELEASE/BoringSSL"
        );
        assert_eq!(super::without_path("unknown"), "unknown");
    }
}
