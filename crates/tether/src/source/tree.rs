//! A read-only file tree at one revision: what the render stage reads.
//!
//! [`Tree`] is implemented by a Git commit (`git::CommitTree`, straight from the object
//! database, no checkout) and by a plain folder ([`DirTree`]). Paths are repository-relative
//! with `/` separators, like Git's. Start at [`Tree`].

use std::path::{Path, PathBuf};

/// What an entry of a tree is. Directories are implied by the paths below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    /// A symbolic link; [`Tree::read`] returns its target text.
    Symlink,
    /// A Git submodule (a commit of another repository): never read.
    Submodule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Repository-relative, `/`-separated, no leading `/`.
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: not found in {tree}")]
    NotFound { path: String, tree: String },
    #[error("{path}: is not a directory in {tree}")]
    NotADirectory { path: String, tree: String },
    #[error(
        "{path}: {size} bytes is above the limit of {limit} bytes per file; split it into smaller files"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
}

/// A read-only tree of files at one revision.
pub trait Tree: Send + Sync {
    /// For messages: "commit 1a2b3c4 of https://…" or "folder ./deploy".
    fn describe(&self) -> String;

    /// Every entry below `dir` ("" for the root), recursively, sorted by path (byte order).
    /// An error if `dir` does not exist or is not a directory.
    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError>;

    /// The kind of the entry at `path`, `None` when absent; directories are `Some(None)`.
    fn entry_kind(&self, path: &str) -> Option<Option<EntryKind>>;

    /// The contents of a file (or the target of a symlink), refused above `limit` bytes.
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError>;

    /// The id of the entry at `path` ("" is the root) in a tree whose entries have ids that
    /// name their contents (a Git commit's: equal ids, equal contents, a directory's with
    /// everything below it): `Some(None)` when nothing is there. `None`: this tree has no
    /// such ids (a folder on disk).
    fn entry_id(&self, _path: &str) -> Option<Option<String>> {
        None
    }
}

/// Joins `base` (a directory) and a relative `target`, resolving `.` and `..`.
/// `None` when the result would leave the root, or when `target` is absolute.
pub fn join_within(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Normalises a user-given path inside a repository (`./apps//web/` → `apps/web`).
/// `None` when it leaves the repository.
pub fn normalize(path: &str) -> Option<String> {
    join_within("", path.trim_start_matches("./"))
}

/// The parent directory of a repository path ("" for top-level entries).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// A plain folder on disk, for rendering without Git. Its root is the repository root:
/// nothing outside it is read, not even through a symlink.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, TreeError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|err| TreeError::Read {
            path: root.display().to_string(),
            reason: err.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(TreeError::NotADirectory {
                path: root.display().to_string(),
                tree: "the local file system".into(),
            });
        }
        Ok(Self { root })
    }

    fn full(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }

    /// Whether a folder on the way to `path` (below the root) is a symlink: the path then
    /// reads as if absent, since the link may lead out of the root (a Git tree cannot
    /// hold a path through a link either).
    fn through_symlink(&self, path: &str) -> bool {
        let mut prefix = self.root.clone();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        parts
            .iter()
            .take(parts.len().saturating_sub(1))
            .any(|part| {
                prefix.push(part);
                std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink())
            })
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<TreeEntry>) -> Result<(), TreeError> {
        let read_err = |err: std::io::Error| TreeError::Read {
            path: rel.to_string(),
            reason: err.to_string(),
        };
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                let name = entry.file_name().to_string_lossy().into_owned();
                return Err(TreeError::Read {
                    path: if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    },
                    reason: "the file name is not valid UTF-8; rename it".into(),
                });
            };
            if name == ".git" {
                continue;
            }
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let file_type = entry.file_type().map_err(read_err)?;
            if file_type.is_symlink() {
                out.push(TreeEntry {
                    path,
                    kind: EntryKind::Symlink,
                });
            } else if file_type.is_dir() {
                self.walk(&entry.path(), &path, out)?;
            } else if file_type.is_file() {
                out.push(TreeEntry {
                    path,
                    kind: EntryKind::File,
                });
            }
        }
        Ok(())
    }
}

impl Tree for DirTree {
    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }

    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        match self.entry_kind(dir) {
            None => {
                return Err(TreeError::NotFound {
                    path: dir.to_string(),
                    tree: self.describe(),
                });
            }
            Some(Some(_)) => {
                return Err(TreeError::NotADirectory {
                    path: dir.to_string(),
                    tree: self.describe(),
                });
            }
            Some(None) => {}
        }
        let mut out = Vec::new();
        self.walk(&self.full(dir), dir, &mut out)?;
        out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(out)
    }

    fn entry_kind(&self, path: &str) -> Option<Option<EntryKind>> {
        if self.through_symlink(path) {
            return None;
        }
        let meta = std::fs::symlink_metadata(self.full(path)).ok()?;
        Some(if meta.file_type().is_symlink() {
            Some(EntryKind::Symlink)
        } else if meta.is_dir() {
            None
        } else {
            Some(EntryKind::File)
        })
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let full = self.full(path);
        let read_err = |err: std::io::Error| TreeError::Read {
            path: path.to_string(),
            reason: err.to_string(),
        };
        if self.through_symlink(path) {
            return Err(TreeError::Read {
                path: path.to_string(),
                reason: "a folder on its path is a symlink; tether follows no link to a folder"
                    .into(),
            });
        }
        let meta = std::fs::symlink_metadata(&full).map_err(read_err)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(read_err)?;
            return Ok(target.to_string_lossy().into_owned().into_bytes());
        }
        if meta.len() > limit {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size: meta.len(),
                limit,
            });
        }
        std::fs::read(&full).map_err(read_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_within_stays_inside_the_root() {
        assert_eq!(
            join_within("apps/web", "../db/x.yaml").as_deref(),
            Some("apps/db/x.yaml")
        );
        assert_eq!(join_within("apps", "./a/./b").as_deref(), Some("apps/a/b"));
        assert_eq!(join_within("apps", "../../etc/passwd"), None);
        assert_eq!(join_within("", ".."), None);
        assert_eq!(join_within("apps", "/etc/passwd"), None);
    }

    #[test]
    fn a_path_through_a_linked_folder_reads_as_absent() {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("apps")).expect("mkdir");
        std::fs::write(dir.path().join("secret.txt"), "outside").expect("write");
        std::fs::write(root.join("apps/a.yaml"), "inside").expect("write");
        std::os::unix::fs::symlink(dir.path(), root.join("out")).expect("link");
        let tree = DirTree::new(&root).expect("tree");
        assert_eq!(tree.entry_kind("out/secret.txt"), None);
        assert!(tree.read("out/secret.txt", 1024).is_err());
        assert_eq!(tree.entry_kind("out"), Some(Some(EntryKind::Symlink)));
        assert_eq!(tree.read("apps/a.yaml", 1024).expect("read"), b"inside");
    }

    #[test]
    fn normalize_cleans_user_paths() {
        assert_eq!(normalize("./apps//web/").as_deref(), Some("apps/web"));
        assert_eq!(normalize(".").as_deref(), Some(""));
        assert_eq!(normalize("../x"), None);
        assert_eq!(parent("a/b/c.yaml"), "a/b");
        assert_eq!(parent("c.yaml"), "");
    }
}
