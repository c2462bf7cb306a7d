//! The manifests tests write into their repositories, built one way for every test.

use serde_json::{Value, json};

/// A ConfigMap `name` whose `data` holds one key, `color`.
pub fn configmap(name: &str, color: &str) -> String {
    configmap_in(name, None, color)
}

/// As [`configmap`], with `metadata.namespace` set when `namespace` is given.
pub fn configmap_in(name: &str, namespace: Option<&str>, color: &str) -> String {
    let namespace = namespace
        .map(|ns| format!("  namespace: {ns}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{namespace}data:\n  color: {color}\n"
    )
}

/// [`configmap`] as a JSON value (for a file written as JSON, or a request body).
pub fn configmap_json(name: &str, color: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"color": color}})
}
