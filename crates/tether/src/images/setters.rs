//! Rewriting image references in YAML text, keeping everything else as written (comments,
//! quotes, order): the fields Flux's image automation marks with `# {"$imagepolicy":
//! "namespace:name"}` (the whole reference; `:tag`, `:name` or `:digest` for one part), and
//! the `images:` entries of a kustomization (`newTag`, `digest`). Pure: text in, text out.

use super::Chosen;

/// One value changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// The policy's image (repository).
    pub image: String,
    pub old: String,
    pub new: String,
}

/// Rewrites `text` (the file `file`) for the chosen tags of the policies of the
/// Application in `namespace`; `None` when nothing changes.
pub fn update(
    file: &str,
    text: &str,
    namespace: &str,
    chosen: &[Chosen],
) -> Option<(String, Vec<Change>)> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let mut changes = Vec::new();
    for (index, line) in lines.iter_mut().enumerate() {
        if let Some((new_line, change)) = marked(line, namespace, chosen) {
            changes.push(Change {
                file: file.to_string(),
                line: index + 1,
                ..change
            });
            *line = new_line;
        }
    }
    if is_kustomization(file) {
        kustomize_images(file, &mut lines, chosen, &mut changes);
    }
    if changes.is_empty() {
        return None;
    }
    Some((lines.join("\n"), changes))
}

fn is_kustomization(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file);
    matches!(
        name,
        "kustomization.yaml" | "kustomization.yml" | "Kustomization"
    )
}

/// The marker of a line: the policy's `namespace:name`, and which part (`None`: all).
fn marker(line: &str) -> Option<(usize, &str, Option<&str>)> {
    let start = line.find("# {\"$imagepolicy\"")?;
    let rest = &line[start..];
    let open = rest.find(": \"").or_else(|| rest.find(":\""))?;
    let quoted = rest[open..].trim_start_matches(':').trim_start();
    let inner = quoted.strip_prefix('"')?;
    let end = inner.find('"')?;
    let reference = &inner[..end];
    let mut parts = reference.splitn(3, ':');
    let (ns, name) = (parts.next()?, parts.next()?);
    let part = parts.next();
    Some((start, &reference[..ns.len() + 1 + name.len()], part))
}

/// A marked line rewritten for its policy's choice.
fn marked(line: &str, namespace: &str, chosen: &[Chosen]) -> Option<(String, Change)> {
    let (start, reference, part) = marker(line)?;
    let (ns, name) = reference.split_once(':')?;
    if ns != namespace {
        return None;
    }
    let choice = chosen.iter().find(|c| c.policy == name)?;
    let left = &line[..start];
    let (value_start, value_end) = value_span(left)?;
    let raw = &left[value_start..value_end];
    let (quote, old) = unquote(raw);
    let new = match part {
        None => choice.reference(),
        Some("tag") => choice.tag.clone(),
        Some("name") => choice.image.clone(),
        Some("digest") => choice.digest.clone()?,
        Some(_) => return None,
    };
    if old == new {
        return None;
    }
    let quote = if quote.is_empty() && needs_quotes(&new) {
        "\""
    } else {
        quote
    };
    let new_line = format!(
        "{}{quote}{new}{quote}{}",
        &line[..value_start],
        &line[value_end..]
    );
    Some((
        new_line,
        Change {
            file: String::new(),
            line: 0,
            image: choice.image.clone(),
            old: old.to_string(),
            new,
        },
    ))
}

/// Where the scalar value of `key: value ` or `- value ` is in `left` (the line before its
/// comment).
fn value_span(left: &str) -> Option<(usize, usize)> {
    let end = left.trim_end().len();
    let body = left.trim_start();
    let indent = left.len() - body.len();
    let start = if let Some(item) = body.strip_prefix("- ") {
        let after = indent + (body.len() - item.len());
        match item.find(": ") {
            Some(colon) => after + colon + 2,
            None => after,
        }
    } else {
        indent + body.find(": ")? + 2
    };
    if start >= end {
        return None; // no value to set (`image: # {…}`)
    }
    let start = start + (left[start..end].len() - left[start..end].trim_start().len());
    (start < end).then_some((start, end))
}

/// Whether `value` written plain would be read as something else than a string (a number,
/// a boolean, null): `1.10` is then written `"1.10"`.
fn needs_quotes(value: &str) -> bool {
    value.parse::<f64>().is_ok()
        || matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | ""
        )
}

fn unquote(raw: &str) -> (&'static str, &str) {
    for quote in ["\"", "'"] {
        if let Some(inner) = raw.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) {
            return (if quote == "\"" { "\"" } else { "'" }, inner);
        }
    }
    ("", raw)
}

/// A kustomization's `images:` entries naming a policy's image (as `name` or `newName`):
/// `newTag` set (added after the entry's first line when missing), and `digest` when the
/// policy pins digests.
fn kustomize_images(
    file: &str,
    lines: &mut Vec<String>,
    chosen: &[Chosen],
    changes: &mut Vec<Change>,
) {
    let Some(block) = lines.iter().position(|l| l.trim_end() == "images:") else {
        return;
    };
    let mut index = block + 1;
    while index < lines.len() {
        let line = lines[index].clone();
        let body = line.trim_start();
        if !body.starts_with("- ") {
            if !body.is_empty() && !body.starts_with('#') && !line.starts_with(' ') {
                return; // the next top-level key
            }
            index += 1;
            continue;
        }
        let item_indent = line.len() - body.len() + 2;
        let mut end = index + 1;
        while end < lines.len() {
            let next = &lines[end];
            let next_body = next.trim_start();
            let indent = next.len() - next_body.len();
            // Blank and comment lines do not end an entry.
            if next_body.is_empty() || next_body.starts_with('#') {
                end += 1;
                continue;
            }
            if indent < item_indent || next_body.starts_with("- ") {
                break;
            }
            end += 1;
        }
        let fields: Vec<(usize, String, String)> = (index..end)
            .filter_map(|i| {
                let text = lines[i].trim_start().trim_start_matches("- ");
                let (key, value) = text.split_once(':')?;
                let value = value.split(" #").next().unwrap_or_default().trim();
                Some((i, key.trim().to_string(), unquote(value).1.to_string()))
            })
            .collect();
        let field = |key: &str| fields.iter().find(|(_, k, _)| k == key).cloned();
        let image = field("newName").or_else(|| field("name")).map(|f| f.2);
        // An entry with a marker is the marker's alone (set above, as Flux sets it).
        let marked = (index..end).any(|i| lines[i].contains("\"$imagepolicy\""));
        if !marked && let Some(choice) = chosen.iter().find(|c| Some(&c.image) == image.as_ref()) {
            let item = Item {
                first: index,
                indent: item_indent,
                fields: &fields,
            };
            end += set_fields(file, lines, &item, choice, changes);
        }
        index = end;
    }
}

/// One entry of a kustomization's `images:`: its first line, the indent of its keys, and
/// its fields (line, key, value).
struct Item<'a> {
    first: usize,
    indent: usize,
    fields: &'a [(usize, String, String)],
}

/// Sets the entry's `newTag` (and `digest` when pinned): replaced where present, else
/// added after its first line; how many lines were added.
fn set_fields(
    file: &str,
    lines: &mut Vec<String>,
    item: &Item<'_>,
    choice: &Chosen,
    changes: &mut Vec<Change>,
) -> usize {
    let mut wanted = vec![("newTag", choice.tag.clone())];
    if let Some(digest) = &choice.digest {
        wanted.push(("digest", digest.clone()));
    }
    let mut missing = Vec::new();
    for (key, value) in wanted {
        match item.fields.iter().find(|(_, k, _)| k == key) {
            Some((_, _, old)) if *old == value => {}
            Some((i, _, old)) => {
                let line = &lines[*i];
                let prefix = &line[..line.find(key).unwrap_or(0)];
                let after = line.split_once(':').map(|(_, a)| a).unwrap_or_default();
                let (raw, comment) = match after.find(" #") {
                    Some(at) => (&after[..at], &after[at..]),
                    None => (after, ""),
                };
                let (quote, _) = unquote(raw.trim());
                let quote = if quote.is_empty() && needs_quotes(&value) {
                    "\""
                } else {
                    quote
                };
                lines[*i] = format!("{prefix}{key}: {quote}{value}{quote}{comment}");
                changes.push(Change {
                    file: file.to_string(),
                    line: i + 1,
                    image: choice.image.clone(),
                    old: old.clone(),
                    new: value,
                });
            }
            None => missing.push((key, value)),
        }
    }
    let added = missing.len();
    for (offset, (key, value)) in missing.into_iter().enumerate() {
        let at = item.first + 1 + offset;
        let quote = if needs_quotes(&value) { "\"" } else { "" };
        lines.insert(
            at,
            format!("{}{key}: {quote}{value}{quote}", " ".repeat(item.indent)),
        );
        changes.push(Change {
            file: file.to_string(),
            line: at + 1,
            image: choice.image.clone(),
            old: String::new(),
            new: value,
        });
    }
    added
}
