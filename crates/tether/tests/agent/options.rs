//! Fields left to others in pull mode: an Application's `spec.ignoreDifferences` (a
//! manager's fields) are never put back by the agent's drift correction, while a hand edit
//! of any other field is; and objects carrying `Prune=false` stay when Git drops them.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::agent::{
    applied, create_application, options_for, request_sync, start_agent, until, within_10_s,
};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster};
use tether::agent::{Application, install_crd};

#[tokio::test]
async fn the_agent_leaves_ignored_fields_and_kept_objects_alone() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "options").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/tuned.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tuned\ndata:\n  level: \"1\"\n  color: blue\n");
    repo.write(
        "app/kept.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\n  annotations:\n    argocd.argoproj.io/sync-options: Prune=false\ndata: {}\n",
    );
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "tuned",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true, "prune": true},
            "ignoreDifferences": [{"kind": "ConfigMap", "name": "tuned", "managedFieldsManagers": ["autoscaler"]}]
        }),
    )
    .await;
    until(&apps, "tuned", "the first commit applied", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let value = |key: &'static str| {
        let configmaps = configmaps.clone();
        async move {
            configmaps
                .get("tuned")
                .await
                .expect("get")
                .data
                .expect("data")
                .get(key)
                .cloned()
        }
    };
    // The autoscaler's write stays; a hand edit of another field goes back.
    configmaps
        .patch(
            "tuned",
            &PatchParams {
                field_manager: Some("autoscaler".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"level": "7"}})),
        )
        .await
        .expect("the autoscaler's write");
    configmaps
        .patch("tuned", &PatchParams::apply("hand-edit").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tuned"}, "data": {"color": "red"}})))
        .await
        .expect("a hand edit");
    within_10_s("the hand edit put back", || async {
        value("color").await.as_deref() == Some("blue")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        value("level").await.as_deref(),
        Some("7"),
        "the autoscaler's field was left alone"
    );

    // Git drops the kept object: it stays.
    std::fs::remove_file(repo.path.join("app/kept.yaml")).expect("remove");
    let second = repo.commit("drop kept");
    request_sync(&apps, "tuned").await;
    until(&apps, "tuned", "the second commit applied", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    assert!(
        configmaps.get_opt("kept").await.expect("read").is_some(),
        "Prune=false kept it"
    );
    agent.stop().await.expect("the agent stops");
}
