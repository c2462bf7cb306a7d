//! Synced stays true at the edges (issue 22): another tether process writing into an
//! Application's set is drift like anyone's write (DESIGN rule 12); a member whose ApplySet
//! label was removed is still tether's, and an object another owner holds fails alone while
//! the rest keeps being synced and healed (rule 13).

use crate::support;
use support::fixtures::configmap;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{
    applied, create_application, fails_with, health, options_for, ready, start_agent, until,
    within_10_s,
};
use support::git::{GitDaemon, GitRepo};
use support::{NodeLabel, TestNamespace, cluster, kubectl, tether};
use tether::agent::{Application, install_crd};

const PART_OF: &str = "applyset.kubernetes.io/part-of";

async fn color(configmaps: &Api<ConfigMap>, name: &str) -> Option<String> {
    configmaps
        .get_opt(name)
        .await
        .expect("read")?
        .data?
        .get("color")
        .cloned()
}

fn synced(app: &Application) -> bool {
    app.status
        .as_ref()
        .and_then(|s| s.sync.as_ref())
        .is_some_and(|s| s.status == "Synced")
}

#[tokio::test]
async fn a_tether_apply_into_an_applications_set_is_refused_and_once_forced_put_back_as_drift() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "second-writer").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("web/settings.yaml", &configmap("settings", "blue"));
    repo.write("web/other.yaml", &configmap("other", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    // An hour between polls and no backstop: only the watches can explain a correction.
    create_application(
        &apps,
        "web",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "web"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true, "prune": true}
        }),
    )
    .await;
    until(&apps, "web", "first sync", |a| {
        applied(a) == Some(first.as_str()) && synced(a)
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    // A laptop's folder with a changed manifest, into the Application's set.
    let laptop = dir.path().join("laptop");
    std::fs::create_dir_all(&laptop).expect("folder");
    std::fs::write(laptop.join("settings.yaml"), configmap("settings", "red")).expect("write");
    let laptop_apply = |extra: &[&str]| {
        let mut args = vec![
            "apply",
            "--path",
            laptop.to_str().expect("utf-8"),
            "--app",
            "web",
            "-n",
            &ns.name,
            "--no-prune",
        ];
        args.extend_from_slice(extra);
        tether(&args)
    };
    let refused = laptop_apply(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let parent = kubectl(&["get", "secret", "-n", &ns.name, "tether-web", "-o", "yaml"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{stderr}\n{}",
        String::from_utf8_lossy(&parent.stdout)
    );
    assert!(
        stderr.contains(&format!("is the set of Application {}/web", ns.name))
            && stderr.contains("--override-application")
            && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert_eq!(
        color(&configmaps, "settings").await.as_deref(),
        Some("blue")
    );

    // Forced: written, with a warning; the agent sees another process's write as drift.
    let forced = laptop_apply(&["--override-application"]);
    let done = Instant::now();
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(stderr.contains("will see this as drift"), "{stderr}");
    // Sampled every 100 ms for 4 s: put back within 2 s of the apply's return, and from
    // then on never different while the Application says Synced.
    let mut samples = Vec::new();
    while done.elapsed() < Duration::from_secs(4) {
        let app = apps.get("web").await.expect("the Application");
        let value = color(&configmaps, "settings").await;
        samples.push((done.elapsed(), synced(&app), value));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let put_back = samples
        .iter()
        .find(|(_, _, value)| value.as_deref() == Some("blue"))
        .map(|(at, _, _)| *at);
    eprintln!("the other writer's change was put back after {put_back:?}");
    assert!(
        put_back.is_some_and(|at| at <= Duration::from_secs(2)),
        "not put back within 2 s: {samples:?}"
    );
    let lies: Vec<_> = samples
        .iter()
        .filter(|(at, synced, value)| {
            *at > Duration::from_secs(2) && *synced && value.as_deref() != Some("blue")
        })
        .collect();
    assert!(
        lies.is_empty(),
        "Synced while the cluster differed: {lies:?}"
    );
    let app = until(&apps, "web", "the correction recorded", |a| {
        a.status.as_ref().is_some_and(|s| {
            s.history.iter().any(|h| {
                h.message
                    .as_deref()
                    .unwrap_or("")
                    .contains("corrected drift")
            })
        })
    })
    .await;
    assert!(synced(&app));
    // The operator's view agrees.
    let diff = tether(&["diff", "web", "-n", &ns.name]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let _ = agent.stop().await;
}

#[tokio::test]
async fn a_lost_label_is_put_back_and_an_object_another_owner_holds_fails_alone() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "lost-label").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("web/a.yaml", &configmap("a", "blue"));
    repo.write("web/b.yaml", &configmap("b", "blue"));
    repo.write("twin/a.yaml", &configmap("a", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let spec = |path: &str| {
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": path},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "selfHeal": true, "prune": true}
        })
    };
    create_application(&apps, "web", spec("web")).await;
    until(&apps, "web", "first sync", |a| {
        applied(a) == Some(first.as_str()) && synced(a)
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let labelled = |name: &'static str| {
        let configmaps = configmaps.clone();
        async move {
            configmaps
                .get(name)
                .await
                .expect("read")
                .labels()
                .contains_key(PART_OF)
        }
    };
    let hand_edit = |name: &'static str| {
        let configmaps = configmaps.clone();
        async move {
            configmaps
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"color": "red"}})),
                )
                .await
                .expect("hand edit");
        }
    };

    // Someone removes the ApplySet label of a member: it is still tether's, and comes back.
    let out = kubectl(&[
        "label",
        "-n",
        &ns.name,
        "configmap",
        "a",
        &format!("{PART_OF}-"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within_10_s("the label put back", || labelled("a")).await;
    // ... and the others keep being healed.
    hand_edit("b").await;
    within_10_s("b healed", || async {
        color(&configmaps, "b").await.as_deref() == Some("blue")
    })
    .await;
    until(&apps, "web", "synced again", synced).await;

    // A second Application rendering the same object: its error names the first.
    create_application(&apps, "twin", spec("twin")).await;
    let message = fails_with(&apps, "twin", "ConfigMap/a").await;
    assert!(
        message.contains(&format!("belongs to Application {}/web", ns.name)),
        "{message}"
    );
    let twin = apps.get("twin").await.expect("twin");
    assert!(!synced(&twin), "{:?}", twin.status);
    // The operator's view agrees: it differs.
    let diff = tether(&["diff", "twin", "-n", &ns.name]);
    assert_eq!(
        diff.status.code(),
        Some(2),
        "{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    // An object that truly belongs to someone else: it fails alone, named with what to do;
    // the rest of the commit is applied, and the others keep being healed.
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "c"}, "data": {"color": "theirs"}
            }))
            .expect("a ConfigMap"),
        )
        .await
        .expect("someone's ConfigMap");
    repo.write("web/c.yaml", &configmap("c", "blue"));
    repo.write("web/b.yaml", &configmap("b", "green"));
    let second = repo.commit("second");
    support::agent::request_sync(&apps, "web").await;
    let message = fails_with(&apps, "web", "ConfigMap/c").await;
    assert!(
        message.contains("exists and is not managed by tether")
            && message.contains("delete it, rename it in Git"),
        "{message}"
    );
    within_10_s("the rest of the second commit applied", || async {
        color(&configmaps, "b").await.as_deref() == Some("green")
    })
    .await;
    let app = apps.get("web").await.expect("web");
    assert!(
        !synced(&app),
        "Synced while an object failed: {:?}",
        app.status
    );
    assert_eq!(
        app.status
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .map(|s| s.status.as_str()),
        Some("OutOfSync")
    );
    assert_eq!(ready(&app).map(|r| r.0).as_deref(), Some("False"));
    assert_eq!(color(&configmaps, "c").await.as_deref(), Some("theirs"));
    hand_edit("a").await;
    within_10_s("a healed while c fails", || async {
        color(&configmaps, "a").await.as_deref() == Some("blue")
    })
    .await;
    let _ = second;
    let _ = agent.stop().await;
}

#[tokio::test]
async fn an_application_without_credentials_never_reads_what_one_with_them_fetched() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "git-tenants").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "private");
    repo.write("app/cm.yaml", &configmap("private-data", "blue"));
    let commit = repo.commit("first");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret\n").expect("write");
    let server = support::git::HttpGitServer::start(
        &root,
        Some(("alice", &password_file)),
        Some(&dir.path().join("tls")),
    );
    let ca = std::fs::read_to_string(server.ca_cert.as_ref().expect("https")).expect("CA");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    // The tenant's credentials; the other tenant's Secret holds the CA only (trust, no
    // identity).
    for (name, data) in [
        (
            "git",
            json!({"username": "alice", "password": "s3cret", "caFile": ca}),
        ),
        ("ca-only", json!({"caFile": ca})),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                    .expect("a Secret"),
            )
            .await
            .expect("a Secret");
    }
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let spec = |reference: serde_json::Value, credentials: bool| {
        let secret = if credentials { "git" } else { "ca-only" };
        let source = json!({
            "repoURL": server.url("private"), "path": "app", "ref": reference,
            "secretRef": {"name": secret}
        });
        json!({
            "source": source,
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        })
    };
    create_application(&apps, "private", spec(json!({"branch": "main"}), true)).await;
    until(&apps, "private", "the private repository synced", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    // Two Applications of another tenant name the same URL without credentials, one by the
    // commit the first fetched (cached on disk), one by branch (listed seconds ago): each
    // gets the server's refusal, and nothing of the repository is applied for them.
    for (name, reference) in [
        ("by-commit", json!({"commit": commit})),
        ("by-branch", json!({"branch": "main"})),
    ] {
        create_application(&apps, name, spec(reference, false)).await;
        let message = fails_with(&apps, name, "authentication").await;
        assert!(!message.contains("s3cret"), "{message}");
        let app = apps.get(name).await.expect("the Application");
        assert_eq!(applied(&app), None, "{name} applied a private commit");
    }
    let _ = agent.stop().await;
}

/// Health follows the cluster, not the poll (issue 22 §4): a Deployment that cannot be
/// scheduled until a node gets a label is Progressing; once it rolls out, its Application is
/// Healthy within 2 s (the poll is an hour away). A destination namespace that does not exist
/// is created with `CreateNamespace=true` (Argo CD's option), and is not a member.
#[tokio::test]
async fn health_follows_a_rollout_at_once_and_create_namespace_makes_the_destination() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "follows").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let node = NodeLabel::new();
    repo.write("web/web.yaml", &node.deployment());
    let created = format!("{}-made", ns.name);
    repo.write("made/settings.yaml", &configmap("settings", "blue"));
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "web",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "web"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(&apps, "web", "synced and progressing", |a| {
        applied(a) == Some(first.as_str()) && synced(a) && health(a) == Some("Progressing")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = apps.get("web").await.expect("read");
    assert_eq!(health(&app), Some("Progressing"), "nothing can run yet");

    // A node that may run it: the rollout completes, and the Application says so at once.
    node.set(true);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    let mut rolled_out = None;
    let mut healthy = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && healthy.is_none() {
        if rolled_out.is_none() {
            let web = deployments.get("web").await.expect("read");
            if web.status.and_then(|s| s.available_replicas) == Some(1) {
                rolled_out = Some(Instant::now());
            }
        }
        if health(&apps.get("web").await.expect("read")) == Some("Healthy") {
            healthy = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.set(false);
    let rolled_out = rolled_out.expect("the Deployment rolled out");
    let healthy = healthy.expect("the Application turned Healthy");
    let after = healthy.saturating_duration_since(rolled_out);
    println!("Healthy {after:?} after the rollout completed");
    assert!(after < Duration::from_secs(2), "{after:?}");

    // A destination namespace that does not exist: refused without the option, created
    // with it (and not a member: the set holds only the ConfigMap).
    create_application(
        &apps,
        "made",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "made"},
            "destination": {"namespace": created},
            "syncPolicy": {"interval": "1h", "syncOptions": ["CreateNamespace=true"]}
        }),
    )
    .await;
    until(&apps, "made", "synced into a namespace it created", |a| {
        applied(a) == Some(first.as_str()) && synced(a)
    })
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let made = namespaces.get(&created).await.expect("created");
    assert!(
        !made.labels().contains_key(PART_OF),
        "the namespace is not a member"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &created);
    assert_eq!(
        color(&configmaps, "settings").await.as_deref(),
        Some("blue")
    );
    let _ = agent.stop().await;
    let _ = namespaces.delete(&created, &Default::default()).await;

    // The same option on the CLI, and an option tether does not know is refused.
    let cli_ns = format!("{}-cli", ns.name);
    let folder = dir.path().join("cli");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(folder.join("settings.yaml"), configmap("settings", "blue")).expect("write");
    let path = folder.to_str().expect("utf-8");
    let out = tether(&[
        "plan",
        "--path",
        path,
        "-n",
        &cli_ns,
        "--app",
        "cli",
        "--create-namespace",
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("+ create Namespace/{cli_ns}")),
        "{said}"
    );
    let out = tether(&[
        "apply",
        "--path",
        path,
        "-n",
        &cli_ns,
        "--app",
        "cli",
        "--create-namespace",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(namespaces.get_opt(&cli_ns).await.expect("read").is_some());
    let _ = namespaces.delete(&cli_ns, &Default::default()).await;
    let spec = tether::application::SyncPolicy {
        sync_options: vec!["Prune=false".into()],
        ..Default::default()
    };
    let err = spec.create_namespace().expect_err("refused");
    assert!(
        err.contains("Prune=false") && err.contains("CreateNamespace=true"),
        "{err}"
    );
}

/// Jsonnet folders render (issue 22 §5), with Argo CD's options on the Application
/// (`extVars`, `tlas`, `libs`), and a folder whose files render nothing while some were
/// skipped fails, naming them, instead of being "applied" empty.
#[tokio::test]
async fn a_jsonnet_folder_is_rendered_and_a_folder_of_skipped_files_is_never_applied_empty() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "jsonnet").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "guestbook/main.jsonnet",
        "local lib = import 'configmap.libsonnet';\nfunction(replicas) [lib.configmap('guestbook-' + std.extVar('env'), replicas)]\n",
    );
    repo.write(
        "lib/configmap.libsonnet",
        "{ configmap(name, replicas):: {apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: name}, data: {replicas: std.toString(replicas)}} }\n",
    );
    repo.write("skipped/helpers.libsonnet", "{}\n");
    repo.write("skipped/README.md", "Only helpers here.\n");
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "guestbook",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "guestbook"},
            "destination": {"namespace": ns.name},
            "render": {"jsonnet": {
                "extVars": [{"name": "env", "value": "prod"}],
                "tlas": [{"name": "replicas", "value": "1 + 2", "code": true}],
                "libs": ["lib"]
            }},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    create_application(
        &apps,
        "skipped",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "skipped"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "retry": {"limit": 1}}
        }),
    )
    .await;
    until(
        &apps,
        "guestbook",
        "the Jsonnet rendered and applied",
        |a| applied(a) == Some(first.as_str()) && synced(a),
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let made = configmaps.get("guestbook-prod").await.expect("rendered");
    assert_eq!(made.data.expect("data")["replicas"], "3");
    let failed = until(&apps, "skipped", "the empty render refused", |a| {
        ready(a).is_some_and(|(status, message)| {
            status == "False" && message.contains("no object rendered")
        })
    })
    .await;
    let (_, message) = ready(&failed).expect("ready");
    assert!(
        message.contains("skipped/helpers.libsonnet") && !message.contains("README"),
        "{message}"
    );
    assert!(!synced(&failed), "never Synced: {:?}", failed.status);
    let _ = agent.stop().await;
}

/// Two folders of one name (two repositories' `kustomize/`) applied into one namespace with
/// the default app name would share one set, and the second would prune the first's
/// objects. The set records its source; the second is refused, naming --app, and nothing
/// of the first is touched (issue 22 §7).
#[tokio::test]
async fn two_folders_of_one_name_never_share_a_set_by_default() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "same-name").await;
    let dir = tempfile::tempdir().expect("temp");
    let first = dir.path().join("one/app");
    let second = dir.path().join("two/app");
    for (folder, name) in [(&first, "first"), (&second, "second")] {
        std::fs::create_dir_all(folder).expect("folder");
        std::fs::write(folder.join("cm.yaml"), configmap(name, "blue")).expect("write");
    }
    let apply = |folder: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "apply",
            "--path",
            folder.to_str().expect("utf-8"),
            "-n",
            &ns.name,
        ];
        args.extend_from_slice(extra);
        tether(&args)
    };
    let out = apply(&first, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = apply(&second, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("comes from the folder's name") && said.contains("--app"),
        "{said}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(color(&configmaps, "first").await.as_deref(), Some("blue"));
    assert!(configmaps.get_opt("second").await.expect("read").is_none());
    // The same folder again is the same source; a name given is the user's choice.
    let out = apply(&first, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = apply(&second, &["--app", "app-two"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(color(&configmaps, "first").await.as_deref(), Some("blue"));
    assert_eq!(color(&configmaps, "second").await.as_deref(), Some("blue"));
}

/// A failed PostSync hook fails the Application until a sync runs its hooks to the end
/// (issue 22 §3): the retry runs the hook again (a new Job), the Application is never
/// Synced meanwhile, and once Git fixes the hook the next sync runs it and is Synced.
#[tokio::test]
async fn the_agent_retries_a_failed_hook_and_is_never_synced_until_it_succeeds() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "hook-retry").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let check = |fails: bool| {
        let (failing, placement) = if fails {
            (
                "  activeDeadlineSeconds: 2\n  backoffLimit: 0\n",
                "      nodeSelector: {nowhere: \"true\"}\n",
            )
        } else {
            ("", "")
        };
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: check\n  annotations: {{argocd.argoproj.io/hook: PostSync}}\nspec:\n{failing}  template:\n    spec:\n      restartPolicy: Never\n{placement}      containers:\n      - name: run\n        image: registry.invalid/check:1\n"
        )
    };
    repo.write("app/settings.yaml", &configmap("settings", "blue"));
    repo.write("app/check.yaml", &check(true));
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
            "syncPolicy": {"interval": "1h", "retry": {"limit": 5, "backoff": "1s"}}
        }),
    )
    .await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let mut uids = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = 0;
    while Instant::now() < deadline && uids.len() < 2 {
        let app = apps.get("hooked").await.expect("read");
        assert!(
            !synced(&app),
            "Synced while its hook failed: {:?}",
            app.status
        );
        if let Some(job) = jobs.get_opt("check").await.expect("read") {
            uids.insert(job.metadata.uid.expect("uid"));
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        uids.len() >= 2,
        "the retry ran the hook again ({samples} samples)"
    );
    let app = apps.get("hooked").await.expect("read");
    let (status, message) = ready(&app).expect("ready");
    assert_eq!(status, "False", "{message}");
    assert!(
        message.contains("PostSync hook Job.batch/check"),
        "{message}"
    );

    repo.write("app/check.yaml", &check(false));
    let fixed = repo.commit("the check passes");
    apps.patch(
        "hooked",
        &PatchParams::default(),
        &Patch::Merge(tether::application::actions::sync()),
    )
    .await
    .expect("sync requested");
    until(
        &apps,
        "hooked",
        "the fixed hook ran and the set is in sync",
        |a| applied(a) == Some(fixed.as_str()) && synced(a),
    )
    .await;
    let _ = agent.stop().await;
}
