//! The agent against broken networks and servers, all real: Toxiproxy between the agent and
//! Git and between the agent and the API server (latency, bandwidth limits, connections
//! cut mid-stream, a server gone), a Git server answering 500, and, on a control plane of
//! the test's own, an API server restart in the middle of a sync and etcd stopped for 10 s.
//! What must hold: the last applied revision keeps running, the status says why, nothing
//! Git still has is ever deleted (uids never change), and the agent converges once the
//! fault is gone.

use crate::support;
use support::fixtures::configmap;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{
    applied, create_application, fails_with, options_for, request_sync, start_agent, until,
};
use support::git::{GitDaemon, GitRepo, HttpGitServer};
use support::toxiproxy::{Toxiproxy, api_server, client_through};
use support::{OwnControlPlane, TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

/// name → (uid, data.color) of every ConfigMap in the namespace but kube-root-ca.crt.
async fn configmaps(client: &kube::Client, ns: &str) -> BTreeMap<String, (String, String)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.name_any() != "kube-root-ca.crt")
        .map(|c| {
            let color = c
                .data
                .as_ref()
                .and_then(|d| d.get("color").cloned())
                .unwrap_or_default();
            (c.name_any(), (c.uid().unwrap_or_default(), color))
        })
        .collect()
}

/// Every object of `before` that `after_names` still lists exists with the same uid: it was
/// never deleted (not even deleted and created again).
fn never_deleted(
    before: &BTreeMap<String, (String, String)>,
    now: &BTreeMap<String, (String, String)>,
    kept: impl Fn(&str) -> bool,
) {
    for (name, (uid, _)) in before.iter().filter(|(name, _)| kept(name)) {
        let now_uid = now.get(name).map(|(uid, _)| uid.as_str());
        assert_eq!(
            now_uid,
            Some(uid.as_str()),
            "{name} was deleted although Git still has it"
        );
    }
}

#[tokio::test]
async fn git_that_is_silent_cut_off_down_failing_or_slow_keeps_the_last_applied_revision() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "faults-git").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for name in ["a", "b", "c"] {
        repo.write(&format!("app/{name}.yaml"), &configmap(name, "blue"));
    }
    repo.write("web/w.yaml", &configmap("w", "blue"));
    let good = repo.commit("good");
    let daemon = GitDaemon::start(&root);
    let http = HttpGitServer::start(&root, None, None);
    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("git", &format!("127.0.0.1:{}", daemon.port));
    let proxied_url = format!("git://127.0.0.1:{}/deploy", proxy.port);

    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for (name, url, path) in [
        ("via-proxy", proxied_url.clone(), "app"),
        ("via-http", http.url("deploy"), "web"),
    ] {
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": url, "path": path, "timeout": "3s"},
                "destination": {"namespace": ns.name},
                "syncPolicy": {"interval": "1h", "retry": {"limit": 1}}
            }),
        )
        .await;
        until(&apps, name, "first sync", |a| {
            applied(a) == Some(good.as_str())
        })
        .await;
    }
    let first = configmaps(&client, &ns.name).await;

    // The next commit changes a and w, removes c and brings a big object, so its pack takes a
    // while to send.
    repo.write("app/a.yaml", &configmap("a", "green"));
    repo.write("web/w.yaml", &configmap("w", "green"));
    repo.remove("app/c.yaml");
    // 120 KB of hex from a xorshift generator: it does not compress below ~60 KB.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: String = (0..60_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{:02x}", state as u8)
        })
        .collect();
    repo.write(
        "app/big.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  noise: {noise}\n"
        ),
    );
    let next = repo.commit("next");
    let unchanged = |what: &str| {
        let (first, client, ns) = (first.clone(), client.clone(), ns.name.clone());
        let what = what.to_string();
        async move {
            let now = configmaps(&client, &ns).await;
            assert_eq!(now, first, "{what}: the cluster changed");
        }
    };
    let mut seen = Vec::new();

    // Silent: connections are accepted, nothing comes back (a 3 s timeout).
    proxy.add_toxic("silent", "timeout", "downstream", json!({"timeout": 0}));
    request_sync(&apps, "via-proxy").await;
    seen.push((
        "silent",
        fails_with(&apps, "via-proxy", "no answer within 3 s").await,
    ));
    unchanged("Git silent").await;
    proxy.remove_toxic("silent");

    // Cut mid-stream: each connection is closed after 20 KB, inside the pack.
    proxy.add_toxic("cut", "limit_data", "downstream", json!({"bytes": 20_000}));
    request_sync(&apps, "via-proxy").await;
    seen.push(("cut", fails_with(&apps, "via-proxy", &proxied_url).await));
    unchanged("the fetch cut off").await;
    proxy.remove_toxic("cut");

    // Down: the proxy refuses connections.
    proxy.set_enabled(false);
    request_sync(&apps, "via-proxy").await;
    seen.push((
        "down",
        fails_with(&apps, "via-proxy", "cannot reach the Git server").await,
    ));
    unchanged("Git down").await;

    // Up but failing: HTTP 500 on every request.
    std::fs::write(root.join(".fail-with"), "500").expect("write");
    request_sync(&apps, "via-http").await;
    seen.push((
        "500",
        fails_with(&apps, "via-http", "answered 500 Internal Server Error").await,
    ));
    unchanged("Git answering 500").await;
    for app in ["via-proxy", "via-http"] {
        let status = apps.get(app).await.expect("app").status.expect("status");
        assert_eq!(status.last_applied_revision.as_deref(), Some(good.as_str()));
    }

    // Back, though slow (16 KB/s: the pack takes longer than the 3 s timeout, but data
    // keeps coming, so no read waits that long): both converge to the new commit, and only
    // then is c pruned.
    std::fs::remove_file(root.join(".fail-with")).expect("remove");
    proxy.set_enabled(true);
    proxy.add_toxic("thin", "bandwidth", "downstream", json!({"rate": 16}));
    let started = Instant::now();
    for app in ["via-proxy", "via-http"] {
        request_sync(&apps, app).await;
        until(&apps, app, "the new commit after the faults", |a| {
            applied(a) == Some(next.as_str())
        })
        .await;
    }
    let slow_fetch = started.elapsed();
    assert!(
        slow_fetch > Duration::from_secs(3),
        "the 16 KB/s link should make the fetch outlast the 3 s timeout: {slow_fetch:?}"
    );
    let now = configmaps(&client, &ns.name).await;
    never_deleted(&first, &now, |name| name != "c");
    assert!(
        !now.contains_key("c"),
        "c is pruned once the commit applies"
    );
    assert_eq!(now["a"].1, "green");
    assert_eq!(now["w"].1, "green");
    for (fault, message) in &seen {
        eprintln!("git {fault}: {message}");
    }
    eprintln!("converged through a 16 KB/s link in {slow_fetch:?}");
    let _ = agent.stop().await;
}

#[tokio::test]
async fn the_agent_rides_out_latency_thin_links_and_cut_connections_to_the_api_server() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "faults-api").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for i in 0..40 {
        repo.write(
            &format!("app/cm-{i:02}.yaml"),
            &configmap(&format!("cm-{i:02}"), "blue"),
        );
    }
    let first_commit = repo.commit("first");
    let daemon = GitDaemon::start(&root);

    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("api", &api_server(&support::kubeconfig()));
    let agent_client = client_through(&support::kubeconfig(), &proxy, dir.path()).await;
    // A cloud cluster far away: 40 ms round trips and a thin link.
    proxy.add_toxic(
        "far",
        "latency",
        "downstream",
        json!({"latency": 40, "jitter": 5}),
    );
    proxy.add_toxic("thin", "bandwidth", "downstream", json!({"rate": 256}));

    let agent = start_agent(&agent_client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "far",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "retry": {"backoff": "1s"}}
        }),
    )
    .await;
    let started = Instant::now();
    until(&apps, "far", "first sync over a slow link", |a| {
        applied(a) == Some(first_commit.as_str())
    })
    .await;
    let first_sync = started.elapsed();
    let first = configmaps(&client, &ns.name).await;
    assert_eq!(first.len(), 40);

    // Every connection cut (watches included) for 3 s; meanwhile someone edits cm-00.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    proxy.set_enabled(false);
    cms.patch(
        "cm-00",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "red"}})),
    )
    .await
    .expect("hand edit");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_enabled(true);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let color = cms.get("cm-00").await.expect("get").data.expect("data")["color"].clone();
        if color == "blue" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit made while the agent was cut off was not put back within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_cut = started.elapsed();

    // Connections closed after 30 KB each, while a new commit changes 10 objects and
    // removes 5: lists and watches break again and again; nothing Git has may go.
    for i in 0..10 {
        repo.write(
            &format!("app/cm-{i:02}.yaml"),
            &configmap(&format!("cm-{i:02}"), "green"),
        );
    }
    for i in 35..40 {
        repo.remove(&format!("app/cm-{i:02}.yaml"));
    }
    let second_commit = repo.commit("second");
    proxy.add_toxic("cut", "limit_data", "downstream", json!({"bytes": 30_000}));
    request_sync(&apps, "far").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    never_deleted(&first, &configmaps(&client, &ns.name).await, |_| true);
    proxy.remove_toxic("cut");
    until(
        &apps,
        "far",
        "the second commit once connections last",
        |a| applied(a) == Some(second_commit.as_str()),
    )
    .await;
    let now = configmaps(&client, &ns.name).await;
    never_deleted(&first, &now, |name| name < "cm-35");
    assert_eq!(now.len(), 35);
    assert!((0..10).all(|i| now[&format!("cm-{i:02}")].1 == "green"));
    eprintln!(
        "over 40 ms + 256 KB/s: first sync of 40 objects {first_sync:?}; an edit made while \
         cut off put back {after_cut:?} after the link returned"
    );
    let _ = agent.stop().await;
}

#[tokio::test]
async fn an_api_server_restart_and_etcd_stopped_for_10_s_in_the_middle_of_syncs() {
    let plane = OwnControlPlane::up();
    let ns = "outages";
    let client = plane.client_with_namespace(ns).await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for i in 0..300 {
        repo.write(
            &format!("app/cm-{i:03}.yaml"),
            &configmap(&format!("cm-{i:03}"), "blue"),
        );
    }
    let first_commit = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    // 40 ms each way between the agent and the API server: the first sync's writes take a
    // few seconds, so the restart lands in the middle of them.
    let toxiproxy = Toxiproxy::start();
    let proxy = toxiproxy.proxy("api", &api_server(&plane.kubeconfig()));
    for stream in ["upstream", "downstream"] {
        proxy.add_toxic(stream, "latency", stream, json!({"latency": 40}));
    }
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
    create_application(
        &apps,
        "big",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns},
            "syncPolicy": {"interval": "1h", "retry": {"backoff": "2s", "limit": 20}}
        }),
    )
    .await;

    // The API server restarts once the first sync has written some objects.
    let deadline = Instant::now() + Duration::from_secs(60);
    while configmaps(&client, ns).await.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "the first sync did not start in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written_before = configmaps(&client, ns).await.len();
    let plane_dir = plane.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        OwnControlPlane::restart(&plane_dir, "kube-apiserver", Duration::ZERO)
    })
    .await
    .expect("restart");
    let app = until_within(&apps, "big", 120, "the first sync after the restart", |a| {
        applied(a) == Some(first_commit.as_str())
    })
    .await;
    let first = configmaps(&client, ns).await;
    assert_eq!(first.len(), 300);
    // The attempt the restart broke (the sync that succeeded created fewer than 300) could
    // not be reported while the server was away; its Event is published once it is back.
    let created_after = app
        .status
        .as_ref()
        .and_then(|s| s.history.first())
        .map_or(300, |h| h.created);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = warnings(&client, ns).await;
        if created_after == 300 || events.iter().any(|e| e.starts_with("SyncFailed: at ")) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no SyncFailed Event for the attempt the restart broke: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "API server restarted with {written_before} of 300 objects written; the sync that \
         succeeded then created {created_after}; history {:?}; warnings {events:?}",
        app.status.as_ref().map(|s| s
            .history
            .iter()
            .map(|h| (h.revision.clone(), h.message.clone()))
            .collect::<Vec<_>>())
    );

    // A commit that changes 30 objects and removes 30, asked for just before etcd stops for
    // 10 s: lists fail meanwhile, and no failure may read as "nothing there, prune it".
    for i in 0..30 {
        repo.write(
            &format!("app/cm-{i:03}.yaml"),
            &configmap(&format!("cm-{i:03}"), "green"),
        );
    }
    for i in 270..300 {
        repo.remove(&format!("app/cm-{i:03}.yaml"));
    }
    let second_commit = repo.commit("second");
    request_sync(&apps, "big").await;
    let plane_dir = plane.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        OwnControlPlane::restart(&plane_dir, "etcd", Duration::from_secs(10))
    })
    .await
    .expect("etcd outage");
    let app = until_within(
        &apps,
        "big",
        180,
        "the second commit after etcd is back",
        |a| applied(a) == Some(second_commit.as_str()),
    )
    .await;
    let now = configmaps(&client, ns).await;
    never_deleted(&first, &now, |name| name < "cm-270");
    assert_eq!(now.len(), 270);
    assert!((0..30).all(|i| now[&format!("cm-{i:03}")].1 == "green"));
    let status = app.status.expect("status");
    eprintln!(
        "after etcd's outage: history {:?}; warnings {:?}",
        status
            .history
            .iter()
            .map(|h| (h.revision.clone(), h.message.clone()))
            .collect::<Vec<_>>(),
        warnings(&client, ns).await
    );
    let _ = agent.stop().await;
    drop(daemon);
}

async fn until_within(
    apps: &Api<Application>,
    name: &str,
    seconds: u64,
    what: &str,
    check: impl Fn(&Application) -> bool,
) -> Application {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Ok(app) = apps.get(name).await
            && check(&app)
        {
            return app;
        }
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// reason: message of every Warning Event in the namespace.
async fn warnings(client: &kube::Client, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.reason.unwrap_or_default(),
                        e.message.unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
