//! Live: HTTP connection manager features, the TCP proxy, empty pools and
//! the per-listener connection limit.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{Lab, Via, lb};
use serde_json::json;
use vpsie_lb_testkit::backend::{EchoBackend, HttpBackend};
use vpsie_lb_testkit::http::{self, connect};
use vpsie_lb_testkit::{free_port, poll_until};

fn http_sets_forwarding_headers_and_a_request_id(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let _lab = Lab::start(
        via,
        &lb("hdr", "http", port, "round_robin", &[("a", b.port(), 0)]),
    );
    // A client-supplied X-Forwarded-Proto must not survive (we are the edge);
    // a client-supplied X-Forwarded-For is kept, with the peer appended.
    let resp = http::request(
        None,
        port,
        "GET",
        "/x",
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    .expect("request");
    assert_eq!(resp.status, 200);
    let h = b.last_headers();
    let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let xff = get("x-forwarded-for").expect("x-forwarded-for set");
    let (first, appended) = xff
        .split_once(",")
        .map(|(a, b)| (a.trim(), b.trim()))
        .unwrap_or_else(|| panic!("peer not appended: {xff:?}"));
    assert_eq!(first, "203.0.113.9");
    // Envoy writes the host's own address instead of a loopback peer.
    assert!(
        appended.parse::<std::net::IpAddr>().is_ok(),
        "appended {appended:?} is not an ip"
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        get("x-request-id").map(|v| v.len()),
        Some(36),
        "request id: {h:?}"
    );
}

fn http_listener_speaks_http2_with_prior_knowledge(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let _lab = Lab::start(
        via,
        &lb("h2c", "http", port, "round_robin", &[("a", b.port(), 0)]),
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\n 2");
}

fn no_enabled_backends_answers_503_over_http(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let mut doc = lb("empty", "http", port, "round_robin", &[("a", b.port(), 0)]);
    doc["backends"][0]["enabled"] = json!(false);
    let _lab = Lab::start(via, &doc);
    let resp = http::get(port, "/").expect("request");
    assert_eq!(resp.status, 503);
    assert_eq!(b.requests(), 0);
    // Regression: every answer, Envoy's own included, said `server: envoy`.
    assert_eq!(resp.header("server"), None, "{:?}", resp.headers);
}

/// Every answer carried `server: envoy`, which outside scanners report as
/// our banner. The backend's own header passes through unchanged.
fn regression_every_answer_said_server_envoy(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let _lab = Lab::start(
        via,
        &lb("srv", "http", port, "round_robin", &[("a", b.port(), 0)]),
    );
    let resp = http::get(port, "/").expect("request");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("server"),
        Some("backend-a"),
        "{:?}",
        resp.headers
    );
}

fn no_backends_closes_tcp_connections(via: Via) {
    let port = free_port();
    let _lab = Lab::start(via, &lb("emptytcp", "tcp", port, "round_robin", &[]));
    let mut s = connect(None, port).expect("listener accepts");
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "got bytes from a pool with no backends");
}

fn tcp_proxy_round_trips_bytes(via: Via) {
    let echo = EchoBackend::start();
    let port = free_port();
    let _lab = Lab::start(
        via,
        &lb("echo", "tcp", port, "round_robin", &[("e", echo.port(), 0)]),
    );
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut s = connect(None, port).expect("connect");
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let p = payload.clone();
        std::thread::spawn(move || w.write_all(&p))
    };
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).expect("read echo");
    writer
        .join()
        .expect("writer thread")
        .expect("write payload");
    assert!(got == payload, "echoed bytes differ");
}

fn access_log_sampling_everything_has_one_json_line_per_request(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let lab = Lab::start_with(
        via,
        &lb("logged", "http", port, "round_robin", &[("a", b.port(), 0)]),
        &["--access-log-sample-percent", "100"],
    );
    assert_eq!(http::get(port, "/some/path").expect("request").status, 200);
    let line = poll_until("an access log line", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("/some/path"))
            .map(str::to_owned)
            .ok_or_else(|| "no line yet".into())
    });
    let v: serde_json::Value = serde_json::from_str(&line).expect("access log line is json");
    for key in [
        "time",
        "client",
        "listener",
        "upstream_host",
        "status",
        "response_flags",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
    ] {
        assert!(v.get(key).is_some(), "access log lacks {key}: {line}");
    }
    assert_eq!(v["status"], json!(200));
    assert_eq!(v["upstream_host"], json!(format!("127.0.0.1:{}", b.port())));
    assert_eq!(v["listener"], json!("lb_logged"));
}

fn access_log_always_writes_failures_and_samples_successes(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    // 0 %: no success is logged, so the assertion below cannot pass by luck.
    let lab = Lab::start_with(
        via,
        &lb(
            "sampled",
            "http",
            port,
            "round_robin",
            &[("a", b.port(), 0)],
        ),
        &["--access-log-sample-percent", "0"],
    );
    for i in 0..20 {
        let path = format!("/fine/{i}");
        assert_eq!(http::get(port, &path).expect("request").status, 200);
    }
    b.set_health(503);
    assert_eq!(http::get(port, "/healthz").expect("request").status, 503);
    let text = poll_until("the failure's log line", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
        if text.contains("/healthz") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    // Lines are flushed in order, so the successes would be there by now.
    assert!(!text.contains("/fine/"), "a success was logged:\n{text}");
    let line = text.lines().find(|l| l.contains("/healthz")).expect("line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(v["status"], json!(503));
}

fn max_connections_closes_the_sixth_concurrent_connection(via: Via) {
    let b = HttpBackend::start("a");
    let port = free_port();
    let mut doc = lb(
        "limited",
        "http",
        port,
        "round_robin",
        &[("a", b.port(), 0)],
    );
    doc["max_connections"] = json!(5);
    let _lab = Lab::start(via, &doc);

    // Five keep-alive connections, each proven established by a full exchange.
    let mut held: Vec<_> = (0..5)
        .map(|_| {
            let mut s = connect(None, port).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).expect("response on a held connection");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();

    // The sixth is accepted by the kernel and then closed by Envoy unanswered.
    let sixth = http::request(None, port, "GET", "/", &[]);
    assert!(
        sixth.is_err(),
        "sixth concurrent connection was served: {:?}",
        sixth.map(|r| r.status)
    );

    // Freeing a slot lets a new connection in.
    drop(held.pop());
    poll_until(
        "a connection after one was freed",
        Duration::from_secs(10),
        || match http::get(port, "/") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status))),
        },
    );
}

common::over_deliveries!(
    http_sets_forwarding_headers_and_a_request_id,
    http_listener_speaks_http2_with_prior_knowledge,
    no_enabled_backends_answers_503_over_http,
    regression_every_answer_said_server_envoy,
    no_backends_closes_tcp_connections,
    tcp_proxy_round_trips_bytes,
    access_log_sampling_everything_has_one_json_line_per_request,
    access_log_always_writes_failures_and_samples_successes,
    max_connections_closes_the_sixth_concurrent_connection,
);
