//! TLS termination settings.

use crate::model::{
    DEFAULT_ALPN, DEFAULT_CIPHER_SUITES, KNOWN_CIPHER_SUITES, SniCertificate, Tls, TlsVersion,
    limits,
};

use super::hosts::{host_list, unique_server_names};
use super::obj::{Ctx, Need, Obj, type_name};

const TLS_KEYS: &[&str] = &[
    "certificate_path",
    "private_key_path",
    "ca_cert_path",
    "min_version",
    "max_version",
    "cipher_suites",
    "alpn",
    "certificates",
];
const CERT_KEYS: &[&str] = &["server_names", "certificate_path", "private_key_path"];

pub(super) fn tls(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Tls> {
    obj.check_keys(TLS_KEYS, cx);
    let certificate_path = obj.abs_path(cx, "certificate_path", Need::Required);
    let private_key_path = obj.abs_path(cx, "private_key_path", Need::Required);
    let ca_cert_path = obj.abs_path(cx, "ca_cert_path", Need::Optional);
    let versions = [
        ("TLSv1.2", TlsVersion::Tls12),
        ("TLSv1.3", TlsVersion::Tls13),
    ];
    let min_version = if obj.get("min_version").is_some() {
        obj.enumeration(cx, "min_version", &versions, Need::Required)
    } else {
        Some(TlsVersion::Tls12)
    };
    let max_version = obj.enumeration(cx, "max_version", &versions, Need::Optional);
    if let (Some(min), Some(max)) = (min_version, max_version)
        && max < min
    {
        cx.error(
            &obj.path.key("max_version"),
            "must not be lower than min_version",
        );
    }

    let mut ok = true;
    let mut cipher_suites = Vec::new();
    if let Some(items) = obj.array(cx, "cipher_suites", Need::Optional) {
        let list = obj.path.key("cipher_suites");
        for (i, v) in items.iter().enumerate() {
            let at = list.index(i);
            match v.as_str() {
                Some(s) if s.starts_with("TLS_") => {
                    cx.error(&at, format!("{s:?} is a TLS 1.3 suite, which Envoy does not let us choose; list TLS 1.2 suites only"));
                    ok = false;
                }
                Some(s) if KNOWN_CIPHER_SUITES.contains(&s) => {
                    if cipher_suites.iter().any(|c| c == s) {
                        cx.error(&at, format!("{s:?} is listed twice"));
                        ok = false;
                    } else {
                        cipher_suites.push(s.to_owned());
                    }
                }
                Some(s) => {
                    cx.error(
                        &at,
                        format!(
                            "unknown cipher suite {s:?}; known: {}",
                            KNOWN_CIPHER_SUITES.join(", ")
                        ),
                    );
                    ok = false;
                }
                None => {
                    cx.error(&at, format!("must be a string, got {}", type_name(v)));
                    ok = false;
                }
            }
        }
        if !cipher_suites.is_empty() && min_version == Some(TlsVersion::Tls13) {
            cx.warn(&list, "has no effect when min_version is TLSv1.3");
        }
    }
    if cipher_suites.is_empty() {
        cipher_suites = DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }

    let mut alpn = Vec::new();
    if let Some(items) = obj.array(cx, "alpn", Need::Optional) {
        let list = obj.path.key("alpn");
        for (i, v) in items.iter().enumerate() {
            match v.as_str() {
                Some(s @ ("h2" | "http/1.1")) if !alpn.iter().any(|a| a == s) => {
                    alpn.push(s.to_owned())
                }
                Some(s @ ("h2" | "http/1.1")) => {
                    cx.error(&list.index(i), format!("{s:?} is listed twice"));
                    ok = false;
                }
                _ => {
                    cx.error(&list.index(i), "must be \"h2\" or \"http/1.1\"");
                    ok = false;
                }
            }
        }
    }
    if alpn.is_empty() {
        alpn = DEFAULT_ALPN.iter().map(|s| (*s).to_owned()).collect();
    }
    let certificates = certificates(obj, cx);
    if !ok {
        return None;
    }
    if let (Some(min), Some(max)) = (min_version, max_version)
        && max < min
    {
        return None;
    }
    Some(Tls {
        certificate_path: certificate_path?,
        private_key_path: private_key_path?,
        ca_cert_path,
        min_version: min_version?,
        max_version,
        cipher_suites,
        alpn,
        certificates: certificates?,
    })
}

/// The extra certificates chosen by SNI.
fn certificates(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Vec<SniCertificate>> {
    let Some(items) = obj.array(cx, "certificates", Need::Optional) else {
        return Some(vec![]);
    };
    let list = obj.path.key("certificates");
    if items.len() > limits::MAX_CERTIFICATES {
        cx.error(
            &list,
            format!(
                "has {} certificates, more than the {} a listener may have besides the default",
                items.len(),
                limits::MAX_CERTIFICATES
            ),
        );
        return None;
    }
    let before = cx.errors.len();
    let mut out = Vec::new();
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut c) = Obj::new(item, &list.index(i), cx) else {
            continue;
        };
        c.kind = "certificate";
        c.check_keys(CERT_KEYS, cx);
        if c.get("server_names").is_none() {
            cx.error(&c.path.key("server_names"), "is required");
        }
        let server_names = host_list(&c, "server_names", limits::MAX_SERVER_NAMES, cx);
        if server_names.as_ref().is_some_and(Vec::is_empty) && c.get("server_names").is_some() {
            cx.error(&c.path.key("server_names"), "must name at least one server");
        }
        let certificate_path = c.abs_path(cx, "certificate_path", Need::Required);
        let private_key_path = c.abs_path(cx, "private_key_path", Need::Required);
        if let Some(n) = &server_names {
            names.push((c.path.key("server_names"), n.clone()));
        }
        if let (Some(server_names), Some(certificate_path), Some(private_key_path)) =
            (server_names, certificate_path, private_key_path)
        {
            out.push(SniCertificate {
                server_names,
                certificate_path,
                private_key_path,
            });
        }
    }
    unique_server_names(&names, cx);
    (cx.errors.len() == before).then_some(out)
}
