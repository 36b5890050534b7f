//! The one error taxonomy: every outside call's failure is classified once,
//! where the call is made, and every decision about waiting or giving up
//! reads this class rather than the error's details.

/// How a failure happened, and so what another try can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The peer or the host may answer otherwise soon (a network failure,
    /// a 5xx or 429, an unusable body, a write or a confirmation that did
    /// not happen): try again after a backoff.
    Transient,
    /// The peer refused the request itself (a 4xx such as a rejected key
    /// or a bad request): asking again soon gets the same answer, so wait
    /// the poll interval.
    Refused,
    /// Envoy refused what it was handed: only a new config can help; the
    /// candidate is parked, not retried.
    Rejected,
    /// Our own mistake or the host's setup (a render that cannot be, no
    /// Envoy binary): retrying soon cannot help either.
    Bug,
}

impl Class {
    /// Whether trying the same thing again soon could succeed.
    pub fn is_retryable(self) -> bool {
        self == Class::Transient
    }

    /// The class of an HTTP answer's status, for a status that is an
    /// error: 5xx and 429 are transient, every other 4xx a refusal.
    pub fn of_status(status: u16) -> Class {
        if status >= 500 || status == 429 {
            Class::Transient
        } else {
            Class::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_once() {
        for (status, class) in [
            (400, Class::Refused),
            (401, Class::Refused),
            (404, Class::Refused),
            (422, Class::Refused),
            (429, Class::Transient),
            (500, Class::Transient),
            (503, Class::Transient),
        ] {
            assert_eq!(Class::of_status(status), class, "{status}");
        }
        assert!(Class::Transient.is_retryable());
        assert!(!Class::Refused.is_retryable() && !Class::Rejected.is_retryable());
    }
}
