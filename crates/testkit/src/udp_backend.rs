//! A UDP backend on 127.0.0.1 that answers each datagram with its name and
//! the datagram, and counts the flows (client address and port) it saw.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The UDP answering backend.
pub struct UdpBackend {
    port: u16,
    flows: Arc<Mutex<BTreeSet<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpBackend {
    /// Starts on a free port; answers `<name>:<datagram>`.
    pub fn start(name: &str) -> UdpBackend {
        let socket = UdpSocket::bind(("127.0.0.1", 0)).expect("bind udp backend");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp read timeout");
        let port = socket.local_addr().expect("udp local addr").port();
        let flows: Arc<Mutex<BTreeSet<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (flows, stop, name) = (flows.clone(), stop.clone(), name.to_owned());
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    flows.lock().expect("flows lock").insert(peer);
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&reply, peer);
                }
            })
        };
        UdpBackend {
            port,
            flows,
            stop,
            thread: Some(thread),
        }
    }
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// How many flows (source address and port, as Envoy sent them) it saw.
    pub fn flows(&self) -> usize {
        self.flows.lock().expect("flows lock").len()
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `payload` from a fresh socket (a new flow) to 127.0.0.1:`port` and
/// returns the answer, or why none came within a second.
pub fn ask(port: u16, payload: &str) -> Result<String, String> {
    let s = UdpSocket::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| format!("timeout: {e}"))?;
    s.send_to(payload.as_bytes(), ("127.0.0.1", port))
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 2048];
    let (n, _) = s
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
