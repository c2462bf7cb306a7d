//! `tether plan --comment-on gitea|github|gitlab`: the flags that say where the Markdown plan
//! is posted, and the posting (see [`crate::comment`]).

use std::io::Write;
use std::path::PathBuf;

use crate::comment::{Host, Provider, body, marker, post};
use crate::output::OutputFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommentArgs {
    /// Post the plan (Markdown) to a pull request on this host, replacing the comment an
    /// earlier run posted for the same application and namespace.
    #[arg(long, value_enum, value_name = "HOST", requires_all = ["comment_repo", "comment_pr", "comment_token_file"])]
    pub comment_on: Option<Provider>,
    /// The host's web address (default: https://github.com, https://gitlab.com; Gitea: required).
    #[arg(long, value_name = "URL")]
    pub comment_url: Option<String>,
    /// The repository: owner/name (GitLab: the project's path).
    #[arg(long, value_name = "OWNER/NAME")]
    pub comment_repo: Option<String>,
    /// The pull request's number (GitLab: the merge request's iid).
    #[arg(long, value_name = "N")]
    pub comment_pr: Option<u64>,
    /// A file holding the API token (never a flag's value: it would show in process lists).
    #[arg(long, value_name = "FILE")]
    pub comment_token_file: Option<PathBuf>,
}

impl CommentArgs {
    /// Where to post and with which token, checked before anything is planned.
    pub fn target(&self) -> anyhow::Result<Option<(Host, String)>> {
        let Some(provider) = self.comment_on else {
            return Ok(None);
        };
        let repository = self.comment_repo.as_deref().unwrap_or_default();
        let number = self.comment_pr.unwrap_or_default();
        let host = Host::new(provider, self.comment_url.as_deref(), repository, number)
            .map_err(anyhow::Error::msg)?;
        let file = self
            .comment_token_file
            .as_ref()
            .expect("required with --comment-on");
        let token = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--comment-token-file {}: {e}", file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            anyhow::bail!("--comment-token-file {}: the file is empty", file.display());
        }
        Ok(Some((host, token)))
    }
}

/// Posts `plan` as Markdown to the pull request; says on stderr where it went.
pub async fn comment(
    (host, token): (Host, String),
    plan: &crate::plan::Plan,
    revision: Option<&crate::source::git::Revision>,
) -> anyhow::Result<()> {
    let mut markdown = Vec::new();
    super::plan::write_plan(&mut markdown, OutputFormat::Markdown, plan, revision)?;
    let markdown = String::from_utf8_lossy(&markdown);
    let marker = marker(&plan.options.app, &plan.options.namespace);
    let body = body(&markdown, &marker);
    let (id, replaced) = post(&host, &token, &body, &marker).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot post the plan to {} #{}: {e}",
            host.repository,
            host.number
        )
    })?;
    let mut err = std::io::stderr();
    writeln!(
        err,
        "tether: the plan is {} on {} #{} (comment {id})",
        if replaced { "updated" } else { "posted" },
        host.repository,
        host.number
    )?;
    Ok(())
}
