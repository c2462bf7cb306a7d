//! The Git source against real repositories and real servers on loopback: file://,
//! git daemon, smart HTTP(S) with basic auth, sshd with key auth; refs of every kind;
//! the cache; signatures; and the errors a user meets.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::git::{GitDaemon, GitRepo, GpgKey, HttpGitServer, SshGitServer, SshKey};
use tether::render::{RenderOptions, render_plain};
use tether::source::git::{Error, GitAuth, GitSource};
use tether::source::reference::RefSpec;
use tether::source::signature::SignaturePolicy;

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

/// A repository with history: v1.0.0 (annotated), v1.2.0 (lightweight), v2.0.0, a branch.
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    repo: GitRepo,
    first: String,
    middle: String,
    head: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write("apps/web/cm.yaml", &cm("web-v1"));
    let first = repo.commit("first");
    repo.tag_annotated("v1.0.0");
    repo.write("apps/web/cm.yaml", &cm("web-v12"));
    let middle = repo.commit("middle");
    repo.tag_lightweight("v1.2.0");
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("apps/web/extra.yaml", &cm("feature-only"));
    repo.commit("feature work");
    repo.checkout("main");
    repo.write("apps/web/cm.yaml", &cm("web-v2"));
    let head = repo.commit("second major");
    repo.tag_annotated("v2.0.0");
    Fixture {
        _dir: dir,
        root,
        repo,
        first,
        middle,
        head,
    }
}

fn source(url: &str, reference: &str, cache: &Path) -> GitSource {
    let mut source = GitSource::new(url, RefSpec::parse(reference).expect("valid ref"));
    source.cache_dir = cache.to_path_buf();
    source.timeout = Duration::from_secs(20);
    source
}

fn names(source: &GitSource) -> Vec<String> {
    let (_, tree, _) = source.fetch().expect("fetch succeeds");
    render_plain(&tree, "apps/web", &RenderOptions::default())
        .expect("renders")
        .into_iter()
        .map(|o| o.key.name)
        .collect()
}

#[test]
fn every_kind_of_ref_resolves_over_file_urls() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let fetch = |r: &str| source(&url, r, cache.path()).fetch().expect("fetch").0;

    assert_eq!(fetch("").commit, f.head, "default branch");
    assert_eq!(fetch("").from_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(fetch("main").commit, f.head);
    assert_eq!(
        fetch("v1.0.0").commit,
        f.first,
        "annotated tag peels to its commit"
    );
    assert_eq!(fetch("tag:v1.2.0").commit, f.middle, "lightweight tag");
    assert_eq!(fetch(&f.middle).commit, f.middle, "full commit id");
    assert_eq!(
        fetch(&f.first[..10]).commit,
        f.first,
        "abbreviated id of a non-tip commit"
    );
    let semver = fetch(">=1.0.0 <2");
    assert_eq!(semver.commit, f.middle);
    assert_eq!(semver.from_ref.as_deref(), Some("refs/tags/v1.2.0"));
    assert_eq!(fetch("semver:^2").commit, f.head);

    let feature = source(&url, "feature", cache.path());
    assert_eq!(names(&feature), ["web-v12", "feature-only"]);
    // A local path is a file:// URL.
    let local = source(f.repo.path.to_str().expect("utf-8"), "v1.0.0", cache.path());
    assert_eq!(names(&local), ["web-v1"]);
}

#[test]
fn a_cached_revision_is_not_fetched_again() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());

    let (_, _, cold) = source(&url, "main", cache.path())
        .fetch()
        .expect("cold fetch");
    assert!(cold.contacted_remote);
    assert!(cold.objects_received > 0, "{cold:?}");

    let packs_before = pack_files(cache.path());
    let (_, _, warm) = source(&url, "main", cache.path())
        .fetch()
        .expect("warm fetch");
    assert!(
        warm.contacted_remote,
        "a branch may have moved: the refs are listed"
    );
    assert_eq!(warm.objects_received, 0, "but no object is transferred");
    // Checked on disk too, not only by what the fetch says of itself: no new pack.
    assert_eq!(pack_files(cache.path()), packs_before);

    let (_, _, pinned) = source(&url, &f.head, cache.path())
        .fetch()
        .expect("pinned fetch");
    assert!(
        !pinned.contacted_remote,
        "a cached full commit id needs no network"
    );

    // A new commit on the branch is fetched incrementally.
    f.repo.write("apps/web/new.yaml", &cm("new"));
    let newer = f.repo.commit("newer");
    let (revision, _, moved) = source(&url, "main", cache.path())
        .fetch()
        .expect("fetch after push");
    assert_eq!(revision.commit, newer);
    assert!(
        moved.objects_received > 0 && moved.objects_received < cold.objects_received + 10,
        "{moved:?}"
    );
}

/// The pack files in every cached repository: a fetch that receives objects adds one.
fn pack_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut packs = Vec::new();
    for repo in std::fs::read_dir(cache).expect("cache").flatten() {
        if let Ok(entries) = std::fs::read_dir(repo.path().join("objects/pack")) {
            packs.extend(entries.flatten().map(|e| e.path()));
        }
    }
    packs.sort();
    packs
}

#[test]
fn many_fetches_do_not_pile_up_pack_files() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let (mut most, mut early) = (0, String::new());
    for i in 0..40 {
        f.repo.write("apps/web/cm.yaml", &cm(&format!("web-{i}")));
        let commit = f.repo.commit(&format!("change {i}"));
        let source = source(&url, "main", cache.path());
        let (revision, tree, stats) = source.fetch().expect("fetch succeeds");
        assert_eq!(revision.commit, commit);
        if i == 3 {
            early = commit;
        }
        assert!(stats.objects_received > 0, "fetch {i} received nothing");
        let objects = render_plain(&tree, "apps/web", &RenderOptions::default()).expect("renders");
        assert!(objects.iter().any(|o| o.key.name == format!("web-{i}")));
        let packs = pack_files(cache.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .count();
        most = most.max(packs);
    }
    // Every fetch added a pack; past 32 they were merged.
    assert!(most <= 33, "{most} pack files at once");
    // An earlier revision is read from the merged pack, without asking the remote.
    let (_, tree, stats) = source(&url, &early, cache.path())
        .fetch()
        .expect("fetch succeeds");
    assert!(!stats.contacted_remote);
    let objects = render_plain(&tree, "apps/web", &RenderOptions::default()).expect("renders");
    assert_eq!(objects[0].key.name, "web-3");
    assert_sound(cache.path());
}

#[test]
fn concurrent_fetches_of_one_repository_share_the_cache_safely() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let refs = ["main", "v1.0.0", "v1.2.0", "feature", "main", "v2.0.0"];
    let handles: Vec<_> = refs
        .iter()
        .map(|r| {
            let source = source(&url, r, cache.path());
            std::thread::spawn(move || {
                source
                    .fetch()
                    .map(|(rev, tree, _)| (rev.commit, tree.len()))
            })
        })
        .collect();
    for (reference, handle) in refs.iter().zip(handles) {
        let (commit, files) = handle
            .join()
            .expect("no panic")
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(commit.len(), 40);
        assert!(files >= 1, "{reference}");
    }
    assert_sound(cache.path());
}

#[test]
fn polls_of_one_repository_list_it_once_and_fetch_nothing() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let listings = std::sync::Arc::new(tether::source::git::Listings::default());
    let polls: Vec<_> = [
        "main", "main", "v2.0.0", "main", "v1.0.0", "main", "main", "main",
    ]
    .iter()
    .map(|reference| {
        let mut source = source(&url, reference, cache.path());
        source.listing_max_age = Duration::from_secs(60);
        source.listings = listings.clone();
        std::thread::spawn(move || source.list_remote())
    })
    .collect();
    let commits: Vec<String> = polls
        .into_iter()
        .map(|poll| {
            let revision = poll.join().expect("no panic").expect("listed");
            revision.expect("the ref is listed").commit
        })
        .collect();
    assert_eq!(commits[0], f.head);
    assert_eq!(commits[2], f.head, "v2.0.0 is the head, peeled");
    assert_eq!(commits[4], f.first, "v1.0.0, peeled");
    assert_eq!(listings.taken(), 1, "eight polls at once, one listing");
    // Nothing was fetched: the commit comes with the first fetch.
    let (_, _, stats) = source(&url, "main", cache.path()).fetch().expect("fetch");
    assert!(stats.objects_received > 0, "{stats:?}");
    // A ref the remote lacks is for the fetch to explain.
    let mut missing = source(&url, "no-such-branch", cache.path());
    missing.listings = listings.clone();
    missing.listing_max_age = Duration::from_secs(60);
    assert!(missing.list_remote().expect("listed").is_none());
    assert_eq!(listings.taken(), 1, "the listing is reused");
}

#[test]
fn a_listed_commit_already_cached_is_read_beside_other_readers() {
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let listings = std::sync::Arc::new(tether::source::git::Listings::default());
    let poll = || {
        let mut source = source(&url, "main", cache.path());
        source.listing_max_age = Duration::from_secs(60);
        source.listings = listings.clone();
        source
    };
    let (first, _, stats) = poll().fetch().expect("first fetch");
    assert!(stats.objects_received > 0);
    // Another reader holds the repository's lock shared (a fetch would need it alone).
    let lock_file = std::fs::read_dir(cache.path())
        .expect("cache")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "lock"))
        .expect("the repository's lock file");
    let reader = std::fs::File::open(&lock_file).expect("lock file");
    reader.lock_shared().expect("shared lock");
    let source = poll();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(source.fetch().map(|(rev, _, stats)| (rev, stats)));
    });
    let (again, stats) = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the listed commit is read while another reader holds the lock")
        .expect("fetch");
    assert_eq!(again.commit, first.commit);
    assert_eq!(again.from_ref, first.from_ref);
    assert!(!stats.contacted_remote, "{stats:?}");
    reader.unlock().expect("unlock");
}

#[test]
fn a_render_records_what_it_read_and_a_revision_that_holds_the_same_there_is_known() {
    use tether::source::recording::Recording;
    let f = fixture();
    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", f.repo.path.display());
    let render = |commit: &str| {
        let (_, tree, _) = source(&url, commit, cache.path()).fetch().expect("fetch");
        let (tree, recorded) = Recording::new(Box::new(tree));
        render_plain(&tree, "apps/web", &RenderOptions::default()).expect("renders");
        recorded.take().expect("a commit's tree has ids")
    };
    let tree_at = |commit: &str| source(&url, commit, cache.path()).fetch().expect("fetch").1;
    let read = render(&f.head);
    assert!(!read.is_empty());
    assert!(read.same_in(&tree_at(&f.head)));
    // Another folder changes: the same.
    f.repo.write("apps/other/cm.yaml", &cm("other"));
    let elsewhere = f.repo.commit("another folder");
    assert!(read.same_in(&tree_at(&elsewhere)), "a change elsewhere");
    // A file of the folder changes, one is added, one is removed: not the same.
    f.repo.write("apps/web/cm.yaml", &cm("web-v3"));
    let changed = f.repo.commit("changed");
    assert!(!read.same_in(&tree_at(&changed)), "a file changed");
    let read = render(&changed);
    f.repo.write("apps/web/more.yaml", &cm("more"));
    let added = f.repo.commit("added");
    assert!(!read.same_in(&tree_at(&added)), "a file added");
    let read = render(&added);
    f.repo.remove("apps/web/more.yaml");
    let removed = f.repo.commit("removed");
    assert!(!read.same_in(&tree_at(&removed)), "a file removed");
    // A folder on disk has no ids: nothing is recorded.
    let dir = tether::source::tree::DirTree::new(&f.repo.path).expect("dir tree");
    let (tree, recorded) = Recording::new(Box::new(dir));
    render_plain(&tree, "apps/web", &RenderOptions::default()).expect("renders");
    assert!(recorded.take().is_none());
}

/// `git fsck` finds the cached repository sound.
fn assert_sound(cache: &Path) {
    let fsck = std::process::Command::new("git")
        .arg("-C")
        .arg(
            std::fs::read_dir(cache)
                .expect("cache")
                .flatten()
                .find(|e| e.path().is_dir())
                .expect("repo")
                .path(),
        )
        .args(["fsck", "--no-dangling"])
        .output()
        .expect("git fsck runs");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn git_daemon_serves_refs_and_reports_unknown_ones() {
    let f = fixture();
    let daemon = GitDaemon::start(&f.root);
    let cache = tempfile::tempdir().expect("cache");
    let url = daemon.url("deploy");
    assert_eq!(
        source(&url, "v2.0.0", cache.path())
            .fetch()
            .expect("fetch")
            .0
            .commit,
        f.head
    );
    assert_eq!(names(&source(&url, "v1.0.0", cache.path())), ["web-v1"]);

    let err = source(&url, "release-9", cache.path())
        .fetch()
        .expect_err("unknown ref");
    let text = err.to_string();
    assert!(matches!(err, Error::RefNotFound { .. }), "{text}");
    assert!(
        text.contains("\"release-9\" not found") && text.contains("feature, main"),
        "{text}"
    );

    let err = source(&url, ">=5", cache.path())
        .fetch()
        .expect_err("no such version");
    assert!(matches!(err, Error::NoSemverMatch { .. }), "{err}");
    assert!(err.to_string().contains("v1.0.0, v1.2.0, v2.0.0"), "{err}");

    let err = source(&daemon.url("missing"), "", cache.path())
        .fetch()
        .expect_err("no repo");
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
}

#[test]
fn https_with_basic_auth_and_plain_http_without() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret-token\n").expect("write");
    let https = HttpGitServer::start(
        &f.root,
        Some(("alice", &password_file)),
        Some(&dir.path().join("tls")),
    );
    let cache = tempfile::tempdir().expect("cache");
    let url = https.url("deploy");
    let with_auth = |password: Option<&str>| {
        let mut s = source(&url, "v1.2.0", cache.path());
        s.auth = GitAuth {
            username: Some("alice".into()),
            password: password.map(str::to_string),
            ca_file: https.ca_cert.clone(),
            ..Default::default()
        };
        s
    };
    assert_eq!(
        with_auth(Some("s3cret-token"))
            .fetch()
            .expect("right password")
            .0
            .commit,
        f.middle
    );

    let err = with_auth(Some("wrong"))
        .fetch()
        .expect_err("wrong password");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password never shows: {err}"
    );
    let err = with_auth(None).fetch().expect_err("no password");
    assert!(
        matches!(err, Error::Auth { .. }) && err.to_string().contains("--git-password-file"),
        "{err}"
    );

    // Without the test CA the certificate is not trusted.
    let mut untrusted = with_auth(Some("s3cret-token"));
    untrusted.auth.ca_file = None;
    untrusted.cache_dir = tempfile::tempdir().expect("cache").keep();
    let err = untrusted.fetch().expect_err("unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let plain = HttpGitServer::start(&f.root, None, None);
    assert_eq!(
        source(&plain.url("deploy"), "main", cache.path())
            .fetch()
            .expect("anonymous http")
            .0
            .commit,
        f.head
    );
    let mut leaky = source(
        &plain.url("deploy"),
        "main",
        tempfile::tempdir().expect("c").path(),
    );
    leaky.auth.password = Some("s3cret-token".into());
    let guarded = HttpGitServer::start(&f.root, Some(("alice", &password_file)), None);
    leaky.url = guarded.url("deploy");
    let err = leaky.fetch().expect_err("no credentials over plain http");
    assert!(err.to_string().contains("only over https"), "{err}");
}

#[test]
fn ssh_with_key_auth_and_strict_host_keys() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let sshd = SshGitServer::start(&dir.path().join("sshd"));
    let cache = tempfile::tempdir().expect("cache");
    let url = sshd.url(&f.repo.path);
    let with_keys = |key: &Path, known_hosts: &Path| {
        let mut s = source(&url, "v1.0.0", cache.path());
        s.auth = GitAuth {
            ssh_key: Some(key.to_path_buf()),
            known_hosts: Some(known_hosts.to_path_buf()),
            ..Default::default()
        };
        s
    };
    let good = with_keys(&sshd.client_key.private, &sshd.known_hosts);
    assert_eq!(good.fetch().expect("ssh fetch").0.commit, f.first);
    assert_eq!(names(&good), ["web-v1"]);

    let stranger = SshKey::generate(dir.path(), "stranger");
    let err = with_keys(&stranger.private, &sshd.known_hosts)
        .fetch()
        .expect_err("unauthorized key");
    assert!(matches!(err, Error::Auth { .. }), "{err}");

    let impostor = SshKey::generate(dir.path(), "impostor_host");
    let wrong_hosts = dir.path().join("wrong_known_hosts");
    let key = impostor.public_text();
    let mut parts = key.split_whitespace();
    std::fs::write(
        &wrong_hosts,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            parts.next().expect("type"),
            parts.next().expect("key")
        ),
    )
    .expect("write");
    let err = with_keys(&sshd.client_key.private, &wrong_hosts)
        .fetch()
        .expect_err("wrong host key");
    assert!(matches!(err, Error::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong_known_hosts"), "{err}");
}

#[test]
fn signed_commits_are_required_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = GitRepo::init(&dir.path().join("served"), "signed");
    let signer = SshKey::generate(dir.path(), "signer");
    let other = SshKey::generate(dir.path(), "other");
    let gpg = GpgKey::generate(dir.path(), "releaser");
    repo.write("apps/web/cm.yaml", &cm("unsigned"));
    let unsigned = repo.commit("unsigned");
    repo.write("apps/web/cm.yaml", &cm("ssh-signed"));
    let ssh_signed = repo.commit_ssh_signed("ssh signed", &signer.private);
    repo.write("apps/web/cm.yaml", &cm("gpg-signed"));
    let gpg_signed = repo.commit_gpg_signed("gpg signed", &gpg);
    let gpg_key_file = dir.path().join("releaser.asc");
    std::fs::write(&gpg_key_file, &gpg.public_armored).expect("write");

    let cache = tempfile::tempdir().expect("cache");
    let url = format!("file://{}", repo.path.display());
    let verified = |commit: &str, keys: &[&Path]| {
        let mut s = source(&url, commit, cache.path());
        let files: Vec<_> = keys.iter().map(|p| p.to_path_buf()).collect();
        s.verify = Some(SignaturePolicy::from_files(&files).expect("keys parse"));
        s.fetch().map(|(rev, _, _)| rev.commit)
    };
    assert_eq!(
        verified(&ssh_signed, &[&signer.public]).expect("signed by the trusted key"),
        ssh_signed
    );
    assert_eq!(
        verified(&gpg_signed, &[&gpg_key_file]).expect("OpenPGP"),
        gpg_signed
    );
    assert_eq!(
        verified(&ssh_signed, &[&other.public, &signer.public]).expect("one of several keys"),
        ssh_signed
    );

    let err = verified(&ssh_signed, &[&other.public]).expect_err("signed by someone else");
    assert!(matches!(err, Error::Signature { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("is not signed by any of the 1 trusted key"),
        "{err}"
    );
    let err = verified(&unsigned, &[&signer.public]).expect_err("unsigned");
    assert!(err.to_string().contains("is not signed"), "{err}");
    let err = verified(&gpg_signed, &[&signer.public]).expect_err("gpg-signed, only ssh trusted");
    assert!(
        err.to_string().contains("only SSH keys are trusted"),
        "{err}"
    );
}

#[test]
fn unreachable_servers_and_silent_servers_fail_fast() {
    let cache = tempfile::tempdir().expect("cache");
    let closed = support::free_port();
    for url in [
        format!("git://127.0.0.1:{closed}/x"),
        format!("https://127.0.0.1:{closed}/x"),
    ] {
        let err = source(&url, "main", cache.path())
            .fetch()
            .expect_err("nothing listens");
        assert!(matches!(err, Error::Unreachable { .. }), "{url}: {err}");
    }

    // A server that accepts and never answers: the timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    for url in [
        format!("git://127.0.0.1:{port}/x"),
        format!("http://127.0.0.1:{port}/x"),
    ] {
        let mut s = source(&url, "main", cache.path());
        s.timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = s.fetch().expect_err("silent server");
        assert!(matches!(err, Error::Timeout { .. }), "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{url}: took {:?}",
            started.elapsed()
        );
    }

    let plain = tempfile::tempdir().expect("plain folder");
    let err = source(plain.path().to_str().expect("utf-8"), "", cache.path())
        .fetch()
        .expect_err("not a repo");
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
}
