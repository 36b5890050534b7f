//! `vpsie-lb-waf`: a local inspection service that Envoy consults through
//! ext_authz over a Unix socket. It runs ModSecurity (Debian's
//! libmodsecurity3) with the OWASP Core Rule Set under each load
//! balancer's policy, which the agent writes to a file and the service
//! reads again whenever it changes. A crash or a hang here costs requests
//! only what each load balancer's `fail_open` says, never Envoy itself.

pub mod config;
pub mod engine;
pub mod inspected;
pub mod limits;
pub mod metrics;
pub mod msc;
pub mod multipart;
pub mod pool;
pub mod request;
pub mod service;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

use crate::config::WafConfig;
use crate::engine::Engine;

/// How often the policy file is looked at.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// Where the service listens and what it reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Unix socket Envoy connects to.
    pub socket: PathBuf,
    /// The policies, written by the agent.
    pub config: PathBuf,
    /// The Core Rule Set's directory (holding `rules/`).
    pub crs_dir: PathBuf,
    /// The rule set's setup file.
    pub crs_setup: PathBuf,
    /// Where `GET /metrics` is served; `None` serves none.
    pub metrics_socket: Option<PathBuf>,
    /// Inspections run at once.
    pub workers: usize,
    /// Inspections that may wait for a worker.
    pub queue: usize,
    /// Longest wait for a worker: below Envoy's timeout, so a request
    /// turned away is answered (by `fail_open`) before Envoy gives up.
    pub queue_wait: Duration,
}

/// Reads the policy file and compiles the rule sets it needs, so no
/// request pays for a compile; the old policies stay when it is unusable.
pub fn load(engine: &Engine, path: &Path) -> Result<WafConfig, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WafConfig::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let config = WafConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for policy in config.load_balancers.values() {
        engine.rules(policy)?;
    }
    let keep: Vec<_> = config.load_balancers.values().collect();
    engine.retain(&keep);
    Ok(config)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Serves until the process ends: the gRPC service on the socket, and the
/// policy file read again whenever its time or size changes.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(&settings.crs_dir, &settings.crs_setup));
    let first = load(&engine, &settings.config).map_err(anyhow::Error::msg)?;
    tracing::info!(
        load_balancers = first.load_balancers.len(),
        "policies loaded"
    );
    let config = Arc::new(RwLock::new(first));
    let watched = (engine.clone(), config.clone(), settings.config.clone());
    tokio::spawn(async move {
        let (engine, config, path) = watched;
        let mut seen = stamp(&path);
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let (e, p) = (engine.clone(), path.clone());
            match tokio::task::spawn_blocking(move || load(&e, &p)).await {
                Ok(Ok(c)) => {
                    tracing::info!(load_balancers = c.load_balancers.len(), "policies reloaded");
                    if let Ok(mut slot) = config.write() {
                        *slot = c;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policies unusable; the previous ones stay")
                }
                Err(e) => tracing::error!(error = %e, "reloading policies failed"),
            }
        }
    });
    let metrics = metrics::Metrics::default();
    if let Some(path) = settings.metrics_socket.clone() {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = m.serve(&path).await {
                tracing::error!(error = %e, socket = %path.display(), "metrics socket failed");
            }
        });
    }
    let _ = std::fs::remove_file(&settings.socket);
    let listener = tokio::net::UnixListener::bind(&settings.socket)?;
    // Envoy's group may connect; nobody else.
    std::fs::set_permissions(
        &settings.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )?;
    tracing::info!(socket = %settings.socket.display(), "serving ext_authz");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(service::Waf::new(
            engine,
            config,
            settings.config.clone(),
            metrics,
            pool::Pool::new(settings.workers, settings.queue, settings.queue_wait),
        )))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await?;
    Ok(())
}
