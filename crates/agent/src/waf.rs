//! The WAF service's policy file: written before Envoy is handed a change,
//! so the service knows a load balancer's policy before Envoy sends it the
//! load balancer's first request.

use std::path::Path;

use vpsie_lb_model::Config;

/// The policy file's name in Envoy's config directory (`--out` of render).
pub const POLICY_FILE: &str = "waf.json";

/// Writes the policies of `config` to `path` unless they are what
/// `written` says was written last (`None`: unknown, so the file is read
/// and compared). Readable by all: it holds no secret, and the WAF runs as
/// its own user.
pub fn write_policies(
    path: &Path,
    config: &Config,
    written: &mut Option<String>,
) -> std::io::Result<()> {
    let text = vpsie_lb_envoy::waf_policies(config);
    if written.is_none() {
        *written = std::fs::read_to_string(path).ok();
    }
    if written.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)?;
    *written = Some(text);
    Ok(())
}
