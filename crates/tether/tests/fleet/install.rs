//! `tether install` on the local cluster: the agent's Deployment becomes Available (on the
//! kwok nodes), a second run changes nothing and keeps the tokens, an upgrade changes only
//! what differs and prunes what the new install no longer has, and `tether uninstall`
//! removes the agent but leaves the namespace and the CRD.

use crate::support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use support::{TestNamespace, cluster};

/// Runs `tether args…` against the test cluster: whether it succeeded, and what it said.
fn tether(args: &[&str]) -> (bool, String) {
    let output = support::tether(args);
    (output.status.success(), support::said(&output))
}

fn data(secret: &Secret) -> std::collections::BTreeMap<String, Vec<u8>> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// The kwok nodes mark every Pod ready without running it, so the Pod's readiness says
/// nothing: run the agent as the Deployment's container would (its own args, its token
/// files where the Secret's volume mounts them, its listen port moved to a free one) and
/// GET its readiness probe's path as the kubelet does. It must answer 200, within seconds.
async fn probe_answers_as_a_kubelet_would_see_it(
    deployment: &Deployment,
    tokens: &std::collections::BTreeMap<String, Vec<u8>>,
) {
    let spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    let container = &spec.containers[0];
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP readiness probe");
    let path = probe.path.clone().expect("a probe path");
    let mount = container
        .volume_mounts
        .as_ref()
        .and_then(|m| m.iter().find(|m| m.name == "tokens"))
        .expect("the tokens volume")
        .mount_path
        .clone();
    let dir = tempfile::tempdir().expect("temp");
    for (key, value) in tokens {
        std::fs::write(dir.path().join(key), value).expect("token file");
    }
    let port = support::free_port();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|arg| {
            if arg.starts_with("--listen=") {
                format!("--listen=127.0.0.1:{port}")
            } else {
                arg.replace(&mount, &dir.path().display().to_string())
            }
        })
        .collect();
    let mut agent = support::tether_command()
        .args(&args)
        .env("TETHER_CACHE_DIR", dir.path().join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let url = format!("http://127.0.0.1:{port}{path}");
    let started = std::time::Instant::now();
    let mut last = String::new();
    let answered = loop {
        let url = url.clone();
        let answer = tokio::task::spawn_blocking(move || {
            reqwest::blocking::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        })
        .await
        .expect("request");
        match answer {
            Ok((200, _)) => break true,
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = agent.kill();
    let output = agent.wait_with_output().expect("the agent ends");
    assert!(
        answered,
        "{path} (args {args:?}) did not answer 200 within 30 s; last: {last}; agent said: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{path} answered 200 after {:?}", started.elapsed());
}

#[tokio::test]
async fn install_upgrade_and_uninstall_the_agent_in_the_cluster() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "install").await;
    let n = ns.name.as_str();
    let install = || {
        tether(&[
            "install",
            "-n",
            n,
            "--image",
            "tether:test",
            "--timeout",
            "90s",
        ])
    };

    let (ok, text) = install();
    assert!(ok, "{text}");
    assert!(
        text.contains("created Deployment.apps/tether-agent"),
        "{text}"
    );
    assert!(text.contains("Healthy"), "{text}");
    assert!(
        !text.contains("api-token:") && !text.contains("webhook secret:"),
        "tokens printed without --show-secrets: {text}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    let deployment = deployments.get("tether-agent").await.expect("deployment");
    let available = deployment
        .status
        .clone()
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    assert!(available, "the agent's Deployment is not Available");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let tokens = data(&secrets.get("tether-agent-tokens").await.expect("tokens"));
    assert_eq!(
        tokens.keys().collect::<Vec<_>>(),
        ["api-token", "readonly-token", "webhook-secret"]
    );
    assert!(tokens.values().all(|v| v.len() == 64));
    probe_answers_as_a_kubelet_would_see_it(&deployment, &tokens).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let writer = format!("tether-agent-writer:{n}");
    assert!(roles.get_opt(&writer).await.expect("get").is_some());

    // Again, the same binary: nothing to write, the tokens kept.
    let (ok, text) = install();
    assert!(ok, "{text}");
    assert!(
        text.contains("0 created, 0 updated, 0 pruned") && text.contains("(0 writes)"),
        "{text}"
    );
    assert!(text.contains("kept from the earlier install"), "{text}");
    let again = data(&secrets.get("tether-agent-tokens").await.expect("tokens"));
    assert_eq!(again, tokens, "a second install replaced the tokens");

    // An upgrade to a multi-tenant install with a new image: the Deployment is updated, the
    // writer role is pruned (the agent may no longer write), the tokens stay.
    let (ok, text) = tether(&[
        "install",
        "-n",
        n,
        "--image",
        "tether:next",
        "--tenants",
        "--timeout",
        "90s",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("updated Deployment.apps/tether-agent"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pruned ClusterRole.rbac.authorization.k8s.io/{writer}"
        )),
        "{text}"
    );
    assert!(roles.get_opt(&writer).await.expect("get").is_none());
    let deployment = deployments.get("tether-agent").await.expect("deployment");
    let container = &deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0];
    assert_eq!(container.image.as_deref(), Some("tether:next"));
    assert!(
        container
            .args
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == "--require-service-account"))
    );
    assert_eq!(
        data(&secrets.get("tether-agent-tokens").await.expect("tokens")),
        tokens
    );

    // Uninstall: the agent and its rights go; the namespace and the CRD stay.
    let (ok, text) = tether(&["uninstall", "-n", n]);
    assert!(ok, "{text}");
    assert!(
        text.contains("pruned Deployment.apps/tether-agent"),
        "{text}"
    );
    assert!(
        deployments
            .get_opt("tether-agent")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        secrets
            .get_opt("tether-agent-tokens")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        roles
            .get_opt(&format!("tether-agent:{n}"))
            .await
            .expect("get")
            .is_none()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(n).await.expect("get").is_some());
    // Again: nothing left to do. In a namespace never installed into: refused, and nothing
    // is created.
    let (ok, text) = tether(&["uninstall", "-n", n]);
    assert!(ok && text.contains("(0 writes)"), "{text}");
    let nowhere = support::unique_name("never-installed");
    let (ok, text) = tether(&["uninstall", "-n", &nowhere]);
    assert!(
        !ok && text.contains("nothing of tether's install"),
        "{text}"
    );
    assert!(namespaces.get_opt(&nowhere).await.expect("get").is_none());
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    assert!(
        crds.get_opt("applications.tether.dev")
            .await
            .expect("get")
            .is_some()
    );
}

#[test]
fn a_dry_run_prints_the_install_without_a_cluster_or_secrets() {
    let output = support::tether_offline(&[
        "install",
        "--dry-run",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("kind: CustomResourceDefinition"), "{text}");
    assert!(text.contains("kind: Deployment"), "{text}");
    assert!(text.contains("namespace: tether-system"), "{text}");
    assert!(!text.contains("kind: Secret"), "{text}");
    let output = support::tether_offline(&[
        "install",
        "--dry-run",
        "--show-secrets",
        "-n",
        "gitops",
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let secret = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|o| o["kind"] == "Secret")
        .expect("the Secret, asked for");
    assert_eq!(secret["metadata"]["namespace"], "gitops");
    assert_eq!(
        secret["stringData"]["api-token"].as_str().map(str::len),
        Some(64)
    );
}
