//! Flow files on disk: names, revisions and atomic writes.
//!
//! A flow's name is its file name without the extension. The text on disk is
//! the source of truth: the editor reads it as written (comments, ordering
//! and `${ENV}` placeholders included) and a deploy replaces it whole, by
//! writing a temporary file beside it and renaming it over the old one, so a
//! crash never leaves half a flow.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::ApiError;

/// Whether `name` is acceptable as a flow name: letters, digits, `_`, `-`
/// and `.`, not starting with `.` (no hidden files, no `..`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks a flow name from a URL.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid flow name {name:?}: use letters, digits, '_', '-' and '.'"
        )))
    }
}

/// The revision of a flow text: 16 hex digits of its 64-bit FNV-1a hash.
/// Stable across processes and versions, so a browser tab survives a
/// restart.
pub fn revision(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Where the flows live: what `runnel run` was given, each a flow file or
/// a directory of `*.yaml`/`*.yml` files.
#[derive(Clone, Debug)]
pub struct FlowFiles {
    paths: Vec<PathBuf>,
}

impl FlowFiles {
    /// Flows at `paths` (files or directories).
    pub fn new(paths: Vec<PathBuf>) -> Self {
        FlowFiles { paths }
    }

    /// The configured paths.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The file of flow `name` if it exists on disk.
    pub fn existing(&self, name: &str) -> Option<PathBuf> {
        self.paths.iter().find_map(|path| {
            if path.is_dir() {
                ["yaml", "yml"]
                    .iter()
                    .map(|ext| path.join(format!("{name}.{ext}")))
                    .find(|p| p.is_file())
            } else {
                (stem(path) == Some(name) && path.is_file()).then(|| path.clone())
            }
        })
    }

    /// Where a new flow `name` would be written: in the first directory
    /// given, if any.
    pub fn new_file(&self, name: &str) -> Option<PathBuf> {
        self.paths
            .iter()
            .find(|p| p.is_dir())
            .map(|dir| dir.join(format!("{name}.yaml")))
    }

    /// The names of every flow file on disk, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for path in &self.paths {
            if !path.is_dir() {
                if path.is_file()
                    && let Some(name) = stem(path)
                {
                    names.push(name.to_string());
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(path) else {
                continue;
            };
            names.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && runnel_engine::loader::is_flow_file(p))
                    .filter_map(|p| stem(&p).map(str::to_string)),
            );
        }
        names.retain(|n| valid_name(n));
        names.sort();
        names.dedup();
        names
    }
}

fn stem(path: &Path) -> Option<&str> {
    path.file_stem().and_then(|s| s.to_str())
}

/// Replaces `path` with `text` atomically: a temporary file in the same
/// directory, flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("flow.yaml");
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file is ours and useless now.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("payload-frequency"));
        assert!(valid_name("a_b.c"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn revisions_differ_with_text() {
        assert_eq!(revision("a"), revision("a"));
        assert_ne!(revision("a"), revision("b"));
        assert_eq!(revision("").len(), 16);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, "new # comment").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new # comment");
        let files = FlowFiles::new(vec![dir.path().to_path_buf()]);
        assert_eq!(files.names(), vec!["f".to_string()]);
        assert_eq!(files.existing("f"), Some(path));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
