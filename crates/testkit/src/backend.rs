//! Real backends on 127.0.0.1: HTTP servers that answer with their name, a
//! TCP echo server, and a TLS-only HTTP server.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Path whose status the test controls; every other path answers 200 with the name.
pub const HEALTH_PATH: &str = "/healthz";

/// What a backend has seen, shared with its connection threads.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) health_status: AtomicU16,
    requests: AtomicU64,
    last_headers: Mutex<Vec<(String, String)>>,
    /// The path of every request that was not a health check, as sent.
    paths: Mutex<Vec<String>>,
}

/// The accept loop and the open connections, so `stop` can really close the port.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(
        listener: TcpListener,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let handle = Arc::new(handle);
        let accept = {
            let (stop, conns) = (stop.clone(), conns.clone());
            thread::spawn(move || {
                let mut next_id = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                            next_id += 1;
                            let id = next_id;
                            if let Ok(c) = s.try_clone() {
                                conns.lock().expect("conns lock").insert(id, c);
                            }
                            let (handle, conns) = (handle.clone(), conns.clone());
                            thread::spawn(move || {
                                handle(s);
                                // Close for real: the registry holds a clone,
                                // so dropping the handler's copy is not enough.
                                if let Some(c) = conns.lock().expect("conns lock").remove(&id) {
                                    let _ = c.shutdown(Shutdown::Both);
                                }
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                // Dropping the listener here closes the port.
            })
        };
        Ok(Server {
            addr,
            stop,
            conns,
            accept: Some(accept),
        })
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, c) in self.conns.lock().expect("conns lock").drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port))
}

/// An HTTP/1.1 backend that answers every path with its own name, and
/// [`HEALTH_PATH`] with a status the test sets.
pub struct HttpBackend {
    name: String,
    state: Arc<State>,
    server: Server,
}

impl HttpBackend {
    /// Starts on a free port.
    pub fn start(name: &str) -> HttpBackend {
        Self::start_on(name, 0).expect("start http backend")
    }

    /// Starts on `port` (0 picks one).
    pub fn start_on(name: &str, port: u16) -> io::Result<HttpBackend> {
        Self::start_at(name, std::net::Ipv4Addr::LOCALHOST, port)
    }

    /// Starts on `ip:port`, `ip` a loopback address (127.0.0.2, …), so two
    /// backends can share a port as the public API's backends do.
    pub fn start_at(name: &str, ip: std::net::Ipv4Addr, port: u16) -> io::Result<HttpBackend> {
        let state = Arc::new(State::default());
        state.health_status.store(200, Ordering::SeqCst);
        let server = {
            let (state, name) = (state.clone(), name.to_owned());
            Server::start(TcpListener::bind((ip, port))?, move |s| {
                let _ = serve_http(s, &name, &state);
            })?
        };
        Ok(HttpBackend {
            name: name.to_owned(),
            state,
            server,
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }
    /// Sets the status [`HEALTH_PATH`] answers with.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }
    /// Requests served, health checks included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Headers of the last request that was not a health check, names lowercased.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.state
            .last_headers
            .lock()
            .expect("headers lock")
            .clone()
    }
    /// The path of every request that was not a health check, as it came
    /// (the first 10,000).
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().expect("paths lock").clone()
    }
    /// Closes the port and every open connection.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Serves keep-alive HTTP/1.1 requests on one connection.
pub(crate) fn serve_http(stream: TcpStream, name: &str, state: &State) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_owned()));
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        state.requests.fetch_add(1, Ordering::SeqCst);
        let close = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let (status, text) = if path == HEALTH_PATH {
            let s = state.health_status.load(Ordering::SeqCst);
            (s, format!("{name} health {s}\n"))
        } else {
            *state.last_headers.lock().expect("headers lock") = headers;
            let mut paths = state.paths.lock().expect("paths lock");
            // Bounded: a load loop must not grow it without end.
            if paths.len() < 10_000 {
                paths.push(path.clone());
            }
            drop(paths);
            (200, format!("{name}\n"))
        };
        // Who connected: the HA lab tells the nodes apart by it.
        let peer = out
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        write!(
            out,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {name}\r\nX-Peer: {peer}\r\nServer: backend-{name}\r\n{}\r\n{text}",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// A TCP server that echoes every byte back.
pub struct EchoBackend {
    server: Server,
}

impl EchoBackend {
    /// Starts on a free port.
    pub fn start() -> EchoBackend {
        let server = Server::start(bind_loopback(0).expect("bind echo backend"), |mut s| {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
        .expect("start echo backend");
        EchoBackend { server }
    }
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// An HTTP backend that speaks only TLS, with a self-signed certificate.
pub struct TlsHttpBackend {
    state: Arc<State>,
    server: Server,
    cert_der: Vec<u8>,
}

impl TlsHttpBackend {
    /// Starts on a free port, with a certificate of its own for `name`.test.
    pub fn start(name: &str) -> TlsHttpBackend {
        let pair = crate::pki::self_signed(&format!("{name}.test"));
        let config = crate::tls::server_config(&pair.cert_pem, &pair.key_pem);
        let state = Arc::new(State::default());
        state.health_status.store(200, Ordering::SeqCst);
        let server = {
            let (state, name) = (state.clone(), name.to_owned());
            Server::start(bind_loopback(0).expect("bind tls backend"), move |s| {
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    return;
                };
                let tls = rustls::StreamOwned::new(conn, s);
                let _ = serve_tls_http(tls, &name, &state);
            })
            .expect("start tls backend")
        };
        TlsHttpBackend {
            state,
            server,
            cert_der: pair.cert_der,
        }
    }
    /// Its certificate, DER: what a client that reached it through a
    /// passthrough must see.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }
    /// Requests served over TLS, health checks included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsHttpBackend {
    fn drop(&mut self) {
        self.server.stop();
    }
}

fn serve_tls_http(
    mut tls: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    name: &str,
    state: &State,
) -> io::Result<()> {
    // Health checks are small GETs without bodies: read one head at a time.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            state.requests.fetch_add(1, Ordering::SeqCst);
            let status = if path == HEALTH_PATH {
                state.health_status.load(Ordering::SeqCst)
            } else {
                200
            };
            let text = format!("{name}\n");
            write!(
                tls,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )?;
            tls.flush()?;
            if head.to_ascii_lowercase().contains("connection: close") {
                tls.conn.send_close_notify();
                tls.flush()?;
                return Ok(());
            }
        }
    }
}
