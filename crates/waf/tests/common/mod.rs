//! What the engine's tests share: one engine over Debian's Core Rule Set,
//! and requests as a browser sends them.

#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::sync::LazyLock;

use vpsie_lb_waf::config::{Mode, Oversize, Policy};
use vpsie_lb_waf::engine::{DEFAULT_CRS_DIR, DEFAULT_CRS_SETUP, Engine, Request};

/// The engine, its rule set compiled once for every test in a file.
pub static ENGINE: LazyLock<Engine> =
    LazyLock::new(|| Engine::new(Path::new(DEFAULT_CRS_DIR), Path::new(DEFAULT_CRS_SETUP)));

/// A policy at paranoia level 1 that refuses what is past the limits.
pub fn policy(mode: Mode, exclusions: &[u32]) -> Policy {
    Policy {
        mode,
        paranoia_level: 1,
        exclusions: exclusions.to_vec(),
        oversize_body: Oversize::Refuse,
    }
}

/// A browser's GET of `uri`, with `headers` added or replacing its own.
pub fn get(uri: &str, headers: &[(&str, &str)]) -> Request {
    let mut h = vec![
        ("Host".to_owned(), "shop.example.com".to_owned()),
        (
            "User-Agent".to_owned(),
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".to_owned(),
        ),
        (
            "Accept".to_owned(),
            "text/html,application/xhtml+xml".to_owned(),
        ),
    ];
    for (k, v) in headers {
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        h.push(((*k).to_owned(), (*v).to_owned()));
    }
    Request {
        client: ("192.0.2.10".into(), 40000),
        method: "GET".into(),
        uri: uri.into(),
        http_version: "1.1".into(),
        headers: h,
        body: Vec::new(),
        partial: false,
    }
}

/// A POST of `body` as `content_type`.
pub fn post(uri: &str, content_type: &str, body: Vec<u8>) -> Request {
    let mut r = get(uri, &[("Content-Type", content_type)]);
    r.method = "POST".into();
    r.headers
        .push(("Content-Length".into(), body.len().to_string()));
    r.body = body;
    r
}
