//! Which fields tether applied to an object, remembered on the object itself, so that a
//! later plan can tell drift from a conflict: a field tether applied before and someone
//! changed since is drift (Git's value goes back), while a field tether never applied and
//! another manager owns is a conflict. Server-side apply cannot tell: once someone changes
//! a field, its ownership moves to them and tether's claim is gone.
//!
//! The record is an annotation holding a short digest of each field path (list items by
//! their `name` where they have one), written with every apply and left out of diffs.

use std::collections::BTreeSet;

use serde_json::Value;

/// The annotation with the digests of the field paths tether applied.
pub const APPLIED_FIELDS_ANNOTATION: &str = "tether.dev/applied-fields";
/// Objects with more fields than this (big CRDs) keep no list, only [`TOO_MANY`].
const LIMIT: usize = 4096;
/// The record of an object with too many fields to list: every conflict on it is one.
const TOO_MANY: &str = "too-many-fields";
/// Hex digits per path digest.
const WIDTH: usize = 8;

/// The record for `manifest` (the object as tether applies it).
pub fn record(manifest: &Value) -> String {
    let mut paths = BTreeSet::new();
    if let Some(map) = manifest.as_object() {
        for (key, value) in map {
            if key == "apiVersion" || key == "kind" || key == "status" {
                continue;
            }
            walk(value, &format!(".{key}"), &mut paths);
        }
    }
    paths.remove(&format!(
        ".metadata.annotations.{APPLIED_FIELDS_ANNOTATION}"
    ));
    let digests: BTreeSet<String> = paths.iter().map(|p| digest(p)).collect();
    if digests.len() > LIMIT {
        return TOO_MANY.to_string();
    }
    digests.into_iter().collect()
}

/// Whether tether applied `field` (a path as the API server names it in a conflict, e.g.
/// `.spec.template.spec.containers[name="app"].image`) when it last applied `live`.
/// `None` when the object holds no record (applied by an older tether). An object too big
/// to list its fields answers `false`: taking a field another manager owns is left to the
/// user there.
pub fn applied_before(live: &Value, field: &str) -> Option<bool> {
    let record = live["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION].as_str()?;
    if record == TOO_MANY {
        return Some(false);
    }
    let wanted = digest(&coarse(field));
    Some(
        record
            .as_bytes()
            .chunks(WIDTH)
            .any(|chunk| chunk == wanted.as_bytes()),
    )
}

fn digest(path: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(path.as_bytes());
    hash[..WIDTH / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every field path of `value` under `path`, in the coarse form of [`coarse`]: list items
/// as `[<name>]` when they have a name (and also as `[]`), else `[]`.
fn walk(value: &Value, path: &str, paths: &mut BTreeSet<String>) {
    paths.insert(path.to_string());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                walk(child, &format!("{path}.{key}"), paths);
            }
        }
        Value::Array(items) => {
            for item in items {
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    walk(item, &format!("{path}[{name}]"), paths);
                }
                walk(item, &format!("{path}[]"), paths);
            }
        }
        _ => {}
    }
}

/// A field path as the API server prints it, with each list selector reduced to the item's
/// name (`[name="app"]` → `[app]`) or to `[]` (other keys, set values).
fn coarse(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '[' {
            out.push(c);
            continue;
        }
        // The selector, up to its closing bracket outside quotes.
        let mut selector = String::new();
        let mut quoted = false;
        let mut escaped = false;
        for c in chars.by_ref() {
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = false;
                }
            } else if c == '"' {
                quoted = true;
            } else if c == ']' {
                break;
            }
            selector.push(c);
        }
        out.push('[');
        if let Some(name) = selector_name(&selector) {
            out.push_str(&name);
        }
        out.push(']');
    }
    out
}

/// The `name` of a selector such as `name="app"` or `containerPort=80,name="http"`.
fn selector_name(selector: &str) -> Option<String> {
    let start = if selector.starts_with("name=") {
        0
    } else {
        selector.find(",name=")? + 1
    };
    let rest = &selector[start + "name=".len()..];
    let mut deserializer = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    deserializer.next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn a_record_does_not_count_itself_and_big_objects_keep_none() {
        let plain = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        let mut annotated = plain.clone();
        annotated["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: "00000000"});
        // The annotations map itself is a field; the record's own entry is not.
        let with = record(&annotated);
        let without = record(&plain);
        assert_eq!(with.len(), without.len() + WIDTH);
        let data: serde_json::Map<String, Value> =
            (0..LIMIT).map(|i| (format!("k{i}"), json!("v"))).collect();
        let mut big = json!({"metadata": {"name": "a"}, "data": data});
        let kept = record(&big);
        assert_eq!(kept, TOO_MANY);
        big["metadata"]["annotations"] = json!({APPLIED_FIELDS_ANNOTATION: kept});
        assert_eq!(
            applied_before(&big, ".data.k1"),
            Some(false),
            "a conflict, not drift"
        );
    }
}
