//! The Git cache on disk: where each remote's bare repository lives (one per URL and
//! identity, [`cache_key`]), its lock (shared to read a cached commit, exclusive to
//! fetch), the lock files an interrupted fetch leaves behind, and repacking.

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::remote::config_overrides;
use super::{Error, GitSource};

/// tether's cache folder: `$TETHER_CACHE_DIR`, else `$XDG_CACHE_HOME/tether`, else
/// `~/.cache/tether`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tether")
}

/// The default Git cache folder: `git` under [`cache_root`].
pub fn default_cache_dir() -> PathBuf {
    cache_root().join("git")
}

impl GitSource {
    /// The cache folder of this URL and identity.
    pub(super) fn cache_folder(&self, display_url: &str) -> PathBuf {
        let key = cache_key(display_url);
        self.cache_dir.join(match self.identity() {
            None => key,
            Some(identity) => {
                let digest = sha2::Sha256::digest(identity.as_bytes());
                let tag: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
                format!("{key}-as-{tag}")
            }
        })
    }
}

/// A folder name derived from the URL alone (credentials are never part of a URL here).
fn cache_key(url: &str) -> String {
    let digest = sha2::Sha256::digest(url.as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    let tail: String = url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    format!("{tail}-{hex}")
}

/// The cached repository of one URL and identity, with its lock file open (the lock is
/// released when this is dropped).
pub(super) struct Cache {
    pub(super) dir: PathBuf,
    lock: std::fs::File,
}

impl Cache {
    /// Creates the cache folder and opens the lock file of the repository at `dir` (not
    /// locked yet).
    pub(super) fn open(cache_dir: &Path, dir: PathBuf) -> Result<Self, Error> {
        let cache_err = |reason: String| Error::Cache {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(cache_dir).map_err(|e| cache_err(e.to_string()))?;
        let lock = std::fs::File::create(dir.with_extension("lock"))
            .map_err(|e| cache_err(e.to_string()))?;
        Ok(Self { dir, lock })
    }

    pub(super) fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Cache {
            path: self.dir.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The repository, when it already holds `commit`: read under the shared lock, so
    /// many readers share it (drift corrections of Applications sharing a repository).
    /// `None`, the lock released, when the commit must be fetched.
    pub(super) fn read_shared(
        &self,
        commit: gix::ObjectId,
    ) -> Result<Option<gix::Repository>, Error> {
        if !self.dir.join("HEAD").exists() {
            return Ok(None);
        }
        self.lock
            .lock_shared()
            .map_err(|e| self.error(format!("cannot lock: {e}")))?;
        let options = gix::open::Options::isolated();
        let found = gix::open_opts(&self.dir, options)
            .ok()
            .filter(|repo| repo.find_commit(commit).is_ok());
        if found.is_none() {
            self.lock
                .unlock()
                .map_err(|e| self.error(format!("cannot unlock: {e}")))?;
        }
        Ok(found)
    }

    /// Takes the lock for a fetch: one at a time per repository (concurrent fetches would
    /// race on packs and refs); then removes what an interrupted fetch left behind.
    pub(super) fn lock_exclusive(&self) -> Result<(), Error> {
        self.lock
            .lock()
            .map_err(|e| self.error(format!("cannot lock: {e}")))?;
        remove_stale_locks(&self.dir);
        Ok(())
    }

    /// Opens the repository to fetch into (creating it when new), configured for `source`.
    pub(super) fn open_or_init(
        &self,
        source: &GitSource,
        ssh_stderr: &Path,
    ) -> Result<gix::Repository, Error> {
        open_or_init(&self.dir, source, ssh_stderr).map_err(|e| self.error(e))
    }
}

/// Removes the lock files (`shallow.lock`, `packed-refs.lock`, `refs/…/x.lock`) that a
/// process killed in the middle of a fetch left in the cached repository `dir`. Only called
/// while holding the repository's exclusive lock, so no live fetch owns them; without this,
/// every later fetch failed with "File exists" until someone removed them by hand.
fn remove_stale_locks(dir: &Path) {
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && (folder != dir || entry.file_name() == "refs") {
                folders.push(path);
            } else if !is_dir && path.extension().is_some_and(|e| e == "lock") {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::warn!(
                        path = %path.display(),
                        "removed a lock file that an interrupted fetch left behind"
                    ),
                    Err(err) => {
                        tracing::debug!(path = %path.display(), %err, "cannot remove a stale lock")
                    }
                }
            }
        }
    }
}

/// A cache holding more pack files than this is repacked into one.
const PACK_LIMIT: usize = 32;

/// Every fetch that receives objects adds a pack file, and lookups slow down with their
/// number: past [`PACK_LIMIT`], `git repack` merges them (under the cache's exclusive
/// lock). Without a `git` program the packs stay as they are (a debug log says so).
pub(super) fn consolidate_packs(cache: &Path) {
    let packs = std::fs::read_dir(cache.join("objects/pack"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
        .unwrap_or(0);
    if packs <= PACK_LIMIT {
        return;
    }
    // Isolated like tether's own Git access: no user or system configuration.
    let result = std::process::Command::new("git")
        .arg("-C")
        .arg(cache)
        // -k: keep objects no ref reaches (tether's fetched commits have no refs), so
        // every cached revision stays readable.
        .args(["repack", "-a", "-d", "-k", "-q"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output();
    match result {
        Ok(output) if output.status.success() => {
            tracing::debug!(cache = %cache.display(), packs, "repacked the Git cache");
        }
        Ok(output) => tracing::warn!(
            cache = %cache.display(),
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "git repack of the cache failed; its packs stay as they are"
        ),
        Err(err) => tracing::debug!(%err, "no git program to repack the cache with"),
    }
}

fn open_or_init(
    dir: &Path,
    source: &GitSource,
    ssh_stderr: &Path,
) -> Result<gix::Repository, gix::Error> {
    // Isolated: the user's ~/.gitconfig, credential helpers, url rewrites and GIT_* variables
    // must not change what tether fetches or how it authenticates.
    let options =
        gix::open::Options::isolated().config_overrides(config_overrides(source, ssh_stderr));
    if dir.join("HEAD").exists() {
        return gix::open_opts(dir, options);
    }
    // A half-created folder from an interrupted first fetch: start over.
    let _ = std::fs::remove_dir_all(dir);
    Ok(gix::ThreadSafeRepository::init_opts(
        dir,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        options,
    )?
    .to_thread_local())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::reference::RefSpec;

    #[test]
    fn sources_with_other_credentials_keep_apart_caches() {
        let url = "https://git.example.com/team/deploy.git";
        let anonymous = GitSource::new(url, RefSpec::Default);
        let mut token = anonymous.clone();
        token.auth.password = Some("t0ken".into());
        let mut other_token = anonymous.clone();
        other_token.auth.password = Some("other".into());
        let mut named = anonymous.clone();
        named.credential_id = Some("secret apps/git".into());
        assert_eq!(anonymous.identity(), None);
        let folders: std::collections::BTreeSet<PathBuf> =
            [&anonymous, &token, &other_token, &named]
                .iter()
                .map(|s| s.cache_folder(url))
                .collect();
        assert_eq!(folders.len(), 4, "{folders:?}");
        // The same credentials share one cache.
        let mut same = anonymous.clone();
        same.auth.password = Some("t0ken".into());
        assert_eq!(same.cache_folder(url), token.cache_folder(url));
        // No secret in a folder's name.
        assert!(
            !token
                .cache_folder(url)
                .display()
                .to_string()
                .contains("t0ken"),
            "{}",
            token.cache_folder(url).display()
        );
    }

    #[test]
    fn cache_keys_differ_per_url_and_read_well() {
        let a = cache_key("https://git.example.com/team/deploy.git");
        let b = cache_key("ssh://git@git.example.com/team/deploy.git");
        assert_ne!(a, b);
        assert!(a.starts_with("deploy-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
    }
}
