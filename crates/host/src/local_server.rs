//! A small HTTP/1.1 server for this machine's control endpoints (the
//! agent's own, the ACME responder), on loopback TCP or a Unix socket.
//!
//! Any local process can reach it, so every resource a client can hold is
//! bounded: connections ([`MAX_CONNECTIONS`]), the request head
//! ([`MAX_HEAD_BYTES`]), and the time per request ([`REQUEST_DEADLINE`]).
//! One request per connection; the answer closes it. The parser is a pure
//! function ([`parse_head`]) so it can be fuzzed on its own. Apart from
//! the endpoints so that the ACME responder, which the endpoints also
//! report on, need not depend on them (they made a module circle).

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vpsie_lb_envoy::LocalAddress;

use crate::local_http::Conn;
use vpsie_lb_core::backoff::Backoff;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The largest request line plus headers accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The longest a client may take to send its request and read the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The longest wait after a failed accept (EMFILE): the backoff doubles to this.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A request head that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// The `Host` header, when there is exactly one.
    pub host: Option<&'a str>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not yet a whole head (no blank line), but within the limit.
    Incomplete,
    /// Longer than [`MAX_HEAD_BYTES`] (431).
    TooLarge,
    /// Not an HTTP/1.x request line (400).
    Malformed,
}

/// Parses the head of an HTTP/1.x request from the bytes read so far.
pub fn parse_head(buf: &[u8]) -> Result<Head<'_>, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buf.len() >= MAX_HEAD_BYTES {
            HeadError::TooLarge
        } else {
            HeadError::Incomplete
        });
    };
    if end + 4 > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(end);
    let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed);
    }
    let path = target.split('?').next().unwrap_or(target);
    let fields = std::str::from_utf8(&buf[line_end..end]).map_err(|_| HeadError::Malformed)?;
    let mut hosts = fields.split("\r\n").filter_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("host").then(|| value.trim())
    });
    // Two Host headers are a malformed request (RFC 9112, 3.2).
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(HeadError::Malformed),
        (host, None) => host,
    };
    Ok(Head { method, path, host })
}

/// Mode of the agent's socket: its user and group. The endpoints are
/// unauthenticated and `POST /sync` runs a pass.
pub const SOCKET_MODE: u32 = 0o660;

/// What answers one parsed request: status, content type and body.
pub type Router = Arc<dyn Fn(&Head<'_>) -> Answer + Send + Sync>;

/// Serves `router` on `addr` with the limits above, one thread per
/// connection; the agent's endpoints and the ACME responder both use it.
pub fn serve(addr: &LocalAddress, router: Router) -> std::io::Result<LocalAddress> {
    let thread = std::thread::Builder::new().name("endpoints".into());
    match addr {
        LocalAddress::Tcp(a) => {
            let listener = TcpListener::bind(a)?;
            let bound = LocalAddress::Tcp(listener.local_addr()?);
            thread.spawn(move || accept_loop(|| listener.accept().map(|(s, _)| s), &router))?;
            Ok(bound)
        }
        LocalAddress::Unix(path) => {
            // A live agent on this socket holds the Envoy directory's lock,
            // so this one would not have got this far: a file here is stale.
            crate::fsutil::prepare_socket_path(path)?;
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(SOCKET_MODE),
            )?;
            thread.spawn(move || accept_loop(|| listener.accept().map(|(s, _)| s), &router))?;
            Ok(addr.clone())
        }
    }
}

/// The wait after the first failed accept; it doubles up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// One accept: the connection, or, after a failure, a wait (`sleep`) that
/// doubles with every failure in a row and starts over after a success.
/// EMFILE and friends do not clear by retrying at once: a loop that did
/// would spin a core.
fn accept_one<S>(
    accept: &impl Fn() -> std::io::Result<S>,
    backoff: &mut Backoff,
    sleep: impl Fn(Duration),
) -> Option<S> {
    match accept() {
        Ok(s) => {
            backoff.reset();
            Some(s)
        }
        Err(e) => {
            let wait = backoff.step();
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "agent endpoints: accept failed");
            sleep(wait);
            None
        }
    }
}

fn accept_loop<S: Conn>(accept: impl Fn() -> std::io::Result<S>, router: &Router) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut backoff = Backoff::new(FIRST_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF);
    loop {
        let Some(stream) = accept_one(&accept, &mut backoff, std::thread::sleep) else {
            continue;
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let (r, mine) = (router.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("endpoint".into())
            .spawn(move || {
                let _ = handle(stream, &r);
                mine.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure, and the count it would have released, is gone.
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("agent endpoints: could not start a thread for a connection");
        }
    }
}

/// Reads one request head within the limits.
fn read_head(stream: &mut impl Conn, buf: &mut Vec<u8>) -> Result<(), HeadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut chunk = [0u8; 1024];
    loop {
        match parse_head(buf) {
            Err(HeadError::Incomplete) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || stream
                .set_timeouts(Some(left), Some(REQUEST_DEADLINE))
                .is_err()
        {
            return Err(HeadError::Malformed);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Malformed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn handle(mut stream: impl Conn, router: &Router) -> std::io::Result<()> {
    stream.set_timeouts(Some(REQUEST_DEADLINE), Some(REQUEST_DEADLINE))?;
    let mut buf = Vec::with_capacity(1024);
    let answer = match read_head(&mut stream, &mut buf) {
        Ok(()) => match parse_head(&buf) {
            Ok(head) => router(&head),
            Err(_) => plain(400, "bad request\n"),
        },
        Err(HeadError::TooLarge) => plain(431, "request head too large\n"),
        Err(_) => plain(400, "bad request\n"),
    };
    let (status, content_type, body) = answer;
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    stream.flush()
}

/// An answer: status, content type and body.
pub type Answer = (u16, &'static str, String);

/// A `text/plain` answer.
pub fn plain(status: u16, body: &str) -> Answer {
    (status, "text/plain", body.to_owned())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_say_why_not() {
        let ok = parse_head(b"GET /status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").expect("valid");
        assert_eq!(
            ok,
            Head {
                method: "GET",
                path: "/status",
                host: Some("a"),
            }
        );
        let no_host = parse_head(b"GET / HTTP/1.1\r\n\r\n").expect("valid");
        assert_eq!(no_host.host, None);
        assert_eq!(
            parse_head(b"GET /status HTTP/1.1\r\n"),
            Err(HeadError::Incomplete)
        );
        for bad in [
            &b"GET /status\r\n\r\n"[..],
            b"get /status HTTP/1.1\r\n\r\n",
            b"GET status HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/2\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(HeadError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn accept_failures_back_off_instead_of_spinning() {
        use std::cell::{Cell, RefCell};
        let failing = Cell::new(true);
        let accept = || {
            if failing.get() {
                Err(std::io::Error::from_raw_os_error(24)) // EMFILE
            } else {
                Ok(())
            }
        };
        let waits = RefCell::new(Vec::new());
        let sleep = |d: Duration| waits.borrow_mut().push(d.as_millis());
        let mut backoff = Backoff::new(FIRST_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF);
        for _ in 0..9 {
            assert!(accept_one(&accept, &mut backoff, sleep).is_none());
        }
        assert_eq!(
            *waits.borrow(),
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000],
            "every failure waits, doubling to 1 s"
        );
        failing.set(false);
        assert!(accept_one(&accept, &mut backoff, sleep).is_some());
        assert_eq!(
            backoff,
            Backoff::new(FIRST_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF),
            "a success starts over"
        );
    }

    #[test]
    fn regression_an_endless_request_line_was_read_without_a_limit() {
        let long = vec![b'a'; MAX_HEAD_BYTES];
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        let mut head = b"GET /".to_vec();
        head.extend(vec![b'a'; MAX_HEAD_BYTES]);
        head.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(parse_head(&head), Err(HeadError::TooLarge));
    }
}
