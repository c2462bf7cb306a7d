//! Which way a sync goes, decided without I/O from what the Application's status and the
//! drift watches say ([`Facts`] → [`Decision`]): an idle poll that asks only the shared
//! listing of the remote's refs, a correction of just the objects that drifted, a sync
//! that stops when the revision renders what was applied, or a full sync. The sync in
//! `agent/sync/` carries the decision out.

use std::time::Duration;

/// How old a listing of a remote's refs may be for a poll (webhooks mark it stale sooner).
pub const LISTING_MAX_AGE: Duration = Duration::from_secs(5);

/// What is known before a sync: the Application's status against its spec, and the drift
/// watches' view of its set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Someone asked for this sync (`tether sync`, the UI).
    pub sync_requested: bool,
    /// The status was written for the spec as it is (observedGeneration is current).
    pub spec_observed: bool,
    /// The last full sync left the set Synced (and the status names its ApplySet).
    pub synced: bool,
    /// The revision last applied, and the one the status describes (they agree after a
    /// sync that applied).
    pub last_applied: Option<String>,
    pub described: Option<String>,
    /// The watches saw a member changed by someone else.
    pub drifted: bool,
    /// A webhook announced a push to the Application's repository since it was listed.
    pub change_announced: bool,
    /// The watches vouch that nothing but members' status changed since the last full
    /// sync (`Some(status_changed)`), or cannot (`None`).
    pub may_skip: Option<bool>,
    /// The backstop's full plan is due.
    pub verification_due: bool,
    /// spec.syncPolicy.automated and selfHeal.
    pub automated: bool,
    pub self_heal: bool,
    /// spec.syncPolicy.interval.
    pub interval: Duration,
}

/// Which way the sync goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Fetch this commit (the one applied) instead of resolving the ref: drift is put
    /// back to what was applied without asking Git, unless a new revision may be waiting
    /// (a sync was asked for, or a push was announced).
    pub pin: Option<String>,
    /// How old the listing of the remote's refs may be: fresh for a sync asked for; up to
    /// the interval for a reconcile that only follows a member's status.
    pub listing_max_age: Duration,
    /// Unchanged spec and sync request, and Synced: the cheap ways below may apply.
    pub settled: bool,
    /// Try an idle poll: when the listing shows the commit applied, nothing is fetched,
    /// rendered or planned.
    pub idle_poll: bool,
    /// With drift on the pinned revision and selfHeal: correct just what drifted.
    pub correct_drift: bool,
    /// When the revision is the one applied, or renders exactly what was applied, the
    /// sync stops there (no plan).
    pub stop_if_same_render: bool,
}

/// Decides which way a sync goes.
pub fn decide(facts: &Facts) -> Decision {
    let pin =
        (facts.drifted && facts.spec_observed && !facts.sync_requested && !facts.change_announced)
            .then(|| facts.last_applied.clone())
            .flatten();
    let status_only = facts.may_skip == Some(true);
    let listing_max_age = if facts.sync_requested {
        Duration::ZERO
    } else if status_only {
        facts.interval.max(LISTING_MAX_AGE)
    } else {
        LISTING_MAX_AGE
    };
    let settled = !facts.sync_requested && facts.spec_observed && facts.synced;
    let vouched = settled && facts.may_skip.is_some() && !facts.verification_due;
    let idle_poll = vouched
        && pin.is_none()
        && facts.described.is_some()
        && facts.last_applied == facts.described;
    let correct_drift = settled && pin.is_some() && facts.automated && facts.self_heal;
    Decision {
        pin,
        listing_max_age,
        settled,
        idle_poll,
        correct_drift,
        stop_if_same_render: vouched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A settled Application: Synced at commit `a`, the watches vouching for it.
    fn settled() -> Facts {
        Facts {
            spec_observed: true,
            synced: true,
            last_applied: Some("a".into()),
            described: Some("a".into()),
            may_skip: Some(false),
            automated: true,
            self_heal: true,
            interval: Duration::from_secs(60),
            ..Default::default()
        }
    }

    /// A case: its name, its facts, and the pin, idle poll, drift correction, stop on the
    /// same render and listing age (s) it must get.
    type Case = (
        &'static str,
        Facts,
        Option<&'static str>,
        bool,
        bool,
        bool,
        u64,
    );

    #[test]
    fn each_case_takes_its_way() {
        // (what differs from a settled Application, pin, idle poll, correct drift,
        // stop if same render, listing age in s)
        let cases: Vec<Case> = vec![
            ("settled", settled(), None, true, false, true, 5),
            (
                "a member's status changed",
                Facts {
                    may_skip: Some(true),
                    ..settled()
                },
                None,
                true,
                false,
                true,
                60,
            ),
            (
                "hand edit, selfHeal",
                Facts {
                    drifted: true,
                    may_skip: None,
                    ..settled()
                },
                Some("a"),
                false,
                true,
                false,
                5,
            ),
            (
                "hand edit, selfHeal off",
                Facts {
                    drifted: true,
                    may_skip: None,
                    self_heal: false,
                    ..settled()
                },
                Some("a"),
                false,
                false,
                false,
                5,
            ),
            (
                "hand edit while a push was announced",
                Facts {
                    drifted: true,
                    may_skip: None,
                    change_announced: true,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                5,
            ),
            (
                "sync asked for",
                Facts {
                    sync_requested: true,
                    drifted: true,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                0,
            ),
            (
                "spec changed",
                Facts {
                    spec_observed: false,
                    drifted: true,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                5,
            ),
            (
                "backstop due",
                Facts {
                    verification_due: true,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                5,
            ),
            (
                "last sync failed or differs",
                Facts {
                    synced: false,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                5,
            ),
            (
                "the status describes another commit",
                Facts {
                    described: Some("b".into()),
                    ..settled()
                },
                None,
                false,
                false,
                true,
                5,
            ),
            (
                "the watches cannot vouch",
                Facts {
                    may_skip: None,
                    ..settled()
                },
                None,
                false,
                false,
                false,
                5,
            ),
        ];
        for (case, facts, pin, idle, correct, same, age) in cases {
            let decision = decide(&facts);
            assert_eq!(decision.pin.as_deref(), pin, "{case}: pin");
            assert_eq!(decision.idle_poll, idle, "{case}: idle poll");
            assert_eq!(decision.correct_drift, correct, "{case}: correct drift");
            assert_eq!(decision.stop_if_same_render, same, "{case}: same render");
            assert_eq!(
                decision.listing_max_age,
                Duration::from_secs(age),
                "{case}: listing age"
            );
        }
    }
}
