//! The xDS delivery: resources reach Envoy over one delta ADS stream from
//! the agent, and Envoy's ACK or NACK of each step is the confirmation.
//!
//! A change is published to the [`hub::Hub`] step by step, make before
//! break, in the phases of [`vpsie_lb_core::change`]; each step waits until every connected
//! Envoy ACKed it. **A NACK is handled in [`XdsDelivery::apply`]**: the
//! steps taken are undone in reverse, each confirmed, and the change comes
//! back as [`Outcome::RolledBack`] with Envoy's words, so the reconciler
//! parks it exactly as a refused file. An undo step Envoy does not confirm
//! makes the change an error instead, retried after a backoff, since what
//! Envoy serves is then unknown. A refused version is never sent to that
//! stream again ([`hub::StreamView::refused`]).

pub use vpsie_lb_xds::{delta, hub, metrics, protocol, server, sotw};

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpsie_lb_core::change::{self, Kind};
use vpsie_lb_envoy::{
    ResourceSet, ResourceType, Step, TranslateOptions, resource_set, translate_lb,
};
use vpsie_lb_model::{Config, LoadBalancer};

use crate::envoy_admin::{EnvoyAdmin, HostHealth};
use crate::pass::ReconcileError;
use crate::pass::{ApplyError, Outcome};
use crate::pass::{ChangeKind, Delivery, Diff};
use crate::preflight::PreflightError;
use hub::{Hub, Key, WaitError, confirm_all};

/// Every resource of a candidate. Equal when every name has the same
/// version: the bytes of two renders may differ (protobuf maps encode in
/// any order) while the content does not.
#[derive(Clone, Default)]
pub struct Resources(pub Arc<ResourceSet>);

impl PartialEq for Resources {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|((a, ra), (b, rb))| a == b && ra.version == rb.version)
    }
}

/// One load balancer's document as last rendered, and its resources.
type Cached = (LoadBalancer, ResourceSet);

/// The delivery over the agent's ADS server.
pub struct XdsDelivery {
    hub: Arc<Hub>,
    translate: TranslateOptions,
    admin: EnvoyAdmin,
    envoy_bin: PathBuf,
    /// How long one step may wait for Envoy's ACK.
    timeout: Duration,
    verify_time: Cell<Duration>,
    /// Each load balancer's last render: a change re-renders only the load
    /// balancers whose validated model changed.
    cache: RefCell<BTreeMap<String, Cached>>,
}

impl XdsDelivery {
    /// A delivery publishing to `hub`; `translate` must be [`vpsie_lb_envoy::Target::Ads`].
    pub fn new(
        hub: Arc<Hub>,
        translate: TranslateOptions,
        admin: EnvoyAdmin,
        envoy_bin: PathBuf,
        timeout: Duration,
    ) -> Result<Self, String> {
        if translate.delivery != vpsie_lb_envoy::Target::Ads {
            return Err("the xds delivery needs the ads translation".into());
        }
        Ok(Self {
            hub,
            translate,
            admin,
            envoy_bin,
            timeout,
            verify_time: Cell::new(Duration::ZERO),
            cache: RefCell::new(BTreeMap::new()),
        })
    }

    /// The hub the server serves.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Publishes `set`, waits for `want`, and says how it went.
    fn publish_and_wait(
        &self,
        set: Arc<ResourceSet>,
        want: &[(Key, Option<String>)],
    ) -> Result<(), WaitError> {
        let generation = self.hub.publish(set);
        let started = Instant::now();
        let waited = self.hub.wait(generation, want, self.timeout);
        self.verify_time
            .set(self.verify_time.get() + started.elapsed());
        waited
    }

    /// Undoes the steps from `old` that led to `at` after a step failed
    /// with `failed`, in make-before-break order, each confirmed. Every
    /// step is published even after one fails, so `old` is what streams
    /// serve afterwards whatever happened; the first unconfirmed step is
    /// the error ([`ApplyError::Undo`]), because then nobody knows what
    /// Envoy serves and the change must not count as rolled back.
    fn roll_back(
        &self,
        at: &ResourceSet,
        old: &ResourceSet,
        failed: &str,
    ) -> Result<(), ApplyError> {
        let mut cur = at.clone();
        let mut first = None;
        for phase in change::plan(at, old).phases() {
            let want = take_phase(&mut cur, old, &phase);
            if let Err(e) = self.publish_and_wait(Arc::new(cur.clone()), &want) {
                let undo = format!("the undo of {}", describe(&phase));
                tracing::error!(phase = "xds", step = %undo, error = ?e, "rollback step not confirmed by envoy");
                first.get_or_insert_with(|| ApplyError::Undo {
                    undo,
                    why: self.error("it", e).to_string(),
                    failed: failed.to_owned(),
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Brings Envoy from `old` (`None`: nothing published yet) to `next`;
    /// `Err` when a failed change could not be undone either.
    fn converge(
        &self,
        old: Option<Arc<ResourceSet>>,
        next: &Arc<ResourceSet>,
    ) -> Result<Outcome, ApplyError> {
        let Some(base) = old else {
            // The first publish goes whole: there is no earlier set to keep
            // serving while the new one is made, and Envoy orders a first
            // fetch itself (clusters and their endpoints before listeners).
            return Ok(
                match self.publish_and_wait(next.clone(), &confirm_all(next)) {
                    Ok(()) => Outcome::Applied,
                    Err(e) => {
                        // Stop serving rather than hand a refused or unconfirmed
                        // set to the next Envoy that connects.
                        self.hub.retract();
                        self.failed("the first config", e)
                    }
                },
            );
        };
        let steps = change::plan(&base, next).phases();
        if steps.is_empty() {
            // Nothing to change; still, the change is done only once every
            // connected Envoy has all of it (a new Envoy may be catching up).
            return Ok(
                match self.publish_and_wait(next.clone(), &confirm_all(next)) {
                    Ok(()) => Outcome::Unchanged,
                    Err(e) => Outcome::Interrupted(self.error("the whole config", e)),
                },
            );
        }
        let mut cur = (*base).clone();
        let last = steps.len() - 1;
        for (i, phase) in steps.iter().enumerate() {
            let want = take_phase(&mut cur, next, phase);
            // After the last phase `cur` is `next`: serve the candidate's
            // own set rather than keep a second copy of it.
            let set = if i == last {
                next.clone()
            } else {
                Arc::new(cur.clone())
            };
            if let Err(e) = self.publish_and_wait(set, &want) {
                let outcome = self.failed(&describe(phase), e);
                let failed = match &outcome {
                    Outcome::RolledBack(e) | Outcome::Interrupted(e) => e.to_string(),
                    other => format!("{other:?}"),
                };
                self.roll_back(&cur, &base, &failed)?;
                return Ok(outcome);
            }
        }
        Ok(Outcome::Applied)
    }

    /// The outcome of a change whose step `what` failed with `e`, once it
    /// is undone: Envoy's refusal parks it, anything else is retried.
    fn failed(&self, what: &str, e: WaitError) -> Outcome {
        match e {
            WaitError::Refused(_) => Outcome::RolledBack(self.error(what, e)),
            WaitError::Timeout { .. } => Outcome::Interrupted(self.error(what, e)),
        }
    }

    fn error(&self, what: &str, e: WaitError) -> ApplyError {
        match e {
            WaitError::Refused(reason) => ApplyError::Rejected {
                what: what.to_owned(),
                reason,
            },
            WaitError::Timeout { connected } => ApplyError::Timeout {
                what: if connected {
                    what.to_owned()
                } else {
                    format!("{what} (no envoy is connected to the xds socket)")
                },
                version: "pushed".into(),
                timeout: self.timeout,
            },
        }
    }
}

/// Applies `phase` to `cur`, taking new versions from `next`; returns what
/// Envoy must confirm: each upsert at its version, each removal gone.
fn take_phase(
    cur: &mut ResourceSet,
    next: &ResourceSet,
    phase: &[Step],
) -> Vec<(Key, Option<String>)> {
    let mut want = Vec::new();
    for step in phase {
        for name in &step.upsert {
            let key = (step.kind, name.clone());
            if let Some(r) = next.get(&key) {
                want.push((key.clone(), Some(r.version.clone())));
                cur.insert(key, r.clone());
            }
        }
        for name in &step.remove {
            let key = (step.kind, name.clone());
            cur.remove(&key);
            want.push((key, None));
        }
    }
    want
}

/// A phase for messages: each step's type and first names.
fn describe(phase: &[Step]) -> String {
    let one = |step: &Step| {
        let names: Vec<&str> = step
            .upsert
            .iter()
            .chain(&step.remove)
            .take(3)
            .map(String::as_str)
            .collect();
        let more = (step.upsert.len() + step.remove.len()).saturating_sub(names.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{} {}{tail}", step.kind.plural(), names.join(", "))
    };
    phase.iter().map(one).collect::<Vec<_>>().join("; ")
}

impl Delivery for XdsDelivery {
    type Candidate = Resources;

    fn prepare(&self, config: &Config) -> Result<Resources, String> {
        let mut cache = self.cache.borrow_mut();
        let mut fresh = BTreeMap::new();
        let mut set = ResourceSet::new();
        for lb in &config.load_balancers {
            let entry = match cache.remove(&lb.id) {
                Some(cached) if cached.0 == *lb => cached,
                _ => {
                    let one = resource_set(&translate_lb(lb, &self.translate))
                        .map_err(|e| e.to_string())?;
                    (lb.clone(), one)
                }
            };
            set.extend(entry.1.iter().map(|(k, r)| (k.clone(), r.clone())));
            fresh.insert(lb.id.clone(), entry);
        }
        *cache = fresh;
        Ok(Resources(Arc::new(set)))
    }

    fn diff(&mut self, next: &Resources) -> Result<Diff, ReconcileError> {
        let snapshot = self.hub.snapshot();
        let current = snapshot
            .as_ref()
            .map(|s| s.resources.clone())
            .unwrap_or_default();
        let kind = match change::plan(&current, &next.0).kind {
            // Nothing to publish, but a new Envoy may still be catching up.
            Kind::None if snapshot.is_none() || !self.hub.settled() => ChangeKind::Other,
            kind => ChangeKind::of(kind),
        };
        Ok(Diff {
            kind,
            envoy_serves_nothing: self.hub.envoy_has_nothing(),
        })
    }

    fn check(&self, _next: &Resources, changed: &Config) -> Result<(), PreflightError> {
        crate::preflight::validate_changed(&self.envoy_bin, &self.translate, changed)
    }

    fn apply(&mut self, next: &Resources) -> Result<Outcome, ApplyError> {
        let old = self.hub.snapshot().map(|s| s.resources);
        // A new change: what Envoy refused in an earlier one may be part of
        // this one on purpose (an innocent load balancer of a refused
        // response, tried alone), and must be sent to be judged. Only what
        // this change touches: another load balancer's refused resource
        // must not ride along and be blamed on it.
        let touched = next
            .0
            .iter()
            .filter(|(k, r)| {
                old.as_ref().and_then(|o| o.get(*k)).map(|o| &o.version) != Some(&r.version)
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.hub.forgive(&touched);
        self.converge(old, &next.0)
    }

    fn restore(&mut self, good: &Resources) -> Result<Outcome, ApplyError> {
        // Last-known-good was confirmed by an Envoy before: it becomes what
        // streams serve at once, with no rollback to "nothing" if no Envoy
        // is connected yet (one that connects later is served it).
        match self.publish_and_wait(good.0.clone(), &confirm_all(&good.0)) {
            Ok(()) => Ok(Outcome::Applied),
            Err(e) => Ok(Outcome::Interrupted(self.error("last-known-good", e))),
        }
    }

    fn take_verify_time(&self) -> Duration {
        self.verify_time.replace(Duration::ZERO)
    }

    fn record(&self, candidate: &Resources) -> Result<Vec<(PathBuf, String)>, String> {
        // The documents beside it are what a restart renders again; this
        // is what Envoy confirmed, by type and name, for an operator to read.
        let mut versions: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for ((kind, name), r) in candidate.0.iter() {
            versions
                .entry(kind.type_url())
                .or_default()
                .insert(name, &r.version);
        }
        let json = serde_json::to_string_pretty(&versions).map_err(|e| e.to_string())?;
        Ok(vec![(PathBuf::from("xds-versions.json"), json)])
    }

    fn listener_names(&self, candidate: &Resources) -> Vec<String> {
        candidate
            .0
            .keys()
            .filter(|(kind, _)| *kind == ResourceType::Listener)
            .map(|(_, name)| name.clone())
            .collect()
    }

    fn host_health(&self) -> Option<Vec<HostHealth>> {
        self.admin.host_health().ok()
    }
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod delivery_tests;
