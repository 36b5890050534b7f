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

use crate::inspected::{MAX_ARGS, MAX_PARSED_BODY_BYTES};
use crate::multipart::{self, Layout};

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
        return multipart::boundary(ct).map_or(Kind::Other, Kind::Multipart);
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

/// The first limit `body` of `kind` is past, if any.
pub fn excess(kind: &Kind, body: &[u8]) -> Option<Excess> {
    match kind {
        Kind::Form | Kind::Structured => {
            (body.len() > MAX_PARSED_BODY_BYTES).then_some(Excess::ParsedBytes)
        }
        Kind::Multipart(b) => multipart_excess(&Layout::read(body, b)),
        Kind::Other => None,
    }
}

fn multipart_excess(layout: &Layout) -> Option<Excess> {
    if layout.parts.len() > MAX_ARGS {
        return Some(Excess::Fields);
    }
    (layout.counted() > MAX_PARSED_BODY_BYTES).then_some(Excess::ParsedBytes)
}

/// What a request's inspection needs to know of its body, measured once.
#[derive(Debug)]
pub struct Judged<'a> {
    /// The first limit the body is past, if any.
    pub excess: Option<Excess>,
    /// A multipart body a backend could read otherwise than ModSecurity
    /// (`multipart`): refused under [`multipart::AMBIGUOUS`].
    pub ambiguous: bool,
    /// What ModSecurity is given: [`fit`].
    pub body: Cow<'a, [u8]>,
}

/// Judges `body`, sent with `content_type`; `partial` says Envoy sent
/// only its start.
pub fn judge<'a>(content_type: Option<&str>, body: &'a [u8], partial: bool) -> Judged<'a> {
    let kind = kind(content_type);
    match (&kind, content_type) {
        (Kind::Multipart(b), Some(ct)) => {
            let layout = Layout::read(body, b);
            Judged {
                excess: multipart_excess(&layout),
                ambiguous: !multipart::plain_boundary(ct) || layout.ambiguous(),
                body: multipart::fit(body, b, &layout, partial),
            }
        }
        _ => Judged {
            excess: excess(&kind, body),
            ambiguous: false,
            body: fit(&kind, body, partial),
        },
    }
}

/// The longest start of `body` within the limits that still parses as
/// `kind`: a form up to its last `&` within the limit; a multipart body as
/// `multipart::fit` cuts and closes it (`partial` says Envoy sent only the
/// start, so its last part is unfinished). JSON and XML are left whole:
/// cut, they would not parse (rule 10004).
pub fn fit<'a>(kind: &Kind, body: &'a [u8], partial: bool) -> Cow<'a, [u8]> {
    match kind {
        Kind::Form if body.len() > MAX_PARSED_BODY_BYTES => {
            let head = &body[..MAX_PARSED_BODY_BYTES];
            let end = head.iter().rposition(|b| *b == b'&').unwrap_or(head.len());
            Cow::Borrowed(&body[..end])
        }
        Kind::Multipart(b) => multipart::fit(body, b, &Layout::read(body, b), partial),
        _ => Cow::Borrowed(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multipart::tests::multipart;

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
            // Files' contents count towards neither: uploads stay cheap.
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
}
