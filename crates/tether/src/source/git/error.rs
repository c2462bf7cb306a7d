//! What went wrong with a fetch, in words that say what to do ([`Error`]), and how the
//! errors of gix, ssh and HTTP servers are told apart: [`RULES`], a table from words and
//! signals to a [`Class`], read by [`classify`].

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use gix::url::Scheme;

use super::GitAuth;
use super::remote::known_hosts_path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} is not a Git URL or local path: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "{url}: the URL carries a password; put it in a file (--git-password-file) or an \
         environment variable (--git-password-env) instead"
    )]
    CredentialsInUrl { url: String },
    #[error(
        "{url}: cannot reach the Git server: {reason}; check the URL and that the server is up"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url}: no answer within {seconds} s; check the network or raise --git-timeout")]
    Timeout { url: String, seconds: u64 },
    #[error(
        "{url}: the Git server answered {status}; it is up but failing: check its logs, or retry later"
    )]
    ServerError { url: String, status: String },
    #[error("{url}: authentication failed: {reason}")]
    Auth { url: String, reason: String },
    #[error(
        "{url}: the SSH host key is not trusted: {reason}; add the server's key to {known_hosts} \
         (ssh-keyscan) or pass --known-hosts"
    )]
    HostKey {
        url: String,
        known_hosts: String,
        reason: String,
    },
    #[error("{url}: not a Git repository (or not exported by the server): {reason}")]
    NotARepository { url: String, reason: String },
    #[error("{url}: {spec} not found{available}")]
    RefNotFound {
        url: String,
        spec: String,
        available: String,
    },
    #[error("{url}: no tag matches semver range {range:?}{available}")]
    NoSemverMatch {
        url: String,
        range: String,
        available: String,
    },
    #[error("{url}: commit {commit}: {reason}")]
    Signature {
        url: String,
        commit: String,
        reason: String,
    },
    #[error("Git cache {path}: {reason}")]
    Cache { path: String, reason: String },
    #[error("{url}: {reason}")]
    Git { url: String, reason: String },
}

/// What classification reads of one failure.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    /// The remote's URL as messages show it.
    pub(super) url: String,
    pub(super) scheme: Scheme,
    /// Every message of the error's chain, outermost first, joined by ": " (for ssh, its
    /// own last words on stderr at the end).
    pub(super) text: String,
    /// The innermost message.
    pub(super) deepest: String,
    pub(super) signals: Signals,
}

/// What an error says besides its words: gix's classification of it, and the kind of the
/// first I/O error in its chain.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Signals {
    pub(super) io_kind: Option<ErrorKind>,
    pub(super) unauthenticated: bool,
    pub(super) not_found: bool,
    pub(super) can_retry: bool,
}

impl Facts {
    /// The facts of gix's `err`; `ssh_stderr` is what ssh wrote while it ran, if it ran.
    pub(super) fn of(
        err: &gix::Error,
        url: &str,
        scheme: Scheme,
        ssh_stderr: Option<&str>,
    ) -> Self {
        let chain = err.iter_errors().map(|e| e.to_string()).collect();
        let signals = Signals {
            io_kind: err
                .iter_errors()
                .find_map(|e| e.downcast_ref::<std::io::Error>())
                .map(|e| e.kind()),
            unauthenticated: err.is_unauthenticated(),
            not_found: err.is_not_found(),
            can_retry: err.can_retry(),
        };
        Self::new(url, scheme, chain, ssh_stderr, signals)
    }

    /// The facts of an error chain's messages (outermost first) and ssh's stderr.
    pub(super) fn new(
        url: &str,
        scheme: Scheme,
        mut chain: Vec<String>,
        ssh_stderr: Option<&str>,
        signals: Signals,
    ) -> Self {
        chain.extend(ssh_stderr.map(ssh_said).unwrap_or_default());
        Self {
            url: url.to_string(),
            scheme,
            text: chain.join(": "),
            deepest: chain.last().cloned().unwrap_or_default(),
            signals,
        }
    }
}

/// ssh's own words ("Host key verification failed.") beat "failed to fill whole buffer":
/// its last line, and a changed host key when its banner said so.
fn ssh_said(stderr: &str) -> Vec<String> {
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Please contact"))
        .collect();
    let mut words: Vec<String> = said.last().map(|l| l.to_string()).into_iter().collect();
    if said
        .iter()
        .any(|l| l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"))
    {
        words.push("remote host identification has changed".into());
    }
    words
}

/// The kinds of failure, each with its own advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Timeout,
    HostKey,
    /// Credentials over plain http, which gix refuses to send.
    CredentialsInClear,
    Auth,
    NotARepository,
    ServerError,
    Unreachable,
    /// None of the above: the error's own words.
    Other,
}

/// One row of [`RULES`]: the class of an error whose text (lower case) holds one of `words`
/// or whose facts show `signal`.
struct Rule {
    class: Class,
    words: &'static [&'static str],
    signal: fn(&Facts, &str) -> bool,
}

/// In order of precedence: the first row that matches gives the class. Classes differ per
/// transport, so the rows look at the words, the io error kind and gix's classification.
const RULES: &[Rule] = &[
    Rule {
        class: Class::Timeout,
        words: &["timed out"],
        signal: |f, _| {
            matches!(
                f.signals.io_kind,
                Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)
            )
        },
    },
    Rule {
        class: Class::HostKey,
        words: &[
            "host key verification failed",
            "remote host identification has changed",
        ],
        signal: |_, _| false,
    },
    Rule {
        class: Class::CredentialsInClear,
        words: &["will not send credentials in clear text"],
        signal: |_, _| false,
    },
    Rule {
        class: Class::Auth,
        words: &["permission denied", "authentication"],
        signal: |f, _| f.signals.unauthenticated,
    },
    Rule {
        class: Class::NotARepository,
        words: &[
            "not exported",
            "not a git repository",
            "does not appear to be a git repository",
            "repository not found",
        ],
        signal: |f, lower| {
            says_404(lower, &f.url) || (f.signals.not_found && f.scheme == Scheme::File)
        },
    },
    Rule {
        class: Class::ServerError,
        words: &[],
        signal: |f, _| http_server_error(&f.text).is_some(),
    },
    Rule {
        class: Class::Unreachable,
        words: &[
            "could not connect",
            "could not resolve",
            "connection refused",
        ],
        signal: |f, _| {
            f.signals.can_retry
                || f.signals.not_found
                || matches!(
                    f.signals.io_kind,
                    Some(
                        ErrorKind::ConnectionRefused
                            | ErrorKind::ConnectionReset
                            | ErrorKind::UnexpectedEof
                    )
                )
        },
    },
];

/// The class of the first row of [`RULES`] that `facts` match.
pub(super) fn classify(facts: &Facts) -> Class {
    let lower = facts.text.to_lowercase();
    RULES
        .iter()
        .find(|rule| {
            (rule.signal)(facts, &lower) || rule.words.iter().any(|word| lower.contains(word))
        })
        .map_or(Class::Other, |rule| rule.class)
}

/// What the fetch knew that an error's advice uses.
pub(super) struct Attempt<'a> {
    pub(super) auth: &'a GitAuth,
    pub(super) timeout: Duration,
    pub(super) started: Instant,
}

impl Facts {
    /// The error of `class`, with the advice its class gives.
    pub(super) fn into_error(self, class: Class, attempt: &Attempt) -> Error {
        let url = self.url;
        match class {
            Class::Timeout => Error::Timeout {
                url,
                seconds: attempt
                    .timeout
                    .as_secs()
                    .max(attempt.started.elapsed().as_secs()),
            },
            Class::HostKey => Error::HostKey {
                url,
                known_hosts: known_hosts_path(attempt.auth).display().to_string(),
                reason: self.deepest,
            },
            Class::CredentialsInClear => Error::Auth {
                url,
                reason:
                    "credentials are sent only over https, never plain http; use an https:// URL"
                        .into(),
            },
            Class::Auth => Error::Auth {
                url,
                reason: auth_advice(self.scheme, attempt.auth.password.is_some()).into(),
            },
            Class::NotARepository => Error::NotARepository {
                url,
                reason: self.deepest,
            },
            Class::ServerError => Error::ServerError {
                url,
                status: http_server_error(&self.text).unwrap_or_default(),
            },
            Class::Unreachable => Error::Unreachable {
                url,
                reason: self.deepest,
            },
            Class::Other => Error::Git {
                url,
                reason: self.text,
            },
        }
    }
}

fn auth_advice(scheme: Scheme, has_password: bool) -> &'static str {
    if scheme == Scheme::Ssh {
        "the server refused the SSH key; check --ssh-key and that the key is authorized"
    } else if has_password {
        "the server refused the user name and password/token"
    } else {
        "the server wants credentials; give --git-password-file or --git-password-env"
    }
}

/// Whether an error's text carries an HTTP 404 from the server: "404" standing alone, not
/// inside a number, and not in the URL (a port such as 40419 once made a refused
/// connection read as "not a Git repository").
fn says_404(lower: &str, url: &str) -> bool {
    let words = lower.replace(&url.to_lowercase(), "");
    words.match_indices("404").any(|(i, _)| {
        let before = words[..i].chars().next_back();
        let after = words[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// "500 Internal Server Error" when an HTTP Git server answered with a 5xx status (reqwest
/// says "HTTP status server error (500 Internal Server Error) for url (…)").
fn http_server_error(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("HTTP status server error (")?;
    let status = rest.split_once(')').map_or(rest, |(status, _)| status);
    Some(status.to_string())
}

#[cfg(test)]
mod tests;
