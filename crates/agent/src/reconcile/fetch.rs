//! What was fetched: choosing what to serve from one fetch (through
//! [`vpsie_lb_core::choose`]) and reporting it, the error a fetch leaves
//! behind, and the newest fetched documents that `/status` compares with
//! what is served.

use std::collections::BTreeMap;

use serde_json::Value;
use vpsie_lb_model::Config;

use super::Reconciler;
use crate::pass::{Delivery, ReconcileError};
use crate::report::Reporter;
use crate::source::{FetchError, Fetched, Source};

/// The error a fetch left behind, if any: a whole-source failure, or the
/// first load balancer that could not be fetched (it keeps its good version).
fn fetch_error(fetched: &Fetched) -> Option<ReconcileError> {
    let message = match &fetched.failed {
        Some(e) => e.to_string(),
        None => fetched
            .items
            .iter()
            .find_map(|(id, r)| match r {
                // The api answered; what it said is reported as a refusal.
                Err(FetchError::Refused { .. }) | Ok(_) => None,
                Err(e) => Some(format!("{id}: {e}")),
            })
            .or_else(|| Some(fetched.failed_groups.first()?.1.to_string()))?,
    };
    let errors: Vec<&FetchError> = fetched
        .items
        .values()
        .filter_map(|r| r.as_ref().err())
        .chain(fetched.failed_groups.iter().map(|(_, e)| e))
        .collect();
    // A rejected key refuses every request. A request the API calls bad
    // refuses only itself: it holds off a quick retry only when nothing
    // else failed in a way a retry could fix.
    let unauthorized = errors
        .iter()
        .any(|e| matches!(e, FetchError::Unauthorized(_)));
    let only_denied = errors.iter().any(|e| matches!(e, FetchError::Denied(_)))
        && errors.iter().all(|e| {
            matches!(
                e,
                FetchError::Denied(_) | FetchError::Refused { .. } | FetchError::Unauthorized(_)
            )
        });
    Some(ReconcileError::Fetch {
        message,
        retry_after: fetched.retry_after,
        key_refused: unauthorized || only_denied,
    })
}

impl<D: Delivery> Reconciler<D> {
    /// After `good` changed from `old`: the newest fetched document of a
    /// load balancer fetched as served is what was served, so it moves into
    /// `fetched` when the served one changed or went; and a fetched
    /// document that is served now needs no copy.
    pub(super) fn keep_fetched(&mut self, mut old: BTreeMap<String, Value>) {
        let good = &self.good;
        let moved: Vec<String> = self
            .fetched_as_served
            .iter()
            .filter(|id| good.get(*id) != old.get(*id))
            .cloned()
            .collect();
        for id in moved {
            self.fetched_as_served.remove(&id);
            if let Some(doc) = old.remove(&id) {
                self.fetched.insert(id, doc);
            }
        }
        let good = &self.good;
        let served: Vec<String> = self
            .fetched
            .iter()
            .filter(|(id, doc)| good.get(*id) == Some(*doc))
            .map(|(id, _)| id.clone())
            .collect();
        for id in served {
            self.fetched.remove(&id);
            self.fetched_as_served.insert(id);
        }
    }

    /// Fetches and chooses what to serve: the candidate documents (and, if
    /// choosing validated them as a whole, the result), whether any was
    /// refused, and what the fetch left behind.
    pub(super) fn fetch_and_choose(
        &mut self,
        source: &mut dyn Source,
        reporter: &mut dyn Reporter,
    ) -> (
        BTreeMap<String, Value>,
        Option<Config>,
        bool,
        Option<ReconcileError>,
    ) {
        let clock = std::time::Instant::now();
        let mut fetched = source.fetch();
        self.times.fetch = clock.elapsed();
        // Before anything reads the items: a failed group stands for every
        // load balancer it served.
        fetched.expand_failed_groups(self.good.keys());
        let fetch_error = fetch_error(&fetched);
        self.track_reachability(
            fetched.reachable,
            fetched.items.keys().cloned().collect(),
            reporter,
        );
        let clock = std::time::Instant::now();
        let (candidate, validated, rejected) = self.choose(fetched, reporter);
        self.times.validate = clock.elapsed();
        (candidate, validated, rejected, fetch_error)
    }

    /// Chooses what to serve from `fetched` (see [`crate::choose`]) and
    /// reports it: each refusal once per refused document, each failed fetch.
    /// Returns the candidate, its whole validation if choosing made one,
    /// and whether anything was refused.
    fn choose(
        &mut self,
        fetched: Fetched,
        reporter: &mut dyn Reporter,
    ) -> (BTreeMap<String, Value>, Option<Config>, bool) {
        if let Some(e) = &fetched.failed {
            reporter.error("fetch", &e.to_string());
            return (self.good.clone(), None, false);
        }
        // A group's failure is said once, not once per load balancer in it.
        for (_, e) in &fetched.failed_groups {
            reporter.error("fetch", &e.to_string());
        }
        let groups: Vec<String> = fetched
            .failed_groups
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        for problem in &fetched.unattributed {
            reporter.error("fetch", problem);
        }
        for (id, item) in &fetched.items {
            if let Ok(doc) = item {
                // Kept only while it differs from what is served: at 1,000
                // load balancers each copy of the documents is 7 MB, and
                // status needs a fetched one only to say it is not served.
                if self.good.get(id) == Some(doc) {
                    self.fetched.remove(id);
                    self.fetched_as_served.insert(id.clone());
                } else {
                    self.fetched.insert(id.clone(), doc.clone());
                    self.fetched_as_served.remove(id);
                }
            }
        }
        if groups.is_empty() && fetched.unattributed.is_empty() {
            // The source listed every load balancer: one it no longer lists
            // and that serves nothing is gone, problems and all.
            let good = &self.good;
            let listed = &fetched.items;
            self.problems
                .retain(|id, _| listed.contains_key(id) || good.contains_key(id));
            self.fetched.retain(|id, _| listed.contains_key(id));
            self.fetched_as_served.retain(|id| listed.contains_key(id));
        }
        let mut items = fetched.items;
        self.hold_parked(&mut items);
        let mut choice = crate::choose::choose(items, &self.good, &self.settings.validate);
        choice.valid.retain(|id| !self.is_parked(id));
        // Problems in the source's own terms: the public API's paths.
        for (id, _, problems) in &mut choice.refused {
            if let Some(map) = fetched.paths.get(id) {
                for p in problems.iter_mut() {
                    *p = map.translate(p);
                }
            }
        }
        for (id, msg) in &choice.unfetched {
            if !groups.iter().any(|p| id.starts_with(p.as_str())) {
                reporter.error(&format!("fetch {id}"), msg);
            }
        }
        for id in &choice.valid {
            self.rejected_docs.remove(id);
        }
        let rejected = !fetched.unattributed.is_empty() || !choice.refused.is_empty();
        for (id, doc, problems) in choice.refused {
            if self.rejected_docs.get(&id) != Some(&doc) {
                self.reject(reporter, &id, &problems);
                self.rejected_docs.insert(id, doc);
            }
        }
        self.valid_now = choice.valid;
        (choice.candidate, choice.config, rejected)
    }
}
