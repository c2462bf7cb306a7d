//! `tether plan -o markdown`: the plan as a pull request comment, a table of what
//! changes and a collapsible diff per object.

use std::io::Write;

use super::{describe_hook, symbol, unfinished_hooks};
use crate::plan::{Action, Change, Plan};
use crate::source::git::Revision;

pub(super) fn write_markdown(
    out: &mut impl Write,
    plan: &Plan,
    revision: Option<&Revision>,
) -> anyhow::Result<()> {
    let at = revision
        .map(|r| format!(" at `{}`", r.short()))
        .unwrap_or_default();
    writeln!(
        out,
        "### tether plan: `{}` → namespace `{}`{at}",
        plan.options.app, plan.options.namespace
    )?;
    writeln!(out)?;
    writeln!(out, "**{}**", plan.summary())?;
    if !plan.hooks.is_empty() {
        writeln!(out)?;
        writeln!(out, "Hooks run by this sync:")?;
        for hook in &plan.hooks {
            writeln!(out, "- `{}`", describe_hook(hook))?;
        }
    }
    if let Some(line) = unfinished_hooks(plan) {
        writeln!(out)?;
        writeln!(out, "{line}")?;
    }
    let changed: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    if changed.is_empty() {
        writeln!(out)?;
        writeln!(out, "No changes: the cluster matches the revision.")?;
        return Ok(());
    }
    writeln!(out)?;
    write_markdown_table(out, &changed, plan.uses_waves())?;
    for change in changed {
        writeln!(out)?;
        write_markdown_details(out, change)?;
    }
    Ok(())
}

/// The table of changes: action, object, wave (when the plan uses waves), source.
fn write_markdown_table(
    out: &mut impl Write,
    changed: &[&Change],
    waves: bool,
) -> anyhow::Result<()> {
    if waves {
        writeln!(out, "| | Action | Object | Wave | Source |")?;
        writeln!(out, "|---|---|---|---|---|")?;
    } else {
        writeln!(out, "| | Action | Object | Source |")?;
        writeln!(out, "|---|---|---|---|")?;
    }
    for change in changed {
        let origin = change
            .origin
            .as_ref()
            .map(|o| format!("`{o}`"))
            .unwrap_or_default();
        let wave = if waves {
            format!(" {} |", change.wave)
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {} | {} | `{}` |{wave} {origin} |",
            symbol(change.action),
            change.action,
            change.key
        )?;
    }
    Ok(())
}

/// One change as a folded `<details>` block: conflicts, reclaimed fields, and its diff.
fn write_markdown_details(out: &mut impl Write, change: &Change) -> anyhow::Result<()> {
    writeln!(
        out,
        "<details><summary>{} <code>{}</code></summary>",
        change.action, change.key
    )?;
    writeln!(out)?;
    for conflict in &change.conflicts {
        writeln!(out, "- conflict (tether never applied it): {conflict}")?;
    }
    for field in &change.reclaims {
        writeln!(out, "- drift, Git's value goes back: {field}")?;
    }
    if let Some(why) = &change.recreate {
        writeln!(out, "- deleted and created anew: {why}")?;
    }
    for field in &change.ignored {
        writeln!(out, "- ignored (the cluster's value is kept): {field}")?;
    }
    // A fence longer than any run of backticks in the diff cannot be closed by it.
    let fence = "`".repeat(3.max(longest_backtick_run(&change.diff) + 1));
    writeln!(out, "{fence}diff")?;
    write!(out, "{}", change.diff)?;
    if !change.diff.ends_with('\n') {
        writeln!(out)?;
    }
    writeln!(out, "{fence}")?;
    writeln!(out)?;
    writeln!(out, "</details>")?;
    Ok(())
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn markdown_fences_outlast_backticks_in_diffs() {
        assert_eq!(super::longest_backtick_run("a ```` b ` c"), 4);
    }
}
