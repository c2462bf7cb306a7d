//! Tenants (impersonating an Application's ServiceAccount): the code lives below the agent,
//! in [`crate::tenancy`], and is re-exported here at its old path.

pub use crate::tenancy::{client_for, impersonating};
