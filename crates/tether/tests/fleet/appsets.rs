//! ApplicationSets (issue 26 §1): a Git directory generator makes an Application per
//! folder, owned by the set; a new folder adds one, a folder gone deletes it (and its
//! objects); a cluster generator makes one per cluster Secret selected by labels; a
//! generator error leaves every Application alone and says why; `tether get appsets`.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{options_for, start_agent};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster, tether};
use tether::agent::{Application, install_crd};
use tether::application::ApplicationSet;

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  from: git\n")
}

/// The names of the set's Applications once they are `want` (up to 60 s).
async fn generated(apps: &Api<Application>, set: &str, want: &[&str]) -> Vec<Application> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = apps
            .list(&ListParams::default().labels(&format!("tether.dev/application-set={set}")))
            .await
            .expect("list");
        let mut names: Vec<String> = listed.items.iter().map(|a| a.name_any()).collect();
        names.sort();
        if names == want {
            return listed.items;
        }
        assert!(
            Instant::now() < deadline,
            "set {set}: {names:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Makes the agent generate the set again now (any change to it does).
async fn poke(sets: &Api<ApplicationSet>, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": now}}})),
    )
    .await
    .expect("poked");
}

#[tokio::test]
async fn a_set_makes_an_application_per_folder_and_per_cluster_and_follows_its_inputs() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRDs installed");
    let ns = TestNamespace::create(&client, "appsets").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for app in ["web", "db", "old"] {
        repo.write(
            &format!("apps/{app}/cm.yaml"),
            &configmap(&format!("{app}-config")),
        );
    }
    repo.commit("three folders");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let sets: Api<ApplicationSet> = Api::namespaced(client.clone(), &ns.name);
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let set: ApplicationSet = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "ApplicationSet", "metadata": {"name": "folders"},
        "spec": {
            "generators": [{"git": {"repoURL": daemon.url("deploy"), "revision": "main",
                "directories": [{"path": "apps/*"}, {"path": "apps/old", "exclude": true}]}}],
            "template": {
                "metadata": {"name": "{{path.basename}}", "labels": {"team": "{{path[0]}}"}},
                "spec": {"source": {"repoURL": daemon.url("deploy"), "path": "{{path}}"},
                         "destination": {"namespace": ns.name},
                         "syncPolicy": {"interval": "1h"}}
            }
        }
    }))
    .expect("a set");
    sets.create(&PostParams::default(), &set)
        .await
        .expect("created");
    let made = generated(&apps, "folders", &["db", "web"]).await;
    let owner = &made[0].owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ApplicationSet", "folders")
    );
    assert_eq!(made[0].labels()["team"], "apps");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let exists = |name: String| {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt(&name).await.expect("read").is_some() }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(exists("web-config".into()).await && exists("db-config".into()).await) {
        assert!(
            Instant::now() < deadline,
            "the generated Applications synced"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !exists("old-config".into()).await,
        "an excluded folder makes nothing"
    );

    // A folder added and one removed: the set follows, and the removed one's objects go.
    repo.write("apps/cache/cm.yaml", &configmap("cache-config"));
    std::fs::remove_dir_all(repo.path.join("apps/db")).expect("rm");
    repo.commit("cache in, db out");
    poke(&sets, "folders").await;
    generated(&apps, "folders", &["cache", "web"]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while exists("db-config".into()).await || !exists("cache-config".into()).await {
        assert!(
            Instant::now() < deadline,
            "db's objects deleted, cache's applied"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A generator error: every Application stays, and the set says why.
    sets.patch(
        "folders",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"generators": [
        {"git": {"repoURL": daemon.url("missing"), "directories": [{"path": "*"}]}}]}})),
    )
    .await
    .expect("patched");
    let deadline = Instant::now() + Duration::from_secs(60);
    let message = loop {
        let set = sets.get("folders").await.expect("set");
        let ready = set
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        if let Some(ready) = ready.filter(|c| c.status == "False") {
            break ready.message;
        }
        assert!(Instant::now() < deadline, "the generator error is reported");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        message.contains("cannot fetch") && message.contains("missing"),
        "{message}"
    );
    generated(&apps, "folders", &["cache", "web"]).await;

    // A cluster generator: one Application per cluster Secret its selector picks.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, env) in [("east", "prod"), ("west", "prod"), ("lab", "dev")] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"tether.dev/secret-type": "cluster", "env": env}},
            "stringData": {"server": format!("https://{name}.invalid:6443")}
        }))
        .expect("a Secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("created");
    }
    let per_cluster: ApplicationSet = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "ApplicationSet", "metadata": {"name": "clusters"},
        "spec": {
            "generators": [{"clusters": {"selector": {"matchLabels": {"env": "prod"}}}}],
            "template": {
                "metadata": {"name": "probe-{{name}}", "annotations": {"server": "{{server}}"}},
                "spec": {"source": {"repoURL": daemon.url("deploy"), "path": "apps/web"},
                         "destination": {"namespace": ns.name}, "suspend": true}
            },
            "syncPolicy": {"preserveResourcesOnDeletion": true}
        }
    }))
    .expect("a set");
    sets.create(&PostParams::default(), &per_cluster)
        .await
        .expect("created");
    let probes = generated(&apps, "clusters", &["probe-east", "probe-west"]).await;
    assert_eq!(
        probes[0].annotations()["server"],
        format!("https://{}.invalid:6443", &probes[0].name_any()[6..])
    );
    assert_eq!(
        serde_json::to_value(probes[0].spec.deletion_policy).expect("json"),
        json!("Orphan"),
        "preserveResourcesOnDeletion"
    );

    let listed = tether(&["get", "appsets", "-n", &ns.name]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("clusters") && listed.contains("probe-east, probe-west"),
        "{listed}"
    );
    assert!(
        listed.contains("folders") && listed.contains("cannot fetch"),
        "{listed}"
    );
    agent.stop().await.expect("the agent stops");
}

/// A staged rollout (Argo CD's RollingSync): a change to every Application of the set
/// reaches dev, then qa, then prod, each step only once the one before is Synced and
/// Healthy; the set's status shows the steps.
#[tokio::test]
async fn a_rolling_sync_changes_one_step_after_another() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRDs installed");
    let ns = TestNamespace::create(&client, "rollout").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "app/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${env}-cm\ndata:\n  color: ${color}\n",
    );
    repo.commit("one app, many environments");
    let daemon = GitDaemon::start(&root);
    let (port, listen) = support::agent::free_listen();
    let options = tether::agent::AgentOptions {
        listen,
        api_token: Some(b"api-t0ken".to_vec()),
        ..options_for(&ns, dir.path())
    };
    let agent = start_agent(&client, options);
    let sets: Api<ApplicationSet> = Api::namespaced(client.clone(), &ns.name);
    let set = |color: &str| {
        json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "ApplicationSet", "metadata": {"name": "envs"},
            "spec": {
                "generators": [{"list": {"elements": [{"env": "dev"}, {"env": "qa"}, {"env": "prod"}]}}],
                "template": {
                    "metadata": {"name": "shop-{{env}}", "labels": {"env": "{{env}}"}},
                    "spec": {"source": {"repoURL": daemon.url("deploy"), "path": "app"},
                             "render": {"variables": {"env": "{{env}}", "color": color}},
                             "destination": {"namespace": ns.name}, "syncPolicy": {"interval": "1h"}}
                },
                "strategy": {"type": "RollingSync", "rollingSync": {"steps": [
                    {"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]},
                    {"matchExpressions": [{"key": "env", "operator": "In", "values": ["qa"]}]},
                    {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}], "maxUpdate": 1}
                ]}}
            }
        })
    };
    let first: ApplicationSet = serde_json::from_value(set("blue")).expect("a set");
    sets.create(&PostParams::default(), &first)
        .await
        .expect("created");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    // When each environment's color became `color`, polled every 50 ms.
    let watch = |color: &'static str| {
        let configmaps = configmaps.clone();
        async move {
            let started = Instant::now();
            // (environment, when, the poll that saw it)
            let mut when: Vec<(String, Duration, u32)> = Vec::new();
            let mut poll = 0;
            while when.len() < 3 {
                poll += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "rollout to {color}: {when:?}"
                );
                for env in ["dev", "qa", "prod"] {
                    let now = configmaps
                        .get_opt(&format!("{env}-cm"))
                        .await
                        .expect("read");
                    let has = now
                        .and_then(|c| c.data)
                        .is_some_and(|d| d["color"] == color);
                    if has && !when.iter().any(|(e, ..)| e == env) {
                        when.push((env.to_string(), started.elapsed(), poll));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            when
        }
    };
    let order =
        |when: &[(String, Duration, u32)]| when.iter().map(|(e, ..)| e.clone()).collect::<Vec<_>>();
    let created = watch("blue").await;
    assert_eq!(order(&created), ["dev", "qa", "prod"], "{created:?}");
    sets.patch(
        "envs",
        &PatchParams::apply("test").force(),
        &Patch::Apply(set("green")),
    )
    .await
    .expect("patched");
    let changed = watch("green").await;
    assert_eq!(order(&changed), ["dev", "qa", "prod"], "{changed:?}");
    assert!(
        changed[0].1 < changed[1].1 && changed[1].1 < changed[2].1,
        "{changed:?}"
    );
    eprintln!("rollout of a change: {changed:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = sets
            .get("envs")
            .await
            .expect("set")
            .status
            .unwrap_or_default();
        let states: Vec<String> = status.rollout.iter().map(|s| s.state.clone()).collect();
        if states == ["Done", "Done", "Done"] {
            break;
        }
        assert!(Instant::now() < deadline, "the steps end Done: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The JSON API and the web UI list the set with its Applications and its steps.
    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || {
            reqwest::blocking::Client::new()
                .get(format!("http://127.0.0.1:{port}{path}"))
                .bearer_auth("api-t0ken")
                .send()
                .expect("request")
                .text()
                .expect("a body")
        })
    };
    let api: serde_json::Value =
        serde_json::from_str(&get("/api/v1/applicationsets").await.expect("join")).expect("JSON");
    let listed = &api["applicationSets"][0];
    assert_eq!(listed["name"], "envs", "{api}");
    assert_eq!(
        listed["applications"],
        json!(["shop-dev", "shop-prod", "shop-qa"]),
        "{api}"
    );
    assert_eq!(
        listed["rollout"][2]["applications"],
        json!(["shop-prod"]),
        "{api}"
    );
    let page = get("/ui/sets").await.expect("join");
    assert!(
        page.contains("/ui/apps/") && page.contains("shop-qa") && page.contains("step 3"),
        "{page}"
    );
    let filtered = get("/ui/?set=envs").await.expect("join");
    assert!(filtered.contains("the Applications of set"), "{filtered}");
    agent.stop().await.expect("the agent stops");
}

/// One cluster generator, three clusters' worth of Applications (two control planes: the
/// test cluster and one of the test's own, named by two Secrets): each Application applies
/// to the cluster its Secret describes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_generator_sends_an_application_to_each_cluster() {
    use k8s_openapi::api::core::v1::Namespace;
    let plane = tokio::task::block_in_place(support::OwnControlPlane::up);
    let second_kubeconfig = std::fs::read_to_string(plane.kubeconfig()).expect("kubeconfig");
    let second = tether::cluster::Cluster::connect(
        &tether::cluster::ClusterOptions::default().kubeconfig(plane.kubeconfig()),
    )
    .await
    .expect("the second control plane")
    .client();
    let home = cluster().await.client();
    install_crd(&home).await.expect("CRDs installed");
    let ns = TestNamespace::create(&home, "three-clusters").await;
    for far in ["far-a", "far-b"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": far}})).expect("ns");
        Api::<Namespace>::all(second.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("created");
    }
    let home_kubeconfig = std::fs::read_to_string(support::kubeconfig()).expect("kubeconfig");
    let secrets: Api<Secret> = Api::namespaced(home.clone(), &ns.name);
    for (name, kubeconfig, target, env) in [
        ("home", &home_kubeconfig, ns.name.as_str(), "prod"),
        ("second-a", &second_kubeconfig, "far-a", "prod"),
        ("second-b", &second_kubeconfig, "far-b", "prod"),
        ("lab", &second_kubeconfig, "far-a", "dev"),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"tether.dev/secret-type": "cluster", "env": env, "target": target}},
            "stringData": {"kubeconfig": kubeconfig}
        }))
        .expect("a Secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("created");
    }
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/cm.yaml", &configmap("everywhere"));
    repo.commit("one app");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&home, options_for(&ns, dir.path()));
    let set: ApplicationSet = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "ApplicationSet", "metadata": {"name": "fleet"},
        "spec": {
            "generators": [{"clusters": {"selector": {"matchLabels": {"env": "prod"}}}}],
            "template": {
                "metadata": {"name": "web-{{name}}"},
                "spec": {"source": {"repoURL": daemon.url("deploy"), "path": "app"},
                         "destination": {"cluster": "{{name}}", "namespace": "{{metadata.labels.target}}"},
                         "syncPolicy": {"interval": "1h"}}
            }
        }
    }))
    .expect("a set");
    Api::<ApplicationSet>::namespaced(home.clone(), &ns.name)
        .create(&PostParams::default(), &set)
        .await
        .expect("created");
    let apps: Api<Application> = Api::namespaced(home.clone(), &ns.name);
    generated(
        &apps,
        "fleet",
        &["web-home", "web-second-a", "web-second-b"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (client, namespace) in [
        (&home, ns.name.as_str()),
        (&second, "far-a"),
        (&second, "far-b"),
    ] {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        while configmaps
            .get_opt("everywhere")
            .await
            .expect("read")
            .is_none()
        {
            assert!(Instant::now() < deadline, "applied in {namespace}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    agent.stop().await.expect("the agent stops");
}
