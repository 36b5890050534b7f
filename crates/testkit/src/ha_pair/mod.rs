//! Two load-balancer nodes behind virtual IPs, built in network namespaces:
//! each node runs keepalived, the agent and Envoy (as their systemd units
//! would: Envoy is not the agent's child), and serves one load balancer
//! from a file in front of two backends. A client namespace sends traffic
//! to the virtual IPs. Needs root; nothing leaves the machine.
//!
//! ```text
//!   ha-cl 10.77.0.100 ─┐
//!   ha-lb1 10.77.0.1  ─┤            virtual IPs 10.77.0.10 (and .20)
//!   ha-lb2 10.77.0.2  ─┼─ br0 (ha-br)
//!   ha-be1 10.77.0.11 ─┤
//!   ha-be2 10.77.0.12 ─┘
//! ```

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::HttpBackend;
use crate::netns::{Lan, in_netns};
use crate::try_poll_until;

mod client;
mod trial;
mod watch;

pub use client::{Client, Outcome, Sample, outcome};
pub use trial::{SharedTrial, Trial, wait_requests, wait_served_by};
pub use watch::{Holders, Watcher, longest_split_brain};

/// The port the load balancer listens on, and the backends too.
pub const PORT: u16 = 8080;
/// The first virtual IP (active-passive has only this one).
pub const VIP1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
/// The second virtual IP (active-active).
pub const VIP2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const BACKENDS: [(&str, Ipv4Addr); 2] = [
    ("be1", Ipv4Addr::new(10, 77, 0, 11)),
    ("be2", Ipv4Addr::new(10, 77, 0, 12)),
];
/// The user keepalived runs the agent's scripts as.
const SCRIPT_USER: &str = "nobody";

/// Active-passive (one address) or active-active (two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One virtual IP, `nopreempt`.
    ActivePassive,
    /// Two virtual IPs, each node the master of one.
    ActiveActive,
}

/// How the pair is built.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Active-passive or active-active.
    pub mode: Mode,
    /// VRRP advert interval in milliseconds (a multiple of 10).
    pub advert_ms: u32,
    /// The agent binary (copied into a root-owned directory, as
    /// keepalived's script security wants).
    pub agent_bin: PathBuf,
    /// The Envoy binary.
    pub envoy_bin: PathBuf,
    /// Namespace and link prefix (at most 6 characters), unique per lab.
    pub prefix: String,
    /// Deliver over the agent's xDS socket instead of files.
    pub xds: bool,
}

/// A fault injected into a node, and healed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Envoy killed (SIGKILL); healed by starting it again, as systemd would.
    KillEnvoy,
    /// The node's link cut at the bridge (a dead VM, as the others see it).
    CutLink,
    /// keepalived stopped (SIGTERM: it sends a priority-0 advert).
    StopKeepalived,
    /// The agent killed (SIGKILL) while Envoy keeps serving.
    KillAgent,
}

/// One node: its namespace role, address and processes.
struct Node {
    role: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    agent: Mutex<Option<Child>>,
    envoy: Mutex<Option<Child>>,
    keepalived: Mutex<Option<Child>>,
}

/// The two nodes, the network and the backends.
pub struct Pair {
    opts: PairOptions,
    dir: PathBuf,
    agent_bin: PathBuf,
    nodes: Vec<Node>,
    _backends: Vec<HttpBackend>,
    lan: Lan,
}

impl Pair {
    /// Builds the network, starts the backends, and starts node 0 then
    /// node 1, each once the one before serves; node 0 ends up master (of
    /// the first address, in active-active: each of its own).
    pub fn start(opts: PairOptions) -> Result<Pair, String> {
        let mut lan = Lan::new(&opts.prefix)?;
        lan.add("cl", CLIENT)?;
        let mut backends = Vec::new();
        for (role, addr) in BACKENDS {
            let ns = lan.add(role, addr)?.name().to_owned();
            let name = role.to_owned();
            backends.push(
                in_netns(&ns, move || HttpBackend::start_at(&name, addr, PORT))?
                    .map_err(|e| format!("backend {role}: {e}"))?,
            );
        }
        let dir = PathBuf::from(format!("/run/vpsie-lb-ha-{}", opts.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        // keepalived runs scripts only if no part of their path is writable
        // by anyone but root: a root-owned directory outside /tmp.
        make_dir(&dir, 0o755)?;
        make_dir(&dir.join("bin"), 0o755)?;
        let agent_bin = dir.join("bin/vpsie-lb-agent");
        std::fs::copy(&opts.agent_bin, &agent_bin).map_err(|e| format!("copy the agent: {e}"))?;
        std::fs::write(dir.join("lb.yaml"), document()).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for (i, addr) in [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)]
            .into_iter()
            .enumerate()
        {
            let role = format!("lb{}", i + 1);
            lan.add(&role, addr)?;
            nodes.push(Node {
                dir: dir.join(&role),
                role,
                addr,
                agent: Mutex::default(),
                envoy: Mutex::default(),
                keepalived: Mutex::default(),
            });
        }
        let pair = Pair {
            opts,
            dir,
            agent_bin,
            nodes,
            _backends: backends,
            lan,
        };
        for i in 0..2 {
            pair.configure(i)?;
            pair.start_agent(i)?;
            pair.start_envoy(i)?;
            pair.wait_fit(i, Duration::from_secs(60))?;
            pair.start_keepalived(i)?;
            let want = if i == 0 { "master" } else { "backup" };
            pair.wait_state(i, "vpsie_lb_1", want, Duration::from_secs(30))?;
        }
        if pair.opts.mode == Mode::ActiveActive {
            pair.wait_state(1, "vpsie_lb_2", "master", Duration::from_secs(60))?;
        }
        Ok(pair)
    }

    /// The node's address (what the backends see as its peer).
    pub fn addr(&self, node: usize) -> Ipv4Addr {
        self.nodes[node].addr
    }

    /// The node's agent config.
    pub fn agent_config(&self, node: usize) -> PathBuf {
        self.nodes[node].dir.join("agent.yaml")
    }

    /// The node's agent endpoints (a Unix socket, reachable from here).
    pub fn agent_socket(&self, node: usize) -> PathBuf {
        self.nodes[node].dir.join("agent.sock")
    }

    /// The node's namespace name.
    pub fn ns(&self, node: usize) -> String {
        self.lan.ns(&self.nodes[node].role).name().to_owned()
    }

    /// The client's namespace name.
    pub fn client_ns(&self) -> String {
        self.lan.ns("cl").name().to_owned()
    }

    /// The virtual IPs this mode uses.
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        match self.opts.mode {
            Mode::ActivePassive => vec![VIP1],
            Mode::ActiveActive => vec![VIP1, VIP2],
        }
    }

    /// The nodes holding `vip` now.
    pub fn holders(&self, vip: Ipv4Addr) -> Vec<usize> {
        (0..2)
            .filter(|i| {
                self.lan
                    .ns(&self.nodes[*i].role)
                    .addresses("eth0")
                    .contains(&vip)
            })
            .collect()
    }

    fn configure(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        make_dir(&node.dir, 0o755)?;
        make_dir(&node.dir.join("state"), 0o755)?;
        let status = node.dir.join("ha");
        make_dir(&status, 0o755)?;
        chown_to(&status, SCRIPT_USER)?;
        let other = &self.nodes[1 - i];
        let (mode, vips, primary) = match self.opts.mode {
            Mode::ActivePassive => ("active_passive", format!("[{VIP1}/24]"), String::new()),
            Mode::ActiveActive => (
                "active_active",
                format!("[{VIP1}/24, {VIP2}/24]"),
                format!("  primary_ip: {}\n", if i == 0 { VIP1 } else { VIP2 }),
            ),
        };
        let text = format!(
            "source: file\nfile: {dir}/lb.yaml\nstate_dir: {n}/state\nlogging: {{level: info, format: text}}\nagent: {{listen_address: 'unix:{n}/agent.sock'}}\nenvoy:\n  config_dir: {n}/envoy\n  admin_address: 127.0.0.1:9901\n  binary_path: {envoy}\n  manage: false\n  drain_time: 1s\n  access_log: /dev/null\n{delivery}ha:\n  mode: {mode}\n  priority: {prio}\n  interface: eth0\n  virtual_ips: {vips}\n{primary}  peers: [{peer}]\n  source_address: {me}\n  advert_interval: {advert}ms\n  script_user: {SCRIPT_USER}\n  agent_path: {bin}\n  status_dir: {status}\n  preempt_delay: 2s\n",
            dir = self.dir.display(),
            n = node.dir.display(),
            envoy = self.opts.envoy_bin.display(),
            prio = if i == 0 { 150 } else { 100 },
            peer = other.addr,
            me = node.addr,
            advert = self.opts.advert_ms,
            bin = self.agent_bin.display(),
            status = status.display(),
            delivery = if self.opts.xds {
                format!(
                    "  delivery: xds\n  xds_socket: {}/xds.sock\n",
                    node.dir.display()
                )
            } else {
                String::new()
            },
        );
        let text = if self.opts.mode == Mode::ActivePassive {
            text.replace("  preempt_delay: 2s\n", "")
        } else {
            text
        };
        std::fs::write(self.agent_config(i), text).map_err(|e| e.to_string())?;
        let out = Command::new(&self.agent_bin)
            .args(["ha", "render", "--config"])
            .arg(self.agent_config(i))
            .arg("--out")
            .arg(node.dir.join("keepalived.conf"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ha render for {}: {}",
                node.role,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn spawn_in(
        &self,
        i: usize,
        program: &Path,
        args: &[&str],
        log: &str,
    ) -> Result<Child, String> {
        let node = &self.nodes[i];
        let log = std::fs::File::create(node.dir.join(log)).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = self.lan.ns(&node.role).command(&program.to_string_lossy());
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
        // Its own process group: a signal to the test's group (Ctrl-C) must
        // not reach it before the lab stops it in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))
    }

    /// Starts (or restarts) the node's agent. Its socket is handed to the
    /// script user, as the package's agent and scripts share one user: so
    /// `ha notify` can ask the agent for a pass.
    pub fn start_agent(&self, i: usize) -> Result<(), String> {
        let config = self.agent_config(i).to_string_lossy().into_owned();
        let socket = self.agent_socket(i);
        // A socket left by the agent before is replaced at its start.
        let before = std::fs::metadata(&socket)
            .ok()
            .and_then(|m| m.modified().ok());
        let child = self.spawn_in(
            i,
            &self.agent_bin.clone(),
            &["run", "--config", &config],
            "agent.log",
        )?;
        *lock(&self.nodes[i].agent) = Some(child);
        try_poll_until(
            &format!("node {i}'s agent socket"),
            Duration::from_secs(20),
            || match std::fs::metadata(&socket).and_then(|m| m.modified()) {
                Ok(t) if Some(t) != before => Ok(()),
                _ => Err(self.log(i, "agent.log")),
            },
        )?;
        chown_to(&socket, SCRIPT_USER)
    }

    /// Starts (or restarts) the node's Envoy, once the agent wrote its bootstrap.
    pub fn start_envoy(&self, i: usize) -> Result<(), String> {
        let bootstrap = self.nodes[i].dir.join("envoy/bootstrap.yaml");
        try_poll_until("the agent's bootstrap", Duration::from_secs(30), || {
            bootstrap
                .exists()
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        })?;
        let b = bootstrap.to_string_lossy().into_owned();
        let envoy = self.opts.envoy_bin.clone();
        let child = self.spawn_in(
            i,
            &envoy,
            &[
                "-c",
                &b,
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--drain-time-s",
                "1",
                "-l",
                "warning",
            ],
            "envoy.log",
        )?;
        *lock(&self.nodes[i].envoy) = Some(child);
        Ok(())
    }

    /// Starts (or restarts) the node's keepalived.
    pub fn start_keepalived(&self, i: usize) -> Result<(), String> {
        let d = self.nodes[i].dir.clone();
        let p = |f: &str| d.join(f).to_string_lossy().into_owned();
        let args = [
            "--dont-fork".to_owned(),
            "--log-console".to_owned(),
            "--log-detail".to_owned(),
            "--no-syslog".to_owned(),
            "--vrrp".to_owned(),
            format!("--use-file={}", p("keepalived.conf")),
            format!("--pid={}", p("keepalived.pid")),
            format!("--vrrp_pid={}", p("vrrp.pid")),
            format!("--checkers_pid={}", p("checkers.pid")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.spawn_in(i, Path::new("keepalived"), &args, "keepalived.log")?;
        *lock(&self.nodes[i].keepalived) = Some(child);
        Ok(())
    }

    /// Injects `fault` into node `i`.
    pub fn inject(&self, i: usize, fault: Fault) -> Result<(), String> {
        match fault {
            Fault::KillEnvoy => kill(&self.nodes[i].envoy, "KILL"),
            Fault::KillAgent => kill(&self.nodes[i].agent, "KILL"),
            Fault::StopKeepalived => kill(&self.nodes[i].keepalived, "TERM"),
            Fault::CutLink => self.lan.cut(&self.nodes[i].role),
        }
    }

    /// Undoes `fault` on node `i`: what systemd or the operator would do.
    pub fn heal(&self, i: usize, fault: Fault) -> Result<(), String> {
        match fault {
            Fault::KillEnvoy => self.start_envoy(i),
            Fault::KillAgent => self.start_agent(i),
            Fault::StopKeepalived => self.start_keepalived(i),
            Fault::CutLink => self.lan.mend(&self.nodes[i].role),
        }
    }

    /// Runs `ha check` in node `i` as keepalived would (as the script user).
    pub fn check(&self, i: usize) -> Result<String, String> {
        let mut cmd = self.lan.ns(&self.nodes[i].role).command("setpriv");
        cmd.args([
            "--reuid",
            SCRIPT_USER,
            "--regid",
            "nogroup",
            "--clear-groups",
        ])
        .arg(&self.agent_bin)
        .args(["ha", "check", "--config"])
        .arg(self.agent_config(i));
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Waits until `ha check` passes on node `i`.
    pub fn wait_fit(&self, i: usize, timeout: Duration) -> Result<String, String> {
        try_poll_until(&format!("node {i} fit to serve"), timeout, || self.check(i))
    }

    /// The state `ha notify` last recorded for `instance` on node `i`.
    pub fn state(&self, i: usize, instance: &str) -> Option<String> {
        let path = self.nodes[i]
            .dir
            .join("ha")
            .join(format!("{instance}.json"));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["state"].as_str().map(str::to_owned)
    }

    /// Waits until node `i` recorded `state` for `instance`.
    pub fn wait_state(
        &self,
        i: usize,
        instance: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        try_poll_until(
            &format!("node {i} {instance} {state}"),
            timeout,
            || match self.state(i, instance) {
                Some(s) if s == state => Ok(()),
                other => Err(format!(
                    "it is {other:?}; keepalived log: {}",
                    self.log(i, "keepalived.log")
                )),
            },
        )
    }

    /// The tail of a node's log (`agent.log`, `envoy.log`, `keepalived.log`).
    pub fn log(&self, i: usize, name: &str) -> String {
        let text = std::fs::read_to_string(self.nodes[i].dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The whole of a node's log since its process last started.
    pub fn whole_log(&self, i: usize, name: &str) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join(name)).unwrap_or_default()
    }

    /// Starts the client: `per_second` new connections a second to each
    /// virtual IP, plus one keep-alive connection per virtual IP.
    pub fn client(&self, per_second: u32) -> Result<Client, String> {
        Client::start(&self.client_ns(), &self.vips(), per_second)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = kill(&node.keepalived, "TERM");
        }
        for node in &self.nodes {
            let _ = kill(&node.agent, "KILL");
            let _ = kill(&node.envoy, "KILL");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The load balancer both nodes serve.
fn document() -> String {
    format!(
        "id: web\nname: ha web\nprotocol: http\nport: {PORT}\nbackends:\n  - {{id: be1, address: {}, port: {PORT}}}\n  - {{id: be2, address: {}, port: {PORT}}}\nhealth_check: {{type: http, path: /healthz, interval: 2, timeout: 1, healthy_threshold: 1, unhealthy_threshold: 2}}\ntimeouts: {{connect: 1, idle: 60, request: 5}}\n",
        BACKENDS[0].1, BACKENDS[1].1
    )
}

/// Signals a child and reaps it; `TERM` waits up to 10 s, then kills.
fn kill(child: &Mutex<Option<Child>>, signal: &str) -> Result<(), String> {
    let Some(mut c) = lock(child).take() else {
        return Ok(());
    };
    crate::signal(c.id(), signal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return Ok(());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn chown_to(dir: &Path, user: &str) -> Result<(), String> {
    let ok = Command::new("chown")
        .arg(user)
        .arg(dir)
        .status()
        .map_err(|e| e.to_string())?;
    ok.success()
        .then_some(())
        .ok_or_else(|| format!("chown {user} {}", dir.display()))
}
