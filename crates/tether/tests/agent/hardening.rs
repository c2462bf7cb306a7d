//! Hardening (issue 30): the readiness probe turns ready once the agent has listed its
//! Applications (with none, and with 50), asked over HTTP as the kubelet asks; a runaway
//! chart or Jsonnet program is stopped at its memory or time limit while the agent goes on
//! serving the other Applications.

use crate::support;
use support::fixtures::configmap;

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::json;
use support::agent::{create_application, options_for, ready, start_agent, sync_state};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

/// GETs `/readyz` until it answers 200; how long that took, or the last answer after 30 s.
async fn ready_after(port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        let url = url.clone();
        let answer = tokio::task::spawn_blocking(move || {
            reqwest::blocking::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        })
        .await
        .expect("request");
        match answer {
            Ok((200, _)) => return Ok(started.elapsed()),
            Ok((status, body)) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("{status} {body}"));
            }
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e.to_string()),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn readyz_turns_ready_once_the_applications_are_listed_with_none_and_with_50() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let dir = tempfile::tempdir().expect("temp");
    for count in [0usize, 50] {
        let ns = TestNamespace::create(&client, "readyz").await;
        let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
        for i in 0..count {
            create_application(
                &apps,
                &format!("app-{i}"),
                json!({
                    "source": {"repoURL": "https://git.invalid/deploy.git", "path": "app"},
                    "destination": {"namespace": ns.name},
                    "suspend": true
                }),
            )
            .await;
        }
        let (port, listen) = support::agent::free_listen();
        let agent = start_agent(
            &client,
            AgentOptions {
                listen,
                ..options_for(&ns, dir.path())
            },
        );
        let took = ready_after(port).await;
        let _ = agent.stop().await;
        let took = took.unwrap_or_else(|last| {
            panic!("/readyz with {count} Applications: not 200 within 30 s; last: {last}")
        });
        println!("/readyz 200 after {took:?} with {count} Applications");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

/// The most resident memory seen in the process groups of this process's children named
/// `comm` (a renderer and what it starts), read from /proc every 10 ms until `stop`.
fn peak_of_children(
    comm: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let me = std::process::id().to_string();
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut groups = std::collections::HashMap::<String, u64>::new();
            for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some((head, fields)) = stat.rsplit_once(')') else {
                    continue;
                };
                let fields: Vec<&str> = fields.split_whitespace().collect();
                let (parent, group) = (fields[1], fields[2]);
                // The renderer itself (a child of this test), or anything in its group.
                let leader = head.ends_with(&format!("({comm}")) && parent == me && group == pid;
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    })
                    .unwrap_or(0)
                    * 1024;
                *groups.entry(group.to_string()).or_default() += rss;
                if leader {
                    groups.entry(format!("leader:{group}")).or_default();
                }
            }
            let leaders: Vec<String> = groups
                .keys()
                .filter_map(|k| k.strip_prefix("leader:").map(str::to_string))
                .collect();
            for group in leaders {
                peak = peak.max(groups[&group]);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// A chart whose template loops a trillion times, as an attacker who can push would write
/// it: helm would take all the memory there is (6.2 GiB before a 90 s timeout).
const RUNAWAY: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: runaway
data:
{{- range $i := until 1000000 }}
{{- range $j := until 1000000 }}
  k{{ $i }}-{{ $j }}: x
{{- end }}
{{- end }}
";

#[tokio::test]
async fn a_runaway_chart_is_killed_at_its_memory_limit_while_the_agent_serves_the_others() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "runaway").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "runaway/Chart.yaml",
        "apiVersion: v2\nname: runaway\nversion: 0.1.0\n",
    );
    repo.write("runaway/templates/cm.yaml", RUNAWAY);
    repo.write("good/cm.yaml", &configmap("good", "blue"));
    repo.commit("a runaway chart beside a good folder");
    let daemon = GitDaemon::start(&root);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = peak_of_children("helm", stop.clone());
    let agent = start_agent(
        &client,
        AgentOptions {
            helm_bin: Some(support::tool("helm")),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let limit: u64 = 384 << 20;
    for (name, path, extra) in [
        (
            "runaway",
            "runaway",
            json!({"renderer": "helm", "memoryLimit": "384Mi"}),
        ),
        ("good", "good", json!({})),
    ] {
        create_application(
            &apps,
            name,
            json!({
                "source": {"repoURL": daemon.url("deploy"), "path": path},
                "destination": {"namespace": ns.name},
                "render": extra,
            }),
        )
        .await;
    }
    // Both are watched together: the good one is served while helm still runs.
    let started = Instant::now();
    let (mut good_synced, mut runaway_failed) = (None, None);
    while good_synced.is_none() || runaway_failed.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not within 60 s: good synced {good_synced:?}, runaway failed {runaway_failed:?}"
        );
        if good_synced.is_none()
            && sync_state(&apps.get("good").await.expect("good")) == Some("Synced")
        {
            good_synced = Some(started.elapsed());
        }
        if runaway_failed.is_none()
            && let Some((status, message)) = ready(&apps.get("runaway").await.expect("runaway"))
            && status == "False"
        {
            assert!(
                message.contains("helm was killed at")
                    && message.contains("past the render's limit of 384 MiB"),
                "{message}"
            );
            runaway_failed = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let _ = agent.stop().await;
    println!(
        "good Synced after {good_synced:?}; runaway failed after {runaway_failed:?}; helm's peak {} MiB (limit 384 MiB)",
        peak >> 20
    );
    assert!(
        good_synced < runaway_failed,
        "the good Application waited for the runaway render"
    );
    assert!(
        peak > 128 << 20,
        "helm was not seen running: peak {peak} bytes"
    );
    assert!(
        peak < limit + (64 << 20),
        "helm's memory went {} MiB past its limit",
        (peak - limit) >> 20
    );
}

/// `tether render` evaluates Jsonnet in a process of its own under the render limits: a
/// program that allocates without end is killed at the memory limit, one that loops at the
/// time limit, and each error says which; a well-behaved one still renders.
#[test]
fn a_runaway_jsonnet_program_is_stopped_at_its_memory_or_time_limit() {
    let dir = tempfile::tempdir().expect("temp");
    let write = |path: &str, text: &str| {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    };
    write(
        "hog/main.jsonnet",
        "local big = std.makeArray(100000000, function(i) i);\n{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { n: std.toString(std.foldl(function(a, b) a + b, big, 0)) } }\n",
    );
    write(
        "spin/main.jsonnet",
        "local f(n) = if n == 0 then 0 else f(n - 1) + f(n - 1);\n{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { n: std.toString(f(60)) } }\n",
    );
    write("fine/lib/name.libsonnet", "{ name: 'from-a-library' }\n");
    write(
        "fine/main.jsonnet",
        "local lib = import 'name.libsonnet';\n{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: lib.name } }\n",
    );
    let render = |path: &str, limit: &[&str]| {
        let started = Instant::now();
        let folder = dir.path().join(path).display().to_string();
        let mut args = vec!["render", "--path", &folder, "--jsonnet-lib", "lib"];
        args.extend_from_slice(limit);
        let output = support::tether(&args);
        (output, started.elapsed())
    };
    let (output, took) = render("hog", &["--render-memory", "128Mi"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("main.jsonnet: the Jsonnet evaluation was killed at")
            && stderr.contains("past the render's limit of 128 MiB"),
        "{stderr}"
    );
    println!("memory: stopped after {took:?}");
    let (output, took) = render("spin", &["--render-timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "main.jsonnet: the Jsonnet evaluation did not finish within 2 s and was killed"
        ),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    println!("time: stopped after {took:?}");
    let (output, _) = render("fine", &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("name: from-a-library"));
}
