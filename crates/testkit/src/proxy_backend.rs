//! A backend that expects the PROXY protocol (v1 or v2) at the start of
//! every connection, records what each header said, and then answers HTTP
//! as [`crate::backend::HttpBackend`] does. A connection without a valid
//! header is closed, as nginx's or HAProxy's `accept-proxy` would.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::backend::{Server, State, serve_http};

/// What one connection's header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client's address, and the one it reached.
    Proxied {
        /// The header's version, 1 or 2.
        version: u8,
        /// The client's address and port.
        source: SocketAddr,
        /// The address and port the client connected to.
        destination: SocketAddr,
    },
    /// A connection of the proxy's own (a health check): v2 `LOCAL` or v1
    /// `PROXY UNKNOWN`.
    Local {
        /// The header's version, 1 or 2.
        version: u8,
    },
}

/// The v2 signature every binary header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY-protocol HTTP backend.
pub struct ProxyBackend {
    headers: Arc<Mutex<Vec<Header>>>,
    refused: Arc<Mutex<Vec<String>>>,
    server: Server,
}

impl ProxyBackend {
    /// Starts on a free port of 127.0.0.1; answers with `name`.
    pub fn start(name: &str) -> ProxyBackend {
        let state = Arc::new(State::default());
        state.health_status.store(200, Ordering::SeqCst);
        let headers: Arc<Mutex<Vec<Header>>> = Arc::default();
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy backend");
        let server = {
            let (headers, refused, name) = (headers.clone(), refused.clone(), name.to_owned());
            Server::start(listener, move |mut s| match read_header(&mut s) {
                Ok(h) => {
                    headers.lock().expect("headers lock").push(h);
                    let _ = serve_http(s, &name, &state);
                }
                Err(e) => refused.lock().expect("refused lock").push(e.to_string()),
            })
            .expect("start proxy backend")
        };
        ProxyBackend {
            headers,
            refused,
            server,
        }
    }
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }
    /// Every header received, in order.
    pub fn headers(&self) -> Vec<Header> {
        self.headers.lock().expect("headers lock").clone()
    }
    /// Why each connection without a valid header was closed.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("refused lock").clone()
    }
}

impl Drop for ProxyBackend {
    fn drop(&mut self) {
        self.server.stop();
    }
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads exactly the header, so what follows is the proxied stream.
pub fn read_header(s: &mut impl Read) -> io::Result<Header> {
    let mut first = [0u8; 12];
    s.read_exact(&mut first[..5])?;
    if &first[..5] == b"PROXY" {
        return read_v1(s);
    }
    s.read_exact(&mut first[5..])?;
    if first != V2_SIGNATURE {
        return Err(bad(format!(
            "no proxy header: starts with {:?}",
            &first[..]
        )));
    }
    read_v2(s)
}

/// The rest of a v1 line after `PROXY`: at most 107 bytes in all, CRLF-ended.
fn read_v1(s: &mut impl Read) -> io::Result<Header> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > 102 {
            return Err(bad("v1 header longer than 107 bytes"));
        }
        s.read_exact(&mut b)?;
        line.push(b[0]);
    }
    let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(Header::Local { version: 1 }),
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |t: &str| t.parse::<IpAddr>().map_err(|e| bad(format!("{t}: {e}")));
            let port = |t: &str| t.parse::<u16>().map_err(|e| bad(format!("{t}: {e}")));
            let (src, dst) = (ip(src)?, ip(dst)?);
            if src.is_ipv4() != (*family == "TCP4") {
                return Err(bad(format!("{family} with address {src}")));
            }
            Ok(Header::Proxied {
                version: 1,
                source: SocketAddr::new(src, port(sport)?),
                destination: SocketAddr::new(dst, port(dport)?),
            })
        }
        _ => Err(bad(format!("bad v1 header {text:?}"))),
    }
}

/// The rest of a v2 header after its signature.
fn read_v2(s: &mut impl Read) -> io::Result<Header> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let (version_command, family) = (head[0], head[1]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    if version_command >> 4 != 2 {
        return Err(bad(format!(
            "v2 header with version {}",
            version_command >> 4
        )));
    }
    match (version_command & 0x0f, family) {
        (0, _) => Ok(Header::Local { version: 2 }),
        (1, 0x11) if len >= 12 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Ok(Header::Proxied {
                version: 2,
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        (1, 0x21) if len >= 36 => {
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Ok(Header::Proxied {
                version: 2,
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        (command, family) => Err(bad(format!(
            "v2 header with command {command} and family {family:#x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_refuses_a_missing_header() {
        let v1 = b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 443\r\nGET";
        let h = read_header(&mut &v1[..]).expect("v1");
        assert_eq!(
            h,
            Header::Proxied {
                version: 1,
                source: "10.1.2.3:5555".parse().expect("addr"),
                destination: "10.0.0.1:443".parse().expect("addr"),
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            read_header(&mut &unknown[..]).expect("unknown"),
            Header::Local { version: 1 }
        );
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 10, 1, 2, 3, 10, 0, 0, 1, 0x15, 0xb3, 0x01, 0xbb,
        ]);
        let h = read_header(&mut &v2[..]).expect("v2");
        assert_eq!(
            h,
            Header::Proxied {
                version: 2,
                source: "10.1.2.3:5555".parse().expect("addr"),
                destination: "10.0.0.1:443".parse().expect("addr"),
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            read_header(&mut &local[..]).expect("local"),
            Header::Local { version: 2 }
        );
        assert!(read_header(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).is_err());
    }
}
