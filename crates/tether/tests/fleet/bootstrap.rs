//! `tether bootstrap`: the install is committed to a folder of a real Git repository (a bare
//! repository, pushed to with the real `git`), applied from there as Application `tether`,
//! and the agent then manages it: its first sync writes nothing, and a commit to the folder
//! changes the installed Deployment.

use crate::support;

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use support::agent::{applied, options_for, request_sync, start_agent, until};
use support::git::{GIT_ENV, run};
use support::{TestNamespace, cluster};
use tether::agent::{Application, install_crd};

/// The cluster-scoped rights the install made for namespace `.0`, deleted when dropped.
struct ClusterRights(String);

impl Drop for ClusterRights {
    fn drop(&mut self) {
        let names = [
            format!("tether-agent:{}", self.0),
            format!("tether-agent-writer:{}", self.0),
        ];
        for name in names {
            let _ = support::kubectl(&[
                "delete",
                "clusterrole,clusterrolebinding",
                &name,
                "--ignore-not-found",
            ]);
        }
    }
}

fn bootstrap(repo: &str, ns: &str, cache: &Path) -> (String, String) {
    let out = support::tether_command()
        .args([
            "bootstrap",
            "--repo",
            repo,
            "--path",
            "clusters/local/tether",
        ])
        .args(["--image", "tether:test", "--timeout", "90s", "-n", ns])
        .env("TETHER_CACHE_DIR", cache)
        .output()
        .expect("tether bootstrap runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn bootstrap_commits_the_install_and_the_agent_then_manages_it_from_git() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "boot").await;
    let _rights = ClusterRights(ns.name.clone());
    let dir = tempfile::tempdir().expect("temp");
    let bare = dir.path().join("fleet.git");
    run(
        "git",
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            bare.to_str().expect("utf-8"),
        ],
        dir.path(),
        &GIT_ENV,
    );
    let url = format!("file://{}", bare.display());
    let cache = dir.path().join("cache");

    let (first_out, _) = bootstrap(&url, &ns.name, &cache);
    eprintln!("{first_out}");
    assert!(first_out.contains("pushed"), "{first_out}");
    assert!(
        first_out.contains("Healthy"),
        "the Deployment became Available: {first_out}"
    );
    let files = run(
        "git",
        &["ls-tree", "-r", "--name-only", "main"],
        &bare,
        &GIT_ENV,
    );
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "clusters/local/tether/application.yaml",
            "clusters/local/tether/install.yaml"
        ]
    );
    let install = run(
        "git",
        &["show", "main:clusters/local/tether/install.yaml"],
        &bare,
        &GIT_ENV,
    );
    assert!(!install.contains("kind: Secret"), "tokens never go to Git");
    let commit = run("git", &["rev-parse", "main"], &bare, &GIT_ENV);

    // Again: nothing new to commit, nothing to write.
    let (again, _) = bootstrap(&url, &ns.name, &cache);
    assert!(again.contains("unchanged:"), "{again}");
    assert!(again.contains("0 created, 0 updated, 0 pruned"), "{again}");
    assert_eq!(run("git", &["rev-parse", "main"], &bare, &GIT_ENV), commit);

    // The agent takes over: its first sync of Application `tether` writes nothing.
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let synced = until(
        &apps,
        "tether",
        "the agent's sync of its own install",
        |a| applied(a) == Some(commit.as_str()),
    )
    .await;
    let status = synced.status.expect("status");
    assert!(
        status.history.is_empty(),
        "the first sync found everything in place and wrote nothing: {:?}",
        status.history
    );
    assert_eq!(status.sync.expect("sync").status, "Synced");

    // A commit to the folder upgrades the install: here, the agent stopped (0 replicas).
    let work = dir.path().join("work");
    run(
        "git",
        &["clone", "-q", &url, work.to_str().expect("utf-8")],
        dir.path(),
        &GIT_ENV,
    );
    let file = work.join("clusters/local/tether/install.yaml");
    let text = std::fs::read_to_string(&file).expect("install.yaml");
    assert_eq!(
        text.matches("replicas: 1\n").count(),
        1,
        "one Deployment with 1 replica"
    );
    std::fs::write(&file, text.replace("replicas: 1\n", "replicas: 0\n")).expect("edit");
    run(
        "git",
        &["commit", "-q", "-am", "stop the agent"],
        &work,
        &GIT_ENV,
    );
    run("git", &["push", "-q", "origin", "main"], &work, &GIT_ENV);
    let second = run("git", &["rev-parse", "HEAD"], &work, &GIT_ENV);
    request_sync(&apps, "tether").await;
    until(&apps, "tether", "the commit to the install applied", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("tether-agent")
        .await
        .expect("the agent's Deployment");
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(0));
    let _ = agent.stop().await;
}
