//! What a render read of a [`Tree`]: every path it listed, looked up or read, with the id
//! of what was there ([`Inputs`]). Another revision whose tree holds the same at each of
//! those paths renders the same, without rendering it: a push to one folder of a
//! repository that thousands of Applications follow then costs the others no render.
//! Only trees whose entries have ids (a Git commit's) record; a tool that reads a copy of
//! the whole repository (kustomize, helm) has the root among its inputs, which every new
//! commit changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::tree::{EntryKind, Tree, TreeEntry, TreeError};

/// The paths a render read, each with the id of its entry then (`None`: nothing was there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs(BTreeMap<String, Option<String>>);

impl Inputs {
    /// Whether `tree` holds the same entry (or the same absence) at every path: a render of
    /// it reads what this one read.
    pub fn same_in(&self, tree: &dyn Tree) -> bool {
        self.0
            .iter()
            .all(|(path, id)| tree.entry_id(path).as_ref() == Some(id))
    }

    /// How many paths were read.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A tree that records what is read of it (see the module's note).
pub struct Recording {
    tree: Box<dyn Tree>,
    /// `None` once a path without an id was read: then nothing can be told from it.
    inputs: Arc<Mutex<Option<Inputs>>>,
}

/// What a [`Recording`] recorded, to take once the render is done.
pub struct Recorded(Arc<Mutex<Option<Inputs>>>);

impl Recorded {
    /// The inputs, unless the tree had no ids.
    pub fn take(self) -> Option<Inputs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Recording {
    /// Records what is read of `tree`.
    pub fn new(tree: Box<dyn Tree>) -> (Self, Recorded) {
        let inputs = Arc::new(Mutex::new(Some(Inputs::default())));
        let recorded = Recorded(inputs.clone());
        (Self { tree, inputs }, recorded)
    }

    fn note(&self, path: &str) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(recorded) = inputs.as_mut() else {
            return;
        };
        match self.tree.entry_id(path) {
            Some(id) => {
                recorded.0.insert(path.to_string(), id);
            }
            None => *inputs = None,
        }
    }
}

impl Tree for Recording {
    fn describe(&self) -> String {
        self.tree.describe()
    }

    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        self.note(dir);
        self.tree.list(dir)
    }

    fn entry_kind(&self, path: &str) -> Option<Option<EntryKind>> {
        self.note(path);
        self.tree.entry_kind(path)
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        self.note(path);
        self.tree.read(path, limit)
    }

    fn entry_id(&self, path: &str) -> Option<Option<String>> {
        self.tree.entry_id(path)
    }
}
