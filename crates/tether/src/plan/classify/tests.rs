//! Golden tests of the pure planning of one object: each case under `plan/testdata/` holds
//! a desired object, the live one, the server's dry-run answer and the expected outcome.
//! The test walks the same pure path as [`super::super::dry_run`] does for an object read
//! alone whose fresh read finds it unmoved: prepare → ownership → already held → the
//! dry-run's answer → compare. A mismatch prints the outcome found, in the case's words.

use std::collections::BTreeMap;
use std::path::Path;

use kube::api::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::fields;
use super::super::prepare::{self, Placement, Preparation, Prepared};
use super::*;
use crate::cluster::discovery::KindInfo;
use crate::object::{GroupKind, Object, Origin};

/// The set every case plans into.
const SET_ID: &str = "applyset-golden-v1";
/// The application's namespace.
const NAMESPACE: &str = "default";
/// In `live` or `dry_run`, stand for the applied-fields record and the applied digest of
/// the prepared desired object (digests a case cannot spell out).
const RECORD: &str = "${record}";
const DIGEST: &str = "${digest}";

/// One case: its inputs and what the plan makes of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The object as rendered from Git.
    desired: Value,
    /// Whether its kind is namespaced (as discovery says).
    #[serde(default = "yes")]
    namespaced: bool,
    /// The object in the cluster, if it exists.
    #[serde(default)]
    live: Option<Value>,
    /// `tether apply --adopt`.
    #[serde(default)]
    adopt: bool,
    /// Kinds the set's parent records (`Kind` or `Kind.group`).
    #[serde(default)]
    set_kinds: Vec<String>,
    /// The server's answer to the dry-run apply, when the plan asks for one.
    #[serde(default)]
    dry_run: Option<Answer>,
    expect: Expected,
}

fn yes() -> bool {
    true
}

/// The server's answer to the dry-run apply.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Answer {
    /// The object as the apply would leave it.
    Applied(Value),
    /// 409 Conflict: `[field, message]` causes, the server's message, and the object as a
    /// forced apply would leave it.
    Conflict {
        #[serde(default)]
        causes: Vec<(String, String)>,
        message: String,
        forced: Value,
    },
    /// 404: its namespace is created by this same apply.
    NamespacePending,
}

impl Answer {
    /// The answer, with the placeholders filled in from `desired`.
    fn filled(self, desired: &Value) -> DryRun {
        match self {
            Answer::Applied(mut predicted) => {
                fill(&mut predicted, desired);
                DryRun::Applied(predicted)
            }
            Answer::Conflict {
                causes,
                message,
                mut forced,
            } => {
                fill(&mut forced, desired);
                DryRun::Conflict {
                    causes,
                    message,
                    forced,
                }
            }
            Answer::NamespacePending => DryRun::NamespacePending,
        }
    }
}

/// What the plan makes of a case.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Expected {
    /// `create`, `update`, `unchanged`, `conflict` (a change), or `hook`, `skipped`,
    /// `invalid`, `other-set`, `unmanaged` (none).
    outcome: String,
    /// Whether the plan asked the server for a dry-run.
    dry_run: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    diff: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reclaims: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    takes_over_from: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    force: bool,
    /// A hook's phases and order, why an object is skipped, an error's message, or the
    /// other set's id.
    #[serde(skip_serializing_if = "String::is_empty")]
    detail: String,
}

impl Expected {
    fn of(outcome: &str, detail: String) -> Self {
        Self {
            outcome: outcome.into(),
            detail,
            ..Default::default()
        }
    }

    fn from_outcome(outcome: Outcome, dry_run: bool) -> Self {
        Self {
            outcome: outcome.action.to_string(),
            dry_run,
            diff: outcome.diff,
            conflicts: outcome.conflicts,
            reclaims: outcome.reclaims,
            takes_over_from: outcome.takes_over_from,
            force: outcome.force,
            detail: String::new(),
        }
    }
}

/// The set the cases plan into, recording `kinds`.
fn set(kinds: &[String]) -> ApplySet {
    let mut set = ApplySet::new("golden", NAMESPACE);
    set.id = SET_ID.into();
    set.group_kinds = kinds.iter().map(|k| GroupKind::parse(k)).collect();
    set
}

/// The kind of `api_version` and `kind`, as discovery would serve it.
fn served(api_version: &str, kind: &str, namespaced: bool) -> KindInfo {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    KindInfo {
        resource: ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
        namespaced,
    }
}

/// The rendered object of `manifest`, defined in `file`.
fn object(manifest: Value, file: &str) -> Object {
    let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
    let key = ObjectKey {
        group: api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
            .into(),
        kind: manifest["kind"].as_str().unwrap_or_default().into(),
        namespace: manifest["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .into(),
        name: manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
    };
    let origin = Origin {
        file: file.into(),
        line: 1,
        document: 0,
        item: None,
    };
    Object {
        key,
        origin,
        manifest,
    }
}

/// `value` with every [`RECORD`] and [`DIGEST`] replaced by those `desired` carries.
fn fill(value: &mut Value, desired: &Value) {
    let annotations = &desired["metadata"]["annotations"];
    match value {
        Value::String(text) if text == RECORD => {
            *value = annotations[fields::APPLIED_FIELDS_ANNOTATION].clone();
        }
        Value::String(text) if text == DIGEST => {
            *value = annotations[fields::APPLIED_DIGEST_ANNOTATION].clone();
        }
        Value::Object(map) => map.values_mut().for_each(|v| fill(v, desired)),
        Value::Array(items) => items.iter_mut().for_each(|v| fill(v, desired)),
        _ => {}
    }
}

/// What the plan makes of `case`, read from `file`.
fn run(case: Case, file: &str) -> Expected {
    let set = set(&case.set_kinds);
    let member = match prepare_one(case.desired, case.namespaced, &set, file) {
        Ok(member) => member,
        Err(outcome) => return *outcome,
    };
    let (key, desired) = (&member.key, &member.manifest);
    let mut live = case.live;
    if let Some(live) = &mut live {
        fill(live, desired);
    }
    let relabel = match ownership(live.as_ref(), key, &set, case.adopt) {
        Ownership::Ours => false,
        Ownership::Relabel => true,
        Ownership::OtherSet(other) => return Expected::of("other-set", other),
        Ownership::Unmanaged => return Expected::of("unmanaged", String::new()),
    };
    if let Some(held) = &live
        && already_held(desired, held, SET_ID)
    {
        return Expected::from_outcome(Outcome::unchanged(live), false);
    }
    let answer = case
        .dry_run
        .expect("the plan asks for a dry-run: give its answer");
    match read_answer(
        key,
        desired,
        live,
        relabel,
        SET_ID,
        answer.filled(desired),
        &|_, _, _| None,
    ) {
        Verdict::Settled(outcome) => Expected::from_outcome(outcome, true),
        Verdict::Predicted(prediction) => {
            let sides = Sides::new(prediction.live, &prediction.predicted);
            let outcome = Outcome {
                force: prediction.force,
                reclaims: prediction.reclaims,
                ..compare(key, sides, true)
            };
            Expected::from_outcome(outcome, true)
        }
    }
}

/// Prepares `desired`: the member to plan, or what it became instead (a hook, an object
/// left alone, an error).
fn prepare_one(
    desired: Value,
    namespaced: bool,
    set: &ApplySet,
    file: &str,
) -> Result<Prepared, Box<Expected>> {
    let resolve = |api_version: &str, kind: &str| Some(served(api_version, kind, namespaced));
    let placement = Placement::new(set, true, NAMESPACE);
    let Preparation {
        mut members,
        hooks,
        skipped,
        errors,
        ..
    } = prepare::prepare(
        vec![object(desired, file)],
        resolve,
        &BTreeMap::new(),
        &placement,
    );
    if let Some(error) = errors.into_iter().next() {
        return Err(Box::new(Expected::of("invalid", error.message)));
    }
    if let Some(skipped) = skipped.into_iter().next() {
        return Err(Box::new(Expected::of("skipped", skipped.why)));
    }
    if let Some(hook) = hooks.into_iter().next() {
        let phases: Vec<String> = hook.phases.iter().map(|p| p.to_string()).collect();
        let labels: Vec<&str> = hook.manifest["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let detail = format!(
            "{} order {} delete {}; labels {}",
            phases.join(","),
            hook.order,
            hook.delete_policy,
            labels.join(",")
        );
        return Err(Box::new(Expected::of("hook", detail)));
    }
    Ok(members.pop().expect("one desired object"))
}

#[test]
fn every_golden_case_plans_as_expected() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the golden cases are in {folder:?}");
    let mut failed = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let mut case: Case =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: not a case: {e}"));
        let wanted = std::mem::take(&mut case.expect);
        let found = run(case, &name);
        if found != wanted {
            let [wanted, found] = [wanted, found].map(|e| serde_saphyr::to_string(&e).unwrap());
            failed.push(format!(
                "{name}: expected\n{wanted}found (paste under `expect:` if it is right)\n{found}"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_field_in_conflict_names_who_wrote_it_how_and_when() {
    let live = serde_json::json!({"metadata": {"managedFields": [
        {"manager": "tether", "operation": "Apply", "time": "2026-12-06T05:00:00Z"},
        {"manager": "kubectl-scale", "operation": "Update", "subresource": "scale", "time": "2026-12-06T06:00:00Z"},
        {"manager": "kubectl-scale", "operation": "Update", "time": "2026-12-01T00:00:00Z"}
    ]}});
    let none = |_: &str, _: Option<&str>, _: Option<&str>| None;
    assert_eq!(
        super::attributed(
            Some(&live),
            ".spec.replicas",
            r#"conflict with "kubectl-scale" with subresource "scale" using apps/v1"#,
            &none
        ),
        r#".spec.replicas: changed by "kubectl-scale" (Update of the scale subresource at 2026-12-06T06:00:00Z)"#
    );
    // With the audit log: the user and the user agent of that write.
    let audit = |manager: &str, subresource: Option<&str>, time: Option<&str>| {
        (manager == "kubectl-scale"
            && subresource == Some("scale")
            && time == Some("2026-12-06T06:00:00Z"))
        .then(|| "user \"alice\" with kubectl/v1.34.4".to_string())
    };
    assert_eq!(
        super::attributed(
            Some(&live),
            ".spec.replicas",
            r#"conflict with "kubectl-scale" with subresource "scale" using apps/v1"#,
            &audit
        ),
        r#".spec.replicas: changed by "kubectl-scale" (Update of the scale subresource at 2026-12-06T06:00:00Z; user "alice" with kubectl/v1.34.4)"#
    );
    // Without a matching entry, the server's own words.
    assert_eq!(
        super::attributed(
            Some(&live),
            ".data.x",
            r#"conflict with "helm" using v1"#,
            &none
        ),
        r#".data.x: conflict with "helm" using v1"#
    );
}

#[test]
fn a_refused_update_shows_the_fields_git_sets_and_the_reason_without_the_quote() {
    let shape = serde_json::json!({"spec": {"template": {"image": "b"}}});
    let live = serde_json::json!({"spec": {"template": {"image": "a", "pull": "Always"}, "x": 1}, "status": {}});
    assert_eq!(
        super::only_fields_of(&live, &shape),
        serde_json::json!({"spec": {"template": {"image": "a"}}})
    );
    let message = r#"Job.batch "x" is invalid: spec.template: Invalid value: {"Spec":{"a":"b: c"}}: field is immutable"#;
    assert_eq!(
        super::refusal(message),
        r#"Job.batch "x" is invalid: spec.template: …: field is immutable"#
    );
}
