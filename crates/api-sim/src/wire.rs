//! Writing HTTP/1.1 answers by hand: the emulator must be able to send
//! what no well-behaved server would (a 50 MB body, a reset).

use std::io::Write;
use std::net::TcpStream;

use crate::HUGE_BODY_BYTES;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    }
}

pub(crate) fn respond(
    mut s: TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

pub(crate) fn respond_huge(mut s: TcpStream) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {HUGE_BODY_BYTES}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..HUGE_BODY_BYTES / chunk.len() {
        // The client may hang up once it has read its limit; that is the point.
        if s.write_all(&chunk).is_err() {
            return Ok(());
        }
    }
    s.flush()
}
