//! An exact copy of one revision's tree in a private temporary folder, for the renderer
//! programs that need files on disk. Removed when dropped.
//!
//! # Security
//! Symlinks are recreated only when they stay inside the repository; one that leaves it
//! (absolute, or `..` past the root) refuses the whole snapshot before any tool runs.

use std::path::Path;

use crate::source::tree::{EntryKind, Tree, join_within, parent};

pub struct Snapshot {
    dir: tempfile::TempDir,
}

impl Snapshot {
    /// Writes every file of `tree` (files above `max_file_bytes` are refused).
    pub fn write(tree: &dyn Tree, max_file_bytes: u64) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("tether-render-")
            .tempdir()
            .map_err(|e| format!("cannot create a private folder to render in: {e}"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot protect the render folder: {e}"))?;
        }
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        for entry in tree.list("").map_err(|e| e.to_string())? {
            let target = root.join(&entry.path);
            if let Some(folder) = target.parent() {
                std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", entry.path))?;
            }
            match entry.kind {
                EntryKind::Submodule => {}
                EntryKind::File => {
                    let bytes = tree
                        .read(&entry.path, max_file_bytes)
                        .map_err(|e| e.to_string())?;
                    std::fs::write(&target, bytes).map_err(|e| format!("{}: {e}", entry.path))?;
                }
                EntryKind::Symlink => {
                    let link = tree.read(&entry.path, 4096).map_err(|e| e.to_string())?;
                    let link = String::from_utf8_lossy(&link).into_owned();
                    if join_within(parent(&entry.path), &link).is_none() {
                        return Err(format!(
                            "{}: symlink to {link:?} leaves the repository; refusing to render",
                            entry.path
                        ));
                    }
                    std::os::unix::fs::symlink(&link, &target)
                        .map_err(|e| format!("{}: {e}", entry.path))?;
                }
            }
        }
        Ok(Self { dir })
    }

    /// The repository root inside the snapshot.
    pub fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("repo")
    }

    /// A private HOME for the renderer programs, next to the repository copy.
    pub fn home(&self) -> Result<std::path::PathBuf, String> {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        Ok(home)
    }
}

/// Checks that a path given by the user (a values file, a kustomization reference) stays
/// inside the repository: `from` is the folder it is relative to.
pub fn inside(from: &str, path: &str) -> Option<String> {
    if Path::new(path).is_absolute() {
        return None;
    }
    join_within(from, path)
}
