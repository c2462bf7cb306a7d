//! SOPS-encrypted inputs of Kustomize and Helm, encrypted by the real `sops` with a key
//! from the real `age-keygen` (both built by testenv): a `secretGenerator`'s dotenv and
//! binary files, an encrypted resource, an encrypted values file; what happens without the
//! key or with another one; and that plaintext never reaches the render cache.

use crate::support;
use crate::support::sops::{age_key, sops_encrypt};

use std::path::Path;

use base64::Engine as _;
use tether::render::sops::Keys;
use tether::render::{RenderOptions, render};
use tether::source::tree::DirTree;

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
}

fn options(keys: Keys, cache: &Path) -> RenderOptions {
    RenderOptions {
        kustomize_bin: Some(support::tool("kustomize")),
        helm_bin: Some(support::tool("helm")),
        namespace: "shop".into(),
        app: "shop".into(),
        decryption: keys,
        cache_dir: Some(cache.to_path_buf()),
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ..Default::default()
    }
}

fn secret_value(objects: &[tether::object::Object], name: &str, key: &str) -> String {
    let secret = objects
        .iter()
        .find(|o| o.key.kind == "Secret" && o.key.name.starts_with(name))
        .unwrap_or_else(|| panic!("no Secret {name}"));
    let data = &secret.manifest["data"][key];
    if let Some(text) = data.as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64");
        return String::from_utf8(bytes).expect("utf-8");
    }
    secret.manifest["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no {key}"))
        .to_string()
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        if std::fs::read(&entry)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            found.push(entry.display().to_string());
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn kustomize_and_helm_inputs_are_decrypted_and_never_cached() {
    let dir = tempfile::tempdir().expect("temp");
    let (key_file, recipient) = age_key(dir.path(), "key.txt");
    let (other_file, _) = age_key(dir.path(), "other.txt");
    let repo = dir.path().join("repo");
    write(
        &repo,
        &[
            (
                "app/kustomization.yaml",
                "resources: [db.yaml]\nsecretGenerator:\n- name: app\n  envs: [app.env]\n  files: [tls.crt]\n",
            ),
            ("app/app.env", "USER=admin\nPASSWORD=hunter2-env\n"),
            ("app/tls.crt", "-----BEGIN CERT-----\nhunter2-file\n"),
            (
                "app/db.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-resource\n",
            ),
            (
                "chart/Chart.yaml",
                "apiVersion: v2\nname: web\nversion: 1.0.0\n",
            ),
            ("chart/values.yaml", "token: none\n"),
            (
                "chart/templates/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\nstringData:\n  token: {{ .Values.token | quote }}\n",
            ),
            ("env/secrets.yaml", "token: hunter2-values\n"),
        ],
    );
    for file in ["app/app.env", "app/tls.crt", "env/secrets.yaml"] {
        sops_encrypt(&repo.join(file), &recipient, &[]);
    }
    sops_encrypt(
        &repo.join("app/db.yaml"),
        &recipient,
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    let tree = DirTree::new(&repo).expect("dir");
    let cache = dir.path().join("cache");
    let keys = Keys::parse(&std::fs::read_to_string(&key_file).unwrap()).unwrap();

    let objects = render(&tree, "app", &options(keys.clone(), &cache)).expect("renders");
    assert_eq!(secret_value(&objects, "app-", "PASSWORD"), "hunter2-env");
    assert_eq!(
        secret_value(&objects, "app-", "tls.crt"),
        "-----BEGIN CERT-----\nhunter2-file\n"
    );
    assert_eq!(secret_value(&objects, "db", "password"), "hunter2-resource");
    let db = objects.iter().find(|o| o.key.name == "db").unwrap();
    assert!(db.manifest.get("sops").is_none(), "the sops block is gone");

    let mut helm = options(keys, &cache);
    helm.helm.values_files = vec!["env/secrets.yaml".into()];
    let objects = render(&tree, "chart", &helm).expect("renders");
    assert_eq!(secret_value(&objects, "token", "token"), "hunter2-values");

    // Plaintext never reaches the disk outside the render's own private copy, which is gone.
    for plain in [
        "hunter2-env",
        "hunter2-file",
        "hunter2-resource",
        "hunter2-values",
    ] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
        assert_eq!(files_holding(&cache, plain), Vec::<String>::new());
        assert_eq!(
            files_holding(&cache, &encoded[..8]),
            Vec::<String>::new(),
            "{plain}"
        );
    }

    // Without a key, or with another one, the render is refused, naming each file and why.
    for (keys, why) in [
        (Keys::default(), "no decryption key was given"),
        (
            Keys::parse(&std::fs::read_to_string(&other_file).unwrap()).unwrap(),
            "is not a recipient",
        ),
    ] {
        let err = render(&tree, "app", &options(keys.clone(), &cache))
            .expect_err("refused")
            .to_string();
        for file in ["app/app.env", "app/tls.crt", "app/db.yaml"] {
            assert!(err.contains(file), "{file} named in: {err}");
        }
        assert!(err.contains(why) && err.contains(&recipient), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = render(&tree, "chart", &{
            let mut helm = options(keys, &cache);
            helm.helm.values_files = vec!["env/secrets.yaml".into()];
            helm
        })
        .expect_err("refused")
        .to_string();
        assert!(
            err.contains("env/secrets.yaml") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn a_file_encrypted_for_an_openpgp_key_is_decrypted_with_it() {
    use crate::support::sops::{pgp_key, sops_encrypt_pgp};
    let dir = tempfile::tempdir().expect("temp");
    let (home, fingerprint, secret) = pgp_key(dir.path(), "team");
    let (_, other_fingerprint, other_secret) = pgp_key(dir.path(), "other");
    let repo = dir.path().join("repo");
    write(
        &repo,
        &[(
            "app/db.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-pgp\n",
        )],
    );
    sops_encrypt_pgp(&repo.join("app/db.yaml"), &home, &fingerprint);
    let tree = DirTree::new(&repo).expect("dir");
    let cache = dir.path().join("cache");
    let keys = Keys::parse(&secret).expect("an armored secret key");
    let objects = render(&tree, "app", &options(keys, &cache)).expect("renders");
    assert_eq!(secret_value(&objects, "db", "password"), "hunter2-pgp");
    // Another OpenPGP key is not a recipient: refused, naming the one it was encrypted for.
    let err = render(
        &tree,
        "app",
        &options(Keys::parse(&other_secret).expect("key"), &cache),
    )
    .expect_err("refused")
    .to_string();
    assert!(
        err.contains("is not a recipient")
            && err.contains(&fingerprint)
            && !err.contains(&other_fingerprint),
        "{err}"
    );
    // The CLI reads the same armored key from --decryption-key-file.
    let key_file = dir.path().join("secret.asc");
    std::fs::write(&key_file, &secret).expect("key file");
    let out = crate::support::tether_offline(&[
        "render",
        "--path",
        repo.join("app").to_str().expect("utf-8 path"),
        "--decryption-key-file",
        key_file.to_str().expect("utf-8 path"),
        "--show-secrets",
    ]);
    assert!(out.status.success(), "{}", crate::support::said(&out));
    assert!(
        crate::support::said(&out).contains("hunter2-pgp"),
        "{}",
        crate::support::said(&out)
    );
}
