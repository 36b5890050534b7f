//! Exponential backoff: each failure in a row waits twice as long as the
//! one before, up to a ceiling; a success starts over.

use std::time::Duration;

/// The waits of one kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `ceiling`.
    pub fn new(first: Duration, ceiling: Duration) -> Self {
        let first = first.min(ceiling);
        Self {
            first,
            next: first,
            ceiling,
        }
    }
    /// The wait for this failure; the one after it is twice as long.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.ceiling);
        now
    }
    /// After a success: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait after the `n`-th failure in a row (from 1), for a caller
    /// that keeps the count itself rather than a `Backoff`: the same
    /// doubling, saturating at `ceiling`.
    pub fn nth(first: Duration, ceiling: Duration, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        first
            .checked_mul(1u32 << doublings)
            .unwrap_or(ceiling)
            .min(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_wait_is_the_wait_a_backoff_gives_after_n_failures() {
        let (first, ceiling) = (Duration::from_secs(5), Duration::from_secs(3600));
        let mut b = Backoff::new(first, ceiling);
        for n in 1..=40 {
            assert_eq!(Backoff::nth(first, ceiling, n), b.step(), "failure {n}");
        }
        assert_eq!(Backoff::nth(first, ceiling, u32::MAX), ceiling);
        assert_eq!(Backoff::nth(first, ceiling, 0), first);
    }
}
