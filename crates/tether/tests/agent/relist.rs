//! Applications the agent first sees in a relist are reconciled like any other. At 10,000
//! Applications, 61 created while the agent's watch was restarting never got a status:
//! kube hands a relist's objects on before its store holds them, and the controller dropped
//! them (see `agent::stored`). Here, on a control plane of the test's own: the agent's link
//! to the API server is cut, Applications are created, the API server restarts (so the
//! agent's resourceVersion is too old: 410, a relist), and the link comes back. The relist
//! must take more than one page (500) for the controller to act between the pages, as at
//! scale: 600 suspended Applications fill the namespace after the new ones.

use crate::support;
use support::fixtures::configmap;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use support::OwnControlPlane;
use support::agent::{applied, create_application, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::toxiproxy::{Toxiproxy, api_server, client_through};
use tether::agent::{AgentOptions, Application};

const CREATED_WHILE_CUT: usize = 40;
const FILLERS: usize = 600;

#[tokio::test]
async fn applications_created_while_the_watch_was_down_are_reconciled_after_the_relist() {
    let plane = OwnControlPlane::up();
    let ns = "relist";
    let client = plane.client_with_namespace(ns).await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for i in 0..=CREATED_WHILE_CUT {
        repo.write(
            &format!("apps/a{i:02}/cm.yaml"),
            &configmap(&format!("cm-{i:02}"), "blue"),
        );
    }
    let commit = repo.commit("fleet");
    let daemon = GitDaemon::start(&root);
    let spec = |i: usize| {
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": format!("apps/a{i:02}")},
            "destination": {"namespace": ns},
            "syncPolicy": {"interval": "1h"}
        })
    };

    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("api", &api_server(&plane.kubeconfig()));
    let agent_client = client_through(&plane.kubeconfig(), &proxy, dir.path()).await;
    let agent = start_agent(
        &agent_client,
        AgentOptions {
            namespace: Some(ns.into()),
            cache_dir: dir.path().join("cache"),
            verify_interval: None,
            ..Default::default()
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), ns);
    // Listed after the a… ones (by name): the new Applications come in the first page.
    let fillers = futures::stream::iter(0..FILLERS).for_each_concurrent(8, |i| {
        let mut filler = spec(0);
        filler["suspend"] = json!(true);
        let apps = apps.clone();
        async move { create_application(&apps, &format!("z{i:03}"), filler).await }
    });
    fillers.await;
    create_application(&apps, "a00", spec(0)).await;
    until(&apps, "a00", "the first Application applied", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while reconciled(&apps).await < FILLERS + 1 {
        assert!(
            Instant::now() < deadline,
            "the fillers not reconciled in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The agent's link is cut; Applications are created; the API server restarts, so the
    // watch's resourceVersion is older than its new watch cache: the agent relists.
    proxy.set_enabled(false);
    for i in 1..=CREATED_WHILE_CUT {
        create_application(&apps, &format!("a{i:02}"), spec(i)).await;
    }
    let plane_dir = plane.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        OwnControlPlane::restart(&plane_dir, "kube-apiserver", Duration::ZERO)
    })
    .await
    .expect("restart");
    proxy.set_enabled(true);
    let back = Instant::now();

    let expected: BTreeSet<String> = (0..=CREATED_WHILE_CUT)
        .map(|i| format!("a{i:02}"))
        .collect();
    let deadline = back + Duration::from_secs(90);
    let unreconciled = loop {
        let listed = apps.list(&ListParams::default()).await;
        let applied: BTreeSet<String> = listed
            .map(|list| {
                list.into_iter()
                    .filter(|a| applied(a) == Some(commit.as_str()))
                    .map(|a| a.name_any())
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&String> = expected.difference(&applied).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        unreconciled.is_empty(),
        "{} of {CREATED_WHILE_CUT} Applications created while the watch was down never \
         applied in 90 s after the link returned: {unreconciled:?}",
        unreconciled.len()
    );
    eprintln!(
        "{CREATED_WHILE_CUT} Applications created while the agent was cut off, all applied \
         {:.1} s after the link returned (the API server restarted meanwhile)",
        back.elapsed().as_secs_f64()
    );
    let _ = agent.stop().await;
    drop(daemon);
}

/// How many Applications have any status condition (the agent reconciled them).
async fn reconciled(apps: &Api<Application>) -> usize {
    apps.list(&ListParams::default())
        .await
        .expect("list")
        .into_iter()
        .filter(|a| a.status.as_ref().is_some_and(|s| !s.conditions.is_empty()))
        .count()
}
