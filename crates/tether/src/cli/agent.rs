//! `tether install` and `tether agent`: the pull-mode controller.

use std::io::Write;
use std::path::PathBuf;

use super::GlobalArgs;
use crate::agent::{AgentOptions, install_crd, run as run_agent};
use crate::cluster::Cluster;

#[derive(Debug, clap::Args)]
pub struct InstallArgs {}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Watch Applications in every namespace (default: only the -n / context namespace).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Install or upgrade the Application CRD at start.
    #[arg(long)]
    pub install_crd: bool,

    /// API requests in flight at once, and Applications reconciled at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,

    /// The kustomize program (default: $TETHER_KUSTOMIZE, else PATH).
    #[arg(long, value_name = "FILE")]
    pub kustomize_bin: Option<PathBuf>,

    /// The helm program (default: $TETHER_HELM, else PATH).
    #[arg(long, value_name = "FILE")]
    pub helm_bin: Option<PathBuf>,

    /// Serve webhooks (/webhooks/github|gitlab|gitea|generic), /healthz, /readyz and
    /// /metrics on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// File holding the webhook secret (HMAC key; GitLab's token). Without it, webhooks are off.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub webhook_secret_file: Option<PathBuf>,
}

pub async fn install(
    global: &GlobalArgs,
    _args: &InstallArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    cluster.server_version().await?;
    install_crd(&cluster.client()).await?;
    writeln!(
        out,
        "customresourcedefinition applications.tether.dev installed and established"
    )?;
    Ok(0)
}

pub async fn agent(
    global: &GlobalArgs,
    args: &AgentArgs,
    _out: &mut impl Write,
) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    cluster.server_version().await?;
    if args.install_crd {
        install_crd(&cluster.client()).await?;
    }
    let webhook_secret = match &args.webhook_secret_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the webhook secret file {}: {e}",
                    file.display()
                )
            })?;
            let secret = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
            if secret.is_empty() {
                anyhow::bail!("the webhook secret file {} is empty", file.display());
            }
            Some(secret)
        }
        None => None,
    };
    let options = AgentOptions {
        namespace: (!args.all_namespaces).then(|| cluster.namespace().to_string()),
        listen: args.listen,
        webhook_secret,
        concurrency: args.concurrency,
        kustomize_bin: args.kustomize_bin.clone(),
        helm_bin: args.helm_bin.clone(),
        ..Default::default()
    };
    eprintln!(
        "tether agent: watching Applications in {} (server {})",
        options
            .namespace
            .as_deref()
            .map(|n| format!("namespace {n}"))
            .unwrap_or_else(|| "all namespaces".into()),
        cluster.server()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!("tether agent: shutting down after the reconciles in flight");
    };
    run_agent(cluster.client(), options, shutdown).await?;
    Ok(0)
}
