//! Live: HTTP/3. An https load balancer with `http3` answers a real HTTP/3
//! client (aioquic) over QUIC on its port, and tells HTTP/1.1 and HTTP/2
//! clients so with `alt-svc`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Lab, Via, https_lb};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::h3;
use vpsie_lb_testkit::poll_until;
use vpsie_lb_testkit::tls::{ClientOptions, https_get};

/// An https load balancer with HTTP/3 in front of `backend`; its
/// certificate in `dir`.
fn h3_lb(dir: &std::path::Path, backend: &HttpBackend) -> (Value, u16) {
    let (mut doc, port, _) = https_lb(dir, backend, json!({}));
    doc["http3"] = json!(true);
    (doc, port)
}

/// What curl got over HTTP/2: the negotiated version and the alt-svc header.
fn over_h2(port: u16) -> (String, Option<String>) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "version %{http_version}\n",
        ])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let alt_svc = text
        .lines()
        .find_map(|l| l.strip_prefix("alt-svc: "))
        .map(|v| v.trim().to_owned());
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version "))
        .unwrap_or_default()
        .to_owned();
    (version, alt_svc)
}

fn http3_answers_over_quic_and_alt_svc_says_so(via: Via) {
    let backend = HttpBackend::start("a");
    let mut lab = Lab::new(via);
    let (doc, port) = h3_lb(lab.dir.path(), &backend);
    lab.render(&doc);
    lab.start_envoy();
    let want = format!("h3=\":{port}\"; ma=86400");

    let (version, alt_svc) = over_h2(port);
    assert_eq!(version, "2", "curl did not speak HTTP/2");
    assert_eq!(alt_svc.as_deref(), Some(want.as_str()), "over HTTP/2");
    let (_, resp) = https_get(port, &ClientOptions::default(), "/").expect("https over http/1.1");
    assert_eq!(resp.header("alt-svc"), Some(want.as_str()), "over HTTP/1.1");

    let answer = h3::get(port, "/", "lb.test").expect("a request over HTTP/3");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "a\n");
    // The backend was reached over HTTP/1.1, as for every other client.
    assert!(backend.requests() >= 1);
}

/// A load balancer without `http3` has no QUIC listener and says nothing.
fn no_http3_no_quic_and_no_alt_svc(via: Via) {
    let backend = HttpBackend::start("a");
    let mut lab = Lab::new(via);
    let (mut doc, port) = h3_lb(lab.dir.path(), &backend);
    doc["http3"] = json!(false);
    lab.render(&doc);
    lab.start_envoy();
    assert_eq!(over_h2(port).1, None);
    let refused = h3::get(port, "/", "lb.test");
    assert!(refused.is_err(), "answered over QUIC: {refused:?}");
}

/// `max_connections` holds over QUIC too: with two QUIC connections held
/// open, a third is refused, and TCP connections count apart. Before, the
/// QUIC listener had no connection limit at all.
fn regression_max_connections_did_not_hold_for_http3(via: Via) {
    let backend = HttpBackend::start("a");
    let mut lab = Lab::new(via);
    let (mut doc, port) = h3_lb(lab.dir.path(), &backend);
    doc["max_connections"] = json!(2);
    lab.render(&doc);
    lab.start_envoy();
    let held = h3::hold(port, "/", "lb.test", 4).expect("quic connections");
    assert_eq!((held.answered, held.refused), (2, 2), "{held:?}");
    // Once Envoy has seen them close, QUIC answers again.
    poll_until(
        "quic answers again",
        Duration::from_secs(15),
        || match h3::get(port, "/", "lb.test")? {
            a if a.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

common::over_deliveries!(
    regression_max_connections_did_not_hold_for_http3,
    http3_answers_over_quic_and_alt_svc_says_so,
    no_http3_no_quic_and_no_alt_svc,
);
