//! The HTTP-01 responder: answers `GET /.well-known/acme-challenge/<token>`
//! with the key authorization of an order in flight, and 404 to anything
//! else. Envoy's redirect listeners reach it through the `vpsie_lb_acme`
//! cluster; nothing else it could serve exists, and a token and its answer
//! are public by design (the ACME server fetches them over plain HTTP).

use std::path::Path;
use std::sync::Arc;

use vpsie_lb_envoy::{ACME_CHALLENGE_PREFIX, LocalAddress};

use super::Tokens;
use crate::endpoints::{Answer, Head, plain};

/// Serves `tokens` on the Unix socket `path` (mode 0660: the agent and
/// Envoy's group).
pub fn spawn(path: &Path, tokens: Tokens) -> std::io::Result<()> {
    crate::endpoints::serve(
        &LocalAddress::Unix(path.to_owned()),
        Arc::new(move |head: &Head<'_>| answer(head, &tokens)),
    )?;
    Ok(())
}

/// The answer to one request.
pub fn answer(head: &Head<'_>, tokens: &Tokens) -> Answer {
    let token = head.path.strip_prefix(ACME_CHALLENGE_PREFIX);
    match (head.method, token) {
        ("GET" | "HEAD", Some(t)) => match tokens.lock().ok().and_then(|m| m.get(t).cloned()) {
            Some(key_authorization) => (200, "application/octet-stream", key_authorization),
            None => plain(404, "no such challenge\n"),
        },
        _ => plain(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_known_token_gets_its_answer() {
        let tokens = Tokens::default();
        tokens
            .lock()
            .expect("lock")
            .insert("tok-1".into(), "tok-1.thumb".into());
        let ask = |method, path| answer(&Head { method, path }, &tokens);
        assert_eq!(
            ask("GET", "/.well-known/acme-challenge/tok-1").2,
            "tok-1.thumb"
        );
        assert_eq!(ask("GET", "/.well-known/acme-challenge/tok-1").0, 200);
        for (method, path) in [
            ("GET", "/.well-known/acme-challenge/tok-2"),
            ("GET", "/.well-known/acme-challenge/"),
            ("POST", "/.well-known/acme-challenge/tok-1"),
            ("GET", "/status"),
            ("GET", "/.well-known/acme-challenge/tok-1/../../metrics"),
        ] {
            assert_eq!(ask(method, path).0, 404, "{method} {path}");
        }
    }
}
