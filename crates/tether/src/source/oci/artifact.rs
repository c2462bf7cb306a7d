//! Artifacts in a registry: pulled into a folder kept by digest (a tag's poll costs one
//! manifest request when nothing changed), told apart by the config's media type (a Helm
//! chart, or a tarball of manifests as `flux push artifact` makes), and a folder packed
//! and pushed with Flux's media types, so either tool reads what the other pushed.

use std::path::{Path, PathBuf};

use super::client::{Client, Manifest};
use super::{Error, OciRef, OciUrl, Options};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const FLUX_CONFIG: &str = "application/vnd.cncf.flux.config.v1+json";
pub const FLUX_CONTENT: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// OCI's annotations for where an artifact came from, as Flux writes and reads them.
pub const SOURCE_ANNOTATION: &str = "org.opencontainers.image.source";
pub const REVISION_ANNOTATION: &str = "org.opencontainers.image.revision";
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// The most an artifact's layer may take, packed and unpacked.
pub const MAX_ARTIFACT_BYTES: u64 = 256 << 20;
/// The most files one artifact may hold.
const MAX_FILES: usize = 100_000;

/// What an artifact holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A tarball of manifests (Flux's content type, or any tar+gzip layer).
    Manifests,
    /// A Helm chart; `folder` is the chart's folder in the unpacked tarball.
    HelmChart {
        name: String,
        version: String,
        folder: String,
    },
}

/// A pulled artifact.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub url: String,
    pub digest: String,
    /// The tag it was pulled by, if any.
    pub tag: Option<String>,
    pub kind: Kind,
    /// The unpacked files.
    pub folder: PathBuf,
    /// The artifact's source and revision annotations (`flux push artifact --source
    /// --revision`), for the record.
    pub source: Option<String>,
    pub revision: Option<String>,
}

impl Pulled {
    /// The artifact as a revision: its digest where a Git revision has its commit, the tag
    /// it was pulled by, and the revision it was pushed from (`flux push artifact
    /// --revision`) as its summary.
    pub fn revision_record(&self) -> crate::source::git::Revision {
        let summary = match (&self.kind, &self.revision) {
            (Kind::HelmChart { name, version, .. }, _) => {
                Some(format!("Helm chart {name} {version}"))
            }
            (Kind::Manifests, Some(revision)) => Some(format!("artifact of {revision}")),
            (Kind::Manifests, None) => None,
        };
        crate::source::git::Revision {
            commit: self.digest.clone(),
            from_ref: self.tag.clone(),
            url: self.url.clone(),
            summary,
            author: None,
        }
    }
}

/// Resolves `reference` in the repository and unpacks its artifact under
/// `options.cache_dir` (kept by digest: a second pull of the same digest downloads nothing).
pub fn pull(url: &OciUrl, reference: &OciRef, options: &Options) -> Result<Pulled, Error> {
    let mut client = Client::new(url, options)?;
    let (tag, manifest) = resolve(&mut client, url, reference)?;
    let value = &manifest.value;
    let media_type = value["mediaType"].as_str().unwrap_or(OCI_MANIFEST);
    if media_type.contains("index") || media_type.contains("manifest.list") {
        return Err(Error::Invalid {
            url: url.repository_url(),
            message: format!(
                "{reference} is an image index (several platforms' images), not an artifact: name a chart or a manifests artifact"
            ),
        });
    }
    let config_type = value["config"]["mediaType"].as_str().unwrap_or_default();
    let layers = value["layers"].as_array().cloned().unwrap_or_default();
    let helm = config_type == HELM_CONFIG;
    let layer = layers
        .iter()
        .find(|l| {
            let kind = l["mediaType"].as_str().unwrap_or_default();
            if helm {
                kind == HELM_CHART
            } else {
                kind.ends_with("tar+gzip") && kind != HELM_CHART
            }
        })
        .ok_or_else(|| Error::Invalid {
            url: url.repository_url(),
            message: format!(
                "{reference} has no {} layer (config {config_type:?}): not a Helm chart or a manifests artifact",
                if helm { HELM_CHART } else { "tar+gzip" }
            ),
        })?;
    let layer_digest = layer["digest"].as_str().unwrap_or_default().to_string();
    // Kept by repository and digest: an artifact pulled for one repository is never served
    // for another (whoever names a digest must still be let in to that repository).
    let repository: String = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(url.repository_url().as_bytes());
        faster_hex::hex_string(&digest[..8])
    };
    let hex = manifest.digest.trim_start_matches("sha256:");
    let folder = options
        .cache_dir
        .join("oci")
        .join(format!("{repository}-{hex}"));
    if !folder.join("content").is_dir() {
        let size = layer["size"].as_u64().unwrap_or(0);
        if size > MAX_ARTIFACT_BYTES {
            return Err(Error::Invalid {
                url: url.repository_url(),
                message: format!("its layer is {size} bytes, more than tether unpacks"),
            });
        }
        let bytes = client.blob(&layer_digest, MAX_ARTIFACT_BYTES)?;
        unpack_into(&bytes, &folder)?;
    }
    let content = folder.join("content");
    // Used now: the last to go when the cache is trimmed.
    if let Ok(handle) = std::fs::File::open(&folder) {
        let _ = handle.set_modified(std::time::SystemTime::now());
    }
    trim_cache(&options.cache_dir.join("oci"));
    let kind = if helm {
        chart_kind(&content)?
    } else {
        Kind::Manifests
    };
    let annotation = |key: &str| value["annotations"][key].as_str().map(str::to_string);
    Ok(Pulled {
        url: url.repository_url(),
        digest: manifest.digest,
        tag,
        kind,
        folder: content,
        source: annotation(SOURCE_ANNOTATION),
        revision: annotation(REVISION_ANNOTATION),
    })
}

/// The artifacts kept: at most this many, the least recently pulled removed first (and
/// only those not pulled for an hour, so a render reading one is not disturbed).
const KEEP_ARTIFACTS: usize = 64;

fn trim_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut folders: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if folders.len() <= KEEP_ARTIFACTS {
        return;
    }
    folders.sort();
    let idle = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let excess = folders.len() - KEEP_ARTIFACTS;
    for (modified, path) in folders.into_iter().take(excess) {
        if modified < idle {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The manifest `reference` names, and the tag it was found by.
fn resolve(
    client: &mut Client,
    url: &OciUrl,
    reference: &OciRef,
) -> Result<(Option<String>, Manifest), Error> {
    match reference {
        OciRef::Digest(digest) => Ok((None, client.manifest(digest)?)),
        OciRef::Tag(tag) => Ok((Some(tag.clone()), client.manifest(tag)?)),
        OciRef::Semver(range) => {
            let tags = client.tags()?;
            // Helm writes a version's `+` as `_` in a tag.
            let versions: Vec<String> = tags.iter().map(|t| t.replace('_', "+")).collect();
            let (best, _) = range
                .best(versions.iter().map(String::as_str))
                .ok_or_else(|| Error::NoMatch {
                    repository: url.repository_url(),
                    range: range.text.clone(),
                    tags: shown_tags(&tags),
                })?;
            let tag = best.replace('+', "_");
            Ok((Some(tag.clone()), client.manifest(&tag)?))
        }
    }
}

fn shown_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        return "none".into();
    }
    let mut shown: Vec<&str> = tags.iter().take(10).map(String::as_str).collect();
    if tags.len() > 10 {
        shown.push("…");
    }
    shown.join(", ")
}

/// An unpacked chart: the top-level folder with a Chart.yaml, and its name and version
/// (read from the files already on disk: a poll of an unchanged tag asks nothing more).
fn chart_kind(content: &Path) -> Result<Kind, Error> {
    let mut folders: Vec<_> = std::fs::read_dir(content)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("Chart.yaml").is_file())
        .collect();
    folders.sort_by_key(|e| e.file_name());
    let Some(entry) = folders.first() else {
        return Err(Error::Local {
            what: content.display().to_string(),
            message: "the chart's tarball holds no folder with a Chart.yaml".into(),
        });
    };
    let text = std::fs::read_to_string(entry.path().join("Chart.yaml")).unwrap_or_default();
    let chart: serde_json::Value = serde_saphyr::from_str(&text).unwrap_or_default();
    Ok(Kind::HelmChart {
        name: chart["name"].as_str().unwrap_or_default().to_string(),
        version: chart["version"].as_str().unwrap_or_default().to_string(),
        folder: entry.file_name().to_string_lossy().into_owned(),
    })
}

/// Unpacks a tar+gzip layer into `folder/content`, atomically: regular files and folders
/// only (links are left out), no path leaving the folder, bounded in size and count.
pub fn unpack_into(bytes: &[u8], folder: &Path) -> Result<(), Error> {
    let local = |message: String| Error::Local {
        what: folder.display().to_string(),
        message,
    };
    std::fs::create_dir_all(folder).map_err(|e| local(e.to_string()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(folder)
        .map_err(|e| local(e.to_string()))?;
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new(gz);
    let (mut total, mut files) = (0u64, 0usize);
    let entries = archive
        .entries()
        .map_err(|e| local(format!("not a tar+gzip layer: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| local(format!("a broken tar entry: {e}")))?;
        let kind = entry.header().entry_type();
        if !kind.is_file() && !kind.is_dir() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| local(format!("a tar entry's path: {e}")))?
            .to_string_lossy()
            .into_owned();
        let Some(relative) = crate::source::tree::normalize(&path) else {
            return Err(local(format!(
                "{path:?} leaves the artifact's folder: refused"
            )));
        };
        if relative.is_empty() {
            continue;
        }
        files += 1;
        let too_much = || {
            local(format!(
                "more than {MAX_FILES} files or {} MiB unpacked: refused",
                MAX_ARTIFACT_BYTES >> 20
            ))
        };
        if files > MAX_FILES {
            return Err(too_much());
        }
        let target = staging.path().join(&relative);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| local(e.to_string()))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| local(e.to_string()))?;
        }
        let mut out = std::fs::File::create(&target).map_err(|e| local(e.to_string()))?;
        // The bytes written count, whatever the headers say (a PAX size can differ from the
        // header's): one more than what is left is a refusal.
        let left = MAX_ARTIFACT_BYTES - total;
        let written = std::io::copy(&mut std::io::Read::take(&mut entry, left + 1), &mut out)
            .map_err(|e| local(format!("{relative}: {e}")))?;
        total += written;
        if total > MAX_ARTIFACT_BYTES {
            return Err(too_much());
        }
    }
    let content = folder.join("content");
    let unpacked = staging.keep();
    if std::fs::rename(&unpacked, &content).is_err() {
        // Another pull unpacked the same digest first.
        let _ = std::fs::remove_dir_all(&unpacked);
    }
    Ok(())
}

/// A folder as a reproducible tar+gzip layer: its files by relative path in sorted order,
/// with no owner, a fixed mode and time (the same folder gives the same digest). `.git`
/// is left out; links are refused.
pub fn pack(dir: &Path) -> Result<Vec<u8>, Error> {
    let local = |message: String| Error::Local {
        what: dir.display().to_string(),
        message,
    };
    let mut files = Vec::new();
    collect(dir, dir, &mut files).map_err(local)?;
    files.sort();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(gz);
    for relative in files {
        let bytes =
            std::fs::read(dir.join(&relative)).map_err(|e| local(format!("{relative}: {e}")))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive
            .append_data(&mut header, &relative, bytes.as_slice())
            .map_err(|e| local(format!("{relative}: {e}")))?;
    }
    let gz = archive.into_inner().map_err(|e| local(e.to_string()))?;
    gz.finish().map_err(|e| local(e.to_string()))
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let relative = path
            .strip_prefix(root)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if entry.file_name() == ".git" {
            continue;
        }
        if kind.is_symlink() {
            return Err(format!(
                "{relative} is a symlink: an artifact holds files only; copy what it points to"
            ));
        }
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else {
            files.push(relative);
        }
    }
    Ok(())
}

/// What `tether push artifact` records on the artifact.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    pub source: Option<String>,
    pub revision: Option<String>,
    /// RFC 3339; the time of the push when not given.
    pub created: Option<String>,
}

/// Packs `dir` and pushes it under `tag` with Flux's media types; the manifest's digest.
pub fn push(
    url: &OciUrl,
    tag: &str,
    dir: &Path,
    annotations: &Annotations,
    options: &Options,
) -> Result<String, Error> {
    let layer = pack(dir)?;
    let mut client = Client::new(url, options)?;
    let config = b"{}".to_vec();
    let config_digest = client.push_blob(&config)?;
    let layer_digest = client.push_blob(&layer)?;
    let mut notes = serde_json::Map::new();
    let created = annotations
        .created
        .clone()
        .unwrap_or_else(crate::duration::now_rfc3339);
    notes.insert(CREATED_ANNOTATION.into(), created.into());
    if let Some(source) = &annotations.source {
        notes.insert(SOURCE_ANNOTATION.into(), source.clone().into());
    }
    if let Some(revision) = &annotations.revision {
        notes.insert(REVISION_ANNOTATION.into(), revision.clone().into());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": FLUX_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": FLUX_CONTENT, "digest": layer_digest, "size": layer.len()}],
        "annotations": notes,
    });
    let bytes = serde_json::to_vec(&manifest).expect("a JSON value serializes");
    client.push_manifest(tag, &bytes, OCI_MANIFEST)
}
