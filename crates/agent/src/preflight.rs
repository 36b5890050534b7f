//! Pre-flight: asks a real Envoy (`--mode validate`) whether it accepts a candidate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpsie_lb_envoy::{BootstrapOptions, EnvoyResources, preflight_bootstrap, to_json};

/// How long `envoy --mode validate` may run; 1,000 load balancers take about 0.5 s.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a pre-flight did not say yes.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No Envoy binary was found.
    #[error("envoy binary not found: {0}")]
    NotFound(String),
    /// Envoy looked at the candidate and refused it. Retrying cannot help.
    #[error("envoy rejected the configuration: {0}")]
    Rejected(String),
    /// Envoy could not be run, or did not finish. Retrying may help.
    #[error("envoy validate failed to run: {0}")]
    Run(String),
}

impl PreflightError {
    /// Whether running the same pre-flight again could give another answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PreflightError::Run(_))
    }
}

/// Finds Envoy: an explicit path, else `ENVOY_BIN`, else `envoy` on `PATH`.
pub fn find_envoy(explicit: Option<&Path>) -> Result<PathBuf, PreflightError> {
    let candidate = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ENVOY_BIN").map(PathBuf::from));
    if let Some(p) = candidate {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(PreflightError::NotFound(format!(
                "{} is not a file",
                p.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            PreflightError::NotFound(
                "pass --envoy-bin, set ENVOY_BIN, or put envoy on PATH (scripts/setup.sh installs one)"
                    .into(),
            )
        })
}

/// Runs `envoy --mode validate` on `resources` (translated with `Delivery::Static`).
pub fn validate(
    envoy: &Path,
    resources: &EnvoyResources,
    opts: &BootstrapOptions,
) -> Result<(), PreflightError> {
    let bootstrap = preflight_bootstrap(resources, opts);
    let json = to_json(&bootstrap).map_err(|e| PreflightError::Run(e.to_string()))?;
    let dir = tempfile::tempdir().map_err(|e| PreflightError::Run(format!("temp dir: {e}")))?;
    let file = dir.path().join("preflight.json");
    std::fs::write(&file, json.to_string())
        .map_err(|e| PreflightError::Run(format!("write {}: {e}", file.display())))?;

    let mut child = Command::new(envoy)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&file)
        .args(["-l", "error", "--disable-hot-restart", "--concurrency", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PreflightError::Run(format!("start {}: {e}", envoy.display())))?;
    // Drain stderr on a thread so a chatty Envoy cannot block on a full pipe.
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + VALIDATE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PreflightError::Run(format!(
                    "envoy --mode validate did not finish within {}s",
                    VALIDATE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(PreflightError::Run(format!("wait for envoy: {e}"))),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(PreflightError::Rejected(envoy_reason(&stderr, &file)))
    }
}

/// The useful part of Envoy's complaint, without the temp file's name.
fn envoy_reason(stderr: &str, file: &Path) -> String {
    let prefix = format!("error initializing configuration '{}': ", file.display());
    let reason = stderr
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| {
            stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("no reason given")
                .to_owned()
        });
    reason.chars().take(2000).collect()
}
