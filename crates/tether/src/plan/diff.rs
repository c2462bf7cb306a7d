//! Pure comparison of a live object with what the server predicts after an apply.
//!
//! Both sides are stripped of what the server owns (managedFields, resourceVersion, uid,
//! generation, creationTimestamp, status), Secret values are replaced by markers that only
//! say whether a key changed, and the rest is compared and printed as a unified YAML diff.

use serde_json::Value;

/// Metadata fields the server writes; never a difference a user made.
const SERVER_METADATA: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
];

/// The object without server-owned fields.
pub fn normalize(object: &Value) -> Value {
    let mut out = object.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in SERVER_METADATA {
                metadata.remove(field);
            }
            // tether's record of the fields it applied is bookkeeping, not content.
            if let Some(annotations) = metadata
                .get_mut("annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.remove(super::fields::APPLIED_FIELDS_ANNOTATION);
                annotations.remove(super::fields::APPLIED_DIGEST_ANNOTATION);
            }
            for field in ["annotations", "labels"] {
                if metadata
                    .get(field)
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.is_empty())
                {
                    metadata.remove(field);
                }
            }
        }
    }
    out
}

pub fn is_secret(object: &Value) -> bool {
    object["apiVersion"] == "v1" && object["kind"] == "Secret"
}

/// Replaces the values of a Secret pair so a diff shows which keys were added, removed or
/// changed, and never a value. `before` or `after` may be absent (create, prune).
pub fn redact_secret_pair(before: Option<&mut Value>, after: Option<&mut Value>) {
    let decoded = |object: &Value| -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut values = std::collections::BTreeMap::new();
        if let Some(data) = object.get("data").and_then(Value::as_object) {
            for (key, value) in data {
                let text = value.as_str().unwrap_or_default();
                values.insert(
                    key.clone(),
                    base64_decode(text).unwrap_or_else(|| text.as_bytes().to_vec()),
                );
            }
        }
        if let Some(data) = object.get("stringData").and_then(Value::as_object) {
            for (key, value) in data {
                values.insert(
                    key.clone(),
                    value.as_str().unwrap_or_default().as_bytes().to_vec(),
                );
            }
        }
        values
    };
    let before_values = before.as_deref().map(decoded).unwrap_or_default();
    let after_values = after.as_deref().map(decoded).unwrap_or_default();
    let mask = |object: &mut Value,
                mine: &std::collections::BTreeMap<String, Vec<u8>>,
                other: &std::collections::BTreeMap<String, Vec<u8>>,
                side: &str| {
        let Some(map) = object.as_object_mut() else {
            return;
        };
        map.remove("stringData");
        // kubectl's client-side record holds the whole Secret, values included.
        if let Some(annotations) = map
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let mut masked = serde_json::Map::new();
        for (key, value) in mine {
            let marker = match other.get(key) {
                Some(theirs) if theirs == value => "<redacted>".to_string(),
                Some(_) => format!("<redacted: {side} value>"),
                None => "<redacted>".to_string(),
            };
            masked.insert(key.clone(), Value::String(marker));
        }
        if mine.is_empty() {
            map.remove("data");
        } else {
            map.insert("data".into(), Value::Object(masked));
        }
    };
    if let Some(before) = before {
        mask(before, &before_values, &after_values, "old");
    }
    if let Some(after) = after {
        mask(after, &after_values, &before_values, "new");
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// YAML text of a value, for diffs ("" for none).
pub fn to_yaml(value: Option<&Value>) -> String {
    match value {
        Some(v) => {
            serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot print as YAML: {e}\n"))
        }
        None => String::new(),
    }
}

/// A unified diff (3 lines of context) from `before` to `after`; empty when equal.
pub fn unified_diff(before: &str, after: &str, label: &str) -> String {
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live: {label}"), &format!("desired: {label}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_drops_what_the_server_owns() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "n", "uid": "1", "resourceVersion": "9", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}], "labels": {"a": "b"},
                         "annotations": {}},
            "data": {"k": "v"},
            "status": {"x": 1}
        });
        assert_eq!(
            normalize(&live),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "namespace": "n", "labels": {"a": "b"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn secret_diffs_show_keys_never_values() {
        // "aHVudGVyMg==" is base64 of "hunter2"; stringData and data compare by decoded value.
        // kubectl's client-side record (last-applied-configuration) holds the values too.
        let mut live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"same\":\"aHVudGVyMg==\"}}"}},
            "data": {"same": "aHVudGVyMg==", "changed": "b2xk", "removed": "eA=="}});
        let mut desired = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"same": "hunter2", "changed": "new", "added": "y"}});
        redact_secret_pair(Some(&mut live), Some(&mut desired));
        let diff = unified_diff(&to_yaml(Some(&live)), &to_yaml(Some(&desired)), "Secret/s");
        for secret in ["hunter2", "aHVudGVyMg", "b2xk", "old\n", "eA==", "\"y\""] {
            assert!(!diff.contains(secret), "{secret} leaked: {diff}");
        }
        assert!(
            diff.contains("-  changed: \"<redacted: old value>\""),
            "{diff}"
        );
        assert!(
            diff.contains("+  changed: \"<redacted: new value>\""),
            "{diff}"
        );
        assert!(diff.contains("-  removed: <redacted>"), "{diff}");
        assert!(diff.contains("+  added: <redacted>"), "{diff}");
        assert!(
            diff.contains("   same: <redacted>"),
            "unchanged keys are context: {diff}"
        );
    }

    #[test]
    fn equal_objects_have_no_diff() {
        let text = to_yaml(Some(&json!({"a": 1})));
        assert_eq!(unified_diff(&text, &text, "x"), "");
        let diff = unified_diff("a: 1\nb: 2\n", "a: 1\nb: 3\n", "ConfigMap/c");
        assert!(diff.contains("-b: 2\n+b: 3\n"), "{diff}");
        assert!(
            diff.starts_with("--- live: ConfigMap/c\n+++ desired: ConfigMap/c\n"),
            "{diff}"
        );
    }
}
