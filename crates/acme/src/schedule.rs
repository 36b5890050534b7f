//! When to order a certificate: pure decisions from what is wanted, what is
//! stored, the failures so far and the time (Unix seconds), so the rules an
//! ACME server holds us to are tested without one.

use vpsie_lb_model::Acme;
use vpsie_lb_model::acme::renew_at;

use vpsie_lb_core::backoff::Backoff;

use super::store::Stored;

/// The first wait after a failure that placed no order (the directory
/// did not answer); it doubles with each failure in a row.
pub const FIRST_RETRY_SECS: i64 = 5;
/// The longest wait between attempts.
pub const MAX_RETRY_SECS: i64 = 3600;
/// After an order failed (a challenge, finalize), no new order for the
/// same names before this: Let's Encrypt limits failed validations per
/// name and hour, and a loop that retried sooner would lock us out.
pub const FAILED_ORDER_WAIT_SECS: i64 = 3600;

/// What one load balancer's certificate needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// It is good until `renew_at`, when it will need renewing.
    Nothing {
        /// Unix seconds.
        renew_at: i64,
    },
    /// An order, for this reason.
    Order(&'static str),
}

/// Whether `stored` serves `wanted` at `now`, and if not why an order is due.
pub fn need(wanted: &Acme, stored: Option<&Stored>, now: i64) -> Need {
    let Some(s) = stored else {
        return Need::Order("no certificate was issued yet");
    };
    if !same_names(&s.domains, &wanted.domains) {
        return Need::Order("the document lists other domains than it was issued for");
    }
    if s.directory_url != wanted.directory_url {
        return Need::Order("the document names another ACME directory");
    }
    let at = renew_at(s.not_before, s.not_after);
    if now >= at {
        Need::Order("it is due for renewal")
    } else {
        Need::Nothing { renew_at: at }
    }
}

/// Orders one load balancer may start within [`BUDGET_WINDOW_SECS`],
/// whatever names they are for: renaming resets the wait after a failure
/// (a typo fixed need not wait an hour), so this is what bounds a
/// load balancer that keeps renaming, against the operator's one account.
pub const ORDERS_PER_WINDOW: usize = 5;
/// The window of [`ORDERS_PER_WINDOW`], seconds.
pub const BUDGET_WINDOW_SECS: i64 = 3600;

/// When a load balancer whose recent orders started at `started` (oldest
/// first) may start another, if it has spent its budget at `now`.
pub fn budget_spent(started: &[i64], now: i64) -> Option<i64> {
    let recent: Vec<i64> = started
        .iter()
        .copied()
        .filter(|t| now - t < BUDGET_WINDOW_SECS)
        .collect();
    (recent.len() >= ORDERS_PER_WINDOW)
        .then(|| recent[recent.len() - ORDERS_PER_WINDOW] + BUDGET_WINDOW_SECS)
}

/// Whether two lists name the same set of domains, in any order.
fn same_names(a: &[String], b: &[String]) -> bool {
    fn sorted(l: &[String]) -> Vec<&String> {
        let mut v: Vec<&String> = l.iter().collect();
        v.sort();
        v
    }
    sorted(a) == sorted(b)
}

/// Whether `a` and `b` ask for the same certificate: the same set of names
/// from the same directory. Order and contact do not count, so rewriting
/// either can neither reset the wait after a failure nor order again.
pub fn same_order(a: &Acme, b: &Acme) -> bool {
    a.directory_url == b.directory_url && same_names(&a.domains, &b.domains)
}

/// Failures of one load balancer's orders since its last success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Failures in a row.
    pub failures: u32,
    /// No attempt before this, Unix seconds.
    pub not_before: i64,
    /// What went wrong last.
    pub last_error: Option<String>,
}

impl Attempts {
    /// Records a failure at `now`; `order_placed` when the server had
    /// accepted an order (it counts against its failed-validation limit).
    /// Returns the seconds until the next attempt.
    pub fn failed(&mut self, now: i64, order_placed: bool, error: String) -> i64 {
        self.failures = self.failures.saturating_add(1);
        let secs = |s: i64| std::time::Duration::from_secs(s.unsigned_abs());
        let doubled = Backoff::nth(secs(FIRST_RETRY_SECS), secs(MAX_RETRY_SECS), self.failures);
        let mut wait = doubled.as_secs() as i64;
        if order_placed {
            wait = wait.max(FAILED_ORDER_WAIT_SECS);
        }
        self.not_before = now.saturating_add(wait);
        self.last_error = Some(error);
        wait
    }

    /// Whether an attempt may start at `now`.
    pub fn may_try(&self, now: i64) -> bool {
        now >= self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpsie_lb_model::acme::Issued;

    fn acme(domains: &[&str]) -> Acme {
        Acme::new(
            domains.iter().map(|d| (*d).to_owned()).collect(),
            None,
            "https://ca.test/dir".into(),
        )
    }

    fn stored(domains: &[&str], not_before: i64, not_after: i64) -> Stored {
        Stored {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            directory_url: "https://ca.test/dir".into(),
            not_before,
            not_after,
            paths: Issued {
                certificate_path: "/c".into(),
                private_key_path: "/k".into(),
            },
        }
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_certificate_is_ordered_when_missing_changed_or_due() {
        let want = acme(&["a.test", "b.test"]);
        let ninety = stored(&["a.test", "b.test"], 0, 90 * DAY);
        let short = stored(&["a.test", "b.test"], 0, 30);
        for (name, stored, now, expect) in [
            (
                "missing",
                None,
                0,
                Need::Order("no certificate was issued yet"),
            ),
            (
                "fresh",
                Some(&ninety),
                DAY,
                Need::Nothing { renew_at: 60 * DAY },
            ),
            (
                "59 days in",
                Some(&ninety),
                60 * DAY - 1,
                Need::Nothing { renew_at: 60 * DAY },
            ),
            (
                "30 days left",
                Some(&ninety),
                60 * DAY,
                Need::Order("it is due for renewal"),
            ),
            // A 30-second certificate renews with a third of it left.
            (
                "short, early",
                Some(&short),
                19,
                Need::Nothing { renew_at: 20 },
            ),
            (
                "short, due",
                Some(&short),
                20,
                Need::Order("it is due for renewal"),
            ),
            (
                "expired",
                Some(&short),
                100,
                Need::Order("it is due for renewal"),
            ),
        ] {
            assert_eq!(need(&want, stored, now), expect, "{name}");
        }
        let other = stored(&["a.test"], 0, 90 * DAY);
        assert!(
            matches!(need(&want, Some(&other), DAY), Need::Order(w) if w.contains("other domains"))
        );
        let mut elsewhere = ninety.clone();
        elsewhere.directory_url = "https://other.test/dir".into();
        assert!(
            matches!(need(&want, Some(&elsewhere), DAY), Need::Order(w) if w.contains("directory"))
        );
    }

    #[test]
    fn failures_back_off_and_a_failed_order_waits_an_hour() {
        let mut a = Attempts::default();
        assert!(a.may_try(0));
        let waits: Vec<i64> = (0..12).map(|_| a.failed(0, false, "down".into())).collect();
        assert_eq!(&waits[..5], &[5, 10, 20, 40, 80]);
        assert_eq!(*waits.last().expect("waits"), MAX_RETRY_SECS);
        assert!(!a.may_try(MAX_RETRY_SECS - 1));
        assert!(a.may_try(MAX_RETRY_SECS));
        // An order the server accepted and that then failed: an hour at
        // least, however few failures came before.
        let mut b = Attempts::default();
        assert_eq!(
            b.failed(100, true, "challenge failed".into()),
            FAILED_ORDER_WAIT_SECS
        );
        assert!(!b.may_try(100 + FAILED_ORDER_WAIT_SECS - 1));
        assert_eq!(b.last_error.as_deref(), Some("challenge failed"));
    }

    #[test]
    fn regression_reordering_the_names_reset_the_wait_after_a_failure() {
        let ab = acme(&["a.test", "b.test"]);
        let ba = acme(&["b.test", "a.test"]);
        assert!(same_order(&ab, &ba), "the same names in another order");
        let mut mailed = ba.clone();
        mailed.email = Some("someone@else.test".into());
        assert!(
            same_order(&ab, &mailed),
            "another contact is the same order"
        );
        assert!(!same_order(&ab, &acme(&["a.test"])));
        let mut elsewhere = ab.clone();
        elsewhere.directory_url = "https://other.test/dir".into();
        assert!(!same_order(&ab, &elsewhere));
        // Nor does it order again when the stored certificate covers them.
        let issued = stored(&["a.test", "b.test"], 0, 90 * DAY);
        assert!(matches!(
            need(&ba, Some(&issued), DAY),
            Need::Nothing { .. }
        ));
    }

    #[test]
    fn a_load_balancer_that_keeps_renaming_spends_its_hourly_budget() {
        let started: Vec<i64> = (0..ORDERS_PER_WINDOW as i64).map(|i| i * 60).collect();
        let last = started[ORDERS_PER_WINDOW - 1];
        assert_eq!(budget_spent(&started[..ORDERS_PER_WINDOW - 1], last), None);
        assert_eq!(budget_spent(&started, last), Some(BUDGET_WINDOW_SECS));
        assert_eq!(
            budget_spent(&started, BUDGET_WINDOW_SECS),
            None,
            "the first left the window"
        );
    }
}
