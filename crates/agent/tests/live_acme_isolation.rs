//! Live, against Pebble: one load balancer's ACME settings never get it a
//! certificate for another's name, never hold back another's order, and
//! never spend what the operator's accounts are allowed. Runs
//! `vpsie-lb-agent run` over both deliveries.

mod common;

use std::time::Duration;

use common::Via;
use common::acme::{AcmeLab, LabOptions};
use serde_json::{Value, json};
use vpsie_lb_testkit::{free_port, poll_until};

/// An ACME load balancer `id` for `domains` on ports of its own, ordering
/// from `directory` with contact `email`.
fn acme_lb(id: &str, domains: &[&str], directory: &str, email: &str, backend: u16) -> Value {
    json!({
        "id": id, "name": id, "protocol": "https", "port": free_port(),
        "redirect_http_port": free_port(),
        "tls_config": {"acme": {"domains": domains, "email": email, "directory_url": directory}},
        "backends": [{"id": "a", "address": "127.0.0.1", "port": backend}],
    })
}

/// The agent's log lines with `event` for load balancer `id`.
fn events(lab: &AcmeLab, id: &str, event: &str) -> usize {
    let (lb, ev) = (
        format!("\"lb_id\":\"{id}\""),
        format!("\"event\":\"{event}\""),
    );
    lab.agent()
        .log()
        .lines()
        .filter(|l| l.contains(&lb) && l.contains(&ev))
        .count()
}

/// Waits until `id` has a `certificate_issued` or `certificate_failed` event.
fn wait_order_ended(lab: &AcmeLab, id: &str, within: Duration) {
    poll_until(&format!("{id}'s order ended"), within, || {
        if events(lab, id, "certificate_issued") + events(lab, id, "certificate_failed") > 0 {
            Ok(())
        } else {
            Err(lab.agent().log())
        }
    });
}

/// A load balancer whose names point at another's port 80 (Pebble
/// validates every name on shop's redirect port, as the CA reaches whatever
/// listens where a name resolves): its challenges reach shop's listener,
/// which answers only shop's tokens, so it gets no certificate. Before, the
/// one responder answered every order's tokens through every listener, and
/// an attacker got a certificate for the victim's name. Naming shop's own
/// name is refused outright: a name has one certificate owner.
fn regression_a_load_balancer_got_a_certificate_for_another_ones_name(via: Via) {
    let lab = AcmeLab::start(via);
    lab.wait_served("shop's certificate", None, Duration::from_secs(60));
    let url = lab.pebble.directory_url();
    let port = lab.backend.port();
    let owned = acme_lb(
        "attacker",
        &["shop.acme-lab.net"],
        &url,
        "x@evil-lab.net",
        port,
    );
    lab.serve(&json!([lab.doc, owned]));
    lab.agent().wait_log(
        "the attacker refused for naming shop's name",
        "already has its certificate ordered by",
    );
    let pointed = acme_lb(
        "attacker",
        &["mail.acme-lab.net"],
        &url,
        "x@evil-lab.net",
        port,
    );
    lab.serve(&json!([lab.doc, pointed]));
    wait_order_ended(&lab, "attacker", Duration::from_secs(120));
    assert_eq!(
        events(&lab, "attacker", "certificate_issued"),
        0,
        "{}",
        lab.agent().log()
    );
    assert!(
        !lab.dir
            .path()
            .join("state/acme/certificates/attacker")
            .exists(),
        "a certificate was stored for the attacker"
    );
    // Shop's own certificate is untouched and still served.
    assert!(lab.served().is_ok_and(|(_, status)| status == 200));
}

/// A directory that accepts connections and never answers: the order of
/// the load balancer that names it hangs until its request's timeout, while
/// another load balancer's order goes through meanwhile. Before, one
/// ordering thread waited on it, with no timeout on the account stage and
/// none on any request.
fn regression_a_silent_acme_directory_stopped_every_certificate(via: Via) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!(
        "https://127.0.0.1:{}/dir",
        silent.local_addr().expect("addr").port()
    );
    // Accepted and held, never a byte back, until the test ends (or 5 minutes).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while !stopped.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            match silent.accept() {
                Ok((c, _)) if conns.len() < 64 => conns.push(c),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    // Named to come before shop: a single ordering thread took it first.
    let hung = acme_lb(
        "hung",
        &["hung.acme-lab.net"],
        &silent_url,
        "a@acme-lab.net",
        free_port(),
    );
    let opts = LabOptions {
        acme_extra: "  order_timeout: 45s\n".into(),
        directories: vec![silent_url],
        others: vec![hung],
        ..Default::default()
    };
    let lab = AcmeLab::start_opts(via, opts);
    lab.wait_served("shop's certificate", None, Duration::from_secs(60));
    // Served while the silent directory's order still hangs.
    let hung_state = lab.status()["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["load_balancer"] == "hung").cloned())
        .expect("hung's certificate in /status");
    assert_eq!(hung_state["state"], "ordering", "{hung_state}");
    // And that one ends at its first request's timeout (30 s, before the
    // order's 45 s), as a failure that says so.
    wait_order_ended(&lab, "hung", Duration::from_secs(90));
    let log = lab.agent().log();
    assert!(log.contains("no answer within 30 s"), "{log}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    held.join().expect("the silent directory's thread");
}

/// After a failed order the same names, listed in another order, wait out
/// the hour. Before, reordering `domains` reset the wait.
fn regression_reordering_the_names_reset_the_wait_after_a_failed_order(via: Via) {
    // Pebble validates on a port nothing listens on: the order fails.
    let lab = AcmeLab::start_with(via, 30, Some(free_port()));
    wait_order_ended(&lab, "shop", Duration::from_secs(120));
    let mut reordered = lab.doc.clone();
    reordered["tls_config"]["acme"]["domains"] = json!(["www.acme-lab.net", "shop.acme-lab.net"]);
    reordered["tls_config"]["acme"]["email"] = json!("other@acme-lab.net");
    lab.serve(&json!([reordered]));
    // Passes go on; no new order comes within them.
    let passes = |log: &str| log.matches("\"message\":\"pass\"").count();
    let seen = passes(&lab.agent().log());
    poll_until("four more passes", Duration::from_secs(30), || {
        let n = passes(&lab.agent().log());
        if n >= seen + 4 {
            Ok(())
        } else {
            Err(format!("{n} passes"))
        }
    });
    assert_eq!(
        lab.agent().log().matches("ordering a certificate").count(),
        1,
        "{}",
        lab.agent().log()
    );
    let s = lab.status();
    assert_eq!(s["certificates"][0]["failures"], 1, "{s}");
    assert!(s["certificates"][0]["next_attempt"].is_string(), "{s}");
}

/// Twelve load balancers with twelve contacts at one directory: one
/// account, the operator's. Before, each `email` registered its own, and
/// one customer could use up what a CA allows an address (Let's Encrypt:
/// 10 accounts per IP per 3 hours).
fn regression_each_email_registered_an_account(via: Via) {
    let lab = AcmeLab::start(via);
    lab.wait_served("shop's certificate", None, Duration::from_secs(60));
    let url = lab.pebble.directory_url();
    let mut docs = vec![lab.doc.clone()];
    for i in 0..12 {
        let (id, name, email) = (
            format!("t{i}"),
            format!("t{i}.acme-lab.net"),
            format!("c{i}@acme-lab.net"),
        );
        docs.push(acme_lb(&id, &[&name], &url, &email, lab.backend.port()));
    }
    lab.serve(&json!(docs));
    for i in 0..12 {
        wait_order_ended(&lab, &format!("t{i}"), Duration::from_secs(180));
    }
    let accounts = std::fs::read_dir(lab.dir.path().join("state/acme/accounts"))
        .expect("accounts")
        .count();
    assert_eq!(accounts, 1, "one account per directory");
}

common::over_deliveries!(
    regression_a_load_balancer_got_a_certificate_for_another_ones_name,
    regression_a_silent_acme_directory_stopped_every_certificate,
    regression_reordering_the_names_reset_the_wait_after_a_failed_order,
    regression_each_email_registered_an_account,
);
