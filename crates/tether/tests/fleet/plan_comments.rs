//! Plan comments where reviewers read (issue 26 §3): `tether plan --comment-on gitea` posts
//! the Markdown plan to a pull request of a real Gitea, a second run updates that same
//! comment instead of adding one, and a Secret's value never reaches it.

use crate::support;

use reqwest::Method;
use serde_json::Value;
use support::gitea::{Gitea, USER};
use support::{TestNamespace, cluster, tether, unique_name};

fn comments(gitea: &Gitea, number: u64) -> Vec<Value> {
    let (code, listed) = gitea.api(
        Method::GET,
        &format!("/repos/{USER}/deploy/issues/{number}/comments"),
        None,
    );
    assert_eq!(code, 200, "{listed}");
    listed.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_is_posted_to_the_pull_request_and_updated_in_place() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "plan-comment").await;
    let dir = tempfile::tempdir().expect("temp");
    let (gitea, repo) = tokio::task::block_in_place(|| Gitea::with_repo(dir.path(), "deploy"));
    repo.write("README.md", "deploy\n");
    repo.commit("first");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:main"]);
    repo.write(
        "app/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  color: blue\n",
    );
    repo.write("app/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: shop-db\nstringData:\n  password: s3cr3t-value\n");
    repo.commit("the shop");
    repo.git(&["push", "-q", &gitea.push_url("deploy"), "HEAD:shop"]);
    let number = tokio::task::block_in_place(|| gitea.open_pull("deploy", "shop", "main"));
    let token = dir.path().join("token");
    std::fs::write(&token, &gitea.token).expect("write");
    let app = unique_name("shop");
    let path = repo.path.join("app");
    let number_text = number.to_string();
    let plan = || {
        tether(&[
            "plan",
            "--path",
            path.to_str().expect("utf-8"),
            "--app",
            &app,
            "-n",
            &ns.name,
            "--comment-on",
            "gitea",
            "--comment-url",
            &gitea.url,
            "--comment-repo",
            &format!("{USER}/deploy"),
            "--comment-pr",
            &number_text,
            "--comment-token-file",
            token.to_str().expect("utf-8"),
        ])
    };
    let out = tokio::task::block_in_place(plan);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("the plan is posted on {USER}/deploy #{number}"))
    );
    let first = comments(&gitea, number);
    assert_eq!(first.len(), 1, "{first:?}");
    let body = first[0]["body"].as_str().expect("a body");
    assert!(
        body.contains("ConfigMap/shop") && body.contains("color: blue"),
        "{body}"
    );
    assert!(
        !body.contains("s3cr3t-value"),
        "a Secret's value reached the comment"
    );

    // A new commit on the branch: the same comment now shows the new plan.
    std::fs::write(
        path.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  color: green\n",
    )
    .expect("write");
    let out = tokio::task::block_in_place(plan);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the plan is updated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = comments(&gitea, number);
    assert_eq!(second.len(), 1, "one comment, updated: {second:?}");
    assert_eq!(second[0]["id"], first[0]["id"]);
    let body = second[0]["body"].as_str().expect("a body");
    assert!(
        body.contains("color: green") && !body.contains("color: blue"),
        "{body}"
    );

    // A wrong token: a clear error, and the comment is left as it was.
    std::fs::write(&token, "not-a-token").expect("write");
    let out = tokio::task::block_in_place(plan);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cannot post the plan to tether/deploy")
            && err.contains("401"),
        "{err}"
    );
    assert_eq!(comments(&gitea, number)[0]["body"], second[0]["body"]);
}
