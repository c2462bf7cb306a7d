//! A YAML stream (a file, or a renderer's output) → objects with their origin: variables
//! substituted, `kind: List` expanded, each document checked to be a Kubernetes object, and the
//! set checked for duplicates. Start at [`parse_stream`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Problem, Problems, RenderOptions, sops, substitute, yaml};
use crate::object::{Object, ObjectKey, Origin};

/// Parses a renderer's output into objects and checks the set.
pub(super) fn finish(
    label: &str,
    locate: Locate<'_>,
    output: &[u8],
    options: &RenderOptions,
) -> Result<Vec<Object>, Problems> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let source = Source::Renderer(label);
    parse_stream(source, locate, output, options, &mut objects, &mut problems);
    if objects.len() > options.max_objects {
        problems.push(Problem::TooManyObjects {
            count: objects.len(),
            limit: options.max_objects,
        });
    }
    check_duplicates(&objects, &mut problems);
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(Problems(problems))
    }
}

pub(super) fn parse_file(
    file: &str,
    bytes: &[u8],
    options: &RenderOptions,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    parse_stream(
        Source::File(file),
        &|line| (file.to_string(), line),
        bytes,
        options,
        objects,
        problems,
    );
}

/// Where line `n` of a renderer's output came from: a file, and the line there.
pub(super) type Locate<'a> = &'a dyn Fn(u64) -> (String, u64);

/// Where a YAML stream comes from: a plain file (its SOPS-encrypted documents are decrypted)
/// or a renderer's output (named by `label`).
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    File(&'a str),
    Renderer(&'a str),
}

impl<'a> Source<'a> {
    fn name(self) -> &'a str {
        match self {
            Source::File(name) | Source::Renderer(name) => name,
        }
    }
}

/// Parses a YAML stream whose lines come from `locate(line)` (one file for plain
/// manifests; the template named by `# Source:` for Helm output).
pub(super) fn parse_stream(
    source: Source<'_>,
    locate: Locate<'_>,
    bytes: &[u8],
    options: &RenderOptions,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let file = source.name();
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let offset = err.valid_up_to();
            let line = 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count() as u64;
            problems.push(Problem::Utf8 {
                file: file.to_string(),
                line,
                offset,
            });
            return;
        }
    };
    let substituted;
    let text = match &options.vars {
        Some(vars) => match substitute::substitute(text, vars) {
            Ok(out) => {
                substituted = out;
                substituted.as_str()
            }
            Err(unset) => {
                problems.extend(unset.into_iter().map(|u| {
                    let (file, line) = locate(u.line);
                    Problem::UnsetVariable {
                        file,
                        line,
                        name: u.name,
                    }
                }));
                return;
            }
        },
        None => text,
    };
    let documents = match yaml::parse_documents(text, &options.yaml) {
        Ok(documents) => documents,
        Err(err) => {
            // Helm's output: the template the broken document came from.
            let (file, line) = locate(err.line);
            problems.push(Problem::Yaml {
                file,
                line,
                column: err.column,
                message: err.message,
            });
            return;
        }
    };
    let Some(documents) = decrypted(source, documents, options, problems) else {
        return;
    };
    for (index, doc) in documents.into_iter().enumerate() {
        let (file, line) = locate(doc.line);
        let origin = Origin {
            file,
            line,
            document: index,
            item: None,
        };
        match doc.value {
            Value::Null => {}
            Value::Object(_) if doc.value.get("kind") == Some(&Value::String("List".into())) => {
                expand_list(doc.value, origin, objects, problems);
            }
            value => match to_object(value, origin.clone()) {
                Ok(object) => objects.push(object),
                Err(message) => problems.push(Problem::Manifest { origin, message }),
            },
        }
    }
}

/// The documents with their SOPS encryption undone, when they carry it: a plain file is
/// decrypted with `options.decryption`; a renderer's output is refused, since Kustomize or
/// Helm may have changed what the MAC covers. `None` when a problem was recorded.
fn decrypted(
    source: Source<'_>,
    documents: Vec<yaml::Document>,
    options: &RenderOptions,
    problems: &mut Vec<Problem>,
) -> Option<Vec<yaml::Document>> {
    if !documents.iter().any(|d| sops::is_encrypted(&d.value)) {
        return Some(documents);
    }
    let file = match source {
        Source::Renderer(label) => {
            problems.push(Problem::Decryption {
                file: label.to_string(),
                message: "its output holds SOPS-encrypted documents that were not decrypted: check that the files it reads are as sops wrote them".into(),
            });
            return None;
        }
        Source::File(file) => file,
    };
    let lines: Vec<u64> = documents.iter().map(|d| d.line).collect();
    let values = documents.into_iter().map(|d| d.value).collect();
    match sops::decrypt(values, &options.decryption) {
        Ok(values) => Some(
            values
                .into_iter()
                .zip(lines)
                .map(|(value, line)| yaml::Document { value, line })
                .collect(),
        ),
        Err(err) => {
            problems.push(Problem::Decryption {
                file: file.to_string(),
                message: err.to_string(),
            });
            None
        }
    }
}

/// `kind: List` (what `kubectl get -o yaml` writes) holds objects in `items`.
pub(super) fn expand_list(
    list: Value,
    origin: Origin,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let items = match list.get("items") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            problems.push(Problem::Manifest {
                origin,
                message: "a List's items must be a sequence".into(),
            });
            return;
        }
    };
    for (index, item) in items.into_iter().enumerate() {
        let origin = Origin {
            item: Some(index),
            ..origin.clone()
        };
        match to_object(item, origin.clone()) {
            Ok(object) => objects.push(object),
            Err(message) => problems.push(Problem::Manifest { origin, message }),
        }
    }
}

/// A document as a Kubernetes object, or what is wrong with it.
pub(super) fn to_object(manifest: Value, origin: Origin) -> Result<Object, String> {
    let Value::Object(map) = &manifest else {
        return Err(format!(
            "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), found {}",
            type_name(&manifest)
        ));
    };
    let api_version = string_field(map, "apiVersion")?;
    let kind = string_field(map, "kind")?;
    let metadata = match map.get("metadata") {
        Some(Value::Object(metadata)) => metadata,
        Some(other) => {
            return Err(format!(
                "metadata must be a mapping, found {}",
                type_name(other)
            ));
        }
        None => return Err(format!("{kind} has no metadata; set metadata.name")),
    };
    let name = object_name(&manifest, metadata, &kind)?;
    let namespace = match metadata.get("namespace") {
        Some(Value::String(ns)) => ns.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => {
            return Err(format!(
                "metadata.namespace must be a string, found {}",
                type_name(other)
            ));
        }
    };
    let group = match api_version.split_once('/') {
        Some((group, version)) if !group.is_empty() && !version.is_empty() => group.to_string(),
        Some(_) => {
            return Err(format!(
                "apiVersion {api_version:?} is not GROUP/VERSION or VERSION"
            ));
        }
        None => String::new(),
    };
    Ok(Object {
        key: ObjectKey {
            group,
            kind,
            namespace,
            name,
        },
        origin,
        manifest,
    })
}

/// A top-level field that must be a non-empty string (`apiVersion`, `kind`).
fn string_field(map: &serde_json::Map<String, Value>, name: &str) -> Result<String, String> {
    match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(format!("{name} is missing")),
        Some(other) => Err(format!(
            "{name} must be a string, found {}",
            type_name(other)
        )),
    }
}

/// `metadata.name`, or a hook's `metadata.generateName`.
fn object_name(
    manifest: &Value,
    metadata: &serde_json::Map<String, Value>,
    kind: &str,
) -> Result<String, String> {
    match metadata.get("name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        // A hook runs anew with each sync, so it may take a new name each time.
        Some(Value::String(_)) | None
            if crate::object::is_hook(manifest)
                && matches!(metadata.get("generateName"), Some(Value::String(prefix)) if !prefix.is_empty()) =>
        {
            Ok(metadata["generateName"]
                .as_str()
                .expect("matched a string")
                .to_string())
        }
        Some(Value::String(_)) | None if metadata.contains_key("generateName") => Err(format!(
            "{kind} uses metadata.generateName, which GitOps cannot track; set metadata.name (only hooks may use generateName)"
        )),
        Some(Value::String(_)) | None => Err(format!("{kind} has no metadata.name")),
        Some(other) => Err(format!(
            "metadata.name must be a string, found {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

pub(super) fn check_duplicates(objects: &[Object], problems: &mut Vec<Problem>) {
    let mut seen: BTreeMap<&ObjectKey, &Origin> = BTreeMap::new();
    for object in objects {
        if let Some(first) = seen.insert(&object.key, &object.origin) {
            problems.push(Problem::Duplicate {
                key: Box::new(object.key.clone()),
                first: Box::new(first.clone()),
                second: Box::new(object.origin.clone()),
            });
            // Keep pointing at the first definition for any third one.
            seen.insert(&object.key, first);
        }
    }
}
