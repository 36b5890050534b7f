//! The command line: `render`, `check`, `apply`, `plan`, `run` and `status`,
//! and their exit codes.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use vpsie_lb_envoy::{
    BootstrapOptions, DEFAULT_GLOBAL_MAX_CONNECTIONS, Delivery, LocalAddress, TranslateOptions,
    XdsLayout, bootstrap, render_files, to_yaml, translate,
};
use vpsie_lb_model::{
    FieldPath, IpNet, MAX_DOCUMENT_BYTES, Problem, ValidateOptions, Validated, parse_document,
    validate,
};

use crate::apply::{Applier, Outcome};
use crate::envoy_admin::EnvoyAdmin;
use crate::{fsutil, plan, preflight};

mod inspect;

use inspect::{PlanArgs, StatusArgs};

/// Exit code for a document that is not valid.
const EXIT_INVALID: u8 = 2;

/// Control plane for a VPSie load balancer running Envoy.
#[derive(Debug, Parser)]
#[command(name = "vpsie-lb-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct RunArgs {
    /// The agent's configuration file (YAML).
    #[arg(long, value_name = "FILE", default_value = "/etc/vpsie-lb/agent.yaml")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct DocumentArgs {
    /// The document: one load balancer, or an array of them (JSON or YAML).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Envoy's admin API: `unix:/PATH` (no proxied connection can reach it)
    /// or a loopback `HOST:PORT` (its port is then reserved).
    #[arg(long, value_name = "ADDR", default_value = "unix:/run/envoy/admin.sock",
          value_parser = parse_local)]
    admin_address: LocalAddress,
    /// With the admin on a unix socket: the loopback address of the
    /// read-only metrics listener (GET /stats/prometheus, GET /ready), or
    /// `off`; its port is reserved. Default 127.0.0.1:9901.
    #[arg(long, value_name = "HOST:PORT|off")]
    stats_address: Option<String>,
    /// Treat unknown keys as errors instead of warnings.
    #[arg(long)]
    strict: bool,
    /// Trust backends in this network although it reaches this machine
    /// (loopback, link-local, ...); repeatable. Like `allowed_backend_networks`
    /// in the agent config.
    #[arg(long = "allow-backend-network", value_name = "CIDR", value_parser = parse_network)]
    allow_backend_networks: Vec<IpNet>,
    /// The WAF service's unix socket, for the bootstrap's `vpsie_lb_waf` cluster.
    #[arg(long, value_name = "PATH", default_value = vpsie_lb_envoy::DEFAULT_WAF_SOCKET)]
    waf_socket: PathBuf,
}

fn parse_network(s: &str) -> Result<IpNet, String> {
    s.parse()
}

fn parse_local(s: &str) -> Result<LocalAddress, String> {
    s.parse()
}

impl DocumentArgs {
    /// The metrics listener these flags ask for; `Err` names the flag.
    fn stats(&self) -> anyhow::Result<Option<SocketAddr>> {
        crate::listen::stats_address(&self.admin_address, self.stats_address.as_deref())
            .map_err(|e| anyhow::anyhow!("--stats-address: {e}"))
    }

    /// The validation options these flags ask for.
    fn validate_options(&self) -> ValidateOptions {
        ValidateOptions {
            strict: self.strict,
            reserved_ports: crate::listen::reserved_ports(
                &self.admin_address,
                self.stats().ok().flatten(),
                // The agent's endpoints default to a unix socket.
                &crate::listen::default_agent_address(),
            ),
            allowed_backend_networks: self.allow_backend_networks.clone(),
        }
    }

    /// The bootstrap options these flags ask for.
    fn bootstrap_options(&self) -> anyhow::Result<BootstrapOptions> {
        Ok(BootstrapOptions {
            admin: self.admin_address.clone(),
            stats_address: self.stats()?,
            waf_socket: self.waf_socket.clone(),
            ..Default::default()
        })
    }
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Output directory (Envoy's xDS root); created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Address the load balancers' listeners bind to.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    listen_address: IpAddr,
    /// Where Envoy writes its JSON access log.
    #[arg(long, value_name = "PATH", default_value = "/dev/stdout")]
    access_log: String,
    /// Percent of successful requests logged (failures always are); 100 logs everything.
    #[arg(long, value_name = "PERCENT", default_value_t = vpsie_lb_envoy::DEFAULT_ACCESS_LOG_SAMPLE_PERCENT,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    access_log_sample_percent: u32,
    /// Global cap on concurrent downstream connections.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_GLOBAL_MAX_CONNECTIONS)]
    max_connections: u64,
    /// Client buckets Envoy keeps per rate limit (the least recently seen
    /// client is forgotten first, and comes back with a full bucket).
    #[arg(long, value_name = "N", default_value_t = vpsie_lb_envoy::DEFAULT_TRACKED_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate_limit_tracked_clients: u32,
}

#[derive(Debug, Args)]
struct RenderArgs {
    #[command(flatten)]
    doc: DocumentArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// How Envoy gets the resources: `files` it watches, or `xds` from the
    /// agent's socket (then the resources go to DIR/xds/*.yaml, to read).
    #[arg(long, value_name = "files|xds", default_value = "files")]
    delivery: crate::config::DeliveryKind,
    /// The agent's xDS socket, for the xds bootstrap.
    #[arg(long, value_name = "PATH", default_value_os_t = crate::config::default_xds_socket())]
    xds_socket: PathBuf,
}

#[derive(Debug, Args)]
struct PreflightArgs {
    /// The Envoy binary for the pre-flight; default: ENVOY_BIN, then `envoy` on PATH.
    #[arg(long, value_name = "PATH")]
    envoy_bin: Option<PathBuf>,
    /// Skip the Envoy pre-flight and check the document only.
    #[arg(long)]
    no_envoy: bool,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    #[command(flatten)]
    doc: DocumentArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    preflight: PreflightArgs,
    /// Where the last-known-good copy is kept (outside Envoy's watched directories).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds to wait for Envoy to confirm each step.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    verify_timeout: u64,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    doc: DocumentArgs,
    #[command(flatten)]
    preflight: PreflightArgs,
}

/// Runs one command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Render(args) => render(args),
        Command::Check(args) => check(args),
        Command::Apply(args) => apply(args),
        Command::Run(args) => crate::run::run(&args.config),
        Command::Status(args) => inspect::status(args),
        Command::Plan(args) => inspect::plan(args),
        Command::Ha(cmd) => crate::ha::cli::run(cmd),
    }
}

/// Reads the document. `Ok(Err(problem))` is a document that cannot be
/// valid (too big, not UTF-8); `Err` is an IO failure.
fn read_input(path: &Path) -> anyhow::Result<Result<String, String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Ok(Err(format!(
            "(document): is {} bytes, more than the {MAX_DOCUMENT_BYTES}-byte limit",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(String::from_utf8(bytes).map_err(|e| format!("(document): is not utf-8 text ({e})")))
}

fn print_problems(kind: &str, problems: &[Problem]) {
    for p in problems {
        eprintln!("{kind}: {p}");
    }
}

/// A document that passed validation, and its load balancers as given.
struct Loaded {
    /// The trusted model.
    validated: Validated,
    /// The documents by load-balancer id: the form the agent's state keeps.
    docs: crate::state::Docs,
}

/// Reads and validates the document; `Err(code)` when it is invalid (problems already printed).
fn load(doc: &DocumentArgs) -> anyhow::Result<Result<Loaded, ExitCode>> {
    if !doc.admin_address.is_local() {
        bail!(
            "--admin-address {}: envoy admin must listen on a unix socket or a loopback address, its endpoints are unauthenticated",
            doc.admin_address
        );
    }
    doc.stats()?;
    let text = match read_input(&doc.input)? {
        Ok(text) => text,
        Err(problem) => {
            println!("{problem}");
            eprintln!("{}: 1 problem(s); nothing was written", doc.input.display());
            return Ok(Err(ExitCode::from(EXIT_INVALID)));
        }
    };
    let checked = parse_document(&text)
        .and_then(|value| validate(&value, &doc.validate_options()).map(|v| (v, value)));
    match checked {
        Ok((v, value)) => {
            print_problems("warning", &v.warnings);
            print_problems("warning", &key_permission_problems(&v));
            Ok(Ok(Loaded {
                validated: v,
                docs: docs_by_id(value),
            }))
        }
        Err(rejected) => {
            print_problems("warning", &rejected.warnings);
            // Problems go to stdout, one per line, so scripts can read them.
            for e in &rejected.errors {
                println!("{e}");
            }
            eprintln!(
                "{}: {} problem(s); nothing was written",
                doc.input.display(),
                rejected.errors.len()
            );
            Ok(Err(ExitCode::from(EXIT_INVALID)))
        }
    }
}

/// Private keys that other users can read. A warning, not an error: the
/// document is fine, the file system is not. Group-readable (0640) stays
/// quiet, since that is how a key is shared with the `envoy` group.
fn key_permission_problems(v: &Validated) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let path = FieldPath::root().key("tls_config").key("private_key_path");
    let mut out = Vec::new();
    for lb in &v.config.load_balancers {
        let Some(tls) = &lb.tls else { continue };
        let Ok(meta) = std::fs::metadata(&tls.private_key_path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            out.push(Problem::new(
                &path,
                format!(
                    "load balancer {:?}: {} is readable by every user (mode {mode:04o}); run chmod 600 on it",
                    lb.id, tls.private_key_path
                ),
            ));
        }
    }
    out
}

/// Translates for dynamic files under `output.out` (created if missing).
fn translate_to_files(
    validated: &Validated,
    output: &OutputArgs,
) -> anyhow::Result<(XdsLayout, Vec<vpsie_lb_envoy::RenderedFile>)> {
    fsutil::ensure_dir(&output.out)?;
    let root = std::fs::canonicalize(&output.out)
        .with_context(|| format!("resolve {}", output.out.display()))?;
    let layout = XdsLayout::new(&root);
    let opts = TranslateOptions {
        listen_address: output.listen_address,
        access_log_path: output.access_log.clone(),
        access_log_sample_percent: output.access_log_sample_percent,
        global_max_connections: output.max_connections,
        rate_limit_tracked_clients: output.rate_limit_tracked_clients,
        ..TranslateOptions::new(Delivery::Files(layout.clone()))
    };
    let files = render_files(&translate(&validated.config, &opts), &layout)?;
    Ok((layout, files))
}

fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let validated = match load(&args.doc)? {
        Ok(loaded) => loaded.validated,
        Err(code) => return Ok(code),
    };
    if args.delivery == crate::config::DeliveryKind::Xds {
        return render_xds(&validated, &args);
    }
    let (layout, files) = translate_to_files(&validated, &args.output)?;
    let _lock = fsutil::lock_dir(layout.root())?;
    let boot = bootstrap(
        &layout,
        &BootstrapOptions {
            global_max_connections: args.output.max_connections,
            ..args.doc.bootstrap_options()?
        },
    );
    let boot_yaml = to_yaml(&boot)?;

    // Endpoint and secret directories of resources that are gone, as the
    // planner sees them (the same rule `apply` uses).
    let stale = plan::plan(
        &layout,
        &plan::read_file_set(&layout)?,
        &plan::file_set(files.clone()),
    )?
    .prune;
    // Dependencies first: secrets and endpoints, then clusters, then listeners.
    for f in &files {
        let dir = f.path.parent().context("rendered file has no directory")?;
        fsutil::ensure_dir(dir)?;
        fsutil::write_atomic(&f.path, f.contents.as_bytes(), 0o644)?;
    }
    for dir in stale {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove stale {}", dir.display()))?;
    }
    crate::waf::write_policies(
        &layout.root().join(crate::waf::POLICY_FILE),
        &validated.config,
        &mut None,
    )?;
    fsutil::write_atomic(&layout.bootstrap_file(), boot_yaml.as_bytes(), 0o644)?;
    println!(
        "rendered {} load balancer(s) into {}; run: envoy -c {}",
        validated.config.load_balancers.len(),
        layout.root().display(),
        layout.bootstrap_file().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `render --delivery xds`: the bootstrap that connects to the agent's
/// socket, and what the agent would serve on it, to read.
fn render_xds(validated: &Validated, args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let out = &args.output;
    fsutil::ensure_dir(&out.out)?;
    let layout = XdsLayout::new(&out.out);
    let _lock = fsutil::lock_dir(layout.root())?;
    let opts = TranslateOptions {
        listen_address: out.listen_address,
        access_log_path: out.access_log.clone(),
        access_log_sample_percent: out.access_log_sample_percent,
        global_max_connections: out.max_connections,
        rate_limit_tracked_clients: out.rate_limit_tracked_clients,
        ..TranslateOptions::new(Delivery::Ads)
    };
    let set = vpsie_lb_envoy::resource_set(&translate(&validated.config, &opts))?;
    let dir = out.out.join("xds");
    fsutil::ensure_dir(&dir)?;
    // Whole directory each time: a type with no resource left must not
    // keep an old file that says otherwise.
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, text) in vpsie_lb_envoy::render_resource_set(&set)? {
        fsutil::write_atomic(&dir.join(name), text.as_bytes(), 0o644)?;
    }
    let boot = vpsie_lb_envoy::ads_bootstrap(
        &args.xds_socket,
        &BootstrapOptions {
            global_max_connections: out.max_connections,
            ..args.doc.bootstrap_options()?
        },
    );
    fsutil::write_atomic(&layout.bootstrap_file(), to_yaml(&boot)?.as_bytes(), 0o644)?;
    println!(
        "rendered {} load balancer(s): {} connects to the agent on {}; what it would serve is in {}",
        validated.config.load_balancers.len(),
        layout.bootstrap_file().display(),
        args.xds_socket.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs Envoy's validate mode on the document unless told not to.
/// `Some(code)` when Envoy refused it (reason printed).
fn run_preflight(
    validated: &Validated,
    args: &PreflightArgs,
    boot: &BootstrapOptions,
) -> anyhow::Result<Option<ExitCode>> {
    if args.no_envoy {
        return Ok(None);
    }
    let envoy = preflight::find_envoy(args.envoy_bin.as_deref())?;
    let resources = translate(
        &validated.config,
        &TranslateOptions {
            listen_address: IpAddr::from([127, 0, 0, 1]),
            ..TranslateOptions::new(Delivery::Static)
        },
    );
    match preflight::validate(&envoy, &resources, boot) {
        Ok(()) => Ok(None),
        Err(e @ preflight::PreflightError::Rejected(_)) => {
            println!("envoy: {e}");
            Ok(Some(ExitCode::from(EXIT_INVALID)))
        }
        Err(e) => Err(e.into()),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let validated = match load(&args.doc)? {
        Ok(loaded) => loaded.validated,
        Err(code) => return Ok(code),
    };
    let n = validated.config.load_balancers.len();
    if let Some(code) = run_preflight(&validated, &args.preflight, &args.doc.bootstrap_options()?)?
    {
        return Ok(code);
    }
    if args.preflight.no_envoy {
        println!("ok: {n} load balancer(s) valid (envoy pre-flight skipped)");
    } else {
        println!("ok: {n} load balancer(s) valid and accepted by envoy");
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code when Envoy refused the change and the previous config is back.
const EXIT_ROLLED_BACK: u8 = 3;

fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let loaded = match load(&args.doc)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let validated = &loaded.validated;
    if let Some(code) = run_preflight(validated, &args.preflight, &args.doc.bootstrap_options()?)? {
        return Ok(code);
    }
    if !args.output.out.join("bootstrap.yaml").is_file() {
        bail!(
            "{}: no bootstrap.yaml; run `vpsie-lb-agent render` first and start envoy on it",
            args.output.out.display()
        );
    }
    let (layout, files) = translate_to_files(validated, &args.output)?;
    // `run` holds this lock for as long as it runs: two writers of one
    // directory would interleave their steps.
    let _lock = fsutil::lock_dir(layout.root())?;
    let next = plan::file_set(files);
    if let Err(e) =
        crate::preflight::check_files_watch_budget(&next, &layout, crate::preflight::watch_limit())
    {
        println!("{e}");
        return Ok(ExitCode::from(2));
    }
    // Before Envoy learns of a load balancer's WAF, the service knows its policy.
    crate::waf::write_policies(
        &layout.root().join(crate::waf::POLICY_FILE),
        &validated.config,
        &mut None,
    )?;
    let admin = EnvoyAdmin::new(args.doc.admin_address.clone())?;
    let applier = Applier::new(
        layout.clone(),
        admin,
        std::time::Duration::from_secs(args.verify_timeout),
    );
    let version = next
        .get(&layout.lds_file())
        .map(|f| f.version.clone())
        .unwrap_or_default();
    match applier.apply(&next)? {
        Outcome::Unchanged => println!("unchanged: envoy already has this config"),
        Outcome::Applied => {
            println!("applied: envoy confirmed every step (listeners version {version})")
        }
        Outcome::RolledBack(cause) => {
            println!("rolled back: {cause}");
            eprintln!("the previous config is serving again; nothing else changed");
            return Ok(ExitCode::from(EXIT_ROLLED_BACK));
        }
        Outcome::Interrupted(cause) => {
            println!("failed: {cause}");
            eprintln!(
                "the previous config is serving again; the same apply may succeed on a retry"
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if let Some(state) = &args.state_dir {
        // The same state `run` keeps, so `plan` and a later `run` see it.
        let record = crate::state::Unsaved {
            files: crate::delivery::relative_files(&layout, &next).map_err(anyhow::Error::msg)?,
            listeners: crate::delivery::file_listener_names(&layout, &next),
        };
        crate::state::save(state, &loaded.docs, &record)
            .with_context(|| format!("save last-known-good in {}", state.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The load balancers of a validated document by id (validation made
/// sure every item has a unique one).
fn docs_by_id(doc: serde_json::Value) -> crate::state::Docs {
    let items = match doc {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    items
        .into_iter()
        .filter_map(|v| Some((v["id"].as_str()?.to_owned(), v)))
        .collect()
}
