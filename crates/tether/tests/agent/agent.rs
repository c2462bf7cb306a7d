//! The agent against the real control plane and a real `git daemon`: an Application is
//! synced, new commits are applied, removed files are pruned, suspend stops changes, and
//! the status and printer columns tell what happened.

use crate::support;
use support::fixtures::{configmap, configmap_json};

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{
    applied, create_application, options_for, ready, request_sync, start_agent, until, within_10_s,
};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

#[tokio::test]
async fn the_agent_syncs_new_commits_prunes_and_respects_suspend() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("apps/shop/a.yaml", &configmap("a", "blue"));
    repo.write("apps/shop/b.yaml", &configmap("b", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);

    let agent = start_agent(&client, options_for(&ns, dir.path()));

    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(&apps, "shop", json!({
            "source": {"repoURL": daemon.url("deploy"), "ref": {"branch": "main"}, "path": "apps/shop"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        })).await;

    let synced = until(&apps, "shop", "first sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let status = synced.status.expect("status");
    assert_eq!(status.sync.as_ref().expect("sync").status, "Synced");
    assert_eq!(status.health.as_deref(), Some("Healthy"));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    assert_eq!(status.history[0].created, 2);
    assert_eq!(
        status.apply_set.as_ref().expect("applyset").name,
        "tether-shop"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        configmaps.get("a").await.expect("a").data.expect("data")["color"],
        "blue"
    );

    // A new commit: one change, one file removed.
    repo.write("apps/shop/a.yaml", &configmap("a", "green"));
    repo.remove("apps/shop/b.yaml");
    let second = repo.commit("second");
    let synced = until(&apps, "shop", "second sync", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    assert_eq!(
        configmaps.get("a").await.expect("a").data.expect("data")["color"],
        "green"
    );
    assert!(
        configmaps.get_opt("b").await.expect("get").is_none(),
        "b was pruned"
    );
    let history = synced.status.expect("status").history;
    assert_eq!(
        (history[0].updated, history[0].pruned),
        (1, 1),
        "{history:?}"
    );

    // kubectl shows the printer columns.
    let out = support::kubectl(&["get", "applications", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("REVISION") && table.contains("SYNC") && table.contains("HEALTH"),
        "{table}"
    );
    assert!(
        table.contains(&second[..7]) && table.contains("Synced") && table.contains("Healthy"),
        "{table}"
    );

    // Suspended: a new commit is not applied.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    until(&apps, "shop", "suspended", |a| {
        a.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Suspended"))
    })
    .await;
    repo.write("apps/shop/a.yaml", &configmap("a", "red"));
    repo.commit("while suspended");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        configmaps.get("a").await.expect("a").data.expect("data")["color"],
        "green",
        "nothing changed"
    );
    assert_eq!(
        applied(&apps.get("shop").await.expect("app")),
        Some(second.as_str())
    );

    agent
        .stop()
        .await
        .expect("the agent stops cleanly when asked");
}

#[tokio::test]
async fn a_broken_source_is_reported_and_stalls_after_the_retry_limit() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-broken").await;
    let dir = tempfile::tempdir().expect("temp");
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let missing = format!("file://{}/nothing-here", dir.path().display());
    create_application(
        &apps,
        "broken",
        json!({
            "source": {"repoURL": missing, "path": "."},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1m", "retry": {"limit": 2, "backoff": "100ms"}}
        }),
    )
    .await;
    let stalled = until(&apps, "broken", "stalled", |a| {
        a.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        })
    })
    .await;
    let status = stalled.status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("nothing-here"),
        "says what failed: {}",
        ready.message
    );
    assert!(status.failures >= 2);
    let _ = agent.stop().await;
}

#[tokio::test]
async fn drift_is_corrected_from_the_watch_or_only_reported_without_self_heal() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-drift").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("healed/a.yaml", &configmap("healed", "blue"));
    // LimitRanges: a kind no controller and no other test touches, so the API server's
    // request count for it is this test's alone.
    let mut limits = String::new();
    for i in 0..50 {
        limits.push_str(&format!(
            "---\napiVersion: v1\nkind: LimitRange\nmetadata:\n  name: l-{i:02}\nspec:\n  limits: [{{type: Container, max: {{cpu: \"2\"}}}}]\n"
        ));
    }
    repo.write("healed/limits.yaml", &limits);
    repo.write("reported/a.yaml", &configmap("reported", "blue"));
    let commit = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    // With the API server's audit log, the user who made each change is named too.
    let audit_log = support::kubeconfig().with_file_name("audit.log");
    let (port, listen) = support::agent::free_listen();
    let options = AgentOptions {
        audit_log: Some(audit_log),
        listen,
        api_token: Some(b"api-t0ken".to_vec()),
        ..options_for(&ns, dir.path())
    };
    let agent = start_agent(&client, options);
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for (name, self_heal) in [("healed", true), ("reported", false)] {
        // An hour between polls: only the watch can explain a quick reaction.
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": name},
                "destination": {"namespace": ns.name},
                "syncPolicy": {"interval": "1h", "selfHeal": self_heal}
            }),
        )
        .await;
        until(&apps, name, "first sync", |a| {
            applied(a) == Some(commit.as_str())
        })
        .await;
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let edit = |name: &'static str| {
        let configmaps = configmaps.clone();
        async move {
            configmaps
                .patch(
                    name,
                    &PatchParams::apply("hand-edit").force(),
                    &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"color": "red"}})),
                )
                .await
                .expect("hand edit");
        }
    };

    edit("healed").await;
    let started = Instant::now();
    within_10_s("the edit reverted", || async {
        configmaps
            .get("healed")
            .await
            .expect("get")
            .data
            .expect("data")["color"]
            == "blue"
    })
    .await;
    eprintln!("drift corrected in {:?}", started.elapsed());
    // The history says who changed what was put back (a field and its writer, no value).
    let said = until(
        &apps,
        "healed",
        "a history entry naming the hand edit",
        |a| {
            a.status.as_ref().is_some_and(|s| {
                s.history
                    .iter()
                    .any(|h| h.message.as_deref().is_some_and(|m| m.contains("put back")))
            })
        },
    )
    .await;
    let message = said
        .status
        .expect("status")
        .history
        .iter()
        .filter_map(|h| h.message.clone())
        .find(|m| m.contains("put back"))
        .expect("an entry");
    assert!(
        message.contains(r#".data.color: changed by "hand-edit" (Apply at 20"#)
            && message.contains("; user \"")
            && !message.contains("red"),
        "{message}"
    );

    // Only what drifted is planned and applied again: one hand edit among 50 LimitRanges
    // costs a few requests for LimitRanges, not one per member.
    let limit_ranges: Api<k8s_openapi::api::core::v1::LimitRange> =
        Api::namespaced(client.clone(), &ns.name);
    // The correction of the first edit may still be reading health: start from quiet.
    let verbs_before = loop {
        let first = requests_by_verb(&client, "limitranges").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = requests_by_verb(&client, "limitranges").await;
        if first == second {
            break second;
        }
    };
    limit_ranges
        .patch(
            "l-07",
            &PatchParams::apply("hand-edit").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "l-07"},
                "spec": {"limits": [{"type": "Container", "max": {"cpu": "3"}}]}}),
            ),
        )
        .await
        .expect("hand edit");
    let reads = within_10_s("the LimitRange edit reverted", || async {
        let live = limit_ranges.get("l-07").await.expect("get");
        live.spec.expect("spec").limits[0]
            .max
            .as_ref()
            .expect("max")["cpu"]
            .0
            == "2"
    })
    .await;
    // Everything since: the hand edit, the test's reads, and the agent's correction.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since: std::collections::BTreeMap<String, u64> = requests_by_verb(&client, "limitranges")
        .await
        .into_iter()
        .map(|(verb, n)| {
            let before = verbs_before.get(&verb).copied().unwrap_or(0);
            (verb, n - before)
        })
        .collect();
    let agent_requests = since.values().sum::<u64>() - 1 - reads;
    // Reads, a dry-run that meets the conflict (the edit took a field tether applied), a
    // forced dry-run (drift: Git's value goes back, with its diff), the apply.
    assert!(
        agent_requests <= 6,
        "correcting 1 of 50 LimitRanges took {agent_requests} requests for LimitRanges (all since the edit, with the test's {}: {since:?})",
        1 + reads
    );

    // A field tether set, removed by someone who owns nothing afterwards (a merge patch):
    // only tether's managedFields entry changes, and it is still someone else's change.
    configmaps
        .patch(
            "healed",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"color": null}})),
        )
        .await
        .expect("remove a field by hand");
    within_10_s("the removed field put back", || async {
        let data = configmaps.get("healed").await.expect("get").data;
        data.and_then(|d| d.get("color").cloned()).as_deref() == Some("blue")
    })
    .await;

    configmaps
        .delete("healed", &Default::default())
        .await
        .expect("delete by hand");
    within_10_s("the deleted object recreated", || async {
        configmaps.get_opt("healed").await.expect("get").is_some()
    })
    .await;

    edit("reported").await;
    until(&apps, "reported", "reported as OutOfSync", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .is_some_and(|s| s.status == "OutOfSync")
    })
    .await;
    assert_eq!(
        configmaps
            .get("reported")
            .await
            .expect("get")
            .data
            .expect("data")["color"],
        "red",
        "without selfHeal the edit stays"
    );
    // The JSON API names who changed the field that differs, with the audit log's user.
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/applications/{}/reported",
        ns.name
    );
    let text = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .get(url)
            .bearer_auth("api-t0ken")
            .send()
            .expect("request")
            .text()
            .expect("a body")
    })
    .await
    .expect("join");
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let changed_by = body["objects"][0]["changedBy"].to_string();
    assert!(
        changed_by.contains(r#".data.color: changed by \"hand-edit\""#)
            && changed_by.contains("; user"),
        "{body}"
    );
    let _ = agent.stop().await;
}

/// A ControllerRevision (a kind no other test lists in a namespace, so the API server's
/// count of LISTs of it is this test's).
fn revision(name: &str, number: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata:\n  name: {name}\nrevision: {number}\ndata:\n  note: revision {number}\n"
    )
}

#[tokio::test]
async fn a_member_removed_from_git_is_pruned_without_listing_the_namespace() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-prune-watched").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        repo.write(&format!("app/{name}.yaml"), &revision(name, i as u32 + 1));
    }
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "revisions",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        }),
    )
    .await;
    until(&apps, "revisions", "first sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(client.clone(), &ns.name);
    assert!(revisions.get_opt("three").await.expect("get").is_some());
    // LISTs in this namespace, from the audit log; this test's own LIST shows it sees them.
    let lists = || support::audit::lists("controllerrevisions", &ns.name);
    revisions
        .list(&kube::api::ListParams::default().labels("control=1"))
        .await
        .expect("list");
    let lists_before = lists();
    assert!(
        lists_before >= 1,
        "the audit log shows no LIST of ControllerRevisions here: testenv's audit policy is older than this test (make cluster-down, then make test)"
    );

    // Three objects of the kind are read one by one; the one no longer in Git is found
    // among the set's members the drift watch sees, not with a LIST by label (which makes
    // the API server scan every object of the kind in the namespace).
    repo.remove("app/three.yaml");
    let second = repo.commit("second");
    let synced = until(&apps, "revisions", "second sync", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    assert!(
        revisions.get_opt("three").await.expect("get").is_none(),
        "three was pruned"
    );
    assert_eq!(synced.status.expect("status").history[0].pruned, 1);
    assert_eq!(
        lists() - lists_before,
        0,
        "LISTs of ControllerRevisions in the namespace during the sync that pruned"
    );
    agent.stop().await.expect("the agent stops");
}

/// The API server's own count of per-object requests (GET, APPLY, PATCH, DELETE… of one
/// named object: `scope="resource"`) for `resource`, from its /metrics. Lists and
/// collection deletes (the namespace controller cleaning up other tests) do not count.
async fn requests_for(client: &kube::Client, resource: &str) -> u64 {
    requests_by_verb(client, resource).await.values().sum()
}

/// [`requests_for`] by verb (with " dry-run" for dry runs).
async fn requests_by_verb(
    client: &kube::Client,
    resource: &str,
) -> std::collections::BTreeMap<String, u64> {
    requests_in_scope(client, resource, "resource").await
}

/// The API server's count of requests for `resource` at `scope` (`resource`: single
/// objects; `namespace`: lists in a namespace), by verb (with " dry-run" for dry runs).
async fn requests_in_scope(
    client: &kube::Client,
    resource: &str,
    scope: &str,
) -> std::collections::BTreeMap<String, u64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(request).await.expect("metrics");
    let needle = format!("resource=\"{resource}\"");
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        Some(line[start..].split('"').next()?.to_string())
    };
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| {
        l.starts_with("apiserver_request_total{")
            && l.contains(&needle)
            && l.contains(&format!("scope=\"{scope}\""))
    }) {
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        let verb = label(line, "verb").unwrap_or_default();
        let dry = if label(line, "dry_run").unwrap_or_default().is_empty() {
            ""
        } else {
            " dry-run"
        };
        *counts.entry(format!("{verb}{dry}")).or_insert(0) += count as u64;
    }
    counts
}

/// The API server's count of writes (apply, patch, update, delete; dry-runs do not count)
/// of single objects of `resource`. tether writes only by server-side apply.
async fn writes_for(client: &kube::Client, resource: &str) -> u64 {
    requests_by_verb(client, resource)
        .await
        .into_iter()
        .filter(|(verb, _)| ["APPLY", "PATCH", "PUT", "DELETE"].contains(&verb.as_str()))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn reconciles_that_change_nothing_send_no_request_and_a_restart_writes_nothing() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-noop").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "many");
    // PodTemplates: a kind no controller and no other test touches, so the API server's
    // request count for it is ours alone.
    let mut manifests = String::new();
    for i in 0..1000 {
        manifests.push_str(&format!(
            "---\napiVersion: v1\nkind: PodTemplate\nmetadata:\n  name: t-{i:04}\ntemplate:\n  metadata:\n    labels: {{app: t}}\n  spec:\n    containers: [{{name: c, image: registry.invalid/t:1}}]\n"
        ));
    }
    repo.write("apps/many/templates.yaml", &manifests);
    let commit = repo.commit("a thousand objects");
    let daemon = GitDaemon::start(&root);
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let gets =
        |verbs: &std::collections::BTreeMap<String, u64>| verbs.get("GET").copied().unwrap_or(0);
    let first_before = requests_by_verb(&client, "podtemplates").await;
    create_application(
        &apps,
        "many",
        json!({
            "source": {"repoURL": daemon.url("many"), "path": "apps/many"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        }),
    )
    .await;
    until(&apps, "many", "first sync", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    // The first sync learns which objects exist from one LIST of names, and their health
    // from the server's answers to its applies: not one GET of the 1,000 (it used to read
    // each again for its health).
    let first_after = requests_by_verb(&client, "podtemplates").await;
    assert_eq!(
        gets(&first_after) - gets(&first_before),
        0,
        "GETs of the 1,000 objects the first sync created (requests: {first_after:?})"
    );
    // Once the watches have seen every object at the version the sync left it, reconciles
    // must be free. Look for a 5-second window with at least 3 reconciles: it must show
    // zero requests, and at most half as many Git fetches as reconciles: a poll whose shared
    // listing of the remote's refs (at most 5 s old) shows the commit applied opens no
    // repository. (Were every reconcile to fetch, the counts could differ by one at most, at
    // the window's edges.)
    let fetches = || support::agent::agent_metric(port, "tether_git_fetch_duration_seconds_count");
    // This agent's own count (a process-wide one would count other tests' agents too).
    let reconciled = || support::agent::agent_metric(port, "tether_reconciles_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut reconciles, mut sent, mut fetched) = (0, u64::MAX, 0.0);
    while Instant::now() < deadline {
        let reconciles_before = reconciled().await;
        let requests_before = requests_for(&client, "podtemplates").await;
        let fetches_before = fetches().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        sent = requests_for(&client, "podtemplates").await - requests_before;
        fetched = fetches().await - fetches_before;
        reconciles = (reconciled().await - reconciles_before) as u64;
        if sent == 0 && reconciles >= 3 && fetched * 2.0 <= reconciles as f64 {
            break;
        }
    }
    assert!(
        reconciles >= 3,
        "the agent kept reconciling ({reconciles} times)"
    );
    assert_eq!(
        sent, 0,
        "{reconciles} no-op reconciles of 1,000 objects sent {sent} requests for them"
    );
    assert!(
        fetched * 2.0 <= reconciles as f64,
        "{reconciles} idle reconciles fetched from Git {fetched} times"
    );
    eprintln!("{reconciles} idle reconciles fetched from Git {fetched} times");

    // A push to another folder of the same repository: the new revision renders what is
    // applied, so the Application moves to it without a request for its objects.
    let requests_before = requests_for(&client, "podtemplates").await;
    repo.write("apps/other/cm.yaml", &configmap("other", "red"));
    let elsewhere = repo.commit("another application's change");
    let moved = until(&apps, "many", "the push to another folder", |a| {
        applied(a) == Some(elsewhere.as_str())
    })
    .await;
    assert_eq!(
        requests_for(&client, "podtemplates").await - requests_before,
        0,
        "a revision that changed another folder sent requests for this Application's objects"
    );
    // Nor was it rendered: it holds what the last render read, where it read it.
    let skipped = support::agent::agent_metric(port, "tether_renders_skipped_total").await;
    assert!(
        skipped >= 1.0,
        "the revision that changed another folder was rendered again ({skipped} skipped)"
    );
    assert_eq!(
        moved
            .status
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .map(|s| s.revision.as_str()),
        Some(elsewhere.as_str())
    );
    agent.stop().await.expect("the agent stops");

    // A restart forgets what the watches saw, so the new agent plans everything once (dry
    // runs); it must write nothing: no object, not the ApplySet parent, not the status.
    let writes_before = writes_for(&client, "podtemplates").await;
    let verbs_before = requests_by_verb(&client, "podtemplates").await;
    assert!(
        writes_before >= 1000,
        "the write count does not see the first sync's 1,000 creates ({writes_before})"
    );
    // LISTs in this namespace, from the audit log; this test's own LIST shows it sees them.
    let lists = || support::audit::lists("podtemplates", &ns.name);
    let templates: Api<k8s_openapi::api::core::v1::PodTemplate> =
        Api::namespaced(client.clone(), &ns.name);
    templates
        .list(&kube::api::ListParams::default().labels("control=1"))
        .await
        .expect("list");
    let lists_before = lists();
    assert!(
        lists_before >= 1,
        "the audit log shows no LIST of the set's PodTemplates: testenv's audit policy is older than this test (make cluster-down, then make test)"
    );
    let app_version = apps.get("many").await.expect("app").resource_version();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let parent_version = secrets
        .get("tether-many")
        .await
        .expect("parent")
        .resource_version();
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            ..options_for(&ns, dir.path())
        },
    );
    let reconciled = || support::agent::agent_metric(port, "tether_reconciles_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the restarted agent does not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its first reconcile plans in full (the watches vouch for nothing yet); a few more.
    while reconciled().await < 4.0 {
        assert!(
            Instant::now() < deadline,
            "the restarted agent stopped reconciling"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        writes_for(&client, "podtemplates").await - writes_before,
        0,
        "the restarted agent wrote objects that were already as Git says (requests since the restart: {:?}, before: {verbs_before:?})",
        requests_by_verb(&client, "podtemplates").await
    );
    assert_eq!(
        secrets
            .get("tether-many")
            .await
            .expect("parent")
            .resource_version(),
        parent_version,
        "the restarted agent rewrote the ApplySet parent"
    );
    assert_eq!(
        apps.get("many").await.expect("app").resource_version(),
        app_version,
        "the restarted agent rewrote an unchanged status"
    );
    // One full plan after the restart, and not one dry-run: each object already holds what
    // tether would write (its applied-fields record and values), so the server is not asked.
    let dry_runs = |verbs: &std::collections::BTreeMap<String, u64>| {
        verbs.get("APPLY dry-run").copied().unwrap_or(0)
    };
    let verbs_after = requests_by_verb(&client, "podtemplates").await;
    let planned = dry_runs(&verbs_after) - dry_runs(&verbs_before);
    assert_eq!(
        planned, 0,
        "dry-runs of the 1,000 unchanged objects since the restart"
    );
    // The plan reads them with one LIST, and their health comes from what it read: not
    // one GET. (Listed objects used to lack apiVersion and kind, look changed, and be read
    // again; then each was read once more for its health.)
    let read = gets(&verbs_after) - gets(&verbs_before);
    assert_eq!(
        read, 0,
        "GETs of the 1,000 listed objects since the restart (requests since: {verbs_after:?})"
    );
    // The plan's LIST of the 1,000 members (4 pages of 250) also gives the prune
    // candidates: no second LIST for them (which made it 5).
    assert_eq!(
        lists() - lists_before,
        4,
        "LISTs of the set's PodTemplates in the namespace since the restart"
    );
    agent.stop().await.expect("the agent stops");
}

#[tokio::test]
async fn a_signed_webhook_syncs_at_once_and_a_forged_one_changes_nothing() {
    use hmac::Mac;
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-webhook").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("hooked", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            webhook_secret: Some(b"hook-s3cret".to_vec()),
            api_token: Some(b"api-t0ken".to_vec()),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "hooked",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(&apps, "hooked", "first sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;

    repo.write("app/a.yaml", &configmap("hooked", "green"));
    let second = repo.commit("second");
    let body = serde_json::to_vec(
        &json!({"ref": "refs/heads/main", "repository": {"clone_url": daemon.url("deploy")}}),
    )
    .expect("json");
    let post = |signature: String, body: Vec<u8>| {
        let url = format!("http://127.0.0.1:{port}/webhooks/github");
        tokio::task::spawn_blocking(move || {
            reqwest::blocking::Client::new()
                .post(url)
                .header("X-GitHub-Event", "push")
                .header("X-Hub-Signature-256", signature)
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    // Forged: signed with another secret. Refused; an hour-long interval means no sync.
    let mut forged = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"guess").expect("key");
    forged.update(&body);
    let forged: String = forged
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let status = post(format!("sha256={forged}"), body.clone())
        .await
        .expect("join")
        .expect("request");
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        applied(&apps.get("hooked").await.expect("app")),
        Some(first.as_str()),
        "nothing changed"
    );

    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-s3cret").expect("key");
    mac.update(&body);
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let started = Instant::now();
    let status = post(format!("sha256={signature}"), body)
        .await
        .expect("join")
        .expect("request");
    assert_eq!(status, 202);
    until(&apps, "hooked", "synced after the webhook", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let latency = started.elapsed();
    eprintln!("webhook to applied: {latency:?}");
    assert!(
        latency < Duration::from_secs(5),
        "webhook to applied took {latency:?}"
    );

    let metrics = support::agent::agent_metrics(port).await;
    assert!(
        metrics.contains("tether_reconciles_total{result=\"applied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_webhooks_total{provider=\"github\",result=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_webhooks_total{provider=\"github\",result=\"accepted\"} 1"),
        "{metrics}"
    );

    // The JSON API: a token is required; with it, the list and one Application's objects.
    let api = |path: String, token: Option<&'static str>, method: &'static str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        tokio::task::spawn_blocking(move || {
            let client = reqwest::blocking::Client::new();
            let mut request = if method == "POST" {
                client.post(url)
            } else {
                client.get(url)
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().expect("request");
            let status = response.status().as_u16();
            let text = response.text().unwrap_or_default();
            let body: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            (status, body)
        })
    };
    let (status, _) = api("/api/v1/applications".into(), None, "GET")
        .await
        .expect("join");
    assert_eq!(status, 401, "no token");
    let (status, _) = api("/api/v1/applications".into(), Some("wrong"), "GET")
        .await
        .expect("join");
    assert_eq!(status, 401, "wrong token");
    let (status, list) = api("/api/v1/applications".into(), Some("api-t0ken"), "GET")
        .await
        .expect("join");
    assert_eq!(status, 200);
    assert_eq!(list["applications"][0]["name"], "hooked", "{list}");
    assert_eq!(list["applications"][0]["sync"], "Synced", "{list}");
    let (status, one) = api(
        format!("/api/v1/applications/{}/hooked", ns.name),
        Some("api-t0ken"),
        "GET",
    )
    .await
    .expect("join");
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["objects"][0]["key"]["name"], "hooked", "{one}");
    assert_eq!(one["objects"][0]["sync"], "Synced", "{one}");
    assert_eq!(one["objects"][0]["health"]["status"], "Healthy", "{one}");
    // A push without a webhook: the agent's listing (taken by the GET above, within its 5 s)
    // still names the applied commit; `?refresh=true` lists the remote and plans the push.
    repo.write("app/a.yaml", &configmap("hooked", "violet"));
    let third = repo.commit("third");
    let listed = Instant::now();
    let (status, cached) = api(
        format!("/api/v1/applications/{}/hooked", ns.name),
        Some("api-t0ken"),
        "GET",
    )
    .await
    .expect("join");
    assert_eq!(status, 200, "{cached}");
    if listed.elapsed() < Duration::from_secs(4) {
        assert_eq!(cached["revision"]["commit"], second.as_str(), "{cached}");
    }
    let (status, fresh) = api(
        format!("/api/v1/applications/{}/hooked?refresh=true", ns.name),
        Some("api-t0ken"),
        "GET",
    )
    .await
    .expect("join");
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["revision"]["commit"], third.as_str(), "{fresh}");
    assert_eq!(fresh["objects"][0]["sync"], "OutOfSync", "{fresh}");
    assert_eq!(fresh["sync"], "OutOfSync", "{fresh}");
    let (status, refused) = api(
        format!("/api/v1/applications/{}/hooked?refresh=maybe", ns.name),
        Some("api-t0ken"),
        "GET",
    )
    .await
    .expect("join");
    assert_eq!(status, 400, "{refused}");
    // The answer says where its time went.
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/applications/{}/hooked",
        ns.name
    );
    let timing = tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::Client::new()
            .get(url)
            .bearer_auth("api-t0ken")
            .send()
            .expect("request");
        response.headers()["server-timing"]
            .to_str()
            .expect("text")
            .to_string()
    })
    .await
    .expect("join");
    for step in ["source;dur=", "render;dur=", "plan;dur="] {
        assert!(timing.contains(step), "{timing}");
    }
    let (status, _) = api(
        format!("/api/v1/applications/{}/hooked/sync", ns.name),
        Some("api-t0ken"),
        "POST",
    )
    .await
    .expect("join");
    assert_eq!(status, 202);

    // The gauge of Applications by state counts each once, and forgets a deleted one.
    let state = "tether_applications{sync=\"Synced\",health=\"Healthy\"}";
    let metrics = support::agent::agent_metrics(port).await;
    assert!(metrics.contains(&format!("{state} 1\n")), "{metrics}");
    assert_eq!(
        support::agent::agent_metric(port, "tether_applications").await,
        1.0
    );
    apps.delete("hooked", &Default::default())
        .await
        .expect("deleted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while support::agent::agent_metric(port, "tether_applications").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "a deleted Application still counts: {}",
            support::agent::agent_metrics(port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agent.stop().await;
}

#[tokio::test]
async fn operators_list_sync_diff_suspend_and_roll_back_from_the_cli() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-cli").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("ops", "blue"));
    let first = repo.commit("first");
    repo.write("app/a.yaml", &configmap("ops", "green"));
    let second = repo.commit("second");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "ops",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(&apps, "ops", "first sync", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color =
        || async { configmaps.get("ops").await.expect("cm").data.expect("data")["color"].clone() };

    let list = support::tether(&["get", "apps", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        table.contains("ops") && table.contains(&second[..12]) && table.contains("Synced"),
        "{table}"
    );

    let diff = support::tether(&["diff", "ops", "-n", &ns.name]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "in sync: {}",
        String::from_utf8_lossy(&diff.stderr)
    );

    // Rollback pins the first commit; the agent applies it.
    let rollback = support::tether(&["rollback", "ops", &first, "-n", &ns.name]);
    assert!(
        rollback.status.success(),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    until(&apps, "ops", "rolled back", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    assert_eq!(color().await, "blue");
    let history = support::tether(&["history", "ops", "-n", &ns.name]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with(&first)),
        "newest first: {text}"
    );

    // Resume follows the branch again.
    let resume = support::tether(&["resume", "ops", "-n", &ns.name]);
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    until(&apps, "ops", "back on the branch", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    assert_eq!(color().await, "green");

    // A hand edit the agent has not seen yet (no self-heal: reported), then `sync` on demand.
    apps.patch(
        "ops",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"syncPolicy": {"selfHeal": false}}})),
    )
    .await
    .expect("patch");
    // Let the reconcile that the spec change started finish before the next commit, so
    // only `tether sync` can explain that commit being applied.
    until(&apps, "ops", "spec change seen", |a| {
        a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    repo.write("app/a.yaml", &configmap("ops", "red"));
    let third = repo.commit("third");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        applied(&apps.get("ops").await.expect("app")),
        Some(second.as_str()),
        "not applied by itself"
    );
    let diff = support::tether(&["diff", "ops", "-n", &ns.name]);
    assert_eq!(diff.status.code(), Some(2), "the new commit differs");
    assert!(String::from_utf8_lossy(&diff.stdout).contains("+  color: red"));
    let sync = support::tether(&["sync", "ops", "-n", &ns.name]);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    until(&apps, "ops", "synced on request", |a| {
        applied(a) == Some(third.as_str())
    })
    .await;

    let suspend = support::tether(&["suspend", "ops", "-n", &ns.name]);
    assert!(suspend.status.success());
    let list = support::tether(&["get", "apps", "-n", &ns.name]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("(suspended)"));
    let _ = agent.stop().await;
}

async fn lease_holder(client: &kube::Client, namespace: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    leases
        .get_opt("tether-agent")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn of_two_agents_one_leads_and_the_other_takes_over_when_it_dies() {
    use tether::agent::leader::ElectionOptions;
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-leader").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("led", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = |identity: &str| {
        let mut election = ElectionOptions::new(ns.name.clone());
        election.identity = identity.into();
        election.lease_duration = Duration::from_secs(3);
        election.renew_every = Duration::from_millis(500);
        start_agent(
            &client,
            AgentOptions {
                namespace: Some(ns.name.clone()),
                cache_dir: dir.path().join(format!("cache-{identity}")),
                leader_election: Some(election),
                ..Default::default()
            },
        )
    };
    let a = agent("agent-a");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&client, &ns.name).await.as_deref() != Some("agent-a") {
        assert!(Instant::now() < deadline, "agent-a never took the Lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = agent("agent-b");
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "led",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        }),
    )
    .await;
    until(&apps, "led", "first sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lease_holder(&client, &ns.name).await.as_deref(),
        Some("agent-a"),
        "agent-b waits while agent-a renews"
    );

    a.kill();
    repo.write("app/a.yaml", &configmap("led", "green"));
    let second = repo.commit("second");
    let died = Instant::now();
    until(&apps, "led", "the new leader syncs", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let took = died.elapsed();
    assert_eq!(
        lease_holder(&client, &ns.name).await.as_deref(),
        Some("agent-b")
    );
    eprintln!("failover to agent-b and sync: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "took over and synced in {took:?}"
    );
    b.stop().await.expect("agent-b stops cleanly");
}

#[tokio::test]
async fn an_application_of_applications_and_dependencies_in_order() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-appofapps").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "platform");
    let daemon = GitDaemon::start(&root);
    // The root Application renders two child Applications; `web` depends on `infra`.
    let child = |name: &str, path: &str, depends: &str| {
        format!(
            "apiVersion: tether.dev/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {}\n    path: {path}\n  \
             destination: {{namespace: {}}}\n  syncPolicy: {{interval: 1s}}\n{depends}",
            daemon.url("platform"),
            ns.name
        )
    };
    repo.write("apps/infra.yaml", &child("infra", "infra", ""));
    repo.write(
        "apps/web.yaml",
        &child("web", "web", "  dependsOn: [{name: infra}]\n"),
    );
    repo.write("infra/cm.yaml", &configmap("infra-config", "blue"));
    repo.write("web/cm.yaml", &configmap("web-config", "blue"));
    let commit = repo.commit("platform");
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "root",
        json!({
            "source": {"repoURL": daemon.url("platform"), "path": "apps"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        }),
    )
    .await;
    until(&apps, "root", "root synced", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let infra = until(&apps, "infra", "child synced", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let web = until(&apps, "web", "dependent synced", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let first_applied = |app: &Application| {
        app.status
            .as_ref()
            .and_then(|s| s.history.last())
            .map(|h| h.time.clone())
            .unwrap_or_default()
    };
    assert!(
        first_applied(&infra) <= first_applied(&web),
        "web was applied before its dependency: {} vs {}",
        first_applied(&infra),
        first_applied(&web)
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        configmaps
            .get_opt("web-config")
            .await
            .expect("get")
            .is_some()
    );
    // The children are members of the root's ApplySet: removing one from Git prunes it.
    repo.remove("apps/web.yaml");
    let second = repo.commit("drop web");
    until(&apps, "root", "root synced again", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while apps.get_opt("web").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the child Application was not pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = agent.stop().await;
}

#[tokio::test]
async fn a_dependency_that_is_not_ready_holds_the_application_back() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-depends").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("web/cm.yaml", &configmap("waiting", "blue"));
    repo.commit("web");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "web",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "web"},
            "destination": {"namespace": ns.name},
            "dependsOn": [{"name": "missing-infra"}]
        }),
    )
    .await;
    let held = until(&apps, "web", "held back", |a| {
        a.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "DependencyNotReady")
        })
    })
    .await;
    let ready = held
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert!(ready.message.contains("missing-infra"), "{}", ready.message);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        configmaps.get_opt("waiting").await.expect("get").is_none(),
        "nothing applied before the dependency"
    );
    let _ = agent.stop().await;
}

/// Sends `signal` (a `kill -s` name) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// Waits up to `limit` for `child` to exit.
async fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn the_agent_binary_finishes_the_apply_in_flight_on_sigterm_and_stops_at_once_on_a_second() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-sigterm").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "big");
    let write_all = |color: &str| {
        let mut manifests = String::new();
        for i in 0..400 {
            manifests.push_str("---\n");
            manifests.push_str(&configmap(&format!("c-{i:03}"), color));
        }
        repo.write("apps/big/configmaps.yaml", &manifests);
    };
    write_all("red");
    let first = repo.commit("400 ConfigMaps");
    let daemon = GitDaemon::start(&root);
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "big",
        json!({
            "source": {"repoURL": daemon.url("big"), "path": "apps/big"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let id = tether::inventory::ApplySet::new("big", &ns.name).id;
    let members = kube::api::ListParams::default()
        .labels(&format!("{}={id}", tether::inventory::PART_OF_LABEL));
    // How many members carry `color`.
    let count_colored = |color: &'static str| {
        let configmaps = configmaps.clone();
        let members = members.clone();
        async move {
            configmaps
                .list(&members)
                .await
                .expect("list")
                .items
                .iter()
                .filter(|c| {
                    c.data
                        .as_ref()
                        .and_then(|d| d.get("color"))
                        .map(String::as_str)
                        == Some(color)
                })
                .count()
        }
    };
    // The agent binary, and its stderr line by line.
    let spawn = || {
        let mut child = support::tether_command()
            .args(["agent", "--concurrency", "2", "-n", &ns.name])
            .env("TETHER_CACHE_DIR", dir.path().join("cache"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the tether binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        (child, received)
    };
    // Waits for a stderr line containing `text`.
    let wait_for_line = |received: &std::sync::mpsc::Receiver<String>, text: &str| {
        let mut seen = Vec::new();
        loop {
            match received.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(text) => return,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {text:?} on stderr; saw:\n{}", seen.join("\n")),
            }
        }
    };
    // Waits until the apply is under way: some, not all, objects carry `wanted`.
    let under_way = |wanted: &'static str| {
        let count_colored = &count_colored;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = count_colored(wanted).await;
                if done > 0 {
                    return done;
                }
                assert!(Instant::now() < deadline, "the apply did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // One SIGTERM in the middle of the first apply: the agent finishes it, writes the
    // status, and exits 0.
    let (mut agent, stderr) = spawn();
    let _stopped = support::KillOnDrop(agent.id());
    let seen = under_way("red").await;
    assert!(
        seen < 400,
        "the apply finished before the signal ({seen} objects)"
    );
    signal(agent.id(), "TERM");
    wait_for_line(&stderr, "shutting down after the reconciles in flight");
    let status = exit_within(&mut agent, Duration::from_secs(60))
        .await
        .expect("the agent exits within 60 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        configmaps.list(&members).await.expect("list").items.len(),
        400
    );
    let app = apps.get("big").await.expect("app");
    assert_eq!(
        applied(&app),
        Some(first.as_str()),
        "the finished apply is recorded in the status"
    );

    // Two signals in the middle of the next apply: it is abandoned at once. Every object
    // written is still a recorded member (the parent lists ConfigMaps), and the next agent
    // completes the revision.
    write_all("blue");
    let second = repo.commit("all blue");
    let (mut agent, stderr) = spawn();
    let _stopped = support::KillOnDrop(agent.id());
    let seen = under_way("blue").await;
    signal(agent.id(), "TERM");
    // The second signal once the first is handled (two at once may arrive as one).
    wait_for_line(&stderr, "shutting down after the reconciles in flight");
    signal(agent.id(), "TERM");
    let status = exit_within(&mut agent, Duration::from_secs(5))
        .await
        .expect("the agent exits within 5 s of a second SIGTERM");
    assert_eq!(status.code(), Some(143), "exit status {status}");
    let blue = count_colored("blue").await;
    assert!(
        (seen..400).contains(&blue),
        "{blue} of 400 objects were updated when the apply was abandoned (at least {seen} before the signal)"
    );
    assert_ne!(
        applied(&apps.get("big").await.expect("app")),
        Some(second.as_str())
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let parent = secrets
        .get("tether-big")
        .await
        .expect("the ApplySet parent");
    assert_eq!(
        parent
            .annotations()
            .get("applyset.kubernetes.io/contains-group-kinds")
            .map(String::as_str),
        Some("ConfigMap")
    );
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    until(
        &apps,
        "big",
        "the abandoned revision completed by the next agent",
        |a| applied(a) == Some(second.as_str()),
    )
    .await;
    let blue = count_colored("blue").await;
    assert_eq!(blue, 400);
    agent.stop().await.expect("the agent stops");
}

/// Regression: a full sync that failed used to leave the drift watch vouching for the
/// set, so the retry took the no-op path and wrote Synced over a hand edit it had failed
/// to correct.
#[tokio::test]
async fn a_drift_correction_that_fails_is_retried_and_never_reported_as_synced() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-refused").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("guarded", "blue"));
    let commit = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "guarded",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true,
                           "retry": {"limit": 100, "backoff": "1s"}}
        }),
    )
    .await;
    until(&apps, "guarded", "first sync", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;

    // Git's value can no longer be written back, so the correction fails.
    let frozen = support::ConfigMapPolicy::create(
        &client,
        &ns.name,
        "!has(object.data) || !('color' in object.data) || object.data.color != 'blue'",
        "blue is frozen",
        configmap_json("probe", "blue"),
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configmaps
        .patch(
            "guarded",
            &PatchParams::apply("hand-edit").force(),
            &Patch::Apply(configmap_json("guarded", "red")),
        )
        .await
        .expect("hand edit");
    until(&apps, "guarded", "the failed correction reported", |a| {
        ready(a).is_some_and(|(status, message)| {
            status == "False" && message.contains("blue is frozen")
        })
    })
    .await;
    // Several retries (1 s, 2 s, 4 s apart): none may claim Synced while the edit stays.
    let watched_until = Instant::now() + Duration::from_secs(8);
    let mut reads = 0;
    while Instant::now() < watched_until {
        let app = apps.get("guarded").await.expect("get");
        let live = configmaps.get("guarded").await.expect("get");
        let color = live.data.unwrap_or_default().remove("color");
        assert_eq!(color.as_deref(), Some("red"), "the policy keeps blue out");
        let (status, message) = ready(&app).expect("a Ready condition");
        assert_eq!(
            status, "False",
            "Ready while the cluster differs from Git: {message}"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reads > 10);
    let failures = apps
        .get("guarded")
        .await
        .expect("get")
        .status
        .expect("status")
        .failures;
    assert!(failures >= 3, "retried {failures} times");

    drop(frozen);
    within_10_s("the edit corrected once the policy is gone", || async {
        configmaps
            .get("guarded")
            .await
            .expect("get")
            .data
            .unwrap_or_default()["color"]
            == "blue"
    })
    .await;
    until(&apps, "guarded", "Ready again", |a| {
        ready(a).is_some_and(|(status, _)| status == "True")
    })
    .await;
    let _ = agent.stop().await;
}

/// Regression: a sync that began while a hand edit waited to be put back was pinned to the
/// revision already applied, even when someone had asked for a sync (or a webhook had
/// announced a push): it applied the old revision, counted the request as done, and the
/// new commit waited for the next poll. In the drift torture test an edit made during the
/// sync of a new commit so kept the Helm app on its old commit until the backstop ran.
/// Here a dependency holds the Application back while both wait, so that one reconcile
/// meets them together.
#[tokio::test]
async fn a_sync_asked_for_while_a_hand_edit_waits_applies_the_new_commit() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-unpinned").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("guarded", "blue"));
    repo.write("gate/a.yaml", &configmap("gate", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    // Orphan: deleted at once (its objects are not what this test is about).
    let gate = json!({
        "source": {"repoURL": daemon.url("deploy"), "path": "gate"},
        "destination": {"namespace": ns.name},
        "deletionPolicy": "Orphan"
    });
    create_application(&apps, "gate", gate.clone()).await;
    create_application(
        &apps,
        "guarded",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "dependsOn": [{"name": "gate"}],
            "syncPolicy": {"interval": "1h", "selfHeal": true}
        }),
    )
    .await;
    until(&apps, "guarded", "first sync", |a| {
        applied(a) == Some(first.as_str()) && ready(a).is_some_and(|(status, _)| status == "True")
    })
    .await;

    // The dependency goes away: the Application is held back.
    apps.delete("gate", &Default::default())
        .await
        .expect("gate deleted");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configmaps
        .patch(
            "guarded",
            &PatchParams::apply("hand-edit").force(),
            &Patch::Apply(configmap_json("guarded", "red")),
        )
        .await
        .expect("hand edit");
    until(&apps, "guarded", "held back", |a| {
        ready(a).is_some_and(|(_, message)| message.contains("waiting for Application gate"))
    })
    .await;
    // Meanwhile a new commit, and someone asks for a sync.
    repo.write("app/a.yaml", &configmap("guarded", "green"));
    let second = repo.commit("second");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    apps.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            tether::application::SYNC_REQUEST_ANNOTATION: now}}})),
    )
    .await
    .expect("sync requested");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        configmaps
            .get("guarded")
            .await
            .expect("get")
            .data
            .unwrap_or_default()["color"],
        "red",
        "nothing is applied while the dependency is missing"
    );

    // The dependency is back: the next reconcile meets the edit and the request together.
    create_application(&apps, "gate", gate).await;
    let app = until(&apps, "guarded", "the requested sync", |a| {
        a.status
            .as_ref()
            .is_some_and(|s| s.last_sync_request.as_deref() == Some(now.as_str()))
    })
    .await;
    assert_eq!(
        applied(&app),
        Some(second.as_str()),
        "the sync asked for applied the old revision"
    );
    let live = configmaps.get("guarded").await.expect("get");
    assert_eq!(live.data.unwrap_or_default()["color"], "green");
    let _ = agent.stop().await;
}

/// Hooks in the agent: the same engine as `tether apply`. A failing PreSync hook leaves
/// nothing written, says so in the status, in an Event naming the hook, and in history;
/// once Git fixes it, the next commit syncs and history records the hooks that ran.
#[tokio::test]
async fn the_agent_runs_hooks_and_records_each_result() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-hooks").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let migrate = |fails: bool| {
        let failing = if fails {
            "  activeDeadlineSeconds: 2\n  backoffLimit: 0\n"
        } else {
            ""
        };
        let placement = if fails {
            "      nodeSelector: {nowhere: \"true\"}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: migrate-\n  annotations: {{argocd.argoproj.io/hook: PreSync, argocd.argoproj.io/hook-delete-policy: HookSucceeded}}\nspec:\n{failing}  template:\n    spec:\n      restartPolicy: Never\n{placement}      containers:\n      - name: run\n        image: registry.invalid/migrate:1\n"
        )
    };
    repo.write("app/a.yaml", &configmap("settings", "blue"));
    repo.write("app/migrate.yaml", &migrate(true));
    repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "hooked",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "retry": {"limit": 1}}
        }),
    )
    .await;
    let failed = until(&apps, "hooked", "the hook's failure reported", |a| {
        ready(a).is_some_and(|(status, message)| {
            status == "False" && message.contains("PreSync hook Job.batch/migrate-")
        })
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        configmaps.get_opt("settings").await.expect("get").is_none(),
        "nothing written after a failed PreSync hook"
    );
    let history = failed.status.expect("status").history;
    assert_eq!(history[0].result, "Failed");
    assert_eq!(history[0].hooks.len(), 1);
    assert_eq!(history[0].hooks[0].phase, "PreSync");
    assert_eq!(history[0].hooks[0].result, "Failed");
    assert!(history[0].hooks[0].object.starts_with("Job/migrate-"));
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    within_10_s("an Event names the failing hook", || async {
        events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("HookFailed")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("Job.batch/migrate-"))
            })
    })
    .await;

    repo.write("app/migrate.yaml", &migrate(false));
    let fixed = repo.commit("the migration works");
    apps.patch(
        "hooked",
        &PatchParams::default(),
        &Patch::Merge(tether::application::actions::sync()),
    )
    .await
    .expect("sync requested");
    let app = until(&apps, "hooked", "the fixed commit applied", |a| {
        applied(a) == Some(fixed.as_str())
    })
    .await;
    let entry = &app.status.expect("status").history[0];
    assert_eq!(entry.result, "Succeeded");
    assert_eq!(entry.hooks.len(), 1, "{:?}", entry.hooks);
    assert_eq!(entry.hooks[0].result, "Succeeded");
    assert_eq!(
        configmaps
            .get("settings")
            .await
            .expect("get")
            .data
            .expect("data")["color"],
        "blue"
    );
    let out = support::tether(&["history", "hooked", "-n", &ns.name]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("PreSync hook Job/migrate-"), "{said}");
    assert!(
        said.contains("Succeeded") && said.contains("Failed"),
        "{said}"
    );
    let _ = agent.stop().await;
}

/// A write disguised as tether's own (someone applying with tether's field manager, in a
/// later second, so that its entry gets a new time exactly as tether's next apply would) was
/// once a write only the backstop found. The agent now knows its writes by what they carry
/// (DESIGN rule 12): the watches report it, it is corrected at once, and the backstop, still
/// planning every 3 s, finds nothing they missed.
#[tokio::test]
async fn a_write_disguised_as_tethers_is_seen_by_the_watches_not_left_to_the_backstop() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-backstop").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("disguised", "blue"));
    let commit = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            verify_interval: Some(Duration::from_secs(3)),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "disguised",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true}
        }),
    )
    .await;
    until(&apps, "disguised", "first sync", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let metric = "tether_drift_missed_total";
    assert_eq!(support::agent::agent_metric(port, metric).await, 0.0);
    // In a later second than tether's apply, so that its entry gets a new time, exactly as
    // tether's own next apply would.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let disguised = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "disguised", "labels": {"applyset.kubernetes.io/part-of": apps.get("disguised").await.expect("get").status.expect("status").apply_set.expect("set").id}},
        "data": {"color": "red"}});
    let edited = Instant::now();
    configmaps
        .patch(
            "disguised",
            &PatchParams::apply("tether").force(),
            &Patch::Apply(disguised),
        )
        .await
        .expect("an apply as tether");
    let deadline = edited + Duration::from_secs(15);
    loop {
        let color = configmaps
            .get("disguised")
            .await
            .expect("get")
            .data
            .unwrap_or_default()["color"]
            .clone();
        if color == "blue" {
            break;
        }
        assert!(Instant::now() < deadline, "not corrected within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = edited.elapsed();
    eprintln!("the disguised write was corrected after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "left to the backstop: {took:?}"
    );
    // Let the backstop plan once more: it finds nothing the watches missed.
    let verifications = "tether_drift_verifications_total";
    let before = support::agent::agent_metric(port, verifications).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while support::agent::agent_metric(port, verifications).await < before + 1.0 {
        assert!(Instant::now() < deadline, "the backstop did not run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(support::agent::agent_metric(port, metric).await, 0.0);
    let _ = agent.stop().await;
}

/// A new commit that does not render (a Kustomization naming a missing file, a chart whose
/// template fails), and then a Git server that is gone: the Applications say why, keep the
/// last good revision running, and nothing is pruned.
#[tokio::test]
async fn a_broken_commit_or_a_lost_git_server_keeps_what_the_last_good_one_applied() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-broken").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("kust/kustomization.yaml", "resources: [a.yaml, b.yaml]\n");
    repo.write("kust/a.yaml", &configmap("kust-a", "blue"));
    repo.write("kust/b.yaml", &configmap("kust-b", "blue"));
    repo.write(
        "chart/Chart.yaml",
        "apiVersion: v2\nname: c\nversion: 0.1.0\n",
    );
    repo.write("chart/templates/cm.yaml", &configmap("chart-a", "blue"));
    let good = repo.commit("good");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(
        &client,
        AgentOptions {
            kustomize_bin: Some(support::tool("kustomize")),
            helm_bin: Some(support::tool("helm")),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for name in ["kust", "chart"] {
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": name},
                "destination": {"namespace": ns.name},
                "syncPolicy": {"interval": "1h", "prune": true, "retry": {"limit": 1}}
            }),
        )
        .await;
        until(&apps, name, "first sync", |a| {
            applied(a) == Some(good.as_str())
        })
        .await;
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let all_there = || async {
        for name in ["kust-a", "kust-b", "chart-a"] {
            assert!(
                configmaps.get_opt(name).await.expect("get").is_some(),
                "{name} was removed"
            );
        }
    };

    // A commit that does not render.
    repo.write(
        "kust/kustomization.yaml",
        "resources: [a.yaml, missing.yaml]\n",
    );
    repo.write(
        "chart/templates/cm.yaml",
        "{{ fail \"this chart refuses to render\" }}\n",
    );
    let broken = repo.commit("broken");
    for (name, says) in [
        ("kust", "missing.yaml"),
        ("chart", "this chart refuses to render"),
    ] {
        request_sync(&apps, name).await;
        let app = until(&apps, name, "the render failure reported", |a| {
            ready(a).is_some_and(|(status, message)| status == "False" && message.contains(says))
        })
        .await;
        let status = app.status.expect("status");
        assert_eq!(status.last_applied_revision.as_deref(), Some(good.as_str()));
        assert_eq!(
            status.last_attempted_revision.as_deref(),
            Some(broken.as_str())
        );
    }
    all_there().await;

    // The Git server goes away.
    drop(daemon);
    request_sync(&apps, "kust").await;
    until(&apps, "kust", "the lost Git server reported", |a| {
        ready(a).is_some_and(|(status, message)| {
            status == "False" && message.contains("cannot reach the Git server")
        })
    })
    .await;
    all_there().await;
    let _ = agent.stop().await;
}

#[tokio::test]
async fn notifications_tell_syncs_drift_and_failures_signed_with_retries() {
    use hmac::Mac;
    use support::agent::Receiver;
    use tether::agent::notify::{Endpoint, Format, NotifyOptions};
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "agent-notify").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/a.yaml", &configmap("a", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let receiver = Receiver::start(200);
    let broken = Receiver::start(500);
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            notify: NotifyOptions {
                targets: vec![
                    Endpoint {
                        url: format!("{}/generic", receiver.url),
                        format: Format::Generic,
                    },
                    Endpoint {
                        url: format!("{}/slack", receiver.url),
                        format: Format::Slack,
                    },
                    Endpoint {
                        url: broken.url.clone(),
                        format: Format::Generic,
                    },
                ],
                secret: Some(b"n0tify".to_vec()),
                attempts: 3,
                first_retry: Duration::from_millis(100),
                ..Default::default()
            },
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "told",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true}
        }),
    )
    .await;
    until(&apps, "told", "first sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;

    // Waits for a generic notice of `event` and checks its signature and body.
    let notice = |event: &'static str| {
        let receiver = &receiver;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let found = receiver.taken().into_iter().find(|r| {
                    r.path == "/generic"
                        && r.headers.get("x-tether-event").map(String::as_str) == Some(event)
                });
                if let Some(found) = found {
                    let mut mac =
                        hmac::Hmac::<sha2::Sha256>::new_from_slice(b"n0tify").expect("key");
                    mac.update(&found.body);
                    let expected: String = mac
                        .finalize()
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    assert_eq!(
                        found.headers.get("x-tether-signature"),
                        Some(&format!("sha256={expected}")),
                        "{event}: the signature is the HMAC of the body"
                    );
                    return serde_json::from_slice::<serde_json::Value>(&found.body).expect("JSON");
                }
                assert!(
                    Instant::now() < deadline,
                    "no {event} notice: {:?}",
                    receiver.taken()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let synced = notice("SyncSucceeded").await;
    assert_eq!(synced["application"]["name"], "told");
    assert_eq!(synced["application"]["namespace"], ns.name.as_str());
    assert_eq!(synced["revision"], first.as_str());
    let slack: Vec<_> = receiver
        .taken()
        .into_iter()
        .filter(|r| r.path == "/slack")
        .collect();
    let text: serde_json::Value = serde_json::from_slice(&slack[0].body).expect("JSON");
    assert!(
        text["text"]
            .as_str()
            .is_some_and(|t| t.contains("/told* SyncSucceeded")),
        "{text}"
    );
    assert!(!slack[0].headers.contains_key("x-tether-signature"));

    // A hand edit, put back: DriftCorrected.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "red"}})),
    )
    .await
    .expect("hand edit");
    let corrected = notice("DriftCorrected").await;
    assert_eq!(corrected["revision"], first.as_str());

    // A commit that does not render: SyncFailed, once for the streak.
    repo.write("app/a.yaml", "kind: [unclosed\n");
    let bad = repo.commit("broken");
    support::agent::request_sync(&apps, "told").await;
    let failed = notice("SyncFailed").await;
    assert_eq!(failed["revision"], bad.as_str());
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("a.yaml")),
        "{failed}"
    );

    // The receiver that fails got each notice 3 times, then it was counted as dead.
    let deadline = Instant::now() + Duration::from_secs(15);
    while support::agent::agent_metric(port, "tether_notifications_dead_letter_total").await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "{}",
            support::agent::agent_metrics(port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broken.taken().len(), 9, "3 notices × 3 attempts");
    let _ = agent.stop().await;
}
