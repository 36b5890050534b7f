//! One reconcile pass: fetch, validate each load balancer, translate them
//! together, skip if nothing changed, pre-flight, apply, and promote or roll
//! back. The pass never sleeps; it returns what the controller should do next.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use vpsie_lb_model::{Config, Problem, ValidateOptions};

use crate::pass::{ChangeKind, Delivery};
pub use crate::pass::{PassResult, PhaseTimes, ReconcileError};
use crate::report::Reporter;
use crate::source::Source;

mod fetch;
mod isolate;
mod last_known_good;
mod metrics;
mod observe;
mod ports;
mod serve;

use isolate::{Attempt, Blame, Parked};
use serve::Rendered;

pub use metrics::ReconcileMetrics;
pub use observe::Observe;
#[cfg(test)]
pub(crate) use ports::fake;
pub use ports::{
    Clock, ConnectionCloser, DirStore, HaRecords, KeepalivedRecords, LastKnownGoodOnly, NoStore,
    Ports, SsCloser, StateStore, SystemClock, WafFile, WafSink,
};

/// Most problems one event, log line or status message carries: a document
/// with 10,000 bad backends must not make a 1 MB event that the API refuses
/// and that blocks every later one.
pub const MAX_PROBLEMS_PER_EVENT: usize = 20;

/// The first [`MAX_PROBLEMS_PER_EVENT`] problems as lines, and how many more there were.
fn capped_problems(problems: &[Problem]) -> (Vec<String>, usize) {
    let lines = problems
        .iter()
        .take(MAX_PROBLEMS_PER_EVENT)
        .map(ToString::to_string)
        .collect();
    (lines, problems.len().saturating_sub(MAX_PROBLEMS_PER_EVENT))
}

/// Static inputs of the reconciler.
pub struct Settings {
    /// Where last-known-good lives.
    pub state_dir: PathBuf,
    /// Validation rules from the agent's config: ports the agent itself
    /// uses, trusted backend networks.
    pub validate: ValidateOptions,
    /// Where the WAF service reads its policies; `None` writes none.
    pub waf_policies: Option<PathBuf>,
    /// How Envoy's processes, and so the connections a drain may close,
    /// are told from every other.
    pub envoy: crate::drain::EnvoyProcess,
}

/// Runs passes and remembers what is known to be good.
pub struct Reconciler<D: Delivery> {
    settings: Settings,
    delivery: D,
    /// Last good raw document of each load balancer.
    good: BTreeMap<String, Value>,
    /// Bumped whenever `good` changes, so a render can name the `good` it
    /// was of instead of keeping a copy of it.
    good_generation: u64,
    /// `good`'s version as a whole (`state::docs_version`), worked out when
    /// `good` changes: status, metrics and last-known-good's name all show
    /// it, and hashing every document on every pass would cost each pass a
    /// serialization of everything served.
    good_version: String,
    /// Whether `good` is known: false on a new machine, and when the saved
    /// state could not be read. While unknown, only a candidate fetched and
    /// validated in full is applied, so a lost state never becomes "serve
    /// nothing".
    good_known: bool,
    /// What Envoy was handed for `good`, while the last-known-good on disk
    /// lags behind it (a save failed): retried every pass.
    unsaved: Option<crate::state::Unsaved>,
    /// The last candidate Envoy refused when no document had changed (the
    /// agent's own settings had), so it is not handed over every pass.
    refused: Option<D::Candidate>,
    /// Whether a refusal is searched for the load balancers to blame
    /// (`run`), or the change is held back whole (`apply`).
    isolate: bool,
    /// Envoy's words when this pass held a change back whole.
    held_back: Option<String>,
    /// Documents Envoy refused, per load balancer: each is held back (its
    /// last good version serves) until it changes, so that it never blocks
    /// another load balancer's changes.
    parked: BTreeMap<String, Parked>,
    /// The last document rejected per load balancer, so the same rejection is
    /// reported once, not on every pass.
    rejected_docs: BTreeMap<String, Value>,
    /// Why each load balancer is not fully applied, if it is not.
    problems: BTreeMap<String, String>,
    /// Load balancers whose fetched document was valid this pass.
    valid_now: Vec<String>,
    /// Whether the API answered on the last pass (None before the first).
    api_up: Option<bool>,
    /// The newest document fetched per load balancer, valid or not, while
    /// it differs from the served one (`good`).
    fetched: BTreeMap<String, Value>,
    /// Load balancers whose newest fetched document is the served one, so
    /// `fetched` keeps no copy of it: at 1,000 load balancers a copy of the
    /// documents is 7 MB. When `good` changes, [`Reconciler::keep_fetched`]
    /// moves what was served into `fetched` for them.
    fetched_as_served: std::collections::BTreeSet<String>,
    /// Whether Envoy serves a config it confirmed (for `/readyz`).
    serving_verified: bool,
    /// Metrics and the `/status` snapshot.
    observe: Observe,
    /// Phase times of the pass in flight.
    times: PhaseTimes,
    /// Why the saved state could not be read at start, if it could not.
    state_error: Option<String>,
    /// The last candidate rendered: most passes fetch what they fetched
    /// before, and rendering is the costly part.
    last_render: Option<Rendered<D::Candidate>>,
    /// The config Envoy confirmed last, with its draining backends: the
    /// deregistration delay's state across passes. Unknown (`None`) after
    /// a start until last-known-good is restored.
    served: Option<Config>,
    /// The drains the state directory holds, so a pass whose drains did
    /// not change writes nothing; `None` while unknown (before the restore,
    /// or when the file could not be read), so the next settle writes it.
    drains_saved: Option<Vec<vpsie_lb_model::drain::SavedDrain>>,
    /// The pass's IO: the state store, the connection closer, the WAF sink.
    ports: Ports,
    /// Why the state store lags behind what Envoy serves, when a save of
    /// this pass failed: the pass then ends with [`ReconcileError::SaveState`].
    store_failed: Option<String>,
    /// The ACME certificates: what is issued, and where orders are asked for.
    acme: Option<crate::acme::Acme>,
    /// This node's VRRP records, when it is in an HA pair.
    ha: Option<Box<dyn HaRecords>>,
    /// The state of each VRRP instance last seen (none before the first
    /// look), so each change is reported once.
    ha_seen: Option<BTreeMap<String, String>>,
    /// The kernel's per-client bounds on udp load balancers, when enabled.
    udp_guard: Option<crate::udp_guard::UdpGuard>,
}

impl<D: Delivery> Reconciler<D> {
    /// A reconciler that starts from the last-known-good in `settings.state_dir`.
    /// A state that exists but cannot be read is logged loudly here, and
    /// [`Reconciler::restore_last_known_good`] then refuses to touch Envoy.
    pub fn new(settings: Settings, delivery: D, observe: Observe) -> Self {
        let ports = Ports::of(&settings);
        Self::with_ports(settings, delivery, observe, ports)
    }

    /// [`Reconciler::new`] doing its IO through `ports`, which it reads
    /// last-known-good from at once.
    pub fn with_ports(settings: Settings, delivery: D, observe: Observe, ports: Ports) -> Self {
        let (good, good_known, state_error) = match ports.store.load() {
            Ok(Some(docs)) => (docs, true, None),
            Ok(None) => (BTreeMap::new(), false, None),
            Err(e) => (BTreeMap::new(), false, Some(e)),
        };
        if let Some(e) = &state_error {
            tracing::error!(phase = "restore", error = %e, "the saved state is unusable; envoy keeps what it serves until a complete, valid config is fetched");
        }
        Self {
            settings,
            delivery,
            good_version: crate::state::docs_version(&good),
            good,
            good_generation: 0,
            good_known,
            unsaved: None,
            state_error: state_error.map(|e| e.to_string()),
            refused: None,
            parked: BTreeMap::new(),
            rejected_docs: BTreeMap::new(),
            problems: BTreeMap::new(),
            valid_now: Vec::new(),
            api_up: None,
            fetched: BTreeMap::new(),
            fetched_as_served: Default::default(),
            serving_verified: false,
            observe,
            times: PhaseTimes::default(),
            last_render: None,
            served: None,
            drains_saved: None,
            ports,
            store_failed: None,
            isolate: true,
            held_back: None,
            acme: None,
            ha: None,
            ha_seen: None,
            udp_guard: None,
        }
    }

    /// Holds a refused change back whole instead of searching it for the
    /// load balancers to blame: a one-shot `apply` must either serve what
    /// it was given or leave Envoy as it was.
    pub fn all_or_nothing(mut self) -> Self {
        self.isolate = false;
        self
    }

    /// Envoy's words when the last pass held a refused change back whole.
    pub fn held_back(&self) -> Option<&str> {
        self.held_back.as_deref()
    }

    /// Has the kernel bound each udp client to what Envoy serves allows it.
    pub fn with_udp_guard(mut self, guard: Option<crate::udp_guard::UdpGuard>) -> Self {
        self.udp_guard = guard;
        self
    }

    /// Takes the udp bounds out of the kernel, for an agent that stops its Envoy.
    pub fn remove_udp_guard(&mut self) -> Result<(), String> {
        self.udp_guard.as_mut().map_or(Ok(()), |g| g.remove())
    }

    /// Reports each change of this node's VRRP states (`ha_state_changed`)
    /// when it is in an HA pair (`ha` set).
    pub fn with_ha(self, ha: Option<crate::config::Ha>) -> Self {
        self.with_ha_records(ha.map(|ha| Box::new(KeepalivedRecords(ha)) as Box<dyn HaRecords>))
    }

    /// [`Reconciler::with_ha`] reading the VRRP states from `records`.
    pub fn with_ha_records(mut self, records: Option<Box<dyn HaRecords>>) -> Self {
        self.ha = records;
        self
    }

    /// Renders ACME load balancers with what `acme` has issued, and tells
    /// it which certificates the config wants.
    pub fn with_acme(mut self, acme: crate::acme::Acme) -> Self {
        self.acme = Some(acme);
        self
    }

    /// The delivery this reconciler hands changes to.
    pub fn delivery(&self) -> &D {
        &self.delivery
    }

    /// How many fetched documents are kept beside the served ones.
    #[cfg(test)]
    pub(crate) fn fetched_copies(&self) -> usize {
        self.fetched.len()
    }

    /// The delivery, to script it in tests.
    #[cfg(test)]
    pub(crate) fn delivery_mut(&mut self) -> &mut D {
        &mut self.delivery
    }

    /// One pass. Reports events, status and health through `reporter` and
    /// returns how it ended and, if something failed, the error whose class
    /// decides the next wait (in the controller).
    pub fn pass(
        &mut self,
        source: &mut dyn Source,
        reporter: &mut dyn Reporter,
    ) -> (PassResult, Option<ReconcileError>) {
        self.times = PhaseTimes::default();
        self.store_failed = None;
        self.held_back = None;
        let (result, mut error) = self.pass_inner(source, reporter);
        // Envoy serves what the pass says, but the disk lags behind it: a
        // crash now would restore an older state, so retry soon.
        if error.is_none() {
            error = self.store_failed.take().map(ReconcileError::SaveState);
        }
        self.observe.metrics.pass(result);
        if result == PassResult::Applied {
            let t = &self.times;
            let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
            // One line per change, so an operator (and the benchmark) can see
            // where the seconds of a change went.
            tracing::info!(
                fetch_ms = ms(t.fetch),
                validate_ms = ms(t.validate),
                translate_ms = ms(t.translate),
                plan_ms = ms(t.plan),
                preflight_ms = ms(t.preflight),
                write_ms = ms(t.write),
                verify_ms = ms(t.verify),
                "pass applied a change"
            );
            self.observe.metrics.phases(t);
        }
        if result != PassResult::Error {
            // Applied, unchanged, rejected or rolled back: Envoy serves a
            // config it confirmed.
            self.serving_verified = true;
        }
        // Parked load balancers are not among the valid ones: what they
        // want is not served.
        if result != PassResult::Error {
            for id in std::mem::take(&mut self.valid_now) {
                if self.good.contains_key(&id) {
                    self.problems.remove(&id);
                }
            }
        }
        // Fetch and store failures were reported where they were handled.
        if let Some(e) = error.as_ref().filter(|e| {
            !matches!(
                e,
                ReconcileError::Fetch { .. } | ReconcileError::SaveState(_)
            )
        }) {
            reporter.error("pass", &e.to_string());
        }
        if let Some(a) = &self.acme {
            a.report(reporter);
        }
        self.report_state(reporter, result);
        self.track_ha(reporter);
        reporter.flush();
        (result, error)
    }

    fn pass_inner(
        &mut self,
        source: &mut dyn Source,
        reporter: &mut dyn Reporter,
    ) -> (PassResult, Option<ReconcileError>) {
        self.save_state(reporter);
        let (candidate, validated, rejected, fetch_error) = self.fetch_and_choose(source, reporter);
        let clock = std::time::Instant::now();
        let prepared = self.prepare(&candidate, validated);
        self.times.translate = clock.elapsed();
        let clock = std::time::Instant::now();
        let (config, files) = match prepared {
            Ok(built) => built,
            // choose() resolved every conflict, so this is a bug; keep serving.
            Err(e) => return (PassResult::Error, Some(ReconcileError::Render(e))),
        };
        // The service's policies follow the chosen documents on every pass,
        // before Envoy is handed anything: a mode or an exclusion changes
        // nothing in Envoy, and a new load balancer's policy must be there
        // before its first request.
        if let Some(waf) = &mut self.ports.waf
            && let Err(e) = waf.write(&config)
        {
            return (PassResult::Error, Some(ReconcileError::WafPolicies(e)));
        }
        self.bound_ahead(&config, reporter);
        let diff = match self.delivery.diff(&files) {
            Ok(d) => d,
            Err(e) => return (PassResult::Error, Some(e)),
        };
        let incomplete = fetch_error.is_some() || rejected;
        if !self.good_known && incomplete && !diff.envoy_serves_nothing {
            // The saved state was lost: what failed to fetch or validate has
            // no good version to fall back on, and leaving it out would take
            // it off Envoy. Keep Envoy as it is until a complete config comes.
            return (PassResult::Error, Some(ReconcileError::StateUnknown));
        }
        self.times.plan = clock.elapsed();
        let served = if rejected {
            PassResult::Rejected
        } else {
            PassResult::Unchanged
        };
        if diff.kind == ChangeKind::None {
            self.promote(&candidate, &files, reporter, &[]);
            self.settle(config, reporter);
            return (served, fetch_error);
        }
        if self.refused.as_ref() == Some(&files) {
            // The agent's settings changed and Envoy refused the result: do
            // not hand the same content over every pass.
            return (PassResult::RolledBack, fetch_error);
        }
        let changed = self.changed_ids(&candidate);
        let attempt = self.attempt(&candidate, (config, &files), &changed, diff.kind, reporter);
        let refusal = match attempt {
            Attempt::Served => None,
            Attempt::Failed(e) => return (PassResult::Error, Some(e)),
            Attempt::Refused(refusal) => Some(refusal),
        };
        if let (Some(refusal), Some(why)) = (&refusal, self.no_search(&diff)) {
            self.refuse_whole(why, refusal, files, reporter);
            return (refusal.result(), fetch_error);
        }
        let (applied, error, refused) = match refusal {
            None => (true, None, PassResult::Applied),
            // Parked whole if the refusal is no document's fault.
            Some(refusal) => match self.blame(&candidate, changed, &refusal, files, reporter) {
                Blame::Settings => return (refusal.result(), None),
                Blame::Untried(e) => return (refusal.result(), Some(e)),
                Blame::Searched(applied, e) => (applied, e, refusal.result()),
            },
        };
        if let Some(e) = error {
            return (PassResult::Error, Some(e));
        }
        let result = match (rejected, applied) {
            (true, _) => PassResult::Rejected,
            (false, true) => PassResult::Applied,
            (false, false) => refused,
        };
        (result, fetch_error)
    }

    /// Why a refusal must not be searched for the load balancers to blame,
    /// if it must not: the caller wants all or nothing, or what Envoy serves
    /// is not known (the state was lost while it served), so there is no
    /// base to search on and a search would hand Envoy subsets that drop
    /// the rest.
    fn no_search(&self, diff: &crate::pass::Diff) -> Option<&'static str> {
        if !self.isolate {
            Some("the change is held back whole")
        } else if !self.good_known && !diff.envoy_serves_nothing {
            Some("last-known-good is lost, so the change is held back whole")
        } else {
            None
        }
    }

    fn changed_ids(&self, candidate: &BTreeMap<String, Value>) -> Vec<String> {
        let mut ids: Vec<String> = candidate
            .iter()
            .filter(|(id, v)| self.good.get(*id) != Some(*v))
            .map(|(id, _)| id.clone())
            .collect();
        ids.extend(
            self.good
                .keys()
                .filter(|id| !candidate.contains_key(*id))
                .cloned(),
        );
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpsie_lb_model::FieldPath;

    #[test]
    fn regression_an_event_carried_every_problem_of_a_document() {
        let problems: Vec<Problem> = (0..10_000)
            .map(|i| Problem::new(&FieldPath::root().key("backends").index(i), "bad"))
            .collect();
        let (lines, more) = capped_problems(&problems);
        assert_eq!(lines.len(), MAX_PROBLEMS_PER_EVENT);
        assert_eq!(more, 10_000 - MAX_PROBLEMS_PER_EVENT);
        assert_eq!(lines[0], "backends[0]: bad");
        let (lines, more) = capped_problems(&problems[..3]);
        assert_eq!((lines.len(), more), (3, 0));
    }
}
