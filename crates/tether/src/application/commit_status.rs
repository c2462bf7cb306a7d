//! The request a commit status makes: for an Application's `spec.commitStatus` and a sync's
//! outcome, the HTTP request each Git host (GitHub, GitLab, Gitea) takes ([`request_for`]),
//! as a value. Sending it is the agent's (`agent::commit_status`); checking a spec uses it
//! too, so a wrong provider or repository is refused when the Application is read.

use serde_json::{Value, json};

use super::CommitStatusSpec;

/// The longest description GitHub takes.
const DESCRIPTION_LIMIT: usize = 140;

/// A sync's outcome as a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The revision is applied (or was already as Git says).
    Success,
    /// The sync of the revision failed.
    Failure,
}

/// One status to set: what a host's API is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub commit: String,
    pub state: State,
    pub description: String,
    /// The status's name: the same one is replaced by the next.
    pub context: String,
}

/// An HTTP request to a Git host (the token is added when it is sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub body: Value,
    /// The header that carries the token, and the text before it.
    pub auth_header: &'static str,
    pub auth_prefix: &'static str,
}

/// The request that sets `status` on `spec.provider`'s host, for a repository cloned from
/// `repo_url`; `Err` says what in the spec is wrong.
pub fn request_for(
    spec: &CommitStatusSpec,
    repo_url: &str,
    status: &Status,
) -> Result<Request, String> {
    // What the spec does not say is read from the repository's URL.
    let parsed = split_repo_url(repo_url);
    let repository = match &spec.repository {
        Some(repository) => repository.trim_matches('/').to_string(),
        None => parsed.clone()?.2,
    };
    if repository.split('/').filter(|p| !p.is_empty()).count() < 2 {
        return Err(format!(
            "spec.commitStatus: cannot tell the repository (owner/name) from {repo_url:?}; set \
             spec.commitStatus.repository"
        ));
    }
    let host = Host::of(&spec.provider)?;
    let base = match spec.api_url.as_deref() {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let (scheme, hostname, _) = parsed?;
            host.default_api(&scheme, &hostname)
        }
    };
    Ok(host.request(&base, &repository, status))
}

/// The Git hosts whose commit statuses tether sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    GitHub,
    Gitea,
    GitLab,
}

impl Host {
    fn of(provider: &str) -> Result<Self, String> {
        match provider {
            "github" => Ok(Self::GitHub),
            "gitea" => Ok(Self::Gitea),
            "gitlab" => Ok(Self::GitLab),
            other => Err(format!(
                "spec.commitStatus.provider {other:?} is not github, gitlab or gitea"
            )),
        }
    }

    /// The API's base URL on a host reached at `scheme://host`.
    fn default_api(self, scheme: &str, host: &str) -> String {
        match self {
            Self::GitHub if host == "github.com" => "https://api.github.com".into(),
            // GitHub Enterprise Server.
            Self::GitHub => format!("{scheme}://{host}/api/v3"),
            Self::Gitea => format!("{scheme}://{host}/api/v1"),
            Self::GitLab => format!("{scheme}://{host}/api/v4"),
        }
    }

    /// The request to the API at `base` that sets `status` on `repository` (owner/name).
    fn request(self, base: &str, repository: &str, status: &Status) -> Request {
        // One line (a host shows it beside the commit), cut to the length GitHub takes.
        let description: String = status
            .description
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(DESCRIPTION_LIMIT)
            .collect();
        let commit = &status.commit;
        let (success, failure) = match self {
            Self::GitLab => ("success", "failed"),
            Self::GitHub | Self::Gitea => ("success", "failure"),
        };
        let state = match status.state {
            State::Success => success,
            State::Failure => failure,
        };
        match self {
            Self::GitHub | Self::Gitea => Request {
                url: format!("{base}/repos/{repository}/statuses/{commit}"),
                body: json!({
                    "state": state,
                    "description": description,
                    "context": status.context,
                }),
                auth_header: "Authorization",
                auth_prefix: if self == Self::GitHub {
                    "Bearer "
                } else {
                    "token "
                },
            },
            Self::GitLab => Request {
                url: format!(
                    "{base}/projects/{}/statuses/{commit}",
                    repository.replace('/', "%2F")
                ),
                body: json!({
                    "state": state,
                    "description": description,
                    "name": status.context,
                }),
                auth_header: "PRIVATE-TOKEN",
                auth_prefix: "",
            },
        }
    }
}

/// (scheme for the API, host with port, repository path without `.git`) of a Git URL:
/// `https://host/owner/name.git`, `ssh://git@host:22/owner/name`, `git@host:owner/name`.
fn split_repo_url(url: &str) -> Result<(String, String, String), String> {
    let bad = || {
        format!(
            "spec.commitStatus: the repository URL {url:?} names no host; set \
             spec.commitStatus.apiURL and repository"
        )
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => {
            // scp-like: git@host:owner/name
            let (host, path) = url.split_once(':').ok_or_else(bad)?;
            let host = host.rsplit('@').next().unwrap_or(host);
            return Ok(("https".into(), host.to_string(), trim_repo(path)));
        }
    };
    let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if host.is_empty() {
        return Err(bad());
    }
    let api_scheme = if scheme == "http" { "http" } else { "https" };
    // An SSH port is not the web's.
    let host = if scheme == "https" || scheme == "http" {
        host.to_string()
    } else {
        host.split(':').next().unwrap_or(host).to_string()
    };
    Ok((api_scheme.into(), host, trim_repo(path)))
}

fn trim_repo(path: &str) -> String {
    let path = path.trim_matches('/');
    path.strip_suffix(".git").unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: &str) -> CommitStatusSpec {
        CommitStatusSpec {
            provider: provider.into(),
            secret_ref: crate::application::LocalObjectReference {
                name: "token".into(),
            },
            api_url: None,
            repository: None,
            context: None,
        }
    }

    fn status(state: State) -> Status {
        Status {
            commit: "0123abc".into(),
            state,
            description: "x".repeat(200),
            context: "tether/shop/web".into(),
        }
    }

    #[test]
    fn each_host_gets_its_own_url_auth_and_states() {
        let github = request_for(
            &spec("github"),
            "https://github.com/team/deploy.git",
            &status(State::Success),
        )
        .expect("github");
        assert_eq!(
            github.url,
            "https://api.github.com/repos/team/deploy/statuses/0123abc"
        );
        assert_eq!(github.body["state"], "success");
        assert_eq!(github.body["context"], "tether/shop/web");
        assert_eq!(github.body["description"].as_str().map(str::len), Some(140));
        assert_eq!(
            (github.auth_header, github.auth_prefix),
            ("Authorization", "Bearer ")
        );

        let gitlab = request_for(
            &spec("gitlab"),
            "git@gitlab.example.com:group/sub/deploy.git",
            &status(State::Failure),
        )
        .expect("gitlab");
        assert_eq!(
            gitlab.url,
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fdeploy/statuses/0123abc"
        );
        assert_eq!(gitlab.body["state"], "failed");
        assert_eq!(gitlab.body["name"], "tether/shop/web");
        assert_eq!(gitlab.auth_header, "PRIVATE-TOKEN");

        let gitea = request_for(
            &spec("gitea"),
            "http://127.0.0.1:3000/team/deploy.git",
            &status(State::Failure),
        )
        .expect("gitea");
        assert_eq!(
            gitea.url,
            "http://127.0.0.1:3000/api/v1/repos/team/deploy/statuses/0123abc"
        );
        assert_eq!(gitea.body["state"], "failure");
        assert_eq!(gitea.auth_prefix, "token ");

        let enterprise = request_for(
            &spec("github"),
            "ssh://git@github.corp.example:2222/team/deploy",
            &status(State::Success),
        )
        .expect("enterprise");
        assert_eq!(
            enterprise.url,
            "https://github.corp.example/api/v3/repos/team/deploy/statuses/0123abc"
        );
    }

    #[test]
    fn each_hosts_request_has_its_exact_shape() {
        let status = Status {
            description: "applied\n  3 objects".into(),
            ..status(State::Failure)
        };
        let url = "https://git.example.com/team/deploy.git";
        let shapes = [
            (
                "github",
                "https://git.example.com/api/v3/repos/team/deploy/statuses/0123abc",
                json!({"state": "failure", "description": "applied 3 objects", "context": "tether/shop/web"}),
                ("Authorization", "Bearer "),
            ),
            (
                "gitea",
                "https://git.example.com/api/v1/repos/team/deploy/statuses/0123abc",
                json!({"state": "failure", "description": "applied 3 objects", "context": "tether/shop/web"}),
                ("Authorization", "token "),
            ),
            (
                "gitlab",
                "https://git.example.com/api/v4/projects/team%2Fdeploy/statuses/0123abc",
                json!({"state": "failed", "description": "applied 3 objects", "name": "tether/shop/web"}),
                ("PRIVATE-TOKEN", ""),
            ),
        ];
        for (provider, url_wanted, body, (auth_header, auth_prefix)) in shapes {
            let request = request_for(&spec(provider), url, &status).expect(provider);
            let wanted = Request {
                url: url_wanted.into(),
                body,
                auth_header,
                auth_prefix,
            };
            assert_eq!(request, wanted, "{provider}");
            // The body is sent as text: its keys keep this order.
            assert_eq!(
                request.body.to_string(),
                wanted.body.to_string(),
                "{provider}"
            );
        }
        // An unknown provider is named before an unreadable URL.
        let mut unknown = spec("bitbucket");
        unknown.repository = Some("team/deploy".into());
        let error = request_for(&unknown, "not a url", &status).expect_err("unknown");
        assert!(error.contains("bitbucket"), "{error}");
    }

    #[test]
    fn an_explicit_api_url_and_repository_win_and_bad_specs_say_why() {
        let mut explicit = spec("gitea");
        explicit.api_url = Some("http://127.0.0.1:9/api/v1/".into());
        explicit.repository = Some("/org/app/".into());
        let request =
            request_for(&explicit, "file:///srv/git/x", &status(State::Success)).expect("explicit");
        assert_eq!(
            request.url,
            "http://127.0.0.1:9/api/v1/repos/org/app/statuses/0123abc"
        );
        let unknown = request_for(&spec("bitbucket"), "https://h/o/r", &status(State::Success))
            .expect_err("unknown provider");
        assert!(unknown.contains("not github, gitlab or gitea"), "{unknown}");
        let no_repository = request_for(&spec("github"), "https://h/r", &status(State::Success))
            .expect_err("one path segment");
        assert!(
            no_repository.contains("spec.commitStatus.repository"),
            "{no_repository}"
        );
    }
}
