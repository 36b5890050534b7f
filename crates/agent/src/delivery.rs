//! The files delivery: [`FilesDelivery`] hands Envoy the files it watches
//! and confirms each step through the admin API. The [`Delivery`] trait it
//! implements, and its results, live in [`crate::pass`] beside the pass
//! that uses them; they are re-exported here for older paths.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vpsie_lb_envoy::{
    FileParts, FilesLayout, Target as Translation, TranslateOptions, assemble_files, render_parts,
    translate_lb,
};
use vpsie_lb_model::{Config, LoadBalancer, ValidateOptions, validate};

use crate::apply::{Applier, ApplyError, Outcome};
use crate::envoy_admin::HostHealth;
use crate::envoy_files::{FileSet, file_set, plan, read_file_set};
use crate::pass::ReconcileError;
use crate::preflight::{self, PreflightError};

pub use crate::pass::{ChangeKind, Delivery, Diff};

/// The delivery of files Envoy watches (`path_config_source`).
pub struct FilesDelivery {
    layout: FilesLayout,
    translate: TranslateOptions,
    applier: Applier,
    envoy_bin: PathBuf,
    /// The host's inotify instance limit (`None`: unknown, not checked).
    watch_limit: Option<usize>,
    /// Envoy's files as [`Delivery::diff`] read them, for the apply that follows.
    current: Option<FileSet>,
    /// The files of no load balancer at all, rendered once: Envoy serves
    /// nothing exactly when its files equal these.
    empty: FileSet,
    /// Each load balancer's rendered parts, kept while it is unchanged: a
    /// change to one of many renders one.
    cache: RefCell<BTreeMap<String, (LoadBalancer, Arc<FileParts>)>>,
}

impl FilesDelivery {
    /// Files under `translate`'s layout, applied through `applier`,
    /// pre-flighted with `envoy_bin`.
    pub fn new(
        translate: TranslateOptions,
        applier: Applier,
        envoy_bin: PathBuf,
        watch_limit: Option<usize>,
    ) -> Result<Self, String> {
        let Translation::Files(layout) = &translate.delivery else {
            return Err("the files delivery needs a files layout".into());
        };
        let mut delivery = Self {
            layout: layout.clone(),
            translate,
            applier,
            envoy_bin,
            watch_limit,
            current: None,
            empty: FileSet::new(),
            cache: RefCell::new(BTreeMap::new()),
        };
        let nothing = validate(&serde_json::json!([]), &ValidateOptions::default())
            .map_err(|e| e.to_string())?;
        delivery.empty = delivery.prepare(&nothing.config)?;
        Ok(delivery)
    }
}

/// The files of `set` relative to `layout`'s root, as last-known-good keeps them.
pub fn relative_files(
    layout: &FilesLayout,
    set: &FileSet,
) -> Result<Vec<(PathBuf, String)>, String> {
    set.values()
        .map(|f| {
            let rel = f.path.strip_prefix(layout.root()).map_err(|_| {
                format!(
                    "{} is outside {}",
                    f.path.display(),
                    layout.root().display()
                )
            })?;
            Ok((rel.to_path_buf(), f.contents.clone()))
        })
        .collect()
}

/// The listeners in `set`'s listener file (none if it has none).
pub fn file_listener_names(layout: &FilesLayout, set: &FileSet) -> Vec<String> {
    let Some(file) = set.get(&layout.lds_file()) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&file.contents) else {
        return Vec::new();
    };
    json["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

impl Delivery for FilesDelivery {
    type Candidate = FileSet;

    fn prepare(&self, config: &Config) -> Result<FileSet, String> {
        let mut cache = self.cache.borrow_mut();
        let mut fresh = BTreeMap::new();
        for lb in &config.load_balancers {
            let parts = match cache.remove(&lb.id) {
                Some((cached, parts)) if cached == *lb => parts,
                _ => Arc::new(
                    render_parts(&translate_lb(lb, &self.translate), &self.layout)
                        .map_err(|e| e.to_string())?,
                ),
            };
            fresh.insert(lb.id.clone(), (lb.clone(), parts));
        }
        let files = assemble_files(fresh.values().map(|(_, p)| p.as_ref()), &self.layout);
        *cache = fresh;
        Ok(file_set(files))
    }

    fn diff(&mut self, next: &FileSet) -> Result<Diff, ReconcileError> {
        let current =
            read_file_set(&self.layout).map_err(|e| ReconcileError::ReadFiles(e.to_string()))?;
        // A comparison of two small maps, not a plan: this runs every pass.
        let envoy_serves_nothing = current == self.empty;
        let kind = match plan(&self.layout, &current, next) {
            Ok(p) if p.is_empty() => ChangeKind::None,
            Ok(p) if p.is_endpoints_only(&self.layout) => ChangeKind::EndpointsOnly,
            _ => ChangeKind::Other,
        };
        self.current = Some(current);
        Ok(Diff {
            kind,
            envoy_serves_nothing,
        })
    }

    fn check(&self, next: &FileSet, changed: &Config) -> Result<(), PreflightError> {
        preflight::check_files_watch_budget(next, &self.layout, self.watch_limit)?;
        preflight::validate_changed(&self.envoy_bin, &self.translate, changed)
    }

    fn apply(&mut self, next: &FileSet) -> Result<Outcome, ApplyError> {
        match self.current.take() {
            Some(current) => self.applier.apply_over(&current, next),
            None => self.applier.apply(next),
        }
    }

    fn take_verify_time(&self) -> Duration {
        self.applier.take_verify_time()
    }

    fn record(&self, candidate: &FileSet) -> Result<Vec<(PathBuf, String)>, String> {
        relative_files(&self.layout, candidate)
    }

    fn listener_names(&self, candidate: &FileSet) -> Vec<String> {
        file_listener_names(&self.layout, candidate)
    }

    fn host_health(&self) -> Option<Vec<HostHealth>> {
        self.applier.admin().host_health().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy_admin::EnvoyAdmin;
    use vpsie_lb_envoy::LocalAddress;

    /// A files delivery under `dir` whose Envoy is never asked anything.
    fn files(dir: &std::path::Path) -> FilesDelivery {
        let layout = FilesLayout::new(dir);
        let admin = EnvoyAdmin::new(LocalAddress::Unix(dir.join("admin.sock"))).expect("admin");
        FilesDelivery::new(
            TranslateOptions::new(Translation::Files(layout.clone())),
            Applier::new(layout, admin, Duration::from_secs(1)),
            PathBuf::from("/nonexistent/envoy"),
            None,
        )
        .expect("delivery")
    }

    fn config(weight: u32, canary: u32) -> Config {
        let doc = serde_json::json!({"id": "web", "protocol": "http", "port": 80,
            "backends": [{"id": "a", "address": "10.0.0.1", "port": 80, "weight": weight}],
            "pools": [{"id": "next", "backends": [{"id": "n", "address": "10.0.0.2", "port": 80}]}],
            "routes": [{"id": "c", "forward": [
                {"pool": "default", "weight": 100 - canary}, {"pool": "next", "weight": canary}]}]});
        validate(&doc, &ValidateOptions::default())
            .expect("valid")
            .config
    }

    /// Writes `set` where Envoy would read it.
    fn install(set: &FileSet) {
        for f in set.values() {
            std::fs::create_dir_all(f.path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&f.path, &f.contents).expect("write");
        }
    }

    #[test]
    fn regression_a_route_only_change_was_taken_for_endpoints_only() {
        // Endpoints-only changes skip Envoy's validate mode; a route change must not.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = files(dir.path());
        install(&d.prepare(&config(1, 10)).expect("prepare"));
        let weight = d.prepare(&config(3, 10)).expect("prepare");
        assert_eq!(
            d.diff(&weight).expect("diff").kind,
            ChangeKind::EndpointsOnly
        );
        let canary = d.prepare(&config(1, 50)).expect("prepare");
        assert_eq!(d.diff(&canary).expect("diff").kind, ChangeKind::Other);
    }

    #[test]
    fn cached_parts_give_the_same_files_as_a_fresh_render() {
        let dir = tempfile::tempdir().expect("tempdir");
        let warm = files(dir.path());
        warm.prepare(&config(1, 10)).expect("prepare");
        let again = warm.prepare(&config(1, 50)).expect("prepare");
        let fresh = files(dir.path()).prepare(&config(1, 50)).expect("prepare");
        assert_eq!(again, fresh);
    }
}
