//! Blaming only the culprit: when Envoy refuses a change that touches
//! several load balancers, the change is split and tried in parts on top of
//! last-known-good until the load balancers Envoy refuses on their own are
//! found. Only those are parked; every other part is served in the same
//! pass. A parked document is held back (its last good version serves)
//! until its document changes, so it never blocks anyone's later changes.

use std::collections::BTreeMap;

use serde_json::Value;
use vpsie_lb_model::Config;

use super::Reconciler;
use crate::pass::Outcome;
use crate::pass::{ChangeKind, Delivery};
use crate::pass::{PassResult, ReconcileError};
use crate::preflight::PreflightError;
use crate::report::{EventKind, Reporter};
use crate::source::FetchError;

/// Envoy's verdict against a change: where it came and what Envoy said.
#[derive(Debug, Clone)]
pub(super) enum Refusal {
    /// `envoy --mode validate` (or the host's limits) refused it.
    Preflight(String),
    /// The running Envoy refused it; the previous config serves again.
    Apply(String),
}

impl Refusal {
    /// How a pass that ends with this refusal is counted.
    pub(super) fn result(&self) -> PassResult {
        match self {
            Refusal::Preflight(_) => PassResult::Rejected,
            Refusal::Apply(_) => PassResult::RolledBack,
        }
    }

    /// What Envoy said.
    fn reason(&self) -> &str {
        match self {
            Refusal::Preflight(r) | Refusal::Apply(r) => r,
        }
    }

    /// The problem a parked load balancer reports until its document changes.
    fn problem(&self) -> String {
        match self {
            Refusal::Preflight(r) => format!("envoy validate refused the change: {r}"),
            Refusal::Apply(r) => format!("envoy refused the change: {r}"),
        }
    }

    /// The event that tells the API.
    fn event(&self) -> (EventKind, String, Value) {
        match self {
            Refusal::Preflight(r) => (
                EventKind::ConfigRejected,
                self.problem(),
                serde_json::json!({"problems": [r]}),
            ),
            Refusal::Apply(r) => (
                EventKind::ConfigRolledBack,
                format!("envoy refused the change and the previous config serves again: {r}"),
                serde_json::json!({"reason": r}),
            ),
        }
    }
}

/// How handing one candidate to Envoy ended.
pub(super) enum Attempt {
    /// Envoy confirmed it; it is last-known-good now.
    Served,
    /// Envoy refused it; the previous config serves.
    Refused(Refusal),
    /// Something that is not Envoy's verdict stopped it; retried later.
    Failed(ReconcileError),
}

/// A load balancer's document that Envoy refused, held back until it
/// changes, or until [`PARK_RETRY`] passed: what Envoy refused may come
/// right without the document changing (a port freed, a certificate file
/// replaced at the same path).
#[derive(Debug, Clone)]
pub(super) struct Parked {
    /// The document Envoy refused; `None` when it was the load balancer's removal.
    doc: Option<Value>,
    /// When it was parked.
    at: std::time::Instant,
}

/// How long a refused document is held back before it is tried again.
const PARK_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// Whom a refusal is blamed on.
pub(super) enum Blame {
    /// No document: Envoy refuses what is served already with the agent's
    /// current settings (new settings, an issued certificate, the host).
    /// The candidate waits whole.
    Settings,
    /// Nobody yet: trying what is served already failed for a reason that
    /// is not Envoy's verdict, so the search could not start.
    Untried(ReconcileError),
    /// The load balancers found by the search: whether anything was
    /// served, and the error that stopped the search, if one did.
    Searched(bool, Option<ReconcileError>),
}

/// A trial of part of a change on top of last-known-good.
enum Trial {
    /// Served, refused or failed, as a whole attempt.
    Done(Attempt),
    /// The part is not valid without the rest (for example two load
    /// balancers that swap ports): it must be tried with another part.
    Inseparable,
}

/// `group` split in two, the first half to be tried first (popped last).
fn halves(mut group: Vec<String>) -> [Vec<String>; 2] {
    let second = group.split_off(group.len() / 2);
    [second, group]
}

impl<D: Delivery> Reconciler<D> {
    /// Holds back the parked documents among `items` (the fetch, per id):
    /// each is replaced by its last good version, as if unchanged, so that
    /// choosing resolves conflicts against it and nobody else waits on it.
    /// A parked load balancer whose document changed (or that is gone) is
    /// tried again.
    pub(super) fn hold_parked(&mut self, items: &mut BTreeMap<String, Result<Value, FetchError>>) {
        self.parked.retain(|id, p| {
            p.at.elapsed() < PARK_RETRY
                && match (items.get(id), &p.doc) {
                    (Some(Ok(now)), Some(refused)) => now == refused,
                    // A new document the API refused is news: it is reported.
                    (Some(Err(FetchError::Refused { .. })), _) => false,
                    // A failed fetch says nothing new about the document.
                    (Some(Err(_)), _) => true,
                    (None, None) => true,
                    _ => false,
                }
        });
        for id in self.parked.keys() {
            match (items.get(id), self.good.get(id)) {
                // A failed fetch already keeps the good version.
                (Some(Err(_)), _) => {}
                (_, Some(g)) => {
                    items.insert(id.clone(), Ok(g.clone()));
                }
                (_, None) => {
                    items.remove(id);
                }
            }
        }
    }

    /// Whether `id` is parked: its wanted document is not served.
    pub(crate) fn is_parked(&self, id: &str) -> bool {
        self.parked.contains_key(id)
    }

    /// Hands `files` (the render of `candidate`) to Envoy: the pre-flight of
    /// the load balancers in `changed`, then the apply; what Envoy
    /// confirmed becomes last-known-good.
    pub(super) fn attempt(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        (config, files): (Config, &D::Candidate),
        changed: &[String],
        kind: ChangeKind,
        reporter: &mut dyn Reporter,
    ) -> Attempt {
        let clock = std::time::Instant::now();
        if let Err(e) = self.preflight(&config, files, changed, kind) {
            return match e {
                PreflightError::Rejected(reason) => Attempt::Refused(Refusal::Preflight(reason)),
                e => Attempt::Failed(ReconcileError::Preflight(e)),
            };
        }
        self.times.preflight += clock.elapsed();
        let started = std::time::Instant::now();
        let outcome = self.delivery.apply(files);
        let verify = self.delivery.take_verify_time();
        self.times.verify += verify;
        self.times.write += started.elapsed().saturating_sub(verify);
        match outcome {
            Ok(Outcome::Unchanged | Outcome::Applied) => {
                self.promote(candidate, files, reporter, changed);
                self.observe
                    .metrics
                    .applied(&self.good_version, started.elapsed(), verify);
                self.settle(config, reporter);
                Attempt::Served
            }
            Ok(Outcome::RolledBack(cause)) => {
                self.observe.metrics.rolled_back();
                Attempt::Refused(Refusal::Apply(cause.to_string()))
            }
            // Not Envoy's verdict: nothing is parked, and the next pass
            // tries again after a backoff.
            Ok(Outcome::Interrupted(cause)) | Err(cause) => {
                Attempt::Failed(ReconcileError::Apply(cause))
            }
        }
    }

    /// Envoy's verdict on the load balancers of `changed` (every one when
    /// none changed: the agent's own settings did), and the host's limits.
    fn preflight(
        &self,
        config: &Config,
        files: &D::Candidate,
        changed: &[String],
        kind: ChangeKind,
    ) -> Result<(), PreflightError> {
        // Envoy accepted every unchanged load balancer when it was applied,
        // and our validation already rules out conflicts between them, so
        // only the changed ones go through the pre-flight: one change among
        // 1,000 load balancers is checked in milliseconds, not a second.
        let mut checked = config.clone();
        if !changed.is_empty() {
            checked.load_balancers.retain(|lb| changed.contains(&lb.id));
        }
        // An endpoint-only change is addresses, ports and weights that our
        // validation already checked, and Envoy's verdict on it is confirmed
        // (or rolled back) by apply. Spawning `envoy --mode validate` for it
        // cost ~50 ms of CPU per change, which the data plane felt under
        // frequent backend churn on a 2-core VM.
        if kind == ChangeKind::EndpointsOnly {
            checked.load_balancers.clear();
        }
        self.delivery.check(files, &checked)
    }

    /// After Envoy refused `candidate` (`files`), which changes the load
    /// balancers of `changed`: first whether Envoy refuses what is served
    /// already, with the agent's current settings (then no document is to
    /// blame, and nobody is parked); else the one changed load balancer, or
    /// those of several that Envoy refuses alone.
    pub(super) fn blame(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        changed: Vec<String>,
        refusal: &Refusal,
        files: D::Candidate,
        reporter: &mut dyn Reporter,
    ) -> Blame {
        let base = if changed.is_empty() {
            Trial::Done(Attempt::Refused(refusal.clone()))
        } else {
            self.trial(candidate, &[], reporter)
        };
        match base {
            Trial::Done(Attempt::Refused(r)) => {
                self.refuse_settings(&r, Some(files), reporter);
                return Blame::Settings;
            }
            Trial::Done(Attempt::Failed(e)) => return Blame::Untried(e),
            Trial::Done(Attempt::Served) | Trial::Inseparable => {}
        }
        match changed.as_slice() {
            [one] => {
                self.park(candidate, one, refusal, reporter);
                Blame::Searched(false, None)
            }
            _ => {
                let (served, e) = self.isolate(candidate, changed, reporter);
                Blame::Searched(served, e)
            }
        }
    }

    /// After Envoy refused the change of every load balancer in `changed`
    /// at once: finds which of them Envoy refuses, parks only those with
    /// their own reason, and serves the rest. Returns whether anything was
    /// served, and the error that stopped the search, if one did (what was
    /// served until then stays served).
    pub(super) fn isolate(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        changed: Vec<String>,
        reporter: &mut dyn Reporter,
    ) -> (bool, Option<ReconcileError>) {
        let mut served = false;
        // A bisection takes about 2·k·log2(n) trials for k culprits among
        // n changes; merging inseparable parts can rotate a group without
        // shrinking it, so the search is bounded, and what it did not reach
        // is tried again on the next pass.
        let mut budget = 4 * changed.len() + 8;
        // Each group, and whether it was merged from parts that are not
        // valid alone: such a group is refused together or not at all.
        let mut pending: Vec<(Vec<String>, bool)> =
            halves(changed).into_iter().map(|g| (g, false)).collect();
        while let Some((group, merged)) = pending.pop() {
            if group.is_empty() {
                continue;
            }
            if budget == 0 {
                let rest = pending.into_iter().flat_map(|(g, _)| g);
                self.not_reached(rest.chain(group));
                break;
            }
            budget -= 1;
            match self.trial(candidate, &group, reporter) {
                Trial::Done(Attempt::Served) => served = true,
                Trial::Done(Attempt::Refused(r)) if group.len() == 1 || merged => {
                    for id in &group {
                        self.park(candidate, id, &r, reporter);
                    }
                }
                Trial::Done(Attempt::Refused(_)) => {
                    pending.extend(halves(group).into_iter().map(|g| (g, false)));
                }
                Trial::Done(Attempt::Failed(e)) => return (served, Some(e)),
                Trial::Inseparable => match self.partner(candidate, &group, &mut pending) {
                    // The two go together from now on: refused together,
                    // they are parked together.
                    Some(partner) => {
                        let mut unit = group;
                        unit.push(partner);
                        pending.push((unit, true));
                    }
                    // What it needs was refused, or is not one load
                    // balancer: the next pass's choice reports the conflict.
                    None => self.not_reached(group),
                },
            }
        }
        (served, None)
    }

    /// The one load balancer among `pending` whose change makes `group`'s
    /// valid on top of last-known-good (the other side of a port swap),
    /// taken out of `pending`; `None` when no single one does.
    fn partner(
        &self,
        candidate: &BTreeMap<String, Value>,
        group: &[String],
        pending: &mut [(Vec<String>, bool)],
    ) -> Option<String> {
        for (members, _) in pending.iter_mut() {
            let found = members.iter().position(|x| {
                let with = self.with_changes(candidate, group.iter().chain([x]));
                self.validate_all(&with).is_ok()
            });
            if let Some(i) = found {
                return Some(members.remove(i));
            }
        }
        None
    }

    /// Load balancers whose change this pass could not serve alone (it
    /// needs a change Envoy refused, or the search ran out): they are not
    /// parked, so the next pass tries them again, and until then they say so.
    fn not_reached(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.valid_now.retain(|v| *v != id);
            self.problems.insert(
                id,
                "not applied yet: envoy refused another load balancer's change made at the \
                 same time, and this one could not be served without it; tried again on the \
                 next pass"
                    .into(),
            );
        }
    }

    /// Tries last-known-good with the documents of `group` from `candidate`.
    fn trial(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        group: &[String],
        reporter: &mut dyn Reporter,
    ) -> Trial {
        let docs = self.with_changes(candidate, group);
        let Ok(config) = self.validate_all(&docs) else {
            return Trial::Inseparable;
        };
        let (config, files) = match self.prepare(&docs, Some(config)) {
            Ok(built) => built,
            Err(e) => return Trial::Done(Attempt::Failed(ReconcileError::Render(e))),
        };
        let kind = match self.delivery.diff(&files) {
            Ok(d) => d.kind,
            Err(e) => return Trial::Done(Attempt::Failed(e)),
        };
        if kind == ChangeKind::None {
            self.promote(&docs, &files, reporter, group);
            self.settle(config, reporter);
            return Trial::Done(Attempt::Served);
        }
        Trial::Done(self.attempt(&docs, (config, &files), group, kind, reporter))
    }

    /// Last-known-good with the documents of `ids` taken from `candidate`
    /// (a document `candidate` lacks is a removal).
    fn with_changes<'a>(
        &self,
        candidate: &BTreeMap<String, Value>,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Value> {
        let mut docs = self.good.clone();
        for id in ids {
            match candidate.get(id) {
                Some(doc) => docs.insert(id.clone(), doc.clone()),
                None => docs.remove(id),
            };
        }
        docs
    }

    /// Parks `id`'s document from `candidate`: Envoy refused it on its own.
    /// Only `id` is told, with Envoy's words.
    pub(super) fn park(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        id: &str,
        refusal: &Refusal,
        reporter: &mut dyn Reporter,
    ) {
        let (kind, message, metadata) = refusal.event();
        reporter.event(id, kind, &message, metadata);
        self.problems.insert(id.to_owned(), refusal.problem());
        self.valid_now.retain(|v| v != id);
        self.parked.insert(
            id.to_owned(),
            Parked {
                doc: candidate.get(id).cloned(),
                at: std::time::Instant::now(),
            },
        );
    }

    /// Parks the whole candidate `files`: Envoy refused it when no document
    /// had changed (the agent's own settings had), so no load balancer is
    /// to blame.
    pub(super) fn refuse_settings(
        &mut self,
        refusal: &Refusal,
        files: Option<D::Candidate>,
        reporter: &mut dyn Reporter,
    ) {
        reporter.error(
            "apply",
            &format!("the agent's settings changed and {}", refusal.problem()),
        );
        self.refused = files;
    }

    /// Parks the whole candidate `files` without looking for the load
    /// balancers to blame: what Envoy serves is not known (so there is
    /// nothing to try the parts on top of), or the caller wants all or
    /// nothing. `why` says which.
    pub(super) fn refuse_whole(
        &mut self,
        why: &str,
        refusal: &Refusal,
        files: D::Candidate,
        reporter: &mut dyn Reporter,
    ) {
        reporter.error("apply", &format!("{why}: {}", refusal.problem()));
        self.refused = Some(files);
        self.held_back = Some(refusal.reason().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::halves;

    #[test]
    fn halves_split_a_group_and_try_its_first_half_first() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let [later, first] = halves(ids(&["a", "b", "c"]));
        assert_eq!((first, later), (ids(&["a"]), ids(&["b", "c"])));
        let [later, first] = halves(ids(&["a"]));
        assert_eq!((first, later), (ids(&[]), ids(&["a"])));
    }
}
