//! The contracts of a pass: how it ended, how long its phases took, the
//! error that cut it short, and the [`Delivery`] trait with its results.
//! Near a leaf (it names only the error types of the admin client, the
//! files planner and the pre-flight), so the reconciler, the controller,
//! both deliveries and the metrics depend on it without a circle, and the
//! xDS delivery does not depend on the files applier.

use std::path::PathBuf;
use std::time::Duration;

use vpsie_lb_core::class::Class;
use vpsie_lb_model::Config;

use crate::envoy_admin::{AdminError, HostHealth};
use crate::preflight::PreflightError;

pub use vpsie_lb_core::pass::{PassResult, PhaseTimes};

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
        /// Whether the API refused our requests (the key, or a request it
        /// calls bad), which a quick retry cannot fix.
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
    /// Envoy serves the pass's result, but the state store could not record
    /// it (last-known-good or the drains): retried soon, since a restart
    /// now would resume from an older state.
    #[error("save state: {0}")]
    SaveState(String),
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
        self.class().is_retryable()
    }

    /// The class of what cut the pass short, which decides the next wait.
    pub fn class(&self) -> Class {
        match self {
            ReconcileError::Fetch { key_refused, .. } if *key_refused => Class::Refused,
            ReconcileError::Fetch { .. } => Class::Transient,
            ReconcileError::Render(_) => Class::Bug,
            ReconcileError::ReadFiles(_)
            | ReconcileError::StateUnknown
            | ReconcileError::WafPolicies(_)
            | ReconcileError::SaveState(_) => Class::Transient,
            ReconcileError::Preflight(e) => e.class(),
            ReconcileError::Apply(e) => e.class(),
        }
    }

    /// Whether the pass still settled what Envoy serves (only its record
    /// on disk lags), so the drains it worked out stand.
    pub fn settled(&self) -> bool {
        matches!(self, ReconcileError::SaveState(_))
    }

    /// The wait the server asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Fetch { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a change did not take.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file could not be written. Retrying may help.
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
    /// Envoy refused a step. Retrying the same config cannot help.
    #[error("envoy rejected {what}: {reason}")]
    Rejected {
        /// Which step.
        what: String,
        /// Envoy's reason, as far as its admin API tells.
        reason: String,
    },
    /// Envoy did not confirm a step in time. Retrying may help.
    #[error("envoy did not confirm {what} version {version} within {timeout:?}")]
    Timeout {
        /// Which step.
        what: String,
        /// The version that was expected.
        version: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// A step failed and undoing it failed too, so what Envoy serves is
    /// unknown. Retried after a backoff, whatever Envoy said: the next
    /// try starts from what Envoy has.
    #[error("envoy did not confirm {undo} ({why}) after {failed}")]
    Undo {
        /// The undo step that was not confirmed.
        undo: String,
        /// Why it was not: Envoy's refusal or a timeout.
        why: String,
        /// The failure of the change that the undo followed.
        failed: String,
    },
    /// The admin API could not be read. Retrying may help.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The current or next files are not what we render.
    #[error(transparent)]
    Plan(#[from] crate::envoy_files::PlanError),
}

impl ApplyError {
    /// Whether the same change could succeed on a later try.
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }

    /// Envoy's refusal, a planning bug, or something a retry may fix.
    pub fn class(&self) -> Class {
        match self {
            ApplyError::Rejected { .. } => Class::Rejected,
            ApplyError::Plan(_) => Class::Bug,
            _ => Class::Transient,
        }
    }
}

/// What applying a config did.
#[derive(Debug)]
pub enum Outcome {
    /// Envoy already had exactly this config; nothing was written.
    Unchanged,
    /// Every step was confirmed by Envoy.
    Applied,
    /// Envoy refused a step; the previous files are back and Envoy confirmed them.
    RolledBack(ApplyError),
    /// A step failed for a reason that is not Envoy's verdict (a write
    /// error, a full disk, no confirmation in time, the admin API away); the
    /// previous files are back and Envoy confirmed them. The same change may
    /// succeed on a later try.
    Interrupted(ApplyError),
}

/// What changing from what Envoy has to a candidate involves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Envoy already has exactly this.
    None,
    /// Only endpoints change: backends added, removed or reweighted.
    EndpointsOnly,
    /// Listeners, clusters or secrets change.
    Other,
}

impl ChangeKind {
    /// What the pass needs to know of the one planner's kind of change.
    pub fn of(kind: vpsie_lb_core::change::Kind) -> ChangeKind {
        use vpsie_lb_core::change::Kind;
        match kind {
            Kind::None => ChangeKind::None,
            Kind::EndpointsOnly => ChangeKind::EndpointsOnly,
            _ => ChangeKind::Other,
        }
    }
}

/// What a delivery found when comparing a candidate with Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diff {
    /// What changing involves.
    pub kind: ChangeKind,
    /// Whether Envoy serves no load balancer at all now (so nothing can be
    /// lost by applying even an incomplete candidate).
    pub envoy_serves_nothing: bool,
}

/// How resources reach Envoy: the boundary between a pass and Envoy.
///
/// The pass decides *what* Envoy should serve and *whether* to hand it
/// over. A delivery decides *how*: what a candidate looks like to Envoy,
/// what changing to it involves, the checks only Envoy can make, handing it
/// over with every step confirmed, and rolling back what Envoy refuses. The
/// pass never sees a file path or a stream; a fake delivery lets a whole
/// pass run in-process in the tests.
pub trait Delivery {
    /// What this delivery hands Envoy for one config. Comparable, so a
    /// candidate Envoy refused is not handed to it again.
    type Candidate: Clone + PartialEq;

    /// Turns a validated config into a candidate. Fails only on a bug.
    fn prepare(&self, config: &Config) -> Result<Self::Candidate, String>;

    /// Compares `next` with what Envoy has.
    fn diff(&mut self, next: &Self::Candidate) -> Result<Diff, ReconcileError>;

    /// The checks only Envoy and the host can make: host limits for `next`,
    /// and Envoy's verdict on `changed` (the load balancers that changed).
    fn check(&self, next: &Self::Candidate, changed: &Config) -> Result<(), PreflightError>;

    /// Hands `next` to Envoy, confirming every step; what Envoy refuses is
    /// rolled back and confirmed before this returns.
    fn apply(&mut self, next: &Self::Candidate) -> Result<Outcome, ApplyError>;

    /// Makes Envoy serve last-known-good at start, before the first fetch.
    /// Unlike [`Delivery::apply`], what Envoy cannot confirm yet (it may not
    /// be up) is not undone: last-known-good was confirmed before.
    fn restore(&mut self, good: &Self::Candidate) -> Result<Outcome, ApplyError> {
        self.apply(good)
    }

    /// Time spent waiting for Envoy's confirmations since the last call.
    fn take_verify_time(&self) -> Duration;

    /// What last-known-good keeps of `candidate`: relative paths and contents.
    fn record(&self, candidate: &Self::Candidate) -> Result<Vec<(PathBuf, String)>, String>;

    /// The names of the listeners `candidate` gives Envoy: what `ha check`
    /// later expects Envoy to hold.
    fn listener_names(&self, candidate: &Self::Candidate) -> Vec<String>;

    /// Envoy's hosts and their health; `None` when Envoy does not answer.
    fn host_health(&self) -> Option<Vec<HostHealth>>;
}
