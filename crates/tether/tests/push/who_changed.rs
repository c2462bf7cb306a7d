//! Who changed what (issue 25 §4): drift names, for each field, the manager that wrote it,
//! how and when (managedFields) and, given the API server's audit log (`--audit-log`), the
//! user and user agent: a `kubectl scale`, a real `kubectl edit`, another manager's apply
//! and a controller's write under its ServiceAccount.

use crate::support;

use support::{TestNamespace, cluster, kubectl, tether, unique_name};

fn kubectl_ok(args: &[&str]) {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The testenv API server's audit log: next to its kubeconfig.
fn audit_log() -> std::path::PathBuf {
    support::kubeconfig()
        .parent()
        .expect("the kubeconfig's folder")
        .join("audit.log")
}

#[tokio::test]
async fn drift_names_the_user_and_user_agent_of_each_change_from_the_audit_log() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "who").await;
    let n = ns.name.as_str();
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(
        folder.join("web.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: app\n        image: registry.invalid/web:1\n",
    )
    .expect("write");
    std::fs::write(
        folder.join("settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  size: s\n  mode: calm\n  color: blue\n",
    )
    .expect("write");
    let app = unique_name("who");
    let path = folder.to_str().expect("utf-8");
    let out = tether(&["apply", "--path", path, "--app", &app, "-n", n]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl scale; a real kubectl edit (its editor a script); another manager's apply;
    // a controller's write under its ServiceAccount.
    kubectl_ok(&["-n", n, "scale", "deployment", "web", "--replicas=5"]);
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  size: s$/  size: xl/' \"$1\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let edited = std::process::Command::new(support::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(support::kubeconfig())
        .args(["-n", n, "edit", "configmap", "settings"])
        .env("KUBE_EDITOR", &editor)
        .output()
        .expect("kubectl edit runs");
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let apply = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"settings\"},\"data\":{\"color\":\"red\"}}";
    let other = dir.path().join("other.json");
    std::fs::write(&other, apply).expect("write");
    kubectl_ok(&[
        "-n",
        n,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=another-tool",
        "-f",
        other.to_str().expect("utf-8"),
    ]);
    kubectl_ok(&["-n", n, "create", "serviceaccount", "ctrl"]);
    kubectl_ok(&[
        "-n",
        n,
        "create",
        "role",
        "patcher",
        "--verb=get,patch",
        "--resource=configmaps",
    ]);
    kubectl_ok(&[
        "-n",
        n,
        "create",
        "rolebinding",
        "patcher",
        "--role=patcher",
        &format!("--serviceaccount={n}:ctrl"),
    ]);
    kubectl_ok(&[
        "-n",
        n,
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"mode":"busy"}}"#,
        &format!("--as=system:serviceaccount:{n}:ctrl"),
        "--field-manager=my-controller",
    ]);

    let log = audit_log();
    let log = log.to_str().expect("utf-8");
    let out = tether(&[
        "plan",
        "--path",
        path,
        "--app",
        &app,
        "-n",
        n,
        "--audit-log",
        log,
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    for (field, manager, user) in [
        // kubectl scale names no field manager: the API server takes its user agent's.
        (".spec.replicas", "kubectl", "with kubectl/v"),
        (".data.size", "kubectl-edit", "with kubectl/v"),
        (".data.color", "another-tool", "with kubectl/v"),
        (
            ".data.mode",
            "my-controller",
            &format!("user \"system:serviceaccount:{n}:ctrl\" (impersonated by "),
        ),
    ] {
        let line = said
            .lines()
            .find(|l| l.contains(field) && l.contains(&format!("changed by \"{manager}\"")))
            .unwrap_or_else(|| {
                panic!(
                    "{field} by {manager} not in the plan:\n{said}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(line.contains("; user \"") && line.contains(user), "{line}");
    }
    // The scale went through its subresource (whose managedFields entry has no time).
    assert!(
        said.contains("(Update of the scale subresource; user \""),
        "{said}"
    );
    // Without the log: managers only. A log that is not there: a clear error.
    let out = tether(&["plan", "--path", path, "--app", &app, "-n", n]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("; user \""));
    let out = tether(&[
        "plan",
        "--path",
        path,
        "--app",
        &app,
        "-n",
        n,
        "--audit-log",
        "/nonexistent/audit.log",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot read the audit log /nonexistent/audit.log"),
        "{err}"
    );
}
