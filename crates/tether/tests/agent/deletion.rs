//! Deleting an Application (issue 25 §2): its objects are deleted in reverse waves between
//! its PreDelete and PostDelete hooks, `Delete=false` keeps one, and the Application goes
//! once they are; deleted while no agent runs, it waits for one; with `deletionPolicy:
//! Orphan` it goes at once and its objects stay.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{applied, create_application, options_for, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster};
use tether::agent::finalize::FINALIZER;
use tether::agent::{Application, install_crd};

fn configmap(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\ndata: {{}}\n"
    )
}

/// Waits until Application `name` is gone (up to 60 s).
async fn gone(apps: &Api<Application>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(app) = apps.get_opt(name).await.expect("read") {
        assert!(
            Instant::now() < deadline,
            "Application {name} still there after 60 s: {:#?}",
            app.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What happens to the namespace's ConfigMaps, in order: "+name" when one appears, "-name"
/// when one is deleted.
fn record_configmaps(
    configmaps: Api<ConfigMap>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(configmaps, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = events.next().await {
            let line = match event {
                watcher::Event::Apply(cm) => format!("+{}", cm.name_any()),
                watcher::Event::Delete(cm) => format!("-{}", cm.name_any()),
                _ => continue,
            };
            let mut seen = record.lock().expect("not poisoned");
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn deleting_an_application_deletes_its_objects_between_its_hooks_even_when_the_agent_was_down()
 {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "deletion").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for (name, wave) in [("first", 0), ("second", 1), ("third", 2)] {
        let annotations = format!("argocd.argoproj.io/sync-wave: \"{wave}\"");
        repo.write(
            &format!("doomed/{name}.yaml"),
            &configmap(name, &annotations),
        );
    }
    repo.write(
        "doomed/kept.yaml",
        &configmap("kept", "argocd.argoproj.io/sync-options: Delete=false"),
    );
    repo.write(
        "doomed/before.yaml",
        &configmap("before", "argocd.argoproj.io/hook: PreDelete"),
    );
    repo.write(
        "doomed/after.yaml",
        &configmap("after", "helm.sh/hook: post-delete"),
    );
    repo.write("held/held.yaml", &configmap("held", ""));
    repo.write("orphan/orphan.yaml", &configmap("orphan", ""));
    let first = repo.commit("three sets");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for (name, policy) in [
        ("doomed", "Delete"),
        ("held", "Delete"),
        ("orphan", "Orphan"),
    ] {
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": name},
                "destination": {"namespace": ns.name},
                "syncPolicy": {"interval": "1h"},
                "deletionPolicy": policy
            }),
        )
        .await;
    }
    for name in ["doomed", "held", "orphan"] {
        let app = until(&apps, name, "applied", |a| {
            applied(a) == Some(first.as_str())
        })
        .await;
        let has = app.finalizers().iter().any(|f| f == FINALIZER);
        assert_eq!(has, name != "orphan", "{name}: {:?}", app.finalizers());
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    for hook in ["before", "after"] {
        assert!(
            configmaps.get_opt(hook).await.expect("read").is_none(),
            "a deletion hook ran in a sync: {hook}"
        );
    }

    // With the agent running: PreDelete hook, third, second, first, PostDelete hook.
    let (seen, watching) = record_configmaps(configmaps.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    apps.delete("doomed", &Default::default())
        .await
        .expect("deleted");
    gone(&apps, "doomed").await;
    watching.abort();
    let seen = seen.lock().expect("not poisoned").clone();
    let at = |line: &str| {
        seen.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line} not seen: {seen:?}"))
    };
    assert!(
        at("+before") < at("-third")
            && at("-third") < at("-second")
            && at("-second") < at("-first")
            && at("-first") < at("+after"),
        "{seen:?}"
    );
    for left in ["before", "after", "first", "second", "third"] {
        assert!(
            configmaps.get_opt(left).await.expect("read").is_none(),
            "{left} is left"
        );
    }
    assert!(
        configmaps.get_opt("kept").await.expect("read").is_some(),
        "Delete=false kept it"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        secrets
            .get_opt("tether-doomed")
            .await
            .expect("read")
            .is_none(),
        "the set's parent is deleted"
    );

    // Orphan: the Application goes at once, its object stays.
    apps.delete("orphan", &Default::default())
        .await
        .expect("deleted");
    gone(&apps, "orphan").await;
    assert!(configmaps.get_opt("orphan").await.expect("read").is_some());

    // Deleted while no agent runs: it waits, and the next agent deletes its objects.
    agent.stop().await.expect("the agent stops");
    apps.delete("held", &Default::default())
        .await
        .expect("deleted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = apps.get("held").await.expect("still there");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(configmaps.get_opt("held").await.expect("read").is_some());
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    gone(&apps, "held").await;
    assert!(
        configmaps.get_opt("held").await.expect("read").is_none(),
        "the next agent deleted it"
    );
    agent.stop().await.expect("the agent stops");
}
