//! Preview environments per pull request (issue 26 §2), end to end against a real Gitea: an
//! ApplicationSet's pullRequest generator makes an Application at each open pull request's
//! head commit; a push to the pull request updates it and closing the pull request deletes
//! it and its objects, both at once through Gitea's webhook (the set's own listing comes
//! only every 3 minutes). The times are printed.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use reqwest::Method;
use serde_json::json;
use support::agent::{options_for, start_agent};
use support::gitea::{Gitea, USER};
use support::{TestNamespace, cluster};
use tether::agent::install_crd;
use tether::application::ApplicationSet;

fn configmap(color: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: preview\ndata:\n  color: {color}\n"
    )
}

/// Waits (up to 60 s) until the preview's color is `want` (`None`: gone); how long it took
/// since `started`.
async fn color_becomes(
    configmaps: &Api<ConfigMap>,
    started: Instant,
    want: Option<&str>,
    what: &str,
) -> Duration {
    loop {
        let now = configmaps
            .get_opt("preview")
            .await
            .expect("read")
            .and_then(|c| c.data)
            .and_then(|d| d.get("color").cloned());
        if now.as_deref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_open_pull_request_gets_a_preview_that_follows_it_and_goes_when_it_closes() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRDs installed");
    let ns = TestNamespace::create(&client, "previews").await;
    let dir = tempfile::tempdir().expect("temp");
    let (gitea, repo) = tokio::task::block_in_place(|| Gitea::with_repo(dir.path(), "deploy"));
    repo.write("app/cm.yaml", &configmap("blue"));
    repo.commit("main");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("app/cm.yaml", &configmap("green"));
    repo.commit("green");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "feature"]);
    let number = tokio::task::block_in_place(|| gitea.open_pull("deploy", "feature", "main"));

    let token: Secret = serde_json::from_value(
        json!({"metadata": {"name": "gitea"}, "stringData": {"token": gitea.token}}),
    )
    .expect("Secret");
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &token)
        .await
        .expect("token");
    // The agent hears Gitea's webhooks (pushes and pull request events): each one makes
    // the set list the pull requests again, so the previews follow at once.
    let secret = "previews-webhook-secret";
    let (port, listen) = support::agent::free_listen();
    let options = tether::agent::AgentOptions {
        listen,
        webhook_secret: Some(secret.as_bytes().to_vec()),
        ..options_for(&ns, dir.path())
    };
    let agent = start_agent(&client, options);
    let (code, hook) = gitea.api(
        Method::POST,
        &format!("/repos/{USER}/deploy/hooks"),
        Some(json!({
            "type": "gitea", "active": true, "events": ["push", "pull_request"],
            "config": {"url": format!("http://127.0.0.1:{port}/webhooks/gitea"), "content_type": "json", "secret": secret}
        })),
    );
    assert_eq!(code, 201, "{hook}");
    let set: ApplicationSet = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "ApplicationSet", "metadata": {"name": "previews"},
        "spec": {
            "generators": [{"pullRequest": {
                "gitea": {"owner": USER, "repo": "deploy", "api": gitea.url, "tokenRef": {"secretName": "gitea", "key": "token"}}}}],
            "template": {
                "metadata": {"name": "preview-{{number}}", "labels": {"branch": "{{branch_slug}}"}},
                "spec": {"source": {"repoURL": gitea.clone_url("deploy"), "ref": {"commit": "{{head_sha}}"}, "path": "app"},
                         "destination": {"namespace": ns.name}, "syncPolicy": {"interval": "1h"}}
            }
        }
    }))
    .expect("a set");
    let created = Instant::now();
    Api::<ApplicationSet>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &set)
        .await
        .expect("set");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let opened = color_becomes(
        &configmaps,
        created,
        Some("green"),
        "the preview of the open pull request",
    )
    .await;

    let push = Instant::now();
    repo.write("app/cm.yaml", &configmap("yellow"));
    repo.commit("yellow");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "feature"]);
    let pushed = color_becomes(
        &configmaps,
        push,
        Some("yellow"),
        "the preview follows a push",
    )
    .await;

    let close = Instant::now();
    let (code, closed) = gitea.api(
        Method::PATCH,
        &format!("/repos/{USER}/deploy/pulls/{number}"),
        Some(json!({"state": "closed"})),
    );
    assert_eq!(code, 201, "{closed}");
    let gone = color_becomes(
        &configmaps,
        close,
        None,
        "the preview goes with the pull request",
    )
    .await;
    eprintln!(
        "preview: applied {opened:?} after the set was created, updated {pushed:?} after the push began, deleted {gone:?} after the close was asked (the webhook wakes the set; its own listing is every 3 min)"
    );
    agent.stop().await.expect("the agent stops");
}
