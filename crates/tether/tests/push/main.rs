//! Push mode and what it reads, against the real control plane and real Git servers:
//! `tether render`, `plan`, `apply` and `version` as users and CI run them, sync waves and
//! hooks, the Git source, Kustomize and Helm, and the catalogue of bad input. One test
//! binary; each file is a module (a test's name starts with its file's, e.g.
//! `apply::create_update_noop_and_removed_fields`).

#[path = "../support/mod.rs"]
mod support;

mod apply;
mod bad_input;
mod cli_plan;
mod cli_render;
mod cli_version;
mod cluster;
mod health_rules;
mod oci;
mod render_tools;
mod sops;
mod source_git;
mod sync_options;
mod waves_hooks;
mod who_changed;
