//! A running `vpsie-lb-agent run` process and the config it starts from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vpsie_lb_testkit::{free_port, poll_until};

use super::{Via, agent_bin};

/// A `vpsie-lb-agent run` process; killed (with its Envoy) when dropped.
pub struct RunningAgent {
    pub child: std::process::Child,
    pub log: PathBuf,
    bootstrap: PathBuf,
}

impl RunningAgent {
    pub fn start(dir: &Path, config: &Path) -> RunningAgent {
        Self::start_with_env(dir, config, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &Path, env: &[(&str, &str)]) -> RunningAgent {
        let mut cmd = std::process::Command::new(agent_bin());
        cmd.envs(env.iter().copied());
        Self::spawn(cmd, dir, config)
    }

    /// Like `start`, inside network namespace `ns` (`ip netns exec`, which
    /// execs the agent, so the child is the agent itself).
    #[allow(dead_code)]
    pub fn start_in(ns: &str, dir: &Path, config: &Path) -> RunningAgent {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, agent_bin()]);
        Self::spawn(cmd, dir, config)
    }

    /// Runs `cmd run --config CONFIG`, its output in a log under `dir`.
    fn spawn(mut cmd: std::process::Command, dir: &Path, config: &Path) -> RunningAgent {
        let log = dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        let out = std::fs::File::create(&log).expect("agent log");
        let child = cmd
            .args(["run", "--config", config.to_str().expect("path")])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start agent");
        RunningAgent {
            child,
            log,
            bootstrap: dir.join("envoy/bootstrap.yaml"),
        }
    }

    /// SIGTERM, then the exit status, which must come within `within`.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        vpsie_lb_testkit::signal(self.child.id(), "TERM");
        let child = &mut self.child;
        poll_until("agent exit after SIGTERM", within, || {
            child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "running".to_owned())
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn envoy_pids(&self) -> Vec<u32> {
        vpsie_lb_testkit::pids_with_arg(self.bootstrap.to_str().expect("path"))
    }

    pub fn wait_log(&self, what: &str, needle: &str) {
        poll_until(what, Duration::from_secs(20), || {
            if self.log().contains(needle) {
                Ok(())
            } else {
                Err(self.log())
            }
        });
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed agent leaves its Envoy (own process group) behind.
        for pid in self.envoy_pids() {
            vpsie_lb_testkit::signal(pid, "KILL");
        }
    }
}

/// Writes `dir/agent.yaml`: `source` (the source and vpsie keys) plus a
/// managed Envoy with its admin on `admin`, state and logs under `dir`.
pub fn agent_config(dir: &Path, admin: u16, source: &str) -> PathBuf {
    agent_config_via(dir, admin, source, Via::Files)
}

/// [`agent_config`] with the delivery `via`.
pub fn agent_config_via(dir: &Path, admin: u16, source: &str, via: Via) -> PathBuf {
    let path = dir.join("agent.yaml");
    // Tests run in parallel: each agent's endpoints need their own port.
    let own_port;
    let source = if source.contains("\nagent:") || source.starts_with("agent:") {
        source
    } else {
        own_port = format!(
            "{source}agent: {{listen_address: 127.0.0.1:{}}}\n",
            free_port()
        );
        own_port.as_str()
    };
    let delivery = match via {
        Via::Files => String::new(),
        Via::Xds => format!(
            "  delivery: xds\n  xds_socket: {}/xds.sock\n",
            dir.display()
        ),
    };
    let text = format!(
        "{source}envoy:\n  config_dir: {d}/envoy\n  admin_address: 127.0.0.1:{admin}\n  binary_path: {bin}\n  listen_address: 127.0.0.1\n  manage: true\n  drain_time: 1s\n  access_log: {d}/access.log\n{delivery}state_dir: {d}/state\nlogging: {{level: info, format: json}}\nallowed_backend_networks: [127.0.0.0/8]\n{guard}",
        guard = if source.contains("udp_guard:") {
            ""
        } else {
            super::NO_KERNEL_RULES
        },
        d = dir.display(),
        bin = vpsie_lb_testkit::envoy::envoy_bin().display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}
