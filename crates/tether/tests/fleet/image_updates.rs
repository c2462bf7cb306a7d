//! Image updates end to end: a new tag pushed to the real distribution registry (TLS,
//! htpasswd) → the agent commits the new reference to a real Gitea, signed with an SSH key
//! that the Application's own `verifyKeys` requires → the sync applies it and the
//! Deployment's Pods (kwok nodes) run the new image. Then the bad inputs: no tag matches the
//! policy, and a push the Git server refuses (wrong password) each give a Warning Event
//! naming why, with nothing pushed and no password shown.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use reqwest::Method;
use serde_json::{Value, json};
use support::agent::{applied, create_application, options_for, start_agent, until};
use support::git::{GitRepo, SshKey};
use support::gitea::{self, Gitea};
use support::registry::Registry;
use support::{TestNamespace, cluster, said, tether_offline};
use tether::agent::{Application, install_crd};

fn deployment(name: &str, image: &str, namespace: &str, policy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  \
         template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: web\n        \
         image: {image} # {{\"$imagepolicy\": \"{namespace}:{policy}\"}}\n"
    )
}

/// Pushes something under `tag` of `team/web` (what matters to a policy is the tag).
fn push_tag(registry: &Registry, dir: &std::path::Path, tag: &str) {
    let folder = dir.join(format!("image-{tag}"));
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("version"), tag).expect("write");
    let config = dir.join("docker-config.json");
    std::fs::write(&config, registry.docker_config()).expect("config");
    let out = tether_offline(&[
        "push",
        "artifact",
        &format!("{}:{tag}", registry.url("team/web")),
        "--path",
        folder.to_str().expect("utf-8 path"),
        "--registry-config",
        config.to_str().expect("utf-8 path"),
        "--registry-ca-file",
        registry
            .ca_cert
            .as_ref()
            .expect("TLS")
            .to_str()
            .expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "push {tag}: {}", said(&out));
}

/// The newest commit of main as Gitea's API shows it; Gitea indexes a push in the
/// background ("Git Repository is empty", 409, until then): asked again for up to 30 s.
fn head_of_main(gitea: &Gitea) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, commits) = gitea.api(
            Method::GET,
            &format!("/repos/{}/deploy/commits?sha=main&limit=1", gitea::USER),
            None,
        );
        if code == 200 {
            return commits[0].clone();
        }
        assert!(
            code == 409 && Instant::now() < deadline,
            "{code}: {commits}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn create_secret(secrets: &Api<Secret>, name: &str, data: Value) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
            .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("Secret created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tag_is_committed_to_gitea_signed_and_then_runs() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "images").await;
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), true);
    push_tag(&registry, dir.path(), "1.0.0");
    let gitea_dir = dir.path().join("gitea");
    std::fs::create_dir_all(&gitea_dir).expect("mkdir");
    let gitea = tokio::task::block_in_place(|| Gitea::start(&gitea_dir));
    let (code, created) = gitea.api(
        Method::POST,
        "/user/repos",
        Some(json!({"name": "deploy", "private": false, "default_branch": "main"})),
    );
    assert_eq!(code, 201, "{created}");

    let image = format!("{}/team/web", registry.host());
    let signing = SshKey::generate(dir.path(), "signing");
    let repo = GitRepo::init(&dir.path().join("work"), "deploy");
    for (folder, policy) in [("app", "web"), ("nomatch", "web9"), ("refused", "webr")] {
        repo.write(
            &format!("{folder}/deploy.yaml"),
            &deployment(folder, &format!("{image}:1.0.0"), &ns.name, policy),
        );
    }
    let first = repo.commit_ssh_signed("first", &signing.private);
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let ca = std::fs::read_to_string(registry.ca_cert.as_ref().expect("TLS")).expect("CA");
    create_secret(
        &secrets,
        "regcred",
        json!({".dockerconfigjson": registry.docker_config(), "caFile": ca}),
    )
    .await;
    create_secret(
        &secrets,
        "git",
        json!({"username": gitea::USER, "password": gitea::PASSWORD}),
    )
    .await;
    create_secret(
        &secrets,
        "git-wrong",
        json!({"username": gitea::USER, "password": "not-the-password"}),
    )
    .await;
    let key = std::fs::read_to_string(&signing.private).expect("key");
    create_secret(&secrets, "signing", json!({"sshPrivateKey": key})).await;

    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let spec = |path: &str, policy: &str, range: &str, git_secret: &str| {
        json!({
            "source": {
                "repoURL": gitea.clone_url("deploy"), "ref": {"branch": "main"}, "path": path,
                "secretRef": {"name": git_secret}, "verifyKeys": [signing.public_text()]
            },
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"},
            "imageUpdates": {
                "interval": "1s",
                "policies": [{"name": policy, "image": image, "policy": {"semver": {"range": range}}, "secretRef": {"name": "regcred"}}],
                "git": {"commit": {
                    "author": {"name": "tether-bot", "email": "bot@tether.example"},
                    "signingKey": {"secretRef": {"name": "signing"}}
                }}
            }
        })
    };
    create_application(&apps, "web", spec("app", "web", "^1", "git")).await;
    until(&apps, "web", "the first commit applied", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;

    // A new tag: committed by the agent (signed, so its own verifyKeys accept it), applied.
    let pushed = Instant::now();
    push_tag(&registry, dir.path(), "1.1.0");
    let deadline = Instant::now() + Duration::from_secs(60);
    let commit = loop {
        let head = tokio::task::block_in_place(|| head_of_main(&gitea));
        if head["sha"] != first.as_str() {
            break head;
        }
        assert!(Instant::now() < deadline, "no commit in Gitea within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let committed = pushed.elapsed();
    let message = commit["commit"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("Update image {image}: 1.0.0 -> 1.1.0")),
        "{message}"
    );
    assert_eq!(commit["commit"]["author"]["name"], "tether-bot");
    let sha = commit["sha"].as_str().expect("sha").to_string();
    until(&apps, "web", "the agent's commit applied", |a| {
        applied(a) == Some(sha.as_str())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let want = format!("{image}:1.1.0");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pods
            .list(&ListParams::default().labels("app=app"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .any(|pod| {
                let spec_image = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.clone());
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                spec_image.as_deref() == Some(want.as_str()) && phase.as_deref() == Some("Running")
            });
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "no Pod runs {want} within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = pushed.elapsed();
    let live = deployments.get("app").await.expect("deployment");
    let live_image = live
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0]
        .image
        .clone();
    assert_eq!(live_image.as_deref(), Some(want.as_str()));
    eprintln!(
        "tag pushed → commit in Gitea {} ms → a Pod runs it {} ms",
        committed.as_millis(),
        running.as_millis()
    );

    // Bad inputs: each a Warning Event saying why, nothing pushed.
    let before = tokio::task::block_in_place(|| head_of_main(&gitea))["sha"].clone();
    create_application(&apps, "nomatch", spec("nomatch", "web9", "^9", "git")).await;
    create_application(&apps, "refused", spec("refused", "webr", "^1", "git-wrong")).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let mut seen = Vec::new();
    for (app, says) in [("nomatch", "qualifies"), ("refused", "refused")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let note = loop {
            let found = events
                .list(&ListParams::default())
                .await
                .expect("events")
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object.name.as_deref() == Some(app)
                        && e.reason.as_deref() == Some("ImageUpdateFailed")
                })
                .filter_map(|e| e.message)
                .find(|m| m.contains(says));
            if let Some(note) = found {
                break note;
            }
            assert!(
                Instant::now() < deadline,
                "{app}: no ImageUpdateFailed event saying {says:?} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            !note.contains("not-the-password") && !note.contains(gitea::PASSWORD),
            "{note}"
        );
        seen.push(note);
    }
    eprintln!("refusals: {seen:#?}");
    assert_eq!(
        tokio::task::block_in_place(|| head_of_main(&gitea))["sha"],
        before,
        "nothing was pushed"
    );
    agent.stop().await.expect("the agent stops");
}
