//! Ignore rules (Argo CD's `ignoreDifferences`): fields of matching objects that are left
//! to someone else. A field named by a JSON pointer, or one a listed manager writes (an
//! autoscaler's `spec.replicas`), is taken out of the manifest tether applies: never shown
//! as drift, never put back, never fought over; the plan names each field it left out.
//! Pure: manifests and live objects in, manifests out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object::ObjectKey;

/// One rule, with Argo CD's field names.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    /// The API group ("" or absent: the core group).
    #[serde(default)]
    pub group: String,
    pub kind: String,
    /// Only this object (default: every object of the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// RFC 6901 pointers into the object (`/spec/replicas`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_pointers: Vec<String>,
    /// Field managers whose fields are theirs (`kube-controller-manager` for an HPA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields_managers: Vec<String>,
}

impl IgnoreRule {
    fn matches(&self, key: &ObjectKey) -> bool {
        self.kind == key.kind
            && self.group == key.group
            && self.name.as_ref().is_none_or(|n| *n == key.name)
            && self.namespace.as_ref().is_none_or(|n| *n == key.namespace)
    }
}

/// Whether a rule for `key` names managers (its live object must be read to apply it).
pub fn by_managers(rules: &[IgnoreRule], key: &ObjectKey) -> bool {
    rules
        .iter()
        .any(|r| r.matches(key) && !r.managed_fields_managers.is_empty())
}

/// Checks the rules as written: a kind, and each pointer a valid one.
pub fn check(rules: &[IgnoreRule], source: &str) -> Result<(), String> {
    for (index, rule) in rules.iter().enumerate() {
        let at = format!("{source}[{index}]");
        if rule.kind.is_empty() {
            return Err(format!("{at}: kind is required"));
        }
        if rule.json_pointers.is_empty() && rule.managed_fields_managers.is_empty() {
            return Err(format!("{at}: give jsonPointers or managedFieldsManagers"));
        }
        for pointer in &rule.json_pointers {
            if !pointer.starts_with('/') || pointer == "/" {
                return Err(format!(
                    "{at}: jsonPointers {pointer:?} is not a JSON pointer to a field (/spec/replicas)"
                ));
            }
            if [
                "/apiVersion",
                "/kind",
                "/metadata",
                "/metadata/name",
                "/metadata/namespace",
            ]
            .contains(&pointer.as_str())
            {
                return Err(format!(
                    "{at}: jsonPointers {pointer:?} names the object itself"
                ));
            }
        }
    }
    Ok(())
}

/// Takes the fields `rules` name out of `manifest` (the object `key`): without `live`, those
/// their pointers name; with it (as the cluster holds the object), those their managers
/// write. The fields left out, as pointers.
pub fn strip(
    manifest: &mut Value,
    key: &ObjectKey,
    live: Option<&Value>,
    rules: &[IgnoreRule],
) -> Vec<String> {
    let mut left_out = Vec::new();
    for rule in rules.iter().filter(|r| r.matches(key)) {
        let Some(live) = live else {
            for pointer in &rule.json_pointers {
                if remove(manifest, pointer) {
                    left_out.push(pointer.clone());
                }
            }
            continue;
        };
        for entry in live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let manager = entry["manager"].as_str().unwrap_or_default();
            if !rule.managed_fields_managers.iter().any(|m| m == manager) {
                continue;
            }
            let mut paths = Vec::new();
            field_paths(&entry["fieldsV1"], &mut String::new(), &mut paths);
            for pointer in paths {
                if pointer.starts_with("/metadata") {
                    continue;
                }
                if remove(manifest, &pointer) {
                    left_out.push(format!("{pointer} (written by {manager:?})"));
                }
            }
        }
    }
    left_out
}

/// The leaf fields of a managedFields `fieldsV1` set, as pointers (maps' `f:` keys only: a
/// list item's fields are the list's).
fn field_paths(set: &Value, prefix: &mut String, out: &mut Vec<String>) {
    let Some(map) = set.as_object() else {
        return;
    };
    let mut leaf = true;
    for (key, child) in map {
        if key == "." {
            continue;
        }
        let Some(name) = key.strip_prefix("f:") else {
            // `k:{…}` or `v:…`: an item of a list; the list is the field.
            continue;
        };
        leaf = false;
        let len = prefix.len();
        prefix.push('/');
        prefix.push_str(&name.replace('~', "~0").replace('/', "~1"));
        field_paths(child, prefix, out);
        prefix.truncate(len);
    }
    if leaf && !prefix.is_empty() {
        out.push(prefix.clone());
    }
}

/// Removes the field at `pointer`; whether there was one.
fn remove(value: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = if parent.is_empty() {
        Some(value)
    } else {
        value.pointer_mut(parent)
    };
    match target {
        Some(Value::Object(map)) => map.remove(&last).is_some(),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(index) if index < items.len() => {
                items.remove(index);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kind: &str, group: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn pointers_and_managers_fields_are_left_out() {
        let rules = vec![
            IgnoreRule {
                group: "apps".into(),
                kind: "Deployment".into(),
                managed_fields_managers: vec!["kube-controller-manager".into()],
                ..Default::default()
            },
            IgnoreRule {
                kind: "ConfigMap".into(),
                name: Some("tuned".into()),
                json_pointers: vec!["/data/level".into(), "/data/missing".into()],
                ..Default::default()
            },
        ];
        let mut deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        let live = json!({"metadata": {"managedFields": [
            {"manager": "tether", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ]}});
        let left = strip(
            &mut deployment,
            &key("Deployment", "apps", "web"),
            Some(&live),
            &rules,
        );
        assert_eq!(
            left,
            vec!["/spec/replicas (written by \"kube-controller-manager\")".to_string()]
        );
        assert!(deployment["spec"].get("replicas").is_none());
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
        let mut configmap = json!({"kind": "ConfigMap", "metadata": {"name": "tuned"}, "data": {"level": "3", "mode": "fast"}});
        let left = strip(&mut configmap, &key("ConfigMap", "", "tuned"), None, &rules);
        assert_eq!(left, vec!["/data/level".to_string()]);
        assert_eq!(configmap["data"], json!({"mode": "fast"}));
        // Another ConfigMap is not named by the rule.
        let mut other = json!({"data": {"level": "3"}});
        assert!(strip(&mut other, &key("ConfigMap", "", "other"), None, &rules).is_empty());
        assert!(check(&rules, "spec.ignoreDifferences").is_ok());
        let bad = vec![IgnoreRule {
            kind: "ConfigMap".into(),
            json_pointers: vec!["data.level".into()],
            ..Default::default()
        }];
        assert!(
            check(&bad, "spec.ignoreDifferences")
                .unwrap_err()
                .contains("not a JSON pointer")
        );
    }
}
