//! Pebble, the RFC 8555 test server (Debian's `pebble`), on loopback: an
//! ACME directory that validates HTTP-01 challenges for real, against the
//! port the test names, with its DNS stand-in answering 127.0.0.1 for every
//! name. It can be stopped and started again to play an outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, pki, poll_until};

/// A running Pebble and its DNS server; both killed when dropped.
pub struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    dns_port: u16,
    pebble: Option<Child>,
    dns: Child,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on 127.0.0.1:`http_port`, issuing
    /// certificates valid for `validity_secs`.
    pub fn start(http_port: u16, validity_secs: u64) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::Ca::new("pebble test ca");
        let pair = ca.server(&["127.0.0.1", "localhost"]);
        let (cert, key) = pki::write_pair(dir.path(), "pebble", &pair);
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write ca");
        let (port, dns_port) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{}", free_port()),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write config");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log(dir.path(), "dns.log"))
            .stderr(log(dir.path(), "dns.log"))
            .spawn()
            .expect("start pebble-challtestsrv (scripts/setup.sh installs Debian's pebble)");
        let mut p = Pebble {
            dir,
            port,
            dns_port,
            pebble: None,
            dns,
        };
        p.resume();
        p
    }

    /// The directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA file that verifies Pebble's own listener.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Kills Pebble (its DNS stays): the directory stops answering, and
    /// everything it knew (accounts, orders) is gone, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts Pebble (again) and waits until its directory answers.
    pub fn resume(&mut self) {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            // No pauses before validating, no nonces refused at random, and
            // a fresh challenge for every order, renewals included.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log(self.dir.path(), "pebble.log"))
            .stderr(log(self.dir.path(), "pebble.log"))
            .spawn()
            .expect("start pebble (scripts/setup.sh installs Debian's pebble)");
        self.pebble = Some(child);
        let port = self.port;
        poll_until("pebble listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
}

fn log(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map(Stdio::from)
        .expect("open log")
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
