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
        (
            "a content-disposition without its ;",
            FIELD.replace("form-data; name", "form-data name"),
        ),
        ("line ends mixed", FIELD.replacen("\r\n\r\n", "\n\r\n", 1)),
    ];
    for (what, body) in cases {
        check_refused(what, &body);
    }
}

/// `req` is refused with 400 by rule 10007 alone in `block`, under both
/// `oversize_body` settings.
fn check_refused_alone(what: &str, req: &Request) {
    for oversize in [Oversize::Refuse, Oversize::InspectStart] {
        let got = verdict(Mode::Block, oversize, req);
        assert_eq!(got, (400, vec![10007]), "{what} ({oversize:?})");
    }
}

#[test]
fn regression_a_field_parsers_read_two_ways_hid_from_the_rules() {
    // Each body is one file to ModSecurity, whose rules never read a
    // file's contents, and a field `q` holding an injection to a backend.
    let sqli = "1' UNION SELECT pass FROM users-- ";
    let file = "Content-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\n";
    let field = format!("Content-Disposition: form-data; name=\"q\"\r\n\r\n{sqli}\r\n");
    let cases = [
        (
            "PHP ends the boundary at the comma",
            "multipart/form-data; boundary=abc,x",
            format!("--abc,x\r\n{file}--abc\r\n{field}--abc,x--\r\n"),
        ),
        (
            "Go and Python drop the space after =",
            "multipart/form-data; boundary= b",
            format!("-- b\r\n{file}--b\r\n{field}--b--\r\n-- b--\r\n"),
        ),
        (
            "Starlette keeps the last of two headers",
            "multipart/form-data; boundary=b",
            format!(
                "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n{field}--b--\r\n"
            ),
        ),
        (
            "PHP reads single quotes as quotes",
            "multipart/form-data; boundary=b",
            format!(
                "--b\r\nContent-Disposition: form-data; name='q\"; filename=\"x'\r\n\r\n{sqli}\r\n--b--\r\n"
            ),
        ),
    ];
    for (what, ct, body) in cases {
        check_refused_alone(what, &upload(ct, body));
    }
}

#[test]
fn ordinary_clients_uploads_pass() {
    let file = |disposition: &str| {
        format!(
            "--b\r\nContent-Disposition: form-data; {disposition}\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7\r\n--b--\r\n"
        )
    };
    let cases = [
        // .NET adds the RFC 5987 form, unquoted with its apostrophes, which
        // ModSecurity's quoting check refused. (An apostrophe in the file
        // name itself the Core Rule Set refuses at any level: 920120.)
        (
            ".net, a file name in both forms",
            file("name=doc; filename=report.pdf; filename*=utf-8''report.pdf"),
        ),
        // A browser's empty file input.
        (
            "an empty file input",
            "--b\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--b--\r\n".to_owned(),
        ),
        // Line ends before the first part and after the last, which RFC
        // 2046 allows and parsers skip.
        ("an empty preamble and epilogue", format!("\r\n{FIELD}\r\n")),
    ];
    for (what, body) in cases {
        check_passes(what, &upload("multipart/form-data; boundary=b", body));
    }
}

#[test]
fn regression_a_file_before_a_long_field_was_refused_with_400() {
    // ModSecurity counts a file part's headers against its parsed limit;
    // the service did not, so the start it kept was past it.
    let body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n{}\r\n--b--\r\n",
        "a".repeat(200 * 1024)
    );
    let req = upload("multipart/form-data; boundary=b", body);
    assert_eq!(
        verdict(Mode::Block, Oversize::InspectStart, &req),
        (200, vec![])
    );
    assert_eq!(verdict(Mode::Block, Oversize::Refuse, &req).0, 413);
}

#[test]
fn a_quoted_boundary_is_not_refused() {
    // RFC 2046 allows it, .NET's HttpClient sends it; ModSecurity's own
    // strict check would refuse it.
    let ct = "multipart/form-data; boundary=\"b\"";
    check_passes(ct, &upload(ct, FIELD));
    // Spaces around `=` parsers read differently: refused.
    check_refused_alone(
        "spaces around =",
        &upload("multipart/form-data; boundary = b", FIELD),
    );
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
