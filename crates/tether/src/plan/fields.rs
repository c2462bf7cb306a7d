//! Which fields tether applied to an object, remembered on the object itself, so that a
//! later plan can tell drift from a conflict: a field tether applied before and someone
//! changed since is drift (Git's value goes back), while a field tether never applied and
//! another manager owns is a conflict. Server-side apply cannot tell: once someone changes
//! a field, its ownership moves to them and tether's claim is gone.
//!
//! The record is an annotation written with every apply and left out of diffs. Up to
//! [`LIST_LIMIT`] field paths (list items by their `name` where they have one) it lists a
//! short digest of each. Bigger objects (a CRD's schema, a ConfigMap of thousands of keys)
//! keep a Bloom filter of their paths instead (`bloom:<hashes>:<base64>`), at most
//! [`BLOOM_MAX_BYTES`]: about 14 bits a path, so about 1 field in 1,000 that tether never
//! applied reads as applied (up to 30,000 paths; past that the filter fills and the rate
//! grows). Such a false answer only ever turns a conflict on a field Git sets into drift:
//! tether takes a field it wants back from another manager instead of stopping; it never
//! hides drift.

use std::collections::BTreeSet;

use serde_json::Value;

/// The annotation with the digests of the field paths tether applied.
pub const APPLIED_FIELDS_ANNOTATION: &str = "tether.dev/applied-fields";
/// Objects with more field paths than this keep a Bloom filter instead of a list.
const LIST_LIMIT: usize = 4096;
/// What tether before the Bloom filter wrote for objects past [`LIST_LIMIT`]: no list, so
/// read as no record at all (see [`applied_before`]).
const TOO_MANY: &str = "too-many-fields";
/// The prefix of a Bloom filter record.
const BLOOM: &str = "bloom:";
/// Bits of filter per path: with the best number of hashes, ~0.1 % false answers.
const BLOOM_BITS_PER_PATH: usize = 15;
/// The largest filter (base64 makes it a third bigger in the annotation: 64 KiB of the
/// 256 KiB all annotations may hold).
const BLOOM_MAX_BYTES: usize = 48 * 1024;
/// Hex digits per path digest.
const WIDTH: usize = 8;
/// The annotation with a digest of the whole object as tether applied it: what a write
/// carries of what it applied. The agent compares it with the digest of what it applied
/// itself, so that another process's apply under tether's field manager (a laptop's
/// `tether apply`, a second agent) is drift like anyone else's write (DESIGN rule 12).
pub const APPLIED_DIGEST_ANNOTATION: &str = "tether.dev/applied-digest";
/// Hex digits of the applied digest.
const CONTENT_WIDTH: usize = 16;

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
    for annotation in [APPLIED_FIELDS_ANNOTATION, APPLIED_DIGEST_ANNOTATION] {
        paths.remove(&format!(".metadata.annotations.{annotation}"));
    }
    let digests: BTreeSet<String> = paths.iter().map(|p| digest(p)).collect();
    if digests.len() > LIST_LIMIT {
        return bloom(&paths);
    }
    digests.into_iter().collect()
}

/// A Bloom filter of `paths`: `bloom:<hashes>:<base64 bits>`.
fn bloom(paths: &BTreeSet<String>) -> String {
    use base64::Engine;
    let bytes = (paths.len() * BLOOM_BITS_PER_PATH)
        .div_ceil(8)
        .clamp(8, BLOOM_MAX_BYTES);
    let bits = bytes * 8;
    // The number of hashes that gives the fewest false answers: bits/paths × ln 2.
    let hashes = ((bits as f64 / paths.len().max(1) as f64) * std::f64::consts::LN_2)
        .round()
        .clamp(1.0, 16.0) as u32;
    let mut filter = vec![0u8; bytes];
    for path in paths {
        for bit in bloom_bits(path, hashes, bits) {
            filter[bit / 8] |= 1 << (bit % 8);
        }
    }
    format!(
        "{BLOOM}{hashes}:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(filter)
    )
}

/// The bits of `path` in a filter of `bits` bits with `hashes` hashes (double hashing of
/// its SHA-256).
fn bloom_bits(path: &str, hashes: u32, bits: usize) -> impl Iterator<Item = usize> {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(path.as_bytes());
    let word = |at: usize| u64::from_le_bytes(hash[at..at + 8].try_into().expect("8 bytes"));
    let (first, step) = (word(0), word(8) | 1);
    (0..hashes as u64)
        .map(move |i| (first.wrapping_add(i.wrapping_mul(step)) % bits as u64) as usize)
}

/// Whether a Bloom filter record holds `path`; `None` when the record is not one.
fn bloom_holds(record: &str, path: &str) -> Option<bool> {
    use base64::Engine;
    let (hashes, filter) = record.strip_prefix(BLOOM)?.split_once(':')?;
    let hashes: u32 = hashes.parse().ok().filter(|h| (1..=16).contains(h))?;
    let filter = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(filter)
        .ok()
        .filter(|f| !f.is_empty())?;
    let bits = filter.len() * 8;
    Some(bloom_bits(path, hashes, bits).all(|bit| filter[bit / 8] & (1 << (bit % 8)) != 0))
}

/// The digest of `manifest` as tether applies it, bookkeeping annotations left out: the
/// same content gives the same digest whatever the order of its keys.
pub fn content_digest(manifest: &Value) -> String {
    use sha2::Digest;
    fn feed(value: &Value, hasher: &mut sha2::Sha256, top: bool) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                hasher.update(b"{");
                for key in keys {
                    if top && key == "status" {
                        continue;
                    }
                    let child = &map[key];
                    hasher.update(serde_json::to_string(key).expect("strings serialize"));
                    hasher.update(b":");
                    if top && key == "metadata" {
                        let mut metadata = child.clone();
                        if let Some(annotations) = metadata
                            .get_mut("annotations")
                            .and_then(Value::as_object_mut)
                        {
                            annotations.remove(APPLIED_FIELDS_ANNOTATION);
                            annotations.remove(APPLIED_DIGEST_ANNOTATION);
                        }
                        feed(&metadata, hasher, false);
                    } else {
                        feed(child, hasher, false);
                    }
                    hasher.update(b",");
                }
                hasher.update(b"}");
            }
            Value::Array(items) => {
                hasher.update(b"[");
                for item in items {
                    feed(item, hasher, false);
                    hasher.update(b",");
                }
                hasher.update(b"]");
            }
            other => hasher.update(other.to_string()),
        }
    }
    let mut hasher = sha2::Sha256::new();
    feed(manifest, &mut hasher, true);
    hasher.finalize()[..CONTENT_WIDTH / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The applied digest an object carries, if any.
pub fn carried_digest(object: &Value) -> Option<&str> {
    object["metadata"]["annotations"][APPLIED_DIGEST_ANNOTATION].as_str()
}

/// Whether tether applied `field` (a path as the API server names it in a conflict, e.g.
/// `.spec.template.spec.containers[name="app"].image`) when it last applied `live`.
/// `None` when the object holds no record (applied by an older tether, or marked
/// [`TOO_MANY`] by one). A big object's Bloom filter may answer `true` for a field tether
/// never applied (see the module).
pub fn applied_before(live: &Value, field: &str) -> Option<bool> {
    let record = live["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION].as_str()?;
    if record == TOO_MANY {
        return None;
    }
    if record.starts_with(BLOOM) {
        return Some(bloom_holds(record, &coarse(field)).unwrap_or(false));
    }
    let wanted = digest(&coarse(field));
    Some(
        record
            .as_bytes()
            .chunks(WIDTH)
            .any(|chunk| chunk == wanted.as_bytes()),
    )
}

/// Whether applying `desired` to `live` cannot change anything, so that no dry-run is
/// needed to know it. All of these must hold, else the server decides (a dry-run):
/// - the record says exactly which fields tether would apply: every list of objects in
///   `desired` has at most one item or items with distinct names (the record keys list
///   items by name, so two unnamed items would share their paths and hide a removed key);
///   an object too big to record never qualifies;
/// - tether applied exactly these fields last time (the records match);
/// - nobody else wrote the object's content since: its managedFields hold tether's apply,
///   status writes, and otherwise only annotations or labels that `desired` does not set
///   (the Deployment controller's revision annotation). A hand edit leaves its manager
///   there, so it is always dry-run;
/// - the live object holds every value of `desired` as written (maps key by key, lists
///   item by item at the same length): a value in another form (`0.5` vs `500m`, `1` vs
///   `1.0`), a Secret's `stringData` (the server stores `data`) go to the server.
pub fn already_applied(desired: &Value, live: &Value) -> bool {
    let record = |object: &Value| {
        object["metadata"]["annotations"][APPLIED_FIELDS_ANNOTATION]
            .as_str()
            .map(str::to_string)
    };
    match (record(desired), record(live)) {
        // A filter is no exact list of the fields: such an object is always dry-run.
        (Some(wanted), Some(held))
            if wanted == held && wanted != TOO_MANY && !wanted.starts_with(BLOOM) => {}
        _ => return false,
    }
    exactly_recorded(desired) && only_tether_wrote(desired, live) && holds(live, desired)
}

/// Whether the record of `value` names each of its fields apart: no list holds two items
/// of objects that share a name or have none.
fn exactly_recorded(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().all(exactly_recorded),
        Value::Array(items) => {
            let objects = items.iter().filter(|i| i.is_object()).count();
            let mut names = BTreeSet::new();
            let named = items
                .iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str))
                .all(|name| names.insert(name));
            (objects <= 1 || (named && names.len() == items.len()))
                && items.iter().all(exactly_recorded)
        }
        _ => true,
    }
}

/// Whether tether's apply is the only write to `live`'s content: every other managedFields
/// entry is a status write, or owns only annotations or labels that `desired` leaves alone.
fn only_tether_wrote(desired: &Value, live: &Value) -> bool {
    let Some(entries) = live["metadata"]["managedFields"].as_array() else {
        return false;
    };
    let mut tether_applied = false;
    for entry in entries {
        let subresource = entry["subresource"].as_str().unwrap_or("");
        if is_tethers_apply(entry) {
            tether_applied = true;
            continue;
        }
        if subresource == "status" || owns_only_others_metadata(&entry["fieldsV1"], desired) {
            continue;
        }
        return false;
    }
    tether_applied
}

/// Whether a managedFields entry is tether's own apply of the object (not of a subresource).
pub fn is_tethers_apply(entry: &Value) -> bool {
    entry["manager"] == super::FIELD_MANAGER
        && entry["operation"] == "Apply"
        && entry["subresource"].as_str().unwrap_or("").is_empty()
}

/// Whether `fields` (a managedFields entry's fieldsV1) holds only `metadata.annotations` or
/// `metadata.labels` keys that `desired` does not set.
fn owns_only_others_metadata(fields: &Value, desired: &Value) -> bool {
    let Some(top) = fields.as_object() else {
        return false;
    };
    top.iter().all(|(key, metadata)| {
        key == "f:metadata"
            && metadata.as_object().is_some_and(|metadata| {
                metadata.iter().all(|(key, owned)| {
                    let map = match key.as_str() {
                        "f:annotations" => "annotations",
                        "f:labels" => "labels",
                        _ => return false,
                    };
                    owned.as_object().is_some_and(|owned| {
                        owned.keys().all(|key| {
                            key == "."
                                || key.strip_prefix("f:").is_some_and(|name| {
                                    desired["metadata"][map].get(name).is_none()
                                })
                        })
                    })
                })
            })
    })
}

/// Whether `live` holds every value of `desired`: maps key by key, lists item by item at
/// the same length, everything else equal.
fn holds(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(key, value)| live.get(key).is_some_and(|held| holds(held, value))),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| holds(l, d))
        }
        (live, desired) => live == desired,
    }
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
mod tests;
