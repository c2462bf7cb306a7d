//! Unit tests of the applied-fields record (see [`super`]).

use super::*;

/// `manifest` with its record, as the plan sends it.
fn recorded(mut manifest: Value) -> Value {
    let record = record(&manifest);
    manifest["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION] = json!(record);
    manifest
}

/// A Deployment as tether applies it, and as the server then holds it: defaults and server
/// fields added.
fn applied_deployment() -> (Value, Value) {
    let desired = recorded(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "image": "web:1", "resources": {"limits": {"cpu": "500m"}}}
        ]}}}
    }));
    // What the server holds after applying it: defaults and server fields added.
    let mut live = desired.clone();
    live["metadata"]["uid"] = json!("u-1");
    live["metadata"]["resourceVersion"] = json!("42");
    live["spec"]["strategy"] = json!({"type": "RollingUpdate"});
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    live["status"] = json!({"replicas": 2});
    live["metadata"]["managedFields"] = json!([
        {"manager": "tether", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "fieldsV1": {"f:status": {}}},
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1":
         {"f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}}}
    ]);
    (desired, live)
}

#[test]
fn an_object_holding_every_applied_value_needs_no_dry_run() {
    let (desired, live) = applied_deployment();
    assert!(already_applied(&desired, &live));

    // Every doubt goes to the server.
    let changed = |edit: fn(&mut Value)| {
        let mut other = live.clone();
        edit(&mut other);
        already_applied(&desired, &other)
    };
    assert!(
        !changed(|l| l["spec"]["replicas"] = json!(3)),
        "a changed value"
    );
    assert!(
        !changed(|l| l["spec"]["replicas"] = json!(2.0)),
        "another form of it"
    );
    assert!(
        !changed(
            |l| l["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] =
                json!("0.5")
        ),
        "a normalised quantity"
    );
    assert!(
        !changed(|l| {
            l["metadata"]["labels"]
                .as_object_mut()
                .expect("labels")
                .remove("app");
        }),
        "a removed field"
    );
    assert!(
        !changed(|l| {
            let containers = l["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .expect("list");
            containers.push(json!({"name": "sidecar", "image": "s:1"}));
        }),
        "a list of another length"
    );
    assert!(
        !changed(|l| {
            l["metadata"]["annotations"]
                .as_object_mut()
                .expect("annotations")
                .remove(APPLIED_FIELDS_ANNOTATION);
        }),
        "no record (an older tether, or someone removed it)"
    );
    // Someone else wrote the content (a hand edit leaves its manager): even a key added
    // inside an atomic struct, which "holds" alone would accept.
    assert!(
        !changed(|l| l["metadata"]["managedFields"]
            .as_array_mut()
            .expect("entries")
            .push(json!({"manager": "kubectl-edit", "operation": "Update",
                         "fieldsV1": {"f:spec": {"f:selector": {}}}}))),
        "another manager's write"
    );
    assert!(
        !changed(|l| l["metadata"]["managedFields"]
            .as_array_mut()
            .expect("entries")
            .push(json!({"manager": "kubectl-label", "operation": "Update",
                         "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}))),
        "another manager owning a label tether sets"
    );
    assert!(
        !changed(|l| {
            l["metadata"]["managedFields"] = json!([]);
        }),
        "no apply of tether's on record"
    );
}

#[test]
fn a_changed_record_an_inexact_one_or_string_data_goes_to_the_server() {
    // Git dropped a field tether applied before: the records differ.
    let (desired, live) = applied_deployment();
    let mut fewer = desired.clone();
    fewer["metadata"]["labels"] = json!({});
    let fewer = recorded(fewer);
    assert!(!already_applied(&fewer, &live));
    // Two unnamed items share their record: a key Git drops from one of them would not
    // change it, so such lists always go to the server (one unnamed item is exact).
    let tolerations = |second: Value| {
        recorded(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"tolerations": [{"key": "a", "effect": "NoSchedule"}, second]}}),
        )
    };
    let mut held = tolerations(json!({"key": "b", "effect": "NoExecute"}));
    held["metadata"]["managedFields"] =
        json!([{"manager": "tether", "operation": "Apply", "fieldsV1": {}}]);
    let dropped = tolerations(json!({"key": "b"}));
    let annotation = |o: &Value| o["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION].clone();
    assert_eq!(
        annotation(&dropped),
        annotation(&held),
        "the record cannot tell"
    );
    assert!(!already_applied(&dropped, &held));
    let one = recorded(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]}}),
    );
    let mut one_held = one.clone();
    one_held["spec"]["ports"][0]["protocol"] = json!("TCP");
    one_held["metadata"]["managedFields"] =
        json!([{"manager": "tether", "operation": "Apply", "fieldsV1": {}}]);
    assert!(already_applied(&one, &one_held));
    // A Secret written with stringData: the server holds data.
    let secret = recorded(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s"}, "stringData": {"k": "v"}}));
    let mut stored = secret.clone();
    stored.as_object_mut().expect("object").remove("stringData");
    stored["data"] = json!({"k": "dg=="});
    assert!(!already_applied(&secret, &stored));
}
use serde_json::json;

#[test]
fn server_paths_are_reduced_to_names() {
    assert_eq!(coarse(".data.color"), ".data.color");
    assert_eq!(
        coarse(r#".spec.template.spec.containers[name="app"].image"#),
        ".spec.template.spec.containers[app].image"
    );
    assert_eq!(
        coarse(r#".spec.ports[port=80,protocol="TCP"].targetPort"#),
        ".spec.ports[].targetPort"
    );
    assert_eq!(
        coarse(r#".spec.ports[containerPort=80,name="http"].hostPort"#),
        ".spec.ports[http].hostPort"
    );
    assert_eq!(
        coarse(r#".metadata.finalizers[="a]b"]"#),
        ".metadata.finalizers[]"
    );
    assert_eq!(
        coarse(".metadata.annotations.example.com/note"),
        ".metadata.annotations.example.com/note"
    );
}

#[test]
fn a_record_knows_the_fields_it_was_made_from() {
    let manifest = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"example.com/note": "x"}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "app", "image": "a:1", "ports": [{"containerPort": 80}]}]}}
        }
    });
    let mut live = manifest.clone();
    live["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION] = json!(record(&manifest));
    for field in [
        ".spec.replicas",
        r#".spec.template.spec.containers[name="app"].image"#,
        r#".spec.template.spec.containers[name="app"].ports[containerPort=80,protocol="TCP"].containerPort"#,
        ".metadata.annotations.example.com/note",
    ] {
        assert_eq!(applied_before(&live, field), Some(true), "{field}");
    }
    for field in [
        ".spec.paused",
        r#".spec.template.spec.containers[name="sidecar"].image"#,
        ".metadata.labels.team",
    ] {
        assert_eq!(applied_before(&live, field), Some(false), "{field}");
    }
    assert_eq!(
        applied_before(&manifest, ".spec.replicas"),
        None,
        "no record"
    );
}

#[test]
fn a_record_does_not_count_itself_and_big_objects_keep_a_filter() {
    let plain = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
    let mut annotated = plain.clone();
    annotated["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: "00000000"});
    // The annotations map itself is a field; the record's own entry is not.
    let with = record(&annotated);
    let without = record(&plain);
    assert_eq!(with.len(), without.len() + WIDTH);
    // 30,000 keys: a filter within the annotation budget that knows every applied
    // field, and answers "applied" for about 1 in 1,000 fields it never saw.
    let data: serde_json::Map<String, Value> =
        (0..30_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let mut big = json!({"metadata": {"name": "a"}, "data": data});
    let kept = record(&big);
    assert!(kept.starts_with(BLOOM), "{}", &kept[..20]);
    assert!(kept.len() <= BLOOM_MAX_BYTES * 4 / 3 + 16, "{}", kept.len());
    big["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: kept});
    for i in (0..30_000).step_by(7) {
        assert_eq!(applied_before(&big, &format!(".data.k{i}")), Some(true));
    }
    let wrong = (0..20_000)
        .filter(|i| applied_before(&big, &format!(".data.never{i}")) == Some(true))
        .count();
    assert!(
        wrong < 60,
        "{wrong} of 20,000 fields never applied read as applied"
    );
    // Such an object is always dry-run; an older tether's mark of a big object is no
    // record (a member's fields then count as drift).
    assert!(!already_applied(&big, &big));
    big["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: TOO_MANY});
    assert_eq!(applied_before(&big, ".data.k1"), None);
    // A filter that cannot be read answers false (a conflict), never a panic.
    for broken in ["bloom:", "bloom:99:AAAA", "bloom:3:%%%", "bloom:3:"] {
        big["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: broken});
        assert_eq!(applied_before(&big, ".data.k1"), Some(false), "{broken}");
    }
}
