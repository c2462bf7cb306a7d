//! Sharding: three `tether agent` processes split 60 Applications through shard Leases.
//! Every Application is reconciled by one agent at a time (each agent logs when each of its
//! reconciles began and ended; no two agents' intervals for one Application overlap), every
//! shard is held by exactly one live agent, and when the agent holding the most shards is
//! killed with SIGKILL its shards move to the others within the lease time and a new commit
//! still reaches all 60 Applications.

use crate::support;
use support::fixtures::configmap;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use support::agent::{applied, create_application, hmac_hex, post};
use support::git::{GitDaemon, GitRepo};
use support::{ProcessGroup, TestNamespace, cluster, free_port};
use tether::agent::shard::owner_of;
use tether::agent::{Application, install_crd};

const APPLICATIONS: usize = 60;
const SHARDS: u32 = 12;

const SECRET: &[u8] = b"shards-webhook-secret";

struct Agent {
    identity: String,
    log: PathBuf,
    port: u16,
    process: Option<ProcessGroup>,
}

fn start(name: &str, ns: &str, dir: &Path) -> Agent {
    let log = dir.join(format!("{name}.log"));
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, SECRET).expect("secret file");
    let port = free_port();
    let child = support::tether_command()
        .args(["agent", "-n", ns, "--shards", &SHARDS.to_string()])
        .args(["--shard-namespace", ns, "--lease-duration", "3s"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-secret-file",
        ])
        .arg(&secret)
        .env("HOSTNAME", name)
        .env("RUST_LOG", "warn,tether=info,tether::shard=debug")
        .env("TETHER_CACHE_DIR", dir.join(format!("{name}-cache")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .process_group(0)
        .spawn()
        .expect("the agent starts");
    Agent {
        identity: format!("{name}-{}", child.id()),
        log,
        port,
        process: Some(ProcessGroup::new(child)),
    }
}

/// A signed push of `url`'s main branch, to `agent`'s webhook. Each push names a new
/// commit, as a Git host's does (the agent refuses a body it received before).
async fn announce(agent: &Agent, url: &str) {
    static PUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let push = serde_json::to_vec(
        &json!({"repoURL": url, "ref": "refs/heads/main", "after": format!("push-{n}")}),
    )
    .expect("json");
    let signature = format!("sha256={}", hmac_hex(SECRET, &push));
    let (status, text) = post(
        agent.port,
        "generic",
        &[("X-Tether-Signature", signature)],
        push,
    )
    .await;
    assert_eq!(status, 202, "{text}");
}

/// One reconcile as an agent logged it.
#[derive(Debug, Clone)]
struct Interval {
    agent: String,
    began: u128,
    ended: u128,
}

/// Application → every reconcile of it that an agent's log records.
fn reconciles(agents: &[Agent]) -> HashMap<String, Vec<Interval>> {
    let mut out: HashMap<String, Vec<Interval>> = HashMap::new();
    for agent in agents {
        let text = std::fs::read_to_string(&agent.log).expect("the agent's log");
        for line in text.lines().filter(|l| l.contains("reconciled in shard")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("{name}= in {line:?}"))
                    .to_string()
            };
            assert_eq!(field("agent"), agent.identity, "{line}");
            out.entry(field("application")).or_default().push(Interval {
                agent: agent.identity.clone(),
                began: field("began").parse().expect("micros"),
                ended: field("ended").parse().expect("micros"),
            });
        }
    }
    out
}

/// No two agents reconciled one Application at once.
fn one_agent_at_a_time(agents: &[Agent]) -> usize {
    let all = reconciles(agents);
    let mut count = 0;
    for (app, mut intervals) in all {
        intervals.sort_by_key(|i| i.began);
        count += intervals.len();
        for pair in intervals.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(
                before.agent == after.agent || before.ended <= after.began,
                "{app} was reconciled by two agents at once: {before:?} and {after:?}"
            );
        }
    }
    count
}

/// Shard → its Lease's holder (empty when released).
async fn holders(leases: &Api<Lease>) -> BTreeMap<String, String> {
    leases
        .list(&Default::default())
        .await
        .expect("Leases")
        .items
        .into_iter()
        .filter_map(|lease| {
            let name = lease.metadata.name.clone()?;
            name.starts_with("tether-shard-").then(|| {
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                (name, holder)
            })
        })
        .collect()
}

/// Waits (15 s at most from `since`) until each shard's Lease is held by the member of
/// `members` that rendezvous hashing picks; returns the holders.
async fn balanced(
    leases: &Api<Lease>,
    members: &[String],
    since: Instant,
) -> BTreeMap<String, String> {
    let expected: BTreeMap<String, String> = (0..SHARDS)
        .map(|shard| {
            let owner = owner_of(shard, members).expect("members").clone();
            (format!("tether-shard-{shard}"), owner)
        })
        .collect();
    loop {
        let held = holders(leases).await;
        if held == expected {
            return held;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "the shards are not held as rendezvous hashing assigns them within 15 s (lease 3 s): \
             held {held:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_all_applied(apps: &Api<Application>, commit: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = apps.list(&Default::default()).await.expect("Applications");
        let done = list
            .items
            .iter()
            .filter(|a| applied(a) == Some(commit))
            .count();
        if done == APPLICATIONS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {done} of {APPLICATIONS} Applications applied {commit} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn three_agents_share_60_applications_one_at_a_time_and_a_killed_agents_share_moves() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "shards").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    for i in 0..APPLICATIONS {
        repo.write(
            &format!("app-{i:02}/cm.yaml"),
            &configmap(&format!("app-{i:02}"), "blue"),
        );
    }
    let first = repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let mut agents: Vec<Agent> = ["agent-a", "agent-b", "agent-c"]
        .iter()
        .map(|name| start(name, &ns.name, dir.path()))
        .collect();
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..APPLICATIONS {
        create_application(
            &apps,
            &format!("app-{i:02}"),
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": format!("app-{i:02}")},
                "destination": {"namespace": ns.name},
                // Polls are rare: only webhooks bring a new commit within a minute.
                "syncPolicy": {"interval": "1m"}
            }),
        )
        .await;
    }
    until_all_applied(&apps, &first, "first commit").await;

    // Every shard's Lease is held by the agent that rendezvous hashing picks among the
    // three (agents that started first took more, and gave them up as the others came).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut identities: Vec<String> = agents.iter().map(|a| a.identity.clone()).collect();
    identities.sort();
    let held = balanced(&leases, &identities, Instant::now()).await;
    let mut shares: BTreeMap<&String, usize> = BTreeMap::new();
    for holder in held.values() {
        *shares.entry(holder).or_default() += 1;
    }
    eprintln!("shards held: {shares:?}");
    let reconciled = one_agent_at_a_time(&agents);
    assert!(
        reconciled >= APPLICATIONS,
        "only {reconciled} reconciles logged"
    );

    // A push announced to one agent reaches the Applications of every shard: the others
    // learn of it from the annotation it sets (the Git host reaches one replica).
    let url = daemon.url("deploy");
    for i in 0..APPLICATIONS {
        repo.write(
            &format!("app-{i:02}/cm.yaml"),
            &configmap(&format!("app-{i:02}"), "teal"),
        );
    }
    let pushed = repo.commit("teal");
    let announced = Instant::now();
    announce(&agents[0], &url).await;
    until_all_applied(&apps, &pushed, "a push announced to one agent").await;
    let relayed = announced.elapsed();
    assert!(
        relayed < Duration::from_secs(30),
        "a push announced to one agent took {relayed:?} to reach every Application; polling \
         alone takes a minute"
    );

    // Kill the agent holding the most shards, as a crash would.
    let victim = (0..agents.len())
        .max_by_key(|&i| shares.get(&agents[i].identity).copied().unwrap_or(0))
        .expect("three agents");
    let victim_id = agents[victim].identity.clone();
    drop(agents[victim].process.take());
    let killed = Instant::now();
    let survivors: Vec<String> = identities
        .iter()
        .filter(|i| **i != victim_id)
        .cloned()
        .collect();
    for i in 0..APPLICATIONS {
        repo.write(
            &format!("app-{i:02}/cm.yaml"),
            &configmap(&format!("app-{i:02}"), "green"),
        );
    }
    let second = repo.commit("second");
    let survivor = agents
        .iter()
        .find(|a| a.identity != victim_id)
        .expect("two survivors");
    announce(survivor, &url).await;
    balanced(&leases, &survivors, killed).await;
    let moved = killed.elapsed();
    until_all_applied(&apps, &second, "second commit after the kill").await;
    let converged = killed.elapsed();
    eprintln!(
        "a push announced to one of three agents reached all {APPLICATIONS} Applications in {relayed:?}"
    );
    eprintln!(
        "killed {victim_id} holding {} shards: they moved in {moved:?}; all {APPLICATIONS} \
         Applications applied the next commit {converged:?} after the kill",
        shares.get(&victim_id).copied().unwrap_or(0)
    );
    let reconciled = one_agent_at_a_time(&agents);
    eprintln!(
        "{reconciled} reconciles logged by the three agents, none overlapping another agent's"
    );
    for agent in &mut agents {
        drop(agent.process.take());
    }
}
