//! The one `check()` helper the validation tables share, and the base
//! document they vary.

#![allow(dead_code)]

use serde_json::{Value, json};
use vpsie_lb_model::{ReservedPort, ValidateOptions, Validated, validate};

pub fn base() -> Value {
    json!({
        "id": "lb-1",
        "name": "web",
        "protocol": "https",
        "port": 443,
        "algorithm": "round_robin",
        "backends": [
            {"id": "b1", "address": "10.0.0.1", "port": 8080},
            {"id": "b2", "address": "10.0.0.2", "port": 8080, "weight": 3},
        ],
        "health_check": {"type": "http", "path": "/health", "interval": 10, "timeout": 2,
                         "healthy_threshold": 2, "unhealthy_threshold": 3},
        "tls_config": {"certificate_path": "/etc/tls/cert.pem", "private_key_path": "/etc/tls/key.pem"},
    })
}

/// `base()` with the value at JSON pointer `at` replaced (or removed when `v` is None).
pub fn with(at: &str, v: Option<Value>) -> Value {
    let mut doc = base();
    let (parent, key) = at.rsplit_once('/').expect("pointer has a slash");
    let target = doc.pointer_mut(parent).expect("parent exists");
    match (target, v) {
        (Value::Object(m), Some(v)) => {
            m.insert(key.to_owned(), v);
        }
        (Value::Object(m), None) => {
            m.remove(key);
        }
        (Value::Array(a), Some(v)) => a[key.parse::<usize>().expect("index")] = v,
        _ => panic!("cannot set {at}"),
    }
    doc
}

pub fn opts() -> ValidateOptions {
    ValidateOptions {
        strict: false,
        reserved_ports: vec![ReservedPort {
            port: 9901,
            owner: "envoy admin".into(),
        }],
        private_paths: vec!["/var/lib/vpsie-lb".into(), "/etc/vpsie-lb".into()],
        acme_directories: vec!["https://acme.internal:14000/dir".into()],
        ..Default::default()
    }
}

/// `expect` empty: the document must be valid. Otherwise every entry
/// ("path: text") must match one error (path equal, message containing the
/// text), and there must be no other errors.
pub fn check(doc: Value, expect: &[&str]) -> Option<Validated> {
    match validate(&doc, &opts()) {
        Ok(v) => {
            assert!(
                expect.is_empty(),
                "expected {expect:?}, but the document is valid"
            );
            Some(v)
        }
        Err(rej) => {
            let got: Vec<String> = rej.errors.iter().map(ToString::to_string).collect();
            assert!(!expect.is_empty(), "expected valid, got {got:#?}");
            for e in expect {
                let (path, text) = e.split_once(": ").expect("expectation is 'path: text'");
                assert!(
                    rej.errors
                        .iter()
                        .any(|p| p.path.to_string() == path && p.message.contains(text)),
                    "missing {e:?} in {got:#?}"
                );
            }
            assert_eq!(got.len(), expect.len(), "unexpected extra errors: {got:#?}");
            None
        }
    }
}

pub fn ok(doc: Value) -> Validated {
    check(doc, &[]).expect("valid")
}
