//! Truth for objects of every size and every status change (issue 29): a hand edit of an
//! object past 4,096 fields is drift that `apply` and the agent put back without a force
//! flag; an Application whose cluster cannot be made to match Git is never Synced; health
//! follows each member's status change, both ways, within 2 s.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{
    applied, create_application, health, options_for, ready, start_agent, sync_state, until,
};
use support::git::{GitDaemon, GitRepo};
use support::{NodeLabel, TestCrd, TestNamespace, cluster, kubectl, said, tether, unique_name};
use tether::agent::{Application, install_crd};

/// Reads `apps/name` every 50 ms until `check` holds; how long it took (fails after 30 s).
async fn time_until(
    apps: &Api<Application>,
    name: &str,
    what: &str,
    check: impl Fn(&Application) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let app = apps.get(name).await.expect("read");
        if check(&app) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s: {:?}",
            app.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CRD whose schema has 5,000 properties (tens of thousands of fields are common), with
/// an annotation Git sets.
fn big_crd(group: &str) -> String {
    let properties: String = (0..5000)
        .map(|i| format!("              p{i}: {{type: string}}\n"))
        .collect();
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gauges.{group}\n  annotations: {{team: git}}\nspec:\n  group: {group}\n  names: {{kind: Gauge, plural: gauges}}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n{properties}"
    )
}

#[tokio::test]
async fn a_hand_edit_of_a_crd_of_5000_properties_is_drift_that_a_plain_apply_puts_back() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "big-crd").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("crds");
    std::fs::create_dir_all(&folder).expect("folder");
    let group = format!("{}.tether.dev", unique_name("big"));
    std::fs::write(folder.join("crd.yaml"), big_crd(&group)).expect("write");
    let path = folder.to_str().expect("utf-8");
    let args = |verb: &str| -> Vec<String> {
        let mut args: Vec<String> = [verb, "--path", path, "-n", &ns.name, "--app", "crds"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if verb == "plan" {
            args.push("--detailed-exitcode".into());
        }
        args
    };
    let run = |verb: &str| {
        let args = args(verb);
        tether(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run("apply");
    assert!(out.status.success(), "{}", said(&out));
    let name = format!("gauges.{group}");
    let annotated = kubectl(&["annotate", "crd", &name, "team=hand", "--overwrite"]);
    assert!(annotated.status.success(), "{annotated:?}");

    let out = run("plan");
    let shown = said(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("drift, Git's value goes back: .metadata.annotations.team"),
        "{shown}"
    );
    assert!(!shown.contains("in conflict"), "{shown}");
    let out = run("apply");
    assert!(out.status.success(), "a plain apply: {}", said(&out));
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = crds.get(&name).await.expect("read");
    assert_eq!(
        crd.annotations().get("team").map(String::as_str),
        Some("git")
    );
    let record = crd
        .annotations()
        .get("tether.dev/applied-fields")
        .cloned()
        .unwrap_or_default();
    assert!(
        record.starts_with("bloom:"),
        "{}",
        &record[..record.len().min(40)]
    );
    let out = run("plan");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let _ = crds.delete(&name, &Default::default()).await;
}

#[tokio::test]
async fn the_agent_puts_back_a_key_of_a_5000_key_configmap_and_a_conflict_is_never_synced() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "big-cm").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let keys: String = (0..5000).map(|i| format!("  k{i}: v{i}\n")).collect();
    repo.write(
        "app/big.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n{keys}"),
    );
    repo.write(
        "app/small.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: small\ndata:\n  a: ours\n",
    );
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "big",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "retry": {"limit": 2, "backoff": "1s"}}
        }),
    )
    .await;
    until(&apps, "big", "first sync", |a| {
        applied(a) == Some(first.as_str()) && sync_state(a) == Some("Synced")
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let value = |cm: &ConfigMap, key: &str| {
        cm.data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
            .unwrap_or_default()
    };

    // One key of 5,000 changed by hand: put back, as for any object.
    let patched = kubectl(&[
        "patch",
        "configmap",
        "big",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"data":{"k42":"hand"}}"#,
    ]);
    assert!(patched.status.success(), "{patched:?}");
    let started = Instant::now();
    loop {
        let big = configmaps.get("big").await.expect("read");
        if value(&big, "k42") == "v42" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not put back: {}",
            value(&big, "k42")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    println!("a one-key edit of a 5,000-key ConfigMap put back in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Another manager holds a field Git starts to set: a conflict, and never Synced.
    let theirs = kubectl(&[
        "patch",
        "configmap",
        "small",
        "-n",
        &ns.name,
        "--type=merge",
        "--field-manager=other",
        "-p",
        r#"{"data":{"extra":"theirs"}}"#,
    ]);
    assert!(theirs.status.success(), "{theirs:?}");
    repo.write(
        "app/small.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: small\ndata:\n  a: ours\n  extra: ours\n",
    );
    let second = repo.commit("Git sets a field another manager holds");
    apps.patch(
        "big",
        &PatchParams::default(),
        &Patch::Merge(tether::application::actions::sync()),
    )
    .await
    .expect("sync requested");
    let app = until(&apps, "big", "the conflict reported", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_attempted_revision.as_deref())
            == Some(second.as_str())
            && ready(a).is_some_and(|(status, _)| status == "False")
    })
    .await;
    let (_, message) = ready(&app).expect("ready");
    assert!(message.contains("another manager owns"), "{message}");
    assert_ne!(sync_state(&app), Some("Synced"), "{:?}", app.status);
    let api = tether_cli_sync(&ns.name);
    assert!(api.contains("OutOfSync"), "{api}");
    let small = configmaps.get("small").await.expect("read");
    assert_eq!(value(&small, "extra"), "theirs", "nothing was forced");
    let _ = agent.stop().await;
}

/// What `tether get` says of the Application's sync (the CLI reads the same status).
fn tether_cli_sync(namespace: &str) -> String {
    let out = tether(&["get", "apps", "-n", namespace]);
    said(&out)
}

#[tokio::test]
async fn health_follows_each_status_change_both_ways_within_2_s() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "follows-status").await;
    // A kind with a status subresource, as operators' kinds have.
    let group = format!("{}.tether.dev", unique_name("dial"));
    let _crd = TestCrd::create_with(&client, &group, "Dial", "dials", true).await;
    let dir = tempfile::tempdir().expect("temp");
    let node = NodeLabel::new();
    node.set(true);

    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "app/dial.yaml",
        &format!(
            "apiVersion: {group}/v1\nkind: Dial\nmetadata:\n  name: dial\nspec: {{level: 3}}\n"
        ),
    );
    repo.write("app/web.yaml", &node.deployment());
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "dial",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(&apps, "dial", "first sync", |a| {
        applied(a) == Some(first.as_str()) && sync_state(a) == Some("Synced")
    })
    .await;
    // The status written as an operator writes it: through the status subresource.
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Dial".into(),
        plural: "dials".into(),
    };
    let dials: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &resource);
    let ready_dial = |status: &'static str| {
        let dials = dials.clone();
        async move {
            let patch = json!({"status": {"conditions": [
                {"type": "Ready", "status": status, "reason": "Test", "message": "set by the test"}
            ]}});
            dials
                .patch_status(
                    "dial",
                    &PatchParams {
                        field_manager: Some("operator".into()),
                        ..Default::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
                .expect("status patched");
        }
    };
    ready_dial("True").await;
    time_until(&apps, "dial", "Healthy", |a| health(a) == Some("Healthy")).await;

    let mut seen = Vec::new();
    for (status, expected) in [
        ("False", "Degraded"),
        ("True", "Healthy"),
        ("False", "Degraded"),
        ("True", "Healthy"),
    ] {
        ready_dial(status).await;
        let took = time_until(&apps, "dial", expected, |a| health(a) == Some(expected)).await;
        seen.push((expected, took));
    }
    println!("custom resource Ready flips seen in: {seen:?}");
    for (expected, took) in &seen {
        assert!(*took < Duration::from_secs(2), "{expected} after {took:?}");
    }

    // The Deployment loses its available replica (its Pod can no longer run anywhere).
    node.set(false);
    let deleted = kubectl(&[
        "delete",
        "pods",
        "-n",
        &ns.name,
        "-l",
        "app=web",
        "--wait=false",
    ]);
    assert!(deleted.status.success(), "{deleted:?}");
    let lost = time_until(&apps, "dial", "not Healthy", |a| {
        health(a) != Some("Healthy")
    })
    .await;
    node.set(true);
    let back = time_until(&apps, "dial", "Healthy again", |a| {
        health(a) == Some("Healthy")
    })
    .await;
    println!("lost replica seen in {lost:?}; Healthy again {back:?} after the node label returned");
    assert!(lost < Duration::from_secs(2), "{lost:?}");
    node.set(false);
    let _ = agent.stop().await;
}
