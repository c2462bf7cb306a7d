//! Kustomize and Helm rendering with the real programs (built by testenv): overlays,
//! charts with values, subcharts and CRDs, a chart from a Helm repository over HTTP,
//! substitution, the sandbox's refusals, timeouts and the render cache.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tether::object::Object;
use tether::render::helm::{HelmOptions, RepoChart};
use tether::render::{Problems, RenderOptions, Renderer, render};
use tether::source::tree::DirTree;

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
}

fn options() -> RenderOptions {
    RenderOptions {
        kustomize_bin: Some(support::tool("kustomize")),
        helm_bin: Some(support::tool("helm")),
        namespace: "shop".into(),
        app: "shop".into(),
        ..Default::default()
    }
}

fn names(objects: &[Object]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o.key.kind, o.key.name))
        .collect()
}

const KUSTOMIZE_REPO: &[(&str, &str)] = &[
    (
        "base/kustomization.yaml",
        "resources: [deploy.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [LEVEL=info]\n",
    ),
    (
        "base/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  \
         template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n        \
         envFrom: [{configMapRef: {name: settings}}]\n",
    ),
    (
        "overlays/prod/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: prod-\npatches:\n- path: replicas.yaml\nconfigMapGenerator:\n- name: settings\n  behavior: merge\n  literals: [LEVEL=warn]\n",
    ),
    (
        "overlays/prod/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
    ),
    (
        "overlays/staging/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: staging-\n",
    ),
];

#[test]
fn kustomize_overlays_render_with_patches_prefixes_and_hashed_generators() {
    let dir = tempfile::tempdir().expect("temp");
    write(dir.path(), KUSTOMIZE_REPO);
    let tree = DirTree::new(dir.path()).expect("dir");
    let prod = render(&tree, "overlays/prod", &options()).expect("renders");
    let deploy = prod
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .expect("deployment");
    assert_eq!(deploy.key.name, "prod-web");
    assert_eq!(deploy.manifest["spec"]["replicas"], 3, "the patch applied");
    assert_eq!(deploy.origin.file, "kustomize build overlays/prod output");
    let config = prod
        .iter()
        .find(|o| o.key.kind == "ConfigMap")
        .expect("configmap");
    assert!(
        config.key.name.starts_with("prod-settings-")
            && config.key.name.len() > "prod-settings-".len(),
        "{}",
        config.key.name
    );
    assert_eq!(config.manifest["data"]["LEVEL"], "warn");
    let env_ref = &deploy.manifest["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
        ["name"];
    assert_eq!(
        env_ref,
        &serde_json::Value::String(config.key.name.clone()),
        "the reference follows the hash"
    );
    let staging = render(&tree, "overlays/staging", &options()).expect("renders");
    assert!(names(&staging).contains(&"Deployment/staging-web".to_string()));
}

fn chart(dir: &Path) {
    write(
        dir,
        &[
            (
                "charts/web/Chart.yaml",
                "apiVersion: v2\nname: web\nversion: 1.0.0\ndependencies:\n- name: cache\n  version: 0.1.0\n",
            ),
            ("charts/web/values.yaml", "replicas: 1\ncolor: blue\n"),
            (
                "charts/web/templates/deploy.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\n  labels:\n    helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}\nspec:\n  \
                 replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    \
                 spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n        env: [{name: COLOR, value: {{ .Values.color | quote }}}]\n",
            ),
            (
                "charts/web/templates/hook.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-migrate\n  annotations:\n    helm.sh/hook: pre-install\ndata: {}\n",
            ),
            (
                "charts/web/templates/caps.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-caps\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  \
                 hasWidgets: {{ .Capabilities.APIVersions.Has \"example.dev/v1\" | quote }}\n",
            ),
            (
                "charts/web/crds/widgets.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.dev\nspec:\n  group: example.dev\n  \
                 names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    \
                 schema: {openAPIV3Schema: {type: object}}\n",
            ),
            (
                "charts/web/charts/cache/Chart.yaml",
                "apiVersion: v2\nname: cache\nversion: 0.1.0\n",
            ),
            (
                "charts/web/charts/cache/templates/svc.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}-cache\nspec:\n  ports: [{port: 6379}]\n",
            ),
            ("env/prod.yaml", "replicas: 3\ncolor: green\n"),
            ("env/prod-override.yaml", "color: red\n"),
        ],
    );
}

#[test]
fn helm_charts_render_with_values_subcharts_crds_and_capabilities() {
    let dir = tempfile::tempdir().expect("temp");
    chart(dir.path());
    let tree = DirTree::new(dir.path()).expect("dir");
    let mut opts = options();
    opts.helm = HelmOptions {
        values_files: vec!["env/prod.yaml".into(), "env/prod-override.yaml".into()],
        set: vec!["replicas=4".into()],
        kube_version: Some("v1.34.4".into()),
        api_versions: vec!["example.dev/v1".into()],
        ..Default::default()
    };
    let objects = render(&tree, "charts/web", &opts).expect("renders");
    let all = names(&objects);
    for expected in [
        "CustomResourceDefinition/widgets.example.dev",
        "Deployment/shop-web",
        "Service/shop-cache",
        "ConfigMap/shop-migrate",
    ] {
        assert!(
            all.contains(&expected.to_string()),
            "{expected} missing from {all:?}"
        );
    }
    let deploy = objects
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .expect("deployment");
    assert_eq!(
        deploy.manifest["spec"]["replicas"], 4,
        "--set wins over values files"
    );
    assert_eq!(
        deploy.manifest["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"], "red",
        "later values file wins"
    );
    assert_eq!(
        deploy.origin.file, "web/templates/deploy.yaml",
        "origin from helm's # Source"
    );
    let hook = objects
        .iter()
        .find(|o| o.key.name == "shop-migrate")
        .expect("hook");
    assert!(
        hook.origin.file.ends_with("[helm hook: pre-install]"),
        "{}",
        hook.origin.file
    );
    let caps = objects
        .iter()
        .find(|o| o.key.name == "shop-caps")
        .expect("caps");
    assert_eq!(caps.manifest["data"]["kube"], "v1.34.4");
    assert_eq!(caps.manifest["data"]["hasWidgets"], "true");

    opts.helm.skip_crds = true;
    let without = render(&tree, "charts/web", &opts).expect("renders");
    assert!(
        !names(&without)
            .iter()
            .any(|n| n.starts_with("CustomResourceDefinition/"))
    );
}

#[test]
fn a_chart_from_a_helm_repository_over_http_with_a_semver_range() {
    let dir = tempfile::tempdir().expect("temp");
    chart(dir.path());
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    let helm = support::tool("helm");
    for version in ["1.0.0", "1.2.0", "2.0.0"] {
        let out = Command::new(&helm)
            .args([
                "package",
                "charts/web",
                "--version",
                version,
                "--destination",
            ])
            .arg(&served)
            .current_dir(dir.path())
            .output()
            .expect("helm package runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = StaticServer::start(&served);
    let url = format!("http://127.0.0.1:{}", server.port);
    let out = Command::new(&helm)
        .args(["repo", "index", "."])
        .arg("--url")
        .arg(&url)
        .current_dir(&served)
        .output()
        .expect("index");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let values_only = tempfile::tempdir().expect("temp");
    write(values_only.path(), &[("values/prod.yaml", "replicas: 2\n")]);
    let tree = DirTree::new(values_only.path()).expect("dir");
    let mut opts = options();
    opts.cache_dir = Some(dir.path().join("cache"));
    opts.helm = HelmOptions {
        values_files: vec!["values/prod.yaml".into()],
        repo_chart: Some(RepoChart {
            url: url.clone(),
            chart: "web".into(),
            version: ">=1.0.0 <2".into(),
        }),
        ..Default::default()
    };
    let objects = render(&tree, "", &opts).expect("renders");
    let deploy = objects
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .expect("deployment");
    assert_eq!(
        deploy.manifest["metadata"]["labels"]["helm.sh/chart"], "web-1.2.0",
        "highest match below 2"
    );
    assert_eq!(deploy.manifest["spec"]["replicas"], 2);

    opts.helm.repo_chart.as_mut().expect("set").version = ">=3".into();
    let err = render(&tree, "", &opts).expect_err("no match");
    assert!(
        err.to_string().contains("no version of web matches"),
        "{err}"
    );
}

#[test]
fn substitution_defaults_escapes_and_missing_variables() {
    let dir = tempfile::tempdir().expect("temp");
    write(
        dir.path(),
        &[
            (
                "plain/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${NAME}\ndata:\n  region: ${REGION:=eu-west-1}\n  literal: $${NOT_A_VAR}\n  count: \"${COUNT}\"\n",
            ),
            (
                "missing/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: ${FIRST}\n  b: ${SECOND}\n",
            ),
            ("kust/kustomization.yaml", "resources: [cm.yaml]\n"),
            (
                "kust/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${NAME}-k\n",
            ),
        ],
    );
    let tree = DirTree::new(dir.path()).expect("dir");
    let mut opts = options();
    opts.vars = Some(
        [("NAME", "shop"), ("COUNT", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let objects = render(&tree, "plain", &opts).expect("renders");
    assert_eq!(objects[0].key.name, "shop");
    assert_eq!(objects[0].manifest["data"]["region"], "eu-west-1");
    assert_eq!(objects[0].manifest["data"]["literal"], "${NOT_A_VAR}");
    assert_eq!(objects[0].manifest["data"]["count"], "3");
    let kustomized = render(&tree, "kust", &opts).expect("renders");
    assert_eq!(
        kustomized[0].key.name, "shop-k",
        "substitution after kustomize"
    );

    let Problems(problems) = render(&tree, "missing", &opts).expect_err("unset");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].starts_with("missing/cm.yaml:6: variable FIRST is not set"),
        "{}",
        text[0]
    );
    assert!(
        text[1].starts_with("missing/cm.yaml:7: variable SECOND is not set"),
        "{}",
        text[1]
    );

    // Without variables, substitution is off: `${…}` stays as written.
    let untouched = render(&tree, "missing", &options()).expect("renders");
    assert_eq!(untouched[0].manifest["data"]["a"], "${FIRST}");
}

/// A wrapper around a real program that counts its starts in a file.
fn counting_wrapper(dir: &Path, real: &Path) -> (PathBuf, PathBuf) {
    let counter = dir.join("starts");
    let wrapper = dir.join("counting-kustomize");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho start >> '{}'\nexec '{}' \"$@\"\n",
            counter.display(),
            real.display()
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (wrapper, counter)
}

fn starts(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn an_unchanged_revision_renders_from_the_cache_without_starting_a_program() {
    let dir = tempfile::tempdir().expect("temp");
    write(&dir.path().join("repo"), KUSTOMIZE_REPO);
    let tree = DirTree::new(dir.path().join("repo")).expect("dir");
    let (wrapper, counter) = counting_wrapper(dir.path(), &support::tool("kustomize"));
    let mut opts = options();
    opts.kustomize_bin = Some(wrapper);
    opts.cache_dir = Some(dir.path().join("cache"));
    opts.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
    let first = render(&tree, "overlays/prod", &opts).expect("renders");
    assert_eq!(starts(&counter), 1);
    let second = render(&tree, "overlays/prod", &opts).expect("renders");
    assert_eq!(starts(&counter), 1, "the second render started no program");
    assert_eq!(first, second);
    opts.revision = Some("fedcba9876543210fedcba9876543210fedcba98".into());
    render(&tree, "overlays/prod", &opts).expect("renders");
    assert_eq!(starts(&counter), 2, "another revision renders again");
}

#[test]
fn escapes_are_refused_before_any_program_runs() {
    let dir = tempfile::tempdir().expect("temp");
    chart(&dir.path().join("repo"));
    write(&dir.path().join("repo"), KUSTOMIZE_REPO);
    let root = dir.path().join("repo");
    std::os::unix::fs::symlink("/etc/passwd", root.join("charts/web/templates/passwd.yaml"))
        .expect("symlink");
    let tree = DirTree::new(&root).expect("dir");
    let (wrapper, counter) = counting_wrapper(dir.path(), &support::tool("helm"));
    let mut opts = options();
    opts.helm_bin = Some(wrapper);
    let err = render(&tree, "charts/web", &opts).expect_err("symlink escape");
    assert!(
        err.to_string()
            .contains("passwd.yaml: symlink to \"/etc/passwd\" leaves the repository"),
        "{err}"
    );
    std::fs::remove_file(root.join("charts/web/templates/passwd.yaml")).expect("rm");
    opts.helm.values_files = vec!["../../../../etc/passwd".into()];
    let err = render(&tree, "charts/web", &opts).expect_err("values escape");
    assert!(err.to_string().contains("leaves the repository"), "{err}");
    assert!(
        err.to_string()
            .contains("helm charts/web (application shop)"),
        "names the application: {err}"
    );
    assert_eq!(starts(&counter), 0, "helm never ran");
}

#[test]
fn a_renderer_that_hangs_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("temp");
    write(dir.path(), &[("app/kustomization.yaml", "resources: []\n")]);
    let hang = dir.path().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nsleep 60\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tree = DirTree::new(dir.path()).expect("dir");
    let mut opts = options();
    opts.kustomize_bin = Some(hang);
    opts.limits.timeout = Duration::from_secs(1);
    opts.renderer = Renderer::Kustomize;
    let started = std::time::Instant::now();
    let err = render(&tree, "app", &opts).expect_err("killed");
    assert!(
        err.to_string()
            .contains("did not finish within 1 s and was killed"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Python's static file server on a free loopback port, for a Helm repository.
struct StaticServer {
    port: u16,
    child: std::process::Child,
}

impl StaticServer {
    fn start(root: &Path) -> Self {
        let port = support::free_port();
        let mut child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 serves files");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { port, child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the static server did not start");
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Problems and origins point at the file that holds the object where the renderer says
/// so: Helm's `# Source:` comments name the template (lines count in its rendered output,
/// as in Helm's own messages, not in the whole stream), and a kustomization asking for
/// origin annotations names the source file; otherwise the location says it is a line of
/// kustomize's output.
#[test]
fn locations_point_at_templates_and_kustomize_sources() {
    let dir = tempfile::tempdir().expect("temp");
    let long_template: String = (0..40)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: filler-{i}\n"))
        .collect();
    let mut files: Vec<(&str, &str)> = KUSTOMIZE_REPO.to_vec();
    files.extend([
        (
            "overlays/traced/kustomization.yaml",
            "resources: [../../base]\nbuildMetadata: [originAnnotations]\n",
        ),
        (
            "chart/Chart.yaml",
            "apiVersion: v2\nname: broken\nversion: 0.1.0\n",
        ),
        ("chart/templates/a-long.yaml", long_template.as_str()),
        (
            "chart/templates/b-broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\ndata: {}\n",
        ),
    ]);
    write(dir.path(), &files);
    let tree = DirTree::new(dir.path()).expect("dir");
    let traced = render(&tree, "overlays/traced", &options()).expect("renders");
    let deploy = traced
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .expect("deployment");
    assert_eq!(deploy.origin.file, "base/deploy.yaml");

    let err = render(&tree, "chart", &options())
        .expect_err("a ConfigMap without a name")
        .to_string();
    assert!(
        err.contains("broken/templates/b-broken.yaml:1 (document"),
        "the template and its own line, not line 200-odd of the stream: {err}"
    );
}

/// One folder's fault stays in its folder (issue 30): in a shared repository, a symlink in
/// `bad` that leaves the repository does not stop `good` (Kustomize, Helm) from rendering;
/// `bad` itself is refused, and a render that needed what was left out says so.
#[test]
fn a_broken_folder_does_not_stop_the_others() {
    let dir = tempfile::tempdir().expect("temp");
    write(
        dir.path(),
        &[
            ("good/kustomization.yaml", "resources: [cm.yaml]\n"),
            (
                "good/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good\ndata: {k: v}\n",
            ),
            (
                "chart/Chart.yaml",
                "apiVersion: v2\nname: good\nversion: 0.1.0\n",
            ),
            (
                "chart/templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: charted\ndata: {k: v}\n",
            ),
            ("bad/kustomization.yaml", "resources: [cm.yaml]\n"),
        ],
    );
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("bad/cm.yaml")).expect("link");
    let tree = DirTree::new(dir.path()).expect("dir");
    let good = render(&tree, "good", &options()).expect("good renders beside bad");
    assert_eq!(names(&good), ["ConfigMap/good"]);
    let charted = render(&tree, "chart", &options()).expect("the chart renders beside bad");
    assert_eq!(names(&charted), ["ConfigMap/charted"]);
    let err = render(&tree, "bad", &options())
        .expect_err("bad is refused")
        .to_string();
    assert!(
        err.contains("bad/cm.yaml") && err.contains("leaves the repository"),
        "{err}"
    );
}
