//! Live: the PROXY protocol to backends and TLS passthrough by server name,
//! against a real Envoy and real backends (one that parses PROXY headers,
//! TLS servers with certificates of their own).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Lab, Via, lb, serves};
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::{HttpBackend, TlsHttpBackend};
use vpsie_lb_testkit::http;
use vpsie_lb_testkit::proxy_backend::{Header, ProxyBackend};
use vpsie_lb_testkit::tls::{ClientOptions, https_get};
use vpsie_lb_testkit::udp_backend::{self, UdpBackend};
use vpsie_lb_testkit::{free_port, poll_until};

/// Sends one GET to `port` on a connection of our own and returns the
/// answer's body and the address we sent it from.
fn get_from(port: u16) -> (String, SocketAddr) {
    let mut s = http::connect(None, port).expect("connect to envoy");
    let me = s.local_addr().expect("our address");
    s.write_all(b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .expect("send request");
    // A refused connection reads as no answer; the caller names the refusal.
    let body = http::read_response(&mut s).map_or_else(|_| String::new(), |r| r.body);
    (body, me)
}

/// A load balancer in front of one PROXY backend, with this header version.
fn proxied(id: &str, protocol: &str, port: u16, version: &str, backend: &ProxyBackend) -> Value {
    let mut doc = lb(
        id,
        protocol,
        port,
        "round_robin",
        &[("p", backend.port(), 0)],
    );
    doc["proxy_protocol"] = json!(version);
    doc
}

/// The backend learns the client's own address and port, in both versions,
/// from a tcp load balancer.
fn proxy_protocol_tells_a_tcp_backend_the_client(via: Via) {
    for (version, n) in [("v1", 1), ("v2", 2)] {
        let backend = ProxyBackend::start("pp");
        let port = free_port();
        let _lab = Lab::start(via, &proxied("pptcp", "tcp", port, version, &backend));
        let (body, me) = get_from(port);
        assert_eq!(body, "pp\n", "{version}: refused {:?}", backend.refused());
        let want = Header::Proxied {
            version: n,
            source: me,
            destination: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        assert_eq!(backend.headers(), vec![want], "{version}");
    }
}

/// Over http each client's requests carry its own address, and the health
/// check, which has no client, sends the LOCAL form that such a backend
/// accepts: the backend is marked healthy.
fn proxy_protocol_on_http_and_its_health_check(via: Via) {
    let backend = ProxyBackend::start("pp");
    let port = free_port();
    let mut doc = proxied("pphttp", "http", port, "v2", &backend);
    doc["health_check"] = json!({"type": "http", "path": "/healthz", "interval": 0.5,
                                 "timeout": 0.4, "healthy_threshold": 1, "unhealthy_threshold": 2});
    let lab = Lab::start(via, &doc);
    lab.wait_healthy("pphttp", 1);
    assert!(
        backend.headers().contains(&Header::Local { version: 2 }),
        "no LOCAL header from the health check: {:?}",
        backend.headers()
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (body, me) = get_from(port);
        assert_eq!(body, "pp\n", "refused: {:?}", backend.refused());
        seen.push(me);
    }
    for me in seen {
        assert!(
            backend
                .headers()
                .iter()
                .any(|h| matches!(h, Header::Proxied { version: 2, source, .. } if *source == me)),
            "no header named client {me}: {:?}",
            backend.headers()
        );
    }
    assert_eq!(backend.refused(), Vec::<String>::new());
}

/// Two names reach two pools with the backends' own certificates, and a
/// client with no SNI or another name reaches the default pool.
fn tls_passthrough_routes_by_server_name(via: Via) {
    let (shop, api, other) = (
        TlsHttpBackend::start("shop"),
        TlsHttpBackend::start("api"),
        TlsHttpBackend::start("other"),
    );
    let port = free_port();
    let pool = |id: &str, b: &TlsHttpBackend| json!({"id": id, "backends": [{"id": id, "address": "127.0.0.1", "port": b.port()}]});
    let mut doc = lb(
        "pt",
        "tls_passthrough",
        port,
        "round_robin",
        &[("o", other.port(), 0)],
    );
    doc["pools"] = json!([pool("shop", &shop), pool("api", &api)]);
    doc["routes"] = json!([
        {"id": "shop", "hosts": ["shop.test"], "forward": [{"pool": "shop"}]},
        {"id": "api", "hosts": ["*.api.test"], "forward": [{"pool": "api"}]},
    ]);
    let lab = Lab::start_with(via, &doc, &["--access-log-sample-percent", "100"]);
    let cases: [(&str, &TlsHttpBackend, &str); 4] = [
        ("shop.test", &shop, "shop\n"),
        ("v2.api.test", &api, "api\n"),
        ("127.0.0.1", &other, "other\n"),
        ("elsewhere.test", &other, "other\n"),
    ];
    for (name, backend, body) in cases {
        let opts = ClientOptions {
            server_name: name.into(),
            ..Default::default()
        };
        let (hs, resp) = https_get(port, &opts, "/").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            hs.peer_cert,
            backend.cert_der(),
            "{name}: whose certificate"
        );
        assert_eq!(resp.body, body, "{name}");
    }
    // The access log names the server name each connection asked for.
    poll_until("the sni in the access log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(lab.access_log()).unwrap_or_default();
        if log.contains(r#""server_name":"shop.test""#) {
            Ok(())
        } else {
            Err(log)
        }
    });
}

/// A udp load balancer in front of these backends, checked over HTTP on
/// `status`'s port (a UDP service's status page), since the backends
/// themselves answer no TCP.
fn udp_doc(port: u16, backends: &[&UdpBackend], status: &HttpBackend) -> Value {
    let list: Vec<(&str, u16, u32)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (["u1", "u2"][i], b.port(), 0))
        .collect();
    let mut doc = lb("udp", "udp", port, "round_robin", &list);
    doc["health_check"] = json!({"type": "http", "path": "/", "port": status.port(),
        "interval": 0.5, "timeout": 0.4, "healthy_threshold": 1, "unhealthy_threshold": 2});
    doc
}

/// Datagrams reach both backends and the answers come back; a backend taken
/// out of the document gets no new flow.
fn udp_sessions_reach_backends_and_a_removed_one_gets_no_new_flows(via: Via) {
    let (u1, u2) = (UdpBackend::start("u1"), UdpBackend::start("u2"));
    let status = HttpBackend::start("status");
    let port = free_port();
    let mut lab = Lab::start(via, &udp_doc(port, &[&u1, &u2], &status));
    // Healthy by the status port: the check never touched the UDP port.
    lab.wait_healthy("udp", 2);
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..20 {
        let got =
            udp_backend::ask(port, &format!("q{i}")).unwrap_or_else(|e| panic!("flow {i}: {e}"));
        let (who, echo) = got.split_once(':').expect("name:payload");
        assert_eq!(echo, format!("q{i}"));
        *answers.entry(who.to_owned()).or_default() += 1;
    }
    assert_eq!(answers.len(), 2, "both backends take flows: {answers:?}");

    lab.render(&udp_doc(port, &[&u1], &status));
    poll_until("u2 gone from envoy", Duration::from_secs(15), || {
        let hosts = lab.envoy().host_health("lb_udp");
        if hosts.len() == 1 {
            Ok(())
        } else {
            Err(format!("{hosts:?}"))
        }
    });
    let before = u2.flows();
    for i in 0..20 {
        let got =
            udp_backend::ask(port, &format!("r{i}")).unwrap_or_else(|e| panic!("flow {i}: {e}"));
        assert!(got.starts_with("u1:"), "new flow {i} answered {got:?}");
    }
    assert_eq!(u2.flows(), before, "the removed backend got a new flow");
}

/// DNS's shape: a tcp and a udp load balancer on one port number, each
/// reaching its own backends (TCP and UDP sockets are separate).
fn a_tcp_and_a_udp_load_balancer_share_a_port_number(via: Via) {
    let u1 = UdpBackend::start("u1");
    let status = HttpBackend::start("status");
    let web = HttpBackend::start("t1");
    let port = free_port();
    let mut over_udp = udp_doc(port, &[&u1], &status);
    over_udp["id"] = json!("dns_udp");
    let over_tcp = lb(
        "dns_tcp",
        "tcp",
        port,
        "round_robin",
        &[("t1", web.port(), 1)],
    );
    let lab = Lab::start(via, &json!([over_tcp, over_udp]));
    lab.wait_healthy("dns_udp", 1);
    let got = udp_backend::ask(port, "q").expect("udp through the load balancer");
    assert_eq!(got, "u1:q");
    poll_until("tcp served", Duration::from_secs(15), || serves(port, "t1"));
}

common::over_deliveries!(
    a_tcp_and_a_udp_load_balancer_share_a_port_number,
    udp_sessions_reach_backends_and_a_removed_one_gets_no_new_flows,
    proxy_protocol_tells_a_tcp_backend_the_client,
    proxy_protocol_on_http_and_its_health_check,
    tls_passthrough_routes_by_server_name,
);
