//! A deliberately small HTTP/1.1 client: one request per connection, so
//! every request is a fresh choice for the load balancer.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Read and write timeout of every request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` from 127.0.0.1:`port`.
pub fn get(port: u16, path: &str) -> io::Result<Response> {
    request(None, port, "GET", path, &[])
}

/// Sends one request from `source` (any loopback address, e.g. 127.0.0.7) to 127.0.0.1:`port`.
pub fn request(
    source: Option<IpAddr>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    request_to(
        source,
        port,
        &format!("127.0.0.1:{port}"),
        method,
        path,
        headers,
    )
}

/// Like [`request`], with `host` as the Host header.
pub fn request_to(
    source: Option<IpAddr>,
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let mut stream = connect(source, port)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    read_response(&mut stream)
}

/// Sends `method path` with a JSON `body` to 127.0.0.1:`port`.
pub fn send(port: u16, method: &str, path: &str, body: &str) -> io::Result<Response> {
    let mut stream = connect(None, port)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    read_response(&mut stream)
}

/// A TCP connection to 127.0.0.1:`port`, optionally from a chosen loopback source address.
pub fn connect(source: Option<IpAddr>, port: u16) -> io::Result<TcpStream> {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = match source {
        None => TcpStream::connect_timeout(&target, IO_TIMEOUT)?,
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&target.into(), IO_TIMEOUT)?;
            sock.into()
        }
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Reads a whole `Connection: close` response.
pub fn read_response(stream: &mut impl Read) -> io::Result<Response> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses a complete response (content-length, chunked, or read-to-close).
pub fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(if raw.is_empty() {
                "connection closed without a response"
            } else {
                "no end of headers"
            })
        })?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Sends `n` requests to `port` and counts responses by body (the backend's
/// name). Non-200 responses count under `status <code>`, failures under `error`.
pub fn count_by_backend(port: u16, n: usize) -> BTreeMap<String, usize> {
    count_from(None, port, n)
}

/// Like [`count_by_backend`], from a chosen loopback source address.
pub fn count_from(source: Option<IpAddr>, port: u16, n: usize) -> BTreeMap<String, usize> {
    count_with(n, || request(source, port, "GET", "/", &[]))
}

/// Like [`count_by_backend`], with `host` as the Host header.
pub fn count_by_backend_to(port: u16, host: &str, n: usize) -> BTreeMap<String, usize> {
    count_with(n, || request_to(None, port, host, "GET", "/", &[]))
}

fn count_with(n: usize, send: impl Fn() -> io::Result<Response>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match send() {
            Ok(r) if r.status == 200 => r.body.trim().to_owned(),
            Ok(r) => format!("status {}", r.status),
            Err(_) => "error".to_owned(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}
