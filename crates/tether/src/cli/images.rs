//! `tether images update`: the image policies of an Application file applied to a folder
//! on disk, as the agent applies them to its Git branch (the same choice and the same
//! rewrite), for CI that commits the result itself, or to see what the agent would push.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::GlobalArgs;
use super::source::RegistryArgs;
use crate::application::Application;
use crate::images::{self, setters, writeback};
use crate::output::{OutputFormat, write_structured};

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Ask the registries for each policy's tag and rewrite the marked fields and
    /// kustomization images of the folder's YAML files.
    Update(UpdateArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// A file holding Applications with spec.imageUpdates (as applied to the cluster).
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,

    /// The folder to update (default: each Application's imageUpdates.path, else its
    /// source path, from the current folder).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// Show the changes without writing them.
    #[arg(long)]
    pub dry_run: bool,

    /// Exit 2 when something changed (or would change).
    #[arg(long)]
    pub detailed_exitcode: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(
    global: &GlobalArgs,
    command: &ImagesCommand,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let ImagesCommand::Update(args) = command;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("-f {}", args.file.display()))?;
    let documents =
        crate::render::yaml::parse_documents(&text, &Default::default()).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}:{}: {}",
                args.file.display(),
                e.line,
                e.column,
                e.message
            )
        })?;
    let mut all = Vec::new();
    let mut found = 0;
    for document in documents {
        if document.value["kind"] != "Application" {
            continue;
        }
        let app: Application = serde_json::from_value(document.value).with_context(|| {
            format!(
                "{}:{}: not an Application",
                args.file.display(),
                document.line
            )
        })?;
        if app.spec.image_updates.is_some() {
            found += 1;
            all.extend(update_one(global, args, &app).await?);
        }
    }
    if found == 0 {
        bail!(
            "{}: no Application with spec.imageUpdates",
            args.file.display()
        );
    }
    match global.output {
        OutputFormat::Text | OutputFormat::Markdown => {
            for change in &all {
                let old = if change.old.is_empty() {
                    "(unset)"
                } else {
                    &change.old
                };
                writeln!(
                    out,
                    "{}:{}: {} -> {}",
                    change.file, change.line, old, change.new
                )?;
            }
            let verb = if args.dry_run {
                "would change"
            } else {
                "changed"
            };
            writeln!(out, "{} value(s) {verb}", all.len())?;
        }
        format => write_structured(out, format, &all)?,
    }
    Ok(if args.detailed_exitcode && !all.is_empty() {
        2
    } else {
        0
    })
}

/// One Application's policies: scanned, and its folder rewritten (unless a dry run).
async fn update_one(
    global: &GlobalArgs,
    args: &UpdateArgs,
    app: &Application,
) -> anyhow::Result<Vec<setters::Change>> {
    let updates = app
        .spec
        .image_updates
        .as_ref()
        .expect("checked by the caller");
    images::check(updates).map_err(anyhow::Error::msg)?;
    let namespace = app
        .metadata
        .namespace
        .clone()
        .or_else(|| global.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let mut chosen = Vec::new();
    for policy in &updates.policies {
        let url = images::registry_url(&policy.image).map_err(anyhow::Error::msg)?;
        let options = args.registry.options(&url)?;
        let policy = policy.clone();
        let picked = tokio::task::spawn_blocking(move || images::scan(&policy, &options))
            .await
            .context("the registry task panicked")?
            .map_err(anyhow::Error::msg)?;
        chosen.push(picked);
    }
    let folder = match &args.path {
        Some(path) => path.clone(),
        None => PathBuf::from(updates.path.as_deref().unwrap_or(&app.spec.source.path)),
    };
    let edit = |file: &str, text: &str| setters::update(file, text, &namespace, &chosen);
    let changes =
        writeback::edit_folder(&folder, "", &edit, !args.dry_run).map_err(anyhow::Error::msg)?;
    Ok(changes
        .into_iter()
        .map(|c| setters::Change {
            file: folder.join(&c.file).display().to_string(),
            ..c
        })
        .collect())
}
