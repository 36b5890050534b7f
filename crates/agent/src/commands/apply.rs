//! `apply`: checks that change nothing (the document, Envoy's validate
//! mode, the bootstrap, the inotify budget), then one pass of `run`'s loop
//! over the files delivery, all or nothing: a one-shot command cannot come
//! back to serve the rest of a change Envoy refused in part.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use vpsie_lb_core::fetched::Fetched;
use vpsie_lb_core::pass::PassResult;
// The command prints its own outcome; what else the pass reports (events,
// status, health) is for the API, which a one-shot command does not tell.
use vpsie_lb_core::report::Silent;

use super::args::ApplyArgs;
use super::{
    EXIT_INVALID, Loaded, envoy_files, files_options, fsutil, load, run_preflight,
    translate_to_files,
};
use crate::apply::{Applier, ApplyError};
use crate::delivery::FilesDelivery;
use crate::envoy_admin::EnvoyAdmin;
use crate::pass::ReconcileError;
use crate::reconcile::{
    DirStore, LastKnownGoodOnly, NoStore, Observe, Ports, Reconciler, Settings, StateStore,
};
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
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let version = next
        .get(&layout.lds_file())
        .map(|f| f.version.clone())
        .unwrap_or_default();
    let ended = one_pass(&args, loaded)?;
    say(ended, &version)
}

/// How the pass ended: its result, its error, and Envoy's words when it
/// held the change back.
struct Ended {
    result: PassResult,
    error: Option<ReconcileError>,
    held_back: Option<String>,
}

/// Runs one all-or-nothing pass over `loaded`'s documents.
fn one_pass(args: &ApplyArgs, loaded: Loaded) -> anyhow::Result<Ended> {
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
        // Not run: the pre-flight above already asked Envoy's validate mode.
        PathBuf::from("envoy"),
        crate::preflight::watch_limit(),
    )
    .map_err(anyhow::Error::msg)?
    .validated_up_front();
    let settings = Settings {
        state_dir: args.state_dir.clone().unwrap_or_default(),
        validate: args.doc.validate_options(),
        waf_policies: Some(layout.root().join(crate::waf::POLICY_FILE)),
        envoy: crate::drain::EnvoyProcess {
            bootstrap: layout.bootstrap_file(),
            admin_socket: None,
        },
    };
    // The drains are a running agent's; a one-shot pass leaves them be.
    // Without --state-dir it keeps nothing at all.
    let store: Box<dyn StateStore> = match &args.state_dir {
        Some(dir) => Box::new(LastKnownGoodOnly(DirStore(dir.clone()))),
        None => Box::new(NoStore),
    };
    let ports = Ports {
        store,
        ..Ports::of(&settings)
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let observe = Observe {
        metrics: crate::reconcile::ReconcileMetrics::register(&mut registry),
        status: Default::default(),
    };
    let mut reconciler =
        Reconciler::with_ports(settings, delivery, observe, ports).all_or_nothing();
    let (result, error) = reconciler.pass(&mut Once(Some(loaded.docs)), &mut Silent);
    Ok(Ended {
        result,
        error,
        held_back: reconciler.held_back().map(str::to_owned),
    })
}

/// Prints how the pass ended and gives the exit code.
fn say(ended: Ended, version: &str) -> anyhow::Result<ExitCode> {
    let Ended {
        result,
        error,
        held_back,
    } = ended;
    let why = held_back.as_deref().unwrap_or("envoy refused the change");
    match (result, error) {
        (PassResult::Unchanged, e) => {
            println!("unchanged: envoy already has this config");
            // Envoy serves it; only last-known-good's record lags.
            if let Some(e) = e {
                bail!("{e}");
            }
        }
        (PassResult::Applied, e) => {
            println!("applied: envoy confirmed every step (listeners version {version})");
            if let Some(e) = e {
                bail!("{e}");
            }
        }
        (PassResult::RolledBack, None) => {
            println!("rolled back: {why}");
            eprintln!("the previous config is serving again; nothing else changed");
            return Ok(ExitCode::from(EXIT_ROLLED_BACK));
        }
        // Only the host's limits can refuse here (validate mode ran above),
        // and they refuse before anything is written.
        (PassResult::Rejected, None) => {
            println!("{why}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
        // The undo itself failed: what Envoy serves is not known.
        (_, Some(e @ ReconcileError::Apply(ApplyError::Undo { .. }))) => bail!("{e}"),
        // Only a failure the undo put right (or that came before anything
        // was written) leaves the previous config serving.
        (_, Some(ReconcileError::Apply(cause))) if cause.is_retryable() => {
            println!("failed: {cause}");
            eprintln!(
                "the previous config is serving again; the same apply may succeed on a retry"
            );
            return Ok(ExitCode::FAILURE);
        }
        (_, Some(e)) => bail!("{e}"),
        (PassResult::Error, None) => bail!("the pass failed without saying why"),
    }
    Ok(ExitCode::SUCCESS)
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
