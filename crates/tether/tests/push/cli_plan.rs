//! `tether plan` and `tether apply` as CI runs them: from a real `git daemon`, against the
//! real control plane, with exit codes, JSON and Markdown output.

use crate::support;

use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster, tether, unique_name};

#[tokio::test]
async fn plan_then_apply_from_git_with_exit_codes_and_formats() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "cli-plan").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "apps/shop/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  color: blue\n",
    );
    repo.write(
        "apps/shop/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: shop-db\nstringData:\n  password: s3cr3t-value\n",
    );
    repo.commit("shop");
    let daemon = GitDaemon::start(&root);
    let cache = dir.path().join("cache");
    let app = unique_name("shop");
    let common = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--repo",
            &daemon.url("deploy"),
            "--path",
            "apps/shop",
            "--app",
            &app,
            "-n",
            &ns.name,
            "--git-cache",
            cache.to_str().expect("utf-8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |command: &str, extra: &[&str]| {
        let mut args = vec![command.to_string()];
        args.extend(common(extra));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tether(&refs)
    };

    let plan = run("plan", &["--detailed-exitcode"]);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "changes → 2; stderr: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(
        stdout.contains("Plan: 2 to create, 0 to update, 0 to prune, 0 unchanged"),
        "{stdout}"
    );
    assert!(stdout.contains("+ create ConfigMap/shop"), "{stdout}");
    assert!(
        !stdout.contains("s3cr3t-value"),
        "Secret values never print: {stdout}"
    );

    let json = run("plan", &["-o", "json"]);
    assert_eq!(
        json.status.code(),
        Some(0),
        "without --detailed-exitcode, changes are success"
    );
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(document["kind"], "Plan");
    assert_eq!(document["summary"]["create"], 2);
    assert_eq!(document["changes"][0]["action"], "create");
    assert_eq!(document["changes"][0]["key"]["kind"], "ConfigMap");
    assert_eq!(
        document["changes"][0]["origin"]["file"],
        "apps/shop/config.yaml"
    );
    assert_eq!(document["revision"]["commit"], repo.head());

    let markdown = run("plan", &["-o", "markdown"]);
    let text = String::from_utf8_lossy(&markdown.stdout);
    assert!(
        text.starts_with(&format!("### tether plan: `{app}`")),
        "{text}"
    );
    assert!(text.contains("| + | create | `ConfigMap/shop -n"), "{text}");
    assert!(text.contains("```diff\n"), "{text}");

    let apply = run("apply", &["--wait", "--timeout", "60s"]);
    assert!(
        apply.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&apply.stderr)
    );
    assert!(String::from_utf8_lossy(&apply.stdout).contains("Apply complete: 2 created"));

    let again = run("plan", &["--detailed-exitcode"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "in sync → 0: {}",
        String::from_utf8_lossy(&again.stdout)
    );

    let status = run("status", &["--detailed-exitcode"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{text}");
    assert!(
        text.contains(": Synced (0 of 2 objects differ), Healthy"),
        "{text}"
    );

    // A change made by hand shows as OutOfSync.
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &ns.name);
    let edit = serde_json::json!({"data": {"color": "red"}});
    configmaps
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&edit),
        )
        .await
        .expect("hand edit");
    let drifted = run("status", &["--detailed-exitcode", "-o", "json"]);
    assert_eq!(drifted.status.code(), Some(2));
    let document: serde_json::Value = serde_json::from_slice(&drifted.stdout).expect("JSON");
    assert_eq!(document["sync"], "OutOfSync");
    assert_eq!(document["objects"][0]["key"]["name"], "shop");
    assert_eq!(document["objects"][0]["sync"], "OutOfSync");

    // A broken manifest: exit 1, the file and line, nothing written.
    repo.write(
        "apps/shop/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  color: [1, 2\n",
    );
    repo.commit("broken");
    let broken = run("apply", &[]);
    assert_eq!(broken.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("apps/shop/config.yaml:6"), "{stderr}");
}

/// kubectl refuses an object whose namespace is not the one `-n` names; so does tether,
/// naming each object and the flag for a set that spans namespaces.
#[tokio::test]
async fn an_explicit_namespace_refuses_objects_that_name_another() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "cli-ns").await;
    let other = TestNamespace::create(&client, "cli-ns-other").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("here.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: here\ndata:\n  a: b\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("there.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: there\n  namespace: {}\ndata:\n  a: b\n",
            other.name
        ),
    )
    .expect("write");
    let path = dir.path().to_str().expect("utf-8");
    let app = unique_name("spans");
    let out = tether(&["apply", "--path", path, "--app", &app, "-n", &ns.name]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "-n {}, but 1 object(s) name another namespace",
            ns.name
        )) && stderr.contains("there.yaml:1")
            && stderr.contains(&format!("ConfigMap/there -n {}", other.name))
            && stderr.contains("--multi-namespace")
            && stderr.contains("nothing was written"),
        "{stderr}"
    );
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &ns.name);
    assert!(configmaps.get_opt("here").await.expect("read").is_none());
    let out = tether(&[
        "apply",
        "--path",
        path,
        "--app",
        &app,
        "-n",
        &ns.name,
        "--multi-namespace",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
