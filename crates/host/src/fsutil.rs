//! Crash-safe file writes: the only way files reach Envoy's directories.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
///
/// The data goes to a dot-prefixed temp file in the same directory (Envoy
/// ignores files it is not told to read, and a rename within one file system
/// is atomic), is fsynced, renamed over `path`, and then the directory is
/// fsynced so the rename itself survives a crash. Envoy reloads only on the
/// rename, never on an in-place write.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let (mut f, tmp) = create_temp(dir, &name.to_string_lossy(), mode)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))?;
    let result = (|| {
        // The umask may have narrowed the mode given to open().
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

/// Creates a temp file beside `name` that no one else uses: one per writer
/// and write, so two writers never share one, and `create_new` (O_EXCL)
/// never follows a symlink planted at the name; a name that is taken is
/// skipped.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(File, std::path::PathBuf)> {
    let mut last = None;
    for _ in 0..16 {
        let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}-{seq}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

/// Makes every temp file name of this process unique.
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The lock file that keeps `run` and `apply` from writing one Envoy
/// directory at the same time. Envoy watches only its subdirectories.
const LOCK_FILE: &str = ".vpsie-lb.lock";

/// An exclusive lock on a directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the lock on `dir` without waiting: a second writer fails at once
/// with a message that says who to stop, instead of interleaving its files.
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::other(format!(
            "{} is in use by another vpsie-lb-agent (run or apply); stop it first",
            dir.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(io::Error::new(
            e.kind(),
            format!("lock {}: {e}", path.display()),
        )),
    }
}

/// Makes room for a Unix socket at `path`: creates its directory, and
/// removes a socket file a killed process left behind (a bind fails on it).
/// Callers know no live process owns it.
pub fn prepare_socket_path(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("remove stale {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Creates `dir` and its parents with mode 0755.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lds.json");
        write_atomic(&path, b"one", 0o600).expect("first write");
        write_atomic(&path, b"two", 0o644).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lds.json")]);
    }

    #[test]
    fn regression_write_atomic_followed_a_symlink_at_its_temp_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").expect("victim");
        // The old, fixed temp name and a guess at the new one.
        for name in [
            ".lds.json.tmp".to_owned(),
            format!(".lds.json.{}-0.tmp", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("plant");
        }
        write_atomic(&dir.path().join("lds.json"), b"new", 0o644).expect("write");
        assert_eq!(
            fs::read(&victim).expect("read"),
            b"keep",
            "the symlink was followed"
        );
        assert_eq!(fs::read(dir.path().join("lds.json")).expect("read"), b"new");
    }

    #[test]
    fn two_writers_never_share_a_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cds.json");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[i; 4096], 0o644).expect("write");
                    }
                });
            }
        });
        let got = fs::read(&path).expect("read");
        assert!(
            got.len() == 4096 && got.iter().all(|b| *b == got[0]),
            "a torn file"
        );
    }

    #[test]
    fn a_second_writer_of_one_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_dir(dir.path()).expect("first");
        let err = lock_dir(dir.path()).expect_err("second");
        assert!(
            err.to_string().contains("in use by another vpsie-lb-agent"),
            "{err}"
        );
        drop(first);
        lock_dir(dir.path()).expect("free again");
    }
}
