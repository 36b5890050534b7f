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
}
