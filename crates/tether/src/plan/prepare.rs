//! Pure preparation of the desired objects: each becomes a member to plan (namespace filled
//! in, ApplySet label and applied-fields record added), a hook, an object left alone, or
//! an error. No request is made here; the kinds come from a lookup the caller passes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::types::{HOOK_LABEL, HOOK_OF_LABEL, Hook, PlanError, Skipped, Stage};
use super::{fields, hooks};
use crate::cluster::discovery::KindInfo;
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::{Object, ObjectKey, Origin};

/// A desired object ready to plan: namespace filled in, ApplySet label added.
pub(super) struct Prepared {
    pub key: ObjectKey,
    pub origin: Origin,
    pub manifest: Value,
    /// `None` while the kind's CRD is part of this same set and not yet served.
    pub kind: Option<KindInfo>,
    pub namespaced: bool,
    pub wave: i64,
}

/// What [`prepare`] made of the desired objects.
#[derive(Default)]
pub(super) struct Preparation {
    pub members: Vec<Prepared>,
    pub hooks: Vec<Hook>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<PlanError>,
    /// Every member, with where it is defined.
    pub desired: BTreeMap<ObjectKey, Origin>,
}

/// What one desired object becomes.
enum Becomes {
    Member(Prepared),
    Hook(Hook),
    Skipped(Skipped),
    Invalid(PlanError),
}

/// Where the desired objects go: the set's id, the default namespace, and whether this
/// sync is Helm's install (the set's first, until one runs its hooks to the end).
pub(super) struct Placement<'a> {
    pub set_id: &'a str,
    pub namespace: &'a str,
    pub install: bool,
}

impl<'a> Placement<'a> {
    /// The placement into `set` (read from its parent when `parent_exists`).
    pub fn new(set: &'a ApplySet, parent_exists: bool, namespace: &'a str) -> Self {
        Self {
            set_id: &set.id,
            namespace,
            // Helm's install: the set's first sync, until one runs its hooks to the end.
            install: !parent_exists
                || set
                    .hooks_unfinished
                    .as_ref()
                    .is_some_and(|unfinished| unfinished.install),
        }
    }
}

/// The kinds defined by CRDs in this set (`(group, kind)` → namespaced): they may not be
/// served yet.
pub(super) fn pending_kinds(objects: &[Object]) -> BTreeMap<(String, String), bool> {
    objects
        .iter()
        .filter(|o| {
            o.key.group == "apiextensions.k8s.io" && o.key.kind == "CustomResourceDefinition"
        })
        .filter_map(|o| {
            let spec = &o.manifest["spec"];
            Some((
                (
                    spec["group"].as_str()?.to_string(),
                    spec["names"]["kind"].as_str()?.to_string(),
                ),
                spec["scope"].as_str() != Some("Cluster"),
            ))
        })
        .collect()
}

/// Whether an object's kind is neither known to `resolve` nor defined in this set.
pub(super) fn any_unknown(
    objects: &[Object],
    pending_kinds: &BTreeMap<(String, String), bool>,
    resolve: impl Fn(&str, &str) -> Option<KindInfo>,
) -> bool {
    objects.iter().any(|o| {
        let api_version = o.manifest["apiVersion"].as_str().unwrap_or_default();
        resolve(api_version, &o.key.kind).is_none()
            && !pending_kinds.contains_key(&(o.key.group.clone(), o.key.kind.clone()))
    })
}

/// Prepares every desired object, in order; `resolve` finds a kind by apiVersion and kind.
pub(super) fn prepare(
    objects: Vec<Object>,
    resolve: impl Fn(&str, &str) -> Option<KindInfo>,
    pending_kinds: &BTreeMap<(String, String), bool>,
    placement: &Placement<'_>,
) -> Preparation {
    let mut out = Preparation::default();
    for object in objects {
        match prepare_one(object, &resolve, pending_kinds, placement) {
            Becomes::Member(member) => {
                if let Some(first) = out
                    .desired
                    .insert(member.key.clone(), member.origin.clone())
                {
                    out.errors.push(PlanError::of_object(
                        &member.key,
                        &member.origin,
                        format!(
                            "is also defined at {first} (with the default namespace filled in)"
                        ),
                    ));
                    continue;
                }
                out.members.push(member);
            }
            Becomes::Hook(hook) => out.hooks.push(hook),
            Becomes::Skipped(skipped) => out.skipped.push(skipped),
            Becomes::Invalid(error) => out.errors.push(error),
        }
    }
    out
}

fn prepare_one(
    object: Object,
    resolve: &impl Fn(&str, &str) -> Option<KindInfo>,
    pending_kinds: &BTreeMap<(String, String), bool>,
    placement: &Placement<'_>,
) -> Becomes {
    let invalid =
        |message| Becomes::Invalid(PlanError::of_object(&object.key, &object.origin, message));
    let role = match hooks::role_of(&object.manifest, placement.install) {
        Ok(role) => role,
        Err(message) => return invalid(message),
    };
    let wave = match &role {
        hooks::Role::Member { wave } => *wave,
        hooks::Role::Hook { .. } => 0,
        hooks::Role::Ignored { why } => {
            return Becomes::Skipped(Skipped {
                key: object.key.clone(),
                origin: object.origin.clone(),
                why: why.clone(),
            });
        }
    };
    let (kind, namespaced) = match kind_of(&object, resolve, pending_kinds) {
        Ok(found) => found,
        Err(message) => return invalid(message),
    };
    let mut key = object.key.clone();
    let mut manifest = object.manifest;
    if let Err(message) = place(&mut key, &mut manifest, namespaced, placement.namespace) {
        return invalid(message);
    }
    let labels = labels_of(&mut manifest);
    if let hooks::Role::Hook {
        phases,
        order,
        delete,
    } = role
    {
        labels.insert(HOOK_OF_LABEL.into(), Value::String(placement.set_id.into()));
        labels.insert(HOOK_LABEL.into(), Value::String(hook_label(&key)));
        return Becomes::Hook(Hook {
            generate_name: manifest["metadata"]
                .get("name")
                .and_then(Value::as_str)
                .is_none(),
            key,
            origin: object.origin,
            phases,
            order,
            delete_policy: delete,
            manifest,
        });
    }
    labels.insert(PART_OF_LABEL.into(), Value::String(placement.set_id.into()));
    record_fields(&mut manifest);
    Becomes::Member(Prepared {
        key,
        origin: object.origin,
        manifest,
        kind,
        namespaced,
        wave,
    })
}

/// The object's kind as the cluster serves it (`None`: its CRD is in this set), and
/// whether it is namespaced. The message says the cluster does not serve it.
fn kind_of(
    object: &Object,
    resolve: &impl Fn(&str, &str) -> Option<KindInfo>,
    pending_kinds: &BTreeMap<(String, String), bool>,
) -> Result<(Option<KindInfo>, bool), String> {
    let api_version = object.manifest["apiVersion"].as_str().unwrap_or_default();
    let kind = resolve(api_version, &object.key.kind);
    let namespaced = match &kind {
        Some(info) => info.namespaced,
        None => match pending_kinds.get(&(object.key.group.clone(), object.key.kind.clone())) {
            Some(namespaced) => *namespaced,
            None => {
                return Err(format!(
                    "the cluster does not serve kind {} in {api_version}; install its CRD or fix apiVersion/kind",
                    object.key.kind
                ));
            }
        },
    };
    Ok((kind, namespaced))
}

/// Puts the object in its namespace: the default one when a namespaced object names none;
/// none for a cluster-scoped one. The message says why it cannot be placed.
fn place(
    key: &mut ObjectKey,
    manifest: &mut Value,
    namespaced: bool,
    namespace: &str,
) -> Result<(), String> {
    let metadata = manifest["metadata"]
        .as_object_mut()
        .expect("render checked metadata");
    if namespaced {
        if key.namespace.is_empty() {
            key.namespace = namespace.to_string();
            metadata.insert("namespace".into(), Value::String(key.namespace.clone()));
        }
        return Ok(());
    }
    // A cluster-scoped object is in no namespace. The application's own is dropped, as
    // kubectl drops it (charts and kustomize's `namespace:` set it everywhere); another
    // one means the writer took the kind for a namespaced one.
    if !key.namespace.is_empty() && key.namespace != namespace {
        return Err(format!(
            "{} is cluster-scoped, but metadata.namespace is {:?}; remove metadata.namespace",
            key.kind, key.namespace
        ));
    }
    key.namespace.clear();
    metadata.remove("namespace");
    Ok(())
}

/// The manifest's labels, made a map if they are missing or not one.
fn labels_of(manifest: &mut Value) -> &mut serde_json::Map<String, Value> {
    let metadata = manifest["metadata"]
        .as_object_mut()
        .expect("render checked metadata");
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    labels.as_object_mut().expect("just made an object")
}

/// Records which fields tether applies, for the next plan to tell drift from a conflict.
fn record_fields(manifest: &mut Value) {
    let record = fields::record(manifest);
    let digest = fields::content_digest(manifest);
    let metadata = manifest["metadata"]
        .as_object_mut()
        .expect("render checked metadata");
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if !annotations.is_object() {
        *annotations = Value::Object(Default::default());
    }
    annotations
        .as_object_mut()
        .expect("just made an object")
        .extend([
            (
                fields::APPLIED_FIELDS_ANNOTATION.to_string(),
                Value::String(record),
            ),
            (
                fields::APPLIED_DIGEST_ANNOTATION.to_string(),
                Value::String(digest),
            ),
        ]);
}

/// The namespaces the set creates (its Namespace objects).
pub(super) fn namespaces_created(members: &[Prepared]) -> BTreeSet<String> {
    members
        .iter()
        .filter(|p| p.key.group.is_empty() && p.key.kind == "Namespace")
        .map(|p| p.key.name.clone())
        .collect()
}

pub(super) fn stage_of(key: &ObjectKey, namespaced: bool) -> Stage {
    match (key.group.as_str(), key.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => Stage::Crds,
        ("", "Namespace") => Stage::Namespaces,
        _ if !namespaced => Stage::ClusterScoped,
        _ => Stage::Namespaced,
    }
}

/// The value of [`HOOK_LABEL`] for a hook: short, valid as a label, the same on every run.
pub fn hook_label(key: &ObjectKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!(
        "{}/{}/{}/{}",
        key.group, key.kind, key.namespace, key.name
    ));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
