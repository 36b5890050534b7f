//! Live: nothing a load balancer proxies can reach Envoy's admin API or the
//! agent's endpoints, even through a backend whose host name resolves to the
//! VM itself: both listen on Unix sockets, and Envoy's metrics are served on
//! TCP by a read-only listener.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, lb_over, serves};
use serde_json::json;
use vpsie_lb_testkit::{free_port, http, poll_until};

/// This machine's host name and the loopback address it resolves to. A host
/// name that points at the VM is what a hostile document would use.
fn name_of_this_machine() -> (String, IpAddr) {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned();
    let ip = (name.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .find(|ip| ip.is_loopback() && ip.is_ipv4())
        .unwrap_or_else(|| {
            panic!("host name {name:?} does not resolve to a loopback IPv4 address here")
        });
    (name, ip)
}

/// Ports of TCP sockets in LISTEN state that process `pid` holds.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] (hex ip:port), st is f[3], inode is f[9].
            if f.len() > 9
                && f[3] == "0A"
                && inodes.contains(f[9])
                && let Some(port) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

fn through(port: u16, method: &str, path: &str) -> http::Response {
    http::send(port, method, path, "").expect("request through the load balancer")
}

fn proxied_traffic_cannot_reach_envoy_admin_or_the_agent(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, ip) = name_of_this_machine();
    let (web, probe, stats) = (free_port(), free_port(), free_port());
    let bs = backends(&["a"]);
    let mut probe_lb = lb_over("probe", "http", probe, "round_robin", &[]);
    probe_lb["backends"] = json!([{"id": "vm", "address": host, "port": stats}]);
    let desired = dir.path().join("desired.json");
    std::fs::write(
        &desired,
        json!([lb_over("web", "http", web, "round_robin", &bs), probe_lb]).to_string(),
    )
    .expect("write doc");
    let (admin_sock, agent_sock) = (dir.path().join("admin.sock"), dir.path().join("agent.sock"));
    let source = format!(
        "source: file\nfile: {}\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 'unix:{}'}}\n",
        desired.display(),
        agent_sock.display()
    );
    let cfg = agent_config_via(dir.path(), 0, &source, via);
    // Only the test's own backend address is trusted, not all of loopback.
    let text = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace(
            "admin_address: 127.0.0.1:0",
            &format!(
                "admin_address: 'unix:{}'\n  stats_address: '{ip}:{stats}'",
                admin_sock.display()
            ),
        )
        .replace(
            "allowed_backend_networks: [127.0.0.0/8]",
            "allowed_backend_networks: [127.0.0.1/32]",
        );
    std::fs::write(&cfg, text).expect("config");
    let agent = RunningAgent::start(dir.path(), &cfg);
    poll_until("web served", Duration::from_secs(30), || serves(web, "a"));

    // The probe's backend is the VM itself, through a host name: it gets
    // the read-only listener, which answers the metrics and nothing else.
    let metrics = poll_until("metrics through the probe", Duration::from_secs(30), || {
        let r = through(probe, "GET", "/stats/prometheus");
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    assert!(
        metrics.body.contains("envoy_server_live"),
        "{}",
        metrics.body
    );
    for (method, path) in [
        ("POST", "/quitquitquit"),
        ("GET", "/config_dump"),
        ("POST", "/runtime_modify?x=1"),
        ("POST", "/healthcheck/fail"),
        ("POST", "/drain_listeners"),
        ("POST", "/stats/prometheus"),
        ("GET", "/clusters"),
    ] {
        let r = through(probe, method, path);
        assert_eq!(
            r.status, 404,
            "{method} {path} through a listener: {} {}",
            r.status, r.body
        );
    }
    serves(web, "a").expect("envoy still serves after the attempts");

    // No TCP port reaches the admin API or the agent at all.
    let envoy = agent.envoy_pids();
    assert_eq!(envoy.len(), 1, "{envoy:?}");
    assert_eq!(
        listening_ports(envoy[0]),
        BTreeSet::from([web, probe, stats]),
        "envoy listens on the load balancers and the metrics listener only"
    );
    assert_eq!(
        listening_ports(agent.child.id()),
        BTreeSet::new(),
        "the agent listens on no tcp port"
    );
    // Both answer on their sockets, which are not for everyone.
    let status = std::process::Command::new(common::agent_bin())
        .args([
            "status",
            "--address",
            &format!("unix:{}", agent_sock.display()),
        ])
        .output()
        .expect("status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("probe"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    for sock in [&admin_sock, &agent_sock] {
        let mode = std::fs::metadata(sock)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660, "{}", sock.display());
    }

    // A document whose backends reach the VM itself is refused by the
    // running agent, each address with its field, and nothing changes.
    let mut evil = lb_over("evil", "tcp", free_port(), "round_robin", &[]);
    evil["backends"] = json!([
        {"id": "lo", "address": "127.0.0.2", "port": 22},
        {"id": "meta", "address": "169.254.169.254", "port": 80},
        {"id": "mapped", "address": "::ffff:127.0.0.3", "port": 9901},
        {"id": "name", "address": "localhost", "port": 22},
    ]);
    std::fs::write(
        &desired,
        json!([lb_over("web", "http", web, "round_robin", &bs), evil]).to_string(),
    )
    .expect("write doc");
    for field in [
        "backends[0].address: 127.0.0.2 is a loopback address",
        "backends[1].address: 169.254.169.254 is a link-local address",
        "backends[2].address: ::ffff:127.0.0.3 is a loopback address",
        "backends[3].address: localhost always means the load balancer VM itself",
    ] {
        agent.wait_log("the refusal names each address", field);
    }
    assert!(agent.log().contains("\"event\":\"config_rejected\""));
    serves(web, "a").expect("the rest keeps serving");
}

common::over_deliveries!(proxied_traffic_cannot_reach_envoy_admin_or_the_agent,);
