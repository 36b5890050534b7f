//! Every golden translation is accepted by the real Envoy: by `--mode
//! validate` on the exact resources, and by a live Envoy reading the
//! rendered dynamic files (which validate mode ignores).

mod common;

use std::path::{Path, PathBuf};

use common::{Lab, Via};
use vpsie_lb_agent::preflight;
use vpsie_lb_envoy::{BootstrapOptions, Delivery, TranslateOptions, translate};
use vpsie_lb_model::{ValidateOptions, parse_document, validate};
use vpsie_lb_testkit::pki::{self, Ca};
use vpsie_lb_testkit::{free_port, poll_until};

/// The golden inputs refer to certificates under this directory.
const GOLDEN_TLS_DIR: &str = "/etc/vpsie-lb/tls/";

fn golden_inputs() -> Vec<(String, String)> {
    let dir = vpsie_lb_testkit::workspace_root().join("crates/envoy/tests/golden/in");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("golden inputs")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("invalid-"))
        })
        .map(|p| {
            (
                p.file_stem().expect("stem").to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("read"),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 8,
        "expected the golden cases, found {}",
        out.len()
    );
    out
}

/// Real certificate files where the golden inputs expect them.
fn certs(dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("mkdir");
    pki::write_pair(&tls, "server", &pki::self_signed("lb.test"));
    std::fs::write(tls.join("ca.pem"), Ca::new("clients").cert_pem).expect("write ca");
    tls
}

fn localized(text: &str, tls: &Path) -> serde_json::Value {
    let text = text.replace(GOLDEN_TLS_DIR, &format!("{}/", tls.display()));
    parse_document(&text).expect("golden input parses")
}

#[test]
fn every_golden_case_passes_envoy_validate_mode() {
    let envoy = vpsie_lb_testkit::envoy::envoy_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = certs(dir.path());
    for (case, text) in golden_inputs() {
        let doc = localized(&text, &tls);
        let v =
            validate(&doc, &ValidateOptions::default()).unwrap_or_else(|e| panic!("{case}: {e}"));
        let resources = translate(&v.config, &TranslateOptions::new(Delivery::Static));
        preflight::validate(&envoy, &resources, &BootstrapOptions::default())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

fn every_golden_case_is_accepted_by_a_live_envoy(via: Via) {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let tls = certs(certs_dir.path());
    for (case, text) in golden_inputs() {
        let mut doc = localized(&text, &tls);
        // Fresh ports, so the cases can bind on any machine.
        let items: Vec<&mut serde_json::Value> = match doc.as_array_mut() {
            Some(a) => a.iter_mut().collect(),
            None => vec![&mut doc],
        };
        let mut n = items.len();
        for lb in items {
            // An ACME load balancer waits for its certificate (which `render`
            // never orders) with its redirect listener alone.
            if lb.pointer("/tls_config/acme").is_some() {
                n -= 1;
                lb["http3"] = serde_json::json!(false);
            }
            lb["port"] = serde_json::json!(free_port());
            if lb.get("redirect_http_port").is_some() {
                lb["redirect_http_port"] = serde_json::json!(free_port());
                n += 1;
            }
            // HTTP/3 is a second listener on the same port, over UDP.
            if lb.get("http3") == Some(&serde_json::json!(true)) {
                n += 1;
            }
        }
        let lab = Lab::start(via, &doc);
        let envoy = lab.envoy();
        poll_until(
            &format!("{case}: listeners active"),
            std::time::Duration::from_secs(20),
            || {
                let active = envoy
                    .stat("listener_manager.total_listeners_active")
                    .unwrap_or(0);
                if active as usize == n {
                    Ok(())
                } else {
                    Err(format!("{active} of {n} active\n{}", envoy.log()))
                }
            },
        );
        for stat in [
            "listener_manager.lds.update_rejected",
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_failure",
            "cluster_manager.cds.update_failure",
        ] {
            assert_eq!(envoy.stat(stat), Some(0), "{case}: {stat}\n{}", envoy.log());
        }
        assert_eq!(
            envoy.stat("listener_manager.lds.update_success"),
            Some(1),
            "{case}"
        );
        assert_eq!(
            envoy.stat("server.dynamic_unknown_fields"),
            Some(0),
            "{case}"
        );
    }
}

common::over_deliveries!(every_golden_case_is_accepted_by_a_live_envoy);

/// 250 load balancers are judged in chunks of 100, side by side: a refusal
/// in the last chunk is still found, and named, and 250 good ones pass.
#[test]
fn a_large_pre_flight_is_judged_in_chunks_and_a_refusal_in_any_chunk_counts() {
    let envoy = vpsie_lb_testkit::envoy::envoy_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = vpsie_lb_testkit::pki::self_signed("one.test");
    let (cert, key) = vpsie_lb_testkit::pki::write_pair(dir.path(), "one", &pair);
    let other = vpsie_lb_testkit::pki::self_signed("two.test");
    let (_, other_key) = vpsie_lb_testkit::pki::write_pair(dir.path(), "two", &other);
    let docs = |bad: Option<usize>| {
        let lbs: Vec<serde_json::Value> = (0..250)
            .map(|i| {
                let mut lb = serde_json::json!({"id": format!("c{i:03}"), "name": "c", "protocol": "https",
                    "port": 20_000 + i, "algorithm": "round_robin",
                    "backends": [{"id": "a", "address": "10.0.0.1", "port": 80}]});
                let key = if Some(i) == bad { &other_key } else { &key };
                lb["tls_config"] = serde_json::json!({"certificate_path": cert, "private_key_path": key});
                lb
            })
            .collect();
        validate(&serde_json::Value::Array(lbs), &ValidateOptions::default())
            .expect("valid to us")
            .config
    };
    let opts = TranslateOptions::new(Delivery::Ads);
    preflight::validate_changed(&envoy, &opts, &docs(None)).expect("250 good ones pass");
    match preflight::validate_changed(&envoy, &opts, &docs(Some(230))) {
        Err(preflight::PreflightError::Rejected(reason)) => {
            assert!(reason.to_lowercase().contains("private key"), "{reason}");
        }
        other => panic!("the refusal in the last chunk was missed: {other:?}"),
    }
}
