//! Last-known-good: the documents Envoy last confirmed and the files they
//! rendered to, kept together in one directory that is swapped as a whole.
//!
//! ```text
//! state_dir/last-known-good -> .lkg-<hash>     a symlink, replaced by rename
//! state_dir/.lkg-<hash>/desired.json            the documents, by load-balancer id
//! state_dir/.lkg-<hash>/confirmed.json          the listeners Envoy confirmed (`ha check`)
//! state_dir/.lkg-<hash>/lds/lds.json, cds/...   the files Envoy confirmed
//! ```
//!
//! A new version is built and fsynced in a directory of its own, then the
//! symlink is replaced by one `rename`: a crash or a full disk at any moment
//! leaves either the old version or the new one, never the documents of one
//! and the files of the other.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fsutil;

/// The documents Envoy confirmed, by load-balancer id.
pub type Docs = BTreeMap<String, Value>;

pub use vpsie_lb_core::version::{docs_version, short_hash};

/// The link that names the current version.
const LINK: &str = "last-known-good";
/// The documents inside a version.
const DESIRED: &str = "desired.json";
/// The listeners of a version, for `ha check`; readable by its user.
const CONFIRMED: &str = "confirmed.json";
/// Where versions 0.1 kept the documents, beside a plain `last-known-good/`.
const LEGACY_DESIRED: &str = "desired.json";

/// The state is there but cannot be trusted; nothing may be concluded from it.
#[derive(Debug, thiserror::Error)]
#[error("last-known-good in {dir}: {reason}")]
pub struct StateError {
    /// The state directory.
    pub dir: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads the last-known-good documents. `Ok(None)` means there is no state
/// at all (a new machine); a state that exists but is incomplete or
/// unreadable is an error, never "nothing to serve".
pub fn load(state_dir: &Path) -> Result<Option<Docs>, StateError> {
    let fail = |reason: String| StateError {
        dir: state_dir.display().to_string(),
        reason,
    };
    let link = state_dir.join(LINK);
    let legacy = state_dir.join(LEGACY_DESIRED);
    let desired = match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => link.join(DESIRED),
        // The 0.1 layout: the documents beside the files.
        Ok(_) => legacy,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !legacy.exists() {
                return Ok(None);
            }
            legacy
        }
        Err(e) => return Err(fail(format!("{}: {e}", link.display()))),
    };
    let bytes = std::fs::read(&desired).map_err(|e| {
        fail(format!(
            "{}: {e}; the files envoy confirmed are there but not the documents behind them",
            desired.display()
        ))
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| fail(format!("{} is corrupt: {e}", desired.display())))
}

/// What a confirmed config leaves to save beside its documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsaved {
    /// What Envoy was handed (relative paths and contents, from the delivery).
    pub files: Vec<(PathBuf, String)>,
    /// The names of the listeners Envoy confirmed.
    pub listeners: Vec<String>,
}

/// What `ha check` reads of the current version: no documents, no secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confirmed {
    /// The version: a hash of every document it holds, the one its
    /// directory is named by.
    pub version: String,
    /// The listeners Envoy confirmed.
    pub listeners: Vec<String>,
}

/// The current version's summary. `Ok(None)`: nothing was ever confirmed
/// here (or by an agent older than `confirmed.json`).
pub fn confirmed(state_dir: &Path) -> Result<Option<Confirmed>, StateError> {
    let path = state_dir.join(LINK).join(CONFIRMED);
    let fail = |reason: String| StateError {
        dir: state_dir.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| fail(format!("{} is corrupt: {e}", path.display())))
}

/// Saves `docs` and what Envoy was handed for them as the new
/// last-known-good, atomically. Saving what is already saved does no IO
/// beyond reading the link.
pub fn save(state_dir: &Path, docs: &Docs, unsaved: &Unsaved) -> io::Result<()> {
    let files = &unsaved.files;
    let json = docs_json(docs)?;
    let name = format!(".lkg-{}", short_hash(&json));
    let link = state_dir.join(LINK);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&name))
        && std::fs::read(state_dir.join(&name).join(DESIRED)).is_ok_and(|b| b == json)
    {
        // A version saved before `confirmed.json` existed gets one now, in
        // place: rebuilding the version would remove the directory the
        // link points at.
        let path = state_dir.join(&name).join(CONFIRMED);
        if !path.exists() {
            fsutil::write_atomic(&path, &summary_json(&json, unsaved)?, 0o644)?;
        }
        return Ok(());
    }
    fsutil::ensure_dir(state_dir)?;
    let staging = state_dir.join(format!("{name}.tmp"));
    remove_dir_if_present(&staging)?;
    // A file the version before holds unchanged is linked, not written and
    // synced again: at 100 load balancers of 50 routes a full copy cost
    // half a second per change. Files are only ever replaced, never edited,
    // so a link can never see a later write.
    let previous = std::fs::read_link(&link).ok().map(|t| state_dir.join(t));
    let mut linked_dirs = std::collections::BTreeSet::new();
    for (rel, contents) in files {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(io::Error::other(format!(
                "{} is not a path inside the state",
                rel.display()
            )));
        }
        let dest = staging.join(rel);
        let parent = dest.parent().unwrap_or(&staging).to_path_buf();
        fsutil::ensure_dir(&parent)?;
        let same = previous
            .as_ref()
            .map(|p| p.join(rel))
            .filter(|old| std::fs::read(old).is_ok_and(|b| b == contents.as_bytes()));
        match same {
            Some(old) => {
                std::fs::hard_link(&old, &dest)?;
                linked_dirs.insert(parent);
            }
            None => fsutil::write_atomic(&dest, contents.as_bytes(), 0o644)?,
        }
    }
    for dir in linked_dirs {
        std::fs::File::open(dir)?.sync_all()?;
    }
    fsutil::ensure_dir(&staging)?;
    fsutil::write_atomic(
        &staging.join(CONFIRMED),
        &summary_json(&json, unsaved)?,
        0o644,
    )?;
    fsutil::write_atomic(&staging.join(DESIRED), &json, 0o600)?;
    let version = state_dir.join(&name);
    remove_dir_if_present(&version)?;
    std::fs::rename(&staging, &version)?;
    swap_link(state_dir, &name)?;
    remove_other_versions(state_dir, &name);
    Ok(())
}

/// The bytes a version's documents are saved as, and hashed for its name.
fn docs_json(docs: &Docs) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(docs).map_err(io::Error::other)
}

/// `confirmed.json` for the documents `docs_json`.
fn summary_json(docs_json: &[u8], unsaved: &Unsaved) -> io::Result<Vec<u8>> {
    let summary = Confirmed {
        version: short_hash(docs_json),
        listeners: unsaved.listeners.clone(),
    };
    serde_json::to_vec_pretty(&summary).map_err(io::Error::other)
}

/// Points `last-known-good` at `name` with one rename.
fn swap_link(state_dir: &Path, name: &str) -> io::Result<()> {
    let link = state_dir.join(LINK);
    let tmp = state_dir.join(format!(".{LINK}.link.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    // A 0.1 state has a plain directory here, which rename cannot replace:
    // move it aside first (a crash in between leaves the legacy documents,
    // which `load` still reads).
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
        std::fs::rename(&link, state_dir.join(".lkg-legacy"))?;
    }
    std::fs::rename(&tmp, &link)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    // The documents now live inside the version; the legacy copy would
    // otherwise be read if the link were ever lost.
    let _ = std::fs::remove_file(state_dir.join(LEGACY_DESIRED));
    Ok(())
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes versions and half-built staging directories other than `keep`.
/// Best effort: a leftover costs disk, not correctness.
fn remove_other_versions(state_dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".lkg-") && name != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Where the confirmed files of the current version are, if there is one.
pub fn files_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(LINK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_version_is_the_name_last_known_good_is_saved_under() {
        let docs: Docs = [(
            "web".to_owned(),
            serde_json::json!({"id": "web", "port": 80}),
        )]
        .into();
        let json = docs_json(&docs).expect("json");
        assert_eq!(docs_version(&docs), short_hash(&json));
    }
    use serde_json::json;

    fn files(lds: &str) -> Unsaved {
        Unsaved {
            files: vec![(PathBuf::from("lds/lds.json"), lds.to_owned())],
            listeners: vec![format!("lb_{lds}")],
        }
    }

    fn docs(port: u16) -> Docs {
        [("web".to_owned(), json!({"id": "web", "port": port}))]
            .into_iter()
            .collect()
    }

    #[test]
    fn save_then_load_gives_the_documents_and_keeps_the_files_beside_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("empty state").is_none());
        save(dir.path(), &docs(80), &files("one")).expect("save");
        save(dir.path(), &docs(81), &files("two")).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(docs(81)));
        let lds = files_dir(dir.path()).join("lds/lds.json");
        assert_eq!(std::fs::read_to_string(lds).expect("lds"), "two");
        let versions: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".lkg-"))
            .collect();
        assert_eq!(versions.len(), 1, "old versions are removed: {versions:?}");
    }

    #[test]
    fn the_confirmed_listeners_and_version_are_readable_without_the_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(confirmed(dir.path()).expect("nothing"), None);
        save(dir.path(), &docs(80), &files("one")).expect("save");
        let c = confirmed(dir.path()).expect("read").expect("some");
        assert_eq!(c.listeners, vec!["lb_one"]);
        let link = std::fs::read_link(dir.path().join(LINK)).expect("link");
        assert_eq!(link.to_str(), Some(format!(".lkg-{}", c.version).as_str()));
        assert_eq!(c.version.len(), 12);
        // Only the documents are private; the summary is for `ha check`.
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(files_dir(dir.path()).join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode(CONFIRMED), mode(DESIRED)), (0o644, 0o600));
    }

    #[test]
    fn a_corrupt_confirmed_json_is_an_error_never_nothing_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &docs(80), &files("one")).expect("save");
        std::fs::write(files_dir(dir.path()).join(CONFIRMED), "{\"listeners\": [")
            .expect("corrupt");
        let err = confirmed(dir.path()).expect_err("corrupt");
        assert!(
            err.to_string().contains("confirmed.json is corrupt"),
            "{err}"
        );
    }

    #[test]
    fn regression_a_version_saved_before_confirmed_json_got_none_until_the_docs_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &docs(80), &files("one")).expect("save");
        std::fs::remove_file(files_dir(dir.path()).join(CONFIRMED)).expect("remove");
        save(dir.path(), &docs(80), &files("one")).expect("save again");
        assert!(confirmed(dir.path()).expect("read").is_some());
    }

    #[test]
    fn an_unchanged_file_is_linked_from_the_version_before_not_written_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let two = |lds: &str| {
            let mut f = files(lds);
            f.files
                .push((PathBuf::from("rds/lb_web/rds.json"), "routes".to_owned()));
            f
        };
        save(dir.path(), &docs(80), &two("one")).expect("save");
        let rds = || files_dir(dir.path()).join("rds/lb_web/rds.json");
        let inode = std::fs::metadata(rds()).expect("rds").ino();
        save(dir.path(), &docs(81), &two("two")).expect("save");
        assert_eq!(std::fs::metadata(rds()).expect("rds").ino(), inode);
        assert_eq!(std::fs::read_to_string(rds()).expect("rds"), "routes");
        let lds = files_dir(dir.path()).join("lds/lds.json");
        assert_eq!(std::fs::read_to_string(lds).expect("lds"), "two");
    }

    #[test]
    fn regression_a_lost_desired_json_turned_into_serve_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &docs(80), &files("one")).expect("save");
        std::fs::remove_file(files_dir(dir.path()).join(DESIRED)).expect("remove");
        let err = load(dir.path()).expect_err("documents gone");
        assert!(err.to_string().contains("desired.json"), "{err}");

        std::fs::write(files_dir(dir.path()).join(DESIRED), "{not json").expect("corrupt");
        let err = load(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("is corrupt"), "{err}");

        // The 0.1 layout with its documents gone is an error too.
        let legacy = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(legacy.path().join(LINK)).expect("legacy dir");
        assert!(load(legacy.path()).is_err());
    }

    #[test]
    fn the_legacy_layout_is_read_and_replaced_on_the_next_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("last-known-good/lds")).expect("legacy");
        std::fs::write(
            dir.path().join(LEGACY_DESIRED),
            serde_json::to_vec(&docs(80)).expect("json"),
        )
        .expect("legacy docs");
        assert_eq!(load(dir.path()).expect("legacy"), Some(docs(80)));
        save(dir.path(), &docs(81), &files("new")).expect("save");
        assert_eq!(load(dir.path()).expect("new"), Some(docs(81)));
        assert!(!dir.path().join(LEGACY_DESIRED).exists());
        assert!(!dir.path().join(".lkg-legacy").exists());
    }

    #[test]
    fn a_save_that_fails_halfway_leaves_the_previous_version_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        save(dir.path(), &docs(80), &files("one")).expect("save");
        // A path outside the state fails the save after the staging began.
        let mut bad = files("two");
        bad.files
            .push((PathBuf::from("../elsewhere/x.json"), "x".into()));
        assert!(save(dir.path(), &docs(81), &bad).is_err());
        assert_eq!(load(dir.path()).expect("load"), Some(docs(80)));
        let lds = files_dir(dir.path()).join("lds/lds.json");
        assert_eq!(std::fs::read_to_string(lds).expect("lds"), "one");
    }
}
