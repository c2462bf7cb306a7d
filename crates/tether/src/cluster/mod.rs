//! Connecting to a Kubernetes API server the way kubectl does.
//!
//! Owns kubeconfig loading (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, in-cluster),
//! context and namespace selection, and turning connection failures into [`Error`]s that say
//! what failed, where, and what to do. Start at [`Cluster::connect`].

pub mod discovery;
pub mod target;
pub mod window;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// How to reach the cluster: the kubectl-style global flags.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; when unset, `KUBECONFIG` (a list of files) or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; when unset, the current context.
    pub context: Option<String>,
    /// The default namespace; when unset, the context's namespace, else `default`.
    pub namespace: Option<String>,
    /// How long to wait for a TCP+TLS connection before giving up.
    pub connect_timeout: Option<Duration>,
}

impl ClusterOptions {
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from connecting to a cluster. Each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no kubeconfig found: KUBECONFIG is not set, ~/.kube/config does not exist and tether \
         is not running inside a cluster; pass --kubeconfig FILE or set KUBECONFIG"
    )]
    NoKubeconfig,

    #[error(
        "cannot read kubeconfig {where_}: {reason}; check the file or pass another with --kubeconfig"
    )]
    Kubeconfig { where_: String, reason: String },

    #[error(
        "context {context:?} is not in kubeconfig {where_} (it has: {available}); pick one with --context"
    )]
    UnknownContext {
        context: String,
        where_: String,
        available: String,
    },

    #[error("cannot use the in-cluster service account: {0}")]
    InCluster(String),

    #[error(
        "cannot reach the Kubernetes API server at {server}{context}: {reason}; check that the \
         cluster is running and that --kubeconfig/--context point at it"
    )]
    Unreachable {
        server: String,
        context: String,
        reason: String,
    },

    #[error(
        "the API server at {server}{context} refused the request ({code} {reason}): {message}; \
         check the credentials of this context"
    )]
    Refused {
        server: String,
        context: String,
        code: u16,
        reason: String,
        message: String,
    },
}

/// A connected client plus what the user asked for: the context and default namespace.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    server: String,
    context: Option<String>,
    namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("context", &self.context)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Loads the configuration and builds a client. Makes no request yet: a cluster that
    /// is down is reported by the first call (see [`Cluster::server_version`]).
    pub async fn connect(options: &ClusterOptions) -> Result<Self, Error> {
        let (mut config, context) = load_config(options).await?;
        config.connect_timeout = Some(options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
        let namespace = options
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = kube::Client::try_from(config).map_err(|err| Error::Unreachable {
            server: server.clone(),
            context: context_suffix(context.as_deref()),
            reason: root_cause(&err),
        })?;
        Ok(Self {
            client,
            server,
            context,
            namespace,
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The API server's URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubeconfig context in use (none in-cluster).
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The namespace for namespaced objects that name none.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Asks the server for its version: the cheapest proof that it is reachable and that
    /// it accepts our credentials.
    pub async fn server_version(&self) -> Result<Info, Error> {
        self.client
            .apiserver_version()
            .await
            .map_err(|err| self.describe(err))
    }

    /// Turns a client error into one that names the server and context.
    pub fn describe(&self, err: kube::Error) -> Error {
        let context = context_suffix(self.context.as_deref());
        match err {
            kube::Error::Api(status) => Error::Refused {
                server: self.server.clone(),
                context,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => Error::Unreachable {
                server: self.server.clone(),
                context,
                reason: root_cause(&other),
            },
        }
    }
}

fn context_suffix(context: Option<&str>) -> String {
    context
        .map(|c| format!(" (context {c:?})"))
        .unwrap_or_default()
}

/// The innermost cause ("Connection refused (os error 111)", "invalid peer certificate"),
/// which says more to a user than the wrapper types around it.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest: &(dyn std::error::Error + 'static) = err;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    let text = deepest.to_string();
    if text.is_empty() {
        err.to_string()
    } else {
        text
    }
}

async fn load_config(options: &ClusterOptions) -> Result<(kube::Config, Option<String>), Error> {
    let (kubeconfig, where_) = match &options.kubeconfig {
        Some(path) => (
            Kubeconfig::read_from(path)
                .map_err(|err| kubeconfig_error(&path.display().to_string(), err))?,
            path.display().to_string(),
        ),
        None => match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            Some(value) => {
                let where_ = value.to_string_lossy().into_owned();
                (
                    Kubeconfig::read().map_err(|err| kubeconfig_error(&where_, err))?,
                    where_,
                )
            }
            None => match home_kubeconfig() {
                Some(path) if path.exists() => (
                    Kubeconfig::read_from(&path)
                        .map_err(|err| kubeconfig_error(&path.display().to_string(), err))?,
                    path.display().to_string(),
                ),
                _ => return in_cluster(options),
            },
        },
    };
    let context = options
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone());
    if let Some(wanted) = &options.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == wanted)
    {
        let names: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(Error::UnknownContext {
            context: wanted.clone(),
            where_,
            available: if names.is_empty() {
                "no contexts".into()
            } else {
                names.join(", ")
            },
        });
    }
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube_options)
        .await
        .map_err(|err| kubeconfig_error(&where_, err))?;
    Ok((config, context))
}

fn in_cluster(options: &ClusterOptions) -> Result<(kube::Config, Option<String>), Error> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Err(Error::NoKubeconfig);
    }
    if options.context.is_some() {
        return Err(Error::InCluster(
            "--context needs a kubeconfig, and none was found".into(),
        ));
    }
    let config = kube::Config::incluster().map_err(|err| Error::InCluster(root_cause(&err)))?;
    Ok((config, None))
}

fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("config"))
}

fn kubeconfig_error(where_: &str, err: KubeconfigError) -> Error {
    let reason = match &err {
        KubeconfigError::CurrentContextNotSet => {
            "it has no current-context; pass --context".to_string()
        }
        KubeconfigError::ReadConfig(io, _) => io.to_string(),
        _ => {
            let outer = err.to_string();
            let inner = root_cause(&err);
            if outer.contains(&inner) {
                outer
            } else {
                format!("{outer}: {inner}")
            }
        }
    };
    Error::Kubeconfig {
        where_: where_.to_string(),
        reason,
    }
}

/// The api for one object's kind, in its namespace.
pub fn api_for(
    client: &kube::Client,
    kind: &discovery::KindInfo,
    namespace: &str,
) -> kube::Api<kube::api::DynamicObject> {
    if kind.namespaced {
        kube::Api::namespaced_with(client.clone(), namespace, &kind.resource)
    } else {
        kube::Api::all_with(client.clone(), &kind.resource)
    }
}

/// A client error as a user reads it: the API server's own message when it sent one; else
/// that the server could not be reached, and the innermost cause (a closed connection, a
/// refused one) rather than "ServiceError: client error (SendRequest)".
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            format!("cannot reach the API server: {}", root_cause(err))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("temp dir is writable");
        path
    }

    const TWO_CONTEXTS: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://127.0.0.1:1"}
- name: b
  cluster: {server: "https://127.0.0.1:2"}
users:
- name: u
  user: {token: not-a-secret}
contexts:
- name: ctx-a
  context: {cluster: a, user: u, namespace: team-a}
- name: ctx-b
  context: {cluster: b, user: u}
current-context: ctx-a
"#;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tether-cluster-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir can be created");
        dir
    }

    #[tokio::test]
    async fn context_and_namespace_follow_kubectl_precedence() {
        let dir = temp_dir();
        let path = write(&dir, "config", TWO_CONTEXTS);

        let current = Cluster::connect(&ClusterOptions::default().kubeconfig(&path))
            .await
            .expect("valid kubeconfig");
        assert_eq!(current.context(), Some("ctx-a"));
        assert_eq!(current.server(), "https://127.0.0.1:1");
        assert_eq!(current.namespace(), "team-a");

        let other = Cluster::connect(&ClusterOptions::default().kubeconfig(&path).context("ctx-b"))
            .await
            .expect("valid kubeconfig");
        assert_eq!(other.server(), "https://127.0.0.1:2");
        assert_eq!(other.namespace(), "default");

        let flagged = Cluster::connect(
            &ClusterOptions::default()
                .kubeconfig(&path)
                .context("ctx-b")
                .namespace("override"),
        )
        .await
        .expect("valid kubeconfig");
        assert_eq!(flagged.namespace(), "override");
    }

    #[tokio::test]
    async fn unknown_context_lists_the_available_ones() {
        let dir = temp_dir();
        let path = write(&dir, "config-unknown", TWO_CONTEXTS);
        let err = Cluster::connect(&ClusterOptions::default().kubeconfig(&path).context("prod"))
            .await
            .expect_err("prod is not in the file");
        let text = err.to_string();
        assert!(text.contains("\"prod\""), "{text}");
        assert!(text.contains("ctx-a, ctx-b"), "{text}");
        assert!(text.contains("--context"), "{text}");
    }

    #[tokio::test]
    async fn missing_kubeconfig_file_names_the_path() {
        let err =
            Cluster::connect(&ClusterOptions::default().kubeconfig("/nonexistent/kubeconfig"))
                .await
                .expect_err("file does not exist");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/kubeconfig"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        // Bind then drop a listener: the port is free and nothing answers on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("loopback is available")
            .port();
        let dir = temp_dir();
        let path = write(
            &dir,
            "config-down",
            &TWO_CONTEXTS.replace("127.0.0.1:1", &format!("127.0.0.1:{port}")),
        );
        let cluster = Cluster::connect(&ClusterOptions::default().kubeconfig(&path))
            .await
            .expect("valid kubeconfig");
        let err = cluster.server_version().await.expect_err("nothing listens");
        let text = err.to_string();
        assert!(
            text.contains(&format!("https://127.0.0.1:{port}")),
            "{text}"
        );
        assert!(text.contains("ctx-a"), "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        // The token from the kubeconfig must never leak into an error.
        assert!(!text.contains("not-a-secret"), "{text}");
    }
}
