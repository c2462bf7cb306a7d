//! `tether bootstrap`: the agent manages its own install from Git, as `flux bootstrap`
//! does. The install (namespace, RBAC, Deployment, Service) and an Application `tether` that
//! points at the same folder are committed to the repository and pushed; then the cluster
//! gets the tokens Secret (never in Git) and that folder is applied as Application `tether`
//! would apply it, so the agent's first sync finds everything in place and writes nothing.
//! From then on a commit to the folder upgrades the agent.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::GlobalArgs;
use crate::agent::{Application, install_crd};
use crate::apply::ApplyOptions;
use crate::cluster::Cluster;
use crate::cluster::discovery::Resolver;
use crate::install::{InstallOptions, TOKENS_SECRET, Tokens};
use crate::plan::{PlanErrorKind, PlanOptions, SetOwner};

/// The Application through which the agent manages its install.
pub const APPLICATION: &str = "tether";

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The repository to commit the install to (pushed with the `git` program and your own
    /// Git credentials: credential helper, SSH agent).
    #[arg(long, value_name = "URL")]
    pub repo: String,

    /// The branch to commit to and follow.
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    pub branch: String,

    /// The folder of the repository that holds the install (e.g. clusters/prod/tether).
    #[arg(long, value_name = "DIR")]
    pub path: String,

    /// The repository URL the agent fetches from, when it differs from --repo (an https
    /// URL for the agent, an ssh one for your push).
    #[arg(long, value_name = "URL")]
    pub agent_repo: Option<String>,

    /// A Secret in the agent's namespace with the agent's Git credentials (as an
    /// Application's spec.source.secretRef: username/password or sshPrivateKey/knownHosts).
    #[arg(long, value_name = "NAME")]
    pub git_secret: Option<String>,

    #[command(flatten)]
    pub agent: super::install::InstallFlags,

    /// Wait until the install is healthy, up to this long; 0 does not wait.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
}

/// The folder's files: the install, and the Application that applies the folder.
fn files(args: &BootstrapArgs, options: &InstallOptions) -> anyhow::Result<Vec<(String, String)>> {
    let header = format!(
        "# Written by `tether bootstrap`: Application {}/{APPLICATION} applies this folder, so\n\
         # the agent upgrades itself from what is committed here. The Secret {TOKENS_SECRET}\n\
         # (webhook secret, API tokens) is in the cluster only, never in Git.\n",
        options.namespace
    );
    let mut install = header.clone();
    // The CRD is not in the folder: pruning it (a file removed by mistake) would delete
    // every Application. `tether bootstrap` installs and upgrades it.
    let documents = crate::install::manifests(options, None);
    for document in &documents {
        install.push_str("---\n");
        install.push_str(&serde_saphyr::to_string(document)?);
    }
    let application = application(args, options);
    let application = format!("{header}---\n{}", serde_saphyr::to_string(&application)?);
    Ok(vec![
        ("install.yaml".into(), install),
        ("application.yaml".into(), application),
    ])
}

fn application(args: &BootstrapArgs, options: &InstallOptions) -> Value {
    let mut source = json!({
        "repoURL": args.agent_repo.clone().unwrap_or_else(|| args.repo.clone()),
        "ref": {"branch": args.branch},
        "path": args.path,
    });
    if let Some(secret) = &args.git_secret {
        source["secretRef"] = json!({"name": secret});
    }
    let spec = json!({
        "source": source,
        "destination": {"namespace": options.namespace},
        "syncPolicy": {"automated": true, "prune": true, "selfHeal": true, "interval": "1m"},
    });
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": APPLICATION, "namespace": options.namespace},
        "spec": spec,
    })
}

/// `url` without a password or token in it (`https://user:secret@host/…` → `https://user:***@host/…`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}/{path}")
        }
        None => url.to_string(),
    }
}

/// Whether `url` carries a password or token (https://user:secret@…).
fn carries_secret(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run git (bootstrap pushes with it): {e}"))?;
    if !out.status.success() {
        let words: Vec<String> = args.iter().map(|a| redacted(a)).collect();
        let stderr: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .map(redacted)
            .collect();
        anyhow::bail!("git {} failed: {}", words.join(" "), stderr.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commits `files` under `path` on `branch` of `repo` and pushes them; returns the branch's
/// commit, whether this run made it, and the clone (which holds that commit).
fn commit_and_push(
    repo: &str,
    branch: &str,
    path: &str,
    files: &[(String, String)],
) -> anyhow::Result<(String, bool, tempfile::TempDir)> {
    let folder = crate::source::tree::normalize(path)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--path {path:?} must be a folder inside the repository"))?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    git(dir, &["clone", "-q", "--no-checkout", repo, "."])?;
    let remote = format!("origin/{branch}");
    if git(dir, &["rev-parse", "-q", "--verify", &remote]).is_ok() {
        git(dir, &["checkout", "-q", "-B", branch, &remote])?;
    } else {
        // A new branch (or an empty repository).
        git(dir, &["checkout", "-q", "--orphan", branch])?;
    }
    let target = dir.join(&folder);
    std::fs::create_dir_all(&target)?;
    for (name, text) in files {
        std::fs::write(target.join(name), text)?;
    }
    git(dir, &["add", "--", &folder])?;
    let unchanged = Command::new("git")
        .args(["diff", "--cached", "--quiet"])
        .current_dir(dir)
        .status()?
        .success()
        && git(dir, &["rev-parse", "-q", "--verify", "HEAD"]).is_ok();
    if unchanged {
        let head = git(dir, &["rev-parse", "HEAD"])?;
        return Ok((head, false, work));
    }
    let mut commit = vec![];
    // Your identity when git has one; else the tool's.
    if git(dir, &["config", "user.email"]).is_err() {
        commit.extend([
            "-c",
            "user.name=tether bootstrap",
            "-c",
            "user.email=tether@localhost",
        ]);
    }
    let message = format!("tether bootstrap: the agent's install in {folder}");
    commit.extend(["commit", "-q", "-m", &message]);
    git(dir, &commit)?;
    git(
        dir,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    )?;
    let head = git(dir, &["rev-parse", "HEAD"])?;
    Ok((head, true, work))
}

/// `tether bootstrap`: push the install to Git, then apply that commit as Application
/// `tether` would (once without waiting, the tokens Secret, once waiting for health).
pub async fn bootstrap(
    global: &GlobalArgs,
    args: &BootstrapArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    refuse_unsupported(args)?;
    let options = super::install::install_options(global, &args.agent)?;
    let namespace = options.namespace.clone();
    // The cluster first: nothing is pushed for a cluster that cannot be reached.
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    cluster.server_version().await?;
    let (commit, clone) = push(args, &options, out).await?;
    let client = cluster.client();
    install_crd(&client).await?;
    // Apply the pushed commit as Application `tether` will: the same render, plan and
    // ApplySet, so its first sync changes nothing. Then the tokens (in the cluster only;
    // an earlier install's are kept), and a second pass that waits for health.
    let resolver = std::sync::Arc::new(Resolver::new(client.clone()).await?);
    // A cache of its own: the clone's path is new each run, and would stay behind in the
    // shared Git cache.
    let cache = tempfile::tempdir()?;
    let app_options = crate::app::AppOptions {
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    };
    let pinned = pinned_application(args, &options, &clone, &commit)?;
    // One pass without waiting (then the tokens), and one that waits for health.
    let waiting = (!args.timeout.is_zero()).then_some(args.timeout);
    for wait in std::iter::once(None).chain(waiting.map(Some)) {
        // The same fetch and render as the agent's; the objects already there (its
        // namespace, an earlier bootstrap's) are taken over: running bootstrap says so.
        let objects = desired(&client, &resolver, &app_options, &pinned).await?;
        let (plan_options, apply_options) = pass_options(&namespace, wait);
        crate::engine::sync(
            &client,
            &resolver,
            objects,
            &plan_options,
            &apply_options,
            |report| super::apply::write_text(out, report, wait.is_some(), false),
        )
        .await
        .map_err(|e| {
            // Objects of the set belong to a set made by push mode (`tether install`).
            let owned = matches!(
                e.downcast_ref::<crate::engine::Error>(),
                Some(crate::engine::Error::Plan(errors)) if errors.0.iter().any(|error| matches!(
                    error.kind,
                    PlanErrorKind::OwnedByAnotherSet { owner: SetOwner::Apply { .. }, .. }
                ))
            );
            e.context(if owned {
                "the bootstrap (an earlier `tether install` owns these objects: run `tether uninstall` first)"
            } else {
                "the bootstrap"
            })
        })?;
        if wait.is_none() {
            write_tokens(&client, &options, out).await?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Application {namespace}/{APPLICATION} now applies {} of {}: commit changes there to upgrade the agent.",
        args.path,
        redacted(&args.repo)
    )?;
    Ok(0)
}

/// The pinned Application's objects, fetched and rendered as the agent does.
async fn desired(
    client: &kube::Client,
    resolver: &Resolver,
    app_options: &crate::app::AppOptions,
    pinned: &Application,
) -> anyhow::Result<Vec<crate::object::Object>> {
    let (revision, tree) = crate::app::fetch(client, app_options, pinned, None, Duration::ZERO)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::app::render_app(client, resolver, app_options, pinned, &revision, tree)
        .await
        .map_err(anyhow::Error::msg)
}

/// What bootstrap cannot do yet, and a URL that would commit a secret to Git.
fn refuse_unsupported(args: &BootstrapArgs) -> anyhow::Result<()> {
    if args.agent.tenants || args.agent.namespaced {
        anyhow::bail!(
            "tether bootstrap does not support --tenants or --namespaced yet: with those rights \
             the agent could not apply its own install (cluster-wide RBAC, its namespace); use \
             `tether install` with them"
        );
    }
    let committed_url = args.agent_repo.as_deref().unwrap_or(&args.repo);
    if carries_secret(committed_url) {
        anyhow::bail!(
            "{} carries a password or token, which would be committed to application.yaml; give \
             the agent's URL without it (--agent-repo) and its credentials with --git-secret",
            redacted(committed_url)
        );
    }
    Ok(())
}

/// Commits the folder's files and pushes them, and says so; returns the commit and the clone
/// that holds it.
async fn push(
    args: &BootstrapArgs,
    options: &InstallOptions,
    out: &mut impl Write,
) -> anyhow::Result<(String, tempfile::TempDir)> {
    let files = files(args, options)?;
    let repo = args.repo.clone();
    let (branch, path) = (args.branch.clone(), args.path.clone());
    let (commit, pushed, clone) =
        tokio::task::spawn_blocking(move || commit_and_push(&repo, &branch, &path, &files))
            .await??;
    writeln!(
        out,
        "{} {} on {} of {} ({}/install.yaml, {}/application.yaml)",
        if pushed { "pushed" } else { "unchanged:" },
        &commit[..12.min(commit.len())],
        args.branch,
        redacted(&args.repo),
        args.path.trim_end_matches('/'),
        args.path.trim_end_matches('/'),
    )?;
    Ok((commit, clone))
}

/// The commit as bootstrap pushed it, from its own clone (the agent's URL and
/// credentials may not work from here).
fn pinned_application(
    args: &BootstrapArgs,
    options: &InstallOptions,
    clone: &tempfile::TempDir,
    commit: &str,
) -> anyhow::Result<Application> {
    let mut pinned: Application = serde_json::from_value(application(args, options))?;
    pinned.spec.source.repo_url = format!("file://{}", clone.path().display());
    pinned.spec.source.secret_ref = None;
    pinned.spec.source.r#ref.branch = None;
    pinned.spec.source.r#ref.commit = Some(commit.to_string());
    Ok(pinned)
}

/// The plan and apply options of one pass: adopt what is there, prune, the set Application
/// `tether`'s; `wait` for health or not.
fn pass_options(namespace: &str, wait: Option<Duration>) -> (PlanOptions, ApplyOptions) {
    let mut plan_options = PlanOptions::new(APPLICATION, namespace.to_string());
    plan_options.adopt = true;
    plan_options.keep_unchanged_live = false;
    // The set is Application `tether`'s from now on.
    plan_options.application = Some(format!("{namespace}/{APPLICATION}"));
    plan_options.progress = super::progress::for_stderr();
    let apply_options = ApplyOptions {
        prune: true,
        wait,
        progress: super::progress::for_stderr(),
        ..Default::default()
    };
    (plan_options, apply_options)
}

/// The tokens Secret, in the cluster only: an earlier install's tokens are kept, missing ones
/// generated.
async fn write_tokens(
    client: &kube::Client,
    options: &InstallOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let namespace = &options.namespace;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let installed = secrets.get_opt(TOKENS_SECRET).await?;
    let (tokens, kept) = Tokens::kept_from(installed.as_ref());
    let secret = crate::install::manifests(options, Some(&tokens))
        .into_iter()
        .find(|o| o["kind"] == "Secret")
        .expect("the install has a tokens Secret");
    secrets
        .patch(
            TOKENS_SECRET,
            &PatchParams::apply("tether-bootstrap").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    writeln!(
        out,
        "Secret {namespace}/{TOKENS_SECRET}: {} (not in Git)",
        match kept {
            3 => "kept",
            0 => "generated",
            _ => "kept; the missing tokens generated",
        }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets_in_messages() {
        assert_eq!(
            redacted("https://bot:ghp_secret@git.example.com/team/fleet.git"),
            "https://bot:***@git.example.com/team/fleet.git"
        );
        assert_eq!(redacted("ssh://git@host/fleet"), "ssh://git@host/fleet");
        assert_eq!(redacted("file:///srv/fleet.git"), "file:///srv/fleet.git");
        assert!(carries_secret("https://bot:t@h/x"));
        assert!(!carries_secret("ssh://git@h/x") && !carries_secret("git@h:x"));
    }

    #[test]
    fn the_folder_holds_the_install_and_an_application_of_itself_and_no_secret() {
        let args = BootstrapArgs {
            repo: "ssh://git@git.example.com/fleet.git".into(),
            branch: "main".into(),
            path: "clusters/prod/tether".into(),
            agent_repo: Some("https://git.example.com/fleet.git".into()),
            git_secret: Some("fleet-read".into()),
            agent: super::super::install::InstallFlags {
                image: "tether:test".into(),
                replicas: 1,
                shards: None,
                tenants: false,
                namespaced: false,
            },
            timeout: Duration::ZERO,
        };
        let options = InstallOptions {
            namespace: "tether-system".into(),
            image: args.agent.image.clone(),
            replicas: 1,
            tenants: false,
            shards: None,
            namespaced: false,
        };
        let files = files(&args, &options).expect("files");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["install.yaml", "application.yaml"]);
        assert!(!files[0].1.contains("kind: CustomResourceDefinition"));
        assert!(files[0].1.contains("kind: Deployment"));
        assert!(
            !files[0].1.contains("kind: Secret"),
            "tokens never go to Git"
        );
        let app = application(&args, &options);
        assert_eq!(
            app["spec"]["source"]["repoURL"],
            "https://git.example.com/fleet.git"
        );
        assert_eq!(app["spec"]["source"]["path"], "clusters/prod/tether");
        assert_eq!(app["spec"]["source"]["secretRef"]["name"], "fleet-read");
        assert_eq!(app["spec"]["destination"]["namespace"], "tether-system");
        let parsed: Application = serde_json::from_value(app).expect("a valid Application");
        assert_eq!(parsed.spec.check(), Ok(()));
    }
}
