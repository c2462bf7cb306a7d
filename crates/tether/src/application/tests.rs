//! The Application types' tests: the documented shape parses, the CRD's columns, the
//! spec's checks and the states shown.

use kube::CustomResourceExt;

use super::*;

#[test]
fn every_application_is_in_exactly_one_sync_and_one_health_state() {
    let condition = |status: &str, reason: &str| Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: String::new(),
        observed_generation: None,
    };
    let with =
        |sync: Option<&str>, ready: Option<Condition>, health: Option<&str>| ApplicationStatus {
            sync: sync.map(|s| SyncStatus {
                status: s.into(),
                ..Default::default()
            }),
            conditions: ready.into_iter().collect(),
            health: health.map(str::to_string),
            ..Default::default()
        };
    let synced = with(
        Some("Synced"),
        Some(condition("True", "Succeeded")),
        Some("Healthy"),
    );
    // A sync that failed after an earlier success: its status still holds "Synced".
    let failed = with(
        Some("Synced"),
        Some(condition("False", "Failed")),
        Some("Healthy"),
    );
    let never = with(None, None, None);
    let odd = with(Some("Weird"), None, Some("Exploded"));
    assert_eq!(sync_state(Some(&synced), Objects::NotPlanned), "Synced");
    assert_eq!(sync_state(Some(&failed), Objects::NotPlanned), "Failed");
    assert_eq!(sync_state(Some(&never), Objects::NotPlanned), "Unknown");
    assert_eq!(sync_state(None, Objects::NotPlanned), "Unknown");
    assert_eq!(sync_state(Some(&odd), Objects::NotPlanned), "Unknown");
    assert_eq!(health_state(Some(&odd)), "Unknown");
    assert_eq!(health_state(None), "Unknown");
    // With a plan, the objects decide: one differing is OutOfSync whatever the status
    // says; no plan is Unknown (never "0 objects differ").
    assert_eq!(
        sync_state(Some(&synced), Objects::Planned { differing: 1 }),
        "OutOfSync"
    );
    assert_eq!(sync_state(Some(&synced), Objects::Unplanned), "Unknown");
    assert_eq!(
        sync_state(Some(&synced), Objects::Planned { differing: 0 }),
        "Synced"
    );
    assert_eq!(
        sync_state(Some(&failed), Objects::Planned { differing: 0 }),
        "Failed"
    );
    for status in [&synced, &failed, &never, &odd] {
        assert!(SYNC_STATES.contains(&sync_state(Some(status), Objects::NotPlanned)));
        assert!(HEALTH_STATES.contains(&health_state(Some(status))));
    }
}

#[test]
fn the_documented_shape_parses() {
    let yaml = r#"
apiVersion: tether.dev/v1alpha1
kind: Application
metadata: {name: guestbook, namespace: tether-system}
spec:
  source:
    repoURL: https://git.example.com/team/deploy.git
    ref: {branch: main}
    path: apps/guestbook
    secretRef: {name: git-creds}
  render: {}
  destination: {namespace: guestbook}
  syncPolicy:
    automated: true
    prune: true
    selfHeal: true
    interval: 1m
    retry: {limit: 5, backoff: 5s}
  dependsOn: [{name: infra}]
"#;
    let app: Application = serde_saphyr::from_str(yaml).expect("the contract's example parses");
    assert_eq!(
        app.spec.source.repo_url,
        "https://git.example.com/team/deploy.git"
    );
    assert_eq!(
        app.spec.source.r#ref.as_ref_text().expect("one ref"),
        "branch:main"
    );
    assert_eq!(app.spec.depends_on[0].name, "infra");
    assert_eq!(app.spec.sync_policy.retry.limit, 5);
}

#[test]
fn the_crd_has_printer_columns_and_a_status_subresource() {
    let crd = Application::crd();
    let version = &crd.spec.versions[0];
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .expect("columns")
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Revision", "Sync", "Health", "Ready", "Age"]);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["app".to_string()][..])
    );
}

#[test]
fn a_malformed_spec_names_the_field() {
    let good: Application = serde_saphyr::from_str(
        "apiVersion: tether.dev/v1alpha1\nkind: Application\nmetadata: {name: a}\n\
         spec: {source: {repoURL: https://git.example.com/x.git}, destination: {namespace: web}}\n",
    )
    .expect("parses");
    good.spec.check().expect("a good spec");
    let broken = |change: fn(&mut ApplicationSpec)| {
        let mut spec = good.spec.clone();
        change(&mut spec);
        spec.check().expect_err("a malformed spec")
    };
    assert!(
        broken(|s| s.sync_policy.interval = "soon".into()).starts_with("spec.syncPolicy.interval:")
    );
    assert!(
        broken(|s| s.sync_policy.interval = "0s".into())
            .starts_with("spec.syncPolicy.interval is 0")
    );
    assert!(
        broken(|s| s.sync_policy.retry.backoff = "5d".into())
            .starts_with("spec.syncPolicy.retry.backoff:")
    );
    assert!(
        broken(|s| s.destination.namespace = "Web".into())
            .starts_with("spec.destination.namespace")
    );
    assert!(broken(|s| s.source.path = "../x".into()).starts_with("spec.source.path"));
    assert!(
        broken(|s| s.source.r#ref.semver = Some(">=1.x.y".into())).starts_with("spec.source.ref")
    );
    assert!(
        broken(|s| s.render.values_files = vec!["/etc/passwd".into()])
            .starts_with("spec.render.valuesFiles")
    );
    assert!(
        broken(|s| s.render.renderer = Some("jsonnet".into())).starts_with("spec.render.renderer")
    );
}

#[test]
fn two_refs_at_once_are_refused() {
    let git_ref = GitRef {
        branch: Some("main".into()),
        tag: Some("v1".into()),
        ..Default::default()
    };
    assert!(git_ref.as_ref_text().is_err());
}

#[test]
fn the_example_application_is_valid_and_its_rules_judge_a_greeting() {
    let text = include_str!("../../../../examples/application.yaml");
    let documents = crate::render::yaml::parse_documents(text, &Default::default()).expect("YAML");
    let app: super::Application = documents
        .into_iter()
        .map(|d| d.value)
        .find(|v| v["kind"] == "Application")
        .map(|v| serde_json::from_value(v).expect("an Application"))
        .expect("the example has an Application");
    app.spec.check().expect("the example's spec is valid");
    let rules = app.spec.health_rules().expect("its rules compile");
    assert_eq!(app.spec.ignore_differences.len(), 1);
    let greeting = |language: &str| {
        serde_json::json!({"apiVersion": "example.tether.dev/v1", "kind": "Greeting",
            "metadata": {"name": "welcome"}, "spec": {"message": "hi", "language": language}})
    };
    use crate::health::{HealthStatus, assess_with};
    assert_eq!(
        assess_with(Some(&greeting("en")), &rules).status,
        HealthStatus::Healthy
    );
    assert_eq!(
        assess_with(Some(&greeting("xx")), &rules).status,
        HealthStatus::Degraded
    );
}
