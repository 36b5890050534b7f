//! Multipart bodies as the service reads them before ModSecurity does:
//! where the parts are and how much of them ModSecurity counts, whether a
//! backend could read them otherwise than ModSecurity, and the longest
//! start that is within the limits and still parses. Pure.
//!
//! The Core Rule Set reads a field's value as an argument and never a
//! file's contents, so whatever makes ModSecurity take a field for a
//! file's contents, while the backend reads a field, hides it from every
//! rule. Parsers disagree on:
//! - the boundary: PHP ends an unquoted one at a comma, Go and Python drop
//!   a space after `=`, ModSecurity keeps both;
//! - a header given twice in one part: ModSecurity keeps the first,
//!   Starlette the last;
//! - a value in single quotes: PHP reads them as quotes, ModSecurity as
//!   part of the value.
//!
//! Such a body is refused with rule [`AMBIGUOUS`], the id under which the
//! rule set refuses what ModSecurity itself finds wrong with a body.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::inspected::{MAX_ARGS, MAX_BODY_BYTES, MAX_PARSED_BODY_BYTES};

/// The rule id a multipart body that could be read two ways is refused
/// under (ours, in ModSecurity's local range; `engine::OUR_RULES`).
pub const AMBIGUOUS: u32 = 10007;

/// The longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// One part: where its delimiter line starts and where its data starts
/// (none when its headers never end); how many of its bytes ModSecurity
/// counts against its limit on parsed bytes, or a little more; whether
/// parsers could disagree on its headers.
pub(crate) struct Part {
    start: usize,
    data: Option<usize>,
    counted: usize,
    ambiguous: bool,
}

/// A multipart body split into its parts.
pub(crate) struct Layout {
    /// The parts before the closing delimiter (or the end of the body).
    pub(crate) parts: Vec<Part>,
    /// Where the closing delimiter starts, when there is one.
    closing: Option<usize>,
    /// The first delimiter line's end: `\r\n`, or `\n` in a body of bare
    /// line feeds (what is added must not mix the two).
    eol: &'static str,
}

impl Layout {
    /// The parts of `body`, each starting at its delimiter (`--boundary` at
    /// the start of the body or of a line). A body cut short ends with a
    /// part whose data runs to the end.
    pub(crate) fn read(body: &[u8], boundary: &str) -> Layout {
        let delimiter = format!("--{boundary}");
        let d = delimiter.as_bytes();
        // memmem, not a naive scan: a hostile body of dashes must stay linear.
        let starts: Vec<usize> = memchr::memmem::find_iter(body, d)
            .filter(|&at| at == 0 || body[at - 1] == b'\n')
            .collect();
        let eol = match starts.first() {
            Some(&s) if body[s + d.len()..].starts_with(b"\n") => "\n",
            _ => "\r\n",
        };
        let (mut parts, mut closing) = (Vec::new(), None);
        for (n, &start) in starts.iter().enumerate() {
            let after = start + d.len();
            if body[after..].starts_with(b"--") {
                closing = Some(start);
                break;
            }
            let end = starts.get(n + 1).copied().unwrap_or(body.len());
            parts.push(Part::read(body, start, after, end));
        }
        Layout {
            parts,
            closing,
            eol,
        }
    }

    /// Whether some part's headers could be read two ways.
    pub(crate) fn ambiguous(&self) -> bool {
        self.parts.iter().any(|p| p.ambiguous)
    }

    /// What ModSecurity counts against its limit on parsed bytes.
    pub(crate) fn counted(&self) -> usize {
        self.parts.iter().map(|p| p.counted).sum()
    }
}

impl Part {
    /// The part whose delimiter starts at `start`, its headers at `after`,
    /// and which ends at `end`.
    fn read(body: &[u8], start: usize, after: usize, end: usize) -> Part {
        let part = &body[after..end];
        let head_len = head_end(part);
        let head = Head::read(&part[..head_len.unwrap_or(part.len())]);
        let data = head_len.map(|h| after + h);
        // ModSecurity counts every part's headers and a field's data
        // (measured on 3.0.9: a field whose data alone was within the
        // limit was cut off by ModSecurity). The delimiter line is counted
        // too, which it may not: a few bytes more, never fewer.
        let counted = match data {
            Some(d) if head.file => d - start,
            _ => end - start,
        };
        Part {
            start,
            data,
            counted,
            ambiguous: head.ambiguous,
        }
    }
}

/// Where a part's headers end (after the empty line), if they do.
fn head_end(part: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(part, b"\r\n\r\n").map(|h| h + 4);
    let lf = memchr::memmem::find(part, b"\n\n").map(|h| h + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a part's headers say.
#[derive(Debug)]
struct Head {
    /// A file: its `Content-Disposition` has a non-empty `filename`.
    file: bool,
    /// Parsers could read it two ways.
    ambiguous: bool,
}

impl Head {
    /// Reads `head`: the rest of the delimiter line, the header lines and
    /// the empty line after them.
    fn read(head: &[u8]) -> Head {
        let text = String::from_utf8_lossy(head);
        let mut seen = HashSet::new();
        let (mut file, mut ambiguous) = (false, false);
        for line in text.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            if name == "content-disposition" {
                for param in params(value).into_iter().skip(1) {
                    let Some((key, v)) = param.split_once('=') else {
                        continue;
                    };
                    let v = v.trim();
                    ambiguous |= v.starts_with('\'');
                    // An empty name is a field to ModSecurity: a browser's
                    // empty file input sends one.
                    let key = key.trim().to_ascii_lowercase();
                    file |= matches!(key.as_str(), "filename" | "filename*")
                        && !matches!(v, "" | "\"\"");
                }
            }
            ambiguous |= !seen.insert(name);
        }
        Head { file, ambiguous }
    }
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

/// The `boundary` parameter of a multipart `Content-Type`, unquoted, read
/// leniently: the first `boundary`, spaces around `=` allowed.
pub(crate) fn boundary(ct: &str) -> Option<String> {
    let at = ct.to_ascii_lowercase().find("boundary")? + "boundary".len();
    let rest = ct[at..].trim_start().strip_prefix('=')?.trim_start();
    let b = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split([';', ' ', '\t', ',']).next()?,
    };
    (!b.is_empty()).then(|| b.to_owned())
}

/// Whether every parser reads the same boundary from `ct`: one `boundary`
/// parameter, written `boundary=` with nothing around the `=`, its value
/// (quoted or not) 1-70 of RFC 2046's characters without the space and
/// the comma, and the one [`boundary`] finds.
pub(crate) fn plain_boundary(ct: &str) -> bool {
    let mut named = params(ct).into_iter().skip(1).filter_map(|p| {
        let (name, value) = p.trim_start().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then_some((name, value))
    });
    let (Some((name, value)), None) = (named.next(), named.next()) else {
        return false;
    };
    let inner = match value.strip_prefix('"') {
        Some(q) => q.strip_suffix('"').unwrap_or(""),
        None => value,
    };
    // A space before `=` shows in the name; one after it, in the value.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_-./:=?".contains(&b);
    name.len() == "boundary".len()
        && (1..=MAX_BOUNDARY).contains(&inner.len())
        && inner.bytes().all(allowed)
        && boundary(ct).as_deref() == Some(inner)
}

/// The body ModSecurity is given: `body` less an empty preamble and
/// epilogue (line ends only, which every parser skips but ModSecurity
/// flags), cut where [`cut_at`] says and closed again. Borrowed when that
/// is `body` itself.
pub(crate) fn fit<'a>(
    body: &'a [u8],
    boundary: &str,
    layout: &Layout,
    partial: bool,
) -> Cow<'a, [u8]> {
    let eol = layout.eol;
    let first = layout
        .parts
        .first()
        .map(|p| p.start)
        .or(layout.closing)
        .unwrap_or(0);
    let from = if line_ends_only(&body[..first]) {
        first
    } else {
        0
    };
    let close = format!("{eol}--{boundary}--{eol}");
    let (end, tail) = match (cut_at(body, layout, partial, close.len()), layout.closing) {
        // Nothing kept: the closing delimiter alone, with no line end
        // before it for ModSecurity to take for data before the first part.
        (Some(end), _) if end <= from => (from, &close[eol.len()..]),
        (Some(end), _) => (end, &close[..]),
        (None, Some(c)) if line_ends_only(&body[c + boundary.len() + 4..]) => {
            (c, &close[eol.len()..])
        }
        (None, _) => (body.len(), ""),
    };
    if from == 0 && &body[end..] == tail.as_bytes() {
        return Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(end - from + tail.len());
    out.extend_from_slice(&body[from..end]);
    out.extend_from_slice(tail.as_bytes());
    Cow::Owned(out)
}

fn line_ends_only(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// Where a multipart body must end to be within the limits and, once
/// `close` bytes of closing delimiter are added, still parse; `None` when
/// it is fine whole. Cut are: the parts past the 255th; the part that
/// crosses the parsed-bytes limit, after the bytes that fit; the last part
/// when Envoy cut the body short (closed where its data stops, so the start
/// of an upload is inspected); and whatever would leave no room for the
/// closing delimiter within the whole-body limit.
fn cut_at(body: &[u8], layout: &Layout, partial: bool, close: usize) -> Option<usize> {
    let end = limit_cut(body, &layout.parts, partial)?;
    let whole_limit = MAX_BODY_BYTES.saturating_sub(close);
    if end <= whole_limit {
        return Some(end);
    }
    let holder = layout.parts.iter().rev().find(|p| p.start <= whole_limit);
    Some(holder.map_or(0, |p| within(body, p, whole_limit)))
}

/// The cut the argument and parsed-bytes limits, and a body cut short,
/// ask for.
fn limit_cut(body: &[u8], parts: &[Part], partial: bool) -> Option<usize> {
    let mut counted = 0;
    for (n, p) in parts.iter().enumerate() {
        if n == MAX_ARGS {
            return Some(before(body, p.start));
        }
        let room = MAX_PARSED_BODY_BYTES.saturating_sub(counted);
        counted += p.counted;
        let end = if p.counted > room {
            // Less the line end the closing delimiter brings, which
            // counts as the part's own (as it does for every part).
            p.start + room.saturating_sub(2)
        } else if partial && n + 1 == parts.len() {
            body.len()
        } else {
            continue;
        };
        return Some(within(body, p, end));
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

/// Where the data before a delimiter at `start` ends: the line end before
/// a delimiter belongs to it, not to the data.
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
#[path = "multipart_tests.rs"]
pub(crate) mod tests;
