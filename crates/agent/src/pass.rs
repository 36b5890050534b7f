//! What a pass produces: how it ended, how long its phases took, and the
//! error that cut it short. A leaf module, so the reconciler, the
//! controller and the metrics can all depend on it without a circle.

use std::time::Duration;

use crate::apply::ApplyError;
use crate::preflight::PreflightError;

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

/// Why a pass did not do all it set out to do. Its class decides the next
/// wait, in one place: `controller::error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The source failed, as a whole or for some load balancers (each of
    /// which keeps its last good version).
    #[error("fetch: {message}")]
    Fetch {
        /// The first failure.
        message: String,
        /// The longest wait the server asked for.
        retry_after: Option<Duration>,
        /// Whether the API refused our key, which a quick retry cannot fix.
        key_refused: bool,
    },
    /// The chosen documents could not be rendered: a bug, not the input's fault.
    #[error("render: {0}")]
    Render(String),
    /// Envoy's current files could not be read.
    #[error("read current files: {0}")]
    ReadFiles(String),
    /// The pre-flight could not run (Envoy's refusal is not an error: it parks the candidate).
    #[error("pre-flight: {0}")]
    Preflight(PreflightError),
    /// Applying failed for a reason other than Envoy's refusal (a write
    /// error, a full disk, no confirmation in time, the admin API away); the
    /// previous files are back.
    #[error("apply: {0}")]
    Apply(ApplyError),
    /// The WAF service's policy file could not be written; nothing was
    /// handed to Envoy.
    #[error("waf policies: {0}")]
    WafPolicies(String),
    /// The saved state is lost and the desired config is incomplete, so
    /// nothing is applied.
    #[error(
        "no last-known-good state and the desired config is incomplete; envoy keeps serving what it has"
    )]
    StateUnknown,
}

impl ReconcileError {
    /// Whether trying again soon could help; if not, the next try waits a poll interval.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReconcileError::Fetch { key_refused, .. } => !key_refused,
            ReconcileError::Render(_) => false,
            ReconcileError::ReadFiles(_)
            | ReconcileError::StateUnknown
            | ReconcileError::WafPolicies(_) => true,
            ReconcileError::Preflight(e) => e.is_retryable(),
            ReconcileError::Apply(e) => e.is_retryable(),
        }
    }

    /// The wait the server asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Fetch { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
