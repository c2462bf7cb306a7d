//! The catalogue of bad input (docs/bad-input.md): each class of malformed or hostile
//! input, given to the real `tether` binary or to a running agent, gets a clear error that
//! names the file and line (or the field) and says what to do, and touches nothing: the
//! namespace holds exactly what an earlier good apply left there, at the same
//! resourceVersions, and no cluster-scoped object appears.
//!
//! The cases run one after another in two tests (the CLI against one namespace and one
//! `git daemon`; the agent's webhooks and Applications against another), each case checked
//! on its own. A case's folder is its repository root (no `.git` above it), so a symlink
//! or path that leaves it leaves the repository.

use crate::support;
use support::fixtures::configmap;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;
use support::agent::{
    applied, create_application, hmac_hex, options_for, post, start_agent, until,
};
use support::git::{GitDaemon, GitRepo};
use support::{TestNamespace, cluster, unique_name};
use tether::agent::{AgentOptions, Application, install_crd};

/// What the namespace holds (kind/name → resourceVersion), and whether the cluster-scoped
/// objects the cases name exist. Objects the control plane adds by itself are left out.
async fn snapshot(
    client: &kube::Client,
    namespace: &str,
    cluster_scoped: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let kinds = [
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Secret", "secrets"),
        ("", "v1", "ServiceAccount", "serviceaccounts"),
        ("", "v1", "Service", "services"),
        ("apps", "v1", "Deployment", "deployments"),
        ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ];
    let resource = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let mut held = BTreeMap::new();
    for (group, version, kind, plural) in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &resource(group, version, kind, plural),
        );
        for object in api.list(&Default::default()).await.expect("list").items {
            let name = object.metadata.name.unwrap_or_default();
            if name == "kube-root-ca.crt" || (kind == "ServiceAccount" && name == "default") {
                continue;
            }
            held.insert(
                format!("{kind}/{name}"),
                object.metadata.resource_version.unwrap_or_default(),
            );
        }
    }
    for (kind, name) in cluster_scoped {
        let (group, plural) = match *kind {
            "ClusterRole" => ("rbac.authorization.k8s.io", "clusterroles"),
            "Namespace" => ("", "namespaces"),
            other => panic!("no resource for {other}"),
        };
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &resource(group, "v1", kind, plural));
        if let Some(object) = api.get_opt(name).await.expect("get") {
            held.insert(
                format!("{kind}/{name}"),
                object.metadata.resource_version.unwrap_or_default(),
            );
        }
    }
    held
}

/// One class of bad input for the CLI: files of a folder of its own (its repository root),
/// the arguments of `tether <command>` and what stderr must say.
struct Case {
    class: &'static str,
    command: &'static str,
    files: Vec<(String, Vec<u8>)>,
    /// Symlinks: path in the folder → target (`{outside}`: a folder beside it).
    links: Vec<(&'static str, &'static str)>,
    /// `{dir}` is the folder, `{repo}` the Git repository's URL.
    args: Vec<String>,
    /// Each must appear in stderr (or, for a case that succeeds by design, stdout).
    says: Vec<String>,
    /// Exit 0 by design (nothing to refuse), with nothing of `never` in the output.
    succeeds: bool,
    never: Vec<String>,
}

/// A folder with the seed's manifest (so the good part of the input is there too) and
/// `files`, rendered with `tether apply --path {dir}`.
fn folder(class: &'static str, files: &[(&str, &[u8])]) -> Case {
    let mut all = vec![(
        "seed.yaml".to_string(),
        configmap("seed", "blue").into_bytes(),
    )];
    all.extend(files.iter().map(|(p, c)| (p.to_string(), c.to_vec())));
    Case {
        class,
        command: "apply",
        files: all,
        links: Vec::new(),
        args: vec!["--path".into(), "{dir}".into()],
        says: Vec::new(),
        succeeds: false,
        never: Vec::new(),
    }
}

/// `tether apply --repo {repo} ARGS`: the committed repository, no folder of its own.
fn git(class: &'static str, args: &[&str]) -> Case {
    let mut case = folder(class, &[]);
    case.files.clear();
    case.args = ["--repo", "{repo}"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    case
}

impl Case {
    fn says(mut self, parts: &[&str]) -> Self {
        self.says.extend(parts.iter().map(|s| s.to_string()));
        self
    }

    fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Renders `path` instead of the folder itself.
    fn at(mut self, path: &str) -> Self {
        self.args = vec!["--path".into(), path.into()];
        self
    }

    /// Text that must appear in no output (a Secret's value, a file outside).
    fn never(mut self, parts: &[&str]) -> Self {
        self.never.extend(parts.iter().map(|s| s.to_string()));
        self
    }

    /// `tether plan`, which must succeed: the input is refused by construction, not by an
    /// error (what it must show is in `says`, what it must not in `never`).
    fn plan_only(mut self) -> Self {
        self.command = "plan";
        self.succeeds = true;
        self
    }

    fn link(mut self, path: &'static str, target: &'static str) -> Self {
        self.links.push((path, target));
        self
    }

    fn without_seed(mut self) -> Self {
        self.files.retain(|(path, _)| path != "seed.yaml");
        self
    }
}

fn chart(name: &str, templates: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        "Chart.yaml".to_string(),
        format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n").into_bytes(),
    )];
    files.extend(
        templates
            .iter()
            .map(|(p, t)| (format!("templates/{p}"), t.as_bytes().to_vec())),
    );
    files
}

fn helm_case(class: &'static str, name: &str, templates: &[(&str, &str)]) -> Case {
    let mut case = folder(class, &[]).without_seed();
    case.files = chart(name, templates);
    case
}

/// Every class the CLI refuses, with the words that must be in its message.
fn cli_cases(cluster_role: &str, missing_namespace: &str) -> Vec<Case> {
    let alias_bomb = {
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..10 {
            let uses = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("  a{i}: &a{i} [{uses}]\n"));
        }
        text
    };
    let json_bomb = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {{\"name\": \"nest\"}}, \"data\": {{\"a\": {}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_yaml = {
        let mut text =
            String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\ndata:\n");
        for depth in 1..=200 {
            text.push_str(&format!("{}k:\n", " ".repeat(depth)));
        }
        text
    };
    let oversized = {
        let mut text = configmap("huge", "blue");
        text.push_str(&format!("# {}\n", "x".repeat(8 * 1024 * 1024)));
        text
    };
    let big_annotation = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: annotated\n  annotations:\n    note: \"{}\"\n",
        "x".repeat(262_145)
    );
    let cluster_scoped = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {cluster_role}\n  namespace: kube-system\nrules: []\n"
    );
    let elsewhere = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lost\n  namespace: {missing_namespace}\n"
    );
    vec![
        // Plain YAML and JSON.
        folder("malformed YAML", &[("broken.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  color: [1, 2\n")])
            .says(&["broken.yaml:6:10: invalid YAML: unclosed bracket"]),
        folder("YAML alias bomb (billion laughs)", &[("bomb.yaml", alias_bomb.as_bytes())])
            .says(&["bomb.yaml:", "(a YAML bomb?); write the values out instead"]),
        folder("JSON nesting bomb (100,000 brackets)", &[("nest.json", json_bomb.as_bytes())])
            .says(&["nest.json:1:", "brackets nested more than 100 levels deep"]),
        folder("deep YAML nesting (200 levels)", &[("deep.yaml", deep_yaml.as_bytes())])
            .says(&["deep.yaml:69:", "nested more than 64 levels deep"]),
        folder("duplicate keys", &[("dup.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n")])
            .says(&["dup.yaml:5:3: invalid YAML: duplicate key \"name\"", "remove or rename one"]),
        folder("duplicate objects", &[("twice.yaml", format!("{}---\n{}", configmap("twice", "blue"), configmap("twice", "blue")).as_bytes())])
            .says(&["ConfigMap/twice is defined twice: at twice.yaml:1 (document 1) and at twice.yaml:8 (document 2); remove one"]),
        folder("the same object in two files (one names the namespace)", &[("one.yaml", configmap("both", "blue").as_bytes()), ("two.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: both\n  namespace: {ns}\n")])
            .says(&["two.yaml:1 (document 1): ConfigMap/both -n", "is also defined at one.yaml:1 (document 1)"]),
        folder("no kind", &[("nokind.yaml", b"apiVersion: v1\nmetadata:\n  name: a\n")])
            .says(&["nokind.yaml:1 (document 1): kind is missing"]),
        folder("no apiVersion", &[("noversion.yaml", b"kind: ConfigMap\nmetadata:\n  name: a\n")])
            .says(&["noversion.yaml:1 (document 1): apiVersion is missing"]),
        folder("no metadata.name", &[("noname.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n")])
            .says(&["noname.yaml:1 (document 1): ConfigMap has no metadata.name"]),
        folder("metadata.name of the wrong type", &[("number.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 42\n")])
            .says(&["number.yaml:1 (document 1): metadata.name must be a string, found a number"]),
        folder("malformed apiVersion", &[("group.yaml", b"apiVersion: apps/\nkind: Deployment\nmetadata:\n  name: a\n")])
            .says(&["group.yaml:1 (document 1): apiVersion \"apps/\" is not GROUP/VERSION or VERSION"]),
        folder("a document that is not an object", &[("list.yaml", b"- a\n- b\n")])
            .says(&["list.yaml:1 (document 1): expected a Kubernetes object (a mapping with apiVersion, kind and metadata), found a sequence"]),
        folder("kind: List whose items are not a sequence", &[("items.yaml", b"apiVersion: v1\nkind: List\nitems: {a: b}\n")])
            .says(&["items.yaml:1 (document 1): a List's items must be a sequence"]),
        folder("generateName on an object that is not a hook", &[("gen.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: gen-\n")])
            .says(&["gen.yaml:1 (document 1): ConfigMap uses metadata.generateName, which GitOps cannot track; set metadata.name"]),
        folder("a sync wave that is not a number", &[("wave.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wave\n  annotations:\n    tether.dev/sync-wave: first\n")])
            .says(&["wave.yaml:1 (document 1): ConfigMap/wave", "tether.dev/sync-wave: \"first\" is not an integer"]),
        folder("unknown kind (no CRD)", &[("widget.yaml", b"apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n")])
            .says(&["widget.yaml:1 (document 1): Widget.example.com/w: the cluster does not serve kind Widget in example.com/v1; install its CRD or fix apiVersion/kind"]),
        folder("a cluster-scoped object with another namespace", &[("role.yaml", cluster_scoped.as_bytes())])
            .says(&["role.yaml:1 (document 1): ClusterRole.rbac.authorization.k8s.io/", "is cluster-scoped, but metadata.namespace is \"kube-system\"; remove metadata.namespace"]),
        folder("invalid name", &[("name.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n")])
            .says(&["name.yaml:1 (document 1): ConfigMap/Bad_Name", "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"]),
        folder("a namespace that does not exist", &[("elsewhere.yaml", elsewhere.as_bytes())])
            .args(&["--multi-namespace"])
            .says(&["elsewhere.yaml:1 (document 1): ConfigMap/lost -n", "not found"]),
        folder("Secret data that is not base64", &[("secret.yaml", b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ndata:\n  password: hunter2-plain!\n")])
            .says(&["secret.yaml:1 (document 1): Secret/creds", "data.password is not base64; encode it (base64 -w0), or put the plain text under stringData instead"])
            .never(&["hunter2"]),
        folder("oversized file (over 8 MiB)", &[("huge.yaml", oversized.as_bytes())])
            .says(&["huge.yaml: ", "bytes is above the limit of 8388608 bytes per file; split it into smaller files"]),
        folder("oversized annotations (262,144 bytes)", &[("annotated.yaml", big_annotation.as_bytes())])
            .says(&["annotated.yaml:1 (document 1): ConfigMap/annotated", "metadata.annotations: Too long: may not be more than 262144 bytes"]),
        folder("invalid UTF-8", &[("latin1.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  city: \"K\xf6ln\"\n")])
            .says(&["latin1.yaml:6: invalid UTF-8 at byte", "save the file as UTF-8"]),
        folder("NUL byte", &[("nul.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: a\0b\n")])
            .says(&["nul.yaml:6:7: invalid YAML: a NUL byte, which YAML does not allow"]),
        folder("a file name that is not UTF-8", &[("\u{fffd}", b"")])
            .says(&[".yaml: cannot read: the file name is not valid UTF-8; rename it"]),
        folder("unset variable (substitution on)", &[("vars.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vars\ndata:\n  region: ${REGION}\n")])
            .args(&["--var", "ZONE=a"])
            .says(&["vars.yaml:6: variable REGION is not set and has no default; set it with --var REGION="]),
        folder("empty render (would prune everything)", &[("README.md", b"nothing to apply\n")])
            .without_seed()
            .says(&["--path", "the render is empty but the ApplySet holds 1 object(s): refusing to prune everything; pass --allow-empty"]),
        // Symlinks and paths.
        folder("symlink leaving the repository (plain YAML)", &[])
            .link("stolen.yaml", "{outside}/stolen.yaml")
            .says(&["stolen.yaml: symlink to", "leaves the repository; tether reads nothing outside it"]),
        folder("symlink with `..` leaving the repository", &[])
            .link("up.yaml", "../outside/stolen.yaml")
            .says(&["up.yaml: symlink to \"../outside/stolen.yaml\" leaves the repository"]),
        folder("dangling symlink", &[])
            .link("gone.yaml", "nowhere.yaml")
            .says(&["gone.yaml: symlink to \"nowhere.yaml\" points at nothing"]),
        folder("symlink loop", &[])
            .link("loop-a.yaml", "loop-b.yaml")
            .link("loop-b.yaml", "loop-a.yaml")
            .says(&["more than 8 symlinks in a chain (a loop?)"]),
        folder("--path through a symlink leaving the repository", &[(".git/HEAD", b"ref: refs/heads/main\n")])
            .link("apps", "{outside}")
            .at("{dir}/apps")
            .says(&["/apps: leads to", "through a symlink, outside the repository", "tether reads nothing outside it"]),
        // Kustomize.
        folder("kustomization pointing outside with `..`", &[("kustomization.yaml", b"resources:\n- seed.yaml\n- ../outside\n")])
            .says(&["kustomization.yaml: resources: \"../outside\" leaves the repository; tether reads nothing outside it"]),
        folder("kustomization pointing at an absolute path", &[("kustomization.yaml", b"resources: [seed.yaml, /etc/passwd]\n")])
            .says(&["kustomization.yaml: resources: \"/etc/passwd\" leaves the repository"]),
        folder("kustomization generator reading a file outside", &[("kustomization.yaml", b"resources: [seed.yaml]\nsecretGenerator:\n- name: stolen\n  files: [key=../../../../etc/passwd]\n")])
            .says(&["kustomization.yaml: secretGenerator[].files: \"../../../../etc/passwd\" leaves the repository"]),
        folder("symlink leaving the repository (Kustomize)", &[("kustomization.yaml", b"resources: [seed.yaml, stolen.yaml]\n")])
            .link("stolen.yaml", "{outside}/stolen.yaml")
            .says(&["stolen.yaml: symlink to", "leaves the repository; refusing to render"]),
        folder("kustomization with a remote base", &[("kustomization.yaml", b"resources:\n- https://github.com/example/deploy//base?ref=v1\n")])
            .says(&["kustomization.yaml: resources: remote base \"https://github.com/example/deploy//base?ref=v1\" is refused; vendor it into the repository or pass --kustomize-allow-remote"]),
        folder("kustomization with helmCharts", &[("kustomization.yaml", b"helmCharts:\n- name: web\n  repo: https://charts.example.com\n")])
            .says(&["kustomization.yaml: helmCharts need --kustomize-enable-helm"]),
        folder("malformed kustomization.yaml", &[("kustomization.yaml", b"resources: [seed.yaml\n")])
            .says(&["kustomization.yaml:1:12: invalid YAML: unclosed bracket"]),
        folder("kustomization naming a file that does not exist", &[("kustomization.yaml", b"resources: [seed.yaml, missing.yaml]\n")])
            .says(&["kustomize failed:", "missing.yaml"]),
        // Helm.
        helm_case("--values with `..`", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n")])
            .args(&["--values", "../outside/values.yaml"])
            .says(&["values file \"../outside/values.yaml\" leaves the repository; give a path inside it"]),
        helm_case("--values with an absolute path", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n")])
            .args(&["--values", "/etc/passwd"])
            .says(&["values file \"/etc/passwd\" leaves the repository"]),
        helm_case("--values through a symlink leaving the repository", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n")])
            .link("values.yaml", "{outside}/values.yaml")
            .args(&["--values", "values.yaml"])
            .says(&["values.yaml: symlink to", "leaves the repository; refusing to render"]),
        helm_case("--values that does not exist", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n")])
            .args(&["--values", "prod.yaml"])
            .says(&["values file \"prod.yaml\" does not exist at this revision"]),
        helm_case("Helm chart reading a file outside through a symlink (.Files)", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  key: {{ .Files.Get \"files/key\" | quote }}\n")])
            .link("files/key", "{outside}/stolen.yaml")
            .says(&["files/key: symlink to", "leaves the repository; refusing to render"]),
        helm_case("Helm chart using lookup and .Files outside the chart (not an error: both find nothing)", "peek", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: peek\ndata:\n  secret: {{ lookup \"v1\" \"Secret\" \"{ns}\" \"canary\" | toJson | quote }}\n  file: {{ .Files.Get \"../outside/stolen.yaml\" | quote }}\n")])
            .plan_only()
            .says(&["+ create ConfigMap/peek", "secret: \"{}\"", "file: \"\""])
            .never(&["canary-s3cret", "Y2FuYXJ5LXMzY3JldA"]),
        helm_case("Helm template that fails", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  image: {{ required \"image is required\" .Values.image }}\n")])
            .says(&["helm failed: Error: execution error at (web/templates/cm.yaml:6:", "image is required"]),
        helm_case("Helm output with a duplicate key", "web", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a: \"1\"\n  a: \"2\"\n")])
            .says(&["web/templates/cm.yaml:", "duplicate key \"a\""]),
        // Git: refs and paths.
        git("branch that does not exist", &["--ref", "branch:nope", "--path", "app"])
            .says(&["branch \"nope\" not found; the remote has: main"]),
        git("tag that does not exist", &["--ref", "tag:v9.9.9", "--path", "app"])
            .says(&["tag \"v9.9.9\" not found; the remote has: v1.0.0"]),
        git("commit that does not exist", &["--ref", "0123456789abcdef0123456789abcdef01234567", "--path", "app"])
            .says(&["commit 0123456789abcdef0123456789abcdef01234567 not found on the server; check --ref"]),
        git("abbreviated commit that does not exist", &["--ref", "commit:deadbee", "--path", "app"])
            .says(&["commit deadbee not found on any branch"]),
        git("invalid semver range", &["--ref", ">=1.x.y <<2", "--path", "app"])
            .says(&["--ref \">=1.x.y <<2\": not a semver range:", "write one like \">=1.2.0 <2\""]),
        git("semver range no tag matches", &["--ref", "semver:>=2", "--path", "app"])
            .says(&["no tag matches semver range \">=2\"; the remote has: v1.0.0"]),
        git("--path with `..` leaving the repository", &["--path", "app/../.."])
            .says(&["--path \"app/../..\" leaves the repository; give a folder inside it"]),
        git("--path that is a symlink leaving the repository", &["--path", "etc-link"])
            .says(&["etc-link: symlink to \"/etc\" leaves the repository"]),
        git("--path that does not exist", &["--path", "apps/nope"])
            .says(&["apps/nope: not found in commit", "check --path and --ref"]),
        git("--path that is a file", &["--path", "app/seed.yaml"])
            .says(&["app/seed.yaml: is a file, not a folder; give --path the folder that holds the manifests"]),
        git("malformed YAML in a commit", &["--path", "broken"])
            .says(&["broken/a.yaml:6:10: invalid YAML: unclosed bracket"]),
        git("symlink leaving the repository in a commit", &["--path", "escape"])
            .says(&["escape/passwd.yaml: symlink to \"/etc/passwd\" leaves the repository"]),
    ]
}

#[tokio::test]
async fn cli_refuses_every_class_and_touches_nothing() {
    let client = cluster().await.client();
    let ns = TestNamespace::create(&client, "bad-input").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/seed.yaml", &configmap("seed", "blue"));
    repo.write(
        "broken/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  color: [1, 2\n",
    );
    std::fs::create_dir_all(repo.path.join("escape")).expect("mkdir");
    std::os::unix::fs::symlink("/etc/passwd", repo.path.join("escape/passwd.yaml"))
        .expect("symlink");
    std::os::unix::fs::symlink("/etc", repo.path.join("etc-link")).expect("symlink");
    repo.commit("seed");
    repo.tag_lightweight("v1.0.0");
    let daemon = GitDaemon::start(&root);
    let url = daemon.url("deploy");
    // What a symlink that leaves a case's folder points at: never to be read.
    let outside = dir.path().join("cases/outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("stolen.yaml"), configmap("stolen", "blue")).expect("write");
    std::fs::write(outside.join("values.yaml"), "stolen: true\n").expect("write");

    let app = unique_name("bad");
    let cache = dir.path().join("cache");
    let tether = |command: &str, args: &[String]| {
        support::tether_command()
            .arg(command)
            .args(args)
            .args(["--app", &app, "-n", &ns.name])
            .arg("--git-cache")
            .arg(&cache)
            .arg("--kustomize-bin")
            .arg(support::tool("kustomize"))
            .arg("--helm-bin")
            .arg(support::tool("helm"))
            .env("TETHER_CACHE_DIR", &cache)
            .output()
            .expect("the tether binary runs")
    };

    // The object an earlier good apply left: no case may change or prune it.
    let seeded = tether(
        "apply",
        &["--repo", &url, "--path", "app"].map(String::from),
    );
    assert!(
        seeded.status.success(),
        "the good apply: {}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let cluster_role = unique_name("bad-input-role");
    let missing_namespace = unique_name("bad-input-missing");
    let cluster_scoped = [
        ("ClusterRole", cluster_role.as_str()),
        ("Namespace", missing_namespace.as_str()),
    ];
    // A Secret the cluster holds, which no chart may read through `lookup`.
    let canary: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "canary"}, "stringData": {"value": "canary-s3cret"}}),
    )
    .expect("a Secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name)
        .create(&Default::default(), &canary)
        .await
        .expect("the canary Secret is created");
    let before = snapshot(&client, &ns.name, &cluster_scoped).await;
    assert!(before.contains_key("ConfigMap/seed"), "{before:?}");
    assert!(
        before.contains_key(&format!("Secret/tether-{app}")),
        "{before:?}"
    );

    let cases = cli_cases(&cluster_role, &missing_namespace);
    assert!(
        cases.len() >= 30,
        "the catalogue has {} classes",
        cases.len()
    );
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let folder = dir.path().join(format!("cases/{index:02}"));
        std::fs::create_dir_all(&folder).expect("mkdir");
        for (path, content) in &case.files {
            // "\u{fffd}" stands for a name that is not UTF-8.
            let path = if path == "\u{fffd}" {
                PathBuf::from(std::ffi::OsStr::from_bytes(b"caf\xe9.yaml"))
            } else {
                PathBuf::from(path)
            };
            let full = folder.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            // `{ns}`: a manifest that names the test namespace.
            if content.windows(4).any(|w| w == b"{ns}") {
                let text = String::from_utf8_lossy(content).replace("{ns}", &ns.name);
                std::fs::write(full, text).expect("write");
            } else {
                std::fs::write(full, content).expect("write");
            }
        }
        for (path, target) in &case.links {
            let full = folder.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            let target = target.replace("{outside}", outside.to_str().expect("utf-8"));
            std::os::unix::fs::symlink(target, full).expect("symlink");
        }
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| {
                a.replace("{dir}", folder.to_str().expect("utf-8"))
                    .replace("{repo}", &url)
            })
            .collect();
        let out = tether(case.command, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = if case.succeeds { &stdout } else { &stderr };
        let message = stderr
            .lines()
            .skip_while(|l| !l.starts_with("error:"))
            .collect::<Vec<_>>()
            .join(" / ");
        eprintln!("{} | {}", case.class, message);
        let mut wrong = Vec::new();
        let expected_code = if case.succeeds { 0 } else { 1 };
        if out.status.code() != Some(expected_code) {
            wrong.push(format!(
                "exit {:?}, expected {expected_code}",
                out.status.code()
            ));
        }
        if stderr.contains("panicked") {
            wrong.push("tether panicked".into());
        }
        for part in &case.says {
            if !said.contains(part.as_str()) {
                wrong.push(format!("does not say {part:?}"));
            }
        }
        // Nothing outside the repository is ever read: the decoy files, /etc/passwd.
        let never = ["name: stolen", "stolen: true", "root:x:0:0"];
        for part in case.never.iter().map(String::as_str).chain(never) {
            if stdout.contains(part) || stderr.contains(part) {
                wrong.push(format!("prints {part:?}"));
            }
        }
        let now = snapshot(&client, &ns.name, &cluster_scoped).await;
        if now != before {
            wrong.push(format!("the cluster changed: {before:?} → {now:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} ({}):\n    {}\n    stdout: {stdout}\n    stderr: {stderr}",
                case.class,
                case.args.join(" "),
                wrong.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} classes failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Applies `manifest` with kubectl (strict field validation, as kubectl does by default);
/// its stderr.
fn kubectl_apply(dir: &Path, name: &str, manifest: &serde_json::Value) -> (bool, String) {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, manifest.to_string()).expect("write");
    let out = support::kubectl(&["apply", "-f", file.to_str().expect("utf-8")]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn agent_refuses_every_class_and_touches_nothing() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "bad-input-agent").await;
    let dir = tempfile::tempdir().expect("temp");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("app/seed.yaml", &configmap("seed", "blue"));
    repo.write(
        "broken/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  color: [1, 2\n",
    );
    let first = repo.commit("seed");
    let daemon = GitDaemon::start(&root);
    let url = daemon.url("deploy");
    let (port, listen) = support::agent::free_listen();
    let secret = b"hook-s3cret".to_vec();
    let agent = start_agent(
        &client,
        AgentOptions {
            listen,
            webhook_secret: Some(secret.clone()),
            ..options_for(&ns, dir.path())
        },
    );
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    // The object an earlier good sync left.
    create_application(
        &apps,
        "good",
        json!({
            "source": {"repoURL": url, "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        }),
    )
    .await;
    until(&apps, "good", "the good sync", |a| {
        applied(a) == Some(first.as_str())
    })
    .await;
    let before = snapshot(&client, &ns.name, &[]).await;
    assert!(before.contains_key("ConfigMap/seed"), "{before:?}");
    let mut failures = Vec::new();
    let mut check = |class: &str, ok: bool, seen: String| {
        eprintln!("{class} | {seen}");
        if !ok {
            failures.push(format!("{class}: {seen}"));
        }
    };

    // Webhooks.
    let push =
        serde_json::to_vec(&json!({"repoURL": url, "ref": "refs/heads/main"})).expect("json");
    let signed = |body: &[u8]| format!("sha256={}", hmac_hex(&secret, body));
    let (status, text) = post(
        port,
        "generic",
        &[(
            "X-Tether-Signature",
            format!("sha256={}", hmac_hex(b"guess", &push)),
        )],
        push.clone(),
    )
    .await;
    check(
        "forged webhook (signed with another secret)",
        status == 401 && text.contains("the signature or token does not match"),
        format!("{status} {text}"),
    );
    let (status, text) = post(port, "github", &[], push.clone()).await;
    check(
        "unsigned webhook",
        status == 401 && text.contains("the signature or token does not match"),
        format!("{status} {text}"),
    );
    let (status, text) = post(
        port,
        "gitlab",
        &[("X-Gitlab-Token", "guess".into())],
        push.clone(),
    )
    .await;
    check(
        "webhook with a wrong token (GitLab)",
        status == 401,
        format!("{status} {text}"),
    );
    let mut tampered = push.clone();
    tampered.extend_from_slice(b" ");
    let (status, text) = post(
        port,
        "generic",
        &[("X-Tether-Signature", signed(&push))],
        tampered,
    )
    .await;
    check(
        "webhook whose body was changed after signing",
        status == 401,
        format!("{status} {text}"),
    );
    let huge = vec![b' '; 3 << 20];
    let (status, text) = post(
        port,
        "generic",
        &[("X-Tether-Signature", signed(&huge))],
        huge,
    )
    .await;
    check(
        "oversized webhook (3 MiB)",
        status == 413 && text.contains("the body is above 2 MiB"),
        format!("{status} {text}"),
    );
    let not_json = b"ref=main".to_vec();
    let (status, text) = post(
        port,
        "generic",
        &[("X-Tether-Signature", signed(&not_json))],
        not_json,
    )
    .await;
    check(
        "signed webhook whose body is not JSON",
        status == 400 && text.contains("the body is not JSON"),
        format!("{status} {text}"),
    );
    let (status, text) = post(port, "bitbucket", &[], push.clone()).await;
    check(
        "webhook for an unknown provider",
        status == 404 && text.contains("use github, gitlab, gitea or generic"),
        format!("{status} {text}"),
    );
    let delivery = [
        ("X-Tether-Signature", signed(&push)),
        ("X-Tether-Delivery", "delivery-1".to_string()),
    ];
    let (first_status, _) = post(port, "generic", &delivery, push.clone()).await;
    let (status, text) = post(port, "generic", &delivery, push.clone()).await;
    check(
        "replayed webhook (a delivery id seen before)",
        first_status == 202
            && status == 409
            && text.contains("delivery delivery-1 was received before; a replay triggers nothing"),
        format!("{first_status}, then {status} {text}"),
    );
    // The delivery id is not signed: the same body under a new one is a replay too.
    let renamed = [
        ("X-Tether-Signature", signed(&push)),
        ("X-Tether-Delivery", "delivery-2".to_string()),
    ];
    let (status, text) = post(port, "generic", &renamed, push.clone()).await;
    check(
        "replayed webhook body under a new delivery id",
        status == 409
            && text.contains("this signed body was received")
            && text.contains("a replay within 10 minutes triggers nothing"),
        format!("{status} {text}"),
    );

    // Applications the CRD's schema refuses (kubectl validates fields strictly).
    let application = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Application",
               "metadata": {"name": name, "namespace": ns.name}, "spec": spec})
    };
    let schema_cases = [
        (
            "no-repo",
            "Application without spec.source.repoURL (schema)",
            application(
                "no-repo",
                json!({"source": {"path": "app"}, "destination": {"namespace": ns.name}}),
            ),
            "spec.source.repoURL: Required value",
        ),
        (
            "wrong-type",
            "Application with a field of the wrong type (schema)",
            application(
                "wrong-type",
                json!({"source": {"repoURL": url}, "destination": {"namespace": ns.name}, "syncPolicy": {"interval": 5}}),
            ),
            "spec.syncPolicy.interval in body must be of type string",
        ),
        (
            "unknown-field",
            "Application with an unknown field (schema)",
            application(
                "unknown-field",
                json!({"source": {"repoURL": url, "branch": "main"}, "destination": {"namespace": ns.name}}),
            ),
            "unknown field \"spec.source.branch\"",
        ),
    ];
    for (name, class, manifest, says) in schema_cases {
        let (applied_ok, stderr) = kubectl_apply(dir.path(), name, &manifest);
        check(
            class,
            !applied_ok && stderr.contains(says),
            stderr.trim().to_string(),
        );
    }

    // Applications the agent refuses with a condition.
    let spec = |extra: serde_json::Value| {
        let mut spec = json!({
            "source": {"repoURL": url, "ref": {"branch": "main"}, "path": "app"},
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h", "retry": {"limit": 1, "backoff": "1s"}}
        });
        json_patch::merge(&mut spec, &extra);
        spec
    };
    let agent_cases = [
        (
            "two-refs",
            "Application naming a branch and a tag",
            spec(json!({"source": {"ref": {"branch": "main", "tag": "v1"}}})),
            "spec.source.ref sets more than one of branch, tag, commit, semver and digest",
        ),
        (
            "bad-semver",
            "Application with an invalid semver range",
            spec(json!({"source": {"ref": {"branch": null, "semver": ">=1.x.y <<2"}}})),
            "spec.source.ref \"semver:>=1.x.y <<2\": not a semver range",
        ),
        (
            "missing-branch",
            "Application following a branch that does not exist",
            spec(json!({"source": {"ref": {"branch": "nope"}}})),
            "branch \"nope\" not found; the remote has: main",
        ),
        (
            "path-escape",
            "Application whose path leaves the repository",
            spec(json!({"source": {"path": "../../etc"}})),
            "spec.source.path \"../../etc\" leaves the repository",
        ),
        (
            "values-escape",
            "Application whose values file leaves the repository",
            spec(json!({"render": {"renderer": "helm", "valuesFiles": ["../../etc/passwd"]}})),
            "spec.render.valuesFiles: \"../../etc/passwd\" leaves the repository",
        ),
        (
            "bad-renderer",
            "Application with an unknown renderer",
            spec(json!({"render": {"renderer": "jsonnet"}})),
            "spec.render.renderer \"jsonnet\" is not auto, directory, kustomize or helm",
        ),
        (
            "bad-memory",
            "Application with a memory limit that is not a size",
            spec(json!({"render": {"memoryLimit": "lots"}})),
            "spec.render.memoryLimit: \"lots\" is not a size like 512Mi or 1Gi",
        ),
        (
            "memory-over-budget",
            "Application with a memory limit above the agent's budget",
            spec(json!({"render": {"memoryLimit": "4Gi"}})),
            "spec.render.memoryLimit 4Gi is above the 1 GiB that the agent's renders may take together",
        ),
        (
            "bad-interval",
            "Application with an interval that is not a duration",
            spec(json!({"syncPolicy": {"interval": "soon"}})),
            "spec.syncPolicy.interval: \"soon\" is not a duration like 30s, 2m or 1h",
        ),
        (
            "bad-destination",
            "Application with an invalid destination namespace",
            spec(json!({"destination": {"namespace": "Team_A"}})),
            "spec.destination.namespace \"Team_A\" is not a namespace name",
        ),
        (
            "broken-revision",
            "Application whose revision has malformed YAML",
            spec(json!({"source": {"path": "broken"}})),
            "broken/a.yaml:6:10: invalid YAML: unclosed bracket",
        ),
    ];
    for (name, _, spec, _) in &agent_cases {
        create_application(&apps, name, spec.clone()).await;
    }
    for (name, class, _, says) in &agent_cases {
        let refused = until(&apps, name, class, |a| {
            a.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "Failed")
            })
        })
        .await;
        let status = refused.status.expect("status");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        check(
            class,
            ready.message.contains(says) && status.last_applied_revision.is_none(),
            format!("Ready=False {}: {}", ready.reason, ready.message),
        );
    }

    let after = snapshot(&client, &ns.name, &[]).await;
    let stopped = agent.stop().await;
    assert!(
        failures.is_empty(),
        "{} classes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(before, after, "nothing in the namespace changed");
    stopped.expect("the agent stops cleanly");
}
