use super::*;
use crate::limits::{Excess, Kind, excess};

/// A body of `fields` fields of `field_size` bytes, then `files` files of
/// 300 KiB, with boundary `XyZ`.
pub(crate) fn multipart(fields: usize, field_size: usize, files: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..fields {
        b.extend(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n").as_bytes(),
        );
        b.extend(std::iter::repeat_n(b'a', field_size));
        b.extend(b"\r\n");
    }
    for i in 0..files {
        b.extend(format!("--XyZ\r\nContent-Disposition: form-data; name=\"u{i}\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        b.extend(std::iter::repeat_n(b'z', 300 * 1024));
        b.extend(b"\r\n");
    }
    b.extend(b"--XyZ--\r\n");
    b
}

fn parts(body: &[u8]) -> Vec<Part> {
    Layout::read(body, "XyZ").parts
}

fn fitted(body: &[u8], partial: bool) -> Cow<'_, [u8]> {
    fit(body, "XyZ", &Layout::read(body, "XyZ"), partial)
}

fn mp_excess(body: &[u8]) -> Option<Excess> {
    excess(&Kind::Multipart("XyZ".into()), body)
}

#[test]
fn regression_multipart_fields_escaped_the_argument_limit() {
    let body = multipart(40_000, 4, 0);
    let cut = fitted(&body, false);
    assert_eq!(parts(&cut).len(), MAX_ARGS);
    assert!(cut.ends_with(b"aaaa\r\n--XyZ--\r\n"), "closed again");
    assert_eq!(mp_excess(&cut), None);
}

#[test]
fn only_a_non_empty_filename_parameter_makes_a_part_a_file() {
    let cases: [(&[u8], bool); 9] = [
        (
            b"\r\nContent-Disposition: form-data; name=\"a\"; filename=\"x.bin\"\r\n\r\n",
            true,
        ),
        (
            b"\r\ncontent-disposition: form-data; name=a; filename*=UTF-8''x\r\n\r\n",
            true,
        ),
        (
            b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n",
            false,
        ),
        // The word elsewhere does not make a file of a field.
        (
            b"\r\nContent-Disposition: form-data; name=\"filename=\"\r\n\r\n",
            false,
        ),
        (
            b"\r\nX-Note: filename=x\r\nContent-Disposition: form-data; name=a\r\n\r\n",
            false,
        ),
        (
            b"\r\nContent-Disposition: form-data; name=a; filenamex=y\r\n\r\n",
            false,
        ),
        (
            b"\r\nContent-Disposition: form-data; name=\"a; filename=x\"\r\n\r\n",
            false,
        ),
        // A browser's empty file input: a field to ModSecurity.
        (
            b"\r\nContent-Disposition: form-data; name=\"a\"; filename=\"\"\r\n\r\n",
            false,
        ),
        (
            b"\nContent-Disposition: form-data; name=a; filename=b\n\n",
            true,
        ),
    ];
    for (head, want) in cases {
        let got = Head::read(head);
        assert_eq!(got.file, want, "{}", String::from_utf8_lossy(head));
        assert!(!got.ambiguous, "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn headers_parsers_read_two_ways_are_ambiguous() {
    for head in [
        // ModSecurity keeps the first, Starlette the last.
        &b"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\ncontent-disposition: form-data; name=\"q\"\r\n\r\n"[..],
        b"\r\nContent-Type: text/plain\r\nContent-Type: image/png\r\n\r\n",
        // PHP reads single quotes as quotes; ModSecurity does not.
        b"\r\nContent-Disposition: form-data; name='a\"; filename=\"b'\r\n\r\n",
    ] {
        assert!(
            Head::read(head).ambiguous,
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    // An apostrophe inside a value is only a character (.NET sends them).
    let head = b"\r\nContent-Disposition: form-data; name=f; filename=O'Brien.pdf\r\n\r\n";
    assert!(!Head::read(head).ambiguous);
}

#[test]
fn boundaries_every_parser_reads_alike_are_plain() {
    let cases = [
        ("multipart/form-data; boundary=XyZ", true),
        ("multipart/form-data; boundary=\"XyZ\"", true),
        (
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            true,
        ),
        (
            "multipart/form-data; charset=utf-8; Boundary=a'b(c)+_-./:=?",
            true,
        ),
        // PHP ends an unquoted boundary at a comma; ModSecurity does not.
        ("multipart/form-data; boundary=abc,x", false),
        // Go and Python drop the space; ModSecurity keeps it.
        ("multipart/form-data; boundary= b", false),
        ("multipart/form-data; boundary =b", false),
        ("multipart/form-data; boundary=\"a b\"", false),
        ("multipart/form-data; boundary=a; boundary=b", false),
        // The first `boundary` ModSecurity finds is not the parameter.
        ("multipart/form-data; x=\"boundary=a\"; boundary=b", false),
        ("multipart/form-data; boundary=", false),
        ("multipart/form-data; boundary=\"\"", false),
        ("multipart/form-data", false),
    ];
    for (ct, want) in cases {
        assert_eq!(plain_boundary(ct), want, "{ct}");
    }
    assert!(!plain_boundary(&format!(
        "multipart/form-data; boundary={}",
        "a".repeat(71)
    )));
}

#[test]
fn a_multipart_body_within_the_limits_is_left_alone() {
    let body = multipart(10, 100, 3);
    assert!(matches!(fitted(&body, false), Cow::Borrowed(b) if b == body.as_slice()));
}

#[test]
fn a_preamble_and_epilogue_of_line_ends_only_are_dropped() {
    let body = multipart(2, 10, 0);
    let mut padded = b"\r\n\r\n".to_vec();
    padded.extend(&body);
    padded.extend(b"\r\n\r\n");
    assert_eq!(fitted(&padded, false).as_ref(), body.as_slice());
    // Anything else before or after is left for ModSecurity to refuse.
    for junk in [b"x\r\n".as_slice(), b"\r\nx"] {
        let mut before = junk.to_vec();
        before.extend(&body);
        assert_eq!(fitted(&before, false).as_ref(), before.as_slice());
        let mut after = body.clone();
        after.extend(junk);
        assert_eq!(fitted(&after, false).as_ref(), after.as_slice());
    }
}

#[test]
fn a_multipart_body_envoy_cut_short_has_its_unfinished_part_closed() {
    let body = multipart(2, 10, 2);
    let cut_by_envoy = &body[..body.len() - 1000];
    let fitted = fitted(cut_by_envoy, true);
    assert_eq!(parts(&fitted).len(), 4, "the second file's start too");
    assert_eq!(fitted.len(), cut_by_envoy.len() + b"\r\n--XyZ--\r\n".len());
    assert!(fitted.ends_with(b"zzz\r\n--XyZ--\r\n"));
}

#[test]
fn a_body_of_bare_line_feeds_is_closed_with_them() {
    let body = String::from_utf8(multipart(2, 10, 1))
        .expect("ascii")
        .replace("\r\n", "\n");
    let cut_by_envoy = &body.as_bytes()[..body.len() - 1000];
    let fitted = fitted(cut_by_envoy, true);
    assert_eq!(parts(&fitted).len(), 3);
    assert!(fitted.ends_with(b"zzz\n--XyZ--\n"));
    assert!(!fitted.windows(2).any(|w| w == b"\r\n"));
}

#[test]
fn a_part_envoy_cut_inside_its_headers_goes() {
    let mut cut_by_envoy = multipart(2, 10, 0);
    cut_by_envoy.truncate(cut_by_envoy.len() - b"--XyZ--\r\n".len());
    cut_by_envoy.extend(b"--XyZ\r\nContent-Disposition: form-da");
    let fitted = fitted(&cut_by_envoy, true);
    assert_eq!(parts(&fitted).len(), 2);
    assert!(fitted.ends_with(b"aaaaaaaaaa\r\n--XyZ--\r\n"));
}

#[test]
fn a_field_past_the_parsed_limit_keeps_its_start() {
    let body = multipart(1, MAX_PARSED_BODY_BYTES + 10, 0);
    let fitted = fitted(&body, false);
    let kept = parts(&fitted);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].counted, MAX_PARSED_BODY_BYTES);
    assert_eq!(mp_excess(&fitted), None);
}

#[test]
fn a_file_before_a_long_field_counts_its_headers() {
    // ModSecurity counts a file part's headers against the parsed limit:
    // the field after it must leave room for them.
    let mut body = multipart(0, 0, 1);
    body.truncate(body.len() - b"--XyZ--\r\n".len());
    body.extend(b"--XyZ\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n");
    body.extend(std::iter::repeat_n(b'a', 200 * 1024));
    body.extend(b"\r\n--XyZ--\r\n");
    let fitted = fitted(&body, false);
    let kept = parts(&fitted);
    assert_eq!(kept.len(), 2);
    let counted: usize = kept.iter().map(|p| p.counted).sum();
    assert_eq!(counted, MAX_PARSED_BODY_BYTES);
    assert!(kept[0].counted > 0, "the file's headers count");
}

#[test]
fn a_closed_body_stays_within_the_whole_body_limit() {
    let head = b"--XyZ\r\nContent-Disposition: form-data; name=\"u\"; filename=\"a\"\r\n\r\n";
    let mut body = head.to_vec();
    body.resize(MAX_BODY_BYTES, b'z');
    let fitted_whole = fitted(&body, true);
    assert_eq!(fitted_whole.len(), MAX_BODY_BYTES);
    assert!(fitted_whole.ends_with(b"zzz\r\n--XyZ--\r\n"));
    // A part that starts in the last bytes goes, and the close still fits.
    for back in 1..12 {
        let mut body = head.to_vec();
        body.resize(MAX_BODY_BYTES - back, b'z');
        body.extend(b"\r\n--XyZ\r\n");
        body.truncate(MAX_BODY_BYTES);
        let out = fitted(&body, true);
        assert!(out.len() <= MAX_BODY_BYTES, "{back}: {}", out.len());
        assert!(out.ends_with(b"z\r\n--XyZ--\r\n"), "{back}");
    }
}

#[test]
fn hostile_multipart_never_panics() {
    for body in [
        &b""[..],
        b"--XyZ",
        b"--XyZ--",
        b"--XyZ\r\n",
        b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n",
        b"x--XyZ\r\n--XyZ",
        b"\n--XyZ\n\n--XyZ--",
        b"\r\n\r\n--XyZ--",
        b"--XyZ\r\n\r\n\r\n--XyZ--\r\n\r\nx",
    ] {
        for partial in [false, true] {
            let _ = mp_excess(body);
            let _ = fitted(body, partial);
        }
    }
}
