//! The inspection limits, measured and enforced before ModSecurity sees a
//! body. Pure: bytes and headers in, a judgement or a shorter body out.
//!
//! libmodsecurity 3.0.9 does not bound everything itself: past
//! `SecRequestBodyNoFilesLimit` it skips a form's arguments altogether
//! (so an attack anywhere in a long form went unseen), and multipart
//! fields escape `SecArgumentsLimit` (so 40,000 small fields cost seconds
//! of CPU). So the service measures a body first, refuses it when the
//! policy says so, and otherwise gives ModSecurity the longest start of it
//! that is within the limits and still parses.

use std::borrow::Cow;

use crate::engine::{MAX_ARGS, MAX_BODY_BYTES, MAX_PARSED_BODY_BYTES};

/// How a body is parsed, from its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `application/x-www-form-urlencoded`: every byte is an argument.
    Form,
    /// JSON or XML: every value is an argument; a cut one does not parse.
    Structured,
    /// `multipart/form-data` with its boundary: fields are arguments,
    /// files are not.
    Multipart(String),
    /// Anything else: not parsed into arguments.
    Other,
}

/// Which limit a body is past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    /// More bytes parsed into arguments than [`MAX_PARSED_BODY_BYTES`].
    ParsedBytes,
    /// More multipart fields than [`MAX_ARGS`].
    Fields,
}

impl Excess {
    /// The rule id that reports it (ours, in the service's local range).
    pub fn rule(self) -> u32 {
        match self {
            Excess::ParsedBytes => 10005,
            Excess::Fields => 10006,
        }
    }
}

/// The kind of a body whose `Content-Type` header value is `content_type`,
/// judged as libmodsecurity picks its parser (a prefix, any case) and as
/// our rules 10002/10003 pick JSON and XML; where unsure, the stricter
/// kind, since measuring a body that is not parsed costs only a refusal.
pub fn kind(content_type: Option<&str>) -> Kind {
    let Some(ct) = content_type else {
        return Kind::Other;
    };
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("application/x-www-form-urlencoded") {
        return Kind::Form;
    }
    if lower.starts_with("multipart/form-data") {
        return boundary(ct).map_or(Kind::Other, Kind::Multipart);
    }
    let essence = lower.split([';', ' ', '\t']).next().unwrap_or("");
    let structured = |prefix: &str, suffix: &str| {
        essence
            .strip_prefix(prefix)
            .is_some_and(|sub| sub == suffix || sub.ends_with(&format!("+{suffix}")))
    };
    if structured("application/", "json")
        || structured("application/", "xml")
        || structured("text/", "xml")
    {
        return Kind::Structured;
    }
    Kind::Other
}

/// The `boundary` parameter of a multipart `Content-Type`, unquoted;
/// spaces around `=` allowed, as libmodsecurity allows them.
fn boundary(ct: &str) -> Option<String> {
    let at = ct.to_ascii_lowercase().find("boundary")? + "boundary".len();
    let rest = ct[at..].trim_start().strip_prefix('=')?.trim_start();
    let b = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split([';', ' ', '\t', ',']).next()?,
    };
    (!b.is_empty()).then(|| b.to_owned())
}

/// One multipart part: where its delimiter line starts, where its data
/// starts (none when its headers never end), and how many bytes it has,
/// delimiter line and headers included, when it is a field (no `filename=`
/// in its headers; 0 for a file).
struct Part {
    start: usize,
    data: Option<usize>,
    field_bytes: usize,
}

/// The parts of a multipart body, in order: each starts at its delimiter
/// (`--boundary` at the start of the body or of a line). The closing
/// delimiter ends the list; a body cut short ends with a part whose data
/// runs to the end.
fn parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    // memmem, not a naive scan: a hostile body of dashes must stay linear.
    let starts: Vec<usize> = memchr::memmem::find_iter(body, d)
        .filter(|&at| at == 0 || body[at - 1] == b'\n')
        .collect();
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let after = start + d.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let end = starts.get(n + 1).copied().unwrap_or(body.len());
        let part = &body[after..end];
        let head_end = find(part, b"\r\n\r\n").map(|h| h + 4);
        let head_len = head_end.unwrap_or(part.len());
        let is_file = names_a_file(&part[..head_len]);
        out.push(Part {
            start,
            data: head_end.map(|h| after + h),
            // ModSecurity counts a field's delimiter line and headers
            // against its limit too (measured: 3.0.9 refused a body whose
            // data alone was within it).
            field_bytes: if is_file { 0 } else { end - start },
        });
    }
    out
}

/// Whether a part's headers make it a file: a `filename` parameter of its
/// `Content-Disposition`, not the word anywhere (an attacker could then
/// have fields counted as files, which the parsed-bytes limit skips).
fn names_a_file(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.lines()
        .filter_map(|line| line.strip_prefix("content-disposition:"))
        .flat_map(|value| params(value).into_iter().skip(1))
        .filter_map(|param| param.split_once('='))
        .any(|(name, _)| matches!(name.trim(), "filename" | "filename*"))
}

/// A header value split at the semicolons outside double quotes.
fn params(value: &str) -> Vec<&str> {
    let (mut out, mut from, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&value[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[from..]);
    out
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The first limit `body` of `kind` is past, if any.
pub fn excess(kind: &Kind, body: &[u8]) -> Option<Excess> {
    match kind {
        Kind::Form | Kind::Structured => {
            (body.len() > MAX_PARSED_BODY_BYTES).then_some(Excess::ParsedBytes)
        }
        Kind::Multipart(b) => multipart_excess(&parts(body, b)),
        Kind::Other => None,
    }
}

fn multipart_excess(parts: &[Part]) -> Option<Excess> {
    if parts.len() > MAX_ARGS {
        return Some(Excess::Fields);
    }
    let fields: usize = parts.iter().map(|p| p.field_bytes).sum();
    (fields > MAX_PARSED_BODY_BYTES).then_some(Excess::ParsedBytes)
}

/// [`excess`] and [`fit`] together, a multipart body split into its parts
/// once: what a request's inspection needs.
pub fn judge<'a>(kind: &Kind, body: &'a [u8], partial: bool) -> (Option<Excess>, Cow<'a, [u8]>) {
    match kind {
        Kind::Multipart(b) => {
            let parts = parts(body, b);
            (
                multipart_excess(&parts),
                fit_multipart(body, b, &parts, partial),
            )
        }
        _ => (excess(kind, body), fit(kind, body, partial)),
    }
}

/// The longest start of `body` within the limits that still parses as
/// `kind`: a form up to its last `&` within the limit; a multipart body cut
/// where [`cut_at`] says and closed again. `partial` says Envoy sent only
/// the start, so a multipart body's last part is unfinished and is closed.
/// JSON and XML are left whole: cut, they would not parse (rule 10004).
pub fn fit<'a>(kind: &Kind, body: &'a [u8], partial: bool) -> Cow<'a, [u8]> {
    match kind {
        Kind::Form if body.len() > MAX_PARSED_BODY_BYTES => {
            let head = &body[..MAX_PARSED_BODY_BYTES];
            let end = head.iter().rposition(|b| *b == b'&').unwrap_or(head.len());
            Cow::Borrowed(&body[..end])
        }
        Kind::Multipart(b) => fit_multipart(body, b, &parts(body, b), partial),
        _ => Cow::Borrowed(body),
    }
}

fn fit_multipart<'a>(
    body: &'a [u8],
    boundary: &str,
    parts: &[Part],
    partial: bool,
) -> Cow<'a, [u8]> {
    let close = format!("\r\n--{boundary}--\r\n");
    let Some(end) = cut_at(body, parts, partial, close.len()) else {
        return Cow::Borrowed(body);
    };
    let mut out = body[..end].to_vec();
    // Nothing kept: the closing delimiter alone, with no empty line
    // before it for ModSecurity to take for data before the first part.
    let close = if end == 0 { &close[2..] } else { &close[..] };
    out.extend_from_slice(close.as_bytes());
    Cow::Owned(out)
}

/// Where a multipart body must end to be within the limits and, once
/// `close` bytes of closing delimiter are added, still parse; `None` when
/// it is fine whole. Cut are: the parts past the 255th; the field that
/// crosses the parsed-bytes limit, after the bytes that fit; the last part
/// when Envoy cut the body short (closed where its data stops, so the start
/// of an upload is inspected); and anything past the whole-body limit.
fn cut_at(body: &[u8], parts: &[Part], partial: bool, close: usize) -> Option<usize> {
    let whole_limit = MAX_BODY_BYTES.saturating_sub(close);
    let mut fields = 0;
    for (n, p) in parts.iter().enumerate() {
        if n == MAX_ARGS {
            return Some(before(body, p.start));
        }
        let room = MAX_PARSED_BODY_BYTES.saturating_sub(fields);
        fields += p.field_bytes;
        let end = if p.field_bytes > room {
            // Less the line break the closing delimiter brings, which
            // counts as the field's own (as it does for every field).
            p.start + room.saturating_sub(2)
        } else if partial && n + 1 == parts.len() {
            body.len()
        } else {
            continue;
        };
        return Some(within(body, p, end.min(whole_limit)));
    }
    None
}

/// `end`, a cut inside part `p`; or the end of the part before it when the
/// cut would leave `p`'s headers unfinished (it would not parse).
fn within(body: &[u8], p: &Part, end: usize) -> usize {
    match p.data {
        Some(data) if end >= data => end,
        _ => before(body, p.start),
    }
}

/// Where the data before a delimiter at `start` ends: the line break
/// before a delimiter belongs to it, not to the data.
fn before(body: &[u8], start: usize) -> usize {
    let head = &body[..start];
    if head.ends_with(b"\r\n") {
        start - 2
    } else if head.ends_with(b"\n") {
        start - 1
    } else {
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multipart(fields: usize, field_size: usize, files: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..fields {
            b.extend(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n")
                    .as_bytes(),
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

    fn mp() -> Kind {
        Kind::Multipart("XyZ".into())
    }

    #[test]
    fn kinds_are_read_from_the_content_type() {
        let cases = [
            (
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                Kind::Form,
            ),
            (Some("multipart/form-data; boundary=XyZ"), mp()),
            (
                Some("Multipart/Form-Data; BOUNDARY=\"XyZ\"; charset=x"),
                mp(),
            ),
            (Some("multipart/form-data; boundary = XyZ"), mp()),
            // libmodsecurity matches a prefix: so must we.
            (Some("multipart/form-dataX; boundary=XyZ"), mp()),
            (Some("application/x-www-form-urlencodedX"), Kind::Form),
            (Some("multipart/form-data"), Kind::Other),
            (Some("application/json"), Kind::Structured),
            (Some("application/problem+json"), Kind::Structured),
            (Some("text/xml"), Kind::Structured),
            (
                Some("application/soap+xml; charset=utf-8"),
                Kind::Structured,
            ),
            (Some("text/json"), Kind::Other),
            (Some("text/plain"), Kind::Other),
            (None, Kind::Other),
        ];
        for (ct, want) in cases {
            assert_eq!(kind(ct), want, "{ct:?}");
        }
    }

    #[test]
    fn each_limit_is_measured() {
        let big = MAX_PARSED_BODY_BYTES + 1;
        let cases: [(Kind, Vec<u8>, Option<Excess>); 7] = [
            (Kind::Form, vec![b'a'; big], Some(Excess::ParsedBytes)),
            (Kind::Form, vec![b'a'; big - 1], None),
            (Kind::Structured, vec![b'a'; big], Some(Excess::ParsedBytes)),
            (Kind::Other, vec![b'a'; 4 * big], None),
            (mp(), multipart(MAX_ARGS + 1, 4, 0), Some(Excess::Fields)),
            (mp(), multipart(3, 50 * 1024, 0), Some(Excess::ParsedBytes)),
            // Files do not count towards either: uploads stay cheap.
            (mp(), multipart(10, 100, 3), None),
        ];
        for (k, body, want) in cases {
            assert_eq!(excess(&k, &body), want, "{k:?} of {} bytes", body.len());
        }
    }

    #[test]
    fn regression_a_form_past_the_parsed_limit_was_not_parsed_at_all() {
        let mut body = b"q=1'%20OR%20'1'='1&".to_vec();
        body.extend(std::iter::repeat_n(b"pad=aaaaaaaa&".as_slice(), 20_000).flatten());
        let cut = fit(&Kind::Form, &body, false);
        assert!(cut.len() <= MAX_PARSED_BODY_BYTES);
        assert!(cut.starts_with(b"q=1'%20OR"), "the start is kept");
        assert!(cut.ends_with(b"aaaaaaaa"), "cut at a field's end");
    }

    #[test]
    fn regression_multipart_fields_escaped_the_argument_limit() {
        let body = multipart(40_000, 4, 0);
        let cut = fit(&mp(), &body, false);
        assert_eq!(parts(&cut, "XyZ").len(), MAX_ARGS);
        assert!(cut.ends_with(b"aaaa\r\n--XyZ--\r\n"), "closed again");
        assert_eq!(excess(&mp(), &cut), None);
    }

    #[test]
    fn only_a_filename_parameter_makes_a_part_a_file() {
        let cases: [(&[u8], bool); 7] = [
            (
                b"Content-Disposition: form-data; name=\"a\"; filename=\"x.bin\"\r\n\r\n",
                true,
            ),
            (
                b"content-disposition: form-data; name=a; filename*=UTF-8''x\r\n\r\n",
                true,
            ),
            (b"Content-Disposition: form-data; name=\"a\"\r\n\r\n", false),
            // The word elsewhere does not make a file of a field.
            (
                b"Content-Disposition: form-data; name=\"filename=\"\r\n\r\n",
                false,
            ),
            (
                b"X-Note: filename=x\r\nContent-Disposition: form-data; name=a\r\n\r\n",
                false,
            ),
            (
                b"Content-Disposition: form-data; name=a; filenamex=y\r\n\r\n",
                false,
            ),
            (
                b"Content-Disposition: form-data; name=\"a; filename=x\"\r\n\r\n",
                false,
            ),
        ];
        for (head, want) in cases {
            assert_eq!(
                names_a_file(head),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_multipart_body_within_the_limits_is_left_alone() {
        let body = multipart(10, 100, 3);
        assert!(matches!(fit(&mp(), &body, false), Cow::Borrowed(b) if b == body.as_slice()));
    }

    #[test]
    fn a_multipart_body_envoy_cut_short_has_its_unfinished_part_closed() {
        let body = multipart(2, 10, 2);
        let cut_by_envoy = &body[..body.len() - 1000];
        let fitted = fit(&mp(), cut_by_envoy, true);
        assert_eq!(
            parts(&fitted, "XyZ").len(),
            4,
            "the second file's start too"
        );
        assert_eq!(fitted.len(), cut_by_envoy.len() + b"\r\n--XyZ--\r\n".len());
        assert!(fitted.ends_with(b"zzz\r\n--XyZ--\r\n"));
    }

    #[test]
    fn a_part_envoy_cut_inside_its_headers_goes() {
        let mut cut_by_envoy = multipart(2, 10, 0);
        cut_by_envoy.truncate(cut_by_envoy.len() - b"--XyZ--\r\n".len());
        cut_by_envoy.extend(b"--XyZ\r\nContent-Disposition: form-da");
        let fitted = fit(&mp(), &cut_by_envoy, true);
        assert_eq!(parts(&fitted, "XyZ").len(), 2);
        assert!(fitted.ends_with(b"aaaaaaaaaa\r\n--XyZ--\r\n"));
    }

    #[test]
    fn a_field_past_the_parsed_limit_keeps_its_start() {
        let body = multipart(1, MAX_PARSED_BODY_BYTES + 10, 0);
        let fitted = fit(&mp(), &body, false);
        let kept = parts(&fitted, "XyZ");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].field_bytes, MAX_PARSED_BODY_BYTES);
        assert_eq!(excess(&mp(), &fitted), None);
    }

    #[test]
    fn a_closed_body_stays_within_the_whole_body_limit() {
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"u\"; filename=\"a\"\r\n\r\n".to_vec();
        body.resize(MAX_BODY_BYTES, b'z');
        let fitted = fit(&mp(), &body, true);
        assert_eq!(fitted.len(), MAX_BODY_BYTES);
        assert!(fitted.ends_with(b"zzz\r\n--XyZ--\r\n"));
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
        ] {
            for partial in [false, true] {
                let _ = excess(&mp(), body);
                let _ = fit(&mp(), body, partial);
            }
        }
    }
}
