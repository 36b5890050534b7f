//! The command line: `render`, `check`, `apply`, `plan`, `run` and `status`,
//! and their exit codes.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use vpsie_lb_envoy::{
    BootstrapOptions, FilesLayout, Target, TranslateOptions, bootstrap, render_files, to_yaml,
    translate,
};
use vpsie_lb_model::{FieldPath, MAX_DOCUMENT_BYTES, Problem, Validated, parse_document, validate};

use crate::{envoy_files, fsutil, preflight};

mod apply;
mod args;
mod inspect;

pub use args::Cli;
use args::{CheckArgs, Command, DocumentArgs, OutputArgs, PreflightArgs, RenderArgs, parse_local};

/// Exit code for a document that is not valid.
const EXIT_INVALID: u8 = 2;

/// Runs one command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Render(args) => render(args),
        Command::Check(args) => check(args),
        Command::Apply(args) => apply::apply(args),
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
) -> anyhow::Result<(FilesLayout, Vec<vpsie_lb_envoy::RenderedFile>)> {
    let (layout, opts) = files_options(output)?;
    let files = render_files(&translate(&validated.config, &opts), &layout)?;
    Ok((layout, files))
}

/// The layout under `--out` (created if missing) and the translation
/// options the output flags give.
fn files_options(output: &OutputArgs) -> anyhow::Result<(FilesLayout, TranslateOptions)> {
    fsutil::ensure_dir(&output.out)?;
    let root = std::fs::canonicalize(&output.out)
        .with_context(|| format!("resolve {}", output.out.display()))?;
    let layout = FilesLayout::new(&root);
    let opts = TranslateOptions {
        listen_address: output.listen_address,
        access_log_path: output.access_log.clone(),
        access_log_sample_percent: output.access_log_sample_percent,
        global_max_connections: output.max_connections,
        rate_limit_tracked_clients: output.rate_limit_tracked_clients,
        waf_engine: output.waf_engine()?,
        ..TranslateOptions::new(Target::Files(layout.clone()))
    };
    Ok((layout, opts))
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
    let stale = envoy_files::plan(
        &layout,
        &envoy_files::read_file_set(&layout)?,
        &envoy_files::file_set(files.clone()),
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
    let layout = FilesLayout::new(&out.out);
    let _lock = fsutil::lock_dir(layout.root())?;
    let opts = TranslateOptions {
        listen_address: out.listen_address,
        access_log_path: out.access_log.clone(),
        access_log_sample_percent: out.access_log_sample_percent,
        global_max_connections: out.max_connections,
        rate_limit_tracked_clients: out.rate_limit_tracked_clients,
        waf_engine: out.waf_engine()?,
        ..TranslateOptions::new(Target::Ads)
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
            ..TranslateOptions::new(Target::Static)
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
