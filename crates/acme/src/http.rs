//! The HTTP client ACME orders go through: hyper over rustls (the
//! platform's roots, or only the operator's CA), with a connect timeout
//! and a timeout on each request, the body included. With the whole order
//! under `acme.order_timeout` as well, no network step of an order can
//! hang: a directory that accepts connections and never answers costs one
//! step's timeout, not the ordering thread.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// How long a TCP connection to the directory may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, from sending it to its body's end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS client whose every request ends within its timeout.
pub struct Bounded {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl Bounded {
    /// A client trusting the platform's roots, or only the PEM CA in
    /// `ca_file`, with [`REQUEST_TIMEOUT`].
    pub fn new(ca_file: Option<&Path>) -> Result<Bounded, String> {
        Self::with_timeout(ca_file, REQUEST_TIMEOUT)
    }

    /// [`Bounded::new`] with each request cut at `timeout`.
    pub fn with_timeout(ca_file: Option<&Path>, timeout: Duration) -> Result<Bounded, String> {
        let builder = match ca_file {
            None => HttpsConnectorBuilder::new()
                .try_with_platform_verifier()
                .map_err(|e| format!("the system's trust roots: {e}"))?,
            Some(f) => HttpsConnectorBuilder::new().with_tls_config(roots_from(f)?),
        };
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.enforce_http(false);
        let https = builder
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Ok(Bounded {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }
}

/// A TLS config that trusts only the certificate in `file`.
fn roots_from(file: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let what =
        |e: &dyn std::fmt::Display| format!("acme.directory_ca_file {}: {e}", file.display());
    let der = CertificateDer::from_pem_file(file).map_err(|e| what(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).map_err(|e| what(&e))?;
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl HttpClient for Bounded {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let whole = async {
                let response = sent
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = response.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                    .to_bytes();
                Ok(BytesResponse::from(http::Response::from_parts(
                    parts,
                    Full::new(bytes),
                )))
            };
            match tokio::time::timeout(timeout, whole).await {
                Ok(answer) => answer,
                Err(_) => Err(instant_acme::Error::Other(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", timeout.as_secs_f64()),
                )))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_directory_that_never_answers_held_a_request_forever() {
        // Accepts, then says nothing: not even a TLS handshake.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "https://127.0.0.1:{}/dir",
            silent.local_addr().expect("addr").port()
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = Bounded::with_timeout(None, Duration::from_millis(300)).expect("client");
        let req = http::Request::get(&url)
            .body(BodyWrapper::default())
            .expect("request");
        let answer = runtime.block_on(async {
            // A second, longer bound, so a regression fails rather than hangs.
            tokio::time::timeout(Duration::from_secs(30), client.request(req)).await
        });
        let Ok(Err(e)) = answer else {
            panic!("the request was not cut at its timeout");
        };
        assert!(e.to_string().contains("no answer within 0.3 s"), "{e}");
        drop(silent);
    }
}
