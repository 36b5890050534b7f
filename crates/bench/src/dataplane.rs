//! Scenario 1, data-plane overhead: the same job (two nginx backends, round
//! robin) served directly, by Envoy on our generated config, by Envoy on a
//! hand-tuned minimal config, and by HAProxy, for HTTP keep-alive, HTTPS
//! keep-alive, a new HTTPS connection per request, and TCP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use vpsie_lb_testkit::envoy::Envoy;
use vpsie_lb_testkit::free_port;

use crate::lab::{Agent, Nginx, Via, file_source_yaml, lb_doc};
use crate::procs::{self, Proc};
use crate::report::{Summary, Table, fmt_num, verdict};
use crate::wrk::{Load, WrkResult};
use crate::{Ctx, Findings};

/// How the client talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    Https,
    HttpsNewConn,
    Tcp,
}

const MODES: [Mode; 4] = [Mode::Http, Mode::Https, Mode::HttpsNewConn, Mode::Tcp];

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Http => "HTTP/1.1 keep-alive",
            Mode::Https => "HTTPS (TLS 1.3) keep-alive",
            Mode::HttpsNewConn => "HTTPS, a new connection per request (TLS 1.3, resumed)",
            Mode::Tcp => "TCP proxy (HTTP keep-alive inside)",
        }
    }
}

/// Who serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Ours,
    OursFullLog,
    HandTuned,
    Haproxy,
}

const TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Ours,
    Target::OursFullLog,
    Target::HandTuned,
    Target::Haproxy,
];

/// Indexes into [`TARGETS`] for the ratios.
const OURS: usize = 1;
const OURS_FULL_LOG: usize = 2;
const HAND_TUNED: usize = 3;
const HAPROXY: usize = 4;

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct to nginx (the limit)",
            Target::Ours => "Envoy, our generated config",
            Target::OursFullLog => "Envoy, ours with every request logged",
            Target::HandTuned => "Envoy, hand-tuned minimal config",
            Target::Haproxy => "HAProxy, equivalent config",
        }
    }
}

/// Ports of every target, by mode.
struct Ports {
    backends: [u16; 2],
    backend_tls: u16,
    ours: [u16; 3],
    ours_full_log: [u16; 3],
    hand: [u16; 3],
    haproxy: [u16; 3],
}

impl Ports {
    fn url(&self, target: Target, mode: Mode) -> String {
        let idx = match mode {
            Mode::Http => 0,
            Mode::Https | Mode::HttpsNewConn => 1,
            Mode::Tcp => 2,
        };
        let port = match target {
            Target::Direct if idx == 1 => self.backend_tls,
            Target::Direct => self.backends[0],
            Target::Ours => self.ours[idx],
            Target::OursFullLog => self.ours_full_log[idx],
            Target::HandTuned => self.hand[idx],
            Target::Haproxy => self.haproxy[idx],
        };
        let scheme = if idx == 1 { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}/")
    }
}

/// One measured cell.
struct Cell {
    wrk: WrkResult,
    cpu_us_per_req: Option<f64>,
}

/// Runs scenario 1 and returns its tables.
pub fn run(ctx: &Ctx, findings: &mut Findings) -> Result<Vec<Table>> {
    let dir = ctx.dir.join("dataplane");
    std::fs::create_dir_all(&dir)?;
    let pair = vpsie_lb_testkit::pki::self_signed("localhost");
    let (cert, key) = vpsie_lb_testkit::pki::write_pair(&dir, "ecdsa", &pair);
    let ports = Ports {
        backends: [free_port(), free_port()],
        backend_tls: free_port(),
        ours: [free_port(), free_port(), free_port()],
        ours_full_log: [free_port(), free_port(), free_port()],
        hand: [free_port(), free_port(), free_port()],
        haproxy: [free_port(), free_port(), free_port()],
    };
    let _nginx = Nginx::start(
        &dir.join("nginx"),
        &ports.backends,
        Some((ports.backend_tls, &cert, &key)),
    )?;

    // Ours: the real agent, as an operator runs it, on a file source; once
    // with the defaults, once logging every request.
    let pool: Vec<(u16, u32)> = ports.backends.iter().map(|p| (*p, 1)).collect();
    let start_ours = |name: &str, p: [u16; 3], extra: &str| -> Result<Agent> {
        let ours_dir = dir.join(name);
        std::fs::create_dir_all(&ours_dir)?;
        let mut https = lb_doc("dp-https", "https", p[1], &pool);
        https["tls_config"] = json!({
            "certificate_path": cert, "private_key_path": key, "min_version": "TLSv1.3"
        });
        let docs = json!([
            lb_doc("dp-http", "http", p[0], &pool),
            https,
            lb_doc("dp-tcp", "tcp", p[2], &pool),
        ]);
        let desired = ours_dir.join("desired.json");
        std::fs::write(&desired, serde_json::to_vec_pretty(&docs)?)?;
        let via = Via::default_of_agent();
        let mut agent =
            Agent::configure(&ours_dir, &file_source_yaml(&desired), via, true, extra)?.spawn()?;
        agent.wait_serving(p[0], Duration::from_secs(60))?;
        agent.wait_serving(p[2], Duration::from_secs(10))?;
        Ok(agent)
    };
    let agent = start_ours("ours", ports.ours, "")?;
    let agent_full_log = start_ours(
        "ours-full-log",
        ports.ours_full_log,
        "  access_log_sample_percent: 100\n",
    )?;

    // Hand-tuned: the leanest static config for the same job.
    let hand_dir = dir.join("hand");
    std::fs::create_dir_all(&hand_dir)?;
    let hand_admin = free_port();
    let boot = hand_dir.join("envoy.json");
    std::fs::write(
        &boot,
        serde_json::to_vec_pretty(&hand_tuned(&ports, hand_admin, &cert, &key))?,
    )?;
    let hand = Envoy::start(&boot, hand_admin, &hand_dir.join("envoy.log"));

    let haproxy = start_haproxy(&dir.join("haproxy"), &ports, &pair)?;

    let pid_of = |t: Target| match t {
        Target::Direct => None,
        Target::Ours => agent.envoy_pid(),
        Target::OursFullLog => agent_full_log.envoy_pid(),
        Target::HandTuned => Some(hand.pid()),
        Target::Haproxy => Some(haproxy.pid()),
    };
    let load = |t: Target, m: Mode, d: Duration| Load {
        url: ports.url(t, m),
        threads: 2,
        connections: 64,
        duration: d,
        close: m == Mode::HttpsNewConn,
        host: None,
    };

    if !ctx.smoke {
        // Warm every path once (pools, TLS session caches, page cache).
        for m in MODES {
            for t in TARGETS {
                load(t, m, Duration::from_secs(1)).run()?;
            }
        }
    }
    let mut cells: Vec<Vec<Vec<Cell>>> = (0..MODES.len())
        .map(|_| (0..TARGETS.len()).map(|_| Vec::new()).collect())
        .collect();
    for run in 0..ctx.runs {
        for (mi, m) in MODES.iter().enumerate() {
            // Rotate the order each run so no target always goes first.
            for k in 0..TARGETS.len() {
                let ti = (k + run + mi) % TARGETS.len();
                let t = TARGETS[ti];
                let pid = pid_of(t);
                let cpu0 = pid.and_then(procs::cpu_time);
                let wrk = load(t, *m, ctx.duration).run()?;
                let cpu1 = pid.and_then(procs::cpu_time);
                let cpu_us_per_req = match (cpu0, cpu1) {
                    (Some(a), Some(b)) if wrk.requests > 0 => {
                        Some((b - a).as_secs_f64() * 1e6 / wrk.requests as f64)
                    }
                    _ => None,
                };
                eprintln!(
                    "bench: dataplane run {} {:?} {:?}: {:.0} req/s, p99 {:.2} ms, {} failed",
                    run + 1,
                    m,
                    t,
                    wrk.rps,
                    wrk.p99_ms,
                    wrk.failed()
                );
                cells[mi][ti].push(Cell {
                    wrk,
                    cpu_us_per_req,
                });
            }
        }
    }

    let rss = |pid: Option<u32>| {
        pid.and_then(procs::rss_mib)
            .map_or("-".into(), |m| fmt_num(m, 0))
    };
    let rss_cells = [
        "-".to_owned(),
        rss(agent.envoy_pid()),
        rss(agent_full_log.envoy_pid()),
        rss(Some(hand.pid())),
        rss(Some(haproxy.pid())),
    ];
    let mut tables = Vec::new();
    let mut ratios = Table::new(
        "Data plane: ours against hand-tuned Envoy and HAProxy (per-run ratios, median (min–max))",
        &[
            "mode",
            "ours / hand-tuned req/s",
            "ours / hand-tuned p99",
            "ours / HAProxy req/s",
            "target ≥ 0.95× req/s, p99 ≤ 1.10×",
            "ours, every request logged / hand-tuned req/s",
        ],
    );
    for (mi, m) in MODES.iter().enumerate() {
        let mut t = Table::new(
            &format!("Data plane: {}", m.title()),
            &[
                "target",
                "req/s",
                "× direct",
                "p50 ms",
                "p99 ms",
                "failed",
                "proxy CPU µs/req",
                "RSS MiB",
            ],
        );
        let direct = Summary::of(&rps(&cells[mi][0])).map_or(f64::NAN, |s| s.median);
        for (ti, target) in TARGETS.iter().enumerate() {
            let c = &cells[mi][ti];
            let failed: u64 = c.iter().map(|c| c.wrk.failed()).sum();
            if failed > 0 {
                findings.push(format!(
                    "data plane {:?} {:?}: {failed} failed requests",
                    m, target
                ));
            }
            let s = Summary::of(&rps(c));
            let cpu: Vec<f64> = c.iter().filter_map(|c| c.cpu_us_per_req).collect();
            t.row(vec![
                target.name().to_owned(),
                s.map_or("-".into(), |s| s.show(0)),
                s.map_or("-".into(), |s| fmt_num(s.median / direct, 2)),
                show(c.iter().map(|c| c.wrk.p50_ms), 2),
                show(c.iter().map(|c| c.wrk.p99_ms), 2),
                failed.to_string(),
                Summary::of(&cpu).map_or("-".into(), |s| s.show(1)),
                rss_cells[ti].clone(),
            ]);
        }
        let ratio = |a: usize, b: usize, f: fn(&WrkResult) -> f64| {
            let v: Vec<f64> = cells[mi][a]
                .iter()
                .zip(&cells[mi][b])
                .map(|(x, y)| f(&x.wrk) / f(&y.wrk))
                .collect();
            Summary::of(&v)
        };
        let tput = ratio(OURS, HAND_TUNED, |w| w.rps);
        let p99 = ratio(OURS, HAND_TUNED, |w| w.p99_ms);
        let vs_haproxy = ratio(OURS, HAPROXY, |w| w.rps);
        let full_log = ratio(OURS_FULL_LOG, HAND_TUNED, |w| w.rps);
        let met = tput.is_some_and(|s| s.median >= 0.95) && p99.is_some_and(|s| s.median <= 1.10);
        if !met {
            findings.push(format!(
                "data plane {:?}: ours/hand-tuned req/s {} and p99 {} miss the target",
                m,
                tput.map_or("-".into(), |s| s.show(3)),
                p99.map_or("-".into(), |s| s.show(3))
            ));
        }
        ratios.row(vec![
            m.title().to_owned(),
            tput.map_or("-".into(), |s| s.show(3)),
            p99.map_or("-".into(), |s| s.show(3)),
            vs_haproxy.map_or("-".into(), |s| s.show(3)),
            verdict(met),
            full_log.map_or("-".into(), |s| s.show(3)),
        ]);
        tables.push(t);
    }
    ratios.note(format!(
        "Each cell: `wrk -t2 -c64 -d{}s --latency` ({} runs, targets interleaved and the order rotated each run). wrk, the proxy and nginx share the machine's cores, so req/s is a whole-machine number; CPU µs per request is the portable one.",
        ctx.duration.as_secs(),
        ctx.runs
    ));
    ratios.note("Ours = `vpsie-lb-agent run` with a managed Envoy (started as the agent starts it) on three load balancers (http, https, tcp) over the same two nginx ports, with the default access log (every failure, 1 % of successes); `every request logged` = the same with `envoy.access_log_sample_percent: 100`; hand-tuned = one static listener per mode, no access log, no request ids, no `x-envoy-*` headers, no health checks, no outlier detection, `--concurrency 2`; HAProxy = `nbthread 2`, one frontend per mode.");
    ratios.note("New HTTPS connections: wrk resumes its TLS session on every reconnect, so these are TLS 1.3 resumptions, not full handshakes.");
    tables.push(ratios);
    drop((agent, agent_full_log));
    Ok(tables)
}

fn rps(cells: &[Cell]) -> Vec<f64> {
    cells.iter().map(|c| c.wrk.rps).collect()
}

fn show(values: impl Iterator<Item = f64>, digits: usize) -> String {
    let v: Vec<f64> = values.collect();
    Summary::of(&v).map_or("-".into(), |s| s.show(digits))
}

/// The best minimal Envoy config we can write for the same three jobs.
fn hand_tuned(ports: &Ports, admin: u16, cert: &Path, key: &Path) -> Value {
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http",
            "generate_request_id": false,
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backends"}}]
            }]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": true
                }
            }]
        }
    });
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                "tls_certificates": [{
                    "certificate_chain": {"filename": cert},
                    "private_key": {"filename": key}
                }]
            }
        }
    });
    let tcp = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "backends"
        }
    });
    json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [
                {"name": "http", "address": addr(ports.hand[0]), "filter_chains": [{"filters": [hcm.clone()]}]},
                {"name": "https", "address": addr(ports.hand[1]), "filter_chains": [{"filters": [hcm], "transport_socket": tls}]},
                {"name": "tcp", "address": addr(ports.hand[2]), "filter_chains": [{"filters": [tcp]}]}
            ],
            "clusters": [{
                "name": "backends",
                "type": "STATIC",
                "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "backends",
                    "endpoints": [{"lb_endpoints": ports.backends.iter().map(|p| json!({"endpoint": {"address": addr(*p)}})).collect::<Vec<_>>()}]
                }
            }]
        }
    })
}

/// HAProxy with one frontend per mode over the same two backends.
fn start_haproxy(dir: &Path, ports: &Ports, pair: &vpsie_lb_testkit::pki::Pair) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let pem = dir.join("site.pem");
    std::fs::write(&pem, format!("{}{}", pair.cert_pem, pair.key_pem))?;
    std::fs::set_permissions(&pem, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let [b1, b2] = ports.backends;
    let [h, s, t] = ports.haproxy;
    let cfg = format!(
        "global\n  nbthread 2\n  maxconn 8000\n  hard-stop-after 5s\n\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout http-keep-alive 30s\n\nfrontend fe_http\n  bind 127.0.0.1:{h}\n  default_backend be_http\n\nfrontend fe_https\n  bind 127.0.0.1:{s} ssl crt {pem} ssl-min-ver TLSv1.3\n  default_backend be_http\n\nfrontend fe_tcp\n  mode tcp\n  bind 127.0.0.1:{t}\n  default_backend be_tcp\n\nbackend be_http\n  balance roundrobin\n  server s1 127.0.0.1:{b1}\n  server s2 127.0.0.1:{b2}\n\nbackend be_tcp\n  mode tcp\n  balance roundrobin\n  server s1 127.0.0.1:{b1}\n  server s2 127.0.0.1:{b2}\n",
        pem = pem.display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let mut proc = Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log"))?;
    proc.wait_listening(&ports.haproxy)?;
    Ok(proc)
}
