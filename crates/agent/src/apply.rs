//! Applies a plan to a running Envoy, verifies each step through the admin
//! API, and rolls back to what Envoy had when a step is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use vpsie_lb_envoy::{FileKind, FilesLayout, RenderedFile};

use crate::envoy_admin::{EnvoyAdmin, Subscription};
use crate::envoy_files::{FileSet, Plan, plan, read_file_set};
use crate::fsutil;

/// How often verification polls the admin API.
const POLL: Duration = Duration::from_millis(10);

pub use crate::pass::{ApplyError, Outcome};

/// Moves one Envoy's dynamic files from state to state.
pub struct Applier {
    layout: FilesLayout,
    admin: EnvoyAdmin,
    timeout: Duration,
    /// Time spent waiting for Envoy to confirm steps, since the last take.
    verify_time: std::cell::Cell<Duration>,
}

impl Applier {
    /// An applier for the files under `layout`, confirmed through `admin`,
    /// waiting at most `timeout` for each step.
    pub fn new(layout: FilesLayout, admin: EnvoyAdmin, timeout: Duration) -> Self {
        Self {
            layout,
            admin,
            timeout,
            verify_time: std::cell::Cell::new(Duration::ZERO),
        }
    }

    /// Time spent waiting for Envoy's confirmations since the last call.
    pub fn take_verify_time(&self) -> Duration {
        self.verify_time.replace(Duration::ZERO)
    }

    /// The admin client this applier confirms through.
    pub fn admin(&self) -> &EnvoyAdmin {
        &self.admin
    }

    /// Applies `next`. On a refusal, restores the files Envoy had before and
    /// waits until Envoy confirms them; `Err` means even that failed.
    pub fn apply(&self, next: &FileSet) -> Result<Outcome, ApplyError> {
        self.apply_over(&read_file_set(&self.layout)?, next)
    }

    /// Like [`Applier::apply`], when the caller has just read the current
    /// files (`previous`) itself: a pass at 1,000 load balancers read 13 MB
    /// of files twice.
    pub fn apply_over(&self, previous: &FileSet, next: &FileSet) -> Result<Outcome, ApplyError> {
        let forward = plan(&self.layout, previous, next)?;
        if forward.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        match self.execute(previous, &forward) {
            Ok(()) => Ok(Outcome::Applied),
            Err(cause) => {
                // What Envoy serves is not known if any part of the undo
                // fails: the same error as an xDS undo, retried after a
                // backoff.
                self.undo(previous).map_err(|undone| ApplyError::Undo {
                    undo: "restoring the previous files".into(),
                    why: undone.to_string(),
                    failed: cause.to_string(),
                })?;
                Ok(if cause.is_retryable() {
                    Outcome::Interrupted(cause)
                } else {
                    Outcome::RolledBack(cause)
                })
            }
        }
    }

    /// Puts `previous` back after a step failed, and waits for Envoy to
    /// confirm it.
    fn undo(&self, previous: &FileSet) -> Result<(), ApplyError> {
        let now = read_file_set(&self.layout)?;
        let back = plan(&self.layout, &now, previous)?;
        self.execute(&now, &back)
    }

    fn execute(&self, current: &FileSet, p: &Plan) -> Result<(), ApplyError> {
        // Only subscriptions that already exist can confirm; a new one reads
        // its file when its cluster or listener arrives, so new files are
        // only written. At a cold start there are a thousand of them: written
        // on a few threads, their fsyncs overlap.
        self.write_per_resource(current, &p.dependencies)?;
        if let Some(f) = &p.clusters_before {
            self.write_and_confirm(f, Some(&FileKind::Clusters.stats_prefix()))?;
        }
        self.write_per_resource(current, &p.routes)?;
        if let Some(f) = &p.listeners {
            self.write_and_confirm(f, Some(&FileKind::Listeners.stats_prefix()))?;
            let errors = self.admin.listener_errors()?;
            if !errors.is_empty() {
                return Err(ApplyError::Rejected {
                    what: "listeners".into(),
                    reason: describe(&errors),
                });
            }
        }
        if let Some(f) = &p.clusters_after {
            self.write_and_confirm(f, Some(&FileKind::Clusters.stats_prefix()))?;
        }
        for dir in &p.prune {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// Writes per-resource files: those Envoy already reads one by one,
    /// each confirmed; new ones all at once.
    fn write_per_resource(
        &self,
        current: &FileSet,
        files: &[RenderedFile],
    ) -> Result<(), ApplyError> {
        let (existing, fresh): (Vec<&RenderedFile>, Vec<&RenderedFile>) =
            files.iter().partition(|f| current.contains_key(&f.path));
        write_files_in_parallel(&fresh)?;
        for f in existing {
            let confirm = self.subscription_of(&f.path);
            self.write_and_confirm(f, confirm.as_deref())?;
        }
        Ok(())
    }

    /// The stats prefix of the EDS, SDS or RDS subscription that reads `path`.
    fn subscription_of(&self, path: &Path) -> Option<String> {
        self.layout
            .kind_of(path)
            .filter(FileKind::is_per_resource)
            .map(|k| k.stats_prefix())
    }

    /// Writes `f` and, when `prefix` names its subscription, waits until
    /// Envoy has attempted the new file and reports its version.
    fn write_and_confirm(&self, f: &RenderedFile, prefix: Option<&str>) -> Result<(), ApplyError> {
        let before = match prefix {
            Some(p) => Some(self.admin.subscription(p)?),
            None => None,
        };
        let dir = f.path.parent().unwrap_or(self.layout.root());
        fsutil::ensure_dir(dir)?;
        fsutil::write_atomic(&f.path, f.contents.as_bytes(), 0o644)?;
        let (Some(prefix), Some(before)) = (prefix, before) else {
            return Ok(());
        };
        self.confirm(prefix, &before, &f.version)
    }

    fn confirm(
        &self,
        prefix: &str,
        before: &Subscription,
        version: &str,
    ) -> Result<(), ApplyError> {
        let deadline = Instant::now() + self.timeout;
        let started = Instant::now();
        let result = self.confirm_until(prefix, before, version, deadline);
        self.verify_time
            .set(self.verify_time.get() + started.elapsed());
        result
    }

    fn confirm_until(
        &self,
        prefix: &str,
        before: &Subscription,
        version: &str,
        deadline: Instant,
    ) -> Result<(), ApplyError> {
        loop {
            let now = self.admin.subscription(prefix)?;
            if now.rejected > before.rejected || now.failures > before.failures {
                let listeners = self.admin.listener_errors().unwrap_or_default();
                return Err(ApplyError::Rejected {
                    what: prefix.to_owned(),
                    reason: if listeners.is_empty() {
                        format!("{prefix} update rejected (see envoy's log)")
                    } else {
                        describe(&listeners)
                    },
                });
            }
            // Attempts must move too: a rollback can restore the version Envoy
            // still reports, and that alone says nothing about the new file.
            if now.attempts > before.attempts && now.version == version {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApplyError::Timeout {
                    what: prefix.to_owned(),
                    version: version.to_owned(),
                    timeout: self.timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Writes `files` (each atomically, as always) on up to 8 threads.
fn write_files_in_parallel(files: &[&RenderedFile]) -> std::io::Result<()> {
    const WRITERS: usize = 8;
    if files.is_empty() {
        return Ok(());
    }
    let per_thread = files.len().div_ceil(WRITERS);
    std::thread::scope(|scope| {
        let writers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> std::io::Result<()> {
                    for f in chunk {
                        if let Some(dir) = f.path.parent() {
                            fsutil::ensure_dir(dir)?;
                        }
                        fsutil::write_atomic(&f.path, f.contents.as_bytes(), 0o644)?;
                    }
                    Ok(())
                })
            })
            .collect();
        writers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("file writer thread panicked")))
        })
    })
}

fn describe(errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(name, why)| format!("listener {name}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}
