//! `tether agent`: the pull-mode controller.

use std::io::Write;
use std::path::PathBuf;

use super::GlobalArgs;
use crate::agent::{AgentOptions, install_crd, run as run_agent};
use crate::cluster::Cluster;

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

    /// The memory limit of one render (helm, kustomize or Jsonnet, with the programs it
    /// starts) of an Application that sets no spec.render.memoryLimit; past it the render
    /// is killed and the Application reports it.
    #[arg(long, value_name = "SIZE", default_value = "256Mi", value_parser = crate::render::external::parse_memory_limit)]
    pub render_memory: u64,

    /// The memory all renders running at once may take together: a render starts when its
    /// limit fits in what is left. Size the agent's container memory limit to this plus
    /// what the agent itself takes (tether install: 1Gi + 512Mi).
    #[arg(long, value_name = "SIZE", default_value = "1Gi", value_parser = crate::size::parse_size)]
    pub render_memory_budget: u64,

    /// Serve webhooks (/webhooks/github|gitlab|gitea|generic), /healthz, /readyz and
    /// /metrics on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// File holding the webhook secret (HMAC key; GitLab's token). Without it, webhooks are off.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Act only while holding the Lease tether-agent in this namespace (run several agents
    /// for availability; one acts, another takes over within 15 s when it dies).
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_elect: Option<String>,

    /// Split the Applications among several agents: N shards, each a Lease in
    /// --shard-namespace; every agent takes a share (rendezvous hashing over the live
    /// agents) and reconciles only the Applications of its shards. When one dies, its
    /// shards move within the lease duration. Give every agent the same N.
    #[arg(long, value_name = "N", requires = "shard_namespace", conflicts_with = "leader_elect",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,

    /// The namespace of the shard and membership Leases (with --shards).
    #[arg(long, value_name = "NAMESPACE", requires = "shards")]
    pub shard_namespace: Option<String>,

    /// How long a leader or shard Lease holds without renewal before another agent may
    /// take it over; renewed every third of it.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub lease_duration: std::time::Duration,

    /// File holding the bearer token of the JSON API (/api/v1) and the web UI (/ui/, log in
    /// with it). Without it, both are off.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub api_token_file: Option<PathBuf>,

    /// File holding a second token that logs in to the web UI read-only (everything shown,
    /// no action).
    #[arg(long, value_name = "FILE", requires = "api_token_file")]
    pub api_readonly_token_file: Option<PathBuf>,

    /// The web UI is reached over HTTPS (an ingress or proxy ends TLS in front of the
    /// agent): mark the session cookie Secure on every request. Without it, it is Secure
    /// when the request says it came over HTTPS (X-Forwarded-Proto: https).
    #[arg(long, requires = "api_token_file")]
    pub secure_cookies: bool,

    /// The backstop: plan every Application in full at least this often (plus up to 20 %),
    /// even when the watches saw no change; what it finds is corrected and counted in
    /// tether_drift_missed_total. 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub verify_interval: std::time::Duration,

    /// Refuse Applications that name no spec.serviceAccountName: each acts only with the
    /// rights of its own ServiceAccount (impersonated), never with the agent's.
    #[arg(long)]
    pub require_service_account: bool,

    /// The API server's audit log (the file of its --audit-log-path, JSON, level Metadata
    /// or above, readable by the agent): drift it puts back names the user and user agent
    /// of each change beside its field manager.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<std::path::PathBuf>,

    /// Stay in the namespace (-n): reconcile only its Applications, apply only into it, and
    /// watch only it, so the agent needs a Role there and no cluster-wide rights (tether
    /// install --namespaced).
    #[arg(long, conflicts_with = "all_namespaces")]
    pub namespaced: bool,

    /// POST a JSON notification here on a sync that applied a change, a failed sync, health
    /// turning Degraded and a drift correction (repeatable; retried, then counted in
    /// tether_notifications_dead_letter_total).
    #[arg(long, value_name = "URL")]
    pub notify: Vec<String>,

    /// The same, as a Slack-compatible message ({"text": …}; an incoming webhook's URL).
    #[arg(long, value_name = "URL")]
    pub notify_slack: Vec<String>,

    /// File holding the HMAC key that signs the JSON notifications (header
    /// X-Tether-Signature: sha256=<hex>).
    #[arg(long, value_name = "FILE")]
    pub notify_secret_file: Option<PathBuf>,
}

/// `tether agent`: flags → [`AgentOptions`], then the controller until a signal stops it.
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
    let secrets = Secrets::read(args)?;
    check_flags(args)?;
    crate::render::external::set_memory_budget(args.render_memory_budget);
    let options = agent_options(args, cluster.namespace(), secrets)?;
    announce(args, &options, &cluster);
    run_agent(cluster.client(), options, shutdown()).await?;
    Ok(0)
}

/// The secrets the agent's flags name files of.
struct Secrets {
    webhook_secret: Option<Vec<u8>>,
    api_token: Option<Vec<u8>>,
    api_readonly_token: Option<Vec<u8>>,
}

impl Secrets {
    fn read(args: &AgentArgs) -> anyhow::Result<Self> {
        Ok(Self {
            webhook_secret: read_secret(args.webhook_secret_file.as_deref(), "webhook secret")?,
            api_token: read_secret(args.api_token_file.as_deref(), "API token")?,
            api_readonly_token: read_secret(
                args.api_readonly_token_file.as_deref(),
                "read-only token",
            )?,
        })
    }
}

/// The flag combinations clap cannot refuse.
fn check_flags(args: &AgentArgs) -> anyhow::Result<()> {
    if args.lease_duration < std::time::Duration::from_secs(3) {
        anyhow::bail!("--lease-duration must be at least 3s (it is renewed every third of it)");
    }
    if args.render_memory > args.render_memory_budget {
        anyhow::bail!(
            "--render-memory ({}) is above --render-memory-budget ({}): no render could start",
            crate::size::show_size(args.render_memory),
            crate::size::show_size(args.render_memory_budget)
        );
    }
    Ok(())
}

/// The flags as the controller's options (`namespace`: the -n / context namespace).
fn agent_options(
    args: &AgentArgs,
    namespace: &str,
    secrets: Secrets,
) -> anyhow::Result<AgentOptions> {
    let lease_duration = std::time::Duration::from_secs(args.lease_duration.as_secs());
    let renew_every = lease_duration / 3;
    Ok(AgentOptions {
        namespace: (!args.all_namespaces).then(|| namespace.to_string()),
        listen: args.listen,
        webhook_secret: secrets.webhook_secret,
        api_token: secrets.api_token,
        api_readonly_token: secrets.api_readonly_token,
        secure_cookies: args.secure_cookies,
        leader_election: args.leader_elect.clone().map(|namespace| {
            let mut election = crate::agent::leader::ElectionOptions::new(namespace);
            election.lease_duration = lease_duration;
            election.renew_every = renew_every;
            election
        }),
        shards: args.shards.map(|shards| {
            let namespace = args.shard_namespace.clone().unwrap_or_default();
            let mut options = crate::agent::shard::ShardOptions::new(namespace, shards);
            options.lease_duration = lease_duration;
            options.renew_every = renew_every;
            options
        }),
        concurrency: args.concurrency,
        kustomize_bin: args.kustomize_bin.clone(),
        helm_bin: args.helm_bin.clone(),
        verify_interval: (!args.verify_interval.is_zero()).then_some(args.verify_interval),
        require_service_account: args.require_service_account,
        audit_log: args.audit_log.clone(),
        namespaced: args.namespaced,
        render_memory: args.render_memory,
        notify: crate::agent::notify::NotifyOptions {
            targets: notify_targets(args)?,
            secret: read_secret(args.notify_secret_file.as_deref(), "notification secret")?,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// What the agent watches, its shards and its web UI, on stderr.
fn announce(args: &AgentArgs, options: &AgentOptions, cluster: &Cluster) {
    eprintln!(
        "tether agent: watching Applications in {} (server {})",
        options
            .namespace
            .as_deref()
            .map(|n| format!("namespace {n}"))
            .unwrap_or_else(|| "all namespaces".into()),
        cluster.server()
    );
    if let Some(shards) = &options.shards {
        eprintln!(
            "tether agent: one of the agents sharing {} shards (Leases in namespace {}) as {}",
            shards.shards, shards.namespace, shards.identity
        );
    }
    if let (Some(address), Some(_)) = (args.listen, &options.api_token) {
        eprintln!("tether agent: web UI at http://{address}/ui/ (log in with the API token)");
    }
}

/// The first SIGTERM or Ctrl-C lets the reconciles in flight finish (an apply runs to
/// its end and its status is written); a second one stops at once.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    eprintln!(
        "tether agent: shutting down after the reconciles in flight (signal again to stop at once)"
    );
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        };
        eprintln!(
            "tether agent: stopping at once; an apply in flight is abandoned (what it wrote is recorded in its ApplySet, and the next reconcile completes it)"
        );
        std::process::exit(code);
    });
}

/// The first line of a secret file; an empty file is an error.
fn read_secret(file: Option<&std::path::Path>, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} file {}: {e}", file.display()))?;
    let secret = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .as_bytes()
        .to_vec();
    if secret.is_empty() {
        anyhow::bail!("the {what} file {} is empty", file.display());
    }
    Ok(Some(secret))
}

/// The --notify and --notify-slack URLs; refused when one is not an http(s) URL.
fn notify_targets(args: &AgentArgs) -> anyhow::Result<Vec<crate::agent::notify::Endpoint>> {
    use crate::agent::notify::{Endpoint, Format};
    let generic = args.notify.iter().map(|url| (url, Format::Generic));
    let slack = args.notify_slack.iter().map(|url| (url, Format::Slack));
    generic
        .chain(slack)
        .map(|(url, format)| {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("--notify {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("--notify {url:?}: only http:// and https:// URLs are supported");
            }
            Ok(Endpoint {
                url: url.clone(),
                format,
            })
        })
        .collect()
}
