//! `tether render` run as a user runs it, against a real `git daemon` and on this
//! repository's own example folder.

use crate::support;

use support::git::{GitDaemon, GitRepo};

#[test]
fn render_over_git_daemon_prints_revision_objects_and_origins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "shop");
    repo.write(
        "deploy/prod/app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop\ndata:\n  mode: 0644\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: shop-db\nstringData:\n  password: hunter2\n",
    );
    repo.write("deploy/prod/notes.txt", "ignored");
    let commit = repo.commit("prod");
    repo.tag_annotated("v1.4.2");
    let daemon = GitDaemon::start(&root);
    let cache = dir.path().join("cache");

    let out = support::tether_offline(&[
        "render",
        "--repo",
        &daemon.url("shop"),
        "--ref",
        ">=1.4 <2",
        "--path",
        "deploy/prod",
        "--show-origin",
        "--git-cache",
        cache.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("# Revision: {commit} (refs/tags/v1.4.2 of git://")),
        "{stdout}"
    );
    assert!(
        stdout.contains("# Source: deploy/prod/app.yaml:1 (document 1)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# Source: deploy/prod/app.yaml:8 (document 2)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("mode: 420"), "YAML 1.1 octal: {stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "Secret values are redacted: {stdout}"
    );

    let json = support::tether_offline(&[
        "render",
        "--repo",
        &daemon.url("shop"),
        "--ref",
        "v1.4.2",
        "--path",
        "deploy/prod",
        "-o",
        "json",
        "--show-secrets",
        "--git-cache",
        cache.to_str().expect("utf-8"),
    ]);
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"][1]["stringData"]["password"], "hunter2",
        "--show-secrets"
    );

    let missing = support::tether_offline(&[
        "render",
        "--repo",
        &daemon.url("shop"),
        "--path",
        "deploy/staging",
        "--git-cache",
        cache.to_str().expect("utf-8"),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("deploy/staging: not found in commit"),
        "{stderr}"
    );
}

#[test]
fn render_reads_the_bundled_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/web-app");
    let out = support::tether_offline(&["render", "--path", example, "-o", "json"]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["kind"].as_str().expect("kind"))
        .collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "CustomResourceDefinition",
        "Greeting",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

/// After `make demo` a user's shell has neither kustomize nor helm on PATH, but testenv
/// built them: `tether render` finds them there, and when they are nowhere, says every
/// place it looked.
#[test]
fn renderers_are_found_where_testenv_builds_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [cm.yaml]\nnamePrefix: found-\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    )
    .expect("write");
    // The cache testenv builds into: the folder that holds bin/kustomize-<version>/.
    let kustomize = support::tool("kustomize");
    let cache = kustomize
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .expect("<cache>/bin/kustomize-<version>/kustomize");
    let render = |cache: &std::path::Path| {
        support::tether_bin()
            .args(["render", "--path"])
            .arg(dir.path())
            .env_remove("TETHER_KUSTOMIZE")
            .env("PATH", "/usr/bin:/bin")
            .env("TETHER_CACHE_DIR", cache)
            .output()
            .expect("the tether binary runs")
    };
    let out = render(cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: found-x"));

    let empty = tempfile::tempdir().expect("temp dir");
    let out = render(empty.path());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("kustomize is not installed"), "{said}");
    assert!(said.contains("/usr/bin:/bin"), "names PATH: {said}");
    assert!(
        said.contains(&format!(
            "{}/bin/kustomize-*/kustomize",
            empty.path().display()
        )),
        "names the testenv folder: {said}"
    );
}

/// Without a cluster, Helm is told the Kubernetes version tether is built against, not its
/// own default v1.20.0: a chart that needs a newer one renders.
#[test]
fn a_chart_that_needs_a_recent_kubernetes_renders_without_a_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let chart = dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).expect("folders");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: recent\nversion: 1.0.0\nkubeVersion: \">=1.23.0-0\"\n",
    )
    .expect("write");
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube\ndata:\n  version: {{ .Capabilities.KubeVersion.Version | quote }}\n",
    )
    .expect("write");
    let out = support::tether_bin()
        .args([
            "render",
            "--path",
            chart.to_str().expect("utf-8"),
            "--helm-bin",
        ])
        .arg(support::tool("helm"))
        .output()
        .expect("the tether binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("version: v1.34.0"), "{stdout}");
}

/// A local folder of Jsonnet, with the flags a user of `jsonnet` expects; a missing external
/// variable is a clear error naming the flag.
#[test]
fn render_evaluates_jsonnet_with_external_variables_arguments_and_library_folders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("vendor")).expect("mkdir");
    std::fs::write(
        app.join("main.jsonnet"),
        "local k = import 'k.libsonnet';\nfunction(team='web') k.cm(std.extVar('env') + '-' + team)\n",
    )
    .expect("write");
    std::fs::write(
        app.join("vendor/k.libsonnet"),
        "{ cm(name):: {apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: name}} }\n",
    )
    .expect("write");
    let path = app.to_str().expect("utf-8");
    let out = support::tether_offline(&[
        "render",
        "--path",
        path,
        "--jsonnet-ext-str",
        "env=prod",
        "--jsonnet-tla-code",
        "team='data'",
        "--jsonnet-lib",
        "vendor",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("name: prod-data"), "{said}");
    let out = support::tether_offline(&["render", "--path", path, "--jsonnet-lib", "vendor"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("main.jsonnet:2") && err.contains("--jsonnet-ext-str env="),
        "{err}"
    );
}
