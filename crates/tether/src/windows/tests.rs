//! What windows decide, at chosen instants.

use super::*;

fn window(kind: WindowKind, schedule: &str, duration: &str) -> Window {
    Window {
        kind,
        schedule: schedule.into(),
        duration: duration.into(),
        time_zone: None,
        manual_sync: false,
        self_heal: false,
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

fn compiled(windows: &[Window]) -> Vec<Compiled> {
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| compile(w, &format!("spec.syncWindows[{i}]")).expect("valid"))
        .collect()
}

#[test]
fn a_deny_window_blocks_while_open_and_says_when_it_ends() {
    // Nightly freeze 22:00-06:00 UTC.
    let windows = compiled(&[window(WindowKind::Deny, "0 22 * * *", "8h")]);
    let open = gate(&windows, at("2026-12-06T12:00:00Z"));
    assert!(open.open, "{open:?}");
    let night = gate(&windows, at("2026-12-07T01:00:00Z"));
    assert!(!night.open && !night.manual_sync && !night.self_heal);
    assert!(
        night
            .message
            .contains("spec.syncWindows[0]: deny 0 22 * * * for 8h (UTC)"),
        "{}",
        night.message
    );
    assert_eq!(night.next_open, Some(at("2026-12-07T06:00:00Z")));
    // The end is not inside.
    assert!(gate(&windows, at("2026-12-07T06:00:00Z")).open);
    assert!(!gate(&windows, at("2026-12-06T22:00:00Z")).open);
}

#[test]
fn allow_windows_block_outside_them_and_deny_wins_over_allow() {
    // Working hours on weekdays, but never on Friday afternoons.
    let windows = compiled(&[
        window(WindowKind::Allow, "0 9 * * mon-fri", "8h"),
        window(WindowKind::Deny, "0 12 * * fri", "6h"),
    ]);
    assert!(
        gate(&windows, at("2026-12-07T10:00:00Z")).open,
        "Monday morning"
    );
    let sunday = gate(&windows, at("2026-12-06T10:00:00Z"));
    assert!(!sunday.open);
    assert_eq!(sunday.message, "no allow window is open");
    assert_eq!(sunday.next_open, Some(at("2026-12-07T09:00:00Z")));
    let friday = gate(&windows, at("2026-12-11T13:00:00Z"));
    assert!(!friday.open && friday.message.starts_with("a deny window is open"));
    // Friday 18:00 the deny ends, but so has the allow window (17:00): Monday 09:00.
    assert_eq!(friday.next_open, Some(at("2026-12-14T09:00:00Z")));
}

#[test]
fn manual_sync_and_self_heal_come_from_the_blocking_windows() {
    let mut freeze = window(WindowKind::Deny, "0 0 * * *", "24h");
    freeze.manual_sync = true;
    freeze.self_heal = true;
    let gate_of = |windows: &[Window]| gate(&compiled(windows), at("2026-12-06T12:00:00Z"));
    let one = gate_of(std::slice::from_ref(&freeze));
    assert!(!one.open && one.manual_sync && one.self_heal);
    // Two deny windows open: both must let it through.
    let strict = window(WindowKind::Deny, "0 0 * * *", "24h");
    let both = gate_of(&[freeze.clone(), strict]);
    assert!(!both.manual_sync && !both.self_heal);
    // Always denied: no next opening within a year.
    assert_eq!(both.next_open, None);
}

#[test]
fn windows_follow_their_time_zone() {
    let mut berlin = window(WindowKind::Allow, "0 9 * * *", "1h");
    berlin.time_zone = Some("Europe/Berlin".into());
    let windows = compiled(&[berlin]);
    // 09:00 in Berlin is 08:00 UTC in winter.
    assert!(gate(&windows, at("2026-12-07T08:30:00Z")).open);
    assert!(!gate(&windows, at("2026-12-07T09:30:00Z")).open);
}

#[test]
fn a_bad_window_is_an_error_naming_where_and_what() {
    let mut bad_zone = window(WindowKind::Deny, "0 22 * * *", "8h");
    bad_zone.time_zone = Some("Mars/Olympus".into());
    for (w, says) in [
        (
            window(WindowKind::Deny, "0 25 * * *", "8h"),
            "schedule: hour",
        ),
        (window(WindowKind::Deny, "0 22 * * *", "soon"), "duration"),
        (window(WindowKind::Deny, "0 22 * * *", "0s"), "more than 0"),
        (bad_zone, "Mars/Olympus"),
    ] {
        let err = compile(&w, "SyncWindow shop/freeze").expect_err(says);
        assert!(
            err.starts_with("SyncWindow shop/freeze: ") && err.contains(says),
            "{err}"
        );
    }
}
