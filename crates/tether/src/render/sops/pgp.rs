//! SOPS data keys encrypted for OpenPGP recipients, opened with the real `gpg` (as tether
//! already checks OpenPGP commit signatures) in a private, temporary GnuPG home that holds
//! only the keys given: nothing of the user's keyring is read or changed.

use std::process::{Command, Stdio};

/// The plaintext of the armored OpenPGP `message`, opened with one of `secret_keys`
/// (armored secret key blocks); `None` when none opens it or gpg cannot be run (the error
/// is then the caller's: no key is a recipient).
pub fn decrypt(message: &str, secret_keys: &[String]) -> Option<Vec<u8>> {
    let home = crate::source::signature::GnupgHome::new().ok()?;
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
    // The home stops the agent gpg started when it is dropped, on every path.
    gpg(&["--decrypt"], message.as_bytes())
}
