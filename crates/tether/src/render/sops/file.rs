//! Whole files as `sops` stores them, for the files a renderer reads from disk (a
//! Kustomize `secretGenerator`'s `files:` and `envs:`, its resources, a Helm values file):
//! the format is picked by the file's name as sops picks it (`.yaml`/`.yml`, `.json`,
//! `.env`, anything else binary: JSON holding the whole file as `data`), and the plaintext
//! is written back in the form `sops decrypt` writes, except that YAML comes out as JSON
//! documents (which Kustomize and Helm read as YAML).

use serde_json::{Map, Value};

use super::{Error, Keys, decrypt, is_encrypted};
use crate::render::yaml::{YamlLimits, parse_documents};

/// What every value sops encrypts starts with: a file without it is not read further.
const MARKER: &[u8] = b"ENC[AES256_GCM,";

/// Whether `output` holds a SOPS-encrypted value, as it is or base64-encoded at any
/// alignment (a `secretGenerator` encodes what it reads): the parts of the marker's three
/// encodings that do not depend on the bytes around it.
pub fn shows_ciphertext(output: &[u8]) -> bool {
    use base64::Engine as _;
    let contains = |needle: &[u8]| output.windows(needle.len()).any(|w| w == needle);
    if contains(MARKER) {
        return true;
    }
    (0..3).any(|pad| {
        let mut bytes = vec![b' '; pad];
        bytes.extend_from_slice(MARKER);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let start = if pad == 0 { 0 } else { 4 };
        let end = if bytes.len() % 3 == 0 {
            encoded.len()
        } else {
            encoded.len() - 4
        };
        contains(&encoded.as_bytes()[start..end])
    })
}

/// The file's plaintext when it is SOPS-encrypted (`None` when it is not).
pub fn decrypt_file(name: &str, bytes: &[u8], keys: &Keys) -> Result<Option<Vec<u8>>, Error> {
    if !bytes.windows(MARKER.len()).any(|w| w == MARKER) {
        return Ok(None);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(None);
    };
    let extension = name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    match extension {
        "yaml" | "yml" => yaml(text, keys),
        "json" => json(text, keys),
        "env" => dotenv(text, keys),
        _ => binary(text, keys),
    }
}

fn yaml(text: &str, keys: &Keys) -> Result<Option<Vec<u8>>, Error> {
    let Ok(documents) = parse_documents(text, &YamlLimits::default()) else {
        return Ok(None);
    };
    let values: Vec<Value> = documents.into_iter().map(|d| d.value).collect();
    if !values.iter().any(is_encrypted) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (index, value) in decrypt(values, keys)?.iter().enumerate() {
        if index > 0 {
            out.extend_from_slice(b"---\n");
        }
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(b'\n');
    }
    Ok(Some(out))
}

fn json(text: &str, keys: &Keys) -> Result<Option<Vec<u8>>, Error> {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Ok(None);
    };
    if !is_encrypted(&value) {
        return Ok(None);
    }
    let plain = decrypt(vec![value], keys)?;
    Ok(Some(plain[0].to_string().into_bytes()))
}

/// sops's binary format: `{"data": "ENC[…]", "sops": {…}}`, the file's bytes as `data`.
fn binary(text: &str, keys: &Keys) -> Result<Option<Vec<u8>>, Error> {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Ok(None);
    };
    if !is_encrypted(&value) || !value["data"].is_string() {
        return Ok(None);
    }
    let plain = decrypt(vec![value], keys)?;
    Ok(Some(
        plain[0]["data"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    ))
}

/// sops's dotenv format: `KEY=ENC[…]` lines, comments encrypted as whole lines, and the
/// sops block flattened into `sops_…` keys (`sops_age__list_0__map_recipient=…`), with
/// newlines in values written `\n`.
fn dotenv(text: &str, keys: &Keys) -> Result<Option<Vec<u8>>, Error> {
    let mut values = Map::new();
    let mut meta = Value::Object(Map::new());
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Ok(None);
        };
        let value = value.replace("\\n", "\n");
        match key.strip_prefix("sops_") {
            Some(path) => put_flattened(&mut meta, path, value),
            None => {
                values.insert(key.to_string(), Value::String(value));
            }
        }
    }
    if let Some(flag) = meta.get_mut("mac_only_encrypted") {
        *flag = Value::Bool(flag.as_str() == Some("true"));
    }
    let mut document = Value::Object(values);
    document["sops"] = meta;
    if !is_encrypted(&document) {
        return Ok(None);
    }
    let plain = decrypt(vec![document], keys)?;
    let mut out = String::new();
    for (key, value) in plain[0].as_object().into_iter().flatten() {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!("{key}={}\n", value.replace('\n', "\\n")));
    }
    Ok(Some(out.into_bytes()))
}

/// Puts `value` at a flattened sops path: keys joined by `__`, `list_N` an index and
/// `map_K` a key below the first.
fn put_flattened(meta: &mut Value, path: &str, value: String) {
    let mut at = meta;
    let mut steps = path.split("__").peekable();
    while let Some(step) = steps.next() {
        let last = steps.peek().is_none();
        let next = match steps.peek() {
            Some(n) if n.starts_with("list_") => Value::Array(Vec::new()),
            _ => Value::Object(Map::new()),
        };
        let slot = if let Some(index) = step.strip_prefix("list_") {
            let Ok(index) = index.parse::<usize>() else {
                return;
            };
            let Value::Array(items) = at else {
                return;
            };
            while items.len() <= index {
                items.push(Value::Null);
            }
            &mut items[index]
        } else {
            let key = step.strip_prefix("map_").unwrap_or(step);
            let Value::Object(map) = at else {
                return;
            };
            map.entry(key.to_string()).or_insert(Value::Null)
        };
        if last {
            *slot = Value::String(value);
            return;
        }
        if slot.is_null() {
            *slot = next;
        }
        at = slot;
    }
}
