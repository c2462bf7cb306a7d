//! The test cluster's audit log, for what the API server's metrics cannot tell apart: its
//! request counts are per resource, and the namespace controller cleaning up other tests'
//! namespaces LISTs every kind. The audit log names the namespace; testenv's policy logs
//! the LISTs of the kinds below (and no other read).

use std::path::PathBuf;

/// Kinds whose LISTs the audit policy logs (testenv's `AUDIT_POLICY`).
pub const LISTED: [&str; 2] = ["controllerrevisions", "podtemplates"];

/// How many LISTs of `resource` (one of [`LISTED`]) in `namespace` the API server has
/// logged, over the audit log and its rotated files.
pub fn lists(resource: &str, namespace: &str) -> usize {
    assert!(
        LISTED.contains(&resource),
        "the audit policy does not log LISTs of {resource}"
    );
    let dir = super::kubeconfig()
        .parent()
        .map(PathBuf::from)
        .expect("the kubeconfig's folder");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the testenv folder") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("audit") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // Only the lines that can match are parsed: the log holds every write of every test.
        count += text
            .lines()
            .filter(|line| line.contains(namespace) && line.contains(resource))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| {
                let object = &event["objectRef"];
                event["verb"] == "list"
                    && event["stage"] == "ResponseComplete"
                    && object["resource"] == resource
                    && object["namespace"] == namespace
            })
            .count();
    }
    count
}
