//! The WAF against its reference connector: our load balancer with
//! `vpsie-lb-waf`, and nginx with ModSecurity-nginx, on the same library,
//! the same rule text and the same backends, each also without its WAF,
//! loaded in turn. CPU per request is the portable number: ours is Envoy's
//! and the service's, nginx's is its one process's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use vpsie_lb_model::ValidateOptions;
use vpsie_lb_testkit::free_port;
use vpsie_lb_waf::config::{Mode, Policy};
use vpsie_lb_waf::engine::{DEFAULT_CRS_DIR, DEFAULT_CRS_SETUP, Engine};

use crate::lab::{Agent, Via, file_source_yaml, lb_doc};
use crate::procs::{self, Proc};
use crate::report::{Summary, Table, verdict};
use crate::wrk::Load;
use crate::{Ctx, Findings};

/// The target: our CPU per inspected request at most this many
/// times the reference connector's.
const TARGET: f64 = 1.1;

/// One proxy loaded: where, and whose CPU time counts (the first
/// process is the proxy itself; any other is a helper, like the WAF).
struct Target {
    name: &'static str,
    port: u16,
    pids: Vec<u32>,
}

/// nginx as a proxy over `upstreams` on `port`, as one process (so its CPU
/// time is all in one place), with ModSecurity on `rules` when given.
fn nginx_proxy(dir: &Path, port: u16, upstreams: &[u16], rules: Option<&Path>) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p};\n"))
        .collect();
    let (module, waf) = match rules {
        Some(r) => (
            "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;\n".to_owned(),
            format!(
                "    modsecurity on;\n    modsecurity_rules_file {};\n",
                r.display()
            ),
        ),
        None => (String::new(), String::new()),
    };
    let conf = format!(
        "{module}master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream backends {{\n{servers}    keepalive 64;\n  }}\n\
           server {{\n    listen 127.0.0.1:{port};\n{waf}\
             location / {{ proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&path).arg("-p").arg(dir);
    let mut proc = Proc::spawn("nginx", &mut cmd, &dir.join("nginx.out"))?;
    proc.wait_listening(&[port])?;
    Ok(proc)
}

/// What the agent tells the in-Envoy filter for the load balancer `doc`:
/// its listener's settings and its routes' (the policy).
fn filter_settings(doc: &Value) -> Result<(String, String)> {
    let opts = ValidateOptions {
        allowed_backend_networks: vec!["127.0.0.0/8".parse().map_err(anyhow::Error::msg)?],
        ..Default::default()
    };
    let valid = vpsie_lb_model::validate_str(&json!([doc]).to_string(), &opts)
        .map_err(|e| anyhow::anyhow!("the guarded document: {e:?}"))?;
    let lb = valid
        .config
        .load_balancers
        .first()
        .context("one load balancer")?;
    vpsie_lb_envoy::in_envoy_settings(lb).context("a load balancer with a waf")
}

/// Envoy alone (no agent) over `upstreams` on `port`, with our WAF as an
/// in-process filter (`vpsie-lb-waf-filter`) with `settings` when given:
/// the prototype that drops the ext_authz hop. Its listener has only that
/// filter and the router, so its plain twin is measured beside it.
fn envoy_proxy(
    dir: &Path,
    port: u16,
    upstreams: &[u16],
    settings: Option<&(String, String)>,
) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let endpoints: Vec<_> = upstreams
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    // As the agent configures the filter (`vpsie_lb_envoy::in_envoy_settings`):
    // who and `fail_open` on the listener, the policy on the routes.
    let module = json!({"name": "vpsie_lb_waf_filter", "do_not_close": true});
    let text = |v: &String| json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": v});
    let mut filters = Vec::new();
    let mut per_route = json!({});
    if let Some((listener, route)) = settings {
        filters.push(json!({
            "name": "vpsie_lb.waf",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": module,
                "filter_name": "waf",
                "filter_config": text(listener),
            },
        }));
        per_route = json!({"vpsie_lb.waf": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute",
            "dynamic_module_config": module,
            "filter_name": "waf",
            "filter_config": text(route),
        }});
    }
    filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "l",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "b"}}],
                            "typed_per_filter_config": per_route}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "b",
                "type": "STATIC",
                "load_assignment": {"cluster_name": "b", "endpoints": [{"lb_endpoints": endpoints}]},
            }],
        },
    });
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)?;
    let module = crate::lab::sibling_binary("libvpsie_lb_waf_filter.so")?;
    let mut cmd = Command::new(vpsie_lb_testkit::envoy::envoy_bin());
    cmd.arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "-l", "warning"])
        .env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            module.parent().unwrap_or(Path::new(".")),
        );
    let mut proc = Proc::spawn("envoy", &mut cmd, &dir.join("envoy.log"))?;
    proc.wait_listening(&[port])?;
    Ok(proc)
}

/// Runs the comparison and returns its table.
pub fn run(ctx: &Ctx, findings: &mut Findings, dir: &Path, pool: &[(u16, u32)]) -> Result<Table> {
    std::fs::create_dir_all(dir)?;
    let policy = Policy {
        mode: Mode::Block,
        paranoia_level: 1,
        exclusions: Vec::new(),
        oversize_body: Default::default(),
    };
    let rules = dir.join("modsecurity.conf");
    let engine = Engine::new(Path::new(DEFAULT_CRS_DIR), Path::new(DEFAULT_CRS_SETUP));
    std::fs::write(&rules, engine.rules_text(&policy))?;
    drop(engine);
    let upstreams: Vec<u16> = pool.iter().map(|(p, _)| *p).collect();
    let (nginx_plain_port, nginx_waf_port) = (free_port(), free_port());
    let nginx_plain = nginx_proxy(&dir.join("nginx-plain"), nginx_plain_port, &upstreams, None)?;
    let nginx_waf = nginx_proxy(
        &dir.join("nginx-waf"),
        nginx_waf_port,
        &upstreams,
        Some(&rules),
    )?;

    let (plain_port, waf_port) = (free_port(), free_port());
    let mut guarded = lb_doc("guarded", "http", waf_port, pool);
    guarded["waf"] = json!({"mode": "block", "paranoia_level": 1});

    let (lone_plain_port, lone_waf_port) = (free_port(), free_port());
    let lone_plain = envoy_proxy(&dir.join("envoy-plain"), lone_plain_port, &upstreams, None)?;
    let lone_waf = envoy_proxy(
        &dir.join("envoy-waf"),
        lone_waf_port,
        &upstreams,
        Some(&filter_settings(&guarded)?),
    )?;

    let ours_dir = dir.join("ours");
    std::fs::create_dir_all(&ours_dir)?;
    let (service, socket) = crate::lab::waf_service(&ours_dir)?;
    let docs = json!([lb_doc("plain", "http", plain_port, pool), guarded]);
    let desired = ours_dir.join("desired.json");
    std::fs::write(&desired, serde_json::to_vec(&docs)?)?;
    let yaml = format!("  waf_socket: {}\n", socket.display());
    let via = Via::default_of_agent();
    let mut agent =
        Agent::configure(&ours_dir, &file_source_yaml(&desired), via, true, &yaml)?.spawn()?;
    agent.wait_serving(plain_port, Duration::from_secs(60))?;
    agent.wait_serving(waf_port, Duration::from_secs(10))?;
    let envoy: Vec<u32> = agent.envoy_pid().into_iter().collect();
    let with_service: Vec<u32> = envoy.iter().copied().chain([service.pid()]).collect();
    let targets = [
        Target {
            name: "vpsie-lb, no WAF",
            port: plain_port,
            pids: envoy,
        },
        Target {
            name: "vpsie-lb + vpsie-lb-waf",
            port: waf_port,
            pids: with_service,
        },
        Target {
            name: "nginx, no WAF",
            port: nginx_plain_port,
            pids: vec![nginx_plain.pid()],
        },
        Target {
            name: "nginx + ModSecurity-nginx",
            port: nginx_waf_port,
            pids: vec![nginx_waf.pid()],
        },
        Target {
            name: "Envoy alone, no WAF",
            port: lone_plain_port,
            pids: vec![lone_plain.pid()],
        },
        Target {
            name: "Envoy alone + vpsie-lb-waf-filter (in process)",
            port: lone_waf_port,
            pids: vec![lone_waf.pid()],
        },
    ];
    let samples = load_in_turn(ctx, findings, &targets)?;
    Ok(table(ctx, findings, &targets, &samples))
}

/// Per target, per run: (req/s, p99 ms, CPU µs per request, of which the
/// helpers').
type Samples = Vec<Vec<(f64, f64, f64, f64)>>;

/// Loads each target in turn, `ctx.runs` times, the order rotated per run.
fn load_in_turn(ctx: &Ctx, findings: &mut Findings, targets: &[Target]) -> Result<Samples> {
    let load = |t: &Target, d: Duration| Load {
        url: format!("http://127.0.0.1:{}/", t.port),
        threads: 2,
        connections: 64,
        duration: d,
        close: false,
        // A name, as real clients send: `127.0.0.1:port` matches rule
        // 920350 (a numeric Host), and every request would be a logged match.
        host: Some("shop.example.com".into()),
    };
    if !ctx.smoke {
        for t in targets {
            load(t, Duration::from_secs(1)).run()?;
        }
    }
    let cpu = |pids: &[u32]| -> Duration { pids.iter().filter_map(|p| procs::cpu_time(*p)).sum() };
    let mut samples: Samples = targets.iter().map(|_| Vec::new()).collect();
    for run in 0..ctx.runs {
        for k in 0..targets.len() {
            let i = (k + run) % targets.len();
            let t = &targets[i];
            let before = (cpu(&t.pids), cpu(&t.pids[1..]));
            let w = load(t, ctx.duration).run()?;
            let spent = cpu(&t.pids).saturating_sub(before.0);
            let helpers = cpu(&t.pids[1..]).saturating_sub(before.1);
            if w.failed() > 0 {
                findings.push(format!(
                    "waf reference: {}: {} failed requests",
                    t.name,
                    w.failed()
                ));
            }
            if w.requests > 0 {
                let per_request = |d: Duration| d.as_secs_f64() * 1e6 / w.requests as f64;
                samples[i].push((w.rps, w.p99_ms, per_request(spent), per_request(helpers)));
            }
            eprintln!(
                "bench: waf reference run {} {}: {:.0} req/s, p99 {:.2} ms",
                run + 1,
                t.name,
                w.rps,
                w.p99_ms
            );
        }
    }
    Ok(samples)
}

/// The table: each target's numbers, then ours over the reference per run.
fn table(ctx: &Ctx, findings: &mut Findings, targets: &[Target], samples: &Samples) -> Table {
    let mut t = Table::new(
        "Protection: the WAF against the reference connector (nginx with ModSecurity-nginx, same rules, paranoia level 1, block)",
        &[
            "proxy",
            "req/s",
            "p99 ms",
            "CPU µs/req",
            "of which the WAF service",
        ],
    );
    let show = |i: usize, f: fn(&(f64, f64, f64, f64)) -> f64, d: usize| {
        Summary::of(&samples[i].iter().map(f).collect::<Vec<_>>()).map_or("-".into(), |s| s.show(d))
    };
    for (i, target) in targets.iter().enumerate() {
        t.row(vec![
            target.name.to_owned(),
            show(i, |s| s.0, 0),
            show(i, |s| s.1, 2),
            show(i, |s| s.2, 1),
            if target.pids.len() > 1 {
                show(i, |s| s.3, 1)
            } else {
                String::new()
            },
        ]);
    }
    // Per run: the whole request, and what the WAF adds to its proxy.
    let per_run = |f: &dyn Fn(usize) -> f64| -> Option<Summary> {
        let n = samples.iter().map(Vec::len).min().unwrap_or(0);
        Summary::of(&(0..n).map(f).collect::<Vec<_>>())
    };
    let cpu = |i: usize, r: usize| samples[i][r].2;
    let whole = per_run(&|r| cpu(1, r) / cpu(3, r));
    let added = per_run(&|r| (cpu(1, r) - cpu(0, r)) / (cpu(3, r) - cpu(2, r)));
    let met = whole.is_some_and(|s| s.median <= TARGET);
    let shown = |s: Option<Summary>| s.map_or("-".into(), |s| s.show(2));
    if !met {
        findings.push(format!(
            "waf reference: ours / nginx + ModSecurity CPU per request {} misses ≤ {TARGET}×",
            shown(whole)
        ));
    }
    t.row(vec![
        format!(
            "ours / reference, CPU per request (target ≤ {TARGET}×: {})",
            verdict(met)
        ),
        String::new(),
        String::new(),
        shown(whole),
        String::new(),
    ]);
    t.row(vec![
        "ours / reference, CPU the WAF adds".into(),
        String::new(),
        String::new(),
        shown(added),
        String::new(),
    ]);
    // The in-process prototype against the same reference.
    let inproc = per_run(&|r| cpu(5, r) / cpu(3, r));
    let inproc_added = per_run(&|r| (cpu(5, r) - cpu(4, r)) / (cpu(3, r) - cpu(2, r)));
    let inproc_met = inproc.is_some_and(|s| s.median <= TARGET);
    t.row(vec![
        format!(
            "in-process filter / reference, CPU per request (target ≤ {TARGET}×: {})",
            verdict(inproc_met)
        ),
        String::new(),
        String::new(),
        shown(inproc),
        String::new(),
    ]);
    t.row(vec![
        "in-process filter / reference, CPU the WAF adds".into(),
        String::new(),
        String::new(),
        shown(inproc_added),
        String::new(),
    ]);
    t.note(format!(
        "Six proxies over the same two nginx backends, loaded in turn (`wrk -t2 -c64 -d{}s` asking for `/`, {} runs, the order rotated each run): our agent's Envoy with two http load balancers, one with `waf: {{mode: block, paranoia_level: 1}}` and `vpsie-lb-waf` beside it; and nginx as one process (`master_process off`), once plain and once with ModSecurity-nginx loading the rule text the service compiles (`Engine::rules_text`); and Envoy alone (a static bootstrap, only the router), once plain and once with `vpsie-lb-waf-filter`, the same engine and rules as an Envoy dynamic module on Envoy's worker threads. CPU per request: Envoy's (and the service's) user and system time over the run, or nginx's, divided by the requests served. Ratios are per run, median (min–max). In-process, without Envoy or gRPC, an inspection of this request costs about 0.5 ms (`cargo run --release -p vpsie-lb-waf --example inspect_cost`).",
        ctx.duration.as_secs(),
        ctx.runs
    ));
    t
}
