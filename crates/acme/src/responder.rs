//! The HTTP-01 responder: answers `GET /.well-known/acme-challenge/<lb>/<token>`
//! with the key authorization of an order in flight, and 404 to anything
//! else. Envoy's redirect listeners reach it through the `vpsie_lb_acme`
//! cluster, each rewriting the CA's path to name its own load balancer
//! (`vpsie_lb_envoy::acme_challenge_path`). A token is answered only when
//! it came through the listener of the load balancer that ordered it, and
//! only for the name its authorization is for (the `Host`), so one customer
//! cannot prove a name through another's port 80. A token and its answer
//! are public by design (the CA fetches them over plain HTTP).

use std::path::Path;
use std::sync::Arc;

use vpsie_lb_envoy::{ACME_CHALLENGE_PREFIX, LocalAddress};

use super::Tokens;
use vpsie_lb_host::local_server::{Answer, Head, plain};

/// One challenge being answered: what the CA must read, and for which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The key authorization the CA expects.
    pub key_authorization: String,
    /// The name the authorization is for; the request's `Host`.
    pub domain: String,
}

/// Serves `tokens` on the Unix socket `path` (mode 0660: the agent and
/// Envoy's group).
pub fn spawn(path: &Path, tokens: Tokens) -> std::io::Result<()> {
    vpsie_lb_host::local_server::serve(
        &LocalAddress::Unix(path.to_owned()),
        Arc::new(move |head: &Head<'_>| answer(head, &tokens)),
    )?;
    Ok(())
}

/// `Host` without its port, lowercased.
fn host_name(host: &str) -> String {
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
        .to_ascii_lowercase()
}

/// The answer to one request.
pub fn answer(head: &Head<'_>, tokens: &Tokens) -> Answer {
    let asked = head
        .path
        .strip_prefix(ACME_CHALLENGE_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .filter(|(_, token)| !token.is_empty() && !token.contains('/'));
    let ("GET" | "HEAD", Some((lb, token))) = (head.method, asked) else {
        return plain(404, "not found\n");
    };
    let key = (lb.to_owned(), token.to_owned());
    let found = tokens.lock().ok().and_then(|m| m.get(&key).cloned());
    match found {
        Some(c) if head.host.map(host_name).as_deref() == Some(c.domain.as_str()) => {
            (200, "application/octet-stream", c.key_authorization)
        }
        _ => plain(404, "no such challenge\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_one_load_balancers_port_80_proved_another_customers_name() {
        let tokens = Tokens::default();
        let victim = Challenge {
            key_authorization: "tok-1.thumb".into(),
            domain: "shop.victim.net".into(),
        };
        tokens
            .lock()
            .expect("lock")
            .insert(("attacker".into(), "tok-1".into()), victim);
        let ask = |method, path, host| answer(&Head { method, path, host }, &tokens);
        let mine = "/.well-known/acme-challenge/attacker/tok-1";
        // Through the ordering load balancer's own listener, for its name.
        assert_eq!(ask("GET", mine, Some("shop.victim.net")).2, "tok-1.thumb");
        assert_eq!(ask("GET", mine, Some("Shop.Victim.net:80")).0, 200);
        for (method, path, host) in [
            // Through another load balancer's listener (the victim's port 80).
            (
                "GET",
                "/.well-known/acme-challenge/victim/tok-1",
                Some("shop.victim.net"),
            ),
            // For another name than the authorization's.
            ("GET", mine, Some("other.net")),
            ("GET", mine, None),
            (
                "GET",
                "/.well-known/acme-challenge/attacker/tok-2",
                Some("shop.victim.net"),
            ),
            (
                "GET",
                "/.well-known/acme-challenge/attacker/",
                Some("shop.victim.net"),
            ),
            (
                "GET",
                "/.well-known/acme-challenge/tok-1",
                Some("shop.victim.net"),
            ),
            ("POST", mine, Some("shop.victim.net")),
            ("GET", "/status", Some("shop.victim.net")),
            (
                "GET",
                "/.well-known/acme-challenge/attacker/tok-1/../../metrics",
                None,
            ),
        ] {
            assert_eq!(ask(method, path, host).0, 404, "{method} {path} {host:?}");
        }
    }
}
