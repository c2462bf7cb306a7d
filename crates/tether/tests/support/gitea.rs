//! A real Gitea on loopback for the commit status tests: built by testenv from its module
//! source (`testenv.py bin gitea`), run with SQLite in a temporary folder, with an admin
//! user and an API token; stopped when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ProcessGroup, free_port, tool};

pub const USER: &str = "tether";
pub const PASSWORD: &str = "tether-test-password-1";

pub struct Gitea {
    /// http://127.0.0.1:PORT
    pub url: String,
    /// An API token of the admin user (all scopes).
    pub token: String,
    _process: ProcessGroup,
    pub log: PathBuf,
}

impl Gitea {
    /// Starts Gitea in `dir` (its data, repositories and log) and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let binary = tool("gitea");
        // testenv keeps the source beside the binaries: src/gitea-<version> (templates,
        // locales and options are read from it).
        let version = binary
            .parent()
            .and_then(|p| p.file_name())
            .expect("bin/gitea-<version>/gitea")
            .to_owned();
        let source = binary
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("the cache root")
            .join("src")
            .join(version);
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let config = dir.join("app.ini");
        std::fs::write(
            &config,
            format!(
                "I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true\n\
                 RUN_MODE = prod\n\
                 WORK_PATH = {work}\n\
                 [server]\nHTTP_ADDR = 127.0.0.1\nHTTP_PORT = {port}\nROOT_URL = {url}/\n\
                 STATIC_ROOT_PATH = {source}\nAPP_DATA_PATH = {work}/data\nDISABLE_SSH = true\n\
                 OFFLINE_MODE = true\n\
                 [database]\nDB_TYPE = sqlite3\nPATH = {work}/gitea.db\n\
                 [repository]\nROOT = {work}/repositories\n\
                 [security]\nINSTALL_LOCK = true\nSECRET_KEY = tether-test-secret-key\n\
                 ALLOWED_HOST_LIST = loopback\n\
                 [service]\nDISABLE_REGISTRATION = true\n\
                 [log]\nMODE = file\nLEVEL = Info\nROOT_PATH = {work}/log\n\
                 [mailer]\nENABLED = false\n\
                 [cron]\nENABLED = false\n",
                work = dir.display(),
                source = source.display(),
            ),
        )
        .expect("app.ini");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&binary)
                .args(args)
                .arg("--config")
                .arg(&config)
                .env("GITEA_WORK_DIR", dir)
                .env("HOME", dir)
                .output()
                .expect("gitea runs");
            assert!(
                out.status.success(),
                "gitea {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["migrate"]);
        run(&[
            "admin",
            "user",
            "create",
            "--admin",
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--email",
            "tether@example.invalid",
            "--must-change-password=false",
        ]);
        let log = dir.join("gitea.out");
        let child = std::process::Command::new(&binary)
            .args(["web", "--config"])
            .arg(&config)
            .env("GITEA_WORK_DIR", dir)
            .env("HOME", dir)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("gitea.err")).expect("log"))
            .process_group(0)
            .spawn()
            .expect("gitea starts");
        let process = ProcessGroup::new(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = reqwest::blocking::Client::new()
                .get(format!("{url}/api/v1/version"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Gitea did not answer within 60 s; its log: {}",
                std::fs::read_to_string(dir.join("gitea.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let created = reqwest::blocking::Client::new()
            .post(format!("{url}/api/v1/users/{USER}/tokens"))
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", "application/json")
            .body(json!({"name": "tether-test", "scopes": ["all"]}).to_string())
            .send()
            .expect("token request");
        let ok = created.status().is_success();
        let text = created.text().unwrap_or_default();
        assert!(ok, "token: {text}");
        let token = serde_json::from_str::<Value>(&text).expect("json")["sha1"]
            .as_str()
            .expect("the token")
            .to_string();
        Self {
            url,
            token,
            _process: process,
            log,
        }
    }

    /// `method` `path` (under /api/v1) with the admin token and a JSON `body`; blocking
    /// (from a multi-threaded runtime, in `block_in_place`).
    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        tokio::task::block_in_place(|| self.api_blocking(method, path, body))
    }

    fn api_blocking(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::blocking::Client::new()
            .request(method, format!("{}/api/v1{path}", self.url))
            .header("Authorization", format!("token {}", self.token))
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().expect("Gitea answers");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Gitea in `dir/gitea`, with a public repository `repo` of the admin user (default
    /// branch main, empty), and a working repository in `dir/work` to push to it. Blocking:
    /// call it in `block_in_place`.
    pub fn with_repo(dir: &Path, repo: &str) -> (Self, super::git::GitRepo) {
        let home = dir.join("gitea");
        std::fs::create_dir_all(&home).expect("mkdir");
        let gitea = Self::start(&home);
        let (code, created) = gitea.api_blocking(
            reqwest::Method::POST,
            "/user/repos",
            Some(json!({"name": repo, "private": false, "default_branch": "main"})),
        );
        assert_eq!(code, 201, "{created}");
        let work = super::git::GitRepo::init(&dir.join("work"), repo);
        (gitea, work)
    }

    /// Opens a pull request of `repo` from `head` into `base`; its number. Gitea takes a
    /// pushed branch in the background, so a 404 or 422 (branch not there yet) is asked
    /// again for up to 30 s. Blocking: call it in `block_in_place`.
    pub fn open_pull(&self, repo: &str, head: &str, base: &str) -> u64 {
        let started = Instant::now();
        loop {
            let (code, pull) = self.api_blocking(
                reqwest::Method::POST,
                &format!("/repos/{USER}/{repo}/pulls"),
                Some(json!({"head": head, "base": base, "title": head})),
            );
            if code == 201 {
                return pull["number"].as_u64().expect("a number");
            }
            assert!(
                (code == 404 || code == 422) && started.elapsed() < Duration::from_secs(30),
                "opening a pull request: {code} {pull}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The clone URL of `repo` of the admin user, with the password (for `git push`).
    pub fn push_url(&self, repo: &str) -> String {
        self.url
            .replacen("http://", &format!("http://{USER}:{PASSWORD}@"), 1)
            + &format!("/{USER}/{repo}.git")
    }

    /// The clone URL without credentials (public repositories).
    pub fn clone_url(&self, repo: &str) -> String {
        format!("{}/{USER}/{repo}.git", self.url)
    }
}
