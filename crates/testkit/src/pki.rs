//! Test certificates made on the fly with rcgen (ECDSA P-256).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key.
#[derive(Clone)]
pub struct Pair {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// DER certificate, to compare with what a server presented.
    pub cert_der: Vec<u8>,
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![cn.to_owned()]).expect("valid subject alt name");
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

/// A self-signed server certificate for `cn`.
pub fn self_signed(cn: &str) -> Pair {
    let key = KeyPair::generate().expect("generate key");
    let cert = params(cn).self_signed(&key).expect("self-sign");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl Ca {
    /// A fresh CA called `cn`.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("generate ca key");
        let mut p = params(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).expect("self-sign ca");
        Ca {
            issuer: Issuer::new(p, key),
            cert_pem: cert.pem(),
        }
    }

    /// A server certificate for `names` (host names or IP addresses),
    /// signed by this CA.
    pub fn server(&self, names: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("generate server key");
        let mut p =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid subject alt names");
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign server cert");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// A client certificate for `cn`, signed by this CA.
    pub fn client(&self, cn: &str) -> Pair {
        let key = KeyPair::generate().expect("generate client key");
        let mut p = params(cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).expect("sign client cert");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}

/// Writes `pair` as `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600).
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pair.cert_pem).expect("write cert");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    (cert, key)
}

/// Replaces `path` with `contents` the way a certificate tool would: write a
/// temp file beside it, then rename it over the old one.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write replacement");
    std::fs::rename(&tmp, path).expect("rename replacement into place");
}
