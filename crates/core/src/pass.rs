//! How a pass ended and how long its phases took: what the reconciler
//! reports and the metrics, logs and benchmark read.

use std::time::Duration;

/// How a pass ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// A new config was confirmed by Envoy.
    Applied,
    /// Envoy already serves the desired config.
    Unchanged,
    /// Some or all of the desired config was invalid; the rest was handled.
    Rejected,
    /// Envoy refused the change; the previous config serves again.
    RolledBack,
    /// Something failed that a retry may fix.
    Error,
}

/// How long each phase of one pass took. Phases a pass did not reach stay zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Fetching the desired documents.
    pub fetch: Duration,
    /// Validating them and choosing what to serve.
    pub validate: Duration,
    /// Translating to Envoy resources and rendering the files.
    pub translate: Duration,
    /// Reading the current files and planning the steps.
    pub plan: Duration,
    /// `envoy --mode validate` on the candidate.
    pub preflight: Duration,
    /// Writing files (apply minus verify).
    pub write: Duration,
    /// Waiting for Envoy to confirm each step.
    pub verify: Duration,
}

impl PhaseTimes {
    /// The phases' names, in pipeline order (the `phase` label, and
    /// `<name>_ms` in the log line).
    pub const NAMES: [&'static str; 7] = [
        "fetch",
        "validate",
        "translate",
        "plan",
        "preflight",
        "write",
        "verify",
    ];

    /// Each phase with its name, in pipeline order.
    pub fn named(&self) -> [(&'static str, Duration); 7] {
        let t = [
            self.fetch,
            self.validate,
            self.translate,
            self.plan,
            self.preflight,
            self.write,
            self.verify,
        ];
        std::array::from_fn(|i| (Self::NAMES[i], t[i]))
    }
}
