//! Live: certificates obtained over ACME from Pebble (the RFC 8555 test
//! server), through a real HTTP-01 challenge that Pebble sends to our
//! Envoy's redirect listener, which hands it to the agent's responder.
//! Runs `vpsie-lb-agent run` (the ordering lives there) over both deliveries.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Via;
use common::acme::{AcmeLab, VALIDITY_SECS};
use vpsie_lb_testkit::{free_port, http, poll_until};

/// Envoy's counts of listener updates and removals (each drains the old one).
const LISTENER_CHANGES: [&str; 2] = [
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
];

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn a_certificate_is_issued_over_http01_served_and_renewed_without_a_listener_change(via: Via) {
    let lab = AcmeLab::start(via);
    let first = lab.wait_served(
        "the issued certificate served",
        None,
        Duration::from_secs(60),
    );
    lab.agent().wait_log(
        "certificate_issued event",
        "\"event\":\"certificate_issued\"",
    );
    assert!(
        lab.backend.requests() > 0,
        "https did not reach the backend"
    );
    // The key is the agent's and Envoy's group's only; the account the agent's.
    assert_eq!(mode(&lab.store().join("privkey.pem")), 0o640);
    let account = lab.account();
    assert_eq!(mode(&account), 0o600);
    let log = lab.agent().log();
    assert!(
        !log.contains("BEGIN") && !log.contains("key_pkcs8"),
        "key material in the log"
    );

    // The challenge path goes to the responder, never to the backend, and
    // everything else on the plain port still redirects.
    let before = lab.backend.requests();
    let unknown = http::get(lab.http, "/.well-known/acme-challenge/no-such-token").expect("get");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(
        unknown.body.contains("no such challenge"),
        "{}",
        unknown.body
    );
    assert_eq!(http::get(lab.http, "/x").expect("get").status, 301);
    assert_eq!(
        lab.backend.requests(),
        before,
        "the challenge path reached the backend"
    );
    let s = lab.status();
    assert_eq!(s["certificates"][0]["state"], "valid", "{s}");
    assert!(
        lab.metrics()
            .contains("vpsie_lb_certificate_expiry_days{lb=\"shop\",name=\"shop.acme-lab.net\"}")
    );

    // Renewal: with a third of the lifetime left, a new certificate
    // replaces the files, and Envoy serves it without a listener change.
    let listeners = LISTENER_CHANGES.map(|s| lab.envoy_stat(s));
    assert!(
        lab.envoy_stat("listener_manager.listener_added") >= 2,
        "no listeners were added"
    );
    let second = lab.wait_served(
        "the renewed certificate served",
        Some(&first),
        Duration::from_secs(VALIDITY_SECS * 3),
    );
    assert_ne!(first, second);
    let after = LISTENER_CHANGES.map(|s| lab.envoy_stat(s));
    assert_eq!(
        listeners, after,
        "the renewal changed or drained a listener"
    );
    // Envoy reloads the files by itself; the event follows with the next pass.
    lab.agent()
        .wait_log("the renewal's event", "renewed, valid until");
}

fn pebble_down_keeps_the_old_certificate_reports_it_and_a_later_attempt_succeeds(via: Via) {
    let mut lab = AcmeLab::start(via);
    let first = lab.wait_served(
        "the issued certificate served",
        None,
        Duration::from_secs(60),
    );
    lab.pebble.kill();
    // The renewal (a third of the lifetime before expiry) fails.
    let status = poll_until(
        "a failed renewal in /status",
        Duration::from_secs(VALIDITY_SECS * 3),
        || {
            let s = lab.status();
            let c = &s["certificates"][0];
            if c["failures"].as_u64().unwrap_or(0) >= 1 {
                Ok(c.clone())
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(status["state"], "renewing", "{status}");
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    lab.agent().wait_log(
        "certificate_failed event",
        "\"event\":\"certificate_failed\"",
    );
    assert!(
        lab.metrics()
            .contains("vpsie_lb_acme_orders_total{lb=\"shop\",result=\"failed\"}"),
        "{}",
        lab.metrics()
    );
    assert_eq!(
        lab.served().expect("still served").0,
        first,
        "the old certificate was dropped"
    );

    // Pebble is back (with none of its accounts): the next attempt
    // registers again and renews.
    lab.pebble.resume();
    let renewed = lab.wait_served(
        "the certificate renewed after the outage",
        Some(&first),
        Duration::from_secs(120),
    );
    assert_ne!(renewed, first);
    let s = lab.status();
    assert_eq!(s["certificates"][0]["failures"], 0, "{s}");
    assert!(
        lab.pebble.log().contains("Issued certificate"),
        "{}",
        lab.pebble.log()
    );
}

fn a_restart_serves_the_stored_certificate_and_orders_nothing(via: Via) {
    // An hour's certificate: nothing is due during the test.
    let mut lab = AcmeLab::start_with(via, 3600, None);
    let first = lab.wait_served(
        "the issued certificate served",
        None,
        Duration::from_secs(60),
    );
    let account = lab.account();
    let credentials = std::fs::read(&account).expect("account");
    lab.restart_agent();
    let again = lab.wait_served("served after the restart", None, Duration::from_secs(60));
    assert_eq!(again, first, "the restart served another certificate");
    // The new agent reports the stored certificate once its first pass ran.
    poll_until(
        "the stored certificate reported valid",
        Duration::from_secs(30),
        || {
            let s = lab.status();
            match s["certificates"][0]["state"].as_str() {
                Some("valid") => Ok(()),
                _ => Err(format!("status: {s}")),
            }
        },
    );
    assert!(
        !lab.agent().log().contains("ordering a certificate"),
        "the restart ordered again: {}",
        lab.agent().log()
    );
    assert_eq!(std::fs::read(&account).expect("account"), credentials);
    assert_eq!(lab.account(), account, "a second account");
}

fn a_failed_challenge_waits_an_hour_before_the_next_order(via: Via) {
    // Pebble validates on a port nothing listens on: the order fails.
    let lab = AcmeLab::start_with(via, VALIDITY_SECS, Some(free_port()));
    lab.agent().wait_log(
        "certificate_failed event",
        "\"event\":\"certificate_failed\"",
    );
    assert!(
        lab.agent().log().contains("next attempt in 3600 s"),
        "{}",
        lab.agent().log()
    );
    // Passes go on; no new order comes within them.
    let passes = |log: &str| log.matches("\"message\":\"pass\"").count();
    let seen = passes(&lab.agent().log());
    poll_until("three more passes", Duration::from_secs(30), || {
        let n = passes(&lab.agent().log());
        if n >= seen + 3 {
            Ok(())
        } else {
            Err(format!("{n} passes"))
        }
    });
    let s = lab.status();
    let c = &s["certificates"][0];
    assert_eq!(c["state"], "waiting", "{s}");
    assert_eq!(c["failures"], 1, "{s}");
    assert!(c["next_attempt"].is_string(), "{s}");
    assert_eq!(
        lab.agent().log().matches("ordering a certificate").count(),
        1
    );
    // Waiting for its certificate, the load balancer has no https listener,
    // while its plain-HTTP side redirects from the start.
    assert!(
        lab.served().is_err(),
        "an https listener without a certificate"
    );
    assert_eq!(http::get(lab.http, "/").expect("get").status, 301);
}

common::over_deliveries!(
    a_certificate_is_issued_over_http01_served_and_renewed_without_a_listener_change,
    pebble_down_keeps_the_old_certificate_reports_it_and_a_later_attempt_succeeds,
    a_restart_serves_the_stored_certificate_and_orders_nothing,
    a_failed_challenge_waits_an_hour_before_the_next_order,
);
