//! [`CommitTree`]: one commit's tree read straight from the cache's object database (no
//! checkout), as a [`Tree`] for rendering.

use std::collections::{BTreeMap, BTreeSet};

use gix::bstr::ByteSlice;

use crate::source::tree::{EntryKind, Tree, TreeEntry, TreeError};

/// The tree of one commit, read from the object database of the cache (no checkout).
pub struct CommitTree {
    repo: gix::ThreadSafeRepository,
    commit: gix::ObjectId,
    url: String,
    /// Every blob, link and submodule by path; directories in `dirs`.
    entries: BTreeMap<String, (EntryKind, gix::ObjectId)>,
    dirs: BTreeSet<String>,
}

impl std::fmt::Debug for CommitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTree")
            .field("commit", &self.commit)
            .field("url", &self.url)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl CommitTree {
    pub(super) fn new(
        repo: gix::ThreadSafeRepository,
        commit: gix::ObjectId,
        url: &str,
    ) -> Result<Self, gix::Error> {
        let local = repo.to_thread_local();
        let tree = local.find_commit(commit)?.tree()?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse().breadthfirst(&mut recorder)?;
        let mut entries = BTreeMap::new();
        let mut dirs = BTreeSet::from([String::new()]);
        for entry in recorder.records {
            let path = entry.filepath.to_str_lossy().into_owned();
            let kind = match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => {
                    dirs.insert(path);
                    continue;
                }
                gix::objs::tree::EntryKind::Blob | gix::objs::tree::EntryKind::BlobExecutable => {
                    EntryKind::File
                }
                gix::objs::tree::EntryKind::Link => EntryKind::Symlink,
                gix::objs::tree::EntryKind::Commit => EntryKind::Submodule,
            };
            entries.insert(path, (kind, entry.oid));
        }
        Ok(Self {
            repo,
            commit,
            url: url.to_string(),
            entries,
            dirs,
        })
    }

    pub fn commit(&self) -> String {
        self.commit.to_string()
    }

    /// Files, links and submodules in the tree.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Tree for CommitTree {
    fn describe(&self) -> String {
        format!("commit {} of {}", &self.commit.to_string()[..12], self.url)
    }

    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        if !self.dirs.contains(dir) {
            return Err(if self.entries.contains_key(dir) {
                TreeError::NotADirectory {
                    path: dir.to_string(),
                    tree: self.describe(),
                }
            } else {
                TreeError::NotFound {
                    path: dir.to_string(),
                    tree: self.describe(),
                }
            });
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        // BTreeMap order is byte order, as Tree::list promises.
        Ok(self
            .entries
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(path, (kind, _))| TreeEntry {
                path: path.clone(),
                kind: *kind,
            })
            .collect())
    }

    fn entry_kind(&self, path: &str) -> Option<Option<EntryKind>> {
        if self.dirs.contains(path) {
            return Some(None);
        }
        self.entries.get(path).map(|(kind, _)| Some(*kind))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let (_, id) = self.entries.get(path).ok_or_else(|| TreeError::NotFound {
            path: path.to_string(),
            tree: self.describe(),
        })?;
        let repo = self.repo.to_thread_local();
        let read_err = |reason: String| TreeError::Read {
            path: path.to_string(),
            reason,
        };
        let header = repo.find_header(*id).map_err(|e| read_err(e.to_string()))?;
        if header.size() > limit {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size: header.size(),
                limit,
            });
        }
        let mut blob = repo.find_blob(*id).map_err(|e| read_err(e.to_string()))?;
        Ok(blob.take_data())
    }
}
