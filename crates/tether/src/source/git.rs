//! Git with gix: resolve a ref on a remote, fetch only that commit (shallow) into a cache,
//! and read its tree straight from the object database.
//!
//! One bare repository per remote URL under the cache folder, locked while in use. A
//! revision already in the cache costs one ref listing and no object transfer; a full
//! commit id already in the cache costs no network at all. Start at [`GitSource::fetch`].
//!
//! # Security
//! Credentials come from files or environment variables, never from the URL or the command
//! line; they are sent only over https, never logged, and never part of a cache path. SSH
//! checks host keys strictly against a known_hosts file and never prompts.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix::bstr::ByteSlice;
use gix::credentials::helper::Action;
use gix::credentials::protocol::Outcome as CredentialOutcome;
use gix::protocol::handshake::Ref;
use gix::remote::fetch::{Shallow, Status, Tags};
use gix::remote::{Direction, ref_map};
use sha2::Digest;

use super::reference::{RefSpec, is_commit_id};
use super::signature::{self, SignaturePolicy};
use super::tree::{EntryKind, Tree, TreeEntry, TreeError};

/// Credentials and trust for one remote.
#[derive(Clone, Default)]
pub struct GitAuth {
    /// HTTPS user name (default `git`, which token-based servers accept).
    pub username: Option<String>,
    /// HTTPS password or token, read from a file or an environment variable.
    pub password: Option<String>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// SSH known_hosts file (default `~/.ssh/known_hosts`); host keys are always checked.
    pub known_hosts: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for HTTPS, on top of the system's.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Where to fetch from and what.
#[derive(Debug, Clone)]
pub struct GitSource {
    /// A URL (`https://`, `http://`, `git://`, `ssh://`, `file://`, `git@host:path`) or a local path.
    pub url: String,
    pub reference: RefSpec,
    pub auth: GitAuth,
    /// Upper bound on one network operation (connect, each read).
    pub timeout: Duration,
    /// When set, the resolved commit must be signed by one of these keys.
    pub verify: Option<SignaturePolicy>,
    /// The cache folder (one bare repository per URL below it).
    pub cache_dir: PathBuf,
    /// Resolve the ref from a listing of the remote's refs this process took at most this
    /// long before the fetch began (zero: only one taken while it waited for the cache).
    /// Polls of many Applications following one repository then share one listing.
    pub listing_max_age: Duration,
    /// Whose credentials these are, when they are known by name (the agent's: the Secret
    /// an Application names); else they are known by a digest of `auth`. The Git cache and
    /// the ref listings are kept apart per identity: a source without credentials never
    /// reads what one with credentials fetched.
    pub credential_id: Option<String>,
}

/// The commit a ref resolved to, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// The full commit id.
    pub commit: String,
    /// The remote ref it came from (`refs/heads/main`, `refs/tags/v1.2.0`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ref: Option<String>,
    pub url: String,
    /// The first line of the commit message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The commit's author (name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

impl Revision {
    /// The commit id abbreviated to 12 digits, for messages.
    pub fn short(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }
}

/// What a fetch did, for logs, tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Whether the remote was contacted at all.
    pub contacted_remote: bool,
    /// Objects received (0 when the commit was already cached).
    pub objects_received: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} is not a Git URL or local path: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "{url}: the URL carries a password; put it in a file (--git-password-file) or an \
         environment variable (--git-password-env) instead"
    )]
    CredentialsInUrl { url: String },
    #[error(
        "{url}: cannot reach the Git server: {reason}; check the URL and that the server is up"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url}: no answer within {seconds} s; check the network or raise --git-timeout")]
    Timeout { url: String, seconds: u64 },
    #[error(
        "{url}: the Git server answered {status}; it is up but failing: check its logs, or retry later"
    )]
    ServerError { url: String, status: String },
    #[error("{url}: authentication failed: {reason}")]
    Auth { url: String, reason: String },
    #[error(
        "{url}: the SSH host key is not trusted: {reason}; add the server's key to {known_hosts} \
         (ssh-keyscan) or pass --known-hosts"
    )]
    HostKey {
        url: String,
        known_hosts: String,
        reason: String,
    },
    #[error("{url}: not a Git repository (or not exported by the server): {reason}")]
    NotARepository { url: String, reason: String },
    #[error("{url}: {spec} not found{available}")]
    RefNotFound {
        url: String,
        spec: String,
        available: String,
    },
    #[error("{url}: no tag matches semver range {range:?}{available}")]
    NoSemverMatch {
        url: String,
        range: String,
        available: String,
    },
    #[error("{url}: commit {commit}: {reason}")]
    Signature {
        url: String,
        commit: String,
        reason: String,
    },
    #[error("Git cache {path}: {reason}")]
    Cache { path: String, reason: String },
    #[error("{url}: {reason}")]
    Git { url: String, reason: String },
}

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
    pub fn new(url: impl Into<String>, reference: RefSpec) -> Self {
        Self {
            url: url.into(),
            reference,
            auth: GitAuth::default(),
            timeout: Duration::from_secs(60),
            verify: None,
            cache_dir: default_cache_dir(),
            listing_max_age: Duration::ZERO,
            credential_id: None,
        }
    }

    /// Who fetches: [`Self::credential_id`], else a digest of the credentials in `auth`;
    /// `None` without credentials.
    pub fn identity(&self) -> Option<String> {
        if let Some(id) = &self.credential_id {
            return Some(id.clone());
        }
        let auth = &self.auth;
        if auth.username.is_none() && auth.password.is_none() && auth.ssh_key.is_none() {
            return None;
        }
        let mut hasher = sha2::Sha256::new();
        for part in [&auth.username, &auth.password] {
            hasher.update(part.as_deref().unwrap_or_default().as_bytes());
            hasher.update([0]);
        }
        if let Some(key) = &auth.ssh_key {
            hasher.update(
                std::fs::read(key).unwrap_or_else(|_| key.as_os_str().as_encoded_bytes().to_vec()),
            );
        }
        let digest = hasher.finalize();
        Some(format!(
            "auth {}",
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// The cache folder of this URL and identity.
    fn cache_folder(&self, display_url: &str) -> PathBuf {
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

    /// Whether a webhook announced a change to this remote that no ref listing taken with
    /// these credentials has seen since: a sync now must list the refs, not reuse a
    /// commit it knows.
    pub fn change_announced(&self) -> bool {
        change_announced(&self.url, self.identity().as_deref())
    }

    /// Resolves the ref, fetches its commit if the cache lacks it, checks its signature
    /// when asked, and returns the commit's tree. Blocking: call from a blocking thread.
    pub fn fetch(&self) -> Result<(Revision, CommitTree, FetchStats), Error> {
        install_crypto_provider();
        let url = normalize_url(&self.url)?;
        let display_url = url.to_bstring().to_string();
        let cache = self.cache_folder(&display_url);
        let cache_err = |reason: String| Error::Cache {
            path: cache.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(|e| cache_err(e.to_string()))?;
        let waiting_since = Instant::now();
        let lock = std::fs::File::create(cache.with_extension("lock"))
            .map_err(|e| cache_err(e.to_string()))?;
        // A full commit id already cached is only read: many readers at once (drift
        // corrections of Applications sharing a repository) share the lock.
        if let Some(found) = self.read_cached_commit(&cache, &display_url, &lock)? {
            return Ok(found);
        }
        // One fetch at a time per repository: concurrent fetches would race on packs and refs.
        lock.lock()
            .map_err(|e| cache_err(format!("cannot lock: {e}")))?;
        remove_stale_locks(&cache);

        // ssh writes why it failed (host key, auth) to its stderr: keep it to explain errors.
        let ssh_stderr = cache.with_extension("ssh-stderr");
        let _ = std::fs::remove_file(&ssh_stderr);
        let repo = open_or_init(&cache, self, &ssh_stderr).map_err(|e| cache_err(e.to_string()))?;
        let session = Session {
            source: self,
            url: &url,
            display_url: &display_url,
            started: Instant::now(),
            waiting_since,
            ssh_stderr: &ssh_stderr,
        };
        let (commit, from_ref, stats) = session.resolve_and_fetch(&repo)?;
        if stats.objects_received > 0 {
            consolidate_packs(&cache);
        }
        let (summary, author) = commit_details(&repo, commit);
        let revision = Revision {
            commit: commit.to_string(),
            from_ref,
            url: display_url.clone(),
            summary,
            author,
        };
        if let Some(policy) = &self.verify {
            let object = repo.find_commit(commit).map_err(|e| session.git_err(e))?;
            signature::verify_commit(&object, policy).map_err(|reason| Error::Signature {
                url: display_url.clone(),
                commit: revision.commit.clone(),
                reason,
            })?;
        }
        let tree = CommitTree::new(repo.into_sync(), commit, &display_url)
            .map_err(|e| session.git_err(e))?;
        drop(lock);
        Ok((revision, tree, stats))
    }
}

impl GitSource {
    /// What a fetch now would resolve the ref to, known without opening the cache or
    /// contacting the remote: the commit (and the ref it came from) that a listing of the
    /// remote's refs, taken by this process at most `listing_max_age` ago and not made stale
    /// by a webhook since, gives for it; a full commit id is itself. `None` when there is no
    /// such listing or the ref is not in it. Summary and author are not known here.
    pub fn recently_listed(&self) -> Option<Revision> {
        let url = normalize_url(&self.url).ok()?.to_bstring().to_string();
        let (commit, from_ref) = match &self.reference {
            RefSpec::Commit(id)
                if id.len() == 40 && gix::ObjectId::from_hex(id.as_bytes()).is_ok() =>
            {
                (id.clone(), None)
            }
            reference => {
                let not_before = Instant::now()
                    .checked_sub(self.listing_max_age)
                    .unwrap_or_else(Instant::now);
                let listing = recent_listing(&url, self.identity().as_deref(), not_before)?;
                let found = listed_ref(reference, &listing)?;
                (found.commit.to_string(), Some(found.name))
            }
        };
        Some(Revision {
            commit,
            from_ref,
            url,
            summary: None,
            author: None,
        })
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

impl GitSource {
    /// The tree of the full commit id this source names, when the cache already holds it,
    /// read under a shared `lock`; `None` when it must be fetched.
    fn read_cached_commit(
        &self,
        cache: &Path,
        display_url: &str,
        lock: &std::fs::File,
    ) -> Result<Option<(Revision, CommitTree, FetchStats)>, Error> {
        let RefSpec::Commit(id) = &self.reference else {
            return Ok(None);
        };
        let Ok(oid) = gix::ObjectId::from_hex(id.as_bytes()) else {
            return Ok(None);
        };
        if !cache.join("HEAD").exists() {
            return Ok(None);
        }
        lock.lock_shared().map_err(|e| Error::Cache {
            path: cache.display().to_string(),
            reason: format!("cannot lock: {e}"),
        })?;
        let options = gix::open::Options::isolated();
        let found = gix::open_opts(cache, options)
            .ok()
            .filter(|repo| repo.find_commit(oid).is_ok());
        let Some(repo) = found else {
            lock.unlock().map_err(|e| Error::Cache {
                path: cache.display().to_string(),
                reason: format!("cannot unlock: {e}"),
            })?;
            return Ok(None);
        };
        let git_err = |e: &dyn std::fmt::Display| Error::Git {
            url: display_url.to_string(),
            reason: e.to_string(),
        };
        if let Some(policy) = &self.verify {
            let object = repo.find_commit(oid).map_err(|e| git_err(&e))?;
            signature::verify_commit(&object, policy).map_err(|reason| Error::Signature {
                url: display_url.to_string(),
                commit: oid.to_string(),
                reason,
            })?;
        }
        let (summary, author) = commit_details(&repo, oid);
        let tree = CommitTree::new(repo.into_sync(), oid, display_url).map_err(|e| git_err(&e))?;
        let revision = Revision {
            commit: oid.to_string(),
            from_ref: None,
            url: display_url.to_string(),
            summary,
            author,
        };
        Ok(Some((revision, tree, FetchStats::default())))
    }
}

/// Whether an error's text carries an HTTP 404 from the server: "404" standing alone, not
/// inside a number, and not in the URL (a port such as 40419 once made a refused
/// connection read as "not a Git repository").
fn says_404(lower: &str, url: &str) -> bool {
    let words = lower.replace(&url.to_lowercase(), "");
    words.match_indices("404").any(|(i, _)| {
        let before = words[..i].chars().next_back();
        let after = words[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A commit's summary line and author name, when the cache can read them.
fn commit_details(repo: &gix::Repository, oid: gix::ObjectId) -> (Option<String>, Option<String>) {
    let Ok(commit) = repo.find_commit(oid) else {
        return (None, None);
    };
    let summary = commit.message().ok().map(|m| m.summary().to_string());
    let author = commit.author().ok().map(|a| a.name.to_string());
    (summary, author)
}

/// A cache holding more pack files than this is repacked into one.
const PACK_LIMIT: usize = 32;

/// Every fetch that receives objects adds a pack file, and lookups slow down with their
/// number: past [`PACK_LIMIT`], `git repack` merges them (under the cache's exclusive
/// lock). Without a `git` program the packs stay as they are (a debug log says so).
fn consolidate_packs(cache: &Path) {
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

/// HTTPS goes through rustls with the ring provider, as the Kubernetes client does; the
/// provider is chosen once per process.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider was installed first, which is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A local path becomes a `file://` URL; credentials in a URL are refused.
fn normalize_url(given: &str) -> Result<gix::Url, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: given.to_string(),
        reason,
    };
    let looks_local = given.starts_with('/') || given.starts_with('.') || Path::new(given).exists();
    let text = if looks_local && !given.contains("://") {
        let path = std::fs::canonicalize(given).map_err(|e| invalid(format!("{e}")))?;
        format!("file://{}", path.display())
    } else {
        given.to_string()
    };
    let url =
        gix::Url::from_bytes(text.as_bytes().as_bstr()).map_err(|e| invalid(e.to_string()))?;
    if url.password().is_some() {
        return Err(Error::CredentialsInUrl { url: redact(given) });
    }
    Ok(url)
}

/// `https://user:secret@host/x` → `https://user:***@host/x`, for messages only.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
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

fn config_overrides(source: &GitSource, ssh_stderr: &Path) -> Vec<String> {
    let mut overrides = vec![
        "gitoxide.credentials.terminalPrompt=false".to_string(),
        "credential.helper=".to_string(),
        "protocol.version=2".to_string(),
    ];
    let timeout = source.timeout.as_secs().max(1);
    let mut ssh = String::from("ssh");
    if let Some(key) = &source.auth.ssh_key {
        ssh.push_str(&format!(
            " -i {} -o IdentitiesOnly=yes",
            shell_quote(&key.display().to_string())
        ));
    }
    let known_hosts = known_hosts_path(&source.auth);
    ssh.push_str(&format!(
        " -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes \
         -o ConnectTimeout={timeout} -o ServerAliveInterval={} -o ServerAliveCountMax=3 \
         -o LogLevel=ERROR 2>{}",
        shell_quote(&known_hosts.display().to_string()),
        timeout.div_ceil(3).max(1),
        shell_quote(&ssh_stderr.display().to_string()),
    ));
    overrides.push(format!("core.sshCommand={ssh}"));
    // The command is OpenSSH: without this gix probes it with `ssh -G` first.
    overrides.push("ssh.variant=ssh".into());
    overrides
}

fn known_hosts_path(auth: &GitAuth) -> PathBuf {
    auth.known_hosts.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh").join("known_hosts"))
            .unwrap_or_else(|| PathBuf::from("/etc/ssh/ssh_known_hosts"))
    })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A ref the remote advertised, reduced to what resolution needs.
#[derive(Debug, Clone)]
struct RemoteRef {
    name: String,
    /// The commit (annotated tags peeled).
    commit: gix::ObjectId,
}

#[derive(Clone)]
struct Listing {
    refs: Vec<RemoteRef>,
    /// The branch HEAD points at, if the server says.
    head: Option<String>,
}

struct Session<'a> {
    source: &'a GitSource,
    url: &'a gix::Url,
    display_url: &'a str,
    started: Instant,
    /// When this fetch began to wait for the repository's lock.
    waiting_since: Instant,
    /// Where ssh's stderr goes (the command runs through `sh -c`, which redirects it).
    ssh_stderr: &'a Path,
}

type Connection<'r, 'repo> = gix::remote::Connection<
    'r,
    'static,
    'repo,
    Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
>;

impl Session<'_> {
    fn resolve_and_fetch(
        &self,
        repo: &gix::Repository,
    ) -> Result<(gix::ObjectId, Option<String>, FetchStats), Error> {
        let mut stats = FetchStats::default();
        // A full commit id already in the cache needs no network.
        if let RefSpec::Commit(id) = &self.source.reference
            && id.len() == 40
            && let Ok(oid) = gix::ObjectId::from_hex(id.as_bytes())
            && repo.find_commit(oid).is_ok()
        {
            return Ok((oid, None, stats));
        }
        stats.contacted_remote = true;
        // Many Applications following one repository wait for its lock together (after a
        // webhook, say): a listing taken after this one began waiting is as fresh as its own.
        let not_before = self
            .waiting_since
            .checked_sub(self.source.listing_max_age)
            .unwrap_or(self.waiting_since);
        let identity = self.source.identity();
        let listing = match recent_listing(self.display_url, identity.as_deref(), not_before) {
            Some(listing) => listing,
            None => {
                let listed_at = Instant::now();
                let listing = self.list_refs(repo)?;
                remember_listing(self.display_url, identity.as_deref(), listed_at, &listing);
                listing
            }
        };
        let target = self.pick(&listing, repo)?;
        let (commit, from_ref, fetch_src) = match target {
            Target::Ref(r) => (Some(r.commit), Some(r.name.clone()), r.name),
            Target::Commit(id) => (Some(id), None, id.to_string()),
            Target::ShortCommit(prefix) => (None, None, prefix),
        };
        if let Some(commit) = commit
            && repo.find_commit(commit).is_ok()
        {
            tracing::debug!(%commit, "already in the Git cache; nothing to fetch");
            return Ok((commit, from_ref, stats));
        }
        match commit {
            Some(commit) => {
                let received = self
                    .fetch_one(repo, &fetch_src, Some(1))
                    .map_err(|err| match err {
                        // upload-pack's words for a commit id it does not have.
                        Error::Git { reason, .. } if reason.contains("not our ref") => {
                            Error::RefNotFound {
                                url: self.display_url.to_string(),
                                spec: format!("commit {commit}"),
                                available: " on the server; check --ref (a commit must be on a branch or tag the server has)".into(),
                            }
                        }
                        other => other,
                    })?;
                stats.objects_received = received;
                Ok((commit, from_ref, stats))
            }
            None => {
                // An abbreviated id names no ref: fetch the branches' full history and look it up.
                stats.objects_received = self.fetch_one(repo, "refs/heads/*", None)?;
                let prefix =
                    gix::hash::Prefix::from_hex(&fetch_src).map_err(|e| self.git_err(e))?;
                match repo.objects.lookup_prefix(prefix, None) {
                    Ok(Some(Ok(id))) => Ok((id, None, stats)),
                    Ok(Some(Err(()))) => Err(Error::RefNotFound {
                        url: self.display_url.to_string(),
                        spec: format!("commit {fetch_src} (ambiguous: use more digits)"),
                        available: String::new(),
                    }),
                    _ => Err(Error::RefNotFound {
                        url: self.display_url.to_string(),
                        spec: format!("commit {fetch_src}"),
                        available: " on any branch".into(),
                    }),
                }
            }
        }
    }

    fn connect<'r, 'repo>(
        &self,
        remote: &'r gix::Remote<'repo>,
    ) -> Result<Connection<'r, 'repo>, Error> {
        let mut connection = if self.url.scheme == gix::url::Scheme::Git {
            // gix's own git:// transport has no read timeout: give it a socket that has one.
            remote.to_connection_with_transport(self.git_transport()?)
        } else {
            remote
                .connect(Direction::Fetch)
                .map_err(|e| self.classify(e))?
        };
        if let Some(options) = self.http_options(remote.repo())? {
            connection.set_transport_options(options);
        }
        let username = self
            .source
            .auth
            .username
            .clone()
            .unwrap_or_else(|| "git".into());
        let password = self.source.auth.password.clone();
        Ok(connection
            .with_credentials(move |action| credentials(action, &username, password.as_deref())))
    }

    fn list_refs(&self, repo: &gix::Repository) -> Result<Listing, Error> {
        let remote = repo
            .remote_at(self.url.clone())
            .map_err(|e| self.git_err(e))?
            .with_fetch_tags(Tags::None);
        let connection = self.connect(&remote)?;
        let options = ref_map::Options {
            prefix_from_spec_as_filter_on_remote: false,
            ..Default::default()
        };
        let (map, _handshake) = connection
            .ref_map(gix::progress::Discard, options)
            .map_err(|e| self.classify(e))?;
        let mut refs = Vec::new();
        let mut head = None;
        for r in &map.remote_refs {
            match r {
                Ref::Symbolic {
                    full_ref_name,
                    target,
                    ..
                } if full_ref_name == "HEAD" => head = Some(target.to_string()),
                Ref::Unborn {
                    full_ref_name,
                    target,
                    ..
                } if full_ref_name == "HEAD" => head = Some(target.to_string()),
                _ => {}
            }
            let (name, id, peeled) = r.unpack();
            if let Some(id) = peeled.or(id) {
                refs.push(RemoteRef {
                    name: name.to_string(),
                    commit: id.to_owned(),
                });
            }
        }
        Ok(Listing { refs, head })
    }

    fn pick(&self, listing: &Listing, repo: &gix::Repository) -> Result<Target, Error> {
        let reference = &self.source.reference;
        if let Some(found) = listed_ref(reference, listing) {
            return Ok(Target::Ref(found));
        }
        let not_found = |spec: String, kind: Option<&str>| Error::RefNotFound {
            url: self.display_url.to_string(),
            spec,
            available: available(listing, kind),
        };
        match reference {
            RefSpec::Default => Err(not_found(
                "a default branch (HEAD)".into(),
                Some("refs/heads/"),
            )),
            RefSpec::Branch(b) => Err(not_found(format!("branch {b:?}"), Some("refs/heads/"))),
            RefSpec::Tag(t) => Err(not_found(format!("tag {t:?}"), Some("refs/tags/"))),
            RefSpec::Name(n) if is_commit_id(n) => Ok(self.commit_target(n, listing, repo)),
            RefSpec::Name(n) => Err(not_found(format!("branch, tag or commit {n:?}"), None)),
            RefSpec::Commit(id) => Ok(self.commit_target(id, listing, repo)),
            RefSpec::Semver(range) => Err(Error::NoSemverMatch {
                url: self.display_url.to_string(),
                range: range.text.clone(),
                available: available(listing, Some("refs/tags/")),
            }),
        }
    }

    fn commit_target(&self, id: &str, listing: &Listing, repo: &gix::Repository) -> Target {
        if id.len() == 40 {
            return Target::Commit(gix::ObjectId::from_hex(id.as_bytes()).expect("40 hex digits"));
        }
        // An abbreviation of an advertised tip, or of a commit already cached.
        let matches: BTreeSet<gix::ObjectId> = listing
            .refs
            .iter()
            .filter(|r| r.commit.to_string().starts_with(id))
            .map(|r| r.commit)
            .collect();
        if matches.len() == 1 {
            return Target::Commit(*matches.iter().next().expect("one element"));
        }
        if let Ok(prefix) = gix::hash::Prefix::from_hex(id)
            && let Ok(Some(Ok(found))) = repo.objects.lookup_prefix(prefix, None)
        {
            return Target::Commit(found);
        }
        Target::ShortCommit(id.to_string())
    }

    /// Fetches `src` into `refs/tether/...` (depth-limited when asked); returns the objects received.
    fn fetch_one(
        &self,
        repo: &gix::Repository,
        src: &str,
        depth: Option<u32>,
    ) -> Result<u64, Error> {
        let local = if src.ends_with("/*") {
            "refs/tether/branches/*".to_string()
        } else {
            format!("refs/tether/{}", src.trim_start_matches("refs/"))
        };
        let spec = format!("+{src}:{local}");
        let remote = repo
            .remote_at(self.url.clone())
            .map_err(|e| self.git_err(e))?
            .with_fetch_tags(Tags::None)
            .with_refspecs([spec.as_str()], Direction::Fetch)
            .map_err(|e| self.git_err(e))?;
        let connection = self.connect(&remote)?;
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, ref_map::Options::default())
            .map_err(|e| self.classify(e))?;
        let shallow = match depth.and_then(NonZeroU32::new) {
            Some(depth) => Shallow::DepthAtRemote(depth),
            None if repo.is_shallow().unwrap_or(false) => Shallow::undo(),
            None => Shallow::NoChange,
        };
        let interrupt = AtomicBool::new(false);
        let outcome = prepare
            .with_shallow(shallow)
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| self.classify(e))?;
        Ok(match outcome.status {
            Status::Change {
                write_pack_bundle, ..
            } => write_pack_bundle.index.num_objects as u64,
            Status::NoPackReceived { .. } => 0,
        })
    }

    fn git_transport(
        &self,
    ) -> Result<Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>, Error>
    {
        use gix::protocol::transport::{Protocol, client::git};
        use std::net::{TcpStream, ToSocketAddrs};
        let host = self.url.host().ok_or_else(|| Error::InvalidUrl {
            url: self.display_url.to_string(),
            reason: "a git:// URL needs a host".into(),
        })?;
        let port = self.url.port.unwrap_or(9418);
        let unreachable = |reason: String| Error::Unreachable {
            url: self.display_url.to_string(),
            reason,
        };
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| unreachable(format!("{host} has no address")))?;
        let read = TcpStream::connect_timeout(&address, self.source.timeout)
            .map_err(|e| unreachable(e.to_string()))?;
        read.set_read_timeout(Some(self.source.timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        read.set_write_timeout(Some(self.source.timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        let write = read.try_clone().map_err(|e| unreachable(e.to_string()))?;
        let connection = git::blocking_io::Connection::new(
            read,
            write,
            Protocol::V2,
            self.url.path.clone(),
            Some((host.to_owned(), self.url.port)),
            git::ConnectMode::Daemon,
            false,
        )
        .custom_url(Some(self.url.to_bstring()));
        Ok(Box::new(connection))
    }

    /// HTTP(S) options: our timeout, extra CA certificates, no proxy from the environment
    /// unless configured (reqwest would otherwise read HTTP(S)_PROXY itself).
    fn http_options(
        &self,
        repo: &gix::Repository,
    ) -> Result<Option<Box<dyn std::any::Any>>, Error> {
        use gix::protocol::transport::client::blocking_io::http;
        let Some(mut options) = repo
            .transport_options(self.url.to_bstring().as_bstr(), None)
            .map_err(|e| self.git_err(e))?
        else {
            return Ok(None);
        };
        let extra_ca = match &self.source.auth.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| Error::Git {
                    url: self.display_url.to_string(),
                    reason: format!("cannot read CA file {}: {e}", path.display()),
                })?;
                Some(
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Git {
                        url: self.display_url.to_string(),
                        reason: format!("CA file {} holds no PEM certificate: {e}", path.display()),
                    })?,
                )
            }
            None => None,
        };
        if let Some(http_options) = options.downcast_mut::<http::Options>() {
            let timeout = self.source.timeout;
            let configure: Box<http::reqwest::ConfigureClientFn> =
                Box::new(move |builder: reqwest::blocking::ClientBuilder| {
                    let mut builder = builder
                        .connect_timeout(timeout.min(Duration::from_secs(30)))
                        .timeout(timeout);
                    if let Some(certs) = &extra_ca {
                        builder = builder.tls_certs_merge(certs.iter().cloned());
                    }
                    Ok(builder)
                });
            http_options.backend = Some(Arc::new(Mutex::new(http::reqwest::Options {
                configure_client: Some(configure),
                configure_request: None,
            })));
        }
        Ok(Some(options))
    }

    fn git_err(&self, err: impl std::fmt::Display) -> Error {
        Error::Git {
            url: self.display_url.to_string(),
            reason: err.to_string(),
        }
    }

    /// Maps gix's errors to ones that say what to do. Classes differ per transport, so
    /// this looks at the class, the io error kind and the server's own `ERR` line.
    fn classify(&self, err: gix::Error) -> Error {
        let url = self.display_url.to_string();
        let mut chain: Vec<String> = err.iter_errors().map(|e| e.to_string()).collect();
        if self.url.scheme == gix::url::Scheme::Ssh
            && let Ok(stderr) = std::fs::read_to_string(self.ssh_stderr)
        {
            // ssh's own words ("Host key verification failed.") beat "failed to fill whole buffer".
            let said: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with('@') && !l.starts_with("Please contact")
                })
                .collect();
            if let Some(last) = said.last() {
                chain.push(last.to_string());
            }
            if said
                .iter()
                .any(|l| l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"))
            {
                chain.push("remote host identification has changed".into());
            }
        }
        let text = chain.join(": ");
        let lower = text.to_lowercase();
        let io_kind = err
            .iter_errors()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .map(|e| e.kind());
        let deepest = chain.last().cloned().unwrap_or_default();
        if matches!(
            io_kind,
            Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
        ) || lower.contains("timed out")
            || lower.contains("operation timed out")
        {
            return Error::Timeout {
                url,
                seconds: self
                    .source
                    .timeout
                    .as_secs()
                    .max(self.started.elapsed().as_secs()),
            };
        }
        if lower.contains("host key verification failed")
            || lower.contains("remote host identification has changed")
        {
            return Error::HostKey {
                url,
                known_hosts: known_hosts_path(&self.source.auth).display().to_string(),
                reason: deepest,
            };
        }
        if lower.contains("will not send credentials in clear text") {
            return Error::Auth {
                url,
                reason:
                    "credentials are sent only over https, never plain http; use an https:// URL"
                        .into(),
            };
        }
        if err.is_unauthenticated()
            || lower.contains("permission denied")
            || lower.contains("authentication")
        {
            let reason = if self.url.scheme == gix::url::Scheme::Ssh {
                "the server refused the SSH key; check --ssh-key and that the key is authorized"
                    .to_string()
            } else if self.source.auth.password.is_some() {
                "the server refused the user name and password/token".to_string()
            } else {
                "the server wants credentials; give --git-password-file or --git-password-env"
                    .to_string()
            };
            return Error::Auth { url, reason };
        }
        if lower.contains("not exported")
            || lower.contains("not a git repository")
            || lower.contains("does not appear to be a git repository")
            || lower.contains("repository not found")
            || says_404(&lower, &url)
            || (err.is_not_found() && self.url.scheme == gix::url::Scheme::File)
        {
            return Error::NotARepository {
                url,
                reason: deepest,
            };
        }
        if let Some(status) = http_server_error(&text) {
            return Error::ServerError { url, status };
        }
        if err.can_retry()
            || matches!(
                io_kind,
                Some(
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                )
            )
            || lower.contains("could not connect")
            || lower.contains("could not resolve")
            || lower.contains("connection refused")
            || err.is_not_found()
        {
            return Error::Unreachable {
                url,
                reason: deepest,
            };
        }
        Error::Git { url, reason: text }
    }
}

/// "500 Internal Server Error" when an HTTP Git server answered with a 5xx status (reqwest
/// says "HTTP status server error (500 Internal Server Error) for url (…)").
fn http_server_error(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("HTTP status server error (")?;
    let status = rest.split_once(')').map_or(rest, |(status, _)| status);
    Some(status.to_string())
}

/// The last ref listing per URL and identity (see [`GitSource::identity`]), with when it
/// was taken.
static LISTINGS: std::sync::Mutex<BTreeMap<ListingKey, (Instant, Listing)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A URL and the identity that listed it.
type ListingKey = (String, Option<String>);

/// URL → listings taken before this instant are stale (the remote announced a change).
static STALE_BEFORE: std::sync::Mutex<BTreeMap<String, Instant>> =
    std::sync::Mutex::new(BTreeMap::new());

fn recent_listing(url: &str, identity: Option<&str>, not_before: Instant) -> Option<Listing> {
    let stale_before = STALE_BEFORE.lock().expect("not poisoned").get(url).copied();
    let not_before = stale_before.map_or(not_before, |stale| stale.max(not_before));
    let listings = LISTINGS.lock().expect("not poisoned");
    let (taken, listing) = listings.get(&(url.to_string(), identity.map(str::to_string)))?;
    (*taken >= not_before).then(|| listing.clone())
}

/// The remote at `url` changed (a webhook said so): no ref listing taken before now may be
/// reused for it, however recent.
pub fn forget_listing(url: &str) {
    let Ok(url) = normalize_url(url) else {
        return;
    };
    STALE_BEFORE
        .lock()
        .expect("not poisoned")
        .insert(url.to_bstring().to_string(), Instant::now());
}

/// Whether a webhook announced a change to the remote at `url` that no ref listing taken
/// as `identity` has seen since.
fn change_announced(url: &str, identity: Option<&str>) -> bool {
    let Ok(url) = normalize_url(url) else {
        return false;
    };
    let key = url.to_bstring().to_string();
    let Some(stale) = STALE_BEFORE
        .lock()
        .expect("not poisoned")
        .get(&key)
        .copied()
    else {
        return false;
    };
    LISTINGS
        .lock()
        .expect("not poisoned")
        .get(&(key, identity.map(str::to_string)))
        .is_none_or(|(taken, _)| *taken < stale)
}

fn remember_listing(url: &str, identity: Option<&str>, taken: Instant, listing: &Listing) {
    LISTINGS.lock().expect("not poisoned").insert(
        (url.to_string(), identity.map(str::to_string)),
        (taken, listing.clone()),
    );
}

/// The advertised ref that `reference` names in `listing`: the default branch, a branch, a
/// tag, a name that is one of those, or the highest tag in a semver range. `None` when it
/// names none of them (a commit id names no ref).
fn listed_ref(reference: &RefSpec, listing: &Listing) -> Option<RemoteRef> {
    let find = |name: &str| listing.refs.iter().find(|r| r.name == name).cloned();
    match reference {
        RefSpec::Default => {
            let branch = listing.head.clone().or_else(|| {
                ["refs/heads/main", "refs/heads/master"]
                    .into_iter()
                    .find(|n| find(n).is_some())
                    .map(str::to_string)
            })?;
            find(&branch)
        }
        RefSpec::Branch(b) => find(&format!("refs/heads/{b}")),
        RefSpec::Tag(t) => find(&format!("refs/tags/{t}")),
        RefSpec::Name(n) => find(&format!("refs/heads/{n}"))
            .or_else(|| find(&format!("refs/tags/{n}")))
            .or_else(|| find(n)),
        RefSpec::Commit(_) => None,
        RefSpec::Semver(range) => {
            let tags = listing
                .refs
                .iter()
                .filter_map(|r| r.name.strip_prefix("refs/tags/"));
            let (tag, _) = range.best(tags)?;
            find(&format!("refs/tags/{tag}"))
        }
    }
}

enum Target {
    Ref(RemoteRef),
    Commit(gix::ObjectId),
    ShortCommit(String),
}

fn credentials(
    action: Action,
    username: &str,
    password: Option<&str>,
) -> gix::Result<Option<CredentialOutcome>> {
    match action {
        Action::Get(context) => {
            // Only for http(s): for ssh, gix asks too, but an identity would only change the user.
            let is_http = context
                .url
                .as_ref()
                .is_some_and(|u| u.starts_with(b"https://") || u.starts_with(b"http://"));
            match (password, is_http) {
                (Some(password), true) => Ok(Some(CredentialOutcome {
                    identity: gix::sec::identity::Account {
                        username: username.to_string(),
                        password: password.to_string(),
                        oauth_refresh_token: None,
                    },
                    next: context.into(),
                })),
                _ => Ok(None),
            }
        }
        Action::Store(_) | Action::Erase(_) => Ok(None),
    }
}

fn available(listing: &Listing, prefix: Option<&str>) -> String {
    let mut names: Vec<&str> = listing
        .refs
        .iter()
        .filter_map(|r| match prefix {
            Some(p) => r.name.strip_prefix(p),
            None => r
                .name
                .strip_prefix("refs/heads/")
                .or_else(|| r.name.strip_prefix("refs/tags/")),
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return " (the remote has none)".into();
    }
    let shown: Vec<&str> = names.iter().take(20).copied().collect();
    let more = if names.len() > 20 {
        format!(" and {} more", names.len() - 20)
    } else {
        String::new()
    };
    format!("; the remote has: {}{more}", shown.join(", "))
}

/// The tree of one commit, read from the object database of the cache (no checkout).
pub struct CommitTree {
    repo: gix::ThreadSafeRepository,
    commit: gix::ObjectId,
    url: String,
    /// Every blob, link and submodule by path; directories in `dirs`.
    entries: BTreeMap<String, (EntryKind, gix::ObjectId)>,
    dirs: BTreeSet<String>,
}

impl std::fmt::Debug for CommitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTree")
            .field("commit", &self.commit)
            .field("url", &self.url)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl CommitTree {
    fn new(
        repo: gix::ThreadSafeRepository,
        commit: gix::ObjectId,
        url: &str,
    ) -> Result<Self, gix::Error> {
        let local = repo.to_thread_local();
        let tree = local.find_commit(commit)?.tree()?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse().breadthfirst(&mut recorder)?;
        let mut entries = BTreeMap::new();
        let mut dirs = BTreeSet::from([String::new()]);
        for entry in recorder.records {
            let path = entry.filepath.to_str_lossy().into_owned();
            let kind = match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => {
                    dirs.insert(path);
                    continue;
                }
                gix::objs::tree::EntryKind::Blob | gix::objs::tree::EntryKind::BlobExecutable => {
                    EntryKind::File
                }
                gix::objs::tree::EntryKind::Link => EntryKind::Symlink,
                gix::objs::tree::EntryKind::Commit => EntryKind::Submodule,
            };
            entries.insert(path, (kind, entry.oid));
        }
        Ok(Self {
            repo,
            commit,
            url: url.to_string(),
            entries,
            dirs,
        })
    }

    pub fn commit(&self) -> String {
        self.commit.to_string()
    }

    /// Files, links and submodules in the tree.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Tree for CommitTree {
    fn describe(&self) -> String {
        format!("commit {} of {}", &self.commit.to_string()[..12], self.url)
    }

    fn list(&self, dir: &str) -> Result<Vec<TreeEntry>, TreeError> {
        if !self.dirs.contains(dir) {
            return Err(if self.entries.contains_key(dir) {
                TreeError::NotADirectory {
                    path: dir.to_string(),
                    tree: self.describe(),
                }
            } else {
                TreeError::NotFound {
                    path: dir.to_string(),
                    tree: self.describe(),
                }
            });
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        // BTreeMap order is byte order, as Tree::list promises.
        Ok(self
            .entries
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(path, (kind, _))| TreeEntry {
                path: path.clone(),
                kind: *kind,
            })
            .collect())
    }

    fn entry_kind(&self, path: &str) -> Option<Option<EntryKind>> {
        if self.dirs.contains(path) {
            return Some(None);
        }
        self.entries.get(path).map(|(kind, _)| Some(*kind))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, TreeError> {
        let (_, id) = self.entries.get(path).ok_or_else(|| TreeError::NotFound {
            path: path.to_string(),
            tree: self.describe(),
        })?;
        let repo = self.repo.to_thread_local();
        let read_err = |reason: String| TreeError::Read {
            path: path.to_string(),
            reason,
        };
        let header = repo.find_header(*id).map_err(|e| read_err(e.to_string()))?;
        if header.size() > limit {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size: header.size(),
                limit,
            });
        }
        let mut blob = repo.find_blob(*id).map_err(|e| read_err(e.to_string()))?;
        Ok(blob.take_data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_listing_is_shared_until_a_webhook_marks_it_stale() {
        let url = "https://git.example.com/listing-test.git";
        let key = normalize_url(url).expect("url").to_bstring().to_string();
        let listing = Listing {
            refs: Vec::new(),
            head: Some("main".into()),
        };
        let taken = Instant::now();
        remember_listing(&key, None, taken, &listing);
        let later = taken + Duration::from_secs(3);
        assert!(
            recent_listing(&key, None, later).is_none(),
            "older than the fetch"
        );
        assert!(
            recent_listing(&key, None, later - Duration::from_secs(5)).is_some(),
            "within the allowed age"
        );
        // A listing taken with credentials is theirs alone, and the other way round.
        assert!(
            recent_listing(&key, Some("secret a/git"), later - Duration::from_secs(5)).is_none(),
            "another identity's listing"
        );
        assert!(!change_announced(url, None), "no webhook yet");
        forget_listing(url);
        assert!(
            recent_listing(&key, None, later - Duration::from_secs(5)).is_none(),
            "stale after a webhook"
        );
        assert!(change_announced(url, None), "announced, not listed since");
        remember_listing(&key, None, Instant::now(), &listing);
        assert!(recent_listing(&key, None, later - Duration::from_secs(5)).is_some());
        assert!(!change_announced(url, None), "listed since the webhook");
        assert!(
            change_announced(url, Some("secret a/git")),
            "not listed since with those credentials"
        );
    }

    #[test]
    fn a_404_is_the_servers_not_the_urls() {
        let url = "https://127.0.0.1:40419/x";
        assert!(!says_404(
            "https://127.0.0.1:40419/x: connection refused (os error 111)",
            url
        ));
        assert!(!says_404("io error: port 14045 is closed", "git://h/r"));
        assert!(says_404(
            "https://127.0.0.1:40419/x: received http status 404",
            url
        ));
        assert!(says_404("http 404 not found", "https://h/r"));
    }

    #[test]
    fn a_5xx_answer_is_a_failing_server_not_an_unreachable_one() {
        assert_eq!(
            http_server_error(
                "An IO error occurred when talking to the server: HTTP status server error \
                 (503 Service Unavailable) for url (http://h/r/info/refs?service=git-upload-pack)"
            )
            .as_deref(),
            Some("503 Service Unavailable")
        );
        assert_eq!(http_server_error("connection refused (os error 111)"), None);
    }

    #[test]
    fn passwords_in_urls_are_refused_and_redacted() {
        let err = normalize_url("https://bob:hunter2@git.example.com/repo.git")
            .expect_err("password in URL");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("https://bob:***@git.example.com/repo.git"),
            "{text}"
        );
        assert!(
            normalize_url("https://bob@git.example.com/repo.git").is_ok(),
            "a user alone is fine"
        );
    }

    #[test]
    fn scp_like_and_local_paths_are_urls() {
        let url = normalize_url("git@github.com:org/deploy.git").expect("scp-like");
        assert_eq!(url.scheme, gix::url::Scheme::Ssh);
        let here = normalize_url(".").expect("local path");
        assert_eq!(here.scheme, gix::url::Scheme::File);
    }

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
