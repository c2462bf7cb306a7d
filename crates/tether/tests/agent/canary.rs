//! A canary Secret value must appear in no output: every command's stdout and stderr at
//! every verbosity and format, the agent's log at trace level, Events, notifications, the
//! Application's status, the JSON API, the metrics and the web UI's pages. The canary travels the whole
//! way: created from Git, changed in Git (a diff of a Secret), and edited by hand in the
//! cluster (drift the agent puts back). Each value is searched as written and base64-encoded
//! (as the API server returns `data`). The Secret is SOPS-encrypted in Git (by the real
//! sops), so the decrypted value must also stay out of the agent's Git and render caches.

use crate::support;

use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use support::agent::{applied, create_application};
use support::git::{GitDaemon, GitRepo};
use support::sops::{age_key, sops_encrypt};
use support::{ProcessGroup, TestNamespace, cluster, free_port, tether, unique_name};
use tether::agent::{Application, install_crd};

fn secret(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  password: {value}\n"
    )
}

const CONFIG: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n";

/// Every output collected, by where it came from.
#[derive(Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn command(&mut self, what: &str, out: &Output) {
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 2),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.add(
            format!("{what} (stdout)"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("{what} (stderr)"),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    /// Fails naming every output that holds any canary (plain or base64).
    fn assert_clean(&self, canaries: &[&str]) -> usize {
        let base64 = base64::engine::general_purpose::STANDARD;
        let needles: Vec<String> = canaries
            .iter()
            .flat_map(|c| [c.to_string(), base64.encode(c)])
            .collect();
        let leaks: Vec<String> = self
            .0
            .iter()
            .filter_map(|(what, text)| {
                needles
                    .iter()
                    .find(|n| text.contains(n.as_str()))
                    .map(|n| format!("{what} holds {n:?}"))
            })
            .collect();
        assert!(leaks.is_empty(), "the canary leaked:\n{}", leaks.join("\n"));
        self.0.len()
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn http_get(url: &str, token: &str) -> String {
    let response = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.text().expect("a body")
}

#[tokio::test]
async fn a_canary_secret_value_appears_in_no_output() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "canary").await;
    let canary = |n: u8| format!("canary-{n}-{}", unique_name("v").replace('-', ""));
    let (first, second, by_hand) = (canary(1), canary(2), canary(3));
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    let (key_file, recipient) = age_key(dir.path(), "age.txt");
    let write_secret = |folder: &str, value: &str| {
        let file = format!("{folder}/db.yaml");
        repo.write(&file, &secret(&format!("{folder}-db"), value));
        sops_encrypt(
            &repo.path.join(&file),
            &recipient,
            &["--encrypted-regex", "^(data|stringData)$"],
        );
    };
    for folder in ["push", "pull"] {
        write_secret(folder, &first);
        repo.write(
            &format!("{folder}/settings.yaml"),
            &CONFIG.replace("settings", folder),
        );
    }
    repo.commit("first");
    let daemon = GitDaemon::start(&root);
    let url = daemon.url("deploy");
    let mut outputs = Outputs::default();

    // Push: render, plan in every format and apply, at every verbosity, for a create and
    // then for a change of the Secret's value.
    let push = |outputs: &mut Outputs, phase: &str| {
        let key = key_file.to_str().expect("utf-8 path");
        let base = [
            "--repo",
            &url,
            "--path",
            "push",
            "--app",
            "push",
            "-n",
            &ns.name,
            "--decryption-key-file",
            key,
        ];
        for verbosity in [None, Some("-v"), Some("-vv"), Some("-vvv")] {
            let v: Vec<&str> = verbosity.into_iter().collect();
            for format in ["text", "json", "yaml", "markdown"] {
                let mut args = vec!["plan", "--detailed-exitcode", "-o", format];
                args.extend(base);
                args.extend(&v);
                outputs.command(&format!("{phase}: {}", args.join(" ")), &tether(&args));
            }
            for format in ["text", "json", "yaml"] {
                let mut args = vec!["render", "--repo", &url, "--path", "push", "-o", format];
                args.extend(["--decryption-key-file", key]);
                args.extend(&v);
                outputs.command(&format!("{phase}: {}", args.join(" ")), &tether(&args));
            }
        }
        let mut args = vec!["apply", "-vvv", "-o", "json"];
        args.extend(base);
        outputs.command(&format!("{phase}: apply"), &tether(&args));
        let mut args = vec!["status", "-vvv"];
        args.extend(base);
        outputs.command(&format!("{phase}: status"), &tether(&args));
    };
    push(&mut outputs, "create");

    // Pull: the agent at trace level, with its API, UI and metrics.
    let port = free_port();
    let token = "canary-test-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("token file");
    let log = dir.path().join("agent.log");
    // Notifications (JSON and Slack's format) of the syncs and the drift put back.
    let receiver = support::agent::Receiver::start(200);
    let agent = support::tether_command()
        .args(["agent", "-n", &ns.name, "-vvv", "--verify-interval", "2s"])
        .args(["--notify", &format!("{}/json", receiver.url)])
        .args(["--notify-slack", &format!("{}/slack", receiver.url)])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-token-file"])
        .arg(&token_file)
        .env("TETHER_CACHE_DIR", dir.path().join("agent-cache"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .process_group(0)
        .spawn()
        .expect("the agent starts");
    let _agent = ProcessGroup::new(agent);
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sops-age"},
        "stringData": {"age.agekey": std::fs::read_to_string(&key_file).expect("key")},
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&Default::default(), &keys)
        .await
        .expect("the keys' Secret is created");
    create_application(
        &apps,
        "pull",
        json!({
            "source": {"repoURL": url, "path": "pull"},
            "decryption": {"provider": "sops", "secretRef": {"name": "sops-age"}},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1s"}
        }),
    )
    .await;
    let wait_applied = |commit: String| {
        let apps = apps.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !apps
                .get("pull")
                .await
                .is_ok_and(|a| applied(&a) == Some(commit.as_str()))
            {
                assert!(Instant::now() < deadline, "not applied within 60 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_applied(repo.head()).await;

    // A change of the value in Git.
    for folder in ["push", "pull"] {
        write_secret(folder, &second);
    }
    let changed = repo.commit("second");
    push(&mut outputs, "change");
    wait_applied(changed).await;

    // A hand edit, which the agent puts back.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .patch(
            "pull-db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": by_hand}})),
        )
        .await
        .expect("hand edit");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = secrets.get("pull-db").await.expect("secret");
        let value = live.data.expect("data")["password"].0.clone();
        if value == second.as_bytes() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hand edit was not put back in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The backstop runs (every 2 s) at least once more, at trace level.
    tokio::time::sleep(Duration::from_secs(3)).await;

    for args in [
        vec!["get", "apps", "-o", "yaml"],
        vec!["get", "apps", "-o", "json"],
        vec!["get", "apps", "-vvv"],
        vec!["diff", "pull", "-vvv"],
        vec!["diff", "pull", "-o", "json"],
        vec!["history", "pull", "-vvv"],
        vec!["history", "pull", "-o", "yaml"],
    ] {
        let mut full = args.clone();
        full.extend(["-n", ns.name.as_str()]);
        outputs.command(&full.join(" "), &tether(&full));
    }
    let app = apps.get("pull").await.expect("app");
    outputs.add(
        "Application (status)",
        serde_json::to_string(&app).expect("json"),
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    for event in events.list(&ListParams::default()).await.expect("events") {
        outputs.add("Event", serde_json::to_string(&event).expect("json"));
    }
    let base = format!("http://127.0.0.1:{port}");
    let ns_name = ns.name.clone();
    let pages = tokio::task::spawn_blocking(move || {
        let object = |kind: &str, name: &str| {
            format!(
                "{base}/ui/apps/{ns_name}/pull/object?kind={kind}&namespace={ns_name}&name={name}"
            )
        };
        [
            format!("{base}/metrics"),
            format!("{base}/api/v1/applications"),
            format!("{base}/api/v1/applications/{ns_name}/pull"),
            format!("{base}/ui/"),
            format!("{base}/ui/apps/{ns_name}/pull"),
            format!("{base}/ui/apps/{ns_name}/pull/tree"),
            object("Secret", "pull-db"),
            object("ConfigMap", "pull"),
        ]
        .into_iter()
        .map(|url| (url.clone(), http_get(&url, token)))
        .collect::<Vec<_>>()
    })
    .await
    .expect("pages");
    for (url, body) in pages {
        outputs.add(url, body);
    }
    outputs.add(
        "the agent's log at trace level",
        std::fs::read_to_string(&log).expect("log"),
    );
    let notifications = receiver.taken();
    assert!(
        !notifications.is_empty(),
        "the syncs sent notifications to search"
    );
    for notification in notifications {
        outputs.add(
            format!("a notification to {}", notification.path),
            String::from_utf8_lossy(&notification.body),
        );
    }
    for file in files_under(&dir.path().join("agent-cache")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        outputs.add(
            format!("the agent's cache: {}", file.display()),
            String::from_utf8_lossy(&bytes),
        );
    }

    let searched = outputs.assert_clean(&[&first, &second, &by_hand]);
    eprintln!("the canary appeared in none of {searched} outputs");
}
