//! The files delivery: [`FilesDelivery`] hands Envoy the files it watches
//! and confirms each step through the admin API. The [`Delivery`] trait it
//! implements, and its results, live in [`crate::pass`] beside the pass
//! that uses them; they are re-exported here for older paths.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vpsie_lb_core::change::{self, Kind};
use vpsie_lb_envoy::{
    FileParts, FilesLayout, ResourceSet, Target as Translation, TranslateOptions, assemble_files,
    render_parts, resource_set, translate_lb,
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
    /// Each load balancer's rendered parts and resources, kept while it is
    /// unchanged: a change to one of many renders one.
    cache: RefCell<BTreeMap<String, Rendered>>,
    /// What the last confirmed apply wrote, for the change planner.
    written: Option<Written>,
    /// Whether the caller ran Envoy's validate mode on the whole config
    /// already (the `apply` command), so a pass's check skips it.
    validated_up_front: bool,
}

/// One load balancer as the files delivery rendered it.
type Rendered = (LoadBalancer, Arc<FileParts>, Arc<ResourceSet>);

/// What the files delivery hands Envoy: the files, and each load
/// balancer's resources, which the one change planner
/// ([`vpsie_lb_core::change`]) compares with what was written before.
#[derive(Debug, Clone)]
pub struct FilesCandidate {
    files: Arc<FileSet>,
    resources: BTreeMap<String, Arc<ResourceSet>>,
}

/// Two candidates are equal when their files are: the resources come from
/// the same translation, and their packed bytes are not canonical (a
/// protobuf map encodes in any order), while the files' JSON is.
impl PartialEq for FilesCandidate {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl Deref for FilesCandidate {
    type Target = FileSet;

    fn deref(&self) -> &FileSet {
        &self.files
    }
}

/// The files an apply wrote and the resources they hold. The planner
/// trusts these only while the disk still has exactly those files, byte
/// for byte; otherwise the files are compared as files.
struct Written {
    files: Arc<FileSet>,
    resources: BTreeMap<String, Arc<ResourceSet>>,
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
            written: None,
            validated_up_front: false,
        };
        let nothing = validate(&serde_json::json!([]), &ValidateOptions::default())
            .map_err(|e| e.to_string())?;
        delivery.empty = delivery.prepare(&nothing.config)?.files.as_ref().clone();
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

impl FilesDelivery {
    /// The same delivery for a caller that ran Envoy's validate mode on the
    /// whole config before the pass: its check keeps only the host's limits.
    pub fn validated_up_front(mut self) -> Self {
        self.validated_up_front = true;
        self
    }

    /// Translates and renders one load balancer.
    fn render(&self, lb: &LoadBalancer) -> Result<Rendered, String> {
        let resources = translate_lb(lb, &self.translate);
        let parts = render_parts(&resources, &self.layout).map_err(|e| e.to_string())?;
        let set = resource_set(&resources).map_err(|e| e.to_string())?;
        Ok((lb.clone(), Arc::new(parts), Arc::new(set)))
    }

    /// Notes that Envoy confirmed `next`'s files (shared, not copied).
    fn wrote(&mut self, next: &FilesCandidate) {
        self.written = Some(Written {
            files: next.files.clone(),
            resources: next.resources.clone(),
        });
    }

    /// The change from what was written to `next`, by the one planner, per
    /// load balancer (a load balancer whose resources are shared with the
    /// last apply is unchanged). `None` when the files on disk are not the
    /// ones written (hand edits, a start after a crash): then only the
    /// files can be compared.
    fn planned(&self, current: &FileSet, next: &FilesCandidate) -> Option<Kind> {
        let written = self.written.as_ref()?;
        // By content, not by `version_info`: a hand edit may keep it.
        if *current != *written.files {
            return None;
        }
        let empty = ResourceSet::new();
        let ids: BTreeSet<&String> = written
            .resources
            .keys()
            .chain(next.resources.keys())
            .collect();
        let kind = ids
            .into_iter()
            .filter_map(
                |id| match (written.resources.get(id), next.resources.get(id)) {
                    (Some(old), Some(new)) if Arc::ptr_eq(old, new) => None,
                    (old, new) => Some(
                        change::plan(old.map_or(&empty, |o| o), new.map_or(&empty, |n| n)).kind,
                    ),
                },
            )
            .max()
            .unwrap_or(Kind::None);
        Some(kind)
    }

    /// The change from the files on disk to `next`'s, compared as files.
    fn compared_as_files(&self, current: &FileSet, next: &FileSet) -> ChangeKind {
        match plan(&self.layout, current, next) {
            Ok(p) if p.is_empty() => ChangeKind::None,
            Ok(p) if p.is_endpoints_only(&self.layout) => ChangeKind::EndpointsOnly,
            _ => ChangeKind::Other,
        }
    }
}

impl Delivery for FilesDelivery {
    type Candidate = FilesCandidate;

    fn prepare(&self, config: &Config) -> Result<FilesCandidate, String> {
        let mut cache = self.cache.borrow_mut();
        let mut fresh = BTreeMap::new();
        for lb in &config.load_balancers {
            let entry = match cache.remove(&lb.id) {
                Some(cached) if cached.0 == *lb => cached,
                _ => self.render(lb)?,
            };
            fresh.insert(lb.id.clone(), entry);
        }
        let files = assemble_files(fresh.values().map(|(_, p, _)| p.as_ref()), &self.layout);
        let resources = fresh
            .iter()
            .map(|(id, (_, _, r))| (id.clone(), r.clone()))
            .collect();
        *cache = fresh;
        Ok(FilesCandidate {
            files: Arc::new(file_set(files)),
            resources,
        })
    }

    fn diff(&mut self, next: &FilesCandidate) -> Result<Diff, ReconcileError> {
        let current =
            read_file_set(&self.layout).map_err(|e| ReconcileError::ReadFiles(e.to_string()))?;
        // A comparison of two small maps, not a plan: this runs every pass.
        let envoy_serves_nothing = current == self.empty;
        let kind = match self.planned(&current, next) {
            Some(kind) => ChangeKind::of(kind),
            None => self.compared_as_files(&current, next),
        };
        self.current = Some(current);
        Ok(Diff {
            kind,
            envoy_serves_nothing,
        })
    }

    fn check(&self, next: &FilesCandidate, changed: &Config) -> Result<(), PreflightError> {
        preflight::check_files_watch_budget(next, &self.layout, self.watch_limit)?;
        if self.validated_up_front {
            return Ok(());
        }
        preflight::validate_changed(&self.envoy_bin, &self.translate, changed)
    }

    fn apply(&mut self, next: &FilesCandidate) -> Result<Outcome, ApplyError> {
        let outcome = match self.current.take() {
            Some(current) => self.applier.apply_over(&current, next),
            None => self.applier.apply(next),
        }?;
        if matches!(outcome, Outcome::Applied | Outcome::Unchanged) {
            self.wrote(next);
        }
        Ok(outcome)
    }

    fn take_verify_time(&self) -> Duration {
        self.applier.take_verify_time()
    }

    fn record(&self, candidate: &FilesCandidate) -> Result<Vec<(PathBuf, String)>, String> {
        relative_files(&self.layout, candidate)
    }

    fn listener_names(&self, candidate: &FilesCandidate) -> Vec<String> {
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

    fn doc(lbs: serde_json::Value) -> Config {
        validate(&lbs, &ValidateOptions::default())
            .expect("valid")
            .config
    }

    /// Two load balancers; `edit` changes the JSON before validation.
    fn pair(edit: impl FnOnce(&mut serde_json::Value)) -> Config {
        let mut lbs = serde_json::json!([
            {"id": "web", "protocol": "http", "port": 80,
             "backends": [{"id": "a", "address": "10.0.0.1", "port": 80, "weight": 1}]},
            {"id": "db", "protocol": "tcp", "port": 9000,
             "backends": [{"id": "b", "address": "10.0.0.3", "port": 5432}]}]);
        edit(&mut lbs);
        doc(lbs)
    }

    /// The planner's kind and the files' kind of the change from `from`,
    /// written and confirmed, to `to`.
    fn kinds(from: &Config, to: &Config) -> (Option<ChangeKind>, ChangeKind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = files(dir.path());
        let written = d.prepare(from).expect("prepare");
        install(&written);
        d.wrote(&written);
        let next = d.prepare(to).expect("prepare");
        let current = read_file_set(&d.layout).expect("read");
        let planned = d.planned(&current, &next).map(ChangeKind::of);
        (planned, d.compared_as_files(&current, &next))
    }

    #[test]
    fn the_planner_and_the_files_agree_on_every_kind_of_change() {
        let base = pair(|_| {});
        let cases: [(&str, Config, ChangeKind); 7] = [
            ("nothing", pair(|_| {}), ChangeKind::None),
            (
                "a weight",
                pair(|v| v[0]["backends"][0]["weight"] = 3.into()),
                ChangeKind::EndpointsOnly,
            ),
            (
                "a backend added",
                pair(|v| {
                    let b = serde_json::json!({"id": "c", "address": "10.0.0.4", "port": 5432});
                    v[1]["backends"].as_array_mut().expect("list").push(b);
                }),
                ChangeKind::EndpointsOnly,
            ),
            (
                "a route",
                pair(|v| {
                    v[0]["routes"] = serde_json::json!([{"id": "r", "match": {"path_prefix": "/x"}, "respond": {"status": 204}}]);
                }),
                ChangeKind::Other,
            ),
            (
                "a load balancer removed",
                pair(|v| {
                    v.as_array_mut().expect("list").pop();
                }),
                ChangeKind::Other,
            ),
            (
                "a load balancer added",
                pair(|v| {
                    let lb = serde_json::json!({"id": "new", "protocol": "tcp", "port": 9001,
                        "backends": [{"id": "n", "address": "10.0.0.5", "port": 1}]});
                    v.as_array_mut().expect("list").push(lb);
                }),
                ChangeKind::Other,
            ),
            (
                "a port",
                pair(|v| v[1]["port"] = 9002.into()),
                ChangeKind::Other,
            ),
        ];
        for (what, to, want) in cases {
            assert_eq!(kinds(&base, &to), (Some(want), want), "{what}");
        }
    }

    #[test]
    fn files_changed_behind_the_delivery_are_compared_as_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = files(dir.path());
        let written = d.prepare(&config(1, 10)).expect("prepare");
        install(&written);
        d.wrote(&written);
        let same = d.prepare(&config(1, 10)).expect("prepare");
        let current = read_file_set(&d.layout).expect("read");
        assert_eq!(d.planned(&current, &same), Some(Kind::None));
        // A hand edit that keeps `version_info`: still not what was written.
        let eds = d.layout.eds_file("lb_web");
        let text = std::fs::read_to_string(&eds).expect("eds");
        let edited = text.replace(
            "\"load_balancing_weight\": 1",
            "\"load_balancing_weight\": 7",
        );
        assert_ne!(edited, text);
        std::fs::write(&eds, edited).expect("edit");
        let current = read_file_set(&d.layout).expect("read");
        assert_eq!(d.planned(&current, &same), None);
        install(&written);
        // A hand edit: the planner's memory no longer says what Envoy has.
        let cds = d.layout.cds_file();
        std::fs::write(&cds, "{}").expect("edit");
        let current = read_file_set(&d.layout).expect("read");
        assert_eq!(d.planned(&current, &same), None);
        assert_eq!(d.diff(&same).expect("diff").kind, ChangeKind::Other);
    }
}
