//! Versions: short content hashes of what is served, as `/status`, the
//! metrics and the last-known-good directory name show them.

use std::collections::BTreeMap;

use serde_json::Value;

/// First 12 hex digits of the SHA-256 of `bytes`: the version of a document
/// or of a whole state.
pub fn short_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version `save` would name `docs` (what `/status` shows as
/// `config_version`); empty if they cannot be serialized.
pub fn docs_version(docs: &BTreeMap<String, Value>) -> String {
    serde_json::to_vec_pretty(docs)
        .map(|j| short_hash(&j))
        .unwrap_or_default()
}
