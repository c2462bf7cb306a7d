//! `tether push artifact`: a folder packed as a tar+gzip layer with Flux's media types and
//! pushed to an OCI registry, so that an Application (or Flux's OCIRepository) can follow it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::GlobalArgs;
use super::source::RegistryArgs;
use crate::output::{OutputFormat, write_structured};
use crate::source::oci::{self, OciUrl};

#[derive(Debug, clap::Subcommand)]
pub enum PushCommand {
    /// Pack a folder of manifests and push it: oci://host[:port]/repository:tag (as `flux
    /// push artifact`).
    Artifact(ArtifactArgs),
}

#[derive(Debug, clap::Args)]
pub struct ArtifactArgs {
    /// Where to push: oci://host[:port]/repository:tag.
    #[arg(value_name = "URL")]
    pub url: String,

    /// The folder to pack (its files, `.git` left out).
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Where the files came from (org.opencontainers.image.source), e.g. the Git URL.
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,

    /// Which revision of the source (org.opencontainers.image.revision), e.g.
    /// main@sha1:<commit>, as flux writes it.
    #[arg(long, value_name = "REVISION")]
    pub revision: Option<String>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(serde::Serialize)]
struct Pushed {
    repository: String,
    tag: String,
    digest: String,
}

pub async fn run(
    global: &GlobalArgs,
    command: &PushCommand,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let PushCommand::Artifact(args) = command;
    let url = OciUrl::parse(&args.url)?;
    let tag = url.tag.clone().with_context(|| {
        format!(
            "{}: give the tag to push to: {}:TAG",
            args.url,
            url.repository_url()
        )
    })?;
    if !args.path.is_dir() {
        anyhow::bail!("--path {}: is not a folder", args.path.display());
    }
    let options = args.registry.options(&url)?;
    let annotations = oci::artifact::Annotations {
        source: args.source.clone(),
        revision: args.revision.clone(),
        created: None,
    };
    let digest = {
        let (url, tag, dir) = (url.clone(), tag.clone(), args.path.clone());
        tokio::task::spawn_blocking(move || {
            oci::artifact::push(&url, &tag, &dir, &annotations, &options)
        })
        .await
        .context("the registry task panicked")??
    };
    let pushed = Pushed {
        repository: url.repository_url(),
        tag,
        digest,
    };
    match global.output {
        OutputFormat::Text | OutputFormat::Markdown => writeln!(
            out,
            "pushed {}:{} ({})",
            pushed.repository, pushed.tag, pushed.digest
        )?,
        format => write_structured(out, format, &pushed)?,
    }
    Ok(0)
}
