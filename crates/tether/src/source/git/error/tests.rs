//! [`classify`] against the words gix, ssh and HTTP servers really say: each row was
//! captured from a real failure (gix 0.90 with reqwest and rustls, OpenSSH 9, git daemon,
//! a loopback HTTP server answering each status), and says the class tether gives it.

use super::*;
use crate::source::git::url::normalize_url;

/// gix's text up to the point where ssh's process ended (its stderr follows).
const SSH_EOF: &str = "Transport handshake failed: An IO error occurred when talking to the \
                       server: failed to fill whole buffer";

const CHANGED_HOST_KEY: &str = "\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:4Pgnm5PaVJrML6J4MrY1KL9iy7sxHwYMm/1ktIxoRKA.
Please contact your system administrator.
Add correct host key in /tmp/cap/bad_known to get rid of this message.
Offending ED25519 key in /tmp/cap/bad_known:1
  remove with:
  ssh-keygen -f \"/tmp/cap/bad_known\" -R \"[127.0.0.1]:12222\"
Host key for [127.0.0.1]:12222 has changed and you have requested strict checking.
Host key verification failed.
";

/// One captured failure: the URL, gix's text, ssh's stderr, gix's signals, and the class.
struct Row {
    url: &'static str,
    text: &'static str,
    ssh_stderr: Option<&'static str>,
    signals: Signals,
    class: Class,
}

fn signals(io_kind: Option<ErrorKind>, can_retry: bool) -> Signals {
    Signals {
        io_kind,
        can_retry,
        ..Signals::default()
    }
}

fn rows() -> Vec<Row> {
    let other = Some(ErrorKind::Other);
    let eof = Some(ErrorKind::UnexpectedEof);
    let row = |url, text, ssh_stderr, signals, class| Row {
        url,
        text,
        ssh_stderr,
        signals,
        class,
    };
    vec![
        row(
            "http://127.0.0.1:1/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: error sending request for url (http://127.0.0.1:1/x.git/info/refs?service=git-upload-pack): client error (Connect): tcp connect error: Connection refused (os error 111)",
            None,
            signals(other, true),
            Class::Unreachable,
        ),
        row(
            "https://nohost.invalid/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: error sending request for url (https://nohost.invalid/x.git/info/refs?service=git-upload-pack): client error (Connect): dns error: error resolving DNS: failed to lookup address information: Name or service not known",
            None,
            signals(other, true),
            Class::Unreachable,
        ),
        row(
            "https://127.0.0.1:18443/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: error sending request for url (https://127.0.0.1:18443/x.git/info/refs?service=git-upload-pack): client error (Connect): invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
            None,
            signals(other, true),
            Class::Unreachable,
        ),
        row(
            "http://127.0.0.1:18080/401/x.git",
            "No credentials were returned at all as if the credential helper isn't functioning unknowingly",
            None,
            Signals {
                unauthenticated: true,
                ..Signals::default()
            },
            Class::Auth,
        ),
        row(
            "http://127.0.0.1:18080/401/x.git",
            "Transport handshake failed: The transport layer refuses to use a given identity: Will not send credentials in clear text over http",
            None,
            Signals::default(),
            Class::CredentialsInClear,
        ),
        // gix marks a 403 PermissionDenied, not unauthenticated: today it keeps its own words.
        row(
            "http://127.0.0.1:18080/403/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: Received HTTP status 403: HTTP status client error (403 Forbidden) for url (http://127.0.0.1:18080/403/x.git/info/refs?service=git-upload-pack)",
            None,
            signals(other, false),
            Class::Other,
        ),
        row(
            "http://127.0.0.1:18080/404/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: Received HTTP status 404: HTTP status client error (404 Not Found) for url (http://127.0.0.1:18080/404/x.git/info/refs?service=git-upload-pack)",
            None,
            signals(other, false),
            Class::NotARepository,
        ),
        row(
            "http://127.0.0.1:18080/500/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: Received HTTP status 500: HTTP status server error (500 Internal Server Error) for url (http://127.0.0.1:18080/500/x.git/info/refs?service=git-upload-pack)",
            None,
            signals(Some(ErrorKind::ConnectionAborted), true),
            Class::ServerError,
        ),
        row(
            "http://127.0.0.1:18080/503/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: Received HTTP status 503: HTTP status server error (503 Service Unavailable) for url (http://127.0.0.1:18080/503/x.git/info/refs?service=git-upload-pack)",
            None,
            signals(Some(ErrorKind::ConnectionAborted), true),
            Class::ServerError,
        ),
        row(
            "http://127.0.0.1:18080/hang/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: error sending request for url (http://127.0.0.1:18080/hang/x.git/info/refs?service=git-upload-pack): operation timed out",
            None,
            signals(other, true),
            Class::Timeout,
        ),
        // The server closed the connection without an answer, or in the middle of one.
        row(
            "http://127.0.0.1:18080/close/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: error sending request for url (http://127.0.0.1:18080/close/x.git/info/refs?service=git-upload-pack): client error (SendRequest): connection closed before message completed",
            None,
            signals(other, false),
            Class::Other,
        ),
        row(
            "http://127.0.0.1:18080/eof/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: request or response body error: error reading a body from connection: end of file before message length reached",
            None,
            signals(other, false),
            Class::Other,
        ),
        row(
            "ssh://git@127.0.0.1:12222/x.git",
            SSH_EOF,
            Some(
                "No ED25519 host key is known for [127.0.0.1]:12222 and you have requested strict checking.\nHost key verification failed.\n",
            ),
            signals(eof, false),
            Class::HostKey,
        ),
        row(
            "ssh://git@127.0.0.1:12222/x.git",
            SSH_EOF,
            Some(CHANGED_HOST_KEY),
            signals(eof, false),
            Class::HostKey,
        ),
        row(
            "ssh://git@127.0.0.1:12222/x.git",
            SSH_EOF,
            Some("git@127.0.0.1: Permission denied (publickey).\n"),
            signals(eof, false),
            Class::Auth,
        ),
        row(
            "ssh://git@nohost.invalid/x.git",
            SSH_EOF,
            Some("ssh: Could not resolve hostname nohost.invalid: Name or service not known\n"),
            signals(eof, false),
            Class::Unreachable,
        ),
        row(
            "ssh://git@127.0.0.1:1/x.git",
            SSH_EOF,
            Some("ssh: connect to host 127.0.0.1 port 1: Connection refused\n"),
            signals(eof, false),
            Class::Unreachable,
        ),
        // GitHub's words over ssh for a repository it does not have (or hides).
        row(
            "ssh://git@127.0.0.1:12222/x.git",
            SSH_EOF,
            Some("ERROR: Repository not found.\n"),
            signals(eof, false),
            Class::NotARepository,
        ),
        row(
            "git://127.0.0.1:19418/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: access denied or repository not exported: /x.git",
            None,
            signals(other, false),
            Class::NotARepository,
        ),
        // Our git:// socket's read timeout.
        row(
            "git://127.0.0.1:18080/hang/x.git",
            "Transport handshake failed: An IO error occurred when talking to the server: Resource temporarily unavailable (os error 11)",
            None,
            signals(Some(ErrorKind::WouldBlock), false),
            Class::Timeout,
        ),
        row(
            "file:///tmp/cap/notrepo",
            "Could not verify that \"file:///tmp/cap/notrepo\" is a valid git directory before attempting to use it: Could not retrieve metadata of \"/tmp/cap/notrepo/.git\": No such file or directory (os error 2)",
            None,
            Signals {
                io_kind: Some(ErrorKind::NotFound),
                not_found: true,
                ..Signals::default()
            },
            Class::NotARepository,
        ),
    ]
}

fn facts(row: &Row) -> Facts {
    let scheme = normalize_url(row.url).expect("a valid URL").scheme;
    let chain = vec![row.text.to_string()];
    Facts::new(row.url, scheme, chain, row.ssh_stderr, row.signals)
}

#[test]
fn real_failures_get_the_class_they_get_today() {
    let rows = rows();
    assert!(rows.len() >= 12);
    let wrong: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let got = classify(&facts(row));
            (got != row.class).then(|| {
                let said = row.ssh_stderr.unwrap_or(row.text);
                format!("{}: {said:?}: {got:?}, not {:?}", row.url, row.class)
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn ssh_says_why_in_its_own_words() {
    let changed = Facts::new(
        "ssh://git@h/r.git",
        Scheme::Ssh,
        vec![SSH_EOF.into()],
        Some(CHANGED_HOST_KEY),
        Signals::default(),
    );
    assert_eq!(changed.deepest, "Host key verification failed.");
    // The banner's own lines start with '@' and are dropped before ssh_said looks for
    // "REMOTE HOST IDENTIFICATION HAS CHANGED" in them, so that note is not added today.
    assert_eq!(
        changed.text,
        format!("{SSH_EOF}: Host key verification failed.")
    );
    let refused = Facts::new(
        "ssh://git@h/r.git",
        Scheme::Ssh,
        vec![SSH_EOF.into()],
        Some("git@h: Permission denied (publickey).\n"),
        Signals::default(),
    );
    let attempt = Attempt {
        auth: &GitAuth::default(),
        timeout: Duration::from_secs(1),
        started: Instant::now(),
    };
    let class = classify(&refused);
    let message = refused.into_error(class, &attempt).to_string();
    assert!(
        message.contains("the server refused the SSH key"),
        "{message}"
    );
}

#[test]
fn a_404_is_the_servers_not_the_urls() {
    let url = "https://127.0.0.1:40419/x";
    assert!(!says_404(
        "https://127.0.0.1:40419/x: connection refused (os error 111)",
        url
    ));
    assert!(!says_404("io error: port 14045 is closed", "git://h/r"));
    assert!(says_404(
        "https://127.0.0.1:40419/x: received http status 404",
        url
    ));
    assert!(says_404("http 404 not found", "https://h/r"));
}

#[test]
fn a_5xx_answer_is_a_failing_server_not_an_unreachable_one() {
    assert_eq!(
        http_server_error(
            "An IO error occurred when talking to the server: HTTP status server error \
             (503 Service Unavailable) for url (http://h/r/info/refs?service=git-upload-pack)"
        )
        .as_deref(),
        Some("503 Service Unavailable")
    );
    assert_eq!(http_server_error("connection refused (os error 111)"), None);
}
