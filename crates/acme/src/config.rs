//! The `acme` keys: where the agent answers HTTP-01 challenges, and which
//! CA it trusts for the ACME directory.

use std::path::PathBuf;

use serde::Deserialize;

/// How long one order may take by default, the account stage included:
/// Let's Encrypt validates within seconds, and a directory that has not
/// answered in three minutes is not going to.
pub const DEFAULT_ORDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// `acme` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    responder_socket: Option<PathBuf>,
    directory_ca_file: Option<PathBuf>,
    allowed_directories: Option<Vec<String>>,
    account_email: Option<String>,
    order_timeout: Option<serde_norway::Value>,
}

/// The `acme` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The challenge responder's Unix socket; Envoy connects to it.
    pub responder_socket: PathBuf,
    /// A PEM CA certificate to trust for the ACME directory instead of the
    /// system's roots (a private or test ACME server).
    pub directory_ca_file: Option<PathBuf>,
    /// ACME directories documents may name besides Let's Encrypt's
    /// production and staging ones.
    pub allowed_directories: Vec<String>,
    /// The contact of the operator's ACME accounts (one per directory);
    /// documents' `email` is never sent to a CA.
    pub account_email: Option<String>,
    /// How long one order may take, the account stage included.
    pub order_timeout: std::time::Duration,
}

/// Reads `acme`, adding what is wrong to `problems`.
pub fn read(raw: RawAcme, problems: &mut Vec<String>) -> AcmeConfig {
    let responder_socket = raw
        .responder_socket
        .unwrap_or_else(|| PathBuf::from(vpsie_lb_envoy::DEFAULT_ACME_SOCKET));
    vpsie_lb_host::config_text::socket_path("acme.responder_socket", &responder_socket, problems);
    if let Some(f) = &raw.directory_ca_file
        && !f.is_absolute()
    {
        problems.push(format!(
            "acme.directory_ca_file: {} must be an absolute path",
            f.display()
        ));
    }
    let allowed_directories = raw.allowed_directories.unwrap_or_default();
    for d in &allowed_directories {
        if !d.starts_with("https://") || d.len() > 2048 {
            problems.push(format!(
                "acme.allowed_directories: {d:?} must be an https:// URL"
            ));
        }
    }
    if let Some(e) = &raw.account_email
        && (!e.contains('@')
            || e.len() > 254
            || e.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        problems.push(format!("acme.account_email: {e:?} is not an email address"));
    }
    let order_timeout = match raw
        .order_timeout
        .as_ref()
        .map(vpsie_lb_host::config_text::parse_duration)
    {
        None => DEFAULT_ORDER_TIMEOUT,
        Some(Ok(d))
            if (std::time::Duration::from_secs(5)..=std::time::Duration::from_secs(3600))
                .contains(&d) =>
        {
            d
        }
        Some(Ok(d)) => {
            problems.push(format!(
                "acme.order_timeout: {}s must be 5s..=1h",
                d.as_secs()
            ));
            DEFAULT_ORDER_TIMEOUT
        }
        Some(Err(e)) => {
            problems.push(format!("acme.order_timeout: {e}"));
            DEFAULT_ORDER_TIMEOUT
        }
    };
    AcmeConfig {
        responder_socket,
        directory_ca_file: raw.directory_ca_file,
        allowed_directories,
        account_email: raw.account_email,
        order_timeout,
    }
}
