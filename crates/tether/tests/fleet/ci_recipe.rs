//! The CI recipe of docs/ci.md (issue 26 §3), run as a CI job would run it: the script
//! `examples/ci/tether-ci.sh` plans on a pull request of a real Gitea (the plan posted as a
//! comment), applies on merge against the local cluster, and plans again (in sync).

use crate::support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use reqwest::Method;
use support::gitea::{Gitea, USER};
use support::{TestNamespace, cluster, unique_name};

#[tokio::test(flavor = "multi_thread")]
async fn the_recipe_plans_on_the_pull_request_and_applies_on_merge() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "ci-recipe").await;
    let dir = tempfile::tempdir().expect("temp");
    let (gitea, repo) = tokio::task::block_in_place(|| Gitea::with_repo(dir.path(), "deploy"));
    repo.write("README.md", "deploy\n");
    repo.commit("first");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);
    repo.write(
        "apps/web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  color: blue\n",
    );
    repo.commit("web");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:web"]);
    let number =
        tokio::task::block_in_place(|| gitea.open_pull("deploy", "web", "main")).to_string();
    let token = dir.path().join("token");
    std::fs::write(&token, &gitea.token).expect("write");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ci/tether-ci.sh");
    let app = unique_name("web");
    let job = |mode: &str, comment: bool| {
        let mut command = std::process::Command::new("bash");
        command
            .arg(&script)
            .arg(mode)
            .current_dir(&repo.path)
            .env("TETHER", env!("CARGO_BIN_EXE_tether"))
            .env("KUBECONFIG", support::kubeconfig())
            .env("TETHER_PATH", "apps/web")
            .env("TETHER_APP", &app)
            .env("TETHER_NAMESPACE", &ns.name)
            .env("TETHER_TIMEOUT", "60s");
        if comment {
            command
                .env("TETHER_COMMENT_ON", "gitea")
                .env("TETHER_COMMENT_URL", &gitea.url)
                .env("TETHER_COMMENT_REPO", format!("{USER}/deploy"))
                .env("TETHER_COMMENT_PR", &number)
                .env("TETHER_COMMENT_TOKEN_FILE", &token);
        }
        let out = tokio::task::block_in_place(|| command.output().expect("bash runs"));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{mode}: {said}");
        said
    };
    let planned = job("plan", true);
    assert!(
        planned.contains("tether-ci: the plan above changes the cluster"),
        "{planned}"
    );
    let (code, comments) = gitea.api(
        Method::GET,
        &format!("/repos/{USER}/deploy/issues/{number}/comments"),
        None,
    );
    assert_eq!(code, 200);
    let comments = comments.as_array().cloned().unwrap_or_default();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("ConfigMap/web")
    );
    // Merged: apply.
    job("apply", false);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let live = configmaps.get("web").await.expect("applied");
    assert_eq!(live.data.expect("data")["color"], "blue");
    let again = job("plan", false);
    assert!(
        again.contains("tether-ci: the cluster already holds this revision"),
        "{again}"
    );
}
