//! YAML and JSON documents → JSON values, with kubectl's YAML semantics and hard limits.
//!
//! kubectl reads manifests as YAML 1.1 (`0644` is 420, unquoted `yes` is true, merge keys
//! work); duplicate keys are an error here (kubectl rejects them too since 1.19). Alias
//! expansion, nesting and size are bounded, so a YAML bomb is an error, not an outage.

use serde_saphyr::{DuplicateKeyPolicy, MergeKeyPolicy, Spanned};

/// One document of a file, as JSON, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: serde_json::Value,
    pub line: u64,
}

/// A parse failure at a position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Limits against hostile input; the defaults fit any real manifest with room to spare.
#[derive(Debug, Clone, Copy)]
pub struct YamlLimits {
    /// Upper bound on alias (`*x`) uses in one file.
    pub max_aliases: usize,
    /// Upper bound on the events (nodes) that alias expansion may replay in one file.
    pub max_replayed_events: usize,
    /// Upper bound on the nesting depth of flow collections.
    pub max_depth: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        Self {
            max_aliases: 1_000,
            max_replayed_events: 100_000,
            max_depth: 100,
        }
    }
}

fn options(limits: &YamlLimits) -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.merge_keys = MergeKeyPolicy::Merge;
    options.strict_booleans = false;
    options.with_snippet = false;
    options.alias_limits.max_total_replayed_events = limits.max_replayed_events;
    options.alias_limits.max_alias_expansions_per_anchor = limits.max_aliases;
    let mut budget = options.budget.unwrap_or_default();
    budget.max_aliases = limits.max_aliases;
    budget.flow_nesting_limit = limits.max_depth;
    options.budget = Some(budget);
    options
}

/// Parses every document of a YAML stream (JSON is YAML too). Empty documents (nothing
/// but comments between two `---`) are skipped; explicit `null` documents are kept as
/// `Null`. The line of each document is what identifies it to a user.
pub fn parse_documents(text: &str, limits: &YamlLimits) -> Result<Vec<Document>, ParseError> {
    let docs: Vec<Option<Spanned<serde_json::Value>>> =
        serde_saphyr::from_str_multiple_with_options(text, options(limits)).map_err(|err| {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ParseError {
                line,
                column,
                message: describe(&err, limits),
            }
        })?;
    Ok(docs
        .into_iter()
        .map(|doc| match doc {
            Some(spanned) => Document {
                line: spanned.referenced.line().max(1),
                value: spanned.value,
            },
            None => Document {
                value: serde_json::Value::Null,
                line: 0,
            },
        })
        .collect())
}

/// What went wrong, for a user: the limits a hostile file breaks and the mistakes people
/// make are named with what to do; anything else is the parser's own first line, without
/// the position (the caller prints it as `file:line:column`).
fn describe(err: &serde_saphyr::Error, limits: &YamlLimits) -> String {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach;
    let mut inner = err.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    match inner {
        E::DuplicateMappingKey { key, .. } => {
            let key = key
                .as_deref()
                .map(|k| format!(" {k:?}"))
                .unwrap_or_default();
            return format!(
                "duplicate key{key}: a key may appear once in a mapping; remove or rename one"
            );
        }
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::Budget {
            breach: BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. },
            ..
        } => {
            return format!(
                "aliases (*name) expand to more than {} nodes or {} uses (a YAML bomb?); write the values out instead",
                limits.max_replayed_events, limits.max_aliases
            );
        }
        E::Budget {
            breach: BudgetBreach::Depth { depth },
            ..
        } => {
            return format!(
                "nested more than {} levels deep; no Kubernetes object needs that (a nesting bomb?)",
                depth.saturating_sub(1)
            );
        }
        E::Budget { breach, .. } => {
            return format!("too large to read safely ({breach:?}); split the file");
        }
        _ => {}
    }
    let text = err.to_string();
    let line = text.lines().next().unwrap_or(&text).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // "… at line 6, column 10" repeats the position the caller prints.
    let line = match line.rfind(" at line ") {
        Some(at) if at > 0 && line[at..].contains(", column ") => &line[..at],
        _ => line,
    };
    if line.contains("recursion limit exceeded") {
        return format!(
            "brackets nested more than {} levels deep; no Kubernetes object needs that (a nesting bomb?)",
            limits.max_depth
        );
    }
    if line.contains("\\u{0}") {
        return "a NUL byte, which YAML does not allow (a binary file?); remove it".into();
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Vec<serde_json::Value> {
        parse_documents(text, &YamlLimits::default())
            .expect("valid YAML")
            .into_iter()
            .map(|d| d.value)
            .collect()
    }

    fn parse_err(text: &str) -> ParseError {
        parse_documents(text, &YamlLimits::default()).expect_err("invalid YAML")
    }

    #[test]
    fn yaml_1_1_scalars_read_as_kubectl_reads_them() {
        let docs = parse(
            "mode: 0644\nquoted: '0644'\nhex: 0x1F\nyes_plain: yes\nyes_quoted: \"yes\"\noff_plain: off\n\
             nothing: ~\nversion: 1.10\nstring_version: \"1.10\"\n",
        );
        assert_eq!(
            docs[0],
            json!({
                "mode": 420, "quoted": "0644", "hex": 31, "yes_plain": true, "yes_quoted": "yes",
                "off_plain": false, "nothing": null, "version": 1.1, "string_version": "1.10"
            })
        );
    }

    #[test]
    fn merge_keys_and_anchors_expand() {
        let docs =
            parse("base: &base {cpu: 100m, memory: 64Mi}\nlimits:\n  <<: *base\n  memory: 128Mi\n");
        assert_eq!(docs[0]["limits"], json!({"cpu": "100m", "memory": "128Mi"}));
    }

    #[test]
    fn documents_keep_their_indexes_and_lines() {
        let docs = parse_documents(
            "a: 1\n---\n# only a comment\n---\nb: 2\n\n---\nc: 3\n",
            &YamlLimits::default(),
        )
        .expect("valid YAML");
        let values: Vec<_> = docs.iter().map(|d| d.value.clone()).collect();
        assert_eq!(
            values,
            vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]
        );
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[1].line, 5);
        assert_eq!(docs[2].line, 8);
    }

    #[test]
    fn duplicate_keys_are_an_error_with_a_line() {
        let err = parse_err("metadata:\n  name: a\n  name: b\n");
        assert_eq!(err.line, 3, "{err:?}");
        assert!(err.message.to_lowercase().contains("duplicate"), "{err:?}");
    }

    #[test]
    fn hostile_and_mistaken_input_is_described_with_what_to_do() {
        let err = parse_err("metadata:\n  name: a\n  name: b\n");
        assert_eq!(
            err.message,
            "duplicate key \"name\": a key may appear once in a mapping; remove or rename one"
        );
        let deep: String = (1..=100)
            .map(|d| format!("{}k:\n", " ".repeat(d)))
            .collect();
        assert!(
            parse_err(&format!("a:\n{deep}"))
                .message
                .starts_with("nested more than 64 levels deep"),
        );
        let brackets = format!("a: {}{}\n", "[".repeat(500), "]".repeat(500));
        assert!(
            parse_err(&brackets)
                .message
                .starts_with("brackets nested more than 100 levels deep")
        );
        assert!(parse_err("a: x\0y\n").message.starts_with("a NUL byte"));
        let err = parse_err("a: [1, 2\n");
        assert!(!err.message.contains(" at line "), "said once: {err:?}");
    }

    #[test]
    fn malformed_yaml_reports_the_line() {
        let err = parse_err("a: 1\nb: [1, 2\nc: 3\n");
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn json_documents_parse() {
        assert_eq!(
            parse("{\"kind\": \"List\", \"items\": []}")[0]["kind"],
            "List"
        );
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_err(&text);
        assert!(!err.message.is_empty());
    }
}
