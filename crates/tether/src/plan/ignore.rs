//! Ignore rules (Argo CD's `ignoreDifferences`, applied as its `RespectIgnoreDifferences`):
//! fields of matching objects that are left to someone else. For an object that exists, a
//! field named by a JSON pointer, or one a listed manager writes (an autoscaler's
//! `spec.replicas`), is applied with the value the cluster holds: never shown as drift,
//! never put back, never fought over, and never deleted (leaving it out of a server-side
//! apply would delete a field tether alone owned). An object being created gets Git's
//! values. Fields inside list items are not followed (the list is left as Git has it).
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

/// Whether a rule names `key` (its live object must then be read to apply it).
pub fn applies_to(rules: &[IgnoreRule], key: &ObjectKey) -> bool {
    rules.iter().any(|r| r.matches(key))
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

/// Sets the fields `rules` name in `manifest` (the object `key`) to the values `live` (the
/// object as the cluster holds it) has: those their pointers name, and those their
/// managers write. Nothing without `live` (a create applies Git's values). The fields
/// kept, as pointers.
pub fn respect(
    manifest: &mut Value,
    key: &ObjectKey,
    live: Option<&Value>,
    rules: &[IgnoreRule],
) -> Vec<String> {
    let Some(live) = live else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    for rule in rules.iter().filter(|r| r.matches(key)) {
        for pointer in &rule.json_pointers {
            if keep_live(manifest, live, pointer) {
                kept.push(pointer.clone());
            }
        }
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
                if keep_live(manifest, live, &pointer) {
                    kept.push(format!("{pointer} (written by {manager:?})"));
                }
            }
        }
    }
    kept
}

/// Puts the live value at `pointer` into `manifest` (when the cluster has one and the
/// parent exists in the manifest); whether it did.
fn keep_live(manifest: &mut Value, live: &Value, pointer: &str) -> bool {
    let Some(value) = live.pointer(pointer) else {
        return false;
    };
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = if parent.is_empty() {
        Some(manifest)
    } else {
        manifest.pointer_mut(parent)
    };
    match target {
        Some(Value::Object(map)) => {
            map.insert(last, value.clone());
            true
        }
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(index) if index < items.len() => {
                items[index] = value.clone();
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// The leaf fields of a managedFields `fieldsV1` set, as pointers (maps' `f:` keys only: a
/// list item's fields are the list's).
fn field_paths(set: &Value, prefix: &mut String, out: &mut Vec<String>) {
    let Some(map) = set.as_object() else {
        return;
    };
    // A field with list items under it (`k:{…}`, `v:…`) is not followed: the list stays as
    // Git has it (its items' other fields are tether's).
    if map
        .keys()
        .any(|k| k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:"))
    {
        return;
    }
    // A leaf is `{}`; a map holding only "." is owned as a map, not its contents: skipped.
    if map.is_empty() && !prefix.is_empty() {
        out.push(prefix.clone());
        return;
    }
    for (key, child) in map {
        let Some(name) = key.strip_prefix("f:") else {
            continue;
        };
        let len = prefix.len();
        prefix.push('/');
        prefix.push_str(&name.replace('~', "~0").replace('/', "~1"));
        field_paths(child, prefix, out);
        prefix.truncate(len);
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
    fn the_live_values_of_ignored_fields_are_applied_never_deleted() {
        let rules = vec![
            IgnoreRule {
                group: "apps".into(),
                kind: "Deployment".into(),
                managed_fields_managers: vec![
                    "kube-controller-manager".into(),
                    "kubectl-set".into(),
                ],
                ..Default::default()
            },
            IgnoreRule {
                kind: "ConfigMap".into(),
                name: Some("tuned".into()),
                json_pointers: vec!["/data/level".into(), "/data/missing".into()],
                ..Default::default()
            },
        ];
        let git = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]}]}}}});
        let live = json!({"metadata": {"managedFields": [
            {"manager": "tether", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            // A field inside a list item: not followed (the list stays as Git has it).
            {"manager": "kubectl-set", "operation": "Update",
             "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {"f:image": {}}}}}}}},
            // A map owned as a map only: its contents are not the manager's.
            {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:spec": {"f:strategy": {".": {}}}}}
        ]}, "spec": {"replicas": 5, "strategy": {"type": "Recreate"},
            "template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let mut deployment = git.clone();
        let kept = respect(
            &mut deployment,
            &key("Deployment", "apps", "web"),
            Some(&live),
            &rules,
        );
        assert_eq!(
            kept,
            vec!["/spec/replicas (written by \"kube-controller-manager\")".to_string()]
        );
        assert_eq!(
            deployment["spec"]["replicas"], 5,
            "the live value is applied, never deleted"
        );
        assert_eq!(
            deployment["spec"]["template"], git["spec"]["template"],
            "a list is left as Git has it"
        );
        assert!(deployment["spec"].get("strategy").is_none());
        // A create applies Git's values.
        let mut created = git.clone();
        assert!(
            respect(
                &mut created,
                &key("Deployment", "apps", "web"),
                None,
                &rules
            )
            .is_empty()
        );
        assert_eq!(created, git);
        let mut configmap = json!({"kind": "ConfigMap", "metadata": {"name": "tuned"}, "data": {"level": "3", "mode": "fast"}});
        let live = json!({"data": {"level": "7", "mode": "slow"}});
        let kept = respect(
            &mut configmap,
            &key("ConfigMap", "", "tuned"),
            Some(&live),
            &rules,
        );
        assert_eq!(kept, vec!["/data/level".to_string()]);
        assert_eq!(configmap["data"], json!({"level": "7", "mode": "fast"}));
        // Another ConfigMap is not named by the rule.
        let mut other = json!({"data": {"level": "3"}});
        assert!(
            respect(
                &mut other,
                &key("ConfigMap", "", "other"),
                Some(&live),
                &rules
            )
            .is_empty()
        );
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
