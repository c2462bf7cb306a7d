//! Render: a tree at a revision → desired objects, each with its origin (file, document, line).
//!
//! A folder renders as plain YAML/JSON ([`render_plain`]), with Kustomize ([`kustomize`])
//! or with Helm ([`helm`]), detected from its files; the external programs run in a private
//! snapshot under limits ([`snapshot`], [`external`]) and their output is cached by revision.
//! Variables are substituted afterwards ([`substitute`]). Every problem found is collected
//! and reported together, each with `file:line`. Start at [`render`]; YAML semantics live
//! in [`yaml`].

pub mod external;
pub mod helm;
pub mod jsonnet;
pub mod kustomize;
pub mod snapshot;
pub mod substitute;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::object::{Object, ObjectKey, Origin};
use crate::source::tree::{EntryKind, Tree, TreeError, join_within, parent};
pub use yaml::YamlLimits;

/// Which renderer turns a folder into objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Renderer {
    /// Kustomize when the folder has a kustomization, Helm when it has Chart.yaml, else plain.
    #[default]
    Auto,
    /// Plain YAML/JSON files.
    Directory,
    Kustomize,
    Helm,
}

/// Options of rendering. Defaults fit real repositories; limits guard the process.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// Files above this size are refused (default 8 MiB).
    pub max_file_bytes: u64,
    /// A render with more objects than this is refused (default 100,000).
    pub max_objects: usize,
    pub yaml: YamlLimits,
    pub renderer: Renderer,
    pub kustomize: kustomize::KustomizeOptions,
    pub helm: helm::HelmOptions,
    /// Top-level arguments, external variables and library folders of `.jsonnet` files.
    pub jsonnet: jsonnet::JsonnetOptions,
    /// Variables for `${VAR}` substitution; `None` turns substitution off.
    pub vars: Option<substitute::Vars>,
    /// The namespace (Helm's `--namespace`) and the application (Helm's default release).
    pub namespace: String,
    pub app: String,
    /// Explicit kustomize and helm programs (else $TETHER_KUSTOMIZE / $TETHER_HELM, else PATH).
    pub kustomize_bin: Option<std::path::PathBuf>,
    pub helm_bin: Option<std::path::PathBuf>,
    pub limits: external::Limits,
    /// The program that evaluates `.jsonnet` files in a child process under `limits`
    /// (default: the `tether` binary, which says so at its start); `None` evaluates them
    /// in this process.
    pub jsonnet_program: Option<std::path::PathBuf>,
    /// A folder of plain manifests whose files add up to more than this is refused
    /// (default 32 MiB: the objects parsed from it take several times that in memory).
    pub max_input_bytes: u64,
    /// The commit rendered: with `cache_dir`, renderer output is cached under this key.
    pub revision: Option<String>,
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: 8 * 1024 * 1024,
            max_objects: 100_000,
            yaml: YamlLimits::default(),
            renderer: Renderer::Auto,
            kustomize: Default::default(),
            helm: Default::default(),
            jsonnet: Default::default(),
            vars: None,
            namespace: "default".into(),
            app: "app".into(),
            kustomize_bin: None,
            helm_bin: None,
            limits: Default::default(),
            jsonnet_program: jsonnet::default_program(),
            max_input_bytes: 32 * 1024 * 1024,
            revision: None,
            cache_dir: None,
        }
    }
}

/// One problem in the input, with where it is. Never contains a Secret's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{path}: not found in {tree}; check --path and --ref")]
    PathNotFound { path: String, tree: String },
    #[error("{path}: is a file, not a folder; give --path the folder that holds the manifests")]
    PathNotAFolder { path: String },
    #[error("{path}: is a symlink to {target:?}; give --path the folder it points to")]
    PathIsSymlink { path: String, target: String },
    #[error("{file}:{line}:{column}: invalid YAML: {message}")]
    Yaml {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{file}:{line}: invalid UTF-8 at byte {offset}; save the file as UTF-8")]
    Utf8 {
        file: String,
        line: u64,
        offset: usize,
    },
    #[error("{origin}: {message}")]
    Manifest { origin: Origin, message: String },
    #[error("{key} is defined twice: at {first} and at {second}; remove one")]
    Duplicate {
        key: Box<ObjectKey>,
        first: Box<Origin>,
        second: Box<Origin>,
    },
    #[error("{file}: symlink to {target:?} leaves the repository; tether reads nothing outside it")]
    SymlinkEscapes { file: String, target: String },
    #[error("{file}: symlink to {target:?} points at nothing")]
    SymlinkDangling { file: String, target: String },
    #[error("{0}")]
    Tree(String),
    #[error("{count} objects is above the limit of {limit}; split the application")]
    TooManyObjects { count: usize, limit: usize },
    #[error(
        "{path}: its manifests add up to more than {} (at {file}); tether renders at most that from one folder: split the application",
        crate::size::show_size(*limit)
    )]
    TooMuchInput {
        path: String,
        file: String,
        limit: u64,
    },
    #[error(
        "{file}:{line}: variable {name} is not set and has no default; set it with --var {name}=… or write ${{{name}:=default}}"
    )]
    UnsetVariable {
        file: String,
        line: u64,
        name: String,
    },
    #[error(
        "{path}: no object rendered, and {} file(s) were skipped: {}{}; tether reads .yaml, .yml, .json and .jsonnet files (a .libsonnet file only when imported); use --renderer for Kustomize or Helm, or list files to leave out in .tetherignore",
        skipped.len(),
        skipped.iter().take(20).cloned().collect::<Vec<_>>().join(", "),
        if skipped.len() > 20 { ", …" } else { "" }
    )]
    NothingRendered { path: String, skipped: Vec<String> },
    /// `message` names the file and line (the imported file's, when the error is there).
    #[error("{message}")]
    Jsonnet { origin: Origin, message: String },
    #[error("{renderer} {path} (application {app}): {message}")]
    Renderer {
        renderer: &'static str,
        path: String,
        app: String,
        message: String,
    },
}

/// Every problem a render found, sorted by file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "{count} problem{} in the manifests:",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

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
    let entries = match tree.list(path) {
        Ok(entries) => entries,
        Err(TreeError::NotFound { path, tree }) => {
            return Err(Problems(vec![Problem::PathNotFound { path, tree }]));
        }
        Err(TreeError::NotADirectory { path, .. }) => {
            return Err(Problems(vec![path_not_a_folder(tree, path)]));
        }
        Err(other) => return Err(Problems(vec![Problem::Tree(other.to_string())])),
    };
    let ignore = IgnoreRules::load(tree, path, options);
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    // Files read as neither manifests nor Jsonnet: named if nothing renders.
    let mut skipped = Vec::new();
    let mut evaluated_jsonnet = false;
    let mut input_bytes = 0u64;
    // The repository's copy that `.jsonnet` files are evaluated in, made at the first.
    let mut snapshot = None;
    for entry in entries {
        if ignore.is_ignored(&entry.path) {
            continue;
        }
        let is_jsonnet = entry.path.to_ascii_lowercase().ends_with(".jsonnet");
        if !is_manifest(&entry.path) && !is_jsonnet {
            if entry.kind != EntryKind::Submodule && may_hold_objects(&entry.path) {
                skipped.push(entry.path.clone());
            }
            continue;
        }
        evaluated_jsonnet |= is_jsonnet;
        let bytes = match entry.kind {
            EntryKind::Submodule => continue,
            EntryKind::File => tree.read(&entry.path, options.max_file_bytes),
            EntryKind::Symlink => match resolve_symlink(tree, &entry.path) {
                Ok(Some(target)) => tree.read(&target, options.max_file_bytes),
                // A link to a folder is not followed, as `git` and kubectl do not follow it.
                Ok(None) => continue,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            },
        };
        if let Ok(bytes) = &bytes {
            input_bytes += bytes.len() as u64;
            if input_bytes > options.max_input_bytes {
                problems.push(Problem::TooMuchInput {
                    path: if path.is_empty() {
                        ".".into()
                    } else {
                        path.to_string()
                    },
                    file: entry.path.clone(),
                    limit: options.max_input_bytes,
                });
                break;
            }
        }
        match bytes {
            Ok(bytes) if is_jsonnet => {
                let value =
                    evaluate_jsonnet(tree, path, &entry.path, &bytes, options, &mut snapshot);
                jsonnet_objects(&entry.path, value, &mut objects, &mut problems);
            }
            Ok(bytes) => parse_file(&entry.path, &bytes, options, &mut objects, &mut problems),
            Err(err) => problems.push(Problem::Tree(err.to_string())),
        }
        if objects.len() > options.max_objects {
            problems.push(Problem::TooManyObjects {
                count: objects.len(),
                limit: options.max_objects,
            });
            break;
        }
    }
    check_duplicates(&objects, &mut problems);
    // Libraries of a Jsonnet file that was evaluated were not skipped.
    if evaluated_jsonnet {
        skipped.retain(|p| !p.to_ascii_lowercase().ends_with(".libsonnet"));
    }
    if objects.is_empty() && problems.is_empty() && !skipped.is_empty() {
        problems.push(Problem::NothingRendered {
            path: if path.is_empty() {
                ".".into()
            } else {
                path.to_string()
            },
            skipped,
        });
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(Problems(problems))
    }
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
        return jsonnet::evaluate(tree, file, bytes, &options.jsonnet, options.max_file_bytes);
    };
    // Made once: when it cannot be, every file of the folder says so.
    let copy = snapshot
        .get_or_insert_with(|| snapshot::Snapshot::write(tree, path, options.max_file_bytes))
        .as_ref()
        .map_err(|e| format!("{file}: cannot copy the repository to evaluate it: {e}"))?;
    jsonnet::evaluate_in_child(
        program,
        copy,
        file,
        &options.jsonnet,
        options.max_file_bytes,
        &options.limits,
    )
    .map_err(|message| copy.explain(message))
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

/// Renders `path` of `tree` with the renderer `options.renderer` names (or detects).
pub fn render(
    tree: &dyn Tree,
    path: &str,
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let renderer = match options.renderer {
        Renderer::Auto if options.helm.repo_chart.is_some() => Renderer::Helm,
        Renderer::Auto if kustomize::kustomization_in(tree, path).is_some() => Renderer::Kustomize,
        Renderer::Auto
            if matches!(
                tree.entry_kind(&join_path(path, "Chart.yaml")),
                Some(Some(_))
            ) =>
        {
            Renderer::Helm
        }
        Renderer::Auto => Renderer::Directory,
        chosen => chosen,
    };
    match renderer {
        Renderer::Kustomize => render_kustomize(tree, path, options),
        Renderer::Helm => render_helm(tree, path, options),
        _ => render_plain(tree, path, options),
    }
}

fn join_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn renderer_problem(renderer: &'static str, path: &str, app: &str, message: String) -> Problems {
    Problems(vec![Problem::Renderer {
        renderer,
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        },
        app: app.to_string(),
        message,
    }])
}

/// Identifies a program without running it: path, size and modification time.
fn tool_identity(program: &std::path::Path) -> String {
    let meta = std::fs::metadata(program).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}:{size}:{modified}", program.display())
}

/// Runs `produce` unless the same inputs were rendered before (only for a Git revision:
/// a folder on disk may have changed since).
fn cached(
    options: &RenderOptions,
    key: serde_json::Value,
    produce: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let (Some(_), Some(dir)) = (&options.revision, &options.cache_dir) else {
        return produce();
    };
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(key.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let folder = dir.join("render");
    let file = folder.join(format!("{digest}.out"));
    if let Ok(bytes) = std::fs::read(&file) {
        tracing::debug!(file = %file.display(), "render cache hit");
        // Used now: the last to go when the cache is trimmed.
        if let Ok(handle) = std::fs::File::options().append(true).open(&file) {
            let _ = handle.set_modified(std::time::SystemTime::now());
        }
        return Ok(bytes);
    }
    let bytes = produce()?;
    if std::fs::create_dir_all(&folder).is_ok() {
        let partial = file.with_extension(format!("partial-{}", std::process::id()));
        if std::fs::write(&partial, &bytes).is_ok() {
            let _ = std::fs::rename(&partial, &file);
        }
        trim_cache(&folder, RENDER_CACHE_BYTES);
    }
    Ok(bytes)
}

/// The render cache keeps at most this much (an agent renders every new revision of every
/// Kustomize or Helm application; a cache that only grows would fill the disk).
const RENDER_CACHE_BYTES: u64 = 256 << 20;

/// Deletes the least recently used files of `folder` until the rest fit in `limit` bytes.
fn trim_cache(folder: &std::path::Path, limit: u64) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            if !metadata.is_file() {
                return None;
            }
            Some((metadata.modified().ok()?, metadata.len(), entry.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
    if total <= limit {
        return;
    }
    files.sort();
    for (_, size, path) in files {
        if total <= limit {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
        }
    }
}

fn render_kustomize(
    tree: &dyn Tree,
    path: &str,
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let fail = |message: String| renderer_problem("kustomize", path, &options.app, message);
    kustomize::check_references(tree, path, &options.kustomize, options.max_file_bytes)
        .map_err(fail)?;
    let program = external::locate(
        options.kustomize_bin.as_deref(),
        "TETHER_KUSTOMIZE",
        "kustomize",
    )
    .map_err(fail)?;
    let key = serde_json::json!({
        "renderer": "kustomize", "revision": options.revision, "path": path,
        "allowRemote": options.kustomize.allow_remote, "enableHelm": options.kustomize.enable_helm,
        "tool": tool_identity(&program),
    });
    let output = cached(options, key, || {
        let snapshot = snapshot::Snapshot::write(tree, path, options.max_file_bytes)?;
        kustomize::build(
            &program,
            &snapshot,
            path,
            &options.kustomize,
            &options.limits,
        )
        .map_err(|e| snapshot.explain(e))
    })
    .map_err(fail)?;
    // Without origin annotations (`buildMetadata: [originAnnotations]` in the
    // kustomization), a line of kustomize's output is all there is to say, and the label
    // says so.
    let label = format!(
        "kustomize build {} output",
        if path.is_empty() { "." } else { path }
    );
    let mut objects = finish(&label, &|line| (label.clone(), line), &output, options)?;
    for object in &mut objects {
        if let Some(file) = kustomize_origin(&object.manifest, path) {
            object.origin.file = file;
            object.origin.line = 0;
        }
    }
    Ok(objects)
}

/// The repository file an object came from, when the kustomization asks kustomize to say
/// (`buildMetadata: [originAnnotations]`): `config.kubernetes.io/origin`'s `path`, relative
/// to the kustomization's folder. Remote and generated objects have none.
fn kustomize_origin(manifest: &Value, path: &str) -> Option<String> {
    let origin = manifest["metadata"]["annotations"]["config.kubernetes.io/origin"].as_str()?;
    if origin.lines().any(|l| l.trim_start().starts_with("repo:")) {
        return None;
    }
    let file = origin
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("path:"))?
        .trim()
        .trim_matches(['"', '\'']);
    join_within(path, file)
}

fn render_helm(
    tree: &dyn Tree,
    path: &str,
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let fail = |message: String| renderer_problem("helm", path, &options.app, message);
    helm::check_values(tree, &options.helm).map_err(fail)?;
    let program =
        external::locate(options.helm_bin.as_deref(), "TETHER_HELM", "helm").map_err(fail)?;
    let release = options
        .helm
        .release
        .clone()
        .unwrap_or_else(|| options.app.clone());
    let chart_cache = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tether-helm-charts"));
    let repo_chart = match &options.helm.repo_chart {
        Some(chart) => Some(
            helm::fetch_repo_chart(chart, &chart_cache, options.limits.timeout).map_err(fail)?,
        ),
        None => None,
    };
    let key = serde_json::json!({
        "renderer": "helm", "revision": options.revision, "path": path, "namespace": options.namespace,
        "release": release, "options": options.helm,
        "repoChart": repo_chart.as_ref().map(|(file, version)| format!("{}@{version}", file.display())),
        "tool": tool_identity(&program),
    });
    let output = cached(options, key, || {
        let snapshot = snapshot::Snapshot::write(tree, path, options.max_file_bytes)?;
        let chart = match &repo_chart {
            Some((file, _)) => file.clone(),
            None => snapshot.root().join(path),
        };
        helm::template(
            &program,
            &snapshot,
            &chart,
            &options.namespace,
            &release,
            &options.helm,
            &options.limits,
        )
        .map_err(|e| snapshot.explain(e))
    })
    .map_err(fail)?;
    let text = String::from_utf8_lossy(&output).into_owned();
    let sources = helm::source_comments(&text);
    let label = format!("helm template {}", if path.is_empty() { "." } else { path });
    // Lines count in the template's rendered output, as in Helm's own messages (a
    // template's source lines are not known once rendered).
    let locate = |line: u64| {
        sources
            .iter()
            .rev()
            .find(|(at, _)| *at <= line)
            .map(|(at, source)| (source.clone(), line - at))
            .unwrap_or_else(|| (label.clone(), line))
    };
    let mut objects = finish(&label, &locate, &output, options)?;
    // Hooks are applied as ordinary objects for now; their origin says what they are.
    for object in &mut objects {
        if let Some(hook) = object.manifest["metadata"]["annotations"]["helm.sh/hook"].as_str() {
            object.origin.file = format!("{} [helm hook: {hook}]", object.origin.file);
        }
    }
    Ok(objects)
}

/// Parses a renderer's output into objects and checks the set.
fn finish(
    label: &str,
    locate: Locate<'_>,
    output: &[u8],
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    parse_stream(label, locate, output, options, &mut objects, &mut problems);
    if objects.len() > options.max_objects {
        problems.push(Problem::TooManyObjects {
            count: objects.len(),
            limit: options.max_objects,
        });
    }
    check_duplicates(&objects, &mut problems);
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(Problems(problems))
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
fn resolve_symlink(tree: &dyn Tree, link: &str) -> Result<Option<String>, Problem> {
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

fn parse_file(
    file: &str,
    bytes: &[u8],
    options: &RenderOptions,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    parse_stream(
        file,
        &|line| (file.to_string(), line),
        bytes,
        options,
        objects,
        problems,
    );
}

/// Where line `n` of a renderer's output came from: a file, and the line there.
type Locate<'a> = &'a dyn Fn(u64) -> (String, u64);

/// Parses a YAML stream whose lines come from `locate(line)` (one file for plain
/// manifests; the template named by `# Source:` for Helm output).
fn parse_stream(
    file: &str,
    locate: Locate<'_>,
    bytes: &[u8],
    options: &RenderOptions,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let offset = err.valid_up_to();
            let line = 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count() as u64;
            problems.push(Problem::Utf8 {
                file: file.to_string(),
                line,
                offset,
            });
            return;
        }
    };
    let substituted;
    let text = match &options.vars {
        Some(vars) => match substitute::substitute(text, vars) {
            Ok(out) => {
                substituted = out;
                substituted.as_str()
            }
            Err(unset) => {
                problems.extend(unset.into_iter().map(|u| {
                    let (file, line) = locate(u.line);
                    Problem::UnsetVariable {
                        file,
                        line,
                        name: u.name,
                    }
                }));
                return;
            }
        },
        None => text,
    };
    let documents = match yaml::parse_documents(text, &options.yaml) {
        Ok(documents) => documents,
        Err(err) => {
            // Helm's output: the template the broken document came from.
            let (file, line) = locate(err.line);
            problems.push(Problem::Yaml {
                file,
                line,
                column: err.column,
                message: err.message,
            });
            return;
        }
    };
    for (index, doc) in documents.into_iter().enumerate() {
        let (file, line) = locate(doc.line);
        let origin = Origin {
            file,
            line,
            document: index,
            item: None,
        };
        match doc.value {
            Value::Null => {}
            Value::Object(_) if doc.value.get("kind") == Some(&Value::String("List".into())) => {
                expand_list(doc.value, origin, objects, problems);
            }
            value => match to_object(value, origin.clone()) {
                Ok(object) => objects.push(object),
                Err(message) => problems.push(Problem::Manifest { origin, message }),
            },
        }
    }
}

/// `kind: List` (what `kubectl get -o yaml` writes) holds objects in `items`.
fn expand_list(
    list: Value,
    origin: Origin,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let items = match list.get("items") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            problems.push(Problem::Manifest {
                origin,
                message: "a List's items must be a sequence".into(),
            });
            return;
        }
    };
    for (index, item) in items.into_iter().enumerate() {
        let origin = Origin {
            item: Some(index),
            ..origin.clone()
        };
        match to_object(item, origin.clone()) {
            Ok(object) => objects.push(object),
            Err(message) => problems.push(Problem::Manifest { origin, message }),
        }
    }
}

fn to_object(manifest: Value, origin: Origin) -> Result<Object, String> {
    let Value::Object(map) = &manifest else {
        return Err(format!(
            "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), found {}",
            type_name(&manifest)
        ));
    };
    let string_field = |name: &str| -> Result<String, String> {
        match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None => Err(format!("{name} is missing")),
            Some(other) => Err(format!(
                "{name} must be a string, found {}",
                type_name(other)
            )),
        }
    };
    let api_version = string_field("apiVersion")?;
    let kind = string_field("kind")?;
    let metadata = match map.get("metadata") {
        Some(Value::Object(metadata)) => metadata,
        Some(other) => {
            return Err(format!(
                "metadata must be a mapping, found {}",
                type_name(other)
            ));
        }
        None => return Err(format!("{kind} has no metadata; set metadata.name")),
    };
    let name = match metadata.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        // A hook runs anew with each sync, so it may take a new name each time.
        Some(Value::String(_)) | None
            if crate::object::is_hook(&manifest)
                && matches!(metadata.get("generateName"), Some(Value::String(prefix)) if !prefix.is_empty()) =>
        {
            metadata["generateName"]
                .as_str()
                .expect("matched a string")
                .to_string()
        }
        Some(Value::String(_)) | None if metadata.contains_key("generateName") => {
            return Err(format!(
                "{kind} uses metadata.generateName, which GitOps cannot track; set metadata.name (only hooks may use generateName)"
            ));
        }
        Some(Value::String(_)) | None => return Err(format!("{kind} has no metadata.name")),
        Some(other) => {
            return Err(format!(
                "metadata.name must be a string, found {}",
                type_name(other)
            ));
        }
    };
    let namespace = match metadata.get("namespace") {
        Some(Value::String(ns)) => ns.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => {
            return Err(format!(
                "metadata.namespace must be a string, found {}",
                type_name(other)
            ));
        }
    };
    let group = match api_version.split_once('/') {
        Some((group, version)) if !group.is_empty() && !version.is_empty() => group.to_string(),
        Some(_) => {
            return Err(format!(
                "apiVersion {api_version:?} is not GROUP/VERSION or VERSION"
            ));
        }
        None => String::new(),
    };
    Ok(Object {
        key: ObjectKey {
            group,
            kind,
            namespace,
            name,
        },
        origin,
        manifest,
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

fn check_duplicates(objects: &[Object], problems: &mut Vec<Problem>) {
    let mut seen: BTreeMap<&ObjectKey, &Origin> = BTreeMap::new();
    for object in objects {
        if let Some(first) = seen.insert(&object.key, &object.origin) {
            problems.push(Problem::Duplicate {
                key: Box::new(object.key.clone()),
                first: Box::new(first.clone()),
                second: Box::new(object.origin.clone()),
            });
            // Keep pointing at the first definition for any third one.
            seen.insert(&object.key, first);
        }
    }
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

#[cfg(test)]
mod tests;
