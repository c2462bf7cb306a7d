//! What sync windows decide at an instant, as Argo CD decides it: a deny window that is
//! open blocks automated syncs; so does having allow windows none of which is open. While
//! blocked, a sync asked for by hand runs only if a blocking window says `manualSync`, and
//! hand edits are put back only if it says `selfHeal`. [`gate`] also says when syncs may
//! run again. Pure: the instant is given.

pub mod cron;

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::application::{Window, WindowKind};
use cron::Cron;

/// A window read and checked: its schedule parsed, its zone found.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub kind: WindowKind,
    cron: Cron,
    zone: TimeZone,
    duration: SignedDuration,
    manual_sync: bool,
    self_heal: bool,
    /// Where it is written and what it says, for messages (`SyncWindow shop/freeze: deny
    /// 0 22 * * * for 8h (Europe/Berlin)`).
    pub described: String,
}

/// Reads `window` (written at `source`); an error names `source` and the field at fault.
pub fn compile(window: &Window, source: &str) -> Result<Compiled, String> {
    let cron = Cron::parse(&window.schedule).map_err(|e| format!("{source}: schedule: {e}"))?;
    let duration = crate::duration::parse_duration(&window.duration)
        .map_err(|e| format!("{source}: duration: {e}"))?;
    if duration.is_zero() || duration > Duration::from_secs(366 * 24 * 3600) {
        return Err(format!(
            "{source}: duration {:?} must be more than 0 and at most a year",
            window.duration
        ));
    }
    let zone_name = window.time_zone.as_deref().unwrap_or("UTC");
    let zone = TimeZone::get(zone_name).map_err(|_| {
        format!("{source}: timeZone {zone_name:?} is not a time zone; use an IANA name such as Europe/Berlin or America/New_York")
    })?;
    let kind = match window.kind {
        WindowKind::Allow => "allow",
        WindowKind::Deny => "deny",
    };
    Ok(Compiled {
        kind: window.kind,
        cron,
        zone,
        duration: SignedDuration::try_from(duration).map_err(|e| format!("{source}: {e}"))?,
        manual_sync: window.manual_sync,
        self_heal: window.self_heal,
        described: format!(
            "{source}: {kind} {} for {} ({zone_name})",
            window.schedule, window.duration
        ),
    })
}

impl Compiled {
    /// When the window closes, if it is open at `at`.
    fn open_until(&self, at: Timestamp) -> Option<Timestamp> {
        let earliest = at.checked_sub(self.duration).ok()?;
        let start = self.cron.last_start(&self.zone, at, earliest)?;
        let end = start.checked_add(self.duration).ok()?;
        (at < end).then_some(end)
    }

    /// When the window next opens after `at`.
    fn opens_after(&self, at: Timestamp) -> Option<Timestamp> {
        self.cron.next_start(&self.zone, at)
    }
}

/// What the windows let run at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Automated syncs (new revisions, and drift correction) may run.
    pub open: bool,
    /// While blocked: a sync asked for by hand runs.
    pub manual_sync: bool,
    /// While blocked: hand edits are put back (the revision already applied).
    pub self_heal: bool,
    /// Which window decides, in a sentence.
    pub message: String,
    /// While blocked: when syncs may run again (none within a year).
    pub next_open: Option<Timestamp>,
}

impl Gate {
    /// The gate of an Application without windows.
    pub fn open() -> Gate {
        Gate {
            open: true,
            manual_sync: true,
            self_heal: true,
            message: String::new(),
            next_open: None,
        }
    }
}

/// Whether `windows` block syncs at `now`, and why: `Err` with the blocking windows.
fn blocking_at(
    windows: &[Compiled],
    now: Timestamp,
) -> Result<(), Vec<(&Compiled, Option<Timestamp>)>> {
    let denying: Vec<_> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Deny)
        .filter_map(|w| w.open_until(now).map(|end| (w, Some(end))))
        .collect();
    if !denying.is_empty() {
        return Err(denying);
    }
    let allows: Vec<&Compiled> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Allow)
        .collect();
    if allows.is_empty() || allows.iter().any(|w| w.open_until(now).is_some()) {
        return Ok(());
    }
    Err(allows.into_iter().map(|w| (w, None)).collect())
}

/// What `windows` let run at `now`.
pub fn gate(windows: &[Compiled], now: Timestamp) -> Gate {
    let Err(blocking) = blocking_at(windows, now) else {
        let message = match windows.iter().find(|w| w.kind == WindowKind::Allow) {
            Some(_) => "an allow window is open".to_string(),
            None if windows.is_empty() => String::new(),
            None => "no deny window is open".to_string(),
        };
        return Gate {
            message,
            ..Gate::open()
        };
    };
    let deny = blocking[0].0.kind == WindowKind::Deny;
    let message = if deny {
        let described: Vec<&str> = blocking.iter().map(|(w, _)| w.described.as_str()).collect();
        format!("a deny window is open: {}", described.join("; "))
    } else {
        "no allow window is open".to_string()
    };
    // A deny window lets through what all the open ones let through; allow windows what
    // any of them does.
    let (manual_sync, self_heal) = if deny {
        (
            blocking.iter().all(|(w, _)| w.manual_sync),
            blocking.iter().all(|(w, _)| w.self_heal),
        )
    } else {
        (
            blocking.iter().any(|(w, _)| w.manual_sync),
            blocking.iter().any(|(w, _)| w.self_heal),
        )
    };
    Gate {
        open: false,
        manual_sync,
        self_heal,
        message,
        next_open: next_open(windows, now),
    }
}

/// The first instant after `now` at which `windows` block nothing, within a year: each step
/// jumps to the end of the deny windows open, or to the next allow window (at most 1,000
/// steps: daily windows back to back for a year take 366; windows of minutes back to back
/// for weeks are not followed to their end).
fn next_open(windows: &[Compiled], now: Timestamp) -> Option<Timestamp> {
    let limit = now.checked_add(SignedDuration::from_hours(366 * 24)).ok()?;
    let mut at = now;
    for _ in 0..1000 {
        let blocking = match blocking_at(windows, at) {
            Ok(()) => return Some(at),
            Err(blocking) => blocking,
        };
        at = if blocking[0].0.kind == WindowKind::Deny {
            blocking.iter().filter_map(|(_, end)| *end).max()?
        } else {
            blocking
                .iter()
                .filter_map(|(w, _)| w.opens_after(at))
                .min()?
        };
        if at > limit {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests;
