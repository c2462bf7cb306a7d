//! An Application following an OCI artifact in the real distribution registry (TLS from a
//! test CA, htpasswd auth; credentials and CA from a dockerconfigjson Secret): a new push
//! to its tag is applied, the digest is the revision, and an idle poll of an unchanged tag
//! costs manifest requests only (no blob is downloaded again).

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::agent::{applied, create_application, fails_with, options_for, start_agent, until};
use support::registry::Registry;
use support::{TestNamespace, cluster, said, tether_offline};
use tether::agent::{Application, install_crd};

/// Pushes `color` as the artifact `url:tag`; its digest.
fn push(registry: &Registry, dir: &std::path::Path, url: &str, tag: &str, color: &str) -> String {
    let folder = dir.join(format!("content-{color}"));
    std::fs::create_dir_all(folder.join("app")).expect("mkdir");
    std::fs::write(
        folder.join("app/settings.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: {color}\n"),
    )
    .expect("write");
    let config = dir.join("docker-config.json");
    std::fs::write(&config, registry.docker_config()).expect("config");
    let ca = registry.ca_cert.as_ref().expect("TLS");
    let out = tether_offline(&[
        "push",
        "artifact",
        &format!("{url}:{tag}"),
        "--path",
        folder.to_str().expect("utf-8 path"),
        "--registry-config",
        config.to_str().expect("utf-8 path"),
        "--registry-ca-file",
        ca.to_str().expect("utf-8 path"),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "push: {}", said(&out));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    pushed["digest"].as_str().expect("digest").to_string()
}

#[tokio::test]
async fn an_application_follows_an_artifact_tag_in_a_registry() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "oci").await;
    let dir = tempfile::tempdir().expect("temp");
    let registry = Registry::start(&dir.path().join("registry"), true);
    let url = registry.url("manifests/web");
    let first = push(&registry, dir.path(), &url, "stable", "blue");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let ca = std::fs::read_to_string(registry.ca_cert.as_ref().expect("TLS")).expect("CA");
    for (name, config) in [
        ("regcred", registry.docker_config()),
        ("nocred", r#"{"auths": {}}"#.to_string()),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config, "caFile": ca},
        }))
        .expect("a Secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("Secret created");
    }
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let spec = |secret: &str, repository: &str| {
        json!({
            "source": {"repoURL": registry.url(repository), "ref": {"tag": "stable"}, "path": "app", "secretRef": {"name": secret}},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        })
    };
    // Without credentials the registry's refusal is the Application's error.
    create_application(&apps, "anonymous", spec("nocred", "manifests/other")).await;
    let message = fails_with(&apps, "anonymous", "401 Unauthorized").await;
    assert!(!message.contains(registry.password), "{message}");

    create_application(&apps, "web", spec("regcred", "manifests/web")).await;
    until(&apps, "web", "the first artifact applied", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color = |cm: ConfigMap| cm.data.unwrap_or_default()["color"].clone();
    assert_eq!(
        color(configmaps.get("settings").await.expect("applied")),
        "blue"
    );

    // Idle polls (every second) ask for the manifest and download nothing.
    let blobs = registry.requests("GET", "/manifests/web/blobs/");
    let manifests = registry.requests("GET", "/manifests/web/manifests/stable");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let polls = registry.requests("GET", "/manifests/web/manifests/stable") - manifests;
    assert!(
        (2..=6).contains(&polls),
        "the tag was asked for {polls} times in 4 s of 1 s polls (one request each)"
    );
    assert_eq!(
        registry.requests("GET", "/manifests/web/blobs/"),
        blobs,
        "an unchanged tag downloads no blob"
    );

    // A new push to the tag is applied: bounded and reported.
    let pushed = Instant::now();
    let second = push(&registry, dir.path(), &url, "stable", "green");
    assert_ne!(first, second);
    until(&apps, "web", "the second artifact applied", |a| {
        applied(a) == Some(second.as_str())
    })
    .await;
    eprintln!(
        "a new push to the tag was applied {} ms later ({polls} manifest polls in 4 s idle)",
        pushed.elapsed().as_millis()
    );
    assert_eq!(
        color(configmaps.get("settings").await.expect("applied")),
        "green"
    );
    agent.stop().await.expect("the agent stops");
}
