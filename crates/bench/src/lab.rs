//! The parts every scenario sets up: the API emulator, the real agent with
//! the Envoy it manages, nginx backends, and load-balancer documents.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vpsie_lb_testkit::{free_port, http};

use crate::procs::{self, Proc};

/// The phases of an agent pass, as its log line names them.
pub const PHASES: [&str; 7] = vpsie_lb_agent::pass::PhaseTimes::NAMES;

/// The key the emulator accepts.
const API_KEY: &str = "bench-key-0c1d2e";

/// The API emulator, in this process, on a free port.
pub struct Api {
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Api {
    /// Starts an emulator.
    pub fn start() -> Result<Api> {
        let sim = vpsie_api_sim::Sim::new(API_KEY, None);
        let addr = sim.spawn(0).context("start the api emulator")?;
        Ok(Api { port: addr.port() })
    }

    /// Stores `doc` as the desired state of its load balancer.
    pub fn put_lb(&self, doc: &Value) -> Result<()> {
        let id = doc["id"].as_str().context("document without id")?;
        let r = http::send(
            self.port,
            "PUT",
            &format!("/_sim/loadbalancers/{id}"),
            &doc.to_string(),
        )?;
        if r.status >= 300 {
            bail!("emulator refused {id}: {} {}", r.status, r.body);
        }
        Ok(())
    }

    /// The `vpsie` and `source` part of an agent config naming `ids`.
    pub fn source_yaml(&self, dir: &Path, ids: &[String], poll: &str) -> Result<String> {
        let key = dir.join("api-key");
        std::fs::write(&key, format!("{API_KEY}\n"))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        Ok(format!(
            "source: vpsie\nvpsie:\n  api_url: http://127.0.0.1:{}/v1\n  api_key_file: {}\n  loadbalancer_ids: [{}]\n  poll_interval: {poll}\n",
            self.port,
            key.display(),
            ids.join(", ")
        ))
    }
}

/// The `source: file` part of an agent config reading `path`.
pub fn file_source_yaml(path: &Path) -> String {
    format!(
        "source: file\nfile: {}\nvpsie:\n  poll_interval: 1h\n",
        path.display()
    )
}

/// Which way the agent under test hands resources to Envoy (`envoy.delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Files Envoy watches.
    Files,
    /// The agent's delta ADS server on a Unix socket.
    Xds,
}

impl Via {
    /// The agent's default (`envoy.delivery` unset).
    pub fn default_of_agent() -> Via {
        match vpsie_lb_agent::config::DEFAULT_DELIVERY {
            vpsie_lb_agent::config::DeliveryKind::Files => Via::Files,
            vpsie_lb_agent::config::DeliveryKind::Xds => Via::Xds,
        }
    }

    /// Both, in the order tables show them.
    pub const BOTH: [Via; 2] = [Via::Files, Via::Xds];

    /// Its name in tables and in `envoy.delivery`.
    pub fn name(self) -> &'static str {
        match self {
            Via::Files => "files",
            Via::Xds => "xds",
        }
    }

    /// The `envoy` section's lines that select it, for an agent under `dir`.
    pub fn envoy_yaml(self, dir: &Path) -> String {
        format!(
            "  delivery: {}\n  xds_socket: {}/xds.sock\n",
            self.name(),
            dir.display()
        )
    }
}

/// `vpsie-lb-agent run` with a managed Envoy, as an operator would run it.
pub struct Agent {
    /// The agent process.
    pub proc: Proc,
    /// Envoy's admin port.
    pub admin: u16,
    /// The agent's own endpoints (`/metrics`, `POST /sync`).
    pub endpoints: u16,
    bootstrap: PathBuf,
}

impl Agent {
    /// Writes `dir/agent.yaml` from `source` and starts the agent built
    /// beside this runner, delivering `via`, with the Envoy it manages.
    pub fn start_via(dir: &Path, source: &str, via: Via) -> Result<Agent> {
        Agent::configure(dir, source, via, true, "")?.spawn()
    }

    /// Writes `dir/agent.yaml` without starting anything; `manage`: whether
    /// the agent starts Envoy itself; `extra`: indented lines added to the
    /// `envoy` section. [`AgentConfig::spawn`] starts it.
    pub fn configure(
        dir: &Path,
        source: &str,
        via: Via,
        manage: bool,
        extra: &str,
    ) -> Result<AgentConfig> {
        let (admin, endpoints) = (free_port(), free_port());
        let config = dir.join("agent.yaml");
        let text = format!(
            "{source}agent: {{listen_address: 127.0.0.1:{endpoints}}}\nenvoy:\n  config_dir: {d}/envoy\n  admin_address: 127.0.0.1:{admin}\n  binary_path: {bin}\n  listen_address: 127.0.0.1\n  manage: {manage}\n  drain_time: 1s\n  access_log: {d}/access.log\n{extra}state_dir: {d}/state\nlogging: {{level: info, format: json}}\nallowed_backend_networks: [127.0.0.0/8]\n",
            d = dir.display(),
            bin = vpsie_lb_testkit::envoy::envoy_bin().display(),
            extra = via.envoy_yaml(dir) + extra,
        );
        std::fs::write(&config, text)?;
        Ok(AgentConfig {
            dir: dir.to_path_buf(),
            config,
            admin,
            endpoints,
        })
    }
}

/// An agent's config file, written; the agent may be started from it any
/// number of times.
pub struct AgentConfig {
    dir: PathBuf,
    config: PathBuf,
    /// Envoy's admin port.
    pub admin: u16,
    /// The agent's own endpoints.
    pub endpoints: u16,
}

impl AgentConfig {
    /// The bootstrap the agent writes for Envoy.
    pub fn bootstrap(&self) -> PathBuf {
        self.dir.join("envoy/bootstrap.yaml")
    }

    /// Starts an agent on this config; its log is `agent.log` (replaced).
    pub fn spawn(&self) -> Result<Agent> {
        let (dir, config, admin, endpoints) = (&self.dir, &self.config, self.admin, self.endpoints);
        let mut cmd = Command::new(sibling_binary("vpsie-lb-agent")?);
        cmd.args(["run", "--config"]).arg(config);
        // As packaging/systemd/vpsie-lb-agent.service runs it.
        cmd.env("MALLOC_ARENA_MAX", "2");
        let proc = Proc::spawn("vpsie-lb-agent", &mut cmd, &dir.join("agent.log"))?;
        Ok(Agent {
            proc,
            admin,
            endpoints,
            bootstrap: self.bootstrap(),
        })
    }

    /// Starts Envoy on the agent's bootstrap, as systemd's unit would
    /// (for agents that do not manage it).
    pub fn spawn_envoy(&self, log: &Path) -> Result<Proc> {
        let mut cmd = Command::new(vpsie_lb_testkit::envoy::envoy_bin());
        cmd.arg("-c").arg(self.bootstrap()).args([
            "--disable-hot-restart",
            "--concurrency",
            "2",
            "-l",
            "warning",
        ]);
        Proc::spawn("envoy", &mut cmd, log)
    }
}

impl Agent {
    /// The Envoy the agent started, once it runs.
    pub fn envoy_pid(&self) -> Option<u32> {
        vpsie_lb_testkit::pids_with_arg(self.bootstrap.to_str()?)
            .into_iter()
            .next()
    }

    /// GET an Envoy admin path.
    pub fn admin(&self, path: &str) -> Result<String> {
        Ok(http::get(self.admin, path)?.body)
    }

    /// Envoy counters and gauges whose names match `regex`, by name.
    pub fn stats(&self, regex: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let body = self.admin(&format!("/stats?filter={regex}"))?;
        Ok(body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// One stat by exact name (0 when Envoy does not have it yet).
    pub fn stat(&self, name: &str) -> Result<u64> {
        let re = format!("^{}$", name.replace('.', "\\."));
        Ok(self.stats(&re)?.get(name).copied().unwrap_or(0))
    }

    /// Asks for a pass now.
    pub fn sync(&self) -> Result<()> {
        let r = http::send(self.endpoints, "POST", "/sync", "")?;
        if r.status != 202 {
            bail!("POST /sync: {} {}", r.status, r.body);
        }
        Ok(())
    }

    /// Waits until `port` answers through Envoy, failing early if the agent dies.
    pub fn wait_serving(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.proc.check_alive()?;
            if http::get(port, "/").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "port {port} not served after {timeout:?}; agent log:\n{}",
                    procs::tail(&self.proc.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `(address:port, weight)` of each host of `cluster`, from `/clusters`.
    pub fn hosts(&self, cluster: &str) -> Result<Vec<(String, u32)>> {
        let body = self.admin("/clusters")?;
        let prefix = format!("{cluster}::");
        Ok(body
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| {
                let (addr, w) = l.split_once("::weight::")?;
                Some((addr.to_owned(), w.trim().parse().ok()?))
            })
            .collect())
    }

    /// When each pass that applied a change ended (after Envoy confirmed
    /// it), as Unix seconds, from the agent's log.
    pub fn applied_at(&self) -> Vec<f64> {
        self.proc
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "pass applied a change")
            .filter_map(|v| unix_seconds(v["timestamp"].as_str()?))
            .collect()
    }

    /// The phase times (ms, in [`PHASES`] order, NaN when absent) of every
    /// pass that applied a change, from the agent's log.
    pub fn phase_times(&self) -> Vec<[f64; 7]> {
        self.proc
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "pass applied a change")
            .map(|v| PHASES.map(|ph| v[format!("{ph}_ms")].as_f64().unwrap_or(f64::NAN)))
            .collect()
    }
}

/// Unix seconds of an RFC 3339 UTC time such as `2026-11-29T01:02:03.456789Z`.
pub fn unix_seconds(ts: &str) -> Option<f64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Now, as Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `vpsie-lb-waf` beside an agent in `dir`, reading the policy file that
/// agent writes; the process and its socket.
pub fn waf_service(dir: &Path) -> Result<(Proc, std::path::PathBuf)> {
    let socket = dir.join("waf.sock");
    let service = Proc::spawn(
        "vpsie-lb-waf",
        Command::new(sibling_binary("vpsie-lb-waf")?)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(dir.join("envoy").join("waf.json"))
            .args(["--metrics-socket", "off"]),
        &dir.join("waf.log"),
    )?;
    Ok((service, socket))
}

/// A binary built in the same target directory as this runner.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("runner has no directory")?;
    // Under `cargo test` the runner's test binary lives in target/*/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found beside {}: build the workspace first",
        me.display()
    )
}

/// A load-balancer document over backends on 127.0.0.1, given as `(port, weight)`.
pub fn lb_doc(id: &str, protocol: &str, port: u16, backends: &[(u16, u32)]) -> Value {
    json!({
        "id": id,
        "name": format!("bench {id}"),
        "protocol": protocol,
        "port": port,
        "algorithm": "round_robin",
        "backends": backends.iter().map(|(p, w)| json!({
            "id": format!("b{p}"), "address": "127.0.0.1", "port": p, "weight": w
        })).collect::<Vec<_>>(),
    })
}

/// nginx as the backend: one worker, a tiny fixed answer naming the port,
/// on each of `ports`, plus TLS 1.3 on `tls_port` when given.
pub struct Nginx {
    _proc: Proc,
}

impl Nginx {
    /// Starts nginx with its files under `dir`.
    pub fn start(dir: &Path, ports: &[u16], tls: Option<(u16, &Path, &Path)>) -> Result<Nginx> {
        Nginx::start_with(dir, ports, &[], tls)
    }

    /// [`Nginx::start`], plus `proxied` ports that expect a PROXY protocol
    /// header (`listen … proxy_protocol`) and answer the same way.
    pub fn start_with(
        dir: &Path,
        ports: &[u16],
        proxied: &[u16],
        tls: Option<(u16, &Path, &Path)>,
    ) -> Result<Nginx> {
        std::fs::create_dir_all(dir)?;
        let mut listen = String::new();
        for p in ports {
            listen.push_str(&format!("    listen 127.0.0.1:{p} reuseport;\n"));
        }
        for p in proxied {
            listen.push_str(&format!(
                "    listen 127.0.0.1:{p} reuseport proxy_protocol;\n"
            ));
        }
        let mut tls_server = String::new();
        if let Some((port, cert, key)) = tls {
            tls_server = format!(
                "  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    location / {{ default_type text/plain; return 200 \"backend {port}\\n\"; }}\n  }}\n",
                cert.display(),
                key.display()
            );
        }
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n{listen}    location / {{ default_type text/plain; return 200 \"backend $server_port\\n\"; }}\n  }}\n{tls_server}}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(&path).arg("-p").arg(dir);
        let mut proc = Proc::spawn("nginx", &mut cmd, &dir.join("nginx.out"))?;
        let all: Vec<u16> = ports
            .iter()
            .chain(proxied)
            .copied()
            .chain(tls.map(|t| t.0))
            .collect();
        proc.wait_listening(&all)?;
        Ok(Nginx { _proc: proc })
    }
}

/// A small deterministic random source (xorshift64*), so runs are repeatable.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next value in 0..1.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next value in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times_become_unix_seconds() {
        assert_eq!(super::unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        let t = super::unix_seconds("2026-11-29T01:02:03.5Z").expect("parses");
        assert!((t - 1_795_914_123.5).abs() < 1e-6, "{t}");
        assert_eq!(super::unix_seconds("yesterday"), None);
    }
}
