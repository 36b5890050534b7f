//! The reconciler's last-known-good: restoring it at start, promoting what
//! Envoy confirmed, and saving it until the disk takes it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Reconciler;
use crate::pass::Delivery;
use crate::pass::Outcome;
use crate::pass::PassResult;
use crate::report::{EventKind, Reporter};

impl<D: Delivery> Reconciler<D> {
    /// Makes Envoy serve the last-known-good config if it does not already:
    /// used at start, before the first fetch, so a restart with the API down
    /// still serves.
    pub fn restore_last_known_good(
        &mut self,
        reporter: &mut dyn Reporter,
    ) -> Result<PassResult, String> {
        if let Some(e) = &self.state_error {
            return Err(format!("not restoring, envoy is left as it is: {e}"));
        }
        if !self.good_known {
            return Ok(PassResult::Unchanged);
        }
        // Through the render cache: the first pass usually fetches these same
        // documents, and at 1,000 load balancers a render is the costly part.
        let good = self.good.clone();
        let base = self
            .validate_all(&good)
            .map_err(|e| format!("render last-known-good: {e}"))?;
        if self.served.is_none() {
            self.resume_drains(&base, reporter);
        }
        let (config, files) = self
            .prepare(&good, Some(base))
            .map_err(|e| format!("render last-known-good: {e}"))?;
        self.bound_ahead(&config, reporter);
        let result = match self.delivery.restore(&files) {
            Ok(Outcome::Unchanged) => PassResult::Unchanged,
            Ok(Outcome::Applied) => {
                reporter.note("restored last-known-good config");
                PassResult::Applied
            }
            Ok(Outcome::RolledBack(e)) => {
                return Err(format!("envoy refused last-known-good: {e}"));
            }
            Ok(Outcome::Interrupted(e)) => return Err(format!("restore last-known-good: {e}")),
            Err(e) => return Err(format!("restore last-known-good: {e}")),
        };
        self.serving_verified = true;
        // Closes what drains that ended while the agent was away left open.
        self.settle(config, reporter);
        Ok(result)
    }

    /// Records `candidate` as last-known-good, in memory and on disk.
    pub(super) fn promote(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        files: &D::Candidate,
        reporter: &mut dyn Reporter,
        changed: &[String],
    ) {
        if self.good_known && &self.good == candidate {
            return;
        }
        let old = std::mem::replace(&mut self.good, candidate.clone());
        self.keep_fetched(old);
        self.good_generation += 1;
        self.render_is_of_good();
        self.good_version = crate::state::docs_version(&self.good);
        self.good_known = true;
        self.state_error = None;
        self.refused = None;
        match self.delivery.record(files) {
            Ok(files_kept) => {
                self.unsaved = Some(crate::state::Unsaved {
                    files: files_kept,
                    listeners: self.delivery.listener_names(files),
                })
            }
            Err(e) => {
                reporter.error("save last-known-good", &e);
                // The disk lags behind what Envoy serves, as when a save
                // fails: the pass must say so.
                self.store_failed = Some(e);
            }
        }
        self.save_state(reporter);
        for id in changed {
            // The same per-load-balancer version the status reports.
            if let Some(doc) = candidate.get(id) {
                let version = crate::status::version_of(doc);
                reporter.event(
                    id,
                    EventKind::ConfigApplied,
                    "configuration applied and confirmed by envoy",
                    serde_json::json!({"config_version": version}),
                );
            }
        }
    }

    /// Writes `good` and its files as last-known-good if the disk lags
    /// behind; a failure is reported and tried again on the next pass, so a
    /// restart never brings back an older copy once the disk recovers.
    pub(super) fn save_state(&mut self, reporter: &mut dyn Reporter) {
        let Some(unsaved) = self.unsaved.take() else {
            return;
        };
        if let Err(e) = self.ports.store.save(&self.good, &unsaved) {
            let why = format!("{}: {e}", self.ports.store.location());
            reporter.error(
                "save last-known-good",
                &format!("{why}; retrying on the next pass"),
            );
            self.store_failed = Some(format!("last-known-good: {why}"));
            self.unsaved = Some(unsaved);
        }
    }
}
