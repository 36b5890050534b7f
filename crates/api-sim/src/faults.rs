//! Faults the emulator plays instead of an answer, so the agent can be
//! tested against every failure the real API could show.

use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::ENDPOINTS;
use crate::wire::{respond, respond_huge};

/// Fault kinds `PUT /_sim/faults` accepts.
pub(crate) const FAULT_KINDS: &[&str] = &[
    "latency",
    "error_5xx",
    "error_4xx",
    "rate_limit",
    "reset",
    "malformed_json",
    "huge_body",
    "wrong_content_type",
    "unauthorized",
    "error_in_200",
];

/// One injected fault.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    endpoint: String,
    kind: String,
    ms: u64,
    retry_after: u64,
    remaining: Option<u64>,
}

/// Plays `fault` out: `Ok(None)` when it answered (or hung up) in the
/// request's place, `Ok(Some(stream))` when the request goes on.
pub(crate) fn inject(
    fault: Option<&Fault>,
    stream: TcpStream,
) -> std::io::Result<Option<TcpStream>> {
    let Some(f) = fault else {
        return Ok(Some(stream));
    };
    let json = "application/json";
    let (status, content_type, body): (u16, &str, &[u8]) = match f.kind.as_str() {
        "latency" => {
            thread::sleep(Duration::from_millis(f.ms));
            return Ok(Some(stream));
        }
        "reset" => {
            let sock = socket2::Socket::from(stream);
            let _ = sock.set_linger(Some(Duration::ZERO));
            return Ok(None); // dropping with linger 0 sends RST
        }
        "huge_body" => return respond_huge(stream).map(|()| None),
        "rate_limit" => {
            let ra = f.retry_after.to_string();
            let body = b"{\"error\":\"slow down\"}";
            return respond(stream, 429, json, body, &[("Retry-After", &ra)]).map(|()| None);
        }
        "error_5xx" => (503, json, b"{\"error\":\"injected 503\"}"),
        "error_4xx" => (422, json, b"{\"error\":\"injected 422\"}"),
        "malformed_json" => (200, json, b"{\"id\": \"lb\", \"backends\": ["),
        "wrong_content_type" => (200, "text/html", b"<html>maintenance</html>"),
        "unauthorized" => (401, json, b"{\"error\":\"invalid token\"}"),
        // The public API's quirk: a 200 whose body says it failed.
        "error_in_200" => (
            200,
            json,
            b"{\"error\":true,\"code\":500,\"message\":\"injected: lost in the clouds\"}",
        ),
        _ => return Ok(Some(stream)),
    };
    respond(stream, status, content_type, body, &[]).map(|()| None)
}

pub(crate) fn parse_fault(v: &Value) -> Option<Fault> {
    let endpoint = v["endpoint"].as_str()?;
    let kind = v["kind"].as_str()?;
    if !(endpoint == "*" || ENDPOINTS.contains(&endpoint)) || !FAULT_KINDS.contains(&kind) {
        return None;
    }
    Some(Fault {
        endpoint: endpoint.to_owned(),
        kind: kind.to_owned(),
        ms: v["ms"].as_u64().unwrap_or(1000),
        retry_after: v["retry_after"].as_u64().unwrap_or(1),
        remaining: v["count"].as_u64(),
    })
}

/// The first fault that applies to `endpoint`, using up one of its count.
pub(crate) fn take_fault(faults: &mut Vec<Fault>, endpoint: &str) -> Option<Fault> {
    let i = faults
        .iter()
        .position(|f| f.endpoint == "*" || f.endpoint == endpoint)?;
    let f = faults[i].clone();
    if let Some(n) = faults[i].remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            faults.remove(i);
        }
    }
    Some(f)
}
