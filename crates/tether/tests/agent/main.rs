//! Pull mode: the agent against the real control plane: syncs, drift and its correction,
//! Synced and health at the edges and at every size, readiness and runaway renderers, a
//! canary Secret that must appear nowhere, and broken networks and servers. One test
//! binary; each file is a module (a test's name starts with its file's, e.g.
//! `drift_torture::every_hand_edit_is_put_back_and_synced_is_never_said_while_the_cluster_differs`).

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod canary;
mod deletion;
mod drift_torture;
mod edges;
mod every_size;
mod faults;
mod hardening;
mod oci;
mod options;
mod relist;
mod secrets;
mod windows;
