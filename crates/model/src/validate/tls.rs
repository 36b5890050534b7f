//! TLS termination settings.

use crate::model::{
    Acme, DEFAULT_ACME_DIRECTORY, DEFAULT_ALPN, DEFAULT_CIPHER_SUITES, KNOWN_CIPHER_SUITES,
    STAGING_ACME_DIRECTORY, SniCertificate, Tls, TlsVersion, limits,
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
    "acme",
];
const ACME_KEYS: &[&str] = &["domains", "email", "directory_url"];
const CERT_KEYS: &[&str] = &["server_names", "certificate_path", "private_key_path"];

pub(super) fn tls(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Tls> {
    obj.check_keys(TLS_KEYS, cx);
    let (acme, certificate_path, private_key_path) = match obj.object(cx, "acme") {
        Some(a) => {
            for key in ["certificate_path", "private_key_path"] {
                if obj.get(key).is_some() {
                    cx.error(
                        &obj.path.key(key),
                        "must not be set together with acme: the agent obtains that certificate and keeps it in its own store",
                    );
                }
            }
            (acme(&a, cx), Some(String::new()), Some(String::new()))
        }
        None if obj.get("acme").is_some() => (None, None, None),
        None => (
            Some(None),
            obj.abs_path(cx, "certificate_path", Need::Required),
            obj.abs_path(cx, "private_key_path", Need::Required),
        ),
    };
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
        acme: acme?,
        ca_cert_path,
        min_version: min_version?,
        max_version,
        cipher_suites,
        alpn,
        certificates: certificates?,
    })
}

/// `tls_config.acme`: the names to prove over HTTP-01, a contact and a
/// directory; `Some(None)` never, `None` when wrong.
fn acme(obj: &Obj<'_>, cx: &mut Ctx) -> Option<Option<Acme>> {
    obj.check_keys(ACME_KEYS, cx);
    let before = cx.errors.len();
    if obj.get("domains").is_none() {
        cx.error(&obj.path.key("domains"), "is required");
    }
    let domains = host_list(obj, "domains", limits::MAX_ACME_DOMAINS, cx);
    if let Some(list) = &domains {
        let at = obj.path.key("domains");
        if list.is_empty() && obj.get("domains").is_some() {
            cx.error(&at, "must name at least one domain");
        }
        for (i, d) in list.iter().enumerate() {
            if d.starts_with("*.") {
                cx.error(
                    &at.index(i),
                    format!("{d:?}: a wildcard name cannot be proved over HTTP-01; list each name"),
                );
            } else if !d.contains('.') {
                cx.error(
                    &at.index(i),
                    format!("{d:?}: an ACME server issues only for public names with a dot"),
                );
            } else if let Some(why) = not_public(d) {
                cx.error(&at.index(i), format!("{d:?}: {why}"));
            }
        }
    }
    let email = obj.string(cx, "email", Need::Optional).and_then(|e| {
        email_ok(e).then(|| e.to_owned()).or_else(|| {
            cx.error(
                &obj.path.key("email"),
                format!("{e:?} is not an email address"),
            );
            None
        })
    });
    let directory_url = match obj.string(cx, "directory_url", Need::Optional) {
        None => DEFAULT_ACME_DIRECTORY.to_owned(),
        Some(u) if !https_url(u) => {
            cx.error(
                &obj.path.key("directory_url"),
                format!("{u:?} must be an https:// URL: the account key and orders travel over it"),
            );
            String::new()
        }
        // The agent talks to it from the VM: a document must not point it
        // at anything the operator did not choose (a blind request).
        Some(u)
            if ![DEFAULT_ACME_DIRECTORY, STAGING_ACME_DIRECTORY].contains(&u)
                && !cx.acme_directories.iter().any(|d| d == u) =>
        {
            cx.error(
                &obj.path.key("directory_url"),
                format!(
                    "{u:?} is not an ACME directory this agent may use: Let's Encrypt's \
                     production and staging ones, and those in the agent's \
                     acme.allowed_directories"
                ),
            );
            String::new()
        }
        Some(u) => u.to_owned(),
    };
    (cx.errors.len() == before)
        .then(|| Some(Acme::new(domains.unwrap_or_default(), email, directory_url)))
}

/// Top-level names no public CA issues for: RFC 6761 (`test`, `example`,
/// `invalid`, `localhost`), RFC 6762 (`local`), ICANN's `internal`, RFC
/// 7686 (`onion`), RFC 9476 (`alt`), and `arpa` (reverse and `home.arpa`).
const SPECIAL_USE: &[&str] = &[
    "test",
    "example",
    "invalid",
    "localhost",
    "local",
    "internal",
    "onion",
    "alt",
    "arpa",
];

/// Why `name` is not a public name an ACME server can issue for, if it
/// is not: an IP address, or a special-use name.
fn not_public(name: &str) -> Option<&'static str> {
    let tld = name.rsplit('.').next().unwrap_or(name);
    if name
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("an IP address is not a domain name");
    }
    if SPECIAL_USE.contains(&tld) {
        return Some("a special-use name (RFC 6761 and after) that no public CA issues for");
    }
    let reserved = ["example.com", "example.net", "example.org"];
    if reserved
        .iter()
        .any(|r| name == *r || name.ends_with(&format!(".{r}")))
    {
        return Some("a special-use name reserved for examples (RFC 6761)");
    }
    None
}

fn email_ok(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    e.len() <= 254
        && !local.is_empty()
        && local.bytes().all(|b| b.is_ascii_graphic() && b != b'@')
        && super::hosts::host_pattern(domain).is_ok_and(|d| !d.starts_with('*'))
}

fn https_url(u: &str) -> bool {
    u.len() <= 2048
        && u.strip_prefix("https://").is_some_and(|rest| {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic())
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
