//! Crash sweeps: `tether agent` and `tether apply` killed with SIGKILL at instants spread
//! over three syncs of one Application (the first sync; an update that adds, changes and
//! removes objects and brings a new kind and a new namespace; a prune of a new kind and
//! namespace and half the rest), started again each time. At every kill, and after each
//! sync converges:
//! - every object carrying the set's label is a member: its kind and namespace are recorded
//!   on the parent (else a later prune could never find it: a leak);
//! - no object that Git had before and still has was deleted (its uid never changes);
//! - once converged: the members are exactly Git's objects, and the sync is reported.
//!
//! `make test` runs a short sweep (150 objects, 2 kills a sync); `make soak` the long one
//! (`TETHER_SWEEP_OBJECTS=500 TETHER_SWEEP_KILLS=10`: 30 kills a command).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent::{applied, create_application};
use support::git::{GitDaemon, GitRepo};
use support::{KillOnDrop, TestNamespace, cluster};
use tether::agent::{Application, install_crd};
use tether::inventory::{ApplySet, GROUP_KINDS_ANNOTATION, NAMESPACES_ANNOTATION, PART_OF_LABEL};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An object of the sweep: kind, namespace, name.
type Key = (&'static str, String, String);

/// What Git holds at each of the three commits: key → the value of `data.v` (None for a
/// ServiceAccount).
fn desired(step: usize, n: usize, ns: &str, ns2: &str) -> BTreeMap<Key, Option<String>> {
    let mut objects = BTreeMap::new();
    let tenth = (n / 10).max(1);
    for i in 0..n {
        let value = match step {
            0 => Some("1"),
            // The update removes the first tenth and changes the second.
            _ if i < tenth => None,
            1 if i < 2 * tenth => Some("2"),
            1 => Some("1"),
            // The prune keeps every other object of the rest.
            _ if i % 2 == 1 => None,
            _ if i < 2 * tenth => Some("2"),
            _ => Some("1"),
        };
        if let Some(value) = value {
            objects.insert(
                ("ConfigMap", ns.to_string(), format!("cm-{i:04}")),
                Some(value.to_string()),
            );
        }
    }
    if step == 1 {
        for i in 0..tenth {
            objects.insert(
                ("ServiceAccount", ns.to_string(), format!("sa-{i:04}")),
                None,
            );
            objects.insert(
                ("ConfigMap", ns2.to_string(), format!("other-{i:04}")),
                Some("1".into()),
            );
        }
    }
    objects
}

fn manifest(key: &Key, value: &Option<String>) -> String {
    let (kind, namespace, name) = key;
    let mut text = format!(
        "apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    if let Some(value) = value {
        text.push_str(&format!("data:\n  v: \"{value}\"\n"));
    }
    text
}

/// Writes commit `step` of the sweep into `repo` (one file per object under `apps/sweep/`).
fn commit_step(repo: &GitRepo, objects: &BTreeMap<Key, Option<String>>, step: usize) -> String {
    let folder = repo.path.join("apps/sweep");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("folder");
    for (key, value) in objects {
        let file = folder.join(format!("{}-{}-{}.yaml", key.0, key.1, key.2));
        std::fs::write(file, manifest(key, value)).expect("write");
    }
    repo.commit(&format!("sweep step {step}"))
}

/// What the cluster holds of the sweep's objects: key → (uid, data.v, carries the label).
async fn live(
    client: &kube::Client,
    namespaces: &[&str],
    id: &str,
) -> BTreeMap<Key, (String, Option<String>, bool)> {
    let mut found = BTreeMap::new();
    let labelled = |labels: &BTreeMap<String, String>| {
        labels.get(PART_OF_LABEL).map(String::as_str) == Some(id)
    };
    for ns in namespaces {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for cm in cms.list(&ListParams::default()).await.expect("list") {
            let name = cm.name_any();
            if !is_sweep_object(&name) {
                continue;
            }
            let value = cm.data.as_ref().and_then(|d| d.get("v").cloned());
            found.insert(
                ("ConfigMap", ns.to_string(), name),
                (cm.uid().unwrap_or_default(), value, labelled(cm.labels())),
            );
        }
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        for sa in sas.list(&ListParams::default()).await.expect("list") {
            let name = sa.name_any();
            if name.starts_with("sa-") {
                found.insert(
                    ("ServiceAccount", ns.to_string(), name),
                    (sa.uid().unwrap_or_default(), None, labelled(sa.labels())),
                );
            }
        }
    }
    found
}

/// How far the cluster is from `want` (objects to create, change or delete), of `work`.
fn remaining(
    want: &BTreeMap<Key, Option<String>>,
    now: &BTreeMap<Key, (String, Option<String>, bool)>,
) -> usize {
    let missing = want
        .iter()
        .filter(|(key, value)| now.get(*key).is_none_or(|(_, v, _)| v != *value))
        .count();
    let extra = now.keys().filter(|key| !want.contains_key(*key)).count();
    missing + extra
}

/// Counts the writes to the sweep's objects as they happen (watch events), so that a kill
/// can land within milliseconds of a chosen share of a sync's writes: polling the cluster
/// by LIST was too slow, and every kill landed after the last write.
struct Writes {
    count: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writes {
    async fn watch(client: &kube::Client, ns: &str, ns2: &str) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(3);
        let mut tasks = Vec::new();
        for (kind, namespace) in [
            ("ConfigMap", ns),
            ("ConfigMap", ns2),
            ("ServiceAccount", ns),
        ] {
            let (count, ready) = (count.clone(), ready_tx.clone());
            let client = client.clone();
            let namespace = namespace.to_string();
            tasks.push(tokio::spawn(async move {
                if kind == "ConfigMap" {
                    count_events::<ConfigMap>(Api::namespaced(client, &namespace), count, ready)
                        .await
                } else {
                    count_events::<ServiceAccount>(
                        Api::namespaced(client, &namespace),
                        count,
                        ready,
                    )
                    .await
                }
            }));
        }
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
                .await
                .expect("the watches start within 30 s");
        }
        Self { count, tasks }
    }

    fn seen(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn count_events<K>(api: Api<K>, count: Arc<AtomicUsize>, ready: tokio::sync::mpsc::Sender<()>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) if !listed => {
                listed = true;
                let _ = ready.send(()).await;
            }
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object))
                if listed && is_sweep_object(&object.name_any()) =>
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

fn is_sweep_object(name: &str) -> bool {
    name.starts_with("cm-") || name.starts_with("other-") || name.starts_with("sa-")
}

/// The checks that hold at every instant (`converged`: and once a sync finished).
async fn check(
    client: &kube::Client,
    ns: &str,
    ns2: &str,
    app: &str,
    keep: &BTreeMap<Key, String>,
    converged: Option<&BTreeMap<Key, Option<String>>>,
) -> Result<(), String> {
    let set = ApplySet::new(app, ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let parent = secrets
        .get_opt(&set.parent_name())
        .await
        .map_err(|e| e.to_string())?;
    let annotation = |name: &str| {
        parent
            .as_ref()
            .and_then(|p| p.annotations().get(name).cloned())
            .unwrap_or_default()
    };
    let kinds: BTreeSet<String> = annotation(GROUP_KINDS_ANNOTATION)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut namespaces: BTreeSet<String> = annotation(NAMESPACES_ANNOTATION)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if parent.is_some() {
        namespaces.insert(ns.to_string());
    }
    let now = live(client, &[ns, ns2], &set.id).await;
    for (key, (_, _, labelled)) in &now {
        if *labelled && !(kinds.contains(key.0) && namespaces.contains(&key.1)) {
            return Err(format!(
                "{key:?} carries the set's label but the parent records kinds {kinds:?} and \
                 namespaces {namespaces:?}: no prune would ever find it"
            ));
        }
    }
    for (key, uid) in keep {
        match now.get(key) {
            None => return Err(format!("{key:?} was deleted although Git still has it")),
            Some((now_uid, _, _)) if now_uid != uid => {
                return Err(format!(
                    "{key:?} was deleted and created again although Git always had it"
                ));
            }
            _ => {}
        }
    }
    if let Some(want) = converged {
        let members: BTreeSet<&Key> = now
            .iter()
            .filter(|(_, (_, _, labelled))| *labelled)
            .map(|(key, _)| key)
            .collect();
        let wanted: BTreeSet<&Key> = want.keys().collect();
        if members != wanted {
            let missing: Vec<_> = wanted.difference(&members).take(5).collect();
            let extra: Vec<_> = members.difference(&wanted).take(5).collect();
            return Err(format!(
                "the members are not Git's objects: missing {missing:?}, extra {extra:?}"
            ));
        }
        if remaining(want, &now) != 0 {
            return Err(format!("{} objects differ from Git", remaining(want, &now)));
        }
    }
    Ok(())
}

/// One command under test, run as a child process so it can be killed with SIGKILL.
trait Subject {
    fn start(&self, commit: &str) -> Child;
    /// Its log (stderr of every run).
    fn log(&self) -> &Path;
    /// Whether the command reports the commit as done (after the cluster matches it).
    fn done(&self, child: &mut Child, commit: &str) -> impl Future<Output = bool>;
}

struct Sweep {
    client: kube::Client,
    ns: String,
    ns2: String,
    app: String,
    objects: usize,
    kills: usize,
    /// Fractions of each sync's work done at each kill, for the report.
    killed_at: Vec<String>,
}

impl Sweep {
    async fn run(&mut self, repo: &GitRepo, subject: &impl Subject) {
        let mut before: BTreeMap<Key, Option<String>> = BTreeMap::new();
        let mut uids: BTreeMap<Key, String> = BTreeMap::new();
        let id = ApplySet::new(&self.app, &self.ns).id;
        for step in 0..3 {
            let want = desired(step, self.objects, &self.ns, &self.ns2);
            let commit = commit_step(repo, &want, step);
            // Objects Git had and still has must never be deleted, whatever instant we kill.
            let keep: BTreeMap<Key, String> = uids
                .iter()
                .filter(|(key, _)| before.contains_key(*key) && want.contains_key(*key))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let start_state = live(&self.client, &[&self.ns, &self.ns2], &id).await;
            let work = remaining(&want, &start_state).max(1);
            let writes = Writes::watch(&self.client, &self.ns, &self.ns2).await;
            for kill in 0..self.kills {
                let mut child = subject.start(&commit);
                let _guard = KillOnDrop(child.id());
                let started = Instant::now();
                if kill == 0 {
                    // The first kill of a sync: early, while it fetches, renders and plans.
                    tokio::time::sleep(Duration::from_millis(150 + 97 * step as u64)).await;
                } else {
                    // The others: once this share of the sync's writes has happened.
                    let threshold = work * kill / self.kills;
                    while writes.seen() < threshold && child.try_wait().expect("wait").is_none() {
                        assert!(
                            started.elapsed() < Duration::from_secs(120),
                            "step {step}: {} of {work} writes seen after 120 s\n{}",
                            writes.seen(),
                            tail(subject.log())
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                let now = live(&self.client, &[&self.ns, &self.ns2], &id).await;
                let done = 1.0 - remaining(&want, &now) as f64 / work as f64;
                self.killed_at.push(format!(
                    "step {step} kill {kill}: {:.0} ms, {:.0} % done",
                    started.elapsed().as_secs_f64() * 1000.0,
                    done * 100.0
                ));
                if let Err(problem) =
                    check(&self.client, &self.ns, &self.ns2, &self.app, &keep, None).await
                {
                    panic!(
                        "after the kill at step {step}, {:.0} % done: {problem}\nkills so far: {:#?}",
                        done * 100.0,
                        self.killed_at
                    );
                }
            }
            // Started once more and left alone, it converges to the commit.
            let mut child = subject.start(&commit);
            let _guard = KillOnDrop(child.id());
            let started = Instant::now();
            while !subject.done(&mut child, &commit).await {
                assert!(
                    started.elapsed() < Duration::from_secs(180),
                    "step {step}: not converged within 180 s after the last kill\n{}",
                    tail(subject.log())
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            if let Err(problem) = check(
                &self.client,
                &self.ns,
                &self.ns2,
                &self.app,
                &keep,
                Some(&want),
            )
            .await
            {
                panic!("step {step} converged wrongly: {problem}");
            }
            let now = live(&self.client, &[&self.ns, &self.ns2], &id).await;
            uids = now.into_iter().map(|(k, (uid, _, _))| (k, uid)).collect();
            before = want;
        }
        eprintln!(
            "crash sweep ({} objects): {} kills survived\n  {}",
            self.objects,
            self.killed_at.len(),
            self.killed_at.join("\n  ")
        );
    }
}

struct Setup {
    client: kube::Client,
    ns: TestNamespace,
    ns2: TestNamespace,
    dir: tempfile::TempDir,
    repo: GitRepo,
    daemon: GitDaemon,
}

async fn setup(prefix: &str) -> Setup {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, prefix).await;
    let ns2 = TestNamespace::create(&client, &format!("{prefix}-b")).await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let daemon = GitDaemon::start(&root);
    Setup {
        client,
        ns,
        ns2,
        dir,
        repo,
        daemon,
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// The last 30 lines of a log, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

struct Agent {
    apps: Api<Application>,
    ns: String,
    cache: PathBuf,
    log: PathBuf,
}

impl Subject for Agent {
    fn log(&self) -> &Path {
        &self.log
    }

    fn start(&self, _commit: &str) -> Child {
        support::tether_command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .args(["agent", "-n", &self.ns, "--verify-interval", "0", "-v"])
            .env("TETHER_CACHE_DIR", &self.cache)
            .stderr(log_file(&self.log))
            .spawn()
            .expect("the agent starts")
    }

    async fn done(&self, child: &mut Child, commit: &str) -> bool {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the agent exited:\n{}",
            tail(&self.log)
        );
        let app = self.apps.get("sweep").await.expect("the Application");
        applied(&app) == Some(commit)
            && app
                .status
                .as_ref()
                .and_then(|s| s.sync.as_ref())
                .is_some_and(|s| s.status == "Synced")
    }
}

struct ApplyCommand {
    url: String,
    ns: String,
    cache: PathBuf,
    log: PathBuf,
}

impl Subject for ApplyCommand {
    fn log(&self) -> &Path {
        &self.log
    }

    fn start(&self, _commit: &str) -> Child {
        support::tether_command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .args([
                "apply",
                "--repo",
                &self.url,
                "--path",
                "apps/sweep",
                "--multi-namespace",
            ])
            .args(["--app", "sweep", "-n", &self.ns])
            .arg("--git-cache")
            .arg(&self.cache)
            .stderr(log_file(&self.log))
            .spawn()
            .expect("tether apply starts")
    }

    async fn done(&self, child: &mut Child, _commit: &str) -> bool {
        match child.try_wait().expect("wait") {
            None => false,
            Some(status) => {
                assert!(
                    status.success(),
                    "tether apply failed after the kills: {status}\n{}",
                    tail(&self.log)
                );
                true
            }
        }
    }
}

/// With `TETHER_SWEEP_REPORT_DIR` set (make soak), each kill's instant goes to a file.
fn report(what: &str, sweep: &Sweep) {
    if let Some(dir) = std::env::var_os("TETHER_SWEEP_REPORT_DIR") {
        let file = Path::new(&dir).join(format!("crash-sweep-{what}.txt"));
        let text = format!(
            "{what}: {} objects, {} kills, all survived\n{}\n",
            sweep.objects,
            sweep.killed_at.len(),
            sweep.killed_at.join("\n")
        );
        std::fs::write(&file, text).expect("report");
    }
}

#[tokio::test]
async fn the_agent_killed_at_any_instant_loses_and_leaks_nothing() {
    let s = setup("sweep-agent").await;
    let apps: Api<Application> = Api::namespaced(s.client.clone(), &s.ns.name);
    let objects = setting("TETHER_SWEEP_OBJECTS", 150);
    create_application(
        &apps,
        "sweep",
        json!({
            "source": {"repoURL": s.daemon.url("deploy"), "path": "apps/sweep"},
            "destination": {"namespace": s.ns.name},
            "syncPolicy": {"interval": "1s", "retry": {"backoff": "1s"}}
        }),
    )
    .await;
    let agent = Agent {
        apps,
        ns: s.ns.name.clone(),
        cache: s.dir.path().join("agent-cache"),
        log: s.dir.path().join("agent.log"),
    };
    let mut sweep = Sweep {
        client: s.client.clone(),
        ns: s.ns.name.clone(),
        ns2: s.ns2.name.clone(),
        app: "sweep".into(),
        objects,
        kills: setting("TETHER_SWEEP_KILLS", 2),
        killed_at: Vec::new(),
    };
    sweep.run(&s.repo, &agent).await;
    report("agent", &sweep);
}

#[tokio::test]
async fn tether_apply_killed_at_any_instant_loses_and_leaks_nothing() {
    let s = setup("sweep-apply").await;
    let apply = ApplyCommand {
        url: s.daemon.url("deploy"),
        ns: s.ns.name.clone(),
        cache: s.dir.path().join("git-cache"),
        log: s.dir.path().join("apply.log"),
    };
    let mut sweep = Sweep {
        client: s.client.clone(),
        ns: s.ns.name.clone(),
        ns2: s.ns2.name.clone(),
        app: "sweep".into(),
        objects: setting("TETHER_SWEEP_OBJECTS", 150),
        kills: setting("TETHER_SWEEP_KILLS", 2),
        killed_at: Vec::new(),
    };
    sweep.run(&s.repo, &apply).await;
    report("apply", &sweep);
}
