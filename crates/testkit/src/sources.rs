//! Reading the workspace's own Rust sources as text, for the tests that hold
//! its structure (module circles, pure crates) to account.

use std::path::{Path, PathBuf};

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every product `.rs` file under `dir`: not the files of unit tests, which
/// by this workspace's convention are named `tests.rs` or `*_tests.rs`.
pub fn product_sources(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".rs") && !name.ends_with("tests.rs")
        })
        .collect()
}

/// The code of a source file without comment lines and without its
/// trailing unit tests (`#[cfg(test)] mod tests`).
pub fn product_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read");
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}
