//! The certificate store under `state_dir/acme`: one directory per load
//! balancer with its key, chain and what they were issued for, and the ACME
//! accounts. Every file is written by rename, so a crash leaves the old file
//! or the new one, and Envoy (which watches the directory) sees the switch.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vpsie_lb_model::acme::Issued;

use vpsie_lb_host::fsutil;

/// Mode of keys, chains and their record: the agent, and Envoy through the
/// agent's group (Envoy's user is a member of it).
const CERT_MODE: u32 = 0o640;
/// Mode of an account's credentials: they hold its private key; only the agent reads them.
const ACCOUNT_MODE: u32 = 0o600;
/// Mode of the store's directories: Envoy must enter them, nobody else.
const DIR_MODE: u32 = 0o750;

/// What a stored certificate was issued for, kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    domains: Vec<String>,
    directory_url: String,
}

/// A certificate in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The names it was ordered for.
    pub domains: Vec<String>,
    /// The directory that issued it.
    pub directory_url: String,
    /// Valid from, Unix seconds.
    pub not_before: i64,
    /// Valid until, Unix seconds.
    pub not_after: i64,
    /// Where its files are.
    pub paths: Issued,
}

/// The store's root (`state_dir/acme`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store of the agent whose state lives in `state_dir`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            root: state_dir.join("acme"),
        }
    }

    fn cert_dir(&self, lb: &str) -> PathBuf {
        self.root.join("certificates").join(lb)
    }

    fn paths(&self, lb: &str) -> Issued {
        let dir = self.cert_dir(lb);
        Issued {
            certificate_path: dir.join("fullchain.pem").display().to_string(),
            private_key_path: dir.join("privkey.pem").display().to_string(),
        }
    }

    /// The certificate stored for `lb`, if a whole one is there.
    pub fn load(&self, lb: &str) -> io::Result<Option<Stored>> {
        let paths = self.paths(lb);
        let record = match std::fs::read(self.cert_dir(lb).join("issued.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let record = parse_record(&record)?;
        let chain = std::fs::read(&paths.certificate_path)?;
        std::fs::metadata(&paths.private_key_path)?;
        let (not_before, not_after) = validity(&chain)?;
        Ok(Some(Stored {
            domains: record.domains,
            directory_url: record.directory_url,
            not_before,
            not_after,
            paths,
        }))
    }

    /// Stores a new key and chain for `lb`. The key goes first: Envoy
    /// reloads on each rename, refuses a key that does not match its chain
    /// and keeps serving the old pair until the chain follows.
    pub fn save(
        &self,
        lb: &str,
        acme: &vpsie_lb_model::Acme,
        key_pem: &str,
        chain_pem: &str,
    ) -> io::Result<Stored> {
        let (not_before, not_after) = validity(chain_pem.as_bytes())?;
        let dir = self.cert_dir(lb);
        ensure_private_dir(&dir)?;
        let paths = self.paths(lb);
        fsutil::write_atomic(
            Path::new(&paths.private_key_path),
            key_pem.as_bytes(),
            CERT_MODE,
        )?;
        fsutil::write_atomic(
            Path::new(&paths.certificate_path),
            chain_pem.as_bytes(),
            CERT_MODE,
        )?;
        let record = Record {
            domains: acme.domains.clone(),
            directory_url: acme.directory_url.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        fsutil::write_atomic(&dir.join("issued.json"), &json, CERT_MODE)?;
        Ok(Stored {
            domains: record.domains,
            directory_url: record.directory_url,
            not_before,
            not_after,
            paths,
        })
    }

    fn account_path(&self, directory_url: &str, email: Option<&str>) -> PathBuf {
        let mut h = Sha256::new();
        h.update(directory_url.as_bytes());
        h.update([0]);
        h.update(email.unwrap_or("").as_bytes());
        let digest = h.finalize();
        let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("accounts").join(format!("{name}.json"))
    }

    /// The saved credentials of the account for this directory and contact.
    pub fn account(&self, directory_url: &str, email: Option<&str>) -> io::Result<Option<String>> {
        match std::fs::read_to_string(self.account_path(directory_url, email)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves an account's credentials, so a restart reuses the account.
    pub fn save_account(
        &self,
        directory_url: &str,
        email: Option<&str>,
        credentials: &str,
    ) -> io::Result<()> {
        let path = self.account_path(directory_url, email);
        ensure_private_dir(path.parent().unwrap_or(&self.root))?;
        fsutil::write_atomic(&path, credentials.as_bytes(), ACCOUNT_MODE)
    }

    /// Forgets an account the server no longer knows, so the next order registers anew.
    pub fn forget_account(&self, directory_url: &str, email: Option<&str>) -> io::Result<()> {
        match std::fs::remove_file(self.account_path(directory_url, email)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Creates `dir` (and the store above it) with [`DIR_MODE`].
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// A certificate's `issued.json`; any bytes give an error, never a panic.
pub fn parse_record(bytes: &[u8]) -> io::Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("issued.json: {e}")))
}

/// The validity of the first certificate of a PEM chain, Unix seconds.
pub fn validity(chain_pem: &[u8]) -> io::Result<(i64, i64)> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem)
        .map_err(|e| bad(format!("certificate chain: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pem(days: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.com".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = params.not_before + std::time::Duration::from_secs(days as u64 * 86_400);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn a_saved_certificate_loads_back_with_its_validity_and_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        assert_eq!(store.load("shop").expect("load"), None);
        let acme = vpsie_lb_model::Acme::new(
            vec!["a.example.com".into()],
            None,
            "https://ca.example/dir".into(),
        );
        let (key, chain) = pem(90);
        let saved = store.save("shop", &acme, &key, &chain).expect("save");
        assert_eq!(store.load("shop").expect("load"), Some(saved.clone()));
        assert_eq!(saved.not_after - saved.not_before, 90 * 86_400);
        assert_eq!(saved.domains, acme.domains);
        let mode = |p: &str| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&saved.paths.private_key_path), 0o640);
        assert_eq!(mode(&saved.paths.certificate_path), 0o640);
        store
            .save_account("https://ca.example/dir", None, "{}")
            .expect("account");
        assert_eq!(
            store
                .account("https://ca.example/dir", None)
                .expect("read")
                .as_deref(),
            Some("{}")
        );
        assert_eq!(
            store
                .account("https://ca.example/dir", Some("a@b.c"))
                .expect("read"),
            None
        );
        let acct = store.account_path("https://ca.example/dir", None);
        assert_eq!(mode(&acct.display().to_string()), 0o600);
    }

    #[test]
    fn a_corrupt_record_is_an_error_that_names_it_never_a_missing_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let cert_dir = store.cert_dir("shop");
        std::fs::create_dir_all(&cert_dir).expect("mkdir");
        std::fs::write(cert_dir.join("issued.json"), "{not json").expect("write");
        let err = store.load("shop").expect_err("corrupt record");
        assert!(err.to_string().contains("issued.json"), "{err}");
    }

    #[test]
    fn a_chain_that_is_not_a_certificate_is_refused_with_the_reason() {
        let err = validity(b"-----BEGIN NONSENSE-----\nAAAA\n-----END NONSENSE-----\n")
            .expect_err("not a certificate");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(validity(b"").is_err());
    }
}
