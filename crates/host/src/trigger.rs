//! How the loop is asked for a pass or to stop: signal handlers, the
//! agent's endpoints and the ACME worker hold a [`Trigger`]; the loop in
//! `controller` reads the [`Inbox`]. A leaf, so that those senders need
//! not depend on the loop (they made a module circle through it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// What may interrupt a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Run a pass now (SIGHUP).
    Sync,
    /// Finish and exit (SIGTERM, SIGINT).
    Stop,
}

/// Where the loop learns that it should run a pass now or stop.
///
/// Sync requests collapse: while one is pending, more add nothing, so a
/// burst of 2,000 `POST /sync` (which made 123 fetches) makes at most one
/// more pass, and a Stop never queues behind them.
pub struct Inbox {
    rx: Receiver<Signal>,
    tx: Sender<Signal>,
    sync_pending: Arc<AtomicBool>,
}

/// A handle that asks the loop for a pass or to stop; cheap to clone.
#[derive(Clone)]
pub struct Trigger {
    tx: Sender<Signal>,
    sync_pending: Arc<AtomicBool>,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self {
            rx,
            tx,
            sync_pending: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A handle for signal handlers and the endpoints.
    pub fn trigger(&self) -> Trigger {
        Trigger {
            tx: self.tx.clone(),
            sync_pending: self.sync_pending.clone(),
        }
    }

    /// The next signal, waiting at most `d`.
    pub fn recv_timeout(&self, d: Duration) -> Result<Signal, RecvTimeoutError> {
        let s = self.rx.recv_timeout(d)?;
        if s == Signal::Sync {
            // Requests from now on ask for the pass after this one.
            self.sync_pending.store(false, Ordering::SeqCst);
        }
        Ok(s)
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger {
    /// Asks for a pass soon; a request already pending absorbs this one.
    /// `false` when the loop is gone.
    pub fn sync(&self) -> bool {
        if self.sync_pending.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.tx.send(Signal::Sync).is_ok()
    }

    /// Asks the loop to finish the pass in flight and return.
    pub fn stop(&self) {
        let _ = self.tx.send(Signal::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_burst_of_sync_requests_queued_a_pass_each() {
        let inbox = Inbox::new();
        let trigger = inbox.trigger();
        for _ in 0..10_000 {
            assert!(trigger.sync());
        }
        trigger.stop();
        let got = |i: &Inbox| i.recv_timeout(Duration::from_millis(10)).ok();
        assert_eq!(got(&inbox), Some(Signal::Sync));
        assert_eq!(
            got(&inbox),
            Some(Signal::Stop),
            "stop is not behind 9,999 syncs"
        );
        assert_eq!(got(&inbox), None);
        // Once the loop took the request, the next one counts again.
        assert!(trigger.sync());
        assert_eq!(got(&inbox), Some(Signal::Sync));
    }
}
