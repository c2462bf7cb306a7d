//! The drift state machine's transitions, without a cluster.

use super::*;

const SET: &str = "applyset-shop-web";

fn app() -> ObjectRef<Application> {
    ObjectRef::new("web").within("shop")
}

fn kind() -> Kind {
    ("apps".into(), "Deployment".into())
}

fn member(name: &str) -> ObjectKey {
    ObjectKey {
        group: "apps".into(),
        kind: "Deployment".into(),
        namespace: "shop".into(),
        name: name.into(),
    }
}

/// A set whose watch has listed, synced in full while watched: the watches vouch for it.
fn vouched() -> State {
    let mut state = State::default();
    state.register(app(), SET, BTreeSet::from([kind()]));
    state.listed(kind());
    state.begin_full_sync(SET, Instant::now());
    assert!(state.start_watched(SET));
    state.finish_full_sync(SET, vec![]);
    state
}

#[test]
fn a_full_sync_watched_from_its_start_vouches_for_the_set() {
    let mut state = State::default();
    state.register(app(), SET, BTreeSet::from([kind()]));
    assert!(
        !state.begin_full_sync(SET, Instant::now()),
        "nothing vouched yet"
    );
    assert!(!state.start_watched(SET), "the kind has not listed");
    state.listed(kind());
    assert!(state.start_watched(SET));
    assert_eq!(state.may_skip(SET), None, "not until the sync completes");
    state.finish_full_sync(SET, vec![]);
    assert_eq!(state.may_skip(SET), Some(false));
    assert!(
        state.begin_full_sync(SET, Instant::now()),
        "vouched until now"
    );
    assert_eq!(state.may_skip(SET), None, "a new sync vouches for nothing");
}

#[test]
fn an_unwatched_sync_vouches_once_each_member_is_seen_at_the_version_it_left() {
    let mut state = State::default();
    state.register(app(), SET, BTreeSet::from([kind()]));
    state.begin_full_sync(SET, Instant::now());
    assert!(!state.start_watched(SET));
    state.listed(kind());
    state.saw_version(Some(SET), member("a"), "1".into());
    state.finish_full_sync(
        SET,
        vec![(member("a"), "1".into()), (member("b"), "5".into())],
    );
    assert_eq!(state.may_skip(SET), None, "b is not seen at 5 yet");
    state.saw_version(Some(SET), member("b"), "4".into());
    assert_eq!(state.may_skip(SET), None, "an older version proves nothing");
    state.saw_version(Some(SET), member("b"), "5".into());
    assert_eq!(state.may_skip(SET), Some(false));
}

#[test]
fn versions_seen_before_a_watch_broke_do_not_vouch() {
    let mut state = State::default();
    state.register(app(), SET, BTreeSet::from([kind()]));
    state.begin_full_sync(SET, Instant::now());
    state.saw_version(Some(SET), member("a"), "1".into());
    // The kind's watch has not listed (again): the version it saw may be old news.
    state.finish_full_sync(SET, vec![(member("a"), "1".into())]);
    assert_eq!(state.may_skip(SET), None);
}

#[test]
fn drifted_members_are_taken_one_by_one_until_too_many_drifted() {
    let mut state = vouched();
    assert_eq!(state.report(SET, member("a"), Seen::Changed), Some(app()));
    assert!(state.is_drifted(SET));
    assert_eq!(state.may_skip(SET), None);
    assert_eq!(state.take_drifted(SET), Some(BTreeSet::from([member("a")])));
    assert!(!state.is_drifted(SET));
    assert_eq!(state.take_drifted(SET), None, "taken");
    assert_eq!(state.may_skip(SET), Some(false));

    for n in 0..=TARGETED_LIMIT {
        state.report(SET, member(&n.to_string()), Seen::Changed);
    }
    assert_eq!(
        state.take_drifted(SET),
        None,
        "more than the limit: a full sync"
    );
    assert!(state.is_drifted(SET));
}

#[test]
fn a_failed_correction_requires_a_full_sync() {
    let mut state = vouched();
    state.report(SET, member("a"), Seen::Changed);
    state.require_full_sync(SET);
    assert_eq!(state.take_drifted(SET), None);
    assert!(!state.saw_unreported(SET, &member("a"), "1"));
    assert!(
        !state.begin_full_sync(SET, Instant::now()),
        "drifted: not vouched"
    );
    assert!(!state.is_drifted(SET), "a full sync forgets the drift");
}

#[test]
fn a_member_tether_prunes_is_not_drift_until_its_deletion_is_seen() {
    let mut state = vouched();
    state.expect_pruned(SET, [member("old")]);
    assert_eq!(state.report(SET, member("old"), Seen::Changed), None);
    assert_eq!(state.report(SET, member("old"), Seen::Deleted), None);
    assert!(!state.is_drifted(SET));
    // Back again and deleted by someone: drift.
    assert_eq!(state.report(SET, member("old"), Seen::Deleted), Some(app()));
    assert!(state.is_drifted(SET));
}

#[test]
fn a_status_change_triggers_a_settled_set_once_per_health_read() {
    let mut state = vouched();
    assert_eq!(state.status_changed(SET, member("a")), None, "not settled");
    assert_eq!(state.may_skip(SET), Some(true), "health is read again");
    assert_eq!(
        state.take_status_changes(SET),
        Some(BTreeSet::from([member("a")]))
    );
    assert_eq!(state.may_skip(SET), Some(false));
    state.follow_health(SET, true);
    assert_eq!(state.status_changed(SET, member("a")), Some(app()));
    assert_eq!(state.status_changed(SET, member("b")), None, "already due");
    assert_eq!(
        state.take_status_changes(SET),
        Some(BTreeSet::from([member("a"), member("b")]))
    );
    for n in 0..=TARGETED_LIMIT {
        state.status_changed(SET, member(&n.to_string()));
    }
    assert_eq!(state.take_status_changes(SET), None, "too many: read all");
    assert_eq!(state.take_status_changes(SET), Some(BTreeSet::new()));
}

#[test]
fn a_status_change_between_the_health_read_and_following_triggers_when_followed() {
    let mut state = vouched();
    assert_eq!(state.follow_health(SET, true), None, "nothing changed");
    state.take_status_changes(SET);
    // A sync read health, wrote its status; a member's status changes before the set is
    // followed again.
    state.follow_health(SET, false);
    assert_eq!(state.status_changed(SET, member("a")), None, "not followed");
    assert_eq!(state.follow_health(SET, true), Some(app()), "due now");
    assert_eq!(state.status_changed(SET, member("a")), None, "already due");
    state.take_status_changes(SET);
    assert_eq!(state.follow_health(SET, true), None, "read since");
    assert_eq!(state.follow_health(SET, false), None);
}

#[test]
fn a_missed_difference_is_one_seen_at_its_version_and_not_reported() {
    let mut state = vouched();
    state.saw_version(Some(SET), member("a"), "7".into());
    assert!(state.saw_unreported(SET, &member("a"), "7"));
    assert!(
        !state.saw_unreported(SET, &member("a"), "8"),
        "not reached yet"
    );
    assert!(
        !state.saw_unreported("other", &member("a"), "7"),
        "unknown set"
    );
    state.report(SET, member("a"), Seen::Changed);
    assert!(!state.saw_unreported(SET, &member("a"), "7"), "reported");
    state.forget("uid-a", &member("b"));
    state.saw_version(None, member("b"), "1".into());
    state.forget("uid-b", &member("b"));
    assert!(!state.saw_unreported(SET, &member("b"), "1"), "gone");
}

#[test]
fn a_write_under_tethers_manager_is_ours_only_with_the_digest_we_apply() {
    let mut state = vouched();
    assert!(
        state.applied_by_us(Some(SET), &member("a"), Some("d")),
        "nothing known"
    );
    assert!(state.applied_by_us(None, &member("a"), None), "no set");
    state.expect_applied(SET, [(member("a"), "d1".to_string())], true);
    assert!(state.applied_by_us(Some(SET), &member("a"), Some("d1")));
    assert!(!state.applied_by_us(Some(SET), &member("a"), Some("d2")));
    assert!(!state.applied_by_us(Some(SET), &member("a"), None));
    assert!(
        !state.applied_by_us(Some(SET), &member("b"), Some("d1")),
        "a stranger"
    );
    state.expect_applied(SET, [(member("b"), "d3".to_string())], false);
    assert!(
        state.applied_by_us(Some(SET), &member("a"), Some("d1")),
        "kept"
    );
    state.expect_applied(SET, [(member("b"), "d3".to_string())], true);
    assert!(
        !state.applied_by_us(Some(SET), &member("a"), Some("d1")),
        "replaced"
    );
}

#[test]
fn verification_is_due_after_the_period_stretched_by_up_to_a_fifth() {
    let mut state = State::default();
    let period = Duration::from_secs(100);
    let start = Instant::now();
    assert_eq!(state.until_verification(SET, period, start), Duration::ZERO);
    state.begin_full_sync(SET, start);
    let wait = state.until_verification(SET, period, start);
    assert!(wait >= period && wait <= period.mul_f64(1.2), "{wait:?}");
    let later = start + Duration::from_secs(30);
    assert_eq!(
        state.until_verification(SET, period, later),
        wait - Duration::from_secs(30)
    );
    assert_eq!(
        state.until_verification(SET, period, start + Duration::from_secs(120)),
        Duration::ZERO
    );
}

#[test]
fn the_applied_digest_lasts_until_the_next_full_sync_and_forgetting_a_set_forgets_all() {
    let mut state = vouched();
    state.set_applied_digest(SET, [7; 32]);
    assert_eq!(state.applied_digest(SET), Some([7; 32]));
    state.begin_full_sync(SET, Instant::now());
    assert_eq!(state.applied_digest(SET), None);
    let mut state = vouched();
    state.forget_set(SET);
    assert_eq!(state.may_skip(SET), None);
    assert!(
        !state.begin_full_sync(SET, Instant::now()),
        "planned in full"
    );
    state.set_applied_digest("unknown", [1; 32]);
    assert_eq!(state.applied_digest("unknown"), None, "no such set");
}

#[test]
fn registering_a_kind_that_has_not_listed_makes_the_sync_unwatched() {
    let mut state = State::default();
    state.register(app(), SET, BTreeSet::from([kind()]));
    state.listed(kind());
    state.begin_full_sync(SET, Instant::now());
    assert!(state.start_watched(SET));
    let secret = (String::new(), "Secret".to_string());
    state.register(app(), SET, BTreeSet::from([kind(), secret]));
    state.finish_full_sync(SET, vec![]);
    assert_eq!(
        state.may_skip(SET),
        None,
        "Secrets were not watched from the start"
    );
    assert_eq!(state.owner(SET), Some(app()));
}

#[test]
fn the_crowd_counts_each_labelled_object_once_until_it_is_gone() {
    use super::super::prints::Prints;
    let prints = |time| Prints {
        ours: 1,
        ours_size: 1,
        ours_time: Some(time),
        deleting: false,
        digest: None,
    };
    let mut state = State::default();
    state.remember(Some("uid-a".into()), &member("a"), prints(1));
    state.remember(Some("uid-b".into()), &member("b"), prints(1));
    // Seen again (a change, or a relist): still one object.
    state.remember(Some("uid-a".into()), &member("a"), prints(2));
    // No uid: nothing to count it by.
    state.remember(None, &member("c"), prints(1));
    assert_eq!(state.crowd("apps", "Deployment", "shop"), 2);
    assert_eq!(state.crowd("apps", "Deployment", "other"), 0);
    assert_eq!(state.crowd("", "Deployment", "shop"), 0, "another group");
    state.forget("uid-a", &member("a"));
    // Forgotten twice (a delete event after a relist saw it gone): counted off once.
    state.forget("uid-a", &member("a"));
    assert_eq!(state.crowd("apps", "Deployment", "shop"), 1);
    state.forget("uid-b", &member("b"));
    assert_eq!(state.crowd("apps", "Deployment", "shop"), 0);
}

#[test]
fn a_set_s_members_are_told_only_while_the_watch_knows_them_all() {
    let mut state = State::default();
    let names = |state: &State| state.members_of(SET, "apps", "Deployment", "shop");
    state.member(None, Some(SET), &member("a"));
    state.member(None, Some(SET), &member("b"));
    state.member(None, Some("applyset-other"), &member("c"));
    assert_eq!(names(&state), None, "the kind has not listed yet");
    state.listed(kind());
    assert_eq!(names(&state), Some(vec!["a".into(), "b".into()]));
    assert_eq!(
        state.members_of(SET, "apps", "Deployment", "elsewhere"),
        Some(vec![]),
        "none in another namespace"
    );
    // Relabelled into another set, then out of every set, then deleted.
    state.member(Some(SET), Some("applyset-other"), &member("b"));
    assert_eq!(names(&state), Some(vec!["a".into()]));
    state.member(Some("applyset-other"), None, &member("c"));
    assert_eq!(
        state.members_of("applyset-other", "apps", "Deployment", "shop"),
        Some(vec!["b".into()])
    );
    state.member(Some(SET), None, &member("a"));
    assert_eq!(names(&state), Some(vec![]));
    // Seen again in the same set: counted once.
    state.member(None, Some(SET), &member("d"));
    state.member(Some(SET), Some(SET), &member("d"));
    assert_eq!(names(&state), Some(vec!["d".into()]));
    // Listing again after a gap: objects made meanwhile may be missing until it ends.
    state.relisting(kind());
    assert_eq!(names(&state), None);
    state.listed(kind());
    assert_eq!(names(&state), Some(vec!["d".into()]));
    // The set's last writes not all seen yet: one of them may be missing.
    state.register(app(), SET, BTreeSet::from([kind()]));
    state.begin_full_sync(SET, Instant::now());
    state.finish_full_sync(SET, vec![(member("e"), "7".into())]);
    assert_eq!(names(&state), None, "member e not seen at version 7 yet");
    state.saw_version(Some(SET), member("e"), "7".into());
    state.member(None, Some(SET), &member("e"));
    assert_eq!(names(&state), Some(vec!["d".into(), "e".into()]));
}

#[test]
fn a_set_s_members_include_what_it_applied_before_the_watch_sees_it() {
    let mut state = vouched();
    state.member(None, Some(SET), &member("seen"));
    state.expect_applied(SET, [(member("written"), "digest".to_string())], true);
    assert_eq!(
        state.members_of(SET, "apps", "Deployment", "shop"),
        Some(vec!["seen".into(), "written".into()])
    );
}
