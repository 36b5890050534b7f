//! Starting the agent's parts: the source and reporter its config asks
//! for, the xDS server, a managed Envoy, ACME, the signal watcher, and
//! what the reconciler is told.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use vpsie_lb_envoy::{
    BootstrapOptions, EnvoyResources, FilesLayout, ads_bootstrap, bootstrap, render_files, to_yaml,
};
use vpsie_lb_model::ValidateOptions;

use crate::api::ApiClient;
use crate::config::read_api_key;
use crate::config::{Config, DeliveryKind, SourceKind};
use crate::envoy_admin::EnvoyAdmin;
use crate::fsutil;
use crate::public_source::PublicSource;
use crate::reconcile::Settings;
use crate::report::{ApiReporter, LogReporter, Reporter};
use crate::source::{FileSource, Source, VpsieSource};
use crate::supervisor::{EnvoyCommand, Supervisor};

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
pub(super) fn prepare_envoy_dir(cfg: &Config, layout: &FilesLayout) -> anyhow::Result<()> {
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

/// What the reconciler is told of the agent's own config.
pub(super) fn settings(cfg: &Config, config_path: &Path, layout: &FilesLayout) -> Settings {
    Settings {
        state_dir: cfg.state_dir.clone(),
        validate: ValidateOptions {
            strict: false,
            reserved_ports: crate::listen::reserved_ports(
                &cfg.envoy.admin_address,
                cfg.envoy.stats_address,
                &cfg.agent_listen,
            ),
            allowed_backend_networks: cfg.allowed_backend_networks.clone(),
            private_paths: private_paths(cfg, config_path),
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
    }
}

/// The source of documents and the reporter `cfg` asks for.
pub(super) fn sources(
    cfg: &Config,
    api_metrics: &crate::api::ApiMetrics,
) -> anyhow::Result<(Box<dyn Source>, Box<dyn Reporter>)> {
    Ok(match &cfg.source {
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
    })
}

/// The xDS server and its hub, when Envoy is to be fed over xDS.
pub(super) fn start_xds(
    cfg: &Config,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<
    Option<(
        std::sync::Arc<crate::xds::hub::Hub>,
        crate::xds::server::XdsServer,
    )>,
> {
    Ok(match cfg.envoy.delivery {
        DeliveryKind::Files => None,
        DeliveryKind::Xds => {
            let metrics = crate::xds::metrics::XdsMetrics::register(registry);
            let hub = std::sync::Arc::new(crate::xds::hub::Hub::new(metrics));
            let socket = &cfg.envoy.xds_socket;
            let server = fsutil::prepare_socket_path(socket)
                .and_then(|()| crate::xds::server::spawn(socket, hub.clone()))
                .with_context(|| format!("envoy.xds_socket {}", socket.display()))?;
            tracing::info!(phase = "xds", socket = %cfg.envoy.xds_socket.display(), "xds server listening");
            Some((hub, server))
        }
    })
}

/// Starts the Envoy the agent manages, if it manages one. Over xDS, Envoy
/// is ready only after the first push, which the loop makes: waiting for
/// it here would only delay that push.
pub(super) fn start_envoy(
    cfg: &Config,
    layout: &FilesLayout,
    admin: &EnvoyAdmin,
    over_xds: bool,
) -> anyhow::Result<Option<Supervisor>> {
    if !cfg.envoy.manage {
        return Ok(None);
    }
    stop_orphan(admin);
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
    if !over_xds && !s.wait_ready(Duration::from_secs(30)) {
        tracing::error!(
            phase = "envoy",
            "envoy not ready after 30s; continuing, passes will retry"
        );
    }
    Ok(Some(s))
}

/// Starts the ACME thread; it asks `inbox` for a pass when a certificate
/// is stored.
pub(super) fn start_acme(
    cfg: &Config,
    registry: &mut prometheus_client::registry::Registry,
    inbox: &crate::trigger::Inbox,
) -> anyhow::Result<crate::acme::Acme> {
    crate::acme::Acme::start(
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
        crate::acme::AcmeMetrics::register(registry),
        inbox.trigger(),
    )
    .with_context(|| {
        format!(
            "acme.responder_socket {}",
            cfg.acme.responder_socket.display()
        )
    })
}

/// Turns SIGHUP into a pass and SIGTERM or SIGINT into a stop, from a
/// thread of its own; the handle closes it.
pub(super) fn watch_signals(
    inbox: &crate::trigger::Inbox,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let handle = signals.handle();
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
    Ok(handle)
}
