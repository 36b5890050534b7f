//! Pre-flight: asks a real Envoy (`--mode validate`) whether it accepts a candidate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpsie_lb_envoy::{
    BootstrapOptions, EnvoyResources, TranslateOptions, preflight_bootstrap, write_json,
};
use vpsie_lb_model::Config;

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
        self.class().is_retryable()
    }

    /// Envoy's refusal, a missing binary, or a run that may work next time.
    pub fn class(&self) -> vpsie_lb_core::class::Class {
        use vpsie_lb_core::class::Class;
        match self {
            PreflightError::Run(_) => Class::Transient,
            PreflightError::Rejected(_) => Class::Rejected,
            PreflightError::NotFound(_) => Class::Bug,
        }
    }
}

/// inotify instances kept free for Envoy's own watches and other processes
/// of its user.
const WATCH_HEADROOM: usize = 16;

/// How many inotify instances Envoy needs for a candidate: one per xDS file
/// it watches, and two per SDS secret (the certificate and key files).
pub fn watches_needed(xds_files: usize, secrets: usize) -> usize {
    xds_files + 2 * secrets
}

/// The host's `fs.inotify.max_user_instances`, if it can be read.
pub fn watch_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Envoy opens one inotify instance per watched file and aborts when the
/// kernel refuses one (`fs.inotify.max_user_instances`, 128 by default:
/// about 120 load balancers). Checked before Envoy sees a candidate, so too
/// many load balancers for this host is a refused change, not a crash loop.
pub fn check_watch_budget(needed: usize, limit: Option<usize>) -> Result<(), PreflightError> {
    match limit {
        Some(limit) if needed + WATCH_HEADROOM > limit => Err(PreflightError::Rejected(format!(
            "envoy would watch {needed} files but fs.inotify.max_user_instances is {limit} \
             (envoy aborts past it, and {WATCH_HEADROOM} are kept spare): raise it, e.g. \
             `sysctl -w fs.inotify.max_user_instances=8192` (the package's sysctl file does)"
        ))),
        _ => Ok(()),
    }
}

/// [`check_watch_budget`] for the files of a candidate.
pub fn check_files_watch_budget(
    files: &crate::envoy_files::FileSet,
    layout: &vpsie_lb_envoy::FilesLayout,
    limit: Option<usize>,
) -> Result<(), PreflightError> {
    let secrets = files
        .keys()
        .filter(|p| matches!(layout.kind_of(p), Some(vpsie_lb_envoy::FileKind::Secret(_))))
        .count();
    check_watch_budget(watches_needed(files.len() - secrets, secrets), limit)
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

/// Load balancers one `envoy --mode validate` judges at most. Envoy's
/// verdict on 1,000 at once took a second on one core, and converting the
/// whole bootstrap to JSON for it was the agent's peak memory; chunks of
/// 100 run side by side on every core, each converted on its own.
pub const PREFLIGHT_CHUNK: usize = 100;

/// Envoy's verdict on the load balancers of `changed`, translated inline
/// with `translate`'s settings; nothing to judge when `changed` is empty
/// (only removals, or only endpoints). Large sets are judged in chunks of
/// [`PREFLIGHT_CHUNK`], in parallel; the first refusal (in id order) wins.
pub fn validate_changed(
    envoy: &Path,
    translate: &TranslateOptions,
    changed: &Config,
) -> Result<(), PreflightError> {
    let opts = TranslateOptions {
        delivery: vpsie_lb_envoy::Target::Static,
        ..translate.clone()
    };
    let chunks: Vec<Config> = changed
        .load_balancers
        .chunks(PREFLIGHT_CHUNK)
        .map(|lbs| {
            let mut c = changed.clone();
            c.load_balancers = lbs.to_vec();
            c
        })
        .collect();
    let judge = |c: &Config| {
        let resources = vpsie_lb_envoy::translate(c, &opts);
        validate(envoy, &resources, &BootstrapOptions::default())
    };
    if chunks.len() <= 1 {
        return chunks.first().map_or(Ok(()), judge);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let verdicts: Vec<std::sync::Mutex<Option<Result<(), PreflightError>>>> =
        chunks.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers.min(chunks.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(chunk) = chunks.get(i) else { return };
                    let verdict = judge(chunk);
                    if let Ok(mut slot) = verdicts[i].lock() {
                        *slot = Some(verdict);
                    }
                }
            });
        }
    });
    verdicts
        .into_iter()
        .filter_map(|v| v.into_inner().ok().flatten())
        .find(Result::is_err)
        .unwrap_or(Ok(()))
}

/// Runs `envoy --mode validate` on `resources` (translated with `Target::Static`).
pub fn validate(
    envoy: &Path,
    resources: &EnvoyResources,
    opts: &BootstrapOptions,
) -> Result<(), PreflightError> {
    let bootstrap = preflight_bootstrap(resources, opts);
    let dir = tempfile::tempdir().map_err(|e| PreflightError::Run(format!("temp dir: {e}")))?;
    let file = dir.path().join("preflight.json");
    let write_err = |e: String| PreflightError::Run(format!("write {}: {e}", file.display()));
    // Streamed: at 1,000 load balancers an in-memory JSON tree of the whole
    // bootstrap was the agent's peak memory.
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&file).map_err(|e| write_err(e.to_string()))?,
    );
    write_json(&bootstrap, &mut out).map_err(|e| write_err(e.to_string()))?;
    std::io::Write::flush(&mut out).map_err(|e| write_err(e.to_string()))?;
    drop(out);

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
            // Validation takes tens of milliseconds: poll finely, it is on every change's path.
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
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

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn regression_more_load_balancers_than_inotify_allows_is_refused_not_an_envoy_crash() {
        assert_eq!(watches_needed(1002, 3), 1008);
        assert!(check_watch_budget(112, Some(128)).is_ok());
        let e = check_watch_budget(113, Some(128)).expect_err("over the limit");
        assert!(!e.is_retryable());
        assert!(
            e.to_string()
                .contains("fs.inotify.max_user_instances is 128"),
            "{e}"
        );
        assert!(check_watch_budget(1_000_000, None).is_ok());
    }
}
