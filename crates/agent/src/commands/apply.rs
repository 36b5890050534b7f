//! `apply`: one reconcile pass over a document file, through the files
//! delivery. The checks a one-shot command owes its caller come first and
//! change nothing (the document, Envoy's validate mode, the bootstrap, the
//! host's inotify budget); then the same pass `run` runs hands the config
//! to Envoy, confirms it, and on a refusal finds the load balancer to blame
//! and serves the rest, as the loop would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use vpsie_lb_core::fetched::Fetched;
use vpsie_lb_core::pass::PassResult;
use vpsie_lb_core::report::{EventKind, Reporter};

use super::args::ApplyArgs;
use super::{Loaded, envoy_files, files_options, fsutil, load, run_preflight, translate_to_files};
use crate::apply::Applier;
use crate::delivery::FilesDelivery;
use crate::envoy_admin::EnvoyAdmin;
use crate::reconcile::{Observe, Reconciler, Settings};
use crate::source::Source;

/// Exit code when Envoy refused the change and the previous config is back.
const EXIT_ROLLED_BACK: u8 = 3;

/// Runs `apply`.
pub(super) fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
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
    let next = envoy_files::file_set(files);
    if let Err(e) =
        crate::preflight::check_files_watch_budget(&next, &layout, crate::preflight::watch_limit())
    {
        println!("{e}");
        return Ok(ExitCode::from(2));
    }
    let version = next
        .get(&layout.lds_file())
        .map(|f| f.version.clone())
        .unwrap_or_default();
    let (result, error, refusal) = one_pass(&args, loaded)?;
    Ok(report(result, error, refusal, &version))
}

/// Runs one pass over `loaded`'s documents and returns how it ended, its
/// error, and Envoy's words when it refused the change.
fn one_pass(
    args: &ApplyArgs,
    loaded: Loaded,
) -> anyhow::Result<(PassResult, Option<String>, Option<String>)> {
    let (layout, translate) = files_options(&args.output)?;
    let admin = EnvoyAdmin::new(args.doc.admin_address.clone())?;
    let applier = Applier::new(
        layout.clone(),
        admin,
        std::time::Duration::from_secs(args.verify_timeout),
    );
    let delivery = FilesDelivery::new(
        translate,
        applier,
        args.preflight
            .envoy_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from("envoy")),
        crate::preflight::watch_limit(),
    )
    .map_err(anyhow::Error::msg)?
    .validated_up_front();
    // Without --state-dir the pass still keeps a last-known-good, in a
    // directory that goes when the command ends.
    let scratch = tempfile::tempdir().context("a scratch state directory")?;
    let settings = Settings {
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(|| scratch.path().to_path_buf()),
        validate: args.doc.validate_options(),
        waf_policies: Some(layout.root().join(crate::waf::POLICY_FILE)),
        envoy: crate::drain::EnvoyProcess {
            bootstrap: layout.bootstrap_file(),
            admin_socket: None,
        },
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let observe = Observe {
        metrics: crate::reconcile::ReconcileMetrics::register(&mut registry),
        status: Default::default(),
    };
    let mut reconciler = Reconciler::new(settings, delivery, observe);
    let mut source = Once(Some(loaded.docs));
    let mut reporter = Collect::default();
    let (result, error) = reconciler.pass(&mut source, &mut reporter);
    Ok((result, error.map(|e| e.to_string()), reporter.refused))
}

/// Prints how the pass ended and gives the exit code.
fn report(
    result: PassResult,
    error: Option<String>,
    refusal: Option<String>,
    version: &str,
) -> ExitCode {
    match (result, error, refusal) {
        (PassResult::Unchanged, None, _) => {
            println!("unchanged: envoy already has this config");
            ExitCode::SUCCESS
        }
        (PassResult::Applied, None, _) => {
            println!("applied: envoy confirmed every step (listeners version {version})");
            ExitCode::SUCCESS
        }
        (PassResult::RolledBack | PassResult::Rejected, None, Some(refusal)) => {
            println!("rolled back: {refusal}");
            eprintln!("the previous config is serving again; nothing else changed");
            ExitCode::from(EXIT_ROLLED_BACK)
        }
        (_, error, _) => {
            println!(
                "failed: {}",
                error.as_deref().unwrap_or("the pass did not finish")
            );
            eprintln!(
                "the previous config is serving again; the same apply may succeed on a retry"
            );
            ExitCode::FAILURE
        }
    }
}

/// The documents of one file, fetched once.
struct Once(Option<crate::state::Docs>);

impl Source for Once {
    fn fetch(&mut self) -> Fetched {
        Fetched {
            items: self
                .0
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|(id, doc)| (id, Ok(doc)))
                .collect(),
            ..Fetched::default()
        }
    }
}

/// Keeps Envoy's words when it refused the change, and logs errors; the
/// command prints its own outcome.
#[derive(Default)]
struct Collect {
    refused: Option<String>,
}

impl Reporter for Collect {
    fn event(&mut self, _lb_id: &str, kind: EventKind, _message: &str, metadata: Value) {
        if matches!(
            kind,
            EventKind::ConfigRolledBack | EventKind::ConfigRejected
        ) {
            let reason = metadata["reason"]
                .as_str()
                .or_else(|| metadata["problems"][0].as_str());
            if let (None, Some(reason)) = (&self.refused, reason) {
                self.refused = Some(reason.to_owned());
            }
        }
    }

    fn error(&mut self, phase: &str, message: &str) {
        eprintln!("{phase}: {message}");
    }

    fn note(&mut self, _message: &str) {}

    fn status(&mut self, _lb_id: &str, _status: &str, _version: &str, _message: &str) {}

    fn health(&mut self, _lb_id: &str, _backend_id: &str, _healthy: bool) {}
}
