//! An exact copy of one revision's tree in a private temporary folder, for the renderer
//! programs that need files on disk. Removed when dropped.
//!
//! # Security
//! Symlinks are recreated only when they stay inside the repository. One that leaves it
//! (absolute, or `..` past the root) inside the folder being rendered refuses the
//! snapshot before any tool runs; elsewhere in the repository it is left out, as are files
//! over the size limit there, so that one folder's fault does not stop another folder's
//! render (a render that needed them fails, and its error names them). The whole copy is
//! bounded too ([`MAX_TOTAL_BYTES`]).

use std::path::Path;

use super::sops;
use crate::source::tree::{EntryKind, Tree, join_within, parent};

/// The most a snapshot writes: a render's input, all files together.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

pub struct Snapshot {
    dir: tempfile::TempDir,
    /// Files of other folders left out of the copy, and why.
    left_out: Vec<String>,
    /// SOPS-encrypted files written decrypted: the renderer's output is not cached.
    decrypted: usize,
    /// SOPS-encrypted files copied as they are, and why they were not decrypted.
    sealed: Vec<String>,
}

impl Snapshot {
    /// Writes every file of `tree` for a render of folder `within`: there, a file above
    /// `max_file_bytes` or a symlink leaving the repository is an error; elsewhere it is
    /// left out (see [`Self::explain`]). SOPS-encrypted files in `scope` (folders and files
    /// the render reads: `within`, a kustomization's bases and inputs, values files) are
    /// written decrypted with `keys`; one that cannot be is copied as it is and named by
    /// [`Self::refuse_sealed`] if the output shows it. Others are copied as they are.
    pub fn write(
        tree: &dyn Tree,
        within: &str,
        max_file_bytes: u64,
        keys: &sops::Keys,
        scope: &[String],
    ) -> Result<Self, String> {
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
        let inside = |path: &str| {
            within.is_empty() || path == within || path.starts_with(&format!("{within}/"))
        };
        let mut copy = Self {
            dir,
            left_out: Vec::new(),
            decrypted: 0,
            sealed: Vec::new(),
        };
        let mut total = 0u64;
        for entry in tree.list("").map_err(|e| e.to_string())? {
            let target = root.join(&entry.path);
            if let Some(folder) = target.parent() {
                std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", entry.path))?;
            }
            match entry.kind {
                EntryKind::Submodule => {}
                EntryKind::File => {
                    let bytes = match tree.read(&entry.path, max_file_bytes) {
                        Ok(bytes) => bytes,
                        Err(e) if inside(&entry.path) => return Err(e.to_string()),
                        Err(e) => {
                            copy.left_out.push(format!("{} ({e})", entry.path));
                            continue;
                        }
                    };
                    total += bytes.len() as u64;
                    if total > MAX_TOTAL_BYTES {
                        return Err(format!(
                            "the repository's files add up to more than {} MiB; tether copies at most that to render a folder",
                            MAX_TOTAL_BYTES >> 20
                        ));
                    }
                    let bytes = if in_scope(scope, &entry.path) {
                        copy.decrypt(&entry.path, bytes, keys)
                    } else {
                        bytes
                    };
                    std::fs::write(&target, bytes).map_err(|e| format!("{}: {e}", entry.path))?;
                }
                EntryKind::Symlink => {
                    copy.link(tree, &entry.path, &target, inside(&entry.path))?;
                }
            }
        }
        Ok(copy)
    }

    /// Recreates the symlink at `path` when it stays inside the repository; one that leaves
    /// it is an error inside the folder rendered (`inside`), else left out.
    fn link(
        &mut self,
        tree: &dyn Tree,
        path: &str,
        target: &Path,
        inside: bool,
    ) -> Result<(), String> {
        let link = tree.read(path, 4096).map_err(|e| e.to_string())?;
        let link = String::from_utf8_lossy(&link).into_owned();
        if join_within(parent(path), &link).is_none() {
            if inside {
                return Err(format!(
                    "{path}: symlink to {link:?} leaves the repository; refusing to render"
                ));
            }
            self.left_out.push(format!(
                "{path} (a symlink to {link:?}, which leaves the repository)"
            ));
            return Ok(());
        }
        std::os::unix::fs::symlink(&link, target).map_err(|e| format!("{path}: {e}"))
    }

    /// The file's bytes as they are written: decrypted when it is SOPS-encrypted and
    /// `keys` open it, else as they are (recorded for [`Self::refuse_sealed`]).
    fn decrypt(&mut self, path: &str, bytes: Vec<u8>, keys: &sops::Keys) -> Vec<u8> {
        match sops::file::decrypt_file(path, &bytes, keys) {
            Ok(None) => bytes,
            Ok(Some(plain)) => {
                self.decrypted += 1;
                plain
            }
            Err(e) => {
                self.sealed.push(format!("{path}: {e}"));
                bytes
            }
        }
    }

    /// Whether a file was written decrypted (then the output holds plaintext Secrets and
    /// is not written to the render cache).
    pub fn decrypted_any(&self) -> bool {
        self.decrypted > 0
    }

    /// Refuses a renderer's output that still holds SOPS-encrypted values (as they are, or
    /// base64-encoded as a `secretGenerator` writes them), naming the encrypted files that
    /// were not decrypted and why: applied, they would be ciphertext in the cluster.
    pub fn refuse_sealed(&self, output: &[u8]) -> Result<(), String> {
        if !sops::file::shows_ciphertext(output) {
            return Ok(());
        }
        if self.sealed.is_empty() {
            return Err("the output holds SOPS-encrypted values that tether does not decrypt (it reads sops's YAML, JSON, dotenv and binary files)".into());
        }
        let shown: Vec<&str> = self.sealed.iter().take(5).map(String::as_str).collect();
        Err(format!(
            "the output holds SOPS-encrypted values: {}{}",
            shown.join("; "),
            if self.sealed.len() > 5 { "; …" } else { "" }
        ))
    }

    /// A renderer's error, with what was left out of the copy (which the render may have
    /// needed).
    pub fn explain(&self, error: String) -> String {
        if self.left_out.is_empty() {
            return error;
        }
        let shown: Vec<&str> = self.left_out.iter().take(5).map(String::as_str).collect();
        format!(
            "{error}\n  (left out of the render's copy of the repository: {}{})",
            shown.join(", "),
            if self.left_out.len() > 5 { ", …" } else { "" }
        )
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

/// Whether `path` is one of `scope` or below one of its folders.
fn in_scope(scope: &[String], path: &str) -> bool {
    scope.iter().any(|s| {
        s.is_empty()
            || path == s
            || path
                .strip_prefix(s.as_str())
                .is_some_and(|r| r.starts_with('/'))
    })
}

/// Checks that a path given by the user (a values file, a kustomization reference) stays
/// inside the repository: `from` is the folder it is relative to.
pub fn inside(from: &str, path: &str) -> Option<String> {
    if Path::new(path).is_absolute() {
        return None;
    }
    join_within(from, path)
}
