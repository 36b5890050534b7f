//! Runs the stages against one target, one at a time, and judges each by
//! its answer and by what the target logged for it.
//!
//! A target's log is read whole; what belongs to a stage is found with a
//! marker: after each stage the runner sends `GET /crs-marker-<n>` with a
//! scanner's User-Agent, which every Core Rule Set logs (913100), and the
//! stage's lines are those between the previous marker's line and this
//! one's. Stages run one after another, so nothing else logs meanwhile.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Stage;

/// How long an answer may take; a target that holds a request open past
/// it (waiting for a body that never comes, say) has answered nothing.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Where stages go, and how to read what was logged.
pub struct Target<'a> {
    /// For reports.
    pub name: &'a str,
    /// The HTTP port on 127.0.0.1.
    pub port: u16,
    /// The log from this byte on (read again on every look, so it must be
    /// cheap for a growing file: seek, then read).
    pub log_from: &'a dyn Fn(usize) -> String,
    /// A stage's lines as ModSecurity names rules, `[id "942100"]`.
    pub as_modsecurity: &'a dyn Fn(&str) -> String,
}

/// The file at `path` from byte `offset` on; empty when unreadable.
pub fn read_from(path: &std::path::Path, offset: usize) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(offset as u64)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What came of one stage.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The stage's id.
    pub id: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// The rule ids logged for the stage.
    pub rules: BTreeSet<u32>,
    /// The first expectation that failed.
    pub why: String,
}

/// Runs `stages` against `target`, in order.
pub fn run(stages: &[Stage], target: &Target) -> Result<Vec<Outcome>, String> {
    let mut consumed = (target.log_from)(0).len();
    let mut out = Vec::with_capacity(stages.len());
    for (n, stage) in stages.iter().enumerate() {
        let answer = exchange(target.port, &stage.request);
        let marker = format!("/crs-marker-{n}-{}", std::process::id());
        let request = format!(
            "GET {marker} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: sqlmap/1.7.2\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        exchange(target.port, request.as_bytes())
            .map_err(|e| format!("{}: marker {n}: {e}", target.name))?;
        let (lines, next) = lines_before(target, consumed, &marker)?;
        consumed = next;
        out.push(judge(stage, answer, &(target.as_modsecurity)(&lines)));
    }
    Ok(out)
}

/// The log from `from` up to the line naming `marker` (polled until it
/// comes), and where the next stage's lines start.
fn lines_before(target: &Target, from: usize, marker: &str) -> Result<(String, usize), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tail = (target.log_from)(from);
        if let Some(at) = tail.find(marker) {
            let start = tail[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = tail[at..].find('\n').map_or(tail.len(), |i| at + i + 1);
            return Ok((tail[..start].to_owned(), from + end));
        }
        if Instant::now() > deadline {
            return Err(format!("{}: {marker} never reached the log", target.name));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `request` on a connection of its own; the answer's bytes, or why
/// none came.
fn exchange(port: u16, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(|e| e.to_string())?;
    // A target may answer (and close) before it read everything.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + ANSWER_WITHIN;
    while Instant::now() < deadline && !complete(&got) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    if got.is_empty() {
        Err("no answer".into())
    } else {
        Ok(got)
    }
}

/// Whether `got` holds a whole response (by its length, or its last
/// chunk); one framed by the connection's end is whole when it closes.
fn complete(got: &[u8]) -> bool {
    let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let body = got.len() - head_end - 4;
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body >= len;
    }
    head.contains("transfer-encoding: chunked") && got.ends_with(b"0\r\n\r\n")
}

fn status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The rule ids `log` names.
pub fn rule_ids(log: &str) -> BTreeSet<u32> {
    log.split("id \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

fn judge(stage: &Stage, answer: Result<Vec<u8>, String>, log: &str) -> Outcome {
    let status = answer.as_ref().ok().and_then(|a| status(a));
    let why = why_not(stage, &answer, status, log);
    Outcome {
        id: stage.id.clone(),
        passed: why.is_none(),
        status,
        rules: rule_ids(log),
        why: why.unwrap_or_default(),
    }
}

/// The first expectation of `stage` that did not hold.
fn why_not(
    stage: &Stage,
    answer: &Result<Vec<u8>, String>,
    status: Option<u16>,
    log: &str,
) -> Option<String> {
    let e = &stage.expect;
    let matches = |re: &str, text: &str| regex::Regex::new(re).map(|r| r.is_match(text));
    match answer {
        Err(err) if !e.expect_error => return Some(format!("no answer: {err}")),
        Ok(_) if e.expect_error => return Some("an answer, where an error was expected".into()),
        _ => {}
    }
    if !e.status.is_empty() && !status.is_some_and(|s| e.status.contains(&s)) {
        return Some(format!("status {status:?}, not one of {:?}", e.status));
    }
    if let Some(re) = &e.log_contains
        && !matches(re, log).unwrap_or(false)
    {
        return Some(format!("the log lacks {re}"));
    }
    if let Some(re) = &e.no_log_contains
        && matches(re, log).unwrap_or(true)
    {
        return Some(format!("the log has {re}"));
    }
    if let (Some(re), Ok(a)) = (&e.response_contains, answer)
        && !matches(re, &String::from_utf8_lossy(a)).unwrap_or(false)
    {
        return Some(format!("the answer lacks {re}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftw::Expect;

    fn stage(expect: Expect) -> Stage {
        Stage {
            id: "t/1/0".into(),
            request: Vec::new(),
            expect,
        }
    }

    #[test]
    fn each_expectation_is_judged() {
        let ok: Result<Vec<u8>, String> = Ok(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
        let closed: Result<Vec<u8>, String> = Err("closed".into());
        let log = "ModSecurity: Warning. [id \"942100\"] [id \"949110\"]\n";
        // (what the stage expects, what came, whether it passes)
        type Answer = Result<Vec<u8>, String>;
        let cases: Vec<(Expect, &Answer, bool)> = vec![
            (
                Expect {
                    log_contains: Some("id \"942100\"".into()),
                    ..Default::default()
                },
                &ok,
                true,
            ),
            (
                Expect {
                    log_contains: Some("id \"920100\"".into()),
                    ..Default::default()
                },
                &ok,
                false,
            ),
            (
                Expect {
                    no_log_contains: Some("id \"942100\"".into()),
                    ..Default::default()
                },
                &ok,
                false,
            ),
            (
                Expect {
                    status: vec![403],
                    ..Default::default()
                },
                &ok,
                false,
            ),
            (
                Expect {
                    status: vec![200, 403],
                    ..Default::default()
                },
                &ok,
                true,
            ),
            (
                Expect {
                    expect_error: true,
                    ..Default::default()
                },
                &ok,
                false,
            ),
            (
                Expect {
                    expect_error: true,
                    ..Default::default()
                },
                &closed,
                true,
            ),
            (
                Expect {
                    status: vec![200],
                    ..Default::default()
                },
                &closed,
                false,
            ),
        ];
        for (expect, answer, passed) in cases {
            let got = judge(&stage(expect.clone()), answer.clone(), log);
            assert_eq!(got.passed, passed, "{expect:?}: {}", got.why);
        }
        assert_eq!(
            rule_ids(log).into_iter().collect::<Vec<_>>(),
            [942100, 949110]
        );
    }

    #[test]
    fn a_response_is_whole_by_its_length_or_last_chunk() {
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        ));
        assert!(!complete(b"HTTP/1.0 200 OK\r\n\r\nuntil close"));
        assert_eq!(status(b"HTTP/1.1 426 Upgrade Required\r\n"), Some(426));
    }
}
