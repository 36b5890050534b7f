//! What a pass hands Envoy, and what Envoy serves: the render cache, the
//! deregistration delay's drains worked out from the config Envoy confirmed
//! last, and closing what is left when a drain ends.

use std::collections::BTreeMap;

use serde_json::Value;
use vpsie_lb_model::{Config, acme, drain, validate};

use super::Reconciler;
use crate::pass::Delivery;
use crate::report::{EventKind, Reporter};
use crate::udp_guard;

/// Which documents a render was of.
pub(super) enum RenderedDocs {
    /// The served documents (`good`) of this generation: at 1,000 load
    /// balancers a copy of them is 7 MB, and most renders are of them.
    Good(u64),
    /// Others (a candidate not served yet, or refused), kept to compare.
    Own(BTreeMap<String, Value>),
}

/// A rendered candidate, kept to be reused.
pub(super) struct Rendered<C> {
    /// The documents.
    docs: RenderedDocs,
    /// Their validated config, kept only when a load balancer has a
    /// deregistration delay or an ACME certificate: only then can drains
    /// or a certificate change the render later.
    base: Option<Config>,
    /// The validated config with the backends that drained when it was rendered.
    config: Config,
    /// What it rendered to.
    files: C,
}

impl<D: Delivery> Reconciler<D> {
    /// Validates `docs` together.
    pub(super) fn validate_all(&self, docs: &BTreeMap<String, Value>) -> Result<Config, String> {
        let doc = Value::Array(docs.values().cloned().collect());
        validate(&doc, &self.settings.validate)
            .map(|v| v.config)
            .map_err(|r| r.to_string())
    }

    /// What the delivery hands Envoy for `candidate` with the backends
    /// still draining now, reusing the last render when neither the
    /// documents nor the drains changed; `validated`, when given, is
    /// `candidate` already validated as a whole.
    pub(super) fn prepare(
        &mut self,
        candidate: &BTreeMap<String, Value>,
        validated: Option<Config>,
    ) -> Result<(Config, D::Candidate), String> {
        let cached = self
            .last_render
            .as_ref()
            .filter(|r| self.rendered_docs_are(&r.docs, candidate));
        let base = match (cached, validated) {
            (Some(r), _) => match &r.base {
                // No delay anywhere: the pass costs what it cost before drains.
                None => return Ok((r.config.clone(), r.files.clone())),
                Some(base) => base.clone(),
            },
            (None, Some(config)) => config,
            (None, None) => self.validate_all(candidate)?,
        };
        let (config, base) = self.overlay(base);
        if let Some(r) = cached
            && r.config == config
        {
            return Ok((config, r.files.clone()));
        }
        let files = self.delivery.prepare(&config)?;
        let docs = if candidate == &self.good {
            RenderedDocs::Good(self.good_generation)
        } else {
            RenderedDocs::Own(candidate.clone())
        };
        self.last_render = Some(Rendered {
            docs,
            base,
            config: config.clone(),
            files: files.clone(),
        });
        Ok((config, files))
    }

    /// Whether the last render keeps its own copy of its documents.
    #[cfg(test)]
    pub(crate) fn render_keeps_a_copy(&self) -> Option<bool> {
        let r = self.last_render.as_ref()?;
        Some(matches!(r.docs, RenderedDocs::Own(_)))
    }

    /// Whether a render of `docs` is a render of `candidate`.
    fn rendered_docs_are(&self, docs: &RenderedDocs, candidate: &BTreeMap<String, Value>) -> bool {
        match docs {
            RenderedDocs::Good(generation) => {
                *generation == self.good_generation && candidate == &self.good
            }
            RenderedDocs::Own(own) => own == candidate,
        }
    }

    /// After `good` changed: a render of exactly the new `good` stops
    /// keeping a copy of it.
    pub(super) fn render_is_of_good(&mut self) {
        let generation = self.good_generation;
        if let Some(r) = &mut self.last_render
            && matches!(&r.docs, RenderedDocs::Own(own) if *own == self.good)
        {
            r.docs = RenderedDocs::Good(generation);
        }
    }

    /// `base` as it should be served now: the backends still draining, and
    /// the ACME certificates issued so far. Keeps `base` when either could
    /// change without the documents changing.
    fn overlay(&self, base: Config) -> (Config, Option<Config>) {
        let drains = drain::may_drain(&base);
        // Only read here: what is ordered follows what Envoy serves
        // (`settle`), never a render that may be a refused trial.
        let certificates = self.acme.as_ref().and_then(|a| {
            let wanted = acme::wanted(&base);
            (!wanted.is_empty()).then(|| a.issued_for(wanted.keys()))
        });
        if !drains && certificates.is_none() {
            return (base, None);
        }
        let mut config = base.clone();
        if drains {
            config = drain::overlay(self.served.as_ref(), config, self.ports.clock.now_ms());
        }
        if let Some(issued) = certificates {
            config = acme::overlay(config, &issued);
        }
        (config, Some(base))
    }

    /// When the next drain ends, if a backend drains: the controller runs
    /// a pass then, whatever its poll interval.
    pub fn next_wake(&self) -> Option<std::time::SystemTime> {
        drain::next_deadline(self.served.as_ref()?).map(crate::drain::at)
    }

    /// Bounds the udp clients of `candidate` before Envoy is handed it, so
    /// a new listener never serves a moment unbounded; what Envoy serves
    /// keeps its bounds, or stricter ones, meanwhile (a pass may end before
    /// `settle`), and `settle` drops what Envoy refused.
    pub(super) fn bound_ahead(&mut self, candidate: &Config, reporter: &mut dyn Reporter) {
        let Some(g) = &mut self.udp_guard else {
            return;
        };
        let served = self
            .served
            .as_ref()
            .map(udp_guard::rules::bounds)
            .unwrap_or_default();
        let bounds = udp_guard::rules::ahead(&served, &udp_guard::rules::bounds(candidate));
        if let Err(e) = g.sync(bounds) {
            reporter.error("udp_guard", &e);
        }
    }

    /// Records `config` as what Envoy serves, and closes what is left on the
    /// backends whose drain it ended.
    pub(super) fn settle(&mut self, config: Config, reporter: &mut dyn Reporter) {
        if let Some(a) = &self.acme {
            // What Envoy serves says what to order, and Envoy serves these
            // redirect listeners now: their orders may go. Told on every
            // settle, so a certificate no document wants stops being ordered.
            a.want(acme::wanted(&config));
        }
        // The bounds follow what Envoy serves: a listener Envoy refused
        // loses the bound `bound_ahead` gave it, one it serves keeps its own.
        if let Some(g) = &mut self.udp_guard {
            if let Err(e) = g.sync(udp_guard::rules::bounds(&config)) {
                reporter.error("udp_guard", &e);
            }
            g.count_refused();
        }
        let ended = self
            .served
            .as_ref()
            .map(|before| drain::ended(before, &config))
            .unwrap_or_default();
        self.served = Some(config);
        self.save_drains(reporter);
        for (lb, backend) in ended {
            let vpsie_lb_model::Address::Ip(ip) = backend.address else {
                continue;
            };
            let (message, closed) = match self.ports.closer.close(ip, backend.port) {
                Ok(n) => (
                    format!(
                        "backend {} ({ip}:{}) drained: {n} connections left were closed",
                        backend.id, backend.port
                    ),
                    Some(n),
                ),
                Err(e) => {
                    reporter.error("drain", &format!("backend {}: {e}", backend.id));
                    (format!("backend {} drained: {e}", backend.id), None)
                }
            };
            reporter.event(
                &lb,
                EventKind::BackendDrained,
                &message,
                serde_json::json!({"backend_id": backend.id, "address": ip.to_string(),
                                   "port": backend.port, "closed": closed}),
            );
        }
    }

    /// At start: the drains the last run saved, resumed on `base` (the
    /// restored last-known-good) as if it had been served with them, so a
    /// restart neither drops a draining backend at once nor forgets to
    /// close what is left on it.
    pub(super) fn resume_drains(&mut self, base: &Config, reporter: &mut dyn Reporter) {
        match self.ports.store.load_drains() {
            Ok(saved) => {
                let allowed = &self.settings.validate.allowed_backend_networks;
                let resumed =
                    drain::resume(base.clone(), &saved, allowed, self.ports.clock.now_ms());
                let n = drain::saved(&resumed).len();
                if n > 0 {
                    reporter.note(&format!("resumed {n} drain(s) of the last run"));
                    self.served = Some(resumed);
                }
                self.drains_saved = Some(saved);
            }
            // Left unknown, so the next settle replaces the file.
            Err(e) => reporter.error("drain", &format!("not resumed: {e}")),
        }
    }

    /// Saves the drains Envoy serves now, when they changed.
    fn save_drains(&mut self, reporter: &mut dyn Reporter) {
        let now = self.served.as_ref().map(drain::saved).unwrap_or_default();
        if self.drains_saved.as_ref() == Some(&now) {
            return;
        }
        match self.ports.store.save_drains(&now) {
            Ok(()) => self.drains_saved = Some(now),
            Err(e) => {
                reporter.error("drain", &format!("save the drains: {e}"));
                self.store_failed = Some(format!("drains: {e}"));
            }
        }
    }
}
