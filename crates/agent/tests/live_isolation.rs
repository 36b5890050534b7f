//! Live: a load balancer whose document Envoy refuses (our validation
//! cannot see why) never holds back, or is blamed for, another's change.
//! The real agent, a managed Envoy, both deliveries, and three kinds of
//! refusal: a certificate Envoy cannot load, a key that is not the
//! certificate's, and a port another process holds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Load, RunningAgent, Via, agent_config_via, backends, lb_over, serves, write_doc};
use serde_json::{Value, json};
use vpsie_lb_testkit::{free_port, pki, poll_until};

/// How a load balancer can pass our validation and still be refused by Envoy.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `certificate_path` names a file that is no certificate.
    UnloadableCertificate,
    /// `private_key_path` is another certificate's key.
    KeyOfAnotherCertificate,
    /// Its port is held by a process that is not Envoy.
    PortTaken,
}

/// The refused load balancer "culprit", and what must stay alive while it is
/// refused (the socket holding its port).
fn bad_lb(kind: Refusal, dir: &Path, backend: u16) -> (Value, Option<std::net::TcpListener>) {
    let port = free_port();
    let mut doc = common::lb(
        "culprit",
        "https",
        port,
        "round_robin",
        &[("x", backend, 0)],
    );
    let (cert, key) = pki::write_pair(dir, "culprit", &pki::self_signed("culprit.test"));
    let mut held = None;
    let (cert, key) = match kind {
        Refusal::UnloadableCertificate => {
            let junk = common::write(dir, "junk.crt", "-----BEGIN CERTIFICATE-----\nnot one\n");
            (junk, key)
        }
        Refusal::KeyOfAnotherCertificate => {
            let (_, other) = pki::write_pair(dir, "other", &pki::self_signed("other.test"));
            (cert, other)
        }
        Refusal::PortTaken => {
            held = Some(std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port"));
            (cert, key)
        }
    };
    doc["tls_config"] = json!({"certificate_path": cert, "private_key_path": key});
    (doc, held)
}

/// The agent's config: a file source polled every second, endpoints on `agent`.
fn config(via: Via, dir: &Path, agent: u16) -> PathBuf {
    let source = format!(
        "source: file\nfile: {}/desired.json\nvpsie: {{poll_interval: 1s}}\nagent: {{listen_address: 127.0.0.1:{agent}}}\n",
        dir.display()
    );
    agent_config_via(dir, free_port(), &source, via)
}

/// The agent's `/status`.
fn status(agent: u16) -> Result<Value, String> {
    let r = vpsie_lb_testkit::http::get(agent, "/status").map_err(|e| e.to_string())?;
    serde_json::from_str(&r.body).map_err(|e| e.to_string())
}

/// The agent's log lines about load balancer `id`.
fn lines_of(agent: &RunningAgent, id: &str) -> Vec<String> {
    let tag = format!("\"lb_id\":\"{id}\"");
    agent
        .log()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

fn a_refused_load_balancer_never_holds_back_another(via: Via, kind: Refusal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b", "c"]);
    let port = free_port();
    let desired = dir.path().join("desired.json");
    write_doc(
        &desired,
        &json!([lb_over("web", "http", port, "round_robin", &bs[..1])]),
    );
    let agent_port = free_port();
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path(), agent_port));
    poll_until("first config served", Duration::from_secs(30), || {
        serves(port, "a")
    });
    let load = Load::start(port);
    load.wait_for_more(20);

    // The culprit appears while web changes.
    let (bad, _held) = bad_lb(kind, dir.path(), bs[0].port());
    let web = lb_over("web", "http", port, "round_robin", &bs[..2]);
    let changed = Instant::now();
    write_doc(&desired, &json!([web, bad.clone()]));
    poll_until("web's change served", Duration::from_secs(30), || {
        serves(port, "b")
    });
    let took = changed.elapsed();
    eprintln!("{kind:?} over {via:?}: web's change served after {took:?} (poll 1 s)");
    let s = poll_until("bad parked, web confirmed", Duration::from_secs(30), || {
        let s = status(agent_port)?;
        let lbs = &s["load_balancers"];
        if lbs["web"]["status"] == "active" && lbs["culprit"]["status"] == "error" {
            Ok(s)
        } else {
            Err(format!("{s}\n{}", agent.log()))
        }
    });
    let web_status = &s["load_balancers"]["web"];
    assert_eq!(web_status["applied_version"], web_status["desired_version"]);
    assert_eq!(web_status["last_error"], Value::Null, "{s}");
    assert!(
        s["load_balancers"]["culprit"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("envoy")),
        "{s}"
    );
    // Nothing of bad's refusal reaches web's events, status or metrics.
    let web_lines = lines_of(&agent, "web");
    assert!(
        web_lines
            .iter()
            .any(|l| l.contains("\"event\":\"config_applied\"")),
        "{web_lines:#?}"
    );
    for line in &web_lines {
        assert!(
            !line.contains("rolled_back")
                && !line.contains("rejected")
                && !line.contains("culprit"),
            "web was told of bad's refusal: {line}"
        );
    }
    let bad_lines = lines_of(&agent, "culprit");
    let metrics = vpsie_lb_testkit::http::get(agent_port, "/metrics")
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("vpsie_lb_load_balancer_status{lb_id=\"web\",status=\"active\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vpsie_lb_load_balancer_status{lb_id=\"culprit\",status=\"error\"} 1"),
        "{metrics}"
    );

    // bad stays refused; web's next change goes through as if it were not there.
    let refusals = |lines: &[String]| {
        let told = |l: &&String| l.contains("config_rolled_back") || l.contains("config_rejected");
        lines.iter().filter(told).count()
    };
    let told = refusals(&bad_lines);
    assert_eq!(told, 1, "bad is told once: {bad_lines:#?}");
    let web = lb_over("web", "http", port, "round_robin", &bs[2..]);
    write_doc(&desired, &json!([web, bad]));
    poll_until("web's next change served", Duration::from_secs(30), || {
        serves(port, "c")
    });
    poll_until(
        "web's next change confirmed",
        Duration::from_secs(30),
        || {
            let s = status(agent_port)?;
            let web = &s["load_balancers"]["web"];
            if web["status"] == "active" && web["applied_version"] == web["desired_version"] {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
    let (answered, failed) = load.stop();
    assert!(
        answered > 0 && failed.is_empty(),
        "web's traffic failed: {failed:?}"
    );
    assert_eq!(
        refusals(&lines_of(&agent, "culprit")),
        told,
        "bad was tried again though its document did not change"
    );
}

fn regression_an_unloadable_certificate_froze_everyones_changes(via: Via) {
    a_refused_load_balancer_never_holds_back_another(via, Refusal::UnloadableCertificate);
}

fn regression_a_key_of_another_certificate_froze_everyones_changes(via: Via) {
    a_refused_load_balancer_never_holds_back_another(via, Refusal::KeyOfAnotherCertificate);
}

fn regression_a_port_another_process_holds_froze_everyones_changes(via: Via) {
    a_refused_load_balancer_never_holds_back_another(via, Refusal::PortTaken);
}

common::over_deliveries!(
    regression_an_unloadable_certificate_froze_everyones_changes,
    regression_a_key_of_another_certificate_froze_everyones_changes,
    regression_a_port_another_process_holds_froze_everyones_changes,
);
