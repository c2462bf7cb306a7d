//! The `Application` resource as the agent knows it: its types live below every stage, in
//! [`crate::application`]; they are re-exported here so that `crate::agent::application::…`
//! paths keep working.

pub use crate::application::*;
