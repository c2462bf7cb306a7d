//! The command-line interface: flags, the command enum, one function per command.
//!
//! Global flags follow kubectl (`--kubeconfig`, `--context`, `-n`, `-o`, `-v`). Every
//! command writes to an `impl Write` and returns its exit code, so tests can run it in
//! process. Start at [`run`].

mod agent;
mod apply;
mod apps;
mod bootstrap;
mod comment;
mod delete;
mod images;
mod install;
mod plan;
mod progress;
mod push;
mod render;
mod source;
mod status;
mod version;
mod windows;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cluster::ClusterOptions;
use crate::output::OutputFormat;

/// tether: GitOps for Kubernetes. `plan`/`apply` from CI (push), `agent` in the cluster (pull).
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts, named as kubectl names them.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Default namespace for namespaced objects that name none (default: the context's).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t)]
    pub output: OutputFormat,

    /// More logs on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Health rules for custom resources: a YAML list in the form of Flux's
    /// healthCheckExprs (apiVersion, kind, current, inProgress, failed; CEL), before the
    /// rules shipped with tether (an Application's own come first).
    #[arg(long, global = true, value_name = "FILE", env = "TETHER_HEALTH_RULES")]
    pub health_rules: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the desired objects of a Git revision (or a local folder), with their origin.
    Render(Box<render::RenderArgs>),
    /// Show what apply would change: a diff per object and a summary (exit 2 with
    /// --detailed-exitcode when there are changes).
    Plan(Box<plan::PlanArgs>),
    /// Make the cluster match the revision: server-side apply in order, prune what tether
    /// owns and Git no longer has, optionally wait for health.
    Apply(Box<apply::ApplyArgs>),
    /// Is the cluster in sync with the revision, and is every object healthy?
    Status(Box<status::StatusArgs>),
    /// Delete everything the application applied: its PreDelete hooks, its objects in
    /// reverse waves, its PostDelete hooks, then the set's record (--dry-run shows it).
    Delete(Box<delete::DeleteArgs>),
    /// Install or upgrade the agent in the cluster (CRD, RBAC, tokens, Deployment, Service);
    /// --dry-run prints it.
    Install(install::InstallArgs),
    /// Remove the agent from the cluster; Applications, the CRD and every object they
    /// applied stay unless asked.
    Uninstall(install::UninstallArgs),
    /// Commit the agent's install to a Git folder and install it from there: the agent then
    /// upgrades itself from what is committed (as `flux bootstrap`).
    Bootstrap(Box<bootstrap::BootstrapArgs>),
    /// Run the pull-mode agent: reconcile Application resources continuously.
    Agent(Box<agent::AgentArgs>),
    /// List Applications with their revision, sync state and health (`tether get apps`).
    Get(apps::GetArgs),
    /// Ask the agent to sync an Application now.
    Sync(apps::AppArgs),
    /// Show what the agent would change for an Application (exit 2 when it differs).
    Diff(apps::DiffArgs),
    /// Stop the agent from changing an Application.
    Suspend(apps::AppArgs),
    /// Let the agent change an Application again (after a rollback: follow its ref again).
    Resume(apps::AppArgs),
    /// The last syncs of an Application.
    History(apps::AppArgs),
    /// Apply an earlier commit and stop following new ones until `tether resume`.
    Rollback(apps::RollbackArgs),
    /// Image automation from the CLI (`images update`: newer tags from registries written
    /// into a folder's YAML, as the agent commits them).
    #[command(subcommand)]
    Images(images::ImagesCommand),
    /// Publish to an OCI registry (`push artifact`: a folder of manifests, as Flux does).
    #[command(subcommand)]
    Push(push::PushCommand),
    /// Print tether's version and, when a cluster is reachable, the API server's.
    Version(version::VersionArgs),
    /// Evaluate one Jsonnet file for a render, in a process of its own under the render's
    /// limits (started by tether itself).
    #[command(name = "internal-jsonnet", hide = true)]
    InternalJsonnet { request: PathBuf },
}

/// Runs one command; returns the process exit code (0 success, 1 error; some commands
/// define more, such as `plan --detailed-exitcode`).
pub async fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<u8> {
    if let Some(file) = &cli.global.health_rules {
        crate::health::rules::set_global(read_health_rules(file)?);
    }
    match cli.command {
        Command::Render(args) => render::run(&cli.global, &args, out).await,
        Command::Plan(args) => plan::run(&cli.global, &args, out).await,
        Command::Apply(args) => apply::run(&cli.global, &args, out).await,
        Command::Delete(args) => delete::run(&cli.global, &args, out).await,
        Command::Status(args) => status::run(&cli.global, &args, out).await,
        Command::Install(args) => install::install(&cli.global, &args, out).await,
        Command::Uninstall(args) => install::uninstall(&cli.global, &args, out).await,
        Command::Bootstrap(args) => bootstrap::bootstrap(&cli.global, &args, out).await,
        Command::Agent(args) => agent::agent(&cli.global, &args, out).await,
        Command::Get(args) => apps::get(&cli.global, &args, out).await,
        Command::Sync(args) => apps::sync(&cli.global, &args, out).await,
        Command::Diff(args) => apps::diff(&cli.global, &args, out).await,
        Command::Suspend(args) => apps::suspend(&cli.global, &args, out).await,
        Command::Resume(args) => apps::resume(&cli.global, &args, out).await,
        Command::History(args) => apps::history(&cli.global, &args, out).await,
        Command::Rollback(args) => apps::rollback(&cli.global, &args, out).await,
        Command::Push(command) => push::run(&cli.global, &command, out).await,
        Command::Images(command) => images::run(&cli.global, &command, out).await,
        Command::Version(args) => version::run(&cli.global, &args, out).await,
        Command::InternalJsonnet { request } => {
            match crate::render::jsonnet::serve_request(&request) {
                Ok(json) => {
                    out.write_all(&json)?;
                    Ok(0)
                }
                Err(message) => {
                    eprintln!("{message}");
                    Ok(1)
                }
            }
        }
    }
}

/// The rules of a `--health-rules` file, compiled; an error names the file and the rule.
fn read_health_rules(file: &std::path::Path) -> anyhow::Result<crate::health::rules::Rules> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--health-rules {}", file.display()))?;
    let exprs: Vec<crate::health::rules::HealthCheckExpr> = serde_saphyr::from_str(&text)
        .map_err(|e| {
            anyhow::anyhow!(
                "--health-rules {}: not a list of rules (apiVersion, kind, current, inProgress, failed): {e}",
                file.display()
            )
        })?;
    crate::health::rules::Rules::compile(&exprs, &format!("--health-rules {}", file.display()))
        .map_err(anyhow::Error::msg)
}

/// Logs go to stderr so that stdout stays parseable (`-o json`).
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(match verbose {
            // By default only tether speaks: the errors of the libraries below it reach the
            // user through tether's own error messages, with what to do.
            0 => "tether=warn",
            1 => "warn,tether=info",
            2 => "info,tether=debug,kube=debug",
            _ => "debug,tether=trace,kube=trace",
        }),
    };
    // A second call (tests running several commands in one process) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose >= 2)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_parse_anywhere_like_kubectl() {
        let cli = Cli::try_parse_from([
            "tether",
            "version",
            "--context",
            "kind-dev",
            "-n",
            "team-a",
            "-o",
            "json",
            "-vv",
            "--kubeconfig",
            "/tmp/kc",
        ])
        .expect("valid flags");
        assert_eq!(cli.global.context.as_deref(), Some("kind-dev"));
        assert_eq!(cli.global.namespace.as_deref(), Some("team-a"));
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.verbose, 2);
        assert_eq!(cli.global.kubeconfig, Some(PathBuf::from("/tmp/kc")));
    }

    #[test]
    fn unknown_output_format_is_rejected() {
        let err = Cli::try_parse_from(["tether", "version", "-o", "xml"])
            .expect_err("xml is not a format");
        assert!(err.to_string().contains("xml"), "{err}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
