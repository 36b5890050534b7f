//! Multipart bodies: one that does not parse, or that a backend could read
//! otherwise than ModSecurity does, is refused (rule 10007); ordinary
//! uploads, from any client and however long, are not.

mod common;

use common::{ENGINE, policy, post};
use vpsie_lb_waf::config::{Mode, Oversize, Policy};
use vpsie_lb_waf::engine::{MAX_BODY_BYTES, MAX_PARSED_BODY_BYTES, Request, Verdict};

/// One field `q`, well formed, with boundary `b`.
const FIELD: &str = "--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nhello\r\n--b--\r\n";

/// A multipart POST of `body` with `content_type`'s boundary.
fn upload(content_type: &str, body: impl Into<Vec<u8>>) -> Request {
    post("/upload", content_type, body.into())
}

/// What `mode` with `oversize` says of `req`: the status for a refusal,
/// 200 for a pass; and the rules named.
fn verdict(mode: Mode, oversize: Oversize, req: &Request) -> (u16, Vec<u32>) {
    let p = Policy {
        oversize_body: oversize,
        ..policy(mode, &[])
    };
    match ENGINE.inspect(&p, req).expect("inspect") {
        Verdict::Blocked { status, rules } => (status, rules),
        Verdict::Detected(rules) => (200, rules),
        Verdict::Pass => (200, Vec::new()),
    }
}

/// `body` is refused with 400 by rule 10007 whatever `oversize_body` says,
/// and reported by it in `detect`.
fn check_refused(what: &str, body: &str) {
    let req = upload("multipart/form-data; boundary=b", body);
    for oversize in [Oversize::Refuse, Oversize::InspectStart] {
        let (status, rules) = verdict(Mode::Block, oversize, &req);
        assert_eq!(status, 400, "{what} ({oversize:?}): {rules:?}");
        assert!(rules.contains(&10007), "{what} ({oversize:?}): {rules:?}");
    }
    let (status, rules) = verdict(Mode::Detect, Oversize::Refuse, &req);
    assert_eq!(status, 200, "{what} in detect");
    assert!(rules.contains(&10007), "{what} in detect: {rules:?}");
}

/// `req` passes `block` under both `oversize_body` settings.
fn check_passes(what: &str, req: &Request) {
    for oversize in [Oversize::Refuse, Oversize::InspectStart] {
        let (status, rules) = verdict(Mode::Block, oversize, req);
        assert_eq!((status, rules), (200, vec![]), "{what} ({oversize:?})");
    }
}

#[test]
fn regression_a_multipart_body_that_does_not_parse_passed() {
    let cases = [
        ("data before the first part", format!("junk\r\n{FIELD}")),
        ("data after the last part", format!("{FIELD}junk\r\n")),
        (
            "a folded part header",
            FIELD.replace("form-data; name", "form-data;\r\n name"),
        ),
        ("no closing delimiter", FIELD.replace("--b--\r\n", "")),
        ("a single-quoted name", FIELD.replace("\"q\"", "'q'")),
        (
            "a missing semicolon",
            FIELD.replace("form-data; name", "form-data name"),
        ),
        ("line ends mixed", FIELD.replacen("\r\n\r\n", "\n\r\n", 1)),
    ];
    for (what, body) in cases {
        check_refused(what, &body);
    }
}

#[test]
fn a_quoted_boundary_is_not_refused() {
    // RFC 2046 allows it, .NET's HttpClient sends it; ModSecurity's own
    // strict check would refuse it.
    let ct = "multipart/form-data; boundary=\"b\"";
    check_passes(ct, &upload(ct, FIELD));
    // Spaces around `=` ModSecurity does not parse past: refused.
    let spaced = upload("multipart/form-data; boundary = b", FIELD);
    let (status, rules) = verdict(Mode::Block, Oversize::InspectStart, &spaced);
    assert_eq!((status, rules), (400, vec![10007]));
}

#[test]
fn fields_as_long_as_modsecurity_parses_pass_and_longer_are_cut() {
    // ModSecurity counts a field's delimiter line and headers against its
    // limit: a field whose data alone fit used to be refused with 400.
    let head = "--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n";
    let fits = MAX_PARSED_BODY_BYTES - head.len() - 2;
    for n in [fits, fits + 1, fits + 10_000] {
        let body = format!("{head}{}\r\n--b--\r\n", "a".repeat(n));
        let req = upload("multipart/form-data; boundary=b", body);
        let (status, rules) = verdict(Mode::Block, Oversize::InspectStart, &req);
        assert_eq!((status, rules), (200, vec![]), "{n} bytes, inspect_start");
        let (status, _) = verdict(Mode::Block, Oversize::Refuse, &req);
        assert_eq!(
            status,
            if n > fits { 413 } else { 200 },
            "{n} bytes, refuse"
        );
    }
}

#[test]
fn an_upload_envoy_cut_short_still_parses() {
    // A 3 MiB file of which Envoy sends the first 2 MiB: `inspect_start`
    // inspects that start, closed again, and lets it through.
    let mut body =
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n"
            .to_vec();
    body.extend((0..3 * 1024 * 1024).map(|i| (i % 251) as u8));
    body.extend(b"\r\n--b--\r\n");
    let mut req = upload("multipart/form-data; boundary=b", body);
    req.body.truncate(MAX_BODY_BYTES);
    req.partial = true;
    let (status, rules) = verdict(Mode::Block, Oversize::InspectStart, &req);
    assert_eq!((status, rules), (200, vec![]));
}

#[test]
fn an_attack_in_a_field_past_the_parsed_limit_is_found_in_its_start() {
    // One field of 200 KiB that starts with an injection: its start is
    // inspected (it used to be dropped whole, and nothing was).
    let body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' OR '1'='1 {}\r\n--b--\r\n",
        "a".repeat(200 * 1024)
    );
    let req = upload("multipart/form-data; boundary=b", body);
    assert_eq!(verdict(Mode::Block, Oversize::InspectStart, &req).0, 403);
    assert_eq!(verdict(Mode::Block, Oversize::Refuse, &req).0, 413);
}
