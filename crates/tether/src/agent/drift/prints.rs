//! Who wrote an object, read from tether's own entry in its managedFields: the fingerprint
//! of each state a watch sees ([`Prints`]) and the judgement of each write ([`judge`]).
//! Pure, and tested here.

use std::hash::{Hash, Hasher};

use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;

use crate::plan::FIELD_MANAGER;
use crate::plan::fields::APPLIED_DIGEST_ANNOTATION;

/// Who changed an object, judged from its managedFields.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Writer {
    /// Someone other than tether took or removed fields tether set, or deleted the object.
    Foreign,
    /// tether's own apply.
    Ours,
    /// Nothing tether set changed: status, or fields other managers own.
    Status,
}

/// What an object's managedFields say about tether's own apply entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prints {
    /// The fields tether applied (its entry's fieldsV1).
    pub(super) ours: u64,
    /// How long that fieldsV1 is: only tether's own apply can make it longer.
    pub(super) ours_size: usize,
    /// When tether last applied the object (none while it owns no field at all).
    pub(super) ours_time: Option<u64>,
    /// The object is being deleted.
    pub(super) deleting: bool,
    /// What the last apply under tether's field manager carried of what it applied
    /// ([`crate::plan::fields::APPLIED_DIGEST_ANNOTATION`]).
    pub(super) digest: Option<String>,
}

/// Who made the write between two states of an object, read from tether's own entry in
/// its managedFields. Whoever changes a value tether set takes that field from tether's
/// entry (an update, a scale, a forced apply) or removes it (a patch that deletes it), so
/// the entry shrinks, and its time stays, since only tether's own apply moves it. A write
/// that leaves tether's fields as they were cannot have changed a value tether set: a
/// controller writing fields of its own (the Deployment controller's revision annotation,
/// status) is not drift, and neither is a label someone added. Times have one-second
/// resolution: tether's apply that drops fields within the second of its last one looks
/// like someone else's (one needless reconcile, which writes nothing).
pub(super) fn classify(previous: &Prints, now: &Prints) -> Writer {
    if now.deleting && !previous.deleting {
        Writer::Foreign
    } else if now.ours == previous.ours {
        Writer::Status
    } else if (now.ours_time.is_some() && now.ours_time != previous.ours_time)
        || now.ours_size > previous.ours_size
    {
        Writer::Ours
    } else {
        Writer::Foreign
    }
}

/// Who made a write a watch saw, `previous` being the state seen before it (none at first
/// sight: created by our apply, by someone else into the set, or before the watch
/// existed). tether's field manager is not proof of this agent's write: what the write
/// carries is, so a write that looks like tether's is asked `applied_by_us`. An apply of
/// other values to the same fields leaves tether's entry as it was: the digest it carries
/// moves.
pub(super) fn judge(
    previous: Option<&Prints>,
    now: &Prints,
    applied_by_us: impl FnOnce() -> bool,
) -> Option<Writer> {
    let digest_moved = previous.is_none_or(|p| p.digest != now.digest);
    let classified = previous.map(|p| classify(p, now));
    let as_tether = match classified {
        Some(Writer::Ours) | None => true,
        Some(Writer::Status) => digest_moved,
        Some(Writer::Foreign) => false,
    };
    if as_tether && !applied_by_us() {
        Some(Writer::Foreign)
    } else {
        classified
    }
}

pub(super) fn fingerprints(object: &PartialObjectMeta<DynamicObject>) -> Prints {
    let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value(&mut hasher);
        hasher.finish()
    };
    let ours = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|entry| {
            entry.manager.as_deref() == Some(FIELD_MANAGER)
                && entry.operation.as_deref() == Some("Apply")
                && entry.subresource.is_none()
        });
    let fields = ours.and_then(|e| e.fields_v1.as_ref().map(|f| f.0.to_string()));
    Prints {
        ours: hash(&|h| fields.hash(h)),
        ours_size: fields.as_ref().map_or(0, String::len),
        ours_time: ours
            .map(|entry| hash(&|h| entry.time.as_ref().map(|t| format!("{:?}", t.0)).hash(h))),
        deleting: object.metadata.deletion_timestamp.is_some(),
        digest: object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_DIGEST_ANNOTATION))
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object tether applied at second 1.
    fn applied() -> Prints {
        Prints {
            ours: 10,
            ours_size: 100,
            ours_time: Some(1),
            deleting: false,
            digest: Some("d1".into()),
        }
    }

    #[test]
    fn who_wrote_is_read_from_tethers_own_managed_fields() {
        let before = applied();
        // kubectl edit, scale or set image: someone takes one of tether's fields.
        let edited = Prints {
            ours: 11,
            ours_size: 90,
            ..applied()
        };
        assert_eq!(classify(&before, &edited), Writer::Foreign);
        // tether takes it back later: its own time moves.
        let corrected = Prints {
            ours_time: Some(3),
            ..applied()
        };
        assert_eq!(classify(&edited, &corrected), Writer::Ours);
        // ... or within the same second as its last apply: its entry grows, which no one
        // else's write can make it do.
        assert_eq!(classify(&edited, &applied()), Writer::Ours);
        // Someone takes a second field within the same second.
        let again = Prints {
            ours: 13,
            ours_size: 80,
            ..edited.clone()
        };
        assert_eq!(classify(&edited, &again), Writer::Foreign);
        // tether's fields changed, no longer and with no new time: someone's write.
        let reshaped = Prints {
            ours: 14,
            ..applied()
        };
        assert_eq!(classify(&before, &reshaped), Writer::Foreign);
        // tether's own apply of a new revision.
        let reapplied = Prints {
            ours: 15,
            ours_size: 90,
            ours_time: Some(5),
            ..applied()
        };
        assert_eq!(classify(&before, &reapplied), Writer::Ours);
        // Someone takes every field tether had: its entry goes, and its time with it.
        let taken = Prints {
            ours: 16,
            ours_size: 0,
            ours_time: None,
            ..applied()
        };
        assert_eq!(classify(&before, &taken), Writer::Foreign);
        // A deletion begins.
        let deleting = Prints {
            deleting: true,
            ..applied()
        };
        assert_eq!(classify(&before, &deleting), Writer::Foreign);
        // A controller writes status or fields of its own: tether's entry is untouched.
        assert_eq!(classify(&before, &applied()), Writer::Status);
    }

    #[test]
    fn a_write_that_looks_like_tethers_is_judged_by_the_digest_it_carries() {
        let ours = || true;
        let theirs = || false;
        // First sight: tether's own, unless it carries what this agent does not apply.
        assert_eq!(judge(None, &applied(), ours), None);
        assert_eq!(judge(None, &applied(), theirs), Some(Writer::Foreign));
        // tether's fields untouched, same digest: status, whoever wrote it.
        assert_eq!(
            judge(Some(&applied()), &applied(), theirs),
            Some(Writer::Status)
        );
        // The same fields applied with other values: the digest moves.
        let other_values = Prints {
            digest: Some("d2".into()),
            ..applied()
        };
        assert_eq!(
            judge(Some(&applied()), &other_values, theirs),
            Some(Writer::Foreign)
        );
        assert_eq!(
            judge(Some(&applied()), &other_values, ours),
            Some(Writer::Status)
        );
        // Someone took a field: foreign, without asking about the digest.
        let edited = Prints {
            ours: 11,
            ours_size: 90,
            ..applied()
        };
        let never = || -> bool { panic!("not asked") };
        assert_eq!(
            judge(Some(&applied()), &edited, never),
            Some(Writer::Foreign)
        );
        // tether's apply by its managedFields, with a digest this agent did not apply.
        let reapplied = Prints {
            ours: 15,
            ours_time: Some(5),
            ..applied()
        };
        assert_eq!(
            judge(Some(&applied()), &reapplied, theirs),
            Some(Writer::Foreign)
        );
        assert_eq!(
            judge(Some(&applied()), &reapplied, ours),
            Some(Writer::Ours)
        );
    }
}
