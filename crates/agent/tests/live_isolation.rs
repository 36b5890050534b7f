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

/// Three shapes that each take one load balancer to a cap of what its
/// routes may translate to: bytes (4 KiB bodies in every virtual host),
/// routes (300 host names and 31 host-less routes), and regexes.
fn near_the_caps(shape: usize, id: &str, backend: u16) -> Value {
    let hosted = |routes: usize, hosts: usize| -> Vec<Value> {
        (0..routes)
            .map(|r| {
                let names: Vec<String> = (0..hosts)
                    .map(|h| format!("h{r}-{h}.{id}.lab.net"))
                    .collect();
                json!({"id": format!("h{r}"), "hosts": names, "forward": [{"pool": "default"}]})
            })
            .collect()
    };
    let mut routes = Vec::new();
    match shape % 3 {
        0 => {
            routes.extend(hosted(1, 30));
            for r in 0..28 {
                let body = "x".repeat(4096);
                routes.push(
                    json!({"id": format!("b{r}"), "path_prefix": format!("/b{r}"),
                                   "respond": {"status": 200, "body": body}}),
                );
            }
        }
        1 => {
            routes.extend(hosted(10, 30));
            for r in 0..31 {
                routes.push(
                    json!({"id": format!("p{r}"), "path_prefix": format!("/p{r}"),
                                   "forward": [{"pool": "default"}]}),
                );
            }
        }
        _ => {
            routes.extend(hosted(1, 10));
            for r in 0..10 {
                let headers: Vec<Value> = (0..16)
                    .map(|h| json!({"name": format!("x-h{h}"), "regex": "[a-z]{1,8}[0-9]*"}))
                    .collect();
                routes.push(
                    json!({"id": format!("r{r}"), "path_regex": "/[a-z]+/[0-9]+",
                                   "methods": ["GET", "PUT"], "headers": headers,
                                   "forward": [{"pool": "default"}]}),
                );
            }
        }
    }
    let mut doc = common::lb(id, "http", free_port(), "round_robin", &[("a", backend, 0)]);
    doc["routes"] = json!(routes);
    doc
}

/// The largest document `check` accepts, as far as routes go: load
/// balancers near each per-load-balancer cap until the document's own caps
/// refuse more; those refused are left out.
fn worst_accepted(backend: u16) -> Vec<Value> {
    let candidates: Vec<Value> = (0..18)
        .map(|i| near_the_caps(i, &format!("big{i}"), backend))
        .collect();
    let opts = vpsie_lb_model::ValidateOptions {
        allowed_backend_networks: vec!["127.0.0.0/8".parse().expect("net")],
        ..Default::default()
    };
    let refused: Vec<usize> = match vpsie_lb_model::validate(&json!(candidates), &opts) {
        Ok(_) => vec![],
        Err(rej) => rej
            .errors
            .iter()
            .filter_map(|p| p.path.top_index())
            .collect(),
    };
    assert!(
        !refused.is_empty(),
        "the sample never reached the document's caps"
    );
    let kept: Vec<Value> = (0..candidates.len())
        .filter(|i| !refused.contains(i))
        .map(|i| candidates[i].clone())
        .collect();
    let v = vpsie_lb_model::validate(&json!(kept), &opts).expect("the rest is accepted");
    let total = v.config.load_balancers.iter().fold(
        vpsie_lb_model::vhosts::TranslatedSize::default(),
        |t, lb| t.plus(vpsie_lb_model::vhosts::translated_size(lb, usize::MAX)),
    );
    eprintln!("worst accepted: {} load balancers, {total:?}", kept.len());
    kept
}

/// `VmHWM` (peak resident memory) of process `pid`, KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The agent's peak memory serving the worst document `check` accepts, and
/// another load balancer's change still applied beside it. Before, a 51 KB
/// document took 1.9 GB to render and the agent was killed under its unit's
/// `MemoryMax=1G`, again on every restart.
fn regression_a_small_document_exhausted_the_agents_memory(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = backends(&["a", "b"]);
    let port = free_port();
    let mut docs = worst_accepted(bs[0].port());
    docs.push(lb_over("web", "http", port, "round_robin", &bs[..1]));
    let desired = dir.path().join("desired.json");
    write_doc(&desired, &json!(docs));
    let agent_port = free_port();
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path(), agent_port));
    poll_until(
        "web served beside the worst document",
        Duration::from_secs(180),
        || serves(port, "a"),
    );
    // Another load balancer's change goes through beside them.
    *docs.last_mut().expect("web") = lb_over("web", "http", port, "round_robin", &bs[1..]);
    write_doc(&desired, &json!(docs));
    poll_until("web's change served", Duration::from_secs(120), || {
        serves(port, "b")
    });
    poll_until("web's change confirmed", Duration::from_secs(60), || {
        let s = status(agent_port)?;
        let web = &s["load_balancers"]["web"];
        if web["status"] == "active" && web["applied_version"] == web["desired_version"] {
            Ok(())
        } else {
            Err(s["load_balancers"]["web"].to_string())
        }
    });
    let agent_kib = peak_kib(agent.child.id());
    let envoy_kib: u64 = agent
        .envoy_pids()
        .into_iter()
        .map(peak_kib)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{via:?}: peak RSS agent {} MiB, envoy {} MiB",
        agent_kib / 1024,
        envoy_kib / 1024
    );
    // The unit allows 1 GiB (MemoryMax) and throttles past 768 MiB
    // (MemoryHigh); the agent must stay well inside, in a debug build too.
    assert!(
        agent_kib > 0 && agent_kib < 512 * 1024,
        "agent peak {agent_kib} KiB"
    );
}

common::over_deliveries!(
    regression_an_unloadable_certificate_froze_everyones_changes,
    regression_a_key_of_another_certificate_froze_everyones_changes,
    regression_a_port_another_process_holds_froze_everyones_changes,
    regression_a_small_document_exhausted_the_agents_memory,
);
