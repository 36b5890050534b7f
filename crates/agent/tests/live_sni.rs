//! Certificates chosen by SNI, and host routing over TLS and HTTP/2, on a
//! real Envoy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Lab, Via, backends, lb_over};
use serde_json::json;
use vpsie_lb_testkit::pki::{self, Pair};
use vpsie_lb_testkit::tls::{ClientOptions, https_get};
use vpsie_lb_testkit::{free_port, poll_until};

/// A certificate pair for `cn` in its own directory under `dir`, the way
/// operators keep one directory per certificate.
fn cert(dir: &Path, cn: &str) -> (PathBuf, Pair) {
    let sub = dir.join(cn.replace('*', "star"));
    std::fs::create_dir_all(&sub).expect("mkdir");
    let pair = pki::self_signed(cn);
    pki::write_pair(&sub, "tls", &pair);
    (sub, pair)
}

/// Replaces the pair in `sub` by rename, as certbot and friends do.
fn rotate(sub: &Path, cn: &str) -> Pair {
    let pair = pki::self_signed(cn);
    let tmp = sub.join("next");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    pki::write_pair(&tmp, "tls", &pair);
    for f in ["tls.crt", "tls.key"] {
        std::fs::rename(tmp.join(f), sub.join(f)).expect("rename");
    }
    pair
}

/// The DER of the certificate the listener on `port` serves for `sni`
/// (an IP address sends none), and who answered.
fn served(port: u16, sni: &str) -> Result<(Vec<u8>, String), String> {
    let opts = ClientOptions {
        server_name: sni.to_owned(),
        ..Default::default()
    };
    let (hs, resp) = https_get(port, &opts, "/")?;
    Ok((hs.peer_cert, resp.body.trim().to_owned()))
}

/// Two names get their own certificates, anything else and no SNI get the
/// default; the Host routes over TLS and over HTTP/2; replacing one
/// certificate's files rotates that one only.
fn each_name_gets_its_certificate_and_rotates_alone(via: Via) {
    let bs = backends(&["www", "api", "shop"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, default) = cert(dir.path(), "www.example.com");
    let (api_dir, api) = cert(dir.path(), "api.example.com");
    let (_, shop) = cert(dir.path(), "*.shop.test");
    let port = free_port();
    let mut doc = lb_over("edge", "https", port, "round_robin", &bs[..1]);
    let path = |cn: &str, f: &str| dir.path().join(cn.replace('*', "star")).join(f);
    doc["tls_config"] = json!({
        "certificate_path": path("www.example.com", "tls.crt"),
        "private_key_path": path("www.example.com", "tls.key"),
        "certificates": [
            {"server_names": ["api.example.com"],
             "certificate_path": path("api.example.com", "tls.crt"),
             "private_key_path": path("api.example.com", "tls.key")},
            {"server_names": ["*.shop.test"],
             "certificate_path": path("*.shop.test", "tls.crt"),
             "private_key_path": path("*.shop.test", "tls.key")},
        ],
    });
    doc["pools"] = json!([
        {"id": "api", "backends": lb_over("x", "http", 1, "round_robin", &bs[1..2])["backends"]},
        {"id": "shop", "backends": lb_over("x", "http", 1, "round_robin", &bs[2..])["backends"]},
    ]);
    doc["routes"] = json!([
        {"id": "api", "hosts": ["api.example.com"], "forward": [{"pool": "api"}]},
        {"id": "shop", "hosts": ["*.shop.test"], "forward": [{"pool": "shop"}]},
    ]);
    let lab = Lab::start(via, &doc);
    poll_until("tls served", Duration::from_secs(30), || {
        served(port, "api.example.com").map(|_| ())
    });
    let cases = [
        ("api.example.com", &api, "api"),
        ("cart.shop.test", &shop, "shop"),
        ("unknown.test", &default, "www"),
        ("127.0.0.1", &default, "www"),
    ];
    for (sni, pair, backend) in cases {
        let (der, who) = served(port, sni).unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert!(der == pair.cert_der, "{sni}: wrong certificate");
        assert_eq!(who, backend, "{sni}: routed by Host");
    }

    // HTTP/2 with SNI: the :authority routes as Host does.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "--resolve",
            &format!("api.example.com:{port}:127.0.0.1"),
            "-w",
            "\n%{http_version}",
            &format!("https://api.example.com:{port}/"),
        ])
        .output()
        .expect("run curl");
    // The backend answers "api\n"; curl adds the version on a line of its own.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api\n\n2");

    let rotated = rotate(&api_dir, "api.example.com");
    poll_until(
        "the api certificate rotated",
        Duration::from_secs(30),
        || {
            let (der, _) = served(port, "api.example.com")?;
            if der == rotated.cert_der {
                Ok(())
            } else {
                Err("old certificate".into())
            }
        },
    );
    for (sni, pair) in [("cart.shop.test", &shop), ("unknown.test", &default)] {
        let (der, _) = served(port, sni).expect(sni);
        assert!(
            der == pair.cert_der,
            "{sni} changed with the api certificate"
        );
    }
    assert_eq!(
        lab.envoy().stat("listener_manager.listener_modified"),
        Some(0),
        "a rotation never touches the listener"
    );
}

common::over_deliveries!(each_name_gets_its_certificate_and_rotates_alone);
