//! Per-object sync options as Argo CD and Flux users write them, against the real API
//! server: `argocd.argoproj.io/sync-options: Prune=false` and `kustomize.toolkit.fluxcd.io/
//! prune: disabled` keep an object Git no longer has; `kustomize.toolkit.fluxcd.io/ssa:
//! IfNotPresent` creates but never changes; `Ignore` never applies.

use crate::support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{TestNamespace, cluster, said, tether};

fn annotated(name: &str, color: &str, annotation: Option<(&str, &str)>) -> String {
    let annotations = annotation
        .map(|(k, v)| format!("  annotations:\n    {k}: \"{v}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{annotations}data:\n  color: {color}\n"
    )
}

#[tokio::test]
async fn both_peers_sync_options_are_honoured() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "sync-options").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let write = |name: &str, text: String| {
        std::fs::write(folder.join(format!("{name}.yaml")), text).expect("write")
    };
    let files = |color: &str| {
        vec![
            (
                "argo-keep",
                annotated(
                    "argo-keep",
                    color,
                    Some(("argocd.argoproj.io/sync-options", "Prune=false")),
                ),
            ),
            (
                "flux-keep",
                annotated(
                    "flux-keep",
                    color,
                    Some(("kustomize.toolkit.fluxcd.io/prune", "disabled")),
                ),
            ),
            ("plain", annotated("plain", color, None)),
            (
                "once",
                annotated(
                    "once",
                    color,
                    Some(("kustomize.toolkit.fluxcd.io/ssa", "IfNotPresent")),
                ),
            ),
            (
                "never",
                annotated(
                    "never",
                    color,
                    Some(("kustomize.toolkit.fluxcd.io/ssa", "Ignore")),
                ),
            ),
        ]
    };
    for (name, text) in files("blue") {
        write(name, text);
    }
    let path = folder.to_str().expect("utf-8 path").to_string();
    let apply = || tether(&["apply", "--path", &path, "--app", "opts", "-n", &ns.name]);
    let out = apply();
    assert!(out.status.success(), "{}", said(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let color = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).map(|d| d["color"].clone());
    for name in ["argo-keep", "flux-keep", "plain", "once"] {
        assert_eq!(
            color(configmaps.get_opt(name).await.expect("read")).as_deref(),
            Some("blue"),
            "{name}"
        );
    }
    assert!(
        configmaps.get_opt("never").await.expect("read").is_none(),
        "ssa: Ignore is never applied"
    );

    // IfNotPresent: Git's change and a hand edit alike are left alone.
    configmaps
        .patch("once", &PatchParams::apply("hand-edit").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "once"}, "data": {"color": "red"}})))
        .await
        .expect("hand edit");
    for (name, text) in files("green") {
        write(name, text);
    }
    let out = apply();
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        color(configmaps.get_opt("plain").await.expect("read")).as_deref(),
        Some("green")
    );
    assert_eq!(
        color(configmaps.get_opt("once").await.expect("read")).as_deref(),
        Some("red"),
        "created once, never changed"
    );

    // Out of Git: the plain one is pruned, the kept ones stay, and the plan says why.
    for name in ["argo-keep", "flux-keep", "plain"] {
        std::fs::remove_file(folder.join(format!("{name}.yaml"))).expect("remove");
    }
    let plan = tether(&["plan", "--path", &path, "--app", "opts", "-n", &ns.name]);
    assert!(
        said(&plan).contains("kept in the cluster: argocd.argoproj.io/sync-options: Prune=false"),
        "{}",
        said(&plan)
    );
    assert!(
        said(&plan).contains("kept in the cluster: kustomize.toolkit.fluxcd.io/prune: disabled"),
        "{}",
        said(&plan)
    );
    let out = apply();
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        configmaps.get_opt("plain").await.expect("read").is_none(),
        "pruned"
    );
    for name in ["argo-keep", "flux-keep"] {
        assert!(
            configmaps.get_opt(name).await.expect("read").is_some(),
            "{name} kept"
        );
    }
}

#[tokio::test]
async fn fields_left_to_others_are_not_applied_nor_drift() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "ignore-diff").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let write = |level: &str, mode: &str| {
        std::fs::write(
            folder.join("tuned.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tuned\ndata:\n  level: \"{level}\"\n  mode: {mode}\n  color: blue\n"),
        )
        .expect("write")
    };
    write("1", "fast");
    let rules = dir.path().join("ignore.yaml");
    std::fs::write(
        &rules,
        "- kind: ConfigMap\n  name: tuned\n  managedFieldsManagers: [autoscaler]\n- kind: ConfigMap\n  jsonPointers: [/data/mode]\n",
    )
    .expect("rules");
    let path = folder.to_str().expect("utf-8 path").to_string();
    let args = |verb: &str| {
        vec![
            verb.to_string(),
            "--path".into(),
            path.clone(),
            "--app".into(),
            "tuned".into(),
            "-n".into(),
            ns.name.clone(),
            "--ignore-differences".into(),
            rules.display().to_string(),
        ]
    };
    let run = |verb: &str| {
        let all = args(verb);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        tether(&all)
    };
    let out = run("apply");
    assert!(out.status.success(), "{}", said(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let data = || async {
        configmaps
            .get("tuned")
            .await
            .expect("get")
            .data
            .expect("data")
    };
    // Created with Git's values.
    assert_eq!(data().await["mode"], "fast");
    assert_eq!(data().await["level"], "1");
    // An autoscaler writes level (another manager, an Update); Git changes it too.
    configmaps
        .patch(
            "tuned",
            &PatchParams {
                field_manager: Some("autoscaler".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"level": "7"}})),
        )
        .await
        .expect("the autoscaler's write");
    write("2", "slow");
    let plan = run("plan");
    let said_plan = said(&plan);
    assert!(
        said_plan.contains(
            r#"ignored (the cluster's value is kept): /data/level (written by "autoscaler")"#
        ),
        "{said_plan}"
    );
    assert!(
        said_plan.contains("ignored (the cluster's value is kept): /data/mode"),
        "{said_plan}"
    );
    assert!(
        !said_plan.contains("Git's value goes back"),
        "never drift: {said_plan}"
    );
    let out = run("apply");
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(data().await["level"], "7", "the autoscaler's value stays");
    assert_eq!(
        data().await["mode"],
        "fast",
        "the cluster's value, not Git's"
    );
    // A rule that is not a pointer is refused, naming where it is.
    std::fs::write(&rules, "- kind: ConfigMap\n  jsonPointers: [data.mode]\n").expect("rules");
    let out = run("plan");
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains("is not a JSON pointer"),
        "{}",
        said(&out)
    );
}

/// A Job's template cannot change in place: with Argo CD's `Force=true` or Flux's `force:
/// enabled` it is deleted and created anew (the plan says so), without, the plan says why
/// nothing can be written. Argo CD's `Replace=true` takes a field another manager holds.
#[tokio::test]
async fn force_recreates_what_cannot_change_in_place_and_replace_takes_every_field() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "force").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let job = |name: &str, annotation: &str, image: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations: {{{annotation}}}\nspec:\n  suspend: true\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: run\n        image: registry.invalid/{image}\n"
        )
    };
    let write = |image: &str, plain: bool| {
        for (name, annotation) in [
            ("argo", "argocd.argoproj.io/sync-options: Force=true"),
            ("flux", "kustomize.toolkit.fluxcd.io/force: enabled"),
        ] {
            std::fs::write(
                folder.join(format!("{name}.yaml")),
                job(name, annotation, image),
            )
            .expect("write");
        }
        let plain_image = if plain { image } else { "task:1" };
        std::fs::write(folder.join("plain.yaml"), job("plain", "", plain_image)).expect("write");
        std::fs::write(
            folder.join("whole.yaml"),
            annotated(
                "whole",
                "blue",
                Some(("argocd.argoproj.io/sync-options", "Replace=true")),
            ),
        )
        .expect("write");
    };
    write("task:1", true);
    let path = folder.to_str().expect("utf-8");
    let args = ["--path", path, "--app", "force", "-n", ns.name.as_str()];
    let run = |verb: &str| tether(&[&[verb][..], &args[..]].concat());
    let out = run("apply");
    assert!(out.status.success(), "{}", said(&out));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let uid = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            jobs.get(name)
                .await
                .expect("job")
                .metadata
                .uid
                .expect("uid")
        }
    };
    let (argo, flux) = (uid("argo").await, uid("flux").await);

    // Without the annotation, an immutable change is refused, and nothing is written.
    write("task:2", true);
    let out = run("plan");
    assert!(
        !out.status.success() && said(&out).contains("Job.batch/plain"),
        "{}",
        said(&out)
    );
    // With it, the plan says the Job is deleted and created anew, and apply does so.
    write("task:2", false);
    let out = run("plan");
    let text = said(&out);
    for name in ["argo", "flux"] {
        let at = text
            .find(&format!("Job.batch/{name}"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(text[at..].contains("deleted and created anew: "), "{text}");
    }
    assert!(
        text.contains("Force=true; the server refuses the update")
            && text.contains("force: enabled")
            && text.contains("field is immutable"),
        "{text}"
    );
    // The diff: the fields Git sets (no status, no defaults), and the server's quote left out.
    assert!(
        text.contains("-        image: registry.invalid/task:1")
            && text.contains("+        image: registry.invalid/task:2")
            && !text.contains("status:")
            && !text.contains("TerminationMessagePath"),
        "{text}"
    );
    // Another manager holds a field Git starts setting only now: Replace=true takes it
    // without a conflict (without it, the plan would stop at the conflict).
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    configmaps
        .patch(
            "whole",
            &PatchParams::apply("other").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "whole"}, "data": {"size": "big"}})),
        )
        .await
        .expect("another manager's apply");
    let whole = |annotation: Option<(&str, &str)>| {
        let text = annotated("whole", "blue", annotation)
            .replace("  color: blue\n", "  color: blue\n  size: small\n");
        std::fs::write(folder.join("whole.yaml"), text).expect("write");
    };
    whole(None);
    let out = run("plan");
    assert!(
        said(&out).contains("conflict (tether never applied it): .data.size"),
        "{}",
        said(&out)
    );
    whole(Some(("argocd.argoproj.io/sync-options", "Replace=true")));
    let out = run("apply");
    assert!(out.status.success(), "{}", said(&out));
    assert_ne!(uid("argo").await, argo, "created anew");
    assert_ne!(uid("flux").await, flux, "created anew");
    let image = jobs
        .get("argo")
        .await
        .expect("job")
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.invalid/task:2"));
    let data = configmaps
        .get("whole")
        .await
        .expect("cm")
        .data
        .expect("data");
    assert_eq!(
        (data["color"].as_str(), data["size"].as_str()),
        ("blue", "small")
    );
}

/// `tether delete`: push mode's deletion of a set, as the agent deletes an Application's:
/// `--dry-run` deletes nothing; then the PreDelete hook, the members in reverse waves, the
/// set's record; `Delete=false` keeps one; a set that does not exist is an error.
#[tokio::test]
async fn tether_delete_deletes_the_set_between_its_hooks_and_keeps_what_says_so() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "delete").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for (name, annotation) in [
        ("low", ("argocd.argoproj.io/sync-wave", "0")),
        ("high", ("argocd.argoproj.io/sync-wave", "1")),
        ("kept", ("argocd.argoproj.io/sync-options", "Delete=false")),
        ("before", ("argocd.argoproj.io/hook", "PreDelete")),
    ] {
        let text = annotated(name, "blue", Some(annotation));
        std::fs::write(folder.join(format!("{name}.yaml")), text).expect("write");
    }
    let path = folder.to_str().expect("utf-8");
    let args = ["--path", path, "--app", "doomed", "-n", ns.name.as_str()];
    let run = |verb: &[&str]| tether(&[verb, &args[..]].concat());
    let out = run(&["apply"]);
    assert!(out.status.success(), "{}", said(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let exists = |name: &'static str| {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt(name).await.expect("read").is_some() }
    };
    assert!(
        !exists("before").await,
        "a PreDelete hook does not run on apply"
    );

    let out = run(&["delete", "--dry-run"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("kept in the cluster"), "{}", said(&out));
    assert!(
        exists("low").await && exists("high").await,
        "--dry-run deletes nothing"
    );

    let out = run(&["delete"]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PreDelete hook ConfigMap/before")
            && text.contains(
                "2 object(s) deleted, 1 kept by their annotations, 1 deletion hook(s) ran"
            ),
        "{text}"
    );
    let high = text.find("pruned ConfigMap/high").expect("high pruned");
    let low = text.find("pruned ConfigMap/low").expect("low pruned");
    assert!(high < low, "the higher wave first: {text}");
    assert!(!exists("low").await && !exists("high").await && !exists("before").await);
    assert!(exists("kept").await, "Delete=false keeps it");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    assert!(
        secrets
            .get_opt("tether-doomed")
            .await
            .expect("read")
            .is_none()
    );

    let out = run(&["delete"]);
    assert!(
        !out.status.success() && said(&out).contains("nothing to delete: no set doomed"),
        "{}",
        said(&out)
    );
}

/// Sync windows in push mode: a deny window of the namespace that selects the application
/// refuses `tether apply` (naming the window and when syncs may run), `plan` says so,
/// `--ignore-sync-windows` overrides it, and a window with `manualSync` lets it through.
#[tokio::test]
async fn a_sync_window_of_the_namespace_holds_tether_apply() {
    let client = cluster().await.client();
    tether::agent::install_crd(&client)
        .await
        .expect("CRDs installed");
    let ns = TestNamespace::create(&client, "push-window").await;
    let dir = tempfile::tempdir().expect("temp");
    let folder = dir.path().join("app");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("cm.yaml"), annotated("web", "blue", None)).expect("write");
    let now = k8s_openapi::jiff::Timestamp::now()
        .in_tz("UTC")
        .expect("UTC");
    let windows: Api<tether::application::SyncWindow> = Api::namespaced(client.clone(), &ns.name);
    let freeze = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "SyncWindow", "metadata": {"name": "freeze"},
        "spec": {"kind": "deny", "schedule": format!("{} {} * * *", now.minute(), now.hour()),
                 "duration": "1h", "applications": ["we?"]}
    }))
    .expect("a SyncWindow");
    windows
        .create(&Default::default(), &freeze)
        .await
        .expect("created");
    let path = folder.to_str().expect("utf-8");
    let args = ["--path", path, "--app", "web", "-n", ns.name.as_str()];
    let run = |extra: &[&str]| tether(&[extra, &args[..]].concat());
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    let out = run(&["plan"]);
    assert!(
        said(&out).contains("note: a sync window keeps web from syncing now"),
        "{}",
        said(&out)
    );
    let out = run(&["apply"]);
    let text = said(&out);
    assert!(
        !out.status.success()
            && text.contains("SyncWindow")
            && text.contains("/freeze: deny")
            && text.contains("syncs may run from")
            && text.contains("--ignore-sync-windows"),
        "{text}"
    );
    assert!(
        configmaps.get_opt("web").await.expect("read").is_none(),
        "nothing written"
    );
    let out = run(&["apply", "--ignore-sync-windows"]);
    assert!(out.status.success(), "{}", said(&out));
    // manualSync: an apply is a sync asked for by hand.
    std::fs::write(folder.join("cm.yaml"), annotated("web", "green", None)).expect("write");
    windows
        .patch(
            "freeze",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"manualSync": true}})),
        )
        .await
        .expect("patched");
    let out = run(&["apply"]);
    assert!(out.status.success(), "{}", said(&out));
    let color = configmaps.get("web").await.expect("cm").data.expect("data")["color"].clone();
    assert_eq!(color, "green");
}
