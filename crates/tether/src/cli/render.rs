//! `tether render`: print the desired objects of a Git revision (or a local folder).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::GlobalArgs;
use crate::output::OutputFormat;
use crate::render::{Object, RenderOptions, render_plain};
use crate::source::git::{GitAuth, GitSource, Revision};
use crate::source::reference::RefSpec;
use crate::source::signature::SignaturePolicy;
use crate::source::tree::{DirTree, Tree, normalize};

/// Where the manifests come from: shared by `render` and, later, `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Git repository: https://, http://, git://, ssh://, file://, git@host:path, or a local
    /// path. Without it, --path is a folder on disk.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,

    /// Branch, tag, commit id (full or abbreviated) or semver range over tags (">=1.2.0 <2").
    /// Prefix with branch:, tag:, commit: or semver: to say which. Default: the remote's HEAD.
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
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Annotate each object with the file, line and document it came from.
    #[arg(long)]
    pub show_origin: bool,

    /// Print Secret values as they are in Git (default: each value is replaced by its size).
    #[arg(long)]
    pub show_secrets: bool,
}

/// Parses `90`, `90s`, `2m`, `1h`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 2m or 1h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        _ => Err(format!(
            "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
        )),
    }
}

/// The tree to render and, for Git, the revision it is at.
pub struct Resolved {
    pub tree: Box<dyn Tree>,
    pub revision: Option<Revision>,
    /// Repository-relative folder to render.
    pub path: String,
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
        Ok(Resolved {
            tree: Box::new(tree),
            revision: Some(revision),
            path,
        })
    }
}

/// A folder on disk: its repository root (the nearest folder with `.git`, else the folder
/// itself) bounds what symlinks may reach.
fn local_folder(path: &Path) -> anyhow::Result<Resolved> {
    let folder =
        std::fs::canonicalize(path).with_context(|| format!("--path {}", path.display()))?;
    if !folder.is_dir() {
        bail!("--path {}: is not a folder", path.display());
    }
    let root = folder
        .ancestors()
        .find(|dir| dir.join(".git").exists())
        .unwrap_or(&folder)
        .to_path_buf();
    let relative = folder
        .strip_prefix(&root)
        .expect("root is an ancestor")
        .to_string_lossy()
        .into_owned();
    Ok(Resolved {
        tree: Box::new(DirTree::new(root)?),
        revision: None,
        path: relative,
    })
}

pub async fn run(
    global: &GlobalArgs,
    args: &RenderArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let resolved = args.source.resolve().await?;
    let mut objects = render_plain(
        resolved.tree.as_ref(),
        &resolved.path,
        &RenderOptions::default(),
    )?;
    if !args.show_secrets {
        for object in &mut objects {
            redact_secret(object);
        }
    }
    match global.output {
        OutputFormat::Text | OutputFormat::Yaml | OutputFormat::Markdown => {
            write_yaml(out, &resolved, &objects, args.show_origin)?
        }
        OutputFormat::Json => {
            if let Some(revision) = &resolved.revision {
                eprintln!(
                    "revision: {} ({})",
                    revision.commit,
                    revision_from(revision)
                );
            }
            let items: Vec<Value> = objects
                .iter()
                .map(|o| {
                    if args.show_origin {
                        with_origin_annotation(o)
                    } else {
                        o.manifest.clone()
                    }
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
        }
    }
    Ok(0)
}

fn revision_from(revision: &Revision) -> String {
    match &revision.from_ref {
        Some(r) => format!("{r} of {}", revision.url),
        None => revision.url.clone(),
    }
}

fn write_yaml(
    out: &mut impl Write,
    resolved: &Resolved,
    objects: &[Object],
    show_origin: bool,
) -> anyhow::Result<()> {
    if let Some(revision) = &resolved.revision {
        writeln!(
            out,
            "# Revision: {} ({})",
            revision.commit,
            revision_from(revision)
        )?;
    }
    for object in objects {
        writeln!(out, "---")?;
        if show_origin {
            writeln!(out, "# Source: {}", object.origin)?;
        }
        let text = serde_saphyr::to_string(&object.manifest)?;
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Secret values never reach a terminal or a CI log unless asked for.
fn redact_secret(object: &mut Object) {
    if !(object.key.group.is_empty() && object.key.kind == "Secret") {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(values) = object
            .manifest
            .get_mut(field)
            .and_then(Value::as_object_mut)
        {
            for value in values.values_mut() {
                let size = value.as_str().map(str::len).unwrap_or(0);
                *value = Value::String(format!(
                    "<redacted: {size} bytes; --show-secrets prints it>"
                ));
            }
        }
    }
}

/// For JSON, where comments do not exist: the origin as an annotation.
fn with_origin_annotation(object: &Object) -> Value {
    let mut manifest = object.manifest.clone();
    if let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(
                "tether.dev/origin".into(),
                Value::String(object.origin.to_string()),
            );
        }
    }
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubectl_timeouts() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
