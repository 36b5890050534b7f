//! Runs the real Envoy binary that `scripts/setup.sh` installed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{http, poll_until, workspace_root};

/// The Envoy binary: `ENVOY_BIN`, else the path `scripts/setup.sh` recorded.
///
/// Panics when there is none: tests never skip because Envoy is missing.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let record = workspace_root().join(".local/envoy-bin");
    let path = std::fs::read_to_string(&record).unwrap_or_else(|_| {
        panic!(
            "no envoy: {} is missing; run scripts/setup.sh (the README's test command does)",
            record.display()
        )
    });
    let path = PathBuf::from(path.trim());
    assert!(
        path.is_file(),
        "recorded envoy {} does not exist; run scripts/setup.sh",
        path.display()
    );
    path
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    admin_port: u16,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` and waits until its admin says LIVE.
    /// `admin_port` must match the bootstrap's admin address.
    pub fn start(bootstrap: &Path, admin_port: u16, log: &Path) -> Envoy {
        let out = File::create(log).expect("create envoy log");
        let err = out.try_clone().expect("clone envoy log handle");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(bootstrap)
            .args([
                "--disable-hot-restart",
                "--reject-unknown-dynamic-fields",
                "--concurrency",
                "2",
                "--drain-time-s",
                "2",
                "-l",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Its own process group, so a signal meant for the test runner's
        // shell does not reach Envoy, and Drop can kill it cleanly.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start envoy");
        let mut envoy = Envoy {
            child,
            admin_port,
            log: log.to_path_buf(),
        };
        envoy.wait_live();
        envoy
    }

    fn wait_live(&mut self) {
        let port = self.admin_port;
        let log = self.log.clone();
        let child = &mut self.child;
        poll_until(
            "envoy admin /ready to say LIVE",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "envoy exited with {status} before it was ready; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                match http::get(port, "/ready") {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            },
        );
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// GET an admin path, returning the body; panics if admin is unreachable.
    pub fn admin(&self, path: &str) -> String {
        let r =
            http::get(self.admin_port, path).unwrap_or_else(|e| panic!("envoy admin {path}: {e}"));
        r.body
    }

    /// A counter or gauge by exact name, from `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let body = self.admin(&format!("/stats?filter=^{}$", name.replace('.', "\\.")));
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Health flags of each host of `cluster`, by `ip:port`, from `/clusters`.
    pub fn host_health(&self, cluster: &str) -> Vec<(String, String)> {
        let prefix = format!("{cluster}::");
        self.admin("/clusters")
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| {
                let (addr, rest) = l.rsplit_once("::health_flags::")?;
                Some((addr.to_owned(), rest.to_owned()))
            })
            .collect()
    }

    /// Everything Envoy logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
