//! Taking over fields from client-side apply, as Flux's ssa package does.
//!
//! Objects once applied with `kubectl apply` (client-side) or `kubectl create` have fields
//! owned by managers such as `kubectl-client-side-apply` with operation `Update`. Server-side
//! apply never removes fields other managers own, so a field deleted from Git would stay
//! forever. Before tether's first apply to such an object, those managers' entries are
//! handed to tether (operation `Apply`); then a field removed from Git is removed.

use serde_json::{Map, Value};

use super::FIELD_MANAGER;

/// Managers whose fields tether takes over.
pub const CLIENT_SIDE_MANAGERS: [&str; 3] =
    ["kubectl-client-side-apply", "kubectl", "before-first-apply"];

/// Whether a managedFields entry is a client-side manager's write to the object itself.
/// `kubectl scale` writes as manager `kubectl` too, but to the `scale` subresource: that
/// entry is not client-side apply, and the API server refuses to see it handed over
/// (a field taken that way is drift, taken back by a forced apply).
fn is_client_side(entry: &Value) -> bool {
    entry["operation"] == "Update"
        && entry["subresource"].is_null()
        && entry["manager"]
            .as_str()
            .is_some_and(|manager| CLIENT_SIDE_MANAGERS.contains(&manager))
}

pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The client-side managers present in `live`'s managedFields (empty: nothing to do).
pub fn client_side_managers(live: &Value) -> Vec<String> {
    let mut found: Vec<String> = live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| is_client_side(entry))
        .filter_map(|entry| entry["manager"].as_str())
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// managedFields with the client-side managers' entries merged into tether's `Apply`
/// entry of the same apiVersion.
pub fn take_over(managed_fields: &[Value]) -> Vec<Value> {
    let mut kept: Vec<Value> = Vec::new();
    let mut taken: Vec<Value> = Vec::new();
    for entry in managed_fields {
        let is_ours = entry["operation"] == "Apply"
            && entry["manager"] == FIELD_MANAGER
            && entry["subresource"].is_null();
        if is_client_side(entry) || is_ours {
            taken.push(entry.clone());
        } else {
            kept.push(entry.clone());
        }
    }
    let mut merged: Vec<Value> = Vec::new();
    for entry in taken {
        let api_version = entry["apiVersion"].clone();
        let fields = entry["fieldsV1"].clone();
        match merged.iter_mut().find(|m| m["apiVersion"] == api_version) {
            Some(existing) => merge(&mut existing["fieldsV1"], &fields),
            None => {
                let mut ours = Map::new();
                ours.insert("manager".into(), Value::String(FIELD_MANAGER.into()));
                ours.insert("operation".into(), Value::String("Apply".into()));
                ours.insert("apiVersion".into(), api_version);
                if let Some(time) = entry.get("time") {
                    ours.insert("time".into(), time.clone());
                }
                ours.insert("fieldsType".into(), Value::String("FieldsV1".into()));
                ours.insert("fieldsV1".into(), fields);
                merged.push(Value::Object(ours));
            }
        }
    }
    kept.extend(merged);
    kept
}

/// Union of two field sets (`{"f:data": {"f:a": {}}, ".": {}}` trees).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (into, from) if into.is_null() => *into = from.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_side_fields_move_to_tether() {
        let fields = vec![
            json!({"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
                   "fieldsV1": {"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:annotations": {}}}}),
            json!({"manager": "tether", "operation": "Apply", "apiVersion": "v1",
                   "fieldsV1": {"f:data": {"f:c": {}}}}),
            json!({"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                   "fieldsV1": {"f:status": {}}}),
            // `kubectl scale`: manager kubectl, but the scale subresource (and no time).
            json!({"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                   "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        ];
        assert_eq!(
            client_side_managers(&json!({"metadata": {"managedFields": fields.clone()}})),
            ["kubectl-client-side-apply"]
        );
        let result = take_over(&fields);
        assert_eq!(result.len(), 3);
        assert_eq!(
            result[0]["manager"], "kube-controller-manager",
            "other managers are untouched"
        );
        assert_eq!(
            result[1]["subresource"], "scale",
            "a scale by kubectl is not client-side apply"
        );
        assert_eq!(result[2]["manager"], "tether");
        assert_eq!(result[2]["operation"], "Apply");
        assert_eq!(
            result[2]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:b": {}, "f:c": {}}, "f:metadata": {"f:annotations": {}}})
        );
    }
}
