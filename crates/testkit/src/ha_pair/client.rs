//! The client namespace's traffic: new connections at a steady rate, each
//! on its own thread, and a keep-alive connection; and what a window of it
//! says about a fault.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::PORT;
use crate::netns::in_netns;

/// One request the client made.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it started.
    pub at: Instant,
    /// When it ended.
    pub done: Instant,
    /// The virtual IP it went to.
    pub vip: Ipv4Addr,
    /// Whether it kept its connection open (a keep-alive client).
    pub keep_alive: bool,
    /// The node that served it (the backend saw this address), or why it failed.
    pub result: Result<Ipv4Addr, String>,
}

/// The client: new connections at a steady rate, and keep-alive ones.
pub struct Client {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Requests in flight per virtual IP at most: at 200 a second, requests
/// that each wait out both timeouts.
const MAX_IN_FLIGHT: usize = 400;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(1);

impl Client {
    pub(super) fn start(ns: &str, vips: &[Ipv4Addr], per_second: u32) -> Result<Client, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let period = Duration::from_secs(1) / per_second.max(1);
        for &vip in vips {
            let (s, v) = (stop.clone(), samples.clone());
            threads.push(in_netns(ns, move || {
                std::thread::spawn(move || new_connections(vip, period, &s, &v))
            })?);
            let (s, v) = (stop.clone(), samples.clone());
            threads.push(in_netns(ns, move || {
                std::thread::spawn(move || keep_alive(vip, &s, &v))
            })?);
        }
        Ok(Client {
            stop,
            samples,
            threads,
        })
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// How many requests started since `t`.
    pub fn count_since(&self, t: Instant) -> usize {
        self.samples
            .lock()
            .expect("samples lock")
            .iter()
            .filter(|s| s.at >= t)
            .count()
    }

    /// Stops the client and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One request every `period`, each on a thread of its own, so a request
/// waiting out its timeout holds up no other: the first success after a
/// failover is seen when it happens.
fn new_connections(
    vip: Ipv4Addr,
    period: Duration,
    stop: &AtomicBool,
    samples: &Arc<Mutex<Vec<Sample>>>,
) {
    let mut next = Instant::now();
    let mut in_flight: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next = (next + period).max(Instant::now());
        in_flight.retain(|t| !t.is_finished());
        if in_flight.len() >= MAX_IN_FLIGHT {
            continue;
        }
        let samples = samples.clone();
        in_flight.push(std::thread::spawn(move || {
            let at = Instant::now();
            let result = one_request(vip);
            let done = Instant::now();
            samples.lock().expect("samples lock").push(Sample {
                at,
                done,
                vip,
                keep_alive: false,
                result,
            });
        }));
    }
    for t in in_flight {
        let _ = t.join();
    }
}

fn one_request(vip: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let addr = SocketAddr::from((vip, PORT));
    let mut s =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: ha\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::new(s);
    read_response(&mut reader)
}

/// Reads one response; the node that served it, from the backend's `X-Peer`.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Ipv4Addr, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("closed before an answer".into());
    }
    let status = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (mut peer, mut length) = (None, 0usize);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).map_err(|e| format!("read: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "x-peer" => peer = v.trim().parse().ok(),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    if status != "200" {
        return Err(format!("status {status}"));
    }
    peer.ok_or_else(|| "no x-peer header".to_owned())
}

fn keep_alive(vip: Ipv4Addr, stop: &AtomicBool, samples: &Mutex<Vec<Sample>>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let result = (|| {
            if conn.is_none() {
                let addr = SocketAddr::from((vip, PORT));
                let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                conn = Some(BufReader::new(s));
            }
            let r = conn.as_mut().expect("connected");
            r.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: ha\r\n\r\n")
                .map_err(|e| format!("send: {e}"))?;
            read_response(r)
        })();
        if result.is_err() {
            conn = None;
        }
        samples.lock().expect("samples lock").push(Sample {
            at,
            done: Instant::now(),
            vip,
            keep_alive: true,
            result,
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one fault did to the traffic, from the client's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// From the fault to the first request, started after it, that the
    /// other node served (`None`: none did).
    pub failover: Option<Duration>,
    /// New-connection requests that failed in the window.
    pub failed: usize,
    /// New-connection requests in the window.
    pub total: usize,
    /// Keep-alive requests that failed in the window.
    pub keep_alive_failed: usize,
    /// The first failure's reason, if any.
    pub first_error: Option<String>,
}

/// The outcome for traffic to `vip` between `from` and `to`, after a fault
/// on node `faulty` (whose address is `faulty_addr`).
pub fn outcome(
    samples: &[Sample],
    vip: Ipv4Addr,
    faulty_addr: Ipv4Addr,
    from: Instant,
    to: Instant,
) -> Outcome {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.vip == vip && s.at >= from && s.at <= to)
        .collect();
    let fresh: Vec<&&Sample> = window.iter().filter(|s| !s.keep_alive).collect();
    let failover = fresh
        .iter()
        .filter(|s| matches!(s.result, Ok(a) if a != faulty_addr))
        .map(|s| s.done - from)
        .min();
    Outcome {
        failover,
        failed: fresh.iter().filter(|s| s.result.is_err()).count(),
        total: fresh.len(),
        keep_alive_failed: window
            .iter()
            .filter(|s| s.keep_alive && s.result.is_err())
            .count(),
        first_error: window.iter().find_map(|s| s.result.clone().err()),
    }
}
