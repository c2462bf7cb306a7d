//! The `pullRequest` generator (Argo CD's names): the open pull requests of a Gitea, GitHub
//! or GitLab repository, optionally only those carrying every label of `labels`, each a
//! parameter set: `number`, `branch`, `branch_slug`, `target_branch`, `target_branch_slug`,
//! `head_sha`, `head_short_sha` (8), `head_short_sha_7`, `title`, `author`. Pure: the
//! request to make ([`Query`]) and the reading of a host's answer ([`read`]); the agent sends.

use serde::Deserialize;
use serde_json::Value;

use super::Params;

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PullRequestGenerator {
    gitea: Option<Repository>,
    github: Option<Repository>,
    gitlab: Option<Project>,
    /// How often the pull requests are listed again (seconds; default 180).
    #[serde(default)]
    pub requeue_after_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Repository {
    owner: String,
    repo: String,
    /// Gitea: the server's address; GitHub: the API's (default https://api.github.com).
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    token_ref: Option<TokenRef>,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Project {
    project: String,
    /// The server's address (default https://gitlab.com).
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    token_ref: Option<TokenRef>,
    #[serde(default)]
    labels: Vec<String>,
}

/// A Secret of the set's namespace and the key that holds the token.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRef {
    pub secret_name: String,
    pub key: String,
}

/// One listing of open pull requests to make.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Query {
    /// The URL that lists them.
    pub url: String,
    /// The header that carries the token, and the text before it.
    pub auth: (&'static str, &'static str),
    pub token: Option<TokenRef>,
    gitlab: bool,
    labels: Vec<String>,
}

impl Query {
    /// How many pull requests a full page holds.
    pub fn page_size(&self) -> usize {
        if self.url.contains("limit=50") {
            50
        } else {
            100
        }
    }
}

impl PullRequestGenerator {
    /// The listing this generator needs; an error says what is missing.
    pub(super) fn query(&self, at: &str) -> Result<Query, String> {
        let trim = |u: &str| u.trim_end_matches('/').to_string();
        match (&self.gitea, &self.github, &self.gitlab) {
            (Some(r), None, None) => {
                let api = r.api.as_deref().map(trim).ok_or_else(|| {
                    format!("{at}.gitea.api: the Gitea server's address is needed")
                })?;
                Ok(Query {
                    url: format!(
                        "{api}/api/v1/repos/{}/{}/pulls?state=open&limit=50",
                        r.owner, r.repo
                    ),
                    auth: ("Authorization", "token "),
                    token: r.token_ref.clone(),
                    gitlab: false,
                    labels: r.labels.clone(),
                })
            }
            (None, Some(r), None) => {
                let api = r
                    .api
                    .as_deref()
                    .map(trim)
                    .unwrap_or_else(|| "https://api.github.com".into());
                Ok(Query {
                    url: format!(
                        "{api}/repos/{}/{}/pulls?state=open&per_page=100",
                        r.owner, r.repo
                    ),
                    auth: ("Authorization", "Bearer "),
                    token: r.token_ref.clone(),
                    gitlab: false,
                    labels: r.labels.clone(),
                })
            }
            (None, None, Some(p)) => {
                let api = p
                    .api
                    .as_deref()
                    .map(trim)
                    .unwrap_or_else(|| "https://gitlab.com".into());
                Ok(Query {
                    url: format!(
                        "{api}/api/v4/projects/{}/merge_requests?state=opened&per_page=100",
                        p.project.replace('/', "%2F")
                    ),
                    auth: ("PRIVATE-TOKEN", ""),
                    token: p.token_ref.clone(),
                    gitlab: true,
                    labels: p.labels.clone(),
                })
            }
            _ => Err(format!(
                "{at}: a pullRequest generator names exactly one of gitea, github, gitlab"
            )),
        }
    }
}

/// The parameter sets of a host's answer to `query` (the pull requests with every label).
pub fn read(query: &Query, answer: &Value) -> Result<Vec<Params>, String> {
    let items = answer
        .as_array()
        .ok_or_else(|| format!("{}: the answer is not a list of pull requests", query.url))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut sets = Vec::new();
    for item in items {
        let (number, branch, target, sha, author, labels) = if query.gitlab {
            let labels: Vec<String> = item["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            (
                &item["iid"],
                text(&item["source_branch"]),
                text(&item["target_branch"]),
                text(&item["sha"]),
                text(&item["author"]["username"]),
                labels,
            )
        } else {
            let labels: Vec<String> = item["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| text(&l["name"]))
                .collect();
            (
                &item["number"],
                text(&item["head"]["ref"]),
                text(&item["base"]["ref"]),
                text(&item["head"]["sha"]),
                text(&item["user"]["login"]),
                labels,
            )
        };
        if !query.labels.iter().all(|l| labels.contains(l)) {
            continue;
        }
        let number = number
            .as_u64()
            .ok_or_else(|| format!("{}: a pull request without a number", query.url))?;
        let mut params = Params::new();
        params.insert("number".into(), number.to_string());
        params.insert("branch_slug".into(), slug(&branch));
        params.insert("branch".into(), branch);
        params.insert("target_branch_slug".into(), slug(&target));
        params.insert("target_branch".into(), target);
        params.insert("head_short_sha".into(), sha.chars().take(8).collect());
        params.insert("head_short_sha_7".into(), sha.chars().take(7).collect());
        params.insert("head_sha".into(), sha);
        params.insert("title".into(), text(&item["title"]));
        params.insert("author".into(), author);
        sets.push(params);
    }
    sets.sort_by_key(|p| p["number"].parse::<u64>().unwrap_or_default());
    Ok(sets)
}

/// A branch name as a DNS label: lower case, `-` for anything else, at most 50 characters.
fn slug(branch: &str) -> String {
    let slug: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    slug.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn generator(value: Value) -> PullRequestGenerator {
        serde_json::from_value(value).expect("a generator")
    }

    #[test]
    fn each_host_is_listed_and_read_with_its_shapes() {
        let gitea = generator(json!({"gitea": {"owner": "team", "repo": "deploy", "api": "http://gitea.example/", "labels": ["preview"]}}))
            .query("g").expect("gitea");
        assert_eq!(
            gitea.url,
            "http://gitea.example/api/v1/repos/team/deploy/pulls?state=open&limit=50"
        );
        let answer = json!([
            {"number": 7, "title": "Add cache", "user": {"login": "ann"}, "labels": [{"name": "preview"}],
             "head": {"ref": "feature/Cache_2", "sha": "0123456789abcdef0123456789abcdef01234567"}, "base": {"ref": "main"}},
            {"number": 3, "title": "No label", "user": {"login": "bob"}, "labels": [],
             "head": {"ref": "x", "sha": "ffff"}, "base": {"ref": "main"}}
        ]);
        let sets = read(&gitea, &answer).expect("read");
        assert_eq!(sets.len(), 1, "only those with every label");
        assert_eq!(sets[0]["number"], "7");
        assert_eq!(sets[0]["branch_slug"], "feature-cache-2");
        assert_eq!(sets[0]["head_short_sha"], "01234567");
        assert_eq!(sets[0]["head_short_sha_7"], "0123456");
        assert_eq!(sets[0]["author"], "ann");
        let github = generator(json!({"github": {"owner": "team", "repo": "deploy"}}))
            .query("g")
            .expect("github");
        assert_eq!(
            github.url,
            "https://api.github.com/repos/team/deploy/pulls?state=open&per_page=100"
        );
        assert_eq!(github.auth, ("Authorization", "Bearer "));
        let gitlab = generator(
            json!({"gitlab": {"project": "group/deploy", "api": "https://gitlab.example"}}),
        )
        .query("g")
        .expect("gitlab");
        assert_eq!(
            gitlab.url,
            "https://gitlab.example/api/v4/projects/group%2Fdeploy/merge_requests?state=opened&per_page=100"
        );
        let mr = json!([{"iid": 4, "source_branch": "fix", "target_branch": "main", "sha": "abc", "title": "Fix", "author": {"username": "cy"}, "labels": []}]);
        let sets = read(&gitlab, &mr).expect("read");
        assert_eq!(
            (sets[0]["number"].as_str(), sets[0]["branch"].as_str()),
            ("4", "fix")
        );
        let err = generator(json!({}))
            .query("spec.generators[0].pullRequest")
            .expect_err("none");
        assert!(
            err.contains("exactly one of gitea, github, gitlab"),
            "{err}"
        );
        assert!(
            generator(json!({"gitea": {"owner": "a", "repo": "b"}}))
                .query("g")
                .expect_err("no api")
                .contains("gitea.api")
        );
    }
}
