//! `vpsie-lb-agent run`: the long-running agent.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use vpsie_lb_envoy::{FilesLayout, Target, TranslateOptions};

use crate::apply::Applier;
use crate::config::Config;
use crate::controller;
use crate::delivery::FilesDelivery;
use crate::envoy_admin::EnvoyAdmin;
use crate::fsutil;
use crate::reconcile::{Reconciler, Settings};
use crate::report::Reporter;
use crate::source::Source;

mod start;
use start::{
    prepare_envoy_dir, settings, sources, start_acme, start_envoy, start_xds, watch_signals,
};

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
    let (mut source, mut reporter) = sources(&cfg, &api_metrics)?;

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
    let xds = start_xds(&cfg, &mut registry)?;
    let supervisor = start_envoy(&cfg, &layout, &admin, xds.is_some())?;

    let settings = settings(&cfg, config_path, &layout);
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
        let acme = start_acme(cfg, &mut registry, &inbox)?;
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
        let signal_handle = watch_signals(&inbox)?;
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
