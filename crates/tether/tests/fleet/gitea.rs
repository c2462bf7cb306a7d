//! Commit statuses end to end against a real Gitea (built by testenv from its module source,
//! SQLite, on loopback): a push to Gitea, Gitea's own signed webhook reaches the agent, the
//! agent syncs, and the commit shows tether's status in Gitea's API: success for a commit
//! applied, failure for one the API server refuses.
//!
//! Gitea takes about 5 minutes to build the first time (`make test` does it once; the test
//! itself takes about 10 s).

use crate::support;
use support::fixtures::configmap;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use reqwest::Method;
use serde_json::{Value, json};
use support::agent::{applied, create_application, options_for, ready, start_agent, until};
use support::gitea::Gitea;
use support::{TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

/// tether's status of `commit` in Gitea (context `context`), once there is one.
fn status_of(gitea: &Gitea, commit: &str, context: &str) -> Option<Value> {
    let (code, statuses) = gitea.api(
        Method::GET,
        &format!(
            "/repos/{}/deploy/commits/{commit}/statuses",
            support::gitea::USER
        ),
        None,
    );
    assert_eq!(code, 200, "{statuses}");
    statuses
        .as_array()?
        .iter()
        .find(|s| s["context"] == context)
        .cloned()
}

async fn until_status(gitea: &Gitea, commit: &str, context: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = status_of(gitea, commit, context);
        if let Some(found) = found.as_ref().filter(|s| s["status"] == state) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "commit {commit} has no {state} status {context} in Gitea within 30 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Gitea is driven with blocking HTTP calls (`block_in_place` needs this flavor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_gitea_is_synced_from_its_webhook_and_the_commit_shows_tethers_status() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "gitea").await;
    let dir = tempfile::tempdir().expect("temp");
    let (gitea, repo) = tokio::task::block_in_place(|| Gitea::with_repo(dir.path(), "deploy"));
    repo.write("app/cm.yaml", &configmap("greeting", "blue"));
    let first = repo.commit("first");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);

    // The agent, with a webhook secret that Gitea signs its deliveries with.
    let secret = "gitea-webhook-secret";
    let (port, listen) = support::agent::free_listen();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            webhook_secret: Some(secret.as_bytes().to_vec()),
            ..options_for(&ns, dir.path())
        },
    );
    let token: Secret = serde_json::from_value(
        json!({"metadata": {"name": "gitea-token"}, "stringData": {"token": gitea.token}}),
    )
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &token)
        .await
        .expect("token Secret");
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "web",
        json!({
            "source": {"repoURL": gitea.clone_url("deploy"), "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            // Only the webhook brings a new commit within the test's time.
            "syncPolicy": {"interval": "1h", "retry": {"limit": 2, "backoff": "1s"}},
            "commitStatus": {"provider": "gitea", "secretRef": {"name": "gitea-token"}}
        }),
    )
    .await;
    until(&apps, "web", "the first commit applied", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let context = format!("tether/{}/web", ns.name);
    let status = until_status(&gitea, &first, &context, "success").await;
    eprintln!("first commit: {status}");
    assert!(
        status["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Synced, Healthy")),
        "{status}"
    );

    // Gitea's own webhook tells the agent of the next push.
    let (code, hook) = gitea.api(
        Method::POST,
        &format!("/repos/{}/deploy/hooks", support::gitea::USER),
        Some(json!({
            "type": "gitea",
            "active": true,
            "events": ["push"],
            "config": {"url": format!("http://127.0.0.1:{port}/webhooks/gitea"),
                       "content_type": "json", "secret": secret}
        })),
    );
    assert_eq!(code, 201, "{hook}");
    repo.write("app/cm.yaml", &configmap("greeting", "green"));
    let second = repo.commit("green");
    let pushed = Instant::now();
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);
    until(&apps, "web", "the pushed commit applied", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    let took = pushed.elapsed();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color = cms
        .get("greeting")
        .await
        .expect("ConfigMap")
        .data
        .expect("data")["color"]
        .clone();
    assert_eq!(color, "green");
    assert!(
        took < Duration::from_secs(60),
        "the push took {took:?}: the poll is an hour, so only the webhook brings it"
    );
    let status = until_status(&gitea, &second, &context, "success").await;
    eprintln!("pushed commit applied {took:?} after the push; its status: {status}");

    // A commit the API server refuses: its status is a failure, with the reason.
    repo.write(
        "app/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Name\ndata: {}\n",
    );
    let third = repo.commit("broken");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);
    until(&apps, "web", "the broken commit failing", |a| {
        ready(a).is_some_and(|(status, _)| status == "False")
            && a.status
                .as_ref()
                .and_then(|s| s.last_attempted_revision.as_deref())
                == Some(third.as_str())
    })
    .await;
    let status = until_status(&gitea, &third, &context, "failure").await;
    eprintln!("broken commit's status: {status}");
    assert!(
        status["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Sync failed:") && d.contains("Not_A_Name")),
        "{status}"
    );
    let _ = agent.stop().await;
}
