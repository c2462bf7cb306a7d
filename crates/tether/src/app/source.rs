//! Where an Application's revision comes from: its Git ref (with the credentials of its
//! Secret, its signature checked) or its OCI artifact, fetched or, for a poll, only listed.

use std::time::Duration;

use kube::ResourceExt;

use super::{AppOptions, Error, secret_data, secret_text};
use crate::application::Application;
use crate::duration::parse_duration;
use crate::source::git::{GitAuth, GitSource, Revision};
use crate::source::reference::RefSpec;
use crate::source::signature::SignaturePolicy;
use crate::source::tree::Tree;

/// Resolves the Application's ref and fetches that revision (credentials from its Secret,
/// signature checked when it names keys).
/// `pin` fetches that commit instead of resolving the ref; the ref may be resolved from a
/// listing of the remote's refs up to `listing_max_age` old (see `GitSource`).
pub async fn fetch(
    client: &kube::Client,
    options: &AppOptions,
    app: &Application,
    pin: Option<&str>,
    listing_max_age: Duration,
) -> Result<(Revision, Box<dyn Tree>), Error> {
    if app.spec.source.repo_url.starts_with("oci://") {
        return fetch_oci(client, options, app, pin).await;
    }
    let (mut source, secret_files) = git_source_for(client, options, app, listing_max_age).await?;
    if let Some(commit) = pin {
        source.reference = RefSpec::Commit(commit.to_string());
    }
    let (revision, tree, _) = on_blocking_thread(move || source.fetch()).await?;
    drop(secret_files);
    Ok((revision, Box::new(tree)))
}

/// What a fetch of the Application's ref would resolve it to now, from the remote's refs
/// alone (see [`GitSource::list_remote`]): a listing at most `listing_max_age` old, else a
/// new one; nothing is fetched or read from the cache. `None` when the ref is not listed.
pub async fn list_remote(
    client: &kube::Client,
    options: &AppOptions,
    app: &Application,
    listing_max_age: Duration,
) -> Result<Option<Revision>, Error> {
    // Known by the Secret's name: a recent listing needs no credentials read.
    if let Some(listed) = git_source(options, app, listing_max_age)?.recently_listed() {
        return Ok(Some(listed));
    }
    let (source, secret_files) = git_source_for(client, options, app, listing_max_age).await?;
    let listed = on_blocking_thread(move || source.list_remote()).await?;
    drop(secret_files);
    Ok(listed)
}

/// Runs Git's blocking `work` on a blocking thread.
async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::source::git::Error> + Send + 'static,
) -> Result<T, Error> {
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::Task {
            what: "Git",
            source,
        })?;
    Ok(done?)
}

/// The Git source of the Application's ref with its credentials (written to files in the
/// folder returned, which must live until Git is done) and signature keys.
async fn git_source_for(
    client: &kube::Client,
    options: &AppOptions,
    app: &Application,
    listing_max_age: Duration,
) -> Result<(GitSource, Option<tempfile::TempDir>), Error> {
    let namespace = app.namespace().unwrap_or_default();
    let spec = &app.spec;
    let mut source = git_source(options, app, listing_max_age)?;
    let mut secret_files = None;
    if let Some(secret) = &spec.source.secret_ref {
        let folder = tempfile::tempdir().map_err(Error::TempDir)?;
        source.auth = credentials(client, &namespace, &secret.name, folder.path())
            .await
            .map_err(Error::Credentials)?;
        secret_files = Some(folder);
    }
    if !spec.source.verify_keys.is_empty() {
        let mut policy = SignaturePolicy::default();
        for key in &spec.source.verify_keys {
            if key.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
                policy.pgp_keys.push(key.clone());
            } else {
                policy.ssh_keys.extend(
                    key.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
        }
        source.verify = Some(policy);
    }
    Ok((source, secret_files))
}

/// Pulls the artifact of an `oci://` source (credentials and CA from its Secret): a tag's
/// poll costs one manifest request when nothing changed. `pin` is a digest.
async fn fetch_oci(
    client: &kube::Client,
    options: &AppOptions,
    app: &Application,
    pin: Option<&str>,
) -> Result<(Revision, Box<dyn Tree>), Error> {
    use crate::source::oci::{self, OciRef, OciUrl};
    let spec = &app.spec.source;
    let url = OciUrl::parse(&spec.repo_url)
        .map_err(|e| Error::Spec(format!("spec.source.repoURL: {e}")))?;
    let ref_text = match pin {
        Some(digest) => digest.to_string(),
        None => spec.r#ref.as_ref_text().map_err(Error::Spec)?,
    };
    let reference =
        OciRef::parse(&ref_text, &url).map_err(|e| Error::Spec(format!("spec.source.ref: {e}")))?;
    let mut registry = oci::Options {
        plain_http: spec.plain_http,
        cache_dir: options.cache_dir.clone(),
        ..Default::default()
    };
    if let Some(timeout) = &spec.timeout {
        registry.timeout = parse_duration(timeout)
            .map_err(|e| Error::Spec(format!("spec.source.timeout {timeout:?}: {e}")))?;
    }
    if let Some(secret) = &spec.secret_ref {
        let namespace = app.namespace().unwrap_or_default();
        (registry.credentials, registry.ca_pem) =
            registry_credentials(client, &namespace, &secret.name, &url.host).await?;
    }
    let pulled =
        tokio::task::spawn_blocking(move || oci::artifact::pull(&url, &reference, &registry))
            .await
            .map_err(|source| Error::Task {
                what: "registry",
                source,
            })?
            .map_err(Error::Oci)?;
    let mut tree = crate::source::tree::DirTree::new(&pulled.folder)
        .map_err(|e| Error::Spec(e.to_string()))?;
    if let oci::artifact::Kind::HelmChart { folder, .. } = &pulled.kind {
        // The chart's folder is where spec.source.path starts.
        tree = crate::source::tree::DirTree::new(pulled.folder.join(folder))
            .map_err(|e| Error::Spec(e.to_string()))?;
    }
    Ok((pulled.revision_record(), Box::new(tree)))
}

/// Registry credentials and CA from the source's Secret: `.dockerconfigjson` (its entry for
/// `host`) or `username`/`password`; `caFile` or `ca.crt`.
pub(crate) async fn registry_credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    host: &str,
) -> Result<(Option<crate::source::oci::Credentials>, Option<Vec<u8>>), Error> {
    let label = format!("the registry credentials Secret {namespace}/{name}");
    let data = secret_data(client, namespace, name, &label)
        .await
        .map_err(Error::Credentials)?;
    let text = |key: &str| secret_text(&data, key);
    let credentials = match data.get(".dockerconfigjson") {
        Some(config) => crate::source::oci::Credentials::from_docker_config(&config.0, host)
            .map_err(|e| {
                Error::Credentials(format!("Secret {namespace}/{name}: .dockerconfigjson: {e}"))
            })?,
        None => match (text("username"), text("password")) {
            (Some(username), Some(password)) => {
                Some(crate::source::oci::Credentials { username, password })
            }
            _ => None,
        },
    };
    let ca = data
        .get("caFile")
        .or_else(|| data.get("ca.crt"))
        .map(|v| v.0.clone());
    Ok((credentials, ca))
}

/// The Git source of the Application's ref, without credentials or signature keys.
pub fn git_source(
    options: &AppOptions,
    app: &Application,
    listing_max_age: Duration,
) -> Result<GitSource, Error> {
    let spec = &app.spec;
    if spec.source.repo_url.starts_with("oci://") {
        return Err(Error::Spec(
            "an oci:// source is not a Git repository".into(),
        ));
    }
    if spec.source.r#ref.digest.is_some() {
        return Err(Error::Spec(
            "spec.source.ref.digest names an OCI artifact: a Git repository has branch, tag, commit or semver".into(),
        ));
    }
    let reference = RefSpec::parse(&spec.source.r#ref.as_ref_text().map_err(Error::Spec)?)
        .map_err(|e| Error::Spec(e.to_string()))?;
    let mut source = GitSource::new(spec.source.repo_url.clone(), reference);
    source.cache_dir = options.cache_dir.join("git");
    source.listing_max_age = listing_max_age;
    source.listings = options.listings.clone();
    // Known by the Secret's name before it is read, so that idle polls share listings.
    source.credential_id = spec.source.secret_ref.as_ref().map(|secret| {
        format!(
            "secret {}/{}",
            app.namespace().unwrap_or_default(),
            secret.name
        )
    });
    if let Some(timeout) = &spec.source.timeout {
        source.timeout = parse_duration(timeout)
            .map_err(|e| Error::Spec(format!("spec.source.timeout {timeout:?}: {e}")))?;
    }
    Ok(source)
}

/// Git credentials from a Secret: `username`/`password` for HTTPS; `sshPrivateKey` and
/// `knownHosts` for SSH (written to files only this sync can read); `caFile` (PEM).
pub(crate) async fn credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> Result<GitAuth, String> {
    use std::os::unix::fs::PermissionsExt;
    let label = format!("the Git credentials Secret {namespace}/{name}");
    let data = secret_data(client, namespace, name, &label).await?;
    let text = |key: &str| secret_text(&data, key);
    let file = |key: &str, file: &str| -> Result<Option<std::path::PathBuf>, String> {
        let Some(value) = data.get(key) else {
            return Ok(None);
        };
        let path = dir.join(file);
        std::fs::write(&path, &value.0).map_err(|e| format!("cannot write {file}: {e}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(Some(path))
    };
    Ok(GitAuth {
        username: text("username"),
        password: text("password"),
        ssh_key: file("sshPrivateKey", "id")?,
        known_hosts: file("knownHosts", "known_hosts")?,
        ca_file: file("caFile", "ca.pem")?,
    })
}
