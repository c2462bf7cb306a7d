//! What `tether install` puts in a cluster to run the agent there: its namespace, a
//! ServiceAccount with the rights the agent needs (and, for a single-tenant install, the
//! rights to write what Git holds), the leader Lease's Role, a Secret of generated tokens,
//! the agent's Deployment (probes on /healthz and /readyz) and a Service for webhooks, the
//! JSON API and the web UI. The Application CRD is installed beside them
//! ([`crate::agent::install_crd`]).

use serde_json::{Value, json};

use crate::object::{Object, ObjectKey, Origin};

/// The ServiceAccount, Deployment and Service name, and the roles' names.
pub const NAME: &str = "tether-agent";
/// The Secret holding the webhook secret and the API tokens.
pub const TOKENS_SECRET: &str = "tether-agent-tokens";
/// The application name of the install's set: its ApplySet parent is Secret `tether-install`
/// in the agent's namespace.
pub const APP: &str = "install";
/// The port the agent listens on in its Pod and the Service's port.
pub const PORT: u16 = 8080;
/// Where the Secret is mounted in the agent's container.
const TOKENS_DIR: &str = "/etc/tether/tokens";
/// The agent's cache (Git repositories, rendered charts): an emptyDir.
const CACHE_DIR: &str = "/var/cache/tether";

/// How the agent is installed.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The agent's namespace (also its leader Lease's).
    pub namespace: String,
    /// The agent's container image.
    pub image: String,
    pub replicas: u32,
    /// Multi-tenant: every Application names a ServiceAccount that the agent impersonates;
    /// the agent itself may write nothing but its Applications' status, Events and Lease.
    pub tenants: bool,
    /// Sharded: the replicas split the Applications into this many shards (Leases in the
    /// agent's namespace) instead of electing one leader.
    pub shards: Option<u32>,
    /// Namespaced: the agent reconciles and applies only in its own namespace, with a Role
    /// there and no cluster-wide rights.
    pub namespaced: bool,
}

/// The generated secrets, kept across upgrades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub webhook_secret: String,
    pub api_token: String,
    pub readonly_token: String,
}

impl Tokens {
    /// New random tokens (32 bytes each, hex).
    pub fn generate() -> Self {
        let token = || {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the system's random source works");
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        Self {
            webhook_secret: token(),
            api_token: token(),
            readonly_token: token(),
        }
    }

    /// The tokens an installed Secret holds (its `data`, base64 decoded by serde), with a
    /// new one for each it lacks (so a webhook secret configured at a Git host survives a
    /// lost API token); and how many were kept.
    pub fn kept_from(secret: Option<&k8s_openapi::api::core::v1::Secret>) -> (Self, usize) {
        let data = secret.and_then(|s| s.data.as_ref());
        let fresh = Self::generate();
        let mut kept = 0;
        let mut keep = |key: &str, new: String| match data
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
        {
            Some(old) => {
                kept += 1;
                old
            }
            None => new,
        };
        let tokens = Self {
            webhook_secret: keep("webhook-secret", fresh.webhook_secret),
            api_token: keep("api-token", fresh.api_token),
            readonly_token: keep("readonly-token", fresh.readonly_token),
        };
        (tokens, kept)
    }
}

fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/part-of": "tether",
        "app.kubernetes.io/managed-by": "tether-install",
    })
}

/// The install's objects, in apply order (the Namespace first). `tokens` `None` leaves the
/// Secret out (a printed install that must not carry secrets).
pub fn manifests(options: &InstallOptions, tokens: Option<&Tokens>) -> Vec<Value> {
    let ns = options.namespace.as_str();
    let subject = json!([{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]);
    let mut objects = vec![
        namespace_manifest(ns),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": NAME, "namespace": ns, "labels": labels()}}),
    ];
    // Namespaced: a Role and a RoleBinding in the agent's namespace; else cluster-wide ones,
    // whose names carry the namespace, so that installs in two namespaces do not collide.
    let grant = |objects: &mut Vec<Value>, name: &str, rules: Value| {
        let (role, binding, name, metadata) = if options.namespaced {
            let metadata = json!({"name": name, "namespace": ns, "labels": labels()});
            ("Role", "RoleBinding", name.to_string(), metadata)
        } else {
            let name = format!("{name}:{ns}");
            let metadata = json!({"name": name, "labels": labels()});
            ("ClusterRole", "ClusterRoleBinding", name, metadata)
        };
        objects.push(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role,
            "metadata": metadata, "rules": rules}),
        );
        objects.push(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding,
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": name},
            "subjects": subject}),
        );
    };
    grant(&mut objects, NAME, agent_rules());
    if !options.tenants {
        // Single-tenant: the agent applies and prunes whatever its Applications' Git holds,
        // in any namespace (namespaced: in its own), with its own identity.
        grant(
            &mut objects,
            &format!("{NAME}-writer"),
            json!([{"apiGroups": ["*"], "resources": ["*"],
                    "verbs": ["create", "update", "patch", "delete"]}]),
        );
    }
    let leader = format!("{NAME}-leader");
    objects.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": leader, "namespace": ns, "labels": labels()},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": lease_verbs(options)}]}),
    );
    objects.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": leader, "namespace": ns, "labels": labels()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": leader},
        "subjects": subject}),
    );
    if let Some(tokens) = tokens {
        objects.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": TOKENS_SECRET, "namespace": ns, "labels": labels()},
        "type": "Opaque",
        "stringData": {
            "webhook-secret": tokens.webhook_secret,
            "api-token": tokens.api_token,
            "readonly-token": tokens.readonly_token,
        }}));
    }
    objects.push(deployment(options));
    objects.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels()},
        "spec": {"selector": {"app.kubernetes.io/name": NAME},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}}));
    objects
}

/// The agent's namespace, as the install has it.
pub fn namespace_manifest(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": namespace, "labels": labels()}})
}

/// What the agent may do with its own identity: read everything (the drift watches, the
/// Git credentials Secrets), write its Applications' status and Events, and act as the
/// ServiceAccount an Application names (`tests/fleet/tenants.rs` runs an agent with exactly these).
fn agent_rules() -> Value {
    json!([
        {"apiGroups": ["tether.dev"], "resources": ["applications"],
         "verbs": ["get", "list", "watch", "patch", "create", "delete"]},
        {"apiGroups": ["tether.dev"], "resources": ["applications/status", "applicationsets/status"],
         "verbs": ["get", "patch", "update"]},
        // Applications a set owns block its deletion (blockOwnerDeletion), which clusters
        // enforcing owner references check against this.
        {"apiGroups": ["tether.dev"], "resources": ["applicationsets/finalizers"], "verbs": ["update"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
    ])
}

/// A leader only reads and writes its Lease; sharded agents also list the membership
/// Leases and delete those of agents long gone.
fn lease_verbs(options: &InstallOptions) -> Value {
    match options.shards {
        Some(_) => json!(["get", "list", "create", "update", "delete"]),
        None => json!(["get", "create", "update"]),
    }
}

/// The agent's Deployment: one leader replaced by Recreate, or sharded replicas rolled.
fn deployment(options: &InstallOptions) -> Value {
    let ns = options.namespace.as_str();
    // With one leader, the new Pod cannot become Ready while the old one holds the Lease: a
    // rolling update would wait for ever, so the old one stops first. Sharded replicas are
    // each Ready on their own, and hand their shards over as they stop.
    let strategy = match options.shards {
        Some(_) => json!({"type": "RollingUpdate"}),
        None => json!({"type": "Recreate"}),
    };
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels()},
        "spec": {
            "replicas": options.replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                        "runAsGroup": 65532, "fsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container(options)],
                    "volumes": [
                        {"name": "tokens", "secret": {"secretName": TOKENS_SECRET}},
                        {"name": "cache", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    })
}

/// The agent's command line: its scope, listener, token files, leadership or shards.
fn agent_args(options: &InstallOptions) -> Vec<String> {
    let ns = options.namespace.as_str();
    let mut args: Vec<String> = vec!["agent".to_string()];
    if options.namespaced {
        args.push(format!("--namespace={ns}"));
        args.push("--namespaced".into());
    } else {
        args.push("--all-namespaces".into());
    }
    args.extend([
        format!("--listen=0.0.0.0:{PORT}"),
        format!("--webhook-secret-file={TOKENS_DIR}/webhook-secret"),
        format!("--api-token-file={TOKENS_DIR}/api-token"),
        format!("--api-readonly-token-file={TOKENS_DIR}/readonly-token"),
    ]);
    match options.shards {
        Some(shards) => {
            args.push(format!("--shards={shards}"));
            args.push(format!("--shard-namespace={ns}"));
        }
        None => args.push(format!("--leader-elect={ns}")),
    }
    if options.tenants {
        args.push("--require-service-account".into());
    }
    args
}

/// The agent's container: its image and arguments, probes, resources and a read-only root.
fn container(options: &InstallOptions) -> Value {
    let probe = |path: &str, period: u32| {
        json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
               "timeoutSeconds": 5})
    };
    json!({
        "name": "agent",
        "image": options.image,
        "args": agent_args(options),
        "env": [
            {"name": "TETHER_CACHE_DIR", "value": CACHE_DIR},
            {"name": "HOME", "value": CACHE_DIR},
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "livenessProbe": probe("/healthz", 20),
        "readinessProbe": probe("/readyz", 10),
        // The renders' budget (--render-memory-budget, 1Gi) and 512Mi for
        // the agent itself.
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "1536Mi"}},
        "securityContext": {"allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": true},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    })
}

/// The manifests as the objects a plan takes.
pub fn objects(manifests: Vec<Value>) -> Vec<Object> {
    manifests
        .into_iter()
        .enumerate()
        .map(|(document, manifest)| {
            let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
            let group = api_version
                .rsplit_once('/')
                .map(|(group, _)| group.to_string())
                .unwrap_or_default();
            let text = |field: &str| {
                manifest["metadata"][field]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            Object {
                key: ObjectKey {
                    group,
                    kind: manifest["kind"].as_str().unwrap_or_default().to_string(),
                    namespace: text("namespace"),
                    name: text("name"),
                },
                origin: Origin {
                    file: "tether install".into(),
                    line: 0,
                    document,
                    item: None,
                },
                manifest,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(tenants: bool) -> InstallOptions {
        InstallOptions {
            namespace: "tether-system".into(),
            image: "tether:test".into(),
            replicas: 1,
            tenants,
            shards: None,
            namespaced: false,
        }
    }

    #[test]
    fn a_tenants_install_grants_the_agent_no_write_and_requires_accounts() {
        let single = manifests(&options(false), None);
        let tenants = manifests(&options(true), None);
        let names = |objects: &[Value]| -> Vec<String> {
            objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect()
        };
        assert!(
            names(&single)
                .iter()
                .any(|n| n.contains("tether-agent-writer"))
        );
        assert!(!names(&tenants).iter().any(|n| n.contains("writer")));
        let args = |objects: &[Value]| {
            objects
                .iter()
                .find(|o| o["kind"] == "Deployment")
                .expect("deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
                .to_string()
        };
        assert!(args(&tenants).contains("--require-service-account"));
        assert!(!args(&single).contains("--require-service-account"));
    }

    #[test]
    fn a_sharded_install_runs_every_replica_on_shards_and_rolls_them() {
        let sharded = InstallOptions {
            replicas: 3,
            shards: Some(12),
            ..options(false)
        };
        let objects = manifests(&sharded, None);
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("deployment");
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--shards=12") && args.contains("--shard-namespace=tether-system"));
        assert!(!args.contains("--leader-elect"), "{args}");
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role")
            .expect("the Lease role");
        assert_eq!(
            role["rules"][0]["verbs"],
            json!(["get", "list", "create", "update", "delete"])
        );
        let single = manifests(&options(false), None);
        let deployment = single
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("deployment");
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
        assert!(
            deployment
                .to_string()
                .contains("--leader-elect=tether-system")
        );
    }

    #[test]
    fn a_namespaced_install_has_no_cluster_wide_rights_and_confines_the_agent() {
        let namespaced = InstallOptions {
            namespaced: true,
            ..options(false)
        };
        let objects = manifests(&namespaced, None);
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        assert!(!kinds.iter().any(|k| k.starts_with("Cluster")), "{kinds:?}");
        for role in [
            "Role/tether-agent",
            "RoleBinding/tether-agent",
            "Role/tether-agent-writer",
        ] {
            assert!(kinds.iter().any(|k| k == role), "{role} in {kinds:?}");
        }
        assert!(
            objects
                .iter()
                .filter(|o| o["kind"] != "Namespace")
                .all(|o| o["metadata"]["namespace"] == "tether-system"),
            "every object but the Namespace lives in the agent's namespace"
        );
        let args = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string();
        assert!(args.contains("--namespaced") && args.contains("--namespace=tether-system"));
        assert!(!args.contains("--all-namespaces"), "{args}");
        let cluster = manifests(&options(false), None);
        assert!(
            cluster.iter().any(|o| o["kind"] == "ClusterRole"
                && o["metadata"]["name"] == "tether-agent:tether-system")
        );
    }

    #[test]
    fn an_installed_secret_keeps_its_tokens_and_only_a_missing_one_is_new() {
        use k8s_openapi::ByteString;
        let secret = |keys: &[&str]| k8s_openapi::api::core::v1::Secret {
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(format!("old-{k}").into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        };
        let (all, kept) = Tokens::kept_from(Some(&secret(&[
            "webhook-secret",
            "api-token",
            "readonly-token",
        ])));
        assert_eq!(kept, 3);
        assert_eq!(all.webhook_secret, "old-webhook-secret");
        let (partial, kept) = Tokens::kept_from(Some(&secret(&["webhook-secret"])));
        assert_eq!(kept, 1);
        assert_eq!(partial.webhook_secret, "old-webhook-secret");
        assert_eq!(partial.api_token.len(), 64);
        let (none, kept) = Tokens::kept_from(None);
        assert_eq!(kept, 0);
        assert_eq!(none.readonly_token.len(), 64);
    }

    #[test]
    fn the_secret_is_left_out_without_tokens_and_tokens_differ() {
        assert!(
            !manifests(&options(false), None)
                .iter()
                .any(|o| o["kind"] == "Secret")
        );
        let tokens = Tokens::generate();
        assert_ne!(tokens, Tokens::generate());
        assert_eq!(tokens.api_token.len(), 64);
        let with = manifests(&options(false), Some(&tokens));
        let secret = with.iter().find(|o| o["kind"] == "Secret").expect("secret");
        assert_eq!(secret["stringData"]["api-token"], tokens.api_token.as_str());
        assert_eq!(with[0]["kind"], "Namespace", "the namespace comes first");
    }
}
