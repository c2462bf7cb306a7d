//! OCI registries with the real CNCF distribution registry (TLS from a test CA, htpasswd
//! auth): `tether push artifact`, then render and apply from `--repo oci://…` by tag, semver
//! range and digest; a Helm chart pushed by the real helm, rendered from `--repo oci://` and
//! from `--helm-repo oci://`; and each bad input (no credentials, wrong password, unknown
//! tag, no matching version, no CA, plain HTTP asked of a TLS registry) refused by name with
//! nothing applied.

use crate::support;

use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use support::registry::Registry;
use support::{TestNamespace, cluster, said, tether, tether_offline};

fn configmap(name: &str, color: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  color: {color}\n")
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
}

/// `--registry-config` and `--registry-ca-file` for the secure registry.
fn access(registry: &Registry, dir: &Path) -> Vec<String> {
    let config = dir.join("docker-config.json");
    std::fs::write(&config, registry.docker_config()).expect("docker config");
    vec![
        "--registry-config".into(),
        config.display().to_string(),
        "--registry-ca-file".into(),
        registry
            .ca_cert
            .as_ref()
            .expect("TLS")
            .display()
            .to_string(),
    ]
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tether(&args)
}

fn args(parts: &[&str], extra: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

#[tokio::test]
async fn artifacts_are_pushed_then_applied_by_tag_range_and_digest() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "oci").await;
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), true);
    let access = access(&registry, dir.path());
    let url = registry.url("manifests/shop");
    for (tag, color) in [("1.0.0", "blue"), ("1.1.0", "green"), ("2.0.0", "red")] {
        let folder = dir.path().join(format!("v{tag}"));
        write(
            &folder,
            &[("app/settings.yaml", &configmap("settings", color))],
        );
        let out = run(&args(
            &[
                "push",
                "artifact",
                &format!("{url}:{tag}"),
                "--path",
                folder.to_str().expect("utf-8 path"),
                "--source",
                "https://git.example/shop",
                "--revision",
                &format!("main@sha1:{}", "a".repeat(40)),
            ],
            &access,
        ));
        assert!(out.status.success(), "push {tag}: {}", said(&out));
        assert!(said(&out).contains("sha256:"), "{}", said(&out));
    }

    // A semver range picks the highest match; --path is inside the artifact.
    let out = run(&args(
        &[
            "apply", "--repo", &url, "--ref", "^1", "--path", "app", "--app", "shop", "-n",
            &ns.name,
        ],
        &access,
    ));
    assert!(out.status.success(), "apply ^1: {}", said(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color = |cm: ConfigMap| cm.data.unwrap_or_default()["color"].clone();
    assert_eq!(
        color(configmaps.get("settings").await.expect("applied")),
        "green"
    );

    // By tag, -o json records the digest as the revision; then by that digest.
    let out = run(&args(
        &[
            "plan", "--repo", &url, "--ref", "2.0.0", "--path", "app", "--app", "shop", "-n",
            &ns.name, "-o", "json",
        ],
        &access,
    ));
    assert!(out.status.success(), "plan 2.0.0: {}", said(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let digest = plan.to_string();
    let digest = digest
        .split("sha256:")
        .nth(1)
        .map(|rest| format!("sha256:{}", &rest[..64]))
        .expect("the plan names the artifact's digest");
    let out = run(&args(
        &[
            "apply", "--repo", &url, "--ref", &digest, "--path", "app", "--app", "shop", "-n",
            &ns.name,
        ],
        &access,
    ));
    assert!(out.status.success(), "apply by digest: {}", said(&out));
    assert_eq!(
        color(configmaps.get("settings").await.expect("applied")),
        "red"
    );
    let before = configmaps
        .get("settings")
        .await
        .expect("cm")
        .metadata
        .resource_version;

    // Bad inputs: each refused by name, nothing applied.
    let wrong = dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        registry.docker_config().replace(
            &base64_of(&format!("{}:{}", registry.user, registry.password)),
            &base64_of("alice:wrong"),
        ),
    )
    .expect("wrong config");
    let ca = registry
        .ca_cert
        .as_ref()
        .expect("TLS")
        .display()
        .to_string();
    std::fs::write(dir.path().join("none.json"), r#"{"auths": {}}"#).expect("empty config");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "no credentials",
            vec![
                "--registry-ca-file".into(),
                ca.clone(),
                "--registry-config".into(),
                dir.path().join("none.json").display().to_string(),
            ],
            "refused anonymous access (no credentials given) (401 Unauthorized)",
        ),
        (
            "the wrong password",
            vec![
                "--registry-ca-file".into(),
                ca.clone(),
                "--registry-config".into(),
                wrong.display().to_string(),
            ],
            "401 Unauthorized",
        ),
        (
            "no CA",
            vec![
                "--registry-config".into(),
                dir.path().join("docker-config.json").display().to_string(),
            ],
            "CA",
        ),
        (
            "plain HTTP to TLS",
            args(&["--plain-http"], &access),
            "plain",
        ),
    ];
    for (what, extra, says) in cases {
        let out = run(&args(
            &[
                "apply", "--repo", &url, "--ref", "1.0.0", "--path", "app", "--app", "shop", "-n",
                &ns.name,
            ],
            &extra,
        ));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", said(&out));
        assert!(said(&out).contains(says), "{what}: {}", said(&out));
        assert!(
            !said(&out).contains(registry.password),
            "{what}: {}",
            said(&out)
        );
    }
    for (reference, says) in [
        ("9.9.9", "not found (404"),
        (">=3", "no tag matches semver range"),
    ] {
        let out = run(&args(
            &[
                "apply", "--repo", &url, "--ref", reference, "--path", "app", "--app", "shop",
                "-n", &ns.name,
            ],
            &access,
        ));
        assert_eq!(out.status.code(), Some(1), "{reference}: {}", said(&out));
        assert!(said(&out).contains(says), "{reference}: {}", said(&out));
    }
    let missing = run(&args(
        &[
            "render",
            "--repo",
            &registry.url("manifests/none"),
            "--ref",
            "1.0.0",
        ],
        &access,
    ));
    assert!(said(&missing).contains("not found"), "{}", said(&missing));
    let after = configmaps
        .get("settings")
        .await
        .expect("cm")
        .metadata
        .resource_version;
    assert_eq!(before, after, "nothing was applied by a refused run");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_helm_chart_pushed_by_helm_renders_from_oci() {
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), true);
    let access = access(&registry, dir.path());
    let chart = dir.path().join("web");
    for version in ["1.0.0", "1.2.0"] {
        write(
            &chart,
            &[
                (
                    "Chart.yaml",
                    &format!("apiVersion: v2\nname: web\nversion: {version}\n"),
                ),
                ("values.yaml", "color: blue\n"),
                (
                    "templates/cm.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-web\ndata:\n  color: {{ .Values.color }}\n  chart: {{ .Chart.Version }}\n",
                ),
            ],
        );
        let home = dir.path().join("helm");
        registry.helm(
            &home,
            &[
                "package",
                chart.to_str().expect("utf-8 path"),
                "-d",
                dir.path().to_str().expect("utf-8 path"),
            ],
        );
        let package = dir.path().join(format!("web-{version}.tgz"));
        registry.helm(
            &home,
            &[
                "push",
                package.to_str().expect("utf-8 path"),
                &registry.url("charts"),
            ],
        );
    }
    // The chart itself as the source: the media type says it is a chart.
    let out = tether_offline(
        &args(
            &[
                "render",
                "--repo",
                &registry.url("charts/web"),
                "--ref",
                "~1.0",
                "--release",
                "shop",
                "-o",
                "json",
            ],
            &access,
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"chart\": \"1.0.0\"") && text.contains("shop-web"),
        "{text}"
    );
    // A chart from a registry with values from the repository, as with --helm-repo https://.
    let values = dir.path().join("repo");
    write(&values, &[("values/prod.yaml", "color: green\n")]);
    let out = tether_offline(
        &args(
            &[
                "render",
                "--path",
                values.to_str().expect("utf-8 path"),
                "--helm-repo",
                &registry.url("charts"),
                "--chart",
                "web",
                "--chart-version",
                ">=1.1",
                "--values",
                "values/prod.yaml",
                "--release",
                "shop",
                "-o",
                "json",
            ],
            &access,
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"chart\": \"1.2.0\"") && text.contains("\"color\": \"green\""),
        "{text}"
    );
}

#[test]
fn tether_images_update_rewrites_a_folder_as_the_agent_would_commit_it() {
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), true);
    let access = access(&registry, dir.path());
    for tag in ["1.0.0", "1.4.2", "2.0.0"] {
        let folder = dir.path().join(format!("image-{tag}"));
        write(&folder, &[("version", tag)]);
        let out = run(&args(
            &[
                "push",
                "artifact",
                &format!("{}:{tag}", registry.url("team/web")),
                "--path",
                folder.to_str().expect("utf-8 path"),
            ],
            &access,
        ));
        assert!(out.status.success(), "{}", said(&out));
    }
    let image = format!("{}/team/web", registry.host());
    let work = dir.path().join("work");
    write(
        &work,
        &[
            (
                "app/deploy.yaml",
                &format!("image: {image}:1.0.0 # {{\"$imagepolicy\": \"shop:web\"}}\n"),
            ),
            (
                "app/kustomization.yaml",
                &format!("resources: [deploy.yaml]\nimages:\n- name: {image}\n  newTag: 1.0.0\n"),
            ),
            (
                "app.yaml",
                &format!(
                    "apiVersion: tether.dev/v1alpha1\nkind: Application\nmetadata: {{name: web, namespace: shop}}\nspec:\n  source: {{repoURL: https://git.example/deploy, path: app}}\n  \
                     destination: {{namespace: shop}}\n  imageUpdates:\n    policies:\n    - name: web\n      image: {image}\n      policy: {{semver: {{range: '^1'}}}}\n"
                ),
            ),
        ],
    );
    let update = |extra: &[&str]| {
        let mut all = vec![
            "images".to_string(),
            "update".into(),
            "-f".into(),
            work.join("app.yaml").display().to_string(),
            "--path".into(),
            work.join("app").display().to_string(),
            "--detailed-exitcode".into(),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        all.extend(access.iter().cloned());
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        tether_offline(&args)
    };
    let dry = update(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "{}", said(&dry));
    assert!(
        said(&dry).contains("2 value(s) would change"),
        "{}",
        said(&dry)
    );
    assert!(
        std::fs::read_to_string(work.join("app/deploy.yaml"))
            .expect("read")
            .contains(":1.0.0 #")
    );
    let done = update(&[]);
    assert_eq!(done.status.code(), Some(2), "{}", said(&done));
    assert!(
        said(&done).contains(&format!("{image}:1.0.0 -> {image}:1.4.2")),
        "{}",
        said(&done)
    );
    assert!(
        std::fs::read_to_string(work.join("app/deploy.yaml"))
            .expect("read")
            .contains(":1.4.2 #")
    );
    assert!(
        std::fs::read_to_string(work.join("app/kustomization.yaml"))
            .expect("read")
            .contains("newTag: 1.4.2")
    );
    let again = update(&[]);
    assert_eq!(again.status.code(), Some(0), "{}", said(&again));
}

#[test]
fn artifacts_cross_between_flux_and_tether_both_ways() {
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), false);
    let flux = support::tool("flux");
    let content = dir.path().join("content");
    write(
        &content,
        &[("app/settings.yaml", &configmap("from-flux", "blue"))],
    );
    let out = std::process::Command::new(&flux)
        .args([
            "push",
            "artifact",
            &format!("{}:v1", registry.url("interop/flux")),
        ])
        .arg("--path")
        .arg(&content)
        .args([
            "--source",
            "https://git.example/deploy",
            "--revision",
            &format!("main@sha1:{}", "c".repeat(40)),
            "--insecure-registry",
        ])
        .env("HOME", dir.path())
        .output()
        .expect("flux runs");
    assert!(out.status.success(), "flux push: {}", said(&out));
    // Pushed by flux, rendered by tether (its revision annotation is the summary).
    let out = tether_offline(&[
        "render",
        "--repo",
        &registry.url("interop/flux"),
        "--ref",
        "v1",
        "--path",
        "app",
        "--plain-http",
    ]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("name: from-flux"), "{}", said(&out));
    // Pushed by tether, pulled by flux: the same files.
    let out = tether_offline(&[
        "push",
        "artifact",
        &format!("{}:v1", registry.url("interop/tether")),
        "--path",
        content.to_str().expect("utf-8 path"),
        "--plain-http",
    ]);
    assert!(out.status.success(), "{}", said(&out));
    let pulled = dir.path().join("pulled");
    std::fs::create_dir_all(&pulled).expect("mkdir");
    let out = std::process::Command::new(&flux)
        .args([
            "pull",
            "artifact",
            &format!("{}:v1", registry.url("interop/tether")),
            "--insecure-registry",
        ])
        .arg("--output")
        .arg(&pulled)
        .env("HOME", dir.path())
        .output()
        .expect("flux runs");
    assert!(out.status.success(), "flux pull: {}", said(&out));
    assert_eq!(
        std::fs::read_to_string(pulled.join("app/settings.yaml")).expect("pulled by flux"),
        configmap("from-flux", "blue")
    );
}
