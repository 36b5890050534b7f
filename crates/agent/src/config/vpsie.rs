//! The `source`, `file` and `vpsie` keys: where desired state comes from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{RawVpsie, SourceKind, Vpsie, parse_duration};

/// Reads `source`, `file` and `vpsie`, adding what is wrong to `problems`.
pub(super) fn read(
    source: Option<&str>,
    file: Option<PathBuf>,
    v: RawVpsie,
    problems: &mut Vec<String>,
) -> (SourceKind, Vpsie) {
    let source = kind(source, file, problems);
    let default_url = match source {
        SourceKind::VpsiePublic => "https://api.vpsie.com",
        _ => "https://api.vpsie.com/v1",
    };
    let api_url = v.api_url.unwrap_or_else(|| default_url.into());
    if let Some(p) = url_problem("vpsie.api_url", &api_url) {
        problems.push(p);
    } else if source == SourceKind::VpsiePublic
        && let Some(p) = origin_problem(&api_url)
    {
        problems.push(p);
    }
    if let Some(p) = v
        .agent_api_url
        .as_deref()
        .and_then(|u| url_problem("vpsie.agent_api_url", u))
    {
        problems.push(p);
    }
    let ids = ids(v.loadbalancer_ids, v.loadbalancer_id, &source, problems);
    let poll_interval = match v.poll_interval.as_ref().map(parse_duration) {
        None => Duration::from_secs(30),
        Some(Ok(d)) if d >= Duration::from_millis(100) => d,
        Some(Ok(_)) => {
            problems.push("vpsie.poll_interval: must be at least 100ms".into());
            Duration::from_secs(30)
        }
        Some(Err(msg)) => {
            problems.push(format!("vpsie.poll_interval: {msg}"));
            Duration::from_secs(30)
        }
    };
    let api_key_file = v
        .api_key_file
        .unwrap_or_else(|| PathBuf::from("/etc/vpsie-lb/api-key"));
    if source.is_remote()
        && let Some(p) = key_file_problem(&api_key_file)
    {
        problems.push(p);
    }
    let vpsie = Vpsie {
        api_url: api_url.trim_end_matches('/').to_owned(),
        api_key_file,
        loadbalancer_ids: ids,
        poll_interval,
        certificate_dir: v
            .certificate_dir
            .unwrap_or_else(|| PathBuf::from("/etc/vpsie-lb/certs")),
        agent_api_url: v.agent_api_url.map(|u| u.trim_end_matches('/').to_owned()),
        redirect_port: v.redirect_port.filter(|p| *p > 0).unwrap_or(80),
    };
    (source, vpsie)
}

/// The `source` key (and `file`, which `source: file` needs).
fn kind(source: Option<&str>, file: Option<PathBuf>, problems: &mut Vec<String>) -> SourceKind {
    match source.unwrap_or("vpsie") {
        "vpsie" => SourceKind::Vpsie,
        "vpsie_public" => SourceKind::VpsiePublic,
        "file" => match file {
            Some(f) => SourceKind::File(f),
            None => {
                problems.push("file: is required when source is file".into());
                SourceKind::File(PathBuf::new())
            }
        },
        other => {
            problems.push(format!(
                "source: must be vpsie, vpsie_public or file (got {other:?})"
            ));
            SourceKind::Vpsie
        }
    }
}

/// `loadbalancer_ids` and `loadbalancer_id`, merged, sorted and checked.
fn ids(
    list: Option<Vec<String>>,
    one: Option<String>,
    source: &SourceKind,
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut ids = list.unwrap_or_default();
    ids.extend(one);
    ids.sort();
    ids.dedup();
    for id in &ids {
        if !vpsie_lb_model::is_valid_id(id) {
            problems.push(format!(
                "vpsie.loadbalancer_ids: {id:?} must match [A-Za-z0-9_-]{{1,64}}"
            ));
        }
    }
    if ids.len() > vpsie_lb_model::limits::MAX_LOAD_BALANCERS {
        problems.push(format!(
            "vpsie.loadbalancer_ids: {} ids, more than the {} one agent serves",
            ids.len(),
            vpsie_lb_model::limits::MAX_LOAD_BALANCERS
        ));
    }
    if source.is_remote() && ids.is_empty() {
        problems.push(
            "vpsie.loadbalancer_ids: at least one id is required when source is vpsie or vpsie_public".into(),
        );
    }
    ids
}

/// Whether `url` is https, or http to a loopback host.
pub(super) fn url_problem(key: &str, url: &str) -> Option<String> {
    match crate::origin::Origin::parse(url) {
        Err(e) => Some(format!("{key}: {e}")),
        Ok(o) if o.scheme == "http" && !o.is_loopback() => Some(format!(
            "{key}: {url:?} must use https unless the host is loopback"
        )),
        Ok(_) => None,
    }
}

/// With the public API, `api_url` is an origin: every path is absolute.
fn origin_problem(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    (!path.trim_end_matches('/').is_empty()).then(|| {
        format!(
            "vpsie.api_url: {url:?} has a path; with source vpsie_public it is the origin alone (https://api.vpsie.com), because every endpoint has its own absolute path"
        )
    })
}

/// The API key file must exist and be readable by its owner (and group) only.
fn key_file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("vpsie.api_key_file: {}: {e}", path.display())),
        Ok(m) if m.permissions().mode() & 0o004 != 0 => Some(format!(
            "vpsie.api_key_file: {} is readable by every user (mode {:04o}); run chmod 600 {}",
            path.display(),
            m.permissions().mode() & 0o777,
            path.display()
        )),
        Ok(_) => None,
    }
}

/// Reads the API key (trimmed). The key is never logged or put in an error.
pub fn read_api_key(path: &Path) -> Result<String, String> {
    let key = std::fs::read_to_string(path)
        .map_err(|e| format!("vpsie.api_key_file: {}: {e}", path.display()))?;
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(format!("vpsie.api_key_file: {} is empty", path.display()));
    }
    Ok(key)
}
