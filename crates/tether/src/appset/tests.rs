//! Generators and the template, on hand-made inputs and a folder as the Git tree.

use super::*;
use serde_json::json;

fn trees(dir: &std::path::Path) -> Trees {
    let mut trees = Trees::new();
    let tree = crate::source::tree::DirTree::new(dir).expect("a folder");
    trees.insert(
        ("https://git.example/deploy".into(), "main".into()),
        Box::new(tree),
    );
    trees
}

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp");
    for path in [
        "apps/web/a.yaml",
        "apps/db/a.yaml",
        "apps/Web_Two/a.yaml",
        "apps/old/a.yaml",
        "other/x.yaml",
    ] {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, "kind: ConfigMap\n").expect("write");
    }
    std::fs::create_dir_all(dir.path().join("envs/prod")).expect("mkdir");
    std::fs::write(
        dir.path().join("envs/prod/config.json"),
        r#"{"env": "prod", "replicas": 3, "owner": {"team": "shop"}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("envs/list.yaml"), "- env: dev\n- env: qa\n").expect("write");
    dir
}

fn clusters() -> Vec<Cluster> {
    let cluster = |name: &str, env: &str| Cluster {
        name: name.into(),
        server: format!("https://{name}.example:6443"),
        labels: [("env".to_string(), env.to_string())].into(),
        annotations: BTreeMap::new(),
    };
    vec![
        cluster("east", "prod"),
        cluster("west", "prod"),
        cluster("lab", "dev"),
    ]
}

fn generate_with(generators: Value) -> Result<Vec<Params>, String> {
    let dir = folder();
    let trees = trees(dir.path());
    let clusters = clusters();
    let pulls = BTreeMap::new();
    let inputs = Inputs {
        trees: &trees,
        clusters: &clusters,
        pull_requests: &pulls,
    };
    generate(generators.as_array().expect("a list"), &inputs)
}

fn values(sets: &[Params], key: &str) -> Vec<String> {
    sets.iter()
        .map(|p| p.get(key).cloned().unwrap_or_default())
        .collect()
}

#[test]
fn list_git_directories_files_and_clusters_make_argo_cds_parameters() {
    let list = generate_with(
        json!([{"list": {"elements": [{"name": "a", "deep": {"x": 1}}, {"name": "b"}]}}]),
    )
    .expect("list");
    assert_eq!(values(&list, "name"), ["a", "b"]);
    assert_eq!(list[0]["deep.x"], "1");
    let dirs = generate_with(
        json!([{"git": {"repoURL": "https://git.example/deploy", "revision": "main",
        "directories": [{"path": "apps/*"}, {"path": "apps/old", "exclude": true}]}}]),
    )
    .expect("dirs");
    assert_eq!(values(&dirs, "path.basename"), ["Web_Two", "db", "web"]);
    assert_eq!(dirs[0]["path.basenameNormalized"], "web-two");
    assert_eq!(dirs[0]["path[0]"], "apps");
    assert_eq!(dirs[2]["path"], "apps/web");
    let files = generate_with(
        json!([{"git": {"repoURL": "https://git.example/deploy", "revision": "main",
        "files": [{"path": "envs/**/*.json"}, {"path": "envs/*.yaml"}]}}]),
    )
    .expect("files");
    assert_eq!(values(&files, "env"), ["dev", "qa", "prod"]);
    assert_eq!(files[2]["owner.team"], "shop");
    assert_eq!(files[2]["replicas"], "3");
    assert_eq!(files[2]["path.basename"], "prod");
    assert_eq!(files[2]["path.filename"], "config.json");
    let prod = generate_with(json!([{"clusters": {"selector": {"matchLabels": {"env": "prod"}}}}]))
        .expect("clusters");
    assert_eq!(values(&prod, "name"), ["east", "west"]);
    assert_eq!(prod[0]["metadata.labels.env"], "prod");
    assert_eq!(prod[0]["server"], "https://east.example:6443");
    assert_eq!(
        generate_with(json!([{"clusters": {}}])).expect("all").len(),
        3
    );
}

#[test]
fn matrix_pairs_and_merge_overrides_on_its_keys() {
    let matrix = generate_with(json!([{"matrix": {"generators": [
        {"clusters": {"selector": {"matchLabels": {"env": "prod"}}}},
        {"list": {"elements": [{"app": "web"}, {"app": "db"}]}}
    ]}}]))
    .expect("matrix");
    let pairs: Vec<String> = matrix
        .iter()
        .map(|p| format!("{}/{}", p["name"], p["app"]))
        .collect();
    assert_eq!(pairs, ["east/web", "east/db", "west/web", "west/db"]);
    let merged = generate_with(json!([{"merge": {"mergeKeys": ["name"], "generators": [
        {"clusters": {}},
        {"list": {"elements": [{"name": "west", "size": "large"}, {"name": "nowhere", "size": "x"}]}}
    ]}}])).expect("merge");
    assert_eq!(values(&merged, "name"), ["east", "west", "lab"]);
    assert_eq!(values(&merged, "size"), ["", "large", ""]);
}

#[test]
fn bad_generators_name_where_and_what() {
    for (generators, says) in [
        (
            json!([{"list": {"elements": ["x"]}}]),
            "spec.generators[0].list.elements[0]: an element is an object",
        ),
        (
            json!([{"list": {"elements": []}, "clusters": {}}]),
            "spec.generators[0]: a generator names exactly one",
        ),
        (
            json!([{"scmProvider": {}}]),
            "spec.generators[0].scmProvider: not supported by tether yet",
        ),
        (
            json!([{"pullRequest": {"github": {"owner": "a", "repo": "b"}}}]),
            "pullRequest: https://api.github.com/repos/a/b/pulls?state=open&per_page=100 was not listed",
        ),
        (
            json!([{"git": {"repoURL": "https://elsewhere", "directories": [{"path": "*"}]}}]),
            "https://elsewhere was not fetched",
        ),
        (
            json!([{"matrix": {"generators": [{"clusters": {}}]}}]),
            "spec.generators[0].matrix: a matrix combines exactly two",
        ),
        (
            json!([{"lists": {}}]),
            "spec.generators[0]: unknown field `lists`",
        ),
    ] {
        let err = generate_with(generators).expect_err(says);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn the_template_takes_either_spelling_and_refuses_an_unknown_parameter() {
    let template: crate::application::set::Template = serde_json::from_value(json!({
        "metadata": {"name": "{{name}}-{{ .app }}", "labels": {"env": "{{ metadata.labels.env }}"}},
        "spec": {"source": {"repoURL": "https://git.example/deploy", "path": "apps/{{app}}"},
                 "destination": {"namespace": "{{app}}", "cluster": "{{name}}"}, "suspend": false}
    }))
    .expect("a template");
    let params: Params = [
        ("name", "east"),
        ("app", "web"),
        ("metadata.labels.env", "prod"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let rendered = render(&template, &params).expect("renders");
    assert_eq!(rendered.name, "east-web");
    assert_eq!(rendered.labels["env"], "prod");
    assert_eq!(rendered.spec["source"]["path"], "apps/web");
    assert_eq!(rendered.spec["destination"]["cluster"], "east");
    assert_eq!(rendered.spec["suspend"], false);
    let mut missing = params.clone();
    missing.remove("app");
    let err = render(&template, &missing).expect_err("unknown");
    assert!(
        err.contains("{{app}}") && err.contains("it gives: metadata.labels.env, name"),
        "{err}"
    );
}
