//! `manage: true`: the agent runs Envoy itself, restarts it when it dies,
//! and drains it on shutdown. In production systemd does this instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vpsie_lb_core::backoff::Backoff;

use crate::envoy_admin::EnvoyAdmin;

/// How Envoy is started.
#[derive(Debug, Clone)]
pub struct EnvoyCommand {
    /// The binary.
    pub binary: PathBuf,
    /// The bootstrap file.
    pub bootstrap: PathBuf,
    /// `--drain-time-s`.
    pub drain_time: Duration,
}

impl EnvoyCommand {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&self.bootstrap)
            .arg("--reject-unknown-dynamic-fields")
            .arg("--drain-time-s")
            .arg(self.drain_time.as_secs().max(1).to_string())
            // The agent restarts Envoy itself; hot restart is for binary
            // upgrades under systemd.
            .arg("--disable-hot-restart")
            // Envoy's info level prints hundreds of start-up lines into the
            // agent's log; warnings and errors are what an operator needs.
            .args(["-l", "warning"])
            .stdin(Stdio::null());
        // Its own process group: a terminal's Ctrl-C reaches the agent, which
        // then drains Envoy properly instead of Envoy dying at once.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
    }
}

/// A supervised Envoy.
pub struct Supervisor {
    child: Arc<Mutex<Option<Child>>>,
    stopping: Arc<AtomicBool>,
    admin: EnvoyAdmin,
    drain_time: Duration,
    watcher: Option<thread::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts Envoy and a thread that restarts it, with backoff, when it exits.
    pub fn start(cmd: EnvoyCommand, admin: EnvoyAdmin) -> std::io::Result<Supervisor> {
        let child = Arc::new(Mutex::new(Some(cmd.spawn()?)));
        let stopping = Arc::new(AtomicBool::new(false));
        let drain_time = cmd.drain_time;
        let watcher = {
            let (child, stopping) = (child.clone(), stopping.clone());
            thread::spawn(move || watch(cmd, child, stopping))
        };
        Ok(Supervisor {
            child,
            stopping,
            admin,
            drain_time,
            watcher: Some(watcher),
        })
    }

    /// Waits until Envoy's admin says LIVE.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.admin.get("/ready").is_ok() {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Drains Envoy (fails health checks, drains listeners until no
    /// downstream connection is left or the drain time, at most 60 s, is
    /// over), then stops it.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.admin.post("/healthcheck/fail");
        if self.admin.post("/drain_listeners?graceful").is_ok() {
            let deadline = Instant::now() + self.drain_time.min(Duration::from_secs(60));
            // Waiting out the whole drain time with nothing open only delays a restart.
            while Instant::now() < deadline
                && self.admin.downstream_connections().is_ok_and(|n| n > 0)
            {
                thread::sleep(Duration::from_millis(50));
            }
        }
        if let Ok(mut guard) = self.child.lock()
            && let Some(mut c) = guard.take()
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

fn watch(cmd: EnvoyCommand, child: Arc<Mutex<Option<Child>>>, stopping: Arc<AtomicBool>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut started = Instant::now();
    while !stopping.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
        let exited = match child.lock() {
            Ok(mut guard) => match guard.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                Some(Ok(None)) | None => None,
            },
            Err(_) => return,
        };
        let Some(status) = exited else { continue };
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        // A run that lasted a minute was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.step();
        tracing::error!(phase = "envoy", error = %status, restart_in_ms = wait.as_millis() as u64, "envoy exited; restarting");
        let wake = Instant::now() + wait;
        while Instant::now() < wake && !stopping.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match cmd.spawn() {
            Ok(c) => {
                started = Instant::now();
                if let Ok(mut guard) = child.lock() {
                    *guard = Some(c);
                }
            }
            Err(e) => tracing::error!(phase = "envoy", error = %e, "could not restart envoy"),
        }
    }
}
