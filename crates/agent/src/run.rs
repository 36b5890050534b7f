//! `vpsie-lb-agent run`: the long-running agent.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use vpsie_lb_envoy::{
    BootstrapOptions, EnvoyResources, FilesLayout, Target, TranslateOptions, ads_bootstrap,
    bootstrap, render_files, to_yaml,
};
use vpsie_lb_model::ValidateOptions;

use crate::api::ApiClient;
use crate::apply::Applier;
use crate::config::read_api_key;
use crate::config::{Config, DeliveryKind, SourceKind};
use crate::controller;
use crate::delivery::FilesDelivery;
use crate::envoy_admin::EnvoyAdmin;
use crate::fsutil;
use crate::public_source::PublicSource;
use crate::reconcile::{Reconciler, Settings};
use crate::report::{ApiReporter, LogReporter, Reporter};
use crate::source::{FileSource, Source, VpsieSource};
use crate::supervisor::{EnvoyCommand, Supervisor};

fn init_logging(cfg: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::new(format!("vpsie_lb_agent={0},{0}", cfg.logging.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests run commands in one process) is harmless: ignore it.
    let _ = if cfg.logging.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Removes temp files (`.name.tmp`) a killed agent may have left in the
/// watched directories. Envoy never reads them, but they must not pile up.
fn remove_stale_temp_files(dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() {
            remove_stale_temp_files(&path)?;
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What no document may name a file under: the agent's state (its ACME
/// keys, last-known-good), its config file and the API key's file.
fn private_paths(cfg: &Config, config_path: &Path) -> Vec<String> {
    // Canonical where it exists, so a link to the state is no way around.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_owned())
    };
    [
        cfg.state_dir.as_path(),
        config_path,
        &cfg.vpsie.api_key_file,
    ]
    .into_iter()
    .filter(|p| !p.as_os_str().is_empty())
    .map(absolute)
    // Never the root: it would make every path private.
    .filter(|d| d.parent().is_some())
    .map(|d| d.display().to_string())
    .collect()
}

/// Writes the bootstrap when it differs and, for the files delivery, empty
/// listener and cluster files when there are none, so Envoy can start
/// before the first pass.
fn prepare_envoy_dir(cfg: &Config, layout: &FilesLayout) -> anyhow::Result<()> {
    let opts = BootstrapOptions {
        admin: cfg.envoy.admin_address.clone(),
        stats_address: cfg.envoy.stats_address,
        waf_socket: cfg.envoy.waf_socket.clone(),
        acme_socket: cfg.acme.responder_socket.clone(),
        ..Default::default()
    };
    let boot = to_yaml(&match cfg.envoy.delivery {
        DeliveryKind::Files => bootstrap(layout, &opts),
        DeliveryKind::Xds => ads_bootstrap(&cfg.envoy.xds_socket, &opts),
    })?;
    let path = layout.bootstrap_file();
    if std::fs::read_to_string(&path).ok().as_deref() != Some(boot.as_str()) {
        fsutil::write_atomic(&path, boot.as_bytes(), 0o644)?;
    }
    remove_stale_temp_files(layout.root())?;
    if cfg.envoy.delivery == DeliveryKind::Xds {
        return Ok(());
    }
    let empty = render_files(&EnvoyResources::default(), layout)?;
    for f in empty {
        if !f.path.exists() {
            fsutil::ensure_dir(f.path.parent().context("file without a directory")?)?;
            fsutil::write_atomic(&f.path, f.contents.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

/// An Envoy answering on our admin address before we started one was left
/// by an agent that was killed (our Envoy runs in its own process group, so
/// it survives). Ask it to quit so the new one can bind; traffic pauses
/// until the new Envoy is up. Under systemd (`manage: false`) this never applies.
fn stop_orphan(admin: &EnvoyAdmin) {
    if admin.get("/ready").is_err() {
        return;
    }
    tracing::warn!(
        phase = "envoy",
        "an envoy from an earlier run answers on the admin address; asking it to quit"
    );
    let _ = admin.post("/quitquitquit");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline && admin.get("/ready").is_ok() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its listeners may linger a moment after admin stops answering.
    std::thread::sleep(Duration::from_millis(500));
}

/// How long Envoy may take to confirm one step of a change.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                println!("{p}");
            }
            eprintln!(
                "{}: {} problem(s); nothing was started",
                e.path,
                e.problems.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    init_logging(&cfg);
    let mut registry = prometheus_client::registry::Registry::with_prefix("vpsie_lb");
    crate::metrics::register_build_info(&mut registry);
    let reconcile_metrics = crate::reconcile::ReconcileMetrics::register(&mut registry);
    let api_metrics = crate::api::ApiMetrics::register(&mut registry);
    let (mut source, mut reporter): (Box<dyn Source>, Box<dyn Reporter>) = match &cfg.source {
        SourceKind::File(path) => (
            Box::new(FileSource::new(path.clone())),
            Box::new(LogReporter::default()),
        ),
        SourceKind::VpsiePublic => {
            let key = read_api_key(&cfg.vpsie.api_key_file).map_err(anyhow::Error::msg)?;
            let reporter: Box<dyn Reporter> = match &cfg.vpsie.agent_api_url {
                // The public API takes no reports; the agent API may.
                Some(url) => Box::new(ApiReporter::new(
                    ApiClient::new(url, key.clone()).with_metrics(api_metrics.clone()),
                )),
                None => Box::new(LogReporter::default()),
            };
            (
                Box::new(PublicSource::new(
                    ApiClient::public(&cfg.vpsie.api_url, key).with_metrics(api_metrics.clone()),
                    cfg.vpsie.loadbalancer_ids.clone(),
                    cfg.vpsie.certificate_dir.clone(),
                    cfg.vpsie.redirect_port,
                )),
                reporter,
            )
        }
        SourceKind::Vpsie => {
            let key = read_api_key(&cfg.vpsie.api_key_file).map_err(anyhow::Error::msg)?;
            (
                Box::new(VpsieSource::new(
                    ApiClient::new(&cfg.vpsie.api_url, key.clone())
                        .with_metrics(api_metrics.clone()),
                    cfg.vpsie.loadbalancer_ids.clone(),
                )),
                Box::new(ApiReporter::new(
                    ApiClient::new(&cfg.vpsie.api_url, key).with_metrics(api_metrics.clone()),
                )),
            )
        }
    };

    fsutil::ensure_dir(&cfg.envoy.config_dir)?;
    let root = std::fs::canonicalize(&cfg.envoy.config_dir)
        .with_context(|| format!("envoy.config_dir {}", cfg.envoy.config_dir.display()))?;
    // Held until the agent exits, so `apply` cannot interleave with it.
    let _lock = fsutil::lock_dir(&root)?;
    let layout = FilesLayout::new(root);
    prepare_envoy_dir(&cfg, &layout)?;
    let admin = EnvoyAdmin::new(cfg.envoy.admin_address.clone())?;

    // The xDS server is up before Envoy starts, so Envoy's first
    // connection finds it; it serves nothing until the reconciler publishes.
    let xds = match cfg.envoy.delivery {
        DeliveryKind::Files => None,
        DeliveryKind::Xds => {
            let metrics = crate::xds::metrics::XdsMetrics::register(&mut registry);
            let hub = std::sync::Arc::new(crate::xds::hub::Hub::new(metrics));
            let socket = &cfg.envoy.xds_socket;
            let server = fsutil::prepare_socket_path(socket)
                .and_then(|()| crate::xds::server::spawn(socket, hub.clone()))
                .with_context(|| format!("envoy.xds_socket {}", socket.display()))?;
            tracing::info!(phase = "xds", socket = %cfg.envoy.xds_socket.display(), "xds server listening");
            Some((hub, server))
        }
    };
    let supervisor = if cfg.envoy.manage {
        stop_orphan(&admin);
        if let vpsie_lb_envoy::LocalAddress::Unix(sock) = &cfg.envoy.admin_address {
            // An Envoy killed with its agent left its socket behind; nothing
            // answers on it (the orphan check just asked).
            fsutil::prepare_socket_path(sock)?;
        }
        let s = Supervisor::start(
            EnvoyCommand {
                binary: cfg.envoy.binary_path.clone(),
                bootstrap: layout.bootstrap_file(),
                drain_time: cfg.envoy.drain_time,
            },
            admin.clone(),
        )
        .with_context(|| format!("start envoy {}", cfg.envoy.binary_path.display()))?;
        // Over xDS, Envoy is ready only after the first push, which comes
        // from the loop below: waiting here would only delay it.
        if xds.is_none() && !s.wait_ready(Duration::from_secs(30)) {
            tracing::error!(
                phase = "envoy",
                "envoy not ready after 30s; continuing, passes will retry"
            );
        }
        Some(s)
    } else {
        None
    };

    let settings = Settings {
        state_dir: cfg.state_dir.clone(),
        validate: ValidateOptions {
            strict: false,
            reserved_ports: crate::listen::reserved_ports(
                &cfg.envoy.admin_address,
                cfg.envoy.stats_address,
                &cfg.agent_listen,
            ),
            allowed_backend_networks: cfg.allowed_backend_networks.clone(),
            private_paths: private_paths(&cfg, config_path),
            acme_directories: cfg.acme.allowed_directories.clone(),
        },
        waf_policies: Some(cfg.envoy.config_dir.join(crate::waf::POLICY_FILE)),
        envoy: crate::drain::EnvoyProcess {
            bootstrap: layout.bootstrap_file(),
            admin_socket: match &cfg.envoy.admin_address {
                vpsie_lb_envoy::LocalAddress::Unix(p) => Some(p.clone()),
                vpsie_lb_envoy::LocalAddress::Tcp(_) => None,
            },
        },
    };
    let translate = |delivery| TranslateOptions {
        listen_address: cfg.envoy.listen_address,
        access_log_path: cfg.envoy.access_log.clone(),
        access_log_sample_percent: cfg.envoy.access_log_sample_percent,
        rate_limit_tracked_clients: cfg.envoy.rate_limit_tracked_clients,
        waf_engine: cfg.envoy.waf_engine.clone(),
        ..TranslateOptions::new(delivery)
    };
    let loop_parts = Loop {
        cfg: &cfg,
        settings,
        metrics: reconcile_metrics,
        registry,
        source: source.as_mut(),
        reporter: reporter.as_mut(),
    };
    match &xds {
        Some((hub, _server)) => loop_parts.run(
            crate::xds::XdsDelivery::new(
                hub.clone(),
                translate(Target::Ads),
                admin,
                cfg.envoy.binary_path.clone(),
                VERIFY_TIMEOUT,
            )
            .map_err(anyhow::Error::msg)?,
        )?,
        None => loop_parts.run(
            FilesDelivery::new(
                translate(Target::Files(layout.clone())),
                Applier::new(layout, admin, VERIFY_TIMEOUT),
                cfg.envoy.binary_path.clone(),
                crate::preflight::watch_limit(),
            )
            .map_err(anyhow::Error::msg)?,
        )?,
    }
    if let Some(s) = supervisor {
        s.stop();
    }
    // After Envoy: a stream cut before Envoy stops is only retried.
    drop(xds);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// What the loop needs besides the delivery.
struct Loop<'a> {
    cfg: &'a Config,
    settings: Settings,
    metrics: crate::reconcile::ReconcileMetrics,
    registry: prometheus_client::registry::Registry,
    source: &'a mut dyn Source,
    reporter: &'a mut dyn Reporter,
}

impl Loop<'_> {
    /// Restores last-known-good through `delivery`, opens the endpoints,
    /// and runs passes until SIGTERM or SIGINT.
    fn run<D: crate::pass::Delivery>(self, delivery: D) -> anyhow::Result<()> {
        let Loop {
            cfg,
            settings,
            metrics,
            mut registry,
            source,
            reporter,
        } = self;
        let ha = cfg
            .ha
            .as_ref()
            .map(|h| crate::ha::HaMetrics::register(&mut registry, h));
        let status =
            std::sync::Arc::new(std::sync::Mutex::new(crate::status::AgentStatus::default()));
        let inbox = crate::trigger::Inbox::new();
        let acme = crate::acme::Acme::start(
            crate::acme::Settings {
                state_dir: cfg.state_dir.clone(),
                responder_socket: cfg.acme.responder_socket.clone(),
                directory_ca_file: cfg.acme.directory_ca_file.clone(),
                may_order: cfg.ha.clone().map(|ha| -> crate::acme::MayOrder {
                    Box::new(move || crate::ha::holds_address(&ha))
                }),
                account_email: cfg.acme.account_email.clone(),
                order_timeout: cfg.acme.order_timeout,
            },
            crate::acme::AcmeMetrics::register(&mut registry),
            inbox.trigger(),
        )
        .with_context(|| {
            format!(
                "acme.responder_socket {}",
                cfg.acme.responder_socket.display()
            )
        })?;
        let mut reconciler = Reconciler::new(
            settings,
            delivery,
            crate::reconcile::Observe {
                metrics,
                status: status.clone(),
            },
        )
        .with_acme(acme.clone())
        .with_ha(cfg.ha.clone())
        .with_udp_guard(cfg.udp_guard.clone().map(|guard| {
            crate::udp_guard::UdpGuard::new(
                guard,
                crate::udp_guard::UdpGuardMetrics::register(&mut registry),
            )
        }));
        if let Err(e) = reconciler.restore_last_known_good(reporter) {
            tracing::error!(phase = "restore", error = %e, "could not restore last-known-good");
        }
        let endpoints = crate::endpoints::Endpoints {
            registry: std::sync::Arc::new(registry),
            status: status.clone(),
            sync: inbox.trigger(),
            ha,
            acme: Some(acme.clone()),
        };
        let bound = crate::endpoints::spawn(&cfg.agent_listen, endpoints)
            .with_context(|| format!("agent.listen_address {}", cfg.agent_listen))?;
        tracing::info!(address = %bound, "agent endpoints listening");
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])?;
        let signal_handle = signals.handle();
        let trigger = inbox.trigger();
        std::thread::spawn(move || {
            for s in signals.forever() {
                if s != signal_hook::consts::SIGHUP {
                    trigger.stop();
                    return;
                }
                if !trigger.sync() {
                    return;
                }
            }
        });
        tracing::info!(source = ?cfg.source, delivery = ?cfg.envoy.delivery, poll_interval_ms = cfg.vpsie.poll_interval.as_millis() as u64, "agent started");
        let mut notified = false;
        controller::run(
            &mut reconciler,
            source,
            reporter,
            &inbox,
            cfg.vpsie.poll_interval,
            |result| {
                tracing::info!(result = ?result, "pass");
                // systemd learns we are ready once Envoy serves a confirmed config.
                if !notified && status.lock().is_ok_and(|s| s.ready) {
                    crate::notify::notify("READY=1");
                    notified = true;
                }
            },
        );
        crate::notify::notify("STOPPING=1");
        acme.stop();
        // A managed Envoy stops with us, so its bounds go too; one the
        // agent does not manage keeps serving, and keeps them.
        if cfg.envoy.manage
            && let Err(e) = reconciler.remove_udp_guard()
        {
            tracing::error!(phase = "udp_guard", error = %e, "could not remove the udp bounds");
        }
        signal_handle.close();
        tracing::info!("stopping");
        Ok(())
    }
}
