//! OCI registries as a source: `oci://host[:port]/repository` named with a tag, a semver
//! range over tags or a digest. [`client::Client`] speaks the distribution API (token and
//! basic auth, TLS with an extra CA, plain HTTP only when asked); [`artifact`] pulls an
//! artifact (Flux's manifests tarball, or a Helm chart: told apart by the config's media
//! type) into a folder cached by digest, and packs and pushes a folder as Flux does.

pub mod artifact;
pub mod client;

use std::path::PathBuf;
use std::time::Duration;

use crate::source::reference::{RefSpec, SemverRange};

/// Why a registry could not be used. Never holds a password or token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} is not an OCI repository URL ({reason}); write oci://host[:port]/repository")]
    Url { url: String, reason: String },
    #[error(
        "{ref_text:?} is not an OCI reference ({reason}); give a tag, a semver range or a digest (sha256:…)"
    )]
    Reference { ref_text: String, reason: String },
    #[error(
        "{url}: the registry refused {who} (401 Unauthorized): check the user and password (or token)"
    )]
    Unauthorized { url: String, who: String },
    #[error("{url}: access denied (403 Forbidden): the credentials may not {action} {repository}")]
    Forbidden {
        url: String,
        action: &'static str,
        repository: String,
    },
    #[error("{url}: not found (404, {what}): check the repository and the tag")]
    NotFound { what: String, url: String },
    #[error("{url}: the registry answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    #[error("{repository}: no tag matches semver range {range:?} (tags: {tags})")]
    NoMatch {
        repository: String,
        range: String,
        tags: String,
    },
    #[error("{what}: {message}")]
    Local { what: String, message: String },
}

/// `oci://host[:port]/repository`, with a tag or digest if the URL ends with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciUrl {
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl OciUrl {
    pub fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("oci://")
            .ok_or_else(|| invalid("it does not start with oci://"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no repository after the host"))?;
        if host.is_empty() || host.contains('@') {
            return Err(invalid(
                "no host, or credentials in the URL (use a Secret or flags)",
            ));
        }
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => (path, Some(digest.to_string())),
            None => (path, None),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        let repository = repository.trim_end_matches('/');
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if repository.is_empty() || !repository.chars().all(valid) {
            return Err(invalid(
                "the repository must be lower-case letters, digits and . _ - /",
            ));
        }
        Ok(Self {
            host: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The URL without tag or digest.
    pub fn repository_url(&self) -> String {
        format!("oci://{}/{}", self.host, self.repository)
    }
}

/// Which artifact of the repository: a tag (default `latest`, as Flux's OCIRepository), the
/// highest tag in a semver range, or a digest.
#[derive(Debug, Clone)]
pub enum OciRef {
    Tag(String),
    Semver(SemverRange),
    Digest(String),
}

impl OciRef {
    /// `--ref` (or the Application's `ref`) for an OCI repository; a tag or digest in the
    /// URL itself counts when `ref_text` is empty.
    pub fn parse(ref_text: &str, url: &OciUrl) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::Reference {
            ref_text: ref_text.to_string(),
            reason: reason.to_string(),
        };
        let text = ref_text.trim();
        if let Some(digest) = text
            .strip_prefix("digest:")
            .or(Some(text).filter(|t| t.starts_with("sha256:")))
        {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid("a digest is sha256: and 64 hex digits"));
            }
            return Ok(OciRef::Digest(digest.to_ascii_lowercase()));
        }
        if text.is_empty() {
            return Ok(match (&url.digest, &url.tag) {
                (Some(digest), _) => OciRef::Digest(digest.clone()),
                (None, Some(tag)) => OciRef::Tag(tag.clone()),
                (None, None) => OciRef::Tag("latest".into()),
            });
        }
        match RefSpec::parse(text).map_err(|e| invalid(&e.to_string()))? {
            RefSpec::Default => Ok(OciRef::Tag("latest".into())),
            // A tag may look like a commit id (a full Git SHA as the tag): it is a tag here.
            RefSpec::Tag(tag) | RefSpec::Name(tag) | RefSpec::Commit(tag) => Ok(OciRef::Tag(tag)),
            RefSpec::Semver(range) => Ok(OciRef::Semver(range)),
            RefSpec::Branch(_) => Err(invalid("an OCI repository has tags, not branches")),
        }
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OciRef::Tag(tag) => write!(f, "tag {tag:?}"),
            OciRef::Semver(range) => write!(f, "semver range {:?}", range.text),
            OciRef::Digest(digest) => write!(f, "digest {digest}"),
        }
    }
}

/// A user name and password (or token) for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, password hidden)", self.username)
    }
}

impl Credentials {
    /// The entry for `host` in a Docker config (`~/.docker/config.json`, a
    /// `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`): `auths.<host>.auth`
    /// (base64 `user:password`) or `username`/`password`.
    pub fn from_docker_config(config: &[u8], host: &str) -> Result<Option<Self>, String> {
        use base64::Engine as _;
        let config: serde_json::Value = serde_json::from_slice(config)
            .map_err(|e| format!("not a Docker config (JSON with auths): {e}"))?;
        let auths = &config["auths"];
        let mut keys = vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
            format!("https://{host}/v1/"),
        ];
        // Docker Hub's credentials are kept under its index's old name.
        if matches!(
            host,
            "registry-1.docker.io" | "docker.io" | "index.docker.io"
        ) {
            keys.extend([
                "https://index.docker.io/v1/".to_string(),
                "docker.io".into(),
                "index.docker.io".into(),
            ]);
        }
        let entry = keys.iter().find_map(|key| auths.get(key.as_str()));
        let Some(entry) = entry else {
            return Ok(None);
        };
        if let Some(auth) = entry["auth"].as_str() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|_| format!("auths.{host}.auth is not base64"))?;
            let text =
                String::from_utf8(decoded).map_err(|_| format!("auths.{host}.auth is not text"))?;
            let (username, password) = text
                .split_once(':')
                .ok_or_else(|| format!("auths.{host}.auth is not user:password"))?;
            return Ok(Some(Self {
                username: username.into(),
                password: password.into(),
            }));
        }
        match (entry["username"].as_str(), entry["password"].as_str()) {
            (Some(username), Some(password)) => Ok(Some(Self {
                username: username.into(),
                password: password.into(),
            })),
            _ => Ok(None),
        }
    }
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP instead of HTTPS (helm's `--plain-http`, Flux's `insecure`).
    pub plain_http: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<Vec<u8>>,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    /// Where pulled artifacts are kept, by digest.
    pub cache_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plain_http: false,
            ca_pem: None,
            credentials: None,
            timeout: Duration::from_secs(60),
            cache_dir: std::env::temp_dir().join("tether-oci"),
        }
    }
}

#[cfg(test)]
mod tests;
