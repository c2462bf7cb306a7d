//! Variable substitution after rendering, as Flux's postBuild substitution does it:
//! `${VAR}` is replaced by the variable's value, `${VAR:=default}` falls back to a default,
//! `$${VAR}` is an escape for a literal `${VAR}`. An unset variable without a default is an
//! error naming it. Names are `[A-Za-z_][A-Za-z0-9_]*`; anything else is left as it is.
//! Substitution runs on the text of each rendered file, so numbers and booleans work too.

use std::collections::BTreeMap;

/// Variables given per application (`--var KEY=VALUE`, `--vars-file`).
pub type Vars = BTreeMap<String, String>;

/// A variable without value or default, at a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    pub name: String,
    pub line: u64,
}

/// Replaces every `${VAR}` in `text`; returns every unset variable otherwise.
pub fn substitute(text: &str, vars: &Vars) -> Result<String, Vec<Unset>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line = 1u64;
    let mut close = Close::Unknown;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
        }
        if c == b'$' && bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') {
            // `$${…}` → a literal `${…}`.
            out.push('$');
            i += 2;
            continue;
        }
        if c == b'$'
            && bytes.get(i + 1) == Some(&b'{')
            && let Some((name, default, end)) =
                parse_reference(&text[i + 2..], close.next(text, i + 2))
        {
            match (vars.get(name), default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    unset.push(Unset {
                        name: name.to_string(),
                        line,
                    });
                }
            }
            i += 2 + end;
            continue;
        }
        // Copy one UTF-8 character.
        let len = utf8_len(c);
        out.push_str(&text[i..i + len]);
        i += len;
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Where the next `}` or newline is: found once, then reused by every `${` before it.
/// Searching again for each `${` made a line of unclosed `${A:=` quadratic (a 50 KB file
/// took half a minute), so one hostile file could stall a render.
enum Close {
    Unknown,
    At(usize),
    Nowhere,
}

impl Close {
    /// The offset, relative to `from`, of the first `}` or newline at or after `from`.
    fn next(&mut self, text: &str, from: usize) -> Option<usize> {
        let at = match *self {
            Close::Nowhere => return None,
            Close::At(at) if at >= from => at,
            _ => match text[from..].find(['}', '\n']) {
                Some(offset) => from + offset,
                None => {
                    *self = Close::Nowhere;
                    return None;
                }
            },
        };
        *self = Close::At(at);
        Some(at - from)
    }
}

/// Parses `NAME}` or `NAME:=default}` at the start of `rest`, whose first `}` or newline is
/// at `close`: (name, default, bytes consumed).
fn parse_reference(rest: &str, close: Option<usize>) -> Option<(&str, Option<&str>, usize)> {
    let name_end = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit())))
        .map(|(i, _)| i)?;
    if name_end == 0 {
        return None;
    }
    let name = &rest[..name_end];
    let after = &rest[name_end..];
    if after.starts_with('}') {
        return Some((name, None, name_end + 1));
    }
    after.strip_prefix(":=")?;
    // A default runs to the first `}`; a newline first means this is no reference.
    let close = close.filter(|&at| rest.as_bytes()[at] == b'}')?;
    Some((name, Some(rest.get(name_end + 2..close)?), close + 1))
}

/// Reads `KEY=VALUE` lines (blank lines and `#` comments skipped), as in a dotenv file.
pub fn parse_vars_file(text: &str) -> Result<Vars, String> {
    let mut vars = Vars::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", number + 1))?;
        vars.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_defaults_and_escapes() {
        let text = "replicas: ${REPLICAS}\nimage: app:${TAG:=latest}\nliteral: $${HOME}\nenv: ${ENV:=}\nnot: ${1x} $5 ${ }\nµ: ${UNICODE}é\n";
        let out = substitute(text, &vars(&[("REPLICAS", "3"), ("UNICODE", "ü")])).expect("all set");
        assert_eq!(
            out,
            "replicas: 3\nimage: app:latest\nliteral: ${HOME}\nenv: \nnot: ${1x} $5 ${ }\nµ: üé\n"
        );
    }

    #[test]
    fn unset_variables_are_all_reported_with_lines() {
        let err =
            substitute("a: ${ONE}\nb: ok\nc: ${TWO} ${ONE}\n", &Vars::new()).expect_err("unset");
        assert_eq!(
            err,
            vec![
                Unset {
                    name: "ONE".into(),
                    line: 1
                },
                Unset {
                    name: "TWO".into(),
                    line: 3
                },
                Unset {
                    name: "ONE".into(),
                    line: 3
                },
            ]
        );
    }

    #[test]
    fn vars_files_read_like_dotenv() {
        let parsed = parse_vars_file("# comment\nA=1\n\nB = two words\n").expect("valid");
        assert_eq!(parsed, vars(&[("A", "1"), ("B", "two words")]));
        assert!(parse_vars_file("oops").is_err());
    }
}
