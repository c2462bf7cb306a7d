//! An Application's image updates, run before its sync when due: the registries are asked
//! for each policy's tag, the files at the source's ref are compared with them, and only
//! when a reference is out of date is the branch cloned, changed, committed and pushed. An
//! Event says what was pushed (`ImageUpdated`) or why not (`ImageUpdateFailed`); the sync
//! that follows lists the remote afresh and applies the new commit.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{Context, report};
use crate::application::{Application, ImageUpdates, application_key};
use crate::duration::parse_duration;
use crate::images::{self, Chosen, setters, writeback};

/// How often the Application's registries are scanned (default 1m), when it has image
/// updates: it is reconciled at least that often.
pub(super) fn interval(app: &Application) -> Option<Duration> {
    let updates = app.spec.image_updates.as_ref()?;
    Some(
        updates
            .interval
            .as_deref()
            .and_then(|i| parse_duration(i).ok())
            .unwrap_or(Duration::from_secs(60)),
    )
}

/// Runs the Application's image updates if it has them and they are due.
pub(super) async fn update_images(ctx: &Context, app: &Application) {
    let (Some(updates), Some(interval)) = (&app.spec.image_updates, interval(app)) else {
        return;
    };
    let due = ctx.memory.with(&application_key(app), |remembered| {
        let due = remembered
            .images_scanned
            .is_none_or(|at| at.elapsed() >= interval);
        if due {
            remembered.images_scanned = Some(Instant::now());
        }
        due
    });
    if !due {
        return;
    }
    match run(ctx, app, updates).await {
        Ok(None) => {}
        Ok(Some((commit, message))) => {
            tracing::info!(application = %app.name_any(), %commit, "image updates pushed");
            ctx.pipeline.listings.forget(&app.spec.source.repo_url);
            let subject = message.lines().next().unwrap_or_default().to_string();
            let note = format!(
                "pushed {} to {}: {subject}",
                &commit[..commit.len().min(12)],
                app.spec.source.repo_url
            );
            report::publish(ctx, app, EventType::Normal, "ImageUpdated", note).await;
        }
        Err(message) => {
            tracing::warn!(application = %app.name_any(), %message, "image updates failed");
            report::publish(ctx, app, EventType::Warning, "ImageUpdateFailed", message).await;
        }
    }
}

/// Scans, compares and (when something changed) commits and pushes: the commit and its
/// message.
async fn run(
    ctx: &Context,
    app: &Application,
    updates: &ImageUpdates,
) -> Result<Option<(String, String)>, String> {
    images::check(updates)?;
    let spec = &app.spec;
    if spec.source.repo_url.starts_with("oci://") {
        return Err("image updates are written to Git: spec.source is an OCI repository".into());
    }
    // The agent pushes only to a Git server: never to a repository on its own file system.
    let url = &spec.source.repo_url;
    let remote = ["https://", "http://", "ssh://", "git://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
        || (url.contains('@') && url.contains(':') && !url.contains("://"));
    if !remote {
        return Err(format!(
            "image updates push to a Git server: {url} is a local repository (use https://, ssh:// or user@host:path)"
        ));
    }
    let namespace = app.namespace().unwrap_or_default();
    let chosen = scan_all(ctx, app, updates).await?;
    let (revision, tree) = crate::app::fetch(&ctx.client, &ctx.pipeline, app, None, Duration::ZERO)
        .await
        .map_err(String::from)?;
    let path = crate::source::tree::normalize(updates.path.as_deref().unwrap_or(&spec.source.path))
        .ok_or("spec.imageUpdates.path leaves the repository")?;
    let edit = {
        let (namespace, chosen) = (namespace.clone(), chosen.clone());
        move |file: &str, text: &str| setters::update(file, text, &namespace, &chosen)
    };
    let pending = {
        let (path, edit) = (path.clone(), edit.clone());
        tokio::task::spawn_blocking(move || writeback::edit_tree(tree.as_ref(), &path, &edit))
            .await
            .map_err(|e| format!("the image update task failed: {e}"))??
    };
    if pending.is_empty() {
        return Ok(None);
    }
    let branch = match (&spec.source.r#ref.branch, revision.from_ref.as_deref()) {
        (Some(branch), _) => branch.clone(),
        (None, Some(from)) if spec.source.r#ref.as_ref_text().is_ok_and(|t| t.is_empty()) => {
            from.trim_start_matches("refs/heads/").to_string()
        }
        _ => {
            return Err("image updates are pushed to a branch: set spec.source.ref.branch".into());
        }
    };
    let secrets =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let target = target(ctx, app, updates, branch, secrets.path()).await?;
    let outcome = tokio::task::spawn_blocking(move || {
        writeback::commit_and_push(&target, &path, &edit, &images::commit_message)
    })
    .await
    .map_err(|e| format!("the image update task failed: {e}"))??;
    drop(secrets);
    Ok(match outcome {
        writeback::Outcome::Pushed {
            commit, message, ..
        } => Some((commit, message)),
        writeback::Outcome::Unchanged => None,
    })
}

/// Each policy's choice, from its registry (with its Secret's credentials).
async fn scan_all(
    ctx: &Context,
    app: &Application,
    updates: &ImageUpdates,
) -> Result<Vec<Chosen>, String> {
    let namespace = app.namespace().unwrap_or_default();
    let mut chosen = Vec::new();
    for policy in &updates.policies {
        let url = images::registry_url(&policy.image)?;
        let mut options = crate::source::oci::Options {
            plain_http: policy.plain_http,
            cache_dir: ctx.pipeline.cache_dir.clone(),
            ..Default::default()
        };
        if let Some(secret) = &policy.secret_ref {
            (options.credentials, options.ca_pem) =
                crate::app::registry_credentials(&ctx.client, &namespace, &secret.name, &url.host)
                    .await
                    .map_err(String::from)?;
        }
        let policy = policy.clone();
        let picked = tokio::task::spawn_blocking(move || images::scan(&policy, &options))
            .await
            .map_err(|e| format!("the image scan task failed: {e}"))?
            .map_err(|e| format!("image policy: {e}"))?;
        chosen.push(picked);
    }
    Ok(chosen)
}

/// Where and as whom to push: the source's URL and credentials, the author and signing key.
async fn target(
    ctx: &Context,
    app: &Application,
    updates: &ImageUpdates,
    branch: String,
    dir: &std::path::Path,
) -> Result<writeback::Target, String> {
    let spec = &app.spec;
    let namespace = app.namespace().unwrap_or_default();
    let auth = match &spec.source.secret_ref {
        Some(secret) => crate::app::credentials(&ctx.client, &namespace, &secret.name, dir).await?,
        None => Default::default(),
    };
    let commit = &updates.git.commit;
    let signing = match &commit.signing_key {
        Some(key) => Some(signing_key(ctx, &namespace, &key.secret_ref.name, dir).await?),
        None => None,
    };
    let (author_name, author_email) = match &commit.author {
        Some(author) => (author.name.clone(), author.email.clone()),
        None => ("tether".into(), "tether@localhost".into()),
    };
    Ok(writeback::Target {
        url: spec.source.repo_url.clone(),
        branch,
        push_branch: updates.git.push.as_ref().map(|p| p.branch.clone()),
        username: auth.username,
        password: auth.password,
        ssh_key: auth.ssh_key,
        known_hosts: auth.known_hosts,
        ca_file: auth.ca_file,
        author_name,
        author_email,
        signing,
        timeout: Duration::from_secs(60),
    })
}

/// The signing key of Secret `name`: `git.asc` (an armored OpenPGP secret key, Flux's name)
/// or `sshPrivateKey`.
async fn signing_key(
    ctx: &Context,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> Result<writeback::Signing, String> {
    let file = |key: &str| dir.join(format!("signing-{key}"));
    match crate::app::secret_file(&ctx.client, namespace, name, "git.asc", &file("git.asc")).await {
        Ok(path) => Ok(writeback::Signing::OpenPgp(path)),
        Err(e) if !e.contains("has no key") => Err(e),
        Err(_) => {
            crate::app::secret_file(&ctx.client, namespace, name, "sshPrivateKey", &file("ssh"))
                .await
                .map(writeback::Signing::Ssh)
                .map_err(|e| {
                    format!("{e} (the signing key: sshPrivateKey, or git.asc for OpenPGP)")
                })
        }
    }
}
