//! Git with gix: resolve a ref on a remote, fetch only that commit (shallow) into a cache,
//! and read its tree straight from the object database.
//!
//! One bare repository per remote URL under the cache folder, locked while in use. A
//! revision already in the cache costs one ref listing and no object transfer; a full
//! commit id already in the cache costs no network at all. Start at [`GitSource::fetch`];
//! [`cache`] keeps the repositories, [`remote`] talks to the server, [`listing`] keeps ref
//! listings in a [`Listings`] value its owner passes in (the agent keeps one for all its
//! Applications), [`error`] says what went wrong.
//!
//! # Security
//! Credentials come from files or environment variables, never from the URL or the command
//! line; they are sent only over https, never logged, and never part of a cache path. SSH
//! checks host keys strictly against a known_hosts file and never prompts.

mod cache;
mod commit_tree;
mod error;
mod listing;
mod remote;
mod url;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest;

use cache::{Cache, consolidate_packs};
pub use cache::{cache_root, default_cache_dir};
pub use commit_tree::CommitTree;
pub use error::Error;
pub use listing::Listings;
use listing::{Listing, listed_ref};
use remote::{Session, Wanted};
pub use remote::{host_api_client, install_crypto_provider};
use url::normalize_url;

use super::reference::RefSpec;
use super::signature::{self, SignaturePolicy};

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
    /// The ref listings this source shares with the others of its owner, and the
    /// announced changes that make them stale; [`GitSource::new`] makes a fresh one.
    pub listings: Arc<Listings>,
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
    /// The commit id abbreviated to 12 digits, for messages (an OCI digest keeps its
    /// `sha256:` and 12 digits).
    pub fn short(&self) -> &str {
        let start = if self.commit.starts_with("sha256:") {
            7
        } else {
            0
        };
        &self.commit[..self.commit.len().min(start + 12)]
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
            listings: Arc::default(),
        }
    }

    /// Resolves the ref, fetches its commit if the cache lacks it, checks its signature
    /// when asked, and returns the commit's tree. Blocking: call from a blocking thread.
    pub fn fetch(&self) -> Result<(Revision, CommitTree, FetchStats), Error> {
        install_crypto_provider();
        let url = normalize_url(&self.url)?;
        let display_url = url.to_bstring().to_string();
        let waiting_since = Instant::now();
        let cache = Cache::open(&self.cache_dir, self.cache_folder(&display_url))?;
        // A full commit id already cached is only read: many readers at once share the lock.
        if let Some(commit) = full_commit_id(&self.reference)
            && let Some(repo) = cache.read_shared(commit)?
        {
            let (revision, tree) = self.open_commit(repo, commit, None, &display_url)?;
            return Ok((revision, tree, FetchStats::default()));
        }
        // So is the commit a recent listing names for the ref, once cached (after a push, the
        // Applications following the repository read it together, one having fetched it).
        if let Some(listed) = self.recently_listed()
            && let Ok(commit) = gix::ObjectId::from_hex(listed.commit.as_bytes())
            && let Some(repo) = cache.read_shared(commit)?
        {
            let (revision, tree) = self.open_commit(repo, commit, listed.from_ref, &display_url)?;
            return Ok((revision, tree, FetchStats::default()));
        }
        let fetched = self.locked(
            &cache,
            &url,
            &display_url,
            waiting_since,
            |session, repo| {
                let (commit, from_ref, stats) = session.resolve_and_fetch(&repo)?;
                if stats.objects_received > 0 {
                    consolidate_packs(&cache.dir);
                }
                Ok((repo, commit, from_ref, stats))
            },
        );
        let (repo, commit, from_ref, stats) = fetched?;
        let (revision, tree) = self.open_commit(repo, commit, from_ref, &display_url)?;
        drop(cache);
        Ok((revision, tree, stats))
    }

    /// What a fetch now would resolve the ref to, from the remote's refs alone: a listing
    /// at most `listing_max_age` old, else a new one (the cache is opened to list, its
    /// objects neither fetched nor read). Polls of many Applications following one
    /// repository list it once: one listing at a time per repository and identity in this
    /// process, and those that waited for it take its result. `None` when the ref is not
    /// in the listing (a fetch says why). Blocking: call from a blocking thread.
    pub fn list_remote(&self) -> Result<Option<Revision>, Error> {
        if let Some(revision) = self.recently_listed() {
            return Ok(Some(revision));
        }
        install_crypto_provider();
        let url = normalize_url(&self.url)?;
        let display_url = url.to_bstring().to_string();
        let identity = self.identity();
        let lister = self.listings.lister(&display_url, identity.as_deref());
        let _one_at_a_time = lister.lock().unwrap_or_else(|e| e.into_inner());
        // Listed while this one waited.
        if let Some(revision) = self.recently_listed() {
            return Ok(Some(revision));
        }
        let cache = Cache::open(&self.cache_dir, self.cache_folder(&display_url))?;
        let listing = self.locked(
            &cache,
            &url,
            &display_url,
            Instant::now(),
            |session, repo| session.listing(&repo),
        )?;
        Ok(listed_ref(&self.reference, &listing).map(|found| Revision {
            commit: found.commit.to_string(),
            from_ref: Some(found.name),
            url: display_url,
            summary: None,
            author: None,
        }))
    }

    /// Runs `work` on the cached repository (made when missing) under its exclusive lock.
    fn locked<T>(
        &self,
        cache: &Cache,
        url: &gix::Url,
        display_url: &str,
        waiting_since: Instant,
        work: impl FnOnce(&Session<'_>, gix::Repository) -> Result<T, Error>,
    ) -> Result<T, Error> {
        cache.lock_exclusive()?;
        // ssh writes why it failed (host key, auth) to its stderr: keep it to explain errors.
        let ssh_stderr = cache.dir.with_extension("ssh-stderr");
        let _ = std::fs::remove_file(&ssh_stderr);
        let repo = cache.open_or_init(self, &ssh_stderr)?;
        let session = Session {
            source: self,
            url,
            display_url,
            started: Instant::now(),
            waiting_since,
            ssh_stderr: &ssh_stderr,
        };
        work(&session, repo)
    }

    /// The one way to a fetched or cached commit: its signature checked when asked, its
    /// summary and author read, its tree listed.
    fn open_commit(
        &self,
        repo: gix::Repository,
        commit: gix::ObjectId,
        from_ref: Option<String>,
        url: &str,
    ) -> Result<(Revision, CommitTree), Error> {
        let git_err = |e: &dyn std::fmt::Display| Error::Git {
            url: url.to_string(),
            reason: e.to_string(),
        };
        if let Some(policy) = &self.verify {
            let object = repo.find_commit(commit).map_err(|e| git_err(&e))?;
            signature::verify_commit(&object, policy).map_err(|reason| Error::Signature {
                url: url.to_string(),
                commit: commit.to_string(),
                reason,
            })?;
        }
        let (summary, author) = commit_details(&repo, commit);
        let tree = CommitTree::new(repo.into_sync(), commit, url, &self.listings.indexes)
            .map_err(|e| git_err(&e))?;
        let revision = Revision {
            commit: commit.to_string(),
            from_ref,
            url: url.to_string(),
            summary,
            author,
        };
        Ok((revision, tree))
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

    /// Whether a webhook announced a change to this remote that no ref listing taken with
    /// these credentials has seen since: a sync now must list the refs, not reuse a
    /// commit it knows.
    pub fn change_announced(&self) -> bool {
        self.listings
            .change_announced(&self.url, self.identity().as_deref())
    }

    /// What a fetch now would resolve the ref to, known without opening the cache or
    /// contacting the remote: the commit (and the ref it came from) that a listing of the
    /// remote's refs, taken by this process at most `listing_max_age` ago and not made stale
    /// by a webhook since, gives for it; a full commit id is itself. `None` when there is no
    /// such listing or the ref is not in it. Summary and author are not known here.
    pub fn recently_listed(&self) -> Option<Revision> {
        let url = normalize_url(&self.url).ok()?.to_bstring().to_string();
        let (commit, from_ref) = match &self.reference {
            RefSpec::Commit(id) if full_commit_id(&self.reference).is_some() => (id.clone(), None),
            reference => {
                let not_before = Instant::now()
                    .checked_sub(self.listing_max_age)
                    .unwrap_or_else(Instant::now);
                let listing = self
                    .listings
                    .recent(&url, self.identity().as_deref(), not_before)?;
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

/// The commit a full (40 hex digits) commit id names; `None` for any other ref.
fn full_commit_id(reference: &RefSpec) -> Option<gix::ObjectId> {
    match reference {
        RefSpec::Commit(id) if id.len() == 40 => gix::ObjectId::from_hex(id.as_bytes()).ok(),
        _ => None,
    }
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

impl Session<'_> {
    /// The commit the ref names (and the ref it came from), fetched unless the cache holds it.
    fn resolve_and_fetch(
        &self,
        repo: &gix::Repository,
    ) -> Result<(gix::ObjectId, Option<String>, FetchStats), Error> {
        let mut stats = FetchStats::default();
        // A full commit id already in the cache needs no network.
        if let Some(oid) = full_commit_id(&self.source.reference)
            && repo.find_commit(oid).is_ok()
        {
            return Ok((oid, None, stats));
        }
        stats.contacted_remote = true;
        let listing = self.listing(repo)?;
        let (commit, from_ref, fetch_src) = match self.pick(&listing, repo)? {
            Wanted::Ref(r) => (Some(r.commit), Some(r.name.clone()), r.name),
            Wanted::Commit(id) => (Some(id), None, id.to_string()),
            Wanted::ShortCommit(prefix) => (None, None, prefix),
        };
        if let Some(commit) = commit
            && repo.find_commit(commit).is_ok()
        {
            tracing::debug!(%commit, "already in the Git cache; nothing to fetch");
            return Ok((commit, from_ref, stats));
        }
        match commit {
            Some(commit) => {
                stats.objects_received = self.fetch_commit(repo, &fetch_src, commit)?;
                Ok((commit, from_ref, stats))
            }
            None => {
                let (commit, received) = self.fetch_abbreviated(repo, &fetch_src)?;
                stats.objects_received = received;
                Ok((commit, None, stats))
            }
        }
    }

    /// The remote's refs: a listing this process took recently enough, else a new one.
    fn listing(&self, repo: &gix::Repository) -> Result<Listing, Error> {
        // Many Applications following one repository wait for its lock together (after a
        // webhook, say): a listing taken after this one began waiting is as fresh as its own.
        let not_before = self
            .waiting_since
            .checked_sub(self.source.listing_max_age)
            .unwrap_or(self.waiting_since);
        let identity = self.source.identity();
        let listings = &self.source.listings;
        if let Some(listing) = listings.recent(self.display_url, identity.as_deref(), not_before) {
            return Ok(listing);
        }
        let listed_at = Instant::now();
        let listing = self.list_refs(repo)?;
        listings.remember(self.display_url, identity.as_deref(), listed_at, &listing);
        Ok(listing)
    }

    /// Fetches `src` (a ref, or the commit's id) one commit deep; the objects received.
    fn fetch_commit(
        &self,
        repo: &gix::Repository,
        src: &str,
        commit: gix::ObjectId,
    ) -> Result<u64, Error> {
        self.fetch_one(repo, src, Some(1)).map_err(|err| match err {
            // upload-pack's words for a commit id it does not have.
            Error::Git { reason, .. } if reason.contains("not our ref") => Error::RefNotFound {
                url: self.display_url.to_string(),
                spec: format!("commit {commit}"),
                available: " on the server; check --ref (a commit must be on a branch or tag the server has)".into(),
            },
            other => other,
        })
    }

    /// An abbreviated id names no ref: fetches the branches' full history and looks it up.
    fn fetch_abbreviated(
        &self,
        repo: &gix::Repository,
        prefix: &str,
    ) -> Result<(gix::ObjectId, u64), Error> {
        let received = self.fetch_one(repo, "refs/heads/*", None)?;
        let hex = gix::hash::Prefix::from_hex(prefix).map_err(|e| self.git_err(e))?;
        match repo.objects.lookup_prefix(hex, None) {
            Ok(Some(Ok(id))) => Ok((id, received)),
            Ok(Some(Err(()))) => Err(Error::RefNotFound {
                url: self.display_url.to_string(),
                spec: format!("commit {prefix} (ambiguous: use more digits)"),
                available: String::new(),
            }),
            _ => Err(Error::RefNotFound {
                url: self.display_url.to_string(),
                spec: format!("commit {prefix}"),
                available: " on any branch".into(),
            }),
        }
    }
}
