use super::setters::{Change, update};
use super::writeback::{Outcome, Target, commit_and_push, edit_folder};
use super::{Chosen, choose, commit_message, registry_url};
use crate::application::{FilterTags, ImagePolicy, OrderPolicy, SemverPolicy, TagPolicy};

fn chosen(digest: Option<&str>) -> Vec<Chosen> {
    vec![Chosen {
        policy: "web".into(),
        image: "reg.example/team/web".into(),
        tag: "1.2.0".into(),
        digest: digest.map(str::to_string),
    }]
}

#[test]
fn marked_fields_are_rewritten_and_the_rest_is_kept_as_written() {
    let text = "\
spec:
  containers:
  - name: web
    image: reg.example/team/web:1.0.0 # {\"$imagepolicy\": \"shop:web\"}
  - image: \"reg.example/team/web:1.0.0\" # {\"$imagepolicy\": \"shop:web\"}
  # a comment stays
  tag: '1.0.0' # {\"$imagepolicy\": \"shop:web:tag\"}
  repo: old/name # {\"$imagepolicy\": \"shop:web:name\"}
  other: reg.example/team/web:1.0.0 # {\"$imagepolicy\": \"other-ns:web\"}
  unknown: x:1 # {\"$imagepolicy\": \"shop:api\"}
";
    let (new, changes) = update("app/deploy.yaml", text, "shop", &chosen(None)).expect("changed");
    assert!(
        new.contains("    image: reg.example/team/web:1.2.0 # {\"$imagepolicy\": \"shop:web\"}\n"),
        "{new}"
    );
    assert!(
        new.contains("  - image: \"reg.example/team/web:1.2.0\" #"),
        "{new}"
    );
    assert!(new.contains("  tag: '1.2.0' #"), "{new}");
    assert!(new.contains("  repo: reg.example/team/web #"), "{new}");
    assert!(
        new.contains("  other: reg.example/team/web:1.0.0 #"),
        "another namespace's marker: {new}"
    );
    assert!(new.contains("  unknown: x:1 #"), "{new}");
    assert!(new.contains("  # a comment stays\n"));
    assert_eq!(changes.len(), 4);
    assert_eq!(
        changes[0],
        Change {
            file: "app/deploy.yaml".into(),
            line: 4,
            image: "reg.example/team/web".into(),
            old: "reg.example/team/web:1.0.0".into(),
            new: "reg.example/team/web:1.2.0".into(),
        }
    );
    // Once updated, nothing more changes.
    assert_eq!(update("app/deploy.yaml", &new, "shop", &chosen(None)), None);
    // Pinned: the digest goes with the tag.
    let digest = format!("sha256:{}", "b".repeat(64));
    let (pinned, _) = update("a.yaml", text, "shop", &chosen(Some(&digest))).expect("changed");
    assert!(
        pinned.contains(&format!("image: reg.example/team/web:1.2.0@{digest} #")),
        "{pinned}"
    );
}

#[test]
fn kustomization_images_get_their_new_tag() {
    let text = "\
resources: [deploy.yaml]
images:
- name: reg.example/team/web
  newTag: 1.0.0
- name: web
  newName: reg.example/team/web
- name: other
  newTag: 9.9.9
namePrefix: prod-
";
    let (new, changes) = update(
        "overlays/prod/kustomization.yaml",
        text,
        "shop",
        &chosen(None),
    )
    .expect("changed");
    assert_eq!(
        new,
        "\
resources: [deploy.yaml]
images:
- name: reg.example/team/web
  newTag: 1.2.0
- name: web
  newTag: 1.2.0
  newName: reg.example/team/web
- name: other
  newTag: 9.9.9
namePrefix: prod-
"
    );
    assert_eq!(changes.len(), 2);
    assert_eq!((changes[1].line, changes[1].old.as_str()), (6, ""));
    // Not a kustomization: its images: key is any other data.
    assert_eq!(update("app/values.yaml", text, "shop", &chosen(None)), None);
}

fn policy(rule: TagPolicy, filter: Option<(&str, &str)>) -> ImagePolicy {
    ImagePolicy {
        name: "web".into(),
        image: "reg.example/team/web".into(),
        policy: rule,
        filter_tags: filter.map(|(p, e)| FilterTags {
            pattern: p.into(),
            extract: Some(e.into()),
        }),
        ..Default::default()
    }
}

#[test]
fn policies_pick_tags_as_flux_image_policies_do() {
    let tags: Vec<String> = [
        "1.0.0",
        "1.2.0",
        "1.10.1-rc.1",
        "2.0.0",
        "main-abc-100",
        "main-def-99",
        "latest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let semver = |range: &str| TagPolicy {
        semver: Some(SemverPolicy {
            range: range.into(),
        }),
        ..Default::default()
    };
    assert_eq!(choose(&policy(semver("^1"), None), &tags).unwrap(), "1.2.0");
    assert_eq!(
        choose(&policy(semver(">=1"), None), &tags).unwrap(),
        "2.0.0"
    );
    let numerical = |order: &str| TagPolicy {
        numerical: Some(OrderPolicy {
            order: Some(order.into()),
        }),
        ..Default::default()
    };
    let filter = Some((r"^main-[a-f0-9]+-(?P<ts>\d+)$", "$ts"));
    assert_eq!(
        choose(&policy(numerical("asc"), filter), &tags).unwrap(),
        "main-abc-100"
    );
    assert_eq!(
        choose(&policy(numerical("desc"), filter), &tags).unwrap(),
        "main-def-99"
    );
    let alphabetical = TagPolicy {
        alphabetical: Some(OrderPolicy { order: None }),
        ..Default::default()
    };
    assert_eq!(
        choose(&policy(alphabetical, None), &tags).unwrap(),
        "main-def-99"
    );
    let none = choose(&policy(semver("^3"), None), &tags).unwrap_err();
    assert!(
        none.contains("no tag of reg.example/team/web qualifies") && none.contains("1.2.0"),
        "{none}"
    );
    assert!(choose(&policy(TagPolicy::default(), None), &tags).is_err());
}

#[test]
fn images_are_named_as_in_pods() {
    let url = registry_url("127.0.0.1:5000/team/web").unwrap();
    assert_eq!(
        (url.host.as_str(), url.repository.as_str()),
        ("127.0.0.1:5000", "team/web")
    );
    let hub = registry_url("nginx").unwrap();
    assert_eq!(
        (hub.host.as_str(), hub.repository.as_str()),
        ("registry-1.docker.io", "library/nginx")
    );
    assert!(
        registry_url("nginx:1.27")
            .unwrap_err()
            .contains("repository only")
    );
}

#[test]
fn the_commit_message_names_the_image_and_both_tags() {
    let change = |file: &str| Change {
        file: file.into(),
        line: 3,
        image: "reg.example/team/web".into(),
        old: "1.0.0".into(),
        new: "1.2.0".into(),
    };
    let message = commit_message(&[change("a.yaml"), change("b.yaml")]);
    assert!(
        message.starts_with("Update image reg.example/team/web: 1.0.0 -> 1.2.0\n"),
        "{message}"
    );
    assert!(message.contains("Files: a.yaml, b.yaml"), "{message}");
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_push_refused_because_the_branch_moved_is_done_again_on_the_new_head() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("origin.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let seed = dir.path().join("seed");
    std::fs::create_dir_all(seed.join("app")).unwrap();
    std::fs::write(
        seed.join("app/deploy.yaml"),
        "image: reg.example/team/web:1.0.0 # {\"$imagepolicy\": \"shop:web\"}\n",
    )
    .unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    git(
        &seed,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
    );
    git(&seed, &["add", "-A"]);
    git(
        &seed,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let target = Target {
        url: format!("file://{}", bare.display()),
        branch: "main".into(),
        author_name: "tether".into(),
        author_email: "tether@localhost".into(),
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let raced = std::sync::atomic::AtomicBool::new(false);
    let picks = chosen(None);
    let edit = |file: &str, text: &str| {
        // The first time, someone else pushes to the branch between the clone and the push.
        if !raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::fs::write(seed.join("README"), "other work\n").unwrap();
            git(&seed, &["add", "-A"]);
            git(
                &seed,
                &[
                    "-c",
                    "user.name=o",
                    "-c",
                    "user.email=o@x",
                    "commit",
                    "-q",
                    "-m",
                    "other",
                ],
            );
            git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
        }
        update(file, text, "shop", &picks)
    };
    let outcome = commit_and_push(&target, "app", &edit, &commit_message).unwrap();
    let Outcome::Pushed {
        commit,
        message,
        changes,
    } = outcome
    else {
        panic!("pushed: {outcome:?}");
    };
    assert_eq!(changes.len(), 1);
    assert!(message.contains("1.0.0 -> 1.2.0"), "{message}");
    // Both the other commit and the update are on the branch, the update on top.
    let check = dir.path().join("check");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            check.to_str().unwrap(),
        ],
    );
    let log = std::process::Command::new("git")
        .args(["log", "--format=%H %s"])
        .current_dir(&check)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.starts_with(&format!(
            "{commit} Update image reg.example/team/web: 1.0.0 -> 1.2.0"
        )),
        "{log}"
    );
    assert!(log.contains(" other\n"), "{log}");
    assert!(
        std::fs::read_to_string(check.join("app/deploy.yaml"))
            .unwrap()
            .contains(":1.2.0 #")
    );
    // Nothing left to change: no commit.
    let again = commit_and_push(
        &target,
        "app",
        &|f: &str, t: &str| update(f, t, "shop", &picks),
        &commit_message,
    )
    .unwrap();
    assert_eq!(again, Outcome::Unchanged);
    // edit_folder without writing reports the same changes and leaves the files.
    let before = std::fs::read_to_string(seed.join("app/deploy.yaml")).unwrap();
    let found = edit_folder(
        &seed,
        "app",
        &|f: &str, t: &str| update(f, t, "shop", &picks),
        false,
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        std::fs::read_to_string(seed.join("app/deploy.yaml")).unwrap(),
        before
    );
}

#[test]
fn a_commit_is_signed_with_an_openpgp_key_when_one_is_given() {
    use super::writeback::Signing;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "bot <bot@tether.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    let secret = dir.path().join("git.asc");
    std::fs::write(
        &secret,
        gpg(&["--armor", "--export-secret-keys", "bot@tether.invalid"]),
    )
    .unwrap();
    let bare = dir.path().join("origin.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let seed = dir.path().join("seed");
    std::fs::create_dir_all(seed.join("app")).unwrap();
    std::fs::write(
        seed.join("app/deploy.yaml"),
        "image: reg.example/team/web:1.0.0 # {\"$imagepolicy\": \"shop:web\"}\n",
    )
    .unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    git(&seed, &["add", "-A"]);
    git(
        &seed,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let target = Target {
        url: format!("file://{}", bare.display()),
        branch: "main".into(),
        author_name: "bot".into(),
        author_email: "bot@tether.invalid".into(),
        signing: Some(Signing::OpenPgp(secret)),
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let picks = chosen(None);
    let outcome = commit_and_push(
        &target,
        "app",
        &|f: &str, t: &str| update(f, t, "shop", &picks),
        &commit_message,
    )
    .unwrap();
    assert!(matches!(outcome, Outcome::Pushed { .. }), "{outcome:?}");
    // Checked with the key's own home: a good signature ("G", or "U": good, key not certified).
    let check = std::process::Command::new("git")
        .args(["log", "-1", "--format=%G? %GF"])
        .current_dir(&bare)
        .env("GNUPGHOME", &home)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(said.starts_with("G ") || said.starts_with("U "), "{said}");
    let _ = std::process::Command::new("gpgconf")
        .env("GNUPGHOME", &home)
        .args(["--kill", "gpg-agent"])
        .status();
}

#[test]
fn hostile_or_awkward_input_is_kept_safe() {
    // A marker on an empty value: nothing to set, no panic.
    for text in [
        "image: # {\"$imagepolicy\": \"shop:web\"}\n",
        "- # {\"$imagepolicy\": \"shop:web\"}\n",
    ] {
        assert_eq!(
            update("a.yaml", text, "shop", &chosen(None)),
            None,
            "{text}"
        );
    }
    // A numeric tag stays a string; quotes and comments are kept.
    let numeric = vec![Chosen {
        tag: "1.10".into(),
        ..chosen(None)[0].clone()
    }];
    let (new, _) = update(
        "a.yaml",
        "tag: 1.9 # {\"$imagepolicy\": \"shop:web:tag\"}\n",
        "shop",
        &numeric,
    )
    .unwrap();
    assert_eq!(
        new,
        "tag: \"1.10\" # {\"$imagepolicy\": \"shop:web:tag\"}\n"
    );
    let text = "\
images:
- name: reg.example/team/web
# pinned by hand
  newTag: '1.0.0' # the current release
- name: reg.example/team/web
  newTag: 3.0-rc # {\"$imagepolicy\": \"shop:canary:tag\"}
";
    let (new, changes) = update("kustomization.yaml", text, "shop", &numeric).unwrap();
    assert_eq!(
        new,
        "\
images:
- name: reg.example/team/web
# pinned by hand
  newTag: '1.10' # the current release
- name: reg.example/team/web
  newTag: 3.0-rc # {\"$imagepolicy\": \"shop:canary:tag\"}
",
        "a comment line does not end the entry; an entry with a marker is the marker's"
    );
    assert_eq!(changes.len(), 1);
    // Tags a registry answers that are not OCI tags are never chosen (nor written).
    let tags: Vec<String> = [
        "1.0.0",
        "1.9.0\n---\nkind: ClusterRoleBinding",
        "1.5.0: x",
        "-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let alphabetical = TagPolicy {
        alphabetical: Some(OrderPolicy { order: None }),
        ..Default::default()
    };
    assert_eq!(choose(&policy(alphabetical, None), &tags).unwrap(), "1.0.0");
}
