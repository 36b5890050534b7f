//! The rules across load balancers: unique ids, and ports unique per
//! transport and never reserved. Each load balancer's [`Identity`] is read
//! even when the rest of it is invalid, so every conflict shows at once.

use std::collections::HashMap;

use super::ValidateOptions;
use super::obj::Ctx;
use crate::model::{Protocol, limits};
use crate::problem::FieldPath;
use crate::vhosts::TranslatedSize;

/// The fields of one load balancer that cross-document rules look at. They
/// are checked even when the rest of that load balancer is invalid, so every
/// conflict is reported in one pass.
pub(super) struct Identity {
    pub(super) path: FieldPath,
    pub(super) id: Option<String>,
    /// The ports it listens on, by the key that names each.
    pub(super) ports: Vec<Listening>,
    /// What its routes translate to (zero when it is invalid).
    pub(super) size: TranslatedSize,
    /// The names it wants an ACME certificate for (none when invalid).
    pub(super) acme_domains: Vec<String>,
}

/// One port a load balancer listens on.
#[derive(Clone, Copy)]
pub(super) struct Listening {
    /// The key that asks for it (`port`, `redirect_http_port`, `http3`).
    key: &'static str,
    port: u16,
    /// UDP (a `udp` load balancer, HTTP/3's QUIC) or TCP (the rest): the
    /// two are separate sockets, so one of each may share a number.
    udp: bool,
}

/// Each name gets its ACME certificate for one load balancer only: every
/// order uses the operator's one account, and two load balancers ordering
/// one name would each be proving it for the other.
pub(super) fn acme_owners(items: &[Identity], cx: &mut Ctx) {
    let mut owners: HashMap<&str, &FieldPath> = HashMap::new();
    for item in items {
        for (i, name) in item.acme_domains.iter().enumerate() {
            match owners.get(name.as_str()) {
                Some(first) => cx.error(
                    &item
                        .path
                        .key("tls_config")
                        .key("acme")
                        .key("domains")
                        .index(i),
                    format!("{name:?} already has its certificate ordered by {first}"),
                ),
                None => {
                    owners.insert(name, &item.path);
                }
            }
        }
    }
}

/// Rules that span load balancers: unique ids, unique ports, reserved ports.
pub(super) fn cross_document(items: &[Identity], opts: &ValidateOptions, cx: &mut Ctx) {
    let mut ids: HashMap<&str, &FieldPath> = HashMap::new();
    let mut ports: HashMap<(u16, bool), (&FieldPath, &str, Option<&str>)> = HashMap::new();
    for item in items {
        if let Some(id) = &item.id {
            match ids.get(id.as_str()) {
                Some(first) => cx.error(
                    &item.path.key("id"),
                    format!("id {id:?} is already used by {first}"),
                ),
                None => {
                    ids.insert(id, &item.path);
                }
            }
        }
        for &Listening { key, port, udp } in &item.ports {
            let at = item.path.key(key);
            // Reserved ports are refused for both: no load balancer is
            // expected to need one, and the rule stays one line to read.
            if let Some(r) = opts.reserved_ports.iter().find(|r| r.port == port) {
                cx.error(&at, format!("port {port} is reserved for {}", r.owner));
            }
            let Some(&(first, first_key, first_id)) = ports.get(&(port, udp)) else {
                ports.insert((port, udp), (&item.path, key, item.id.as_deref()));
                continue;
            };
            let whose = match first_key {
                "port" => String::new(),
                k => format!(" as its {k}"),
            };
            let owner = match first_id {
                Some(id) => format!(" (load balancer {id:?}{whose})"),
                None if whose.is_empty() => String::new(),
                None => format!(" ({})", whose.trim_start()),
            };
            let kind = if udp { "udp port" } else { "port" };
            cx.error(
                &at,
                format!("{kind} {port} is already used by {first}{owner}"),
            );
        }
    }
}

/// The ports a load balancer listens on, and over which transport.
pub(super) fn listening(
    protocol: Option<Protocol>,
    port: Option<u16>,
    redirect_http_port: Option<u16>,
    http3: bool,
) -> Vec<Listening> {
    let at = |key, port, udp| Listening { key, port, udp };
    let main = port.map(|p| at("port", p, protocol == Some(Protocol::Udp)));
    let quic = port.filter(|_| http3).map(|p| at("http3", p, true));
    let redirect = redirect_http_port.map(|p| at("redirect_http_port", p, false));
    main.into_iter().chain(quic).chain(redirect).collect()
}

/// The translated size of the whole document, capped: the load balancers
/// are added in order, and one that would take the total past a cap is
/// refused (and not counted), so the others are still served.
pub(super) fn document_size(items: &[Identity], cx: &mut Ctx) {
    let mut total = TranslatedSize::default();
    for item in items {
        let next = total.plus(item.size);
        let over = [
            (
                next.routes,
                limits::MAX_DOCUMENT_TRANSLATED_ROUTES,
                "envoy routes",
            ),
            (
                next.regexes,
                limits::MAX_DOCUMENT_TRANSLATED_REGEXES,
                "regular expressions",
            ),
            (
                next.bytes,
                limits::MAX_DOCUMENT_TRANSLATED_BYTES,
                "bytes of route configuration",
            ),
        ];
        match over.iter().find(|(n, max, _)| n > max) {
            Some((n, max, what)) => cx.error(
                &item.path.key("routes"),
                format!(
                    "would bring the document to {n} {what}, more than the {max} one agent \
                     serves; this load balancer is refused so the others are served"
                ),
            ),
            None => total = next,
        }
    }
}
