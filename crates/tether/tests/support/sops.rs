//! SOPS-encrypted files made by the real `sops` with keys from the real `age-keygen` (both
//! built by testenv).

use std::path::Path;
use std::process::Command;

/// A new age key: (its file, its public recipient).
pub fn age_key(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(name);
    let out = Command::new(super::tool("age-keygen"))
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen runs");
    assert!(out.status.success(), "age-keygen: {}", super::said(&out));
    let text = std::fs::read_to_string(&file).expect("key file");
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    (file, recipient)
}

/// Encrypts `file` in place for `recipient` with the real sops (`args` before the file,
/// e.g. `--encrypted-regex`).
pub fn sops_encrypt(file: &Path, recipient: &str, args: &[&str]) {
    let out = Command::new(super::tool("sops"))
        .args(["encrypt", "--in-place", "--age", recipient])
        .args(args)
        .arg(file)
        .output()
        .expect("sops runs");
    assert!(out.status.success(), "sops encrypt: {}", super::said(&out));
}

/// A new OpenPGP key with an encryption subkey, in a GnuPG home of its own under `dir`:
/// (that home, the fingerprint, the armored secret key as a user exports it).
pub fn pgp_key(dir: &Path, name: &str) -> (std::path::PathBuf, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).expect("gnupg home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(out.status.success(), "gpg {args:?}: {}", super::said(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let uid = format!("{name} <{name}@tether.invalid>");
    gpg(&["--quick-gen-key", &uid, "ed25519", "sign,cert", "never"]);
    let fingerprint = gpg(&["--with-colons", "--list-keys", &uid])
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| !f.is_empty()))
        .expect("gpg lists a fingerprint")
        .to_string();
    gpg(&["--quick-add-key", &fingerprint, "cv25519", "encr", "never"]);
    let secret = gpg(&[
        "--pinentry-mode",
        "loopback",
        "--armor",
        "--export-secret-keys",
        &fingerprint,
    ]);
    (home, fingerprint, secret)
}

/// Encrypts `file` in place with the real sops for the OpenPGP key `fingerprint` in the
/// GnuPG home `home`.
pub fn sops_encrypt_pgp(file: &Path, home: &Path, fingerprint: &str) {
    let out = Command::new(super::tool("sops"))
        .args(["encrypt", "--in-place", "--pgp", fingerprint])
        .arg(file)
        .env("GNUPGHOME", home)
        .output()
        .expect("sops runs");
    assert!(
        out.status.success(),
        "sops encrypt --pgp: {}",
        super::said(&out)
    );
}
