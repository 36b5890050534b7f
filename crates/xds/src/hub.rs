//! What the xDS server shares between the agent's thread and Envoy's
//! streams: the snapshot every stream converges to, and what each stream's
//! Envoy has confirmed or refused. The agent publishes and waits; the
//! streams send and record Envoy's answers. No IO here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vpsie_lb_envoy::{ResourceSet, ResourceType};

/// A (type, name) key of one resource.
pub type Key = (ResourceType, String);

/// The snapshot streams serve, and its generation.
#[derive(Clone)]
pub struct Snapshot {
    /// Bumped by every publish, so a stream and a waiter can tell which
    /// snapshot an answer of Envoy's was about.
    pub generation: u64,
    /// The resources.
    pub resources: Arc<ResourceSet>,
}

/// One response sent on a stream, awaiting Envoy's ACK or NACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// The snapshot it was computed from.
    pub generation: u64,
    /// Names sent, with their versions.
    pub upserts: BTreeMap<Key, String>,
    /// Names removed.
    pub removed: Vec<Key>,
}

/// Envoy's refusal of a response, with its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The snapshot the refused response came from.
    pub generation: u64,
    /// `error_detail.message`.
    pub message: String,
    /// What the refused response carried: a wait is refused only by a
    /// NACK of what it waits for, never by another load balancer's.
    pub keys: BTreeSet<Key>,
}

/// What one stream's Envoy has, as far as the server knows.
#[derive(Debug, Default)]
pub struct StreamView {
    /// Types Envoy asked for: listeners and clusters are wildcard; for
    /// endpoints and secrets, the names it subscribed to.
    pub subscribed: BTreeMap<ResourceType, BTreeSet<String>>,
    /// Versions Envoy confirmed (ACKed, or declared on reconnect in
    /// `initial_resource_versions`).
    pub acked: BTreeMap<Key, String>,
    /// Versions sent and not refused: what Envoy has or is about to have.
    pub known: BTreeMap<Key, String>,
    /// Versions Envoy refused; not sent to this stream again until the
    /// agent starts another change ([`Hub::forgive`]).
    pub refused: BTreeSet<(Key, String)>,
    /// Responses awaiting an answer, by nonce.
    pub in_flight: BTreeMap<String, Sent>,
    /// The newest refusal.
    pub nack: Option<Nack>,
    /// Types this stream was answered on at least once: the first request
    /// of a type is always answered, even with nothing, or Envoy would wait
    /// out its initial fetch timeout before starting.
    pub answered: BTreeSet<ResourceType>,
}

impl StreamView {
    /// Whether Envoy asked for `name` of type `kind`.
    pub fn wants(&self, kind: ResourceType, name: &str) -> bool {
        match kind {
            ResourceType::Cluster | ResourceType::Listener => self.subscribed.contains_key(&kind),
            _ => self
                .subscribed
                .get(&kind)
                .is_some_and(|names| names.contains(name)),
        }
    }

    /// What to send this stream of type `kind` to converge on `snapshot`:
    /// resources it wants and lacks (except versions it refused), and
    /// removals of what it has that the snapshot no longer holds.
    pub fn pending(&self, kind: ResourceType, snapshot: &ResourceSet) -> Sent {
        let mut out = Sent::default();
        for ((k, name), r) in snapshot.range((kind, String::new())..) {
            if *k != kind {
                break;
            }
            let key = (kind, name.clone());
            if self.wants(kind, name)
                && self.known.get(&key) != Some(&r.version)
                && !self.refused.contains(&(key.clone(), r.version.clone()))
            {
                out.upserts.insert(key, r.version.clone());
            }
        }
        for key in self.known.keys().filter(|(k, _)| *k == kind) {
            if !snapshot.contains_key(key) {
                out.removed.push(key.clone());
            }
        }
        out
    }

    /// Records `sent` as on its way under `nonce`.
    pub fn record_sent(&mut self, nonce: String, sent: Sent) {
        for (key, version) in &sent.upserts {
            self.known.insert(key.clone(), version.clone());
        }
        for key in &sent.removed {
            self.known.remove(key);
        }
        self.in_flight.insert(nonce, sent);
    }

    /// Records Envoy's answer to `nonce`: an ACK, or a NACK with `error`.
    /// Answers to nonces this stream never sent are ignored.
    pub fn record_answer(&mut self, nonce: &str, error: Option<String>) {
        let Some(sent) = self.in_flight.remove(nonce) else {
            return;
        };
        match error {
            None => {
                for (key, version) in sent.upserts {
                    self.acked.insert(key, version);
                }
                for key in sent.removed {
                    self.acked.remove(&key);
                }
            }
            Some(message) => {
                let sent_keys: Vec<Key> =
                    sent.upserts.keys().chain(&sent.removed).cloned().collect();
                // Envoy may have taken part of the response (a cluster or
                // listener update applies per resource), so what it has is
                // unknown until the next push says it again.
                for (key, version) in sent.upserts {
                    self.known.remove(&key);
                    self.refused.insert((key, version));
                }
                for key in sent.removed {
                    self.known.remove(&key);
                }
                let keys = sent_keys.into_iter().collect();
                self.nack = Some(Nack {
                    generation: sent.generation,
                    message,
                    keys,
                });
            }
        }
    }

    /// Applies a subscription change for `kind`.
    pub fn subscribe(&mut self, kind: ResourceType, add: &[String], remove: &[String]) {
        let names = self.subscribed.entry(kind).or_default();
        names.extend(add.iter().filter(|n| *n != "*").cloned());
        for name in remove {
            names.remove(name);
            // No longer wanted: Envoy dropped it, and a later subscription
            // must get it again.
            let key = (kind, name.clone());
            self.known.remove(&key);
            self.acked.remove(&key);
        }
    }

    /// Whether this stream's Envoy refused `key` at `version`, so waiting
    /// for its ACK is waiting for nothing.
    fn refused(&self, key: &Key, version: Option<&String>) -> bool {
        version.is_some_and(|v| self.refused.contains(&(key.clone(), v.clone())))
    }

    /// Whether this stream's Envoy confirmed `key` at `version` (`None`:
    /// confirmed that it does not have it). A resource Envoy asks for by
    /// name and has not asked for (the secret or route configuration of a
    /// listener that comes in a later step) needs no confirmation: Envoy
    /// fetches it while that listener warms.
    fn confirmed(&self, key: &Key, version: Option<&String>) -> bool {
        let by_name = matches!(key.0, ResourceType::Secret | ResourceType::Route);
        let unasked = by_name && !self.wants(key.0, &key.1);
        match version {
            Some(v) => unasked || self.acked.get(key) == Some(v),
            None => !self.acked.contains_key(key),
        }
    }
}

/// Every resource of `set`, to be confirmed at its version.
pub fn confirm_all(set: &ResourceSet) -> Vec<(Key, Option<String>)> {
    set.iter()
        .map(|(k, r)| (k.clone(), Some(r.version.clone())))
        .collect()
}

/// Why a wait for Envoy's confirmation ended without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// Envoy refused a response of the awaited generation or later.
    Refused(String),
    /// No confirmation in time; `connected` tells whether any Envoy was.
    Timeout {
        /// Whether a stream was connected when the time ran out.
        connected: bool,
    },
}

#[derive(Default)]
struct State {
    /// `None` until the agent publishes: a stream is served nothing before,
    /// so a restarted agent never tells Envoy to remove what it serves.
    snapshot: Option<Snapshot>,
    streams: BTreeMap<u64, StreamView>,
    next_stream: u64,
}

/// The shared state, and the signals between its two sides.
pub struct Hub {
    /// What the streams count.
    pub metrics: crate::metrics::XdsMetrics,
    state: Mutex<State>,
    /// Wakes the agent's waits when a stream records an answer.
    answered: Condvar,
    /// Wakes the streams when a snapshot is published.
    published: tokio::sync::watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(crate::metrics::XdsMetrics::default())
    }
}

impl Hub {
    /// A hub whose streams count in `metrics`.
    pub fn new(metrics: crate::metrics::XdsMetrics) -> Self {
        Self {
            metrics,
            state: Mutex::default(),
            answered: Condvar::new(),
            published: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a stream task must not take the agent down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The published snapshot, `None` before the first publish.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.lock().snapshot.clone()
    }

    /// Makes `resources` what every stream converges to; returns its generation.
    pub fn publish(&self, resources: Arc<ResourceSet>) -> u64 {
        let mut state = self.lock();
        let generation = state.snapshot.as_ref().map_or(1, |s| s.generation + 1);
        state.snapshot = Some(Snapshot {
            generation,
            resources,
        });
        drop(state);
        self.published.send_replace(generation);
        generation
    }

    /// Forgets which versions of `keys` each stream's Envoy refused: called
    /// as the agent starts a change of those resources, a deliberate new
    /// try (the innocent load balancers of a refused response, tried alone).
    /// Within one change (its phases and its rollback) a refused version is
    /// never sent twice, and what the change does not touch stays refused,
    /// so it is never sent along with another load balancer's change.
    pub fn forgive(&self, keys: &BTreeSet<Key>) {
        for s in self.lock().streams.values_mut() {
            s.refused.retain(|(k, _)| !keys.contains(k));
        }
    }

    /// Stops serving: streams send nothing until the next publish, so
    /// Envoy keeps what it has.
    pub fn retract(&self) {
        self.lock().snapshot = None;
    }

    /// Whether every connected Envoy (at least one) has the whole snapshot.
    pub fn settled(&self) -> bool {
        let state = self.lock();
        let Some(snapshot) = &state.snapshot else {
            return false;
        };
        Self::check(
            &state,
            snapshot.generation,
            &confirm_all(&snapshot.resources),
        )
        .is_none()
    }

    /// Whether the connected Envoys (at least one) told us they have no
    /// cluster (so no load balancer) at all: on a fresh start, an Envoy
    /// declares what it kept in its first cluster request.
    pub fn envoy_has_nothing(&self) -> bool {
        let state = self.lock();
        !state.streams.is_empty()
            && state.streams.values().all(|s| {
                s.subscribed.contains_key(&ResourceType::Cluster)
                    && !s.acked.keys().any(|(k, _)| *k == ResourceType::Cluster)
            })
    }

    /// A receiver that changes on every publish.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Registers a new stream; returns its id.
    pub fn connect(&self) -> u64 {
        let mut state = self.lock();
        state.next_stream += 1;
        let id = state.next_stream;
        state.streams.insert(id, StreamView::default());
        drop(state);
        self.answered.notify_all();
        id
    }

    /// Forgets a stream that ended.
    pub fn disconnect(&self, id: u64) {
        self.lock().streams.remove(&id);
        self.answered.notify_all();
    }

    /// How many streams are connected.
    pub fn streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Runs `f` on stream `id`'s view and the snapshot, then wakes waiters.
    pub fn with_stream<T>(
        &self,
        id: u64,
        f: impl FnOnce(&mut StreamView, Option<&Snapshot>) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        let State {
            snapshot, streams, ..
        } = &mut *state;
        let out = streams.get_mut(&id).map(|view| f(view, snapshot.as_ref()));
        drop(state);
        self.answered.notify_all();
        out
    }

    /// Whether every connected Envoy confirmed the resources of `want`
    /// (`None`: removed), or why not.
    fn check(state: &State, generation: u64, want: &[(Key, Option<String>)]) -> Option<WaitError> {
        if let Some(nack) = state
            .streams
            .values()
            .filter_map(|s| s.nack.as_ref())
            .find(|n| n.generation >= generation && want.iter().any(|(k, _)| n.keys.contains(k)))
        {
            return Some(WaitError::Refused(nack.message.clone()));
        }
        // A version this stream refused is not sent again in this change:
        // it is refused now, not late.
        if let Some(s) = state
            .streams
            .values()
            .find(|s| want.iter().any(|(k, v)| s.refused(k, v.as_ref())))
        {
            let said = s.nack.as_ref().map_or("", |n| n.message.as_str());
            return Some(WaitError::Refused(format!("refused before: {said}")));
        }
        let done = !state.streams.is_empty()
            && state
                .streams
                .values()
                .all(|s| want.iter().all(|(k, v)| s.confirmed(k, v.as_ref())));
        if done {
            None
        } else {
            Some(WaitError::Timeout {
                connected: !state.streams.is_empty(),
            })
        }
    }

    /// Waits until every connected Envoy (at least one) confirmed `want`,
    /// or one refused a response of `generation` or later, or `timeout` passed.
    pub fn wait(
        &self,
        generation: u64,
        want: &[(Key, Option<String>)],
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            match Self::check(&state, generation, want) {
                None => return Ok(()),
                Some(e @ WaitError::Refused(_)) => return Err(e),
                Some(e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(e);
                    }
                    state = self
                        .answered
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
