//! Live: certificates obtained over ACME from Pebble (the RFC 8555 test
//! server), through a real HTTP-01 challenge that Pebble sends to our
//! Envoy's redirect listener, which hands it to the agent's responder.
//! Runs `vpsie-lb-agent run` (the ordering lives there) over both deliveries.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, write_doc};
use serde_json::{Value, json};
use vpsie_lb_testkit::pebble::Pebble;
use vpsie_lb_testkit::tls::{ClientOptions, https_get};
use vpsie_lb_testkit::{free_port, http, poll_until, try_poll_until};

/// Lifetime of Pebble's certificates: renewal starts with a third left
/// (20 s in), which the renewal test waits for.
const VALIDITY_SECS: u64 = 30;

/// Envoy's counts of listener updates and removals (each drains the old one).
const LISTENER_CHANGES: [&str; 2] = [
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
];

/// One load balancer with an ACME certificate, its Pebble and its agent.
struct AcmeLab {
    dir: tempfile::TempDir,
    pebble: Pebble,
    /// `None` only while [`AcmeLab::restart_agent`] swaps it.
    agent: Option<RunningAgent>,
    config: PathBuf,
    https: u16,
    http: u16,
    admin: u16,
    endpoints: u16,
    backend: vpsie_lb_testkit::backend::HttpBackend,
}

impl AcmeLab {
    fn start(via: Via) -> AcmeLab {
        Self::start_with(via, VALIDITY_SECS, None)
    }

    /// Certificates valid for `validity`; Pebble validates on
    /// `challenge_port` instead of the redirect port when given.
    fn start_with(via: Via, validity: u64, challenge_port: Option<u16>) -> AcmeLab {
        let dir = tempfile::tempdir().expect("tempdir");
        let (https, http, admin, endpoints) = (free_port(), free_port(), free_port(), free_port());
        // Pebble validates on the redirect port: port 80 stands in for it.
        let pebble = Pebble::start(challenge_port.unwrap_or(http), validity);
        let backend = backends(&["a"]).remove(0);
        let doc = json!({
            "id": "shop", "name": "shop", "protocol": "https", "port": https,
            "redirect_http_port": http,
            "tls_config": {"acme": {
                "domains": ["shop.acme.test", "www.acme.test"],
                "email": "ops@acme.test",
                "directory_url": pebble.directory_url(),
            }},
            "backends": [{"id": "a", "address": "127.0.0.1", "port": backend.port()}],
        });
        write_doc(&dir.path().join("desired.json"), &doc);
        let source = format!(
            "source: file\nfile: {d}/desired.json\nvpsie: {{poll_interval: 2s}}\nagent: {{listen_address: 127.0.0.1:{endpoints}}}\nacme:\n  responder_socket: {d}/acme.sock\n  directory_ca_file: {ca}\n",
            d = dir.path().display(),
            ca = pebble.ca_file().display(),
        );
        let config = agent_config_via(dir.path(), admin, &source, via);
        let agent = Some(RunningAgent::start(dir.path(), &config));
        AcmeLab {
            dir,
            pebble,
            agent,
            config,
            https,
            http,
            admin,
            endpoints,
            backend,
        }
    }

    fn agent(&self) -> &RunningAgent {
        self.agent.as_ref().expect("an agent runs")
    }

    /// Stops the agent (and its Envoy) and starts a new one on the same state.
    fn restart_agent(&mut self) {
        let mut old = self.agent.take().expect("an agent runs");
        old.terminate(Duration::from_secs(60));
        // Dropped before the new one starts: its drop kills any Envoy on
        // the same bootstrap, which would then be the new one's.
        drop(old);
        self.agent = Some(RunningAgent::start(self.dir.path(), &self.config));
    }

    /// The one stored ACME account.
    fn account(&self) -> PathBuf {
        let accounts = self.dir.path().join("state/acme/accounts");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&accounts)
            .expect("accounts")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("state/acme/certificates/shop")
    }

    /// The first certificate of the stored chain, DER.
    fn stored_der(&self) -> Result<Vec<u8>, String> {
        let pem = std::fs::read(self.store().join("fullchain.pem")).map_err(|e| e.to_string())?;
        first_der(&pem)
    }

    /// The certificate Envoy presents for `shop.acme.test`, and the answer.
    fn served(&self) -> Result<(Vec<u8>, u16), String> {
        let opts = ClientOptions {
            server_name: "shop.acme.test".into(),
            ..Default::default()
        };
        let (hs, resp) = https_get(self.https, &opts, "/")?;
        Ok((hs.peer_cert, resp.status))
    }

    /// Waits until Envoy serves the stored certificate, other than `not`.
    fn wait_served(&self, what: &str, not: Option<&[u8]>, within: Duration) -> Vec<u8> {
        let got = try_poll_until(what, within, || {
            let stored = self.stored_der()?;
            let (served, status) = self.served()?;
            if Some(served.as_slice()) == not {
                return Err("still the old certificate".into());
            }
            if served != stored || status != 200 {
                return Err(format!("served another certificate, or status {status}"));
            }
            Ok(served)
        });
        // The agent's and Pebble's logs say why nothing came.
        got.unwrap_or_else(|e| {
            panic!(
                "{e}\nagent:\n{}\npebble:\n{}",
                self.agent().log(),
                self.pebble.log()
            )
        })
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.endpoint("/status")).expect("status is json")
    }

    /// The body of the agent's `path`, once its endpoints listen: after a
    /// restart over files, the Envoy it starts serves the stored files
    /// before the new agent binds its endpoints.
    fn endpoint(&self, path: &str) -> String {
        poll_until(
            &format!("agent {path} answers"),
            Duration::from_secs(30),
            || {
                http::get(self.endpoints, path)
                    .map(|r| r.body)
                    .map_err(|e| e.to_string())
            },
        )
    }

    fn envoy_stat(&self, name: &str) -> u64 {
        let r = http::get(self.admin, &format!("/stats?filter=^{name}$")).expect("envoy stats");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
            .unwrap_or_else(|| panic!("envoy has no stat {name}: {}", r.body))
    }

    fn metrics(&self) -> String {
        self.endpoint("/metrics")
    }
}

fn first_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in the chain")?
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}

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
            .contains("vpsie_lb_certificate_expiry_days{lb=\"shop\",name=\"shop.acme.test\"}")
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
