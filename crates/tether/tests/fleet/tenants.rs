//! Tenants: an Application that names `spec.serviceAccountName` acts only with that
//! account's rights (the agent impersonates it), against the real API server's RBAC.
//! A tenant allowed to write its own namespace tries to create a ClusterRole and an object
//! in another tenant's namespace: refused, reported, nothing written. Another tenant's
//! objects are never adopted or pruned. With `--require-service-account`, an Application
//! that names no account is refused before anything is fetched.

use crate::support;
use support::fixtures::configmap_in;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{
    applied, create_application, fails_with, options_for, ready, request_sync, start_agent, until,
};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster, unique_name};
use tether::agent::{AgentOptions, Application, install_crd};
use tether::inventory::{ApplySet, PART_OF_LABEL};

/// ServiceAccount `deployer` in `ns`, allowed everything on ConfigMaps and Secrets (the
/// ApplySet parent is a Secret) in `ns` only.
async fn tenant_account(client: &kube::Client, ns: &str) {
    let post = PostParams::default();
    let create = |kind: &str, body: serde_json::Value| {
        let client = client.clone();
        let kind = kind.to_string();
        let post = post.clone();
        async move {
            let (group, version, plural) = match kind.as_str() {
                "ServiceAccount" => ("", "v1", "serviceaccounts"),
                "Role" => ("rbac.authorization.k8s.io", "v1", "roles"),
                _ => ("rbac.authorization.k8s.io", "v1", "rolebindings"),
            };
            let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
            let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: Api<kube::api::DynamicObject> =
                Api::namespaced_with(client, ns_of(&body), &resource);
            let object: kube::api::DynamicObject = serde_json::from_value(body).expect("an object");
            api.create(&post, &object).await.expect("created");
        }
    };
    create(
        "ServiceAccount",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "deployer", "namespace": ns}}),
    )
    .await;
    create(
        "Role",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "deployer", "namespace": ns},
               "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["*"]}]}),
    )
    .await;
    create(
        "RoleBinding",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "deployer", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
               "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}]}),
    )
    .await;
}

fn ns_of(body: &serde_json::Value) -> &str {
    body["metadata"]["namespace"].as_str().expect("namespaced")
}

#[tokio::test]
async fn a_tenant_writes_only_where_its_service_account_may() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let tenant = TestNamespace::create(&client, "tenant-a").await;
    let other = TestNamespace::create(&client, "tenant-b").await;
    tenant_account(&client, &tenant.name).await;
    let other_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &other.name);
    let theirs: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "theirs"}, "data": {"color": "blue"}}))
            .expect("cm");
    let theirs = other_cms
        .create(&PostParams::default(), &theirs)
        .await
        .expect("the other tenant's object");
    let escape = unique_name("escape");

    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/mine.yaml", &configmap_in("mine", None, "blue"));
    repo.write(
        "app/escape.yaml",
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {escape}\nrules: []\n"
        ),
    );
    // The other tenant's object, by name: an adoption attempt.
    repo.write(
        "app/theirs.yaml",
        &configmap_in("theirs", Some(&other.name), "red"),
    );
    let bad = repo.commit("reach out");
    let daemon = GitDaemon::start(&root);

    let agent = start_agent(
        &client,
        AgentOptions {
            require_service_account: true,
            ..options_for(&tenant, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &tenant.name);
    create_application(
        &apps,
        "tenant",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": tenant.name},
            "serviceAccountName": "deployer",
            "syncPolicy": {"interval": "1h", "retry": {"limit": 1}}
        }),
    )
    .await;
    let app = until(&apps, "tenant", "the refusal reported", |a| {
        ready(a).is_some_and(|(status, _)| status == "False")
    })
    .await;
    let message = ready(&app).expect("Ready").1;
    eprintln!("the tenant's reach refused: {message}");
    let account = format!("system:serviceaccount:{}:deployer", tenant.name);
    for says in [account.as_str(), "clusterroles", &other.name] {
        assert!(message.contains(says), "{says:?} not in: {message}");
    }
    assert_eq!(
        app.status
            .as_ref()
            .and_then(|s| s.last_attempted_revision.as_deref()),
        Some(bad.as_str())
    );
    // Nothing written: not even the object the account may write.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant.name);
    assert!(cms.get_opt("mine").await.expect("get").is_none());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(roles.get_opt(&escape).await.expect("get").is_none());
    let now = other_cms.get("theirs").await.expect("theirs");
    assert_eq!(now.resource_version(), theirs.resource_version());
    assert!(!now.labels().contains_key(PART_OF_LABEL), "never adopted");

    // Within its own namespace, it syncs.
    repo.remove("app/escape.yaml");
    repo.remove("app/theirs.yaml");
    let good = repo.commit("stay home");
    request_sync(&apps, "tenant").await;
    until(&apps, "tenant", "the tenant's own objects synced", |a| {
        applied(a) == Some(good.as_str())
    })
    .await;
    let mine = cms.get("mine").await.expect("mine");
    let id = ApplySet::new("tenant", &tenant.name).id;
    assert_eq!(mine.labels().get(PART_OF_LABEL), Some(&id));

    // The other tenant's object carries this set's label (forged, or copied by hand): a
    // prune of this set still never reaches it.
    other_cms
        .patch(
            "theirs",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {PART_OF_LABEL: id}}})),
        )
        .await
        .expect("label");
    repo.remove("app/mine.yaml");
    repo.write("app/other.yaml", &configmap_in("other", None, "blue"));
    let pruning = repo.commit("prune mine");
    request_sync(&apps, "tenant").await;
    until(&apps, "tenant", "the prune", |a| {
        applied(a) == Some(pruning.as_str())
    })
    .await;
    assert!(cms.get_opt("mine").await.expect("get").is_none(), "pruned");
    assert!(
        other_cms.get_opt("theirs").await.expect("get").is_some(),
        "another tenant's object was pruned"
    );

    // An Application that names no account is refused by this agent, before any fetch.
    create_application(
        &apps,
        "no-account",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": tenant.name},
            "syncPolicy": {"interval": "1h", "retry": {"limit": 1}}
        }),
    )
    .await;
    let refused = until(&apps, "no-account", "the missing account reported", |a| {
        ready(a).is_some_and(|(status, _)| status == "False")
    })
    .await;
    let message = ready(&refused).expect("Ready").1;
    assert!(
        message.contains("spec.serviceAccountName is required")
            && message.contains("--require-service-account"),
        "{message}"
    );
    assert_eq!(
        refused
            .status
            .as_ref()
            .and_then(|s| s.last_attempted_revision.as_deref()),
        None,
        "nothing was fetched"
    );
    let _ = agent.stop().await;
}

/// The cluster-scoped rights `tether install` made for the agent of namespace `.0`, deleted
/// when dropped.
struct InstalledRbac(String);

impl Drop for InstalledRbac {
    fn drop(&mut self) {
        let _ = support::kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            &format!("tether-agent:{}", self.0),
            "--ignore-not-found",
        ]);
    }
}

/// A client of the test cluster that authenticates as ServiceAccount `namespace/account`,
/// with a token of its own (as in a Pod).
async fn account_client(account: &str, namespace: &str, dir: &std::path::Path) -> kube::Client {
    let token = support::kubectl(&["create", "token", account, "-n", namespace]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(support::kubeconfig()).expect("kubeconfig"))
            .expect("testenv writes JSON");
    config["users"][0]["user"] = json!({"token": String::from_utf8_lossy(&token.stdout).trim()});
    let kubeconfig = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&kubeconfig, config.to_string()).expect("write");
    tether::cluster::Cluster::connect(
        &tether::cluster::ClusterOptions::default().kubeconfig(&kubeconfig),
    )
    .await
    .expect("the account's kubeconfig")
    .client()
}

/// Runs `tether install ARGS --replicas 0 --timeout 0 -n NAMESPACE` (the rights without the
/// Deployment: the agent runs here, with a token of the installed ServiceAccount).
fn install_rights(namespace: &str, args: &[&str]) {
    let out = support::tether_command()
        .arg("install")
        .args(args)
        .args(["--replicas", "0", "--timeout", "0", "-n", namespace])
        .output()
        .expect("tether install runs");
    assert!(out.status.success(), "{}", support::said(&out));
}

#[tokio::test]
async fn a_namespaced_install_is_enough_for_its_namespace_and_nothing_else() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let team = TestNamespace::create(&client, "team").await;
    let other = TestNamespace::create(&client, "team-other").await;
    install_rights(&team.name, &["--namespaced"]);
    // No cluster-wide rights were made.
    let cluster_roles = support::kubectl(&[
        "get",
        "clusterrole,clusterrolebinding",
        "-l",
        "app.kubernetes.io/managed-by=tether-install",
        "-o",
        "name",
    ]);
    let names = String::from_utf8_lossy(&cluster_roles.stdout).into_owned();
    assert!(
        !names.contains(&team.name),
        "a namespaced install made cluster-wide rights: {names}"
    );
    let dir = tempfile::tempdir().expect("temp");
    let agent_client = account_client("tether-agent", &team.name, dir.path()).await;
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/mine.yaml", &configmap_in("mine", None, "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let mut election = tether::agent::leader::ElectionOptions::new(team.name.clone());
    election.lease_duration = std::time::Duration::from_secs(5);
    let agent = start_agent(
        &agent_client,
        AgentOptions {
            namespaced: true,
            leader_election: Some(election),
            ..options_for(&team, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &team.name);
    let spec = |namespace: &str| {
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": namespace},
            "syncPolicy": {"interval": "1h"}
        })
    };
    create_application(&apps, "here", spec(&team.name)).await;
    create_application(&apps, "elsewhere", spec(&other.name)).await;
    until(
        &apps,
        "here",
        "a full sync with the namespaced rights",
        |a| applied(a) == Some(first.as_str()),
    )
    .await;
    let refused = fails_with(&apps, "elsewhere", "confined to namespace").await;
    eprintln!("{refused}");
    // Drift is seen and put back by the namespaced watches.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &team.name);
    cms.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "red"}})),
    )
    .await
    .expect("hand edit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cms.get("mine").await.expect("get").data.expect("data")["color"] != "blue" {
        assert!(
            std::time::Instant::now() < deadline,
            "the hand edit was not put back with the namespaced rights"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And the rights end at the namespace: the agent's identity can neither write nor read
    // another namespace.
    let theirs: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "agent-itself"}})).expect("cm");
    let refused = Api::<ConfigMap>::namespaced(agent_client.clone(), &other.name)
        .create(&PostParams::default(), &theirs)
        .await
        .expect_err("the agent may not write another namespace");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
    let listed = Api::<ConfigMap>::namespaced(agent_client.clone(), &other.name)
        .list(&Default::default())
        .await
        .expect_err("the agent may not read another namespace");
    assert!(
        matches!(&listed, kube::Error::Api(s) if s.code == 403),
        "{listed}"
    );
    let _ = agent.stop().await;
}

#[tokio::test]
async fn the_rights_tether_install_gives_are_enough_for_tenants_and_no_more() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let system = TestNamespace::create(&client, "tether-system").await;
    let tenant = TestNamespace::create(&client, "tenant-c").await;
    tenant_account(&client, &tenant.name).await;
    // The rights `tether install --tenants` gives the agent (the Deployment is left out of
    // it: the agent runs here, with a token of the installed ServiceAccount).
    let agent_name = "tether-agent";
    let _rbac = InstalledRbac(system.name.clone());
    install_rights(&system.name, &["--tenants"]);
    let dir = tempfile::tempdir().expect("temp");
    // The agent authenticates as that ServiceAccount, with a token of its own (as in a Pod).
    let agent_client = account_client(agent_name, &system.name, dir.path()).await;
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/mine.yaml", &configmap_in("mine", None, "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let mut election = tether::agent::leader::ElectionOptions::new(system.name.clone());
    election.lease_duration = std::time::Duration::from_secs(5);
    let agent = start_agent(
        &agent_client,
        AgentOptions {
            namespace: Some(tenant.name.clone()),
            require_service_account: true,
            leader_election: Some(election),
            ..options_for(&tenant, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &tenant.name);
    create_application(
        &apps,
        "tenant",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": tenant.name},
            "serviceAccountName": "deployer",
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(
        &apps,
        "tenant",
        "a full sync with the installed rights",
        |a| applied(a) == Some(first.as_str()),
    )
    .await;
    // Drift correction works with them too.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &tenant.name);
    cms.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "red"}})),
    )
    .await
    .expect("hand edit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cms.get("mine").await.expect("get").data.expect("data")["color"] != "blue" {
        assert!(
            std::time::Instant::now() < deadline,
            "the hand edit was not put back with the installed rights"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And nothing more: as itself, the agent writes no object of the cluster's.
    let theirs: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "agent-itself"}})).expect("cm");
    let refused = Api::<ConfigMap>::namespaced(agent_client.clone(), &tenant.name)
        .create(&PostParams::default(), &theirs)
        .await
        .expect_err("the agent's own identity may not write objects");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
    let _ = agent.stop().await;
}
