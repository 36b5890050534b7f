//! Live: one udp client cannot take every session of a load balancer. The
//! agent, its Envoy and the backend run in a network namespace of their
//! own, the clients in another, joined by a bridge: the kernel's bounds see
//! the clients arrive on an interface, as they would on a VM, and nothing
//! here touches this machine's own firewall.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{RunningAgent, Via, agent_config_via, write_doc};
use serde_json::{Value, json};
use vpsie_lb_testkit::netns::{Lan, in_netns};
use vpsie_lb_testkit::udp_backend::UdpBackend;
use vpsie_lb_testkit::{free_port, poll_until};

const LB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The client that tries to take everything.
const GREEDY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);
/// Everyone else.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 6);

/// The load balancer and its clients, each side in its own namespace.
/// Fields drop in order: the agent and the backend before their namespace.
struct UdpLab {
    agent: RunningAgent,
    _backend: UdpBackend,
    _dir: tempfile::TempDir,
    port: u16,
    agent_port: u16,
    lan: Lan,
}

impl UdpLab {
    /// `doc`'s load balancer on `port` in front of a backend, served by an
    /// agent in namespace `{stem}{f|x}-lb`, delivering `via` (each
    /// delivery's test runs at once, so each needs namespaces of its own).
    fn start(stem: &str, via: Via, doc: impl Fn(u16, u16) -> Value) -> UdpLab {
        Self::start_with(stem, via, "", doc)
    }

    /// [`UdpLab::start`], with `guard` added to the agent's `udp_guard`
    /// settings (`key: value, ...`).
    fn start_with(stem: &str, via: Via, guard: &str, doc: impl Fn(u16, u16) -> Value) -> UdpLab {
        let prefix = match via {
            Via::Files => format!("{stem}f"),
            Via::Xds => format!("{stem}x"),
        };
        let mut lan = Lan::new(&prefix).expect("lan");
        lan.add("lb", LB).expect("lb namespace");
        lan.add("cli", GREEDY).expect("client namespace");
        lan.ns("cli")
            .ip(&["addr", "add", &format!("{OTHER}/24"), "dev", "eth0"])
            .expect("second client address");
        let ns = lan.ns("lb").name().to_owned();
        let backend = in_netns(&ns, || UdpBackend::start("u1")).expect("backend in its namespace");
        let (port, agent_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        write_doc(
            &dir.path().join("desired.json"),
            &json!([doc(port, backend.port())]),
        );
        let config = config(dir.path(), agent_port, via, guard);
        let agent = RunningAgent::start_in(&ns, dir.path(), &config);
        UdpLab {
            agent,
            _backend: backend,
            _dir: dir,
            port,
            agent_port,
            lan,
        }
    }

    /// Sends one datagram from each of `n` new sockets on `from` (so `n`
    /// new sessions) and counts the answers.
    fn sessions(&self, from: Ipv4Addr, n: usize) -> usize {
        let (port, ns) = (self.port, self.lan.ns("cli").name().to_owned());
        in_netns(&ns, move || answered(from, port, n)).expect("client in its namespace")
    }

    /// The agent's metrics, read inside its namespace.
    fn metrics(&self) -> String {
        let (port, ns) = (self.agent_port, self.lan.ns("lb").name().to_owned());
        in_netns(&ns, move || {
            vpsie_lb_testkit::http::get(port, "/metrics")
                .map(|r| r.body)
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// `nft list tables` in the load balancer's namespace.
    fn tables(&self) -> String {
        let out = self
            .lan
            .ns("lb")
            .command("nft")
            .args(["list", "tables"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        self.agent.log()
    }
}

/// The agent's config: Envoy listens on every address of its namespace,
/// and the kernel's udp bounds are on (the default).
fn config(dir: &Path, agent_port: u16, via: Via, guard: &str) -> std::path::PathBuf {
    let guard = if guard.is_empty() {
        String::new()
    } else {
        format!(", {guard}")
    };
    let source = format!(
        "source: file\nfile: {}/desired.json\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 127.0.0.1:{agent_port}}}\nudp_guard: {{table: vpsie_lb{guard}}}\n",
        dir.display()
    );
    let path = agent_config_via(dir, free_port(), &source, via);
    let text = std::fs::read_to_string(&path).expect("config");
    let everywhere = text.replace(
        "  listen_address: 127.0.0.1\n",
        "  listen_address: 0.0.0.0\n",
    );
    assert_ne!(text, everywhere, "the envoy listen address was not found");
    std::fs::write(&path, everywhere).expect("write config");
    path
}

/// `n` sessions from `from`, all sent before any answer is awaited, so
/// every one of them is open at once; how many were answered within a
/// second.
fn answered(from: Ipv4Addr, port: u16, n: usize) -> usize {
    let mut waiting: Vec<UdpSocket> = (0..n)
        .map(|i| {
            let s = UdpSocket::bind((from, 0)).expect("bind client");
            s.set_nonblocking(true).expect("nonblocking");
            s.send_to(format!("s{i}").as_bytes(), (LB, port))
                .expect("send");
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut answers = 0;
    while !waiting.is_empty() && Instant::now() < deadline {
        let before = waiting.len();
        waiting.retain(|s| {
            let mut buf = [0u8; 256];
            match s.recv_from(&mut buf) {
                Ok((len, _)) => {
                    answers += usize::from(buf[..len].starts_with(b"u1:"));
                    false
                }
                Err(_) => true,
            }
        });
        if waiting.len() == before {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    answers
}

/// A udp load balancer of 100 sessions, a client allowed `per_client`.
fn udp_lb(port: u16, backend: u16, per_client: Value, idle: u32) -> Value {
    json!({
        "id": "game", "name": "game", "protocol": "udp", "port": port,
        "max_connections": 100,
        "timeouts": {"idle": idle},
        "per_client": per_client,
        "backends": [{"id": "u1", "address": "127.0.0.1", "port": backend}],
    })
}

/// Polls until `OTHER` gets an answer: Envoy serves the load balancer.
fn wait_served(lab: &UdpLab) {
    poll_until(
        "the udp load balancer served",
        Duration::from_secs(30),
        || {
            if lab.sessions(OTHER, 1) == 1 {
                Ok(())
            } else {
                Err(lab.log())
            }
        },
    );
}

/// The finding: one client with 100 source ports took all 100 sessions and
/// locked everyone out for the idle timeout. Now it gets its 10, the next
/// client is still served, the refusals are counted under the load
/// balancer, and once its sessions idle out the client may open new ones.
fn udp_one_client_cannot_take_every_session(via: Via) {
    let mut lab = UdpLab::start("ug", via, |port, backend| {
        udp_lb(port, backend, json!({"max_sessions": 10}), 3)
    });
    wait_served(&lab);

    let greedy = lab.sessions(GREEDY, 100);
    assert!(
        (1..=10).contains(&greedy),
        "one client held {greedy} sessions, past its 10"
    );
    // Its poll for the listener holds one session already.
    assert_eq!(lab.sessions(OTHER, 5), 5, "another client was locked out");
    poll_until("refusals counted", Duration::from_secs(10), || {
        let m = lab.metrics();
        let line = r#"vpsie_lb_udp_sessions_refused_total{lb_id="game",limit="sessions"}"#;
        let refused = m
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse::<u64>().ok());
        match refused {
            Some(n) if n >= 90 => Ok(()),
            _ => Err(m),
        }
    });
    // Bounds are on sessions open now, not on a client for ever.
    poll_until(
        "the client's sessions idled out",
        Duration::from_secs(30),
        || {
            let again = lab.sessions(GREEDY, 5);
            if again == 5 {
                Ok(())
            } else {
                Err(format!("{again} of 5 new sessions answered"))
            }
        },
    );
    // The agent's Envoy stops with it, and so do the bounds.
    assert!(lab.tables().contains("vpsie_lb"), "{}", lab.tables());
    assert!(lab.agent.terminate(Duration::from_secs(30)).success());
    assert!(!lab.tables().contains("vpsie_lb"), "{}", lab.tables());
}

/// A client may start only `new_sessions_per_second` (after its burst),
/// however far below its count it is.
fn a_udp_client_starts_sessions_no_faster_than_its_rate(via: Via) {
    let lab = UdpLab::start("ur", via, |port, backend| {
        udp_lb(
            port,
            backend,
            json!({"max_sessions": 50, "new_sessions_per_second": 1, "burst": 5}),
            60,
        )
    });
    wait_served(&lab);
    // 30 at once: the burst goes through, and at one a second at most a
    // few more in the time the sends take.
    let greedy = lab.sessions(GREEDY, 30);
    assert!(
        (1..=8).contains(&greedy),
        "{greedy} of 30 sessions started at once, past a burst of 5"
    );
    assert_eq!(lab.sessions(OTHER, 5), 5, "another client's rate was spent");
}

/// A client the full set of tracked clients had no room for was let
/// through uncounted, so past 65,536 sources (a /48 of IPv6 clients, or
/// spoofed ones) nobody was bounded. Now it is refused until a tracked
/// client's sessions end and the kernel drops that client from the set.
/// Here the set holds one client.
fn regression_a_full_client_set_let_new_clients_through_unbounded(via: Via) {
    let lab = UdpLab::start_with("uf", via, "tracked_clients: 1", |port, backend| {
        udp_lb(port, backend, json!({"max_sessions": 10}), 5)
    });
    wait_served(&lab);
    // OTHER holds the one place (and renews it now, well within its 6 s).
    assert_eq!(lab.sessions(OTHER, 1), 1, "the tracked client was refused");
    assert_eq!(lab.sessions(GREEDY, 3), 0, "an untracked client was served");
    poll_until(
        "the other client served once the set has room",
        Duration::from_secs(30),
        || match lab.sessions(GREEDY, 1) {
            1 => Ok(()),
            _ => Err(lab.tables()),
        },
    );
}

common::over_deliveries!(
    regression_a_full_client_set_let_new_clients_through_unbounded,
    udp_one_client_cannot_take_every_session,
    a_udp_client_starts_sessions_no_faster_than_its_rate,
);
