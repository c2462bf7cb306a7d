//! `tether plan --comment-on`: the Markdown plan posted to a pull request where reviewers read
//! it (Gitea, GitHub, GitLab), one comment per application and namespace that each run
//! updates instead of adding another (found by a hidden marker). A plan longer than a host
//! takes is cut, with a note that the whole plan is in the CI log. The request shapes are
//! pure ([`Host`]); [`post`] sends them. Secrets were redacted by the plan already.

use serde_json::{Value, json};

/// The longest comment body posted (GitHub takes 65,536 characters; GitLab and Gitea more).
pub const LIMIT: usize = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    Gitea,
    Github,
    Gitlab,
}

/// Where the comment goes: a host's API, a repository and a pull request.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub provider: Provider,
    /// The API's root (`https://gitea.example/api/v1`, `https://api.github.com`,
    /// `https://gitlab.example/api/v4`).
    pub api: String,
    /// `owner/name` (GitLab: the project's full path, groups included).
    pub repository: String,
    pub number: u64,
}

/// One request to a host (the token is added by [`post`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub body: Option<Value>,
}

impl Host {
    /// The host of `provider` at `url` (its web address; none: github.com or gitlab.com).
    pub fn new(
        provider: Provider,
        url: Option<&str>,
        repository: &str,
        number: u64,
    ) -> Result<Host, String> {
        let base = url.map(|u| u.trim_end_matches('/').to_string());
        let api = match (provider, base) {
            (Provider::Github, None) => "https://api.github.com".to_string(),
            (Provider::Github, Some(b)) if b == "https://github.com" => {
                "https://api.github.com".into()
            }
            (Provider::Github, Some(b)) => format!("{b}/api/v3"),
            (Provider::Gitlab, None) => "https://gitlab.com/api/v4".to_string(),
            (Provider::Gitlab, Some(b)) => format!("{b}/api/v4"),
            (Provider::Gitea, Some(b)) => format!("{b}/api/v1"),
            (Provider::Gitea, None) => {
                return Err(
                    "--comment-on gitea needs --comment-url, the Gitea server's address".into(),
                );
            }
        };
        let repository = repository.trim_matches('/').to_string();
        if repository.split('/').filter(|p| !p.is_empty()).count() < 2 {
            return Err(format!("--comment-repo {repository:?}: give owner/name"));
        }
        Ok(Host {
            provider,
            api,
            repository,
            number,
        })
    }

    fn comments(&self) -> String {
        match self.provider {
            Provider::Gitea => format!(
                "{}/repos/{}/issues/{}/comments",
                self.api, self.repository, self.number
            ),
            Provider::Github => format!(
                "{}/repos/{}/issues/{}/comments?per_page=100",
                self.api, self.repository, self.number
            ),
            // Oldest first, as the others list them (GitLab's default is newest first).
            Provider::Gitlab => format!(
                "{}/projects/{}/merge_requests/{}/notes?per_page=100&sort=asc",
                self.api,
                self.repository.replace('/', "%2F"),
                self.number
            ),
        }
    }

    /// Lists page `page` (from 1) of the pull request's comments (Gitea lists all at once).
    pub fn list(&self, page: u32) -> Request {
        let url = match self.provider {
            Provider::Gitea => self.comments(),
            _ => format!("{}&page={page}", self.comments()),
        };
        Request {
            method: "GET",
            url,
            body: None,
        }
    }

    /// Adds a comment.
    pub fn create(&self, body: &str) -> Request {
        let url = self
            .comments()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        Request {
            method: "POST",
            url,
            body: Some(json!({"body": body})),
        }
    }

    /// Replaces comment `id`.
    pub fn update(&self, id: u64, body: &str) -> Request {
        let (method, url) = match self.provider {
            Provider::Gitea => (
                "PATCH",
                format!(
                    "{}/repos/{}/issues/comments/{id}",
                    self.api, self.repository
                ),
            ),
            Provider::Github => (
                "PATCH",
                format!(
                    "{}/repos/{}/issues/comments/{id}",
                    self.api, self.repository
                ),
            ),
            Provider::Gitlab => (
                "PUT",
                format!(
                    "{}/projects/{}/merge_requests/{}/notes/{id}",
                    self.api,
                    self.repository.replace('/', "%2F"),
                    self.number
                ),
            ),
        };
        Request {
            method,
            url,
            body: Some(json!({"body": body})),
        }
    }

    /// The header that carries the token, and the text before it.
    pub fn auth(&self) -> (&'static str, &'static str) {
        match self.provider {
            Provider::Gitea => ("Authorization", "token "),
            Provider::Github => ("Authorization", "Bearer "),
            Provider::Gitlab => ("PRIVATE-TOKEN", ""),
        }
    }
}

/// The hidden line that finds this application's comment again.
pub fn marker(app: &str, namespace: &str) -> String {
    format!("<!-- tether-plan app={app} namespace={namespace} -->")
}

/// The comment: the marker and the plan, cut at [`LIMIT`] with a note when longer (at a
/// line, and with any open code fence closed).
pub fn body(markdown: &str, marker: &str) -> String {
    let room = LIMIT.saturating_sub(marker.len() + 200);
    if markdown.len() <= room {
        return format!("{marker}\n{markdown}");
    }
    let mut cut = room;
    while !markdown.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &markdown[..markdown[..cut].rfind('\n').unwrap_or(cut)];
    let close = unclosed(head);
    format!(
        "{marker}\n{head}{close}\n\n**The plan is cut here ({} of {} characters).** The whole plan is in the CI log (`tether plan -o markdown`).\n",
        head.len(),
        markdown.len()
    )
}

/// What closes what `head` left open: its code fence (as long as the one that opened it),
/// then its `<details>` blocks.
fn unclosed(head: &str) -> String {
    let mut fence: Option<usize> = None;
    let (mut opened, mut closed) = (0, 0);
    for line in head.lines() {
        let run = line.chars().take_while(|c| *c == '`').count();
        match fence {
            Some(open) if run >= open && line[run..].trim().is_empty() => fence = None,
            Some(_) => {}
            None if run >= 3 => fence = Some(run),
            None if line.starts_with("<details>") => opened += 1,
            None if line.starts_with("</details>") => closed += 1,
            None => {}
        }
    }
    let mut close = String::new();
    if let Some(run) = fence {
        close.push('\n');
        close.push_str(&"`".repeat(run));
    }
    for _ in closed..opened {
        close.push_str("\n</details>");
    }
    close
}

/// The id of the comment that carries `marker`, among those a list returned.
pub fn find(listed: &Value, marker: &str) -> Option<u64> {
    listed
        .as_array()?
        .iter()
        .find(|c| c["body"].as_str().is_some_and(|b| b.starts_with(marker)))
        .and_then(|c| c["id"].as_u64())
}

/// Posts `body` to the pull request: replaces the comment `marker` finds, or adds one.
/// Returns the comment's id and whether it was replaced.
pub async fn post(
    host: &Host,
    token: &str,
    body: &str,
    marker: &str,
) -> Result<(u64, bool), String> {
    let client = crate::source::git::host_api_client(std::time::Duration::from_secs(30))?;
    // Page by page until the marker is found or a page is not full (at most 20 pages).
    let mut found = None;
    for page in 1..=20 {
        let listed = send(&client, host, token, &host.list(page)).await?;
        found = find(&listed, marker);
        let full = listed.as_array().is_some_and(|l| l.len() >= 100);
        if found.is_some() || !full || host.provider == Provider::Gitea {
            break;
        }
    }
    let (request, replaced) = match found {
        Some(id) => (host.update(id, body), true),
        None => (host.create(body), false),
    };
    let written = send(&client, host, token, &request).await?;
    let id = written["id"]
        .as_u64()
        .ok_or_else(|| format!("{} answered without a comment id", request.url))?;
    Ok((id, replaced))
}

async fn send(
    client: &reqwest::Client,
    host: &Host,
    token: &str,
    request: &Request,
) -> Result<Value, String> {
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
    let (header, prefix) = host.auth();
    let mut builder = client
        .request(method, &request.url)
        .header(header, format!("{prefix}{token}"))
        .header("Accept", "application/json");
    if let Some(body) = &request.body {
        builder = builder
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("{} {}: {e}", request.method, request.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let said: String = text.chars().take(300).collect();
        return Err(format!(
            "{} {} answered {status}: {said}",
            request.method, request.url
        ));
    }
    serde_json::from_str(&text)
        .map_err(|e| format!("{} {}: not JSON: {e}", request.method, request.url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_gets_its_own_request_shapes() {
        let github = Host::new(Provider::Github, None, "team/deploy", 7).expect("github");
        assert_eq!(
            github.list(1).url,
            "https://api.github.com/repos/team/deploy/issues/7/comments?per_page=100&page=1"
        );
        assert_eq!(
            github.create("x").url,
            "https://api.github.com/repos/team/deploy/issues/7/comments"
        );
        let update = github.update(42, "y");
        assert_eq!(
            (update.method, update.url.as_str()),
            (
                "PATCH",
                "https://api.github.com/repos/team/deploy/issues/comments/42"
            )
        );
        assert_eq!(update.body, Some(json!({"body": "y"})));
        assert_eq!(github.auth(), ("Authorization", "Bearer "));
        let enterprise = Host::new(
            Provider::Github,
            Some("https://ghe.example/"),
            "team/deploy",
            7,
        )
        .expect("ghe");
        assert_eq!(enterprise.api, "https://ghe.example/api/v3");
        let gitlab = Host::new(
            Provider::Gitlab,
            Some("https://gitlab.example"),
            "group/sub/deploy",
            3,
        )
        .expect("gitlab");
        assert_eq!(
            gitlab.list(2).url,
            "https://gitlab.example/api/v4/projects/group%2Fsub%2Fdeploy/merge_requests/3/notes?per_page=100&sort=asc&page=2"
        );
        let update = gitlab.update(9, "z");
        assert_eq!(
            (update.method, update.url.as_str()),
            (
                "PUT",
                "https://gitlab.example/api/v4/projects/group%2Fsub%2Fdeploy/merge_requests/3/notes/9"
            )
        );
        assert_eq!(gitlab.auth(), ("PRIVATE-TOKEN", ""));
        let gitea = Host::new(
            Provider::Gitea,
            Some("http://127.0.0.1:3000"),
            "tether/deploy",
            1,
        )
        .expect("gitea");
        assert_eq!(
            gitea.create("x").url,
            "http://127.0.0.1:3000/api/v1/repos/tether/deploy/issues/1/comments"
        );
        assert!(
            Host::new(Provider::Gitea, None, "a/b", 1)
                .unwrap_err()
                .contains("--comment-url")
        );
        assert!(
            Host::new(Provider::Github, None, "deploy", 1)
                .unwrap_err()
                .contains("owner/name")
        );
    }

    #[test]
    fn the_comment_is_found_again_and_a_long_plan_is_cut_with_its_fence_closed() {
        let marker = marker("web", "shop");
        let listed =
            json!([{"id": 1, "body": "lgtm"}, {"id": 5, "body": format!("{marker}\nold plan")}]);
        assert_eq!(find(&listed, &marker), Some(5));
        assert_eq!(find(&listed, &super::marker("db", "shop")), None);
        let short = body("## Plan\n", &marker);
        assert!(short.starts_with(&marker) && short.ends_with("## Plan\n"));
        // A four-backtick fence inside a <details>: both are closed where the plan is cut.
        let long = format!(
            "## Plan\n<details>\n````diff\n```inner\n{}",
            "+ line\n".repeat(20_000)
        );
        let cut = body(&long, &marker);
        assert!(cut.len() <= LIMIT, "{}", cut.len());
        assert!(
            cut.contains("The plan is cut here")
                && cut.contains("\n````\n</details>\n\n**The plan"),
            "{}",
            &cut[cut.len() - 300..]
        );
    }
}
