//! Where the manifests come from: the source flags (`--repo`, `--ref`, `--path`, Git
//! credentials) resolved to a tree — a Git revision fetched, or a folder on disk bounded by
//! its repository — and the name and source the set records. Start at [`SourceArgs::resolve`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::duration::parse_duration;
use crate::object::Object;
use crate::render::{RenderOptions, render};
use crate::source::git::{GitAuth, GitSource, Revision};
use crate::source::oci::{self, OciRef, OciUrl};
use crate::source::reference::RefSpec;
use crate::source::signature::SignaturePolicy;
use crate::source::tree::{DirTree, Tree, normalize};

/// Where the manifests come from: shared by `render` and, later, `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Git repository: https://, http://, git://, ssh://, file://, git@host:path, or a local
    /// path; or an OCI repository, oci://host[:port]/path (a Helm chart or a manifests
    /// artifact, told apart by its media type). Without it, --path is a folder on disk.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,

    /// Branch, tag, commit id (full or abbreviated) or semver range over tags (">=1.2.0 <2").
    /// Prefix with branch:, tag:, commit: or semver: to say which. Default: the remote's HEAD.
    /// For oci://: a tag (default latest), a semver range or a digest (sha256:…).
    #[arg(long = "ref", value_name = "REF", default_value = "")]
    pub reference: String,

    /// Folder inside the repository (or on disk) that holds the manifests.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: String,

    /// HTTPS user name (default: git).
    #[arg(long, value_name = "NAME", env = "TETHER_GIT_USER")]
    pub git_user: Option<String>,

    /// File holding the HTTPS password or token (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "git_password_env")]
    pub git_password_file: Option<PathBuf>,

    /// Name of an environment variable holding the HTTPS password or token.
    #[arg(long, value_name = "VAR")]
    pub git_password_env: Option<String>,

    /// SSH private key for ssh:// and git@host:path URLs.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// known_hosts file for SSH host key checks (default: ~/.ssh/known_hosts). Always strict.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for HTTPS Git servers.
    #[arg(long, value_name = "FILE")]
    pub git_ca_file: Option<PathBuf>,

    /// Network timeout for Git operations (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub git_timeout: Duration,

    /// Require the revision to be signed by one of the keys in FILE (OpenSSH public keys or
    /// an armored OpenPGP key); repeat for more files.
    #[arg(long = "verify-signature", value_name = "FILE")]
    pub verify_signature: Vec<PathBuf>,

    /// Cache folder for Git repositories (default: ~/.cache/tether/git).
    #[arg(long, value_name = "DIR", env = "TETHER_GIT_CACHE")]
    pub git_cache: Option<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to reach an OCI registry (`--repo oci://…`, `--helm-repo oci://…`, `tether push
/// artifact`): helm's flag names where helm has one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (else HTTPS).
    #[arg(long)]
    pub plain_http: bool,

    /// Docker config with registry credentials (as docker login, helm registry login and
    /// flux write it). Default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,

    /// Registry user name (with --registry-password-file), instead of a Docker config.
    #[arg(long, value_name = "NAME", requires = "registry_password_file")]
    pub registry_user: Option<String>,

    /// File holding the registry password or token (first line).
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for the registry's HTTPS.
    #[arg(long, value_name = "FILE")]
    pub registry_ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The options for the registry of `url`: credentials from the flags, else from the
    /// Docker config (none when it has no entry for the host).
    pub fn options(&self, url: &OciUrl) -> anyhow::Result<oci::Options> {
        let credentials = match (&self.registry_user, &self.registry_password_file) {
            (Some(username), Some(file)) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("cannot read the registry password file {}", file.display())
                })?;
                let password = text.lines().next().unwrap_or("").trim_end().to_string();
                if password.is_empty() {
                    bail!("the registry password file {} is empty", file.display());
                }
                Some(oci::Credentials {
                    username: username.clone(),
                    password,
                })
            }
            _ => self.docker_config_credentials(&url.host)?,
        };
        let ca_pem =
            match &self.registry_ca_file {
                Some(file) => Some(std::fs::read(file).with_context(|| {
                    format!("cannot read --registry-ca-file {}", file.display())
                })?),
                None => None,
            };
        Ok(oci::Options {
            plain_http: self.plain_http,
            ca_pem,
            credentials,
            cache_dir: crate::source::git::cache_root(),
            ..Default::default()
        })
    }

    fn docker_config_credentials(&self, host: &str) -> anyhow::Result<Option<oci::Credentials>> {
        let (file, given) = match &self.registry_config {
            Some(file) => (file.clone(), true),
            None => {
                let dir = std::env::var_os("DOCKER_CONFIG")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
                match dir {
                    Some(dir) => (dir.join("config.json"), false),
                    None => return Ok(None),
                }
            }
        };
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if !given && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read the registry config {}: {e}", file.display()),
        };
        oci::Credentials::from_docker_config(&bytes, host)
            .map_err(|e| anyhow::anyhow!("registry config {}: {e}", file.display()))
    }
}

/// The last folder of the path, else the repository's name, as a DNS label. The set
/// records where it came from, so a second source whose default name is the same is
/// refused (see `PlanOptions::source`).
pub fn default_app_name(path: &str, repo: Option<&str>) -> anyhow::Result<String> {
    let from_path = path.rsplit('/').find(|p| !p.is_empty() && *p != ".");
    let from_repo = repo.and_then(|r| {
        r.trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
    });
    let raw = from_path.or(from_repo).unwrap_or("");
    let name: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        anyhow::bail!("cannot derive an application name from --path {path:?}; pass --app NAME");
    }
    Ok(name)
}

/// The tree to render and, for Git, the revision it is at.
pub struct Resolved {
    pub tree: std::sync::Arc<dyn Tree>,
    pub revision: Option<Revision>,
    /// Repository-relative folder to render.
    pub path: String,
    /// What the source is, for the set to record: `<repository URL>#<path>`, or a folder
    /// outside any repository with a remote.
    pub source: String,
}

impl Resolved {
    /// The application name when none is given: the last folder of the path, else the
    /// repository's name (or, for a folder on disk, its own name).
    pub fn default_app_name(&self, repo: Option<&str>) -> anyhow::Result<String> {
        let fallback = repo.unwrap_or_else(|| self.source.split('#').next().unwrap_or_default());
        default_app_name(&self.path, Some(fallback))
    }

    /// Renders the folder on a blocking thread (renderers are programs and file I/O).
    pub async fn render(&self, options: RenderOptions) -> anyhow::Result<Vec<Object>> {
        let tree = self.tree.clone();
        let path = self.path.clone();
        Ok(
            tokio::task::spawn_blocking(move || render(tree.as_ref(), &path, &options))
                .await
                .context("the render task panicked")??,
        )
    }
}

impl SourceArgs {
    fn auth(&self) -> anyhow::Result<GitAuth> {
        let password = match (&self.git_password_file, &self.git_password_env) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("cannot read the Git password file {}", file.display())
                })?;
                let first = text.lines().next().unwrap_or("").trim_end().to_string();
                if first.is_empty() {
                    bail!("the Git password file {} is empty", file.display());
                }
                Some(first)
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Some(value),
                _ => {
                    bail!("--git-password-env {var}: the environment variable is not set or empty")
                }
            },
            (None, None) => None,
        };
        Ok(GitAuth {
            username: self.git_user.clone(),
            password,
            ssh_key: self.ssh_key.clone(),
            known_hosts: self.known_hosts.clone(),
            ca_file: self.git_ca_file.clone(),
        })
    }

    /// Fetches (or opens) the source. Git work runs on a blocking thread.
    pub async fn resolve(&self) -> anyhow::Result<Resolved> {
        let Some(repo) = &self.repo else {
            if !self.reference.is_empty() {
                bail!("--ref needs --repo: a folder on disk has no revisions");
            }
            return local_folder(Path::new(&self.path));
        };
        let path = normalize(&self.path).with_context(|| {
            format!(
                "--path {:?} leaves the repository; give a folder inside it",
                self.path
            )
        })?;
        if repo.starts_with("oci://") {
            return self.resolve_oci(repo, path).await;
        }
        let mut source = GitSource::new(repo.clone(), RefSpec::parse(&self.reference)?);
        source.auth = self.auth()?;
        source.timeout = self.git_timeout;
        if let Some(dir) = &self.git_cache {
            source.cache_dir = dir.clone();
        }
        if !self.verify_signature.is_empty() {
            source.verify = Some(
                SignaturePolicy::from_files(&self.verify_signature).map_err(anyhow::Error::msg)?,
            );
        }
        let (revision, tree, stats) = tokio::task::spawn_blocking(move || source.fetch())
            .await
            .context("the Git task panicked")??;
        tracing::info!(
            commit = %revision.commit,
            contacted_remote = stats.contacted_remote,
            objects = stats.objects_received,
            "source resolved"
        );
        let source = format!("{}#{path}", same_repository(repo));
        Ok(Resolved {
            tree: std::sync::Arc::new(tree),
            revision: Some(revision),
            path,
            source,
        })
    }
}

impl SourceArgs {
    /// Pulls the artifact (`--repo oci://…`) into the cache and reads it as a folder; a
    /// Helm chart's folder is where `--path` starts.
    async fn resolve_oci(&self, repo: &str, path: String) -> anyhow::Result<Resolved> {
        let url = OciUrl::parse(repo)?;
        let reference = OciRef::parse(&self.reference, &url)?;
        let options = self.registry.options(&url)?;
        let pulled = {
            let (url, reference) = (url.clone(), reference.clone());
            tokio::task::spawn_blocking(move || oci::artifact::pull(&url, &reference, &options))
                .await
                .context("the registry task panicked")??
        };
        tracing::info!(digest = %pulled.digest, kind = ?pulled.kind, "artifact pulled");
        let path = match &pulled.kind {
            oci::artifact::Kind::HelmChart { folder, .. } => {
                crate::source::tree::join_within(folder, &path).unwrap_or_else(|| folder.clone())
            }
            oci::artifact::Kind::Manifests => path,
        };
        Ok(Resolved {
            tree: std::sync::Arc::new(DirTree::new(&pulled.folder)?),
            revision: Some(pulled.revision_record()),
            source: format!("{}/{}#{path}", url.host, url.repository),
            path,
        })
    }
}

/// A folder on disk: its repository root (the nearest folder with `.git` above the path as
/// given, else the folder itself) bounds what symlinks may reach, `--path` itself included.
fn local_folder(path: &Path) -> anyhow::Result<Resolved> {
    let folder =
        std::fs::canonicalize(path).with_context(|| format!("--path {}", path.display()))?;
    if !folder.is_dir() {
        bail!("--path {}: is not a folder", path.display());
    }
    // `..` taken lexically: only a symlink may lead the path elsewhere than it reads.
    let mut given = PathBuf::new();
    for part in std::path::absolute(path)
        .with_context(|| format!("--path {}", path.display()))?
        .components()
    {
        match part {
            std::path::Component::ParentDir => {
                given.pop();
            }
            std::path::Component::CurDir => {}
            other => given.push(other),
        }
    }
    let root = match given.ancestors().find(|dir| dir.join(".git").exists()) {
        Some(root) => std::fs::canonicalize(root)
            .with_context(|| format!("--path {}: {}", path.display(), root.display()))?,
        None => folder.clone(),
    };
    if !folder.starts_with(&root) {
        bail!(
            "--path {}: leads to {} through a symlink, outside the repository {}; tether reads nothing outside it",
            path.display(),
            folder.display(),
            root.display()
        );
    }
    let relative = folder
        .strip_prefix(&root)
        .expect("root is an ancestor")
        .to_string_lossy()
        .into_owned();
    // A clone is known by its remote, wherever it lies on disk (two people applying the
    // same folder of the same repository are the same source).
    let source = match origin_url(&root) {
        Some(url) => format!("{}#{relative}", same_repository(&url)),
        None => folder.display().to_string(),
    };
    Ok(Resolved {
        tree: std::sync::Arc::new(DirTree::new(root)?),
        revision: None,
        path: relative,
        source,
    })
}

/// The URL of the `origin` remote of the clone at `root`, from its Git config (for a
/// worktree or a submodule, `.git` is a file naming the Git folder).
fn origin_url(root: &Path) -> Option<String> {
    let dot_git = root.join(".git");
    let git_dir = if dot_git.is_file() {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let named = text.trim().strip_prefix("gitdir:")?.trim().to_string();
        let dir = root.join(named);
        // A worktree's config is in the common Git folder.
        match std::fs::read_to_string(dir.join("commondir")) {
            Ok(common) => dir.join(common.trim()),
            Err(_) => dir,
        }
    } else {
        dot_git
    };
    let config = std::fs::read_to_string(git_dir.join("config")).ok()?;
    let mut in_origin = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_origin = line.replace(' ', "") == "[remote\"origin\"]";
        } else if in_origin
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "url"
        {
            return Some(value.trim().to_string());
        }
    }
    None
}

/// A repository as one spelling, fit to be recorded: host (lowercase) and path, whatever
/// the protocol, user, port or credentials (`https://u:token@Git.example.com/o/r.git`,
/// `ssh://git@git.example.com:22/o/r` and `git@git.example.com:o/r` are all
/// `git.example.com/o/r`); a local path stays as it is.
fn same_repository(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').trim_end_matches(".git");
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').unwrap_or((rest, "")),
        // scp-like `user@host:path` (a colon before any slash).
        None => match url.split_once(':') {
            Some((host, path)) if !host.contains('/') => (host, path),
            _ => return url.to_string(),
        },
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    format!("{host}/{}", path.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_app_names_are_dns_labels() {
        assert_eq!(
            default_app_name("examples/web-app", None).unwrap(),
            "web-app"
        );
        assert_eq!(
            default_app_name(".", Some("https://x/team/Deploy_Repo.git")).unwrap(),
            "deploy-repo"
        );
        assert_eq!(
            default_app_name("apps/Shop_Front/", None).unwrap(),
            "shop-front"
        );
        for spelling in [
            "https://ci:s3cret@Git.Example.com/team/deploy.git/",
            "ssh://git@git.example.com:22/team/deploy",
            "git@git.example.com:team/deploy.git",
            "https://git.example.com/team/deploy?private_token=s3cret",
        ] {
            assert_eq!(same_repository(spelling), "git.example.com/team/deploy");
        }
        assert_eq!(same_repository("/srv/git/deploy.git"), "/srv/git/deploy");
        assert!(default_app_name(".", None).is_err());
    }
}
