//! Render: a tree at a revision → desired objects, each with its origin (file, document, line).
//!
//! A folder renders as plain YAML/JSON ([`render_plain`]), with Kustomize ([`kustomize`])
//! or with Helm ([`helm`]), detected from its files; the external programs run in a private
//! snapshot under limits ([`snapshot`], [`external`]) and their output is cached by revision.
//! Variables are substituted afterwards ([`substitute`]). Every problem found is collected
//! and reported together, each with `file:line`. Start at [`render`]; YAML semantics live
//! in [`yaml`], the plain walk and `.tetherignore` in `plain`, a YAML stream → objects in
//! `parse`, the render cache in `cache`.

pub mod external;
pub mod helm;
pub mod jsonnet;
pub mod kustomize;
pub mod snapshot;
pub mod sops;
pub mod substitute;
pub mod yaml;

mod cache;
mod parse;
mod plain;

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::object::{Object, ObjectKey, Origin};
use crate::source::tree::{Tree, join_within};
pub use plain::render_plain;
pub use yaml::YamlLimits;

use cache::{cached, tool_identity};
use parse::finish;
use plain::resolve_symlink;

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
    /// Age keys for SOPS-encrypted files among plain manifests; none refuses such a file.
    pub decryption: sops::Keys,
    /// How to reach the registry of a chart from `oci://` (`helm.repo_chart`).
    pub registry: Option<crate::source::oci::Options>,
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
            decryption: sops::Keys::default(),
            registry: None,
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
    /// A SOPS-encrypted file that cannot be decrypted (no key, a wrong key, changed since).
    #[error("{file}: {message}")]
    Decryption { file: String, message: String },
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

fn render_kustomize(
    tree: &dyn Tree,
    path: &str,
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let fail = |message: String| renderer_problem("kustomize", path, &options.app, message);
    let scope = kustomize::check_references(tree, path, &options.kustomize, options.max_file_bytes)
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
        let snapshot = snapshot::Snapshot::write(
            tree,
            path,
            options.max_file_bytes,
            &options.decryption,
            &scope,
        )?;
        let output = kustomize::build(
            &program,
            &snapshot,
            path,
            &options.kustomize,
            &options.limits,
        )
        .map_err(|e| snapshot.explain(e))?;
        snapshot.refuse_sealed(&output)?;
        Ok((output, !snapshot.decrypted_any()))
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

/// The packaged chart of `helm.repo_chart` (from a Helm repository or an OCI registry) and
/// its version; `None` when the chart is the folder itself.
fn fetch_repo_chart(
    options: &RenderOptions,
) -> Result<Option<(std::path::PathBuf, String)>, String> {
    let chart_cache = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tether-helm-charts"));
    match &options.helm.repo_chart {
        Some(chart) if chart.url.starts_with("oci://") => {
            let registry = options.registry.clone().unwrap_or_default();
            helm::fetch_oci_chart(chart, &registry).map(Some)
        }
        Some(chart) => {
            helm::fetch_repo_chart(chart, &chart_cache, options.limits.timeout).map(Some)
        }
        None => Ok(None),
    }
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
    let repo_chart = fetch_repo_chart(options).map_err(fail)?;
    let key = serde_json::json!({
        "renderer": "helm", "revision": options.revision, "path": path, "namespace": options.namespace,
        "release": release, "options": options.helm,
        "repoChart": repo_chart.as_ref().map(|(file, version)| format!("{}@{version}", file.display())),
        "tool": tool_identity(&program),
    });
    let output = cached(options, key, || {
        // The chart's folder and its values files.
        let scope: Vec<String> = std::iter::once(path.to_string())
            .chain(options.helm.values_files.iter().cloned())
            .collect();
        let snapshot = snapshot::Snapshot::write(
            tree,
            path,
            options.max_file_bytes,
            &options.decryption,
            &scope,
        )?;
        let chart = match &repo_chart {
            Some((file, _)) => file.clone(),
            None => snapshot.root().join(path),
        };
        let output = helm::template(
            &program,
            &snapshot,
            &chart,
            &options.namespace,
            &release,
            &options.helm,
            &options.limits,
        )
        .map_err(|e| snapshot.explain(e))?;
        snapshot.refuse_sealed(&output)?;
        Ok((output, !snapshot.decrypted_any()))
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

#[cfg(test)]
mod tests;
