//! Live: the deregistration delay. A connection open on a backend that the
//! document removes keeps working for the delay while every new one goes
//! elsewhere, and is closed when the delay ends. Runs `vpsie-lb-agent run`,
//! which keeps the drains across passes. Closing needs `CAP_NET_ADMIN`
//! (root here), as under the packaged unit.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, lb_over, serves, write_doc};
use serde_json::json;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::{free_port, poll_until};

/// The delay the test gives the removed backend, seconds.
const DELAY: u64 = 3;

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

fn config(via: Via, dir: &Path) -> std::path::PathBuf {
    let source = format!(
        "source: file\nfile: {}/desired.json\nvpsie: {{poll_interval: 1s}}\n",
        dir.display()
    );
    agent_config_via(dir, free_port(), &source, via)
}

fn a_removed_backend_keeps_its_connections_for_the_delay_then_they_close(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs: Vec<HttpBackend> = backends(&["a", "b"]);
    let port = free_port();
    let desired = dir.path().join("desired.json");
    let doc = |keep: &[HttpBackend]| {
        let mut d = lb_over("dr", "tcp", port, "round_robin", keep);
        d["deregistration_delay"] = json!(DELAY);
        d
    };
    write_doc(&desired, &doc(&bs[..1]));
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path()));
    poll_until("a served", Duration::from_secs(30), || serves(port, "a"));
    let mut held = Held::open(port);
    assert_eq!(held.get().as_deref(), Ok("a"));

    // a leaves the document; b takes the new connections.
    write_doc(&desired, &doc(&bs[1..]));
    poll_until("b served", Duration::from_secs(30), || serves(port, "b"));
    // Within the delay the held connection still reaches a, and no new
    // connection does.
    assert_eq!(held.get().as_deref(), Ok("a"), "cut before its delay ended");
    let before = bs[0].requests();
    for _ in 0..20 {
        assert_eq!(Held::open(port).get().as_deref(), Ok("b"));
    }
    assert_eq!(bs[0].requests(), before, "a new connection reached a");

    // When the delay ends the held connection is closed. Asking on it keeps
    // it busy, so nothing but the drain's end closes it.
    poll_until(
        "the held connection closed",
        Duration::from_secs(DELAY * 5),
        || match held.get() {
            Ok(name) => Err(format!("still open, answered by {name}")),
            Err(_) => Ok(()),
        },
    );
    agent.wait_log("backend_drained event", "\"event\":\"backend_drained\"");
    assert!(
        agent.log().contains("1 connections left were closed"),
        "{}",
        agent.log()
    );
    assert_eq!(Held::open(port).get().as_deref(), Ok("b"));
}

common::over_deliveries!(a_removed_backend_keeps_its_connections_for_the_delay_then_they_close);
