//! Real Git repositories and real Git servers on loopback, for source tests.
//!
//! [`GitRepo`] drives the real `git` (commits, branches, tags, SSH- and OpenPGP-signed
//! commits). [`GitDaemon`], [`HttpGitServer`] and [`SshGitServer`] serve a folder of such
//! repositories with `git daemon`, `git http-backend` (behind basic auth, optionally TLS)
//! and Debian's `sshd` (key auth), each on a free port, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs a program and returns its stdout; panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fixed identity and dates make commits reproducible across runs.
pub const GIT_ENV: [(&str, &str); 7] = [
    ("GIT_AUTHOR_NAME", "Tether Test"),
    ("GIT_AUTHOR_EMAIL", "test@tether.invalid"),
    ("GIT_COMMITTER_NAME", "Tether Test"),
    ("GIT_COMMITTER_EMAIL", "test@tether.invalid"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

/// A working repository made with the real `git`, under a folder that servers export.
pub struct GitRepo {
    pub path: PathBuf,
    /// The repository's name under the served folder.
    pub name: String,
}

impl GitRepo {
    /// `git init` of `root/name` on branch `main`.
    pub fn init(root: &Path, name: &str) -> Self {
        let path = root.join(name);
        std::fs::create_dir_all(&path).expect("create repo dir");
        let repo = Self {
            path,
            name: name.to_string(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        // Let servers hand out any commit id and let http-backend serve this repo.
        repo.git(&["config", "uploadpack.allowAnySHA1InWant", "true"]);
        repo.git(&["config", "http.receivepack", "false"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        run("git", args, &self.path, &GIT_ENV)
    }

    pub fn write(&self, file: &str, text: &str) -> &Self {
        let full = self.path.join(file);
        std::fs::create_dir_all(full.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(full, text).expect("write file");
        self
    }

    pub fn remove(&self, file: &str) -> &Self {
        self.git(&["rm", "-q", "-r", file]);
        self
    }

    /// Commits everything and returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Commits everything, signed with an SSH key (`gpg.format=ssh`).
    pub fn commit_ssh_signed(&self, message: &str, private_key: &Path) -> String {
        self.git(&["add", "-A"]);
        let key = private_key.to_str().expect("utf-8 path");
        self.git(&[
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={key}"),
            "commit",
            "-q",
            "-S",
            "-m",
            message,
        ]);
        self.head()
    }

    /// Commits everything, signed with an OpenPGP key from `gnupg_home`.
    pub fn commit_gpg_signed(&self, message: &str, gpg: &GpgKey) -> String {
        self.git(&["add", "-A"]);
        let home = gpg.home.to_str().expect("utf-8 path");
        run(
            "git",
            &[
                "-c",
                "gpg.format=openpgp",
                "-c",
                &format!("user.signingkey={}", gpg.fingerprint),
                "commit",
                "-q",
                "-S",
                "-m",
                message,
            ],
            &self.path,
            &[GIT_ENV.as_slice(), &[("GNUPGHOME", home)]].concat(),
        );
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn branch(&self, name: &str) {
        self.git(&["branch", "-f", name]);
    }

    pub fn checkout(&self, name: &str) {
        self.git(&["checkout", "-q", name]);
    }

    pub fn tag_lightweight(&self, name: &str) {
        self.git(&["tag", "-f", name]);
    }

    pub fn tag_annotated(&self, name: &str) {
        self.git(&["tag", "-f", "-a", name, "-m", &format!("release {name}")]);
    }
}

/// An SSH key pair made by `ssh-keygen` (ed25519, no passphrase).
pub struct SshKey {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl SshKey {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let private = dir.join(name);
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                name,
                "-f",
                private.to_str().expect("utf-8"),
            ],
            dir,
            &[],
        );
        Self {
            public: private.with_extension("pub"),
            private,
        }
    }

    pub fn public_text(&self) -> String {
        std::fs::read_to_string(&self.public)
            .expect("public key")
            .trim()
            .to_string()
    }
}

/// An OpenPGP key in a GnuPG home of its own.
pub struct GpgKey {
    pub home: PathBuf,
    pub fingerprint: String,
    /// The armored public key, as a user would hand it to tether.
    pub public_armored: String,
}

impl GpgKey {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).expect("gnupg home");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        let env = [("GNUPGHOME", home.to_str().expect("utf-8"))];
        let uid = format!("{name} <{name}@tether.invalid>");
        run(
            "gpg",
            &[
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                &uid,
                "ed25519",
                "sign",
                "never",
            ],
            dir,
            &env,
        );
        let listing = run(
            "gpg",
            &["--batch", "--with-colons", "--list-keys", &uid],
            dir,
            &env,
        );
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .expect("gpg lists a fingerprint")
            .to_string();
        let public_armored = run(
            "gpg",
            &["--batch", "--armor", "--export", &fingerprint],
            dir,
            &env,
        );
        Self {
            home,
            fingerprint,
            public_armored,
        }
    }
}

/// A server process, stopped with everything it started when the test ends, also when it
/// fails or panics (see [`super::ProcessGroup`]).
type Server = super::ProcessGroup;

/// `git daemon` exporting every repository under `root`.
pub struct GitDaemon {
    pub port: u16,
    _server: Server,
}

impl GitDaemon {
    pub fn start(root: &Path) -> Self {
        let port = super::free_port();
        let mut child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                "--enable=upload-pack",
            ])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("git daemon starts");
        super::wait_for_port(port, "git daemon", &mut child);
        Self {
            port,
            _server: Server::new(child),
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

/// `git http-backend` behind basic auth, plain HTTP or HTTPS with a test CA.
pub struct HttpGitServer {
    pub port: u16,
    pub scheme: &'static str,
    /// The CA that signed the HTTPS certificate (`None` for plain HTTP).
    pub ca_cert: Option<PathBuf>,
    _server: Server,
}

impl HttpGitServer {
    /// Serves `root`; requires `user` and the password in `password_file` when given.
    pub fn start(root: &Path, auth: Option<(&str, &Path)>, tls_dir: Option<&Path>) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http_server.py");
        let mut command = Command::new("python3");
        command.arg(script).arg(root);
        if let Some((user, password_file)) = auth {
            command
                .args(["--user", user, "--password-file"])
                .arg(password_file);
        }
        let mut ca_cert = None;
        if let Some(dir) = tls_dir {
            let (ca, cert, key) = make_tls_cert(dir);
            command.arg("--cert").arg(cert).arg("--key").arg(key);
            ca_cert = Some(ca);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("python3 runs the test HTTP server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server prints its port");
        let port: u16 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the HTTP server: {line:?}"));
        Self {
            port,
            scheme: if tls_dir.is_some() { "https" } else { "http" },
            ca_cert,
            _server: Server::new(child),
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("{}://127.0.0.1:{}/{repo}", self.scheme, self.port)
    }
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
pub fn make_tls_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("tls dir");
    let sh = |args: &[&str]| run("openssl", args, dir, &[]);
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=tether-test-ca",
    ]);
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    sh(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// Debian's `sshd` on a free port, accepting one client key, serving `git-upload-pack`.
pub struct SshGitServer {
    pub port: u16,
    pub client_key: SshKey,
    /// A known_hosts file with this server's host key.
    pub known_hosts: PathBuf,
    pub user: String,
    _server: Server,
}

impl SshGitServer {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("sshd dir");
        // sshd refuses to start without its privilege-separation folder.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (needs root)");
        let host_key = SshKey::generate(dir, "host_ed25519");
        let client_key = SshKey::generate(dir, "client_ed25519");
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", client_key.public_text()))
            .expect("authorized_keys");
        let port = super::free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel VERBOSE\n",
                host_key.private.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .expect("sshd_config");
        let known_hosts = dir.join("known_hosts");
        let host_public = host_key.public_text();
        let mut parts = host_public.split_whitespace();
        let (kind, key) = (parts.next().expect("key type"), parts.next().expect("key"));
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))
            .expect("known_hosts");
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).expect("sshd log"))
            .process_group(0)
            .spawn()
            .expect("sshd starts (install openssh-server)");
        super::wait_for_port(port, "sshd", &mut child);
        let user = run("id", &["-un"], dir, &[]);
        Self {
            port,
            client_key,
            known_hosts,
            user,
            _server: Server::new(child),
        }
    }

    /// `ssh://user@127.0.0.1:port/abs/path/to/repo`.
    pub fn url(&self, repo_path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo_path.display()
        )
    }
}
