//! One load balancer (or more) with ACME certificates, its Pebble and its
//! agent: what `live_acme` and `live_acme_isolation` share.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use vpsie_lb_testkit::pebble::Pebble;
use vpsie_lb_testkit::tls::{ClientOptions, https_get};
use vpsie_lb_testkit::{free_port, http, poll_until, try_poll_until};

use super::{RunningAgent, Via, agent_config_via, backends, write_doc};

/// Lifetime of Pebble's certificates: renewal starts with a third left
/// (20 s in), which the renewal test waits for.
pub const VALIDITY_SECS: u64 = 30;

/// One load balancer with an ACME certificate, its Pebble and its agent.
pub struct AcmeLab {
    pub dir: tempfile::TempDir,
    pub pebble: Pebble,
    /// `None` only while [`AcmeLab::restart_agent`] swaps it.
    agent: Option<RunningAgent>,
    config: PathBuf,
    pub https: u16,
    pub http: u16,
    pub admin: u16,
    pub endpoints: u16,
    pub backend: vpsie_lb_testkit::backend::HttpBackend,
    /// The load balancer `shop`'s document.
    pub doc: Value,
}

/// How a lab differs from the plain one.
pub struct LabOptions {
    /// Lifetime of Pebble's certificates, seconds.
    pub validity: u64,
    /// Where Pebble validates instead of `shop`'s redirect port.
    pub challenge_port: Option<u16>,
    /// More of the agent's `acme` section, each line indented by two.
    pub acme_extra: String,
    /// ACME directories allowed besides Pebble's.
    pub directories: Vec<String>,
    /// Load balancers served beside `shop` from the start.
    pub others: Vec<Value>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            validity: VALIDITY_SECS,
            challenge_port: None,
            acme_extra: String::new(),
            directories: vec![],
            others: vec![],
        }
    }
}

impl AcmeLab {
    pub fn start(via: Via) -> AcmeLab {
        Self::start_with(via, VALIDITY_SECS, None)
    }

    /// Certificates valid for `validity`; Pebble validates on
    /// `challenge_port` instead of the redirect port when given.
    pub fn start_with(via: Via, validity: u64, challenge_port: Option<u16>) -> AcmeLab {
        let opts = LabOptions {
            validity,
            challenge_port,
            ..Default::default()
        };
        Self::start_opts(via, opts)
    }

    /// The lab as `opts` says.
    pub fn start_opts(via: Via, opts: LabOptions) -> AcmeLab {
        let dir = tempfile::tempdir().expect("tempdir");
        let (https, http, admin, endpoints) = (free_port(), free_port(), free_port(), free_port());
        // Pebble validates on the redirect port: port 80 stands in for it.
        let pebble = Pebble::start(opts.challenge_port.unwrap_or(http), opts.validity);
        let backend = backends(&["a"]).remove(0);
        let doc = json!({
            "id": "shop", "name": "shop", "protocol": "https", "port": https,
            "redirect_http_port": http,
            "tls_config": {"acme": {
                "domains": ["shop.acme-lab.net", "www.acme-lab.net"],
                "email": "ops@acme-lab.net",
                "directory_url": pebble.directory_url(),
            }},
            "backends": [{"id": "a", "address": "127.0.0.1", "port": backend.port()}],
        });
        let mut all = vec![doc.clone()];
        all.extend(opts.others);
        write_doc(&dir.path().join("desired.json"), &json!(all));
        let source = format!(
            "source: file\nfile: {d}/desired.json\nvpsie: {{poll_interval: 2s}}\nagent: {{listen_address: 127.0.0.1:{endpoints}}}\nacme:\n  responder_socket: {d}/acme.sock\n  directory_ca_file: {ca}\n  allowed_directories: ['{url}'{more}]\n{extra}",
            d = dir.path().display(),
            ca = pebble.ca_file().display(),
            url = pebble.directory_url(),
            extra = opts.acme_extra,
            more = opts
                .directories
                .iter()
                .map(|d| format!(", '{d}'"))
                .collect::<String>(),
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
            doc,
        }
    }

    /// Serves `docs` (an array) instead of what is served now.
    pub fn serve(&self, docs: &Value) {
        write_doc(&self.dir.path().join("desired.json"), docs);
    }

    pub fn agent(&self) -> &RunningAgent {
        self.agent.as_ref().expect("an agent runs")
    }

    /// Stops the agent (and its Envoy) and starts a new one on the same state.
    pub fn restart_agent(&mut self) {
        let mut old = self.agent.take().expect("an agent runs");
        old.terminate(Duration::from_secs(60));
        // Dropped before the new one starts: its drop kills any Envoy on
        // the same bootstrap, which would then be the new one's.
        drop(old);
        self.agent = Some(RunningAgent::start(self.dir.path(), &self.config));
    }

    /// The one stored ACME account.
    pub fn account(&self) -> PathBuf {
        let accounts = self.dir.path().join("state/acme/accounts");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&accounts)
            .expect("accounts")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("state/acme/certificates/shop")
    }

    /// The first certificate of the stored chain, DER.
    pub fn stored_der(&self) -> Result<Vec<u8>, String> {
        let pem = std::fs::read(self.store().join("fullchain.pem")).map_err(|e| e.to_string())?;
        first_der(&pem)
    }

    /// The certificate Envoy presents for `shop.acme-lab.net`, and the answer.
    pub fn served(&self) -> Result<(Vec<u8>, u16), String> {
        let opts = ClientOptions {
            server_name: "shop.acme-lab.net".into(),
            ..Default::default()
        };
        let (hs, resp) = https_get(self.https, &opts, "/")?;
        Ok((hs.peer_cert, resp.status))
    }

    /// Waits until Envoy serves the stored certificate, other than `not`.
    pub fn wait_served(&self, what: &str, not: Option<&[u8]>, within: Duration) -> Vec<u8> {
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

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.endpoint("/status")).expect("status is json")
    }

    /// The body of the agent's `path`, once its endpoints listen: after a
    /// restart over files, the Envoy it starts serves the stored files
    /// before the new agent binds its endpoints.
    pub fn endpoint(&self, path: &str) -> String {
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

    pub fn envoy_stat(&self, name: &str) -> u64 {
        let r = http::get(self.admin, &format!("/stats?filter=^{name}$")).expect("envoy stats");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
            .unwrap_or_else(|| panic!("envoy has no stat {name}: {}", r.body))
    }

    pub fn metrics(&self) -> String {
        self.endpoint("/metrics")
    }
}

pub fn first_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in the chain")?
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}
