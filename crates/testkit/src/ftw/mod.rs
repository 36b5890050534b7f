//! The OWASP Core Rule Set's regression tests (the `ftw` YAML format) as
//! data: each stage's request, built byte for byte the way the suite's own
//! runner builds it, and what the stage expects. Running them is `run.rs`.
//!
//! The request rules follow ftw 1.x, which the CRS 3.3 suite was written
//! for: a body without `Content-Type` is sent as a form; a form body
//! without percent-escapes is re-encoded as Python's `urlencode` would; a
//! body without `Content-Length` gets one (its length in characters);
//! `stop_magic` turns all three off; `raw_request` is sent after Python's
//! `unicode_escape` decoding, and `encoded_request` after base64.

pub mod run;

use std::path::{Path, PathBuf};

use serde_norway::Value;

/// One stage: a request and what must follow it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// `<file>/<test_title>/<index>`, for reports.
    pub id: String,
    /// The bytes sent on a connection of the stage's own.
    pub request: Vec<u8>,
    /// What the stage expects.
    pub expect: Expect,
}

/// A stage's expectations; every one given must hold.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Regexes the stage's log must match.
    pub log_contains: Option<String>,
    /// Regexes the stage's log must not match.
    pub no_log_contains: Option<String>,
    /// Acceptable statuses (empty: any).
    pub status: Vec<u16>,
    /// A regex the raw response must match.
    pub response_contains: Option<String>,
    /// The exchange must fail (no response).
    pub expect_error: bool,
}

/// Every enabled stage of every `*.yaml` under `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Stage>, String> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut stages = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        stages.extend(parse(&name, &text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ok(stages)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// The enabled stages of one file's text.
pub fn parse(name: &str, text: &str) -> Result<Vec<Stage>, String> {
    let doc: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if doc["meta"]["enabled"].as_bool() == Some(false) {
        return Ok(Vec::new());
    }
    let mut stages = Vec::new();
    for test in doc["tests"].as_sequence().into_iter().flatten() {
        if test["enabled"].as_bool() == Some(false) {
            continue;
        }
        let title = scalar(&test["test_title"]).unwrap_or_default();
        for (i, item) in test["stages"]
            .as_sequence()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let stage = &item["stage"];
            stages.push(Stage {
                id: format!("{name}/{title}/{i}"),
                request: request(&stage["input"])?,
                expect: expect(&stage["output"]),
            });
        }
    }
    Ok(stages)
}

/// A YAML scalar as Python's `str()` would print it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
        _ => None,
    }
}

fn expect(output: &Value) -> Expect {
    let status = match &output["status"] {
        Value::Sequence(list) => list
            .iter()
            .filter_map(|s| s.as_u64())
            .filter_map(|s| u16::try_from(s).ok())
            .collect(),
        v => v
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .into_iter()
            .collect(),
    };
    Expect {
        log_contains: scalar(&output["log_contains"]),
        no_log_contains: scalar(&output["no_log_contains"]),
        status,
        response_contains: scalar(&output["response_contains"]),
        expect_error: output["expect_error"].as_bool().unwrap_or(false),
    }
}

/// The bytes of `input`'s request.
fn request(input: &Value) -> Result<Vec<u8>, String> {
    if let Some(encoded) = scalar(&input["encoded_request"]) {
        return base64(encoded.trim());
    }
    if let Some(raw) = scalar(&input["raw_request"]) {
        return Ok(unicode_escape(&raw));
    }
    let text = |key: &str, default: &str| scalar(&input[key]).unwrap_or_else(|| default.into());
    let stop_magic = input["stop_magic"].as_bool().unwrap_or(false);
    let mut headers: Vec<(String, String)> = input["headers"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
        .collect();
    let mut data = match &input["data"] {
        Value::Sequence(lines) => lines
            .iter()
            .map(|l| scalar(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\r\n"),
        v => scalar(v).unwrap_or_default(),
    };
    if !data.is_empty() && !stop_magic {
        magic(&mut headers, &mut data);
    }
    let mut out = format!(
        "{} {} {}\r\n",
        text("method", "GET"),
        text("uri", "/"),
        text("version", "HTTP/1.1")
    );
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&data);
    Ok(out.into_bytes())
}

/// ftw's defaults for a body: a form type, its re-encoding, its length.
/// Header names are compared as ftw compares them, case and all.
fn magic(headers: &mut Vec<(String, String)>, data: &mut String) {
    let has = |h: &Vec<(String, String)>, name: &str| h.iter().any(|(k, _)| k == name);
    let form = "application/x-www-form-urlencoded";
    if !has(headers, "Content-Type") {
        headers.push(("Content-Type".into(), form.into()));
    }
    let is_form = headers
        .iter()
        .any(|(k, v)| k == "Content-Type" && v == form);
    if is_form && percent_decode(data) == data.as_bytes() {
        let pairs = parse_qsl(data);
        if !pairs.is_empty() {
            *data = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(v)))
                .collect::<Vec<_>>()
                .join("&");
        }
    }
    if !has(headers, "Content-Length") {
        headers.push(("Content-Length".into(), data.chars().count().to_string()));
    }
}

/// Python's `parse_qsl` with its defaults: `&`-separated, pairs without
/// `=` or with an empty value dropped, `+` and escapes decoded.
fn parse_qsl(qs: &str) -> Vec<(String, String)> {
    let decode =
        |s: &str| String::from_utf8_lossy(&percent_decode(&s.replace('+', " "))).into_owned();
    qs.split('&')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            (!v.is_empty()).then(|| (decode(k), decode(v)))
        })
        .collect()
}

/// `%XX` decoded; anything else kept.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Python's `quote_plus`: letters, digits and `_.-~` kept, space as `+`,
/// every other UTF-8 byte as `%XX`.
fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Python's `unicode_escape` decoding of text that was UTF-8 encoded first:
/// the escapes the suite uses (`\r`, `\n`, `\t`, `\\`, `\'`, `\"`, `\xHH`,
/// `\0`) become their bytes, everything else stays.
fn unicode_escape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b'r' => (Some(b'\r'), 2),
            b'n' => (Some(b'\n'), 2),
            b't' => (Some(b'\t'), 2),
            b'0' => (Some(0), 2),
            b'\\' => (Some(b'\\'), 2),
            b'\'' => (Some(b'\''), 2),
            b'"' => (Some(b'"'), 2),
            b'x' => match std::str::from_utf8(b.get(i + 2..i + 4).unwrap_or_default())
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => (Some(v), 4),
                None => (None, 1),
            },
            _ => (None, 1),
        };
        match byte {
            Some(v) => out.push(v),
            None => out.push(b'\\'),
        }
        i += used;
    }
    out
}

/// Standard base64, padding optional.
fn base64(s: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v =
            value(c).ok_or_else(|| format!("encoded_request: {:?} is not base64", c as char))?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Stage {
        let mut all = parse("t", yaml).expect("parse");
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn text(s: &Stage) -> String {
        String::from_utf8_lossy(&s.request).into_owned()
    }

    const FORM: &str = r#"
meta: {enabled: true}
tests:
  - test_title: 1
    stages:
      - stage:
          input:
            method: POST
            headers: {Host: localhost, User-Agent: t}
            data: "var=1' OR 1=1&flag&empty=&x=a b"
            version: HTTP/1.0
          output: {log_contains: 'id "942100"', status: [200, 403]}
"#;

    #[test]
    fn a_form_body_is_typed_reencoded_and_measured_as_ftw_does() {
        let s = one(FORM);
        assert_eq!(
            text(&s),
            "POST / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 25\r\n\r\nvar=1%27+OR+1%3D1&x=a+b"
                .replace("25", &"var=1%27+OR+1%3D1&x=a+b".len().to_string())
        );
        assert_eq!(s.expect.status, [200, 403]);
        assert_eq!(s.expect.log_contains.as_deref(), Some("id \"942100\""));
        assert!(s.id.starts_with("t/1/0"));
    }

    #[test]
    fn escapes_and_stop_magic_leave_the_body_alone() {
        let escaped = FORM.replace("var=1' OR 1=1", "var=%27x");
        assert!(text(&one(&escaped)).ends_with("var=%27x&flag&empty=&x=a b"));
        let raw = FORM.replace(
            "version: HTTP/1.0",
            "version: HTTP/1.0\n            stop_magic: true",
        );
        let t = text(&one(&raw));
        assert!(
            !t.contains("Content-Length") && !t.contains("Content-Type"),
            "{t}"
        );
    }

    #[test]
    fn raw_and_encoded_requests_are_sent_as_written() {
        let raw = r#"
meta: {enabled: true}
tests:
  - test_title: r
    stages:
      - stage:
          input: {raw_request: 'GET / HTTP/1.1\r\nHost: a\r\nX: \x41\r\n\r\n'}
          output: {status: 400}
"#;
        assert_eq!(text(&one(raw)), "GET / HTTP/1.1\r\nHost: a\r\nX: A\r\n\r\n");
        let encoded = raw.replace(
            r#"raw_request: 'GET / HTTP/1.1\r\nHost: a\r\nX: \x41\r\n\r\n'"#,
            "encoded_request: R0VUIC8gSFRUUC8xLjENCg0K",
        );
        assert_eq!(text(&one(&encoded)), "GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn disabled_files_and_tests_have_no_stages() {
        assert!(
            parse("t", &FORM.replace("enabled: true", "enabled: false"))
                .expect("parse")
                .is_empty()
        );
        let off = FORM.replace(
            "  - test_title: 1\n",
            "  - test_title: 1\n    enabled: false\n",
        );
        assert!(parse("t", &off).expect("parse").is_empty());
    }

    #[test]
    fn the_vendored_suite_parses_whole() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crs-regression/tests");
        let stages = load_dir(&dir).expect("suite");
        // CRS 3.3.4's regression suite: its enabled stages.
        assert!(stages.len() > 2_000, "{}", stages.len());
        assert!(stages.iter().all(|s| !s.request.is_empty()));
    }
}
