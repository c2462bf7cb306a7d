//! Destination clusters. An Application whose `spec.destination.cluster` names a Secret (in
//! the Application's namespace) is planned, applied, watched for drift and health-checked
//! in the cluster that Secret describes; without it, in the agent's own cluster. The
//! Application itself, its status, Events and Git credentials always live in the agent's
//! cluster.
//!
//! The agent keeps one client, one discovery and one set of drift watches per destination
//! ([`Clusters`]), built on first use and rebuilt when the Secret changes. Start at
//! [`connect`] (one connection, also used by `tether diff`) and [`Clusters::for_app`].
//!
//! # Security
//! The Secret is read with the agent's identity, and only from the Application's own
//! namespace: whoever may create Applications in a namespace can apply to any cluster whose
//! Secret is there (as with `spec.source.secretRef` for Git), so keep cluster Secrets in the
//! namespaces of the teams allowed to deploy there.
//! A kubeconfig from a Secret may not run programs (`exec`, `auth-provider`) or name files
//! on the agent's disk: whoever can write a Secret could otherwise run commands in the
//! agent or read its files. Credentials never appear in messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, ResourceExt};

use super::Application;
use super::drift::DriftWatch;
use crate::cluster::discovery::Resolver;
use crate::cluster::target::Target;

/// How long the agent uses a destination's Secret as last read before it reads it again
/// (a rotated token is in use this long after the Secret changed, at most).
const RECHECK_AFTER: Duration = Duration::from_secs(30);
/// How long connecting to a destination's API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a destination's first discovery may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the cluster that Secret `name` in `namespace` describes, as read by `home`
/// (see the module's Security section); `Err` says what is wrong and what to do.
pub async fn connect(home: &kube::Client, namespace: &str, name: &str) -> Result<Target, String> {
    let (target, _) = connect_reading(home, namespace, name).await?;
    Ok(target)
}

/// As [`connect`], with the Secret's resourceVersion.
async fn connect_reading(
    home: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(Target, Option<String>), String> {
    let secret = read_secret(home, namespace, name).await?;
    let version = secret.resource_version();
    let config = config_from(namespace, name, &secret).await?;
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config).map_err(|e| {
        format!(
            "cannot build a client for cluster {name} ({server}): {}",
            crate::cluster::root_cause(&e)
        )
    })?;
    // Bounded: a server that accepts connections and never answers must not hold up the
    // Applications of this cluster for ever.
    let discovered = tokio::time::timeout(DISCOVERY_TIMEOUT, Resolver::new(client.clone()))
        .await
        .map_err(|_| {
            format!(
                "cluster {name} at {server} (Secret {namespace}/{name}) did not answer within \
                 {} s; check that it is running and reachable from the agent",
                DISCOVERY_TIMEOUT.as_secs()
            )
        })?;
    let resolver = discovered.map_err(|e| {
        format!(
            "cannot reach cluster {name} at {server} (Secret {namespace}/{name}): {}; check that \
             it is running and that the Secret's credentials are valid",
            crate::cluster::describe(&e)
        )
    })?;
    Ok((
        Target {
            name: Some(name.to_string()),
            server,
            client,
            resolver: Arc::new(resolver),
        },
        version,
    ))
}

async fn read_secret(home: &kube::Client, namespace: &str, name: &str) -> Result<Secret, String> {
    read_secret_opt(home, namespace, name)
        .await?
        .ok_or_else(|| missing(namespace, name))
}

fn missing(namespace: &str, name: &str) -> String {
    format!(
        "spec.destination.cluster names Secret {namespace}/{name}, which does not exist; \
         create it with a `kubeconfig` key, or `server`, `token` and `ca.crt`"
    )
}

async fn read_secret_opt(
    home: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, String> {
    let secrets: Api<Secret> = Api::namespaced(home.clone(), namespace);
    secrets.get_opt(name).await.map_err(|e| {
        format!(
            "cannot read the cluster Secret {namespace}/{name}: {}",
            crate::cluster::describe(&e)
        )
    })
}

/// The client configuration a cluster Secret describes: a `kubeconfig` key (its current
/// context), or `server` with `token` and optionally `ca.crt` (PEM).
async fn config_from(namespace: &str, name: &str, secret: &Secret) -> Result<kube::Config, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone()).map_err(|_| {
                    format!("the cluster Secret {namespace}/{name}: key {key} is not UTF-8 text")
                })
            })
            .transpose()
    };
    let kubeconfig = match (text("kubeconfig")?, text("server")?) {
        (Some(kubeconfig), _) => Kubeconfig::from_yaml(&kubeconfig).map_err(|e| {
            format!(
                "the cluster Secret {namespace}/{name}: key kubeconfig is not a kubeconfig: {}",
                crate::cluster::root_cause(&e)
            )
        })?,
        (None, Some(server)) => {
            let token = text("token")?.ok_or_else(|| {
                format!(
                    "the cluster Secret {namespace}/{name} has `server` but no `token`; add the \
                     token of an identity allowed to write the Application's objects there"
                )
            })?;
            let ca = text("ca.crt")?;
            from_server_and_token(server.trim(), token.trim(), ca.as_deref())?
        }
        (None, None) => {
            return Err(format!(
                "the cluster Secret {namespace}/{name} has neither a `kubeconfig` key nor \
                 `server` and `token`"
            ));
        }
    };
    refuse_local_references(&kubeconfig)
        .map_err(|what| format!("the cluster Secret {namespace}/{name}: {what}"))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| {
                format!(
                    "the cluster Secret {namespace}/{name}: {}",
                    crate::cluster::root_cause(&e)
                )
            })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(config)
}

/// A kubeconfig of one cluster, user and context from a server URL, a bearer token and an
/// optional CA bundle.
fn from_server_and_token(
    server: &str,
    token: &str,
    ca: Option<&str>,
) -> Result<Kubeconfig, String> {
    use base64::Engine;
    let mut cluster = serde_json::json!({"server": server});
    if let Some(ca) = ca {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(ca).into();
    }
    let document = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "destination", "cluster": cluster}],
        "users": [{"name": "destination", "user": {"token": token}}],
        "contexts": [{"name": "destination", "context": {"cluster": "destination", "user": "destination"}}],
        "current-context": "destination",
    });
    serde_json::from_value(document).map_err(|e| format!("server {server:?}: {e}"))
}

/// `Err` names the first part of `kubeconfig` that would run a program or read a file.
fn refuse_local_references(kubeconfig: &Kubeconfig) -> Result<(), String> {
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let user_name = &named.name;
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(format!(
                "user {user_name:?} runs a program to get credentials (exec or auth-provider), \
                 which the agent refuses; put a token or client certificate data in the Secret"
            ));
        }
        for (field, given) in [
            ("tokenFile", user.token_file.is_some()),
            ("client-certificate", user.client_certificate.is_some()),
            ("client-key", user.client_key.is_some()),
        ] {
            if given {
                return Err(format!(
                    "user {user_name:?} names a file ({field}), which the agent does not read; \
                     put the data itself in the Secret (token, client-certificate-data, \
                     client-key-data)"
                ));
            }
        }
    }
    for named in &kubeconfig.clusters {
        if named
            .cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(format!(
                "cluster {:?} names a file (certificate-authority), which the agent does not \
                 read; use certificate-authority-data",
                named.name
            ));
        }
    }
    Ok(())
}

/// A destination as the agent uses it: connected, with its drift watches and the desired
/// objects of each ApplySet's last full sync (for health reads).
pub struct Connected {
    pub target: Target,
    pub drift: DriftWatch,
    /// ApplySet id → the desired objects of its last full sync.
    pub desired: Mutex<HashMap<String, Vec<super::Desired>>>,
    /// ApplySet id → each desired object's health as last read: a status change reads only
    /// the objects it touched (and those not Healthy), not the whole set.
    pub health:
        Mutex<HashMap<String, HashMap<crate::object::ObjectKey, crate::health::HealthStatus>>>,
    /// ApplySet id → the digest of its last render and what that render read of its tree:
    /// a later revision that holds the same there renders the same.
    pub render_inputs: Mutex<HashMap<String, ([u8; 32], crate::source::recording::Inputs)>>,
}

impl Connected {
    pub fn new(target: Target, drift: DriftWatch) -> Self {
        Self {
            target,
            drift,
            desired: Default::default(),
            health: Default::default(),
            render_inputs: Default::default(),
        }
    }

    /// Forgets what is known of set `id` (its Application is gone, or another agent took
    /// it over).
    pub fn forget_set(&self, id: &str) {
        self.drift.forget_set(id);
        self.desired.lock().expect("not poisoned").remove(id);
        self.health.lock().expect("not poisoned").remove(id);
        self.render_inputs.lock().expect("not poisoned").remove(id);
    }
}

struct Entry {
    destination: Arc<Connected>,
    /// The Secret's resourceVersion it was built from.
    version: Option<String>,
    checked: Instant,
}

/// Every destination of this agent: its own cluster, and one per cluster Secret in use.
pub struct Clusters {
    home: Arc<Connected>,
    /// namespace/secret → the destination built from it. Each has a lock of its own, held
    /// while it is (re)built, so a cluster that is slow to answer delays only its own
    /// Applications.
    remote: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Entry>>>>>,
}

impl Clusters {
    pub fn new(home: Connected) -> Self {
        Self {
            home: Arc::new(home),
            remote: Default::default(),
        }
    }

    pub fn home(&self) -> &Arc<Connected> {
        &self.home
    }

    /// The destination of `app`, connected on first use and rebuilt when its Secret
    /// changed (read again at most every 30 s); `Err` says why it cannot be reached.
    pub async fn for_app(&self, app: &Application) -> Result<Arc<Connected>, String> {
        let Some(name) = app.spec.destination.cluster_name() else {
            return Ok(self.home.clone());
        };
        let namespace = app.namespace().unwrap_or_default();
        let slot = self
            .remote
            .lock()
            .expect("not poisoned")
            .entry(format!("{namespace}/{name}"))
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(entry) = slot.as_mut() {
            if entry.checked.elapsed() < RECHECK_AFTER {
                return Ok(entry.destination.clone());
            }
            let home = &self.home.target.client;
            let Some(secret) = read_secret_opt(home, &namespace, name).await? else {
                // Deleted: its credentials are no longer to be used, nor its watches kept.
                if let Some(old) = slot.take() {
                    old.destination.drift.stop();
                }
                return Err(missing(&namespace, name));
            };
            if secret.resource_version() == entry.version {
                entry.checked = Instant::now();
                return Ok(entry.destination.clone());
            }
            tracing::info!(cluster = %name, %namespace, "the cluster Secret changed; connecting again");
        }
        let (target, version) = connect_reading(&self.home.target.client, &namespace, name).await?;
        tracing::info!(cluster = %name, server = %target.server, "connected to a destination cluster");
        let drift = self.home.drift.for_cluster(target.client.clone());
        let destination = Arc::new(Connected::new(target, drift));
        if let Some(old) = slot.replace(Entry {
            destination: destination.clone(),
            version,
            checked: Instant::now(),
        }) {
            old.destination.drift.stop();
        }
        Ok(destination)
    }

    /// The destination of `app` if it is connected already (no request is made).
    pub fn cached(&self, app: &Application) -> Option<Arc<Connected>> {
        let Some(name) = app.spec.destination.cluster_name() else {
            return Some(self.home.clone());
        };
        let key = format!("{}/{name}", app.namespace().unwrap_or_default());
        let slot = self.remote.lock().expect("not poisoned").get(&key)?.clone();
        let slot = slot.try_lock().ok()?;
        slot.as_ref().map(|entry| entry.destination.clone())
    }

    /// Stops every drift watch (the agent is stopping).
    pub fn stop(&self) {
        self.home.drift.stop();
        let slots: Vec<_> = self
            .remote
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        for slot in slots {
            if let Ok(slot) = slot.try_lock()
                && let Some(entry) = slot.as_ref()
            {
                entry.destination.drift.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: serde_json::Value, cluster: serde_json::Value) -> Kubeconfig {
        serde_json::from_value(serde_json::json!({
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }))
        .expect("a kubeconfig")
    }

    #[test]
    fn a_kubeconfig_that_runs_programs_or_reads_files_is_refused() {
        let server = serde_json::json!({"server": "https://127.0.0.1:6443"});
        let exec = kubeconfig(
            serde_json::json!({"exec": {"command": "sh", "apiVersion": "client.authentication.k8s.io/v1"}}),
            server.clone(),
        );
        assert!(
            refuse_local_references(&exec)
                .unwrap_err()
                .contains("runs a program")
        );
        let file = kubeconfig(
            serde_json::json!({"tokenFile": "/etc/shadow"}),
            server.clone(),
        );
        assert!(
            refuse_local_references(&file)
                .unwrap_err()
                .contains("tokenFile")
        );
        let ca = kubeconfig(
            serde_json::json!({"token": "t"}),
            serde_json::json!({"server": "https://x", "certificate-authority": "/ca.pem"}),
        );
        assert!(
            refuse_local_references(&ca)
                .unwrap_err()
                .contains("certificate-authority")
        );
        let fine = kubeconfig(serde_json::json!({"token": "t"}), server);
        assert_eq!(refuse_local_references(&fine), Ok(()));
    }

    #[test]
    fn server_and_token_make_a_kubeconfig_of_one_context() {
        let config = from_server_and_token("https://10.0.0.1:6443", "abc", Some("PEM"))
            .expect("a kubeconfig");
        assert_eq!(config.current_context.as_deref(), Some("destination"));
        let cluster = config.clusters[0].cluster.as_ref().expect("a cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("UEVN"));
        assert_eq!(refuse_local_references(&config), Ok(()));
    }
}
