//! ACME certificates across passes: what is wanted, the config with the
//! issued ones filled in, and when renewal starts.

mod common;

use std::collections::BTreeMap;

use common::{base, ok};
use serde_json::json;
use vpsie_lb_model::acme::{Issued, RENEW_BEFORE_SECS, overlay, renew_at, wanted};

fn two_load_balancers() -> vpsie_lb_model::Config {
    let mut managed = base();
    managed["id"] = json!("managed");
    managed["tls_config"] = json!({"acme": {"domains": ["a.vpsie-lab.net"]}});
    managed["redirect_http_port"] = json!(80);
    let mut files = base();
    files["id"] = json!("files");
    files["port"] = json!(8443);
    let v = vpsie_lb_model::validate(&json!([managed, files]), &common::opts()).expect("valid");
    v.config
}

#[test]
fn only_acme_load_balancers_are_wanted_and_filled_in() {
    let config = two_load_balancers();
    assert!(wanted(&ok(base()).config).is_empty());
    let w = wanted(&config);
    assert_eq!(w.keys().collect::<Vec<_>>(), ["managed"]);
    assert_eq!(w["managed"].domains, ["a.vpsie-lab.net"]);

    let tls = |c: &vpsie_lb_model::Config, id: &str| {
        let lb = c.load_balancers.iter().find(|l| l.id == id).expect("lb");
        lb.tls.clone().expect("tls")
    };
    // Nothing issued: the managed one waits, the other is untouched.
    let waiting = overlay(config.clone(), &BTreeMap::new());
    assert!(tls(&waiting, "managed").awaits_certificate());
    assert_eq!(tls(&waiting, "files"), tls(&config, "files"));
    let issued = BTreeMap::from([(
        "managed".to_owned(),
        Issued {
            certificate_path: "/var/lib/vpsie-lb/acme/c.pem".into(),
            private_key_path: "/var/lib/vpsie-lb/acme/k.pem".into(),
        },
    )]);
    let served = overlay(config.clone(), &issued);
    let t = tls(&served, "managed");
    assert!(!t.awaits_certificate());
    assert_eq!(t.certificate_path, "/var/lib/vpsie-lb/acme/c.pem");
    assert_eq!(t.private_key_path, "/var/lib/vpsie-lb/acme/k.pem");
    assert_eq!(tls(&served, "files"), tls(&config, "files"));
}

#[test]
fn renewal_starts_30_days_before_expiry_or_with_a_third_left() {
    const DAY: i64 = 86_400;
    for (not_before, not_after, want) in [
        (0, 90 * DAY, 60 * DAY),
        (0, 30 * DAY, 20 * DAY),
        (0, 6 * DAY, 4 * DAY),
        (100, 130, 120),
        (0, 365 * DAY, 365 * DAY - RENEW_BEFORE_SECS),
        // Nonsense validity renews at once rather than never.
        (50, 10, 10),
    ] {
        assert_eq!(
            renew_at(not_before, not_after),
            want,
            "{not_before}..{not_after}"
        );
    }
}
