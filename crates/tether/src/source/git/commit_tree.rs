//! [`CommitTree`]: one commit's tree read straight from the cache's object database (no
//! checkout), as a [`Tree`] for rendering.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use gix::bstr::ByteSlice;

use crate::source::tree::{EntryKind, Tree, TreeEntry, TreeError};

/// The tree of one commit, read from the object database of the cache (no checkout).
pub struct CommitTree {
    repo: gix::ThreadSafeRepository,
    commit: gix::ObjectId,
    url: String,
    index: Arc<Index>,
}

/// Every path of one commit's tree with its object id: blobs, links and submodules in
/// `entries`, directories in `dirs` ("" is the root). The same for every fetch of that
/// commit, so it is read once and shared ([`Indexes`]).
struct Index {
    entries: BTreeMap<String, (EntryKind, gix::ObjectId)>,
    dirs: BTreeMap<String, gix::ObjectId>,
}

/// The indexes of the commits read last, shared by the fetches of one owner (through
/// [`super::Listings`]): many Applications following one repository read the same commit,
/// and its index (100,000 paths in a repository of 10,000 folders) is made once.
#[derive(Default)]
pub struct Indexes {
    last: Mutex<VecDeque<(gix::ObjectId, Arc<Index>)>>,
}

/// How many commits' indexes are kept.
const KEPT_INDEXES: usize = 2;

impl Indexes {
    /// The index of `commit`, made from `repo` unless it is kept.
    fn of(&self, repo: &gix::Repository, commit: gix::ObjectId) -> Result<Arc<Index>, gix::Error> {
        if let Some((_, index)) = self.last().iter().find(|(id, _)| *id == commit) {
            return Ok(index.clone());
        }
        let index = Arc::new(Index::read(repo, commit)?);
        let mut last = self.last();
        last.retain(|(id, _)| *id != commit);
        last.push_front((commit, index.clone()));
        last.truncate(KEPT_INDEXES);
        Ok(index)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, VecDeque<(gix::ObjectId, Arc<Index>)>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Index {
    fn read(repo: &gix::Repository, commit: gix::ObjectId) -> Result<Self, gix::Error> {
        let tree = repo.find_commit(commit)?.tree()?;
        let mut dirs = BTreeMap::from([(String::new(), tree.id)]);
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse().breadthfirst(&mut recorder)?;
        let mut entries = BTreeMap::new();
        for entry in recorder.records {
            let path = entry.filepath.to_str_lossy().into_owned();
            let kind = match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => {
                    dirs.insert(path, entry.oid);
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
        Ok(Self { entries, dirs })
    }
}

impl std::fmt::Debug for CommitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTree")
            .field("commit", &self.commit)
            .field("url", &self.url)
            .field("entries", &self.index.entries.len())
            .finish_non_exhaustive()
    }
}

impl CommitTree {
    /// The tree of `commit` in `repo`, its index taken from `indexes` when kept there.
    pub(super) fn new(
        repo: gix::ThreadSafeRepository,
        commit: gix::ObjectId,
        url: &str,
        indexes: &Indexes,
    ) -> Result<Self, gix::Error> {
        let index = indexes.of(&repo.to_thread_local(), commit)?;
        Ok(Self {
            repo,
            commit,
            url: url.to_string(),
            index,
        })
    }

    pub fn commit(&self) -> String {
        self.commit.to_string()
    }

    /// Files, links and submodules in the tree.
    pub fn len(&self) -> usize {
        self.index.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }
}

impl Tree for CommitTree {
    fn describe(&self) -> String {
        format!("commit {} of {}", &self.commit.to_string()[..12], self.url)
    }

    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        if !self.index.dirs.contains_key(dir) {
            return Err(if self.index.entries.contains_key(dir) {
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
            .index
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
        if self.index.dirs.contains_key(path) {
            return Some(None);
        }
        self.index.entries.get(path).map(|(kind, _)| Some(*kind))
    }

    fn entry_id(&self, path: &str) -> Option<Option<String>> {
        let id =
            (self.index.dirs.get(path)).or_else(|| self.index.entries.get(path).map(|(_, id)| id));
        Some(id.map(|id| id.to_string()))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let (_, id) = self
            .index
            .entries
            .get(path)
            .ok_or_else(|| TreeError::NotFound {
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
