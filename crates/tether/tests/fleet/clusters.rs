//! Many clusters: Applications in the test cluster whose `spec.destination.cluster` names a
//! Secret are applied to a second control plane of the test's own (testenv in a temporary
//! folder), with a kubeconfig or with a server, token and CA. Drift is corrected on each
//! cluster, a cluster Secret that is missing or would run a program is refused with a clear
//! failure, and while the second cluster's API server is down the Application on the first
//! still applies a new commit.

use crate::support;
use support::fixtures::configmap;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{applied, create_application, fails_with, options_for, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::{OwnControlPlane, TestNamespace, cluster};
use tether::agent::{Application, install_crd};
use tether::cluster::{Cluster, ClusterOptions};

async fn color(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data?.get("color").cloned())
}

/// Waits (up to 10 s) until ConfigMap `name` has `color`; returns how long it took.
async fn until_color(client: &kube::Client, namespace: &str, name: &str, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        if color(client, namespace, name).await.as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ConfigMap {namespace}/{name} did not become {want} within 10 s (it is {:?})",
            color(client, namespace, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hand edit, as `kubectl edit` makes it (another field manager).
async fn edit(client: &kube::Client, namespace: &str, name: &str, to: &str) {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"color": to}})),
        )
        .await
        .expect("the hand edit is made");
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
        .expect("a Secret")
}

/// A token of a ServiceAccount that may do anything on `client`'s cluster.
async fn admin_token(client: &kube::Client) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "deployer"}})).expect("account");
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("account created");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "deployer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": "default"}]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding created");
    let request =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .expect("a TokenRequest");
    accounts
        .create_token_request("deployer", &PostParams::default(), &request)
        .await
        .expect("a token")
        .status
        .expect("the token's status")
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_apply_to_the_cluster_their_secret_names_and_one_cluster_down_holds_up_no_other()
 {
    let plane = OwnControlPlane::up();
    let second_kubeconfig = std::fs::read_to_string(plane.kubeconfig()).expect("kubeconfig");
    let second = Cluster::connect(&ClusterOptions::default().kubeconfig(plane.kubeconfig()))
        .await
        .expect("the second control plane")
        .client();
    let home = cluster().await.client();
    install_crd(&home).await.expect("CRD");
    let ns = TestNamespace::create(&home, "clusters").await;
    let far: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "far"}})).expect("namespace");
    Api::<Namespace>::all(second.clone())
        .create(&PostParams::default(), &far)
        .await
        .expect("namespace far on the second cluster");

    // The second cluster's credentials, both ways a user gives them.
    let config: serde_json::Value =
        serde_json::from_str(&second_kubeconfig).expect("testenv writes JSON");
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server")
        .to_string();
    let ca = {
        use base64::Engine;
        let data = config["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .expect("CA data");
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64"),
        )
        .expect("PEM")
    };
    let token = admin_token(&second).await;
    let secrets: Api<Secret> = Api::namespaced(home.clone(), &ns.name);
    // Where the kubeconfig's program would leave a mark, were it ever run.
    let marker = std::env::temp_dir().join(support::unique_name("tether-test-ran-exec"));
    let exec_kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "touch", "args": [marker.display().to_string()]}}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x"
    })
    .to_string();
    for secret in [
        secret("second", &[("kubeconfig", &second_kubeconfig)]),
        secret(
            "second-token",
            &[("server", &server), ("token", &token), ("ca.crt", &ca)],
        ),
        secret("runs-a-program", &[("kubeconfig", &exec_kubeconfig)]),
    ] {
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("cluster Secret created");
    }

    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("near/cm.yaml", &configmap("greeting", "blue"));
    repo.write("far/cm.yaml", &configmap("greeting", "blue"));
    repo.write("token/cm.yaml", &configmap("by-token", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let apps: Api<Application> = Api::namespaced(home.clone(), &ns.name);
    let agent = start_agent(&home, options_for(&ns, dir.path()));
    let url = daemon.url("deploy");
    let app = |path: &str, namespace: &str, cluster: Option<&str>| {
        let mut spec = json!({
            "source": {"repoURL": url, "path": path},
            "destination": {"namespace": namespace},
            "syncPolicy": {"interval": "2s", "retry": {"limit": 100, "backoff": "1s"}}
        });
        if let Some(cluster) = cluster {
            spec["destination"]["cluster"] = json!(cluster);
        }
        spec
    };
    create_application(&apps, "near", app("near", &ns.name, None)).await;
    create_application(&apps, "far", app("far", "far", Some("second"))).await;
    create_application(
        &apps,
        "far-token",
        app("token", "far", Some("second-token")),
    )
    .await;
    create_application(&apps, "nowhere", app("far", "far", Some("missing"))).await;
    create_application(&apps, "exec", app("far", "far", Some("runs-a-program"))).await;

    for name in ["near", "far", "far-token"] {
        until(&apps, name, "the first commit applied", |a| {
            applied(a) == Some(first.as_str())
        })
        .await;
    }
    // Each object is where its Application's destination says, and only there.
    assert_eq!(
        color(&home, &ns.name, "greeting").await.as_deref(),
        Some("blue")
    );
    assert_eq!(
        color(&second, "far", "greeting").await.as_deref(),
        Some("blue")
    );
    assert_eq!(
        color(&second, "far", "by-token").await.as_deref(),
        Some("blue")
    );
    assert_eq!(color(&home, &ns.name, "by-token").await, None);
    // `tether diff` plans where the agent applies: against the second cluster, where far's
    // objects are as Git says (against the first, whose namespace far does not exist, it
    // would fail or show a create).
    let diff = tokio::task::block_in_place(|| {
        let cache = dir.path().join("diff-cache");
        support::tether_command()
            .args(["diff", "far", "-n", &ns.name])
            .env("TETHER_CACHE_DIR", &cache)
            .output()
            .expect("tether diff runs")
    });
    let said = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert_eq!(
        diff.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(said.contains("0 to create, 0 to update"), "{said}");
    let mut parents: Vec<String> = Api::<Secret>::namespaced(second.clone(), "far")
        .list(&Default::default())
        .await
        .expect("Secrets of far")
        .items
        .iter()
        .map(|s| s.name_any())
        .filter(|name| name.starts_with("tether-"))
        .collect();
    parents.sort();
    assert_eq!(
        parents,
        ["tether-far", "tether-far-token"],
        "far and far-token each keep their ApplySet parent there"
    );

    // Clear failures for a Secret that is missing and one that would run a program.
    let missing = fails_with(&apps, "nowhere", "does not exist").await;
    assert!(
        missing.contains(&format!("{}/missing", ns.name)),
        "{missing}"
    );
    fails_with(&apps, "exec", "runs a program").await;
    assert!(!marker.exists(), "the kubeconfig's program must never run");

    // Drift is put back on both clusters.
    edit(&second, "far", "greeting", "red").await;
    edit(&second, "far", "by-token", "red").await;
    edit(&home, &ns.name, "greeting", "red").await;
    let far_back = until_color(&second, "far", "greeting", "blue").await;
    until_color(&second, "far", "by-token", "blue").await;
    let near_back = until_color(&home, &ns.name, "greeting", "blue").await;
    eprintln!("drift put back: second cluster {far_back:?}, first {near_back:?}");

    // The second cluster's API server goes away for 30 s; meanwhile a commit changes both.
    let plane_dir = plane.dir.path().to_path_buf();
    let outage = tokio::task::spawn_blocking(move || {
        OwnControlPlane::restart(&plane_dir, "kube-apiserver", Duration::from_secs(30))
    });
    let down_since = Instant::now();
    loop {
        if second.apiserver_version().await.is_err() {
            break;
        }
        assert!(
            down_since.elapsed() < Duration::from_secs(20),
            "the API server never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    repo.write("near/cm.yaml", &configmap("greeting", "green"));
    repo.write("far/cm.yaml", &configmap("greeting", "green"));
    let second_commit = repo.commit("green");
    let pushed = Instant::now();
    until(
        &apps,
        "near",
        "the second commit applied on the first cluster",
        |a| applied(a) == Some(second_commit.as_str()),
    )
    .await;
    let near_took = pushed.elapsed();
    assert_eq!(
        color(&home, &ns.name, "greeting").await.as_deref(),
        Some("green")
    );
    assert!(
        second.apiserver_version().await.is_err(),
        "the second cluster came back before the first applied the commit ({near_took:?}): \
         the test proves nothing"
    );
    let failing = fails_with(&apps, "far", "cluster second (https://").await;
    eprintln!(
        "while the second cluster was down, the first applied a commit in {near_took:?}; far: {failing:?}"
    );
    outage.await.expect("the restart ran");

    // Back: far converges to the new commit.
    until(
        &apps,
        "far",
        "the second commit applied once the cluster is back",
        |a| applied(a) == Some(second_commit.as_str()),
    )
    .await;
    assert_eq!(
        color(&second, "far", "greeting").await.as_deref(),
        Some("green")
    );
    // And drift there is still corrected (its watches came back).
    edit(&second, "far", "greeting", "red").await;
    until_color(&second, "far", "greeting", "green").await;
    agent.stop().await.expect("the agent stops");
}
