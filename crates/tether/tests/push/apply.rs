//! plan and apply against the real local control plane: create, update, no-op with zero
//! writes, removed fields, pruning, ownership, conflicts, CRDs with their resources,
//! pre-flight, Secret redaction, agreement with kubectl's ApplySet, and health waits.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestNamespace, cluster, unique_name};
use tether::apply::{ApplyOptions, ApplyReport, Error as ApplyError, apply};
use tether::cluster::discovery::Resolver;
use tether::health::HealthStatus;
use tether::object::Object;
use tether::plan::{Action, Plan, PlanErrors, PlanOptions, plan};
use tether::render::{RenderOptions, render_plain};
use tether::source::tree::DirTree;

/// Renders `files` (path → YAML) from a temporary folder, as `tether` would.
fn objects(files: &[(&str, String)]) -> Vec<Object> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
    render_plain(
        &DirTree::new(dir.path()).expect("dir"),
        "",
        &RenderOptions::default(),
    )
    .expect("valid manifests")
}

fn cm(name: &str, data: &[(&str, &str)]) -> String {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata: {}\n",
        serde_json::to_string(&data).expect("json")
    )
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  \
         selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    \
         spec:\n      containers:\n      - name: app\n        image: registry.invalid/{name}:1\n"
    )
}

struct Env {
    client: kube::Client,
    resolver: Resolver,
    ns: TestNamespace,
    app: String,
}

impl Env {
    /// The test CRD's Widgets (see `support::TestCrd`) in this namespace.
    fn widgets(&self, group: &str) -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns.name,
            &kube::api::ApiResource {
                group: group.into(),
                version: "v1".into(),
                api_version: format!("{group}/v1"),
                kind: "Widget".into(),
                plural: "widgets".into(),
            },
        )
    }
}

async fn env(prefix: &str) -> Env {
    let cluster = cluster().await;
    let client = cluster.client();
    let resolver = Resolver::new(client.clone()).await.expect("discovery");
    let ns = TestNamespace::create(&client, prefix).await;
    Env {
        client,
        resolver,
        ns,
        app: unique_name(prefix),
    }
}

impl Env {
    fn options(&self) -> PlanOptions {
        PlanOptions::new(self.app.clone(), self.ns.name.clone())
    }

    async fn plan(&self, files: &[(&str, String)]) -> Result<Plan, PlanErrors> {
        plan(
            &self.client,
            &self.resolver,
            objects(files),
            &self.options(),
        )
        .await
    }

    async fn apply_with(
        &self,
        files: &[(&str, String)],
        plan_options: PlanOptions,
        options: ApplyOptions,
    ) -> Result<ApplyReport, ApplyError> {
        let planned = plan(&self.client, &self.resolver, objects(files), &plan_options)
            .await
            .unwrap_or_else(|e| panic!("plan failed: {e}"));
        apply(&self.client, &self.resolver, planned, &options).await
    }

    async fn apply(&self, files: &[(&str, String)]) -> ApplyReport {
        let report = self
            .apply_with(files, self.options(), ApplyOptions::default())
            .await
            .expect("apply succeeds");
        assert!(report.failed().is_empty(), "{:?}", report.failed());
        report
    }

    /// Applies an empty render with --allow-empty: prunes every member of the set.
    async fn prune_all(&self) -> ApplyReport {
        let options = ApplyOptions {
            allow_empty: true,
            ..Default::default()
        };
        self.apply_with(&[], self.options(), options)
            .await
            .expect("prune all")
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
}

fn actions(plan: &Plan) -> Vec<(String, Action)> {
    plan.changes
        .iter()
        .map(|c| (c.key.to_string(), c.action))
        .collect()
}

#[tokio::test]
async fn create_update_noop_and_removed_fields() {
    let env = env("apply-basic").await;
    let v1 = vec![
        (
            "cm.yaml",
            cm("settings", &[("LOG_LEVEL", "info"), ("GREETING", "hi")]),
        ),
        ("deploy.yaml", deployment("web", 2)),
    ];
    let first = env.plan(&v1).await.expect("plan");
    assert_eq!(first.summary().create, 2, "{:?}", actions(&first));
    let report = env.apply(&v1).await;
    assert_eq!(report.writes, 3, "two objects and the ApplySet parent");

    // No-op: zero writes; resourceVersion and managedFields untouched.
    let before = env.configmaps().get("settings").await.expect("exists");
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns.name);
    let deploy_before = deploys.get("web").await.expect("exists");
    let again = env.plan(&v1).await.expect("plan");
    assert!(
        !again.has_changes(),
        "no false drift: {:?}",
        actions(&again)
    );
    let report = env.apply(&v1).await;
    assert_eq!(report.writes, 0);
    let after = env.configmaps().get("settings").await.expect("exists");
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
    assert_eq!(
        before.metadata.managed_fields,
        after.metadata.managed_fields
    );
    let deploy_after = deploys.get("web").await.expect("exists");
    assert_eq!(
        deploy_before.metadata.generation,
        deploy_after.metadata.generation
    );

    // A field removed from Git is removed from the cluster, and the plan says so.
    let v2 = vec![
        ("cm.yaml", cm("settings", &[("GREETING", "hello")])),
        ("deploy.yaml", deployment("web", 3)),
    ];
    let planned = env.plan(&v2).await.expect("plan");
    let change = planned
        .changes
        .iter()
        .find(|c| c.key.name == "settings")
        .expect("planned");
    assert_eq!(change.action, Action::Update);
    assert!(
        change.diff.contains("-  LOG_LEVEL: info"),
        "{}",
        change.diff
    );
    assert!(
        change.diff.contains("+  GREETING: hello"),
        "{}",
        change.diff
    );
    env.apply(&v2).await;
    let data = env
        .configmaps()
        .get("settings")
        .await
        .expect("exists")
        .data
        .expect("data");
    assert_eq!(data.get("LOG_LEVEL"), None);
    assert_eq!(data.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(
        deploys
            .get("web")
            .await
            .expect("exists")
            .spec
            .expect("spec")
            .replicas,
        Some(3)
    );
}

#[tokio::test]
async fn prune_after_a_file_is_deleted_but_never_on_an_empty_render() {
    let env = env("apply-prune").await;
    env.apply(&[("a.yaml", cm("a", &[])), ("b.yaml", cm("b", &[]))])
        .await;

    let planned = env.plan(&[("a.yaml", cm("a", &[]))]).await.expect("plan");
    assert!(
        actions(&planned).contains(&(format!("ConfigMap/b -n {}", env.ns.name), Action::Prune))
    );
    let report = env.apply(&[("a.yaml", cm("a", &[]))]).await;
    assert_eq!(report.pruned, 1);
    assert!(
        env.configmaps().get_opt("b").await.expect("get").is_none(),
        "b is pruned"
    );

    let err = env
        .apply_with(&[], env.options(), ApplyOptions::default())
        .await
        .expect_err("empty render");
    assert!(
        matches!(err, ApplyError::EmptyRender { members: 1 }),
        "{err}"
    );
    assert!(
        env.configmaps().get_opt("a").await.expect("get").is_some(),
        "nothing was pruned"
    );

    let report = env.prune_all().await;
    assert_eq!(report.pruned, 1);
    assert!(env.configmaps().get_opt("a").await.expect("get").is_none());
}

#[tokio::test]
async fn unowned_objects_need_adopt_and_other_apps_objects_are_refused() {
    let env = env("apply-adopt").await;
    let existing: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "handmade"}, "data": {"k": "v"}}))
            .expect("cm");
    env.configmaps()
        .create(&PostParams::default(), &existing)
        .await
        .expect("create");

    let files = vec![("cm.yaml", cm("handmade", &[("k", "v")]))];
    let err = env.plan(&files).await.expect_err("unowned");
    assert!(
        err.to_string()
            .contains("is not managed by tether; delete it, rename it in Git, or take it over with tether apply --adopt"),
        "{err}"
    );

    let mut adopt = env.options();
    adopt.adopt = true;
    env.apply_with(&files, adopt, ApplyOptions::default())
        .await
        .expect("adopted");
    let labels = env
        .configmaps()
        .get("handmade")
        .await
        .expect("exists")
        .metadata
        .labels
        .expect("labels");
    assert!(labels.contains_key("applyset.kubernetes.io/part-of"));

    // Another application may never take it, not even with --adopt.
    let mut other = env.options();
    other.app = format!("{}-other", env.app);
    other.adopt = true;
    let err = plan(&env.client, &env.resolver, objects(&files), &other)
        .await
        .expect_err("owned by another");
    // The error names the owner as a user knows it: its app name and namespace.
    assert!(
        err.to_string().contains(&format!(
            "belongs to the set of `tether apply --app {} -n {}`",
            env.app, env.ns.name
        )),
        "{err}"
    );
}

fn run_kubectl(args: &[&str]) {
    let out = support::kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One rule for push and pull: a field tether applied before and someone changed since
/// (`kubectl patch`, a read-change-replace as `kubectl edit` does, `kubectl scale`, an
/// apply by another manager) is drift, and apply puts Git's value back without
/// `--force-conflicts`.
#[tokio::test]
async fn hand_edits_of_fields_tether_applied_are_drift_and_put_back() {
    let env = env("apply-drift").await;
    let files = vec![
        ("deploy.yaml", deployment("web", 2)),
        (
            "cm.yaml",
            cm("settings", &[("color", "blue"), ("size", "s")]),
        ),
    ];
    env.apply(&files).await;
    let ns = env.ns.name.as_str();
    run_kubectl(&[
        "-n",
        ns,
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"color":"red"}}"#,
    ]);
    let configmaps = env.configmaps();
    let mut live = configmaps.get("settings").await.expect("get");
    live.data
        .as_mut()
        .expect("data")
        .insert("size".into(), "xl".into());
    configmaps
        .replace(
            "settings",
            &PostParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &live,
        )
        .await
        .expect("edit");
    run_kubectl(&["-n", ns, "scale", "deployment", "web", "--replicas=5"]);
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    deploys
        .patch(
            "web",
            &PatchParams::apply("another-tool").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.invalid/other:9"}]}}}})),
        )
        .await
        .expect("another manager's apply");

    let planned = env.plan(&files).await.expect("plan");
    for change in &planned.changes {
        assert_eq!(
            change.action,
            Action::Update,
            "{}: {:?}",
            change.key,
            change.conflicts
        );
        assert!(change.conflicts.is_empty());
    }
    let reclaims = |name: &str| -> String {
        planned
            .changes
            .iter()
            .find(|c| c.key.name == name)
            .expect("planned")
            .reclaims
            .join("\n")
    };
    let settings = reclaims("settings");
    assert!(
        settings.contains(".data.color") && settings.contains("kubectl-patch"),
        "{settings}"
    );
    // Who, how and when, from the live object's managedFields.
    assert!(
        settings.contains(r#"changed by "kubectl-patch" (Update at 20"#),
        "{settings}"
    );
    assert!(
        settings.contains(".data.size") && settings.contains("kubectl-edit"),
        "{settings}"
    );
    let web = reclaims("web");
    assert!(web.contains(".spec.replicas"), "{web}");
    assert!(
        web.contains("image") && web.contains("another-tool"),
        "{web}"
    );
    let diff = &planned
        .changes
        .iter()
        .find(|c| c.key.name == "settings")
        .expect("planned")
        .diff;
    assert!(
        diff.contains("-  color: red") && diff.contains("+  color: blue"),
        "{diff}"
    );
    assert!(
        !diff.contains("applied-fields"),
        "bookkeeping stays out of diffs: {diff}"
    );

    // Without --force-conflicts.
    let report = apply(
        &env.client,
        &env.resolver,
        planned,
        &ApplyOptions::default(),
    )
    .await
    .expect("drift is put back");
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    let data = configmaps
        .get("settings")
        .await
        .expect("get")
        .data
        .expect("data");
    assert_eq!(
        (data["color"].as_str(), data["size"].as_str()),
        ("blue", "s")
    );
    let spec = deploys.get("web").await.expect("get").spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.template.spec.expect("pod").containers[0]
            .image
            .as_deref(),
        Some("registry.invalid/web:1")
    );
    let again = env.plan(&files).await.expect("plan");
    assert!(!again.has_changes(), "in sync after the correction");
}

/// Only a field tether never applied and another manager owns is a conflict: the plan
/// shows both values and the owner, and apply writes nothing unless forced.
#[tokio::test]
async fn a_field_tether_never_applied_is_a_conflict_that_shows_both_values() {
    let env = env("apply-conflict").await;
    let files = vec![("cm.yaml", cm("settings", &[("color", "blue")]))];
    env.apply(&files).await;
    let ns = env.ns.name.as_str();
    run_kubectl(&[
        "-n",
        ns,
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"owner":"theirs"}}"#,
    ]);
    let scale = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"team": "a"}});
    env.configmaps()
        .patch(
            "settings",
            &PatchParams::apply("other-gitops").force(),
            &Patch::Apply(&scale),
        )
        .await
        .expect("another manager");
    // Git now sets both fields.
    let files = vec![(
        "cm.yaml",
        cm(
            "settings",
            &[("color", "blue"), ("owner", "ours"), ("team", "b")],
        ),
    )];
    let planned = env.plan(&files).await.expect("plan");
    let change = &planned.changes[0];
    assert_eq!(change.action, Action::Conflict);
    let conflicts = change.conflicts.join("\n");
    assert!(
        conflicts.contains(".data.owner") && conflicts.contains("kubectl-patch"),
        "{conflicts}"
    );
    assert!(
        conflicts.contains(".data.team") && conflicts.contains("other-gitops"),
        "{conflicts}"
    );
    assert!(
        change.diff.contains("-  owner: theirs") && change.diff.contains("+  owner: ours"),
        "a conflict shows the values: {}",
        change.diff
    );
    let err = apply(
        &env.client,
        &env.resolver,
        planned,
        &ApplyOptions::default(),
    )
    .await
    .expect_err("conflict");
    assert!(err.to_string().contains("--force-conflicts"), "{err}");
    let data = env
        .configmaps()
        .get("settings")
        .await
        .expect("get")
        .data
        .expect("data");
    assert_eq!(data["owner"], "theirs", "nothing written");

    let mut force = env.options();
    force.force_conflicts = true;
    env.apply_with(
        &files,
        force,
        ApplyOptions {
            force_conflicts: true,
            ..Default::default()
        },
    )
    .await
    .expect("forced");
    let data = env
        .configmaps()
        .get("settings")
        .await
        .expect("get")
        .data
        .expect("data");
    assert_eq!(
        (data["owner"].as_str(), data["team"].as_str()),
        ("ours", "b")
    );
}

/// 20 times in a row, each with a new group: discovery can lag behind a fresh CRD's
/// Established condition, and the custom resource must still be applied in the same run.
#[tokio::test]
async fn a_crd_and_its_custom_resources_apply_together() {
    let env = env("apply-crd").await;
    for round in 0..20 {
        apply_a_fresh_crd_with_its_resource(&env, round).await;
    }
}

async fn apply_a_fresh_crd_with_its_resource(env: &Env, round: u32) {
    let group = format!("{}.test.tether.dev", unique_name("g"));
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.{group}\nspec:\n  \
         group: {group}\n  names: {{kind: Gadget, plural: gadgets, singular: gadget}}\n  scope: Namespaced\n  versions:\n  \
         - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        \
         properties:\n          spec: {{type: object, properties: {{size: {{type: integer}}}}}}\n"
    );
    let cr =
        format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: 3\n");
    let files = vec![("crd.yaml", crd), ("gadget.yaml", cr)];
    let planned = env
        .plan(&files)
        .await
        .expect("the CR's kind comes with the set");
    assert_eq!(planned.summary().create, 2, "round {round}");
    env.apply(&files).await;
    let again = env.plan(&files).await.expect("plan");
    assert!(!again.has_changes(), "round {round}: {:?}", actions(&again));
    // Clean up the cluster-scoped CRD (pruning it removes its custom resources too).
    env.prune_all().await;
}

#[tokio::test]
async fn one_invalid_object_among_fifty_means_nothing_is_written() {
    let env = env("apply-preflight").await;
    let mut files: Vec<(String, String)> = (0..49)
        .map(|i| (format!("cm-{i:02}.yaml"), cm(&format!("cm-{i:02}"), &[])))
        .collect();
    files.push((
        "broken.yaml".into(),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  replicas: -1\n  selector: {matchLabels: {a: b}}\n  \
         template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: x}]}\n"
            .into(),
    ));
    files.push((
        "unknown.yaml".into(),
        "apiVersion: nowhere.dev/v1\nkind: Phantom\nmetadata:\n  name: p\n".into(),
    ));
    let refs: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let err = env.plan(&refs).await.expect_err("invalid objects");
    let text = err.to_string();
    assert_eq!(err.0.len(), 2, "{text}");
    assert!(
        text.contains("broken.yaml:1") && text.contains("spec.replicas"),
        "{text}"
    );
    assert!(
        text.contains("unknown.yaml:1") && text.contains("does not serve kind Phantom"),
        "{text}"
    );
    let listed = env
        .configmaps()
        .list(&Default::default())
        .await
        .expect("list");
    assert!(
        listed
            .items
            .iter()
            .all(|c| !c.metadata.name.as_deref().unwrap_or("").starts_with("cm-")),
        "nothing written"
    );
}

#[tokio::test]
async fn secret_changes_show_keys_not_values() {
    let env = env("apply-secret").await;
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {value}\n  user: admin\n"
        )
    };
    env.apply(&[("s.yaml", secret("first-Pa55"))]).await;
    let planned = env
        .plan(&[("s.yaml", secret("second-Pa55"))])
        .await
        .expect("plan");
    let change = &planned.changes[0];
    assert_eq!(change.action, Action::Update);
    for leaked in [
        "first-Pa55",
        "second-Pa55",
        "Zmlyc3Qt",
        "c2Vjb25k",
        "admin",
        "YWRtaW4",
    ] {
        assert!(
            !change.diff.contains(leaked),
            "{leaked} leaked into the diff:\n{}",
            change.diff
        );
    }
    assert!(
        change.diff.contains("password: \"<redacted: new value>\""),
        "{}",
        change.diff
    );
    let stored: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert!(stored.get("db").await.is_ok());
}

#[tokio::test]
async fn tether_and_kubectl_agree_on_the_applyset() {
    let env = env("apply-kubectl").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), cm("a", &[("k", "v")])).expect("write");
    std::fs::write(dir.path().join("web.yaml"), deployment("web", 1)).expect("write");
    // kubectl manages the set first, with the parent tether would use for this app.
    let parent = format!("secret/tether-{}", env.app);
    let out = support::kubectl(&[
        "apply",
        "--server-side",
        "--prune",
        &format!("--applyset={parent}"),
        "-n",
        &env.ns.name,
        "-f",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let kubectl_parent = secrets
        .get(&format!("tether-{}", env.app))
        .await
        .expect("kubectl made the parent");
    let kubectl_labels = kubectl_parent.metadata.labels.clone().expect("labels");
    let kubectl_kinds = kubectl_parent
        .metadata
        .annotations
        .clone()
        .expect("annotations")["applyset.kubernetes.io/contains-group-kinds"]
        .clone();

    // Same id: tether sees kubectl's members as its own, with nothing to change.
    let planned = env
        .plan(&[
            ("a.yaml", cm("a", &[("k", "v")])),
            ("web.yaml", deployment("web", 1)),
        ])
        .await;
    let err = planned.expect_err("the parent is kubectl's");
    assert!(err.to_string().contains("managed by \"kubectl/"), "{err}");
    secrets
        .delete(&format!("tether-{}", env.app), &Default::default())
        .await
        .expect("hand over");
    let planned = env
        .plan(&[
            ("a.yaml", cm("a", &[("k", "v")])),
            ("web.yaml", deployment("web", 1)),
        ])
        .await
        .expect("members carry tether's id already");
    assert_eq!(
        kubectl_labels["applyset.kubernetes.io/id"],
        planned.applyset.id
    );
    assert_eq!(planned.summary().create, 0, "{:?}", actions(&planned));
    env.apply(&[
        ("a.yaml", cm("a", &[("k", "v")])),
        ("web.yaml", deployment("web", 1)),
    ])
    .await;
    let tether_parent = secrets
        .get(&format!("tether-{}", env.app))
        .await
        .expect("tether's parent");
    assert_eq!(
        tether_parent.metadata.annotations.expect("annotations")["applyset.kubernetes.io/contains-group-kinds"],
        kubectl_kinds
    );
    // kubectl lists the same members by the ApplySet label.
    let out = support::kubectl(&[
        "get",
        "configmaps,deployments",
        "-n",
        &env.ns.name,
        "-l",
        &format!("applyset.kubernetes.io/part-of={}", planned.applyset.id),
        "-o",
        "name",
    ]);
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(names, ["configmap/a", "deployment.apps/web"]);
}

#[tokio::test]
async fn a_deployment_becomes_healthy_with_wait() {
    let env = env("apply-wait").await;
    let report = env
        .apply_with(
            &[("deploy.yaml", deployment("web", 2))],
            env.options(),
            ApplyOptions {
                wait: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await
        .expect("apply");
    assert_eq!(report.unhealthy, None);
    let web = report
        .results
        .iter()
        .find(|r| r.key.name == "web")
        .expect("result");
    let health = web.health.as_ref().expect("assessed");
    assert_eq!(health.status, HealthStatus::Healthy);
    assert_eq!(health.message, "2/2 replicas available");
}

#[tokio::test]
async fn fields_from_kubectl_client_side_apply_are_taken_over_and_removed() {
    let env = env("apply-csa").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cm.yaml");
    std::fs::write(&file, cm("legacy", &[("a", "1"), ("b", "2")])).expect("write");
    // Applied the old way, client-side.
    let out = support::kubectl(&[
        "apply",
        "-n",
        &env.ns.name,
        "-f",
        file.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Git drops key b. tether adopts the object, takes over kubectl's fields, removes b.
    let files = vec![("cm.yaml", cm("legacy", &[("a", "1")]))];
    let mut adopt = env.options();
    adopt.adopt = true;
    let planned = plan(&env.client, &env.resolver, objects(&files), &adopt)
        .await
        .expect("plan");
    assert_eq!(
        planned.changes[0].takes_over_from,
        ["kubectl-client-side-apply"]
    );
    env.apply_with(&files, adopt.clone(), ApplyOptions::default())
        .await
        .expect("apply");
    let live = env.configmaps().get("legacy").await.expect("exists");
    let data = live.data.expect("data");
    assert_eq!(data.get("b"), None, "the field removed from Git is gone");
    assert_eq!(data.get("a").map(String::as_str), Some("1"));
    let annotations = live.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let again = plan(&env.client, &env.resolver, objects(&files), &adopt)
        .await
        .expect("plan");
    assert!(!again.has_changes(), "{:?}", actions(&again));
}

#[tokio::test]
async fn admission_policies_are_enforced_by_the_dry_run() {
    let env = env("apply-policy").await;
    let policy = support::ConfigMapPolicy::create(
        &env.client,
        &env.ns.name,
        "!has(object.data) || !('forbidden' in object.data)",
        "ConfigMaps may not carry a key named forbidden",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {"forbidden": "x"}}),
    )
    .await;
    let files = vec![("bad.yaml", cm("settings", &[("forbidden", "x")]))];
    let last = env.plan(&files).await.expect_err("refused").to_string();
    assert!(last.contains("bad.yaml:1"), "{last}");
    assert!(
        last.contains("ConfigMaps may not carry a key named forbidden"),
        "{last}"
    );
    assert!(last.contains(&policy.name), "names the policy: {last}");
    env.plan(&[("ok.yaml", cm("settings", &[("fine", "x")]))])
        .await
        .expect("allowed");
}

#[tokio::test]
async fn a_kind_installed_after_discovery_is_found_by_looking_again() {
    let env = env("apply-rediscover").await;
    let group = format!("{}.test.tether.dev", unique_name("late"));
    // Created (and served) after the resolver's discovery ran.
    let _crd = support::TestCrd::create(&env.client, &group, "Widget", "widgets").await;
    let widget =
        format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\nspec: {{size: 1}}\n");
    let planned = env
        .plan(&[("w.yaml", widget)])
        .await
        .expect("found after a second discovery");
    assert_eq!(planned.summary().create, 1);
}

/// Renders with the real kustomize and helm that testenv built.
fn rendered(
    files: &[(&str, String)],
    path: &str,
    configure: impl FnOnce(&mut RenderOptions),
) -> Vec<Object> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, text) in files {
        let full = dir.path().join(file);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
    let mut options = RenderOptions {
        kustomize_bin: Some(support::tool("kustomize")),
        helm_bin: Some(support::tool("helm")),
        ..Default::default()
    };
    configure(&mut options);
    tether::render::render(&DirTree::new(dir.path()).expect("dir"), path, &options)
        .expect("renders")
}

#[tokio::test]
async fn kustomize_and_helm_output_applies_without_false_drift() {
    let env = env("apply-tools").await;
    let overlay = vec![
        ("base/kustomization.yaml", "resources: [deploy.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [LEVEL=info]\n".to_string()),
        ("base/deploy.yaml", deployment("web", 1)),
        ("prod/kustomization.yaml", "resources: [../base]\nnamePrefix: prod-\ncommonLabels: {tier: web}\n".to_string()),
    ];
    let chart = vec![
        ("chart/Chart.yaml", "apiVersion: v2\nname: cache\nversion: 0.3.0\n".to_string()),
        (
            "chart/templates/svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}-cache\n  labels:\n    helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}\n    \
             app.kubernetes.io/managed-by: {{ .Release.Service }}\nspec:\n  ports: [{port: 6379}]\n"
                .to_string(),
        ),
    ];
    let namespace = env.ns.name.clone();
    let app = env.app.clone();
    let mut objects = rendered(&overlay, "prod", |_| {});
    objects.extend(rendered(&chart, "chart", |o| {
        o.namespace = namespace.clone();
        o.app = app.clone();
    }));
    let planned = plan(&env.client, &env.resolver, objects.clone(), &env.options())
        .await
        .expect("plan");
    assert_eq!(planned.summary().create, 3, "{:?}", actions(&planned));
    let report = apply(
        &env.client,
        &env.resolver,
        planned,
        &ApplyOptions::default(),
    )
    .await
    .expect("apply");
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    let again = plan(&env.client, &env.resolver, objects, &env.options())
        .await
        .expect("plan");
    assert!(
        !again.has_changes(),
        "no drift from hash suffixes or chart labels: {:?}",
        actions(&again)
    );
}

/// The server-side dry-runs (APPLY with dryRun) the API server counted for one resource.
fn dry_runs_of(group: &str, resource: &str) -> u64 {
    requests_of(group, resource, "APPLY", "All")
}

/// The API server's count of `verb` requests for one resource (`dry_run`: "All" or "").
fn requests_of(group: &str, resource: &str, verb: &str, dry_run: &str) -> u64 {
    let out = support::kubectl(&["get", "--raw", "/metrics"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains(&format!("group=\"{group}\""))
                && l.contains(&format!("resource=\"{resource}\""))
                && l.contains(&format!("verb=\"{verb}\""))
                && l.contains(&format!("dry_run=\"{dry_run}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A first apply of many objects of one kind learns which exist from one metadata-only
/// LIST, not one GET each; an object that exists and is not a member is still read, refused
/// without --adopt, and adopted with it.
#[tokio::test]
async fn a_first_apply_of_many_objects_reads_only_the_ones_that_exist() {
    let client = cluster().await.client();
    let group = format!("{}.test.tether.dev", unique_name("first"));
    let _crd = support::TestCrd::create(&client, &group, "Widget", "widgets").await;
    let env = env("apply-first").await;
    let widget = |i: u32| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w-{i:02}\nspec:\n  size: {i}\n"
        )
    };
    let files: Vec<(String, String)> = (0..12)
        .map(|i| (format!("w-{i:02}.yaml"), widget(i)))
        .collect();
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let widgets = env.widgets(&group);
    // One of them was made by hand, with Git's value (another value would be a conflict).
    let handmade: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "w-07"}, "spec": {"size": 7}
    }))
    .expect("widget");
    widgets
        .create(&PostParams::default(), &handmade)
        .await
        .expect("made by hand");

    let gets = requests_of(&group, "widgets", "GET", "");
    let err = env.plan(&files).await.expect_err("w-07 is not tether's");
    let message = err.to_string();
    assert!(
        message.contains("w-07") && message.contains("take it over with tether apply --adopt"),
        "{message}"
    );
    assert_eq!(
        message.matches("tether apply --adopt").count(),
        1,
        "{message}"
    );
    assert_eq!(
        requests_of(&group, "widgets", "GET", "") - gets,
        1,
        "only the object that exists is read alone"
    );

    let mut adopt = env.options();
    adopt.adopt = true;
    let gets = requests_of(&group, "widgets", "GET", "");
    let planned = plan(&env.client, &env.resolver, objects(&files), &adopt)
        .await
        .expect("plan with --adopt");
    // w-07 alone, twice: its dry-run differs from what was read (the labels), so the plan
    // reads it again before calling that a change (a controller may have written it).
    assert_eq!(requests_of(&group, "widgets", "GET", "") - gets, 2);
    let updated: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.action == Action::Update)
        .map(|c| c.key.name.as_str())
        .collect();
    assert_eq!(updated, ["w-07"], "{:?}", actions(&planned));
    assert_eq!(
        planned
            .changes
            .iter()
            .filter(|c| c.action == Action::Create)
            .count(),
        11
    );
    let report = apply(
        &env.client,
        &env.resolver,
        planned,
        &ApplyOptions::default(),
    )
    .await
    .expect("apply");
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    let live = widgets.list(&Default::default()).await.expect("list");
    assert_eq!(live.items.len(), 12);
    assert!(live.items.iter().all(|w| {
        use kube::ResourceExt;
        w.labels().contains_key(tether::inventory::PART_OF_LABEL)
    }));

    // In a namespace shared with many more objects of the kind (other applications'), the
    // listing would cost more than it saves: each new object is read alone instead.
    for i in 0..60 {
        let other: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{group}/v1"), "kind": "Widget",
            "metadata": {"name": format!("other-{i:02}")}, "spec": {"size": i}
        }))
        .expect("widget");
        widgets
            .create(&PostParams::default(), &other)
            .await
            .expect("another's widget");
    }
    let more: Vec<(String, String)> = (20..26)
        .map(|i| (format!("w-{i:02}.yaml"), widget(i)))
        .collect();
    let more: Vec<(&str, String)> = more.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let mut shared = env.options();
    shared.app = format!("{}-more", env.app);
    let gets = requests_of(&group, "widgets", "GET", "");
    let planned = plan(&env.client, &env.resolver, objects(&more), &shared)
        .await
        .expect("plan in a shared namespace");
    assert_eq!(
        requests_of(&group, "widgets", "GET", "") - gets,
        6,
        "one GET each"
    );
    assert!(
        planned.changes.iter().all(|c| c.action == Action::Create),
        "{:?}",
        actions(&planned)
    );
}

/// A no-op plan makes no dry-run for members that already hold what tether would write, and
/// that shortcut never hides a change: another manager's edit, a field removed from Git, a
/// quantity the server stores in another form (no false drift either: the dry-run decides).
#[tokio::test]
async fn a_no_op_plan_makes_no_dry_runs_and_never_hides_a_change() {
    let client = cluster().await.client();
    let group = format!("{}.test.tether.dev", unique_name("noop"));
    let _crd = support::TestCrd::create(&client, &group, "Widget", "widgets").await;
    let env = env("apply-noop").await;
    let widget = |i: u32, label: bool| {
        let labels = if label { "\n  labels: {tier: web}" } else { "" };
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w-{i:02}{labels}\nspec:\n  size: 1\n  parts: [a, b]\n"
        )
    };
    let files = |removed_label: Option<u32>| {
        let mut files: Vec<(String, String)> = (0..20)
            .map(|i| {
                (
                    format!("w-{i:02}.yaml"),
                    widget(i, removed_label != Some(i)),
                )
            })
            .collect();
        files.push(("deploy.yaml".into(), deployment("web", 1)));
        files.push((
            "quantity.yaml".into(),
            deployment("sized", 1).replace(
                "image: registry.invalid/sized:1\n",
                "image: registry.invalid/sized:1\n        resources: {limits: {cpu: \"0.5\"}}\n",
            ),
        ));
        files
    };
    fn borrowed(files: &[(String, String)]) -> Vec<(&str, String)> {
        files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
    }
    let all = files(None);
    env.apply(&borrowed(&all)).await;

    // Nothing changed: no widget is dry-run, and nothing is reported changed, not even the
    // quantity the server stores as 500m (that one is dry-run: its form differs).
    let before = dry_runs_of(&group, "widgets");
    let again = env.plan(&borrowed(&all)).await.expect("plan");
    assert!(!again.has_changes(), "{:?}", actions(&again));
    assert_eq!(
        dry_runs_of(&group, "widgets") - before,
        0,
        "dry-runs of unchanged widgets"
    );
    // What is kept of an unchanged widget: its state without managedFields, for health and
    // the UI; or, when the caller shows no state (plan, apply), its identity alone.
    let kept = |plan: &tether::plan::Plan| {
        plan.changes
            .iter()
            .find(|c| c.key.name == "w-01")
            .and_then(|c| c.live.clone())
            .expect("w-01's live state")
    };
    let whole = kept(&again);
    assert_eq!(whole["spec"]["size"], 1, "{whole}");
    assert!(whole["metadata"]["resourceVersion"].is_string(), "{whole}");
    assert!(whole["metadata"].get("managedFields").is_none(), "{whole}");
    let mut identity_only = env.options();
    identity_only.keep_unchanged_live = false;
    let slim = plan(
        &env.client,
        &env.resolver,
        objects(&borrowed(&all)),
        &identity_only,
    )
    .await
    .expect("plan");
    assert!(!slim.has_changes(), "{:?}", actions(&slim));
    let slim = kept(&slim);
    assert_eq!(
        slim["metadata"]["resourceVersion"],
        whole["metadata"]["resourceVersion"]
    );
    assert_eq!(slim["metadata"]["name"], "w-01");
    assert!(slim.get("spec").is_none(), "{slim}");

    // Another manager changes one widget: only that one is dry-run, and it is shown.
    let widgets = env.widgets(&group);
    widgets
        .patch(
            "w-03",
            &PatchParams {
                field_manager: Some("someone-else".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("another manager's edit");
    let before = dry_runs_of(&group, "widgets");
    let planned = env.plan(&borrowed(&all)).await.expect("plan");
    let changed: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| c.key.name.clone())
        .collect();
    assert_eq!(changed, ["w-03"], "{:?}", actions(&planned));
    // Its field is now someone else's: a dry-run meets the conflict, a forced one shows the
    // value (two requests, for that object alone).
    let made = dry_runs_of(&group, "widgets") - before;
    assert!(
        (1..=2).contains(&made),
        "{made} dry-runs for one edited widget"
    );

    // A label removed from Git (the record differs): shown as an update.
    let fewer = files(Some(5));
    let planned = env.plan(&borrowed(&fewer)).await.expect("plan");
    let change = planned
        .changes
        .iter()
        .find(|c| c.key.name == "w-05")
        .expect("planned");
    assert_eq!(change.action, Action::Update, "{}", change.diff);
    assert!(change.diff.contains("-    tier: web"), "{}", change.diff);
}
