//! SOPS data keys encrypted for OpenPGP recipients, opened with the real `gpg` (as tether
//! already checks OpenPGP commit signatures) in a private, temporary GnuPG home that holds
//! only the keys given: nothing of the user's keyring is read or changed.

use std::process::{Command, Stdio};

/// The plaintext of the armored OpenPGP `message`, opened with one of `secret_keys`
/// (armored secret key blocks); `None` when none opens it or gpg cannot be run (the error
/// is then the caller's: no key is a recipient).
pub fn decrypt(message: &str, secret_keys: &[String]) -> Option<Vec<u8>> {
    let home = tempfile::Builder::new()
        .prefix("tether-gnupg-")
        .tempdir()
        .ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    let gpg = |args: &[&str], input: &[u8]| -> Option<Vec<u8>> {
        use std::io::Write;
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--no-tty",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        let _ = writer.join();
        out.status.success().then_some(out.stdout)
    };
    for key in secret_keys {
        gpg(&["--import"], key.as_bytes())?;
    }
    let plain = gpg(&["--decrypt"], message.as_bytes());
    // gpg leaves an agent running for the home: stop it before the home goes.
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home.path())
        .args(["--kill", "gpg-agent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    plain
}
