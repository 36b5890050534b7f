//! TLS client probes: handshakes with rustls, and a hand-built ClientHello
//! for protocol versions rustls refuses to speak (TLS 1.1).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};

use crate::http::{self, Response};
use crate::pki::Pair;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for a TLS backend.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert pem");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("parse key pem");
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server cert"),
    )
}

/// Accepts any server certificate: the tests compare the presented
/// certificate with the expected one themselves.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a client offers.
#[derive(Clone)]
pub struct ClientOptions {
    /// Protocol versions offered.
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// A client certificate to present.
    pub client_cert: Option<Pair>,
    /// The name sent as SNI and as the Host header; an IP address sends no SNI.
    pub server_name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![],
            client_cert: None,
            server_name: "lb.test".into(),
        }
    }
}

/// What a completed handshake agreed on.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The negotiated version.
    pub version: ProtocolVersion,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// The server's leaf certificate, DER.
    pub peer_cert: Vec<u8>,
}

/// Connects to 127.0.0.1:`port`, completes a handshake and sends one HTTP/1.1
/// GET. Returns the handshake and the response, or why it failed.
pub fn https_get(
    port: u16,
    opts: &ClientOptions,
    path: &str,
) -> Result<(Handshake, Response), String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&opts.versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())));
    let mut config = match &opts.client_cert {
        Some(pair) => {
            let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
                .map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let name = ServerName::try_from(opts.server_name.clone()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = http::connect(None, port).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    let handshake = Handshake {
        version: tls.conn.protocol_version().ok_or("no protocol version")?,
        alpn: tls
            .conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        peer_cert: tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?,
    };
    if handshake.alpn.as_deref() == Some("h2") {
        // Speaking HTTP/2 is curl's job in the tests; the handshake is the point here.
        return Ok((
            handshake,
            Response {
                status: 0,
                headers: vec![],
                body: String::new(),
            },
        ));
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        opts.server_name
    );
    tls.write_all(req.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    let mut raw = Vec::new();
    // A server that drops the connection after the handshake (for example on
    // a missing client certificate under TLS 1.3) shows up here.
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("read response: {e}")),
    }
    let resp = http::parse_response(&raw).map_err(|e| format!("parse response: {e}"))?;
    Ok((handshake, resp))
}

/// How a server answered a hand-built ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloOutcome {
    /// A ServerHello with this protocol version.
    ServerHello(u16),
    /// A TLS alert with this description code (70 is protocol_version).
    Alert(u8),
    /// The connection closed without a TLS record.
    Closed,
}

/// Sends a ClientHello whose highest version is `version` (0x0302 = TLS 1.1,
/// 0x0303 = TLS 1.2), with no supported_versions extension, and reports the
/// server's first record. rustls cannot offer TLS 1.1, so this is built by hand.
pub fn probe_client_hello(port: u16, version: u16) -> HelloOutcome {
    let mut sock = http::connect(None, port).expect("connect for ClientHello probe");
    sock.write_all(&client_hello(version))
        .expect("send ClientHello");
    let mut head = [0u8; 11];
    let mut got = 0;
    while got < head.len() {
        match sock.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    match head[0] {
        0x16 if got >= 11 && head[5] == 0x02 => {
            HelloOutcome::ServerHello(u16::from_be_bytes([head[9], head[10]]))
        }
        0x15 if got >= 7 => HelloOutcome::Alert(head[6]),
        _ => HelloOutcome::Closed,
    }
}

fn client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    // ECDHE AES-GCM (TLS 1.2) and ECDHE AES-CBC-SHA (usable with TLS 1.0/1.1).
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc009, 0xc013];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}
