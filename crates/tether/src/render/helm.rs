//! Helm: `helm template` of a chart in the repository, or of a chart fetched from a Helm
//! repository (index.yaml over HTTP(S), a pinned version or a semver range).
//!
//! # Security
//! Values files are repository paths checked before helm runs: one that leaves the
//! repository is refused (Argo CD's CVE-2022-24348 read files through `../` values paths).
//! A downloaded chart must match the digest its repository index gives.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::Digest;

use super::external::{self, Limits};
use super::snapshot::{Snapshot, inside};
use crate::source::reference::SemverRange;
use crate::source::tree::Tree;

/// A chart from a Helm repository rather than from Git.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RepoChart {
    /// The repository URL (the folder holding index.yaml).
    pub url: String,
    pub chart: String,
    /// An exact version or a semver range (`>=1.2 <2`); the highest match wins.
    pub version: String,
}

/// The Kubernetes version tether is built against (its `k8s-openapi` API level): Helm's
/// `.Capabilities.KubeVersion` when no cluster is asked (`tether render`), instead of Helm's
/// own default v1.20.0, which charts requiring a newer Kubernetes refuse.
pub const BUILT_FOR_KUBERNETES: &str = "v1.34.0";

#[derive(Debug, Clone, Default, Serialize)]
pub struct HelmOptions {
    /// Release name (default: the application's name).
    pub release: Option<String>,
    /// Values files, repository paths, applied in order.
    pub values_files: Vec<String>,
    /// `--set` values, `key=value`, applied after the files.
    pub set: Vec<String>,
    /// Skip the chart's `crds/` folder (default: CRDs are rendered).
    pub skip_crds: bool,
    /// `.Capabilities.KubeVersion`, e.g. `v1.34.4` (from the cluster when planning).
    pub kube_version: Option<String>,
    /// `.Capabilities.APIVersions` (from the cluster's discovery when planning).
    pub api_versions: Vec<String>,
    /// Render this chart from a Helm repository instead of the folder.
    pub repo_chart: Option<RepoChart>,
}

impl HelmOptions {
    /// Sets `.Capabilities` to a cluster's where the options leave them unset. `plan`,
    /// `apply`, `diff` and the agent all render through this, so a chart that checks the
    /// Kubernetes version renders the same in push and pull mode.
    pub fn fill_capabilities(&mut self, kube_version: String, api_versions: Vec<String>) {
        if self.kube_version.is_none() {
            self.kube_version = Some(kube_version);
        }
        if self.api_versions.is_empty() {
            self.api_versions = api_versions;
        }
    }
}

/// Checks values paths against the tree before anything runs.
pub fn check_values(tree: &dyn Tree, options: &HelmOptions) -> Result<(), String> {
    for file in &options.values_files {
        let Some(resolved) = inside("", file) else {
            return Err(format!(
                "values file {file:?} leaves the repository; give a path inside it"
            ));
        };
        match tree.entry_kind(&resolved) {
            Some(Some(_)) => {}
            Some(None) => return Err(format!("values file {file:?} is a folder")),
            None => {
                return Err(format!(
                    "values file {file:?} does not exist at this revision"
                ));
            }
        }
    }
    Ok(())
}

/// Runs `helm template` on `chart` (a folder or a packaged `.tgz`).
pub fn template(
    program: &Path,
    snapshot: &Snapshot,
    chart: &Path,
    namespace: &str,
    release: &str,
    options: &HelmOptions,
    limits: &Limits,
) -> Result<Vec<u8>, String> {
    let root = snapshot.root();
    let mut args = vec![
        "template".to_string(),
        release.to_string(),
        chart.display().to_string(),
        "--namespace".to_string(),
        namespace.to_string(),
    ];
    if !options.skip_crds {
        args.push("--include-crds".to_string());
    }
    for file in &options.values_files {
        let resolved = inside("", file)
            .ok_or_else(|| format!("values file {file:?} leaves the repository"))?;
        args.push("--values".to_string());
        args.push(root.join(resolved).display().to_string());
    }
    for value in &options.set {
        args.push("--set".to_string());
        args.push(value.clone());
    }
    if let Some(version) = &options.kube_version {
        args.push("--kube-version".to_string());
        args.push(version.clone());
    }
    for api in &options.api_versions {
        args.push("--api-versions".to_string());
        args.push(api.clone());
    }
    // Helm's hint names a flag of its own, which tether does not take.
    external::run(program, &args, &root, &snapshot.home()?, limits).map_err(|message| {
        message
            .replace("\n  Use --debug flag to render out invalid YAML", "")
            .replace("Use --debug flag to render out invalid YAML", "")
    })
}

/// Resolves `chart` in the repository's index and downloads it (cached by URL and version,
/// checked against the index's digest). Returns the packaged chart and its version.
pub fn fetch_repo_chart(
    chart: &RepoChart,
    cache_dir: &Path,
    timeout: std::time::Duration,
) -> Result<(PathBuf, String), String> {
    crate::source::git::install_crypto_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let base = chart.url.trim_end_matches('/');
    let index_url = format!("{base}/index.yaml");
    let index = client
        .get(&index_url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| format!("cannot read the Helm repository index {index_url}: {e}"))?;
    let index: Value =
        serde_saphyr::from_str(&index).map_err(|e| format!("{index_url}: invalid index: {e}"))?;
    let (chosen, entry) = choose_entry(&index, chart, &index_url)?;
    let url = download_url(entry, base)
        .ok_or_else(|| format!("{index_url}: {} {chosen} has no download URL", chart.chart))?;
    let digest = entry["digest"].as_str().map(str::to_string);
    let key: String = sha2::Sha256::digest(base.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let folder = cache_dir.join("charts").join(key);
    let file = folder.join(format!("{}-{chosen}.tgz", chart.chart));
    if file.exists() {
        return Ok((file, chosen));
    }
    download(&client, &url, digest.as_deref(), &folder, &file)?;
    Ok((file, chosen))
}

/// Pulls `chart` from an OCI registry (`url` + `/` + chart name, as `helm pull oci://…`
/// names it): the exact version, else the highest tag in the range. Returns the chart's
/// folder (cached by digest) and its version.
pub fn fetch_oci_chart(
    chart: &RepoChart,
    registry: &crate::source::oci::Options,
) -> Result<(PathBuf, String), String> {
    use crate::source::oci::{OciRef, OciUrl, artifact};
    let url = OciUrl::parse(&format!(
        "{}/{}",
        chart.url.trim_end_matches('/'),
        chart.chart
    ))
    .map_err(|e| e.to_string())?;
    let version = chart.version.trim();
    let reference = if semver::Version::parse(version).is_ok() {
        OciRef::Tag(version.replace('+', "_"))
    } else {
        let range = if version.is_empty() || version == "*" {
            ">=0.0.0"
        } else {
            version
        };
        OciRef::Semver(
            SemverRange::parse(range).map_err(|e| format!("chart version {version:?}: {e}"))?,
        )
    };
    let pulled = artifact::pull(&url, &reference, registry).map_err(|e| e.to_string())?;
    match pulled.kind {
        artifact::Kind::HelmChart {
            folder, version, ..
        } => Ok((pulled.folder.join(folder), version)),
        artifact::Kind::Manifests => Err(format!(
            "{} is a manifests artifact, not a Helm chart: render it with --repo {}",
            url.repository_url(),
            url.repository_url()
        )),
    }
}

/// The version of `chart` to fetch (the one named, else the best match of the range) and its
/// entry in the repository's index.
fn choose_entry<'a>(
    index: &'a Value,
    chart: &RepoChart,
    index_url: &str,
) -> Result<(String, &'a Value), String> {
    let entries = index["entries"][&chart.chart]
        .as_array()
        .ok_or_else(|| format!("{index_url} has no chart named {:?}", chart.chart))?;
    let versions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    let chosen = if versions.contains(&chart.version.as_str()) {
        chart.version.clone()
    } else {
        let range = SemverRange::parse(&chart.version)
            .map_err(|e| format!("chart version {:?}: {e}", chart.version))?;
        range
            .best(versions.iter().copied())
            .map(|(v, _)| v.to_string())
            .ok_or_else(|| {
                format!(
                    "{index_url}: no version of {} matches {:?} (it has: {})",
                    chart.chart,
                    chart.version,
                    versions.join(", ")
                )
            })?
    };
    let entry = entries
        .iter()
        .find(|e| e["version"].as_str() == Some(chosen.as_str()))
        .expect("chosen from these entries");
    Ok((chosen, entry))
}

/// An index entry's first download URL, made absolute against the repository's `base`.
fn download_url(entry: &Value, base: &str) -> Option<String> {
    let url = entry["urls"][0].as_str()?;
    Some(if url.contains("://") {
        url.to_string()
    } else {
        format!("{base}/{}", url.trim_start_matches("./"))
    })
}

/// Downloads a packaged chart into `file` (through a partial file), refusing one whose digest
/// is not the index's.
fn download(
    client: &reqwest::blocking::Client,
    url: &str,
    digest: Option<&str>,
    folder: &Path,
    file: &Path,
) -> Result<(), String> {
    let bytes = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
        .map_err(|e| format!("cannot download {url}: {e}"))?;
    if let Some(expected) = digest {
        let actual: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != expected {
            return Err(format!(
                "{url}: digest {actual} does not match the index's {expected}; refusing the chart"
            ));
        }
    }
    std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let partial = file.with_extension("partial");
    std::fs::write(&partial, &bytes).map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(())
}

/// The `# Source: chart/templates/x.yaml` comment that helm writes before each document:
/// for each line number, the source in effect there.
pub fn source_comments(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            line.strip_prefix("# Source: ")
                .map(|s| (i as u64 + 1, s.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tree::DirTree;

    #[test]
    fn values_paths_must_stay_inside_and_exist() {
        let dir = tempfile::tempdir().expect("temp");
        std::fs::create_dir_all(dir.path().join("values")).expect("mkdir");
        std::fs::write(dir.path().join("values/prod.yaml"), "a: 1").expect("write");
        let tree = DirTree::new(dir.path()).expect("dir");
        let with = |files: &[&str]| HelmOptions {
            values_files: files.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        check_values(&tree, &with(&["values/prod.yaml"])).expect("fine");
        let err = check_values(&tree, &with(&["../../etc/passwd"])).expect_err("escape");
        assert!(err.contains("leaves the repository"), "{err}");
        let err = check_values(&tree, &with(&["/etc/passwd"])).expect_err("absolute");
        assert!(err.contains("leaves the repository"), "{err}");
        let err = check_values(&tree, &with(&["values/missing.yaml"])).expect_err("missing");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn source_comments_map_documents_to_templates() {
        let text = "---\n# Source: web/templates/svc.yaml\nkind: Service\n---\n# Source: web/templates/deploy.yaml\nkind: Deployment\n";
        assert_eq!(
            source_comments(text),
            vec![
                (2, "web/templates/svc.yaml".to_string()),
                (5, "web/templates/deploy.yaml".to_string())
            ]
        );
    }

    #[test]
    fn a_repository_chart_is_the_version_named_else_the_best_of_the_range() {
        let index: Value = serde_saphyr::from_str(
            "entries:\n  web:\n  - version: 1.2.0\n    urls: [charts/web-1.2.0.tgz]\n  - version: 1.10.0\n    urls: [https://cdn.example/web-1.10.0.tgz]\n  - version: 2.0.0\n    urls: []\n",
        )
        .expect("index");
        let chart = |version: &str| RepoChart {
            url: "https://charts.example".into(),
            chart: "web".into(),
            version: version.into(),
        };
        let url = "https://charts.example/index.yaml";
        let (chosen, entry) = choose_entry(&index, &chart("1.2.0"), url).expect("named");
        assert_eq!(chosen, "1.2.0");
        assert_eq!(
            download_url(entry, "https://charts.example").as_deref(),
            Some("https://charts.example/charts/web-1.2.0.tgz")
        );
        let (chosen, entry) = choose_entry(&index, &chart("^1"), url).expect("range");
        assert_eq!(chosen, "1.10.0");
        assert_eq!(
            download_url(entry, "https://charts.example").as_deref(),
            Some("https://cdn.example/web-1.10.0.tgz")
        );
        let (_, entry) = choose_entry(&index, &chart("2.0.0"), url).expect("named");
        assert_eq!(download_url(entry, "https://charts.example"), None);
        let err = choose_entry(&index, &chart("^3"), url).expect_err("no match");
        assert!(
            err.contains("no version of web matches \"^3\" (it has: 1.2.0, 1.10.0, 2.0.0)"),
            "{err}"
        );
        let err = choose_entry(
            &index,
            &RepoChart {
                chart: "db".into(),
                ..chart("1")
            },
            url,
        )
        .expect_err("no chart");
        assert!(err.contains("has no chart named \"db\""), "{err}");
    }
}
