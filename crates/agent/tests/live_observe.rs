//! Live: the agent's endpoints (/metrics, /healthz, /readyz, /status,
//! POST /sync), the `status` command, and that no secret leaks anywhere.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    RunningAgent, Via, agent_bin, agent_config_via, backends, lb_over, serves, write_doc,
};
use serde_json::{Value, json};
use vpsie_lb_testkit::http;
use vpsie_lb_testkit::pki;
use vpsie_lb_testkit::{free_port, poll_until};

fn metric(port: u16, series: &str) -> f64 {
    let body = http::get(port, "/metrics").expect("metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn status_cmd(port: u16, json: bool) -> std::process::Output {
    let address = format!("127.0.0.1:{port}");
    let mut args = vec!["status", "--address", address.as_str()];
    if json {
        args.push("--json");
    }
    Command::new(agent_bin())
        .args(&args)
        .output()
        .expect("run status")
}

fn endpoints_metrics_and_status_follow_what_envoy_does(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b"]);
    let (port, agent_port, admin) = (free_port(), free_port(), free_port());
    let desired = dir.path().join("desired.json");
    let mut doc = lb_over("web", "http", port, "round_robin", &bs);
    doc["health_check"] = json!({"type": "http", "path": "/healthz", "interval": 2, "timeout": 1, "healthy_threshold": 1, "unhealthy_threshold": 1});
    write_doc(&desired, &doc);
    let source = format!(
        "source: file\nfile: {}\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 127.0.0.1:{agent_port}}}\n",
        desired.display()
    );
    let agent = RunningAgent::start(
        dir.path(),
        &agent_config_via(dir.path(), admin, &source, via),
    );
    poll_until("served", Duration::from_secs(30), || serves(port, "b"));

    assert_eq!(
        http::get(agent_port, "/healthz").expect("healthz").status,
        200
    );
    poll_until("ready", Duration::from_secs(10), || {
        match http::get(agent_port, "/readyz") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status))),
        }
    });

    // promtool accepts the exposition.
    let scrape = dir.path().join("metrics.txt");
    std::fs::write(
        &scrape,
        http::get(agent_port, "/metrics").expect("metrics").body,
    )
    .expect("write");
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).expect("open"))
        .output()
        .expect("run promtool (scripts/setup.sh installs it)");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        metric(
            agent_port,
            "vpsie_lb_reconcile_passes_total{result=\"applied\"}"
        ) >= 1.0
    );
    assert_eq!(metric(agent_port, "vpsie_lb_envoy_reachable"), 1.0);
    assert!(
        metric(
            agent_port,
            "vpsie_lb_last_successful_apply_timestamp_seconds"
        ) > 1.7e9
    );

    // /status and the status command agree with Envoy.
    poll_until(
        "both backends healthy in /status",
        Duration::from_secs(10),
        || {
            let s: Value = serde_json::from_str(
                &http::get(agent_port, "/status")
                    .map_err(|e| e.to_string())?
                    .body,
            )
            .map_err(|e| e.to_string())?;
            let b = &s["load_balancers"]["web"]["backends"];
            if b[0]["healthy"] == true && b[1]["healthy"] == true {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(
        metric(
            agent_port,
            "vpsie_lb_backend_healthy{lb_id=\"web\",backend_id=\"a\"}"
        ),
        1.0
    );
    let out = status_cmd(agent_port, false);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(
        table.contains("web") && table.contains("active") && table.contains("healthy"),
        "{table}"
    );

    // A backend failing its checks shows in /status, the table and the metric, as Envoy sees it.
    bs[0].set_health(503);
    poll_until("a unhealthy everywhere", Duration::from_secs(15), || {
        let flags = http::get(admin, "/clusters")
            .map_err(|e| e.to_string())?
            .body;
        let envoy_says = flags.contains(&format!(
            "lb_web::127.0.0.1:{}::health_flags::/failed_active_hc",
            bs[0].port()
        ));
        let gauge = metric(
            agent_port,
            "vpsie_lb_backend_healthy{lb_id=\"web\",backend_id=\"a\"}",
        );
        if envoy_says && gauge == 0.0 {
            Ok(())
        } else {
            Err(format!("envoy {envoy_says}, gauge {gauge}"))
        }
    });
    let table = String::from_utf8_lossy(&status_cmd(agent_port, false).stdout).into_owned();
    assert!(table.contains("UNHEALTHY"), "{table}");
    bs[0].set_health(200);

    // A rejected document moves the rejected counter and makes status exit 2.
    let before = metric(
        agent_port,
        "vpsie_lb_reconcile_passes_total{result=\"rejected\"}",
    );
    let mut bad = doc.clone();
    bad["port"] = json!(0);
    write_doc(&desired, &bad);
    poll_until("rejected counter moves", Duration::from_secs(15), || {
        let now = metric(
            agent_port,
            "vpsie_lb_reconcile_passes_total{result=\"rejected\"}",
        );
        if now > before {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    });
    let out = status_cmd(agent_port, true);
    assert_eq!(out.status.code(), Some(2));
    let s: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(s["load_balancers"]["web"]["status"], "degraded");
    assert!(
        s["load_balancers"]["web"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("port: must be 1..=65535")),
        "{s}"
    );

    // Envoy refuses a port another process holds: rollback counted.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut refused = doc.clone();
    refused["port"] = json!(squatter.local_addr().expect("addr").port());
    write_doc(&desired, &refused);
    poll_until("rollback counted", Duration::from_secs(15), || {
        let n = metric(agent_port, "vpsie_lb_rollbacks_total");
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    // The pass is counted when it ends, after its rollback: the culprit
    // search may still be running when the rollback shows.
    poll_until(
        "the rolled-back pass counted",
        Duration::from_secs(15),
        || {
            let n = metric(
                agent_port,
                "vpsie_lb_reconcile_passes_total{result=\"rolled_back\"}",
            );
            if n >= 1.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    );
    assert!(
        serves(port, "a").is_ok() || serves(port, "b").is_ok(),
        "previous config stopped serving"
    );

    // POST /sync asks for a pass now; other methods are refused.
    let passes = |p: u16| {
        ["applied", "unchanged", "rejected", "rolled_back", "error"]
            .iter()
            .map(|r| {
                metric(
                    p,
                    &format!("vpsie_lb_reconcile_passes_total{{result=\"{r}\"}}"),
                )
            })
            .sum::<f64>()
    };
    let before = passes(agent_port);
    assert_eq!(
        http::request(None, agent_port, "POST", "/sync", &[])
            .expect("sync")
            .status,
        202
    );
    poll_until("a pass after POST /sync", Duration::from_secs(5), || {
        if passes(agent_port) > before {
            Ok(())
        } else {
            Err("no pass".into())
        }
    });
    assert_eq!(
        http::request(None, agent_port, "POST", "/metrics", &[])
            .expect("post")
            .status,
        405
    );
    drop(agent);
}

fn no_secret_reaches_logs_status_metrics_or_files(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "k3y-that-must-never-leak-91c2";
    let sim = vpsie_api_sim::Sim::new(key, None);
    let api_port = sim.spawn(0).expect("emulator").port();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, key).expect("key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let tls = pki::self_signed("lb.test");
    let (cert, private_key) = pki::write_pair(dir.path(), "server", &tls);
    let key_body: String = tls
        .key_pem
        .lines()
        .nth(1)
        .expect("a base64 line of the key")
        .to_owned();

    let bs = backends(&["a"]);
    let (port, agent_port) = (free_port(), free_port());
    let mut doc = lb_over("sec", "https", port, "round_robin", &bs);
    doc["tls_config"] = json!({"certificate_path": cert, "private_key_path": private_key});
    let r = http::send(api_port, "PUT", "/_sim/loadbalancers/sec", &doc.to_string()).expect("put");
    assert_eq!(r.status, 200);
    // A second id that the API does not know, so errors are logged too.
    let source = format!(
        "vpsie:\n  api_url: http://127.0.0.1:{api_port}/v1\n  api_key_file: {}\n  loadbalancer_ids: [sec, missing]\n  poll_interval: 1s\nagent: {{listen_address: 127.0.0.1:{agent_port}}}\n",
        key_file.display()
    );
    let agent = RunningAgent::start(
        dir.path(),
        &agent_config_via(dir.path(), free_port(), &source, via),
    );
    poll_until("https served", Duration::from_secs(30), || {
        vpsie_lb_testkit::tls::https_get(port, &Default::default(), "/").map(|_| ())
    });
    agent.wait_log(
        "the unknown id logged",
        "GET /loadbalancers/missing: status 404",
    );

    let mut seen = vec![
        ("agent log".to_owned(), agent.log()),
        (
            "/status".to_owned(),
            http::get(agent_port, "/status").expect("status").body,
        ),
        (
            "/metrics".to_owned(),
            http::get(agent_port, "/metrics").expect("metrics").body,
        ),
    ];
    for sub in ["envoy", "state"] {
        for f in walk(&dir.path().join(sub)) {
            seen.push((
                f.display().to_string(),
                std::fs::read_to_string(&f).unwrap_or_default(),
            ));
        }
    }
    for (what, text) in &seen {
        assert!(!text.contains(key), "the api key leaked into {what}");
        assert!(
            !text.contains(&key_body),
            "private key material leaked into {what}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

fn systemd_hears_ready_only_once_envoy_serves(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a"]);
    let port = free_port();
    let desired = dir.path().join("desired.json");
    write_doc(&desired, &lb_over("web", "http", port, "round_robin", &bs));
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let source = format!(
        "source: file\nfile: {}\nvpsie: {{poll_interval: 1s}}\n",
        desired.display()
    );
    let _agent = RunningAgent::start_with_env(
        dir.path(),
        &agent_config_via(dir.path(), free_port(), &source, via),
        &[("NOTIFY_SOCKET", socket_path.to_str().expect("path"))],
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within 30s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: the very first request after READY=1 succeeds.
    let first = http::get(port, "/").expect("request right after READY=1");
    assert_eq!((first.status, first.body.trim()), (200, "a"));
}

/// Every pass the agent has run, whatever its result.
fn passes(port: u16) -> f64 {
    ["applied", "unchanged", "rejected", "rolled_back", "error"]
        .iter()
        .map(|r| {
            metric(
                port,
                &format!("vpsie_lb_reconcile_passes_total{{result=\"{r}\"}}"),
            )
        })
        .sum()
}

/// The agent's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Any local process could flood the endpoints: 2,000 `POST /sync` made 123
/// fetches (a pass each, queued without bound), a request line was read
/// without a length limit, and SIGTERM waited behind the queue.
fn regression_the_agent_endpoints_could_be_flooded_by_any_local_process(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a"]);
    let (port, agent_port) = (free_port(), free_port());
    let desired = dir.path().join("desired.json");
    write_doc(&desired, &lb_over("web", "http", port, "round_robin", &bs));
    let source = format!(
        "source: file\nfile: {}\nvpsie: {{poll_interval: 1h}}\nagent: {{listen_address: 127.0.0.1:{agent_port}}}\n",
        desired.display()
    );
    let agent = RunningAgent::start(
        dir.path(),
        &agent_config_via(dir.path(), free_port(), &source, via),
    );
    poll_until("served", Duration::from_secs(30), || serves(port, "a"));

    // 10,000 syncs in a burst, from 8 clients.
    let before = passes(agent_port);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..1250 {
                    let _ = http::send(agent_port, "POST", "/sync", "");
                }
            });
        }
    });
    let burst = started.elapsed();
    poll_until("a pass after the burst", Duration::from_secs(10), || {
        if passes(agent_port) > before {
            Ok(())
        } else {
            Err("no pass yet".into())
        }
    });
    // The controller's burst of passes, then one per MIN_SYNC_GAP during
    // the flood, one pending after it, and one in flight when it began.
    let gap = vpsie_lb_agent::controller::MIN_SYNC_GAP.as_secs_f64();
    let bound = 2.0 + f64::from(vpsie_lb_agent::controller::SYNC_BURST) + burst.as_secs_f64() / gap;
    let ran = passes(agent_port) - before;
    assert!(
        ran <= bound,
        "{ran} passes for 10,000 syncs in {burst:?} (at most {bound})"
    );

    // An 8 GiB request line: the agent reads 8 KiB of it and hangs up.
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", agent_port)).expect("connect");
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let chunk = vec![b'a'; 1 << 20];
    let mut sent: u64 = conn.write(b"GET /").expect("start") as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent < 8 << 30 && std::time::Instant::now() < deadline {
        match conn.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    assert!(sent < 8 << 30, "the agent read all 8 GiB");
    let rss = rss_bytes(agent.child.id());
    eprintln!(
        "{ran} passes for 10,000 syncs in {burst:?}; {} MiB sent before the hang-up; agent RSS {} KiB",
        sent >> 20,
        rss >> 10
    );
    assert!(rss < 64 << 20, "agent RSS {} MiB", rss >> 20);
    assert_eq!(
        http::get(agent_port, "/healthz")
            .expect("healthz after")
            .status,
        200
    );

    // SIGTERM is honoured within drain_time (1 s) plus 5 s.
    let mut agent = agent;
    let status = agent.terminate(Duration::from_secs(6));
    assert!(status.success(), "agent exit {status}");
}

common::over_deliveries!(
    endpoints_metrics_and_status_follow_what_envoy_does,
    no_secret_reaches_logs_status_metrics_or_files,
    systemd_hears_ready_only_once_envoy_serves,
    regression_the_agent_endpoints_could_be_flooded_by_any_local_process,
);
