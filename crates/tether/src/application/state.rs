//! The words an Application's status is written in, typed: sync states, condition types,
//! statuses and reasons, and the result of a sync or hook. Each serializes (and shows) as
//! exactly the string the status has always held, so the CRD's JSON is unchanged; the
//! status fields themselves stay strings (an unknown word read back is not an error).

use serde::{Deserialize, Serialize};

use crate::health::HealthStatus;

/// Declares an enum of status words: serde and [`std::fmt::Display`] write each variant's
/// name, `as_str` gives it, `parse` reads it back, and `ALL` lists them in order.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as the status holds it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// The value this word names, if any.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|value| value.as_str() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.as_str().to_string()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

words! {
    /// An Application's sync state: `status.sync.status` holds Synced, OutOfSync or Unknown;
    /// the faces (UI, API) also show Failed, when its last sync failed.
    SyncState {
        Synced,
        OutOfSync,
        Unknown,
        Failed,
    }
}

words! {
    /// The conditions an Application's status carries (kstatus).
    ConditionType {
        Ready,
        Reconciling,
        Stalled,
    }
}

words! {
    /// A condition's status.
    ConditionStatus {
        True,
        False,
        Unknown,
    }
}

words! {
    /// Why a condition is as it is.
    Reason {
        /// The sync went through (Ready True, or Reconciling and Stalled False).
        Succeeded,
        /// The sync failed (Ready False).
        Failed,
        /// The cluster differs from the revision and the policy does not apply it.
        OutOfSync,
        /// Applied, but a member changed while the sync ran (being corrected).
        ChangedMeanwhile,
        /// `spec.suspend` is true.
        Suspended,
        /// An Application of `spec.dependsOn` is not Ready.
        DependencyNotReady,
        /// The retry limit is reached (Stalled True).
        RetryLimitReached,
        /// A failed sync is retried after a backoff.
        Retrying,
        /// Stalled: no retry until a change or the interval.
        Stalled,
        /// The Application is deleted, and deleting its objects failed (Ready False).
        DeletionFailed,
    }
}

words! {
    /// How a sync or a hook ended, as history records it.
    RunResult {
        Succeeded,
        Failed,
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// The health a status's `health` word names (anything else is Unknown).
pub fn health_from(text: &str) -> HealthStatus {
    match text {
        "Healthy" => HealthStatus::Healthy,
        "Progressing" => HealthStatus::Progressing,
        "Degraded" => HealthStatus::Degraded,
        "Missing" => HealthStatus::Missing,
        _ => HealthStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value serializes to `expected` (the word the CRD's status has always held),
    /// shows as it, and reads back from it.
    fn round_trips<T>(values: &[T], expected: &[&str])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + Serialize,
        T: for<'de> Deserialize<'de>,
    {
        assert_eq!(values.len(), expected.len(), "{values:?}");
        for (value, word) in values.iter().zip(expected) {
            assert_eq!(
                serde_json::to_value(value).expect("serializes"),
                serde_json::json!(word)
            );
            assert_eq!(value.to_string(), *word);
            let back: T = serde_json::from_value(serde_json::json!(word)).expect("deserializes");
            assert_eq!(back, *value);
        }
    }

    #[test]
    fn every_status_word_round_trips_through_serde_as_todays_string() {
        round_trips(
            SyncState::ALL,
            &["Synced", "OutOfSync", "Unknown", "Failed"],
        );
        round_trips(ConditionType::ALL, &["Ready", "Reconciling", "Stalled"]);
        round_trips(ConditionStatus::ALL, &["True", "False", "Unknown"]);
        round_trips(
            Reason::ALL,
            &[
                "Succeeded",
                "Failed",
                "OutOfSync",
                "ChangedMeanwhile",
                "Suspended",
                "DependencyNotReady",
                "RetryLimitReached",
                "Retrying",
                "Stalled",
                "DeletionFailed",
            ],
        );
        round_trips(RunResult::ALL, &["Succeeded", "Failed"]);
        assert_eq!(SyncState::parse("OutOfSync"), Some(SyncState::OutOfSync));
        assert_eq!(SyncState::parse("Weird"), None);
        let (yes, no) = (String::from("True"), String::from("False"));
        assert!(yes == ConditionStatus::True);
        assert!(no != ConditionStatus::True);
    }

    #[test]
    fn every_health_word_reads_back_as_its_health() {
        for health in [
            HealthStatus::Healthy,
            HealthStatus::Progressing,
            HealthStatus::Degraded,
            HealthStatus::Missing,
            HealthStatus::Unknown,
        ] {
            assert_eq!(health_from(&health.to_string()), health);
            assert_eq!(
                serde_json::to_value(health).expect("serializes"),
                serde_json::json!(health.to_string())
            );
            assert!(super::super::HEALTH_STATES.contains(&health.to_string().as_str()));
        }
        assert_eq!(health_from("Exploded"), HealthStatus::Unknown);
    }
}
