//! Live: the deregistration delay. A connection open on a backend that the
//! document removes keeps working for the delay while every new one goes
//! elsewhere, and is closed when the delay ends. Runs `vpsie-lb-agent run`,
//! which keeps the drains across passes and, with Envoy serving on, across
//! its own restarts. Closing needs `CAP_NET_ADMIN` (root here), as under
//! the packaged unit.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, lb_over, serves, write_doc};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::envoy::Envoy;
use vpsie_lb_testkit::{free_port, http, poll_until};

/// The delay the test gives the removed backend, seconds: long enough
/// to read /status while it runs.
const DELAY: u64 = 5;

/// One keep-alive HTTP/1.1 connection through the tcp proxy: each `get`
/// is answered by the backend the connection was opened to.
struct Held {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Held {
    fn open(port: u16) -> Held {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Held { stream, reader }
    }

    /// The name of the backend that answered, or why nothing did.
    fn get(&mut self) -> Result<String, String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: d.test\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err("closed".into()),
                Err(e) => return Err(format!("read: {e}")),
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// The agent's config, and the port of its endpoints.
fn config(via: Via, dir: &Path) -> (std::path::PathBuf, u16) {
    let endpoints = free_port();
    let source = format!(
        "source: file\nfile: {}/desired.json\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 127.0.0.1:{endpoints}}}\n",
        dir.display()
    );
    (agent_config_via(dir, free_port(), &source, via), endpoints)
}

/// The backends `/status` shows draining, and the drain gauge's line.
fn drains(endpoints: u16) -> Result<(Value, Option<String>), String> {
    let status = http::get(endpoints, "/status").map_err(|e| e.to_string())?;
    let status: Value = serde_json::from_str(&status.body).map_err(|e| e.to_string())?;
    let metrics = http::get(endpoints, "/metrics").map_err(|e| e.to_string())?;
    let gauge = metrics
        .body
        .lines()
        .find(|l| l.starts_with("vpsie_lb_backends_draining{"))
        .map(str::to_owned);
    Ok((status["load_balancers"]["dr"]["draining"].clone(), gauge))
}

/// Backends a and b behind the tcp load balancer `dr`, with a delay.
struct Scene {
    dir: tempfile::TempDir,
    bs: Vec<HttpBackend>,
    port: u16,
    delay: u64,
}

impl Scene {
    /// The scene with the document serving a.
    fn new(delay: u64) -> Scene {
        let scene = Scene {
            dir: tempfile::tempdir().expect("tempdir"),
            bs: backends(&["a", "b"]),
            port: free_port(),
            delay,
        };
        scene.serve(0);
        scene
    }

    /// Makes the document serve backend `i` alone.
    fn serve(&self, i: usize) {
        let mut d = lb_over("dr", "tcp", self.port, "round_robin", &self.bs[i..=i]);
        d["deregistration_delay"] = json!(self.delay);
        write_doc(&self.dir.path().join("desired.json"), &d);
    }
}

/// Waits until `/status` shows a drain, and returns it with the gauge's line.
fn wait_draining(endpoints: u16, within: Duration) -> (Value, Option<String>) {
    poll_until("a drain reported", within, || match drains(endpoints)? {
        (d, g) if d.as_array().is_some_and(|a| !a.is_empty()) => Ok((d, g)),
        other => Err(format!("{other:?}")),
    })
}

/// Waits until `held` is closed. Asking on it keeps it busy, so nothing
/// but a drain's end closes it.
fn wait_closed(held: &mut Held, within: Duration) {
    poll_until("the held connection closed", within, || match held.get() {
        Ok(name) => Err(format!("still open, answered by {name}")),
        Err(_) => Ok(()),
    });
}

fn a_removed_backend_keeps_its_connections_for_the_delay_then_they_close(via: Via) {
    let scene = Scene::new(DELAY);
    let (bs, port) = (&scene.bs, scene.port);
    let (cfg, endpoints) = config(via, scene.dir.path());
    let agent = RunningAgent::start(scene.dir.path(), &cfg);
    poll_until("a served", Duration::from_secs(30), || serves(port, "a"));
    let mut held = Held::open(port);
    assert_eq!(held.get().as_deref(), Ok("a"));

    // a leaves the document; b takes the new connections.
    scene.serve(1);
    poll_until("b served", Duration::from_secs(30), || serves(port, "b"));
    // Within the delay the held connection still reaches a, and no new
    // connection does.
    assert_eq!(held.get().as_deref(), Ok("a"), "cut before its delay ended");
    let before = bs[0].requests();
    for _ in 0..20 {
        assert_eq!(Held::open(port).get().as_deref(), Ok("b"));
    }
    assert_eq!(bs[0].requests(), before, "a new connection reached a");
    // The pass that removed a reports its drain once it has settled.
    let (draining, gauge) = wait_draining(endpoints, Duration::from_secs(DELAY));
    assert_eq!(draining[0]["id"], "a", "{draining}");
    assert_eq!(draining[0]["port"], bs[0].port(), "{draining}");
    assert_eq!(
        gauge.as_deref(),
        Some("vpsie_lb_backends_draining{lb_id=\"dr\"} 1")
    );

    // When the delay ends the held connection is closed.
    wait_closed(&mut held, Duration::from_secs(DELAY * 5));
    agent.wait_log("backend_drained event", "\"event\":\"backend_drained\"");
    assert!(
        agent.log().contains("1 connections left were closed"),
        "{}",
        agent.log()
    );
    assert_eq!(Held::open(port).get().as_deref(), Ok("b"));
    // Ended: neither /status nor the gauge shows it any more.
    poll_until(
        "the drain gone from /status",
        Duration::from_secs(10),
        || match drains(endpoints)? {
            (Value::Null, None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// A drain's end closes Envoy's connections to the backend, and only
/// those: another process of the VM holding a connection to the same
/// address and port keeps it. Before, `ss -K` closed every connection of
/// the VM to it, so a document could aim a drain at anything the VM talks to.
fn regression_a_drain_closed_an_unrelated_process_connection(via: Via) {
    let scene = Scene::new(2);
    let (bs, port) = (&scene.bs, scene.port);
    let (cfg, _) = config(via, scene.dir.path());
    let agent = RunningAgent::start(scene.dir.path(), &cfg);
    poll_until("a served", Duration::from_secs(30), || serves(port, "a"));
    let mut proxied = Held::open(port);
    assert_eq!(proxied.get().as_deref(), Ok("a"));
    // This test process is the unrelated one: straight to a, no Envoy.
    let mut unrelated = Held::open(bs[0].port());
    assert_eq!(unrelated.get().as_deref(), Ok("a"));

    scene.serve(1);
    wait_closed(&mut proxied, Duration::from_secs(30));
    agent.wait_log("backend_drained event", "\"event\":\"backend_drained\"");
    assert!(
        agent.log().contains("1 connections left were closed"),
        "{}",
        agent.log()
    );
    assert_eq!(
        unrelated.get().as_deref(),
        Ok("a"),
        "the drain closed a connection that was not envoy's"
    );
}

/// An agent killed and started again while its drain runs, with Envoy
/// serving on as under systemd (`manage: false`): the new agent resumes
/// the saved drain, so the backend gets nothing new and its connection is
/// closed when the delay ends. Before, a restart forgot the drain: the
/// backend was removed at once and its connections were never closed.
fn regression_a_restarted_agent_forgot_a_running_drain(via: Via) {
    // Long enough to outlast the restart.
    restart_during_drain(via, 15, false);
}

/// The same, with the agent away until after the drain's end: the new
/// agent closes what is left at once.
fn a_drain_that_ended_while_the_agent_was_away_is_closed_at_its_start(via: Via) {
    restart_during_drain(via, 4, true);
}

/// a drains for `delay` seconds; the agent is killed while it does, and
/// started again at once or, with `past_the_end`, once the drain's end has
/// passed. Either way the held connection to a stays open until the end
/// and is then closed by the new agent, and no new connection reaches a.
fn restart_during_drain(via: Via, delay: u64, past_the_end: bool) {
    let scene = Scene::new(delay);
    let (dir, port) = (&scene.dir, scene.port);
    let (cfg, endpoints, admin) = unmanaged(via, dir.path());
    let mut first = RunningAgent::start(dir.path(), &cfg);
    let boot = dir.path().join("envoy/bootstrap.yaml");
    poll_until("the agent's bootstrap", Duration::from_secs(20), || {
        boot.exists().then_some(()).ok_or_else(|| first.log())
    });
    let _envoy = Envoy::start(&boot, admin, &dir.path().join("envoy.log"));
    poll_until("a served", Duration::from_secs(30), || serves(port, "a"));
    let mut held = Held::open(port);
    assert_eq!(held.get().as_deref(), Ok("a"));

    scene.serve(1);
    wait_draining(endpoints, Duration::from_secs(delay));
    // The drain began before it was reported, so it ends before this.
    let end = std::time::Instant::now() + Duration::from_secs(delay);
    // Killed: nothing stops Envoy, which serves on without its agent. The
    // killed agent is kept, not dropped: dropping it kills that Envoy.
    let _ = first.child.kill();
    let _ = first.child.wait();
    assert_eq!(held.get().as_deref(), Ok("a"), "cut when the agent died");
    if past_the_end {
        poll_until(
            "the drain's end passed",
            Duration::from_secs(delay * 2),
            || {
                if std::time::Instant::now() > end {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            },
        );
    }

    let again = RunningAgent::start(dir.path(), &cfg);
    poll_until(
        "the restarted agent serving",
        Duration::from_secs(20),
        || drains(endpoints).map(|_| ()),
    );
    for _ in 0..10 {
        assert_eq!(Held::open(port).get().as_deref(), Ok("b"));
    }
    wait_closed(&mut held, Duration::from_secs(delay * 3));
    again.wait_log("backend_drained event", "\"event\":\"backend_drained\"");
    assert!(again.log().contains("resumed 1 drain(s) of the last run"));
    assert!(
        !dir.path().join("state/draining.json").exists(),
        "drains left saved"
    );
    drop(again);
    drop(first);
}

/// A drains file left corrupt (a crash of the disk, a hand edit) costs the
/// drains it held and nothing else: the restart reports it, serves the
/// last good config, and replaces the file.
fn a_corrupt_drains_file_is_reported_and_replaced_and_the_last_good_config_serves(via: Via) {
    let scene = Scene::new(DELAY);
    let (cfg, _) = config(via, scene.dir.path());
    let first = RunningAgent::start(scene.dir.path(), &cfg);
    poll_until("a served", Duration::from_secs(30), || {
        serves(scene.port, "a")
    });
    drop(first);
    let file = scene.dir.path().join("state/draining.json");
    std::fs::write(&file, "[{\"lb\": ").expect("corrupt the drains file");
    let again = RunningAgent::start(scene.dir.path(), &cfg);
    poll_until(
        "a served after the restart",
        Duration::from_secs(30),
        || serves(scene.port, "a"),
    );
    again.wait_log("the corrupt file reported", "not resumed");
    assert!(again.log().contains("draining.json"), "{}", again.log());
    poll_until("the corrupt file replaced", Duration::from_secs(20), || {
        match std::fs::read_to_string(&file) {
            Ok(text) => Err(format!("still there: {text}")),
            Err(_) => Ok(()),
        }
    });
}

/// [`config`] with Envoy not managed: the test starts it, so it outlives
/// the agent. Returns the config, the endpoints' port and Envoy's admin port.
fn unmanaged(via: Via, dir: &Path) -> (std::path::PathBuf, u16, u16) {
    let (cfg, endpoints) = config(via, dir);
    let text = std::fs::read_to_string(&cfg).expect("config");
    let admin = text
        .split("admin_address: 127.0.0.1:")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    std::fs::write(&cfg, text.replace("manage: true", "manage: false")).expect("write");
    (cfg, endpoints, admin)
}

common::over_deliveries!(
    a_removed_backend_keeps_its_connections_for_the_delay_then_they_close,
    regression_a_drain_closed_an_unrelated_process_connection,
    regression_a_restarted_agent_forgot_a_running_drain,
    a_drain_that_ended_while_the_agent_was_away_is_closed_at_its_start,
    a_corrupt_drains_file_is_reported_and_replaced_and_the_last_good_config_serves
);
