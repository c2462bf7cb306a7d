//! Kustomize: `kustomize build` of a folder in a snapshot of the revision.
//!
//! # Security
//! Before kustomize runs, every kustomization reachable from the folder is read and each
//! path it names (resources, bases, components, patches, generator files…) must stay inside
//! the repository: kustomize's load restrictor checks files but lets a base reach any
//! folder, and the snapshot sits on the host's file system. Remote bases (URLs) are
//! refused unless allowed; `helmCharts` need `enable_helm`, and a chart from a repository
//! (`helmCharts[].repo`, which kustomize downloads) needs that repository in `helm_repos`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::external::{self, Limits};
use super::snapshot::{Snapshot, inside};
use crate::source::tree::Tree;

pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

#[derive(Debug, Clone, Default)]
pub struct KustomizeOptions {
    /// Allow remote bases (`https://…`, `github.com/…`).
    pub allow_remote: bool,
    /// Allow `helmCharts` in kustomizations (`kustomize build --enable-helm`).
    pub enable_helm: bool,
    /// The chart repositories `helmCharts[].repo` may name (URLs; a trailing `/` and the
    /// case of scheme and host do not matter). Empty: charts in the repository only.
    pub helm_repos: Vec<String>,
}

/// A chart repository's URL as compared: without a trailing `/`, scheme and host in
/// lower case.
fn repository_key(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            format!(
                "{}://{}/{path}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => url.to_string(),
    }
}

/// Refuses a `helmCharts` entry whose `repo` is not allowed.
fn check_chart_repositories(
    file: &str,
    doc: &Value,
    options: &KustomizeOptions,
) -> Result<(), String> {
    let charts = doc["helmCharts"].as_array().into_iter().flatten();
    for (index, chart) in charts.enumerate() {
        let Some(repo) = chart["repo"].as_str().filter(|r| !r.trim().is_empty()) else {
            continue;
        };
        let wanted = repository_key(repo);
        if !options
            .helm_repos
            .iter()
            .any(|allowed| repository_key(allowed) == wanted)
        {
            let name = chart["name"].as_str().unwrap_or("?");
            return Err(format!(
                "{file}: helmCharts[{index}] ({name}): chart repository {repo:?} is not allowed; allow it with --kustomize-helm-repo {repo}, or keep the chart in the repository (helmGlobals.chartHome)"
            ));
        }
    }
    Ok(())
}

/// The kustomization file in `dir`, if any.
pub fn kustomization_in(tree: &dyn Tree, dir: &str) -> Option<String> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|name| join(dir, name))
        .find(|path| matches!(tree.entry_kind(path), Some(Some(_))))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_remote(reference: &str) -> bool {
    reference.contains("://")
        || reference.starts_with("github.com/")
        || reference.starts_with("gitlab.com/")
        || reference.starts_with("bitbucket.org/")
        || reference.starts_with("git@")
        || reference.starts_with("git::")
}

/// Checks every path the kustomizations under `dir` name (recursively through bases);
/// returns the folders and files they reach (what the render reads: its scope).
pub fn check_references(
    tree: &dyn Tree,
    dir: &str,
    options: &KustomizeOptions,
    max_file_bytes: u64,
) -> Result<Vec<String>, String> {
    let mut visited = BTreeSet::new();
    check_dir(tree, dir, options, max_file_bytes, &mut visited)?;
    Ok(visited.into_iter().collect())
}

fn check_dir(
    tree: &dyn Tree,
    dir: &str,
    options: &KustomizeOptions,
    max_file_bytes: u64,
    visited: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !visited.insert(dir.to_string()) {
        return Ok(());
    }
    let Some(file) = kustomization_in(tree, dir) else {
        return Ok(());
    };
    let bytes = tree
        .read(&file, max_file_bytes)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let doc: Value = super::yaml::parse_documents(&text, &Default::default())
        .map_err(|e| {
            format!(
                "{file}:{}:{}: invalid YAML: {}",
                e.line, e.column, e.message
            )
        })?
        .into_iter()
        .next()
        .map(|d| d.value)
        .unwrap_or_default();
    if doc.get("helmCharts").is_some() && !options.enable_helm {
        return Err(format!("{file}: helmCharts need --kustomize-enable-helm"));
    }
    check_chart_repositories(&file, &doc, options)?;
    for (field, reference) in references(&doc) {
        let reference = reference.trim();
        if reference.is_empty() {
            continue;
        }
        if is_remote(reference) {
            if options.allow_remote {
                continue;
            }
            return Err(format!(
                "{file}: {field}: remote base {reference:?} is refused; vendor it into the repository or pass --kustomize-allow-remote"
            ));
        }
        let Some(resolved) = inside(dir, reference) else {
            return Err(format!(
                "{file}: {field}: {reference:?} leaves the repository; tether reads nothing outside it"
            ));
        };
        if matches!(tree.entry_kind(&resolved), Some(None)) {
            check_dir(tree, &resolved, options, max_file_bytes, visited)?;
        } else {
            // A file it reads (a generator's input, a patch): in the render's scope too.
            visited.insert(resolved);
        }
    }
    Ok(())
}

/// Every path-like string a kustomization names, with the field that names it.
fn references(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let strings = |field: &str, value: &Value, out: &mut Vec<(String, String)>| {
        for item in value.as_array().into_iter().flatten() {
            if let Some(s) = item.as_str() {
                out.push((field.to_string(), s.to_string()));
            }
        }
    };
    for field in [
        "resources",
        "bases",
        "components",
        "crds",
        "patchesStrategicMerge",
        "transformers",
        "generators",
        "validators",
    ] {
        strings(field, &doc[field], &mut out);
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for item in doc[field].as_array().into_iter().flatten() {
            if let Some(path) = item["path"].as_str() {
                out.push((format!("{field}[].path"), path.to_string()));
            }
        }
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for generator in doc[field].as_array().into_iter().flatten() {
            for key in ["files", "envs"] {
                for item in generator[key].as_array().into_iter().flatten() {
                    if let Some(s) = item.as_str() {
                        // `key=path` names the key explicitly.
                        let path = s.rsplit_once('=').map(|(_, p)| p).unwrap_or(s);
                        out.push((format!("{field}[].{key}"), path.to_string()));
                    }
                }
            }
            if let Some(env) = generator["env"].as_str() {
                out.push((format!("{field}[].env"), env.to_string()));
            }
        }
    }
    if let Some(path) = doc["openapi"]["path"].as_str() {
        out.push(("openapi.path".into(), path.to_string()));
    }
    if let Some(path) = doc["helmGlobals"]["chartHome"].as_str() {
        out.push(("helmGlobals.chartHome".into(), path.to_string()));
    }
    for chart in doc["helmCharts"].as_array().into_iter().flatten() {
        if let Some(path) = chart["valuesFile"].as_str() {
            out.push(("helmCharts[].valuesFile".into(), path.to_string()));
        }
        strings(
            "helmCharts[].additionalValuesFiles",
            &chart["additionalValuesFiles"],
            &mut out,
        );
    }
    out
}

/// Runs `kustomize build` on `dir` in the snapshot.
pub fn build(
    program: &Path,
    snapshot: &Snapshot,
    dir: &str,
    options: &KustomizeOptions,
    limits: &Limits,
) -> Result<Vec<u8>, String> {
    let root = snapshot.root();
    let target = if dir.is_empty() {
        root.clone()
    } else {
        root.join(dir)
    };
    let mut args = vec![
        "build".to_string(),
        target.display().to_string(),
        "--load-restrictor".to_string(),
        "LoadRestrictionsRootOnly".to_string(),
    ];
    if options.enable_helm {
        args.push("--enable-helm".to_string());
    }
    external::run(program, &args, &root, &snapshot.home()?, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tree::DirTree;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, DirTree) {
        let dir = tempfile::tempdir().expect("temp");
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, text).expect("write");
        }
        let tree = DirTree::new(dir.path()).expect("dir");
        (dir, tree)
    }

    #[test]
    fn bases_inside_the_repository_pass_and_escapes_are_refused() {
        let (_d, t) = tree(&[
            ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("base/cm.yaml", "x"),
            (
                "overlays/prod/kustomization.yaml",
                "resources: [../../base]\npatches: [{path: patch.yaml}]\n",
            ),
            ("overlays/prod/patch.yaml", "x"),
            (
                "overlays/evil/kustomization.yaml",
                "resources: [../../../../../etc]\n",
            ),
            (
                "overlays/remote/kustomization.yaml",
                "resources: [https://github.com/org/repo//base?ref=v1]\n",
            ),
            (
                "overlays/gen/kustomization.yaml",
                "configMapGenerator: [{name: c, files: [secret=../../../outside.txt]}]\n",
            ),
            (
                "overlays/helm/kustomization.yaml",
                "helmCharts: [{name: x}]\n",
            ),
        ]);
        let options = KustomizeOptions::default();
        check_references(&t, "overlays/prod", &options, 1 << 20).expect("inside");
        let err = check_references(&t, "overlays/evil", &options, 1 << 20).expect_err("escape");
        assert!(err.contains("leaves the repository"), "{err}");
        let err = check_references(&t, "overlays/remote", &options, 1 << 20).expect_err("remote");
        assert!(err.contains("remote base"), "{err}");
        let allowed = KustomizeOptions {
            allow_remote: true,
            ..Default::default()
        };
        check_references(&t, "overlays/remote", &allowed, 1 << 20).expect("allowed");
        let err =
            check_references(&t, "overlays/gen", &options, 1 << 20).expect_err("generator escape");
        assert!(err.contains("outside.txt"), "{err}");
        let err = check_references(&t, "overlays/helm", &options, 1 << 20).expect_err("helm");
        assert!(err.contains("--kustomize-enable-helm"), "{err}");
    }

    #[test]
    fn a_chart_repository_is_fetched_from_only_when_allowed() {
        let (_d, t) = tree(&[
            (
                "local/kustomization.yaml",
                "helmCharts: [{name: web, valuesFile: values.yaml}]\n",
            ),
            (
                "remote/kustomization.yaml",
                "helmCharts: [{name: web, repo: 'https://Charts.Example.com/stable/'}]\n",
            ),
            (
                "escape/kustomization.yaml",
                "helmGlobals: {chartHome: ../../../opt/charts}\nhelmCharts: [{name: web}]\n",
            ),
        ]);
        let enabled = KustomizeOptions {
            enable_helm: true,
            ..Default::default()
        };
        check_references(&t, "local", &enabled, 1 << 20).expect("a chart in the repository");
        let err = check_references(&t, "remote", &enabled, 1 << 20).expect_err("not allowed");
        assert!(
            err.contains("helmCharts[0] (web)") && err.contains("--kustomize-helm-repo"),
            "{err}"
        );
        let err = check_references(&t, "escape", &enabled, 1 << 20).expect_err("escape");
        assert!(err.contains("helmGlobals.chartHome"), "{err}");
        let allowed = KustomizeOptions {
            helm_repos: vec!["https://charts.example.com/stable".into()],
            ..enabled.clone()
        };
        check_references(&t, "remote", &allowed, 1 << 20).expect("allowed");
        let other = KustomizeOptions {
            helm_repos: vec!["https://charts.example.com/other".into()],
            ..enabled
        };
        check_references(&t, "remote", &other, 1 << 20).expect_err("another repository");
    }
}
