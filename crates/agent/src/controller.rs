//! The loop: runs a pass, then waits as [`error_policy`] decides from the
//! class of the pass's error. The only place in the agent that decides when
//! to sleep and when to retry.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use crate::backoff::Backoff;
use crate::pass::{PassResult, ReconcileError};
use crate::reconcile::Reconciler;
use crate::report::Reporter;
use crate::source::Source;
use crate::trigger::{Inbox, Signal};

/// First delay after a failed pass; it doubles up to the poll interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often the controller looks for a changed source while waiting. The
/// look is one `stat()` of a file source (the API source never says), and
/// at 250 ms it was most of the time a file change took to reach Envoy
/// over xDS, whose push itself takes a few milliseconds.
const TICK: Duration = Duration::from_millis(50);

/// The least time between the starts of two passes that sync requests ask
/// for once their burst is spent: a local process flooding `POST /sync`
/// costs the API four passes a second (plus the burst at its start).
pub const MIN_SYNC_GAP: Duration = Duration::from_millis(250);
/// How many passes sync requests may start back to back before they are
/// held [`MIN_SYNC_GAP`] apart. With none, a push 100 ms after the last
/// pass waited 150 ms for the gap: most of the 200 ms p99 from a change
/// stored in the API to Envoy serving it, for a pass of 3 ms.
pub const SYNC_BURST: u32 = 3;

/// When a pass that a sync request asks for may start: a token bucket of
/// [`SYNC_BURST`] passes, refilled one per [`MIN_SYNC_GAP`]. Every pass
/// spends one, whatever started it. Pure: the caller gives the time.
#[derive(Debug)]
struct SyncBudget {
    /// Passes that may start now; fractions are earned over time.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl SyncBudget {
    fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(SYNC_BURST),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / MIN_SYNC_GAP.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(SYNC_BURST));
        self.at = self.at.max(now);
    }

    /// A pass starts at `now`.
    fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// The earliest a pass asked for at `now` may start.
    fn earliest(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + MIN_SYNC_GAP.mul_f64(1.0 - self.tokens)
        }
    }
}

/// The longest Retry-After honoured: a silly header must not stop us for long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Which wait follows a pass, by the class of the error it ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The poll interval: nothing failed, or a quick retry cannot help (a
    /// refused key, a bug).
    Poll,
    /// The backoff, doubling up to the poll interval: a retry may help.
    Backoff,
    /// What the server asked for (`Retry-After`).
    Asked(Duration),
}

/// The wait that follows a pass that ended with `error`. Every retry
/// decision of the agent is made here, from the error's class.
pub(crate) fn wait_for(error: Option<&ReconcileError>) -> Wait {
    match error {
        None => Wait::Poll,
        Some(e) => match e.retry_after() {
            Some(asked) => Wait::Asked(asked),
            None if e.is_retryable() => Wait::Backoff,
            None => Wait::Poll,
        },
    }
}

/// How long to wait after a pass that ended with `error` ([`wait_for`]):
/// - no error: the poll interval (jittered), and the backoff starts over;
/// - the server asked for a wait: that, but never less than the current
///   backoff (`Retry-After: 0` made a loop of 113 fetches in 5 s);
/// - retryable: the backoff, doubling up to the poll interval;
/// - not retryable (a refused key, a bug): the poll interval.
fn error_policy(
    error: Option<&ReconcileError>,
    backoff: &mut Backoff,
    poll_interval: Duration,
    jitter: &mut Jitter,
) -> Duration {
    if error.is_none() {
        backoff.reset();
    }
    match wait_for(error) {
        Wait::Poll => jitter.apply(poll_interval, 0.2),
        Wait::Asked(asked) => asked.min(MAX_RETRY_AFTER).max(backoff.step()),
        Wait::Backoff => jitter.apply(backoff.step(), 0.2),
    }
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

/// The least wait for a drain's end: a clock step back must not make a
/// tight loop of passes.
const MIN_DRAIN_WAIT: Duration = Duration::from_millis(100);

/// How long until `wake` (a backend's drain ends), when there is one. Only
/// after a pass without error: a failing pass keeps its backoff, and the
/// drain ends on the first pass that succeeds.
fn until_wake(wake: Option<SystemTime>, now: SystemTime) -> Option<Duration> {
    let left = wake?.duration_since(now).unwrap_or(Duration::ZERO);
    Some(left.max(MIN_DRAIN_WAIT))
}

/// Runs passes until told to stop. Returns after finishing the pass in flight.
pub fn run(
    reconciler: &mut Reconciler<impl crate::pass::Delivery>,
    source: &mut dyn Source,
    reporter: &mut dyn Reporter,
    signals: &Inbox,
    poll_interval: Duration,
    mut on_pass: impl FnMut(PassResult),
) {
    let mut jitter = Jitter::new();
    let mut backoff = Backoff::new(FIRST_BACKOFF, poll_interval);
    let mut budget = SyncBudget::new(Instant::now());
    loop {
        let started = Instant::now();
        budget.spend(started);
        let (result, error) = reconciler.pass(source, reporter);
        tracing::debug!(result = ?result, took_ms = started.elapsed().as_millis() as u64, "pass done");
        on_pass(result);
        let mut wait = error_policy(error.as_ref(), &mut backoff, poll_interval, &mut jitter);
        // Only a pass that settled what Envoy serves knows the next drain's
        // end; after one that did not, a past deadline would spin.
        let settled = error.as_ref().is_none_or(ReconcileError::settled);
        if settled && let Some(drain) = until_wake(reconciler.next_wake(), SystemTime::now()) {
            wait = wait.min(drain);
        }
        let mut deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match signals.recv_timeout(left.min(TICK)) {
                // A flood of requests costs a burst, then one pass per gap.
                Ok(Signal::Sync) => deadline = deadline.min(budget.earliest(Instant::now())),
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

    fn fetch_error(retry_after: Option<Duration>, key_refused: bool) -> ReconcileError {
        ReconcileError::Fetch {
            message: "x".into(),
            retry_after,
            key_refused,
        }
    }

    /// Waits after `errors` in turn, with a 30 s poll interval.
    fn waits(errors: Vec<Option<ReconcileError>>) -> Vec<Duration> {
        let (mut backoff, mut jitter) = (
            Backoff::new(FIRST_BACKOFF, Duration::from_secs(30)),
            Jitter::new(),
        );
        errors
            .iter()
            .map(|e| {
                error_policy(
                    e.as_ref(),
                    &mut backoff,
                    Duration::from_secs(30),
                    &mut jitter,
                )
            })
            .collect()
    }

    #[test]
    fn regression_a_push_soon_after_a_pass_waited_for_the_flood_gap() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut budget = SyncBudget::new(t0);
        budget.spend(t0);
        // A quiet push 100 ms after a pass runs at once (it waited 150 ms).
        assert_eq!(budget.earliest(ms(100)), ms(100));
    }

    #[test]
    fn a_flood_of_pushes_gets_its_burst_then_one_pass_per_gap() {
        let t0 = Instant::now();
        let mut budget = SyncBudget::new(t0);
        // Passes started as soon as allowed, asked for without pause.
        let mut now = t0;
        let mut starts = Vec::new();
        for _ in 0..(SYNC_BURST + 4) {
            now = budget.earliest(now);
            budget.spend(now);
            starts.push(now.duration_since(t0));
        }
        let burst = SYNC_BURST as usize;
        assert!(starts[..burst].iter().all(|s| s.is_zero()), "{starts:?}");
        for pair in starts[burst - 1..].windows(2) {
            assert_eq!(pair[1] - pair[0], MIN_SYNC_GAP, "{starts:?}");
        }
        // Quiet for as long as the burst takes to earn back: it is whole.
        let later = now + MIN_SYNC_GAP * SYNC_BURST;
        for _ in 0..SYNC_BURST {
            assert_eq!(budget.earliest(later), later);
            budget.spend(later);
        }
        assert_eq!(budget.earliest(later), later + MIN_SYNC_GAP);
    }

    #[test]
    fn regression_retry_after_zero_made_a_tight_loop() {
        let w = waits(
            (0..6)
                .map(|_| Some(fetch_error(Some(Duration::ZERO), false)))
                .collect(),
        );
        assert_eq!(w[0], FIRST_BACKOFF, "{w:?}");
        assert!(w.windows(2).all(|p| p[1] >= p[0]), "never shorter: {w:?}");
        assert_eq!(w[5], Duration::from_secs(16), "the backoff grows: {w:?}");
        // A longer wait asked for is honoured, up to the cap.
        let w = waits(vec![Some(fetch_error(Some(Duration::from_secs(7)), false))]);
        assert_eq!(w, vec![Duration::from_secs(7)]);
        let w = waits(vec![Some(fetch_error(
            Some(Duration::from_secs(86_400)),
            false,
        ))]);
        assert_eq!(w, vec![MAX_RETRY_AFTER]);
    }

    #[test]
    fn the_error_class_decides_the_wait() {
        let interval = Duration::from_secs(30);
        let w = waits(vec![
            Some(ReconcileError::StateUnknown),
            Some(ReconcileError::ReadFiles("x".into())),
            None,
            Some(fetch_error(None, true)),
            Some(ReconcileError::Render("bug".into())),
            Some(ReconcileError::Apply(crate::pass::ApplyError::Timeout {
                what: "lds".into(),
                version: "v".into(),
                timeout: Duration::from_secs(10),
            })),
        ]);
        assert!(
            w[0] <= FIRST_BACKOFF && w[1] <= 2 * FIRST_BACKOFF,
            "retryable backs off: {w:?}"
        );
        assert!(w[2] > interval / 2, "success waits the interval: {w:?}");
        assert!(
            w[3] > interval / 2,
            "a refused key waits the interval: {w:?}"
        );
        assert!(w[4] > interval / 2, "a bug waits the interval: {w:?}");
        assert!(
            w[5] <= FIRST_BACKOFF,
            "a timeout backs off from the start again: {w:?}"
        );
    }

    #[test]
    fn a_drain_ending_shortens_the_wait_but_never_to_nothing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(until_wake(None, now), None);
        let soon = now + Duration::from_secs(3);
        assert_eq!(until_wake(Some(soon), now), Some(Duration::from_secs(3)));
        let past = now - Duration::from_secs(3);
        assert_eq!(until_wake(Some(past), now), Some(MIN_DRAIN_WAIT));
    }

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
