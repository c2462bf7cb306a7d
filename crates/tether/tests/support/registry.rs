//! The CNCF distribution registry (built by testenv: `testenv.py bin registry`) on
//! loopback, with its own config: htpasswd auth (bcrypt) and TLS from a test CA, or plain
//! HTTP without auth; and helm logged in to it, in a HOME of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::os::unix::process::CommandExt;

use super::{ProcessGroup, free_port, tool, wait_for_port};

pub struct Registry {
    pub port: u16,
    /// Where it logs each request (one line each, Apache's combined format).
    pub access_log: PathBuf,
    /// `Some` with TLS and auth: the CA that signed its certificate.
    pub ca_cert: Option<PathBuf>,
    pub user: &'static str,
    pub password: &'static str,
    _server: ProcessGroup,
}

impl Registry {
    /// Starts a registry storing under `dir`; `secure`: TLS and htpasswd auth.
    pub fn start(dir: &Path, secure: bool) -> Self {
        std::fs::create_dir_all(dir).expect("registry dir");
        let port = free_port();
        let (user, password) = ("alice", "registry-s3cret");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let mut ca_cert = None;
        if secure {
            let (ca, cert, key) = super::git::make_tls_cert(&dir.join("tls"));
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            let hash = bcrypt::hash_with_result(password, 4)
                .expect("bcrypt")
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: tether-test\n    path: {}\n",
                htpasswd.display()
            ));
            ca_cert = Some(ca);
        }
        let file = dir.join("config.yml");
        std::fs::write(&file, config).expect("registry config");
        let mut child = Command::new(tool("registry"))
            .arg("serve")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("access.log")).expect("access log"))
            .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
            .process_group(0)
            .spawn()
            .expect("the registry starts");
        wait_for_port(port, "registry", &mut child);
        Self {
            port,
            access_log: dir.join("access.log"),
            ca_cert,
            user,
            password,
            _server: ProcessGroup::new(child),
        }
    }

    /// How many requests so far were `method` of a path containing `part`.
    pub fn requests(&self, method: &str, part: &str) -> usize {
        let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(part))
            .count()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/<repository>`.
    pub fn url(&self, repository: &str) -> String {
        format!("oci://{}/{repository}", self.host())
    }

    /// A Docker config (`~/.docker/config.json`, a dockerconfigjson Secret) with this
    /// registry's credentials.
    pub fn docker_config(&self) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host())
    }

    /// Runs helm with `args` against this registry from a HOME of its own under `home`
    /// (logged in first when the registry is secure); panics when helm fails.
    pub fn helm(&self, home: &Path, args: &[&str]) -> String {
        let registry_config = home.join("registry.json");
        let helm = |args: &[&str], stdin: Option<&str>| {
            let mut command = Command::new(tool("helm"));
            command
                .args(args)
                .env("HOME", home)
                .env("HELM_REGISTRY_CONFIG", &registry_config)
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data"));
            if let Some(ca) = &self.ca_cert
                && args
                    .first()
                    .is_some_and(|a| *a == "push" || *a == "registry")
            {
                command.arg("--ca-file").arg(ca);
            }
            if self.ca_cert.is_none() && args.first() == Some(&"push") {
                command.arg("--plain-http");
            }
            let out = if let Some(input) = stdin {
                use std::io::Write;
                let mut child = command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("helm runs");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write");
                child.wait_with_output().expect("helm")
            } else {
                command.output().expect("helm runs")
            };
            assert!(out.status.success(), "helm {args:?}: {}", super::said(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        };
        std::fs::create_dir_all(home).expect("helm home");
        if self.ca_cert.is_some() && !registry_config.exists() {
            helm(
                &[
                    "registry",
                    "login",
                    &self.host(),
                    "-u",
                    self.user,
                    "--password-stdin",
                ],
                Some(self.password),
            );
        }
        helm(args, None)
    }
}
