//! The plain renderer: a folder of YAML/JSON manifests and `.jsonnet` files walked in byte order,
//! with `.tetherignore` files (gitignore syntax) and symlinks followed inside the tree. Start at
//! [`render_plain`].

use std::ops::ControlFlow;

use serde_json::Value;

use super::parse::{check_duplicates, expand_list, parse_file, to_object};
use super::{Problem, Problems, RenderOptions, jsonnet, snapshot};
use crate::object::{Object, Origin};
use crate::source::tree::{EntryKind, Tree, TreeEntry, TreeError, join_within, parent};

const MANIFEST_EXTENSIONS: [&str; 3] = [".yaml", ".yml", ".json"];
const IGNORE_FILE: &str = ".tetherignore";
const MAX_SYMLINK_HOPS: usize = 8;

/// Renders a folder of plain YAML/JSON manifests: walks `path` recursively in byte order,
/// reads `.yaml`, `.yml` and `.json`, skips empty documents, expands `kind: List`, honours
/// `.tetherignore` files (gitignore syntax) at the repository root and in `path`.
/// Returns the objects in file order, or every problem found.
pub fn render_plain(
    tree: &dyn Tree,
    path: &str,
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let entries = list_folder(tree, path)?;
    let ignore = IgnoreRules::load(tree, path, options);
    let mut walk = Walk {
        tree,
        path,
        options,
        objects: Vec::new(),
        problems: Vec::new(),
        skipped: Vec::new(),
        evaluated_jsonnet: false,
        input_bytes: 0,
        snapshot: None,
    };
    for entry in entries {
        if ignore.is_ignored(&entry.path) {
            continue;
        }
        if walk.visit(&entry).is_break() {
            break;
        }
    }
    walk.finish()
}

/// The entries of folder `path`, or why it cannot be walked.
fn list_folder(tree: &dyn Tree, path: &str) -> Result<Vec<TreeEntry>, Problems> {
    match tree.list(path) {
        Ok(entries) => Ok(entries),
        Err(TreeError::NotFound { path, tree }) => {
            Err(Problems(vec![Problem::PathNotFound { path, tree }]))
        }
        Err(TreeError::NotADirectory { path, .. }) => {
            Err(Problems(vec![path_not_a_folder(tree, path)]))
        }
        Err(other) => Err(Problems(vec![Problem::Tree(other.to_string())])),
    }
}

/// `path` as messages name it (`.` for the repository's root).
fn shown(path: &str) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        path.to_string()
    }
}

/// What the walk of one folder has found so far.
struct Walk<'a> {
    tree: &'a dyn Tree,
    path: &'a str,
    options: &'a RenderOptions,
    objects: Vec<Object>,
    problems: Vec<Problem>,
    /// Files read as neither manifests nor Jsonnet: named if nothing renders.
    skipped: Vec<String>,
    evaluated_jsonnet: bool,
    input_bytes: u64,
    /// The repository's copy that `.jsonnet` files are evaluated in, made at the first.
    snapshot: Option<Result<snapshot::Snapshot, String>>,
}

impl Walk<'_> {
    /// Reads one entry of the folder: `Break` when a limit is reached.
    fn visit(&mut self, entry: &TreeEntry) -> ControlFlow<()> {
        let options = self.options;
        let is_jsonnet = entry.path.to_ascii_lowercase().ends_with(".jsonnet");
        if !is_manifest(&entry.path) && !is_jsonnet {
            if entry.kind != EntryKind::Submodule && may_hold_objects(&entry.path) {
                self.skipped.push(entry.path.clone());
            }
            return ControlFlow::Continue(());
        }
        self.evaluated_jsonnet |= is_jsonnet;
        let bytes = match read_entry(self.tree, entry, options) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return ControlFlow::Continue(()),
            Err(problem) => {
                self.problems.push(problem);
                return ControlFlow::Continue(());
            }
        };
        self.input_bytes += bytes.len() as u64;
        if self.input_bytes > options.max_input_bytes {
            self.problems.push(Problem::TooMuchInput {
                path: shown(self.path),
                file: entry.path.clone(),
                limit: options.max_input_bytes,
            });
            return ControlFlow::Break(());
        }
        if is_jsonnet {
            let value = evaluate_jsonnet(
                self.tree,
                self.path,
                &entry.path,
                &bytes,
                options,
                &mut self.snapshot,
            );
            jsonnet_objects(&entry.path, value, &mut self.objects, &mut self.problems);
        } else {
            parse_file(
                &entry.path,
                &bytes,
                options,
                &mut self.objects,
                &mut self.problems,
            );
        }
        if self.objects.len() > options.max_objects {
            self.problems.push(Problem::TooManyObjects {
                count: self.objects.len(),
                limit: options.max_objects,
            });
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The objects found, or every problem (with what was skipped when nothing rendered).
    fn finish(mut self) -> Result<Vec<Object>, Problems> {
        check_duplicates(&self.objects, &mut self.problems);
        // Libraries of a Jsonnet file that was evaluated were not skipped.
        if self.evaluated_jsonnet {
            self.skipped
                .retain(|p| !p.to_ascii_lowercase().ends_with(".libsonnet"));
        }
        if self.objects.is_empty() && self.problems.is_empty() && !self.skipped.is_empty() {
            self.problems.push(Problem::NothingRendered {
                path: shown(self.path),
                skipped: self.skipped,
            });
        }
        if self.problems.is_empty() {
            Ok(self.objects)
        } else {
            Err(Problems(self.problems))
        }
    }
}

/// The bytes of a manifest entry (a symlink's target's); `Ok(None)` for an entry not read (a
/// submodule, a link to a folder).
fn read_entry(
    tree: &dyn Tree,
    entry: &TreeEntry,
    options: &RenderOptions,
) -> Result<Option<Vec<u8>>, Problem> {
    let bytes = match entry.kind {
        EntryKind::Submodule => return Ok(None),
        EntryKind::File => tree.read(&entry.path, options.max_file_bytes),
        EntryKind::Symlink => match resolve_symlink(tree, &entry.path)? {
            Some(target) => tree.read(&target, options.max_file_bytes),
            // A link to a folder is not followed, as `git` and kubectl do not follow it.
            None => return Ok(None),
        },
    };
    bytes
        .map(Some)
        .map_err(|err| Problem::Tree(err.to_string()))
}

/// Evaluates a `.jsonnet` file of folder `path`: in a child process under the render
/// limits when [`RenderOptions::jsonnet_program`] names one (over a copy of the repository
/// made at the first file, kept in `snapshot`, and bounded as every renderer's is), else
/// here.
fn evaluate_jsonnet(
    tree: &dyn Tree,
    path: &str,
    file: &str,
    bytes: &[u8],
    options: &RenderOptions,
    snapshot: &mut Option<Result<snapshot::Snapshot, String>>,
) -> Result<Value, String> {
    let Some(program) = &options.jsonnet_program else {
        // In this process, imports are read from the tree as they are: ciphertext in the
        // value is refused, never applied.
        let value = jsonnet::evaluate(tree, file, bytes, &options.jsonnet, options.max_file_bytes)?;
        if super::sops::file::shows_ciphertext(value.to_string().as_bytes()) {
            return Err(format!(
                "{file}: its value holds SOPS-encrypted values (an import of an encrypted file), which are decrypted only when Jsonnet runs in its own process"
            ));
        }
        return Ok(value);
    };
    // Made once: when it cannot be, every file of the folder says so.
    let copy = snapshot
        .get_or_insert_with(|| {
            let scope = [path.to_string()];
            snapshot::Snapshot::write(
                tree,
                path,
                options.max_file_bytes,
                &options.decryption,
                &scope,
            )
        })
        .as_ref()
        .map_err(|e| format!("{file}: cannot copy the repository to evaluate it: {e}"))?;
    let value = jsonnet::evaluate_in_child(
        program,
        copy,
        file,
        &options.jsonnet,
        options.max_file_bytes,
        &options.limits,
    )
    .map_err(|message| copy.explain(message))?;
    copy.refuse_sealed(value.to_string().as_bytes())
        .map_err(|e| format!("{file}: {e}"))?;
    Ok(value)
}

/// The objects of a `.jsonnet` file's value: an object, a `kind: List`, or an array of
/// objects (arrays nested in it are flattened, as Argo CD does).
fn jsonnet_objects(
    file: &str,
    value: Result<Value, String>,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let origin = Origin {
        file: file.to_string(),
        line: 1,
        document: 0,
        item: None,
    };
    let value = match value {
        Ok(value) => value,
        Err(message) => {
            problems.push(Problem::Jsonnet { origin, message });
            return;
        }
    };
    let mut items = Vec::new();
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(values) => pending.extend(values.into_iter().rev()),
            other => items.push(other),
        }
    }
    let single = items.len() == 1;
    for (index, item) in items.into_iter().enumerate() {
        let origin = Origin {
            item: (!single).then_some(index),
            ..origin.clone()
        };
        match item {
            Value::Null => {}
            Value::Object(_) if item.get("kind") == Some(&Value::String("List".into())) => {
                expand_list(item, origin, objects, problems);
            }
            item => match to_object(item, origin.clone()) {
                Ok(object) => objects.push(object),
                Err(message) => problems.push(Problem::Manifest { origin, message }),
            },
        }
    }
}

/// `--path` names a file, or a symlink (one that leaves the repository is an escape).
fn path_not_a_folder(tree: &dyn Tree, path: String) -> Problem {
    if tree.entry_kind(&path) != Some(Some(EntryKind::Symlink)) {
        return Problem::PathNotAFolder { path };
    }
    let target = tree
        .read(&path, 4096)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if join_within(parent(&path), &target).is_none() {
        Problem::SymlinkEscapes { file: path, target }
    } else {
        Problem::PathIsSymlink { path, target }
    }
}

/// Whether a file tether skips could be a source of objects it cannot read (a Jsonnet
/// library, a template, a CUE file), as opposed to documentation and dotfiles: a folder of
/// only documentation renders empty like an empty folder (and an empty render is refused
/// unless `--allow-empty` anyway).
fn may_hold_objects(path: &str) -> bool {
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let documentation = [
        "readme",
        "license",
        "licence",
        "owners",
        "codeowners",
        "changelog",
        "notice",
    ];
    !(name.starts_with('.')
        || [
            ".md", ".txt", ".rst", ".adoc", ".html", ".png", ".svg", ".jpg",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
        || documentation
            .iter()
            .any(|doc| name == *doc || name.starts_with(&format!("{doc}."))))
}

fn is_manifest(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    MANIFEST_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// Follows a symlink inside the tree. `Ok(None)` for a link to a folder.
pub(super) fn resolve_symlink(tree: &dyn Tree, link: &str) -> Result<Option<String>, Problem> {
    let mut current = link.to_string();
    for _ in 0..MAX_SYMLINK_HOPS {
        let target_bytes = tree
            .read(&current, 4096)
            .map_err(|err| Problem::Tree(err.to_string()))?;
        let target = String::from_utf8_lossy(&target_bytes).into_owned();
        let Some(resolved) = join_within(parent(&current), &target) else {
            return Err(Problem::SymlinkEscapes {
                file: link.to_string(),
                target,
            });
        };
        match tree.entry_kind(&resolved) {
            None => {
                return Err(Problem::SymlinkDangling {
                    file: link.to_string(),
                    target,
                });
            }
            Some(None) => return Ok(None),
            Some(Some(EntryKind::Symlink)) => current = resolved,
            Some(Some(EntryKind::File)) => return Ok(Some(resolved)),
            Some(Some(EntryKind::Submodule)) => return Ok(None),
        }
    }
    Err(Problem::Tree(format!(
        "{link}: more than {MAX_SYMLINK_HOPS} symlinks in a chain (a loop?)"
    )))
}

/// `.tetherignore` files (gitignore syntax) at the repository root and in the rendered folder.
struct IgnoreRules {
    matchers: Vec<(String, ignore::gitignore::Gitignore)>,
}

impl IgnoreRules {
    fn load(tree: &dyn Tree, path: &str, options: &RenderOptions) -> Self {
        let mut dirs = vec![String::new()];
        if !path.is_empty() {
            dirs.push(path.to_string());
        }
        let mut matchers = Vec::new();
        for dir in dirs {
            let file = if dir.is_empty() {
                IGNORE_FILE.to_string()
            } else {
                format!("{dir}/{IGNORE_FILE}")
            };
            let Ok(bytes) = tree.read(&file, options.max_file_bytes) else {
                continue;
            };
            let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
            for line in String::from_utf8_lossy(&bytes).lines() {
                // A malformed pattern is skipped, as git skips it.
                let _ = builder.add_line(None, line);
            }
            if let Ok(matcher) = builder.build() {
                matchers.push((dir, matcher));
            }
        }
        Self { matchers }
    }

    fn is_ignored(&self, path: &str) -> bool {
        self.matchers.iter().any(|(dir, matcher)| {
            let relative = if dir.is_empty() {
                Some(path)
            } else {
                path.strip_prefix(dir.as_str())
                    .and_then(|p| p.strip_prefix('/'))
            };
            relative.is_some_and(|rel| {
                matcher
                    .matched_path_or_any_parents(format!("/{rel}"), false)
                    .is_ignore()
            })
        })
    }
}
