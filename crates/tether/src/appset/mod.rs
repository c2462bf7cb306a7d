//! ApplicationSets, pure: what each generator makes ([`Params`], one map of flattened keys
//! per Application), given what the cluster and Git hold ([`Inputs`]), and the Application
//! each parameter set renders from the template ([`render`]). Argo CD's generators and
//! parameter names: `list` (each element's keys), `git.directories` (`path`,
//! `path.basename`, `path.basenameNormalized`, `path[N]`), `git.files` (the file's keys,
//! flattened, and `path`, `path.basename`, `path.filename`, `path.filenameNormalized`),
//! `clusters` (`name`, `server`, `metadata.labels.<key>`, `metadata.annotations.<key>`),
//! `matrix` (every pair of two generators' sets) and `merge` (the first generator's sets,
//! overridden by the others' on `mergeKeys`). The agent fetches and applies (`agent::appsets`).

mod pulls;
pub mod rollout;
mod template;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

pub use pulls::{Query, TokenRef, read as read_pull_requests};
pub use template::{Rendered, render};

/// One parameter set: flattened keys (`path.basename`, `metadata.labels.env`) to text.
pub type Params = BTreeMap<String, String>;

/// What the generators read: the Git trees they name (by repository and revision, fetched
/// for [`git_sources`]), and the cluster Secrets of the set's namespace.
pub struct Inputs<'a> {
    pub trees: &'a Trees,
    pub clusters: &'a [Cluster],
    /// The open pull requests each listing of [`pull_request_queries`] found.
    pub pull_requests: &'a BTreeMap<Query, Vec<Params>>,
}

/// Git trees by (repository, revision).
pub type Trees = BTreeMap<(String, String), Box<dyn crate::source::tree::Tree>>;

/// A cluster Secret as the clusters generator sees it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub name: String,
    pub server: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Generator {
    list: Option<ListGenerator>,
    git: Option<GitGenerator>,
    clusters: Option<ClustersGenerator>,
    matrix: Option<Combine>,
    merge: Option<Combine>,
    /// Argo CD's per-generator template override: not supported (said so).
    template: Option<Value>,
    pull_request: Option<pulls::PullRequestGenerator>,
    /// Argo CD's generators tether does not have yet.
    scm_provider: Option<Value>,
    cluster_decision_resource: Option<Value>,
    plugin: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListGenerator {
    elements: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitGenerator {
    #[serde(rename = "repoURL")]
    repo_url: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    directories: Vec<DirectoryPattern>,
    #[serde(default)]
    files: Vec<FilePattern>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryPattern {
    path: String,
    #[serde(default)]
    exclude: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePattern {
    path: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClustersGenerator {
    #[serde(default)]
    selector: Selector,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Combine {
    generators: Vec<Value>,
    #[serde(default)]
    merge_keys: Vec<String>,
}

/// The Git repositories and revisions the generators read (fetched before [`generate`]).
pub fn git_sources(generators: &[Value]) -> Vec<(String, String)> {
    let mut sources = Vec::new();
    for generator in generators {
        let Ok(parsed) = serde_json::from_value::<Generator>(generator.clone()) else {
            continue;
        };
        if let Some(git) = parsed.git {
            sources.push((git.repo_url, git.revision));
        }
        for combined in [parsed.matrix, parsed.merge].into_iter().flatten() {
            sources.extend(git_sources(&combined.generators));
        }
    }
    sources.sort();
    sources.dedup();
    sources
}

/// The pull request listings the generators need (made before [`generate`]); an error
/// names a pullRequest generator that says too little.
pub fn pull_request_queries(generators: &[Value]) -> Result<Vec<Query>, String> {
    let mut queries = Vec::new();
    for (i, generator) in generators.iter().enumerate() {
        let Ok(parsed) = serde_json::from_value::<Generator>(generator.clone()) else {
            continue;
        };
        if let Some(pulls) = parsed.pull_request {
            queries.push(pulls.query(&format!("spec.generators[{i}].pullRequest"))?);
        }
        for combined in [parsed.matrix, parsed.merge].into_iter().flatten() {
            queries.extend(pull_request_queries(&combined.generators)?);
        }
    }
    queries.sort();
    queries.dedup();
    Ok(queries)
}

/// How soon the set is generated again when a pullRequest generator asks for it
/// (`requeueAfterSeconds`).
pub fn requeue_after(generators: &[Value]) -> Option<std::time::Duration> {
    generators
        .iter()
        .filter_map(|g| serde_json::from_value::<Generator>(g.clone()).ok())
        .flat_map(|g| {
            let own = g.pull_request.and_then(|p| p.requeue_after_seconds);
            let nested = [g.matrix, g.merge]
                .into_iter()
                .flatten()
                .filter_map(|c| requeue_after(&c.generators).map(|d| d.as_secs()));
            own.into_iter().chain(nested).collect::<Vec<_>>()
        })
        .min()
        .map(|s| std::time::Duration::from_secs(s.max(1)))
}

/// Every parameter set of `generators`, in order (all generators' sets, one after another);
/// an error names the generator (`spec.generators[1].git`) and what is wrong.
pub fn generate(generators: &[Value], inputs: &Inputs<'_>) -> Result<Vec<Params>, String> {
    let mut all = Vec::new();
    for (i, generator) in generators.iter().enumerate() {
        all.extend(one(generator, inputs, &format!("spec.generators[{i}]"), 0)?);
    }
    Ok(all)
}

fn one(
    generator: &Value,
    inputs: &Inputs<'_>,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    let parsed: Generator =
        serde_json::from_value(generator.clone()).map_err(|e| format!("{at}: {e}"))?;
    for (present, name) in [
        (parsed.scm_provider.is_some(), "scmProvider"),
        (
            parsed.cluster_decision_resource.is_some(),
            "clusterDecisionResource",
        ),
        (parsed.plugin.is_some(), "plugin"),
        (parsed.template.is_some(), "template (per generator)"),
    ] {
        if present {
            return Err(format!("{at}.{name}: not supported by tether yet"));
        }
    }
    let kinds = [
        parsed.pull_request.is_some(),
        parsed.list.is_some(),
        parsed.git.is_some(),
        parsed.clusters.is_some(),
        parsed.matrix.is_some(),
        parsed.merge.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(format!(
            "{at}: a generator names exactly one of list, git, clusters, pullRequest, matrix, merge"
        ));
    }
    if let Some(pulls) = parsed.pull_request {
        let query = pulls.query(&format!("{at}.pullRequest"))?;
        return inputs
            .pull_requests
            .get(&query)
            .cloned()
            .ok_or_else(|| format!("{at}.pullRequest: {} was not listed", query.url));
    }
    if let Some(list) = parsed.list {
        return list_params(&list, at);
    }
    if let Some(git) = parsed.git {
        return git_params(&git, inputs, &format!("{at}.git"));
    }
    if let Some(clusters) = parsed.clusters {
        return Ok(cluster_params(&clusters, inputs.clusters));
    }
    if depth >= 2 {
        return Err(format!("{at}: matrix and merge nest at most two deep"));
    }
    if let Some(matrix) = parsed.matrix {
        return matrix_params(&matrix, inputs, &format!("{at}.matrix"), depth);
    }
    let merge = parsed.merge.expect("exactly one kind");
    merge_params(&merge, inputs, &format!("{at}.merge"), depth)
}

fn list_params(list: &ListGenerator, at: &str) -> Result<Vec<Params>, String> {
    list.elements
        .iter()
        .enumerate()
        .map(|(i, element)| match element {
            Value::Object(_) => {
                let mut params = Params::new();
                flatten("", element, &mut params);
                Ok(params)
            }
            _ => Err(format!(
                "{at}.list.elements[{i}]: an element is an object of parameters"
            )),
        })
        .collect()
}

/// Nested objects become dotted keys; lists and scalars become their text.
fn flatten(prefix: &str, value: &Value, into: &mut Params) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, into);
            }
        }
        Value::String(text) => {
            into.insert(prefix.to_string(), text.clone());
        }
        Value::Null => {
            into.insert(prefix.to_string(), String::new());
        }
        other => {
            into.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn git_params(git: &GitGenerator, inputs: &Inputs<'_>, at: &str) -> Result<Vec<Params>, String> {
    if git.directories.is_empty() == git.files.is_empty() {
        return Err(format!("{at}: name either directories or files"));
    }
    let tree = inputs
        .trees
        .get(&(git.repo_url.clone(), git.revision.clone()))
        .ok_or_else(|| format!("{at}: {} was not fetched", git.repo_url))?;
    let entries = tree.list("").map_err(|e| format!("{at}: {e}"))?;
    let mut sets = Vec::new();
    if !git.directories.is_empty() {
        // The folders are those that hold something.
        let folders: std::collections::BTreeSet<&str> = entries
            .iter()
            .flat_map(|e| e.path.match_indices('/').map(move |(i, _)| &e.path[..i]))
            .collect();
        for folder in folders {
            let patterns = &git.directories;
            let matched = patterns.iter().any(|p| !p.exclude && glob(&p.path, folder));
            let excluded = patterns.iter().any(|p| p.exclude && glob(&p.path, folder));
            if matched && !excluded {
                sets.push(path_params(folder, false));
            }
        }
        return Ok(sets);
    }
    let files = entries
        .iter()
        .filter(|e| e.kind == crate::source::tree::EntryKind::File);
    for entry in files {
        if !git.files.iter().any(|p| glob(&p.path, &entry.path)) {
            continue;
        }
        let bytes = tree
            .read(&entry.path, 1 << 20)
            .map_err(|e| format!("{at}: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let value: Value = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{at}: {} is not YAML or JSON: {e}", entry.path))?;
        let items = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        for item in items {
            if !item.is_object() {
                return Err(format!(
                    "{at}: {} holds something else than objects of parameters",
                    entry.path
                ));
            }
            let mut params = path_params(&entry.path, true);
            flatten("", &item, &mut params);
            sets.push(params);
        }
    }
    Ok(sets)
}

/// Argo CD's path parameters of a directory (or of a file's folder, with its file names).
fn path_params(path: &str, file: bool) -> Params {
    let mut params = Params::new();
    let (folder, filename) = match (file, path.rsplit_once('/')) {
        (true, Some((folder, name))) => (folder.to_string(), name.to_string()),
        (true, None) => (String::new(), path.to_string()),
        (false, _) => (path.to_string(), String::new()),
    };
    let basename = folder.rsplit('/').next().unwrap_or_default().to_string();
    params.insert("path".into(), folder.clone());
    params.insert("path.path".into(), folder.clone());
    params.insert("path.basenameNormalized".into(), normalized(&basename));
    params.insert("path.basename".into(), basename);
    for (i, segment) in folder.split('/').filter(|s| !s.is_empty()).enumerate() {
        params.insert(format!("path[{i}]"), segment.to_string());
    }
    if file {
        params.insert("path.filenameNormalized".into(), normalized(&filename));
        params.insert("path.filename".into(), filename);
    }
    params
}

/// A name Kubernetes accepts: lower case, `-` for anything else.
fn normalized(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// `*` and `?` within one path segment, `**` across any number of them.
fn glob(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    segments(&pattern, &path)
}

fn segments(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            segments(&pattern[1..], path) || (!path.is_empty() && segments(pattern, &path[1..]))
        }
        (Some(p), Some(s)) => {
            crate::application::windows::wildcard(p, s) && segments(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

fn cluster_params(generator: &ClustersGenerator, clusters: &[Cluster]) -> Vec<Params> {
    clusters
        .iter()
        .filter(|c| {
            generator
                .selector
                .match_labels
                .iter()
                .all(|(k, v)| c.labels.get(k) == Some(v))
        })
        .map(|c| {
            let mut params = Params::new();
            params.insert("name".into(), c.name.clone());
            params.insert("nameNormalized".into(), normalized(&c.name));
            params.insert("server".into(), c.server.clone());
            for (k, v) in &c.labels {
                params.insert(format!("metadata.labels.{k}"), v.clone());
            }
            for (k, v) in &c.annotations {
                params.insert(format!("metadata.annotations.{k}"), v.clone());
            }
            params
        })
        .collect()
}

fn matrix_params(
    matrix: &Combine,
    inputs: &Inputs<'_>,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    let [first, second] = matrix.generators.as_slice() else {
        return Err(format!("{at}: a matrix combines exactly two generators"));
    };
    let left = one(first, inputs, &format!("{at}.generators[0]"), depth + 1)?;
    let right = one(second, inputs, &format!("{at}.generators[1]"), depth + 1)?;
    let mut sets = Vec::new();
    for a in &left {
        for b in &right {
            let mut params = a.clone();
            params.extend(b.clone());
            sets.push(params);
        }
    }
    Ok(sets)
}

fn merge_params(
    merge: &Combine,
    inputs: &Inputs<'_>,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    if merge.merge_keys.is_empty() || merge.generators.len() < 2 {
        return Err(format!(
            "{at}: a merge names mergeKeys and at least two generators"
        ));
    }
    let key_of = |params: &Params| -> Option<Vec<String>> {
        merge
            .merge_keys
            .iter()
            .map(|k| params.get(k).cloned())
            .collect()
    };
    let mut base = one(
        &merge.generators[0],
        inputs,
        &format!("{at}.generators[0]"),
        depth + 1,
    )?;
    for (i, generator) in merge.generators.iter().enumerate().skip(1) {
        let overrides = one(
            generator,
            inputs,
            &format!("{at}.generators[{i}]"),
            depth + 1,
        )?;
        for over in &overrides {
            let Some(key) = key_of(over) else { continue };
            for params in base.iter_mut().filter(|p| key_of(p).as_ref() == Some(&key)) {
                params.extend(over.clone());
            }
        }
    }
    Ok(base)
}

#[cfg(test)]
mod tests;
