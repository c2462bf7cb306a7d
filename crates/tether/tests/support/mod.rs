//! Shared helpers for tests that need the real local control plane (testenv).
//!
//! Cluster tests read the kubeconfig from `TETHER_TEST_KUBECONFIG`, never from `KUBECONFIG`,
//! so a developer's own cluster is never touched by accident. `make test` sets it; by hand:
//! `make cluster-up && TETHER_TEST_KUBECONFIG=$(python3 testenv/testenv.py env | cut -d= -f2) cargo test`.

#![allow(dead_code)] // each test binary uses a different subset

pub mod agent;
pub mod audit;
pub mod fixtures;
pub mod git;
pub mod gitea;
pub mod registry;
pub mod sops;
pub mod toxiproxy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use tether::cluster::{Cluster, ClusterOptions};

pub const KUBECONFIG_VAR: &str = "TETHER_TEST_KUBECONFIG";

/// The kubeconfig of the test cluster. Fails the test (not skips it) when none is set:
/// a cluster test that silently passes without a cluster proves nothing.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os(KUBECONFIG_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "{KUBECONFIG_VAR} is not set: cluster tests need the local control plane. \
             Run `make test`, or `make cluster-up` and export {KUBECONFIG_VAR} to the \
             path that `make -s cluster-env` prints."
        ),
    }
}

pub async fn cluster() -> Cluster {
    Cluster::connect(&ClusterOptions::default().kubeconfig(kubeconfig()))
        .await
        .expect("the test kubeconfig is valid")
}

/// A port on loopback that nothing listens on right now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback is available")
        .port()
}

/// Waits until something listens on `port`; fails the test if `child` exits first or
/// nothing listens within 15 s.
pub fn wait_for_port(port: u16, what: &str, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on port {port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{what} did not listen on port {port} within 15 s");
}

/// A name no other test (or earlier run) uses: `prefix-<pid>-<time>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock is after 1970")
        .as_millis()
        % 100_000_000;
    format!(
        "{prefix}-{}-{millis}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh namespace for one test, deleted when dropped (also when the test panics).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn create(client: &kube::Client, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"tether.dev/test": "true"}}
        }))
        .expect("static namespace manifest");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("cannot create test namespace {name}: {err}"));
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup(
            &format!("test namespace {name}"),
            move |client| async move {
                release_applications(&client, &name).await;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            },
        );
    }
}

/// Takes tether's finalizer off the namespace's Applications: the test's agent is gone, and
/// the namespace could not be deleted while they wait for one.
async fn release_applications(client: &kube::Client, namespace: &str) {
    use kube::ResourceExt;
    let apps: Api<tether::application::Application> = Api::namespaced(client.clone(), namespace);
    let Ok(listed) = apps.list(&Default::default()).await else {
        return;
    };
    for app in listed.items.iter().filter(|a| !a.finalizers().is_empty()) {
        let patch = serde_json::json!({"metadata": {"finalizers": []}});
        let _ = apps
            .patch(
                &app.name_any(),
                &Default::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
    }
}

/// Runs a clean-up action from `Drop`, which cannot await: on another thread, in a
/// short-lived runtime, with a client of its own (the test's client belongs to the test's
/// runtime, which is blocked while this runs). A failure is a warning, not a panic.
pub fn cleanup<F, Fut>(what: &str, action: F)
where
    F: FnOnce(kube::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime can be built");
        runtime.block_on(async move { action(cluster().await.client()).await })
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!("warning: could not delete {what}: {err}"),
        Err(_) => eprintln!("warning: clean-up of {what} panicked"),
    }
}

/// A program testenv built (kubectl, helm, kustomize): `$TETHER_TEST_<NAME>` when set
/// (make test sets them), else asked from testenv (which builds it when missing).
pub fn tool(name: &str) -> PathBuf {
    let var = format!(
        "TETHER_TEST_{}",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Some(path) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let testenv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testenv/testenv.py");
    let out = std::process::Command::new("python3")
        .args([testenv, "bin", name])
        .output()
        .expect("python3 runs testenv.py");
    assert!(
        out.status.success(),
        "testenv bin {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The `tether` binary of this build, with `KUBECONFIG` and `RUST_LOG` removed from its
/// environment and pointed at no cluster (for commands that need none, or a test's own).
pub fn tether_bin() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
    command.env_remove("KUBECONFIG").env_remove("RUST_LOG");
    command
}

/// [`tether_bin`] pointed at the test cluster (`--kubeconfig`).
pub fn tether_command() -> std::process::Command {
    let mut command = tether_bin();
    command.arg("--kubeconfig").arg(kubeconfig());
    command
}

/// Runs `tether args…` against the test cluster and returns what it printed.
pub fn tether(args: &[&str]) -> std::process::Output {
    tether_command()
        .args(args)
        .output()
        .expect("the tether binary runs")
}

/// Runs `tether args…` pointed at no cluster ([`tether_bin`]) and returns what it printed.
pub fn tether_offline(args: &[&str]) -> std::process::Output {
    tether_bin()
        .args(args)
        .output()
        .expect("the tether binary runs")
}

/// What a program printed: its stdout, then its stderr.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the kubectl that testenv built (same version as the server) against the test
/// cluster, with kubectl's ApplySet support switched on.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let binary = tool("kubectl");
    std::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .env("KUBECTL_APPLYSET", "true")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
}

/// A ValidatingAdmissionPolicy (and its binding) that refuses to create or update
/// ConfigMaps in one namespace unless `expression` holds. `create` returns once the API
/// server enforces it (a dry-run create of `probe` is refused); dropping it removes it,
/// also when the test fails.
pub struct ConfigMapPolicy {
    pub name: String,
}

impl ConfigMapPolicy {
    pub async fn create(
        client: &kube::Client,
        namespace: &str,
        expression: &str,
        message: &str,
        probe: serde_json::Value,
    ) -> Self {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        use k8s_openapi::api::core::v1::ConfigMap;
        let name = unique_name("configmap-policy");
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]},
                "validations": [{"expression": expression, "message": message}]
            }
        }))
        .expect("policy");
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}
        }))
        .expect("binding");
        Api::<ValidatingAdmissionPolicy>::all(client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("policy created");
        let this = Self { name };
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("binding created");
        // The API server takes up a new policy within a few seconds.
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let probe: ConfigMap = serde_json::from_value(probe).expect("a ConfigMap");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while configmaps.create(&dry_run, &probe).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "policy {} not in force within 30 s",
                this.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        this
    }
}

impl Drop for ConfigMapPolicy {
    fn drop(&mut self) {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let name = self.name.clone();
        cleanup(&format!("policy {name}"), move |client| async move {
            let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                .delete(&name, &Default::default())
                .await;
            Api::<ValidatingAdmissionPolicy>::all(client)
                .delete(&name, &Default::default())
                .await
                .map(|_| ())
        });
    }
}

/// A namespaced CRD of a test's own (any fields allowed), served when `create` returns,
/// deleted when dropped (also when the test fails).
pub struct TestCrd {
    pub name: String,
}

impl TestCrd {
    pub async fn create(client: &kube::Client, group: &str, kind: &str, plural: &str) -> Self {
        Self::create_with(client, group, kind, plural, false).await
    }

    /// As [`Self::create`], with a status subresource (as operators' kinds have) when
    /// `status` is set.
    pub async fn create_with(
        client: &kube::Client,
        group: &str,
        kind: &str,
        plural: &str,
        status: bool,
    ) -> Self {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let name = format!("{plural}.{group}");
        let mut version = serde_json::json!({"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
        if status {
            version["subresources"] = serde_json::json!({"status": {}});
        }
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.to_ascii_lowercase()},
                     "versions": [version]}
        }))
        .expect("crd");
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
        let this = Self { name };
        let resource = kube::api::ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: kind.into(),
            plural: plural.into(),
        };
        let objects: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while objects.list(&Default::default()).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} is not served within 30 s",
                this.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        this
    }
}

impl Drop for TestCrd {
    fn drop(&mut self) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let name = self.name.clone();
        cleanup(&format!("CRD {name}"), move |client| async move {
            Api::<CustomResourceDefinition>::all(client)
                .delete(&name, &Default::default())
                .await
                .map(|_| ())
        });
    }
}

/// A label on one kwok node, so that Pods selecting it can run there (and, removed, no
/// longer can): removed when dropped, also when the test fails.
pub struct NodeLabel {
    node: String,
    label: String,
}

impl NodeLabel {
    /// A label of a test's own on the first kwok node, not set yet.
    pub fn new() -> Self {
        let out = kubectl(&[
            "get",
            "nodes",
            "-l",
            "type=kwok",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        Self {
            node: String::from_utf8(out.stdout).expect("utf-8"),
            label: format!("tether.dev/{}", unique_name("runs")),
        }
    }

    pub fn key(&self) -> &str {
        &self.label
    }

    /// Sets (`yes`) or removes the label.
    pub fn set(&self, on: bool) {
        let arg = if on {
            format!("{}=yes", self.label)
        } else {
            format!("{}-", self.label)
        };
        let out = kubectl(&["label", "node", &self.node, &arg, "--overwrite"]);
        assert!(out.status.success(), "{out:?}");
    }

    /// A Deployment `web` of one replica whose Pod runs only where this label is set.
    pub fn deployment(&self) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      nodeSelector: {{\"{}\": \"yes\"}}\n      tolerations: [{{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}]\n      containers: [{{name: web, image: registry.invalid/web:1}}]\n",
            self.label
        )
    }
}

impl Drop for NodeLabel {
    fn drop(&mut self) {
        let _ = kubectl(&["label", "node", &self.node, &format!("{}-", self.label)]);
    }
}

/// A child started in a process group of its own (`CommandExt::process_group(0)`), killed
/// with every process it started when dropped: a server a test starts (and whatever that
/// server forks, such as `git daemon`'s `git-daemon` or chromedriver's chromium) never
/// outlives the test, also when the test fails or panics.
pub struct ProcessGroup {
    child: std::process::Child,
}

impl ProcessGroup {
    pub fn new(child: std::process::Child) -> Self {
        Self { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let killed = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !killed {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Kills process `0` when dropped (if it still runs): for a child a test signals and waits
/// for itself, so that a failed assertion does not leave it running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A control plane of this test's own (etcd + API server, started by testenv in a temporary
/// folder), so that restarting its parts disturbs no other test; stopped when dropped.
pub struct OwnControlPlane {
    pub dir: tempfile::TempDir,
}

impl OwnControlPlane {
    pub fn testenv(dir: &Path, args: &[&str]) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testenv/testenv.py");
        std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .env("TETHER_TESTENV_DIR", dir)
            .output()
            .expect("python3 runs testenv.py")
    }

    pub fn up() -> Self {
        let dir = tempfile::tempdir().expect("temp");
        let out = Self::testenv(dir.path(), &["up", "--profile", "minimal"]);
        assert!(
            out.status.success(),
            "testenv up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A client of this control plane, once tether's CRDs are installed and namespace `ns`
    /// is created.
    pub async fn client_with_namespace(&self, ns: &str) -> kube::Client {
        let options = tether::cluster::ClusterOptions::default().kubeconfig(self.kubeconfig());
        let client = tether::cluster::Cluster::connect(&options)
            .await
            .expect("the own control plane")
            .client();
        tether::agent::install_crd(&client)
            .await
            .expect("CRD installed");
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
                .expect("namespace");
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&kube::api::PostParams::default(), &namespace)
            .await
            .expect("namespace created");
        client
    }

    /// Stops `component`, waits `down_for`, starts it again (keeping the data); blocking.
    pub fn restart(dir: &Path, component: &str, down_for: Duration) {
        let out = Self::testenv(
            dir,
            &[
                "restart",
                component,
                "--down-for",
                &down_for.as_secs_f64().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "testenv restart {component}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = Self::testenv(self.dir.path(), &["down", "--quiet"]);
    }
}
