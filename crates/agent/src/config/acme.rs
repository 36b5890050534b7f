//! The `acme` keys: where the agent answers HTTP-01 challenges, and which
//! CA it trusts for the ACME directory.

use std::path::PathBuf;

use serde::Deserialize;

/// `acme` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    responder_socket: Option<PathBuf>,
    directory_ca_file: Option<PathBuf>,
}

/// The `acme` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The challenge responder's Unix socket; Envoy connects to it.
    pub responder_socket: PathBuf,
    /// A PEM CA certificate to trust for the ACME directory instead of the
    /// system's roots (a private or test ACME server).
    pub directory_ca_file: Option<PathBuf>,
}

/// Reads `acme`, adding what is wrong to `problems`.
pub(super) fn read(raw: RawAcme, problems: &mut Vec<String>) -> AcmeConfig {
    let responder_socket = raw
        .responder_socket
        .unwrap_or_else(|| PathBuf::from(vpsie_lb_envoy::DEFAULT_ACME_SOCKET));
    super::socket_path("acme.responder_socket", &responder_socket, problems);
    if let Some(f) = &raw.directory_ca_file
        && !f.is_absolute()
    {
        problems.push(format!(
            "acme.directory_ca_file: {} must be an absolute path",
            f.display()
        ));
    }
    AcmeConfig {
        responder_socket,
        directory_ca_file: raw.directory_ca_file,
    }
}
