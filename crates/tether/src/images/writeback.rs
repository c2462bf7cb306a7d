//! Committing image updates to Git with the real `git` (clone, commit, push): credentials
//! reach git through an askpass helper and environment variables (never the command line
//! or the URL), SSH with a key and strict known hosts, a signed commit with an SSH key when
//! asked; a push refused because the branch moved is done again on the new head.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::setters::Change;
use crate::source::tree::{EntryKind, Tree};

/// A file's rewrite: (path in the repository, text) → new text and its changes.
pub type Edit<'a> = &'a (dyn Fn(&str, &str) -> Option<(String, Vec<Change>)> + Sync);

/// Where and how to commit.
#[derive(Clone, Default)]
pub struct Target {
    pub url: String,
    /// The branch checked out, and the one pushed to (the same by default).
    pub branch: String,
    pub push_branch: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ssh_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub author_name: String,
    pub author_email: String,
    /// The key that signs the commit.
    pub signing: Option<Signing>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("branch", &self.branch)
            .field("push_branch", &self.push_branch)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A commit signing key, in a file.
#[derive(Clone)]
pub enum Signing {
    /// An SSH private key (OpenSSH format).
    Ssh(PathBuf),
    /// An armored OpenPGP secret key without a passphrase (imported into a GnuPG home of
    /// the commit's own).
    OpenPgp(PathBuf),
}

/// What a write-back did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pushed {
        commit: String,
        message: String,
        changes: Vec<Change>,
    },
    /// The branch already holds the chosen references.
    Unchanged,
}

/// How often a push refused because the branch moved is tried again.
const ATTEMPTS: usize = 3;

/// Clones the branch, rewrites the files under `path` with `edit`, commits with `message`
/// (made from the changes) and pushes.
pub fn commit_and_push(
    target: &Target,
    path: &str,
    edit: Edit<'_>,
    message: &dyn Fn(&[Change]) -> String,
) -> Result<Outcome, String> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let work = tempfile::Builder::new()
            .prefix("tether-image-update-")
            .tempdir()
            .map_err(|e| format!("cannot create a folder to commit in: {e}"))?;
        let git = Git::new(target, work.path())?;
        let clone = work.path().join("repo");
        git.clone_branch(&clone)?;
        let changes = edit_folder(&clone, path, edit, true)?;
        if changes.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let text = message(&changes);
        git.commit(&clone, &text)?;
        let push_branch = target.push_branch.as_deref().unwrap_or(&target.branch);
        match git.run(
            Some(&clone),
            &[
                "push",
                "-q",
                "origin",
                &format!("HEAD:refs/heads/{push_branch}"),
            ],
        ) {
            Ok(_) => {
                let commit = git.run(Some(&clone), &["rev-parse", "HEAD"])?;
                return Ok(Outcome::Pushed {
                    commit: commit.trim().to_string(),
                    message: text,
                    changes,
                });
            }
            Err(e) if moved(&e) && attempt < ATTEMPTS => {
                tracing::info!(
                    attempt,
                    "the branch moved while committing image updates; again on its new head"
                );
                last = e;
            }
            Err(e) => {
                return Err(format!(
                    "git push to {} {push_branch} was refused: {e}",
                    target.url
                ));
            }
        }
    }
    Err(format!(
        "git push to {} kept being refused after {ATTEMPTS} attempts: {last}",
        target.url
    ))
}

/// Whether a refused push says the branch moved (done again on its new head); a hook's or a
/// protected branch's refusal is final.
fn moved(error: &str) -> bool {
    [
        "fetch first",
        "non-fast-forward",
        "stale info",
        "cannot lock ref",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// The YAML files under `path` of a folder, rewritten by `edit` (written when `write`):
/// every change.
pub fn edit_folder(
    root: &Path,
    path: &str,
    edit: Edit<'_>,
    write: bool,
) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    let mut files = Vec::new();
    collect_yaml(root, &root.join(path), &mut files)?;
    files.sort();
    for relative in files {
        let full = root.join(&relative);
        let text = std::fs::read_to_string(&full).map_err(|e| format!("{relative}: {e}"))?;
        if let Some((new, found)) = edit(&relative, &text) {
            if write {
                std::fs::write(&full, new).map_err(|e| format!("{relative}: {e}"))?;
            }
            changes.extend(found);
        }
    }
    Ok(changes)
}

/// The changes `edit` would make to the YAML files under `path` of a revision's tree.
pub fn edit_tree(tree: &dyn Tree, path: &str, edit: Edit<'_>) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    for entry in tree.list(path).map_err(|e| e.to_string())? {
        if entry.kind != EntryKind::File || !is_yaml(&entry.path) {
            continue;
        }
        let bytes = tree.read(&entry.path, 8 << 20).map_err(|e| e.to_string())?;
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        if let Some((_, found)) = edit(&entry.path, &text) {
            changes.extend(found);
        }
    }
    Ok(changes)
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml")
        || path.ends_with(".yml")
        || path.ends_with("/Kustomization")
        || path == "Kustomization"
}

fn collect_yaml(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let path = entry.path();
        if entry.file_name() == ".git" || kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            collect_yaml(root, &path, files)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative = relative.to_string_lossy().into_owned();
            if is_yaml(&relative) {
                files.push(relative);
            }
        }
    }
    Ok(())
}

/// The `git` program with the target's credentials in its environment only.
struct Git<'a> {
    target: &'a Target,
    env: Vec<(String, String)>,
    config: Vec<String>,
    /// With an OpenPGP signing key: its GnuPG home (which stops its agent when dropped)
    /// and fingerprint.
    gnupg: Option<(crate::source::signature::GnupgHome, String)>,
}

/// Imports an armored OpenPGP secret key into a new GnuPG home: the home and the key's
/// fingerprint.
fn import_openpgp(key: &Path) -> Result<(crate::source::signature::GnupgHome, String), String> {
    let home = crate::source::signature::GnupgHome::new()?;
    let gpg = |args: &[&str]| {
        Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run gpg for the OpenPGP signing key (install gnupg): {e}"))
    };
    let key_text = key.display().to_string();
    let imported = gpg(&["--import", &key_text])?;
    if !imported.status.success() {
        return Err(format!(
            "the OpenPGP signing key cannot be imported: {}",
            String::from_utf8_lossy(&imported.stderr).trim()
        ));
    }
    let listed = gpg(&["--with-colons", "--list-secret-keys"])?;
    let fingerprint = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| !f.is_empty()))
        .map(str::to_string)
        .ok_or("the OpenPGP signing key holds no secret key")?;
    Ok((home, fingerprint))
}

impl<'a> Git<'a> {
    fn new(target: &'a Target, work: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let home = work.join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let mut env = vec![
            ("HOME".to_string(), home.display().to_string()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("LC_ALL".into(), "C".into()),
        ];
        if target.username.is_some() || target.password.is_some() {
            // git asks this program for the user name and password: the tether binary itself
            // (which answers when TETHER_ASKPASS is set: no shell needed in the image), else a
            // shell script (tether run inside another program, as in tests).
            let askpass = match crate::render::jsonnet::default_program() {
                Some(program) => {
                    env.push(("TETHER_ASKPASS".into(), "1".into()));
                    program
                }
                None => {
                    let script = work.join("askpass");
                    std::fs::write(
                        &script,
                        "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s' \"$TETHER_GIT_USERNAME\" ;;\n  *) printf '%s' \"$TETHER_GIT_PASSWORD\" ;;\nesac\n",
                    )
                    .map_err(|e| e.to_string())?;
                    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| e.to_string())?;
                    script
                }
            };
            env.push(("GIT_ASKPASS".into(), askpass.display().to_string()));
            env.push((
                "TETHER_GIT_USERNAME".into(),
                target.username.clone().unwrap_or_else(|| "git".into()),
            ));
            env.push((
                "TETHER_GIT_PASSWORD".into(),
                target.password.clone().unwrap_or_default(),
            ));
        }
        if let Some(key) = &target.ssh_key {
            let mut ssh = format!(
                "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes",
                key.display()
            );
            if let Some(known) = &target.known_hosts {
                ssh.push_str(&format!(" -o UserKnownHostsFile='{}'", known.display()));
            }
            env.push(("GIT_SSH_COMMAND".into(), ssh));
        }
        let seconds = target.timeout.as_secs().max(5);
        let mut config = vec![
            "http.lowSpeedLimit=1".to_string(),
            format!("http.lowSpeedTime={seconds}"),
            "protocol.file.allow=always".into(),
        ];
        if let Some(ca) = &target.ca_file {
            config.push(format!("http.sslCAInfo={}", ca.display()));
        }
        let gnupg = match &target.signing {
            Some(Signing::OpenPgp(key)) => {
                let (home, fingerprint) = import_openpgp(key)?;
                env.push(("GNUPGHOME".into(), home.path().display().to_string()));
                Some((home, fingerprint))
            }
            _ => None,
        };
        Ok(Self {
            target,
            env,
            config,
            gnupg,
        })
    }

    fn clone_branch(&self, into: &Path) -> Result<(), String> {
        let into_text = into.display().to_string();
        let push = self.target.push_branch.as_deref();
        // An existing push branch is where the next commit goes; else the checked-out one.
        if let Some(push) = push.filter(|p| *p != self.target.branch) {
            let args = [
                "clone",
                "-q",
                "--depth",
                "1",
                "--single-branch",
                "--branch",
                push,
                &self.target.url,
                &into_text,
            ];
            if self.run(None, &args).is_ok() {
                return Ok(());
            }
        }
        let args = [
            "clone",
            "-q",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            &self.target.branch,
            &self.target.url,
            &into_text,
        ];
        self.run(None, &args).map(|_| ()).map_err(|e| {
            format!(
                "cannot clone {} branch {}: {e}",
                self.target.url, self.target.branch
            )
        })
    }

    fn commit(&self, repo: &Path, message: &str) -> Result<(), String> {
        self.run(Some(repo), &["add", "-A"])?;
        let file = repo.parent().unwrap_or(repo).join("message");
        std::fs::write(&file, message).map_err(|e| e.to_string())?;
        let name = format!("user.name={}", self.target.author_name);
        let email = format!("user.email={}", self.target.author_email);
        let file_text = file.display().to_string();
        let mut args = vec!["-c", &name, "-c", &email];
        let (format, key) = match (&self.target.signing, &self.gnupg) {
            (Some(Signing::Ssh(key)), _) => ("ssh", key.display().to_string()),
            (Some(Signing::OpenPgp(_)), Some((_, fingerprint))) => ("openpgp", fingerprint.clone()),
            _ => ("", String::new()),
        };
        let (format, key) = (
            format!("gpg.format={format}"),
            format!("user.signingkey={key}"),
        );
        if self.target.signing.is_some() {
            args.extend([
                "-c", &format, "-c", &key, "commit", "-q", "-S", "-F", &file_text,
            ]);
        } else {
            args.extend(["commit", "-q", "-F", &file_text]);
        }
        self.run(Some(repo), &args)
            .map(|_| ())
            .map_err(|e| format!("git commit failed: {e}"))
    }

    /// Runs git; its stdout, or its stderr (credentials removed) as the error.
    fn run(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("git");
        for config in &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        // A group of its own: a timeout ends git's helpers too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|e| {
            format!("cannot run git ({e}): image updates need the git program on the PATH")
        })?;
        let out = wait_bounded(child, self.target.timeout.max(Duration::from_secs(5)) * 2)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let mut error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(password) = self.target.password.as_deref().filter(|p| !p.is_empty()) {
            error = error.replace(password, "<password>");
        }
        Err(error)
    }
}

/// When this process was started by git as its askpass helper (`TETHER_ASKPASS` set by
/// [`commit_and_push`]): the answer to the prompt in its first argument.
pub fn askpass_answer() -> Option<String> {
    std::env::var_os("TETHER_ASKPASS")?;
    let prompt = std::env::args().nth(1).unwrap_or_default();
    let key = if prompt.starts_with("Username") {
        "TETHER_GIT_USERNAME"
    } else {
        "TETHER_GIT_PASSWORD"
    };
    Some(std::env::var(key).unwrap_or_default())
}

/// Waits for `child` (in a process group of its own) at most `limit`, reading its output
/// meanwhile (a full pipe would stall it), then kills the whole group (git's ssh or HTTP
/// helper with it).
fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Everything is read (so git never waits on a full pipe); the first MiB is kept.
    let read = |pipe: Option<&mut dyn Read>| {
        let mut buffer = Vec::new();
        if let Some(pipe) = pipe {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if buffer.len() < 1 << 20 {
                    buffer.extend_from_slice(&chunk[..n]);
                }
            }
        }
        buffer
    };
    let out = std::thread::spawn(move || read(stdout.as_mut().map(|p| p as &mut dyn Read)));
    let err = std::thread::spawn(move || read(stderr.as_mut().map(|p| p as &mut dyn Read)));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                return Err(format!("git gave no answer within {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
