//! Unit tests of rendering over a [`DirTree`]: the plain walk, `.tetherignore`, symlinks, Jsonnet,
//! problems with their origin, and the render cache.

use super::cache::trim_cache;
use super::*;
use crate::source::tree::DirTree;

/// Writes `files` under a fresh temporary folder and returns it with a tree over it.
fn repo(files: &[(&str, &str)]) -> (tempfile::TempDir, DirTree) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
    let tree = DirTree::new(dir.path()).expect("folder exists");
    (dir, tree)
}

fn render(tree: &DirTree, path: &str) -> Result<Vec<Object>, Problems> {
    render_plain(tree, path, &RenderOptions::default())
}

fn names(objects: &[Object]) -> Vec<String> {
    objects.iter().map(|o| o.key.to_string()).collect()
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: NAME\ndata: {mode: 0644}\n";

fn cm(name: &str) -> String {
    CM.replace("NAME", name)
}

#[test]
fn walks_recursively_in_byte_order_and_reads_only_manifests() {
    let (_dir, tree) = repo(&[
        ("apps/b.yaml", &cm("b")),
        ("apps/a.yml", &cm("a")),
        (
            "apps/sub/c.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
        ),
        ("apps/README.md", "not a manifest"),
        ("apps/Z.YAML", &cm("z")),
        ("other/x.yaml", &cm("outside-path")),
    ]);
    let objects = render(&tree, "apps").expect("valid");
    assert_eq!(
        names(&objects),
        ["ConfigMap/z", "ConfigMap/a", "ConfigMap/b", "ConfigMap/c"],
        "byte order: uppercase first, then a.yml, b.yaml, sub/c.json"
    );
    assert_eq!(objects[1].manifest["data"]["mode"], 420, "YAML 1.1 octal");
    assert_eq!(objects[3].origin.file, "apps/sub/c.json");
}

#[test]
fn multi_document_files_keep_document_index_and_line() {
    let text = format!("# leading comment\n{}---\n---\n{}", cm("one"), cm("two"));
    let (_dir, tree) = repo(&[("m.yaml", &text)]);
    let objects = render(&tree, "").expect("valid");
    assert_eq!(names(&objects), ["ConfigMap/one", "ConfigMap/two"]);
    assert_eq!(objects[0].origin.document, 0);
    assert_eq!(objects[0].origin.line, 2);
    assert_eq!(
        objects[1].origin.document, 1,
        "empty documents are not counted"
    );
    assert_eq!(objects[1].origin.line, 9);
    assert_eq!(objects[1].origin.to_string(), "m.yaml:9 (document 2)");
}

#[test]
fn list_kind_is_expanded_with_item_origins() {
    let list = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: first}}
- {apiVersion: apps/v1, kind: Deployment, metadata: {name: web, namespace: shop}}
"#;
    let (_dir, tree) = repo(&[("list.yaml", list)]);
    let objects = render(&tree, "").expect("valid");
    assert_eq!(
        names(&objects),
        ["ConfigMap/first", "Deployment.apps/web -n shop"]
    );
    assert_eq!(objects[1].origin.item, Some(1));
    assert_eq!(objects[1].key.group, "apps");
    assert_eq!(objects[1].key.namespace, "shop");
}

#[test]
fn tetherignore_excludes_files_with_gitignore_syntax() {
    let (_dir, tree) = repo(&[
        (".tetherignore", "/apps/drafts/\n"),
        ("apps/.tetherignore", "*.local.yaml\n!keep.local.yaml\n"),
        ("apps/a.yaml", &cm("a")),
        ("apps/dev.local.yaml", &cm("dev")),
        ("apps/keep.local.yaml", &cm("keep")),
        ("apps/drafts/d.yaml", &cm("draft")),
    ]);
    let objects = render(&tree, "apps").expect("valid");
    assert_eq!(names(&objects), ["ConfigMap/a", "ConfigMap/keep"]);
}

#[test]
fn every_problem_is_reported_with_file_and_line() {
    let (_dir, tree) = repo(&[
        ("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n"),
        (
            "b.yaml",
            &format!("{}---\nkind: Service\nmetadata: {{name: s}}\n", cm("ok")),
        ),
        ("c.yaml", "apiVersion: v1\nkind: [oops\n"),
        ("d.yaml", "- just\n- a list\n"),
        (
            "e.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {generateName: web-}\n",
        ),
    ]);
    let problems = render(&tree, "").expect_err("invalid").0;
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 5, "{text:#?}");
    assert!(
        text[0].starts_with("a.yaml:1 (document 1): ConfigMap has no metadata.name"),
        "{}",
        text[0]
    );
    assert!(
        text[1].starts_with("b.yaml:7 (document 2): apiVersion is missing"),
        "{}",
        text[1]
    );
    assert!(text[2].starts_with("c.yaml:2:"), "{}", text[2]);
    assert!(text[3].contains("found a sequence"), "{}", text[3]);
    assert!(text[4].contains("generateName"), "{}", text[4]);
}

#[test]
fn the_same_object_twice_names_both_origins() {
    let (_dir, tree) = repo(&[("x/one.yaml", &cm("dup")), ("y/two.yaml", &cm("dup"))]);
    let problems = render(&tree, "").expect_err("duplicate").0;
    assert_eq!(problems.len(), 1);
    let text = problems[0].to_string();
    assert!(text.contains("ConfigMap/dup is defined twice"), "{text}");
    assert!(
        text.contains("x/one.yaml:1") && text.contains("y/two.yaml:1"),
        "{text}"
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let (dir, tree) = repo(&[]);
    std::fs::write(
        dir.path().join("bad.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\ndata: {a: \"\xff\"}\n",
    )
    .expect("write");
    let problems = render(&tree, "").expect_err("invalid UTF-8").0;
    assert_eq!(
        problems[0].to_string(),
        "bad.yaml:3: invalid UTF-8 at byte 42; save the file as UTF-8"
    );
}

#[test]
fn a_file_above_the_size_limit_is_refused() {
    let big = cm("big");
    let (_dir, tree) = repo(&[("big.yaml", &big)]);
    let options = RenderOptions {
        max_file_bytes: 10,
        ..Default::default()
    };
    let problems = render_plain(&tree, "", &options).expect_err("too large").0;
    let expected = format!(
        "big.yaml: {} bytes is above the limit of 10 bytes",
        big.len()
    );
    assert!(problems[0].to_string().contains(&expected), "{problems:?}");
}

#[test]
fn a_folder_whose_files_add_up_past_the_input_limit_is_refused_at_the_file_that_passes_it() {
    let (_dir, tree) = repo(&[
        ("apps/a.yaml", &cm("a")),
        ("apps/b.yaml", &cm("b")),
        ("apps/c.yaml", &cm("c")),
    ]);
    let options = RenderOptions {
        max_input_bytes: 2 * cm("a").len() as u64,
        ..Default::default()
    };
    let problems = render_plain(&tree, "apps", &options)
        .expect_err("too much")
        .0;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().starts_with(&format!(
            "apps: its manifests add up to more than {} bytes (at apps/c.yaml)",
            2 * cm("a").len()
        )),
        "{problems:?}"
    );
    let exact = RenderOptions {
        max_input_bytes: 3 * cm("a").len() as u64,
        ..Default::default()
    };
    assert_eq!(render_plain(&tree, "apps", &exact).expect("fits").len(), 3);
}

#[test]
fn too_many_objects_is_refused() {
    let many: String = (0..5)
        .map(|i| format!("{}---\n", cm(&format!("c{i}"))))
        .collect();
    let (_dir, tree) = repo(&[("many.yaml", &many)]);
    let options = RenderOptions {
        max_objects: 3,
        ..Default::default()
    };
    let problems = render_plain(&tree, "", &options).expect_err("too many").0;
    assert!(
        matches!(problems[0], Problem::TooManyObjects { count: 5, limit: 3 }),
        "{problems:?}"
    );
}

#[test]
fn symlinks_inside_are_followed_and_outside_refused() {
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("secret.yaml"), cm("stolen")).expect("write");
    let (dir, tree) = repo(&[
        ("real/base.yaml", &cm("base")),
        ("apps/own.yaml", &cm("own")),
    ]);
    std::os::unix::fs::symlink("../real/base.yaml", dir.path().join("apps/link.yaml"))
        .expect("symlink");
    let objects = render(&tree, "apps").expect("inside link is fine");
    assert_eq!(names(&objects), ["ConfigMap/base", "ConfigMap/own"]);
    assert_eq!(objects[0].origin.file, "apps/link.yaml");

    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.path().join("apps/abs.yaml"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(
        "../../../../../../etc/passwd.yaml",
        dir.path().join("apps/rel.yaml"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink("nothing.yaml", dir.path().join("apps/dangling.yaml"))
        .expect("symlink");
    let problems = render(&tree, "apps").expect_err("escapes").0;
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        text[0].starts_with("apps/abs.yaml: symlink to")
            && text[0].contains("leaves the repository"),
        "{}",
        text[0]
    );
    assert!(
        text[1].starts_with("apps/dangling.yaml: symlink to \"nothing.yaml\" points at nothing"),
        "{}",
        text[1]
    );
    assert!(
        text[2].starts_with("apps/rel.yaml: symlink to")
            && text[2].contains("leaves the repository"),
        "{}",
        text[2]
    );
}

#[test]
fn a_missing_path_is_a_clear_problem() {
    let (_dir, tree) = repo(&[("apps/a.yaml", &cm("a"))]);
    let problems = render(&tree, "nope").expect_err("missing").0;
    assert!(
        matches!(&problems[0], Problem::PathNotFound { path, .. } if path == "nope"),
        "{problems:?}"
    );
    let problems = render(&tree, "apps/a.yaml").expect_err("a file").0;
    assert!(
        matches!(&problems[0], Problem::PathNotAFolder { .. }),
        "{problems:?}"
    );
}

#[test]
fn the_render_cache_drops_the_least_recently_used_first() {
    let dir = tempfile::tempdir().expect("temp");
    let base = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
    for i in 0..10u64 {
        let path = dir.path().join(format!("{i}.out"));
        std::fs::write(&path, vec![b'x'; 100]).expect("write");
        let handle = std::fs::File::options()
            .append(true)
            .open(&path)
            .expect("open");
        handle
            .set_modified(base + std::time::Duration::from_secs(i))
            .expect("mtime");
    }
    trim_cache(dir.path(), 1000);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        10,
        "within the limit"
    );
    trim_cache(dir.path(), 550);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["5.out", "6.out", "7.out", "8.out", "9.out"]);
}

#[test]
fn jsonnet_files_render_with_imports_arguments_and_libraries() {
    let (_dir, tree) = repo(&[
        (
            "app/main.jsonnet",
            "local lib = import 'lib.libsonnet';\nlocal shared = import 'shared.libsonnet';\nfunction(replicas='1') [\n  lib.cm(std.extVar('env')),\n  lib.cm('replicas-' + replicas) + {data: {team: shared.team}},\n  [lib.cm('nested')],\n]\n",
        ),
        (
            "app/lib.libsonnet",
            "{ cm(name):: {apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: name}} }\n",
        ),
        ("libs/shared.libsonnet", "{ team: 'platform' }\n"),
        (
            "app/one.jsonnet",
            "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'single', labels: {n: std.toString(1 + 1)}}}",
        ),
    ]);
    let options = RenderOptions {
        jsonnet: jsonnet::JsonnetOptions {
            ext_vars: vec![("env".into(), jsonnet::Argument::Str("prod".into()))],
            tlas: vec![("replicas".into(), jsonnet::Argument::Code("1 + 2".into()))],
            libs: vec!["libs".into()],
        },
        ..Default::default()
    };
    let objects = render_plain(&tree, "app", &options).expect("renders");
    assert_eq!(
        names(&objects),
        [
            "ConfigMap/prod",
            "ConfigMap/replicas-3",
            "ConfigMap/nested",
            "ConfigMap/single"
        ]
    );
    assert_eq!(objects[1].manifest["data"]["team"], "platform");
    assert_eq!(objects[3].manifest["metadata"]["labels"]["n"], "2");
    assert_eq!(
        objects[1].origin.to_string(),
        "app/main.jsonnet:1 (document 1, item 2)"
    );
}

#[test]
fn jsonnet_errors_name_the_file_and_line_and_imports_stay_in_the_repository() {
    let (dir, tree) = repo(&[
        (
            "app/bad.jsonnet",
            "local x = 1;\n\n{ a: error 'broken on purpose' }.a\n",
        ),
        ("app/escape.jsonnet", "import '../../outside.libsonnet'\n"),
        ("app/missing.jsonnet", "import 'nowhere.libsonnet'\n"),
        ("app/unset.jsonnet", "std.extVar('region')\n"),
        ("app/function.jsonnet", "function(size) {}\n"),
    ]);
    std::fs::write(dir.path().join("../outside.libsonnet"), "{}").ok();
    let err = render(&tree, "app").expect_err("problems").to_string();
    assert!(
        err.contains("app/bad.jsonnet:3: error: broken on purpose"),
        "{err}"
    );
    assert!(err.contains("leaves the repository"), "{err}");
    assert!(
        err.contains("\"nowhere.libsonnet\"") && err.contains("not found"),
        "{err}"
    );
    assert!(
        err.contains("region") && err.contains("--jsonnet-ext-str"),
        "{err}"
    );
    assert!(
        err.contains("function.jsonnet") && err.contains("--jsonnet-tla-str"),
        "{err}"
    );
    // A value nested deeper than any object is refused (its conversion would recurse).
    let (_dir, tree) = repo(&[(
        "app/deep.jsonnet",
        "std.foldl(function(inner, i) {a: inner}, std.range(1, 300), {})",
    )]);
    let err = render(&tree, "app").expect_err("refused").to_string();
    assert!(err.contains("nests deeper than 200 levels"), "{err}");
    // An import through a linked folder that leads out of the repository reads nothing.
    let outside = tempfile::tempdir().expect("temp");
    std::fs::write(outside.path().join("secret.txt"), "TOKEN=1").expect("write");
    let (dir, tree) = repo(&[("app/leak.jsonnet", "{a: importstr 'v/secret.txt'}")]);
    std::os::unix::fs::symlink(outside.path(), dir.path().join("app/v")).expect("link");
    let err = render(&tree, "app").expect_err("refused").to_string();
    assert!(err.contains("not found") && !err.contains("TOKEN"), "{err}");
    // Nesting deep enough to overflow a parser's stack is refused before parsing.
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let (_dir, tree) = repo(&[("app/deep.jsonnet", deep.as_str())]);
    let err = render(&tree, "app").expect_err("refused").to_string();
    assert!(err.contains("nests 5000 levels"), "{err}");
}

#[test]
fn a_folder_whose_files_render_nothing_while_some_were_skipped_is_an_error_naming_them() {
    let (_dir, tree) = repo(&[
        ("app/lib.libsonnet", "{}"),
        ("app/deploy.cue", "x: 1"),
        ("app/notes.txt", "hello"),
        ("app/README.md", "hello"),
        ("app/.hidden", "x"),
    ]);
    let err = render(&tree, "app").expect_err("an error").to_string();
    assert!(
        err.contains("no object rendered, and 2 file(s)")
            && err.contains("app/lib.libsonnet")
            && err.contains("app/deploy.cue")
            && !err.contains("notes.txt")
            && !err.contains("README")
            && !err.contains(".hidden"),
        "{err}"
    );
    // An empty manifest is fine (nothing was skipped), as are documentation only (a folder
    // emptied to prune everything), a Jsonnet file that renders nothing beside its library,
    // and a folder with objects.
    let (_dir, tree) = repo(&[("app/empty.yaml", "")]);
    assert!(render(&tree, "app").expect("renders").is_empty());
    let (_dir, tree) = repo(&[("app/README.md", "emptied on purpose")]);
    assert!(render(&tree, "app").expect("renders").is_empty());
    let (_dir, tree) = repo(&[
        ("app/none.jsonnet", "(import 'lib.libsonnet').none"),
        ("app/lib.libsonnet", "{none: []}"),
    ]);
    assert!(render(&tree, "app").expect("renders").is_empty());
    let (_dir, tree) = repo(&[("app/a.yaml", &cm("a")), ("app/README.md", "x")]);
    assert_eq!(render(&tree, "app").expect("renders").len(), 1);
}

const SOPS_SECRET: &str = include_str!("sops/testdata/secret.yaml");
const SOPS_TAMPERED: &str = include_str!("sops/testdata/tampered.yaml");
const SOPS_KEY: &str = include_str!("sops/testdata/key.txt");

#[test]
fn a_sops_encrypted_file_is_decrypted_with_its_key_and_refused_without() {
    let (_dir, tree) = repo(&[
        ("app/secret.yaml", SOPS_SECRET),
        ("app/cm.yaml", &cm("plain")),
    ]);
    let options = RenderOptions {
        decryption: sops::Keys::parse(SOPS_KEY).unwrap(),
        ..Default::default()
    };
    let objects = render_plain(&tree, "app", &options).unwrap();
    assert_eq!(names(&objects), ["ConfigMap/plain", "Secret/db -n shop"]);
    let secret = &objects[1].manifest;
    assert_eq!(secret["stringData"]["password"], "s3cr3t-canary");
    assert!(
        secret.get("sops").is_none(),
        "the sops block is not applied"
    );

    // Without a key: the file is refused by name (never applied as ciphertext).
    let Err(Problems(problems)) = render(&tree, "app") else {
        panic!("an encrypted file without a key must fail");
    };
    let [Problem::Decryption { file, message }] = problems.as_slice() else {
        panic!("{problems:?}");
    };
    assert_eq!(file, "app/secret.yaml");
    assert!(
        message.contains("no decryption key") && message.contains("age1"),
        "{message}"
    );

    // Changed after it was encrypted: refused, and no value is shown.
    let (_dir, tree) = repo(&[("app/secret.yaml", SOPS_TAMPERED)]);
    let err = render_plain(&tree, "app", &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MAC does not match") && !err.contains("s3cr3t"),
        "{err}"
    );
}
