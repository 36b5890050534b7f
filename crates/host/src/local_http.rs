//! A minimal HTTP/1.1 client for this machine's control endpoints (Envoy's
//! admin API, the agent's own endpoints), over loopback TCP or a Unix
//! socket. One request per connection; bodies are read to a limit.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vpsie_lb_envoy::LocalAddress;

/// One answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunked transfer encoding when needed.
    pub body: String,
}

/// Sends `method path` to `addr` and reads the answer, waiting at most
/// `timeout` for each read or write and reading at most `max_body` bytes.
pub fn request(
    addr: &LocalAddress,
    method: &str,
    path: &str,
    timeout: Duration,
    max_body: u64,
) -> io::Result<Reply> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let raw = match addr {
        LocalAddress::Tcp(a) => exchange(
            TcpStream::connect_timeout(a, timeout)?,
            &head,
            timeout,
            max_body,
        )?,
        LocalAddress::Unix(p) => exchange(UnixStream::connect(p)?, &head, timeout, max_body)?,
    };
    parse_reply(raw)
}

/// A local connection, over TCP or a Unix socket: a byte stream with read
/// and write deadlines. The endpoints serve them; this client opens them.
pub trait Conn: Read + Write + Send + 'static {
    /// Sets both deadlines; `None` waits forever.
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

impl Conn for UnixStream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }
}

fn exchange(mut s: impl Conn, head: &str, timeout: Duration, max_body: u64) -> io::Result<Vec<u8>> {
    s.set_timeouts(Some(timeout), Some(timeout))?;
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    // The head's few KiB on top of the body limit.
    (&mut s).take(max_body + 64 * 1024).read_to_end(&mut raw)?;
    Ok(raw)
}

/// Splits an HTTP/1.x answer into status and body, in place: Envoy's
/// `/clusters` at 10,000 hosts is 8 MB, and copying it into a dechunked
/// body and then a string tripled the agent's peak memory.
fn parse_reply(raw: impl Into<Vec<u8>>) -> io::Result<Reply> {
    let mut raw = raw.into();
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete answer"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("answer head is not text"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status in the answer"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    raw.drain(..end + 4);
    if chunked {
        let len = dechunk_in_place(&mut raw).ok_or_else(|| bad("broken chunked body"))?;
        raw.truncate(len);
    }
    let body = String::from_utf8(raw)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(Reply { status, body })
}

/// Decodes a chunked body over itself (the data only ever moves left);
/// its length, or `None` when it is broken.
fn dechunk_in_place(buf: &mut [u8]) -> Option<usize> {
    let (mut read, mut write) = (0, 0);
    loop {
        let line_end = read + buf[read..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[read..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        read = line_end + 2;
        if size == 0 {
            return Some(write);
        }
        let end = read.checked_add(size).filter(|e| *e <= buf.len())?;
        buf.copy_within(read..end, write);
        write += size;
        read = end.checked_add(2).filter(|r| *r <= buf.len())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copying decoder this module had, as the reference.
    fn dechunk_copying(mut rest: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }

    proptest::proptest! {
        #[test]
        fn dechunking_in_place_gives_what_copying_gave(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..6),
            cut in 0usize..400,
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        ) {
            let mut body = Vec::new();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            // Whole, cut short, and with bytes of noise inside.
            let mut cases = vec![body.clone(), body[..cut.min(body.len())].to_vec()];
            let mut noisy = body.clone();
            noisy.splice(cut.min(body.len())..cut.min(body.len()), noise.iter().copied());
            cases.push(noisy);
            for case in cases {
                let mut buf = case.clone();
                let got = dechunk_in_place(&mut buf).map(|n| buf[..n].to_vec());
                proptest::prop_assert_eq!(got, dechunk_copying(&case));
            }
        }
    }

    #[test]
    fn plain_and_chunked_answers() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn chunk_sizes_in_any_case_with_extensions_and_an_overflowing_one() {
        let answer = |body: &[u8]| {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(body);
            parse_reply(raw)
        };
        let r = answer(b"A\r\n0123456789\r\n 1 ;ext=\"x\"\r\n!\r\n0\r\n\r\n").expect("chunked");
        assert_eq!(r.body, "0123456789!");
        assert!(answer(b"FFFFFFFFFFFFFFFF\r\nab\r\n0\r\n\r\n").is_err());
        assert!(answer(b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n").is_err());
        let r = parse_reply(b"HTTP/1.1 200 OK\r\n\r\nok\xff").expect("lossy");
        assert_eq!(r.body, "ok\u{fffd}");
    }

    #[test]
    fn talks_over_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).expect("read");
            assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nLIVE\n")
                .expect("write");
        });
        let r = request(
            &LocalAddress::Unix(path),
            "GET",
            "/ready",
            Duration::from_secs(5),
            1024,
        )
        .expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
        server.join().expect("server");
    }
}
