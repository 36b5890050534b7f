//! Live: TLS termination, versions, ALPN, rotation and client certificates.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Lab, Via, https_lb};
use rustls::ProtocolVersion;
use serde_json::{Value, json};
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::pki::{self, Ca};
use vpsie_lb_testkit::poll_until;
use vpsie_lb_testkit::tls::{ClientOptions, HelloOutcome, https_get, probe_client_hello};

fn start(doc: &Value, lab: Lab) -> Lab {
    let mut lab = lab;
    lab.render(doc);
    lab.start_envoy();
    lab
}

fn only(v: &'static rustls::SupportedProtocolVersion) -> ClientOptions {
    ClientOptions {
        versions: vec![v],
        ..Default::default()
    }
}

fn tls13_and_tls12_succeed_and_tls11_is_refused(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (doc, port, server) = https_lb(lab.dir.path(), &backend, json!({}));
    let lab = start(&doc, lab);

    let (hs, resp) = https_get(port, &only(&rustls::version::TLS13), "/").expect("tls 1.3");
    assert_eq!(hs.version, ProtocolVersion::TLSv1_3);
    assert_eq!(
        hs.peer_cert, server.cert_der,
        "served the configured certificate"
    );
    assert_eq!((resp.status, resp.body.trim()), (200, "a"));
    let forwarded_proto = backend
        .last_headers()
        .into_iter()
        .find(|(k, _)| k == "x-forwarded-proto");
    assert_eq!(forwarded_proto.map(|(_, v)| v).as_deref(), Some("https"));

    let (hs, _) = https_get(port, &only(&rustls::version::TLS12), "/").expect("tls 1.2");
    assert_eq!(hs.version, ProtocolVersion::TLSv1_2);

    // rustls cannot offer TLS 1.1, so a hand-built ClientHello does; the same
    // hello saying TLS 1.2 is the control that proves the probe works.
    assert_eq!(
        probe_client_hello(port, 0x0303),
        HelloOutcome::ServerHello(0x0303)
    );
    let old = probe_client_hello(port, 0x0302);
    assert!(
        matches!(old, HelloOutcome::Alert(_) | HelloOutcome::Closed),
        "tls 1.1 was accepted: {old:?}"
    );
    drop(lab);
}

fn min_version_tls13_refuses_tls12(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (doc, port, _) = https_lb(lab.dir.path(), &backend, json!({"min_version": "TLSv1.3"}));
    let _lab = start(&doc, lab);
    assert!(
        https_get(port, &only(&rustls::version::TLS12), "/").is_err(),
        "tls 1.2 accepted"
    );
    let (hs, _) = https_get(port, &only(&rustls::version::TLS13), "/").expect("tls 1.3");
    assert_eq!(hs.version, ProtocolVersion::TLSv1_3);
    let hello12 = probe_client_hello(port, 0x0303);
    assert_ne!(
        hello12,
        HelloOutcome::ServerHello(0x0303),
        "a tls 1.2 hello was answered"
    );
}

fn alpn_negotiates_h2_and_serves_http2(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (doc, port, _) = https_lb(lab.dir.path(), &backend, json!({}));
    let _lab = start(&doc, lab);
    let opts = ClientOptions {
        alpn: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    let (hs, _) = https_get(port, &opts, "/").expect("handshake");
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    // A real HTTP/2 exchange, end to end.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &format!("https://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

fn alpn_list_is_honoured(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (doc, port, _) = https_lb(lab.dir.path(), &backend, json!({"alpn": ["http/1.1"]}));
    let _lab = start(&doc, lab);
    let opts = ClientOptions {
        alpn: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    let (hs, resp) = https_get(port, &opts, "/").expect("handshake");
    assert_eq!(hs.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(resp.status, 200);
}

fn replacing_certificate_files_rotates_without_restart_or_drain(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (doc, port, first) = https_lb(lab.dir.path(), &backend, json!({}));
    let lab = start(&doc, lab);
    let (hs, _) = https_get(port, &ClientOptions::default(), "/").expect("first handshake");
    assert_eq!(hs.peer_cert, first.cert_der);
    let pid = lab.envoy().pid();

    let second = pki::self_signed("lb.test");
    let tls_dir = lab.dir.path().join("tls");
    // Key first, then certificate, each by rename, as a certificate tool would.
    pki::replace_file(&tls_dir.join("server.key"), &second.key_pem);
    pki::replace_file(&tls_dir.join("server.crt"), &second.cert_pem);
    poll_until(
        "new certificate served",
        Duration::from_secs(20),
        || match https_get(port, &ClientOptions::default(), "/") {
            Ok((hs, _)) if hs.peer_cert == second.cert_der => Ok(()),
            Ok(_) => Err("still the old certificate".into()),
            Err(e) => Err(e),
        },
    );
    assert_eq!(lab.envoy().pid(), pid, "envoy was restarted");
    for stat in [
        "listener_manager.listener_modified",
        "listener_manager.listener_in_place_updated",
        "listener_manager.total_listeners_draining",
    ] {
        assert_eq!(
            lab.envoy().stat(stat),
            Some(0),
            "{stat} moved during rotation"
        );
    }
}

fn client_certificate_is_required_when_a_ca_is_set(via: Via) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let ca = Ca::new("clients");
    let ca_path = common::write(lab.dir.path(), "client-ca.pem", &ca.cert_pem);
    let (doc, port, _) = https_lb(lab.dir.path(), &backend, json!({"ca_cert_path": ca_path}));
    let _lab = start(&doc, lab);

    let anonymous = https_get(port, &ClientOptions::default(), "/");
    assert!(
        anonymous.is_err(),
        "client without a certificate was served: {:?}",
        anonymous.map(|r| r.1.status)
    );
    let stranger = Ca::new("someone else").client("mallory");
    let foreign = https_get(
        port,
        &ClientOptions {
            client_cert: Some(stranger),
            ..Default::default()
        },
        "/",
    );
    assert!(
        foreign.is_err(),
        "client with a certificate from another CA was served"
    );
    let trusted = ClientOptions {
        client_cert: Some(ca.client("alice")),
        ..Default::default()
    };
    let (_, resp) = https_get(port, &trusted, "/").expect("trusted client");
    assert_eq!(resp.status, 200);
}

common::over_deliveries!(
    tls13_and_tls12_succeed_and_tls11_is_refused,
    min_version_tls13_refuses_tls12,
    alpn_negotiates_h2_and_serves_http2,
    alpn_list_is_honoured,
    replacing_certificate_files_rotates_without_restart_or_drain,
    client_certificate_is_required_when_a_ca_is_set,
);
