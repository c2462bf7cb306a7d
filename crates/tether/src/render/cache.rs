//! The render cache: a renderer's output by the digest of its inputs (only for a Git revision),
//! trimmed to [`RENDER_CACHE_BYTES`] least recently used first; and a program's identity for the key.

use super::RenderOptions;

/// Identifies a program without running it: path, size and modification time.
pub(super) fn tool_identity(program: &std::path::Path) -> String {
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
/// a folder on disk may have changed since). `produce` says whether its output may be
/// kept: not when it holds decrypted Secrets.
pub(super) fn cached(
    options: &RenderOptions,
    key: serde_json::Value,
    produce: impl FnOnce() -> Result<(Vec<u8>, bool), String>,
) -> Result<Vec<u8>, String> {
    let (Some(_), Some(dir)) = (&options.revision, &options.cache_dir) else {
        return produce().map(|(bytes, _)| bytes);
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
    let (bytes, keep) = produce()?;
    if keep && std::fs::create_dir_all(&folder).is_ok() {
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
pub(super) fn trim_cache(folder: &std::path::Path, limit: u64) {
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
