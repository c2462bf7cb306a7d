//! The operators' actions on an Application, as merge patches: the CLI (`tether sync`,
//! `suspend`, `resume`, `rollback`) and the web UI send the same ones.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Application, ROLLED_BACK_FROM_ANNOTATION, SYNC_REQUEST_ANNOTATION};

/// Ask the agent to sync now (with the ref's newest commit), even if nothing changed.
pub fn sync() -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({"metadata": {"annotations": {SYNC_REQUEST_ANNOTATION: now}}})
}

/// Suspend, or resume (after a rollback: follow the ref it replaced again).
pub fn suspend(app: &Application, suspend: bool) -> Result<Value, String> {
    let mut patch = json!({"spec": {"suspend": suspend}});
    if !suspend && let Some(previous) = app.annotations().get(ROLLED_BACK_FROM_ANNOTATION) {
        let previous: Value = serde_json::from_str(previous).map_err(|e| {
            format!("the {ROLLED_BACK_FROM_ANNOTATION} annotation is not JSON: {e}")
        })?;
        let mut reference = json!({"branch": null, "tag": null, "commit": null, "semver": null});
        if let (Some(target), Some(fields)) = (reference.as_object_mut(), previous.as_object()) {
            for (key, value) in fields {
                target.insert(key.clone(), value.clone());
            }
        }
        patch["spec"]["source"] = json!({"ref": reference});
        patch["metadata"] = json!({"annotations": {ROLLED_BACK_FROM_ANNOTATION: null}});
    }
    Ok(patch)
}

/// Pin the Application to `commit` (a full or abbreviated commit id); the first
/// rollback records the ref to return to on resume.
pub fn rollback(app: &Application, commit: &str) -> Result<Value, String> {
    if !crate::source::reference::is_commit_id(commit) {
        return Err(format!(
            "{commit:?} is not a commit id; pick one from the history"
        ));
    }
    let current = serde_json::to_string(&app.spec.source.r#ref).map_err(|e| e.to_string())?;
    let mut patch = json!({
        "spec": {"source": {"ref": {"branch": null, "tag": null, "semver": null, "commit": commit}}}
    });
    if !app.annotations().contains_key(ROLLED_BACK_FROM_ANNOTATION) {
        patch["metadata"] = json!({"annotations": {ROLLED_BACK_FROM_ANNOTATION: current}});
    }
    Ok(patch)
}
