//! Source: a Git repository and a ref → a revision (commit id) and a read-only tree.
//!
//! [`git::GitSource::fetch`] resolves `--ref` ([`reference`]) on the remote, fetches just that
//! commit into a local cache and returns a [`tree::Tree`] over it; [`signature`] checks who
//! signed it. [`tree::DirTree`] serves a plain folder the same way. [`oci`] pulls an
//! artifact from an OCI registry into a folder, read as a `DirTree`. [`recording`] notes what
//! a render read of a tree, so that a later revision that holds the same there is known to
//! render the same.

pub mod git;
pub mod oci;
pub mod recording;
pub mod reference;
pub mod signature;
pub mod tree;
