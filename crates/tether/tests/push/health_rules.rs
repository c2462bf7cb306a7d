//! Health rules for a custom resource (CEL, in Flux's healthCheckExprs form) against the
//! real API server: `tether apply --wait --health-rules` waits while the rule says the
//! object is in progress, succeeds once its status says `current`, and fails naming the rule
//! when it says `failed`; an Application's own `spec.healthCheckExprs` decide its health in
//! the agent the same way.

use crate::support;

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::json;
use support::agent::{create_application, options_for, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::{TestCrd, TestNamespace, cluster, said, unique_name};
use tether::agent::{Application, install_crd};

const RULES: &str = "\
- apiVersion: GROUP/v1
  kind: Valve
  inProgress: \"!has(status.state) || status.state == 'turning'\"
  failed: \"status.state == 'stuck'\"
  current: \"status.state == 'open'\"
";

fn valve(name: &str, group: &str) -> String {
    format!("apiVersion: {group}/v1\nkind: Valve\nmetadata:\n  name: {name}\nspec:\n  size: 3\n")
}

async fn set_state(valves: &Api<DynamicObject>, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let patched = valves
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"state": state}})),
            )
            .await;
        if patched.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not created within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rule_decides_the_health_of_a_custom_resource_in_push_and_pull() {
    let client = cluster().await.client();
    let group = format!("{}.example.dev", unique_name("hr"));
    let _crd = TestCrd::create_with(&client, &group, "Valve", "valves", true).await;
    let ns = TestNamespace::create(&client, "health-rules").await;
    let dir = tempfile::tempdir().expect("temp");
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES.replace("GROUP", &group)).expect("rules");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("valve.yaml"), valve("main", &group)).expect("write");
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Valve".into(),
        plural: "valves".into(),
    };
    let valves: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);

    // The valve opens 2 s after the apply starts: --wait waits for the rule's `current`.
    let apply = |wait: &str| {
        let args = [
            "apply",
            "--path",
            folder.to_str().expect("utf-8 path"),
            "--app",
            "valves",
            "-n",
            &ns.name,
            "--wait",
            "--timeout",
            wait,
            "--health-rules",
            rules.to_str().expect("utf-8 path"),
        ];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::tether(&args)
        })
    };
    let started = Instant::now();
    let running = apply("60s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    if running.is_finished() {
        let out = running.await.expect("apply ran");
        panic!("the apply did not wait: {}", said(&out));
    }
    set_state(&valves, "main", "turning").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_state(&valves, "main", "open").await;
    let out = running.await.expect("apply ran");
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the rule"
    );

    // Stuck: --wait fails and names the rule.
    set_state(&valves, "main", "stuck").await;
    let out = apply("20s").await.expect("apply ran");
    assert_ne!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        said(&out).contains("rule for Valve: failed"),
        "the rule that decided is named: {}",
        said(&out)
    );

    // Pull: an Application's own rule (here: stuck counts as open) decides its health.
    install_crd(&client).await.expect("CRD installed");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/valve.yaml", &valve("pulled", &group));
    repo.commit("a valve");
    let daemon = GitDaemon::start(&root);
    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    create_application(
        &apps,
        "valve",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"},
            "healthCheckExprs": [{
                "apiVersion": format!("{group}/v1"), "kind": "Valve",
                "failed": "status.state == 'broken'",
                "current": "status.state in ['open', 'stuck']"
            }]
        }),
    )
    .await;
    set_state(&valves, "pulled", "stuck").await;
    until(&apps, "valve", "Healthy by the Application's rule", |a| {
        support::agent::health(a) == Some("Healthy")
    })
    .await;
    set_state(&valves, "pulled", "broken").await;
    until(&apps, "valve", "Degraded by the Application's rule", |a| {
        support::agent::health(a) == Some("Degraded")
    })
    .await;
    // A rule that is not CEL is a spec error naming it.
    create_application(
        &apps,
        "bad-rule",
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "destination": {"namespace": ns.name},
            "healthCheckExprs": [{"apiVersion": format!("{group}/v1"), "kind": "Valve", "current": "status.state =="}]
        }),
    )
    .await;
    let message = support::agent::fails_with(&apps, "bad-rule", "spec.healthCheckExprs[0]").await;
    assert!(message.contains("not a CEL expression"), "{message}");
    agent.stop().await.expect("the agent stops");
}
