//! The loop: runs a pass, then waits as the pass's `Action` says. The only
//! place in the agent that decides when to sleep and when to retry.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::reconcile::{Action, PassResult, Reconciler};
use crate::report::Reporter;
use crate::source::Source;

/// First delay after a failed pass; it doubles up to the poll interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often the controller looks for a changed source while waiting.
const TICK: Duration = Duration::from_millis(250);

/// What may interrupt a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Run a pass now (SIGHUP).
    Sync,
    /// Finish and exit (SIGTERM, SIGINT).
    Stop,
}

/// A small xorshift generator for jitter; not for anything secret.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Self(seed | 1)
    }
    /// `d` scaled by a random factor in [1 - spread, 1]: never longer than
    /// asked, so a configured poll interval is a bound on how stale the
    /// config can get (with +10 % a 30 s interval converged in up to 33 s).
    fn apply(&mut self, d: Duration, spread: f64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 % 10_000) as f64 / 10_000.0; // [0, 1)
        d.mul_f64(1.0 - spread * unit)
    }
}

/// Runs passes until told to stop. Returns after finishing the pass in flight.
pub fn run(
    reconciler: &mut Reconciler,
    source: &mut dyn Source,
    reporter: &mut dyn Reporter,
    signals: &Receiver<Signal>,
    poll_interval: Duration,
    mut on_pass: impl FnMut(PassResult),
) {
    let mut jitter = Jitter::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let (result, action) = reconciler.pass(source, reporter);
        tracing::debug!(result = ?result, took_ms = started.elapsed().as_millis() as u64, "pass done");
        on_pass(result);
        let wait = match action {
            Action::Requeue => {
                backoff = FIRST_BACKOFF;
                jitter.apply(poll_interval, 0.2)
            }
            Action::Backoff => {
                let w = jitter.apply(backoff.min(poll_interval), 0.2);
                backoff = (backoff * 2).min(poll_interval);
                w
            }
            // The server's word, capped so a silly header cannot stop us for long.
            Action::RetryAfter(d) => d.min(Duration::from_secs(600)),
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match signals.recv_timeout(left.min(TICK)) {
                Ok(Signal::Sync) => break,
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if source.changed() => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_poll_jitter_never_waits_longer_than_the_interval() {
        let mut j = Jitter::new();
        let base = Duration::from_secs(30);
        let (mut lowest, mut highest) = (base, Duration::ZERO);
        for _ in 0..10_000 {
            let d = j.apply(base, 0.2);
            lowest = lowest.min(d);
            highest = highest.max(d);
        }
        assert!(highest <= base, "{highest:?}");
        assert!(lowest >= Duration::from_secs(24), "{lowest:?}");
        // It does spread: a fleet must not poll in step.
        assert!(
            highest - lowest > Duration::from_secs(5),
            "{lowest:?}..{highest:?}"
        );
    }
}
