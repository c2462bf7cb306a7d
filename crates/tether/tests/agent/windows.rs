//! Sync windows (issue 25 §3): a namespace's deny window keeps a new commit from being
//! applied (the status, `tether get apps` and the Ready message say until when) while hand
//! edits are still put back (its `selfHeal`); a sync asked for by hand runs once the window
//! says `manualSync`; deleting the window applies what waited at once; a window that cannot
//! be read fails the Application naming it.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::agent::{
    applied, create_application, fails_with, options_for, ready, request_sync, start_agent, until,
    within_10_s,
};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster, tether};
use tether::agent::{Application, install_crd};
use tether::application::SyncWindow;

fn configmap(color: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  color: {color}\n")
}

fn window_closed(app: &Application) -> bool {
    app.status
        .as_ref()
        .and_then(|s| s.sync_window.as_ref())
        .is_some_and(|w| !w.open)
}

#[tokio::test]
async fn a_deny_window_holds_new_commits_puts_hand_edits_back_and_yields_to_manual_syncs() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRDs installed");
    let ns = TestNamespace::create(&client, "windows").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("shop/cm.yaml", &configmap("blue"));
    let first = repo.commit("blue");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let source = json!({"repoURL": daemon.url("deploy"), "path": "shop"});
    create_application(
        &apps,
        "shop",
        json!({"source": source, "destination": {"namespace": ns.name},
               "syncPolicy": {"interval": "1h", "selfHeal": true}}),
    )
    .await;
    until(&apps, "shop", "the first commit applied", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;

    // A freeze for every Application whose name starts with "sh": it opened this minute
    // (Berlin time) and lasts an hour.
    let berlin = k8s_openapi::jiff::Timestamp::now()
        .in_tz("Europe/Berlin")
        .expect("the zone");
    let schedule = format!("{} {} * * *", berlin.minute(), berlin.hour());
    let windows: Api<SyncWindow> = Api::namespaced(client.clone(), &ns.name);
    let freeze: SyncWindow = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "SyncWindow",
        "metadata": {"name": "freeze"},
        "spec": {"kind": "deny", "schedule": schedule, "duration": "1h",
                 "timeZone": "Europe/Berlin", "selfHeal": true, "applications": ["sh*"]}
    }))
    .expect("a SyncWindow");
    windows
        .create(&PostParams::default(), &freeze)
        .await
        .expect("created");
    repo.write("shop/cm.yaml", &configmap("green"));
    let second = repo.commit("green");
    request_sync(&apps, "shop").await;
    let held = until(&apps, "shop", "held by the window", |a| {
        window_closed(a) && ready(a).is_some_and(|(_, m)| m.contains("waits"))
    })
    .await;
    let (_, message) = ready(&held).expect("Ready");
    assert!(
        message.contains("SyncWindow")
            && message.contains("freeze")
            && message.contains("syncs may run from"),
        "{message}"
    );
    assert_eq!(applied(&held), Some(first.as_str()));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color = || async {
        configmaps
            .get("shop")
            .await
            .expect("get")
            .data
            .unwrap_or_default()["color"]
            .clone()
    };
    assert_eq!(color().await, "blue", "the new commit waits");
    let listed = tether(&["get", "apps", "-n", &ns.name]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("sync window closed; next sync 20"),
        "{listed}"
    );

    // A hand edit is put back (to the revision applied): the window says selfHeal.
    configmaps
        .patch(
            "shop",
            &PatchParams::apply("hand-edit").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop"}, "data": {"color": "red"}})),
        )
        .await
        .expect("hand edit");
    within_10_s("the hand edit put back to blue", || async {
        color().await == "blue"
    })
    .await;

    // The window lets syncs asked for by hand through: one applies the waiting commit.
    windows
        .patch(
            "freeze",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"manualSync": true}})),
        )
        .await
        .expect("patched");
    request_sync(&apps, "shop").await;
    until(&apps, "shop", "the manual sync applied", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    assert_eq!(color().await, "green");

    // A third commit waits; deleting the window applies it at once (no interval to wait).
    repo.write("shop/cm.yaml", &configmap("yellow"));
    let third = repo.commit("yellow");
    tokio::time::sleep(Duration::from_secs(1)).await;
    windows
        .delete("freeze", &Default::default())
        .await
        .expect("deleted");
    let app = until(&apps, "shop", "the waiting commit applied", |a| {
        applied(a) == Some(third.as_str())
    })
    .await;
    assert!(!window_closed(&app));

    // A window that cannot be read fails the Application, naming it.
    create_application(
        &apps,
        "broken",
        json!({"source": source, "destination": {"namespace": ns.name},
               "syncWindows": [{"kind": "allow", "schedule": "0 9 * * *", "duration": "8h", "timeZone": "Mars/Olympus"}]}),
    )
    .await;
    let message = fails_with(&apps, "broken", "Mars/Olympus").await;
    assert!(
        message.contains("spec.syncWindows[0]: timeZone"),
        "{message}"
    );
    agent.stop().await.expect("the agent stops");
}
