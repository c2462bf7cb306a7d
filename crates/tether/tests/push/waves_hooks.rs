//! Sync waves and hooks against the real control plane (kwok nodes run the Pods, the Job
//! controller finishes the Jobs): a wave waits until the one before it is Healthy, a
//! failing PreSync hook stops the sync before anything is written and runs the SyncFail
//! hooks, PostSync runs once everything is Healthy, delete policies, and Helm's install
//! and upgrade hooks. The agent runs the same engine (tests/agent/agent.rs covers what it
//! records).

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ListParams;
use kube::runtime::watcher;
use support::{TestNamespace, cluster, tool, unique_name};

fn write(dir: &std::path::Path, files: &[(&str, String)]) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("clean");
    }
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
}

fn annotations(pairs: &[(&str, &str)]) -> String {
    let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
    serde_json::to_string(&map).expect("json")
}

fn cm(name: &str, annotated: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  annotations: {}\ndata: {{k: v}}\n",
        annotations(annotated)
    )
}

/// A ConfigMap hook with a generated name.
fn cm_hook(prefix: &str, annotated: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: {prefix}\n  annotations: {}\ndata: {{k: v}}\n",
        annotations(annotated)
    )
}

fn deployment(name: &str, annotated: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  annotations: {}\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    \
         spec:\n      containers:\n      - name: app\n        image: registry.invalid/{name}:1\n",
        annotations(annotated)
    )
}

/// A Job that completes on the kwok nodes, or (`fails`) one whose Pod can never be
/// scheduled, failed by its deadline after 2 s.
fn job(name: &str, fails: bool, annotated: &[(&str, &str)]) -> String {
    let failing = if fails {
        "  activeDeadlineSeconds: 2\n  backoffLimit: 0\n"
    } else {
        ""
    };
    let placement = if fails {
        "      nodeSelector: {nowhere: \"true\"}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations: {}\nspec:\n{failing}  template:\n    spec:\n      restartPolicy: Never\n{placement}      containers:\n      - name: run\n        image: registry.invalid/task:1\n",
        annotations(annotated)
    )
}

/// When each object in the namespace was first seen, and when each Deployment was first
/// seen Available: the order of events with millisecond resolution (object timestamps
/// have only seconds).
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<BTreeMap<String, Instant>>>);

impl Timeline {
    /// Starts watching Jobs, ConfigMaps and Deployments in `ns`; returns once each watch
    /// has listed (so nothing created after this is missed).
    async fn start(client: &kube::Client, ns: &str) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let timeline = Self::default();
        let (listed, mut ready) = tokio::sync::mpsc::unbounded_channel::<()>();
        let tasks = vec![
            Self::follow::<ConfigMap>(client, ns, &timeline, &listed, |_| false),
            Self::follow::<Job>(client, ns, &timeline, &listed, |_| false),
            Self::follow::<Deployment>(client, ns, &timeline, &listed, |d: &Deployment| {
                d.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Available" && c.status == "True")
                    })
            }),
        ];
        for _ in 0..tasks.len() {
            tokio::time::timeout(std::time::Duration::from_secs(10), ready.recv())
                .await
                .expect("the watches list within 10 s");
        }
        (timeline, tasks)
    }

    /// Records when each object of kind `K` is first seen, and first seen `available`.
    fn follow<K>(
        client: &kube::Client,
        ns: &str,
        timeline: &Timeline,
        listed: &tokio::sync::mpsc::UnboundedSender<()>,
        available: fn(&K) -> bool,
    ) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let timeline = timeline.clone();
        let listed = listed.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, Default::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let object = match event {
                    watcher::Event::Apply(object) | watcher::Event::InitApply(object) => object,
                    watcher::Event::InitDone => {
                        let _ = listed.send(());
                        continue;
                    }
                    _ => continue,
                };
                let name = format!(
                    "{}/{}",
                    K::kind(&()),
                    object.meta().name.clone().unwrap_or_default()
                );
                let mut seen = timeline.0.lock().expect("not poisoned");
                seen.entry(name.clone()).or_insert_with(Instant::now);
                if available(&object) {
                    seen.entry(format!("{name} Available"))
                        .or_insert_with(Instant::now);
                }
            }
        })
    }

    /// When `what` was first seen. The watch may report the last writes of an apply a little
    /// after the command returned (under load, a few hundred ms): waits up to 10 s for it.
    fn at(&self, what: &str) -> Instant {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(seen) = self.0.lock().expect("not poisoned").get(what) {
                return *seen;
            }
            assert!(Instant::now() < deadline, "{what} never seen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

// Several threads: the watches record while this test waits for `tether`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wave_waits_until_the_one_before_it_is_healthy() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "waves").await;
    let (timeline, tasks) = Timeline::start(&client, &ns.name).await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("app");
    write(
        &path,
        &[
            (
                "a.yaml",
                deployment("database", &[("argocd.argoproj.io/sync-wave", "0")]),
            ),
            ("b.yaml", cm("schema", &[("tether.dev/sync-wave", "1")])),
            (
                "c.yaml",
                deployment("api", &[("argocd.argoproj.io/sync-wave", "1")]),
            ),
            (
                "d.yaml",
                cm("frontend", &[("argocd.argoproj.io/sync-wave", "2")]),
            ),
        ],
    );
    let app = unique_name("waves");
    let path_arg = path.to_str().expect("utf-8");
    let plan = support::tether(&["plan", "--path", path_arg, "-n", &ns.name, "--app", &app]);
    let shown = support::said(&plan);
    assert!(plan.status.success(), "{shown}");
    for line in [
        "create Deployment.apps/database -n",
        "[wave 0]",
        "create ConfigMap/schema -n",
        "[wave 1]",
        "[wave 2]",
    ] {
        assert!(shown.contains(line), "plan lacks {line:?}:\n{shown}");
    }
    let json = support::tether(&[
        "plan", "--path", path_arg, "-n", &ns.name, "--app", &app, "-o", "json",
    ]);
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let waves: BTreeMap<String, i64> = document["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["key"]["name"].as_str().expect("name").to_string(),
                c["wave"].as_i64().expect("wave"),
            )
        })
        .collect();
    assert_eq!(waves["database"], 0);
    assert_eq!(waves["api"], 1);
    assert_eq!(waves["frontend"], 2);

    let out = support::tether(&["apply", "--path", path_arg, "-n", &ns.name, "--app", &app]);
    assert!(out.status.success(), "{}", support::said(&out));
    let database_ready = timeline.at("Deployment/database Available");
    let schema = timeline.at("ConfigMap/schema");
    let api = timeline.at("Deployment/api");
    assert!(
        timeline.at("Deployment/database") < database_ready && database_ready < schema,
        "wave 1 started before wave 0 was Healthy"
    );
    assert!(database_ready < api);
    let api_ready = timeline.at("Deployment/api Available");
    assert!(
        api_ready < timeline.at("ConfigMap/frontend"),
        "wave 2 started before wave 1 was Healthy"
    );
    eprintln!(
        "database Available {:?} after it was created; schema created {:?} after that; frontend {:?} after api was Available",
        database_ready - timeline.at("Deployment/database"),
        schema - database_ready,
        timeline.at("ConfigMap/frontend") - api_ready
    );

    // Pruning goes from the highest wave down: frontend (2) is gone before api (1) is.
    write(&path, &[("a.yaml", deployment("database", &[]))]);
    let out = support::tether(&[
        "apply", "--path", path_arg, "-n", &ns.name, "--app", &app, "-o", "json",
    ]);
    assert!(out.status.success(), "{}", support::said(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pruned: Vec<&str> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["action"] == "prune")
        .map(|r| r["key"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(pruned.len(), 3, "{pruned:?}");
    assert_eq!(pruned[0], "frontend", "wave 2 is pruned first: {pruned:?}");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn a_failing_presync_hook_writes_nothing_and_runs_the_syncfail_hooks() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "presync").await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("app");
    write(
        &path,
        &[
            ("app.yaml", cm("settings", &[])),
            ("web.yaml", deployment("web", &[])),
            (
                "migrate.yaml",
                job("migrate", true, &[("argocd.argoproj.io/hook", "PreSync")]),
            ),
            (
                "alert.yaml",
                cm_hook("sync-failed-", &[("argocd.argoproj.io/hook", "SyncFail")]),
            ),
        ],
    );
    let app = unique_name("presync");
    let path_arg = path.to_str().expect("utf-8");
    let plan = support::tether(&["plan", "--path", path_arg, "-n", &ns.name, "--app", &app]);
    let shown = support::said(&plan);
    assert!(shown.contains("PreSync Job.batch/migrate -n"), "{shown}");
    assert!(
        shown.contains("SyncFail ConfigMap/sync-failed-* -n"),
        "{shown}"
    );

    let out = support::tether(&[
        "apply",
        "--path",
        path_arg,
        "-n",
        &ns.name,
        "--app",
        &app,
        "--hook-timeout",
        "60s",
    ]);
    let said = support::said(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("PreSync hook Job.batch/migrate") && said.contains("failed"),
        "{said}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(configmaps.get_opt("settings").await.expect("get").is_none());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("web").await.expect("get").is_none());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        secrets
            .get_opt(&format!("tether-{app}"))
            .await
            .expect("get")
            .is_none(),
        "no ApplySet parent was written"
    );
    let alerts = configmaps
        .list(&ListParams::default().labels("tether.dev/hook-of"))
        .await
        .expect("list");
    let names: Vec<String> = alerts
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("sync-failed-"), "{names:?}");
    assert!(
        alerts.items[0]
            .metadata
            .labels
            .as_ref()
            .expect("labels")
            .get("applyset.kubernetes.io/part-of")
            .is_none(),
        "a hook is not a member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postsync_runs_once_everything_is_healthy_and_delete_policies_hold() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "postsync").await;
    let (timeline, tasks) = Timeline::start(&client, &ns.name).await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("app");
    let files = |revision: &str| {
        vec![
            ("web.yaml", deployment("web", &[])),
            ("rev.yaml", cm("revision", &[("note", revision)])),
            (
                "smoke.yaml",
                job(
                    "smoke-test",
                    false,
                    &[("argocd.argoproj.io/hook", "PostSync")],
                ),
            ),
            (
                "cleanup.yaml",
                job(
                    "cleanup",
                    false,
                    &[
                        ("argocd.argoproj.io/hook", "PostSync"),
                        ("argocd.argoproj.io/hook-delete-policy", "HookSucceeded"),
                    ],
                ),
            ),
            (
                "report.yaml",
                cm_hook("sync-report-", &[("tether.dev/hook", "PostSync")]),
            ),
        ]
    };
    write(&path, &files("1"));
    let app = unique_name("post");
    let path_arg = path.to_str().expect("utf-8");
    let out = support::tether(&[
        "apply", "--path", path_arg, "-n", &ns.name, "--app", &app, "-o", "json",
    ]);
    assert!(out.status.success(), "{}", support::said(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let hooks = report["hooks"].as_array().expect("hooks ran");
    assert_eq!(hooks.len(), 3, "{hooks:?}");
    assert!(
        hooks
            .iter()
            .all(|h| h["phase"] == "PostSync" && h["succeeded"] == true),
        "{hooks:?}"
    );
    assert!(
        timeline.at("Deployment/web Available") < timeline.at("Job/smoke-test"),
        "PostSync ran before the Deployment was Available"
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    // HookSucceeded: deleted once it succeeded. No policy (BeforeHookCreation): kept.
    assert!(
        jobs.get_opt("cleanup").await.expect("get").is_none(),
        "HookSucceeded"
    );
    let smoke = jobs
        .get("smoke-test")
        .await
        .expect("kept until the next sync");
    let first_uid = smoke.metadata.uid.clone();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let reports = || async {
        configmaps
            .list(&ListParams::default().labels("tether.dev/hook-of"))
            .await
            .expect("list")
            .items
    };
    assert_eq!(reports().await.len(), 1);

    // No change, no hooks: a no-op runs nothing.
    let out = support::tether(&[
        "apply", "--path", path_arg, "-n", &ns.name, "--app", &app, "-o", "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["hooks"].is_null(), "{report}");
    assert_eq!(report["writes"], 0);

    // A change: BeforeHookCreation replaces the named Job and the generated ConfigMap.
    write(&path, &files("2"));
    let out = support::tether(&["apply", "--path", path_arg, "-n", &ns.name, "--app", &app]);
    assert!(out.status.success(), "{}", support::said(&out));
    let smoke = jobs.get("smoke-test").await.expect("ran again");
    assert_ne!(smoke.metadata.uid, first_uid, "a new run of the hook");
    assert_eq!(
        reports().await.len(),
        1,
        "the earlier generated run was deleted first"
    );

    // HookFailed: a failed hook is deleted; the sync fails and says which hook.
    write(
        &path,
        &[
            ("rev.yaml", cm("revision", &[("note", "3")])),
            (
                "check.yaml",
                job(
                    "check",
                    true,
                    &[
                        ("argocd.argoproj.io/hook", "PostSync"),
                        ("argocd.argoproj.io/hook-delete-policy", "HookFailed"),
                    ],
                ),
            ),
        ],
    );
    let out = support::tether(&["apply", "--path", path_arg, "-n", &ns.name, "--app", &app]);
    let said = support::said(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("PostSync hook Job.batch/check -n"), "{said}");
    assert!(
        jobs.get_opt("check").await.expect("get").is_none(),
        "HookFailed"
    );
    for task in tasks {
        task.abort();
    }
}

/// A local chart with Helm hooks: pre-install runs on the first sync only, post-upgrade on
/// later ones only, and the test hook never.
#[tokio::test]
async fn helm_install_and_upgrade_hooks_run_when_helm_would_run_them() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "helmhooks").await;
    let dir = tempfile::tempdir().expect("temp");
    let chart = dir.path().join("chart");
    let hook = |name: &str, event: &str, weight: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-{{{{ .Values.round }}}}\n  annotations:\n    helm.sh/hook: {event}\n    helm.sh/hook-weight: \"{weight}\"\n    helm.sh/hook-delete-policy: before-hook-creation\ndata: {{k: v}}\n"
        )
    };
    let files = |round: &str| {
        vec![
            ("Chart.yaml", "apiVersion: v2\nname: hooked\nversion: 0.1.0\n".to_string()),
            ("values.yaml", format!("round: \"{round}\"\n")),
            (
                "templates/app.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  round: {{ .Values.round | quote }}\n".to_string(),
            ),
            ("templates/install.yaml", hook("installed", "pre-install", "-5")),
            ("templates/upgrade.yaml", hook("upgraded", "post-upgrade", "0")),
            ("templates/test.yaml", hook("tested", "test", "0")),
        ]
    };
    write(&chart, &files("1"));
    let helm = tool("helm");
    let helm = helm.to_str().expect("utf-8");
    let chart_arg = chart.to_str().expect("utf-8");
    let app = unique_name("helm");
    let apply = || {
        support::tether(&[
            "apply",
            "--path",
            chart_arg,
            "-n",
            &ns.name,
            "--app",
            &app,
            "--helm-bin",
            helm,
        ])
    };
    let out = apply();
    assert!(out.status.success(), "{}", support::said(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let exists = |name: &'static str| {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt(name).await.expect("get").is_some() }
    };
    assert!(
        exists("installed-1").await,
        "pre-install ran on the first sync"
    );
    assert!(!exists("upgraded-1").await, "post-upgrade did not");
    assert!(!exists("tested-1").await, "a test hook is never run");

    write(&chart, &files("2"));
    let out = apply();
    assert!(out.status.success(), "{}", support::said(&out));
    assert!(
        exists("upgraded-2").await,
        "post-upgrade ran on the second sync"
    );
    assert!(!exists("installed-2").await, "pre-install did not");
    assert!(!exists("tested-2").await);
    assert_eq!(
        configmaps
            .get("app")
            .await
            .expect("get")
            .data
            .expect("data")["round"],
        "2"
    );
}

/// The shape of widely installed charts' hooks: a ServiceAccount, Role and RoleBinding at
/// weight -5 and a Job using them at weight 1, all `hook-succeeded`, the Job gone the moment
/// it completes (`ttlSecondsAfterFinished: 0`). Helm deletes `hook-succeeded` hooks only when
/// every hook of the phase succeeded, and watches its Jobs: tether must do both, or the Job
/// can never run (its ServiceAccount deleted) or its completion is never seen.
#[tokio::test]
async fn a_hook_job_runs_with_the_hook_account_made_before_it_and_is_seen_though_deleted_at_once() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "helmjob").await;
    let dir = tempfile::tempdir().expect("temp");
    let chart = dir.path().join("chart");
    let hooked = |weight: &str| {
        format!(
            "  annotations:\n    helm.sh/hook: post-install,post-upgrade\n    helm.sh/hook-weight: \"{weight}\"\n    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded\n"
        )
    };
    let files = vec![
        (
            "Chart.yaml",
            "apiVersion: v2\nname: webhooked\nversion: 0.1.0\n".to_string(),
        ),
        (
            "templates/app.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata: {k: v}\n".to_string(),
        ),
        // File names put the Job first: only the weights and Helm's kind order order them.
        (
            "templates/a-job.yaml",
            format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: patch\n{}spec:\n  ttlSecondsAfterFinished: 0\n  backoffLimit: 0\n  template:\n    spec:\n      serviceAccountName: patcher\n      restartPolicy: Never\n      containers:\n      - name: run\n        image: registry.invalid/patch:1\n",
                hooked("1")
            ),
        ),
        (
            "templates/b-rbac.yaml",
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: patcher\n{0}roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: patcher}}\nsubjects:\n- {{kind: ServiceAccount, name: patcher, namespace: {{{{ .Release.Namespace }}}}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: patcher\n{0}rules:\n- {{apiGroups: [\"\"], resources: [configmaps], verbs: [get]}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: patcher\n{0}",
                hooked("-5")
            ),
        ),
    ];
    write(&chart, &files);
    let helm = tool("helm");
    let app = unique_name("hooked");
    let started = Instant::now();
    let out = support::tether(&[
        "apply",
        "--path",
        chart.to_str().expect("utf-8"),
        "-n",
        &ns.name,
        "--app",
        &app,
        "--helm-bin",
        helm.to_str().expect("utf-8"),
        "--hook-timeout",
        "60s",
    ]);
    let said = support::said(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        started.elapsed().as_secs() < 50,
        "the hooks ran at once, not until a timeout: {:?}\n{said}",
        started.elapsed()
    );
    // Kind order within weight -5, then the Job; each deleted once the phase succeeded.
    let ran: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("PostSync hook "))
        .collect();
    let position = |what: &str| {
        ran.iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what} ran: {said}"))
    };
    assert!(
        position("ServiceAccount/patcher") < position("Role.rbac.authorization.k8s.io/patcher"),
        "{said}"
    );
    assert!(
        position("Role.rbac") < position("RoleBinding.rbac"),
        "{said}"
    );
    assert!(
        position("RoleBinding.rbac") < position("Job.batch/patch"),
        "{said}"
    );
    assert!(
        ran.iter().all(|l| l.contains("succeeded (deleted)")),
        "{said}"
    );
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns.name);
    assert!(accounts.get_opt("patcher").await.expect("get").is_none());
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    assert!(jobs.get_opt("patch").await.expect("get").is_none());
}

/// A PostSync hook that fails keeps failing every sync (each runs it again, and says why,
/// with the warning Events of its Job and Pods) until a sync with its hooks succeeds; until
/// then `tether plan` has changes. The failed Job stays for inspection and is replaced by the
/// next run.
#[tokio::test]
async fn a_failed_hook_fails_every_sync_until_a_sync_runs_its_hooks_to_the_end() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "hookfail").await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("app");
    let files = |fails: bool| {
        vec![
            ("app.yaml", cm("settings", &[])),
            (
                "check.yaml",
                job("check", fails, &[("argocd.argoproj.io/hook", "PostSync")]),
            ),
        ]
    };
    write(&path, &files(true));
    let app = unique_name("hookfail");
    let path_arg = path.to_str().expect("utf-8");
    let apply = || {
        support::tether(&[
            "apply",
            "--path",
            path_arg,
            "-n",
            &ns.name,
            "--app",
            &app,
            "--hook-timeout",
            "60s",
        ])
    };
    let plan = || {
        support::tether(&[
            "plan",
            "--path",
            path_arg,
            "-n",
            &ns.name,
            "--app",
            &app,
            "--detailed-exitcode",
        ])
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let mut uids = Vec::new();
    for round in 0..2 {
        let out = apply();
        let said = support::said(&out);
        assert_eq!(out.status.code(), Some(1), "round {round}: {said}");
        assert!(
            said.contains("PostSync hook Job.batch/check") && said.contains("failed"),
            "{said}"
        );
        assert!(
            said.contains("warnings: ") && said.contains("FailedScheduling"),
            "the Job's warning Events say why: {said}"
        );
        let out = plan();
        let shown = support::said(&out);
        assert_eq!(out.status.code(), Some(2), "round {round}: {shown}");
        assert!(shown.contains("did not all succeed"), "{shown}");
        let left = jobs.get("check").await.expect("the failed Job stays");
        uids.push(left.metadata.uid.expect("uid"));
    }
    assert_ne!(uids[0], uids[1], "the second sync ran the hook again");

    // Fixed in Git: the next sync runs it, and then the set is in sync.
    write(&path, &files(false));
    let out = apply();
    assert!(out.status.success(), "{}", support::said(&out));
    assert!(
        support::said(&out).contains("PostSync hook Job.batch/check"),
        "{}",
        support::said(&out)
    );
    let out = plan();
    assert_eq!(out.status.code(), Some(0), "{}", support::said(&out));
    let out = apply();
    assert!(out.status.success(), "{}", support::said(&out));
    assert!(
        !support::said(&out).contains("PostSync hook"),
        "a sync with nothing to do runs no hooks: {}",
        support::said(&out)
    );
}
