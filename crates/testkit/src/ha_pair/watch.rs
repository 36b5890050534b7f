//! Who holds each virtual IP, sampled while the lab runs: the split-brain
//! watcher.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Pair;

/// Which node held each virtual IP at one moment.
#[derive(Debug, Clone)]
pub struct Holders {
    /// When it was sampled.
    pub at: Instant,
    /// For each virtual IP, the nodes (0, 1) that had it.
    pub by_vip: Vec<(Ipv4Addr, Vec<usize>)>,
    /// Whether each node's link was up.
    pub linked: [bool; 2],
}

impl Pair {
    /// Samples who holds each virtual IP every `every` until stopped.
    pub fn watch_holders(self: &Arc<Self>, every: Duration) -> Watcher {
        let (stop, samples) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let handle = {
            let (pair, stop, samples) = (self.clone(), stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    let by_vip = pair
                        .vips()
                        .into_iter()
                        .map(|v| (v, pair.holders(v)))
                        .collect();
                    let linked = [pair.linked(0), pair.linked(1)];
                    samples
                        .lock()
                        .expect("holders lock")
                        .push(Holders { at, by_vip, linked });
                    std::thread::sleep(every.saturating_sub(at.elapsed()));
                }
            })
        };
        Watcher {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    fn linked(&self, i: usize) -> bool {
        self.lan.is_joined(&self.nodes[i].role)
    }
}

/// The holder samples, until stopped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Holders>>>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Stops sampling and returns every sample.
    pub fn stop(mut self) -> Vec<Holders> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().expect("holders lock"))
    }
}

/// The longest run of consecutive samples in which a virtual IP was held by
/// two nodes whose links were both up: a split brain. (A node cut off the
/// bridge may keep an address nobody can reach.)
pub fn longest_split_brain(samples: &[Holders]) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for s in samples {
        let split = s
            .by_vip
            .iter()
            .any(|(_, nodes)| nodes.len() > 1 && nodes.iter().all(|n| s.linked[*n]));
        run = if split { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}
