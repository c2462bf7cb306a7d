//! What `--ref` means: a branch, a tag, a commit id or a semver range over tags, and how
//! each is resolved against the refs a remote advertises. Pure: no network here.

use std::fmt;

/// A user's `--ref`, before it is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefSpec {
    /// The remote's default branch (its HEAD).
    Default,
    Branch(String),
    Tag(String),
    /// A full (40 hex digits) or abbreviated (at least 7) commit id.
    Commit(String),
    /// A semver range over tags; the highest matching tag wins.
    Semver(SemverRange),
    /// A bare name: a branch if the remote has one, else a tag, else a commit id.
    Name(String),
}

impl fmt::Display for RefSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefSpec::Default => write!(f, "the default branch"),
            RefSpec::Branch(b) => write!(f, "branch {b:?}"),
            RefSpec::Tag(t) => write!(f, "tag {t:?}"),
            RefSpec::Commit(c) => write!(f, "commit {c}"),
            RefSpec::Semver(r) => write!(f, "semver range {:?}", r.text),
            RefSpec::Name(n) => write!(f, "ref {n:?}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("--ref {given:?}: {reason}")]
    Invalid { given: String, reason: String },
}

impl RefSpec {
    /// Parses `--ref`. Explicit forms: `branch:NAME`, `tag:NAME`, `commit:SHA`,
    /// `semver:RANGE`, `refs/heads/NAME`, `refs/tags/NAME`. Otherwise a value with a range
    /// operator (`>=1.2.0 <2`, `^1.4`, `~2.1`, `1.x`) is a semver range, 40 hex digits
    /// a commit, and anything else a name resolved against the remote.
    pub fn parse(given: &str) -> Result<Self, RefError> {
        let given = given.trim();
        let invalid = |reason: &str| RefError::Invalid {
            given: given.to_string(),
            reason: reason.to_string(),
        };
        if given.is_empty() || given == "HEAD" {
            return Ok(RefSpec::Default);
        }
        let non_empty = |name: &str| {
            if name.is_empty() {
                Err(invalid("the name after the prefix is empty"))
            } else {
                Ok(name.to_string())
            }
        };
        if let Some(name) = given
            .strip_prefix("branch:")
            .or_else(|| given.strip_prefix("refs/heads/"))
        {
            return Ok(RefSpec::Branch(non_empty(name)?));
        }
        if let Some(name) = given
            .strip_prefix("tag:")
            .or_else(|| given.strip_prefix("refs/tags/"))
        {
            return Ok(RefSpec::Tag(non_empty(name)?));
        }
        if let Some(id) = given.strip_prefix("commit:") {
            return if is_commit_id(id) {
                Ok(RefSpec::Commit(id.to_ascii_lowercase()))
            } else {
                Err(invalid("a commit id is 7 to 40 hexadecimal digits"))
            };
        }
        if let Some(range) = given.strip_prefix("semver:") {
            return SemverRange::parse(range)
                .map(RefSpec::Semver)
                .map_err(|e| invalid(&e));
        }
        if given.len() == 40 && is_commit_id(given) {
            return Ok(RefSpec::Commit(given.to_ascii_lowercase()));
        }
        if looks_like_range(given) {
            return SemverRange::parse(given)
                .map(RefSpec::Semver)
                .map_err(|e| invalid(&e));
        }
        Ok(RefSpec::Name(given.to_string()))
    }
}

pub fn is_commit_id(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn looks_like_range(text: &str) -> bool {
    text.starts_with(['>', '<', '=', '^', '~'])
        || text.contains("||")
        || text == "*"
        || text
            .split('.')
            .any(|part| part == "x" || part == "X" || part == "*")
}

/// A semver range in the syntax Flux and Helm use: comparators separated by spaces or
/// commas are ANDed, `||` ORs groups (`>=1.2.0 <2`, `^1.4 || ~2.0.1`). Tags may carry a
/// `v` prefix. Pre-releases match only when a comparator names one, as in Cargo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemverRange {
    pub text: String,
    any_of: Vec<semver::VersionReq>,
}

impl SemverRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let mut any_of = Vec::new();
        for group in text.split("||") {
            let mut comparators: Vec<String> = Vec::new();
            let mut pending_op = String::new();
            for token in group.split([' ', ',']).filter(|t| !t.is_empty()) {
                let op_end = token
                    .find(|c: char| !"<>=~^".contains(c))
                    .unwrap_or(token.len());
                let (op, version) = token.split_at(op_end);
                pending_op.push_str(op);
                if version.is_empty() {
                    continue; // `>= 1.2`: the version is the next token
                }
                let version = version.strip_prefix(['v', 'V']).unwrap_or(version);
                comparators.push(format!("{}{version}", std::mem::take(&mut pending_op)));
            }
            if !pending_op.is_empty() {
                return Err(format!("operator {pending_op:?} has no version after it"));
            }
            if comparators.is_empty() {
                return Err("an empty range; write one like \">=1.2.0 <2\"".into());
            }
            let req = semver::VersionReq::parse(&comparators.join(", ")).map_err(|err| {
                format!(
                    "not a semver range: {err}; write one like \">=1.2.0 <2\", \"^1.4\" or \"~2.0\""
                )
            })?;
            any_of.push(req);
        }
        Ok(Self {
            text: text.to_string(),
            any_of,
        })
    }

    pub fn matches(&self, version: &semver::Version) -> bool {
        self.any_of.iter().any(|req| req.matches(version))
    }

    /// The highest tag that parses as a version (`v` prefix allowed) and matches.
    pub fn best<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> Option<(&'a str, semver::Version)> {
        tags.into_iter()
            .filter_map(|tag| {
                let version =
                    semver::Version::parse(tag.strip_prefix(['v', 'V']).unwrap_or(tag)).ok()?;
                self.matches(&version).then_some((tag, version))
            })
            .max_by(|a, b| a.1.cmp(&b.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_and_inferred_forms() {
        assert_eq!(RefSpec::parse("").unwrap(), RefSpec::Default);
        assert_eq!(
            RefSpec::parse("main").unwrap(),
            RefSpec::Name("main".into())
        );
        assert_eq!(
            RefSpec::parse("branch:v1").unwrap(),
            RefSpec::Branch("v1".into())
        );
        assert_eq!(
            RefSpec::parse("refs/tags/v1.0.0").unwrap(),
            RefSpec::Tag("v1.0.0".into())
        );
        let full = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            RefSpec::parse(full).unwrap(),
            RefSpec::Commit(full.to_ascii_lowercase())
        );
        // A short id could also be a branch name: resolved against the remote.
        assert_eq!(
            RefSpec::parse("abc1234").unwrap(),
            RefSpec::Name("abc1234".into())
        );
        assert_eq!(
            RefSpec::parse("commit:abc1234").unwrap(),
            RefSpec::Commit("abc1234".into())
        );
        assert!(matches!(
            RefSpec::parse(">=1.2.0 <2").unwrap(),
            RefSpec::Semver(_)
        ));
        assert!(matches!(RefSpec::parse("1.x").unwrap(), RefSpec::Semver(_)));
        assert!(RefSpec::parse("commit:xyz").is_err());
        assert!(RefSpec::parse("semver:>=").is_err());
        assert!(RefSpec::parse("tag:").is_err());
    }

    #[test]
    fn semver_range_picks_the_highest_matching_tag() {
        let tags = [
            "v1.0.0",
            "v1.2.0",
            "v1.9.3",
            "v2.0.0",
            "1.10.0-rc.1",
            "latest",
            "v1.4.0",
        ];
        let range = SemverRange::parse(">=1.2.0 <2").unwrap();
        assert_eq!(range.best(tags).map(|t| t.0), Some("v1.9.3"));
        let range = SemverRange::parse(">= v1.2.0, < 1.5").unwrap();
        assert_eq!(range.best(tags).map(|t| t.0), Some("v1.4.0"));
        let range = SemverRange::parse("^1.0 || >=2").unwrap();
        assert_eq!(range.best(tags).map(|t| t.0), Some("v2.0.0"));
        let range = SemverRange::parse("~1.2").unwrap();
        assert_eq!(range.best(tags).map(|t| t.0), Some("v1.2.0"));
        let range = SemverRange::parse(">=3").unwrap();
        assert_eq!(range.best(tags), None);
    }

    #[test]
    fn prereleases_match_only_when_asked_for() {
        let tags = ["v1.9.0", "v1.10.0-rc.1"];
        assert_eq!(
            SemverRange::parse(">=1.0").unwrap().best(tags).map(|t| t.0),
            Some("v1.9.0")
        );
        assert_eq!(
            SemverRange::parse(">=1.10.0-rc.0")
                .unwrap()
                .best(tags)
                .map(|t| t.0),
            Some("v1.10.0-rc.1")
        );
    }
}
