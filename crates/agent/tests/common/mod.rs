//! The one harness every live test uses: render a document with the real
//! `vpsie-lb-agent` binary, start the real Envoy on the result, and talk to
//! it over 127.0.0.1.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use vpsie_lb_testkit::envoy::Envoy;
use vpsie_lb_testkit::{free_port, poll_until};

pub mod acme;
mod agent;
mod load;
pub mod waf;

// Each test binary uses some of these; none uses all.
#[allow(unused_imports)]
pub use agent::{RunningAgent, agent_config, agent_config_via};
#[allow(unused_imports)]
pub use load::Load;

/// Path of the agent binary under test.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vpsie-lb-agent")
}

/// Runs the agent with `args`.
pub fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .env("ENVOY_BIN", vpsie_lb_testkit::envoy::envoy_bin())
        .output()
        .expect("run vpsie-lb-agent")
}

/// How a live test's Envoy gets its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Files Envoy watches, written by `render` (or the agent).
    Files,
    /// The agent's xDS server: `vpsie-lb-agent run` serves the document.
    Xds,
}

/// Agents in this machine's own namespace leave its firewall alone: the
/// udp bounds are tested in namespaces of their own (live_udp_guard.rs).
pub const NO_KERNEL_RULES: &str = "udp_guard: {enabled: false}\n";

/// Turns each `fn name(via: Via)` into two tests, `files::name` and
/// `xds::name`: every live test runs under both deliveries, written once.
#[allow(unused_macros)]
macro_rules! over_deliveries {
    ($($name:ident),* $(,)?) => {
        mod files {
            $(#[test]
            fn $name() {
                super::$name(crate::common::Via::Files)
            })*
        }
        mod xds {
            $(#[test]
            fn $name() {
                super::$name(crate::common::Via::Xds)
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_deliveries;

/// A temp dir with a rendered config and, once started, an Envoy serving it.
///
/// With [`Via::Xds`], "render" hands the document to a running agent (file
/// source, Envoy not managed) and the Envoy started here connects to it.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub admin_port: u16,
    pub envoy: Option<Envoy>,
    pub via: Via,
    /// With xds: the agent serving this lab's Envoy, and its endpoints' port.
    agent: Option<RunningAgent>,
    agent_port: u16,
    /// An agent killed by the test, kept so its log outlives it.
    killed: Option<RunningAgent>,
}

impl Lab {
    pub fn new(via: Via) -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            admin_port: free_port(),
            envoy: None,
            via,
            agent: None,
            agent_port: free_port(),
            killed: None,
        }
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log's lines so far, each a JSON object.
    pub fn access_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Renders `doc` with the real binary; panics unless it exits 0.
    pub fn render(&mut self, doc: &Value) {
        self.render_with(doc, &[]);
    }

    /// Renders `doc` with `extra` flags; panics unless it exits 0. With
    /// xds, hands `doc` to the agent and, once Envoy runs, waits until
    /// Envoy confirmed it.
    pub fn render_with(&mut self, doc: &Value, extra: &[&str]) {
        if self.via == Via::Xds {
            self.serve_over_xds(doc, extra);
            return;
        }
        let out = self.run("render", doc, extra);
        assert!(
            out.status.success(),
            "render failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `apply` on `doc` against this lab's Envoy, keeping state in `dir/state`.
    pub fn apply(&self, doc: &Value) -> Output {
        let state = self.dir.path().join("state");
        self.run(
            "apply",
            doc,
            &["--state-dir", state.to_str().expect("utf-8 path")],
        )
    }

    /// `apply` of `doc` without `--state-dir`: last-known-good lives only
    /// as long as the command.
    pub fn apply_without_state(&self, doc: &Value) -> Output {
        self.run("apply", doc, &[])
    }

    /// Runs `command` (render or apply) on `doc` with this lab's paths.
    fn run(&self, command: &str, doc: &Value, extra: &[&str]) -> Output {
        let input = self.dir.path().join("input.json");
        std::fs::write(&input, serde_json::to_vec_pretty(doc).expect("json")).expect("write input");
        let admin = format!("127.0.0.1:{}", self.admin_port);
        let (out_dir, log) = (self.out_dir(), self.access_log());
        let mut args = vec![
            command,
            "--input",
            input.to_str().expect("utf-8 path"),
            "--out",
            out_dir.to_str().expect("utf-8 path"),
            "--admin-address",
            &admin,
            "--access-log",
            log.to_str().expect("utf-8 path"),
            "--allow-backend-network",
            "127.0.0.0/8",
        ];
        if !extra.contains(&"--listen-address") {
            args.extend(["--listen-address", "127.0.0.1"]);
        }
        args.extend(extra);
        agent(&args)
    }

    /// Renders `doc` and starts Envoy on it.
    pub fn start(via: Via, doc: &Value) -> Lab {
        Lab::start_with(via, doc, &[])
    }

    /// Renders `doc` with `extra` render flags and starts Envoy on it.
    pub fn start_with(via: Via, doc: &Value, extra: &[&str]) -> Lab {
        let mut lab = Lab::new(via);
        lab.render_with(doc, extra);
        lab.start_envoy();
        lab
    }

    /// Starts Envoy on the rendered bootstrap; with xds, waits until it
    /// confirmed the document the agent serves.
    pub fn start_envoy(&mut self) {
        let boot = self.out_dir().join("bootstrap.yaml");
        let log = self.dir.path().join("envoy.log");
        self.envoy = Some(Envoy::start(&boot, self.admin_port, &log));
        if self.via == Via::Xds {
            let doc: Value = serde_json::from_slice(
                &std::fs::read(self.dir.path().join("desired.json")).expect("desired.json"),
            )
            .expect("json");
            self.wait_confirmed(&doc);
        }
    }

    /// The xds half of [`Lab::render_with`]: writes the agent's source
    /// file, starts the agent on first use and asks it to sync after.
    fn serve_over_xds(&mut self, doc: &Value, extra: &[&str]) {
        self.offer(doc, extra);
        if self.envoy.is_some() {
            self.wait_confirmed(doc);
        }
    }

    /// With xds: hands `doc` to the agent (started on first use with
    /// `extra` render flags) without waiting for Envoy's verdict.
    pub fn offer(&mut self, doc: &Value, extra: &[&str]) {
        write_doc(&self.dir.path().join("desired.json"), doc);
        match &self.agent {
            Some(agent) => vpsie_lb_testkit::signal(agent.child.id(), "HUP"),
            None => {
                let config = self.xds_agent_config(extra);
                let agent = RunningAgent::start(self.dir.path(), &config);
                let boot = self.out_dir().join("bootstrap.yaml");
                poll_until("the agent's bootstrap", Duration::from_secs(20), || {
                    if boot.exists() {
                        Ok(())
                    } else {
                        Err(agent.log())
                    }
                });
                self.agent = Some(agent);
            }
        }
    }

    /// With xds: the port of the agent's endpoints (`/status`, `/metrics`).
    pub fn agent_port(&self) -> u16 {
        self.agent_port
    }

    /// With xds: the agent serving this lab.
    pub fn agent(&self) -> &RunningAgent {
        self.agent.as_ref().expect("the xds lab's agent")
    }

    /// With xds: SIGKILLs the agent (Envoy runs on, it is not the agent's child).
    pub fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("the xds lab's agent");
        let _ = agent.child.kill();
        let _ = agent.child.wait();
        self.killed = Some(agent);
    }

    /// With xds: starts the agent again on the same config and state.
    pub fn restart_agent(&mut self) {
        let config = self.dir.path().join("agent.yaml");
        self.agent = Some(RunningAgent::start(self.dir.path(), &config));
    }

    /// The agent's config for a lab over xds; `extra` are render flags.
    fn xds_agent_config(&self, extra: &[&str]) -> PathBuf {
        let mut envoy_extra = String::new();
        let mut listen = "127.0.0.1";
        for pair in extra.chunks(2) {
            match pair {
                ["--listen-address", a] => listen = a,
                ["--access-log-sample-percent", p] => {
                    envoy_extra.push_str(&format!("  access_log_sample_percent: {p}\n"));
                }
                ["--rate-limit-tracked-clients", n] => {
                    envoy_extra.push_str(&format!("  rate_limit_tracked_clients: {n}\n"));
                }
                ["--waf-socket", p] => {
                    envoy_extra.push_str(&format!("  waf_socket: {p}\n"));
                }
                ["--waf-engine", e] => {
                    envoy_extra.push_str(&format!("  waf_engine: {e}\n"));
                }
                ["--waf-filter", p] => {
                    envoy_extra.push_str(&format!("  waf_filter: {p}\n"));
                }
                other => panic!("render flags {other:?} have no agent setting in the xds lab"),
            }
        }
        let d = self.dir.path().display();
        let text = format!(
            "source: file\nfile: {d}/desired.json\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 127.0.0.1:{agent}}}\nenvoy:\n  config_dir: {out}\n  admin_address: 127.0.0.1:{admin}\n  binary_path: {bin}\n  listen_address: '{listen}'\n  manage: false\n  access_log: {log}\n  delivery: xds\n  xds_socket: {d}/xds.sock\n{envoy_extra}state_dir: {d}/state\nlogging: {{level: info, format: json}}\nallowed_backend_networks: [127.0.0.0/8]\n{NO_KERNEL_RULES}",
            agent = self.agent_port,
            out = self.out_dir().display(),
            admin = self.admin_port,
            bin = vpsie_lb_testkit::envoy::envoy_bin().display(),
            log = self.access_log().display(),
        );
        let path = self.dir.path().join("agent.yaml");
        std::fs::write(&path, text).expect("write agent config");
        path
    }

    /// Waits until the agent says Envoy confirmed every load balancer of `doc`.
    pub fn wait_confirmed(&self, doc: &Value) {
        let lbs = match doc {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        let agent = self.agent.as_ref().expect("the xds lab's agent");
        poll_until(
            "envoy confirmed the document",
            Duration::from_secs(30),
            || {
                let status = vpsie_lb_testkit::http::get(self.agent_port, "/status")
                    .map_err(|e| e.to_string())?;
                let status: Value =
                    serde_json::from_str(&status.body).map_err(|e| e.to_string())?;
                for lb in &lbs {
                    let id = lb["id"].as_str().unwrap_or_default();
                    let want = vpsie_lb_agent::status::version_of(lb);
                    let have = &status["load_balancers"][id]["applied_version"];
                    if have != &Value::String(want) {
                        return Err(format!("{id}: {have}; {}", agent.log()));
                    }
                }
                Ok(())
            },
        );
    }

    pub fn envoy(&self) -> &Envoy {
        self.envoy.as_ref().expect("envoy started")
    }

    /// Waits until Envoy has `n` hosts in the cluster of load balancer `lb_id`, all healthy.
    pub fn wait_healthy(&self, lb_id: &str, n: usize) {
        let cluster = format!("lb_{lb_id}");
        poll_until(
            &format!("{n} healthy hosts in {cluster}"),
            Duration::from_secs(30),
            || {
                let hosts = self.envoy().host_health(&cluster);
                let healthy = hosts.iter().filter(|(_, f)| f == "healthy").count();
                if hosts.len() == n && healthy == n {
                    Ok(())
                } else {
                    Err(format!("hosts: {hosts:?}"))
                }
            },
        );
    }

    /// Health flags of one backend port in `lb_id`'s cluster.
    pub fn flags(&self, lb_id: &str, port: u16) -> Option<String> {
        self.envoy()
            .host_health(&format!("lb_{lb_id}"))
            .into_iter()
            .find(|(a, _)| a == &format!("127.0.0.1:{port}"))
            .map(|(_, f)| f)
    }
}

/// An https load balancer on a fresh port with one backend; certificates live in `dir/tls`.
pub fn https_lb(
    dir: &Path,
    backend: &vpsie_lb_testkit::backend::HttpBackend,
    tls_extra: Value,
) -> (Value, u16, vpsie_lb_testkit::pki::Pair) {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir tls");
    let server = vpsie_lb_testkit::pki::self_signed("lb.test");
    let (cert, key) = vpsie_lb_testkit::pki::write_pair(&tls_dir, "server", &server);
    let port = free_port();
    let mut doc = lb(
        "web",
        "https",
        port,
        "round_robin",
        &[("a", backend.port(), 0)],
    );
    let mut tls = json!({"certificate_path": cert, "private_key_path": key});
    if let (Some(t), Some(extra)) = (tls.as_object_mut(), tls_extra.as_object()) {
        t.extend(extra.clone());
    }
    doc["tls_config"] = tls;
    (doc, port, server)
}

/// A load-balancer document with backends on 127.0.0.1 given as (id, port, weight).
pub fn lb(
    id: &str,
    protocol: &str,
    port: u16,
    algorithm: &str,
    backends: &[(&str, u16, u32)],
) -> Value {
    json!({
        "id": id,
        "name": format!("test {id}"),
        "protocol": protocol,
        "port": port,
        "algorithm": algorithm,
        "backends": backends.iter().map(|(bid, p, w)| json!({
            "id": bid, "address": "127.0.0.1", "port": p, "weight": w
        })).collect::<Vec<_>>(),
    })
}

/// Share of `key` in `counts`, in percent.
pub fn share(counts: &std::collections::BTreeMap<String, usize>, key: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * *counts.get(key).unwrap_or(&0) as f64 / total as f64
}

/// Replaces the document at `path` by rename, as an operator's tool would,
/// so a file source never reads half of it.
pub fn write_doc(path: &Path, doc: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(doc).expect("json")).expect("write doc");
    std::fs::rename(&tmp, path).expect("rename doc");
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// Starts one HTTP backend per name.
pub fn backends(names: &[&str]) -> Vec<vpsie_lb_testkit::backend::HttpBackend> {
    names
        .iter()
        .map(|n| vpsie_lb_testkit::backend::HttpBackend::start(n))
        .collect()
}

/// A load-balancer document over running backends, each with the default weight
/// and its name as its id.
pub fn lb_over(
    id: &str,
    protocol: &str,
    port: u16,
    algorithm: &str,
    pool: &[vpsie_lb_testkit::backend::HttpBackend],
) -> Value {
    let entries: Vec<(&str, u16, u32)> = pool.iter().map(|b| (b.name(), b.port(), 0)).collect();
    lb(id, protocol, port, algorithm, &entries)
}

impl Lab {
    /// Waits until the health flags of backend `port` in `lb_id` satisfy `ok`.
    pub fn wait_flags(
        &self,
        lb_id: &str,
        port: u16,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) {
        poll_until(what, timeout, || {
            let f = self.flags(lb_id, port);
            match f.as_deref() {
                Some(flags) if ok(flags) => Ok(()),
                _ => Err(format!("flags {f:?}")),
            }
        });
    }
}

/// Whether 6 requests to `port` reach `backend` at least once.
pub fn serves(port: u16, backend: &str) -> Result<(), String> {
    let counts = vpsie_lb_testkit::http::count_by_backend(port, 6);
    if counts.contains_key(backend) {
        Ok(())
    } else {
        Err(format!("{counts:?}"))
    }
}
