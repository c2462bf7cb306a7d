//! Talking to the remote: the connection (gix's transports, our git:// socket with a
//! timeout, HTTP options and CA certificates), the credentials handed to it, listing the
//! remote's refs, picking the one asked for, and fetching one ref or commit.

use std::collections::BTreeSet;
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

use super::error::{Attempt, Facts, classify};
use super::listing::{Listing, RemoteRef, available, listed_ref};
use super::{Error, GitAuth, GitSource};
use crate::source::reference::{RefSpec, is_commit_id};

/// HTTPS goes through rustls with the ring provider, as the Kubernetes client does; the
/// provider is chosen once per process.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider was installed first, which is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client of a Git host's API (commit statuses, pull requests, plan comments): with a
/// User-Agent (GitHub refuses a request without one) and no redirects (the token must not
/// follow one to another host).
pub fn host_api_client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

pub(super) fn config_overrides(source: &GitSource, ssh_stderr: &Path) -> Vec<String> {
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

pub(super) fn known_hosts_path(auth: &GitAuth) -> PathBuf {
    auth.known_hosts.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh").join("known_hosts"))
            .unwrap_or_else(|| PathBuf::from("/etc/ssh/ssh_known_hosts"))
    })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One fetch's conversation with the remote.
pub(super) struct Session<'a> {
    pub(super) source: &'a GitSource,
    pub(super) url: &'a gix::Url,
    pub(super) display_url: &'a str,
    pub(super) started: Instant,
    /// When this fetch began to wait for the repository's lock.
    pub(super) waiting_since: Instant,
    /// Where ssh's stderr goes (the command runs through `sh -c`, which redirects it).
    pub(super) ssh_stderr: &'a Path,
}

type Connection<'r, 'repo> = gix::remote::Connection<
    'r,
    'static,
    'repo,
    Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
>;

/// What the ref names on the remote: an advertised ref, a full commit id, or an
/// abbreviation found in neither the listing nor the cache.
pub(super) enum Wanted {
    Ref(RemoteRef),
    Commit(gix::ObjectId),
    ShortCommit(String),
}

impl Session<'_> {
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

    pub(super) fn list_refs(&self, repo: &gix::Repository) -> Result<Listing, Error> {
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

    pub(super) fn pick(&self, listing: &Listing, repo: &gix::Repository) -> Result<Wanted, Error> {
        let reference = &self.source.reference;
        if let Some(found) = listed_ref(reference, listing) {
            return Ok(Wanted::Ref(found));
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

    fn commit_target(&self, id: &str, listing: &Listing, repo: &gix::Repository) -> Wanted {
        if id.len() == 40 {
            return Wanted::Commit(gix::ObjectId::from_hex(id.as_bytes()).expect("40 hex digits"));
        }
        // An abbreviation of an advertised tip, or of a commit already cached.
        let matches: BTreeSet<gix::ObjectId> = listing
            .refs
            .iter()
            .filter(|r| r.commit.to_string().starts_with(id))
            .map(|r| r.commit)
            .collect();
        if matches.len() == 1 {
            return Wanted::Commit(*matches.iter().next().expect("one element"));
        }
        if let Ok(prefix) = gix::hash::Prefix::from_hex(id)
            && let Ok(Some(Ok(found))) = repo.objects.lookup_prefix(prefix, None)
        {
            return Wanted::Commit(found);
        }
        Wanted::ShortCommit(id.to_string())
    }

    /// Fetches `src` into `refs/tether/...` (depth-limited when asked); returns the objects received.
    pub(super) fn fetch_one(
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

    pub(super) fn git_err(&self, err: impl std::fmt::Display) -> Error {
        Error::Git {
            url: self.display_url.to_string(),
            reason: err.to_string(),
        }
    }

    /// Maps gix's errors to ones that say what to do (see [`super::error::RULES`]).
    pub(super) fn classify(&self, err: gix::Error) -> Error {
        let ssh_stderr = (self.url.scheme == gix::url::Scheme::Ssh)
            .then(|| std::fs::read_to_string(self.ssh_stderr).ok())
            .flatten();
        let scheme = self.url.scheme.clone();
        let facts = Facts::of(&err, self.display_url, scheme, ssh_stderr.as_deref());
        let class = classify(&facts);
        facts.into_error(
            class,
            &Attempt {
                auth: &self.source.auth,
                timeout: self.source.timeout,
                started: self.started,
            },
        )
    }
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
