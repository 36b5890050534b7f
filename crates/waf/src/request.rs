//! What Envoy holds of a request, turned into what the engine inspects.
//! Both connectors share it: the ext_authz service (`service.rs`) and the
//! in-Envoy filter (`vpsie-lb-waf-filter`), so the rules see the same
//! request whichever way it came.

use crate::engine::Request;

/// A request as Envoy holds it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The TCP peer's address and port.
    pub client: (String, u16),
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// Envoy's name of the protocol: `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    pub protocol: String,
    /// Envoy's header names (lower case, pseudo-headers included) and values.
    pub headers: Vec<(String, String)>,
    /// The body, or its start when `partial`.
    pub body: Vec<u8>,
    /// Only the start of the body was held (it was past the limit).
    pub partial: bool,
}

/// The engine's view of `seen`: `:authority` is the Host the rules look
/// for (unless Envoy made it up), the other pseudo-headers are already in
/// the method and path, and the framing a body came with is restored.
pub fn describe(seen: Seen) -> Request {
    let mut headers: Vec<(String, String)> = seen
        .headers
        .into_iter()
        .filter_map(|(k, v)| match k.as_str() {
            ":authority" if v == HOST_ENVOY_GAVE => None,
            ":authority" => Some(("Host".to_owned(), v)),
            k if k.starts_with(':') => None,
            _ => Some((k, v)),
        })
        .collect();
    let http_version = version(&seen.protocol);
    headers.extend(framing(
        &headers,
        &http_version,
        seen.body.len(),
        seen.partial,
    ));
    Request {
        client: seen.client,
        method: seen.method,
        uri: seen.path,
        http_version,
        headers,
        body: seen.body,
        partial: seen.partial,
    }
}

/// The Host Envoy gives an HTTP/1.0 request that named none (the envoy
/// crate's `DEFAULT_HOST_FOR_HTTP_10`; a test in the agent pins the two
/// equal). The rules must see the request without one, as sent (920280).
pub const HOST_ENVOY_GAVE: &str = "http10.vpsie-lb.invalid";

/// The framing header a body came with, when Envoy's description lost it:
/// Envoy sends a chunked body without `transfer-encoding`, and the Core
/// Rule Set scores a POST with neither that nor `content-length` as an
/// anomaly (920180), so every chunked upload was on the way to a block.
/// Over HTTP/1.x a body without a length was chunked; over HTTP/2 and 3
/// the frames end it, and its length is known once it is whole.
pub(crate) fn framing(
    headers: &[(String, String)],
    http_version: &str,
    body_len: usize,
    partial: bool,
) -> Option<(String, String)> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if body_len == 0 || has("content-length") || has("transfer-encoding") {
        return None;
    }
    if http_version.starts_with('1') {
        Some(("Transfer-Encoding".into(), "chunked".into()))
    } else if partial {
        None
    } else {
        Some(("Content-Length".into(), body_len.to_string()))
    }
}

fn version(protocol: &str) -> String {
    protocol.strip_prefix("HTTP/").unwrap_or("1.1").to_owned()
}

#[cfg(test)]
mod tests {
    use super::framing;

    fn header(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn regression_a_chunked_post_scored_as_having_no_length() {
        let none = header(&[("host", "x")]);
        // (headers Envoy sent, version, body length, partial, what is added)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a str,
            usize,
            bool,
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                &[],
                "1.1",
                10,
                false,
                Some(("Transfer-Encoding", "chunked")),
            ),
            (&[], "1.0", 10, true, Some(("Transfer-Encoding", "chunked"))),
            (&[], "2", 10, false, Some(("Content-Length", "10"))),
            (&[], "3", 7, false, Some(("Content-Length", "7"))),
            // Only the start was sent: its length is not the body's.
            (&[], "2", 10, true, None),
            (&[], "1.1", 0, false, None),
            (&[("Content-Length", "10")], "1.1", 10, false, None),
            (&[("transfer-encoding", "chunked")], "1.1", 10, false, None),
        ];
        for (extra, version, len, partial, want) in cases {
            let mut h = none.clone();
            h.extend(header(extra));
            let got = framing(&h, version, *len, *partial);
            let want = want.map(|(k, v)| (k.to_owned(), v.to_owned()));
            assert_eq!(got, want, "{extra:?} {version} {len} {partial}");
        }
    }
}
